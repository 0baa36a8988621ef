// Deterministic kernel test inputs shared by the backend tests: random vectors and weights
// quantized by the js reference quantizer, so every backend sees the same bytes.

import { f32ToF16 } from '../../src/ggml/half.ts';
import { rowBytes, type GgmlTypeInfo } from '../../src/ggml/types.ts';
import type { AttentionStep } from '../../src/kernels/attention.ts';
import type { KernelBackend } from '../../src/kernels/backend.ts';
import { makeWeight, type Weight } from '../../src/kernels/matvec.ts';
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

/** Inputs that exercise the quantizers' edges: ties at .5, zero blocks, f16 over- and underflow. */
export function edgeVector(next: () => number): Float32Array {
  const x = new Float32Array(512);
  // amax = 127 makes the inverse scale exactly 1, so these hit ties: half to even decides.
  x.set([127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 126.5, -126.5, 4.5, 5.5, -6.5, 7.49999, 7.5000005], 0);
  // block 1: all zero (scale 0, quants 0)
  x.set(
    Float32Array.from({ length: 32 }, () => (next() - 0.5) * 1e-6),
    64,
  ); // scale an f16 subnormal
  x.set(
    Float32Array.from({ length: 32 }, () => (next() - 0.5) * 3e-9),
    96,
  ); // scale rounds to f16 zero
  x.set(
    Float32Array.from({ length: 32 }, () => (next() - 0.5) * 4e7),
    128,
  ); // scale overflows f16 to inf
  x.set([-3, 3], 160); // equal magnitudes of both signs
  for (let i = 192; i < x.length; i++) x[i] = (next() * 2 - 1) * 10 ** Math.floor(next() * 8 - 4);
  return x;
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

/** The same quantized weight in `backend`'s memory (alloc()) and as a plain copy for js. */
export function weightPair(
  backend: KernelBackend,
  info: GgmlTypeInfo,
  rows: number,
  cols: number,
  seed: number,
): { own: Weight; js: Weight } {
  const bytes = quantizedBytes(info, rows, cols, seed);
  const data = backend.alloc(bytes.length);
  data.set(bytes);
  const name = `${info.name}[${rows}×${cols}]`;
  return { own: makeWeight(name, info, [cols, rows], data), js: makeWeight(name, info, [cols, rows], bytes.slice()) };
}

/** `rows` cache positions of kvDim values: f32, or the same values as f16 bits. */
export function randomCache(
  rows: number,
  kvDim: number,
  half: boolean,
  next: () => number,
): Float32Array | Uint16Array {
  const f = randomVector(rows * kvDim, next);
  return half ? Uint16Array.from(f, (v) => f32ToF16(v)) : f;
}

/** A step with a random cache of start + n (+ 3 unused) positions, f32 or f16, and queries up to ±qScale. */
export function attentionStep(
  nHeads: number,
  nKvHeads: number,
  headDim: number,
  start: number,
  n: number,
  half: boolean,
  seed: number,
  qScale = 3,
): AttentionStep {
  const next = rng(seed);
  const ctx = start + n + 3; // rows past the step must not be read
  const keys = randomCache(ctx, nKvHeads * headDim, half, next);
  const values = randomCache(ctx, nKvHeads * headDim, half, next);
  const q = randomVector(n * nHeads * headDim, next).map((v) => qScale * v);
  return { keys, values, nHeads, nKvHeads, headDim, start, n, q, out: new Float32Array(n * nHeads * headDim) };
}

/** The same step with its own copy of q (rounded in place with an f16 cache) and its own out. */
export function copyStep(s: AttentionStep): AttentionStep {
  return { ...s, q: s.q.slice(), out: new Float32Array(s.out.length) };
}
