// Q5_1: blocks of 32 values, { f16 scale d, f16 min m, u32 qh, 16 bytes of nibbles }; the
// nibbles and qh are laid out as in Q5_0; value = d * q + m with q in [0, 31].

import { GgmlType } from '../ggml/types.ts';
import { blockKernels } from './blocks.ts';
import { packLegacy5, quantizeWithMin, unpackLegacy5 } from './block.ts';

export const { type, activation, dequantizeRow, dot, quantizeRow } = blockKernels({
  type: GgmlType.Q5_1,
  at: { d: 0, m: 2 },
  unpack: (w, o, q) => unpackLegacy5(w, o + 4, o + 8, q),
  pack: (L, dst, o) => packLegacy5(L, dst, o + 4, o + 8),
  /** ggml's quantize_row_q5_1_ref: the block's range split in 31 steps from its min, unclamped. */
  quantize: (x, xb, dst, o, L) => quantizeWithMin(x, xb, 31, Infinity, dst, o, L),
});
