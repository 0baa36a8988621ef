// Deterministic kernel test inputs shared by the backend tests: random vectors and weights
// quantized by the js reference quantizer, so every backend sees the same bytes.

import { rowBytes, type GgmlTypeInfo } from '../../src/ggml/types.ts';
import { kernelType } from '../../src/kernels/types.ts';

/** Uniform numbers in [0, 1) from a seed (mulberry32), so a failure reproduces. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n values uniform in [-1, 1). */
export function randomVector(n: number, next: () => number): Float32Array {
  return Float32Array.from({ length: n }, () => next() * 2 - 1);
}

const quantized = new Map<string, Uint8Array>();

/** rows×cols random values quantized by the type's reference quantizer (cached: the K-quant searches are slow). */
export function quantizedBytes(info: GgmlTypeInfo, rows: number, cols: number, seed: number): Uint8Array {
  const key = `${info.name} ${rows} ${cols} ${seed}`;
  let bytes = quantized.get(key);
  if (!bytes) {
    const kernel = kernelType(info.id);
    if (!kernel) throw new Error(`no reference kernel for ${info.name}`);
    const rb = rowBytes(info, cols);
    const src = randomVector(rows * cols, rng(seed));
    bytes = new Uint8Array(rows * rb);
    for (let r = 0; r < rows; r++) kernel.quantizeRow(src, r * cols, cols, bytes, r * rb);
    quantized.set(key, bytes);
  }
  return bytes;
}
