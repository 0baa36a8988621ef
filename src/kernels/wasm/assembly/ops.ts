// Attention and SwiGLU (native: ops.c). The plain TypeScript reference
// (src/kernels/attention.ts, ops.ts) sums and takes exp in f64; here dot products sum in
// four f32 lanes and exp is a vectorised f32 polynomial (within 2 ulp), so the results agree
// to about 1e-6 relative.

import {
  CTL_W, CTL_ACT, CTL_OUT, CTL_A_KEYS, CTL_A_VALUES, CTL_A_Q, CTL_A_OUT, CTL_A_ATT, CTL_A_ATT_STRIDE, CTL_A_N_KV, CTL_A_GROUP,
  CTL_A_HEAD_DIM, CTL_A_START, CTL_A_N, CTL_A_HALF,
} from './control';
import { hsum } from './simd';
import { roundF16x4 } from './half';
import { dotF32 } from './dot_float';

/**
 * e^x on four lanes, Cephes' expf: x = k·ln2 + r with k = nearest(x·log2 e), |r| ≤ ln2/2
 * (ln2 split in two so k·ln2 is nearly exact), e^r by a degree-5 polynomial (≤ 2 ulp),
 * and 2^k built in the exponent bits. Below -87.3 (e^x < 2^-126) the result is 0; above 88
 * it is e^88 (≈ 1.7e38), which only ever appears as 1 + e^x in a denominator here.
 */
// @ts-ignore: decorator
@inline export function exp4(v: v128): v128 {
  // pmin/pmax are single instructions (min/max must order NaNs and signed zeros); k is
  // rounded by adding 1.5·2^23, whose low mantissa bits then hold k as an integer.
  const under = f32x4.lt(v, f32x4.splat(-87.33654));
  const x = f32x4.pmin(f32x4.pmax(v, f32x4.splat(-87.33654)), f32x4.splat(88));
  const t = f32x4.add(f32x4.mul(x, f32x4.splat(1.44269504088896341)), f32x4.splat(12582912));
  const k = f32x4.sub(t, f32x4.splat(12582912));
  let r = f32x4.sub(x, f32x4.mul(k, f32x4.splat(0.693359375)));
  r = f32x4.sub(r, f32x4.mul(k, f32x4.splat(-2.12194440e-4)));
  let y = f32x4.splat(1.9875691500e-4);
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(1.3981999507e-3));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(8.3334519073e-3));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(4.1665795894e-2));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(1.6666665459e-1));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(5.0000001201e-1));
  y = f32x4.add(f32x4.add(f32x4.mul(f32x4.mul(y, r), r), r), f32x4.splat(1));
  // t's bits are 0x4b400000 + k: 127 + k in the exponent field is (t - 0x4b400000 + 127) << 23.
  const p2 = i32x4.shl(i32x4.sub(t, i32x4.splat(0x4b400000 - 127)), 23);
  return v128.andnot(f32x4.mul(y, p2), under);
}

/** y[0..n) += a · x[0..n). */
// @ts-ignore: decorator
@inline export function axpy(y: usize, a: f32, x: usize, n: i32): void {
  const av = f32x4.splat(a);
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const o = <usize>i << 2;
    v128.store(y + o, f32x4.add(v128.load(y + o), f32x4.mul(av, v128.load(x + o))));
    v128.store(y + o, f32x4.add(v128.load(y + o, 16), f32x4.mul(av, v128.load(x + o, 16))), 16);
    v128.store(y + o, f32x4.add(v128.load(y + o, 32), f32x4.mul(av, v128.load(x + o, 32))), 32);
    v128.store(y + o, f32x4.add(v128.load(y + o, 48), f32x4.mul(av, v128.load(x + o, 48))), 48);
  }
  for (; i + 4 <= n; i += 4) {
    const o = <usize>i << 2;
    v128.store(y + o, f32x4.add(v128.load(y + o), f32x4.mul(av, v128.load(x + o))));
  }
  for (; i < n; i++) {
    const o = <usize>i << 2;
    store<f32>(y + o, load<f32>(y + o) + a * load<f32>(x + o));
  }
}

/** In place softmax of the n scores at a; with `half` the probabilities are rounded to f16. */
export function softmax(a: usize, n: i32, half: bool): void {
  let mv = f32x4.splat(-Infinity);
  let i = 0;
  for (; i + 4 <= n; i += 4) mv = f32x4.max(mv, v128.load(a + (<usize>i << 2)));
  mv = f32x4.max(mv, v128.shuffle<f32>(mv, mv, 2, 3, 0, 1));
  mv = f32x4.max(mv, v128.shuffle<f32>(mv, mv, 1, 0, 3, 2));
  let top = f32x4.extract_lane(mv, 0);
  for (; i < n; i++) top = max(top, load<f32>(a + (<usize>i << 2)));
  mv = f32x4.splat(top);
  let sv = f32x4.splat(0);
  for (i = 0; i + 4 <= n; i += 4) {
    const o = <usize>i << 2;
    const e = exp4(f32x4.sub(v128.load(a + o), mv));
    v128.store(a + o, e);
    sv = f32x4.add(sv, e);
  }
  let sum = hsum(sv);
  for (; i < n; i++) {
    const o = <usize>i << 2;
    const e = f32x4.extract_lane(exp4(f32x4.splat(load<f32>(a + o) - top)), 0);
    store<f32>(a + o, e);
    sum += e;
  }
  const s = f32x4.splat(sum);
  for (i = 0; i + 4 <= n; i += 4) {
    const o = <usize>i << 2;
    const p = f32x4.div(v128.load(a + o), s);
    v128.store(a + o, half ? roundF16x4(p) : p);
  }
  for (; i < n; i++) {
    const o = <usize>i << 2;
    const p = f32x4.div(f32x4.splat(load<f32>(a + o)), s);
    store<f32>(a + o, f32x4.extract_lane(half ? roundF16x4(p) : p, 0));
  }
}

/**
 * The `group` query heads at q (headDim apart) against cache positions 0..len-1 of one KV
 * head (k, v: its first row; rows are `stride` bytes apart): scores q·k/√d into att
 * (group × len), softmax per head, then out[h] = Σ_t p[h, t] · v[t]. Each key and value row
 * is read once for the whole group, as the reference does.
 */
export function attendGroup(k: usize, v: usize, stride: usize, len: i32, q: usize, group: i32, headDim: i32, half: bool, att: usize, out: usize): void {
  const scale = <f32>(1 / Math.sqrt(<f64>headDim));
  const hb = <usize>headDim << 2;
  for (let t = 0; t < len; t++) {
    const kt = k + <usize>t * stride;
    for (let h = 0; h < group; h++) {
      store<f32>(att + ((<usize>h * <usize>len + <usize>t) << 2), dotF32(kt, headDim, q + <usize>h * hb) * scale);
    }
  }
  for (let h = 0; h < group; h++) softmax(att + ((<usize>h * <usize>len) << 2), len, half);
  memory.fill(out, 0, <usize>group * hb);
  for (let t = 0; t < len; t++) {
    const vt = v + <usize>t * stride;
    for (let h = 0; h < group; h++) {
      axpy(out + <usize>h * hb, load<f32>(att + ((<usize>h * <usize>len + <usize>t) << 2)), vt, headDim);
    }
  }
}

/**
 * Pairs [r0, r1) of an attention job. Pair p is KV head p % nKv of token n-1 - p / nKv: the
 * last tokens see the most positions, so the longest pairs are claimed first and the short
 * ones fill in at the end. Each chunk has its own scores scratch.
 */
export function attendPairs(ctl: usize, r0: i32, r1: i32, chunk: i32): void {
  const keys = <usize>load<u32>(ctl + CTL_A_KEYS);
  const values = <usize>load<u32>(ctl + CTL_A_VALUES);
  const qs = <usize>load<u32>(ctl + CTL_A_Q);
  const outs = <usize>load<u32>(ctl + CTL_A_OUT);
  const att = <usize>load<u32>(ctl + CTL_A_ATT) + <usize>chunk * <usize>load<u32>(ctl + CTL_A_ATT_STRIDE);
  const nKv = load<i32>(ctl + CTL_A_N_KV);
  const group = load<i32>(ctl + CTL_A_GROUP);
  const headDim = load<i32>(ctl + CTL_A_HEAD_DIM);
  const start = load<i32>(ctl + CTL_A_START);
  const n = load<i32>(ctl + CTL_A_N);
  const half = load<i32>(ctl + CTL_A_HALF) != 0;
  const hb = <usize>headDim << 2;
  const stride = <usize>nKv * hb;
  for (let p = r0; p < r1; p++) {
    const i = n - 1 - p / nKv;
    const g = p % nKv;
    const o = <usize>i * stride * <usize>group + <usize>g * <usize>group * hb;
    attendGroup(keys + <usize>g * hb, values + <usize>g * hb, stride, start + i + 1, qs + o, group, headDim, half, att, outs + o);
  }
}

/** Elements [i0, i1) of out = silu(gate) · up, silu(g) = g / (1 + e^-g). */
export function swigluRange(ctl: usize, i0: i32, i1: i32): void {
  const gate = <usize>load<u32>(ctl + CTL_ACT);
  const up = <usize>load<u32>(ctl + CTL_W);
  const out = <usize>load<u32>(ctl + CTL_OUT);
  const one = f32x4.splat(1);
  let i = i0;
  for (; i + 4 <= i1; i += 4) {
    const o = <usize>i << 2;
    const g = v128.load(gate + o);
    v128.store(out + o, f32x4.mul(f32x4.div(g, f32x4.add(one, exp4(f32x4.neg(g)))), v128.load(up + o)));
  }
  for (; i < i1; i++) {
    const o = <usize>i << 2;
    const g = f32x4.splat(load<f32>(gate + o));
    store<f32>(out + o, f32x4.extract_lane(f32x4.div(g, f32x4.add(one, exp4(f32x4.neg(g)))), 0) * load<f32>(up + o));
  }
}
