// The activation vector in the form a weight type's dot product wants it. Converting once
// per matvec (not once per row) is what makes quantized dot products cheap: llama.cpp does
// the same with its vec_dot_type.

import { f32ToF16, f16ToF32, f32ToBf16, bf16ToF32 } from '../ggml/half.ts';

export type ActivationKind = 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q8_1' | 'q8_k';

export const Q8_BLOCK = 32;
/** Values per Q8_K block: the K-quant super-block. */
export const Q8K_BLOCK = 256;

export class Activation {
  kind: ActivationKind = 'f32';
  n = 0;
  /** Values for float kinds, rounded to the kind's precision. */
  readonly f: Float32Array;
  /**
   * Q8_0, Q8_1 and Q8_K: int8 quants, and one scale per block (per 32 values, f16-rounded,
   * for q8_0 and q8_1; per 256 values, a plain f32, for q8_k).
   */
  readonly qs: Int8Array;
  readonly d: Float32Array;
  /** Q8_1: per 32 values, d·Σq rounded to f16, so a weight's min term costs one multiply. */
  readonly s: Float32Array;
  /** Q8_K: Σq per 16 values, for the same trick with the K-quants' per-sub-block mins. */
  readonly bsums: Int16Array;

  constructor(capacity: number) {
    this.f = new Float32Array(capacity);
    this.qs = new Int8Array(capacity);
    this.d = new Float32Array(Math.ceil(capacity / Q8_BLOCK));
    this.s = new Float32Array(Math.ceil(capacity / Q8_BLOCK));
    this.bsums = new Int16Array(Math.ceil(capacity / 16));
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
      case 'q8_1':
        quantizeQ8(x, n, this.qs, this.d, this.s);
        break;
      case 'q8_k':
        quantizeQ8K(x, n, this.qs, this.d, this.bsums);
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
 * Q8_0 and Q8_1 activation quantization as ggml's x86 path does it: per 32 values, scale
 * d = amax/127 stored as f16, quants round(x * 127/amax) half to even, in f32 arithmetic;
 * for Q8_1 (when s is given) also s = d·Σq with the unrounded f32 d, stored as f16.
 */
function quantizeQ8(x: Float32Array, n: number, qs: Int8Array, d: Float32Array, s?: Float32Array): void {
  for (let b = 0; b * Q8_BLOCK < n; b++) {
    const base = b * Q8_BLOCK;
    const end = Math.min(base + Q8_BLOCK, n);
    let amax = 0;
    for (let i = base; i < end; i++) amax = Math.max(amax, Math.abs(x[i]));
    const id = amax !== 0 ? Math.fround(127 / amax) : 0;
    const df = Math.fround(amax / 127);
    d[b] = f16ToF32(f32ToF16(df));
    let sum = 0;
    for (let i = base; i < end; i++) {
      const q = roundEven(Math.fround(x[i] * id));
      qs[i] = q;
      sum += q;
    }
    for (let i = end; i < base + Q8_BLOCK && i < qs.length; i++) qs[i] = 0;
    if (s) s[b] = f16ToF32(f32ToF16(Math.fround(df * sum)));
  }
}

const nearestF32 = new Float32Array(1);
const nearestI32 = new Int32Array(nearestF32.buffer);

/**
 * ggml's nearest_int: adds 1.5·2^23 in f32 and reads the low mantissa bits, which rounds
 * half to even. Done through the bits (not Math.round) so that out-of-range inputs, which
 * ggml's quantizers do meet and then clamp, give the same garbage ggml gets.
 */
export function nearestInt(v: number): number {
  nearestF32[0] = v + 12582912;
  return (nearestI32[0] & 0x007fffff) - 0x00400000;
}

/**
 * Q8_K activation quantization, ggml's quantize_row_q8_K_ref (what its x86 build runs):
 * per 256 values the value of largest magnitude maps to -127, d = 1/iscale stays f32, and
 * bsums holds Σq per 16 values. Rows of K-quant weights are whole super-blocks.
 */
function quantizeQ8K(x: Float32Array, n: number, qs: Int8Array, d: Float32Array, bsums: Int16Array): void {
  if (n % Q8K_BLOCK !== 0) throw new RangeError(`q8_k activation of ${n} values: not a multiple of ${Q8K_BLOCK}`);
  for (let b = 0; b * Q8K_BLOCK < n; b++) {
    const base = b * Q8K_BLOCK;
    let amax = 0;
    let max = 0;
    for (let i = base; i < base + Q8K_BLOCK; i++) {
      const ax = Math.abs(x[i]);
      if (ax > amax) {
        amax = ax;
        max = x[i];
      }
    }
    if (amax === 0) {
      d[b] = 0;
      qs.fill(0, base, base + Q8K_BLOCK);
      bsums.fill(0, base / 16, (base + Q8K_BLOCK) / 16);
      continue;
    }
    // -127 rather than -128: ggml changed it for IQ2_XXS's AVX path and every type follows.
    const iscale = Math.fround(-127 / max);
    for (let g = base; g < base + Q8K_BLOCK; g += 16) {
      let sum = 0;
      for (let i = g; i < g + 16; i++) {
        const q = Math.min(127, nearestInt(Math.fround(iscale * x[i])));
        qs[i] = q;
        sum += q;
      }
      bsums[g / 16] = sum;
    }
    d[b] = Math.fround(1 / iscale);
  }
}
