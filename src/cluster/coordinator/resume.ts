// A session over the herd that survives a lost node: when its pipeline breaks, it has the
// cluster re-plan over the nodes that still answer (HerdCluster.recover), opens a new pipeline
// on the new plan and replays there the tokens the broken one held (its history) — the failed
// step included, so the caller gets the token it asked for, late.
// Bounded: at most `maxReplans` re-plans per request (a resample() starts a new request).
//
// The replay leaves the last stage's sampler where the lost one was: greedy sampling and the
// penalties depend on the tokens alone (one step replays everything); a sampler that draws
// from its seeded random state drew once per step since its sampling started, so those steps
// are replayed with their own boundaries, after the history before them.

import type { SamplingOptions, TokenLogprobs } from '../../engine/sampler.ts';
import type { StagedSession, StageTime } from '../../engine/session.ts';
import { ClusterError } from '../errors.ts';
import type { HerdCluster } from './cluster.ts';
import type { PipelineSession } from './pipeline.ts';

/** Default re-plans one request may go through before it fails. */
export const MAX_REPLANS = 2;

export class ResumableSession implements StagedSession {
  /** Start positions of the steps since `sampling` took effect, in order (one draw each). */
  private draws: number[] = [];
  private replans = 0;
  private closed = false;

  private constructor(
    private readonly cluster: HerdCluster,
    private inner: PipelineSession,
    private sampling: SamplingOptions,
    private readonly maxReplans: number,
  ) {}

  /** Opens a pipeline on the current plan; when a node of it is gone, re-plans first (bounded). */
  static async open(
    cluster: HerdCluster,
    sampling: SamplingOptions,
    maxReplans = MAX_REPLANS,
  ): Promise<ResumableSession> {
    for (let attempt = 0; ; attempt++) {
      const generation = cluster.generation;
      try {
        return new ResumableSession(cluster, await cluster.openSession(sampling), sampling, maxReplans);
      } catch (e) {
        if (!(e instanceof ClusterError) || e.code !== 'pipeline' || attempt >= maxReplans) throw e;
        await cluster.recover(generation, e);
      }
    }
  }

  get ctx(): number {
    return this.inner.ctx;
  }

  get logprobs(): TokenLogprobs | undefined {
    return this.inner.logprobs;
  }

  /** What the pipeline holds (after a resume, the new one holds what the broken one did). */
  get tokens(): readonly number[] {
    return this.inner.tokens;
  }

  get lastStages(): readonly StageTime[] {
    return this.inner.lastStages;
  }

  /** The pipeline broke, or runs on a plan the herd has replaced: not worth keeping idle. */
  get failed(): boolean {
    return this.inner.failed || this.inner.generation !== this.cluster.generation;
  }

  async step(tokens: readonly number[], start: number): Promise<number> {
    // Checked here, not by a broken pipeline's step: a bad step is the caller's, never replayed.
    this.inner.history.check(start, tokens.length, this.ctx);
    let token: number;
    try {
      token = await this.inner.step(tokens, start);
    } catch (e) {
      if (this.closed || !this.inner.failed) throw e;
      token = await this.resume(tokens, start, e as Error);
    }
    this.countDraw(start);
    return token;
  }

  private countDraw(start: number): void {
    // A step that goes back undoes the steps it overwrites (their draws stay drawn: a replay
    // after such a step is exact for greedy sampling only).
    while (this.draws.length > 0 && this.draws[this.draws.length - 1] >= start) this.draws.pop();
    this.draws.push(start);
  }

  /** Re-plans and replays until the failed step has its token, or the bound is reached. */
  private async resume(tokens: readonly number[], start: number, cause: Error): Promise<number> {
    // What the broken pipeline held before this step, then the step: what the new one replays.
    const all = [...this.inner.tokens.slice(0, start), ...tokens];
    let error = cause;
    for (;;) {
      if (this.replans >= this.maxReplans) {
        throw new ClusterError(
          'pipeline',
          `${error.message} (gave up after ${this.maxReplans} re-plan${this.maxReplans === 1 ? '' : 's'} for this request)`,
        );
      }
      this.replans++;
      const broken = this.inner;
      await broken.close().catch(() => {});
      // Throws, naming the lost nodes, when the model no longer fits the survivors.
      await this.cluster.recover(broken.generation, error);
      if (this.closed) throw error;
      const t0 = performance.now();
      try {
        this.inner = await this.cluster.openSession(this.sampling);
        const { token, steps } = await this.replay(all, start);
        this.cluster.report({
          event: 'request.resumed',
          session: this.inner.id,
          position: start + tokens.length,
          steps,
          attempt: this.replans,
          ms: Math.round(performance.now() - t0),
        });
        return token;
      } catch (e) {
        if (this.closed || !(e instanceof ClusterError)) throw e;
        error = e;
      }
    }
  }

  /** Rebuilds the KV caches and the sampler on the new pipeline: the history, then the failed step (from `start`). */
  private async replay(all: readonly number[], start: number): Promise<{ token: number; steps: number }> {
    if (this.sampling.temperature === 0) return { token: await this.inner.step(all, 0), steps: 1 };
    const bounds = [...this.draws.filter((d) => d < start), start];
    let steps = 0;
    if (bounds[0] > 0) {
      // What came before this sampling: its draw is thrown away by the restart below.
      await this.inner.step(all.slice(0, bounds[0]), 0);
      this.inner.resample(this.sampling);
      steps++;
    }
    let token = -1;
    for (let i = 0; i < bounds.length; i++) {
      const end = i + 1 < bounds.length ? bounds[i + 1] : all.length;
      token = await this.inner.step(all.slice(bounds[i], end), bounds[i]);
      steps++;
    }
    return { token, steps };
  }

  resample(sampling: SamplingOptions): void {
    this.sampling = sampling;
    this.draws = [];
    this.replans = 0;
    this.inner.resample(sampling);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.inner.close();
  }
}
