// Q6_K: super-blocks of 256 values, { 128 bytes ql, 64 bytes qh, 16 int8 scales, f16 d }.
// Value = d·scale[i/16]·(q - 32) with the 6-bit q split in a low nibble (ql) and 2 high bits
// (qh). Per half of 128 values (ql += 64, qh += 32): for l < 32, ql[l] holds values l (low
// nibble) and l+64 (high), ql[l+32] holds l+32 and l+96, and qh[l] holds the high bits of
// l, l+32, l+64, l+96 at bits 0-1, 2-3, 4-5, 6-7: nibbles of span 64, crumbs as in Q2_K.

import { nearestInt } from './activation.ts';
import { GgmlType } from '../ggml/types.ts';
import { blockKernels } from './blocks.ts';
import { packCrumbs, packNibbles, signedMax, writeF16 } from './block.ts';
import { GROUP_MAX_EPS, fitSymmetricGroups, makeQxQuants, roundSymmetric } from './kquants.ts';

function decodeScales(w: Uint8Array, o: number, sc: Int16Array): void {
  for (let j = 0; j < 16; j++) sc[j] = (w[o + j] << 24) >> 24;
}

const f = Math.fround;

export const { type, activation, dequantizeRow, dot, quantizeRow } = blockKernels({
  type: GgmlType.Q6_K,
  group: 16,
  zero: 32,
  at: { d: 208 },
  scales: (w, o, sc) => decodeScales(w, o + 192, sc),
  unpack(w, o, q) {
    for (let half = 0; half < 2; half++) {
      const ql = o + 64 * half;
      const qh = o + 128 + 32 * half;
      const v = 128 * half;
      for (let l = 0; l < 32; l++) {
        const a = w[ql + l];
        const c = w[ql + 32 + l];
        const h = w[qh + l];
        q[v + l] = (a & 15) | ((h & 3) << 4);
        q[v + l + 32] = (c & 15) | (((h >> 2) & 3) << 4);
        q[v + l + 64] = (a >> 4) | (((h >> 4) & 3) << 4);
        q[v + l + 96] = (c >> 4) | ((h >> 6) << 4);
      }
    }
  },
  pack(L, dst, o) {
    packNibbles(L, 256, 64, dst, o);
    packCrumbs(L, 4, dst, o + 128);
  },
  /**
   * ggml's quantize_row_q6_K_ref: per 16 values a symmetric x²-weighted fit
   * (make_qx_quants), the 16 scales quantized to int8 against the one of largest magnitude
   * (which maps to -128), then the values re-rounded against the quantized scales.
   */
  quantize(x, xb, dst, o, L, sc) {
    const scales = fitSymmetricGroups(x, xb, 32, makeQxQuants, L);
    const maxScale = signedMax(scales, 0, 16);
    if (Math.abs(maxScale) < GROUP_MAX_EPS) {
      // An all-zero block: zero bytes, which the zero levels pack to.
      dst.fill(0, o, o + 210);
      L.fill(0);
      return;
    }
    const iscale = f(-128 / maxScale);
    const dq = writeF16(dst, o + 208, f(1 / iscale));
    for (let ib = 0; ib < 16; ib++) dst[o + 192 + ib] = Math.min(127, nearestInt(f(iscale * scales[ib]))) & 0xff;
    decodeScales(dst, o + 192, sc);
    roundSymmetric(x, xb, dq, sc, 32, L);
  },
});
