// Q5_0: blocks of 32 values, { f16 scale d, u32 qh, 16 bytes of nibbles }; byte j holds the
// low 4 bits of value j (low nibble) and of value j+16 (high nibble), bit i of the
// little-endian qh is the fifth bit of value i; value = d * (q - 16).

import type { Activation } from './activation.ts';
import { readF16, readU32, signedMax, writeScale, writeU32 } from './block.ts';

const QK = 32;
const BLOCK_BYTES = 22;

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const d = readF16(w, o);
    const qh = readU32(w, o + 2);
    const base = outOff + b * QK;
    for (let j = 0; j < QK / 2; j++) {
      const byte = w[o + 6 + j];
      out[base + j] = d * (((byte & 15) | (((qh >>> j) & 1) << 4)) - 16);
      out[base + j + 16] = d * (((byte >> 4) | (((qh >>> (j + 16)) & 1) << 4)) - 16);
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
    const qh = readU32(w, o + 2);
    const base = b * QK;
    let isum = 0;
    for (let j = 0; j < QK / 2; j++) {
      const byte = w[o + 6 + j];
      isum +=
        (((byte & 15) | (((qh >>> j) & 1) << 4)) - 16) * qs[base + j] +
        (((byte >> 4) | (((qh >>> (j + 16)) & 1) << 4)) - 16) * qs[base + j + 16];
    }
    sum += Math.fround(readF16(w, o) * xd[b]) * isum;
  }
  return sum;
}

/** ggml's reference quantizer (quantize_row_q5_0_ref): the value of largest magnitude maps to -16. */
export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const base = xOff + b * QK;
    const o = dstOff + b * BLOCK_BYTES;
    const id = writeScale(dst, o, Math.fround(signedMax(x, base, QK) / -16));
    let qh = 0;
    for (let j = 0; j < QK / 2; j++) {
      const lo = Math.min(31, Math.trunc(Math.fround(Math.fround(x[base + j] * id) + 16.5)));
      const hi = Math.min(31, Math.trunc(Math.fround(Math.fround(x[base + j + 16] * id) + 16.5)));
      dst[o + 6 + j] = (lo & 15) | ((hi & 15) << 4);
      qh |= ((lo >> 4) << j) | ((hi >> 4) << (j + 16));
    }
    writeU32(dst, o + 2, qh);
  }
}
