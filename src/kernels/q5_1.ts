// Q5_1: blocks of 32 values, { f16 scale d, f16 min m, u32 qh, 16 bytes of nibbles }; the
// nibbles and qh are laid out as in Q5_0; value = d * q + m with q in [0, 31].

import type { Activation } from './activation.ts';
import { maxOf, minOf, readF16, readU32, writeF16, writeScale, writeU32 } from './block.ts';

const QK = 32;
const BLOCK_BYTES = 24;

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const d = readF16(w, o);
    const m = readF16(w, o + 2);
    const qh = readU32(w, o + 4);
    const base = outOff + b * QK;
    for (let j = 0; j < QK / 2; j++) {
      const byte = w[o + 8 + j];
      out[base + j] = ((byte & 15) | (((qh >>> j) & 1) << 4)) * d + m;
      out[base + j + 16] = ((byte >> 4) | (((qh >>> (j + 16)) & 1) << 4)) * d + m;
    }
  }
}

/** Dot product with the Q8_1 activation; the min term uses its precomputed dx·Σ qx (see q4_1). */
export function dot(w: Uint8Array, off: number, n: number, x: Activation): number {
  const qs = x.qs;
  const xd = x.d;
  const xs = x.s;
  let sum = 0;
  for (let b = 0; b < n / QK; b++) {
    const o = off + b * BLOCK_BYTES;
    const qh = readU32(w, o + 4);
    const base = b * QK;
    let isum = 0;
    for (let j = 0; j < QK / 2; j++) {
      const byte = w[o + 8 + j];
      isum +=
        ((byte & 15) | (((qh >>> j) & 1) << 4)) * qs[base + j] +
        ((byte >> 4) | (((qh >>> (j + 16)) & 1) << 4)) * qs[base + j + 16];
    }
    sum += Math.fround(readF16(w, o) * xd[b]) * isum + readF16(w, o + 2) * xs[b];
  }
  return sum;
}

/** ggml's reference quantizer (quantize_row_q5_1_ref): the block's range split in 31 steps from its min. */
export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  for (let b = 0; b < n / QK; b++) {
    const base = xOff + b * QK;
    const o = dstOff + b * BLOCK_BYTES;
    const min = minOf(x, base, QK);
    const id = writeScale(dst, o, Math.fround(Math.fround(maxOf(x, base, QK) - min) / 31));
    writeF16(dst, o + 2, min);
    let qh = 0;
    for (let j = 0; j < QK / 2; j++) {
      // No clamp to 31 here (ggml has none): (x - min)·id + 0.5 stays below 32.
      const lo = Math.trunc(Math.fround(Math.fround(Math.fround(x[base + j] - min) * id) + 0.5)) & 0xff;
      const hi = Math.trunc(Math.fround(Math.fround(Math.fround(x[base + j + 16] - min) * id) + 0.5)) & 0xff;
      dst[o + 8 + j] = (lo & 15) | ((hi & 15) << 4);
      qh |= (((lo >> 4) & 1) << j) | (((hi >> 4) & 1) << (j + 16));
    }
    writeU32(dst, o + 4, qh);
  }
}
