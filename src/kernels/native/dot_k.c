// Dot products of the K-quant types (super-blocks of 256 values) with the Q8_K activation.
// Per super-block: d·dx·Σ_g scale_g·Σ q·qx, minus dmin·dx·Σ_g min_g·Σqx for the types with
// mins (Q2_K, Q4_K, Q5_K), the Σqx coming from the activation's per-16 sums (bsums). The
// integer parts are exact on every path; d·dx and dmin·dx are the f32 products the js
// reference forms. Layouts: see src/kernels/q2_k.ts … q6_k.ts.

#include "herd.h"

// Q4_K/Q5_K's eight 6-bit scales and mins, unpacked from their 12 bytes (ggml's
// get_scale_min_k4, four at a time): out[0..7] = scales, out[8..15] = mins.
static inline void scale_min_k4(const uint8_t *s, uint8_t out[16]) {
  const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
  uint32_t u[4];
  memcpy(u, s, 12);
  u[3] = ((u[2] >> 4) & kmask2) | (((u[1] >> 6) & kmask3) << 4);  // mins 4-7
  const uint32_t mins03 = u[1] & kmask1;
  u[1] = (u[2] & kmask2) | (((u[0] >> 6) & kmask3) << 4);  // scales 4-7
  u[2] = mins03;
  u[0] &= kmask1;  // scales 0-3
  memcpy(out, u, 16);
}

// Q3_K's sixteen 6-bit scales, centred: low 4 bits in the nibbles of bytes 0-7, high 2 bits
// in bytes 8-11.
static inline void scales_q3_k(const uint8_t *s, int8_t out[16]) {
  for (int j = 0; j < 16; j++) {
    const int low = j < 8 ? s[j] & 15 : s[j - 8] >> 4;
    const int high = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
    out[j] = (int8_t)((low | (high << 4)) - 32);
  }
}

// Σ_j bsums[j]·min[j/2] over a super-block's 16 groups of 16.
static inline int mins_dot(const int16_t *bsums, const uint8_t *mn) {
  int m = 0;
  for (int j = 0; j < 16; j++) m += bsums[j] * mn[j >> 1];
  return m;
}

// ---- scalar: transcriptions of the js dots, accumulating in f32 ----

float herd_dot_q2_k_scalar(int n, const uint8_t *w, const herd_act *x) {
  float sum = 0.0f;
  for (int b = 0; b < n / QK_K; b++, w += 84) {
    const int8_t *y = x->qs + b * QK_K;
    const int16_t *bsums = x->bsums + b * 16;
    int isum = 0, msum = 0;
    for (int g = 0; g < 16; g++) {
      const uint8_t s = w[g];
      const uint8_t *q = w + 16 + 32 * (g >> 3) + 16 * (g & 1);
      const int shift = 2 * ((g >> 1) & 3);
      int gs = 0;
      for (int l = 0; l < 16; l++) gs += ((q[l] >> shift) & 3) * y[16 * g + l];
      isum += (s & 15) * gs;
      msum += (s >> 4) * bsums[g];
    }
    const float d = herd_half(w + 80) * x->d[b];
    const float dmin = herd_half(w + 82) * x->d[b];
    sum += d * (float)isum - dmin * (float)msum;
  }
  return sum;
}

float herd_dot_q3_k_scalar(int n, const uint8_t *w, const herd_act *x) {
  float sum = 0.0f;
  int8_t sc[16];
  for (int b = 0; b < n / QK_K; b++, w += 110) {
    const int8_t *y = x->qs + b * QK_K;
    scales_q3_k(w + 96, sc);
    int isum = 0;
    for (int g = 0; g < 16; g++) {
      const uint8_t *q = w + 32 + 32 * (g >> 3) + 16 * (g & 1);
      const uint8_t *hm = w + 16 * (g & 1);
      const int shift = 2 * ((g >> 1) & 3);
      const int bit = g >> 1;
      int gs = 0;
      for (int l = 0; l < 16; l++) gs += (((q[l] >> shift) & 3) - (((hm[l] >> bit) & 1) ^ 1) * 4) * y[16 * g + l];
      isum += sc[g] * gs;
    }
    sum += (float)isum * (herd_half(w + 108) * x->d[b]);
  }
  return sum;
}

// Q4_K and Q5_K share one body: five (a constant after inlining) adds Q5_K's fifth bits,
// bit 2k of qh[l] for value 64k + l and bit 2k+1 for value 64k + 32 + l.
static HERD_INLINE float q45_k_scalar(int n, const uint8_t *w, const herd_act *x, const int five) {
  float sum = 0.0f;
  uint8_t sm[16];
  for (int b = 0; b < n / QK_K; b++, w += five ? 176 : 144) {
    const int8_t *y = x->qs + b * QK_K;
    scale_min_k4(w + 4, sm);
    const uint8_t *qh = w + 16;
    const uint8_t *q = w + (five ? 48 : 16);
    int isum = 0;
    for (int k = 0; k < 4; k++) {
      int lo = 0, hi = 0;
      for (int l = 0; l < 32; l++) {
        int a = q[32 * k + l] & 15, c = q[32 * k + l] >> 4;
        if (five) {
          a |= ((qh[l] >> (2 * k)) & 1) << 4;
          c |= ((qh[l] >> (2 * k + 1)) & 1) << 4;
        }
        lo += a * y[64 * k + l];
        hi += c * y[64 * k + 32 + l];
      }
      isum += sm[2 * k] * lo + sm[2 * k + 1] * hi;
    }
    const int msum = mins_dot(x->bsums + b * 16, sm + 8);
    const float d = herd_half(w) * x->d[b];
    const float dmin = herd_half(w + 2) * x->d[b];
    sum += d * (float)isum - dmin * (float)msum;
  }
  return sum;
}

float herd_dot_q4_k_scalar(int n, const uint8_t *w, const herd_act *x) { return q45_k_scalar(n, w, x, 0); }
float herd_dot_q5_k_scalar(int n, const uint8_t *w, const herd_act *x) { return q45_k_scalar(n, w, x, 1); }

float herd_dot_q6_k_scalar(int n, const uint8_t *w, const herd_act *x) {
  float sum = 0.0f;
  for (int b = 0; b < n / QK_K; b++, w += 210) {
    const int8_t *y = x->qs + b * QK_K;
    const int8_t *sc = (const int8_t *)(w + 192);
    int isum = 0;
    for (int half = 0; half < 2; half++) {
      const uint8_t *ql = w + 64 * half;
      const uint8_t *qh = w + 128 + 32 * half;
      const int8_t *yh = y + 128 * half;
      const int8_t *s = sc + 8 * half;
      for (int g = 0; g < 2; g++) {
        int s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int l = 16 * g; l < 16 * g + 16; l++) {
          const int a = ql[l], c = ql[32 + l], h = qh[l];
          s0 += (((a & 15) | ((h & 3) << 4)) - 32) * yh[l];
          s1 += (((c & 15) | (((h >> 2) & 3) << 4)) - 32) * yh[32 + l];
          s2 += (((a >> 4) | (((h >> 4) & 3) << 4)) - 32) * yh[64 + l];
          s3 += (((c >> 4) | (((h >> 6) & 3) << 4)) - 32) * yh[96 + l];
        }
        isum += s[g] * s0 + s[g + 2] * s1 + s[g + 4] * s2 + s[g + 6] * s3;
      }
    }
    sum += (float)isum * (herd_half(w + 208) * x->d[b]);
  }
  return sum;
}

// ---- AVX2: 32 quants per vector; maddubs (unsigned quants × signed activation) into
// int16, then madd with the group's scale into int32 lanes ----

#if defined(HERD_AVX2)

static inline int hsum_i32x4(__m128i v) {
  v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(v);
}

// Σ_j bsums[j]·min[j/2]: bsums summed in pairs (per 32), times the 8 mins, in int32.
static inline int mins_dot_avx2(const int16_t *bsums, const uint8_t *mn) {
  const __m128i s0 = _mm_loadu_si128((const __m128i *)bsums);
  const __m128i s1 = _mm_loadu_si128((const __m128i *)(bsums + 8));
  const __m128i m = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn));
  return hsum_i32x4(_mm_madd_epi16(_mm_hadd_epi16(s0, s1), m));
}

// Q4_K and Q6_K (what Q4_K_M files are made of) take T activation vectors at once, as
// Q4_0 does (see dot_q.c): T = 1 for matvec, 4 for matmul, identical per-vector arithmetic.
// Q5_K runs the same body with five = 1: bit 2k of qh[l] (bit 0 of hb after k shifts by
// two) is the fifth bit of value 64k + l, bit 2k+1 that of value 64k + 32 + l.
static HERD_INLINE void q45_k_avx2(int n, const uint8_t *w, const herd_act *const *x, float *out, const int T, const int five) {
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i m1 = _mm256_set1_epi8(0x01);
  __m256 acc[4];
  float mins[4];
  for (int t = 0; t < T; t++) {
    acc[t] = _mm256_setzero_ps();
    mins[t] = 0.0f;
  }
  uint8_t sm[16];
  for (int b = 0; b < n / QK_K; b++, w += five ? 176 : 144) {
    scale_min_k4(w + 4, sm);
    const float d = herd_half(w), dmin = herd_half(w + 2);
    __m256i hb = five ? _mm256_loadu_si256((const __m256i *)(w + 16)) : _mm256_setzero_si256();
    __m256i sumi[4];
    for (int t = 0; t < T; t++) {
      mins[t] += dmin * x[t]->d[b] * (float)mins_dot_avx2(x[t]->bsums + b * 16, sm + 8);
      sumi[t] = _mm256_setzero_si256();
    }
    for (int k = 0; k < 4; k++) {
      const __m256i q = _mm256_loadu_si256((const __m256i *)(w + (five ? 48 : 16) + 32 * k));
      __m256i lo = _mm256_and_si256(q, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      if (five) {
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hb, m1), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 1), m1), 4));
        hb = _mm256_srli_epi16(hb, 2);
      }
      const __m256i slo = _mm256_set1_epi16(sm[2 * k]), shi = _mm256_set1_epi16(sm[2 * k + 1]);
      for (int t = 0; t < T; t++) {
        const int8_t *y = x[t]->qs + b * QK_K + 64 * k;
        const __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)y));
        const __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y + 32)));
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(_mm256_madd_epi16(plo, slo), _mm256_madd_epi16(phi, shi)));
      }
    }
    for (int t = 0; t < T; t++) acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * x[t]->d[b]), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
  }
  for (int t = 0; t < T; t++) out[t] = herd_hsum_f32x8(acc[t]) - mins[t];
}

HERD_DEFINE_DOTS(q4_k, avx2, q45_k_avx2, 0)

float herd_dot_q5_k_avx2(int n, const uint8_t *w, const herd_act *x) {
  float r;
  q45_k_avx2(n, w, &x, &r, 1, 1);
  return r;
}

// For Q6_K: bytes {2m ×8, 2m+1 ×8}, so that after widening, int16 lanes 0-7 (values
// 0-15 of a 32) carry scale 2m and lanes 8-15 scale 2m+1.
static const uint8_t q6_scale_shuffle[8][16] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
    {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},
    {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},
    {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13},
    {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15},
};

// Σ (q - 32)·y for 32 values as int16 pairs: maddubs(q, y) - maddubs(32, y), so the
// unsigned 6-bit quants stay unsigned for maddubs.
static inline __m256i q6_pairs(__m256i q, const int8_t *yp) {
  const __m256i y = _mm256_loadu_si256((const __m256i *)yp);
  return _mm256_sub_epi16(_mm256_maddubs_epi16(q, y), _mm256_maddubs_epi16(_mm256_set1_epi8(32), y));
}

// Scales 2m and 2m+1 widened to int16 lanes 0-7 and 8-15, to madd with q6_pairs.
static inline __m256i q6_scales(__m128i scales, int m) {
  return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, _mm_loadu_si128((const __m128i *)q6_scale_shuffle[m])));
}

static HERD_INLINE void q6_k_avx2(int n, const uint8_t *w, const herd_act *const *x, float *out, const int T) {
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i m2 = _mm256_set1_epi8(0x03);
  __m256 acc[4];
  for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
  for (int b = 0; b < n / QK_K; b++, w += 210) {
    const __m128i scales = _mm_loadu_si128((const __m128i *)(w + 192));
    __m256i sumi[4];
    for (int t = 0; t < T; t++) sumi[t] = _mm256_setzero_si256();
    for (int half = 0; half < 2; half++) {
      const __m256i l0 = _mm256_loadu_si256((const __m256i *)(w + 64 * half));
      const __m256i l1 = _mm256_loadu_si256((const __m256i *)(w + 64 * half + 32));
      const __m256i h = _mm256_loadu_si256((const __m256i *)(w + 128 + 32 * half));
      // Values l, 32+l, 64+l, 96+l of this half: a low nibble and two bits of qh each.
      __m256i q[4], sc[4];
      q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
      q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4));
      q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4));
      q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4));
      for (int k = 0; k < 4; k++) sc[k] = q6_scales(scales, 4 * half + k);
      for (int t = 0; t < T; t++) {
        const int8_t *yh = x[t]->qs + b * QK_K + 128 * half;
        for (int k = 0; k < 4; k++) sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(sc[k], q6_pairs(q[k], yh + 32 * k)));
      }
    }
    const float d = herd_half(w + 208);
    for (int t = 0; t < T; t++) acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * x[t]->d[b]), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
  }
  for (int t = 0; t < T; t++) out[t] = herd_hsum_f32x8(acc[t]);
}

HERD_DEFINE_DOTS(q6_k, avx2, q6_k_avx2)

// Q2_K: a 32-byte load holds, at shift 2j, values 32j … 32j+31 of a 128-value half: groups
// 8c+2j and 8c+2j+1 of 16, whose scales q6_scales spreads over the int16 lanes as for Q6_K.
float herd_dot_q2_k_avx2(int n, const uint8_t *w, const herd_act *x) {
  const __m256i m3 = _mm256_set1_epi8(0x03);
  const __m128i m4 = _mm_set1_epi8(0x0f);
  __m256 acc = _mm256_setzero_ps();
  float mins = 0.0f;
  for (int b = 0; b < n / QK_K; b++, w += 84) {
    const int8_t *y = x->qs + b * QK_K;
    const __m128i sm = _mm_loadu_si128((const __m128i *)w);
    const __m128i scales = _mm_and_si128(sm, m4);
    // Σ_g min_g·bsums[g]: the mins are the high nibbles, one per group of 16.
    const __m256i mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sm, 4), m4));
    const __m256i mp = _mm256_madd_epi16(mn, _mm256_loadu_si256((const __m256i *)(x->bsums + b * 16)));
    const __m128i m128 = _mm_add_epi32(_mm256_castsi256_si128(mp), _mm256_extracti128_si256(mp, 1));
    mins += herd_half(w + 82) * x->d[b] * (float)hsum_i32x4(m128);
    __m256i sumi = _mm256_setzero_si256();
    for (int c = 0; c < 2; c++) {
      const __m256i q = _mm256_loadu_si256((const __m256i *)(w + 16 + 32 * c));
      const int8_t *yc = y + 128 * c;
      for (int j = 0; j < 4; j++) {
        const __m256i v = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
        const __m256i p = _mm256_maddubs_epi16(v, _mm256_loadu_si256((const __m256i *)(yc + 32 * j)));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(q6_scales(scales, 4 * c + j), p));
      }
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(herd_half(w + 80) * x->d[b]), _mm256_cvtepi32_ps(sumi), acc);
  }
  return herd_hsum_f32x8(acc) - mins;
}

// Q3_K: Q2_K's 2-bit layout (at byte 32) plus a high bit per value, bit 4c+j of hmask[l]
// for value 128c + 32j + l; q - 4·(1 - h) in [-4, 3] is summed as Σ q·y - Σ 4(1-h)·y, both
// unsigned against signed for maddubs.
float herd_dot_q3_k_avx2(int n, const uint8_t *w, const herd_act *x) {
  const __m256i m3 = _mm256_set1_epi8(0x03);
  const __m256i m1 = _mm256_set1_epi8(0x01);
  __m256 acc = _mm256_setzero_ps();
  int8_t sc[16];
  for (int b = 0; b < n / QK_K; b++, w += 110) {
    const int8_t *y = x->qs + b * QK_K;
    scales_q3_k(w + 96, sc);
    const __m128i scales = _mm_loadu_si128((const __m128i *)sc);
    __m256i hm = _mm256_loadu_si256((const __m256i *)w);
    __m256i sumi = _mm256_setzero_si256();
    for (int c = 0; c < 2; c++) {
      const __m256i q = _mm256_loadu_si256((const __m256i *)(w + 32 + 32 * c));
      const int8_t *yc = y + 128 * c;
      for (int j = 0; j < 4; j++) {
        const __m256i v = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
        const __m256i low4 = _mm256_slli_epi16(_mm256_andnot_si256(hm, m1), 2);  // 4 where h = 0
        hm = _mm256_srli_epi16(hm, 1);
        const __m256i yv = _mm256_loadu_si256((const __m256i *)(yc + 32 * j));
        const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(v, yv), _mm256_maddubs_epi16(low4, yv));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(q6_scales(scales, 4 * c + j), p));
      }
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(herd_half(w + 108) * x->d[b]), _mm256_cvtepi32_ps(sumi), acc);
  }
  return herd_hsum_f32x8(acc);
}

#endif

// ---- AVX-512 VNNI: 64 quants per vector. maddubs (unsigned quants × signed activation)
// gives int16 pairs, and vpdpwssd multiplies them by the sub-block's scale and adds them to
// the int32 sums in one instruction. Each 64-value step covers two sub-blocks of 32 (or four
// groups of 16 for Q6_K), their scales spread over the int16 lanes by one vpermw per step,
// shared by every activation vector. ----

#if defined(HERD_AVX512)

// int16 lane i of the result is scale (2k + i/16): lanes 0-15 cover values 0-31 of the
// 64-value step (sub-block 2k), lanes 16-31 values 32-63 (sub-block 2k+1). sc holds the
// eight scales as int16 in its low 128 bits.
static inline __m512i scales_k4_step(__m512i sc, int k) {
  const __m512i idx = _mm512_add_epi16(_mm512_set1_epi16((short)(2 * k)),
                                       _mm512_srli_epi16(_mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16,
                                                                          15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), 4));
  return _mm512_permutexvar_epi16(idx, sc);
}

// 32 nibble bytes → 64 bytes in value order: the low nibbles (values 0-31), then the high.
static inline __m512i nibbles_k(const uint8_t *p) {
  const __m256i q = _mm256_loadu_si256((const __m256i *)p);
  const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
  return _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
}

// Q4_K and Q5_K share one body (five = 1 for Q5_K). Bit 2k of qh[l] is the fifth bit of
// value 64k + l, bit 2k+1 that of value 64k + 32 + l.
static HERD_INLINE void q45_k_avx512(int n, const uint8_t *w, const herd_act *const *x, float *out, const int T, const int five) {
  const int bytes = five ? 176 : 144;
  __m512 acc[4];
  float mins[4];
  for (int t = 0; t < T; t++) {
    acc[t] = _mm512_setzero_ps();
    mins[t] = 0.0f;
  }
  uint8_t sm[16];
  const __m512i m1 = _mm512_set1_epi8(1);
  for (int b = 0; b < n / QK_K; b++, w += bytes) {
    scale_min_k4(w + 4, sm);
    const float d = herd_half(w), dmin = herd_half(w + 2);
    const __m512i sc = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)sm)));
    const uint8_t *qs = w + (five ? 48 : 16);
    __m512i hb = _mm512_setzero_si512();
    if (five) {
      // qh's 32 bytes in both halves, the upper half shifted one further: after k shifts
      // by two, bit 0 of each byte is the fifth bit of the value that byte lane holds.
      const __m256i h = _mm256_loadu_si256((const __m256i *)(w + 16));
      hb = _mm512_inserti64x4(_mm512_castsi256_si512(h), _mm256_srli_epi16(h, 1), 1);
    }
    __m512i sumi[4];
    for (int t = 0; t < T; t++) {
      mins[t] += dmin * x[t]->d[b] * (float)mins_dot_avx2(x[t]->bsums + b * 16, sm + 8);
      sumi[t] = _mm512_setzero_si512();
    }
    for (int k = 0; k < 4; k++) {
      __m512i q = nibbles_k(qs + 32 * k);
      if (five) {
        q = _mm512_or_si512(q, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 2 * k), m1), 4));
      }
      const __m512i s = scales_k4_step(sc, k);
      for (int t = 0; t < T; t++) {
        const __m512i y = _mm512_loadu_si512((const void *)(x[t]->qs + b * QK_K + 64 * k));
        sumi[t] = _mm512_dpwssd_epi32(sumi[t], _mm512_maddubs_epi16(q, y), s);
      }
    }
    for (int t = 0; t < T; t++) acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * x[t]->d[b]), _mm512_cvtepi32_ps(sumi[t]), acc[t]);
  }
  for (int t = 0; t < T; t++) out[t] = _mm512_reduce_add_ps(acc[t]) - mins[t];
}

HERD_DEFINE_DOTS(q4_k, avx512, q45_k_avx512, 0)
HERD_DEFINE_DOTS(q5_k, avx512, q45_k_avx512, 1)

// Q6_K: each half of a super-block (128 values) comes as 64 bytes of low nibbles (ql) and
// 32 bytes of two-bit highs (qh). Values 0-63 of the half are the low nibbles of ql with
// qh bits 0-1 (values 0-31) and 2-3 (32-63); values 64-127 the high nibbles with bits 4-5
// and 6-7. The quants stay unsigned (0-63) for maddubs; the -32 offset is taken off once
// per super-block as 32·Σ_g scale_g·bsums_g.
static HERD_INLINE void q6_k_avx512(int n, const uint8_t *w, const herd_act *const *x, float *out, const int T) {
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  const __m512i m3 = _mm512_set1_epi8(0x03);
  // int16 lane i of a 64-value step's scale vector is group (4c + i/8) of 16 values.
  const __m512i lane_group = _mm512_srli_epi16(_mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16,
                                                                15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), 3);
  // qh shifts per 64-bit lane: the lower 32 bytes take bits 0-1 (or 4-5), the upper 2-3 (6-7).
  const __m512i hshift = _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0);
  __m512 acc[4];
  for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
  for (int b = 0; b < n / QK_K; b++, w += 210) {
    const __m128i sc8 = _mm_loadu_si128((const __m128i *)(w + 192));
    const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
    const __m512i sc = _mm512_castsi256_si512(sc16);
    __m512i sumi[4];
    for (int t = 0; t < T; t++) {
      // 32·Σ_g scale_g·bsums_g, in the int32 lanes sumi starts from (negated).
      const __m256i off = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)(x[t]->bsums + b * 16)));
      sumi[t] = _mm512_castsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(off, 5)));
      sumi[t] = _mm512_inserti64x4(sumi[t], _mm256_setzero_si256(), 1);
    }
    for (int half = 0; half < 2; half++) {
      const __m512i l = _mm512_loadu_si512((const void *)(w + 64 * half));
      const __m256i h256 = _mm256_loadu_si256((const __m256i *)(w + 128 + 32 * half));
      const __m512i h = _mm512_srlv_epi64(_mm512_inserti64x4(_mm512_castsi256_si512(h256), h256, 1), hshift);
      const __m512i qa = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_slli_epi16(_mm512_and_si512(h, m3), 4));
      const __m512i qb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                         _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(h, 4), m3), 4));
      const __m512i sa = _mm512_permutexvar_epi16(_mm512_add_epi16(lane_group, _mm512_set1_epi16((short)(8 * half))), sc);
      const __m512i sb = _mm512_permutexvar_epi16(_mm512_add_epi16(lane_group, _mm512_set1_epi16((short)(8 * half + 4))), sc);
      for (int t = 0; t < T; t++) {
        const int8_t *y = x[t]->qs + b * QK_K + 128 * half;
        sumi[t] = _mm512_dpwssd_epi32(sumi[t], _mm512_maddubs_epi16(qa, _mm512_loadu_si512((const void *)y)), sa);
        sumi[t] = _mm512_dpwssd_epi32(sumi[t], _mm512_maddubs_epi16(qb, _mm512_loadu_si512((const void *)(y + 64))), sb);
      }
    }
    const float d = herd_half(w + 208);
    for (int t = 0; t < T; t++) acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * x[t]->d[b]), _mm512_cvtepi32_ps(sumi[t]), acc[t]);
  }
  for (int t = 0; t < T; t++) out[t] = _mm512_reduce_add_ps(acc[t]);
}

HERD_DEFINE_DOTS(q6_k, avx512, q6_k_avx512)

#endif

// ---- NEON ----

#if defined(HERD_NEON)

// Σ q·y over 32 values given as two 16-byte halves of quants.
static inline int dot32(uint8x16_t q0, uint8x16_t q1, const int8_t *y, int dotprod) {
  int32x4_t p = herd_dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(q0), vld1q_s8(y), dotprod);
  p = herd_dot16(p, vreinterpretq_s8_u8(q1), vld1q_s8(y + 16), dotprod);
  return vaddvq_s32(p);
}

// Q4_K and Q5_K (five = 1: the fifth bits as in q45_k_scalar).
static HERD_INLINE float q45_k_neon(int n, const uint8_t *w, const herd_act *x, int dotprod, const int five) {
  const uint8x16_t m4 = vdupq_n_u8(0x0f);
  const uint8x16_t m1 = vdupq_n_u8(0x01);
  float sum = 0.0f;
  uint8_t sm[16];
  for (int b = 0; b < n / QK_K; b++, w += five ? 176 : 144) {
    const int8_t *y = x->qs + b * QK_K;
    scale_min_k4(w + 4, sm);
    uint8x16_t h0 = vdupq_n_u8(0), h1 = h0;
    if (five) {
      h0 = vld1q_u8(w + 16);
      h1 = vld1q_u8(w + 32);
    }
    int isum = 0;
    for (int k = 0; k < 4; k++) {
      const uint8x16_t a = vld1q_u8(w + (five ? 48 : 16) + 32 * k);
      const uint8x16_t c = vld1q_u8(w + (five ? 48 : 16) + 32 * k + 16);
      uint8x16_t la = vandq_u8(a, m4), lc = vandq_u8(c, m4), ha = vshrq_n_u8(a, 4), hc = vshrq_n_u8(c, 4);
      if (five) {
        la = vorrq_u8(la, vshlq_n_u8(vandq_u8(h0, m1), 4));
        lc = vorrq_u8(lc, vshlq_n_u8(vandq_u8(h1, m1), 4));
        ha = vorrq_u8(ha, vshlq_n_u8(vandq_u8(vshrq_n_u8(h0, 1), m1), 4));
        hc = vorrq_u8(hc, vshlq_n_u8(vandq_u8(vshrq_n_u8(h1, 1), m1), 4));
        h0 = vshrq_n_u8(h0, 2);
        h1 = vshrq_n_u8(h1, 2);
      }
      isum += sm[2 * k] * dot32(la, lc, y + 64 * k, dotprod);
      isum += sm[2 * k + 1] * dot32(ha, hc, y + 64 * k + 32, dotprod);
    }
    const int msum = mins_dot(x->bsums + b * 16, sm + 8);
    sum += herd_half(w) * x->d[b] * (float)isum - herd_half(w + 2) * x->d[b] * (float)msum;
  }
  return sum;
}

static inline float q4_k_neon(int n, const uint8_t *w, const herd_act *x, int dotprod) { return q45_k_neon(n, w, x, dotprod, 0); }
static inline float q5_k_neon(int n, const uint8_t *w, const herd_act *x, int dotprod) { return q45_k_neon(n, w, x, dotprod, 1); }

// Σ (q - 32)·y over 16 values.
static inline int dot16_q6(uint8x16_t q, const int8_t *y, int dotprod) {
  const int8x16_t s = vsubq_s8(vreinterpretq_s8_u8(q), vdupq_n_s8(32));
  return vaddvq_s32(herd_dot16(vdupq_n_s32(0), s, vld1q_s8(y), dotprod));
}

static inline float q6_k_neon(int n, const uint8_t *w, const herd_act *x, int dotprod) {
  const uint8x16_t m4 = vdupq_n_u8(0x0f);
  const uint8x16_t m2 = vdupq_n_u8(0x03);
  float sum = 0.0f;
  for (int b = 0; b < n / QK_K; b++, w += 210) {
    const int8_t *y = x->qs + b * QK_K;
    const int8_t *sc = (const int8_t *)(w + 192);
    int isum = 0;
    for (int half = 0; half < 2; half++) {
      const uint8_t *ql = w + 64 * half;
      const uint8x16_t h0 = vld1q_u8(w + 128 + 32 * half), h1 = vld1q_u8(w + 128 + 32 * half + 16);
      const uint8x16_t a0 = vld1q_u8(ql), a1 = vld1q_u8(ql + 16), c0 = vld1q_u8(ql + 32), c1 = vld1q_u8(ql + 48);
      const int8_t *yh = y + 128 * half;
      const int8_t *s = sc + 8 * half;
      // Sixteen values per scale: value 16·g + l of the half, g = 0 … 7.
      isum += s[0] * dot16_q6(vorrq_u8(vandq_u8(a0, m4), vshlq_n_u8(vandq_u8(h0, m2), 4)), yh, dotprod);
      isum += s[1] * dot16_q6(vorrq_u8(vandq_u8(a1, m4), vshlq_n_u8(vandq_u8(h1, m2), 4)), yh + 16, dotprod);
      isum += s[2] * dot16_q6(vorrq_u8(vandq_u8(c0, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h0, 2), m2), 4)), yh + 32, dotprod);
      isum += s[3] * dot16_q6(vorrq_u8(vandq_u8(c1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h1, 2), m2), 4)), yh + 48, dotprod);
      isum += s[4] * dot16_q6(vorrq_u8(vshrq_n_u8(a0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h0, 4), m2), 4)), yh + 64, dotprod);
      isum += s[5] * dot16_q6(vorrq_u8(vshrq_n_u8(a1, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h1, 4), m2), 4)), yh + 80, dotprod);
      isum += s[6] * dot16_q6(vorrq_u8(vshrq_n_u8(c0, 4), vshlq_n_u8(vshrq_n_u8(h0, 6), 4)), yh + 96, dotprod);
      isum += s[7] * dot16_q6(vorrq_u8(vshrq_n_u8(c1, 4), vshlq_n_u8(vshrq_n_u8(h1, 6), 4)), yh + 112, dotprod);
    }
    sum += (float)isum * (herd_half(w + 208) * x->d[b]);
  }
  return sum;
}

static inline float q2_k_neon(int n, const uint8_t *w, const herd_act *x, int dotprod) {
  const uint8x16_t m3 = vdupq_n_u8(0x03);
  float sum = 0.0f;
  for (int b = 0; b < n / QK_K; b++, w += 84) {
    const int8_t *y = x->qs + b * QK_K;
    int isum = 0, msum = 0;
    for (int g = 0; g < 16; g++) msum += (w[g] >> 4) * x->bsums[b * 16 + g];
    for (int c = 0; c < 2; c++) {
      const uint8x16_t q0 = vld1q_u8(w + 16 + 32 * c), q1 = vld1q_u8(w + 32 + 32 * c);
      for (int j = 0; j < 4; j++) {
        // Groups 8c+2j and 8c+2j+1: shift 2j of the first and second 16 bytes.
        const int8x16_t shift = vdupq_n_s8((int8_t)(-2 * j));
        const uint8x16_t v0 = vandq_u8(vshlq_u8(q0, shift), m3), v1 = vandq_u8(vshlq_u8(q1, shift), m3);
        const int g = 8 * c + 2 * j;
        const int8_t *yg = y + 16 * g;
        isum += (w[g] & 15) * vaddvq_s32(herd_dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(v0), vld1q_s8(yg), dotprod));
        isum += (w[g + 1] & 15) * vaddvq_s32(herd_dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(v1), vld1q_s8(yg + 16), dotprod));
      }
    }
    sum += herd_half(w + 80) * x->d[b] * (float)isum - herd_half(w + 82) * x->d[b] * (float)msum;
  }
  return sum;
}

static inline float q3_k_neon(int n, const uint8_t *w, const herd_act *x, int dotprod) {
  const uint8x16_t m3 = vdupq_n_u8(0x03);
  const uint8x16_t m1 = vdupq_n_u8(0x01);
  float sum = 0.0f;
  int8_t sc[16];
  for (int b = 0; b < n / QK_K; b++, w += 110) {
    const int8_t *y = x->qs + b * QK_K;
    scales_q3_k(w + 96, sc);
    const uint8x16_t h0 = vld1q_u8(w), h1 = vld1q_u8(w + 16);
    int isum = 0;
    for (int c = 0; c < 2; c++) {
      const uint8x16_t q0 = vld1q_u8(w + 32 + 32 * c), q1 = vld1q_u8(w + 48 + 32 * c);
      for (int j = 0; j < 4; j++) {
        const int8x16_t shift = vdupq_n_s8((int8_t)(-2 * j));
        const int8x16_t hshift = vdupq_n_s8((int8_t)(-(4 * c + j)));
        // q | 4h - 4 = q - 4·(1 - h), in [-4, 3].
        const uint8x16_t v0 = vorrq_u8(vandq_u8(vshlq_u8(q0, shift), m3), vshlq_n_u8(vandq_u8(vshlq_u8(h0, hshift), m1), 2));
        const uint8x16_t v1 = vorrq_u8(vandq_u8(vshlq_u8(q1, shift), m3), vshlq_n_u8(vandq_u8(vshlq_u8(h1, hshift), m1), 2));
        const int g = 8 * c + 2 * j;
        const int8_t *yg = y + 16 * g;
        const int8x16_t s0 = vsubq_s8(vreinterpretq_s8_u8(v0), vdupq_n_s8(4));
        const int8x16_t s1 = vsubq_s8(vreinterpretq_s8_u8(v1), vdupq_n_s8(4));
        isum += sc[g] * vaddvq_s32(herd_dot16(vdupq_n_s32(0), s0, vld1q_s8(yg), dotprod));
        isum += sc[g + 1] * vaddvq_s32(herd_dot16(vdupq_n_s32(0), s1, vld1q_s8(yg + 16), dotprod));
      }
    }
    sum += (float)isum * (herd_half(w + 108) * x->d[b]);
  }
  return sum;
}

HERD_NEON_PAIR(q2_k)
HERD_NEON_PAIR(q3_k)
HERD_NEON_PAIR(q4_k)
HERD_NEON_PAIR(q5_k)
HERD_NEON_PAIR(q6_k)

#endif
