// A tensor-parallel member's weights: its share (tensor-share.ts) of every layer of its range,
// cut out of the model's tensors. Rows of a GGUF matrix are contiguous runs of whole blocks,
// so a run of rows is one contiguous byte range; a run of columns that starts and ends on
// block boundaries is the same byte range of every row. Norms are replicated whole; the token
// embedding and the output head are kept whole when the range has them.

import type { GgufFile } from '../gguf/reader.ts';
import { makeWeight, type Weight, KernelError } from '../kernels/matvec.ts';
import { JsBackend, type KernelBackend } from '../kernels/backend.ts';
import type { ModelConfig } from './config.ts';
import { loadStageWeights, type LayerWeights } from './weights.ts';
import type { TensorShare } from './tensor-share.ts';

export interface ShareWeights {
  readonly start: number;
  readonly end: number;
  readonly share: TensorShare;
  /** Query heads and KV heads the member computes. */
  readonly nHeads: number;
  readonly nKvHeads: number;
  /** FFN rows the member computes. */
  readonly ffnRows: number;
  readonly layers: LayerWeights[];
  readonly tokenEmbd?: Weight;
  readonly outputNorm?: Float32Array;
  readonly output?: Weight;
  readonly ropeFreqs?: Float32Array;
  /** Bytes copied into the backend's memory (the sliced matrices and the head). */
  readonly bytes: number;
}

type Alloc = (bytes: number) => Uint8Array;

/** Rows [start, end) of w, copied into memory from `alloc`. */
export function sliceRows(w: Weight, start: number, end: number, alloc: Alloc): Weight {
  if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start < end && end <= w.rows))
    throw new KernelError(`tensor ${w.name}: rows [${start}, ${end}) are not within its ${w.rows} rows`);
  const data = alloc((end - start) * w.rowBytes);
  data.set(w.data.subarray(start * w.rowBytes, end * w.rowBytes));
  return makeWeight(`${w.name}[rows ${start}:${end}]`, w.kernel.info, [w.cols, end - start], data);
}

/** Columns [start, end) of every row of w, copied into memory from `alloc`; the cuts must fall on block boundaries. */
export function sliceCols(w: Weight, start: number, end: number, alloc: Alloc): Weight {
  const { blockSize, typeSize, name: type } = w.kernel.info;
  if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start < end && end <= w.cols))
    throw new KernelError(`tensor ${w.name}: columns [${start}, ${end}) are not within its ${w.cols} columns`);
  if (start % blockSize !== 0 || end % blockSize !== 0)
    throw new KernelError(
      `tensor ${w.name}: columns [${start}, ${end}) do not fall on ${type} block boundaries (every ${blockSize})`,
    );
  const b0 = (start / blockSize) * typeSize;
  const b1 = (end / blockSize) * typeSize;
  const rb = b1 - b0;
  const data = alloc(w.rows * rb);
  for (let r = 0; r < w.rows; r++) data.set(w.data.subarray(r * w.rowBytes + b0, r * w.rowBytes + b1), r * rb);
  return makeWeight(`${w.name}[cols ${start}:${end}]`, w.kernel.info, [end - start, w.rows], data);
}

/** The whole of w in memory from `alloc` (weights the member keeps whole, where its backend reads them). */
function copyWeight(w: Weight, alloc: Alloc): Weight {
  const data = alloc(w.data.length);
  data.set(w.data);
  return makeWeight(w.name, w.kernel.info, [w.cols, w.rows], data);
}

/**
 * Loads layers [start, end) of the file for `share`: each layer is read whole into ordinary
 * memory, its share copied into the backend's memory, the rest dropped, so the peak is one
 * layer beyond the share.
 */
export function loadShareWeights(
  file: GgufFile,
  c: ModelConfig,
  start: number,
  end: number,
  share: TensorShare,
  backend: KernelBackend,
): ShareWeights {
  const group = c.nHeads / c.nKvHeads;
  const [k0, k1] = share.kvHeads;
  const [f0, f1] = share.ffnRows;
  if (!(Number.isInteger(k0) && Number.isInteger(k1) && 0 <= k0 && k0 < k1 && k1 <= c.nKvHeads))
    throw new RangeError(`member ${share.member}: KV heads [${k0}, ${k1}) are not within the ${c.nKvHeads} KV heads`);
  if (!(Number.isInteger(f0) && Number.isInteger(f1) && 0 <= f0 && f0 < f1 && f1 <= c.ffnDim))
    throw new RangeError(`member ${share.member}: FFN rows [${f0}, ${f1}) are not within the ${c.ffnDim} rows`);
  const hd = c.headDim;
  const q = [k0 * group * hd, k1 * group * hd] as const;
  const kv = [k0 * hd, k1 * hd] as const;
  let bytes = 0;
  const alloc: Alloc = (n) => {
    bytes += n;
    return backend.alloc(n);
  };
  const staging = new JsBackend();

  const layers: LayerWeights[] = [];
  let tokenEmbd: Weight | undefined;
  let output: Weight | undefined;
  let outputNorm: Float32Array | undefined;
  let ropeFreqs: Float32Array | undefined;
  for (let l = start; l < end; l++) {
    const whole = loadStageWeights(file, c, l, l + 1, staging);
    const w = whole.layers[0];
    layers.push({
      attnNorm: w.attnNorm,
      wq: sliceRows(w.wq, q[0], q[1], alloc),
      wk: sliceRows(w.wk, kv[0], kv[1], alloc),
      wv: sliceRows(w.wv, kv[0], kv[1], alloc),
      wo: sliceCols(w.wo, q[0], q[1], alloc),
      bq: w.bq?.slice(q[0], q[1]),
      bk: w.bk?.slice(kv[0], kv[1]),
      bv: w.bv?.slice(kv[0], kv[1]),
      qNorm: w.qNorm,
      kNorm: w.kNorm,
      ffnNorm: w.ffnNorm,
      wGate: sliceRows(w.wGate, f0, f1, alloc),
      wUp: sliceRows(w.wUp, f0, f1, alloc),
      wDown: sliceCols(w.wDown, f0, f1, alloc),
    });
    // Only looked up rows, the embedding stays in ordinary memory; the head is a matvec, so it goes where the kernels read.
    tokenEmbd ??= whole.tokenEmbd;
    if (whole.output) output = copyWeight(whole.output, alloc);
    outputNorm ??= whole.outputNorm;
    ropeFreqs ??= whole.ropeFreqs;
  }
  return {
    start,
    end,
    share,
    nHeads: (k1 - k0) * group,
    nKvHeads: k1 - k0,
    ffnRows: f1 - f0,
    layers,
    tokenEmbd,
    outputNorm,
    output,
    ropeFreqs,
    bytes,
  };
}
