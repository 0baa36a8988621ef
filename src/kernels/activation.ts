// The activation vector in the form a weight type's dot product wants it. Converting once
// per matvec (not once per row) is what makes quantized dot products cheap: llama.cpp does
// the same with its vec_dot_type.

import { f32ToF16, f16ToF32, f32ToBf16, bf16ToF32 } from '../ggml/half.ts';

export type ActivationKind = 'f32' | 'f16' | 'bf16' | 'q8_0';

export const Q8_BLOCK = 32;

export class Activation {
  kind: ActivationKind = 'f32';
  n = 0;
  /** Values for float kinds, rounded to the kind's precision. */
  readonly f: Float32Array;
  /** Q8_0: int8 quants and one f16-rounded scale per 32 values. */
  readonly qs: Int8Array;
  readonly d: Float32Array;

  constructor(capacity: number) {
    this.f = new Float32Array(capacity);
    this.qs = new Int8Array(capacity);
    this.d = new Float32Array(Math.ceil(capacity / Q8_BLOCK));
  }

  /** Converts x[0..n) into this buffer as `kind`. */
  fill(kind: ActivationKind, x: Float32Array, n: number): this {
    this.kind = kind;
    this.n = n;
    switch (kind) {
      case 'f32':
        this.f.set(x.subarray(0, n));
        break;
      case 'f16':
        for (let i = 0; i < n; i++) this.f[i] = f16ToF32(f32ToF16(x[i]));
        break;
      case 'bf16':
        for (let i = 0; i < n; i++) this.f[i] = bf16ToF32(f32ToBf16(x[i]));
        break;
      case 'q8_0':
        quantizeQ8(x, n, this.qs, this.d);
        break;
    }
    return this;
  }
}

/** Rounds half to even, as the SIMD paths of ggml round (not Math.round's half up). */
export function roundEven(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && (r & 1) !== 0 ? r - 1 : r;
}

/**
 * Q8_0 activation quantization as ggml's x86 path does it: per 32 values, scale
 * d = amax/127 stored as f16, quants round(x * 127/amax) half to even, in f32 arithmetic.
 */
function quantizeQ8(x: Float32Array, n: number, qs: Int8Array, d: Float32Array): void {
  for (let b = 0; b * Q8_BLOCK < n; b++) {
    const base = b * Q8_BLOCK;
    const end = Math.min(base + Q8_BLOCK, n);
    let amax = 0;
    for (let i = base; i < end; i++) amax = Math.max(amax, Math.abs(x[i]));
    const id = amax !== 0 ? Math.fround(127 / amax) : 0;
    d[b] = f16ToF32(f32ToF16(Math.fround(amax / 127)));
    for (let i = base; i < end; i++) qs[i] = roundEven(Math.fround(x[i] * id));
    for (let i = end; i < base + Q8_BLOCK && i < qs.length; i++) qs[i] = 0;
  }
}
