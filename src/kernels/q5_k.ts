// Q5_K: super-blocks of 256 values, { f16 d, f16 dmin, 12 bytes of 6-bit scales and mins
// (as Q4_K), 32 bytes qh, 128 bytes of nibbles }. The nibbles are laid out as in Q4_K; the
// fifth bit of value 32·s + l (sub-block s) is bit s of qh[l]. value = d·sc·q - dmin·m with
// q in [0, 31].

import { GgmlType } from '../ggml/types.ts';
import { blockKernels } from './blocks.ts';
import { packBits256, packNibbles } from './block.ts';
import { quantizeScaleMinK4, scaleMinK4, type MinSearch } from './kquants.ts';

const search: MinSearch = { nmax: 31, rmin: -0.5, nstep: 15, mad: false };

export const { type, activation, dequantizeRow, dot, quantizeRow } = blockKernels({
  type: GgmlType.Q5_K,
  ...scaleMinK4,
  unpack(w, o, q) {
    // Value 32·s + l: nibble s % 2 of byte 48 + 32·(s/2) + l; its fifth bit, bit s of qh[l].
    for (let l = 0; l < 32; l++) {
      const h = w[o + 16 + l];
      const b0 = w[o + 48 + l];
      const b1 = w[o + 80 + l];
      const b2 = w[o + 112 + l];
      const b3 = w[o + 144 + l];
      q[l] = (b0 & 15) | ((h & 1) << 4);
      q[l + 32] = (b0 >> 4) | (((h >> 1) & 1) << 4);
      q[l + 64] = (b1 & 15) | (((h >> 2) & 1) << 4);
      q[l + 96] = (b1 >> 4) | (((h >> 3) & 1) << 4);
      q[l + 128] = (b2 & 15) | (((h >> 4) & 1) << 4);
      q[l + 160] = (b2 >> 4) | (((h >> 5) & 1) << 4);
      q[l + 192] = (b3 & 15) | (((h >> 6) & 1) << 4);
      q[l + 224] = (b3 >> 4) | ((h >> 7) << 4);
    }
  },
  pack(L, dst, o) {
    packNibbles(L, 256, 32, dst, o + 48);
    packBits256(L, 4, dst, o + 16);
  },
  /** ggml's quantize_row_q5_K_ref: Q4_K's recipe with 31 levels, the search from -0.5 in 15 steps. */
  quantize: (x, xb, dst, o, L, sc, mn) => quantizeScaleMinK4(x, xb, search, dst, o, L, sc, mn),
});
