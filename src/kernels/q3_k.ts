// Q3_K: super-blocks of 256 values, { 32 bytes hmask, 64 bytes of 2-bit quants, 12 bytes of
// 6-bit scales, f16 d }. value = d·(scale[i/16] - 32)·(q - 4) where q's low 2 bits are laid
// out as in Q2_K and its high bit, that of value i, is bit i/32 of hmask[i % 32]. The 16
// scales: low 4 bits in the nibbles of bytes 0-7 (scale j in byte j % 8, high nibble for
// j ≥ 8), high 2 bits in bytes 8-11 (scale j at bits 2·(j/4) of byte 8 + j % 4).

import { nearestInt } from './activation.ts';
import { GgmlType } from '../ggml/types.ts';
import { blockKernels } from './blocks.ts';
import { packBits256, packCrumbs, signedMax, writeF16 } from './block.ts';
import { fitSymmetricGroups, makeQ3Quants, roundSymmetric } from './kquants.ts';

function decodeScales(w: Uint8Array, o: number, sc: Int16Array): void {
  for (let j = 0; j < 16; j++) {
    const low = j < 8 ? w[o + j] & 15 : w[o + j - 8] >> 4;
    const high = (w[o + 8 + (j & 3)] >> (2 * (j >> 2))) & 3;
    sc[j] = (low | (high << 4)) - 32;
  }
}

const f = Math.fround;

export const { type, activation, dequantizeRow, dot, quantizeRow } = blockKernels({
  type: GgmlType.Q3_K,
  group: 16,
  zero: 4,
  at: { d: 108 },
  scales: (w, o, sc) => decodeScales(w, o + 96, sc),
  unpack(w, o, q) {
    for (let c = 0; c < 2; c++) {
      for (let l = 0; l < 32; l++) {
        const byte = w[o + 32 + 32 * c + l];
        const h = w[o + l] >> (4 * c);
        const v = 128 * c + l;
        q[v] = (byte & 3) | ((h & 1) << 2);
        q[v + 32] = ((byte >> 2) & 3) | (((h >> 1) & 1) << 2);
        q[v + 64] = ((byte >> 4) & 3) | (((h >> 2) & 1) << 2);
        q[v + 96] = (byte >> 6) | (((h >> 3) & 1) << 2);
      }
    }
  },
  pack(L, dst, o) {
    packCrumbs(L, 0, dst, o + 32);
    packBits256(L, 2, dst, o);
  },
  /**
   * ggml's quantize_row_q3_K_ref: per 16 values a symmetric x²-weighted fit refined value by
   * value (make_q3_quants), the scales quantized to 6 bits against the one of largest
   * magnitude (which maps to -32), then the values re-rounded.
   */
  quantize(x, xb, dst, o, L, sc) {
    const scales = fitSymmetricGroups(x, xb, 4, makeQ3Quants, L);
    const maxScale = signedMax(scales, 0, 16);
    const s = o + 96;
    dst.fill(0, s, s + 12);
    let scale = 0;
    if (maxScale !== 0) {
      const iscale = f(-32 / maxScale);
      for (let j = 0; j < 16; j++) {
        // ggml keeps nearest_int in an int8_t before clamping; mirrored by the sign-extension.
        const l = Math.max(-32, Math.min(31, (nearestInt(f(iscale * scales[j])) << 24) >> 24)) + 32;
        if (j < 8) dst[s + j] = l & 15;
        else dst[s + j - 8] |= (l & 15) << 4;
        dst[s + 8 + (j & 3)] |= (l >> 4) << (2 * (j >> 2));
      }
      scale = f(1 / iscale);
    }
    const dq = writeF16(dst, o + 108, scale);
    decodeScales(dst, s, sc);
    roundSymmetric(x, xb, dq, sc, 4, L);
  },
});
