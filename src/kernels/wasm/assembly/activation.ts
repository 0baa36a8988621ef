// Activation preparation (quantizing activations): once per product, by the main thread,
// before the workers start. Bit-identical with src/kernels/activation.ts.

import { hsumI32 } from './simd';
import { f16ToF32, f32BitsToF16 } from './half';

/**
 * Q8_0 activations exactly as src/kernels/activation.ts makes them (ggml's x86 path): per
 * 32 values d = amax/127 rounded to f16 (stored here as its f32 value), quants
 * nearest-even(x · 127/amax) in f32 arithmetic. n must be a multiple of 32.
 */
export function quantizeQ8_0(x: usize, n: i32, qs: usize, d: usize): void {
  for (let b = 0; b < n >> 5; b++) {
    const df = q8Block32(x + (<usize>b << 7), qs + (<usize>b << 5));
    store<f32>(d + (<usize>b << 2), f16ToF32(f32BitsToF16(reinterpret<u32>(df))));
  }
}

/** Q8_1 activations: Q8_0's, plus s = d·Σq (with the unrounded f32 d) rounded to f16. */
export function quantizeQ8_1(x: usize, n: i32, qs: usize, d: usize, s: usize): void {
  for (let b = 0; b < n >> 5; b++) {
    const q = qs + (<usize>b << 5);
    const df = q8Block32(x + (<usize>b << 7), q);
    store<f32>(d + (<usize>b << 2), f16ToF32(f32BitsToF16(reinterpret<u32>(df))));
    // Σq over 32 int8: widen pairwise twice (i8 → i16 → i32), then add the four lanes.
    const lo = i32x4.extadd_pairwise_i16x8_s(i16x8.extadd_pairwise_i8x16_s(v128.load(q)));
    const hi = i32x4.extadd_pairwise_i16x8_s(i16x8.extadd_pairwise_i8x16_s(v128.load(q, 16)));
    const sum = hsumI32(i32x4.add(lo, hi));
    store<f32>(s + (<usize>b << 2), f16ToF32(f32BitsToF16(reinterpret<u32>(df * <f32>sum))));
  }
}

/** Quantizes the 32 f32 at p into the 32 int8 at q; returns d = amax/127 (f32, unrounded). */
// @ts-ignore: decorator
@inline export function q8Block32(p: usize, q: usize): f32 {
  const v0 = v128.load(p), v1 = v128.load(p, 16), v2 = v128.load(p, 32), v3 = v128.load(p, 48);
  const v4 = v128.load(p, 64), v5 = v128.load(p, 80), v6 = v128.load(p, 96), v7 = v128.load(p, 112);
  let m = f32x4.max(
    f32x4.max(f32x4.max(f32x4.abs(v0), f32x4.abs(v1)), f32x4.max(f32x4.abs(v2), f32x4.abs(v3))),
    f32x4.max(f32x4.max(f32x4.abs(v4), f32x4.abs(v5)), f32x4.max(f32x4.abs(v6), f32x4.abs(v7))),
  );
  m = f32x4.max(m, v128.shuffle<f32>(m, m, 2, 3, 0, 1));
  m = f32x4.max(m, v128.shuffle<f32>(m, m, 1, 0, 3, 2));
  const amax = f32x4.extract_lane(m, 0);
  const id: f32 = amax != 0 ? <f32>127 / amax : 0;
  const s = f32x4.splat(id);
  // |x·id| ≤ 127·(1+2⁻²³)², so the saturating narrows never clip.
  const q0 = i16x8.narrow_i32x4_s(toInt(v0, s), toInt(v1, s));
  const q1 = i16x8.narrow_i32x4_s(toInt(v2, s), toInt(v3, s));
  const q2 = i16x8.narrow_i32x4_s(toInt(v4, s), toInt(v5, s));
  const q3 = i16x8.narrow_i32x4_s(toInt(v6, s), toInt(v7, s));
  v128.store(q, i8x16.narrow_i16x8_s(q0, q1));
  v128.store(q, i8x16.narrow_i16x8_s(q2, q3), 16);
  return amax / <f32>127;
}

// @ts-ignore: decorator
@inline export function toInt(v: v128, s: v128): v128 {
  return i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v, s)));
}

/** ggml's nearest_int on four lanes: add 1.5·2²³ and read the low mantissa bits (ties to even). */
// @ts-ignore: decorator
@inline export function nearestInt4(v: v128): v128 {
  const t = f32x4.add(v, f32x4.splat(12582912));
  return i32x4.sub(v128.and(t, i32x4.splat(0x007fffff)), i32x4.splat(0x00400000));
}

/**
 * Q8_K activations as quantize_row_q8_K_ref (src/kernels/activation.ts): per 256 values the
 * first value of largest magnitude maps to -127, q = min(127, nearest_int(x·iscale)) with
 * iscale = -127/max, d = 1/iscale kept as f32, and bsums = Σq per 16 values (i16).
 * n must be a multiple of 256.
 */
export function quantizeQ8_K(x: usize, n: i32, qs: usize, d: usize, bsums: usize): void {
  for (let b = 0; b < n >> 8; b++) {
    const p = x + (<usize>b << 10);
    const q = qs + (<usize>b << 8);
    const bs = bsums + (<usize>b << 5);
    let amax: f32 = 0;
    let max: f32 = 0;
    for (let i = 0; i < 256; i++) {
      const v = load<f32>(p + (<usize>i << 2));
      const av = abs<f32>(v);
      if (av > amax) {
        amax = av;
        max = v;
      }
    }
    if (amax == 0) {
      store<f32>(d + (<usize>b << 2), 0);
      memory.fill(q, 0, 256);
      memory.fill(bs, 0, 32);
      continue;
    }
    const iscale: f32 = <f32>-127 / max;
    const s = f32x4.splat(iscale);
    const top = i32x4.splat(127);
    for (let g = 0; g < 16; g++) {
      const pg = p + (<usize>g << 6);
      const a0 = i32x4.min_s(nearestInt4(f32x4.mul(s, v128.load(pg))), top);
      const a1 = i32x4.min_s(nearestInt4(f32x4.mul(s, v128.load(pg, 16))), top);
      const a2 = i32x4.min_s(nearestInt4(f32x4.mul(s, v128.load(pg, 32))), top);
      const a3 = i32x4.min_s(nearestInt4(f32x4.mul(s, v128.load(pg, 48))), top);
      v128.store(q + (<usize>g << 4), i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(a0, a1), i16x8.narrow_i32x4_s(a2, a3)));
      store<i16>(bs + (<usize>g << 1), <i16>hsumI32(i32x4.add(i32x4.add(a0, a1), i32x4.add(a2, a3))));
    }
    store<f32>(d + (<usize>b << 2), <f32>1 / iscale);
  }
}

/** dst[i] = the int8 src[i] widened to i16 (n a multiple of 16): activations for wide tiles. */
export function widenI8(src: usize, dst: usize, n: i32): void {
  for (let i = 0; i < n; i += 16) {
    const v = v128.load(src + <usize>i);
    v128.store(dst + (<usize>i << 1), i16x8.extend_low_i8x16_s(v));
    v128.store(dst + (<usize>i << 1), i16x8.extend_high_i8x16_s(v), 16);
  }
}

/** Per 32 Q8_0 quants at qs, the Q4_0 offset term as int32 lanes (8·Σq, 0, 0, 0) at dst
 *  (16 bytes a block): the relaxed Q4_0 kernels multiply the unsigned nibbles q + 8 and
 *  subtract this. n must be a multiple of 32. */
export function offsetSumsQ8_0(qs: usize, n: i32, dst: usize): void {
  for (let b = 0; b < n >> 5; b++) {
    const q = qs + (<usize>b << 5);
    const lo = i32x4.extadd_pairwise_i16x8_s(i16x8.extadd_pairwise_i8x16_s(v128.load(q)));
    const hi = i32x4.extadd_pairwise_i16x8_s(i16x8.extadd_pairwise_i8x16_s(v128.load(q, 16)));
    v128.store(dst + (<usize>b << 4), i32x4.replace_lane(i32x4.splat(0), 0, hsumI32(i32x4.add(lo, hi)) << 3));
  }
}
