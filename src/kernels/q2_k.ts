// Q2_K: super-blocks of 256 values, { 16 bytes of scales, 64 bytes of 2-bit quants, f16 d,
// f16 dmin }. Each 16-value group g has a 4-bit scale (low nibble of byte g) and a 4-bit min
// (high nibble): value = d·sc·q - dmin·m with q in [0, 3]. Quants go by 128 values: value
// 128·c + 32·j + l is bits 2j..2j+1 of qs[32·c + l].

import { nearestInt, type Activation } from './activation.ts';
import { readF16, writeF16 } from './block.ts';
import { makeQkx2Quants, pack2Bits, roundWithMin, scaleMinSum } from './kquants.ts';

const QK = 256;
const BLOCK_BYTES = 84;

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const d = readF16(w, o + 80);
    const dmin = readF16(w, o + 82);
    const base = outOff + b * QK;
    for (let g = 0; g < 16; g++) {
      const s = w[o + g];
      // Exact products (11 + 4 + 2 bits): one rounding at the store, as in ggml.
      const dl = d * (s & 15);
      const ml = dmin * (s >> 4);
      const q = o + 16 + 32 * (g >> 3) + 16 * (g & 1);
      const shift = 2 * ((g >> 1) & 3);
      const og = base + 16 * g;
      for (let l = 0; l < 16; l++) out[og + l] = dl * ((w[q + l] >> shift) & 3) - ml;
    }
  }
}

/** Dot product with the Q8_K activation; the mins go through the activation's per-16 sums. */
export function dot(w: Uint8Array, off: number, n: number, x: Activation): number {
  const qs = x.qs;
  const bsums = x.bsums;
  let sum = 0;
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const xb = b * QK;
    let isum = 0;
    let msum = 0;
    for (let g = 0; g < 16; g++) {
      const s = w[o + g];
      const q = o + 16 + 32 * (g >> 3) + 16 * (g & 1);
      const shift = 2 * ((g >> 1) & 3);
      const xg = xb + 16 * g;
      let gs = 0;
      for (let l = 0; l < 16; l++) gs += ((w[q + l] >> shift) & 3) * qs[xg + l];
      isum += (s & 15) * gs;
      msum += (s >> 4) * bsums[b * 16 + g];
    }
    sum += scaleMinSum(w, o + 80, x.d[b], isum, msum);
  }
  return sum;
}

const L = new Uint8Array(QK);
const laux = new Uint8Array(16);
const weights = new Float32Array(16);
const scales = new Float32Array(16);
const mins = new Float32Array(16);

/**
 * ggml's reference quantizer (quantize_row_q2_K_ref): per 16 values an asymmetric fit
 * weighted by |x| minimising absolute error (make_qkx2_quants), scales and mins quantized
 * to 4 bits against the block's largest, then the values re-rounded.
 */
export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  const f = Math.fround;
  for (let b = 0; b < n / QK; b++) {
    const xb = xOff + b * QK;
    const o = dstOff + b * BLOCK_BYTES;
    let maxScale = 0;
    let maxMin = 0;
    for (let j = 0; j < 16; j++) {
      const xj = xb + 16 * j;
      for (let l = 0; l < 16; l++) weights[l] = Math.abs(x[xj + l]);
      scales[j] = makeQkx2Quants(16, 3, x, xj, weights, L, 16 * j, mins, j, laux, -0.5, 0.1, 15, true);
      if (scales[j] > maxScale) maxScale = scales[j];
      if (mins[j] > maxMin) maxMin = mins[j];
    }
    if (maxScale > 0) {
      const iscale = f(15 / maxScale);
      for (let j = 0; j < 16; j++) dst[o + j] = nearestInt(f(iscale * scales[j])) & 0xff;
    } else {
      dst.fill(0, o, o + 16);
    }
    if (maxMin > 0) {
      const iscale = f(15 / maxMin);
      for (let j = 0; j < 16; j++) dst[o + j] |= nearestInt(f(iscale * mins[j])) << 4;
    }
    const dq = writeF16(dst, o + 80, maxScale > 0 ? f(maxScale / 15) : 0);
    const dminq = writeF16(dst, o + 82, maxMin > 0 ? f(maxMin / 15) : 0);
    for (let j = 0; j < 16; j++) {
      const d = f(dq * (dst[o + j] & 15));
      if (d !== 0) roundWithMin(x, xb + 16 * j, 16, d, f(dminq * (dst[o + j] >> 4)), 3, L, 16 * j);
    }
    pack2Bits(L, dst, o + 16);
  }
}
