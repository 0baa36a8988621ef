// Q4_K: super-blocks of 256 values, { f16 d, f16 dmin, 12 bytes of 6-bit scales and mins
// (see decodeScaleMinK4), 128 bytes of nibbles }. Each of the 8 sub-blocks of 32 has its own
// scale sc and min m: value = d·sc·q - dmin·m with q in [0, 15]. The nibbles go by 64
// values: 32 bytes hold sub-block 2k in their low nibbles and sub-block 2k+1 in the high.

import { f16ToF32, f32ToF16 } from '../ggml/half.ts';
import { nearestInt, type Activation } from './activation.ts';
import { decodeScaleMinK4, encodeScaleMinK4, makeQkx2Quants } from './kquants.ts';

const QK = 256;
const BLOCK_BYTES = 144;

// Per-block scratch, allocated once: the kernels allocate nothing per call.
const sc = new Uint8Array(8);
const mn = new Uint8Array(8);

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const d = f16ToF32(w[o] | (w[o + 1] << 8));
    const dmin = f16ToF32(w[o + 2] | (w[o + 3] << 8));
    decodeScaleMinK4(w, o + 4, sc, mn);
    const q = o + 16;
    const base = outOff + b * QK;
    for (let k = 0; k < 4; k++) {
      // d·sc and dmin·m are exact in f32 (11-bit × 6-bit), so ggml's two-step f32 arithmetic
      // and this one-step double arithmetic round the same way when stored.
      const d1 = d * sc[2 * k];
      const m1 = dmin * mn[2 * k];
      const d2 = d * sc[2 * k + 1];
      const m2 = dmin * mn[2 * k + 1];
      const qk = q + 32 * k;
      const ok = base + 64 * k;
      for (let l = 0; l < 32; l++) {
        const byte = w[qk + l];
        out[ok + l] = d1 * (byte & 15) - m1;
        out[ok + 32 + l] = d2 * (byte >> 4) - m2;
      }
    }
  }
}

/**
 * Dot product with the Q8_K activation: per sub-block the integer Σ q·qx times its scale,
 * minus the mins applied through the activation's per-16 sums (Σ m·Σqx, no per-value work).
 */
export function dot(w: Uint8Array, off: number, n: number, x: Activation): number {
  const qs = x.qs;
  const bsums = x.bsums;
  let sum = 0;
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    decodeScaleMinK4(w, o + 4, sc, mn);
    const q = o + 16;
    const xb = b * QK;
    let isum = 0;
    for (let k = 0; k < 4; k++) {
      const qk = q + 32 * k;
      const xk = xb + 64 * k;
      let lo = 0;
      let hi = 0;
      for (let l = 0; l < 32; l++) {
        const byte = w[qk + l];
        lo += (byte & 15) * qs[xk + l];
        hi += (byte >> 4) * qs[xk + 32 + l];
      }
      isum += sc[2 * k] * lo + sc[2 * k + 1] * hi;
    }
    let msum = 0;
    const bs = b * 16;
    for (let j = 0; j < 16; j++) msum += bsums[bs + j] * mn[j >> 1];
    const xd = x.d[b];
    const d = Math.fround(f16ToF32(w[o] | (w[o + 1] << 8)) * xd);
    const dmin = Math.fround(f16ToF32(w[o + 2] | (w[o + 3] << 8)) * xd);
    sum += d * isum - dmin * msum;
  }
  return sum;
}

// Quantizer scratch: one super-block's levels, one sub-block's weights and search buffer.
const L = new Uint8Array(QK);
const laux = new Uint8Array(32);
const weights = new Float32Array(32);
const scales = new Float32Array(8);
const mins = new Float32Array(8);

/**
 * ggml's reference quantizer (quantize_row_q4_K_ref, what llama-quantize writes without an
 * imatrix): per sub-block an asymmetric fit weighted by rms + |x| (make_qkx2_quants), then
 * the scales and mins quantized to 6 bits against the block's largest, then the values
 * re-rounded against the quantized scales.
 */
export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  const f = Math.fround;
  for (let b = 0; b < n / QK; b++) {
    const xb = xOff + b * QK;
    const o = dstOff + b * BLOCK_BYTES;
    let maxScale = 0;
    let maxMin = 0;
    for (let j = 0; j < 8; j++) {
      const xj = xb + 32 * j;
      let sumX2 = 0;
      for (let l = 0; l < 32; l++) sumX2 = f(sumX2 + f(x[xj + l] * x[xj + l]));
      const avX = f(Math.sqrt(f(sumX2 / 32)));
      for (let l = 0; l < 32; l++) weights[l] = avX + Math.abs(x[xj + l]);
      scales[j] = makeQkx2Quants(32, 15, x, xj, weights, L, 32 * j, mins, j, laux, -1, 0.1, 20, false);
      if (scales[j] > maxScale) maxScale = scales[j];
      if (mins[j] > maxMin) maxMin = mins[j];
    }
    const invScale = maxScale > 0 ? f(63 / maxScale) : 0;
    const invMin = maxMin > 0 ? f(63 / maxMin) : 0;
    for (let j = 0; j < 8; j++) {
      // ggml stores nearest_int into a uint8_t before clamping: a (theoretical) negative
      // scale wraps and clamps to 63, kept for identical bytes.
      sc[j] = Math.min(63, nearestInt(f(invScale * scales[j])) & 0xff);
      mn[j] = Math.min(63, nearestInt(f(invMin * mins[j])) & 0xff);
    }
    encodeScaleMinK4(sc, mn, dst, o + 4);
    const hd = f32ToF16(f(maxScale / 63));
    const hm = f32ToF16(f(maxMin / 63));
    dst[o] = hd & 0xff;
    dst[o + 1] = hd >> 8;
    dst[o + 2] = hm & 0xff;
    dst[o + 3] = hm >> 8;
    const dq = f16ToF32(hd);
    const dminq = f16ToF32(hm);
    for (let j = 0; j < 8; j++) {
      const d = f(dq * sc[j]);
      // A zero scale leaves the sub-block's levels as the search left them, as in ggml.
      if (d === 0) continue;
      const dm = f(dminq * mn[j]);
      const xj = xb + 32 * j;
      for (let l = 0; l < 32; l++) L[32 * j + l] = Math.max(0, Math.min(15, nearestInt(f(f(x[xj + l] + dm) / d))));
    }
    const q = o + 16;
    for (let k = 0; k < 4; k++) {
      for (let l = 0; l < 32; l++) dst[q + 32 * k + l] = L[64 * k + l] | (L[64 * k + 32 + l] << 4);
    }
  }
}
