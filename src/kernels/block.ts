// Byte, bit-plane and scale helpers shared by the block formats' layouts (q4_0 … q6_k): the
// little-endian f16 fields of a block, the planes their levels' bits are stored in, and the
// scale searches of ggml's legacy quantizers. Each format's own layout, the planes it uses
// and where they sit, stays in its file.

import { f16ToF32, f32ToF16 } from '../ggml/half.ts';

/** The little-endian f16 at w[o..o+2), as f32. */
export function readF16(w: Uint8Array, o: number): number {
  return f16ToF32(w[o] | (w[o + 1] << 8));
}

/** Rounds v to f16, writes it little-endian to dst[o..o+2) and returns the value stored (as f32). */
export function writeF16(dst: Uint8Array, o: number, v: number): number {
  const h = f32ToF16(v);
  dst[o] = h & 0xff;
  dst[o + 1] = h >> 8;
  return f16ToF32(h);
}

// Bit planes. A format stores its levels' bits in one to three planes: a low plane of
// nibbles or 2-bit crumbs, and the high bits in a plane of their own. The unpackers set a
// block's levels q[] from a low plane or OR a high one in at `shift`; each packer stores bits
// shift.. of the levels L[] in its plane's layout. Q3_K, Q5_K and Q6_K unpack their two
// planes in one loop of their own: a second pass over 256 levels made their kernels half
// again slower. The unpackers handle four bytes or more per loop turn: V8 does not unroll
// loops, and in these short loops the turn's overhead is most of the cost.

/**
 * Nibble plane of n values in runs of 2·span: byte span·r + l at w[at..] holds value
 * 2·span·r + l in its low nibble and value 2·span·r + span + l in its high nibble. Q4_0 …
 * Q5_1 (span 16: byte j holds values j and j+16), Q4_K and Q5_K (32), Q6_K's ql (64). Sets q.
 */
export function unpackNibbles(w: Uint8Array, at: number, n: number, span: number, q: Int16Array): void {
  for (let r = 0; r < n; r += 2 * span) {
    for (let j = 0; j < span; j += 8) {
      const a = at + (r >> 1) + j;
      const l = r + j;
      const h = l + span;
      const b0 = w[a];
      const b1 = w[a + 1];
      const b2 = w[a + 2];
      const b3 = w[a + 3];
      const b4 = w[a + 4];
      const b5 = w[a + 5];
      const b6 = w[a + 6];
      const b7 = w[a + 7];
      q[l] = b0 & 15;
      q[l + 1] = b1 & 15;
      q[l + 2] = b2 & 15;
      q[l + 3] = b3 & 15;
      q[l + 4] = b4 & 15;
      q[l + 5] = b5 & 15;
      q[l + 6] = b6 & 15;
      q[l + 7] = b7 & 15;
      q[h] = b0 >> 4;
      q[h + 1] = b1 >> 4;
      q[h + 2] = b2 >> 4;
      q[h + 3] = b3 >> 4;
      q[h + 4] = b4 >> 4;
      q[h + 5] = b5 >> 4;
      q[h + 6] = b6 >> 4;
      q[h + 7] = b7 >> 4;
    }
  }
}

/** Stores the low 4 bits of L[0..n) as unpackNibbles reads them. */
export function packNibbles(L: Uint8Array, n: number, span: number, dst: Uint8Array, at: number): void {
  for (let r = 0, a = at; r < n; r += 2 * span, a += span) {
    for (let l = 0; l < span; l++) dst[a + l] = (L[r + l] & 15) | ((L[r + span + l] & 15) << 4);
  }
}

/**
 * 2-bit plane of 256 values: value 128·c + 32·j + l is bits 2j..2j+1 of byte 32·c + l at
 * w[at..]. Q2_K's and Q3_K's low bits, Q6_K's high bits. Sets q.
 */
export function unpackCrumbs(w: Uint8Array, at: number, q: Int16Array): void {
  for (let c = 0; c < 2; c++) {
    for (let l = 0, v = 128 * c; l < 32; l++, v++) {
      const byte = w[at + 32 * c + l];
      q[v] = byte & 3;
      q[v + 32] = (byte >> 2) & 3;
      q[v + 64] = (byte >> 4) & 3;
      q[v + 96] = byte >> 6;
    }
  }
}

/** Stores bits shift..shift+1 of L[0..256) in the layout unpackCrumbs reads. */
export function packCrumbs(L: Uint8Array, shift: number, dst: Uint8Array, at: number): void {
  for (let c = 0; c < 2; c++) {
    for (let l = 0; l < 32; l++) {
      let byte = 0;
      for (let j = 0, v = 128 * c + l; j < 4; j++, v += 32) byte |= ((L[v] >> shift) & 3) << (2 * j);
      dst[at + 32 * c + l] = byte;
    }
  }
}

/**
 * The levels of Q5_0 and Q5_1: the low 4 bits in 16 bytes of nibbles at w[qsAt..] (byte j:
 * values j and j+16), the fifth bits in the little-endian u32 qh at w[qhAt..] (bit i: value i).
 */
export function unpackLegacy5(w: Uint8Array, qhAt: number, qsAt: number, q: Int16Array): void {
  unpackNibbles(w, qsAt, 32, 16, q);
  unpackBits32(w, qhAt, 4, q);
}

/** Stores the 5-bit levels L[0..32) as unpackLegacy5 reads them. */
export function packLegacy5(L: Uint8Array, dst: Uint8Array, qhAt: number, qsAt: number): void {
  packNibbles(L, 32, 16, dst, qsAt);
  packBits(L, 4, 8, 1, 4, dst, qhAt);
}

/** 1-bit plane of 32 values: bit i of the little-endian u32 at w[at..], ORed into q at `shift`. */
function unpackBits32(w: Uint8Array, at: number, shift: number, q: Int16Array): void {
  for (let j = 0, v = 0; j < 4; j++, v += 8) {
    const byte = w[at + j];
    q[v] |= (byte & 1) << shift;
    q[v + 1] |= ((byte >> 1) & 1) << shift;
    q[v + 2] |= ((byte >> 2) & 1) << shift;
    q[v + 3] |= ((byte >> 3) & 1) << shift;
    q[v + 4] |= ((byte >> 4) & 1) << shift;
    q[v + 5] |= ((byte >> 5) & 1) << shift;
    q[v + 6] |= ((byte >> 6) & 1) << shift;
    q[v + 7] |= (byte >> 7) << shift;
  }
}

/**
 * Stores bit `shift` of L[0..256) in 32 bytes: the bit of value i is bit i/32 of byte i % 32
 * (Q3_K's hmask, Q5_K's qh).
 */
export function packBits256(L: Uint8Array, shift: number, dst: Uint8Array, at: number): void {
  packBits(L, 32, 1, 32, shift, dst, at);
}

/** Bit `shift` of the levels into `bytes` bytes: byte l's bit s is that of value l·byteStep + s·bitStep. */
function packBits(
  L: Uint8Array,
  bytes: number,
  byteStep: number,
  bitStep: number,
  shift: number,
  dst: Uint8Array,
  at: number,
): void {
  for (let l = 0, v = 0; l < bytes; l++, v += byteStep) {
    let byte = 0;
    for (let s = 0; s < 8; s++) byte |= ((L[v + s * bitStep] >> shift) & 1) << s;
    dst[at + l] = byte;
  }
}

/**
 * The value of largest magnitude in x[off..off+n), the first of equals (ggml's strict >):
 * the symmetric quantizers map it to their most negative level.
 */
export function signedMax(x: Float32Array, off: number, n: number): number {
  let amax = 0;
  let max = 0;
  for (let j = 0; j < n; j++) {
    const v = x[off + j];
    if (Math.abs(v) > amax) {
      amax = Math.abs(v);
      max = v;
    }
  }
  return max;
}

/**
 * Writes a legacy block's scale d (already rounded to f32) as f16 to dst[o..o+2) and returns
 * the f32 inverse the quants are rounded with: 1/d, or 0 for an all-zero block. As ggml,
 * the quants use the f32 d, not its f16 form.
 */
export function writeScale(dst: Uint8Array, o: number, d: number): number {
  writeF16(dst, o, d);
  return d !== 0 ? Math.fround(1 / d) : 0;
}

/**
 * The scale of ggml's Q4_0 and Q5_0 reference quantizers: the value of largest magnitude of
 * the 32 at x[xb..] maps to -nmax. Writes d to dst[o..o+2), returns its f32 inverse.
 */
export function writeSymmetricScale(x: Float32Array, xb: number, nmax: number, dst: Uint8Array, o: number): number {
  return writeScale(dst, o, Math.fround(signedMax(x, xb, 32) / -nmax));
}

/**
 * ggml's reference quantizer of Q4_1 and Q5_1 (quantize_row_q4_1_ref, _q5_1_ref): the 32
 * values at x[xb..] split their range in `steps` steps from their min. Writes the f16 d and
 * m to dst[o..o+4) and the levels to L, rounded against the f32 min and d, not their f16
 * forms, as ggml does. Q4_1 clamps the levels to 15; Q5_1 has no clamp in ggml (`clamp`
 * Infinity: (x - min)·id + 0.5 stays below 32, and L keeps the low byte as its uint8_t does).
 */
export function quantizeWithMin(
  x: Float32Array,
  xb: number,
  steps: number,
  clamp: number,
  dst: Uint8Array,
  o: number,
  L: Uint8Array,
): void {
  const f = Math.fround;
  const min = minOf(x, xb, 32);
  const id = writeScale(dst, o, f(f(maxOf(x, xb, 32) - min) / steps));
  writeF16(dst, o + 2, min);
  for (let j = 0; j < 32; j++) L[j] = Math.min(clamp, Math.trunc(f(f(f(x[xb + j] - min) * id) + 0.5)));
}

/** The smallest of x[off..off+n) (ggml starts from FLT_MAX: at most that). */
function minOf(x: Float32Array, off: number, n: number): number {
  let min = FLT_MAX;
  for (let j = 0; j < n; j++) if (x[off + j] < min) min = x[off + j];
  return min;
}

/** The largest of x[off..off+n) (ggml starts from -FLT_MAX: at least that). */
function maxOf(x: Float32Array, off: number, n: number): number {
  let max = -FLT_MAX;
  for (let j = 0; j < n; j++) if (x[off + j] > max) max = x[off + j];
  return max;
}

const FLT_MAX = 3.4028234663852886e38;
