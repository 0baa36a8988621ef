// Q4_1: blocks of 32 values, { f16 scale d, f16 min m, 16 bytes of nibbles }; byte j holds
// value j in its low nibble and value j+16 in its high nibble; value = d * nibble + m.

import { f16ToF32, f32ToF16 } from '../ggml/half.ts';
import type { Activation } from './activation.ts';

const QK = 32;
const BLOCK_BYTES = 20;
const FLT_MAX = 3.4028234663852886e38;

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const d = f16ToF32(w[o] | (w[o + 1] << 8));
    const m = f16ToF32(w[o + 2] | (w[o + 3] << 8));
    const base = outOff + b * QK;
    for (let j = 0; j < QK / 2; j++) {
      const byte = w[o + 4 + j];
      out[base + j] = (byte & 15) * d + m;
      out[base + j + 16] = (byte >> 4) * d + m;
    }
  }
}

/**
 * Dot product with the Q8_1 activation: Σ (d·q + m)·(dx·qx) = d·dx·Σ q·qx + m·(dx·Σ qx), and
 * the activation carries dx·Σ qx precomputed as s, so the min costs one multiply per block.
 */
export function dot(w: Uint8Array, off: number, n: number, x: Activation): number {
  const qs = x.qs;
  const xd = x.d;
  const xs = x.s;
  let sum = 0;
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const base = b * QK;
    let isum = 0;
    for (let j = 0; j < QK / 2; j++) {
      const byte = w[o + 4 + j];
      isum += (byte & 15) * qs[base + j] + (byte >> 4) * qs[base + j + 16];
    }
    const d = f16ToF32(w[o] | (w[o + 1] << 8));
    const m = f16ToF32(w[o + 2] | (w[o + 3] << 8));
    sum += Math.fround(d * xd[b]) * isum + m * xs[b];
  }
  return sum;
}

/** ggml's reference quantizer (quantize_row_q4_1_ref): the block's range split in 15 steps from its min. */
export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const base = xOff + b * QK;
    let min = FLT_MAX;
    let max = -FLT_MAX;
    for (let j = 0; j < QK; j++) {
      const v = x[base + j];
      if (v < min) min = v;
      if (v > max) max = v;
    }
    const d = Math.fround(Math.fround(max - min) / 15);
    const id = d !== 0 ? Math.fround(1 / d) : 0;
    const o = dstOff + b * BLOCK_BYTES;
    const hd = f32ToF16(d);
    const hm = f32ToF16(min);
    dst[o] = hd & 0xff;
    dst[o + 1] = hd >> 8;
    dst[o + 2] = hm & 0xff;
    dst[o + 3] = hm >> 8;
    for (let j = 0; j < QK / 2; j++) {
      // The quants are rounded against the f32 min and d, not their f16 forms: as ggml does.
      const lo = Math.min(15, Math.trunc(Math.fround(Math.fround(Math.fround(x[base + j] - min) * id) + 0.5)));
      const hi = Math.min(15, Math.trunc(Math.fround(Math.fround(Math.fround(x[base + j + 16] - min) * id) + 0.5)));
      dst[o + 4 + j] = lo | (hi << 4);
    }
  }
}
