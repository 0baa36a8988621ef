// herd's WebAssembly SIMD128 kernels (AssemblyScript). Built by scripts/build-wasm.mjs into
// ../kernels.wasm, which is committed so a Raspberry Pi needs nothing but Node to run them.
//
// The module imports one shared memory and holds no state of its own: every thread (the
// main one and each worker) instantiates it on the same memory, and a job is described by
// a control block in that memory (layout below) so one call, run(ctl, gen), makes a thread
// take part in any job (a matrix product, attention, SwiGLU). The plain TypeScript kernels in src/kernels/ are the
// reference: the activation quantizers and the integer block sums give identical bits; the
// K-quant dot products too (their one float step per 256 values is done in f64, in the
// reference's order); the other float sums differ only by summation order and precision
// (four f32 lanes here, one f64 sum there).

// ---------------------------------------------------------------------------------------
// Control block: byte offsets from its base, exported as globals so the JavaScript side
// reads them from here instead of keeping a second copy of the layout.

/** Job generation, bumped by the main thread for every job (its own cache line). */
export const CTL_GEN: i32 = 0;
/** Chunks of the current job computed so far (its own cache line). */
export const CTL_DONE: i32 = 64;
/** Non-zero once a worker failed; the main thread reports it. */
export const CTL_ERROR: i32 = 68;
/** The next unclaimed chunk, tagged with the job: (generation & 0xfffff) << 12 | chunk. */
export const CTL_NEXT: i32 = 128;
/** The job: what to compute and where (written before the generation moves). */
export const CTL_OP: i32 = 192; // OP_STOP or a ggml type id
export const CTL_CHUNKS: i32 = 196; // the rows are cut into this many chunks (< 4096)
export const CTL_CHUNK_ROWS: i32 = 200; // rows per chunk (the last may have fewer)
export const CTL_W: i32 = 204; // weight bytes
export const CTL_ROW_BYTES: i32 = 208;
export const CTL_ROWS: i32 = 212;
export const CTL_COLS: i32 = 216;
export const CTL_N: i32 = 220; // activation vectors (1 for a matvec)
export const CTL_ACT: i32 = 224; // f32 values, or int8 quants for Q8_0/Q8_1/Q8_K activations
export const CTL_ACT_STRIDE: i32 = 228; // bytes from one activation vector to the next
export const CTL_ACT_D: i32 = 232; // Q8 activation scales (f32 per 32 values, or per 256 for Q8_K)
export const CTL_ACT_D_STRIDE: i32 = 236;
export const CTL_ACT_X: i32 = 240; // Q8_1: d·Σq per 32 (f32); Q8_K: Σq per 16 (i16)
export const CTL_ACT_X_STRIDE: i32 = 244;
export const CTL_OUT: i32 = 248; // f32 outputs, vector j at out + j * rows * 4
// Attention jobs (OP_ATTEND): ROWS counts (token, KV head) pairs, and these words say where
// the step lives. The cache rows 0..start+n are f32 copies in this memory.
export const CTL_A_KEYS: i32 = 256; // f32 keys, (start + n) × kvDim
export const CTL_A_VALUES: i32 = 260; // f32 values, the same shape
export const CTL_A_Q: i32 = 264; // n × nHeads·headDim queries (f16-rounded already for an f16 cache)
export const CTL_A_OUT: i32 = 268; // n × nHeads·headDim outputs
export const CTL_A_ATT: i32 = 272; // scores scratch: ATT_STRIDE bytes per chunk
export const CTL_A_ATT_STRIDE: i32 = 276;
export const CTL_A_N_KV: i32 = 280; // KV heads
export const CTL_A_GROUP: i32 = 284; // query heads per KV head
export const CTL_A_HEAD_DIM: i32 = 288;
export const CTL_A_START: i32 = 292; // position of the step's first token
export const CTL_A_N: i32 = 296; // tokens in the step
export const CTL_A_HALF: i32 = 300; // non-zero: round the probabilities to f16 (f16 cache)
/** 0, or the Q8 activation quants again widened to i16 (same stride in values): see tiles. */
export const CTL_ACT16: i32 = 304;
/** The f32 value of every f16 bit pattern (65536 × 4 bytes), filled once by fillF16Table:
 *  the prefill tiles read a block's f16 scale with one load instead of a dozen instructions. */
export const CTL_F16_TABLE: i32 = 308;
export const CTL_BYTES: i32 = 320;
// The element-wise jobs (OP_SWIGLU, OP_F16_TO_F32) use ROWS as the element count, CHUNK_ROWS
// as elements per chunk (a multiple of 8), and ACT, W, OUT as their operands.

export const OP_STOP: i32 = -1;
/** Causal grouped-query attention of a step's tokens over a layer's cache. */
export const OP_ATTEND: i32 = 1001;
/** OUT[i] = silu(ACT[i]) · W[i] (f32). */
export const OP_SWIGLU: i32 = 1002;
/** OUT[i] = the f32 value of the f16 bits ACT[i]. */
export const OP_F16_TO_F32: i32 = 1003;

// ggml type ids (src/ggml/types.ts) this module has kernels for.
const F32: i32 = 0;
const F16: i32 = 1;
const Q4_0: i32 = 2;
const Q4_1: i32 = 3;
const Q5_0: i32 = 6;
const Q5_1: i32 = 7;
const Q8_0: i32 = 8;
const Q2_K: i32 = 10;
const Q3_K: i32 = 11;
const Q4_K: i32 = 12;
const Q5_K: i32 = 13;
const Q6_K: i32 = 14;
const BF16: i32 = 30;

/** Whether this module computes weights of ggml type `type`. */
export function supports(type: i32): bool {
  switch (type) {
    case F32:
    case F16:
    case BF16:
    case Q8_0:
    case Q4_0:
    case Q4_1:
    case Q5_0:
    case Q5_1:
    case Q2_K:
    case Q3_K:
    case Q4_K:
    case Q5_K:
    case Q6_K:
      return true;
  }
  return false;
}

// Built twice (scripts/build-wasm.mjs): kernels.wasm with SIMD128 alone, and
// kernels-relaxed.wasm also with relaxed SIMD, whose int8 dot product
// (i16x8.relaxed_dot_i8x16_i7x16_s: pmaddubsw on x86) multiplies 16 int8 activations by 16
// weights in [0, 127] into int16 pairs in one instruction, where SIMD128 needs two widening
// multiplies and an add. Weights that are unsigned as stored (Q4_K, Q5_K nibbles; Q4_0 and
// Q6_K before their offset) take it directly; the offset (8 for Q4_0, 32 for Q6_K) comes off
// afterwards through the activation's sums. Every sum stays an exact integer, so the
// K-quants still equal the js reference bit for bit.
const RELAXED: bool = ASC_FEATURE_RELAXED_SIMD;

/** Whether this build uses relaxed SIMD (kernels-relaxed.wasm). */
export function relaxedSimd(): bool {
  return RELAXED;
}

/** Whether the four-vector tile of `type` reads CTL_ACT16 (activations widened to i16) when
 *  wide tiles are wanted; the relaxed build multiplies int8 directly except for Q8_0, whose
 *  signed weights the relaxed dot product cannot take. */
export function wideTile(type: i32): bool {
  return RELAXED ? type == Q8_0 : tiled(type);
}

/** Whether Q4_0 products read the activations' offset sums (offsetSumsQ8_0) at CTL_ACT_X. */
export function q4Offsets(): bool {
  return RELAXED;
}

/** First byte after the module's static data: the JavaScript allocator starts above it. */
export function heapBase(): usize {
  return __heap_base;
}

// ---------------------------------------------------------------------------------------
// Half precision, bit-exact with src/ggml/half.ts.

/** f16 bits → f32, exact. Subnormal halves go through a normal subtraction (not a multiply
 *  by 2^112 of an f32 subnormal) so cores that flush subnormals, like 32-bit NEON, agree. */
// @ts-ignore: decorator
@inline function f16ToF32(h: u32): f32 {
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
@inline function f16x4ToF32x4(h: v128): v128 {
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

/** The f16 at p as f32, read from the table at t (fillF16Table): exactly f16ToF32's value. */
// @ts-ignore: decorator
@inline function f16At(t: usize, p: usize): f32 {
  return load<f32>(t + (<usize>load<u16>(p) << 2));
}

/** f32 bits → f16 bits, round to nearest even (ggml_compute_fp32_to_fp16). */
function f32BitsToF16(w: u32): u32 {
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
@inline function f32BitsToBf16(w: u32): u32 {
  if ((w & 0x7fffffff) > 0x7f800000) return ((w >>> 16) | 0x40) & 0xffff;
  return (w + 0x7fff + ((w >>> 16) & 1)) >>> 16;
}

// ---------------------------------------------------------------------------------------
// Activation preparation: once per matvec, by the main thread, before the workers start.

/**
 * Four f32 rounded to f16 and back (to nearest even), the bits of f16ToF32(f32BitsToF16(x))
 * without leaving f32: a normal half keeps the top 10 mantissa bits, rounded at bit 13 (the
 * exponent re-bias is a multiple of 2^13, so it does not change the rounding); a half
 * subnormal is a multiple of 2^-24, which is what adding and subtracting 0.5 (whose f32 ulp
 * is 2^-24) rounds to, ties to even; too large is infinity, and a NaN becomes the quiet NaN.
 */
// @ts-ignore: decorator
@inline function roundF16x4(x: v128): v128 {
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
@inline function q8Block32(p: usize, q: usize): f32 {
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
@inline function toInt(v: v128, s: v128): v128 {
  return i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v, s)));
}

/** ggml's nearest_int on four lanes: add 1.5·2²³ and read the low mantissa bits (ties to even). */
// @ts-ignore: decorator
@inline function nearestInt4(v: v128): v128 {
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

// ---------------------------------------------------------------------------------------
// Dot products of one weight row with one prepared activation vector.

// @ts-ignore: decorator
@inline function hsumI32(v: v128): i32 {
  return i32x4.extract_lane(v, 0) + i32x4.extract_lane(v, 1) + i32x4.extract_lane(v, 2) + i32x4.extract_lane(v, 3);
}

// @ts-ignore: decorator
@inline function hsum(v: v128): f32 {
  return f32x4.extract_lane(v, 0) + f32x4.extract_lane(v, 1) + f32x4.extract_lane(v, 2) + f32x4.extract_lane(v, 3);
}

// @ts-ignore: decorator
@inline function dotF32(w: usize, n: i32, x: usize): f32 {
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
@inline function dotF16(w: usize, n: i32, x: usize): f32 {
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
@inline function dotBf16(w: usize, n: i32, x: usize): f32 {
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

// The integer block products multiply int8 by int8 into int16 lanes (extmul) and add lane
// pairs into int32 (extadd_pairwise): on arm64 these are single smull/smull2/saddlp
// instructions, where widening first and using i32x4.dot_i16x8_s costs about twice as
// many; on x86 the two forms measured the same. Two int8·int8 products fit an int16 lane
// (|q| ≤ 127 for activations, ≥ -128 for weights: 2·128·127 < 2^15).

/** Σ over 16 lanes of w·a (int8 × int8, at most two products per int16 lane) as 8 int16 lanes. */
// @ts-ignore: decorator
@inline function mul16(w: v128, a: v128): v128 {
  return i16x8.add(i16x8.extmul_low_i8x16_s(w, a), i16x8.extmul_high_i8x16_s(w, a));
}

/** Q8_0 weights wl (values 0-15), wh (16-31) against 32 activation quants at a: int32 lane
 *  sums, lane k holding values 2k, 2k+1 (mod 8). Full-range int8 weights: two products per
 *  int16 lane at most, so each half widens on its own. */
// @ts-ignore: decorator
@inline function q8Lanes(wl: v128, wh: v128, a: usize): v128 {
  return i32x4.add(i32x4.extadd_pairwise_i16x8_s(mul16(wl, v128.load(a))), i32x4.extadd_pairwise_i16x8_s(mul16(wh, v128.load(a, 16))));
}

/** Q4_0 weights (values in [-8, 7], so all four products of a lane fit int16: 4·8·127)
 *  against 32 activation quants at a: int32 lane sums, the lanes of q8Lanes. */
// @ts-ignore: decorator
@inline function q4Lanes(wl: v128, wh: v128, a: usize): v128 {
  return i32x4.extadd_pairwise_i16x8_s(i16x8.add(mul16(wl, v128.load(a)), mul16(wh, v128.load(a, 16))));
}

/** The Q8_0 block at w (f16 d, 32 int8) against 32 activation quants at a: int32 lane sums. */
// @ts-ignore: decorator
@inline function q8Block(w: usize, a: usize): v128 {
  return q8Lanes(v128.load(w, 2), v128.load(w, 18), a);
}

/** The Q4_0 nibbles x as int8 weights: values 0..15 (low nibbles), 16..31 (high nibbles). */
// @ts-ignore: decorator
@inline function q4Low(x: v128): v128 {
  return i8x16.sub(v128.and(x, i8x16.splat(0x0f)), i8x16.splat(8));
}
// @ts-ignore: decorator
@inline function q4High(x: v128): v128 {
  return i8x16.sub(i8x16.shr_u(x, 4), i8x16.splat(8));
}

/** The Q4_0 block at w (f16 d, 16 bytes of nibbles) against 32 activation quants at a. */
// @ts-ignore: decorator
@inline function q4Block(w: usize, a: usize): v128 {
  const x = v128.load(w, 2);
  return q4Lanes(q4Low(x), q4High(x), a);
}

/** 0x10 in byte i where bit i of the 16-bit qh is set: the fifth bit of Q5_0/Q5_1 values. */
// @ts-ignore: decorator
@inline function fifthBits(qh: u32): v128 {
  const spread = i8x16.swizzle(i32x4.splat(qh), i8x16(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
  const bit = i8x16(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
  return v128.and(i8x16.eq(v128.and(spread, bit), bit), i8x16.splat(0x10));
}

/** Relaxed build: 16 int8 activations a against 16 weights q in [0, 127], as 8 int16 lanes
 *  of two products each (|a| ≤ 127, so at most 2·127·127). */
// @ts-ignore: decorator
@inline function rdot16(a: v128, q: v128): v128 {
  return i16x8.relaxed_dot_i8x16_i7x16_s(a, q);
}

/** Relaxed build: 32 weights (lo: values 0-15, hi: 16-31, each in [0, 63]) against the 32
 *  activation quants at a, times the int16 lanes of sc (a scale, or ones): int32 lanes. Four
 *  products per int16 lane: at most 4·127·63 < 2^15. */
// @ts-ignore: decorator
@inline function rdot32(lo: v128, hi: v128, a: usize, sc: v128): v128 {
  return i32x4.dot_i16x8_s(i16x8.add(rdot16(v128.load(a), lo), rdot16(v128.load(a, 16), hi)), sc);
}

/** Relaxed build: the Q4_0 block with nibbles x against the 32 quants at a, less the offset
 *  sum at o (offsetSumsQ8_0): Σ (q - 8)·a as int32 lanes. */
// @ts-ignore: decorator
@inline function q4BlockR(x: v128, a: usize, o: usize): v128 {
  return i32x4.sub(rdot32(v128.and(x, i8x16.splat(0x0f)), i8x16.shr_u(x, 4), a, i16x8.splat(1)), v128.load(o));
}

/** acc + lanes·s (lanes int32, converted exactly): the Q4_0 and Q8_0 kernels' float step,
 *  matvec and tile alike, so a matmul still equals its matvecs. Not relaxed_madd: Node 20's
 *  armv7 V8 computes it wrongly in these loops (measured: Q4_0 products off by whole units),
 *  though a probe of constants passes. */
// @ts-ignore: decorator
@inline function scaleAdd(acc: v128, lanes: v128, s: v128): v128 {
  const f = f32x4.convert_i32x4_s(lanes);
  return f32x4.add(acc, f32x4.mul(f, s));
}

// Per 32-value block: the exact integer lane sums, converted to f32 (each lane < 2^24, so
// exactly), times d_w·d_x in f32 like the reference's Math.fround(d_w·d_x), accumulated in
// four f32 lanes (ggml's x86 path does the same with FMA). Min terms (Q4_1, Q5_1) use the
// activation's s = d_x·Σq_x, one multiply per block, as the reference does.

// @ts-ignore: decorator
@inline function dotQ8_0(w: usize, n: i32, qs: usize, d: usize): f32 {
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
@inline function dotQ4_0(w: usize, n: i32, qs: usize, d: usize, offsets: usize): f32 {
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
@inline function dotQ4_1(w: usize, n: i32, qs: usize, d: usize, xs: usize): f32 {
  let acc = f32x4.splat(0);
  let mins: f32 = 0;
  const nb = n >> 5;
  for (let b = 0; b < nb; b++) {
    const p = w + <usize>b * 20;
    const a = qs + (<usize>b << 5);
    const x = v128.load(p, 4);
    // Nibbles 0..15 are valid int8, so the signed multiplies apply; 4·15·127 fits int16.
    const s16 = i16x8.add(mul16(v128.and(x, i8x16.splat(0x0f)), v128.load(a)), mul16(i8x16.shr_u(x, 4), v128.load(a, 16)));
    const s = f16ToF32(load<u16>(p)) * load<f32>(d + (<usize>b << 2));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extadd_pairwise_i16x8_s(s16)), f32x4.splat(s)));
    mins += f16ToF32(load<u16>(p, 2)) * load<f32>(xs + (<usize>b << 2));
  }
  return hsum(acc) + mins;
}

/** Q5_0 (f16 d, u32 qh, 16 bytes of nibbles): value = d·((nibble | bit << 4) - 16). */
// @ts-ignore: decorator
@inline function dotQ5_0(w: usize, n: i32, qs: usize, d: usize): f32 {
  let acc = f32x4.splat(0);
  const nb = n >> 5;
  for (let b = 0; b < nb; b++) {
    const p = w + <usize>b * 22;
    const a = qs + (<usize>b << 5);
    const qh = load<u32>(p, 2);
    const x = v128.load(p, 6);
    const wl = i8x16.sub(v128.or(v128.and(x, i8x16.splat(0x0f)), fifthBits(qh & 0xffff)), i8x16.splat(16));
    const wh = i8x16.sub(v128.or(i8x16.shr_u(x, 4), fifthBits(qh >>> 16)), i8x16.splat(16));
    // |q| ≤ 16: four products of a lane stay within int16 (4·16·127).
    const s16 = i16x8.add(mul16(wl, v128.load(a)), mul16(wh, v128.load(a, 16)));
    const s = f16ToF32(load<u16>(p)) * load<f32>(d + (<usize>b << 2));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extadd_pairwise_i16x8_s(s16)), f32x4.splat(s)));
  }
  return hsum(acc);
}

/** Q5_1 (f16 d, f16 m, u32 qh, 16 bytes of nibbles): value = d·(nibble | bit << 4) + m. */
// @ts-ignore: decorator
@inline function dotQ5_1(w: usize, n: i32, qs: usize, d: usize, xs: usize): f32 {
  let acc = f32x4.splat(0);
  let mins: f32 = 0;
  const nb = n >> 5;
  for (let b = 0; b < nb; b++) {
    const p = w + <usize>b * 24;
    const a = qs + (<usize>b << 5);
    const qh = load<u32>(p, 4);
    const x = v128.load(p, 8);
    const wl = v128.or(v128.and(x, i8x16.splat(0x0f)), fifthBits(qh & 0xffff));
    const wh = v128.or(i8x16.shr_u(x, 4), fifthBits(qh >>> 16));
    // q ≤ 31: 4·31·127 = 15748 fits int16.
    const s16 = i16x8.add(mul16(wl, v128.load(a)), mul16(wh, v128.load(a, 16)));
    const s = f16ToF32(load<u16>(p)) * load<f32>(d + (<usize>b << 2));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extadd_pairwise_i16x8_s(s16)), f32x4.splat(s)));
    mins += f16ToF32(load<u16>(p, 2)) * load<f32>(xs + (<usize>b << 2));
  }
  return hsum(acc) + mins;
}

// K-quants: super-blocks of 256 values against Q8_K activations. Inside a super-block the
// sums stay integer (sub-block scale × Σ q·q_x, in int32 lanes), so the one float step per
// 256 values is done in f64 in the reference's order: these dot products equal the js
// reference bit for bit.

/** Σ over 16 lanes of w·a times the integer scale sc, into four int32 lanes. */
// @ts-ignore: decorator
@inline function scaled16(w: v128, a: v128, sc: i32): v128 {
  return i32x4.dot_i16x8_s(mul16(w, a), i16x8.splat(<i16>sc));
}

/** Σ_j bsums[j] · min[j/2] over the 16 per-16 sums of a Q8_K block (mins 0-3 in m0, 4-7 in m1, a byte each). */
// @ts-ignore: decorator
@inline function minSum(bs: usize, m0: u32, m1: u32): i32 {
  // i16 lanes 0-7: mins 0-7; i32 lane k of lo (hi) holds min k (4+k) in both i16 halves,
  // so dot_i16x8_s pairs it with bsums 2k and 2k+1 (8+2k, 9+2k). All exact in int32.
  const m = i16x8.extend_low_i8x16_u(i32x4.replace_lane(i32x4.splat(m0), 1, m1));
  const lo = i32x4.extend_low_i16x8_u(m), hi = i32x4.extend_high_i16x8_u(m);
  const s = i32x4.add(i32x4.dot_i16x8_s(v128.load(bs), v128.or(lo, i32x4.shl(lo, 16))), i32x4.dot_i16x8_s(v128.load(bs, 16), v128.or(hi, i32x4.shl(hi, 16))));
  return hsumI32(s);
}

/** Q4_K/Q5_K's 6-bit scales and mins (ggml's get_scale_min_k4): four per u32, one per byte. */
// @ts-ignore: decorator
@inline function scalesK4(p: usize, which: i32): u32 {
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
@inline function k4Lanes(l0: v128, l1: v128, h0: v128, h1: v128, a: usize, sLo: v128, sHi: v128): v128 {
  if (RELAXED) return i32x4.add(rdot32(l0, l1, a, sLo), rdot32(h0, h1, a + 32, sHi));
  return i32x4.add(
    i32x4.dot_i16x8_s(i16x8.add(mul16(l0, v128.load(a)), mul16(l1, v128.load(a, 16))), sLo),
    i32x4.dot_i16x8_s(i16x8.add(mul16(h0, v128.load(a, 32)), mul16(h1, v128.load(a, 48))), sHi),
  );
}

/** Q4_K (f16 d, f16 dmin, 12 bytes scales/mins, 128 bytes nibbles): value = d·sc·q - dmin·m. */
// @ts-ignore: decorator
@inline function dotQ4_K(w: usize, n: i32, qs: usize, d: usize, bsums: usize): f32 {
  let sum: f64 = 0;
  const nb = n >> 8;
  for (let b = 0; b < nb; b++) {
    const p = w + <usize>b * 144;
    const a = qs + (<usize>b << 8);
    const sc0 = scalesK4(p + 4, 0), sc1 = scalesK4(p + 4, 2);
    let acc = i32x4.splat(0);
    for (let k = 0; k < 4; k++) {
      const x0 = v128.load(p + 16 + (<usize>k << 5));
      const x1 = v128.load(p + 16 + (<usize>k << 5), 16);
      const ak = a + (<usize>k << 6);
      const sLo = <i32>(((k < 2 ? sc0 : sc1) >>> (16 * (k & 1))) & 0xff);
      const sHi = <i32>(((k < 2 ? sc0 : sc1) >>> (16 * (k & 1) + 8)) & 0xff);
      // Sub-block 2k: low nibbles against a[0..32); 2k+1: high nibbles against a[32..64).
      const l0 = v128.and(x0, i8x16.splat(0x0f)), l1 = v128.and(x1, i8x16.splat(0x0f));
      const h0 = i8x16.shr_u(x0, 4), h1 = i8x16.shr_u(x1, 4);
      acc = i32x4.add(acc, k4Lanes(l0, l1, h0, h1, ak, i16x8.splat(<i16>sLo), i16x8.splat(<i16>sHi)));
    }
    const isum = hsumI32(acc);
    const msum = minSum(bsums + (<usize>b << 5), scalesK4(p + 4, 1), scalesK4(p + 4, 3));
    const xd = load<f32>(d + (<usize>b << 2));
    const dd = f16ToF32(load<u16>(p)) * xd;
    const dm = f16ToF32(load<u16>(p, 2)) * xd;
    sum += <f64>dd * <f64>isum - <f64>dm * <f64>msum;
  }
  return <f32>sum;
}

/** Q5_K (f16 d, f16 dmin, 12 bytes scales/mins, 32 bytes qh, 128 bytes nibbles). */
// @ts-ignore: decorator
@inline function dotQ5_K(w: usize, n: i32, qs: usize, d: usize, bsums: usize): f32 {
  let sum: f64 = 0;
  const nb = n >> 8;
  for (let b = 0; b < nb; b++) {
    const p = w + <usize>b * 176;
    const a = qs + (<usize>b << 8);
    const sc0 = scalesK4(p + 4, 0), sc1 = scalesK4(p + 4, 2);
    // Bit s of qh[l] is the fifth bit of value 32s + l; shift qh right by 2 per 64 values.
    let h0 = v128.load(p + 16), h1 = v128.load(p + 16, 16);
    let acc = i32x4.splat(0);
    for (let k = 0; k < 4; k++) {
      const x0 = v128.load(p + 48 + (<usize>k << 5));
      const x1 = v128.load(p + 48 + (<usize>k << 5), 16);
      const ak = a + (<usize>k << 6);
      const sLo = <i32>(((k < 2 ? sc0 : sc1) >>> (16 * (k & 1))) & 0xff);
      const sHi = <i32>(((k < 2 ? sc0 : sc1) >>> (16 * (k & 1) + 8)) & 0xff);
      const one = i8x16.splat(1), two = i8x16.splat(2), m4 = i8x16.splat(0x0f);
      const l0 = v128.or(v128.and(x0, m4), i8x16.shl(v128.and(h0, one), 4));
      const l1 = v128.or(v128.and(x1, m4), i8x16.shl(v128.and(h1, one), 4));
      const u0 = v128.or(i8x16.shr_u(x0, 4), i8x16.shl(v128.and(h0, two), 3));
      const u1 = v128.or(i8x16.shr_u(x1, 4), i8x16.shl(v128.and(h1, two), 3));
      acc = i32x4.add(acc, k4Lanes(l0, l1, u0, u1, ak, i16x8.splat(<i16>sLo), i16x8.splat(<i16>sHi)));
      h0 = i8x16.shr_u(h0, 2);
      h1 = i8x16.shr_u(h1, 2);
    }
    const isum = hsumI32(acc);
    const msum = minSum(bsums + (<usize>b << 5), scalesK4(p + 4, 1), scalesK4(p + 4, 3));
    const xd = load<f32>(d + (<usize>b << 2));
    const dd = f16ToF32(load<u16>(p)) * xd;
    const dm = f16ToF32(load<u16>(p, 2)) * xd;
    sum += <f64>dd * <f64>isum - <f64>dm * <f64>msum;
  }
  return <f32>sum;
}

/** Q6_K's 6-bit values of one group of 16 (quarter 0-3 of a 128-value half): low nibbles
 *  of lq (quarters 0, 1) or their high nibbles (2, 3), with two bits of h on top; [0, 63]. */
// @ts-ignore: decorator
@inline function q6Values(lq: v128, h: v128, quarter: i32): v128 {
  const m4 = i8x16.splat(0x0f), m3 = i8x16.splat(3);
  const low = quarter < 2 ? v128.and(lq, m4) : i8x16.shr_u(lq, 4);
  const high = quarter == 3 ? i8x16.shr_u(h, 6) : v128.and(quarter == 0 ? h : i8x16.shr_u(h, 2 * quarter), m3);
  return v128.or(low, i8x16.shl(high, 4));
}

/** Relaxed build: 16 Q6_K values u in [0, 63] against the 16 quants at a, times the scale
 *  sc (|u·a| pairs ≤ 2·63·127, times |sc| ≤ 128, fit int32): int32 lanes. */
// @ts-ignore: decorator
@inline function k6R(u: v128, a: usize, sc: v128): v128 {
  return i32x4.dot_i16x8_s(rdot16(v128.load(a), u), sc);
}

/** Relaxed build: Σ scale·(Q8_K sum) over a super-block's 16 groups (int8 scales at sc,
 *  i16 sums at bs): what the offset 32 of every Q6_K value contributes, over 32. */
// @ts-ignore: decorator
@inline function scaleSums6(sc: usize, bs: usize): v128 {
  const s = v128.load(sc);
  return i32x4.add(i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_s(s), v128.load(bs)), i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_s(s), v128.load(bs, 16)));
}

/** Q6_K (128 bytes ql, 64 bytes qh, 16 int8 scales, f16 d): value = d·sc·(q - 32), q 6-bit. */
// @ts-ignore: decorator
@inline function dotQ6_K(w: usize, n: i32, qs: usize, d: usize, bsums: usize): f32 {
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
@inline function dotQ2_K(w: usize, n: i32, qs: usize, d: usize, bsums: usize): f32 {
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
    const isum = hsumI32(acc);
    const xd = load<f32>(d + (<usize>b << 2));
    const dd = f16ToF32(load<u16>(p, 80)) * xd;
    const dm = f16ToF32(load<u16>(p, 82)) * xd;
    sum += <f64>dd * <f64>isum - <f64>dm * <f64>msum;
  }
  return <f32>sum;
}

/** Q3_K (32 bytes hmask, 64 bytes of 2-bit q, 12 bytes of 6-bit scales, f16 d). */
// @ts-ignore: decorator
@inline function dotQ3_K(w: usize, n: i32, qs: usize, d: usize): f32 {
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

// ---------------------------------------------------------------------------------------
// Tiles for prefill: one weight row against four activation vectors at once, so each weight
// block is loaded and unpacked once for the four (in the dot products above, once per
// vector). Per vector the arithmetic is exactly the single-vector kernel's (the same integer
// lane sums, the same float steps in the same order), so a matmul equals n matvecs bit for
// bit.
//
// `wide` tiles read the activation quants widened to i16 once per product (CTL_ACT16) and
// multiply with i32x4.dot_i16x8_s against weights widened once per block: on x86 that is
// pmaddwd on ready operands, where every int8 extmul widens both operands again (about
// three times the instructions per vector). On arm64 the int8 extmul (smull/smull2) is
// cheaper than widening, so the backend uses the narrow tiles there. K-quant weights are
// multiplied by their sub-block scale while still i16 (|q·sc| ≤ 32·128), once for all four
// vectors; Q4_K's min term stays per vector (one minSum of its bsums per super-block).

/** Σ over 32 values of e·a, the weights as four i16x8 (values 0-7, 8-15, 16-23, 24-31),
 *  a 32 i16: lane k holds values 2k, 2k+1 (mod 8), as in q8Lanes/q4Lanes. */
// @ts-ignore: decorator
@inline function dot32w(e0: v128, e1: v128, e2: v128, e3: v128, a: usize): v128 {
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(e0, v128.load(a)), i32x4.dot_i16x8_s(e1, v128.load(a, 16))),
    i32x4.add(i32x4.dot_i16x8_s(e2, v128.load(a, 32)), i32x4.dot_i16x8_s(e3, v128.load(a, 48))),
  );
}

/** The Q4_0 (q8 false) or Q8_0 row at p of nb blocks against the four vectors at x (int8,
 *  xStride apart; i16 at x16 for wide), scales at xd (dStride apart); outputs oStride apart. */
// @ts-ignore: decorator
@inline function tile32(q8: bool, wide: bool, p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, out: usize, oStride: usize, f16t: usize): void {
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
@inline function q4StepR(c: v128, wl: v128, wh: v128, a: usize, o: usize, dw: v128, d: usize): v128 {
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
@inline function tileQ4_0R(eight: bool, p: usize, nb: i32, x: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize, f16t: usize): void {
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
@inline function k6Lanes(q1: v128, q2: v128, q3: v128, q4: v128, a: usize, s1: i32, s2: i32, s3: i32, s4: i32): v128 {
  return i32x4.add(
    i32x4.add(scaled16(q1, v128.load(a), s1), scaled16(q2, v128.load(a, 32), s2)),
    i32x4.add(scaled16(q3, v128.load(a, 64), s3), scaled16(q4, v128.load(a, 96), s4)),
  );
}

/** Two Q6_K groups, scaled and widened (e0, e1: values 0-15 against i16 a; e2, e3: values
 *  32-47 against a + 64 bytes), for the wide tile. */
// @ts-ignore: decorator
@inline function k6PairW(e0: v128, e1: v128, e2: v128, e3: v128, a: usize): v128 {
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(e0, v128.load(a)), i32x4.dot_i16x8_s(e1, v128.load(a, 16))),
    i32x4.add(i32x4.dot_i16x8_s(e2, v128.load(a, 64)), i32x4.dot_i16x8_s(e3, v128.load(a, 80))),
  );
}

/** Relaxed build: four Q6_K groups (u1..u4 in [0, 63], scales t1..t4) against a (as k6Lanes). */
// @ts-ignore: decorator
@inline function k6LanesR(u1: v128, u2: v128, u3: v128, u4: v128, a: usize, t1: v128, t2: v128, t3: v128, t4: v128): v128 {
  return i32x4.add(i32x4.add(k6R(u1, a, t1), k6R(u2, a + 32, t2)), i32x4.add(k6R(u3, a + 64, t3), k6R(u4, a + 96, t4)));
}

/** The Q6_K row at p of nb super-blocks against four vectors (as tile32; Q8_K sums at xx,
 *  xxStride apart, for the relaxed build's offset). */
// @ts-ignore: decorator
@inline function tileQ6_K(wide: bool, p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize): void {
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
@inline function tileQ4_K(wide: bool, p: usize, nb: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize): void {
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
@inline function tiled(op: i32): bool {
  return op == Q4_0 || op == Q8_0 || op == Q4_K || op == Q6_K;
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
function tile4(op: i32, wide: bool, p: usize, cols: i32, x: usize, x16: usize, xStride: usize, xd: usize, dStride: usize, xx: usize, xxStride: usize, out: usize, oStride: usize, f16t: usize): void {
  switch (op) {
    case Q4_0:
      if (wide) tileQ4_0Wide(p, cols >> 5, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride, f16t);
      else tileQ4_0(p, cols >> 5, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride, f16t);
      break;
    case Q8_0:
      if (wide) tileQ8_0Wide(p, cols >> 5, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride, f16t);
      else tileQ8_0(p, cols >> 5, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride, f16t);
      break;
    case Q4_K:
      if (wide) tileQ4_KWide(p, cols >> 8, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride);
      else tileQ4_KNarrow(p, cols >> 8, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride);
      break;
    default:
      if (wide) tileQ6_KWide(p, cols >> 8, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride);
      else tileQ6_KNarrow(p, cols >> 8, x, x16, xStride, xd, dStride, xx, xxStride, out, oStride);
  }
}

// ---------------------------------------------------------------------------------------
// The row loop. Rows [r0, r1) of out = W · x_j for the n activation vectors; with n > 1
// (a matmul for prefill) a weight row is read from memory once and reused from L1 for every
// vector, which is the whole gain of batching on a memory-bound machine. The switch costs
// one predictable branch per row.

/**
 * Takes part in job `gen` of the control block at ctl: claims chunks of rows (or of the
 * attention and element-wise jobs' work items) until none is left, computes each, and
 * counts it done (waking the main thread after the last one). Chunks are claimed, not
 * assigned, so a thread that is descheduled or slow (a busy core, a little core) leaves its
 * share to the others instead of holding the job up.
 *
 * A claim is a compare-and-swap of NEXT that only succeeds while NEXT still carries this
 * job's tag. The main thread retags NEXT before it rewrites the job, so a thread that read
 * the job and was then delayed past its end claims nothing and writes nothing.
 */
export function run(ctl: usize, gen: i32): void {
  const tag = (gen & 0xfffff) << 12;
  const chunks = load<i32>(ctl + CTL_CHUNKS);
  for (;;) {
    const v = atomic.load<i32>(ctl + CTL_NEXT);
    const chunk = v & 0xfff;
    if ((v & ~0xfff) != tag || chunk >= chunks) return;
    if (atomic.cmpxchg<i32>(ctl + CTL_NEXT, v, v + 1) != v) continue;
    // Claimed: the job cannot change before this chunk is counted done, so its words are
    // read (again) from here on.
    const chunkRows = load<i32>(ctl + CTL_CHUNK_ROWS);
    const r0 = chunk * chunkRows;
    const r1 = min(load<i32>(ctl + CTL_ROWS), r0 + chunkRows);
    const op = load<i32>(ctl + CTL_OP);
    if (op == OP_ATTEND) attendPairs(ctl, r0, r1, chunk);
    else if (op == OP_SWIGLU) swigluRange(ctl, r0, r1);
    else if (op == OP_F16_TO_F32) f16Range(ctl, r0, r1);
    else rowsOf(ctl, op, r0, r1);
    if (atomic.add<i32>(ctl + CTL_DONE, 1) + 1 == chunks) atomic.notify(ctl + CTL_DONE);
  }
}

/** Rows [r0, r1) of the job's product, for every activation vector. */
function rowsOf(ctl: usize, op: i32, r0: i32, r1: i32): void {
  const w = <usize>load<u32>(ctl + CTL_W);
  const rb = <usize>load<u32>(ctl + CTL_ROW_BYTES);
  const rows = load<i32>(ctl + CTL_ROWS);
  const cols = load<i32>(ctl + CTL_COLS);
  const n = load<i32>(ctl + CTL_N);
  const act = <usize>load<u32>(ctl + CTL_ACT);
  const actStride = <usize>load<u32>(ctl + CTL_ACT_STRIDE);
  const actD = <usize>load<u32>(ctl + CTL_ACT_D);
  const actDStride = <usize>load<u32>(ctl + CTL_ACT_D_STRIDE);
  const actX = <usize>load<u32>(ctl + CTL_ACT_X);
  const actXStride = <usize>load<u32>(ctl + CTL_ACT_X_STRIDE);
  const out = <usize>load<u32>(ctl + CTL_OUT);
  const act16 = <usize>load<u32>(ctl + CTL_ACT16);
  const f16t = <usize>load<u32>(ctl + CTL_F16_TABLE);
  const oStride = <usize>rows << 2;
  for (let r = r0; r < r1; r++) {
    const p = w + <usize>r * rb;
    let j = 0;
    if (RELAXED && op == Q4_0) {
      for (; j + 8 <= n; j += 8) {
        const o = out + ((<usize>j * <usize>rows + <usize>r) << 2);
        tileQ4_0x8(p, cols >> 5, act + <usize>j * actStride, actStride, actD + <usize>j * actDStride, actDStride, actX + <usize>j * actXStride, actXStride, o, oStride, f16t);
      }
    }
    if (tiled(op)) {
      for (; j + 4 <= n; j += 4) {
        const x = act + <usize>j * actStride;
        const x16 = act16 + ((<usize>j * actStride) << 1);
        const xd = actD + <usize>j * actDStride;
        const xx = actX + <usize>j * actXStride;
        const o = out + ((<usize>j * <usize>rows + <usize>r) << 2);
        tile4(op, act16 != 0, p, cols, x, x16, actStride, xd, actDStride, xx, actXStride, o, oStride, f16t);
      }
    }
    for (; j < n; j++) {
      const x = act + <usize>j * actStride;
      const xd = actD + <usize>j * actDStride;
      const xx = actX + <usize>j * actXStride;
      let v: f32 = 0;
      switch (op) {
        case F32:
          v = dotF32(p, cols, x);
          break;
        case F16:
          v = dotF16(p, cols, x);
          break;
        case BF16:
          v = dotBf16(p, cols, x);
          break;
        case Q8_0:
          v = dotQ8_0(p, cols, x, xd);
          break;
        case Q4_0:
          v = dotQ4_0(p, cols, x, xd, xx);
          break;
        case Q4_1:
          v = dotQ4_1(p, cols, x, xd, xx);
          break;
        case Q5_0:
          v = dotQ5_0(p, cols, x, xd);
          break;
        case Q5_1:
          v = dotQ5_1(p, cols, x, xd, xx);
          break;
        case Q2_K:
          v = dotQ2_K(p, cols, x, xd, xx);
          break;
        case Q3_K:
          v = dotQ3_K(p, cols, x, xd);
          break;
        case Q4_K:
          v = dotQ4_K(p, cols, x, xd, xx);
          break;
        case Q5_K:
          v = dotQ5_K(p, cols, x, xd, xx);
          break;
        case Q6_K:
          v = dotQ6_K(p, cols, x, xd, xx);
          break;
        default:
          unreachable();
      }
      store<f32>(out + ((<usize>j * <usize>rows + <usize>r) << 2), v);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Attention and SwiGLU. The plain TypeScript reference (src/kernels/attention.ts, ops.ts)
// sums and takes exp in f64; here dot products sum in four f32 lanes and exp is a
// vectorised f32 polynomial (within 2 ulp), so the results agree to about 1e-6 relative.

/**
 * e^x on four lanes, Cephes' expf: x = k·ln2 + r with k = nearest(x·log2 e), |r| ≤ ln2/2
 * (ln2 split in two so k·ln2 is nearly exact), e^r by a degree-5 polynomial (≤ 2 ulp),
 * and 2^k built in the exponent bits. Below -87.3 (e^x < 2^-126) the result is 0; above 88
 * it is e^88 (≈ 1.7e38), which only ever appears as 1 + e^x in a denominator here.
 */
// @ts-ignore: decorator
@inline function exp4(v: v128): v128 {
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
@inline function axpy(y: usize, a: f32, x: usize, n: i32): void {
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
function softmax(a: usize, n: i32, half: bool): void {
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
function attendGroup(k: usize, v: usize, stride: usize, len: i32, q: usize, group: i32, headDim: i32, half: bool, att: usize, out: usize): void {
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
function attendPairs(ctl: usize, r0: i32, r1: i32, chunk: i32): void {
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
function swigluRange(ctl: usize, i0: i32, i1: i32): void {
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

/** Elements [i0, i1) of out (f32) = the f16 bits at src, eight per step. */
function f16Range(ctl: usize, i0: i32, i1: i32): void {
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
