// Q5_0: blocks of 32 values, { f16 scale d, u32 qh, 16 bytes of nibbles }; byte j holds the
// low 4 bits of value j (low nibble) and of value j+16 (high nibble), bit i of the
// little-endian qh is the fifth bit of value i; value = d * (q - 16).

import { f16ToF32, f32ToF16 } from '../ggml/half.ts';
import type { Activation } from './activation.ts';

const QK = 32;
const BLOCK_BYTES = 22;

function readQh(w: Uint8Array, o: number): number {
  return (w[o] | (w[o + 1] << 8) | (w[o + 2] << 16) | (w[o + 3] << 24)) >>> 0;
}

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const d = f16ToF32(w[o] | (w[o + 1] << 8));
    const qh = readQh(w, o + 2);
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
    const qh = readQh(w, o + 2);
    const base = b * QK;
    let isum = 0;
    for (let j = 0; j < QK / 2; j++) {
      const byte = w[o + 6 + j];
      isum +=
        (((byte & 15) | (((qh >>> j) & 1) << 4)) - 16) * qs[base + j] +
        (((byte >> 4) | (((qh >>> (j + 16)) & 1) << 4)) - 16) * qs[base + j + 16];
    }
    sum += Math.fround(f16ToF32(w[o] | (w[o + 1] << 8)) * xd[b]) * isum;
  }
  return sum;
}

/** ggml's reference quantizer (quantize_row_q5_0_ref): the value of largest magnitude maps to -16. */
export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const base = xOff + b * QK;
    let amax = 0;
    let max = 0;
    for (let j = 0; j < QK; j++) {
      const v = x[base + j];
      if (Math.abs(v) > amax) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = Math.fround(max / -16);
    const id = d !== 0 ? Math.fround(1 / d) : 0;
    const h = f32ToF16(d);
    const o = dstOff + b * BLOCK_BYTES;
    dst[o] = h & 0xff;
    dst[o + 1] = h >> 8;
    let qh = 0;
    for (let j = 0; j < QK / 2; j++) {
      const lo = Math.min(31, Math.trunc(Math.fround(Math.fround(x[base + j] * id) + 16.5)));
      const hi = Math.min(31, Math.trunc(Math.fround(Math.fround(x[base + j + 16] * id) + 16.5)));
      dst[o + 6 + j] = (lo & 15) | ((hi & 15) << 4);
      qh |= ((lo >> 4) << j) | ((hi >> 4) << (j + 16));
    }
    dst[o + 2] = qh & 0xff;
    dst[o + 3] = (qh >>> 8) & 0xff;
    dst[o + 4] = (qh >>> 16) & 0xff;
    dst[o + 5] = qh >>> 24;
  }
}
