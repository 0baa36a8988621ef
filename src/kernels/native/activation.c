// Activation preparation: the input vector of a product, converted once into the form the
// weight type's dot product wants (ggml's vec_dot_type). Each function is a transcription
// of src/kernels/activation.ts and produces the same bits: the quantized kernels then sum
// the same integers as the js reference, and only the float summation order differs.
//
// This file must be compiled without floating-point contraction (-ffp-contract=off, set
// in binding.gyp): fusing `iscale * x + 12582912.f` in nearest_int into one FMA would skip
// the rounding of the product and change quants on near-ties.

#include <math.h>
#include "herd.h"

void herd_round_f16(const float *x, int n, float *out) {
  for (int i = 0; i < n; i++) out[i] = herd_f16_to_f32(herd_f32_to_f16(x[i]));
}

void herd_round_bf16(const float *x, int n, float *out) {
  for (int i = 0; i < n; i++) out[i] = herd_bf16_to_f32(herd_f32_to_bf16(x[i]));
}

// Round half to even, as ggml's x86 path rounds (_mm256_round_ps with _MM_ROUND_NEAREST).
// nearbyintf follows the current rounding mode, which Node leaves at round-to-nearest-even.
static inline int round_even(float v) {
  return (int)nearbyintf(v);
}

// ggml's nearest_int: 1.5·2^23 added in f32 leaves the rounded integer (half to even) in
// the low mantissa bits; valid for |v| < 2^22, which the callers guarantee.
static inline int nearest_int(float v) {
  const float t = v + 12582912.f;
  return (int)(herd_f32_bits(t) & 0x007fffff) - 0x00400000;
}

// The largest |x| of a block. Plain compares, so the result is one of the |x| themselves.
static inline float block_amax(const float *x, int n) {
  float amax = 0.0f;
  for (int i = 0; i < n; i++) {
    const float a = fabsf(x[i]);
    if (a > amax) amax = a;
  }
  return amax;
}

// Q8_0 as ggml's x86 quantize_row_q8_0: per 32 values d = amax/127 kept as f16, quants
// round(x·(127/amax)) half to even in f32. A short last block is padded with zero quants.
void herd_quantize_q8_0(const float *x, int n, int8_t *qs, float *d) {
  for (int b = 0; b * QK < n; b++) {
    const int base = b * QK;
    const int len = n - base < QK ? n - base : QK;
    const float amax = block_amax(x + base, len);
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    d[b] = herd_f16_to_f32(herd_f32_to_f16(amax / 127.0f));
    for (int i = 0; i < len; i++) qs[base + i] = (int8_t)round_even(x[base + i] * id);
    for (int i = len; i < QK; i++) qs[base + i] = 0;
  }
}

// Q8_1: Q8_0's quants and f16 scale, plus s = d·Σq with the unrounded f32 d, kept as f16.
void herd_quantize_q8_1(const float *x, int n, int8_t *qs, float *d, float *s) {
  for (int b = 0; b * QK < n; b++) {
    const int base = b * QK;
    const int len = n - base < QK ? n - base : QK;
    const float amax = block_amax(x + base, len);
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const float df = amax / 127.0f;
    d[b] = herd_f16_to_f32(herd_f32_to_f16(df));
    int sum = 0;
    for (int i = 0; i < len; i++) {
      const int q = round_even(x[base + i] * id);
      qs[base + i] = (int8_t)q;
      sum += q;
    }
    for (int i = len; i < QK; i++) qs[base + i] = 0;
    s[b] = herd_f16_to_f32(herd_f32_to_f16(df * (float)sum));
  }
}

// Q8_K as ggml's quantize_row_q8_K_ref: per 256 values the value of largest magnitude (the
// first one, on ties) maps to -127, d = 1/iscale stays f32, bsums holds Σq per 16 values.
void herd_quantize_q8_k(const float *x, int n, int8_t *qs, float *d, int16_t *bsums) {
  for (int b = 0; b * QK_K < n; b++) {
    const float *xb = x + b * QK_K;
    int8_t *qb = qs + b * QK_K;
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < QK_K; i++) {
      const float ax = fabsf(xb[i]);
      if (ax > amax) {
        amax = ax;
        max = xb[i];
      }
    }
    if (amax == 0.0f) {
      d[b] = 0.0f;
      memset(qb, 0, QK_K);
      memset(bsums + b * 16, 0, 16 * sizeof(int16_t));
      continue;
    }
    const float iscale = -127.0f / max;
    for (int g = 0; g < 16; g++) {
      int sum = 0;
      for (int i = 16 * g; i < 16 * g + 16; i++) {
        int q = nearest_int(iscale * xb[i]);
        if (q > 127) q = 127;
        qb[i] = (int8_t)q;
        sum += q;
      }
      bsums[b * 16 + g] = (int16_t)sum;
    }
    d[b] = 1.0f / iscale;
  }
}
