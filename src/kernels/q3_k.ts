// Q3_K: super-blocks of 256 values, { 32 bytes hmask, 64 bytes of 2-bit quants, 12 bytes of
// 6-bit scales, f16 d }. value = d·(scale[i/16] - 32)·(q - 4·(1 - h)) where q is 2 bits laid
// out as in Q2_K and h, the high bit of value i, is bit i/32 of hmask[i % 32]. The 16 scales:
// low 4 bits in the nibbles of bytes 0-7 (scale j in byte j % 8, high nibble for j ≥ 8),
// high 2 bits in bytes 8-11 (scale j at bits 2·(j/4) of byte 8 + j % 4).

import { f16ToF32, f32ToF16 } from '../ggml/half.ts';
import { nearestInt, type Activation } from './activation.ts';
import { makeQ3Quants } from './kquants.ts';

const QK = 256;
const BLOCK_BYTES = 110;

const sc = new Int8Array(16);

function decodeScales(w: Uint8Array, o: number): void {
  for (let j = 0; j < 16; j++) {
    const low = j < 8 ? w[o + j] & 15 : w[o + j - 8] >> 4;
    const high = (w[o + 8 + (j & 3)] >> (2 * (j >> 2))) & 3;
    sc[j] = (low | (high << 4)) - 32;
  }
}

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const d = f16ToF32(w[o + 108] | (w[o + 109] << 8));
    decodeScales(w, o + 96);
    const base = outOff + b * QK;
    for (let g = 0; g < 16; g++) {
      // Exact product (11 + 6 + 3 bits): the store rounds nothing.
      const dl = d * sc[g];
      const q = o + 32 + 32 * (g >> 3) + 16 * (g & 1);
      const hm = o + 16 * (g & 1);
      const shift = 2 * ((g >> 1) & 3);
      const bit = g >> 1;
      const og = base + 16 * g;
      for (let l = 0; l < 16; l++) {
        out[og + l] = dl * (((w[q + l] >> shift) & 3) - (((w[hm + l] >> bit) & 1) ^ 1) * 4);
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
    decodeScales(w, o + 96);
    const xb = b * QK;
    let isum = 0;
    for (let g = 0; g < 16; g++) {
      const q = o + 32 + 32 * (g >> 3) + 16 * (g & 1);
      const hm = o + 16 * (g & 1);
      const shift = 2 * ((g >> 1) & 3);
      const bit = g >> 1;
      const xg = xb + 16 * g;
      let gs = 0;
      for (let l = 0; l < 16; l++) {
        gs += (((w[q + l] >> shift) & 3) - (((w[hm + l] >> bit) & 1) ^ 1) * 4) * qs[xg + l];
      }
      isum += sc[g] * gs;
    }
    sum += Math.fround(f16ToF32(w[o + 108] | (w[o + 109] << 8)) * x.d[b]) * isum;
  }
  return sum;
}

const L = new Uint8Array(QK);
const lw = new Int8Array(16);
const scales = new Float32Array(16);

/**
 * ggml's reference quantizer (quantize_row_q3_K_ref): per 16 values a symmetric x²-weighted
 * fit refined value by value (make_q3_quants), the scales quantized to 6 bits against the
 * one of largest magnitude (which maps to -32), then the values re-rounded.
 */
export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  const f = Math.fround;
  for (let b = 0; b < n / QK; b++) {
    const xb = xOff + b * QK;
    const o = dstOff + b * BLOCK_BYTES;
    let maxScale = 0;
    let amax = 0;
    for (let j = 0; j < 16; j++) {
      scales[j] = makeQ3Quants(16, 4, x, xb + 16 * j, L, 16 * j, lw);
      const scale = Math.abs(scales[j]);
      if (scale > amax) {
        amax = scale;
        maxScale = scales[j];
      }
    }
    const s = o + 96;
    dst.fill(0, s, s + 12);
    let hd = 0;
    if (maxScale !== 0) {
      const iscale = f(-32 / maxScale);
      for (let j = 0; j < 16; j++) {
        // ggml keeps nearest_int in an int8_t before clamping; mirrored by the sign-extension.
        const l = Math.max(-32, Math.min(31, (nearestInt(f(iscale * scales[j])) << 24) >> 24)) + 32;
        if (j < 8) dst[s + j] = l & 15;
        else dst[s + j - 8] |= (l & 15) << 4;
        dst[s + 8 + (j & 3)] |= (l >> 4) << (2 * (j >> 2));
      }
      hd = f32ToF16(f(1 / iscale));
    }
    dst[o + 108] = hd & 0xff;
    dst[o + 109] = hd >> 8;
    const dq = f16ToF32(hd);
    decodeScales(dst, s);
    for (let j = 0; j < 16; j++) {
      const d = f(dq * sc[j]);
      if (d === 0) continue;
      const xj = xb + 16 * j;
      for (let ii = 0; ii < 16; ii++) L[16 * j + ii] = Math.max(-4, Math.min(3, nearestInt(f(x[xj + ii] / d)))) + 4;
    }
    dst.fill(0, o, o + 32);
    for (let j = 0; j < QK; j++) {
      if (L[j] > 3) {
        dst[o + (j & 31)] |= 1 << (j >> 5);
        L[j] -= 4;
      }
    }
    const q = o + 32;
    for (let c = 0; c < 2; c++) {
      const lc = 128 * c;
      for (let l = 0; l < 32; l++) {
        dst[q + 32 * c + l] = L[lc + l] | (L[lc + l + 32] << 2) | (L[lc + l + 64] << 4) | (L[lc + l + 96] << 6);
      }
    }
  }
}
