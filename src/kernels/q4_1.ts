// Q4_1: blocks of 32 values, { f16 scale d, f16 min m, 16 bytes of nibbles }; byte j holds
// value j in its low nibble and value j+16 in its high nibble; value = d * nibble + m.

import type { Activation } from './activation.ts';
import { maxOf, minOf, readF16, writeF16, writeScale } from './block.ts';

const QK = 32;
const BLOCK_BYTES = 20;

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const d = readF16(w, o);
    const m = readF16(w, o + 2);
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
    sum += Math.fround(readF16(w, o) * xd[b]) * isum + readF16(w, o + 2) * xs[b];
  }
  return sum;
}

/** ggml's reference quantizer (quantize_row_q4_1_ref): the block's range split in 15 steps from its min. */
export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const base = xOff + b * QK;
    const o = dstOff + b * BLOCK_BYTES;
    const min = minOf(x, base, QK);
    const id = writeScale(dst, o, Math.fround(Math.fround(maxOf(x, base, QK) - min) / 15));
    writeF16(dst, o + 2, min);
    for (let j = 0; j < QK / 2; j++) {
      // The quants are rounded against the f32 min and d, not their f16 forms: as ggml does.
      const lo = Math.min(15, Math.trunc(Math.fround(Math.fround(Math.fround(x[base + j] - min) * id) + 0.5)));
      const hi = Math.min(15, Math.trunc(Math.fround(Math.fround(Math.fround(x[base + j + 16] - min) * id) + 0.5)));
      dst[o + 4 + j] = lo | (hi << 4);
    }
  }
}
