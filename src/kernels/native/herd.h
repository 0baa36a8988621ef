// herd's native kernels: the declarations every C file shares.
//
// The layout mirrors src/kernels (one row per ggml type, one dot product per type and
// instruction-set path). Weights are read straight from GGUF block bytes; activations are
// prepared once per product in the form the weight type pairs with, exactly as
// src/kernels/activation.ts prepares them (bit-identical quants and scales), but kept as
// plain arrays (quants contiguous, scales apart) so that SIMD loads of the quants never
// straddle a scale.

#ifndef HERD_H
#define HERD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define HERD_AVX2 1
#include <immintrin.h>
#endif
// The AVX-512 path wants byte/word ops (BW), 256-bit EVEX forms (VL), the int8 dot
// product (VNNI) and byte permutes (VBMI): what every AVX-512 CPU since Ice Lake and Zen 4
// has. Cascade Lake (VNNI without VBMI) runs the AVX2 path. (No kernel uses VBMI since the
// Q4_0 gemm replaced a tile that did; the prebuilt levels and the loader's CPU check still
// name it.)
#if defined(HERD_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__AVX512VBMI__)
#define HERD_AVX512 1
#endif
// NEON kernels use AArch64-only reductions (vaddvq); 32-bit Arm builds run the scalar path.
#if defined(__ARM_NEON) && defined(__aarch64__)
#define HERD_NEON 1
#include <arm_neon.h>
#if defined(__ARM_FEATURE_DOTPROD)
#define HERD_NEON_DOTPROD 1
#endif
#endif

#define QK 32      // values per block of Q4_0 … Q8_0 and of the Q8_0/Q8_1 activations
#define QK_K 256   // values per K-quant super-block and per Q8_K activation block

// ggml type numbers (src/ggml/types.ts).
enum herd_type {
  HERD_F32 = 0, HERD_F16 = 1, HERD_BF16 = 30,                                     // floats
  HERD_Q4_0 = 2, HERD_Q4_1 = 3, HERD_Q5_0 = 6, HERD_Q5_1 = 7, HERD_Q8_0 = 8,      // blocks of 32
  HERD_Q2_K = 10, HERD_Q3_K = 11, HERD_Q4_K = 12, HERD_Q5_K = 13, HERD_Q6_K = 14, // super-blocks of 256
};

// What the activation vector is turned into before the dot products (activation.ts kinds).
enum herd_act_kind { ACT_F32, ACT_F16, ACT_BF16, ACT_Q8_0, ACT_Q8_1, ACT_Q8_K };

// Instruction-set paths, from the plainest up. A build compiles the scalar path and every
// path its target flags allow; a backend runs the highest one it was asked for.
enum herd_isa { ISA_SCALAR, ISA_AVX2, ISA_AVX512, ISA_NEON, ISA_NEON_DOTPROD, ISA_COUNT };

// One prepared activation vector of n values. Float kinds use f; quantized kinds use qs
// (n quants), d (one scale per 32 values, or per 256 for Q8_K), s (Q8_1: d·Σq per 32),
// bsums (Q8_K: Σq per 16) and qoff (Q8_0 for Q4_0's gemm: -8·Σq per 32, the offset of Q4_0's
// quants folded into the activation; set only where the gemm runs).
typedef struct {
  int kind;
  int n;
  float *f;
  int8_t *qs;
  float *d;
  float *s;
  int16_t *bsums;
  int32_t *qoff;
} herd_act;

// The dot product of the n-value weight row at w with the activation x.
typedef float (*herd_dot_fn)(int n, const uint8_t *w, const herd_act *x);
// The same row against four activations (a matmul's inner step): out[t] equals, bit for
// bit, what the herd_dot_fn of the same type and path returns for x[t].
typedef void (*herd_dot4_fn)(int n, const uint8_t *w, const herd_act *const *x, float *out);

// A product's 16 rows (nrows ≤ 16 of them from w, row_bytes apart) against its nx activations:
// out[t·out_stride + r], each output the same chain whatever nx is (see dot_q.c).
typedef void (*herd_gemm_fn)(int n, const uint8_t *w, size_t row_bytes, int nrows, const herd_act *x, int nx, float *out,
                             size_t out_stride);
#define HERD_GEMM_ROWS 16

#define HERD_INLINE inline __attribute__((always_inline))

// Defines herd_dot_<type>_<isa> (one vector) from body(n, w, x, out, T, ...) taking T vectors;
// HERD_DEFINE_DOTS also herd_dot4_<type>_<isa> (four): the same code computes both. Any
// arguments after body (constants that pick the type, where one body serves several) follow T.
#define HERD_DEFINE_DOT(type, isa, body, ...)                                 \
  float herd_dot_##type##_##isa(int n, const uint8_t *w, const herd_act *x) { \
    float r;                                                                  \
    const herd_act *xs[1] = {x};                                              \
    body(n, w, xs, &r, 1, ##__VA_ARGS__);                                     \
    return r;                                                                 \
  }
#define HERD_DEFINE_DOTS(type, isa, body, ...)                                                    \
  HERD_DEFINE_DOT(type, isa, body, ##__VA_ARGS__)                                                 \
  void herd_dot4_##type##_##isa(int n, const uint8_t *w, const herd_act *const *x, float *out) { \
    body(n, w, x, out, 4, ##__VA_ARGS__);                                                         \
  }

typedef struct {
  int type;
  const char *name;
  int block;        // values per block
  int block_bytes;  // bytes per block
  int act;          // enum herd_act_kind
  herd_dot_fn dot[ISA_COUNT];    // NULL where a path has no kernel of its own
  herd_dot4_fn dot4[ISA_COUNT];  // NULL where matmul runs the single-vector dot
  herd_gemm_fn gemm[ISA_COUNT];  // when set, runs every product instead of dot/dot4
} herd_type_traits;

// The type's row, or NULL when herd has no native kernels for it.
const herd_type_traits *herd_traits(int type);
// The dot product for `type` on the highest path at or below `isa` (scalar at worst).
herd_dot_fn herd_dot(const herd_type_traits *t, int isa);
// The four-vector dot of the path herd_dot picks, or NULL when that path has none.
herd_dot4_fn herd_dot4(const herd_type_traits *t, int isa);
// The gemm kernel of the path herd_dot picks, or NULL when that path has none.
herd_gemm_fn herd_gemm(const herd_type_traits *t, int isa);
// Which paths this build compiled.
int herd_isa_compiled(int isa);
const char *herd_isa_name(int isa);

// Activation preparation (activation.c), each bit-identical with activation.ts.
void herd_round_f16(const float *x, int n, float *out);
void herd_round_bf16(const float *x, int n, float *out);
void herd_quantize_q8_0(const float *x, int n, int8_t *qs, float *d);
void herd_quantize_q8_1(const float *x, int n, int8_t *qs, float *d, float *s);
void herd_quantize_q8_k(const float *x, int n, int8_t *qs, float *d, int16_t *bsums);

// ---- f16 and bf16, bit-exact with src/ggml/half.ts (and ggml's scalar conversions) ----

static inline uint32_t herd_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static inline float herd_f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, overflow to ±inf, f16 subnormals kept, NaN → sign | 0x7e00.
static inline uint16_t herd_f32_to_f16(float f) {
  const uint32_t w = herd_f32_bits(f);
  const uint32_t sign = (w >> 16) & 0x8000;
  const uint32_t abs = w & 0x7fffffff;
  if (abs > 0x7f800000) return (uint16_t)(sign | 0x7e00);
  if (abs >= 0x477ff000) return (uint16_t)(sign | 0x7c00);  // ≥ 65520 rounds to infinity
  if (abs >= 0x38800000) {
    const uint32_t m = abs - 0x38000000;  // re-bias the exponent 127 → 15
    return (uint16_t)(sign | ((m + 0xfff + ((m >> 13) & 1)) >> 13));
  }
  // Subnormal f16: units of 2^-24, the dropped bits rounded to nearest even.
  const int shift = 126 - (int)(abs >> 23);
  if (shift > 24) return (uint16_t)sign;
  const uint32_t mant = (abs & 0x7fffff) | 0x800000;
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1))) q++;
  return (uint16_t)(sign | q);
}

static inline float herd_f16_to_f32(uint16_t h) {
#if defined(HERD_AVX2)
  return _cvtsh_ss(h);  // exact, one instruction
#elif defined(HERD_NEON)
  __fp16 v;
  memcpy(&v, &h, 2);
  return (float)v;
#else
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  const uint32_t e = (h >> 10) & 0x1f;
  uint32_t m = h & 0x3ff;
  if (e == 0x1f) return herd_f32_from_bits(sign | 0x7f800000 | (m << 13));
  if (e != 0) return herd_f32_from_bits(sign | ((e + 112) << 23) | (m << 13));
  if (m == 0) return herd_f32_from_bits(sign);
  int shift = 0;
  while ((m & 0x400) == 0) {
    m <<= 1;
    shift++;
  }
  return herd_f32_from_bits(sign | ((uint32_t)(113 - shift) << 23) | ((m & 0x3ff) << 13));
#endif
}

#if defined(HERD_NEON)
// Σ of a·b over 16 signed bytes, added to acc in 4 int32 lanes: vdotq_s32 when the CPU has
// it (dotprod set), else widening multiplies and pairwise adds (lane grouping differs
// between the two forms; every caller reduces all lanes). The NEON integer dots' inner step.
static inline int32x4_t herd_dot16(int32x4_t acc, int8x16_t a, int8x16_t b, int dotprod) {
#if defined(HERD_NEON_DOTPROD)
  if (dotprod) return vdotq_s32(acc, a, b);
#endif
  (void)dotprod;
  const int16x8_t p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
  const int16x8_t p1 = vmull_s8(vget_high_s8(a), vget_high_s8(b));
  return vaddq_s32(acc, vaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)));
}

// One NEON dot body per type (type##_neon(n, w, x, dotprod)), compiled twice: without and
// with the dot-product instruction.
#define HERD_NEON_PAIR(type)                                                              \
  float herd_dot_##type##_neon(int n, const uint8_t *w, const herd_act *x) { return type##_neon(n, w, x, 0); } \
  HERD_NEON_DOT_VARIANT(type)

#if defined(HERD_NEON_DOTPROD)
#define HERD_NEON_DOT_VARIANT(type) \
  float herd_dot_##type##_neondot(int n, const uint8_t *w, const herd_act *x) { return type##_neon(n, w, x, 1); }
#else
#define HERD_NEON_DOT_VARIANT(type)
#endif
#endif

#if defined(HERD_AVX2)
// The sum of a vector's eight floats (the reduction every AVX2 kernel ends a row with).
static inline float herd_hsum_f32x8(__m256 v) {
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}
#endif

// Round to nearest even; NaN keeps its top payload bits and is forced quiet.
static inline uint16_t herd_f32_to_bf16(float f) {
  const uint32_t w = herd_f32_bits(f);
  if ((w & 0x7fffffff) > 0x7f800000) return (uint16_t)((w >> 16) | 0x40);
  return (uint16_t)((w + 0x7fff + ((w >> 16) & 1)) >> 16);
}

static inline float herd_bf16_to_f32(uint16_t h) {
  return herd_f32_from_bits((uint32_t)h << 16);
}

// Little-endian loads from block bytes (GGUF is little-endian; so are x86 and Arm Linux).
static inline uint16_t herd_le16(const uint8_t *p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}

static inline uint32_t herd_le32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

static inline float herd_half(const uint8_t *p) {
  return herd_f16_to_f32(herd_le16(p));
}

// Kernel entry points, defined in dot_float.c, dot_q.c and dot_k.c.
#define HERD_DECLARE_DOT(type) \
  float herd_dot_##type##_scalar(int n, const uint8_t *w, const herd_act *x); \
  float herd_dot_##type##_avx2(int n, const uint8_t *w, const herd_act *x); \
  float herd_dot_##type##_avx512(int n, const uint8_t *w, const herd_act *x); \
  float herd_dot_##type##_neon(int n, const uint8_t *w, const herd_act *x); \
  float herd_dot_##type##_neondot(int n, const uint8_t *w, const herd_act *x);

#define HERD_DECLARE_DOT4(type, isa) \
  void herd_dot4_##type##_##isa(int n, const uint8_t *w, const herd_act *const *x, float *out);

void herd_gemm_q4_0_avx2(int n, const uint8_t *w, size_t row_bytes, int nrows, const herd_act *x, int nx, float *out,
                         size_t out_stride);
void herd_gemm_q4_0_avx512(int n, const uint8_t *w, size_t row_bytes, int nrows, const herd_act *x, int nx, float *out,
                           size_t out_stride);

HERD_DECLARE_DOT4(q8_0, avx2)
HERD_DECLARE_DOT4(q8_0, avx512)
HERD_DECLARE_DOT4(q4_k, avx2)
HERD_DECLARE_DOT4(q6_k, avx2)
HERD_DECLARE_DOT4(q4_k, avx512)
HERD_DECLARE_DOT4(q5_k, avx512)
HERD_DECLARE_DOT4(q6_k, avx512)

HERD_DECLARE_DOT(f32)
HERD_DECLARE_DOT(f16)
HERD_DECLARE_DOT(bf16)
HERD_DECLARE_DOT(q8_0)
HERD_DECLARE_DOT(q4_0)
HERD_DECLARE_DOT(q4_1)
HERD_DECLARE_DOT(q5_0)
HERD_DECLARE_DOT(q5_1)
HERD_DECLARE_DOT(q2_k)
HERD_DECLARE_DOT(q3_k)
HERD_DECLARE_DOT(q4_k)
HERD_DECLARE_DOT(q5_k)
HERD_DECLARE_DOT(q6_k)

#endif
