// The whole model in this process: `herd run --nodes local` (and `auto` when no node answers),
// `herd serve` and `herd chat` on one machine. One Transformer, one SliceRunner over all its
// layers; every session its own KV cache and sampler on that runner. A step runs start to end
// without yielding, so sessions take turns step by step and never share the runner's rows.

import { hostname } from 'node:os';
import type { GgufFile } from '../gguf/reader.ts';
import type { KernelBackend } from '../kernels/backend.ts';
import type { KvType } from '../model/kv-cache.ts';
import { Transformer } from '../model/transformer.ts';
import type { LoadProgress } from '../model/weights.ts';
import type { SamplingOptions, TokenLogprobs } from './sampler.ts';
import type { PlanEntry, ServedModel, StagedSession, StageTime } from './session.ts';
import { SliceRunner, type Sequence } from './slice.ts';

/** The address a plan gives a stage that runs in this process rather than on a node. */
export const LOCAL_ADDRESS = 'in-process';

export interface LocalLoadOptions {
  readonly ctx: number;
  readonly kvType: KvType;
  /** Kernels (the caller owns and closes them); default the js reference. */
  readonly backend?: KernelBackend;
  /** Hears the bytes read after each tensor, the stage named `<host> <layers>`. */
  readonly onProgress?: (p: LoadProgress) => void;
}

/** The whole model in this process. */
export interface LocalModel extends ServedModel {
  readonly mode: 'local';
  readonly model: Transformer;
}

/** Reads every layer of the model into this process. */
export async function loadLocalModel(file: GgufFile, o: LocalLoadOptions): Promise<LocalModel> {
  const node = hostname();
  const onProgress = o.onProgress && ((p: LoadProgress) => o.onProgress?.({ ...p, stage: `${node} ${p.stage}` }));
  const model = await Transformer.loadAsync(file, { ctx: o.ctx, kvType: o.kvType, backend: o.backend, onProgress });
  const runner = new SliceRunner(model);
  const plan: PlanEntry[] = [{ node, address: LOCAL_ADDRESS, layers: [0, model.config.nLayers] }];
  const stage = { node, nodeId: 'local', address: LOCAL_ADDRESS, layers: plan[0].layers };
  return {
    mode: 'local',
    model,
    plan,
    open: async (sampling) => new LocalSession(model, sampling, runner, stage),
    close: async () => {},
  };
}

/** A session on the whole model in this process: one slice, timing its own steps. */
export class LocalSession implements StagedSession {
  lastStages: readonly StageTime[] = [];
  private readonly seq: Sequence;

  constructor(
    model: Transformer,
    sampling: SamplingOptions,
    /** Sessions of one model share its runner (and its workspace). */
    private readonly runner = new SliceRunner(model),
    private readonly stage: Omit<StageTime, 'seconds'> = {
      node: hostname(),
      nodeId: 'local',
      address: LOCAL_ADDRESS,
      layers: [0, model.config.nLayers],
    },
  ) {
    if (!model.isFirst || !model.isLast) throw new Error('a local session needs every layer of the model');
    this.seq = runner.open(model.ctx, sampling);
  }

  get ctx(): number {
    return this.seq.ctx;
  }

  get tokens(): readonly number[] {
    return this.seq.tokens;
  }

  get logprobs(): TokenLogprobs | undefined {
    return this.seq.logprobs;
  }

  async step(tokens: readonly number[], start: number): Promise<number> {
    const { sampled, seconds } = await this.runner.step([{ seq: this.seq, tokens, start }]);
    this.lastStages = [{ ...this.stage, seconds }];
    return sampled[0];
  }

  resample(sampling: SamplingOptions): void {
    this.seq.resample(sampling);
  }

  async close(): Promise<void> {}
}
