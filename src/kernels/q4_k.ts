// Q4_K: super-blocks of 256 values, { f16 d, f16 dmin, 12 bytes of 6-bit scales and mins
// (see decodeScaleMinK4), 128 bytes of nibbles }. Each of the 8 sub-blocks of 32 has its own
// scale sc and min m: value = d·sc·q - dmin·m with q in [0, 15]. The nibbles go by 64
// values: 32 bytes hold sub-block 2k in their low nibbles and sub-block 2k+1 in the high.

import type { Activation } from './activation.ts';
import { readF16 } from './block.ts';
import { decodeScaleMinK4, minSumK4, quantizeScaleMinK4, scaleMinSum } from './kquants.ts';

const QK = 256;
const BLOCK_BYTES = 144;

// Per-block scratch, allocated once: the kernels allocate nothing per call.
const sc = new Uint8Array(8);
const mn = new Uint8Array(8);

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const d = readF16(w, o);
    const dmin = readF16(w, o + 2);
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
    sum += scaleMinSum(w, o, x.d[b], isum, minSumK4(bsums, b, mn));
  }
  return sum;
}

// Quantizer scratch: one super-block's levels.
const L = new Uint8Array(QK);

/**
 * ggml's reference quantizer (quantize_row_q4_K_ref, what llama-quantize writes without an
 * imatrix): per sub-block an asymmetric fit weighted by rms + |x| (make_qkx2_quants), then
 * the scales and mins quantized to 6 bits against the block's largest, then the values
 * re-rounded against the quantized scales.
 */
export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = dstOff + b * BLOCK_BYTES;
    quantizeScaleMinK4(x, xOff + b * QK, 15, -1, 20, dst, o, L);
    const q = o + 16;
    for (let k = 0; k < 4; k++) {
      for (let l = 0; l < 32; l++) dst[q + 32 * k + l] = L[64 * k + l] | (L[64 * k + 32 + l] << 4);
    }
  }
}
