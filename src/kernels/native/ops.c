// Attention over the KV cache and the SwiGLU activation: the native KernelBackend.attend
// and .swiglu (js references: attend/attendGroup in src/kernels/attention.ts, swiglu in
// src/kernels/ops.ts). Exports, added to the addon's by herd_register_ops:
//
//   attend(handle, keys, values, nHeads, nKvHeads, headDim, start, n, q, out, parallel)
//   swiglu(handle, out, gate, up, n, parallel)
//
// Attention. A unit of work is one token and a slice of the query heads that share one KV
// head. It rounds its queries to f16 in place (f16 cache), scores each head of the slice
// against every cached key the token sees (each key row read once for the slice), takes
// the softmax per head (probabilities rounded to f16 with an f16 cache, as llama.cpp does)
// and sums the cached values weighted by them. A prefill step has n × nKvHeads units,
// handed out latest token (longest) first; a decode step with fewer units than twice the
// threads cuts each group into slices so that every thread has work. Each head is computed
// by the same code however the heads are sliced and whichever thread runs them, so results
// do not depend on the thread count, and attention over n tokens equals n one-token steps
// bit for bit.
//
// Each thread keeps its own score buffer (heads × positions floats), grown as needed and
// freed when the thread exits: nothing is allocated per call once it has grown.
//
// exp. Softmax and SiLU use one exp on every path (Cephes' expf polynomial after reducing
// by ln 2; within 2 ulp of the true value), vectorised where the path has vectors.

#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#define _GNU_SOURCE
#include "ops.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "herd.h"
#include "napi_util.h"

// ---- exp: x = n·ln2 + r, |r| ≤ ln2/2; e^r by a degree-7 polynomial; times 2^n ----

#define EXP_HI 89.0f      // e^89 overflows f32: +inf
#define EXP_LO -104.0f    // e^-104 is below the smallest f32 subnormal: 0
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f  // ln 2 = LN2_HI + LN2_LO, LN2_HI with 9 bits (n·LN2_HI is exact)
#define LN2_LO -2.12194440e-4f
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

// 2^n for n in [-150, 128] as two normal powers (2^n alone may be out of range), so that
// y·2^n over- and underflows (to subnormals) as it should.
static inline float exp_scalar(float x) {
  if (x != x) return x;
  if (x > EXP_HI) x = EXP_HI;
  if (x < EXP_LO) x = EXP_LO;
  const float n = (x * LOG2E + 12582912.0f) - 12582912.0f;  // round half to even
  const float r = (x - n * LN2_HI) - n * LN2_LO;
  float p = EXP_P0;
  p = p * r + EXP_P1;
  p = p * r + EXP_P2;
  p = p * r + EXP_P3;
  p = p * r + EXP_P4;
  p = p * r + EXP_P5;
  const float y = (p * (r * r) + r) + 1.0f;
  const int ni = (int)n;
  const int n1 = ni / 2;
  const int n2 = ni - n1;
  return y * herd_f32_from_bits((uint32_t)(n1 + 127) << 23) * herd_f32_from_bits((uint32_t)(n2 + 127) << 23);
}

static inline float round_f16(float x) {
  return herd_f16_to_f32(herd_f32_to_f16(x));
}

// ---- the kernels of one instruction-set path ----

typedef struct {
  // Σ q[i]·k[i] for i < d; k an f32 row (dot) or an f16 row (dot_h).
  float (*dot)(const float *q, const void *k, int d);
  float (*dot_h)(const float *q, const void *k, int d);
  // out[i] = Σ_t p[t]·v[t·stride + i] for i < d, t < len; f32 rows (vsum) or f16 (vsum_h).
  void (*vsum)(float *out, const float *p, const void *v, size_t stride, int len, int d);
  void (*vsum_h)(float *out, const float *p, const void *v, size_t stride, int len, int d);
  // x[0..n) ← softmax(x[0..n)), each probability rounded to f16 when half.
  void (*softmax)(float *x, int n, int half);
  // out[i] = gate[i] / (1 + e^-gate[i]) · up[i].
  void (*swiglu)(float *out, const float *gate, const float *up, size_t n);
} ops_kernels;

// Each path writes dot_<isa> and vsum_<isa> once, for f32 and f16 caches alike (half, a
// constant in each instance, picks the load); this makes the f32 and f16 instances and the
// path's table.
#define OPS_KERNELS(isa)                                                                        \
  static float dot_f32_##isa(const float *q, const void *k, int d) { return dot_##isa(q, k, d, 0); } \
  static float dot_f16_##isa(const float *q, const void *k, int d) { return dot_##isa(q, k, d, 1); } \
  static void vsum_f32_##isa(float *out, const float *p, const void *v, size_t stride, int len, int d) { \
    vsum_##isa(out, p, v, stride, len, d, 0);                                                   \
  }                                                                                             \
  static void vsum_f16_##isa(float *out, const float *p, const void *v, size_t stride, int len, int d) { \
    vsum_##isa(out, p, v, stride, len, d, 1);                                                   \
  }                                                                                             \
  static const ops_kernels kernels_##isa = {                                                    \
      dot_f32_##isa, dot_f16_##isa, vsum_f32_##isa, vsum_f16_##isa, softmax_##isa, swiglu_##isa, \
  };

// Element i of an f32 (half = 0) or f16 (half = 1) row.
static inline float at(const void *p, size_t i, int half) {
  return half ? herd_f16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

// ---- scalar; also the row tails of the AVX2 and NEON kernels ----

// s + Σ q[i]·k[i] for i in [i, d), in order.
static inline float dot_from(float s, const float *q, const void *k, int i, int d, int half) {
  for (; i < d; i++) s += q[i] * at(k, (size_t)i, half);
  return s;
}

// Columns [i, d) of vsum, one column at a time.
static inline void vsum_columns(float *out, const float *p, const void *v, size_t stride, int len, int i, int d, int half) {
  for (; i < d; i++) {
    float s = 0.0f;
    for (int t = 0; t < len; t++) s += p[t] * at(v, (size_t)t * stride + (size_t)i, half);
    out[i] = s;
  }
}

static HERD_INLINE float dot_scalar(const float *q, const void *k, int d, const int half) {
  return dot_from(0.0f, q, k, 0, d, half);
}

// Row by row (each column's sum is still over t in order, as in vsum_columns).
static HERD_INLINE void vsum_scalar(float *out, const float *p, const void *v, size_t stride, int len, int d, const int half) {
  for (int i = 0; i < d; i++) out[i] = 0.0f;
  for (int t = 0; t < len; t++) {
    const size_t o = (size_t)t * stride;
    for (int i = 0; i < d; i++) out[i] += p[t] * at(v, o + i, half);
  }
}

static void softmax_scalar(float *x, int n, int half) {
  float max = -INFINITY;
  for (int i = 0; i < n; i++) if (x[i] > max) max = x[i];
  float sum = 0.0f;
  for (int i = 0; i < n; i++) sum += x[i] = exp_scalar(x[i] - max);
  for (int i = 0; i < n; i++) x[i] = half ? round_f16(x[i] / sum) : x[i] / sum;
}

static inline float silu_times(float g, float u) {
  return g / (1.0f + exp_scalar(-g)) * u;
}

static void swiglu_scalar(float *out, const float *gate, const float *up, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = silu_times(gate[i], up[i]);
}

OPS_KERNELS(scalar)

// ---- AVX2 and NEON: the same loops over each path's vectors, row tails in scalar code ----
//
// Each path defines `vec` (LANES floats), DOT_ACCS (the accumulators of its dot, which fix
// its summation order) and the few operations below; the kernels after them are written
// once. A build compiles at most one of the two.

#if defined(HERD_AVX2)

typedef __m256 vec;
#define LANES 8
#define DOT_ACCS 2

static inline vec v_set1(float a) { return _mm256_set1_ps(a); }
static inline vec v_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void v_store(float *p, vec v) { _mm256_storeu_ps(p, v); }
// Lanes i … i+7 of an f32 (half = 0) or f16 row.
static inline vec v_row(const void *p, size_t i, int half) {
  if (half) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
  return _mm256_loadu_ps((const float *)p + i);
}
static inline vec v_add(vec a, vec b) { return _mm256_add_ps(a, b); }
static inline vec v_sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
static inline vec v_mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
static inline vec v_div(vec a, vec b) { return _mm256_div_ps(a, b); }
// min/max return their second operand when one is NaN: NaN passes through the clamp in v_exp.
static inline vec v_min(vec a, vec b) { return _mm256_min_ps(a, b); }
static inline vec v_max(vec a, vec b) { return _mm256_max_ps(a, b); }
static inline vec v_neg(vec a) { return _mm256_xor_ps(a, _mm256_set1_ps(-0.0f)); }
static inline vec v_fma(vec c, vec a, vec b) { return _mm256_fmadd_ps(a, b, c); }   // c + a·b, rounded once
static inline vec v_fms(vec c, vec a, vec b) { return _mm256_fnmadd_ps(a, b, c); }  // c - a·b, rounded once
static inline vec v_round(vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vec v_round_f16(vec a) {
  return _mm256_cvtph_ps(_mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
static inline float v_hsum(vec v) { return herd_hsum_f32x8(v); }
static inline float v_hmax(vec v) {
  __m128 r = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  r = _mm_max_ps(r, _mm_movehl_ps(r, r));
  return _mm_cvtss_f32(_mm_max_ss(r, _mm_movehdup_ps(r)));
}
// 2^e for integer lanes e in the normal range.
static inline vec pow2i(__m256i e) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23));
}
// y·2^n (n integral, in [-150, 128]) as y·2^(n/2)·2^(n - n/2).
static inline vec v_ldexp(vec y, vec n) {
  const __m256i ni = _mm256_cvtps_epi32(n), n1 = _mm256_srai_epi32(ni, 1);
  return _mm256_mul_ps(_mm256_mul_ps(y, pow2i(n1)), pow2i(_mm256_sub_epi32(ni, n1)));
}

#elif defined(HERD_NEON)

typedef float32x4_t vec;
#define LANES 4
#define DOT_ACCS 4

static inline vec v_set1(float a) { return vdupq_n_f32(a); }
static inline vec v_load(const float *p) { return vld1q_f32(p); }
static inline void v_store(float *p, vec v) { vst1q_f32(p, v); }
static inline vec v_row(const void *p, size_t i, int half) {
  if (half) return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)p + i)));
  return vld1q_f32((const float *)p + i);
}
static inline vec v_add(vec a, vec b) { return vaddq_f32(a, b); }
static inline vec v_sub(vec a, vec b) { return vsubq_f32(a, b); }
static inline vec v_mul(vec a, vec b) { return vmulq_f32(a, b); }
static inline vec v_div(vec a, vec b) { return vdivq_f32(a, b); }
static inline vec v_min(vec a, vec b) { return vminq_f32(a, b); }  // NaN stays NaN
static inline vec v_max(vec a, vec b) { return vmaxq_f32(a, b); }
static inline vec v_neg(vec a) { return vnegq_f32(a); }
static inline vec v_fma(vec c, vec a, vec b) { return vfmaq_f32(c, a, b); }
static inline vec v_fms(vec c, vec a, vec b) { return vfmsq_f32(c, a, b); }
static inline vec v_round(vec a) { return vrndnq_f32(a); }
static inline vec v_round_f16(vec a) { return vcvt_f32_f16(vcvt_f16_f32(a)); }
static inline float v_hsum(vec v) { return vaddvq_f32(v); }
static inline float v_hmax(vec v) { return vmaxvq_f32(v); }
static inline vec pow2i(int32x4_t e) { return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(e, vdupq_n_s32(127)), 23)); }
static inline vec v_ldexp(vec y, vec n) {
  const int32x4_t ni = vcvtq_s32_f32(n), n1 = vshrq_n_s32(ni, 1);
  return vmulq_f32(vmulq_f32(y, pow2i(n1)), pow2i(vsubq_s32(ni, n1)));
}

#endif

#if defined(HERD_AVX2) || defined(HERD_NEON)

static inline vec v_exp(vec x) {
  x = v_max(v_set1(EXP_LO), v_min(v_set1(EXP_HI), x));
  const vec n = v_round(v_mul(x, v_set1(LOG2E)));
  const vec r = v_fms(v_fms(x, n, v_set1(LN2_HI)), n, v_set1(LN2_LO));
  vec p = v_set1(EXP_P0);
  p = v_fma(v_set1(EXP_P1), p, r);
  p = v_fma(v_set1(EXP_P2), p, r);
  p = v_fma(v_set1(EXP_P3), p, r);
  p = v_fma(v_set1(EXP_P4), p, r);
  p = v_fma(v_set1(EXP_P5), p, r);
  return v_ldexp(v_add(v_fma(r, p, v_mul(r, r)), v_set1(1.0f)), n);
}

// DOT_ACCS accumulators over DOT_ACCS vectors per step, then one vector per step into the
// first; summed a0 + a1, or (a0 + a1) + (a2 + a3).
static HERD_INLINE float dot_vec(const float *q, const void *k, int d, const int half) {
  vec a[DOT_ACCS];
  for (int u = 0; u < DOT_ACCS; u++) a[u] = v_set1(0.0f);
  int i = 0;
  for (; i + DOT_ACCS * LANES <= d; i += DOT_ACCS * LANES) {
    for (int u = 0; u < DOT_ACCS; u++) a[u] = v_fma(a[u], v_load(q + i + u * LANES), v_row(k, (size_t)(i + u * LANES), half));
  }
  for (; i + LANES <= d; i += LANES) a[0] = v_fma(a[0], v_load(q + i), v_row(k, (size_t)i, half));
  vec sum = v_add(a[0], a[1]);
#if DOT_ACCS == 4
  sum = v_add(sum, v_add(a[2], a[3]));
#endif
  return dot_from(v_hsum(sum), q, k, i, d, half);
}

// Columns [i, i + regs·LANES) of vsum, their sums in registers over all positions.
static HERD_INLINE void vsum_block(float *out, const float *p, const void *v, size_t stride, int len, int i, const int regs,
                                   const int half) {
  vec a[4];
  for (int r = 0; r < regs; r++) a[r] = v_set1(0.0f);
  for (int t = 0; t < len; t++) {
    const vec pt = v_set1(p[t]);
    const size_t o = (size_t)t * stride + (size_t)i;
    for (int r = 0; r < regs; r++) a[r] = v_fma(a[r], pt, v_row(v, o + (size_t)(r * LANES), half));
  }
  for (int r = 0; r < regs; r++) v_store(out + i + r * LANES, a[r]);
}

// Columns in blocks of four, two and one vectors; the last d % LANES in scalar code. Each
// column's sum runs over t in order whichever block it falls in.
static HERD_INLINE void vsum_vec(float *out, const float *p, const void *v, size_t stride, int len, int d, const int half) {
  int i = 0;
  for (; i + 4 * LANES <= d; i += 4 * LANES) vsum_block(out, p, v, stride, len, i, 4, half);
  if (i + 2 * LANES <= d) {
    vsum_block(out, p, v, stride, len, i, 2, half);
    i += 2 * LANES;
  }
  for (; i + LANES <= d; i += LANES) vsum_block(out, p, v, stride, len, i, 1, half);
  vsum_columns(out, p, v, stride, len, i, d, half);
}

static void softmax_vec(float *x, int n, int half) {
  int i = 0;
  vec vm = v_set1(-INFINITY);
  for (; i + LANES <= n; i += LANES) vm = v_max(vm, v_load(x + i));
  float max = v_hmax(vm);
  for (; i < n; i++) if (x[i] > max) max = x[i];
  vm = v_set1(max);
  vec vs = v_set1(0.0f);
  for (i = 0; i + LANES <= n; i += LANES) {
    const vec e = v_exp(v_sub(v_load(x + i), vm));
    v_store(x + i, e);
    vs = v_add(vs, e);
  }
  float sum = v_hsum(vs);
  for (; i < n; i++) sum += x[i] = exp_scalar(x[i] - max);
  vs = v_set1(sum);
  for (i = 0; i + LANES <= n; i += LANES) {
    vec pr = v_div(v_load(x + i), vs);
    if (half) pr = v_round_f16(pr);
    v_store(x + i, pr);
  }
  for (; i < n; i++) x[i] = half ? round_f16(x[i] / sum) : x[i] / sum;
}

static void swiglu_vec(float *out, const float *gate, const float *up, size_t n) {
  const vec one = v_set1(1.0f);
  size_t i = 0;
  for (; i + LANES <= n; i += LANES) {
    const vec g = v_load(gate + i);
    v_store(out + i, v_mul(v_div(g, v_add(one, v_exp(v_neg(g)))), v_load(up + i)));
  }
  for (; i < n; i++) out[i] = silu_times(gate[i], up[i]);
}

OPS_KERNELS(vec)

#endif

// ---- AVX-512: 16 lanes; tails by masked loads and stores ----

#if defined(HERD_AVX512)

static inline __mmask16 mask16(int left) {
  return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

// The lanes of m from element i of an f32 (half = 0) or f16 row; zeros elsewhere.
static inline __m512 row16(const void *p, size_t i, __mmask16 m, int half) {
  if (half) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i));
  return _mm512_maskz_loadu_ps(m, (const float *)p + i);
}

static inline __m512 exp_avx512(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(EXP_LO), _mm512_min_ps(_mm512_set1_ps(EXP_HI), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
  __m512 p = _mm512_set1_ps(EXP_P0);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);  // y·2^n, over- and underflowing as it should
}

static HERD_INLINE float dot_avx512(const float *q, const void *k, int d, const int half) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;
  int i = 0;
  for (; i + 32 <= d; i += 32) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), row16(k, (size_t)i, 0xffff, half), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), row16(k, (size_t)i + 16, 0xffff, half), a1);
  }
  for (; i < d; i += 16) {
    const __mmask16 m = mask16(d - i);
    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), row16(k, (size_t)i, m, half), a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

// Columns in blocks of 64 (four registers), then one register (masked) at a time.
static HERD_INLINE void vsum_avx512(float *out, const float *p, const void *v, size_t stride, int len, int d, const int half) {
  int i = 0;
  for (; i + 64 <= d; i += 64) {
    __m512 a[4];
    for (int r = 0; r < 4; r++) a[r] = _mm512_setzero_ps();
    for (int t = 0; t < len; t++) {
      const __m512 pt = _mm512_set1_ps(p[t]);
      const size_t o = (size_t)t * stride + (size_t)i;
      for (int r = 0; r < 4; r++) a[r] = _mm512_fmadd_ps(pt, row16(v, o + (size_t)(16 * r), 0xffff, half), a[r]);
    }
    for (int r = 0; r < 4; r++) _mm512_storeu_ps(out + i + 16 * r, a[r]);
  }
  for (; i < d; i += 16) {
    const __mmask16 m = mask16(d - i);
    __m512 a0 = _mm512_setzero_ps();
    for (int t = 0; t < len; t++) a0 = _mm512_fmadd_ps(_mm512_set1_ps(p[t]), row16(v, (size_t)t * stride + (size_t)i, m, half), a0);
    _mm512_mask_storeu_ps(out + i, m, a0);
  }
}

static void softmax_avx512(float *x, int n, int half) {
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  __m512 vm = ninf;
  for (int i = 0; i < n; i += 16) vm = _mm512_max_ps(vm, _mm512_mask_loadu_ps(ninf, mask16(n - i), x + i));
  const float max = _mm512_reduce_max_ps(vm);
  vm = _mm512_set1_ps(max);
  __m512 vs = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16) {
    const __mmask16 m = mask16(n - i);
    const __m512 e = _mm512_maskz_mov_ps(m, exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm)));
    _mm512_mask_storeu_ps(x + i, m, e);
    vs = _mm512_add_ps(vs, e);
  }
  const __m512 sum = _mm512_set1_ps(_mm512_reduce_add_ps(vs));
  for (int i = 0; i < n; i += 16) {
    const __mmask16 m = mask16(n - i);
    __m512 pr = _mm512_div_ps(_mm512_maskz_loadu_ps(m, x + i), sum);
    if (half) pr = _mm512_cvtph_ps(_mm512_cvtps_ph(pr, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm512_mask_storeu_ps(x + i, m, pr);
  }
}

static void swiglu_avx512(float *out, const float *gate, const float *up, size_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = mask16(n - i > 16 ? 16 : (int)(n - i));
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_maskz_loadu_ps(m, up + i)));
  }
}

OPS_KERNELS(avx512)

#endif

// The kernels of the highest path at or below `isa` that this file has.
static const ops_kernels *kernels_for(int isa) {
#if defined(HERD_AVX512)
  if (isa == ISA_AVX512) return &kernels_avx512;
#endif
#if defined(HERD_AVX2)
  if (isa == ISA_AVX2 || isa == ISA_AVX512) return &kernels_vec;
#elif defined(HERD_NEON)
  if (isa == ISA_NEON || isa == ISA_NEON_DOTPROD) return &kernels_vec;
#endif
  (void)isa;
  return &kernels_scalar;
}

// ---- per-thread scratch ----

// A block of `cap` floats after a 64-byte header holding cap; the thread's current block is
// its value of scratch_key, freed by the key's destructor when the thread exits.
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_ok;

static void scratch_init(void) {
  scratch_ok = pthread_key_create(&scratch_key, free) == 0;
}

// The calling thread's scratch of at least `need` floats; NULL when out of memory.
static float *scratch(size_t need) {
  pthread_once(&scratch_once, scratch_init);
  if (!scratch_ok) return NULL;
  uint8_t *block = pthread_getspecific(scratch_key);
  if (block && *(size_t *)block >= need) return (float *)(block + 64);
  const size_t cap = (need + 4095) & ~(size_t)4095;
  void *grown = NULL;
  if (posix_memalign(&grown, 64, 64 + cap * sizeof(float)) != 0) return NULL;
  if (pthread_setspecific(scratch_key, grown) != 0) {
    free(grown);
    return NULL;
  }
  free(block);
  *(size_t *)grown = cap;
  return (float *)((uint8_t *)grown + 64);
}

// ---- attention ----

typedef struct {
  float (*dot)(const float *q, const void *k, int d);
  void (*vsum)(float *out, const float *p, const void *v, size_t stride, int len, int d);
  void (*softmax)(float *x, int n, int half);
  const void *keys, *values;  // (start + n) × kv_dim f32 or f16
  int half;
  float *q, *out;  // n × q_dim
  int d, start, n, group;
  size_t kv_dim, q_dim;
  int slice;   // query heads per unit
  int slices;  // units per KV head and token (group / slice)
  int per_token;  // units per token
  float scale;
  atomic_int failed;  // a thread could not grow its scratch
} attention;

static void attention_unit(void *ctx, int unit) {
  attention *a = ctx;
  const int token = a->n - 1 - unit / a->per_token;  // latest (longest) first
  const int r = unit % a->per_token;
  const int kv = r / a->slices;
  const int h0 = kv * a->group + (r % a->slices) * a->slice;  // first query head
  const int len = a->start + token + 1;
  const int d = a->d;
  float *att = scratch((size_t)a->slice * (size_t)len);
  if (!att) {
    atomic_store(&a->failed, 1);
    return;
  }
  float *q = a->q + (size_t)token * a->q_dim + (size_t)h0 * d;
  float *out = a->out + (size_t)token * a->q_dim + (size_t)h0 * d;
  const size_t elem = a->half ? 2 : 4;
  const uint8_t *keys = (const uint8_t *)a->keys + (size_t)kv * d * elem;
  const uint8_t *values = (const uint8_t *)a->values + (size_t)kv * d * elem;
  const size_t row = a->kv_dim * elem;

  // q rounded to f16 as the js reference (and llama.cpp's f16 products) round it
  if (a->half) for (int i = 0; i < a->slice * d; i++) q[i] = round_f16(q[i]);

  // scores of every head of the slice against each cached key
  for (int t = 0; t < len; t++) {
    const void *k = keys + (size_t)t * row;
    for (int h = 0; h < a->slice; h++) att[(size_t)h * len + t] = a->dot(q + (size_t)h * d, k, d) * a->scale;
  }

  // softmax per head, then the weighted sum of the cached values
  for (int h = 0; h < a->slice; h++) {
    float *p = att + (size_t)h * len;
    a->softmax(p, len, a->half);
    a->vsum(out + (size_t)h * d, p, values, a->kv_dim, len, d);
  }
}

// The checks keep memory safe; backend.ts checks the same first and words the errors.
static napi_value js_attend(napi_env env, napi_callback_info info) {
  size_t argc = 11;
  napi_value argv[11];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 11) THROW("attend takes 11 arguments");
  int isa;
  herd_pool *pool = herd_backend_pool(env, argv[0], &isa);
  if (!pool) THROW("not a live backend handle");
  int32_t n_heads, n_kv, d, start, n, parallel;
  CHECK(napi_get_value_int32(env, argv[3], &n_heads));
  CHECK(napi_get_value_int32(env, argv[4], &n_kv));
  CHECK(napi_get_value_int32(env, argv[5], &d));
  CHECK(napi_get_value_int32(env, argv[6], &start));
  CHECK(napi_get_value_int32(env, argv[7], &n));
  CHECK(napi_get_value_int32(env, argv[10], &parallel));
  view k, v, q, out;
  if (!typed(env, argv[1], &k) || !typed(env, argv[2], &v) || k.type != v.type ||
      (k.type != napi_float32_array && k.type != napi_uint16_array)) {
    THROW("attend: keys and values must both be Float32Array or both Uint16Array");
  }
  if (!typed(env, argv[8], &q) || q.type != napi_float32_array) THROW("attend: q must be a Float32Array");
  if (!typed(env, argv[9], &out) || out.type != napi_float32_array) THROW("attend: out must be a Float32Array");
  if (n_heads < 1 || n_kv < 1 || n_heads % n_kv != 0 || d < 2 || d % 2 != 0 || start < 0 || n < 1) {
    THROW("attend: bad shape (%d heads, %d KV heads, head size %d, start %d, %d tokens)", n_heads, n_kv, d, start, n);
  }
  // Sizes in 64 bits: on a 32-bit build a product of 32-bit sizes could wrap.
  const uint64_t kv_dim = (uint64_t)n_kv * (uint64_t)d;
  const uint64_t q_dim = (uint64_t)n_heads * (uint64_t)d;
  const uint64_t cache = ((uint64_t)start + (uint64_t)n) * kv_dim;
  if ((uint64_t)k.length < cache || (uint64_t)v.length < cache) {
    THROW("attend: the cache holds %zu and %zu values, %llu needed", k.length, v.length, (unsigned long long)cache);
  }
  if ((uint64_t)q.length < (uint64_t)n * q_dim || (uint64_t)out.length < (uint64_t)n * q_dim) {
    THROW("attend: q or out shorter than %llu values", (unsigned long long)((uint64_t)n * q_dim));
  }
  if ((uint64_t)start + (uint64_t)n > (uint64_t)INT32_MAX / (uint64_t)n_heads) THROW("attend: context too long");

  const ops_kernels *kern = kernels_for(isa);
  attention a;
  a.half = k.type == napi_uint16_array;
  a.dot = a.half ? kern->dot_h : kern->dot;
  a.vsum = a.half ? kern->vsum_h : kern->vsum;
  a.softmax = kern->softmax;
  a.keys = k.data;
  a.values = v.data;
  a.q = q.data;
  a.out = out.data;
  a.d = d;
  a.start = start;
  a.n = n;
  a.group = n_heads / n_kv;
  a.kv_dim = (size_t)kv_dim;
  a.q_dim = (size_t)q_dim;
  a.scale = (float)(1.0 / sqrt((double)d));
  atomic_init(&a.failed, 0);
  // Enough units for every thread: a decode step over few KV heads cuts the groups.
  a.slices = 1;
  const int64_t want = 2 * (int64_t)herd_pool_threads(pool);
  if (parallel) {
    while ((int64_t)n * n_kv * a.slices < want && a.slices < a.group) {
      int s = a.slices + 1;
      while (a.group % s != 0) s++;
      a.slices = s;
    }
  }
  a.slice = a.group / a.slices;
  a.per_token = n_kv * a.slices;
  const int64_t units = (int64_t)n * a.per_token;
  if (units > INT32_MAX) THROW("attend: too many heads × tokens");
  herd_pool_run(pool, attention_unit, &a, (int)units, parallel);
  if (atomic_load(&a.failed)) THROW("attend: out of memory for the attention scores (%d × %d floats)", a.slice, start + n);
  return NULL;
}

// ---- SwiGLU ----

#define SWIGLU_CHUNK 16384  // values per chunk: decode's few thousand stay on the calling thread

typedef struct {
  void (*fn)(float *out, const float *gate, const float *up, size_t n);
  float *out;
  const float *gate, *up;
  size_t n;
} swiglu_job;

static void swiglu_chunk(void *ctx, int chunk) {
  swiglu_job *j = ctx;
  const size_t i = (size_t)chunk * SWIGLU_CHUNK;
  const size_t m = j->n - i < SWIGLU_CHUNK ? j->n - i : SWIGLU_CHUNK;
  j->fn(j->out + i, j->gate + i, j->up + i, m);
}

static napi_value js_swiglu(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 6) THROW("swiglu takes 6 arguments");
  int isa;
  herd_pool *pool = herd_backend_pool(env, argv[0], &isa);
  if (!pool) THROW("not a live backend handle");
  view out, gate, up;
  if (!typed(env, argv[1], &out) || !typed(env, argv[2], &gate) || !typed(env, argv[3], &up) || out.type != napi_float32_array ||
      gate.type != napi_float32_array || up.type != napi_float32_array) {
    THROW("swiglu: out, gate and up must be Float32Arrays");
  }
  int32_t n, parallel;
  CHECK(napi_get_value_int32(env, argv[4], &n));
  CHECK(napi_get_value_int32(env, argv[5], &parallel));
  if (n < 0 || out.length < (size_t)n || gate.length < (size_t)n || up.length < (size_t)n) THROW("swiglu: arrays shorter than %d values", n);
  swiglu_job j = {kernels_for(isa)->swiglu, out.data, gate.data, up.data, (size_t)n};
  herd_pool_run(pool, swiglu_chunk, &j, (int)(((size_t)n + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK), parallel);
  return NULL;
}

napi_status herd_register_ops(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"attend", NULL, js_attend, NULL, NULL, NULL, napi_default, NULL},
      {"swiglu", NULL, js_swiglu, NULL, NULL, NULL, napi_default, NULL},
  };
  return napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
}
