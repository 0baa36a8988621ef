// Q4_0: blocks of 32 values, { f16 scale d, 16 bytes of nibbles }; byte j holds value j in
// its low nibble and value j+16 in its high nibble; value = d * (nibble - 8).

import { GgmlType } from '../ggml/types.ts';
import { blockKernels } from './blocks.ts';
import { packNibbles, unpackNibbles, writeSymmetricScale } from './block.ts';

export const { type, activation, dequantizeRow, dot, quantizeRow } = blockKernels({
  type: GgmlType.Q4_0,
  zero: 8,
  at: { d: 0 },
  unpack: (w, o, q) => unpackNibbles(w, o + 2, 32, 16, q),
  pack: (L, dst, o) => packNibbles(L, 32, 16, dst, o + 2),
  /** ggml's quantize_row_q4_0_ref: the value of largest magnitude maps to -8. */
  quantize(x, xb, dst, o, L) {
    const id = writeSymmetricScale(x, xb, 8, dst, o);
    // x·id + 8.5 rounds to f32 before the truncation, as ggml's float sum does
    for (let j = 0; j < 32; j++) L[j] = Math.min(15, Math.trunc(Math.fround(Math.fround(x[xb + j] * id) + 8.5)));
  },
});
