// Tiny synthetic GGUF models with random weights, for checking herd's forward pass against
// llama.cpp on architectures no small real file exists for here (qwen2's QKV bias, qwen3's
// per-head q/k RMSNorm and key_length ≠ dim / heads, tied embeddings).
//
// Everything follows from the seed: a mulberry32 stream and Box-Muller normals, so the same
// options give byte-identical files on every machine. The vocabulary (512 SentencePiece
// tokens) is copied from the repository's models/stories260K.gguf.
//
// Each matrix has std gain / sqrt(fan_in) (the head gain 3, logits of std ~3), so next-token
// distributions are peaked, not the flat ~1/512 a uniform std of 0.02 gives at this width.
//
// Layout as llama.cpp's converters write it: 2-D weights in the chosen type, norm weights and
// biases always f32; ggml dimension order (dims[0] is the row length, i.e. the input width).

import { fileURLToPath } from 'node:url';
import { GgufFile } from '../gguf/reader.ts';
import { copyMetadata, meta, writeGguf, type MetaEntry, type TensorSpec } from '../gguf/writer.ts';
import { GgmlType, ggmlTypeInfo, rowBytes } from '../ggml/types.ts';
import { kernelType } from '../kernels/types.ts';
import { chooseType, quantTarget } from './quantize.ts';
import { ARCHITECTURES, type Architecture, type ModelConfig } from './config.ts';

/** Every architecture herd runs: the parity tests need a file of each. */
export const SYNTH_ARCHS = ARCHITECTURES;
export type SynthArch = Architecture;
/** A quantization target as `herd quantize` names them: f32, f16, bf16, q8_0, q4_0, q4_k_m, … */
export type SynthWeightType = string;

/** llama.cpp's Llama SentencePiece vocabulary (32000 tokens), bundled for the real shapes. */
export const LLAMA_VOCAB = fileURLToPath(new URL('../../models/llama-spm-vocab.gguf', import.meta.url));

/** Real model shapes with random weights: what benchmarks and cluster trials need. */
export const SYNTH_SHAPES = {
  tinyllama: { arch: 'llama', dim: 2048, nLayers: 22, nHeads: 32, nKvHeads: 4, ffnDim: 5632, ctxTrain: 2048 },
  'llama2-7b': { arch: 'llama', dim: 4096, nLayers: 32, nHeads: 32, nKvHeads: 32, ffnDim: 11008, ctxTrain: 4096 },
} as const;
export type SynthShape = keyof typeof SYNTH_SHAPES;

/** A model of a real shape: std 0.02 weights and the Llama vocabulary, like a fresh checkpoint. */
export function synthShape(shape: SynthShape, type: SynthWeightType, seed: number, out: string): SynthModel {
  const s = SYNTH_SHAPES[shape];
  if (!s) throw new RangeError(`unknown shape "${shape}" (known: ${Object.keys(SYNTH_SHAPES).join(', ')})`);
  return synthModel({
    ...s,
    type,
    seed,
    out,
    std: 0.02,
    vocabFrom: LLAMA_VOCAB,
    name: `herd-synth-${shape}-${type}-s${seed}`,
  });
}

/** The repository's stories260K model, whose vocabulary the synthetic models reuse. */
export const DEFAULT_VOCAB_SOURCE = fileURLToPath(new URL('../../models/stories260K.gguf', import.meta.url));

export interface SynthOptions {
  readonly arch: SynthArch;
  /** Type of the 2-D weight matrices, chosen per tensor as llama-quantize would (norms and biases stay f32). */
  readonly type: SynthWeightType;
  /** One std for every matrix (as real checkpoints have, ~0.02) instead of the per-matrix gains. */
  readonly std?: number;
  readonly seed: number;
  /** Path of the GGUF file to write. */
  readonly out: string;
  /** No output.weight: the head reuses token_embd.weight. */
  readonly tied?: boolean;
  readonly dim?: number;
  readonly nLayers?: number;
  readonly nHeads?: number;
  readonly nKvHeads?: number;
  /** Per-head size; for qwen3 it is written as key_length/value_length and may differ from dim / nHeads. */
  readonly headDim?: number;
  readonly ffnDim?: number;
  readonly ctxTrain?: number;
  /** A GGUF file whose tokenizer.ggml.* metadata (and hence vocab size) is copied. */
  readonly vocabFrom?: string;
  /** general.name; defaults to one naming the options. */
  readonly name?: string;
}

/** A written model: its file, weight type and tying, and the config herd reads back from it. */
export interface SynthModel extends Omit<ModelConfig, 'ropeFreqScale' | 'ropeDims' | 'ropeNeox'> {
  readonly path: string;
  readonly type: SynthWeightType;
  readonly tied: boolean;
  readonly tensorCount: number;
  readonly fileSize: number;
}

/** Deterministic uniform and normal numbers from a 32-bit seed (mulberry32 + Box-Muller). */
export class SynthRng {
  private state: number;
  private spare: number | undefined;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Standard normal. */
  normal(): number {
    if (this.spare !== undefined) {
      const s = this.spare;
      this.spare = undefined;
      return s;
    }
    let u = 0;
    while (u === 0) u = this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  /** n normals with mean and std, as f32. */
  normals(n: number, std: number, mean = 0): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = mean + std * this.normal();
    return out;
  }
}

interface ArchDefaults {
  dim: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  ffnDim: number;
  ropeBase: number;
  rmsEps: number;
}

// Small but real shapes: grouped-query attention (2 query heads per KV head); qwen3 with a
// head size that is not dim / heads, as in the real Qwen3 models.
const defaults: Record<SynthArch, ArchDefaults> = {
  llama: { dim: 64, nHeads: 4, nKvHeads: 2, headDim: 16, ffnDim: 192, ropeBase: 10000, rmsEps: 1e-5 },
  qwen2: { dim: 64, nHeads: 4, nKvHeads: 2, headDim: 16, ffnDim: 192, ropeBase: 1000000, rmsEps: 1e-6 },
  qwen3: { dim: 64, nHeads: 4, nKvHeads: 2, headDim: 32, ffnDim: 192, ropeBase: 1000000, rmsEps: 1e-6 },
};

/** The tokenizer.* keys of the vocabulary source, with the types they were stored with. */
function copyTokenizer(source: GgufFile): { entries: MetaEntry[]; vocabSize: number } {
  const tokens = source.array('tokenizer.ggml.tokens');
  if (!tokens) throw new Error(`${source.path}: no tokenizer.ggml.tokens to copy the vocabulary from`);
  return { entries: copyMetadata(source, (key) => key.startsWith('tokenizer.')), vocabSize: tokens.length };
}

function check(cond: boolean, what: string): void {
  if (!cond) throw new RangeError(`synthModel: ${what}`);
}

/** Builds a synthetic model and writes it to opts.out. */
export function synthModel(opts: SynthOptions): SynthModel {
  check((SYNTH_ARCHS as readonly string[]).includes(opts.arch), `unknown architecture "${opts.arch}"`);
  const target = quantTarget(opts.type);
  const d = defaults[opts.arch];
  const dim = opts.dim ?? d.dim;
  const nLayers = opts.nLayers ?? 2;
  const nHeads = opts.nHeads ?? d.nHeads;
  const nKvHeads = opts.nKvHeads ?? d.nKvHeads;
  const headDim = opts.headDim ?? (opts.dim === undefined && opts.nHeads === undefined ? d.headDim : dim / nHeads);
  const ffnDim = opts.ffnDim ?? d.ffnDim;
  const ctxTrain = opts.ctxTrain ?? 256;
  const tied = opts.tied ?? false;
  for (const [k, v] of Object.entries({ dim, nLayers, nHeads, nKvHeads, headDim, ffnDim, ctxTrain })) {
    check(Number.isInteger(v) && v > 0, `${k} must be a positive integer, got ${v}`);
  }
  check(nHeads % nKvHeads === 0, `nHeads ${nHeads} is not a multiple of nKvHeads ${nKvHeads}`);
  check(headDim % 2 === 0, `headDim ${headDim} must be even (RoPE rotates pairs)`);
  check(
    opts.arch === 'qwen3' || headDim * nHeads === dim,
    `${opts.arch} needs headDim × nHeads = dim (${headDim} × ${nHeads} ≠ ${dim}); only qwen3 writes key_length`,
  );

  const source = GgufFile.open(opts.vocabFrom ?? DEFAULT_VOCAB_SOURCE);
  const tokenizer = copyTokenizer(source);
  const vocabSize = tokenizer.vocabSize;
  const qDim = nHeads * headDim;
  const kvDim = nKvHeads * headDim;
  const arch = opts.arch;
  const k = (name: string) => `${arch}.${name}`;

  const metadata: MetaEntry[] = [
    meta.str('general.architecture', arch),
    meta.str('general.name', opts.name ?? `herd-synth-${arch}-${opts.type}${tied ? '-tied' : ''}-s${opts.seed}`),
    meta.u32('general.file_type', target.fileType),
    meta.u32(k('context_length'), ctxTrain),
    meta.u32(k('embedding_length'), dim),
    meta.u32(k('block_count'), nLayers),
    meta.u32(k('feed_forward_length'), ffnDim),
    meta.u32(k('attention.head_count'), nHeads),
    meta.u32(k('attention.head_count_kv'), nKvHeads),
    meta.f32(k('attention.layer_norm_rms_epsilon'), d.rmsEps),
    meta.f32(k('rope.freq_base'), d.ropeBase),
  ];
  if (arch === 'llama') {
    metadata.push(meta.u32(k('rope.dimension_count'), headDim), meta.u32(k('vocab_size'), vocabSize));
  }
  if (arch === 'qwen3') {
    metadata.push(meta.u32(k('attention.key_length'), headDim), meta.u32(k('attention.value_length'), headDim));
  }
  metadata.push(...tokenizer.entries);

  const tensors: TensorSpec[] = [];
  const f32Bytes = (a: Float32Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  // Each tensor draws from its own stream, so its values do not depend on when it is written.
  const rngFor = () => new SynthRng(Math.imul(opts.seed ^ 0x9e3779b9, 2654435761) + tensors.length * 0x632be5ab);
  /** A [rows × cols] matrix (ggml dims [cols, rows]) with std gain / sqrt(cols), made chunk by chunk. */
  const matrix = (name: string, cols: number, rows: number, gain: number): void => {
    const rng = rngFor();
    const std = opts.std ?? gain / Math.sqrt(cols);
    const info = ggmlTypeInfo(chooseType({ name, dims: [cols, rows] }, target, nLayers) ?? GgmlType.F32);
    const kernel = info && kernelType(info.id);
    check(kernel !== undefined, `${name}: no type of ${opts.type} fits rows of ${cols}`);
    const k = kernel!;
    const rb = rowBytes(k.info, cols);
    const chunkRows = Math.max(1, Math.floor((1 << 20) / cols));
    tensors.push({
      name,
      dims: [cols, rows],
      type: k.info.id,
      data: function* () {
        for (let r0 = 0; r0 < rows; r0 += chunkRows) {
          const n = Math.min(chunkRows, rows - r0);
          const w = rng.normals(n * cols, std);
          const out = new Uint8Array(n * rb);
          for (let r = 0; r < n; r++) k.quantizeRow(w, r * cols, cols, out, r * rb);
          yield out;
        }
      },
    });
  };
  const vector = (name: string, n: number, std: number, mean: number): void => {
    tensors.push({ name, dims: [n], type: GgmlType.F32, data: f32Bytes(rngFor().normals(n, std, mean)) });
  };

  // Embedding entries of std 1; the head reads rmsnorm(x), so its gain 3 gives logits of std ~3.
  // Tied, the embedding is the head: std 3 / sqrt(dim) keeps those logits at std ~3 too.
  matrix('token_embd.weight', dim, vocabSize, tied ? 3 : Math.sqrt(dim));
  for (let l = 0; l < nLayers; l++) {
    const p = `blk.${l}.`;
    vector(`${p}attn_norm.weight`, dim, 0.2, 1);
    // q and k with gain 1.5: attention scores of a few units, so softmax over positions is uneven.
    matrix(`${p}attn_q.weight`, dim, qDim, 1.5);
    matrix(`${p}attn_k.weight`, dim, kvDim, 1.5);
    matrix(`${p}attn_v.weight`, dim, kvDim, 1);
    if (arch === 'qwen2') {
      vector(`${p}attn_q.bias`, qDim, 0.5, 0);
      vector(`${p}attn_k.bias`, kvDim, 0.5, 0);
      vector(`${p}attn_v.bias`, kvDim, 0.5, 0);
    }
    if (arch === 'qwen3') {
      // After the per-head RMSNorm q and k have unit RMS; weights around 1.5 keep the scores spread.
      vector(`${p}attn_q_norm.weight`, headDim, 0.3, 1.5);
      vector(`${p}attn_k_norm.weight`, headDim, 0.3, 1.5);
    }
    matrix(`${p}attn_output.weight`, qDim, dim, 1);
    vector(`${p}ffn_norm.weight`, dim, 0.2, 1);
    matrix(`${p}ffn_gate.weight`, dim, ffnDim, 1.5);
    matrix(`${p}ffn_up.weight`, dim, ffnDim, 1);
    matrix(`${p}ffn_down.weight`, ffnDim, dim, 1);
  }
  vector('output_norm.weight', dim, 0.2, 1);
  if (!tied) matrix('output.weight', dim, vocabSize, 3);

  const written = writeGguf(opts.out, { metadata, tensors });
  return {
    path: opts.out,
    arch,
    type: opts.type,
    tied,
    dim,
    nLayers,
    nHeads,
    nKvHeads,
    headDim,
    ffnDim,
    vocabSize,
    ctxTrain,
    ropeBase: d.ropeBase,
    rmsEps: d.rmsEps,
    tensorCount: tensors.length,
    fileSize: written.fileSize,
  };
}
