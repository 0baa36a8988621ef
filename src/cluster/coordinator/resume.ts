// A session over the herd that survives a lost node: it keeps the tokens its KV caches hold
// (the session's history) and, when its pipeline breaks, has the cluster re-plan over the nodes
// that still answer (HerdCluster.recover), opens a new pipeline on the new plan and replays the
// history there — the failed step included, so the caller gets the token it asked for, late.
// Bounded: at most `maxReplans` re-plans per request (a resample() starts a new request).
//
// The replay leaves the last stage's sampler where the lost one was: greedy sampling and the
// penalties depend on the tokens alone (one step replays everything); a sampler that draws
// from its seeded random state drew once per step since its sampling started, so those steps
// are replayed with their own boundaries, after the history before them.

import type { SamplingOptions, TokenLogprobs } from '../../engine/sampler.ts';
import { ClusterError } from '../errors.ts';
import type { HerdCluster, PipelineSession, StagedSession, StageTime } from './pipeline.ts';

/** Default re-plans one request may go through before it fails. */
export const MAX_REPLANS = 2;

export class ResumableSession implements StagedSession {
  /** The token at each position the session's KV caches hold. */
  private readonly history: number[] = [];
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
  static async open(cluster: HerdCluster, sampling: SamplingOptions, maxReplans = MAX_REPLANS): Promise<ResumableSession> {
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

  get lastStages(): readonly StageTime[] {
    return this.inner.lastStages;
  }

  /** The pipeline broke, or runs on a plan the herd has replaced: not worth keeping idle. */
  get failed(): boolean {
    return this.inner.failed || this.inner.generation !== this.cluster.generation;
  }

  async step(tokens: readonly number[], start: number): Promise<number> {
    if (!(Number.isInteger(start) && start >= 0 && start <= this.history.length)) {
      throw new RangeError(`step at position ${start}, but the session is at ${this.history.length}`);
    }
    let token: number;
    try {
      token = await this.inner.step(tokens, start);
    } catch (e) {
      if (this.closed || !this.inner.failed) throw e;
      token = await this.resume(tokens, start, e as Error);
    }
    this.commit(tokens, start);
    return token;
  }

  private commit(tokens: readonly number[], start: number): void {
    this.history.length = start;
    this.history.push(...tokens);
    // A step that goes back undoes the steps it overwrites (their draws stay drawn: a replay
    // after such a step is exact for greedy sampling only).
    while (this.draws.length > 0 && this.draws[this.draws.length - 1] >= start) this.draws.pop();
    this.draws.push(start);
  }

  /** Re-plans and replays until the failed step has its token, or the bound is reached. */
  private async resume(tokens: readonly number[], start: number, cause: Error): Promise<number> {
    let error = cause;
    for (;;) {
      if (this.replans >= this.maxReplans) {
        throw new ClusterError('pipeline', `${error.message} (gave up after ${this.maxReplans} re-plan${this.maxReplans === 1 ? '' : 's'} for this request)`);
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
        const { token, steps } = await this.replay(tokens, start);
        this.cluster.report({
          event: 'request.resumed', session: this.inner.id, position: start + tokens.length, steps, attempt: this.replans, ms: Math.round(performance.now() - t0),
        });
        return token;
      } catch (e) {
        if (this.closed || !(e instanceof ClusterError)) throw e;
        error = e;
      }
    }
  }

  /** Rebuilds the KV caches and the sampler on the new pipeline: the history, then the failed step. */
  private async replay(tokens: readonly number[], start: number): Promise<{ token: number; steps: number }> {
    const all = [...this.history.slice(0, start), ...tokens];
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
