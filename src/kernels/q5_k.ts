// Q5_K: super-blocks of 256 values, { f16 d, f16 dmin, 12 bytes of 6-bit scales and mins
// (as Q4_K), 32 bytes qh, 128 bytes of nibbles }. The nibbles are laid out as in Q4_K; the
// fifth bit of value 32·s + l (sub-block s) is bit s of qh[l]. value = d·sc·q - dmin·m with
// q in [0, 31].

import type { Activation } from './activation.ts';
import { readF16 } from './block.ts';
import { decodeScaleMinK4, minSumK4, quantizeScaleMinK4, scaleMinSum } from './kquants.ts';

const QK = 256;
const BLOCK_BYTES = 176;

const sc = new Uint8Array(8);
const mn = new Uint8Array(8);

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const d = readF16(w, o);
    const dmin = readF16(w, o + 2);
    decodeScaleMinK4(w, o + 4, sc, mn);
    const qh = o + 16;
    const q = o + 48;
    const base = outOff + b * QK;
    for (let k = 0; k < 4; k++) {
      // Exact products, so one rounding at the store matches ggml's f32 steps (see q4_k).
      const d1 = d * sc[2 * k];
      const m1 = dmin * mn[2 * k];
      const d2 = d * sc[2 * k + 1];
      const m2 = dmin * mn[2 * k + 1];
      const qk = q + 32 * k;
      const ok = base + 64 * k;
      const s1 = 2 * k;
      const s2 = 2 * k + 1;
      for (let l = 0; l < 32; l++) {
        const byte = w[qk + l];
        const h = w[qh + l];
        out[ok + l] = d1 * ((byte & 15) | (((h >> s1) & 1) << 4)) - m1;
        out[ok + 32 + l] = d2 * ((byte >> 4) | (((h >> s2) & 1) << 4)) - m2;
      }
    }
  }
}

/** Dot product with the Q8_K activation, as Q4_K's with the fifth bit added. */
export function dot(w: Uint8Array, off: number, n: number, x: Activation): number {
  const qs = x.qs;
  const bsums = x.bsums;
  let sum = 0;
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    decodeScaleMinK4(w, o + 4, sc, mn);
    const qh = o + 16;
    const q = o + 48;
    const xb = b * QK;
    let isum = 0;
    for (let k = 0; k < 4; k++) {
      const qk = q + 32 * k;
      const xk = xb + 64 * k;
      const s1 = 2 * k;
      const s2 = 2 * k + 1;
      let lo = 0;
      let hi = 0;
      for (let l = 0; l < 32; l++) {
        const byte = w[qk + l];
        const h = w[qh + l];
        lo += ((byte & 15) | (((h >> s1) & 1) << 4)) * qs[xk + l];
        hi += ((byte >> 4) | (((h >> s2) & 1) << 4)) * qs[xk + 32 + l];
      }
      isum += sc[s1] * lo + sc[s2] * hi;
    }
    sum += scaleMinSum(w, o, x.d[b], isum, minSumK4(bsums, b, mn));
  }
  return sum;
}

const L = new Uint8Array(QK);

/**
 * ggml's reference quantizer (quantize_row_q5_K_ref): Q4_K's recipe with 31 levels and a
 * narrower scale search (make_qkx2_quants from -0.5 in 15 steps of 0.1).
 */
export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = dstOff + b * BLOCK_BYTES;
    quantizeScaleMinK4(x, xOff + b * QK, 31, -0.5, 15, dst, o, L);
    const qh = o + 16;
    const q = o + 48;
    dst.fill(0, qh, qh + 32);
    for (let k = 0; k < 4; k++) {
      for (let l = 0; l < 32; l++) {
        const l1 = L[64 * k + l];
        const l2 = L[64 * k + 32 + l];
        dst[qh + l] |= ((l1 >> 4) << (2 * k)) | ((l2 >> 4) << (2 * k + 1));
        dst[q + 32 * k + l] = (l1 & 15) | ((l2 & 15) << 4);
      }
    }
  }
}
