// Q5_0: blocks of 32 values, { f16 scale d, u32 qh, 16 bytes of nibbles }; byte j holds the
// low 4 bits of value j (low nibble) and of value j+16 (high nibble), bit i of the
// little-endian qh is the fifth bit of value i; value = d * (q - 16).

import { GgmlType } from '../ggml/types.ts';
import { blockKernels } from './blocks.ts';
import { packLegacy5, unpackLegacy5, writeSymmetricScale } from './block.ts';

export const { type, activation, dequantizeRow, dot, quantizeRow } = blockKernels({
  type: GgmlType.Q5_0,
  zero: 16,
  at: { d: 0 },
  unpack: (w, o, q) => unpackLegacy5(w, o + 2, o + 6, q),
  pack: (L, dst, o) => packLegacy5(L, dst, o + 2, o + 6),
  /** ggml's quantize_row_q5_0_ref: the value of largest magnitude maps to -16. */
  quantize(x, xb, dst, o, L) {
    const id = writeSymmetricScale(x, xb, 16, dst, o);
    for (let j = 0; j < 32; j++) L[j] = Math.min(31, Math.trunc(Math.fround(Math.fround(x[xb + j] * id) + 16.5)));
  },
});
