// Q4_1: blocks of 32 values, { f16 scale d, f16 min m, 16 bytes of nibbles }; byte j holds
// value j in its low nibble and value j+16 in its high nibble; value = d * nibble + m.

import { GgmlType } from '../ggml/types.ts';
import { blockKernels } from './blocks.ts';
import { packNibbles, quantizeWithMin, unpackNibbles } from './block.ts';

export const { type, activation, dequantizeRow, dot, quantizeRow } = blockKernels({
  type: GgmlType.Q4_1,
  at: { d: 0, m: 2 },
  unpack: (w, o, q) => unpackNibbles(w, o + 4, 32, 16, q),
  pack: (L, dst, o) => packNibbles(L, 32, 16, dst, o + 4),
  /** ggml's quantize_row_q4_1_ref: the block's range split in 15 steps from its min. */
  quantize: (x, xb, dst, o, L) => quantizeWithMin(x, xb, 15, 15, dst, o, L),
});
