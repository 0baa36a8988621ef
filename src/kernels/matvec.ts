// Matrix × vector over a weight of any supported type: the one call the model makes for
// every projection. Rows are contiguous in the GGUF layout (dims[0] is the row length).

import { Activation } from './activation.ts';
import { kernelType, type KernelType } from './types.ts';
import { rowBytes } from '../ggml/types.ts';
import type { GgmlTypeInfo } from '../ggml/types.ts';

export interface Weight {
  readonly name: string;
  readonly kernel: KernelType;
  /** Output size: the number of rows. */
  readonly rows: number;
  /** Input size: the row length. */
  readonly cols: number;
  readonly rowBytes: number;
  readonly data: Uint8Array;
}

export class KernelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KernelError';
  }
}

/** Wraps a 1-D or 2-D tensor's bytes as a weight, checking its type is computable. */
export function makeWeight(name: string, type: GgmlTypeInfo, dims: readonly number[], data: Uint8Array): Weight {
  const kernel = kernelType(type.id);
  if (!kernel) throw new KernelError(`tensor ${name}: weight type ${type.name} is not supported yet`);
  const cols = dims[0];
  if (cols % type.blockSize !== 0) {
    throw new KernelError(
      `tensor ${name}: row length ${cols} is not a multiple of the ${type.name} block size ${type.blockSize}`,
    );
  }
  const rows = dims.slice(1).reduce((a, b) => a * b, 1);
  const bytes = rowBytes(type, cols);
  if (data.length !== rows * bytes) {
    throw new KernelError(
      `tensor ${name}: ${data.length} bytes, expected ${rows * bytes} for ${type.name} [${dims.join(', ')}]`,
    );
  }
  return { name, kernel, rows, cols, rowBytes: bytes, data };
}

/**
 * The activations F16 weights take: 'f16', ggml's vec_dot_type (llama.cpp's CPU backend rounds
 * them to f16, then sums exact f16 × f16 products in f32), or 'f32', what llama.cpp does
 * instead where its F16 products run in the AMX weight buffer (the CPU build for Sapphire
 * Rapids and later Xeons: an AVX-512 kernel of f32 activations × widened f16 weights).
 * 'f16' is the exact arithmetic of every other llama.cpp CPU build (tinyBLAS for batches,
 * ggml_vec_dot_f16 for single tokens: products of f16 values, exact in f32). It still only agrees
 * to about 1e-3 in p on the synthetic models, not 1e-6: an activation within an f32 ulp or two
 * of an f16 rounding tie rounds either way depending on summation order upstream, and one such
 * flip moves p by up to ~6e-4 there. Only bit-identical f32 arithmetic upstream would avoid that.
 */
export type F16Activation = 'f16' | 'f32';

/** Reusable activation buffer so the token loop allocates nothing (it grows to the widest weight). */
export class MatvecScratch {
  private act: Activation;
  constructor(
    private capacity: number,
    readonly f16Activation: F16Activation = 'f16',
  ) {
    this.act = new Activation(capacity);
  }
  prepare(w: Weight, x: Float32Array): Activation {
    if (this.capacity < w.cols) {
      this.capacity = w.cols;
      this.act = new Activation(w.cols);
    }
    const kind = w.kernel.activation === 'f16' ? this.f16Activation : w.kernel.activation;
    return this.act.fill(kind, x, w.cols);
  }
}

/** out[r] = Σ_c w[r, c] · x[c] for every row r. */
export function matvec(w: Weight, x: Float32Array, out: Float32Array, scratch: MatvecScratch): void {
  const act = scratch.prepare(w, x);
  const { kernel, rows, cols, rowBytes: rb, data } = w;
  for (let r = 0; r < rows; r++) out[r] = kernel.dot(data, r * rb, cols, act);
}

/**
 * n matvecs: xs holds n vectors of w.cols values back to back, out receives n vectors of
 * w.rows. What the wasm and native backends run for a type they have no kernels for.
 */
export function matvecs(w: Weight, xs: Float32Array, n: number, out: Float32Array, scratch: MatvecScratch): void {
  for (let j = 0; j < n; j++)
    matvec(w, xs.subarray(j * w.cols, (j + 1) * w.cols), out.subarray(j * w.rows, (j + 1) * w.rows), scratch);
}

/** Writes row r of w, dequantized, into out (an embedding lookup). */
export function getRow(w: Weight, r: number, out: Float32Array): void {
  if (r < 0 || r >= w.rows) throw new KernelError(`tensor ${w.name}: row ${r} out of range 0..${w.rows - 1}`);
  w.kernel.dequantizeRow(w.data, r * w.rowBytes, w.cols, out, 0);
}
