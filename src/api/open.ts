// Where a model's layers run, for `herd run`, `herd serve` and `herd chat` alike: find the
// nodes `--nodes` names, then load the model once — in this process (engine/local.ts) for
// `--nodes local` and for `auto` when nobody answers, else as a plan over the herd
// (cluster/coordinator/herd-model.ts) — and open a session per request on it.

import type { GgufFile } from '../gguf/reader.ts';
import type { KernelBackend } from '../kernels/backend.ts';
import { loadLocalModel, type LocalModel } from '../engine/local.ts';
import type { InferenceSession, PlanEntry } from '../engine/session.ts';
import type { SamplingOptions } from '../engine/sampler.ts';
import { jsonLogger, silentLogger, type Logger } from '../cluster/log.ts';
import type { NodeSet } from '../cluster/coordinator/nodes.ts';
import type { StageLoad } from '../cluster/coordinator/cluster.ts';
import {
  describeRecovery,
  findHerd,
  loadHerdModel,
  type ClusterModel,
  type HerdOptions,
  type RecoveryEvent,
} from '../cluster/coordinator/herd-model.ts';

/** Where and how the layers run: the flags `herd run`, `herd serve` and `herd chat` share. */
export interface ModelOptions extends HerdOptions {
  /** Kernels for an in-process run (the caller owns and closes them); default the js reference. */
  readonly backend?: KernelBackend;
}

/** A model loaded once, serving a session per request. */
export type LoadedModel = LocalModel | ClusterModel;

/** Loads the model in-process (no set, or a local one) or has the herd's stages load it. */
export async function loadModel(
  o: ModelOptions & { readonly file: GgufFile; readonly ctx: number; readonly log: Logger },
  set: NodeSet | undefined,
): Promise<LoadedModel> {
  if (set && set.mode !== 'local') return loadHerdModel(o, set);
  const progress = o.progress;
  return loadLocalModel(o.file, {
    ctx: o.ctx,
    kvType: o.kvType,
    backend: o.backend,
    onProgress: progress && ((p) => progress({ phase: 'load', ...p })),
  });
}

export interface OpenOptions extends ModelOptions {
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
  /** Why the planner chose the plan (cluster runs only). */
  readonly planReason?: string;
  close(): Promise<void>;
}

/** One session on a model loaded for it alone: what `herd run` generates with. */
export async function openInference(o: OpenOptions): Promise<OpenedInference> {
  const set = await findHerd(o, o.note);
  const onRecovery = o.onRecovery ?? ((e: RecoveryEvent) => o.note(describeRecovery(e)));
  const loaded = await loadModel(
    { ...o, onRecovery, log: o.verbose ? jsonLogger({ role: 'coordinator' }) : silentLogger },
    set,
  );
  const shards = loaded.mode === 'cluster' ? loaded.shards : undefined;
  if (loaded.mode === 'cluster') o.note(`plan: ${loaded.reason}`);
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
      get planReason() {
        return loaded.mode === 'cluster' ? loaded.reason : undefined;
      },
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
