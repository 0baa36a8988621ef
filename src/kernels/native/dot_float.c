// Dot products of float weight rows (F32, F16, BF16) with an f32 activation. For F16 and
// BF16 the activation was rounded to the weight's precision when it was prepared (as
// llama.cpp does), so every product w·x is exact in f32 and only the summation rounds.
// Rows of these types may have any length: every SIMD loop has a scalar tail.

#include "herd.h"

// ---- scalar; also the tails of the SIMD loops ----

// One weight from its bytes (F16 is herd_half).
static inline float at_f32(const uint8_t *p) {
  float v;
  memcpy(&v, p, 4);
  return v;
}

static inline float at_bf16(const uint8_t *p) { return herd_bf16_to_f32(herd_le16(p)); }

float herd_dot_f32_scalar(int n, const uint8_t *w, const herd_act *x) {
  const float *xf = x->f;
  float sum = 0.0f;
  for (int i = 0; i < n; i++) sum += at_f32(w + 4 * i) * xf[i];
  return sum;
}

float herd_dot_f16_scalar(int n, const uint8_t *w, const herd_act *x) {
  const float *xf = x->f;
  float sum = 0.0f;
  for (int i = 0; i < n; i++) sum += herd_half(w + 2 * i) * xf[i];
  return sum;
}

float herd_dot_bf16_scalar(int n, const uint8_t *w, const herd_act *x) {
  const float *xf = x->f;
  float sum = 0.0f;
  for (int i = 0; i < n; i++) sum += at_bf16(w + 2 * i) * xf[i];
  return sum;
}

// ---- AVX2: 32 values per iteration in four accumulators (FMA latency × throughput) ----

#if defined(HERD_AVX2)

// bf16 → f32 is a 16-bit left shift: widen 8 halves to 32-bit lanes, then shift.
static inline __m256 load_bf16x8(const uint8_t *p) {
  const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}

#define HERD_FLOAT_AVX2(NAME, LOAD8, BYTES, TAIL)                                 \
  float NAME(int n, const uint8_t *w, const herd_act *x) {                        \
    const float *xf = x->f;                                                       \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                   \
    int i = 0;                                                                    \
    for (; i + 32 <= n; i += 32) {                                                \
      a0 = _mm256_fmadd_ps(LOAD8(w + (i + 0) * BYTES), _mm256_loadu_ps(xf + i + 0), a0);   \
      a1 = _mm256_fmadd_ps(LOAD8(w + (i + 8) * BYTES), _mm256_loadu_ps(xf + i + 8), a1);   \
      a2 = _mm256_fmadd_ps(LOAD8(w + (i + 16) * BYTES), _mm256_loadu_ps(xf + i + 16), a2); \
      a3 = _mm256_fmadd_ps(LOAD8(w + (i + 24) * BYTES), _mm256_loadu_ps(xf + i + 24), a3); \
    }                                                                             \
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(LOAD8(w + i * BYTES), _mm256_loadu_ps(xf + i), a0); \
    float sum = herd_hsum_f32x8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))); \
    for (; i < n; i++) sum += TAIL(w + i * BYTES) * xf[i];                        \
    return sum;                                                                   \
  }

static inline __m256 load_f32x8(const uint8_t *p) { return _mm256_loadu_ps((const float *)p); }
static inline __m256 load_f16x8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

HERD_FLOAT_AVX2(herd_dot_f32_avx2, load_f32x8, 4, at_f32)
HERD_FLOAT_AVX2(herd_dot_f16_avx2, load_f16x8, 2, herd_half)
HERD_FLOAT_AVX2(herd_dot_bf16_avx2, load_bf16x8, 2, at_bf16)

#endif

// ---- AVX-512: the same with 16-lane vectors, 64 values per iteration ----

#if defined(HERD_AVX512)

static inline __m512 load_f32x16(const uint8_t *p) { return _mm512_loadu_ps((const float *)p); }
static inline __m512 load_f16x16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline __m512 load_bf16x16(const uint8_t *p) {
  const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}

#define HERD_FLOAT_AVX512(NAME, LOAD16, BYTES, TAIL)                              \
  float NAME(int n, const uint8_t *w, const herd_act *x) {                        \
    const float *xf = x->f;                                                       \
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                   \
    int i = 0;                                                                    \
    for (; i + 64 <= n; i += 64) {                                                \
      a0 = _mm512_fmadd_ps(LOAD16(w + (i + 0) * BYTES), _mm512_loadu_ps(xf + i + 0), a0);   \
      a1 = _mm512_fmadd_ps(LOAD16(w + (i + 16) * BYTES), _mm512_loadu_ps(xf + i + 16), a1); \
      a2 = _mm512_fmadd_ps(LOAD16(w + (i + 32) * BYTES), _mm512_loadu_ps(xf + i + 32), a2); \
      a3 = _mm512_fmadd_ps(LOAD16(w + (i + 48) * BYTES), _mm512_loadu_ps(xf + i + 48), a3); \
    }                                                                             \
    for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(LOAD16(w + i * BYTES), _mm512_loadu_ps(xf + i), a0); \
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))); \
    for (; i < n; i++) sum += TAIL(w + i * BYTES) * xf[i];                        \
    return sum;                                                                   \
  }

HERD_FLOAT_AVX512(herd_dot_f32_avx512, load_f32x16, 4, at_f32)
HERD_FLOAT_AVX512(herd_dot_f16_avx512, load_f16x16, 2, herd_half)
HERD_FLOAT_AVX512(herd_dot_bf16_avx512, load_bf16x16, 2, at_bf16)

#endif

// ---- NEON: 16 values per iteration in four accumulators ----

#if defined(HERD_NEON)

static inline float32x4_t load_f32x4(const uint8_t *p) { return vld1q_f32((const float *)p); }
static inline float32x4_t load_f16x4(const uint8_t *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)p))); }
static inline float32x4_t load_bf16x4(const uint8_t *p) {
  return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)p), 16));
}

#define HERD_FLOAT_NEON(NAME, LOAD4, BYTES, TAIL)                                 \
  float NAME(int n, const uint8_t *w, const herd_act *x) {                        \
    const float *xf = x->f;                                                       \
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;                \
    int i = 0;                                                                    \
    for (; i + 16 <= n; i += 16) {                                                \
      a0 = vfmaq_f32(a0, LOAD4(w + (i + 0) * BYTES), vld1q_f32(xf + i + 0));      \
      a1 = vfmaq_f32(a1, LOAD4(w + (i + 4) * BYTES), vld1q_f32(xf + i + 4));      \
      a2 = vfmaq_f32(a2, LOAD4(w + (i + 8) * BYTES), vld1q_f32(xf + i + 8));      \
      a3 = vfmaq_f32(a3, LOAD4(w + (i + 12) * BYTES), vld1q_f32(xf + i + 12));    \
    }                                                                             \
    for (; i + 4 <= n; i += 4) a0 = vfmaq_f32(a0, LOAD4(w + i * BYTES), vld1q_f32(xf + i)); \
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));      \
    for (; i < n; i++) sum += TAIL(w + i * BYTES) * xf[i];                        \
    return sum;                                                                   \
  }

HERD_FLOAT_NEON(herd_dot_f32_neon, load_f32x4, 4, at_f32)
HERD_FLOAT_NEON(herd_dot_f16_neon, load_f16x4, 2, herd_half)
HERD_FLOAT_NEON(herd_dot_bf16_neon, load_bf16x4, 2, at_bf16)

#endif
