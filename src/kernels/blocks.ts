// The row kernels of the block formats (Q4_0 … Q6_K), written once. A format's file says
// what one block is: its size, where its f16 scales sit, how its bytes unpack to integer
// levels (and, for the K-quants, to per-group scales and mins), how levels pack back into
// bytes, and how its reference quantizer picks them. The loops over a row's blocks, the
// scaling of levels to values and the dot products with the quantized activations are here.
//
// Every block's value is d·sc·(q − zero), plus its min: none (Q4_0, Q5_0, Q8_0, Q3_K, Q6_K),
// an f16 m added to every value (Q4_1, Q5_1), or a per-group integer min mn times an f16
// dmin, subtracted (Q2_K, Q4_K, Q5_K). The legacy formats have one group, with sc = 1.
//
// The arithmetic is ggml's, to the bit. d·sc·q is exact in double (at most 11 + 8 + 6 bits)
// and ggml's f32 steps round it at most once, so one double expression rounded at the f32
// store gives the same value; adding the min rounds once more, and double then f32 rounds a
// sum as f32 alone would (53 ≥ 2·24 + 2). The dot products sum the integer products exactly
// and round the combined scales to f32 as ggml does.

import type { Activation } from './activation.ts';
import { ggmlTypeInfo, type GgmlType } from '../ggml/types.ts';
import { readF16 } from './block.ts';

export interface BlockFormat {
  /** The ggml type: its table gives the values per block (qk) and the bytes per block. */
  readonly type: GgmlType;
  /**
   * K-quants: the values per group sharing a sub-scale sc (and a min mn), and how a block's
   * are decoded: scales(w, o, sc, mn) reads those of the block at w[o..]. Legacy formats have
   * neither: the block is one group with sc = 1.
   */
  readonly group?: number;
  scales?(w: Uint8Array, o: number, sc: Int16Array, mn: Int16Array): void;
  /** The level that stands for 0 (default 0). */
  readonly zero?: number;
  /**
   * Byte offsets of the block's f16 fields: d, and for the formats with a min either m, added
   * to every value (Q4_1, Q5_1), or dmin, times each group's mn and subtracted (Q2_K, Q4_K, Q5_K).
   */
  readonly at: { readonly d: number; readonly m?: number; readonly dmin?: number };
  /** The levels of the block at w[o..] to q[0..qk), as stored (the zero not taken off). */
  unpack(w: Uint8Array, o: number, q: Int16Array): void;
  /** Stores the levels L[0..qk) in the block at dst[o..], as unpack reads them. */
  pack(L: Uint8Array, dst: Uint8Array, o: number): void;
  /**
   * ggml's reference quantizer for one block: x[xb..xb+qk) to the scales and mins of the block
   * at dst[o..], and its levels to L, which pack then stores. sc and mn are room for the
   * group scales and mins as `scales` decodes them, which the K-quants re-round against.
   */
  quantize(
    x: Float32Array,
    xb: number,
    dst: Uint8Array,
    o: number,
    L: Uint8Array,
    sc: Int16Array,
    mn: Int16Array,
  ): void;
}

export interface RowKernels {
  readonly type: GgmlType;
  /**
   * The activation form the dot product takes (ggml's vec_dot_type), whose blocks are the
   * format's: Q8_K for the K-quants; for the legacy formats Q8_1, which carries the sums their
   * m multiplies, or Q8_0 for those without a min.
   */
  readonly activation: 'q8_0' | 'q8_1' | 'q8_k';
  /** Writes the n values of the row at byte offset `off` of `w` to out[outOff..]. */
  dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void;
  /** Dot product of the n-value row at byte offset `off` with the prepared activation. */
  dot(w: Uint8Array, off: number, n: number, x: Activation): number;
  /** n values of x into blocks at dst[dstOff..]. */
  quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void;
}

// One block's levels, group scales and mins, and a quantizer's levels: every kernel fills
// them before it reads them, so the formats share them (the kernels allocate nothing per call).
const q = new Int16Array(256);
const sc = new Int16Array(16);
const mn = new Int16Array(16);
const L = new Uint8Array(256);

export function blockKernels(format: BlockFormat): RowKernels {
  const { type, at, scales, unpack, pack, quantize } = format;
  const info = ggmlTypeInfo(type);
  if (!info) throw new Error(`ggml type ${type} missing from the type table`);
  const qk = info.blockSize;
  const bytes = info.typeSize;
  const group = format.group ?? qk;
  const groups = qk / group;
  const zero = format.zero ?? 0;
  const dAt = at.d;
  const min = at.m !== undefined ? 'm' : at.dmin !== undefined ? 'dmin' : 'none';
  const minAt = at.m ?? at.dmin ?? 0;
  const f = Math.fround;
  return {
    type,
    activation: qk === 256 ? 'q8_k' : min === 'm' ? 'q8_1' : 'q8_0',

    dequantizeRow(w, off, n, out, outOff) {
      for (let b = 0; b < n / qk; b++) {
        const o = off + b * bytes;
        if (scales) scales(w, o, sc, mn);
        unpack(w, o, q);
        const d = readF16(w, o + dAt);
        const m = min === 'none' ? 0 : readF16(w, o + minAt);
        const base = outOff + b * qk;
        for (let g = 0; g < groups; g++) {
          const dl = groups === 1 ? d : d * sc[g];
          // What is added: m, or −dmin·mn (x + (−y) is x − y to the bit), or −0, which leaves
          // every value as it is (−0 included).
          const ml = min === 'm' ? m : min === 'dmin' ? -(m * mn[g]) : -0;
          for (let i = g * group; i < (g + 1) * group; i += 16) {
            scale8(q, i, zero, dl, ml, out, base + i);
            scale8(q, i + 8, zero, dl, ml, out, base + i + 8);
          }
        }
      }
    },

    dot(w, off, n, x) {
      const qs = x.qs;
      let sum = 0;
      for (let b = 0; b < n / qk; b++) {
        const o = off + b * bytes;
        if (scales) scales(w, o, sc, mn);
        unpack(w, o, q);
        const xb = b * qk;
        let isum = 0;
        for (let g = 0; g < groups; g++) {
          let gs = 0;
          for (let i = g * group; i < (g + 1) * group; i += 16) {
            gs += dot8(q, i, zero, qs, xb + i) + dot8(q, i + 8, zero, qs, xb + i + 8);
          }
          isum += groups === 1 ? gs : sc[g] * gs;
        }
        const dx = x.d[b];
        const scaled = f(readF16(w, o + dAt) * dx) * isum;
        if (min === 'none') sum += scaled;
        // Q8_1 carries dx·Σqx per block as s: the min term costs one multiply.
        else if (min === 'm') sum += scaled + readF16(w, o + minAt) * x.s[b];
        // Q8_K carries Σqx per 16 values: Σ mn·Σqx needs no per-value work.
        else sum += scaled - f(readF16(w, o + minAt) * dx) * minSum(x.bsums, xb / 16, group / 16, groups);
      }
      return sum;
    },

    quantizeRow(x, xOff, n, dst, dstOff) {
      for (let b = 0; b < n / qk; b++) {
        const o = dstOff + b * bytes;
        quantize(x, xOff + b * qk, dst, o, L, sc, mn);
        pack(L, dst, o);
      }
    },
  };
}

// Eight values a call, two calls a loop turn (the groups are multiples of 16): V8 does not
// unroll loops, and a loop turn per value would cost more than the arithmetic.

/** out[at..at+8) = dl·(q[i..i+8) − zero) + ml. */
function scale8(q: Int16Array, i: number, zero: number, dl: number, ml: number, out: Float32Array, at: number): void {
  out[at] = dl * (q[i] - zero) + ml;
  out[at + 1] = dl * (q[i + 1] - zero) + ml;
  out[at + 2] = dl * (q[i + 2] - zero) + ml;
  out[at + 3] = dl * (q[i + 3] - zero) + ml;
  out[at + 4] = dl * (q[i + 4] - zero) + ml;
  out[at + 5] = dl * (q[i + 5] - zero) + ml;
  out[at + 6] = dl * (q[i + 6] - zero) + ml;
  out[at + 7] = dl * (q[i + 7] - zero) + ml;
}

/** Σ (q[i+k] − zero)·qs[x+k] for k < 8. */
function dot8(q: Int16Array, i: number, zero: number, qs: Int8Array, x: number): number {
  return (
    (q[i] - zero) * qs[x] +
    (q[i + 1] - zero) * qs[x + 1] +
    (q[i + 2] - zero) * qs[x + 2] +
    (q[i + 3] - zero) * qs[x + 3] +
    (q[i + 4] - zero) * qs[x + 4] +
    (q[i + 5] - zero) * qs[x + 5] +
    (q[i + 6] - zero) * qs[x + 6] +
    (q[i + 7] - zero) * qs[x + 7]
  );
}

/** Σ mn[g]·Σqx over a block's groups, from the activation's per-16 sums starting at bsums[at]. */
function minSum(bsums: Int16Array, at: number, perGroup: number, groups: number): number {
  let msum = 0;
  for (let g = 0; g < groups; g++) {
    for (let j = 0; j < perGroup; j++) msum += mn[g] * bsums[at + perGroup * g + j];
  }
  return msum;
}
