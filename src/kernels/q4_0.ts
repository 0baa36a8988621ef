// Q4_0: blocks of 32 values, { f16 scale d, 16 bytes of nibbles }; byte j holds value j in
// its low nibble and value j+16 in its high nibble; value = d * (nibble - 8).

import type { Activation } from './activation.ts';
import { readF16, signedMax, writeScale } from './block.ts';

const QK = 32;
const BLOCK_BYTES = 18;

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const d = readF16(w, o);
    const base = outOff + b * QK;
    for (let j = 0; j < QK / 2; j++) {
      const byte = w[o + 2 + j];
      out[base + j] = d * ((byte & 15) - 8);
      out[base + j + 16] = d * ((byte >> 4) - 8);
    }
  }
}

/** Integer dot product of each block with the Q8_0 activation block, scaled by both d's. */
export function dot(w: Uint8Array, off: number, n: number, x: Activation): number {
  const qs = x.qs;
  const xd = x.d;
  let sum = 0;
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const base = b * QK;
    let isum = 0;
    for (let j = 0; j < QK / 2; j++) {
      const byte = w[o + 2 + j];
      isum += ((byte & 15) - 8) * qs[base + j] + ((byte >> 4) - 8) * qs[base + j + 16];
    }
    sum += Math.fround(readF16(w, o) * xd[b]) * isum;
  }
  return sum;
}

/** ggml's reference quantizer (quantize_row_q4_0_ref): the value of largest magnitude maps to -8. */
export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const base = xOff + b * QK;
    const o = dstOff + b * BLOCK_BYTES;
    const id = writeScale(dst, o, Math.fround(signedMax(x, base, QK) / -8));
    for (let j = 0; j < QK / 2; j++) {
      const lo = Math.min(15, Math.trunc(Math.fround(x[base + j] * id) + 8.5));
      const hi = Math.min(15, Math.trunc(Math.fround(x[base + j + 16] * id) + 8.5));
      dst[o + 2 + j] = lo | (hi << 4);
    }
  }
}
