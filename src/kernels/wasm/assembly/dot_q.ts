// Dot products of one Q8_0, Q4_0, Q4_1, Q5_0 or Q5_1 weight row (32-value blocks) with one
// prepared Q8_0/Q8_1 activation vector (native: dot_q.c).

import { RELAXED, hsum, mul16, rdot32 } from './simd';
import { f16ToF32, f16x4ToF32x4 } from './half';

/** Q8_0 weights wl (values 0-15), wh (16-31) against 32 activation quants at a: int32 lane
 *  sums, lane k holding values 2k, 2k+1 (mod 8). Full-range int8 weights: two products per
 *  int16 lane at most, so each half widens on its own. */
// @ts-ignore: decorator
@inline export function q8Lanes(wl: v128, wh: v128, a: usize): v128 {
  return i32x4.add(i32x4.extadd_pairwise_i16x8_s(mul16(wl, v128.load(a))), i32x4.extadd_pairwise_i16x8_s(mul16(wh, v128.load(a, 16))));
}

/** Q4_0 weights (values in [-8, 7], so all four products of a lane fit int16: 4·8·127)
 *  against 32 activation quants at a: int32 lane sums, the lanes of q8Lanes. */
// @ts-ignore: decorator
@inline export function q4Lanes(wl: v128, wh: v128, a: usize): v128 {
  return i32x4.extadd_pairwise_i16x8_s(i16x8.add(mul16(wl, v128.load(a)), mul16(wh, v128.load(a, 16))));
}

/** The Q8_0 block at w (f16 d, 32 int8) against 32 activation quants at a: int32 lane sums. */
// @ts-ignore: decorator
@inline export function q8Block(w: usize, a: usize): v128 {
  return q8Lanes(v128.load(w, 2), v128.load(w, 18), a);
}

/** The Q4_0 nibbles x as int8 weights: values 0..15 (low nibbles), 16..31 (high nibbles). */
// @ts-ignore: decorator
@inline export function q4Low(x: v128): v128 {
  return i8x16.sub(v128.and(x, i8x16.splat(0x0f)), i8x16.splat(8));
}
// @ts-ignore: decorator
@inline export function q4High(x: v128): v128 {
  return i8x16.sub(i8x16.shr_u(x, 4), i8x16.splat(8));
}

/** The Q4_0 block at w (f16 d, 16 bytes of nibbles) against 32 activation quants at a. */
// @ts-ignore: decorator
@inline export function q4Block(w: usize, a: usize): v128 {
  const x = v128.load(w, 2);
  return q4Lanes(q4Low(x), q4High(x), a);
}

/** 0x10 in byte i where bit i of the 16-bit qh is set: the fifth bit of Q5_0/Q5_1 values. */
// @ts-ignore: decorator
@inline export function fifthBits(qh: u32): v128 {
  const spread = i8x16.swizzle(i32x4.splat(qh), i8x16(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
  const bit = i8x16(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
  return v128.and(i8x16.eq(v128.and(spread, bit), bit), i8x16.splat(0x10));
}

/** Relaxed build: the Q4_0 block with nibbles x against the 32 quants at a, less the offset
 *  sum at o (offsetSumsQ8_0): Σ (q - 8)·a as int32 lanes. */
// @ts-ignore: decorator
@inline export function q4BlockR(x: v128, a: usize, o: usize): v128 {
  return i32x4.sub(rdot32(v128.and(x, i8x16.splat(0x0f)), i8x16.shr_u(x, 4), a, i16x8.splat(1)), v128.load(o));
}

/** acc + lanes·s (lanes int32, converted exactly): the Q4_0 and Q8_0 kernels' float step,
 *  matvec and tile alike, so a matmul still equals its matvecs. Not relaxed_madd: Node 20's
 *  armv7 V8 computes it wrongly in these loops (measured: Q4_0 products off by whole units),
 *  though a probe of constants passes. */
// @ts-ignore: decorator
@inline export function scaleAdd(acc: v128, lanes: v128, s: v128): v128 {
  const f = f32x4.convert_i32x4_s(lanes);
  return f32x4.add(acc, f32x4.mul(f, s));
}

// Per 32-value block: the exact integer lane sums, converted to f32 (each lane < 2^24, so
// exactly), times d_w·d_x in f32 like the reference's Math.fround(d_w·d_x), accumulated in
// four f32 lanes (ggml's x86 path does the same with FMA). Min terms (Q4_1, Q5_1) use the
// activation's s = d_x·Σq_x, one multiply per block, as the reference does.

// @ts-ignore: decorator
@inline export function dotQ8_0(w: usize, n: i32, qs: usize, d: usize): f32 {
  let acc = f32x4.splat(0);
  const nb = n >> 5;
  for (let b = 0; b < nb; b++) {
    const p = w + <usize>b * 34;
    const s = f16ToF32(load<u16>(p)) * load<f32>(d + (<usize>b << 2));
    acc = scaleAdd(acc, q8Block(p, qs + (<usize>b << 5)), f32x4.splat(s));
  }
  return hsum(acc);
}

// @ts-ignore: decorator
@inline export function dotQ4_0(w: usize, n: i32, qs: usize, d: usize, offsets: usize): f32 {
  let acc = f32x4.splat(0);
  const nb = n >> 5;
  let b = 0;
  // Four blocks a step, their f16 scales widened together (the same f32 values as one by one).
  for (; b + 4 <= nb; b += 4) {
    const p = w + <usize>b * 18;
    let h = i32x4.splat(0);
    h = v128.load16_lane(p, h, 0);
    h = v128.load16_lane(p + 18, h, 2);
    h = v128.load16_lane(p + 36, h, 4);
    h = v128.load16_lane(p + 54, h, 6);
    const s = f32x4.mul(f16x4ToF32x4(h), v128.load(d + (<usize>b << 2)));
    const a = qs + (<usize>b << 5);
    const o = offsets + (<usize>b << 4);
    const l0 = RELAXED ? q4BlockR(v128.load(p, 2), a, o) : q4Block(p, a);
    const l1 = RELAXED ? q4BlockR(v128.load(p, 20), a + 32, o + 16) : q4Block(p + 18, a + 32);
    const l2 = RELAXED ? q4BlockR(v128.load(p, 38), a + 64, o + 32) : q4Block(p + 36, a + 64);
    const l3 = RELAXED ? q4BlockR(v128.load(p, 56), a + 96, o + 48) : q4Block(p + 54, a + 96);
    acc = scaleAdd(acc, l0, v128.shuffle<f32>(s, s, 0, 0, 0, 0));
    acc = scaleAdd(acc, l1, v128.shuffle<f32>(s, s, 1, 1, 1, 1));
    acc = scaleAdd(acc, l2, v128.shuffle<f32>(s, s, 2, 2, 2, 2));
    acc = scaleAdd(acc, l3, v128.shuffle<f32>(s, s, 3, 3, 3, 3));
  }
  for (; b < nb; b++) {
    const p = w + <usize>b * 18;
    const s = f16ToF32(load<u16>(p)) * load<f32>(d + (<usize>b << 2));
    const lanes = RELAXED ? q4BlockR(v128.load(p, 2), qs + (<usize>b << 5), offsets + (<usize>b << 4)) : q4Block(p, qs + (<usize>b << 5));
    acc = scaleAdd(acc, lanes, f32x4.splat(s));
  }
  return hsum(acc);
}

/** Q4_1 (f16 d, f16 m, 16 bytes of nibbles q in [0, 15]): value = d·q + m. */
// @ts-ignore: decorator
@inline export function dotQ4_1(w: usize, n: i32, qs: usize, d: usize, xs: usize): f32 {
  let acc = f32x4.splat(0);
  let mins: f32 = 0;
  const nb = n >> 5;
  for (let b = 0; b < nb; b++) {
    const p = w + <usize>b * 20;
    const x = v128.load(p, 4);
    // Nibbles 0..15 are valid int8, so the signed multiplies apply; 4·15·127 fits int16.
    const lanes = q4Lanes(v128.and(x, i8x16.splat(0x0f)), i8x16.shr_u(x, 4), qs + (<usize>b << 5));
    acc = scaleAdd(acc, lanes, f32x4.splat(f16ToF32(load<u16>(p)) * load<f32>(d + (<usize>b << 2))));
    mins += f16ToF32(load<u16>(p, 2)) * load<f32>(xs + (<usize>b << 2));
  }
  return hsum(acc) + mins;
}

/** Q5_0 (f16 d, u32 qh, 16 bytes of nibbles): value = d·((nibble | bit << 4) - 16); with
 *  withMin, Q5_1 (f16 d, f16 m, u32 qh, nibbles): value = d·(nibble | bit << 4) + m. */
// @ts-ignore: decorator
@inline function dotQ5(w: usize, n: i32, qs: usize, d: usize, xs: usize, withMin: bool): f32 {
  let acc = f32x4.splat(0);
  let mins: f32 = 0;
  const nb = n >> 5;
  for (let b = 0; b < nb; b++) {
    const p = w + <usize>b * (withMin ? 24 : 22);
    const qh = load<u32>(p + (withMin ? 4 : 2));
    const x = v128.load(p + (withMin ? 8 : 6));
    let wl = v128.or(v128.and(x, i8x16.splat(0x0f)), fifthBits(qh & 0xffff));
    let wh = v128.or(i8x16.shr_u(x, 4), fifthBits(qh >>> 16));
    if (!withMin) {
      wl = i8x16.sub(wl, i8x16.splat(16));
      wh = i8x16.sub(wh, i8x16.splat(16));
    }
    // |q| ≤ 31: four products of a lane stay within int16 (4·31·127 = 15748).
    const lanes = q4Lanes(wl, wh, qs + (<usize>b << 5));
    acc = scaleAdd(acc, lanes, f32x4.splat(f16ToF32(load<u16>(p)) * load<f32>(d + (<usize>b << 2))));
    if (withMin) mins += f16ToF32(load<u16>(p, 2)) * load<f32>(xs + (<usize>b << 2));
  }
  return withMin ? hsum(acc) + mins : hsum(acc);
}

// @ts-ignore: decorator
@inline export function dotQ5_0(w: usize, n: i32, qs: usize, d: usize): f32 {
  return dotQ5(w, n, qs, d, 0, false);
}

// @ts-ignore: decorator
@inline export function dotQ5_1(w: usize, n: i32, qs: usize, d: usize, xs: usize): f32 {
  return dotQ5(w, n, qs, d, xs, true);
}
