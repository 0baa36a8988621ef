// What `herd run` (and later the HTTP API) calls to get an InferenceSession: in-process for
// `--nodes local` (and for `auto` when nobody answers), else a pipeline over the herd.

import { hostname } from 'node:os';
import type { GgufFile } from '../../gguf/reader.ts';
import type { KernelBackend } from '../../kernels/backend.ts';
import { Transformer } from '../../model/transformer.ts';
import type { KvType } from '../../model/kv-cache.ts';
import { LocalSession, type InferenceSession } from '../../engine/session.ts';
import type { SamplingOptions } from '../../engine/sampler.ts';
import type { ClusterKey } from '../auth.ts';
import { jsonLogger, silentLogger } from '../log.ts';
import { LOCAL_ADDRESS, resolveNodes, withHoldings } from './nodes.ts';
import { HerdCluster, type StageLoad } from './pipeline.ts';
import { nodeProgress, type ProgressSink } from './progress.ts';

export interface OpenOptions {
  readonly file: GgufFile;
  readonly ctx: number;
  readonly kvType: KvType;
  readonly sampling: SamplingOptions;
  /** Kernels for an in-process run (the caller owns and closes it); default the js reference. */
  readonly backend?: KernelBackend;
  /** auto | local | host:port,… */
  readonly nodes: string;
  readonly stages?: number;
  readonly interface?: string;
  readonly key?: ClusterKey;
  readonly wire: 'f32' | 'f16';
  readonly discoveryTimeoutMs: number;
  readonly cacheDir?: string;
  /** One line for the user (stderr). */
  readonly note: (line: string) => void;
  /** Structured cluster logs on stderr. */
  readonly verbose?: boolean;
  /** Hears model loading (in-process) or each node's shard transfer and loading (cluster). */
  readonly progress?: ProgressSink;
}

export interface PlanEntry {
  readonly node: string;
  readonly address: string;
  readonly layers: [number, number];
}

export interface OpenedInference {
  readonly session: InferenceSession;
  readonly plan: PlanEntry[];
  /** How each stage got its shard (cluster runs only). */
  readonly shards?: StageLoad[];
  close(): Promise<void>;
}

export async function openInference(o: OpenOptions): Promise<OpenedInference> {
  const local = async (): Promise<OpenedInference> => {
    const progress = o.progress;
    const onProgress = progress && ((p: { stage: string; bytes: number; total: number }) => progress({ phase: 'load', stage: `${hostname()} ${p.stage}`, bytes: p.bytes, total: p.total }));
    const model = Transformer.load(o.file, { ctx: o.ctx, kvType: o.kvType, backend: o.backend, onProgress });
    return {
      session: new LocalSession(model, o.sampling),
      plan: [{ node: hostname(), address: LOCAL_ADDRESS, layers: [0, model.config.nLayers] }],
      close: async () => {},
    };
  };
  if (o.nodes.trim() === 'local') return local();

  const set = await resolveNodes({ nodes: o.nodes, interface: o.interface, timeoutMs: o.discoveryTimeoutMs, want: o.stages });
  for (const n of set.notes) o.note(n);
  if (set.mode === 'local') return local();

  const cluster = await HerdCluster.start({
    modelPath: o.file.path, nodes: (hash) => withHoldings(set, hash), stages: o.stages, ctx: o.ctx, kvType: o.kvType, wire: o.wire, key: o.key,
    interface: o.interface, cacheDir: o.cacheDir, log: o.verbose ? jsonLogger({ role: 'coordinator' }) : silentLogger,
    onProgress: o.progress && nodeProgress(o.progress),
  });
  for (const [i, l] of cluster.loads.entries()) {
    const how = l.source === 'fetched' ? `fetched ${(l.bytes_transferred / 1e6).toFixed(1)} MB` : `from ${l.source}`;
    o.note(`stage ${i + 1}: ${l.node} (${l.address}) layers [${l.layers[0]}, ${l.layers[1]}): ${how} in ${l.ms} ms`);
  }
  try {
    const session = await cluster.openSession(o.sampling);
    return {
      session,
      plan: cluster.plan.stages.map((s) => ({ node: s.node.name, address: s.node.address, layers: [s.start, s.end] })),
      shards: cluster.loads,
      close: async () => {
        await session.close();
        await cluster.close();
      },
    };
  } catch (e) {
    await cluster.close();
    throw e;
  }
}
