// Where a model's layers run, for `herd run` and `herd serve` alike: find the herd (`--nodes`),
// then load the model once — in-process for `--nodes local` (and for `auto` when nobody
// answers), else as a plan over the herd — and open a session per request on it.

import { hostname } from 'node:os';
import type { GgufFile } from '../../gguf/reader.ts';
import type { KernelBackend } from '../../kernels/backend.ts';
import { Transformer } from '../../model/transformer.ts';
import type { KvType } from '../../model/kv-cache.ts';
import { LocalSession, type InferenceSession } from '../../engine/session.ts';
import type { SamplingOptions, TokenLogprobs } from '../../engine/sampler.ts';
import type { ClusterKey } from '../auth.ts';
import { jsonLogger, silentLogger, type Logger } from '../log.ts';
// nodes.ts and pipeline.ts (discovery, gRPC) are imported when a herd is asked for: an
// in-process run never loads them, which keeps their memory off a Pi running a model alone.
import type { NodeSet } from './nodes.ts';
import type { RecoveryEvent, StagedSession, StageLoad, StageTime } from './pipeline.ts';
import { LOCAL_ADDRESS } from './local.ts';
import { nodeProgress, type ProgressSink } from './progress.ts';

/** Where and how the layers run: the flags `herd run` and `herd serve` share. */
export interface HerdOptions {
  /** auto | local | host:port,… */
  readonly nodes: string;
  readonly kvType: KvType;
  /** Kernels for an in-process run (the caller owns and closes it); default the js reference. */
  readonly backend?: KernelBackend;
  readonly stages?: number;
  readonly interface?: string;
  readonly key?: ClusterKey;
  readonly wire: 'f32' | 'f16';
  readonly discoveryTimeoutMs: number;
  readonly cacheDir?: string;
  /** Hears model loading (in-process) or each node's shard transfer and loading (cluster). */
  readonly progress?: ProgressSink;
  /** Hears a lost node, each re-plan and each session resumed on the new plan (cluster). */
  readonly onRecovery?: (e: RecoveryEvent) => void;
  /** Re-plans one request may go through after lost nodes before it fails (default 2). */
  readonly maxReplans?: number;
  /** Bound on one re-plan: probing the nodes, planning, loading the new ranges (default 5 min). */
  readonly recoverTimeoutMs?: number;
  /** Wait for one step's token before the pipeline counts as stalled (default 10 min). */
  readonly stepTimeoutMs?: number;
}

export type { RecoveryEvent };

export interface PlanEntry {
  readonly node: string;
  readonly address: string;
  readonly layers: [number, number];
}

interface Loaded {
  readonly plan: PlanEntry[];
  /** A new session with its own KV caches. */
  open(sampling: SamplingOptions): Promise<StagedSession>;
  close(): Promise<void>;
}

/** The whole model in this process. */
export interface LocalModel extends Loaded {
  readonly mode: 'local';
  readonly model: Transformer;
}

/**
 * The model over the herd: every session is its own pipeline through the stages. A node lost
 * mid-generation makes the herd re-plan over the survivors: `plan` and `shards` are the
 * current plan's, and sessions resume on it.
 */
export interface ClusterModel extends Loaded {
  readonly mode: 'cluster';
  /** How each stage got its shard. */
  readonly shards: StageLoad[];
}

/** A model loaded once, serving a session per request. */
export type LoadedModel = LocalModel | ClusterModel;

/** The nodes `--nodes` names, their notes told to `note`; undefined for `--nodes local`. */
export async function findHerd(o: HerdOptions, note: (line: string) => void): Promise<NodeSet | undefined> {
  if (o.nodes.trim() === 'local') return undefined;
  const { resolveNodes } = await import('./nodes.ts');
  const set = await resolveNodes({ nodes: o.nodes, interface: o.interface, timeoutMs: o.discoveryTimeoutMs, want: o.stages });
  for (const n of set.notes) note(n);
  return set;
}

/** Loads the model in-process (no set, or a local one) or has the herd's stages load it. */
export async function loadModel(o: HerdOptions & { readonly file: GgufFile; readonly ctx: number; readonly log: Logger }, set: NodeSet | undefined): Promise<LoadedModel> {
  if (!set || set.mode === 'local') {
    const node = hostname();
    const progress = o.progress;
    const onProgress = progress && ((p: { stage: string; bytes: number; total: number }) => progress({ phase: 'load', stage: `${node} ${p.stage}`, bytes: p.bytes, total: p.total }));
    const model = await Transformer.loadAsync(o.file, { ctx: o.ctx, kvType: o.kvType, backend: o.backend, onProgress });
    const plan: PlanEntry[] = [{ node, address: LOCAL_ADDRESS, layers: [0, model.config.nLayers] }];
    const stage = { node, nodeId: 'local', address: LOCAL_ADDRESS, layers: plan[0].layers };
    return { mode: 'local', model, plan, open: async (sampling) => new InProcessStage(new LocalSession(model, sampling), stage), close: async () => {} };
  }
  const [{ withHoldings }, { HerdCluster }, { ResumableSession }] = await Promise.all([import('./nodes.ts'), import('./pipeline.ts'), import('./resume.ts')]);
  const cluster = await HerdCluster.start({
    modelPath: o.file.path, nodes: (hash) => withHoldings(set, hash), stages: o.stages, ctx: o.ctx, kvType: o.kvType, wire: o.wire, key: o.key,
    interface: o.interface, cacheDir: o.cacheDir, log: o.log, onProgress: o.progress && nodeProgress(o.progress),
    onRecovery: o.onRecovery, recoverTimeoutMs: o.recoverTimeoutMs, stepTimeoutMs: o.stepTimeoutMs,
  });
  return {
    mode: 'cluster',
    get plan() {
      return cluster.plan.stages.map((s): PlanEntry => ({ node: s.node.name, address: s.node.address, layers: [s.start, s.end] }));
    },
    get shards() {
      return cluster.loads;
    },
    open: (sampling) => ResumableSession.open(cluster, sampling, o.maxReplans),
    close: () => cluster.close(),
  };
}

export interface OpenOptions extends HerdOptions {
  readonly file: GgufFile;
  readonly ctx: number;
  readonly sampling: SamplingOptions;
  /** One line for the user (stderr). */
  readonly note: (line: string) => void;
  /** Structured cluster logs on stderr. */
  readonly verbose?: boolean;
}

export interface OpenedInference {
  readonly session: InferenceSession;
  /** Where the layers run now (after a lost node, the plan over the survivors). */
  readonly plan: PlanEntry[];
  /** How each stage got its shard (cluster runs only). */
  readonly shards?: StageLoad[];
  close(): Promise<void>;
}

/** One session on a model loaded for it alone: what `herd run` generates with. */
export async function openInference(o: OpenOptions): Promise<OpenedInference> {
  const set = await findHerd(o, o.note);
  const onRecovery = o.onRecovery ?? ((e: RecoveryEvent) => o.note(describeRecovery(e)));
  const loaded = await loadModel({ ...o, onRecovery, log: o.verbose ? jsonLogger({ role: 'coordinator' }) : silentLogger }, set);
  const shards = loaded.mode === 'cluster' ? loaded.shards : undefined;
  for (const [i, l] of (shards ?? []).entries()) {
    const how = l.source === 'fetched' ? `fetched ${(l.bytes_transferred / 1e6).toFixed(1)} MB` : `from ${l.source}`;
    o.note(`stage ${i + 1}: ${l.node} (${l.address}) layers [${l.layers[0]}, ${l.layers[1]}): ${how} in ${l.ms} ms`);
  }
  try {
    const session = await loaded.open(o.sampling);
    return {
      session,
      get plan() {
        return loaded.plan;
      },
      shards,
      close: async () => {
        await session.close();
        await loaded.close();
      },
    };
  } catch (e) {
    await loaded.close();
    throw e;
  }
}

/** A recovery event as one line for the user. */
export function describeRecovery(e: RecoveryEvent): string {
  switch (e.event) {
    case 'node.lost':
      return `lost node ${e.node} (${e.address})${e.layers ? ` with layers [${e.layers[0]}, ${e.layers[1]})` : ''}: ${e.error}`;
    case 'replan.start':
      return `re-planning over the ${e.survivors} node(s) left`;
    case 'replan.done':
      return e.ok ? `re-planned in ${e.ms} ms: ${e.plan.join(' → ')}` : `re-planning failed: ${e.error}`;
    case 'request.resumed':
      return `resumed at position ${e.position} on the new plan (${e.steps} replay step(s), ${e.ms} ms)`;
  }
}

/** The whole model in this process as a pipeline of one stage, timing its own steps. */
class InProcessStage implements StagedSession {
  lastStages: readonly StageTime[] = [];

  constructor(
    private readonly inner: InferenceSession,
    private readonly stage: Omit<StageTime, 'seconds'>,
  ) {}

  get ctx(): number {
    return this.inner.ctx;
  }

  get logprobs(): TokenLogprobs | undefined {
    return this.inner.logprobs;
  }

  async step(tokens: readonly number[], start: number): Promise<number> {
    const t0 = performance.now();
    const token = await this.inner.step(tokens, start);
    this.lastStages = [{ ...this.stage, seconds: (performance.now() - t0) / 1000 }];
    return token;
  }

  resample(sampling: SamplingOptions): void {
    this.inner.resample(sampling);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
