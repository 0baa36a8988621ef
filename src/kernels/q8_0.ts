// Q8_0: blocks of 32 values, { f16 scale d, int8 q[32] }, value = d * q.

import type { Activation } from './activation.ts';
import { readF16, writeScale } from './block.ts';

const QK = 32;
const BLOCK_BYTES = 34;

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const d = readF16(w, o);
    for (let j = 0; j < QK; j++) out[outOff + b * QK + j] = d * ((w[o + 2 + j] << 24) >> 24);
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
    for (let j = 0; j < QK; j++) isum += ((w[o + 2 + j] << 24) >> 24) * qs[base + j];
    sum += Math.fround(readF16(w, o) * xd[b]) * isum;
  }
  return sum;
}

/** ggml's reference quantizer (quantize_row_q8_0_ref): d = amax/127, q = round(x/d). */
export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const base = xOff + b * QK;
    let amax = 0;
    for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(x[base + j]));
    const o = dstOff + b * BLOCK_BYTES;
    const id = writeScale(dst, o, Math.fround(amax / 127));
    for (let j = 0; j < QK; j++) dst[o + 2 + j] = roundHalfAway(Math.fround(x[base + j] * id)) & 0xff;
  }
}

function roundHalfAway(v: number): number {
  return v < 0 ? -Math.round(-v) : Math.round(v);
}
