// The whole model in this process: `herd run --nodes local` (and `auto` when no node answers),
// `herd serve` and `herd chat` on one machine. One Transformer, one SliceRunner over all its
// layers; every session its own KV cache and sampler on that runner. Sessions stepping at the
// same time share the runner's steps (engine/batcher.ts: continuous batching), each getting
// exactly the tokens it gets alone.

import { hostname } from 'node:os';
import type { GgufFile } from '../gguf/reader.ts';
import type { KernelBackend } from '../kernels/backend.ts';
import type { KvType } from '../model/kv-cache.ts';
import { Transformer } from '../model/transformer.ts';
import type { LoadProgress } from '../model/weights.ts';
import type { SamplingOptions, TokenLogprobs } from './sampler.ts';
import type { PlanEntry, ServedModel, StagedSession, StageTime } from './session.ts';
import { StepBatcher } from './batcher.ts';
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
  /** Runs the steps of all its sessions together. */
  readonly batcher: StepBatcher;
}

/** Reads every layer of the model into this process. */
export async function loadLocalModel(file: GgufFile, o: LocalLoadOptions): Promise<LocalModel> {
  const node = hostname();
  const onProgress = o.onProgress && ((p: LoadProgress) => o.onProgress?.({ ...p, stage: `${node} ${p.stage}` }));
  const model = await Transformer.loadAsync(file, { ctx: o.ctx, kvType: o.kvType, backend: o.backend, onProgress });
  const batcher = new StepBatcher(new SliceRunner(model));
  const plan: PlanEntry[] = [{ node, address: LOCAL_ADDRESS, layers: [0, model.config.nLayers] }];
  const stage = { node, nodeId: 'local', address: LOCAL_ADDRESS, layers: plan[0].layers };
  return {
    mode: 'local',
    model,
    batcher,
    plan,
    open: async (sampling) => new LocalSession(model, sampling, batcher, stage),
    close: async () => {},
  };
}

/** A session on the whole model in this process: one slice, timing its own steps. */
export class LocalSession implements StagedSession {
  lastStages: readonly StageTime[] = [];
  private readonly seq: Sequence;
  private closed = false;

  constructor(
    model: Transformer,
    sampling: SamplingOptions,
    /** Sessions of one model share its runner (and its workspace) through one batcher: their steps share the runner's. */
    private readonly batcher = new StepBatcher(new SliceRunner(model)),
    private readonly stage: Omit<StageTime, 'seconds'> = {
      node: hostname(),
      nodeId: 'local',
      address: LOCAL_ADDRESS,
      layers: [0, model.config.nLayers],
    },
  ) {
    if (!model.isFirst || !model.isLast) throw new Error('a local session needs every layer of the model');
    this.seq = batcher.runner.open(model.ctx, sampling);
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

  /** Queued for the next step the model's sessions share; resolves with the token sampled after the last. */
  async step(tokens: readonly number[], start: number): Promise<number> {
    if (this.closed) throw new Error('the session is closed');
    const { token, seconds } = await this.batcher.step({ seq: this.seq, tokens, start });
    this.lastStages = [{ ...this.stage, seconds }];
    return token;
  }

  resample(sampling: SamplingOptions): void {
    this.seq.resample(sampling);
  }

  /** Drops a step still waiting (it rejects with SessionClosedError); the KV cache goes with the session. */
  async close(): Promise<void> {
    this.closed = true;
    this.batcher.cancel(this.seq);
  }
}
