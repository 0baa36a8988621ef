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

/** F16 weights against f16-rounded activations: eight halves per step, widened in SIMD. */
// @ts-ignore: decorator
@inline export function dotF16(w: usize, n: i32, x: usize): f32 {
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0);
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const h = v128.load(w + (<usize>i << 1));
    const o = <usize>i << 2;
    a0 = f32x4.add(a0, f32x4.mul(f16x4ToF32x4(i32x4.extend_low_i16x8_u(h)), v128.load(x + o)));
    a1 = f32x4.add(a1, f32x4.mul(f16x4ToF32x4(i32x4.extend_high_i16x8_u(h)), v128.load(x + o, 16)));
  }
  let sum = hsum(f32x4.add(a0, a1));
  for (; i < n; i++) sum += f16ToF32(load<u16>(w + (<usize>i << 1))) * load<f32>(x + (<usize>i << 2));
  return sum;
}

/** BF16 weights against bf16-rounded activations: a bf16 is the top half of an f32. */
// @ts-ignore: decorator
@inline export function dotBf16(w: usize, n: i32, x: usize): f32 {
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0);
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const h = v128.load(w + (<usize>i << 1));
    const o = <usize>i << 2;
    a0 = f32x4.add(a0, f32x4.mul(i32x4.shl(i32x4.extend_low_i16x8_u(h), 16), v128.load(x + o)));
    a1 = f32x4.add(a1, f32x4.mul(i32x4.shl(i32x4.extend_high_i16x8_u(h), 16), v128.load(x + o, 16)));
  }
  let sum = hsum(f32x4.add(a0, a1));
  for (; i < n; i++) sum += reinterpret<f32>(<u32>load<u16>(w + (<usize>i << 1)) << 16) * load<f32>(x + (<usize>i << 2));
  return sum;
}
