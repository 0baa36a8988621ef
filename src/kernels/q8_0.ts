// Q8_0: blocks of 32 values, { f16 scale d, int8 q[32] }, value = d * q.

import { GgmlType } from '../ggml/types.ts';
import { blockKernels } from './blocks.ts';
import { writeScale } from './block.ts';

export const { type, activation, dequantizeRow, dot, quantizeRow } = blockKernels({
  type: GgmlType.Q8_0,
  at: { d: 0 },
  unpack(w, o, q) {
    for (let j = 0, a = o + 2; j < 32; j += 4, a += 4) {
      q[j] = (w[a] << 24) >> 24;
      q[j + 1] = (w[a + 1] << 24) >> 24;
      q[j + 2] = (w[a + 2] << 24) >> 24;
      q[j + 3] = (w[a + 3] << 24) >> 24;
    }
  },
  pack(L, dst, o) {
    for (let j = 0; j < 32; j++) dst[o + 2 + j] = L[j];
  },
  /** ggml's quantize_row_q8_0_ref: d = amax/127, q = round(x/d); L holds the int8 bytes. */
  quantize(x, xb, dst, o, L) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[xb + j]));
    const id = writeScale(dst, o, Math.fround(amax / 127));
    for (let j = 0; j < 32; j++) L[j] = roundHalfAway(Math.fround(x[xb + j] * id));
  },
});

function roundHalfAway(v: number): number {
  return v < 0 ? -Math.round(-v) : Math.round(v);
}
