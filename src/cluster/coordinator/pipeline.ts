// A generation's session over the herd: a PipelineSession is a StagedSession whose step() sends
// token ids to stage 1 on one long-lived Forward stream and awaits the token the last stage
// Delivers back, with each stage's compute time on the way. A step may start before the
// session's end (prompt reuse): the activation's position alone tells every stage to go back
// there; a new generation's sampling options ride on its first activation to the last stage.

import { randomBytes } from 'node:crypto';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import type { StagedSession, StageTime } from '../../engine/session.ts';
import { TokenHistory } from '../../engine/history.ts';
import type { SamplingOptions, TokenLogprobs } from '../../engine/sampler.ts';
import { ClusterError, invalid } from '../errors.ts';
import type { Plan, PlannedStage } from '../planner.ts';
import { describeCallError } from '../rpc.ts';
import { checkTimings } from '../node/stage.ts';
import { CapacityError, isCapacityRefusal } from '../capacity.ts';
import {
  DType,
  dtypeToWire,
  logprobsFromWire,
  samplingToWire,
  stageTime,
  type Delivery,
  type ForwardReply,
  type ForwardRequest,
  type StageTiming,
} from '../wire.ts';
import type { HerdCluster } from './cluster.ts';

const OPEN_TIMEOUT_MS = 60_000;

/** The step in flight: what it sent, and who awaits its token. */
interface Waiting {
  readonly tokens: readonly number[];
  readonly start: number;
  readonly position: number;
  readonly resolve: (t: number) => void;
  readonly reject: (e: Error) => void;
  readonly timer: NodeJS.Timeout;
}

/** A delivery's timings, checked against the plan: one per stage, in order, from the planned node. */
export function stageTimesOf(
  timings: readonly StageTiming[],
  stages: readonly Pick<PlannedStage, 'node' | 'start' | 'end'>[],
): StageTime[] {
  checkTimings(timings, stages);
  return timings.map((t, i) => {
    const { node } = stages[i];
    if (t.nodeId !== node.id) {
      throw invalid(`stage timing ${i} is from node ${t.nodeId}, the plan has ${node.name} (${node.id}) there`);
    }
    return stageTime(t, node);
  });
}

export class PipelineSession implements StagedSession {
  lastStages: readonly StageTime[] = [];
  logprobs: TokenLogprobs | undefined;
  private waiting: Waiting | undefined;
  private failure: Error | undefined;
  private closed = false;
  /** The tokens the stages hold: up to where the last delivered step ended. */
  readonly history = new TokenHistory();
  /** Sampling for the last stage to restart with, sent on the next activation. */
  private pendingSampling: SamplingOptions | undefined;
  /** How many top log-probabilities the last stage delivers with each token (undefined: none). */
  private topLogprobs: number | undefined;
  private readonly ended: Promise<void>;

  private constructor(
    private readonly cluster: HerdCluster,
    readonly id: string,
    private readonly stream: ClientDuplexStream<ForwardRequest, ForwardReply>,
    readonly ctx: number,
    /** The plan the session runs on, and its number (HerdCluster.generation). */
    readonly plan: Plan,
    readonly generation: number,
  ) {
    this.ended = new Promise((resolve) => {
      stream.on('end', resolve);
      stream.on('error', () => resolve());
    });
  }

  static async open(cluster: HerdCluster, sampling: SamplingOptions): Promise<PipelineSession> {
    const { plan, o, generation } = cluster;
    const id = randomBytes(12).toString('base64url');
    const first = plan.stages[0].node;
    const client = cluster.client(first.address, 'step');
    const stream = client.forward();
    const session = new PipelineSession(cluster, id, stream, o.ctx, plan, generation);
    session.topLogprobs = sampling.logprobs;
    cluster.server.sinks.set(id, {
      deliver: (d) => session.onDelivery(d),
      fail: (r) => session.fail(new ClusterError('pipeline', r)),
    });

    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new ClusterError('pipeline', `the pipeline did not open in ${OPEN_TIMEOUT_MS / 1000} s`));
      }, OPEN_TIMEOUT_MS);
      stream.on('data', (r: ForwardReply) => {
        if (r.ready) {
          clearTimeout(timer);
          resolve();
        }
      });
      stream.on('error', (e) => {
        clearTimeout(timer);
        const why = `pipeline (stage 1 ${first.name}, ${first.address}): ${describeCallError(e)}`;
        // A node without room for the session: wait for one to end (api/session-pool.ts), not re-plan.
        const err = isCapacityRefusal(e) ? new CapacityError(why) : new ClusterError('pipeline', why);
        session.fail(err);
        reject(err);
      });
    });
    stream.write({
      open: {
        sessionId: id,
        modelHash: cluster.source.hash,
        route: plan.stages.map((s) => ({
          address: s.node.address,
          start: s.start,
          end: s.end,
          group: cluster.groupOf(s),
        })),
        hop: 0,
        ctx: o.ctx,
        wire: dtypeToWire(o.wire),
        sampling: samplingToWire(sampling),
        deliverTo: cluster.deliverTo,
      },
    });
    try {
      await ready;
    } catch (e) {
      await session.close();
      throw e;
    }
    return session;
  }

  get failed(): boolean {
    return this.failure !== undefined;
  }

  get tokens(): readonly number[] {
    return this.history.tokens;
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    const w = this.waiting;
    this.waiting = undefined;
    if (w) {
      clearTimeout(w.timer);
      w.reject(e);
    }
  }

  /** Takes the last stage's token; throws (INVALID_ARGUMENT to the stage) if its timings are malformed. */
  private onDelivery(d: Delivery): void {
    const w = this.waiting;
    if (!w || d.position !== w.position) {
      const why = `the last stage delivered position ${d.position}, expected ${w?.position ?? 'nothing'}`;
      this.fail(new ClusterError('pipeline', why));
      return;
    }
    let stages: StageTime[];
    let logprobs: TokenLogprobs | undefined;
    try {
      stages = stageTimesOf(d.timings, this.plan.stages);
      if (this.topLogprobs !== undefined) {
        // A node older than log-probabilities ignores the request for them.
        if (!d.logprobs) throw invalid('no log-probabilities with the token (is the last stage an older herd node?)');
        logprobs = logprobsFromWire(d.logprobs, d.tokenId, this.topLogprobs, this.cluster.vocabSize);
      }
    } catch (e) {
      this.fail(new ClusterError('pipeline', `the last stage's delivery: ${(e as Error).message}`));
      throw e;
    }
    this.waiting = undefined;
    clearTimeout(w.timer);
    this.lastStages = stages;
    this.logprobs = logprobs;
    this.history.commit(w.tokens, w.start);
    w.resolve(d.tokenId);
  }

  step(tokens: readonly number[], start: number): Promise<number> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new ClusterError('pipeline', 'the session is closed'));
    if (this.waiting) return Promise.reject(new ClusterError('pipeline', 'a step is already in flight'));
    try {
      this.history.check(start, tokens.length, this.ctx);
    } catch (e) {
      return Promise.reject(e as Error);
    }
    const sampling = this.pendingSampling && samplingToWire(this.pendingSampling);
    if (this.pendingSampling) this.topLogprobs = this.pendingSampling.logprobs;
    this.pendingSampling = undefined;
    // Generous: a big prefill on slow nodes takes minutes; a dead process resets its connection.
    const timeoutMs = this.cluster.o.stepTimeoutMs ?? 600_000;
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.fail(new ClusterError('pipeline', `no token from the pipeline in ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.waiting = { tokens: [...tokens], start, position: start + tokens.length, resolve, reject, timer };
      this.stream.write({
        activation: {
          sessionId: this.id,
          position: start,
          tokenIds: [...tokens],
          hidden: Buffer.alloc(0),
          dtype: DType.DTYPE_UNSPECIFIED,
          dim: 0,
          timings: [],
          sampling,
        },
      });
    });
  }

  resample(sampling: SamplingOptions): void {
    this.pendingSampling = sampling;
  }

  /** Ends the stream: every stage frees the session's KV cache. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.cluster.server.sinks.delete(this.id);
    if (this.failure) this.stream.cancel();
    else this.stream.end();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.ended, new Promise((r) => (timer = setTimeout(r, 5000)))]);
    clearTimeout(timer);
  }
}
