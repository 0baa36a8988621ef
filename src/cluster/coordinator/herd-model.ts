// The model over the herd, what cluster/ offers a server: find the nodes `--nodes` names, then
// have them load the model as a plan of stages and open a pipeline per session on it, which
// re-plans and resumes when a node is lost. (A model in this process is engine/local.ts; the
// choice between the two is api/open.ts.)

import type { GgufFile } from '../../gguf/reader.ts';
import type { KvType } from '../../model/kv-cache.ts';
import { shareJson } from '../../model/tensor-share.ts';
import type { PlanEntry, ServedModel } from '../../engine/session.ts';
import type { SyncFormat } from '../sync/format.ts';
import type { ClusterKey } from '../auth.ts';
import type { Logger } from '../log.ts';
// nodes.ts and cluster.ts (discovery, gRPC) are imported when a herd is asked for: an
// in-process run never loads them, which keeps their memory off a Pi running a model alone.
import type { NodeSet } from './nodes.ts';
import type { StageLoad } from './cluster.ts';
import type { RecoveryEvent } from './recovery.ts';
import { nodeProgress, type ProgressSink } from './progress.ts';

/** Where and how the layers run over the herd: the flags `herd run`, `herd serve` and `herd chat` share. */
export interface HerdOptions {
  /** auto | local | host:port,… */
  readonly nodes: string;
  readonly kvType: KvType;
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
  /** Sessions whose KV caches and buffers the plan fits on every node at once (`herd serve --parallel`; default 1). */
  readonly sessions?: number;
  /** Every stage a tensor-parallel group of this many nodes (`--tensor`). */
  readonly tensor?: number;
  /** Activations between a group's members (`--sync`). */
  readonly sync?: SyncFormat;
}

export type { RecoveryEvent };

/**
 * The model over the herd: every session is its own pipeline through the stages. A node lost
 * mid-generation makes the herd re-plan over the survivors: `plan` and `shards` are the
 * current plan's, and sessions resume on it.
 */
export interface ClusterModel extends ServedModel {
  readonly mode: 'cluster';
  /** How each stage got its shard. */
  readonly shards: StageLoad[];
  /** Why the planner chose the current plan (planner.ts `Plan.reason`). */
  readonly reason: string;
}

/** The nodes `--nodes` names, their notes told to `note`; undefined for `--nodes local`. */
export async function findHerd(o: HerdOptions, note: (line: string) => void): Promise<NodeSet | undefined> {
  if (o.nodes.trim() === 'local') return undefined;
  const { resolveNodes } = await import('./nodes.ts');
  const set = await resolveNodes({
    nodes: o.nodes,
    interface: o.interface,
    timeoutMs: o.discoveryTimeoutMs,
    want: o.stages !== undefined && o.tensor !== undefined ? o.stages * o.tensor : o.stages,
    key: o.key,
  });
  for (const n of set.notes) note(n);
  return set;
}

/** Has the herd's stages load the model (the nodes of `set`, with what each already holds). */
export async function loadHerdModel(
  o: HerdOptions & { readonly file: GgufFile; readonly ctx: number; readonly log: Logger },
  set: NodeSet,
): Promise<ClusterModel> {
  const [{ withHoldings }, { HerdCluster }, { ResumableSession }] = await Promise.all([
    import('./nodes.ts'),
    import('./cluster.ts'),
    import('./resume.ts'),
  ]);
  const cluster = await HerdCluster.start({
    modelPath: o.file.path,
    nodes: (hash) => withHoldings(set, hash),
    stages: o.stages,
    ctx: o.ctx,
    kvType: o.kvType,
    wire: o.wire,
    key: o.key,
    interface: o.interface,
    cacheDir: o.cacheDir,
    log: o.log,
    onProgress: o.progress && nodeProgress(o.progress),
    onRecovery: o.onRecovery,
    recoverTimeoutMs: o.recoverTimeoutMs,
    stepTimeoutMs: o.stepTimeoutMs,
    sessions: o.sessions,
    tensor: o.tensor,
    sync: o.sync,
  });
  return {
    mode: 'cluster',
    get plan() {
      return cluster.plan.stages.map((s): PlanEntry => ({
        node: s.node.name,
        address: s.node.address,
        layers: [s.start, s.end],
        nodes: (s.members ?? [{ node: s.node, share: undefined }]).map((m) => ({
          name: m.node.name,
          address: m.node.address,
          share: m.share ? shareJson(m.share) : null,
        })),
      }));
    },
    get shards() {
      return cluster.loads;
    },
    get reason() {
      return cluster.plan.reason;
    },
    open: (sampling) => ResumableSession.open(cluster, sampling, o.maxReplans),
    close: () => cluster.close(),
  };
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
