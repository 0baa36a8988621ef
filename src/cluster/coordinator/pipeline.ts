// The coordinator side of a generation over the herd. `HerdCluster.start` hashes the model,
// plans, serves the model's tensors, and has every stage load its shard; `openSession` gives
// a PipelineSession — an InferenceSession whose step() sends token ids to stage 1 on one
// long-lived Forward stream and awaits the token the last stage Delivers back, with each
// stage's compute time on the way. A step may start before the session's end (prompt reuse):
// the activation's position alone tells every stage to go back there; a new generation's
// sampling options ride on its first activation to the last stage's sampler.
//
// A node that dies mid-generation breaks every pipeline through it. `HerdCluster.recover`
// (once for all the sessions that broke together) asks every node it knows whether it still
// answers, plans again over the ones that do, and has them load their new layer ranges; the
// sessions then replay their tokens on the new plan (resume.ts). When the model no longer fits
// the survivors, recover throws an error naming the lost nodes.

import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { status, type ClientDuplexStream } from '@grpc/grpc-js';
import type { StagedSession, StageTime } from '../../engine/session.ts';
import { TokenHistory } from '../../engine/history.ts';
import type { SamplingOptions, TokenLogprobs } from '../../engine/sampler.ts';
import { readConfig } from '../../model/config.ts';
import type { KvType as EngineKvType } from '../../model/kv-cache.ts';
import { DType, KvType, type Delivery, type ForwardReply, type ForwardRequest, type HerdNodeClient, type LoadProgress, type NodeInfo, type StageTiming } from '../../proto/herd.ts';
import type { ClusterKey } from '../auth.ts';
import { ClusterError, invalid } from '../errors.ts';
import type { Logger } from '../log.ts';
import { formatHostPort, interfaceIpv4, parseHostPort } from '../net.ts';
import { plan as makePlan, PlanError, type ModelShape, type Plan, type PlannedStage, type PlanNode } from '../planner.ts';
import { authenticate, describeCallError, isServiceError, nodeClient } from '../rpc.ts';
import { ModelSource } from '../shard/source.ts';
import { modelShape } from '../shape.ts';
import { checkTimings, logprobsFromWire, samplingToWire } from '../node/stage.ts';
import { fetchInfo } from '../discovery/static.ts';
import { CoordinatorServer } from './server.ts';

const FORWARD = '/herd.v1.HerdNode/Forward';
const LOAD = '/herd.v1.HerdNode/LoadShard';
const OPEN_TIMEOUT_MS = 60_000;
const LOAD_TIMEOUT_MS = 10 * 60_000;
/** One Info probe of a node after a pipeline broke. */
const PROBE_TIMEOUT_MS = 3000;
/**
 * Probes of a node that neither answers nor refuses (its event loop may be busy finishing a
 * step) before it counts as lost; a refused connection counts at once.
 */
const PROBE_ATTEMPTS = 3;
/** Default bound on one re-plan: probing, planning and loading the new ranges. */
const RECOVER_TIMEOUT_MS = 5 * 60_000;

export interface ClusterOptions {
  readonly modelPath: string;
  /** The nodes, or a function of the model hash giving them (with what each already holds). */
  readonly nodes: readonly PlanNode[] | ((modelHash: string) => readonly PlanNode[]);
  readonly stages?: number;
  readonly ctx: number;
  readonly kvType: EngineKvType;
  readonly wire: 'f32' | 'f16';
  readonly key?: ClusterKey;
  /** Bind the coordinator's server to this interface's address. */
  readonly interface?: string;
  readonly cacheDir?: string;
  readonly log: Logger;
  /** Per-token wait before the pipeline counts as stalled. */
  readonly stepTimeoutMs?: number;
  /** Hears each LoadProgress a node streams while it makes its layers resident. */
  readonly onProgress?: (node: string, layers: [number, number], p: LoadProgress) => void;
  /** Bound on one re-plan after a node was lost (probe, plan, load); default 5 min. */
  readonly recoverTimeoutMs?: number;
  /** Hears every node lost, re-plan and resumed session. */
  readonly onRecovery?: (e: RecoveryEvent) => void;
}

/** What happened while the herd recovered from a lost node, one structured log line each. */
export type RecoveryEvent =
  | { readonly event: 'node.lost'; readonly node: string; readonly address: string; readonly layers?: readonly [number, number]; readonly error: string }
  | { readonly event: 'replan.start'; readonly lost: readonly string[]; readonly survivors: number; readonly cause: string }
  | { readonly event: 'replan.done'; readonly ok: true; readonly plan: readonly string[]; readonly nodeIds: readonly string[]; readonly ms: number }
  | { readonly event: 'replan.done'; readonly ok: false; readonly error: string; readonly ms: number }
  | { readonly event: 'request.resumed'; readonly session: string; readonly position: number; readonly steps: number; readonly attempt: number; readonly ms: number };

/** One plan the herd runs: sessions opened on it keep it until they close. */
interface Current {
  readonly plan: Plan;
  readonly loads: StageLoad[];
  /** Counts the plans: a session whose generation is older was opened on a replaced plan. */
  readonly generation: number;
}

/** How each stage got its shard for this run. */
export interface StageLoad {
  readonly node: string;
  readonly address: string;
  readonly layers: [number, number];
  /** memory (already loaded: no reload), local, cache (no transfer) or fetched. */
  readonly source: string;
  readonly bytes_transferred: number;
  readonly ms: number;
}

export class HerdCluster {
  private readonly clients = new Map<string, HerdNodeClient>();
  private current: Current;
  /** The nodes a re-plan may use: every node offered at start, less the ones found lost. */
  private candidates: PlanNode[];
  private recovering: Promise<void> | undefined;
  private closed = false;
  /** Tokens of the model's vocabulary (a delivered token's log-probabilities are checked against it). */
  readonly vocabSize: number;

  private constructor(
    readonly o: ClusterOptions,
    readonly source: ModelSource,
    readonly shape: ModelShape,
    nodes: readonly PlanNode[],
    plan: Plan,
    readonly server: CoordinatorServer,
    readonly deliverTo: string,
  ) {
    this.current = { plan, loads: [], generation: 0 };
    this.candidates = [...nodes];
    this.vocabSize = readConfig(source.file).vocabSize;
  }

  static async start(o: ClusterOptions): Promise<HerdCluster> {
    const source = await ModelSource.open(o.modelPath, o.cacheDir);
    const nodes = typeof o.nodes === 'function' ? o.nodes(source.hash) : o.nodes;
    const shape = modelShape(source.file, o.ctx, o.kvType);
    const plan = makePlan(nodes, shape, { stages: o.stages });
    if (plan.stages.some((s) => s.node.address === 'in-process')) {
      throw new ClusterError('usage', 'a plan over the in-process node runs without a cluster');
    }
    const server = new CoordinatorServer(source, o.key, o.log);
    const bindHost = o.interface ? interfaceIpv4(o.interface) : '0.0.0.0';
    const port = await server.start(bindHost);
    const first = parseHostPort(plan.stages[0].node.address);
    const host = o.interface ? bindHost : await localAddressFor(first.host, first.port);
    const deliverTo = formatHostPort({ host, port });
    const cluster = new HerdCluster(o, source, shape, nodes, plan, server, deliverTo);
    try {
      cluster.adopt(plan, await cluster.loadPlan(plan, LOAD_TIMEOUT_MS), 0);
    } catch (e) {
      await cluster.close();
      throw e;
    }
    return cluster;
  }

  /** The plan new sessions open on. */
  get plan(): Plan {
    return this.current.plan;
  }

  /** How each stage of the current plan got its shard. */
  get loads(): StageLoad[] {
    return this.current.loads;
  }

  /** The current plan's number: 0 at start, one more per re-plan. */
  get generation(): number {
    return this.current.generation;
  }

  client(address: string): HerdNodeClient {
    let c = this.clients.get(address);
    if (!c) {
      c = nodeClient(address);
      this.clients.set(address, c);
    }
    return c;
  }

  /** Has every stage of `plan` load its range. */
  private loadPlan(plan: Plan, timeoutMs: number): Promise<StageLoad[]> {
    return Promise.all(plan.stages.map((s) => this.loadStage(s.node, s.start, s.end, timeoutMs)));
  }

  /** Makes a loaded plan the one new sessions open on. */
  private adopt(plan: Plan, loads: StageLoad[], generation: number): void {
    this.current = { plan, loads, generation };
    this.server.nodes = plan.stages.map((s) => ({ address: s.node.address, info: undefined }));
  }

  private async loadStage(node: PlanNode, start: number, end: number, timeoutMs: number): Promise<StageLoad> {
    const t0 = performance.now();
    const client = this.client(node.address);
    const md = await authenticate(client, this.o.key, LOAD).catch((e: unknown) => {
      throw new ClusterError('shard', `node ${node.name} (${node.address}): ${describeCallError(e)}`);
    });
    const last = await new Promise<LoadProgress>((resolve, reject) => {
      let latest: LoadProgress | undefined;
      const call = client.loadShard(
        {
          modelHash: this.source.hash, modelSize: this.source.size, modelName: this.source.name, start, end,
          nLayers: this.source.nLayers, ctx: this.o.ctx, kvType: this.o.kvType === 'f16' ? KvType.KV_TYPE_F16 : KvType.KV_TYPE_F32,
          coordinator: this.deliverTo,
        },
        md,
        { deadline: new Date(Date.now() + timeoutMs) },
      );
      call.on('data', (p: LoadProgress) => {
        latest = p;
        this.o.log.log('debug', 'shard.progress', { node: node.name, phase: p.phase, done: p.bytesDone, total: p.bytesTotal });
        this.o.onProgress?.(node.name, [start, end], p);
      });
      call.on('error', (e) => reject(new ClusterError('shard', `node ${node.name} (${node.address}) could not load layers [${start}, ${end}): ${describeCallError(e)}`)));
      call.on('end', () => (latest?.phase === 'done' ? resolve(latest) : reject(new ClusterError('shard', `node ${node.name} ended LoadShard before it was done`))));
    });
    const load: StageLoad = {
      node: node.name, address: node.address, layers: [start, end], source: last.source,
      bytes_transferred: last.bytesTransferred, ms: Math.round(performance.now() - t0),
    };
    this.o.log.log('info', 'stage.loaded', { ...load, layers: load.layers });
    return load;
  }

  async openSession(sampling: SamplingOptions): Promise<PipelineSession> {
    return PipelineSession.open(this, sampling);
  }

  /**
   * After a pipeline of plan `generation` broke with `cause`: re-plans over the nodes that still
   * answer and loads the new ranges, once for every session that broke with that plan (a
   * session of an older plan finds the new one in place). Throws a ClusterError naming the lost
   * nodes when the model no longer fits the survivors or the new plan could not load.
   */
  recover(generation: number, cause: Error): Promise<void> {
    if (this.closed) return Promise.reject(cause);
    if (generation < this.current.generation) return Promise.resolve();
    this.recovering ??= this.replan(cause).finally(() => (this.recovering = undefined));
    return this.recovering;
  }

  /** Logs a recovery event and tells `onRecovery`. */
  report(e: RecoveryEvent): void {
    const { event, ...fields } = e;
    const level = event === 'node.lost' || (event === 'replan.done' && !e.ok) ? 'warn' : 'info';
    this.o.log.log(level, event, fields as Record<string, string | number | boolean | readonly (string | number)[]>);
    this.o.onRecovery?.(e);
  }

  private async replan(cause: Error): Promise<void> {
    const t0 = performance.now();
    const limit = this.o.recoverTimeoutMs ?? RECOVER_TIMEOUT_MS;
    const planned = this.current.plan.stages;
    let lostNames: string[] = [];
    try {
      const probes = await Promise.all(this.candidates.map(async (n) => ({ n, ...(await probe(n.address)) })));
      const lost = probes.filter((p) => p.error !== undefined);
      lostNames = lost.map((p) => `${p.n.name} (${p.n.address})`);
      for (const p of lost) {
        const stage = planned.find((s) => s.node.id === p.n.id);
        this.report({ event: 'node.lost', node: p.n.name, address: p.n.address, ...(stage ? { layers: [stage.start, stage.end] as const } : {}), error: p.error ?? '' });
      }
      // A survivor offers what it offered at start (its loaded layers are evicted for new ones),
      // and holds what it says it holds now.
      const survivors = probes.flatMap((p) => (p.info ? [{ ...p.n, holds: heldRanges(p.info, this.source.hash) }] : []));
      this.candidates = survivors;
      this.report({ event: 'replan.start', lost: lostNames, survivors: survivors.length, cause: cause.message });
      if (survivors.length === 0) throw new PlanError('no node answers');
      const want = this.o.stages === undefined ? undefined : Math.min(this.o.stages, survivors.length);
      const plan = makePlan(survivors, this.shape, { stages: want });
      let timer: NodeJS.Timeout | undefined;
      const loads = await Promise.race([
        this.loadPlan(plan, limit),
        new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new ClusterError('shard', `the new plan did not load in ${limit / 1000} s`)), limit))),
      ]).finally(() => clearTimeout(timer));
      if (this.closed) throw new ClusterError('pipeline', 'the coordinator closed');
      this.adopt(plan, loads, this.current.generation + 1);
      this.report({
        event: 'replan.done', ok: true, ms: Math.round(performance.now() - t0),
        plan: plan.stages.map((s) => `${s.node.name}@${s.node.address}[${s.start},${s.end})`), nodeIds: survivors.map((n) => n.id),
      });
    } catch (e) {
      const what = lostNames.length > 0 ? `lost node ${lostNames.join(', ')} mid-generation` : `the pipeline failed (${cause.message})`;
      const why = e instanceof PlanError ? `the model no longer fits the nodes left: ${e.message}` : `re-planning failed: ${(e as Error).message}`;
      const err = new ClusterError(e instanceof PlanError ? 'plan' : 'pipeline', `${what}, and ${why}`);
      this.report({ event: 'replan.done', ok: false, error: err.message, ms: Math.round(performance.now() - t0) });
      throw err;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
    await this.server.stop();
  }
}

/** The layer ranges of this model a node holds in memory or in its cache. */
function heldRanges(info: NodeInfo, modelHash: string): [number, number][] {
  return [...info.shards, ...info.cached].filter((s) => s.modelHash === modelHash).map((s) => [s.start, s.end]);
}

/**
 * Whether a node still answers: its Info, or why it counts as lost. A refused or reset
 * connection counts at once; silence only after PROBE_ATTEMPTS probes.
 */
async function probe(address: string): Promise<{ info?: NodeInfo; error?: string }> {
  let error = '';
  for (let i = 0; i < PROBE_ATTEMPTS; i++) {
    try {
      return { info: await fetchInfo(address, PROBE_TIMEOUT_MS) };
    } catch (e) {
      error = describeCallError(e);
      if (!(isServiceError(e) && e.code === status.DEADLINE_EXCEEDED)) break;
    }
  }
  return { error };
}

/** The local address this machine would use to reach host:port (a UDP connect sends nothing). */
function localAddressFor(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    s.once('error', (e) => {
      s.close();
      reject(new ClusterError('usage', `no route to ${host}: ${e.message}`));
    });
    s.connect(port, host, () => {
      const a = s.address().address;
      s.close();
      resolve(a);
    });
  });
}

/** A delivery's timings, checked against the plan: one per stage, in order, from the planned node. */
export function stageTimesOf(timings: readonly StageTiming[], stages: readonly Pick<PlannedStage, 'node' | 'start' | 'end'>[]): StageTime[] {
  checkTimings(timings, stages);
  return timings.map((t, i) => {
    const { node } = stages[i];
    if (t.nodeId !== node.id) throw invalid(`stage timing ${i} is from node ${t.nodeId}, the plan has ${node.name} (${node.id}) there`);
    return { node: node.name, nodeId: node.id, address: node.address, layers: [t.start, t.end], seconds: t.seconds };
  });
}

export class PipelineSession implements StagedSession {
  lastStages: readonly StageTime[] = [];
  logprobs: TokenLogprobs | undefined;
  private waiting: { tokens: readonly number[]; start: number; position: number; resolve: (t: number) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | undefined;
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
    const client = cluster.client(first.address);
    const md = await authenticate(client, o.key, FORWARD).catch((e: unknown) => {
      throw new ClusterError('pipeline', `stage 1 ${first.name} (${first.address}): ${describeCallError(e)}`);
    });
    const stream = client.forward(md);
    const session = new PipelineSession(cluster, id, stream, o.ctx, plan, generation);
    session.topLogprobs = sampling.logprobs;
    cluster.server.sinks.set(id, { deliver: (d) => session.onDelivery(d), fail: (r) => session.fail(new ClusterError('pipeline', r)) });

    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new ClusterError('pipeline', `the pipeline did not open in ${OPEN_TIMEOUT_MS / 1000} s`)), OPEN_TIMEOUT_MS);
      stream.on('data', (r: ForwardReply) => {
        if (r.ready) {
          clearTimeout(timer);
          resolve();
        }
      });
      stream.on('error', (e) => {
        clearTimeout(timer);
        const err = new ClusterError('pipeline', `pipeline (stage 1 ${first.name}, ${first.address}): ${describeCallError(e)}`);
        session.fail(err);
        reject(err);
      });
    });
    stream.write({
      open: {
        sessionId: id,
        modelHash: cluster.source.hash,
        route: plan.stages.map((s) => ({ address: s.node.address, start: s.start, end: s.end })),
        hop: 0,
        ctx: o.ctx,
        wire: o.wire === 'f16' ? DType.DTYPE_F16 : DType.DTYPE_F32,
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
      this.fail(new ClusterError('pipeline', `the last stage delivered position ${d.position}, expected ${w?.position ?? 'nothing'}`));
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
      const timer = setTimeout(() => this.fail(new ClusterError('pipeline', `no token from the pipeline in ${timeoutMs / 1000} s`)), timeoutMs);
      this.waiting = { tokens: [...tokens], start, position: start + tokens.length, resolve, reject, timer };
      this.stream.write({
        activation: { sessionId: this.id, position: start, tokenIds: [...tokens], hidden: Buffer.alloc(0), dtype: DType.DTYPE_UNSPECIFIED, dim: 0, timings: [], sampling },
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
