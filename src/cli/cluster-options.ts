// Flags and helpers shared by the commands: each option group is declared once here (the
// cluster key, the herd a model runs on, sampling).

import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Argv } from 'yargs';
import { ClusterError } from '../cluster/errors.ts';
import { defaultSampling } from '../engine/sampler.ts';
import { BACKEND_CHOICES, type BackendChoice } from '../kernels/select.ts';
import type { HostOptions } from '../api/host.ts';
import type { KernelBackend } from '../kernels/backend.ts';
import { UsageError } from './errors.ts';
import { DEFAULT_SYNC, SYNC_FORMATS } from '../cluster/sync/format.ts';

export interface KeyArgs {
  clusterKey?: string;
  clusterKeyFile?: string;
}

export function keyOptions<T>(y: Argv<T>) {
  return y
    .option('cluster-key', {
      type: 'string',
      describe: 'Shared secret of the herd (prefer --cluster-key-file: argv is visible to other users)',
    })
    .option('cluster-key-file', { type: 'string', describe: 'File holding the shared secret of the herd' });
}

/** Where a served model's layers run (run, chat, serve), under "Herd:" in the help. */
export function herdOptions<T>(y: Argv<T>, describe: { interface: string; discoveryTimeout?: string }) {
  return keyOptions(
    y
      .option('nodes', {
        type: 'string',
        default: 'local',
        describe: 'local (in-process), auto (mDNS; in-process if none answer), or host:port,…',
      })
      .option('stages', {
        type: 'number',
        describe: 'Exactly this many pipeline stages (default: as many as make it faster)',
      })
      .option('interface', { alias: 'i', type: 'string', describe: describe.interface })
      .option('wire', {
        choices: ['f32', 'f16'] as const,
        default: 'f32' as const,
        describe: 'Element type of hidden states between stages',
      })
      .option('discovery-timeout', {
        type: 'number',
        default: 2,
        describe: describe.discoveryTimeout ?? 'Seconds to wait for nodes to answer (--nodes auto)',
      }),
  ).group(['nodes', 'stages', 'interface', 'wire', 'discovery-timeout', 'cluster-key', 'cluster-key-file'], 'Herd:');
}

/** Tensor-parallel groups (run, plan), under "Herd:" in the help. */
export function tensorOptions<T>(y: Argv<T>) {
  return y
    .option('tensor', {
      type: 'number',
      describe:
        'Make every stage a group of N nodes that split each layer (attention by KV heads, FFN by rows) and sum their partial results twice per layer; 1: one node per stage (default: groups only where predicted 15% faster from measured speed and link latency)',
    })
    .option('sync', {
      choices: SYNC_FORMATS,
      default: DEFAULT_SYNC,
      describe: "Element type of the partial sums a group's members exchange (f32 gives one node's tokens exactly)",
    })
    .group(['tensor', 'sync'], 'Herd:');
}

/**
 * Checks --tensor: an integer >= 1 (1: one node per stage; unset: the planner chooses). Given
 * the --nodes that will run it (run, chat, serve), a group needs nodes: `local` is refused.
 */
export function tensorArg(v: number | undefined, nodes?: string): number | undefined {
  if (v === undefined) return undefined;
  if (!(Number.isInteger(v) && v >= 1)) throw new UsageError(`--tensor must be an integer >= 1, got ${v}`);
  if (v > 1 && nodes?.trim() === 'local')
    throw new UsageError('--tensor splits the layers across nodes: name them with --nodes (or auto)');
  return v;
}

/** The sampler's flags that run and chat share. */
export function samplingOptions<T>(y: Argv<T>) {
  return y
    .option('temp', { type: 'number', default: defaultSampling.temperature, describe: 'Temperature; 0 is greedy' })
    .option('top-k', {
      type: 'number',
      default: defaultSampling.topK,
      describe: 'Keep the k most likely tokens (0: all)',
    })
    .option('top-p', { type: 'number', default: defaultSampling.topP, describe: 'Nucleus sampling mass (1: off)' })
    .option('min-p', {
      type: 'number',
      default: defaultSampling.minP,
      describe: 'Drop tokens below this share of the most likely (0: off)',
    })
    .option('repeat-penalty', {
      type: 'number',
      default: defaultSampling.repeatPenalty,
      describe: 'Penalise recent tokens (1: off)',
    });
}

export const CHAT_TEMPLATE_HELP =
  "Chat template: chatml, llama2, llama3, zephyr, model, or a Jinja file (default: the model's, else a fallback)";

/** The model and how this process runs its layers (run, chat, serve). */
export function engineOptions<T>(y: Argv<T>, describe: { ctx: string; backend: string }) {
  return y
    .option('model', {
      alias: 'm',
      type: 'string',
      describe:
        'GGUF model: a file, a stored model (herd models) or a pulled hf.co/ORG/REPO[:QUANT] (default: the bundled stories260K)',
    })
    .option('ctx', { alias: 'c', type: 'number', describe: describe.ctx })
    .option('kv-type', { choices: ['f32', 'f16'] as const, default: 'f16' as const, describe: 'KV cache element type' })
    .option('backend', { choices: BACKEND_CHOICES, default: 'auto' as BackendChoice, describe: describe.backend })
    .option('threads', {
      alias: 't',
      type: 'number',
      describe: 'Kernel threads (default: physical cores; the js backend runs on one)',
    });
}

export function defaultCacheDir(): string {
  if (process.env.HERD_CACHE_DIR) return process.env.HERD_CACHE_DIR;
  const base = process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache');
  return join(base, 'herd');
}

/** Cluster errors about what the user typed become usage errors (exit 2). */
export function asUsage<T>(f: () => T): T {
  const map = (e: unknown): never => {
    if (e instanceof ClusterError && e.code === 'usage') throw new UsageError(e.message);
    throw e;
  };
  try {
    const r = f();
    return (r instanceof Promise ? r.catch(map) : r) as T;
  } catch (e) {
    return map(e);
  }
}

type HostModelOptions = Pick<
  HostOptions,
  | 'modelPath'
  | 'nodes'
  | 'ctx'
  | 'kvType'
  | 'backend'
  | 'stages'
  | 'tensor'
  | 'sync'
  | 'interface'
  | 'key'
  | 'wire'
  | 'discoveryTimeoutMs'
  | 'cacheDir'
  | 'chatTemplate'
>;

/** What `herd serve` and `herd chat` load: the model file, and the herd and engine flags they share. */
export function hostModelOptions(
  args: {
    nodes: HostOptions['nodes'];
    ctx?: number;
    kvType: HostOptions['kvType'];
    stages?: number;
    tensor?: number;
    sync: NonNullable<HostOptions['sync']>;
    interface?: string;
    wire: HostOptions['wire'];
    discoveryTimeout: number;
    chatTemplate?: string;
  },
  modelPath: string,
  backend: KernelBackend,
  key: HostOptions['key'],
): HostModelOptions {
  const tensor = tensorArg(args.tensor, args.nodes);
  return {
    modelPath,
    nodes: args.nodes,
    ctx: args.ctx,
    kvType: args.kvType,
    backend,
    stages: args.stages,
    tensor,
    sync: args.sync,
    interface: args.interface,
    key,
    wire: args.wire,
    discoveryTimeoutMs: args.discoveryTimeout * 1000,
    cacheDir: defaultCacheDir(),
    chatTemplate: args.chatTemplate,
  };
}
