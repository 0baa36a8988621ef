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

static inline float at_f32(const void *p, size_t i) { return ((const float *)p)[i]; }
static inline float at_f16(const void *p, size_t i) { return herd_f16_to_f32(((const uint16_t *)p)[i]); }

// ---- scalar ----

#define DOT_SCALAR(NAME, AT)                               \
  static float NAME(const float *q, const void *k, int d) { \
    float s = 0.0f;                                        \
    for (int i = 0; i < d; i++) s += q[i] * AT(k, i);      \
    return s;                                              \
  }

#define VSUM_SCALAR(NAME, AT)                                                                  \
  static void NAME(float *out, const float *p, const void *v, size_t stride, int len, int d) { \
    for (int i = 0; i < d; i++) out[i] = 0.0f;                                                 \
    for (int t = 0; t < len; t++) {                                                            \
      const size_t o = (size_t)t * stride;                                                     \
      for (int i = 0; i < d; i++) out[i] += p[t] * AT(v, o + i);                               \
    }                                                                                          \
  }

DOT_SCALAR(dot_f32_scalar, at_f32)
DOT_SCALAR(dot_f16_scalar, at_f16)
VSUM_SCALAR(vsum_f32_scalar, at_f32)
VSUM_SCALAR(vsum_f16_scalar, at_f16)

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

static const ops_kernels kernels_scalar = {
    dot_f32_scalar, dot_f16_scalar, vsum_f32_scalar, vsum_f16_scalar, softmax_scalar, swiglu_scalar,
};

// ---- AVX2 (with FMA and F16C): 8 lanes; row tails (headDim % 8) in scalar code ----

#if defined(HERD_AVX2)

static inline float hmax8(__m256 v) {
  __m128 r = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  r = _mm_max_ps(r, _mm_movehl_ps(r, r));
  r = _mm_max_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}

static inline __m256 ld8_f32(const void *p, size_t i) { return _mm256_loadu_ps((const float *)p + i); }
static inline __m256 ld8_f16(const void *p, size_t i) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
}

static inline __m256 exp_avx2(__m256 x) {
  // min/max return their second operand when one is NaN: NaN passes through.
  x = _mm256_max_ps(_mm256_set1_ps(EXP_LO), _mm256_min_ps(_mm256_set1_ps(EXP_HI), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
  __m256 p = _mm256_set1_ps(EXP_P0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(y, s1), s2);
}

#define DOT_AVX2(NAME, LD, AT)                                                             \
  static float NAME(const float *q, const void *k, int d) {                                \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;                                              \
    int i = 0;                                                                             \
    for (; i + 16 <= d; i += 16) {                                                         \
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), LD(k, (size_t)i), a0);                  \
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), LD(k, (size_t)i + 8), a1);          \
    }                                                                                      \
    if (i + 8 <= d) {                                                                      \
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), LD(k, (size_t)i), a0);                  \
      i += 8;                                                                              \
    }                                                                                      \
    float s = herd_hsum_f32x8(_mm256_add_ps(a0, a1));                                                \
    for (; i < d; i++) s += q[i] * AT(k, (size_t)i);                                       \
    return s;                                                                              \
  }

// Columns in blocks of 32, 16 and 8, each block's sums in registers over all positions;
// the last d % 8 columns in scalar code.
#define VSUM_AVX2(NAME, LD, AT)                                                                \
  static void NAME(float *out, const float *p, const void *v, size_t stride, int len, int d) { \
    int i = 0;                                                                                 \
    for (; i + 32 <= d; i += 32) {                                                             \
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                              \
      for (int t = 0; t < len; t++) {                                                          \
        const __m256 pt = _mm256_set1_ps(p[t]);                                                \
        const size_t o = (size_t)t * stride + (size_t)i;                                       \
        a0 = _mm256_fmadd_ps(pt, LD(v, o), a0);                                                \
        a1 = _mm256_fmadd_ps(pt, LD(v, o + 8), a1);                                            \
        a2 = _mm256_fmadd_ps(pt, LD(v, o + 16), a2);                                           \
        a3 = _mm256_fmadd_ps(pt, LD(v, o + 24), a3);                                           \
      }                                                                                        \
      _mm256_storeu_ps(out + i, a0);                                                           \
      _mm256_storeu_ps(out + i + 8, a1);                                                       \
      _mm256_storeu_ps(out + i + 16, a2);                                                      \
      _mm256_storeu_ps(out + i + 24, a3);                                                      \
    }                                                                                          \
    if (i + 16 <= d) {                                                                         \
      __m256 a0 = _mm256_setzero_ps(), a1 = a0;                                                \
      for (int t = 0; t < len; t++) {                                                          \
        const __m256 pt = _mm256_set1_ps(p[t]);                                                \
        const size_t o = (size_t)t * stride + (size_t)i;                                       \
        a0 = _mm256_fmadd_ps(pt, LD(v, o), a0);                                                \
        a1 = _mm256_fmadd_ps(pt, LD(v, o + 8), a1);                                            \
      }                                                                                        \
      _mm256_storeu_ps(out + i, a0);                                                           \
      _mm256_storeu_ps(out + i + 8, a1);                                                       \
      i += 16;                                                                                 \
    }                                                                                          \
    if (i + 8 <= d) {                                                                          \
      __m256 a0 = _mm256_setzero_ps();                                                         \
      for (int t = 0; t < len; t++) {                                                          \
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[t]), LD(v, (size_t)t * stride + (size_t)i), a0); \
      }                                                                                        \
      _mm256_storeu_ps(out + i, a0);                                                           \
      i += 8;                                                                                  \
    }                                                                                          \
    for (; i < d; i++) {                                                                       \
      float s = 0.0f;                                                                          \
      for (int t = 0; t < len; t++) s += p[t] * AT(v, (size_t)t * stride + (size_t)i);         \
      out[i] = s;                                                                              \
    }                                                                                          \
  }

DOT_AVX2(dot_f32_avx2, ld8_f32, at_f32)
DOT_AVX2(dot_f16_avx2, ld8_f16, at_f16)
VSUM_AVX2(vsum_f32_avx2, ld8_f32, at_f32)
VSUM_AVX2(vsum_f16_avx2, ld8_f16, at_f16)

static void softmax_avx2(float *x, int n, int half) {
  int i = 0;
  __m256 vm = _mm256_set1_ps(-INFINITY);
  for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
  float max = hmax8(vm);
  for (; i < n; i++) if (x[i] > max) max = x[i];
  vm = _mm256_set1_ps(max);
  __m256 vs = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    vs = _mm256_add_ps(vs, e);
  }
  float sum = herd_hsum_f32x8(vs);
  for (; i < n; i++) sum += x[i] = exp_scalar(x[i] - max);
  vs = _mm256_set1_ps(sum);
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 pr = _mm256_div_ps(_mm256_loadu_ps(x + i), vs);
    if (half) pr = _mm256_cvtph_ps(_mm256_cvtps_ph(pr, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm256_storeu_ps(x + i, pr);
  }
  for (; i < n; i++) x[i] = half ? round_f16(x[i] / sum) : x[i] / sum;
}

static void swiglu_avx2(float *out, const float *gate, const float *up, size_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp_avx2(_mm256_xor_ps(g, sign));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
  }
  for (; i < n; i++) out[i] = silu_times(gate[i], up[i]);
}

static const ops_kernels kernels_avx2 = {
    dot_f32_avx2, dot_f16_avx2, vsum_f32_avx2, vsum_f16_avx2, softmax_avx2, swiglu_avx2,
};

#endif

// ---- AVX-512: 16 lanes; tails by masked loads and stores ----

#if defined(HERD_AVX512)

static inline __mmask16 mask16(int left) {
  return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

static inline __m512 ld16_f32(const void *p, size_t i, __mmask16 m) { return _mm512_maskz_loadu_ps(m, (const float *)p + i); }
static inline __m512 ld16_f16(const void *p, size_t i, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i));
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

#define DOT_AVX512(NAME, LD)                                                               \
  static float NAME(const float *q, const void *k, int d) {                                \
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;                                              \
    int i = 0;                                                                             \
    for (; i + 32 <= d; i += 32) {                                                         \
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), LD(k, (size_t)i, 0xffff), a0);          \
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), LD(k, (size_t)i + 16, 0xffff), a1); \
    }                                                                                      \
    for (; i < d; i += 16) {                                                               \
      const __mmask16 m = mask16(d - i);                                                   \
      a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), LD(k, (size_t)i, m), a0);      \
    }                                                                                      \
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));                                    \
  }

// Columns in blocks of 64 (four registers), then one register (masked) at a time.
#define VSUM_AVX512(NAME, LD)                                                                  \
  static void NAME(float *out, const float *p, const void *v, size_t stride, int len, int d) { \
    int i = 0;                                                                                 \
    for (; i + 64 <= d; i += 64) {                                                             \
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                              \
      for (int t = 0; t < len; t++) {                                                          \
        const __m512 pt = _mm512_set1_ps(p[t]);                                                \
        const size_t o = (size_t)t * stride + (size_t)i;                                       \
        a0 = _mm512_fmadd_ps(pt, LD(v, o, 0xffff), a0);                                        \
        a1 = _mm512_fmadd_ps(pt, LD(v, o + 16, 0xffff), a1);                                   \
        a2 = _mm512_fmadd_ps(pt, LD(v, o + 32, 0xffff), a2);                                   \
        a3 = _mm512_fmadd_ps(pt, LD(v, o + 48, 0xffff), a3);                                   \
      }                                                                                        \
      _mm512_storeu_ps(out + i, a0);                                                           \
      _mm512_storeu_ps(out + i + 16, a1);                                                      \
      _mm512_storeu_ps(out + i + 32, a2);                                                      \
      _mm512_storeu_ps(out + i + 48, a3);                                                      \
    }                                                                                          \
    for (; i < d; i += 16) {                                                                   \
      const __mmask16 m = mask16(d - i);                                                       \
      __m512 a0 = _mm512_setzero_ps();                                                         \
      for (int t = 0; t < len; t++) {                                                          \
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(p[t]), LD(v, (size_t)t * stride + (size_t)i, m), a0); \
      }                                                                                        \
      _mm512_mask_storeu_ps(out + i, m, a0);                                                   \
    }                                                                                          \
  }

DOT_AVX512(dot_f32_avx512, ld16_f32)
DOT_AVX512(dot_f16_avx512, ld16_f16)
VSUM_AVX512(vsum_f32_avx512, ld16_f32)
VSUM_AVX512(vsum_f16_avx512, ld16_f16)

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

static const ops_kernels kernels_avx512 = {
    dot_f32_avx512, dot_f16_avx512, vsum_f32_avx512, vsum_f16_avx512, softmax_avx512, swiglu_avx512,
};

#endif

// ---- NEON (AArch64): 4 lanes; row tails (headDim % 4) in scalar code ----

#if defined(HERD_NEON)

static inline float32x4_t ld4_f32(const void *p, size_t i) { return vld1q_f32((const float *)p + i); }
static inline float32x4_t ld4_f16(const void *p, size_t i) {
  return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)p + i)));
}

static inline float32x4_t exp_neon(float32x4_t x) {
  x = vmaxq_f32(vminq_f32(x, vdupq_n_f32(EXP_HI)), vdupq_n_f32(EXP_LO));  // NaN stays NaN
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LOG2E)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
  r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
  float32x4_t p = vdupq_n_f32(EXP_P0);
  p = vfmaq_f32(vdupq_n_f32(EXP_P1), p, r);
  p = vfmaq_f32(vdupq_n_f32(EXP_P2), p, r);
  p = vfmaq_f32(vdupq_n_f32(EXP_P3), p, r);
  p = vfmaq_f32(vdupq_n_f32(EXP_P4), p, r);
  p = vfmaq_f32(vdupq_n_f32(EXP_P5), p, r);
  const float32x4_t y = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0f));
  const int32x4_t ni = vcvtq_s32_f32(n);
  const int32x4_t n1 = vshrq_n_s32(ni, 1);
  const int32x4_t n2 = vsubq_s32(ni, n1);
  const int32x4_t bias = vdupq_n_s32(127);
  const float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, bias), 23));
  const float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, bias), 23));
  return vmulq_f32(vmulq_f32(y, s1), s2);
}

#define DOT_NEON(NAME, LD, AT)                                                     \
  static float NAME(const float *q, const void *k, int d) {                        \
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;                 \
    int i = 0;                                                                     \
    for (; i + 16 <= d; i += 16) {                                                 \
      a0 = vfmaq_f32(a0, vld1q_f32(q + i), LD(k, (size_t)i));                      \
      a1 = vfmaq_f32(a1, vld1q_f32(q + i + 4), LD(k, (size_t)i + 4));              \
      a2 = vfmaq_f32(a2, vld1q_f32(q + i + 8), LD(k, (size_t)i + 8));              \
      a3 = vfmaq_f32(a3, vld1q_f32(q + i + 12), LD(k, (size_t)i + 12));            \
    }                                                                              \
    for (; i + 4 <= d; i += 4) a0 = vfmaq_f32(a0, vld1q_f32(q + i), LD(k, (size_t)i)); \
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));         \
    for (; i < d; i++) s += q[i] * AT(k, (size_t)i);                               \
    return s;                                                                      \
  }

#define VSUM_NEON(NAME, LD, AT)                                                                \
  static void NAME(float *out, const float *p, const void *v, size_t stride, int len, int d) { \
    int i = 0;                                                                                 \
    for (; i + 16 <= d; i += 16) {                                                             \
      float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;                           \
      for (int t = 0; t < len; t++) {                                                          \
        const float32x4_t pt = vdupq_n_f32(p[t]);                                              \
        const size_t o = (size_t)t * stride + (size_t)i;                                       \
        a0 = vfmaq_f32(a0, pt, LD(v, o));                                                      \
        a1 = vfmaq_f32(a1, pt, LD(v, o + 4));                                                  \
        a2 = vfmaq_f32(a2, pt, LD(v, o + 8));                                                  \
        a3 = vfmaq_f32(a3, pt, LD(v, o + 12));                                                 \
      }                                                                                        \
      vst1q_f32(out + i, a0);                                                                  \
      vst1q_f32(out + i + 4, a1);                                                              \
      vst1q_f32(out + i + 8, a2);                                                              \
      vst1q_f32(out + i + 12, a3);                                                             \
    }                                                                                          \
    for (; i + 4 <= d; i += 4) {                                                               \
      float32x4_t a0 = vdupq_n_f32(0.0f);                                                      \
      for (int t = 0; t < len; t++) a0 = vfmaq_f32(a0, vdupq_n_f32(p[t]), LD(v, (size_t)t * stride + (size_t)i)); \
      vst1q_f32(out + i, a0);                                                                  \
    }                                                                                          \
    for (; i < d; i++) {                                                                       \
      float s = 0.0f;                                                                          \
      for (int t = 0; t < len; t++) s += p[t] * AT(v, (size_t)t * stride + (size_t)i);         \
      out[i] = s;                                                                              \
    }                                                                                          \
  }

DOT_NEON(dot_f32_neon, ld4_f32, at_f32)
DOT_NEON(dot_f16_neon, ld4_f16, at_f16)
VSUM_NEON(vsum_f32_neon, ld4_f32, at_f32)
VSUM_NEON(vsum_f16_neon, ld4_f16, at_f16)

static void softmax_neon(float *x, int n, int half) {
  int i = 0;
  float32x4_t vm = vdupq_n_f32(-INFINITY);
  for (; i + 4 <= n; i += 4) vm = vmaxq_f32(vm, vld1q_f32(x + i));
  float max = vmaxvq_f32(vm);
  for (; i < n; i++) if (x[i] > max) max = x[i];
  vm = vdupq_n_f32(max);
  float32x4_t vs = vdupq_n_f32(0.0f);
  for (i = 0; i + 4 <= n; i += 4) {
    const float32x4_t e = exp_neon(vsubq_f32(vld1q_f32(x + i), vm));
    vst1q_f32(x + i, e);
    vs = vaddq_f32(vs, e);
  }
  float sum = vaddvq_f32(vs);
  for (; i < n; i++) sum += x[i] = exp_scalar(x[i] - max);
  vs = vdupq_n_f32(sum);
  for (i = 0; i + 4 <= n; i += 4) {
    float32x4_t pr = vdivq_f32(vld1q_f32(x + i), vs);
    if (half) pr = vcvt_f32_f16(vcvt_f16_f32(pr));
    vst1q_f32(x + i, pr);
  }
  for (; i < n; i++) x[i] = half ? round_f16(x[i] / sum) : x[i] / sum;
}

static void swiglu_neon(float *out, const float *gate, const float *up, size_t n) {
  const float32x4_t one = vdupq_n_f32(1.0f);
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t g = vld1q_f32(gate + i);
    const float32x4_t e = exp_neon(vnegq_f32(g));
    vst1q_f32(out + i, vmulq_f32(vdivq_f32(g, vaddq_f32(one, e)), vld1q_f32(up + i)));
  }
  for (; i < n; i++) out[i] = silu_times(gate[i], up[i]);
}

static const ops_kernels kernels_neon = {
    dot_f32_neon, dot_f16_neon, vsum_f32_neon, vsum_f16_neon, softmax_neon, swiglu_neon,
};

#endif

// The kernels of the highest path at or below `isa` that this file has.
static const ops_kernels *kernels_for(int isa) {
#if defined(HERD_AVX512)
  if (isa == ISA_AVX512) return &kernels_avx512;
#endif
#if defined(HERD_AVX2)
  if (isa == ISA_AVX2 || isa == ISA_AVX512) return &kernels_avx2;
#endif
#if defined(HERD_NEON)
  if (isa == ISA_NEON || isa == ISA_NEON_DOTPROD) return &kernels_neon;
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
