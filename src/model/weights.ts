// The tensors of one stage: the layers [start, end) of the model, plus the token embedding
// on the first stage and the final norm and output head on the last. Each tensor is read
// from the file once, checked against the config's shapes, and kept as loaded bytes.

import type { GgufFile, TensorInfo } from '../gguf/reader.ts';
import { makeWeight, getRow, type Weight } from '../kernels/matvec.ts';
import type { KernelBackend } from '../kernels/backend.ts';
import { kernelType, supportedTypes } from '../kernels/types.ts';
import { ModelError, type ModelConfig } from './config.ts';

export interface LayerWeights {
  readonly attnNorm: Float32Array;
  readonly wq: Weight;
  readonly wk: Weight;
  readonly wv: Weight;
  readonly wo: Weight;
  /** qwen2: biases added after the q, k, v projections. */
  readonly bq?: Float32Array;
  readonly bk?: Float32Array;
  readonly bv?: Float32Array;
  /** qwen3: RMSNorm over each head of q and k, before RoPE. */
  readonly qNorm?: Float32Array;
  readonly kNorm?: Float32Array;
  readonly ffnNorm: Float32Array;
  readonly wGate: Weight;
  readonly wUp: Weight;
  readonly wDown: Weight;
}

export interface StageWeights {
  readonly start: number;
  readonly end: number;
  /** First stage only. */
  readonly tokenEmbd?: Weight;
  readonly layers: LayerWeights[];
  /** Last stage only. */
  readonly outputNorm?: Float32Array;
  readonly output?: Weight;
  /** llama 3.1 style per-pair RoPE frequency divisors (rope_freqs.weight), when present. */
  readonly ropeFreqs?: Float32Array;
  readonly bytes: number;
}

/** Tensor bytes of a stage read so far, out of the stage's total; `stage` names the range. */
export interface LoadProgress {
  readonly stage: string;
  readonly bytes: number;
  readonly total: number;
}

/** Bytes of the tensors `loadStageWeights` reads for [start, end), before reading any. */
export function stageBytes(file: GgufFile, c: ModelConfig, start: number, end: number): number {
  const size = (name: string) => file.tensor(name)?.nBytes ?? 0;
  const names = new Set<string>();
  const perLayer = [
    'attn_norm.weight',
    'attn_q.weight',
    'attn_k.weight',
    'attn_v.weight',
    'attn_output.weight',
    'attn_q.bias',
    'attn_k.bias',
    'attn_v.bias',
    'ffn_norm.weight',
    'ffn_gate.weight',
    'ffn_up.weight',
    'ffn_down.weight',
  ];
  if (c.arch === 'qwen3') perLayer.push('attn_q_norm.weight', 'attn_k_norm.weight');
  for (let l = start; l < end; l++) for (const n of perLayer) names.add(`blk.${l}.${n}`);
  if (start === 0) names.add('token_embd.weight');
  if (end === c.nLayers) {
    names.add(file.tensor('output.weight') ? 'output.weight' : 'token_embd.weight');
    names.add('output_norm.weight');
  }
  if (file.tensor('rope_freqs.weight')) names.add('rope_freqs.weight');
  let total = 0;
  for (const n of names) total += size(n);
  return total;
}

/** Reads the stage's tensors in one go. */
export function loadStageWeights(...args: Parameters<typeof stageWeightSteps>): StageWeights {
  const steps = stageWeightSteps(...args);
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/**
 * Reads the stage's tensors giving the event loop a turn after each layer: a node streams
 * its loading progress to the coordinator while it loads, and herd serve answers /health.
 */
export async function loadStageWeightsAsync(...args: Parameters<typeof stageWeightSteps>): Promise<StageWeights> {
  const steps = stageWeightSteps(...args);
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** The loading itself, pausing (yield) after each layer. */
function* stageWeightSteps(
  file: GgufFile,
  c: ModelConfig,
  start: number,
  end: number,
  backend: KernelBackend,
  onProgress?: (p: LoadProgress) => void,
): Generator<void, StageWeights> {
  if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start < end && end <= c.nLayers)) {
    throw new ModelError(file.path, `layer range [${start}, ${end}) is not within the model's ${c.nLayers} layers`);
  }
  let bytes = 0;
  const stage = `layers [${start},${end})`;
  const total = onProgress ? stageBytes(file, c, start, end) : 0;
  const report = onProgress ? () => onProgress({ stage, bytes, total }) : () => {};
  onProgress?.({ stage, bytes: 0, total });
  const info = (name: string, dims: number[]): TensorInfo => {
    const t = file.tensor(name);
    if (!t) throw new ModelError(file.path, `tensor "${name}" is missing`);
    const same = t.dims.length === dims.length && t.dims.every((d, i) => d === dims[i]);
    if (!same)
      throw new ModelError(
        file.path,
        `tensor "${name}" has shape [${t.dims.join(', ')}], expected [${dims.join(', ')}]`,
      );
    // Checked here, before reading it, so the error names the file (the kernels know no file).
    if (!kernelType(t.type.id))
      throw new ModelError(
        file.path,
        `tensor "${name}" has type ${t.type.name}, which herd cannot compute (it computes ${supportedTypes.map((s) => s.name).join(', ')})`,
      );
    return t;
  };
  const weight = (name: string, cols: number, rows: number): Weight => {
    const t = info(name, [cols, rows]);
    bytes += t.nBytes;
    const data = backend.alloc(t.nBytes);
    file.readTensorInto(t, data);
    report();
    return makeWeight(name, t.type, t.dims, data);
  };
  const vector = (name: string, n: number): Float32Array => {
    const t = info(name, [n]);
    bytes += t.nBytes;
    const out = new Float32Array(n);
    getRow(makeWeight(name, t.type, [n, 1], file.readTensor(t)), 0, out);
    report();
    return out;
  };
  const optionalVector = (name: string, n: number) => (file.tensor(name) ? vector(name, n) : undefined);

  const layers: LayerWeights[] = [];
  for (let l = start; l < end; l++) {
    layers.push(readLayer(c, l, { weight, vector, optionalVector }));
    yield;
  }

  const first = start === 0;
  const last = end === c.nLayers;
  const embdName = 'token_embd.weight';
  const tokenEmbd = first ? weight(embdName, c.dim, c.vocabSize) : undefined;
  // Tied embeddings: without output.weight the head reuses the token embedding matrix.
  const headName = file.tensor('output.weight') ? 'output.weight' : embdName;
  const output = last
    ? headName === embdName && tokenEmbd
      ? tokenEmbd
      : weight(headName, c.dim, c.vocabSize)
    : undefined;
  const outputNorm = last ? vector('output_norm.weight', c.dim) : undefined;
  const ropeFreqs = file.tensor('rope_freqs.weight') ? vector('rope_freqs.weight', c.ropeDims / 2) : undefined;
  return { start, end, tokenEmbd, layers, outputNorm, output, ropeFreqs, bytes };
}

/** How a loader reads a tensor of the expected shape: a matrix (cols × rows) or a vector. */
export interface TensorReaders {
  weight(name: string, cols: number, rows: number): Weight;
  vector(name: string, n: number): Float32Array;
  optionalVector(name: string, n: number): Float32Array | undefined;
}

/** Layer l's tensors by their GGUF names, each read with the shape the config gives it. */
export function readLayer(c: ModelConfig, l: number, r: TensorReaders): LayerWeights {
  const qDim = c.nHeads * c.headDim;
  const kvDim = c.nKvHeads * c.headDim;
  const p = `blk.${l}.`;
  return {
    attnNorm: r.vector(`${p}attn_norm.weight`, c.dim),
    wq: r.weight(`${p}attn_q.weight`, c.dim, qDim),
    wk: r.weight(`${p}attn_k.weight`, c.dim, kvDim),
    wv: r.weight(`${p}attn_v.weight`, c.dim, kvDim),
    wo: r.weight(`${p}attn_output.weight`, qDim, c.dim),
    bq: r.optionalVector(`${p}attn_q.bias`, qDim),
    bk: r.optionalVector(`${p}attn_k.bias`, kvDim),
    bv: r.optionalVector(`${p}attn_v.bias`, kvDim),
    qNorm: c.arch === 'qwen3' ? r.vector(`${p}attn_q_norm.weight`, c.headDim) : undefined,
    kNorm: c.arch === 'qwen3' ? r.vector(`${p}attn_k_norm.weight`, c.headDim) : undefined,
    ffnNorm: r.vector(`${p}ffn_norm.weight`, c.dim),
    wGate: r.weight(`${p}ffn_gate.weight`, c.dim, c.ffnDim),
    wUp: r.weight(`${p}ffn_up.weight`, c.dim, c.ffnDim),
    wDown: r.weight(`${p}ffn_down.weight`, c.ffnDim, c.dim),
  };
}
