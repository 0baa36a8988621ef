// The shapes and constants of a llama-family model, read from GGUF metadata once.

import { quoted, type GgufFile } from '../gguf/reader.ts';

export const ARCHITECTURES = ['llama', 'qwen2', 'qwen3'] as const;
export type Architecture = (typeof ARCHITECTURES)[number];
const MAX_VOCAB = 1 << 22;

export interface ModelConfig {
  readonly arch: Architecture;
  readonly nLayers: number;
  readonly dim: number;
  readonly nHeads: number;
  readonly nKvHeads: number;
  readonly headDim: number;
  readonly ffnDim: number;
  readonly vocabSize: number;
  /** Context length the model was trained with (llama.context_length). */
  readonly ctxTrain: number;
  readonly rmsEps: number;
  readonly ropeBase: number;
  /** 1 / linear scaling factor. */
  readonly ropeFreqScale: number;
  /** Leading elements of each head that RoPE rotates. */
  readonly ropeDims: number;
  /** NeoX pairing (i, i + dims/2) instead of adjacent pairs. */
  readonly ropeNeox: boolean;
}

export class ModelError extends Error {
  constructor(
    readonly path: string,
    detail: string,
  ) {
    super(`${path}: ${detail}`);
    this.name = 'ModelError';
  }
}

function isArchitecture(a: string): a is Architecture {
  return (ARCHITECTURES as readonly string[]).includes(a);
}

export function readConfig(file: GgufFile): ModelConfig {
  const arch = file.string('general.architecture');
  if (!isArchitecture(arch)) {
    throw new ModelError(
      file.path,
      `architecture ${quoted(arch)} is not supported (supported: ${ARCHITECTURES.join(', ')})`,
    );
  }
  const k = (name: string) => `${arch}.${name}`;
  const dim = file.number(k('embedding_length'));
  const nHeads = file.number(k('attention.head_count'));
  const nKvHeads = file.number(k('attention.head_count_kv'), nHeads);
  const headDim = file.number(k('attention.key_length'), dim / nHeads);
  // A middle stage's slice file holds no embedding: the vocabulary size then comes from the
  // metadata the slice keeps.
  const embd = file.tensor('token_embd.weight');
  const tokens = file.array('tokenizer.ggml.tokens');
  const vocabSize = embd?.dims[1] ?? file.number(k('vocab_size'), tokens?.length ?? 0);

  const scalingType = file.string(k('rope.scaling.type'), 'none');
  let ropeFreqScale = 1;
  if (scalingType === 'linear') ropeFreqScale = 1 / file.number(k('rope.scaling.factor'), 1);
  else if (scalingType !== 'none') {
    throw new ModelError(file.path, `RoPE scaling ${quoted(scalingType)} is not supported (supported: none, linear)`);
  }
  if (file.has(k('rope.scale_linear'))) ropeFreqScale = 1 / file.number(k('rope.scale_linear'));

  const config: ModelConfig = {
    arch,
    nLayers: file.number(k('block_count')),
    dim,
    nHeads,
    nKvHeads,
    headDim,
    ffnDim: file.number(k('feed_forward_length')),
    vocabSize,
    ctxTrain: file.number(k('context_length')),
    rmsEps: file.number(k('attention.layer_norm_rms_epsilon')),
    ropeBase: file.number(k('rope.freq_base'), 10000),
    ropeFreqScale,
    ropeDims: file.number(k('rope.dimension_count'), headDim),
    ropeNeox: arch !== 'llama',
  };
  const bad = (what: string) => new ModelError(file.path, what);
  for (const key of ['nLayers', 'dim', 'nHeads', 'nKvHeads', 'headDim', 'ffnDim', 'vocabSize', 'ctxTrain'] as const) {
    if (!Number.isInteger(config[key]) || config[key] <= 0)
      throw bad(`${key} must be a positive integer, got ${config[key]}`);
  }
  // A middle stage takes its vocabulary size from metadata, and sizes its logits buffer by it:
  // bounded, so a hostile number cannot make it allocate gigabytes (real vocabularies stay
  // under 300k tokens).
  if (config.vocabSize > MAX_VOCAB) throw bad(`vocabSize ${config.vocabSize} exceeds the ${MAX_VOCAB} herd accepts`);
  if (nHeads % nKvHeads !== 0) throw bad(`head_count ${nHeads} is not a multiple of head_count_kv ${nKvHeads}`);
  if (config.ropeDims % 2 !== 0 || config.ropeDims > headDim)
    throw bad(`rope.dimension_count ${config.ropeDims} must be even and at most the head size ${headDim}`);
  if (!(config.rmsEps > 0)) throw bad(`layer_norm_rms_epsilon must be positive, got ${config.rmsEps}`);
  return config;
}
