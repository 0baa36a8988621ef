// Q4_K: super-blocks of 256 values, { f16 d, f16 dmin, 12 bytes of 6-bit scales and mins
// (see decodeScaleMinK4), 128 bytes of nibbles }. Each of the 8 sub-blocks of 32 has its own
// scale sc and min m: value = d·sc·q - dmin·m with q in [0, 15]. The nibbles go by 64
// values: 32 bytes hold sub-block 2k in their low nibbles and sub-block 2k+1 in the high.

import { GgmlType } from '../ggml/types.ts';
import { blockKernels } from './blocks.ts';
import { packNibbles, unpackNibbles } from './block.ts';
import { quantizeScaleMinK4, scaleMinK4, type MinSearch } from './kquants.ts';

const search: MinSearch = { nmax: 15, rmin: -1, nstep: 20, mad: false };

export const { type, activation, dequantizeRow, dot, quantizeRow } = blockKernels({
  type: GgmlType.Q4_K,
  ...scaleMinK4,
  unpack: (w, o, q) => unpackNibbles(w, o + 16, 256, 32, q),
  pack: (L, dst, o) => packNibbles(L, 256, 32, dst, o + 16),
  /**
   * ggml's quantize_row_q4_K_ref (what llama-quantize writes without an imatrix): per
   * sub-block an asymmetric fit weighted by rms + |x| (make_qkx2_quants from -1 in 20 steps),
   * the scales and mins quantized to 6 bits, the values re-rounded against them.
   */
  quantize: (x, xb, dst, o, L, sc, mn) => quantizeScaleMinK4(x, xb, search, dst, o, L, sc, mn),
});
