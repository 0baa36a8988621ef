// Dot products of one F32, F16 or BF16 weight row with one prepared activation vector
// (native: dot_float.c).

import { hsum } from './simd';
import { f16ToF32, f16x4ToF32x4 } from './half';

// @ts-ignore: decorator
@inline export function dotF32(w: usize, n: i32, x: usize): f32 {
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const o = <usize>i << 2;
    a0 = f32x4.add(a0, f32x4.mul(v128.load(w + o), v128.load(x + o)));
    a1 = f32x4.add(a1, f32x4.mul(v128.load(w + o, 16), v128.load(x + o, 16)));
    a2 = f32x4.add(a2, f32x4.mul(v128.load(w + o, 32), v128.load(x + o, 32)));
    a3 = f32x4.add(a3, f32x4.mul(v128.load(w + o, 48), v128.load(x + o, 48)));
  }
  for (; i + 4 <= n; i += 4) {
    const o = <usize>i << 2;
    a0 = f32x4.add(a0, f32x4.mul(v128.load(w + o), v128.load(x + o)));
  }
  let sum = hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)));
  for (; i < n; i++) sum += load<f32>(w + (<usize>i << 2)) * load<f32>(x + (<usize>i << 2));
  return sum;
}

/** Four halves (the u16 in each i32 lane of h) as f32: F16 (bf = false) or BF16, the top
 *  half of an f32. */
// @ts-ignore: decorator
@inline function widen4(h: v128, bf: bool): v128 {
  return bf ? i32x4.shl(h, 16) : f16x4ToF32x4(h);
}

/** F16 or BF16 weights against activations rounded to the same precision: eight halves per
 *  step, widened in SIMD. */
// @ts-ignore: decorator
@inline function dotHalf(w: usize, n: i32, x: usize, bf: bool): f32 {
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0);
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const h = v128.load(w + (<usize>i << 1));
    const o = <usize>i << 2;
    a0 = f32x4.add(a0, f32x4.mul(widen4(i32x4.extend_low_i16x8_u(h), bf), v128.load(x + o)));
    a1 = f32x4.add(a1, f32x4.mul(widen4(i32x4.extend_high_i16x8_u(h), bf), v128.load(x + o, 16)));
  }
  let sum = hsum(f32x4.add(a0, a1));
  for (; i < n; i++) {
    const h = load<u16>(w + (<usize>i << 1));
    sum += (bf ? reinterpret<f32>(<u32>h << 16) : f16ToF32(h)) * load<f32>(x + (<usize>i << 2));
  }
  return sum;
}

// @ts-ignore: decorator
@inline export function dotF16(w: usize, n: i32, x: usize): f32 {
  return dotHalf(w, n, x, false);
}

// @ts-ignore: decorator
@inline export function dotBf16(w: usize, n: i32, x: usize): f32 {
  return dotHalf(w, n, x, true);
}
