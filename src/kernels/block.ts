// Byte and scale helpers shared by the block formats' reference kernels (q4_0 … q6_k):
// the little-endian f16 and u32 fields of a block, and the scale search of ggml's
// symmetric legacy quantizers. Each format's own layout stays in its file.

import { f16ToF32, f32ToF16 } from '../ggml/half.ts';

/** The little-endian f16 at w[o..o+2), as f32. */
export function readF16(w: Uint8Array, o: number): number {
  return f16ToF32(w[o] | (w[o + 1] << 8));
}

/** Rounds v to f16, writes it little-endian to dst[o..o+2) and returns the value stored (as f32). */
export function writeF16(dst: Uint8Array, o: number, v: number): number {
  const h = f32ToF16(v);
  dst[o] = h & 0xff;
  dst[o + 1] = h >> 8;
  return f16ToF32(h);
}

/** The little-endian u32 at w[o..o+4) (Q5_0's and Q5_1's qh). */
export function readU32(w: Uint8Array, o: number): number {
  return (w[o] | (w[o + 1] << 8) | (w[o + 2] << 16) | (w[o + 3] << 24)) >>> 0;
}

/** Writes v little-endian to dst[o..o+4). */
export function writeU32(dst: Uint8Array, o: number, v: number): void {
  dst[o] = v & 0xff;
  dst[o + 1] = (v >>> 8) & 0xff;
  dst[o + 2] = (v >>> 16) & 0xff;
  dst[o + 3] = v >>> 24;
}

/**
 * The value of largest magnitude in x[off..off+n), the first of equals (ggml's strict >):
 * Q4_0 and Q5_0 map it to their most negative level.
 */
export function signedMax(x: Float32Array, off: number, n: number): number {
  let amax = 0;
  let max = 0;
  for (let j = 0; j < n; j++) {
    const v = x[off + j];
    if (Math.abs(v) > amax) {
      amax = Math.abs(v);
      max = v;
    }
  }
  return max;
}

/**
 * Writes a legacy block's scale d (already rounded to f32) as f16 to dst[o..o+2) and returns
 * the f32 inverse the quants are rounded with: 1/d, or 0 for an all-zero block. As ggml,
 * the quants use the f32 d, not its f16 form.
 */
export function writeScale(dst: Uint8Array, o: number, d: number): number {
  writeF16(dst, o, d);
  return d !== 0 ? Math.fround(1 / d) : 0;
}

/** The smallest of x[off..off+n) (ggml starts from FLT_MAX: at most that). */
export function minOf(x: Float32Array, off: number, n: number): number {
  let min = FLT_MAX;
  for (let j = 0; j < n; j++) if (x[off + j] < min) min = x[off + j];
  return min;
}

/** The largest of x[off..off+n) (ggml starts from -FLT_MAX: at least that). */
export function maxOf(x: Float32Array, off: number, n: number): number {
  let max = -FLT_MAX;
  for (let j = 0; j < n; j++) if (x[off + j] > max) max = x[off + j];
  return max;
}

const FLT_MAX = 3.4028234663852886e38;
