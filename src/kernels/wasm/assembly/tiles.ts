// Tiles for prefill: one weight row against four activation vectors at once, so each weight
// block is loaded and unpacked once for the four (in the dot products of dot_q.ts and
// dot_k.ts, once per vector). Per vector the arithmetic is exactly the single-vector
// kernel's (the same integer lane sums, the same float steps in the same order), so a matmul
// equals n matvecs bit for bit.
//
// `wide` tiles read the activation quants widened to i16 once per product (CTL_ACT16) and
// multiply with i32x4.dot_i16x8_s against weights widened once per block: on x86 that is
// pmaddwd on ready operands, where every int8 extmul widens both operands again (about
// three times the instructions per vector). On arm64 the int8 extmul (smull/smull2) is
// cheaper than widening, so the backend uses the narrow tiles there. K-quant weights are
// multiplied by their sub-block scale while still i16 (|q·sc| ≤ 32·128), once for all four
// vectors; Q4_K's min term stays per vector (one minSum of its bsums per super-block).

import { RELAXED, hsumI32, hsum, rdot32 } from './simd';
import { f16ToF32 } from './half';
import { q8Lanes, q4Lanes, q4Low, q4High, scaleAdd } from './dot_q';
import { scaled16, minSum, scalesK4, k4Lanes, q6Values, k6R, scaleSums6 } from './dot_k';

/** Σ over 32 values of e·a, the weights as four i16x8 (values 0-7, 8-15, 16-23, 24-31),
 *  a 32 i16: lane k holds values 2k, 2k+1 (mod 8), as in q8Lanes/q4Lanes. */
// @ts-ignore: decorator
@inline export function dot32w(e0: v128, e1: v128, e2: v128, e3: v128, a: usize): v128 {
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(e0, v128.load(a)), i32x4.dot_i16x8_s(e1, v128.load(a, 16))),
    i32x4.add(i32x4.dot_i16x8_s(e2, v128.load(a, 32)), i32x4.dot_i16x8_s(e3, v128.load(a, 48))),
  );
}

/** The Q4_0 (q8 false) or Q8_0 row at p of nb blocks against the four vectors at x (int8,
 *  xStride apart; i16 at x16 for wide), scales at xd (dStride apart); outputs oStride apart. */
// @ts-ignore: decorator
@inline export function tile32(q8: bool, wide: bool, p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, out: usize, oStride: usize, f16t: usize): void {
  let c0 = f32x4.splat(0), c1 = f32x4.splat(0), c2 = f32x4.splat(0), c3 = f32x4.splat(0);
  const bb: usize = q8 ? 34 : 18;
  for (let b = 0; b < nb; b++) {
    const pb = p + <usize>b * bb;
    let wl: v128, wh: v128;
    if (q8) {
      wl = v128.load(pb, 2);
      wh = v128.load(pb, 18);
    } else {
      const q = v128.load(pb, 2);
      wl = q4Low(q);
      wh = q4High(q);
    }
    const dw = v128.load32_splat(f16t + (<usize>load<u16>(pb) << 2));
    const d = xd + (<usize>b << 2);
    // Each vector's running sum is also stored to its output as it goes (see tileQ4_0R).
    if (wide) {
      const e0 = i16x8.extend_low_i8x16_s(wl), e1 = i16x8.extend_high_i8x16_s(wl);
      const e2 = i16x8.extend_low_i8x16_s(wh), e3 = i16x8.extend_high_i8x16_s(wh);
      const a = x16 + (<usize>b << 6);
      const s2 = xStride << 1;
      c0 = scaleAdd(c0, dot32w(e0, e1, e2, e3, a), f32x4.mul(dw, v128.load32_splat(d)));
      store<f32>(out, f32x4.extract_lane(c0, 0));
      c1 = scaleAdd(c1, dot32w(e0, e1, e2, e3, a + s2), f32x4.mul(dw, v128.load32_splat(d + dStride)));
      store<f32>(out + oStride, f32x4.extract_lane(c1, 0));
      c2 = scaleAdd(c2, dot32w(e0, e1, e2, e3, a + 2 * s2), f32x4.mul(dw, v128.load32_splat(d + 2 * dStride)));
      store<f32>(out + 2 * oStride, f32x4.extract_lane(c2, 0));
      c3 = scaleAdd(c3, dot32w(e0, e1, e2, e3, a + 3 * s2), f32x4.mul(dw, v128.load32_splat(d + 3 * dStride)));
      store<f32>(out + 3 * oStride, f32x4.extract_lane(c3, 0));
    } else {
      const a = x + (<usize>b << 5);
      c0 = scaleAdd(c0, q8 ? q8Lanes(wl, wh, a) : q4Lanes(wl, wh, a), f32x4.mul(dw, v128.load32_splat(d)));
      store<f32>(out, f32x4.extract_lane(c0, 0));
      c1 = scaleAdd(c1, q8 ? q8Lanes(wl, wh, a + xStride) : q4Lanes(wl, wh, a + xStride), f32x4.mul(dw, v128.load32_splat(d + dStride)));
      store<f32>(out + oStride, f32x4.extract_lane(c1, 0));
      c2 = scaleAdd(c2, q8 ? q8Lanes(wl, wh, a + 2 * xStride) : q4Lanes(wl, wh, a + 2 * xStride), f32x4.mul(dw, v128.load32_splat(d + 2 * dStride)));
      store<f32>(out + 2 * oStride, f32x4.extract_lane(c2, 0));
      c3 = scaleAdd(c3, q8 ? q8Lanes(wl, wh, a + 3 * xStride) : q4Lanes(wl, wh, a + 3 * xStride), f32x4.mul(dw, v128.load32_splat(d + 3 * dStride)));
      store<f32>(out + 3 * oStride, f32x4.extract_lane(c3, 0));
    }
  }
  store<f32>(out, hsum(c0));
  store<f32>(out + oStride, hsum(c1));
  store<f32>(out + 2 * oStride, hsum(c2));
  store<f32>(out + 3 * oStride, hsum(c3));
}

/** Relaxed build: one vector's step of tileQ4_0R: c + s·(Σ (q - 8)·a over the block at a). */
// @ts-ignore: decorator
@inline export function q4StepR(c: v128, wl: v128, wh: v128, a: usize, o: usize, dw: v128, d: usize): v128 {
  return scaleAdd(c, i32x4.sub(rdot32(wl, wh, a, i16x8.splat(1)), v128.load(o)), f32x4.mul(dw, v128.load32_splat(d)));
}

/**
 * Relaxed build: the Q4_0 tile over four vectors, or eight (tile32's arguments; offset sums
 * at xx, xxStride apart), the unsigned nibbles against int8 activations. Each vector's running sum is also stored to
 * its output as it goes (overwritten at the end): V8 places a loop's loads in program order
 * ahead of the arithmetic they feed unless a store comes between, and with all sixteen
 * loads of a block first the values outnumbered the registers and went through the stack.
 */
// @ts-ignore: decorator
@inline export function tileQ4_0R(eight: bool, p: usize, nb: i32, x: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize, f16t: usize): void {
  let c0 = f32x4.splat(0), c1 = f32x4.splat(0), c2 = f32x4.splat(0), c3 = f32x4.splat(0);
  let c4 = f32x4.splat(0), c5 = f32x4.splat(0), c6 = f32x4.splat(0), c7 = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    const pb = p + <usize>b * 18;
    const q = v128.load(pb, 2);
    const wl = v128.and(q, i8x16.splat(0x0f)), wh = i8x16.shr_u(q, 4);
    const dw = v128.load32_splat(f16t + (<usize>load<u16>(pb) << 2));
    const a = x + (<usize>b << 5), o = xx + (<usize>b << 4), d = xd + (<usize>b << 2);
    c0 = q4StepR(c0, wl, wh, a, o, dw, d);
    store<f32>(out, f32x4.extract_lane(c0, 0));
    c1 = q4StepR(c1, wl, wh, a + xStride, o + xxStride, dw, d + dStride);
    store<f32>(out + oStride, f32x4.extract_lane(c1, 0));
    c2 = q4StepR(c2, wl, wh, a + 2 * xStride, o + 2 * xxStride, dw, d + 2 * dStride);
    store<f32>(out + 2 * oStride, f32x4.extract_lane(c2, 0));
    c3 = q4StepR(c3, wl, wh, a + 3 * xStride, o + 3 * xxStride, dw, d + 3 * dStride);
    store<f32>(out + 3 * oStride, f32x4.extract_lane(c3, 0));
    if (eight) {
      c4 = q4StepR(c4, wl, wh, a + 4 * xStride, o + 4 * xxStride, dw, d + 4 * dStride);
      store<f32>(out + 4 * oStride, f32x4.extract_lane(c4, 0));
      c5 = q4StepR(c5, wl, wh, a + 5 * xStride, o + 5 * xxStride, dw, d + 5 * dStride);
      store<f32>(out + 5 * oStride, f32x4.extract_lane(c5, 0));
      c6 = q4StepR(c6, wl, wh, a + 6 * xStride, o + 6 * xxStride, dw, d + 6 * dStride);
      store<f32>(out + 6 * oStride, f32x4.extract_lane(c6, 0));
      c7 = q4StepR(c7, wl, wh, a + 7 * xStride, o + 7 * xxStride, dw, d + 7 * dStride);
      store<f32>(out + 7 * oStride, f32x4.extract_lane(c7, 0));
    }
  }
  store<f32>(out, hsum(c0));
  store<f32>(out + oStride, hsum(c1));
  store<f32>(out + 2 * oStride, hsum(c2));
  store<f32>(out + 3 * oStride, hsum(c3));
  if (eight) {
    store<f32>(out + 4 * oStride, hsum(c4));
    store<f32>(out + 5 * oStride, hsum(c5));
    store<f32>(out + 6 * oStride, hsum(c6));
    store<f32>(out + 7 * oStride, hsum(c7));
  }
}

/** Relaxed build: tileQ4_0R over eight vectors (their quants xStride apart, and so on): the
 *  block's unpacking and scale shared by twice as many vectors, each vector's steps the same. */
export function tileQ4_0x8(p: usize, nb: i32, x: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize, f16t: usize): void {
  if (RELAXED) tileQ4_0R(true, p, nb, x, xStride, xd, dStride, xx, xxStride, out, oStride, f16t);
}

/** 16 values of four Q6_K groups (q1..q4, scales s1..s4) against a (narrow, dotQ6_K's steps). */
// @ts-ignore: decorator
@inline export function k6Lanes(q1: v128, q2: v128, q3: v128, q4: v128, a: usize, s1: i32, s2: i32, s3: i32, s4: i32): v128 {
  return i32x4.add(
    i32x4.add(scaled16(q1, v128.load(a), s1), scaled16(q2, v128.load(a, 32), s2)),
    i32x4.add(scaled16(q3, v128.load(a, 64), s3), scaled16(q4, v128.load(a, 96), s4)),
  );
}

/** Two Q6_K groups, scaled and widened (e0, e1: values 0-15 against i16 a; e2, e3: values
 *  32-47 against a + 64 bytes), for the wide tile. */
// @ts-ignore: decorator
@inline export function k6PairW(e0: v128, e1: v128, e2: v128, e3: v128, a: usize): v128 {
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(e0, v128.load(a)), i32x4.dot_i16x8_s(e1, v128.load(a, 16))),
    i32x4.add(i32x4.dot_i16x8_s(e2, v128.load(a, 64)), i32x4.dot_i16x8_s(e3, v128.load(a, 80))),
  );
}

/** Relaxed build: four Q6_K groups (u1..u4 in [0, 63], scales t1..t4) against a (as k6Lanes). */
// @ts-ignore: decorator
@inline export function k6LanesR(u1: v128, u2: v128, u3: v128, u4: v128, a: usize, t1: v128, t2: v128, t3: v128, t4: v128): v128 {
  return i32x4.add(i32x4.add(k6R(u1, a, t1), k6R(u2, a + 32, t2)), i32x4.add(k6R(u3, a + 64, t3), k6R(u4, a + 96, t4)));
}

/** The Q6_K row at p of nb super-blocks against four vectors (as tile32; Q8_K sums at xx,
 *  xxStride apart, for the relaxed build's offset). */
// @ts-ignore: decorator
@inline export function tileQ6_K(wide: bool, p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize): void {
  let s0: f64 = 0, s1: f64 = 0, s2: f64 = 0, s3: f64 = 0;
  const k32 = i8x16.splat(32);
  for (let b = 0; b < nb; b++) {
    const pb = p + <usize>b * 210;
    let i0 = i32x4.splat(0), i1 = i32x4.splat(0), i2 = i32x4.splat(0), i3 = i32x4.splat(0);
    for (let half = 0; half < 2; half++) {
      const ql = pb + (<usize>half << 6);
      const qh = pb + 128 + (<usize>half << 5);
      const sc = pb + 192 + (<usize>half << 3);
      for (let g = 0; g < 2; g++) {
        const go = <usize>g << 4;
        const a0 = v128.load(ql + go), a1 = v128.load(ql + go, 32), h = v128.load(qh + go);
        const u1 = q6Values(a0, h, 0), u2 = q6Values(a1, h, 1), u3 = q6Values(a0, h, 2), u4 = q6Values(a1, h, 3);
        const c1 = <i32>load<i8>(sc + g), c2 = <i32>load<i8>(sc + g, 2), c3 = <i32>load<i8>(sc + g, 4), c4 = <i32>load<i8>(sc + g, 6);
        // Value index of the first group's first lane in the super-block; the others follow 32 apart.
        const v = (<usize>half << 7) + go;
        if (wide) {
          // |q·sc| ≤ 32·128 fits int16; a pair of those times |a| ≤ 127 fits int32.
          const q1 = i8x16.sub(u1, k32), q2 = i8x16.sub(u2, k32), q3 = i8x16.sub(u3, k32), q4 = i8x16.sub(u4, k32);
          const t1 = i16x8.splat(<i16>c1), t2 = i16x8.splat(<i16>c2), t3 = i16x8.splat(<i16>c3), t4 = i16x8.splat(<i16>c4);
          // Two groups at a time, so the weights and four sums fit x86's 16 registers.
          const a = x16 + (<usize>b << 9) + (v << 1);
          const t = xStride << 1;
          const e0 = i16x8.mul(i16x8.extend_low_i8x16_s(q1), t1), e1 = i16x8.mul(i16x8.extend_high_i8x16_s(q1), t1);
          const e2 = i16x8.mul(i16x8.extend_low_i8x16_s(q2), t2), e3 = i16x8.mul(i16x8.extend_high_i8x16_s(q2), t2);
          i0 = i32x4.add(i0, k6PairW(e0, e1, e2, e3, a));
          i1 = i32x4.add(i1, k6PairW(e0, e1, e2, e3, a + t));
          i2 = i32x4.add(i2, k6PairW(e0, e1, e2, e3, a + 2 * t));
          i3 = i32x4.add(i3, k6PairW(e0, e1, e2, e3, a + 3 * t));
          const e4 = i16x8.mul(i16x8.extend_low_i8x16_s(q3), t3), e5 = i16x8.mul(i16x8.extend_high_i8x16_s(q3), t3);
          const e6 = i16x8.mul(i16x8.extend_low_i8x16_s(q4), t4), e7 = i16x8.mul(i16x8.extend_high_i8x16_s(q4), t4);
          i0 = i32x4.add(i0, k6PairW(e4, e5, e6, e7, a + 128));
          i1 = i32x4.add(i1, k6PairW(e4, e5, e6, e7, a + t + 128));
          i2 = i32x4.add(i2, k6PairW(e4, e5, e6, e7, a + 2 * t + 128));
          i3 = i32x4.add(i3, k6PairW(e4, e5, e6, e7, a + 3 * t + 128));
        } else if (RELAXED) {
          const t1 = i16x8.splat(<i16>c1), t2 = i16x8.splat(<i16>c2), t3 = i16x8.splat(<i16>c3), t4 = i16x8.splat(<i16>c4);
          const a = x + (<usize>b << 8) + v;
          // Each vector's running sum is also stored to its output as it goes (see tileQ4_0R).
          i0 = i32x4.add(i0, k6LanesR(u1, u2, u3, u4, a, t1, t2, t3, t4));
          store<i32>(out, i32x4.extract_lane(i0, 0));
          i1 = i32x4.add(i1, k6LanesR(u1, u2, u3, u4, a + xStride, t1, t2, t3, t4));
          store<i32>(out + oStride, i32x4.extract_lane(i1, 0));
          i2 = i32x4.add(i2, k6LanesR(u1, u2, u3, u4, a + 2 * xStride, t1, t2, t3, t4));
          store<i32>(out + 2 * oStride, i32x4.extract_lane(i2, 0));
          i3 = i32x4.add(i3, k6LanesR(u1, u2, u3, u4, a + 3 * xStride, t1, t2, t3, t4));
          store<i32>(out + 3 * oStride, i32x4.extract_lane(i3, 0));
        } else {
          const q1 = i8x16.sub(u1, k32), q2 = i8x16.sub(u2, k32), q3 = i8x16.sub(u3, k32), q4 = i8x16.sub(u4, k32);
          const a = x + (<usize>b << 8) + v;
          i0 = i32x4.add(i0, k6Lanes(q1, q2, q3, q4, a, c1, c2, c3, c4));
          i1 = i32x4.add(i1, k6Lanes(q1, q2, q3, q4, a + xStride, c1, c2, c3, c4));
          i2 = i32x4.add(i2, k6Lanes(q1, q2, q3, q4, a + 2 * xStride, c1, c2, c3, c4));
          i3 = i32x4.add(i3, k6Lanes(q1, q2, q3, q4, a + 3 * xStride, c1, c2, c3, c4));
        }
      }
    }
    if (RELAXED && !wide) {
      const bs = xx + (<usize>b << 5);
      i0 = i32x4.sub(i0, i32x4.shl(scaleSums6(pb + 192, bs), 5));
      i1 = i32x4.sub(i1, i32x4.shl(scaleSums6(pb + 192, bs + xxStride), 5));
      i2 = i32x4.sub(i2, i32x4.shl(scaleSums6(pb + 192, bs + 2 * xxStride), 5));
      i3 = i32x4.sub(i3, i32x4.shl(scaleSums6(pb + 192, bs + 3 * xxStride), 5));
    }
    const dw = f16ToF32(load<u16>(pb, 208));
    const d = xd + (<usize>b << 2);
    s0 += <f64>(dw * load<f32>(d)) * <f64>hsumI32(i0);
    s1 += <f64>(dw * load<f32>(d + dStride)) * <f64>hsumI32(i1);
    s2 += <f64>(dw * load<f32>(d + 2 * dStride)) * <f64>hsumI32(i2);
    s3 += <f64>(dw * load<f32>(d + 3 * dStride)) * <f64>hsumI32(i3);
  }
  store<f32>(out, <f32>s0);
  store<f32>(out + oStride, <f32>s1);
  store<f32>(out + 2 * oStride, <f32>s2);
  store<f32>(out + 3 * oStride, <f32>s3);
}

/** The Q4_K row at p of nb super-blocks against four vectors (as tile32; bsums at xx,
 *  xxStride apart). Per vector the integer sums and the f64 step are dotQ4_K's. */
// @ts-ignore: decorator
@inline export function tileQ4_K(wide: bool, p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize): void {
  let s0: f64 = 0, s1: f64 = 0, s2: f64 = 0, s3: f64 = 0;
  const m4 = i8x16.splat(0x0f);
  for (let b = 0; b < nb; b++) {
    const pb = p + <usize>b * 144;
    const sc0 = scalesK4(pb + 4, 0), sc1 = scalesK4(pb + 4, 2);
    let i0 = i32x4.splat(0), i1 = i32x4.splat(0), i2 = i32x4.splat(0), i3 = i32x4.splat(0);
    for (let k = 0; k < 4; k++) {
      const x0 = v128.load(pb + 16 + (<usize>k << 5));
      const x1 = v128.load(pb + 16 + (<usize>k << 5), 16);
      const sLo = <i16>(((k < 2 ? sc0 : sc1) >>> (16 * (k & 1))) & 0xff);
      const sHi = <i16>(((k < 2 ? sc0 : sc1) >>> (16 * (k & 1) + 8)) & 0xff);
      const l0 = v128.and(x0, m4), l1 = v128.and(x1, m4), h0 = i8x16.shr_u(x0, 4), h1 = i8x16.shr_u(x1, 4);
      if (wide) {
        // |q·sc| ≤ 15·63 fits int16; a pair of those times |a| ≤ 128 fits int32.
        const tl = i16x8.splat(sLo), th = i16x8.splat(sHi);
        const a = x16 + (<usize>b << 9) + (<usize>k << 7);
        const t = xStride << 1;
        const e0 = i16x8.mul(i16x8.extend_low_i8x16_u(l0), tl), e1 = i16x8.mul(i16x8.extend_high_i8x16_u(l0), tl);
        const e2 = i16x8.mul(i16x8.extend_low_i8x16_u(l1), tl), e3 = i16x8.mul(i16x8.extend_high_i8x16_u(l1), tl);
        i0 = i32x4.add(i0, dot32w(e0, e1, e2, e3, a));
        i1 = i32x4.add(i1, dot32w(e0, e1, e2, e3, a + t));
        i2 = i32x4.add(i2, dot32w(e0, e1, e2, e3, a + 2 * t));
        i3 = i32x4.add(i3, dot32w(e0, e1, e2, e3, a + 3 * t));
        const f0 = i16x8.mul(i16x8.extend_low_i8x16_u(h0), th), f1 = i16x8.mul(i16x8.extend_high_i8x16_u(h0), th);
        const f2 = i16x8.mul(i16x8.extend_low_i8x16_u(h1), th), f3 = i16x8.mul(i16x8.extend_high_i8x16_u(h1), th);
        i0 = i32x4.add(i0, dot32w(f0, f1, f2, f3, a + 64));
        i1 = i32x4.add(i1, dot32w(f0, f1, f2, f3, a + t + 64));
        i2 = i32x4.add(i2, dot32w(f0, f1, f2, f3, a + 2 * t + 64));
        i3 = i32x4.add(i3, dot32w(f0, f1, f2, f3, a + 3 * t + 64));
      } else {
        const tl = i16x8.splat(sLo), th = i16x8.splat(sHi);
        const a = x + (<usize>b << 8) + (<usize>k << 6);
        // Each vector's running sum is also stored to its output as it goes (see tileQ4_0R).
        i0 = i32x4.add(i0, k4Lanes(l0, l1, h0, h1, a, tl, th));
        store<i32>(out, i32x4.extract_lane(i0, 0));
        i1 = i32x4.add(i1, k4Lanes(l0, l1, h0, h1, a + xStride, tl, th));
        store<i32>(out + oStride, i32x4.extract_lane(i1, 0));
        i2 = i32x4.add(i2, k4Lanes(l0, l1, h0, h1, a + 2 * xStride, tl, th));
        store<i32>(out + 2 * oStride, i32x4.extract_lane(i2, 0));
        i3 = i32x4.add(i3, k4Lanes(l0, l1, h0, h1, a + 3 * xStride, tl, th));
        store<i32>(out + 3 * oStride, i32x4.extract_lane(i3, 0));
      }
    }
    const m0 = scalesK4(pb + 4, 1), m1 = scalesK4(pb + 4, 3);
    const bs = xx + (<usize>b << 5);
    const dw = f16ToF32(load<u16>(pb)), dmw = f16ToF32(load<u16>(pb, 2));
    const d = xd + (<usize>b << 2);
    const x0 = load<f32>(d), x1 = load<f32>(d + dStride), x2 = load<f32>(d + 2 * dStride), x3 = load<f32>(d + 3 * dStride);
    s0 += <f64>(dw * x0) * <f64>hsumI32(i0) - <f64>(dmw * x0) * <f64>minSum(bs, m0, m1);
    s1 += <f64>(dw * x1) * <f64>hsumI32(i1) - <f64>(dmw * x1) * <f64>minSum(bs + xxStride, m0, m1);
    s2 += <f64>(dw * x2) * <f64>hsumI32(i2) - <f64>(dmw * x2) * <f64>minSum(bs + 2 * xxStride, m0, m1);
    s3 += <f64>(dw * x3) * <f64>hsumI32(i3) - <f64>(dmw * x3) * <f64>minSum(bs + 3 * xxStride, m0, m1);
  }
  store<f32>(out, <f32>s0);
  store<f32>(out + oStride, <f32>s1);
  store<f32>(out + 2 * oStride, <f32>s2);
  store<f32>(out + 3 * oStride, <f32>s3);
}

/** Whether op has a four-vector tile. */
// @ts-ignore: decorator
@inline export function tiled(op: i32): bool {
  return op == GGML_TYPE_Q4_0 || op == GGML_TYPE_Q8_0 || op == GGML_TYPE_Q4_K || op == GGML_TYPE_Q6_K;
}

// One function per tile and form, each called from tile4 and never inlined (exported, so the
// optimizer keeps them apart): V8 allocates registers per function, and one loop body holding
// several forms behind runtime branches (binaryen merges the similar inlined copies) kept the
// four accumulators in memory.
export function tileQ4_0Wide(p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize, f16t: usize): void {
  tile32(false, true, p, nb, x, x16, xStride, xd, dStride, out, oStride, f16t);
}
export function tileQ4_0(p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize, f16t: usize): void {
  if (RELAXED) tileQ4_0R(false, p, nb, x, xStride, xd, dStride, xx, xxStride, out, oStride, f16t);
  else tile32(false, false, p, nb, x, x16, xStride, xd, dStride, out, oStride, f16t);
}
export function tileQ8_0Wide(p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize, f16t: usize): void {
  tile32(true, true, p, nb, x, x16, xStride, xd, dStride, out, oStride, f16t);
}
export function tileQ8_0(p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize, f16t: usize): void {
  tile32(true, false, p, nb, x, x16, xStride, xd, dStride, out, oStride, f16t);
}
export function tileQ4_KWide(p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize): void {
  tileQ4_K(true, p, nb, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride);
}
export function tileQ4_KNarrow(p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize): void {
  tileQ4_K(false, p, nb, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride);
}
export function tileQ6_KWide(p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize): void {
  tileQ6_K(true, p, nb, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride);
}
export function tileQ6_KNarrow(p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize): void {
  tileQ6_K(false, p, nb, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride);
}

/** Four vectors of a tiled op (see tile32 for the arguments). */
export function tile4(op: i32, wide: bool, p: usize, cols: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize, f16t: usize): void {
  switch (op) {
    case GGML_TYPE_Q4_0:
      if (wide) tileQ4_0Wide(p, cols >> 5, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride, f16t);
      else tileQ4_0(p, cols >> 5, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride, f16t);
      break;
    case GGML_TYPE_Q8_0:
      if (wide) tileQ8_0Wide(p, cols >> 5, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride, f16t);
      else tileQ8_0(p, cols >> 5, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride, f16t);
      break;
    case GGML_TYPE_Q4_K:
      if (wide) tileQ4_KWide(p, cols >> 8, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride);
      else tileQ4_KNarrow(p, cols >> 8, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride);
      break;
    default:
      if (wide) tileQ6_KWide(p, cols >> 8, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride);
      else tileQ6_KNarrow(p, cols >> 8, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride);
  }
}
