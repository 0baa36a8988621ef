// Half precision (f16 and bf16), bit-exact with src/ggml/half.ts: conversions, the
// f16/bf16 activation rounding, and the element-wise job that widens an f16 cache.

import { CTL_ACT, CTL_OUT } from './control';

/** f16 bits → f32, exact. Subnormal halves go through a normal subtraction (not a multiply
 *  by 2^112 of an f32 subnormal) so cores that flush subnormals, like 32-bit NEON, agree. */
// @ts-ignore: decorator
@inline export function f16ToF32(h: u32): f32 {
  let o: u32 = (h & 0x7fff) << 13;
  const e: u32 = o & 0x0f800000;
  o += 112 << 23;
  let f: f32;
  if (e == 0x0f800000) {
    f = reinterpret<f32>(o + (112 << 23)); // Inf/NaN: exponent to 255, payload kept
  } else if (e == 0) {
    f = reinterpret<f32>(o + (1 << 23)) - reinterpret<f32>(<u32>113 << 23);
  } else {
    f = reinterpret<f32>(o);
  }
  return reinterpret<f32>(reinterpret<u32>(f) | ((h & 0x8000) << 16));
}

/** Four f16 (zero-extended into i32 lanes) → four f32, the same arithmetic as f16ToF32. */
// @ts-ignore: decorator
@inline export function f16x4ToF32x4(h: v128): v128 {
  let o = i32x4.shl(v128.and(h, i32x4.splat(0x7fff)), 13);
  const e = v128.and(o, i32x4.splat(0x0f800000));
  o = i32x4.add(o, i32x4.splat(112 << 23));
  o = i32x4.add(o, v128.and(i32x4.eq(e, i32x4.splat(0x0f800000)), i32x4.splat(112 << 23)));
  const sub = i32x4.eq(e, i32x4.splat(0));
  o = i32x4.add(o, v128.and(sub, i32x4.splat(1 << 23)));
  // Lanes that are not subnormal subtract +0, which leaves them unchanged.
  const f = f32x4.sub(o, v128.and(sub, i32x4.splat(113 << 23)));
  return v128.or(f, i32x4.shl(v128.and(h, i32x4.splat(0x8000)), 16));
}

/** Writes f16ToF32 of every f16 bit pattern, as 65536 f32, to dst (see CTL_F16_TABLE). */
export function fillF16Table(dst: usize): void {
  for (let h: u32 = 0; h < 65536; h++) store<f32>(dst + (<usize>h << 2), f16ToF32(h));
}

/** f32 bits → f16 bits, round to nearest even (ggml_compute_fp32_to_fp16). */
export function f32BitsToF16(w: u32): u32 {
  const sign = (w >>> 16) & 0x8000;
  const abs = w & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00;
  if (abs >= 0x477ff000) return sign | 0x7c00;
  if (abs >= 0x38800000) {
    const m = abs - 0x38000000;
    return sign | ((m + 0xfff + ((m >>> 13) & 1)) >>> 13);
  }
  const e = abs >>> 23;
  const shift = 126 - e;
  if (shift > 24) return sign;
  const mant = (abs & 0x7fffff) | 0x800000;
  let q = mant >>> shift;
  const rem = mant & ((<u32>1 << shift) - 1);
  const half = <u32>1 << (shift - 1);
  if (rem > half || (rem == half && (q & 1) == 1)) q++;
  return sign | q;
}

/** f32 bits → bf16 bits, round to nearest even, NaN forced quiet (ggml_compute_fp32_to_bf16). */
// @ts-ignore: decorator
@inline export function f32BitsToBf16(w: u32): u32 {
  if ((w & 0x7fffffff) > 0x7f800000) return ((w >>> 16) | 0x40) & 0xffff;
  return (w + 0x7fff + ((w >>> 16) & 1)) >>> 16;
}

// ---------------------------------------------------------------------------------------
// Rounding f32 activations to f16 or bf16 and back (what F16 and BF16 weights take).

/**
 * Four f32 rounded to f16 and back (to nearest even), the bits of f16ToF32(f32BitsToF16(x))
 * without leaving f32: a normal half keeps the top 10 mantissa bits, rounded at bit 13 (the
 * exponent re-bias is a multiple of 2^13, so it does not change the rounding); a half
 * subnormal is a multiple of 2^-24, which is what adding and subtracting 0.5 (whose f32 ulp
 * is 2^-24) rounds to, ties to even; too large is infinity, and a NaN becomes the quiet NaN.
 */
// @ts-ignore: decorator
@inline export function roundF16x4(x: v128): v128 {
  const abs = v128.and(x, i32x4.splat(0x7fffffff));
  const sign = v128.xor(x, abs);
  const normal = v128.and(i32x4.add(abs, i32x4.add(i32x4.splat(0xfff), v128.and(i32x4.shr_u(abs, 13), i32x4.splat(1)))), i32x4.splat(~0x1fff));
  const tiny = f32x4.sub(f32x4.add(abs, f32x4.splat(0.5)), f32x4.splat(0.5));
  let r = v128.bitselect(tiny, normal, i32x4.lt_s(abs, i32x4.splat(0x38800000)));
  r = v128.bitselect(i32x4.splat(0x7f800000), r, i32x4.ge_s(abs, i32x4.splat(0x477ff000)));
  r = v128.bitselect(i32x4.splat(0x7fc00000), r, i32x4.gt_s(abs, i32x4.splat(0x7f800000)));
  return v128.or(r, sign);
}

/** dst[i] = x[i] rounded to f16 and back, as the reference does for F16 weights (dst may be x). */
export function roundF16(x: usize, dst: usize, n: i32): void {
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o = <usize>i << 2;
    v128.store(dst + o, roundF16x4(v128.load(x + o)));
  }
  for (; i < n; i++) {
    const o = <usize>i << 2;
    store<f32>(dst + o, f16ToF32(f32BitsToF16(load<u32>(x + o))));
  }
}

/** dst[i] = x[i] rounded to bf16 and back, as the reference does for BF16 weights. */
export function roundBf16(x: usize, dst: usize, n: i32): void {
  for (let i = 0; i < n; i++) {
    const o = <usize>i << 2;
    store<u32>(dst + o, f32BitsToBf16(load<u32>(x + o)) << 16);
  }
}

/** Elements [i0, i1) of out (f32) = the f16 bits at src, eight per step. */
export function f16Range(ctl: usize, i0: i32, i1: i32): void {
  const src = <usize>load<u32>(ctl + CTL_ACT);
  const out = <usize>load<u32>(ctl + CTL_OUT);
  let i = i0;
  for (; i + 8 <= i1; i += 8) {
    const h = v128.load(src + (<usize>i << 1));
    const o = out + (<usize>i << 2);
    v128.store(o, f16x4ToF32x4(i32x4.extend_low_i16x8_u(h)));
    v128.store(o, f16x4ToF32x4(i32x4.extend_high_i16x8_u(h)), 16);
  }
  for (; i < i1; i++) store<f32>(out + (<usize>i << 2), f16ToF32(load<u16>(src + (<usize>i << 1))));
}
