// Q2_K: super-blocks of 256 values, { 16 bytes of scales, 64 bytes of 2-bit quants, f16 d,
// f16 dmin }. Each 16-value group g has a 4-bit scale (low nibble of byte g) and a 4-bit min
// (high nibble): value = d·sc·q - dmin·m with q in [0, 3]. Quants go by 128 values: value
// 128·c + 32·j + l is bits 2j..2j+1 of qs[32·c + l] (see unpackCrumbs).

import { nearestInt } from './activation.ts';
import { GgmlType } from '../ggml/types.ts';
import { blockKernels } from './blocks.ts';
import { packCrumbs, unpackCrumbs, writeF16 } from './block.ts';
import { fitWithMins, roundWithMins, type MinSearch } from './kquants.ts';

const search: MinSearch = { nmax: 3, rmin: -0.5, nstep: 15, mad: true };

function decodeScales(w: Uint8Array, o: number, sc: Int16Array, mn: Int16Array): void {
  for (let g = 0; g < 16; g++) {
    sc[g] = w[o + g] & 15;
    mn[g] = w[o + g] >> 4;
  }
}

const f = Math.fround;

export const { type, activation, dequantizeRow, dot, quantizeRow } = blockKernels({
  type: GgmlType.Q2_K,
  group: 16,
  at: { d: 80, dmin: 82 },
  scales: decodeScales,
  unpack: (w, o, q) => unpackCrumbs(w, o + 16, q),
  pack: (L, dst, o) => packCrumbs(L, 0, dst, o + 16),
  /**
   * ggml's quantize_row_q2_K_ref: per 16 values an asymmetric fit weighted by |x| minimising
   * absolute error (make_qkx2_quants), scales and mins quantized to 4 bits against the
   * block's largest, then the values re-rounded.
   */
  quantize(x, xb, dst, o, L, sc, mn) {
    const { scales, mins, maxScale, maxMin } = fitWithMins(x, xb, 16, search, L);
    if (maxScale > 0) {
      const iscale = f(15 / maxScale);
      for (let j = 0; j < 16; j++) dst[o + j] = nearestInt(f(iscale * scales[j])) & 0xff;
    } else {
      dst.fill(0, o, o + 16);
    }
    if (maxMin > 0) {
      const iscale = f(15 / maxMin);
      for (let j = 0; j < 16; j++) dst[o + j] |= nearestInt(f(iscale * mins[j])) << 4;
    }
    const dq = writeF16(dst, o + 80, maxScale > 0 ? f(maxScale / 15) : 0);
    const dminq = writeF16(dst, o + 82, maxMin > 0 ? f(maxMin / 15) : 0);
    decodeScales(dst, o, sc, mn);
    roundWithMins(x, xb, 16, dq, sc, dminq, mn, search.nmax, L);
  },
});
