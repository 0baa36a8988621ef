// SIMD helpers every kernel file shares: the build's relaxed-SIMD switch, horizontal sums
// and the int8 products.

// Built twice (scripts/build-wasm.mjs): kernels.wasm with SIMD128 alone, and
// kernels-relaxed.wasm also with relaxed SIMD, whose int8 dot product
// (i16x8.relaxed_dot_i8x16_i7x16_s: pmaddubsw on x86) multiplies 16 int8 activations by 16
// weights in [0, 127] into int16 pairs in one instruction, where SIMD128 needs two widening
// multiplies and an add. Weights that are unsigned as stored (Q4_K, Q5_K nibbles; Q4_0 and
// Q6_K before their offset) take it directly; the offset (8 for Q4_0, 32 for Q6_K) comes off
// afterwards through the activation's sums. Every sum stays an exact integer, so the
// K-quants still equal the js reference bit for bit.
export const RELAXED: bool = ASC_FEATURE_RELAXED_SIMD;

// @ts-ignore: decorator
@inline export function hsumI32(v: v128): i32 {
  return i32x4.extract_lane(v, 0) + i32x4.extract_lane(v, 1) + i32x4.extract_lane(v, 2) + i32x4.extract_lane(v, 3);
}

// @ts-ignore: decorator
@inline export function hsum(v: v128): f32 {
  return f32x4.extract_lane(v, 0) + f32x4.extract_lane(v, 1) + f32x4.extract_lane(v, 2) + f32x4.extract_lane(v, 3);
}

// The integer block products multiply int8 by int8 into int16 lanes (extmul) and add lane
// pairs into int32 (extadd_pairwise): on arm64 these are single smull/smull2/saddlp
// instructions, where widening first and using i32x4.dot_i16x8_s costs about twice as
// many; on x86 the two forms measured the same. Two int8·int8 products fit an int16 lane
// (|q| ≤ 127 for activations, ≥ -128 for weights: 2·128·127 < 2^15).

/** Σ over 16 lanes of w·a (int8 × int8, at most two products per int16 lane) as 8 int16 lanes. */
// @ts-ignore: decorator
@inline export function mul16(w: v128, a: v128): v128 {
  return i16x8.add(i16x8.extmul_low_i8x16_s(w, a), i16x8.extmul_high_i8x16_s(w, a));
}

/** Relaxed build: 16 int8 activations a against 16 weights q in [0, 127], as 8 int16 lanes
 *  of two products each (|a| ≤ 127, so at most 2·127·127). */
// @ts-ignore: decorator
@inline export function rdot16(a: v128, q: v128): v128 {
  return i16x8.relaxed_dot_i8x16_i7x16_s(a, q);
}

/** Relaxed build: 32 weights (lo: values 0-15, hi: 16-31, each in [0, 63]) against the 32
 *  activation quants at a, times the int16 lanes of sc (a scale, or ones): int32 lanes. Four
 *  products per int16 lane: at most 4·127·63 < 2^15. */
// @ts-ignore: decorator
@inline export function rdot32(lo: v128, hi: v128, a: usize, sc: v128): v128 {
  return i32x4.dot_i16x8_s(i16x8.add(rdot16(v128.load(a), lo), rdot16(v128.load(a, 16), hi)), sc);
}
