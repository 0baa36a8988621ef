// Q6_K: super-blocks of 256 values, { 128 bytes ql, 64 bytes qh, 16 int8 scales, f16 d }.
// Value = d·scale[i/16]·(q - 32) with the 6-bit q split in a low nibble (ql) and 2 high bits
// (qh). Per half of 128 values (ql += 64, qh += 32): for l < 32, ql[l] holds values l (low
// nibble) and l+64 (high), ql[l+32] holds l+32 and l+96, and qh[l] holds the high bits of
// l, l+32, l+64, l+96 at bits 0-1, 2-3, 4-5, 6-7.

import { nearestInt, type Activation } from './activation.ts';
import { readF16, signedMax, writeF16 } from './block.ts';
import { GROUP_MAX_EPS, makeQxQuants, roundSymmetric } from './kquants.ts';

const QK = 256;
const BLOCK_BYTES = 210;

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const d = readF16(w, o + 208);
    const base = outOff + b * QK;
    for (let half = 0; half < 2; half++) {
      const ql = o + 64 * half;
      const qh = o + 128 + 32 * half;
      const scl = o + 192 + 8 * half;
      const ob = base + 128 * half;
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const a = w[ql + l];
        const c = w[ql + 32 + l];
        const h = w[qh + l];
        // d·scale·q is exact in f32 (11 + 7 + 6 bits), so the store rounds nothing.
        out[ob + l] = d * ((w[scl + is] << 24) >> 24) * (((a & 15) | ((h & 3) << 4)) - 32);
        out[ob + 32 + l] = d * ((w[scl + is + 2] << 24) >> 24) * (((c & 15) | (((h >> 2) & 3) << 4)) - 32);
        out[ob + 64 + l] = d * ((w[scl + is + 4] << 24) >> 24) * (((a >> 4) | (((h >> 4) & 3) << 4)) - 32);
        out[ob + 96 + l] = d * ((w[scl + is + 6] << 24) >> 24) * (((c >> 4) | (((h >> 6) & 3) << 4)) - 32);
      }
    }
  }
}

/** Dot product with the Q8_K activation: Σ over 16-value groups of scale·Σ q·qx, times d·dx. */
export function dot(w: Uint8Array, off: number, n: number, x: Activation): number {
  const qs = x.qs;
  let sum = 0;
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const xb = b * QK;
    let isum = 0;
    for (let half = 0; half < 2; half++) {
      const ql = o + 64 * half;
      const qh = o + 128 + 32 * half;
      const scl = o + 192 + 8 * half;
      const xh = xb + 128 * half;
      for (let g = 0; g < 2; g++) {
        // Group g of each quarter: values 16g..16g+15 of the 32 that share a scale.
        let s0 = 0;
        let s1 = 0;
        let s2 = 0;
        let s3 = 0;
        for (let l = 16 * g; l < 16 * g + 16; l++) {
          const a = w[ql + l];
          const c = w[ql + 32 + l];
          const h = w[qh + l];
          s0 += (((a & 15) | ((h & 3) << 4)) - 32) * qs[xh + l];
          s1 += (((c & 15) | (((h >> 2) & 3) << 4)) - 32) * qs[xh + 32 + l];
          s2 += (((a >> 4) | (((h >> 4) & 3) << 4)) - 32) * qs[xh + 64 + l];
          s3 += (((c >> 4) | (((h >> 6) & 3) << 4)) - 32) * qs[xh + 96 + l];
        }
        isum +=
          ((w[scl + g] << 24) >> 24) * s0 +
          ((w[scl + g + 2] << 24) >> 24) * s1 +
          ((w[scl + g + 4] << 24) >> 24) * s2 +
          ((w[scl + g + 6] << 24) >> 24) * s3;
      }
    }
    sum += Math.fround(readF16(w, o + 208) * x.d[b]) * isum;
  }
  return sum;
}

const L = new Uint8Array(QK);
const scales = new Float32Array(16);

/**
 * ggml's reference quantizer (quantize_row_q6_K_ref): per 16 values a symmetric x²-weighted
 * fit (make_qx_quants), the 16 scales quantized to int8 against the one of largest
 * magnitude (which maps to -128), then the values re-rounded against the quantized scales.
 */
export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  const f = Math.fround;
  for (let b = 0; b < n / QK; b++) {
    const xb = xOff + b * QK;
    const o = dstOff + b * BLOCK_BYTES;
    for (let ib = 0; ib < 16; ib++) scales[ib] = makeQxQuants(16, 32, x, xb + 16 * ib, L, 16 * ib);
    const maxScale = signedMax(scales, 0, 16);
    if (Math.abs(maxScale) < GROUP_MAX_EPS) {
      dst.fill(0, o, o + BLOCK_BYTES);
      continue;
    }
    const iscale = f(-128 / maxScale);
    const dq = writeF16(dst, o + 208, f(1 / iscale));
    for (let ib = 0; ib < 16; ib++) dst[o + 192 + ib] = Math.min(127, nearestInt(f(iscale * scales[ib]))) & 0xff;
    for (let j = 0; j < 16; j++) {
      const d = f(dq * ((dst[o + 192 + j] << 24) >> 24));
      // A zero scale keeps the levels of the search, as ggml does.
      if (d !== 0) roundSymmetric(x, xb + 16 * j, 16, d, 32, L, 16 * j);
    }
    for (let half = 0; half < 2; half++) {
      const ql = o + 64 * half;
      const qh = o + 128 + 32 * half;
      const lb = 128 * half;
      for (let l = 0; l < 32; l++) {
        const q1 = L[lb + l];
        const q2 = L[lb + l + 32];
        const q3 = L[lb + l + 64];
        const q4 = L[lb + l + 96];
        dst[ql + l] = (q1 & 15) | ((q3 & 15) << 4);
        dst[ql + 32 + l] = (q2 & 15) | ((q4 & 15) << 4);
        dst[qh + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
      }
    }
  }
}
