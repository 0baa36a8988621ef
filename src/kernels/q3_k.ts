// Q3_K: super-blocks of 256 values, { 32 bytes hmask, 64 bytes of 2-bit quants, 12 bytes of
// 6-bit scales, f16 d }. value = d·(scale[i/16] - 32)·(q - 4·(1 - h)) where q is 2 bits laid
// out as in Q2_K and h, the high bit of value i, is bit i/32 of hmask[i % 32]. The 16 scales:
// low 4 bits in the nibbles of bytes 0-7 (scale j in byte j % 8, high nibble for j ≥ 8),
// high 2 bits in bytes 8-11 (scale j at bits 2·(j/4) of byte 8 + j % 4).

import { nearestInt, type Activation } from './activation.ts';
import { readF16, signedMax, writeF16 } from './block.ts';
import { makeQ3Quants, pack2Bits, roundSymmetric } from './kquants.ts';

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
    const d = readF16(w, o + 108);
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
    sum += Math.fround(readF16(w, o + 108) * x.d[b]) * isum;
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
    for (let j = 0; j < 16; j++) scales[j] = makeQ3Quants(16, 4, x, xb + 16 * j, L, 16 * j, lw);
    const maxScale = signedMax(scales, 0, 16);
    const s = o + 96;
    dst.fill(0, s, s + 12);
    let scale = 0;
    if (maxScale !== 0) {
      const iscale = f(-32 / maxScale);
      for (let j = 0; j < 16; j++) {
        // ggml keeps nearest_int in an int8_t before clamping; mirrored by the sign-extension.
        const l = Math.max(-32, Math.min(31, (nearestInt(f(iscale * scales[j])) << 24) >> 24)) + 32;
        if (j < 8) dst[s + j] = l & 15;
        else dst[s + j - 8] |= (l & 15) << 4;
        dst[s + 8 + (j & 3)] |= (l >> 4) << (2 * (j >> 2));
      }
      scale = f(1 / iscale);
    }
    const dq = writeF16(dst, o + 108, scale);
    decodeScales(dst, s);
    for (let j = 0; j < 16; j++) {
      const d = f(dq * sc[j]);
      if (d !== 0) roundSymmetric(x, xb + 16 * j, 16, d, 4, L, 16 * j);
    }
    dst.fill(0, o, o + 32);
    for (let j = 0; j < QK; j++) {
      if (L[j] > 3) {
        dst[o + (j & 31)] |= 1 << (j >> 5);
        L[j] -= 4;
      }
    }
    pack2Bits(L, dst, o + 32);
  }
}
