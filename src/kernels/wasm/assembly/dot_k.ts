// Dot products of one K-quant weight row (Q2_K … Q6_K, 256-value super-blocks) with one
// prepared Q8_K activation vector (native: dot_k.c).

import { RELAXED, hsumI32, mul16, rdot16, rdot32 } from './simd';
import { f16ToF32 } from './half';

// K-quants: super-blocks of 256 values against Q8_K activations. Inside a super-block the
// sums stay integer (sub-block scale × Σ q·q_x, in int32 lanes), so the one float step per
// 256 values is done in f64 in the reference's order: these dot products equal the js
// reference bit for bit.

/** Σ over 16 lanes of w·a times the integer scale sc, into four int32 lanes. */
// @ts-ignore: decorator
@inline export function scaled16(w: v128, a: v128, sc: i32): v128 {
  return i32x4.dot_i16x8_s(mul16(w, a), i16x8.splat(<i16>sc));
}

/** Σ_j bsums[j] · min[j/2] over the 16 per-16 sums of a Q8_K block (mins 0-3 in m0, 4-7 in m1, a byte each). */
// @ts-ignore: decorator
@inline export function minSum(bs: usize, m0: u32, m1: u32): i32 {
  // i16 lanes 0-7: mins 0-7; i32 lane k of lo (hi) holds min k (4+k) in both i16 halves,
  // so dot_i16x8_s pairs it with bsums 2k and 2k+1 (8+2k, 9+2k). All exact in int32.
  const m = i16x8.extend_low_i8x16_u(i32x4.replace_lane(i32x4.splat(m0), 1, m1));
  const lo = i32x4.extend_low_i16x8_u(m), hi = i32x4.extend_high_i16x8_u(m);
  const s = i32x4.add(i32x4.dot_i16x8_s(v128.load(bs), v128.or(lo, i32x4.shl(lo, 16))), i32x4.dot_i16x8_s(v128.load(bs, 16), v128.or(hi, i32x4.shl(hi, 16))));
  return hsumI32(s);
}

/** Q4_K/Q5_K's 6-bit scales and mins (ggml's get_scale_min_k4): four per u32, one per byte. */
// @ts-ignore: decorator
@inline export function scalesK4(p: usize, which: i32): u32 {
  const a = load<u32>(p); // bytes 0-3: scales 0-3 (low 6 bits), top bits of scales 4-7
  const b = load<u32>(p, 4); // bytes 4-7: mins 0-3, top bits of mins 4-7
  const c = load<u32>(p, 8); // bytes 8-11: low nibbles of scales 4-7, high nibbles of mins 4-7
  switch (which) {
    case 0:
      return a & 0x3f3f3f3f;
    case 1:
      return b & 0x3f3f3f3f;
    case 2:
      return (c & 0x0f0f0f0f) | (((a >>> 6) & 0x03030303) << 4);
    default:
      return ((c >>> 4) & 0x0f0f0f0f) | (((b >>> 6) & 0x03030303) << 4);
  }
}

/** 64 values of Q4_K/Q5_K sub-blocks 2k (values l0, l1) and 2k+1 (h0, h1), unsigned and at
 *  most 31, against the quants at a, times the sub-blocks' scales (the i16 lanes of sLo,
 *  sHi): int32 lanes. Four products per int16 lane: 4·31·127 fits. */
// @ts-ignore: decorator
@inline export function k4Lanes(l0: v128, l1: v128, h0: v128, h1: v128, a: usize, sLo: v128, sHi: v128): v128 {
  if (RELAXED) return i32x4.add(rdot32(l0, l1, a, sLo), rdot32(h0, h1, a + 32, sHi));
  return i32x4.add(
    i32x4.dot_i16x8_s(i16x8.add(mul16(l0, v128.load(a)), mul16(l1, v128.load(a, 16))), sLo),
    i32x4.dot_i16x8_s(i16x8.add(mul16(h0, v128.load(a, 32)), mul16(h1, v128.load(a, 48))), sHi),
  );
}

/** A super-block's d·dx·isum - dmin·dx·msum, in f64 in the reference's order (f16 d and
 *  dmin at p, the activation's scale xd). */
// @ts-ignore: decorator
@inline export function kSum(p: usize, xd: f32, isum: i32, msum: i32): f64 {
  const dd = f16ToF32(load<u16>(p)) * xd;
  const dm = f16ToF32(load<u16>(p, 2)) * xd;
  return <f64>dd * <f64>isum - <f64>dm * <f64>msum;
}

/** Q4_K (f16 d, f16 dmin, 12 bytes scales/mins, 128 bytes nibbles): value = d·sc·q - dmin·m.
 *  With five, Q5_K (32 bytes qh before the nibbles): bit s of qh[l] is the fifth bit of
 *  value 32s + l, taken from qh shifted right by 2 per 64 values. */
// @ts-ignore: decorator
@inline function dotQ45_K(w: usize, n: i32, qs: usize, d: usize, bsums: usize, five: bool): f32 {
  let sum: f64 = 0;
  const nb = n >> 8;
  const m4 = i8x16.splat(0x0f), one = i8x16.splat(1), two = i8x16.splat(2);
  for (let b = 0; b < nb; b++) {
    const p = w + <usize>b * (five ? 176 : 144);
    const a = qs + (<usize>b << 8);
    const sc0 = scalesK4(p + 4, 0), sc1 = scalesK4(p + 4, 2);
    let h0 = i32x4.splat(0), h1 = i32x4.splat(0);
    if (five) {
      h0 = v128.load(p + 16);
      h1 = v128.load(p + 16, 16);
    }
    let acc = i32x4.splat(0);
    for (let k = 0; k < 4; k++) {
      const x0 = v128.load(p + (five ? 48 : 16) + (<usize>k << 5));
      const x1 = v128.load(p + (five ? 48 : 16) + (<usize>k << 5), 16);
      const ak = a + (<usize>k << 6);
      const sLo = <i32>(((k < 2 ? sc0 : sc1) >>> (16 * (k & 1))) & 0xff);
      const sHi = <i32>(((k < 2 ? sc0 : sc1) >>> (16 * (k & 1) + 8)) & 0xff);
      // Sub-block 2k: low nibbles against a[0..32); 2k+1: high nibbles against a[32..64).
      let l0 = v128.and(x0, m4), l1 = v128.and(x1, m4);
      let u0 = i8x16.shr_u(x0, 4), u1 = i8x16.shr_u(x1, 4);
      if (five) {
        l0 = v128.or(l0, i8x16.shl(v128.and(h0, one), 4));
        l1 = v128.or(l1, i8x16.shl(v128.and(h1, one), 4));
        u0 = v128.or(u0, i8x16.shl(v128.and(h0, two), 3));
        u1 = v128.or(u1, i8x16.shl(v128.and(h1, two), 3));
      }
      acc = i32x4.add(acc, k4Lanes(l0, l1, u0, u1, ak, i16x8.splat(<i16>sLo), i16x8.splat(<i16>sHi)));
      if (five) {
        h0 = i8x16.shr_u(h0, 2);
        h1 = i8x16.shr_u(h1, 2);
      }
    }
    const isum = hsumI32(acc);
    const msum = minSum(bsums + (<usize>b << 5), scalesK4(p + 4, 1), scalesK4(p + 4, 3));
    sum += kSum(p, load<f32>(d + (<usize>b << 2)), isum, msum);
  }
  return <f32>sum;
}

// @ts-ignore: decorator
@inline export function dotQ4_K(w: usize, n: i32, qs: usize, d: usize, bsums: usize): f32 {
  return dotQ45_K(w, n, qs, d, bsums, false);
}

// @ts-ignore: decorator
@inline export function dotQ5_K(w: usize, n: i32, qs: usize, d: usize, bsums: usize): f32 {
  return dotQ45_K(w, n, qs, d, bsums, true);
}

/** Q6_K's 6-bit values of one group of 16 (quarter 0-3 of a 128-value half): low nibbles
 *  of lq (quarters 0, 1) or their high nibbles (2, 3), with two bits of h on top; [0, 63]. */
// @ts-ignore: decorator
@inline export function q6Values(lq: v128, h: v128, quarter: i32): v128 {
  const m4 = i8x16.splat(0x0f), m3 = i8x16.splat(3);
  const low = quarter < 2 ? v128.and(lq, m4) : i8x16.shr_u(lq, 4);
  const high = quarter == 3 ? i8x16.shr_u(h, 6) : v128.and(quarter == 0 ? h : i8x16.shr_u(h, 2 * quarter), m3);
  return v128.or(low, i8x16.shl(high, 4));
}

/** Relaxed build: 16 Q6_K values u in [0, 63] against the 16 quants at a, times the scale
 *  sc (|u·a| pairs ≤ 2·63·127, times |sc| ≤ 128, fit int32): int32 lanes. */
// @ts-ignore: decorator
@inline export function k6R(u: v128, a: usize, sc: v128): v128 {
  return i32x4.dot_i16x8_s(rdot16(v128.load(a), u), sc);
}

/** Relaxed build: Σ scale·(Q8_K sum) over a super-block's 16 groups (int8 scales at sc,
 *  i16 sums at bs): what the offset 32 of every Q6_K value contributes, over 32. */
// @ts-ignore: decorator
@inline export function scaleSums6(sc: usize, bs: usize): v128 {
  const s = v128.load(sc);
  return i32x4.add(i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_s(s), v128.load(bs)), i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_s(s), v128.load(bs, 16)));
}

/** Q6_K (128 bytes ql, 64 bytes qh, 16 int8 scales, f16 d): value = d·sc·(q - 32), q 6-bit. */
// @ts-ignore: decorator
@inline export function dotQ6_K(w: usize, n: i32, qs: usize, d: usize, bsums: usize): f32 {
  let sum: f64 = 0;
  const nb = n >> 8;
  const k32 = i8x16.splat(32);
  for (let b = 0; b < nb; b++) {
    const p = w + <usize>b * 210;
    const a = qs + (<usize>b << 8);
    let acc = i32x4.splat(0);
    for (let half = 0; half < 2; half++) {
      const ql = p + (<usize>half << 6);
      const qh = p + 128 + (<usize>half << 5);
      const sc = p + 192 + (<usize>half << 3);
      const ah = a + (<usize>half << 7);
      for (let g = 0; g < 2; g++) {
        // Values 16g..16g+15 of each quarter of 32.
        const go = <usize>g << 4;
        const a0 = v128.load(ql + go), a1 = v128.load(ql + go, 32), h = v128.load(qh + go);
        const u1 = q6Values(a0, h, 0), u2 = q6Values(a1, h, 1), u3 = q6Values(a0, h, 2), u4 = q6Values(a1, h, 3);
        const c1 = <i32>load<i8>(sc + g), c2 = <i32>load<i8>(sc + g, 2), c3 = <i32>load<i8>(sc + g, 4), c4 = <i32>load<i8>(sc + g, 6);
        if (RELAXED) {
          acc = i32x4.add(acc, i32x4.add(k6R(u1, ah + go, i16x8.splat(<i16>c1)), k6R(u2, ah + go + 32, i16x8.splat(<i16>c2))));
          acc = i32x4.add(acc, i32x4.add(k6R(u3, ah + go + 64, i16x8.splat(<i16>c3)), k6R(u4, ah + go + 96, i16x8.splat(<i16>c4))));
        } else {
          // |q - 32| ≤ 32, so two products per int16 lane (2·32·127) are safe and the scale
          // multiply widens to int32.
          acc = i32x4.add(acc, scaled16(i8x16.sub(u1, k32), v128.load(ah + go), c1));
          acc = i32x4.add(acc, scaled16(i8x16.sub(u2, k32), v128.load(ah + go, 32), c2));
          acc = i32x4.add(acc, scaled16(i8x16.sub(u3, k32), v128.load(ah + go, 64), c3));
          acc = i32x4.add(acc, scaled16(i8x16.sub(u4, k32), v128.load(ah + go, 96), c4));
        }
      }
    }
    if (RELAXED) acc = i32x4.sub(acc, i32x4.shl(scaleSums6(p + 192, bsums + (<usize>b << 5)), 5));
    const isum = hsumI32(acc);
    sum += <f64>(f16ToF32(load<u16>(p, 208)) * load<f32>(d + (<usize>b << 2))) * <f64>isum;
  }
  return <f32>sum;
}

/** Q2_K (16 bytes 4-bit scale|min, 64 bytes of 2-bit q, f16 d, f16 dmin): value = d·sc·q - dmin·m. */
// @ts-ignore: decorator
@inline export function dotQ2_K(w: usize, n: i32, qs: usize, d: usize, bsums: usize): f32 {
  let sum: f64 = 0;
  const nb = n >> 8;
  const m3 = i8x16.splat(3);
  for (let b = 0; b < nb; b++) {
    const p = w + <usize>b * 84;
    const a = qs + (<usize>b << 8);
    const bs = bsums + (<usize>b << 5);
    let acc = i32x4.splat(0);
    let msum = 0;
    // Group g (16 values at a + 16g) reads bits 2·((g>>1)&3) of q[32·(g>>3) + 16·(g&1) + l].
    for (let g = 0; g < 16; g++) {
      const s = <i32>load<u8>(p + g);
      const x = v128.load(p + 16 + (<usize>(g >> 3) << 5) + (<usize>(g & 1) << 4));
      const q = v128.and(i8x16.shr_u(x, 2 * ((g >> 1) & 3)), m3);
      acc = i32x4.add(acc, scaled16(q, v128.load(a + (<usize>g << 4)), s & 15));
      msum += (s >> 4) * <i32>load<i16>(bs + (<usize>g << 1));
    }
    sum += kSum(p + 80, load<f32>(d + (<usize>b << 2)), hsumI32(acc), msum);
  }
  return <f32>sum;
}

/** Q3_K (32 bytes hmask, 64 bytes of 2-bit q, 12 bytes of 6-bit scales, f16 d). */
// @ts-ignore: decorator
@inline export function dotQ3_K(w: usize, n: i32, qs: usize, d: usize): f32 {
  let sum: f64 = 0;
  const nb = n >> 8;
  const m3 = i8x16.splat(3), one = i8x16.splat(1);
  for (let b = 0; b < nb; b++) {
    const p = w + <usize>b * 110;
    const a = qs + (<usize>b << 8);
    let acc = i32x4.splat(0);
    for (let g = 0; g < 16; g++) {
      // Scale g: low 4 bits from byte g (g < 8) or the high nibble of byte g-8, top 2 bits
      // from byte 8 + (g & 3) at bit 2·(g >> 2); stored biased by 32.
      const low = g < 8 ? <i32>load<u8>(p + 96 + g) & 15 : <i32>load<u8>(p + 96 + g - 8) >> 4;
      const high = (<i32>load<u8>(p + 104 + (g & 3)) >> (2 * (g >> 2))) & 3;
      const sc = (low | (high << 4)) - 32;
      const x = v128.load(p + 32 + (<usize>(g >> 3) << 5) + (<usize>(g & 1) << 4));
      const hm = v128.load(p + (<usize>(g & 1) << 4));
      // q = 2 low bits - 4 unless the hmask bit is set: values in [-4, 3].
      const lowBits = v128.and(i8x16.shr_u(x, 2 * ((g >> 1) & 3)), m3);
      const minus4 = i8x16.shl(v128.andnot(one, i8x16.shr_u(hm, g >> 1)), 2);
      acc = i32x4.add(acc, scaled16(i8x16.sub(lowBits, minus4), v128.load(a + (<usize>g << 4)), sc));
    }
    const isum = hsumI32(acc);
    sum += <f64>(f16ToF32(load<u16>(p, 108)) * load<f32>(d + (<usize>b << 2))) * <f64>isum;
  }
  return <f32>sum;
}
