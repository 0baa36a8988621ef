// Dot products of the 32-value block types with their Q8 activation:
//   Q8_0, Q4_0, Q5_0 × Q8_0   Σ_b dw·dx·Σ q·qx
//   Q4_1, Q5_1     × Q8_1     Σ_b dw·dx·Σ q·qx + m·s   (s = dx·Σqx, prepared with the activation)
// The integer sums are exact on every path; the per-block scale dw·dx is the same f32
// product the js reference forms; only the float accumulation order differs.
//
// Block layouts (bytes): Q8_0 {f16 d, i8 q[32]} 34; Q4_0 {f16 d, u8 nib[16]} 18;
// Q4_1 {f16 d, f16 m, nib[16]} 20; Q5_0 {f16 d, u32 qh, nib[16]} 22;
// Q5_1 {f16 d, f16 m, u32 qh, nib[16]} 24. Nibble byte j holds value j (low) and j+16
// (high); bit i of qh is the fifth bit of value i.

#include "herd.h"

// Q4_0, Q4_1, Q5_0 and Q5_1 share one body per path: five adds the fifth bits (qh after the
// f16 scales), with_min the block's min (Q4_1, Q5_1: value d·q + m; Q4_0, Q5_0: d·(q - 8) and
// d·(q - 16)). Both are constants after inlining.
static inline int q45_head(int with_min) { return with_min ? 4 : 2; }  // f16 d (and f16 m)
static inline int q45_bytes(int five, int with_min) { return q45_head(with_min) + (five ? 4 : 0) + QK / 2; }
static inline int q45_offset(int five, int with_min) { return with_min ? 0 : five ? 16 : 8; }

// ---- scalar: transcriptions of src/kernels/q*.ts, accumulating in f32 like ggml ----

float herd_dot_q8_0_scalar(int n, const uint8_t *w, const herd_act *x) {
  float sum = 0.0f;
  for (int b = 0; b < n / QK; b++, w += 34) {
    const int8_t *q = (const int8_t *)(w + 2);
    const int8_t *y = x->qs + b * QK;
    int isum = 0;
    for (int j = 0; j < QK; j++) isum += q[j] * y[j];
    sum += (float)isum * (herd_half(w) * x->d[b]);
  }
  return sum;
}

static HERD_INLINE float q45_scalar(int n, const uint8_t *w, const herd_act *x, const int five, const int with_min) {
  const int bytes = q45_bytes(five, with_min), offset = q45_offset(five, with_min);
  float sum = 0.0f;
  for (int b = 0; b < n / QK; b++, w += bytes) {
    const uint32_t qh = five ? herd_le32(w + q45_head(with_min)) : 0;
    const uint8_t *q = w + bytes - QK / 2;
    const int8_t *y = x->qs + b * QK;
    int isum = 0;
    for (int j = 0; j < QK / 2; j++) {
      const int lo = (int)((q[j] & 15) | (((qh >> j) & 1) << 4)) - offset;
      const int hi = (int)((q[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - offset;
      isum += lo * y[j] + hi * y[j + 16];
    }
    const float dot = (float)isum * (herd_half(w) * x->d[b]);
    sum += with_min ? dot + herd_half(w + 2) * x->s[b] : dot;
  }
  return sum;
}

float herd_dot_q4_0_scalar(int n, const uint8_t *w, const herd_act *x) { return q45_scalar(n, w, x, 0, 0); }
float herd_dot_q4_1_scalar(int n, const uint8_t *w, const herd_act *x) { return q45_scalar(n, w, x, 0, 1); }
float herd_dot_q5_0_scalar(int n, const uint8_t *w, const herd_act *x) { return q45_scalar(n, w, x, 1, 0); }
float herd_dot_q5_1_scalar(int n, const uint8_t *w, const herd_act *x) { return q45_scalar(n, w, x, 1, 1); }

// ---- AVX2: one 32-value block per 256-bit vector; maddubs/madd for the integer dot ----

#if defined(HERD_AVX2)

// 16 nibble bytes → 32 bytes: values 0-15 (low nibbles) then 16-31 (high nibbles).
static inline __m256i nibbles_32(const uint8_t *p) {
  const __m128i t = _mm_loadu_si128((const __m128i *)p);
  const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

// The 32 bits of qh spread over 32 bytes: 0xff where bit i is set, else 0.
static inline __m256i bits_32(const uint8_t *p) {
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)herd_le32(p)), shuf);
  // Every bit of each byte set except the one this byte tests: all-ones iff that bit is set.
  const __m256i others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
  return _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1));
}

// Σ of unsigned×signed byte products in 8 int32 lanes, as floats. maddubs saturates at
// ±32767 per byte pair: safe for |u| ≤ 128 against the activation's |qx| ≤ 127.
static inline __m256 dot_us8(__m256i u, __m256i s) {
  const __m256i p16 = _mm256_maddubs_epi16(u, s);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

// Σ of signed×signed byte products: move x's sign onto y so maddubs sees |x| unsigned.
static inline __m256 dot_ss8(__m256i x, __m256i y) {
  return dot_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

// Q8_0 is a type prefill spends its time in, so its kernel takes T activation vectors at once
// (T = 1 for matvec, 4 for matmul): each weight block is unpacked once and met by every
// vector. Per vector the arithmetic is the same whatever T is, so a matmul gives bit for bit
// the results of T matvecs. (Q4_0's products run the gemm below; its single-vector dot here
// stands for the path in the type table.) Two accumulators per vector
// (even and odd blocks) hide the FMA latency. One body serves both types: `four` (a
// constant after inlining) picks Q4_0's 18-byte blocks of nibbles over Q8_0's 34 of bytes.
static inline __m256i quants_q8_0_q4_0(const uint8_t *block, const int four) {
  if (four) return _mm256_sub_epi8(nibbles_32(block + 2), _mm256_set1_epi8(8));
  return _mm256_loadu_si256((const __m256i *)(block + 2));
}

static HERD_INLINE void q8_0_q4_0_avx2(int n, const uint8_t *w, const herd_act *const *x, float *out, const int T, const int four) {
  const int nb = n / QK;
  const int bytes = four ? 18 : 34;
  __m256 acc0[4], acc1[4];
  for (int t = 0; t < T; t++) acc0[t] = acc1[t] = _mm256_setzero_ps();
  int b = 0;
  for (; b + 2 <= nb; b += 2, w += 2 * bytes) {
    const float d0 = herd_half(w), d1 = herd_half(w + bytes);
    const __m256i q0 = quants_q8_0_q4_0(w, four), q1 = quants_q8_0_q4_0(w + bytes, four);
    const __m256i a0 = _mm256_sign_epi8(q0, q0), a1 = _mm256_sign_epi8(q1, q1);
    for (int t = 0; t < T; t++) {
      const int8_t *y = x[t]->qs + b * QK;
      const __m256i y0 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)y), q0);
      const __m256i y1 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(y + 32)), q1);
      acc0[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * x[t]->d[b]), dot_us8(a0, y0), acc0[t]);
      acc1[t] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * x[t]->d[b + 1]), dot_us8(a1, y1), acc1[t]);
    }
  }
  if (b < nb) {
    const float d0 = herd_half(w);
    const __m256i q0 = quants_q8_0_q4_0(w, four);
    for (int t = 0; t < T; t++) {
      const __m256i y0 = _mm256_loadu_si256((const __m256i *)(x[t]->qs + b * QK));
      acc0[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * x[t]->d[b]), dot_ss8(q0, y0), acc0[t]);
    }
  }
  for (int t = 0; t < T; t++) out[t] = herd_hsum_f32x8(_mm256_add_ps(acc0[t], acc1[t]));
}

HERD_DEFINE_DOTS(q8_0, avx2, q8_0_q4_0_avx2, 0)
HERD_DEFINE_DOT(q4_0, avx2, q8_0_q4_0_avx2, 1)

// ---- the gemms' prefetch of the next row group ----
//
// A gemm reads its rows side by side, 18 bytes of each per block: too many streams for the
// hardware prefetcher (on Zen 4 a DRAM-bound matvec ran at a third of the bandwidth without).
// So each block prefetches its share of the next row group, into L2 (T1), not L1 (T0): on a
// 2-core AMD EPYC VM one pinned thread then decoded TinyLlama Q4_0 at 33–37 ms a token
// against 54–58, and 2 threads at 35.2 tok/s (1.09× llama.cpp) against 29.6 (0.85×), npm run
// bench in one session; prefetching 2 or 4 row groups ahead instead was slower (60–67 ms).
typedef struct {
  const uint8_t *at, *end;
  size_t step;
} row_prefetch;

// The row group after the one of `span` bytes at w, spread over its nb blocks.
static inline row_prefetch next_rows(const uint8_t *w, size_t span, int nb) {
  return (row_prefetch){w + span, w + 2 * span, (span / (size_t)nb + 63) & ~(size_t)63};
}

// One block's share of the prefetch.
static inline void prefetch_step(row_prefetch *pf) {
  for (const uint8_t *p = pf->at; p < pf->end && p < pf->at + pf->step; p += 64) _mm_prefetch((const char *)p, _MM_HINT_T1);
  pf->at += pf->step;
}

// Activation vectors a gemm runs at once: their accumulators stay in L1.
#define GEMM_VECS 64

// ---- AVX2 gemm: Q4_0 rows with lane = row, eight at a time, matvec or matmul ----
//
// The AVX-512 gemm's layout (below) on 256 bits without VNNI. Per block the eight rows' 16
// nibble bytes are transposed (dword j of every row in one vector) and split into four low
// and four high nibble vectors, once for all the product's vectors. Each vector then costs 8
// maddubs against its quants' dwords broadcast (unsigned nibbles 0-15 by signed int8: a pair
// is at most 2·15·128, eight pairs summed at most 30720, so the int16 adds cannot saturate),
// one madd to int32, its -8·Σq offset (qoff, as the AVX-512 gemm) and one conversion, scale
// product and FMA for all eight rows:
//   acc = fma(dw_b·dx_b, (float)Σ_b (q - 8)·qx, acc)   for b = 0, 1, … in order,
// the AVX-512 gemm's chain, so the two paths give the same bits, and a matmul its matvecs'.
// The per-row kernel above pays two sign operations, a horizontal sum per row and a scale
// broadcast per block instead.
static void gemm8_q4_0_avx2(int nb, const uint8_t *w, size_t row_bytes, int nrows, const herd_act *x, int nx, float *out,
                            size_t out_stride) {
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1);
  const uint8_t *wr[8];
  for (int r = 0; r < 8; r++) wr[r] = w + (size_t)(r < nrows ? r : nrows - 1) * row_bytes;
  __m256 acc[GEMM_VECS];
  for (int t0 = 0; t0 < nx; t0 += GEMM_VECS) {
    row_prefetch pf = next_rows(w, (size_t)8 * row_bytes, nb);
    const int T = nx - t0 < GEMM_VECS ? nx - t0 : GEMM_VECS;
    const herd_act *xs = x + t0;
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
      const size_t at = (size_t)b * 18;
      prefetch_step(&pf);
      // v[k]: row k in the low 128 bits, row k + 4 in the high
      __m256i v[4];
      for (int k = 0; k < 4; k++)
        v[k] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(wr[k] + at + 2))),
                                       _mm_loadu_si128((const __m128i *)(wr[k + 4] + at + 2)), 1);
      const __m256i a0 = _mm256_unpacklo_epi32(v[0], v[1]), a1 = _mm256_unpackhi_epi32(v[0], v[1]);
      const __m256i a2 = _mm256_unpacklo_epi32(v[2], v[3]), a3 = _mm256_unpackhi_epi32(v[2], v[3]);
      // d[j]: dword j of rows 0 … 7, in lane order
      const __m256i d[4] = {_mm256_unpacklo_epi64(a0, a2), _mm256_unpackhi_epi64(a0, a2), _mm256_unpacklo_epi64(a1, a3),
                            _mm256_unpackhi_epi64(a1, a3)};
      __m256i lo[4], hi[4];  // quants 4j … 4j+3 (low nibbles) and 16 + 4j … (high) of each row
      for (int j = 0; j < 4; j++) {
        lo[j] = _mm256_and_si256(d[j], m4);
        hi[j] = _mm256_and_si256(_mm256_srli_epi16(d[j], 4), m4);
      }
      // The rows' f16 scales in lane order, gathered in registers: eight 2-byte stores then a
      // 16-byte load would stall on store forwarding every block.
      const __m256i dd = _mm256_and_si256(
          _mm256_setr_epi32((int)herd_le32(wr[0] + at), (int)herd_le32(wr[1] + at), (int)herd_le32(wr[2] + at),
                            (int)herd_le32(wr[3] + at), (int)herd_le32(wr[4] + at), (int)herd_le32(wr[5] + at),
                            (int)herd_le32(wr[6] + at), (int)herd_le32(wr[7] + at)),
          _mm256_set1_epi32(0xffff));
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(dd, dd), 0x08);
      const __m256 dw = _mm256_cvtph_ps(_mm256_castsi256_si128(packed));
      for (int t = 0; t < T; t++) {
        const herd_act *a = &xs[t];
        int32_t y[8];
        memcpy(y, a->qs + (size_t)b * QK, 32);
        __m256i p = _mm256_maddubs_epi16(lo[0], _mm256_set1_epi32(y[0]));
        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(hi[0], _mm256_set1_epi32(y[4])));
        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(lo[1], _mm256_set1_epi32(y[1])));
        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(hi[1], _mm256_set1_epi32(y[5])));
        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(lo[2], _mm256_set1_epi32(y[2])));
        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(hi[2], _mm256_set1_epi32(y[6])));
        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(lo[3], _mm256_set1_epi32(y[3])));
        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(hi[3], _mm256_set1_epi32(y[7])));
        const __m256i s = _mm256_add_epi32(_mm256_madd_epi16(p, ones), _mm256_set1_epi32(a->qoff[b]));
        const __m256 dwdx = _mm256_mul_ps(dw, _mm256_set1_ps(a->d[b]));
        acc[t] = _mm256_fmadd_ps(dwdx, _mm256_cvtepi32_ps(s), acc[t]);
      }
    }
    for (int t = 0; t < T; t++) {
      float v8[8];
      _mm256_storeu_ps(v8, acc[t]);
      for (int r = 0; r < nrows && r < 8; r++) out[(size_t)(t0 + t) * out_stride + r] = v8[r];
    }
  }
}

// The product's HERD_GEMM_ROWS rows as groups of eight.
void herd_gemm_q4_0_avx2(int n, const uint8_t *w, size_t row_bytes, int nrows, const herd_act *x, int nx, float *out,
                         size_t out_stride) {
  for (int r = 0; r < nrows; r += 8)
    gemm8_q4_0_avx2(n / QK, w + (size_t)r * row_bytes, row_bytes, nrows - r < 8 ? nrows - r : 8, x, nx, out + r, out_stride);
}

// Q4_1, Q5_0 and Q5_1 (Q4_0 runs the two-block body above).
static HERD_INLINE float q45_avx2(int n, const uint8_t *w, const herd_act *x, const int five, const int with_min) {
  const int bytes = q45_bytes(five, with_min);
  __m256 acc = _mm256_setzero_ps();
  float mins = 0.0f;
  for (int b = 0; b < n / QK; b++, w += bytes) {
    if (with_min) mins += herd_half(w + 2) * x->s[b];
    const __m256 d = _mm256_set1_ps(herd_half(w) * x->d[b]);
    const __m256i y = _mm256_loadu_si256((const __m256i *)(x->qs + b * QK));
    __m256i q = nibbles_32(w + bytes - QK / 2);
    if (five && !with_min) {
      // q - 16 as a signed byte: the nibble itself where the fifth bit is set, else the
      // nibble with 0xf0 or-ed in (nibble - 16).
      q = _mm256_or_si256(q, _mm256_andnot_si256(bits_32(w + 2), _mm256_set1_epi8((char)0xf0)));
      acc = _mm256_fmadd_ps(d, dot_ss8(q, y), acc);
    } else {
      if (five) q = _mm256_or_si256(q, _mm256_and_si256(bits_32(w + 4), _mm256_set1_epi8(0x10)));
      acc = _mm256_fmadd_ps(d, dot_us8(q, y), acc);
    }
  }
  return with_min ? herd_hsum_f32x8(acc) + mins : herd_hsum_f32x8(acc);
}

float herd_dot_q4_1_avx2(int n, const uint8_t *w, const herd_act *x) { return q45_avx2(n, w, x, 0, 1); }
float herd_dot_q5_0_avx2(int n, const uint8_t *w, const herd_act *x) { return q45_avx2(n, w, x, 1, 0); }
float herd_dot_q5_1_avx2(int n, const uint8_t *w, const herd_act *x) { return q45_avx2(n, w, x, 1, 1); }

#endif

// ---- AVX-512 VNNI: two blocks per 512-bit vector, vpdpbusd for the integer dot ----

#if defined(HERD_AVX512)

// Two blocks' scales, one per 256-bit half (the int32 lanes of each block).
static inline __m512 scales_2(float d0, float d1) {
  return _mm512_insertf32x8(_mm512_set1_ps(d0), _mm256_set1_ps(d1), 1);
}

// The activation's scales of blocks b and b+1 spread the same way: two loads' worth of
// work instead of two scalar products and broadcasts per vector.
static inline __m512 act_scales_2(const float *d) {
  const __m512 v = _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)d)));
  return _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0), v);
}

static inline __m512i nibbles_64(const uint8_t *p0, const uint8_t *p1) {
  const __m128i t0 = _mm_loadu_si128((const __m128i *)p0);
  const __m128i t1 = _mm_loadu_si128((const __m128i *)p1);
  const __m256i v0 = _mm256_inserti128_si256(_mm256_castsi128_si256(t0), _mm_srli_epi16(t0, 4), 1);
  const __m256i v1 = _mm256_inserti128_si256(_mm256_castsi128_si256(t1), _mm_srli_epi16(t1, 4), 1);
  return _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(v0), v1, 1), _mm512_set1_epi8(0x0f));
}

static inline __m512i load_2x32(const uint8_t *p0, const uint8_t *p1) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p0)), _mm256_loadu_si256((const __m256i *)p1), 1);
}

// Σ q·y per int32 lane for two blocks of Q8_0 (four = 0) or Q4_0 (four = 1) weights, their
// quants unpacked by quants_q8_0_q4_0_x2 once for every activation vector.
static inline __m512i quants_q8_0_q4_0_x2(const uint8_t *w, const int four) {
  if (four) return nibbles_64(w + 2, w + 20);
  return load_2x32(w + 2, w + 36);
}

static inline __m512i dot_q8_0_q4_0_x2(__m512i q, __m512i y, const int four) {
  if (four) {
    // Σ (q - 8)·y = Σ q·y - Σ 8·y, both with unsigned q against signed y.
    const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y);
    return _mm512_sub_epi32(p, _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), y));
  }
  // vpdpbusd multiplies unsigned by signed bytes: |q| against y carrying q's sign.
  const __m512i sy = _mm512_mask_sub_epi8(y, _mm512_movepi8_mask(q), _mm512_setzero_si512(), y);
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(q), sy);
}

// Two blocks per step; a last odd block goes to the AVX2 body.
static HERD_INLINE void q8_0_q4_0_avx512(int n, const uint8_t *w, const herd_act *const *x, float *out, const int T, const int four) {
  const int nb = n / QK;
  const int bytes = four ? 18 : 34;
  __m512 acc[4];
  for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
  int b = 0;
  for (; b + 2 <= nb; b += 2, w += 2 * bytes) {
    const __m512 dw = scales_2(herd_half(w), herd_half(w + bytes));
    const __m512i q = quants_q8_0_q4_0_x2(w, four);
    for (int t = 0; t < T; t++) {
      const __m512i y = _mm512_loadu_si512((const void *)(x[t]->qs + b * QK));
      const __m512i p = dot_q8_0_q4_0_x2(q, y, four);
      acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, act_scales_2(x[t]->d + b)), _mm512_cvtepi32_ps(p), acc[t]);
    }
  }
  const herd_act *tail[4];
  herd_act tails[4];
  for (int t = 0; t < T; t++) {
    out[t] = _mm512_reduce_add_ps(acc[t]);
    tails[t] = *x[t];
    tails[t].qs += b * QK;
    tails[t].d += b;
    tail[t] = &tails[t];
  }
  if (b < nb) {
    float rest[4];
    q8_0_q4_0_avx2(QK, w, tail, rest, T, four);
    for (int t = 0; t < T; t++) out[t] += rest[t];
  }
}

HERD_DEFINE_DOTS(q8_0, avx512, q8_0_q4_0_avx512, 0)
HERD_DEFINE_DOT(q4_0, avx512, q8_0_q4_0_avx512, 1)

// ---- AVX-512 gemm: 16 rows against every vector of a product, matvec or matmul ----
//
// The kernels above leave each output as 16 partial sums in a vector's lanes and pay a
// conversion, a scale product and an FMA per output per two blocks, then a horizontal sum.
// For Q4_0 (the type decode and prefill spend their time in) the gemm lays 16 rows out with
// lane = row instead. Per block, the rows' 16 nibble bytes are transposed (dword j of every
// row in one vector: eight unpacks) and split into 8 vectors of four unsigned quants a lane,
// once for all the product's vectors. Each vector then costs 8 vpdpbusd against its block's
// quants, a dword broadcast each, started from its -8·Σq (qoff: Q4_0's offset, folded into
// the activation as it is prepared), and one conversion, scale product and FMA for all 16 rows:
//   acc = fma(dw_b·dx_b, (float)Σ_b (q - 8)·qx, acc)   for b = 0, 1, … in order,
// whatever the number of vectors, so a matmul equals its matvecs bit for bit. The vectors'
// accumulators (16 floats each) stay in L1.
//
// It replaced a tile that gathered each row's integer sums into lanes by a transposing
// reduction (Zen 4, one thread: matvec 21 → 33 GB/s over the kernels above) and ran 4 rows × 4
// vectors in a matmul, re-unpacking every row per four vectors: a 32-vector matmul went 66.6 →
// 151–157 GB/s effective (bench-native, 2 threads, Intel Xeon), and decode ran alike on either
// (npm run bench 27.4 / 26.3 against 26.7 / 27.3 tok/s at 2 threads; 15.8–16.4 against
// 15.7–16.4 pinned to one core). Each block prefetches its share of the next 16 rows
// (next_rows, above), as the tile did: without it steps of two decoding sessions over two
// stages had an ITL of 90 ms against the tile's 82 (bench:serve, K = 4, runs alternated; 68–72
// against 75–77 with it).

static HERD_INLINE __m512i load_4x128(const uint8_t *const *rows, size_t at) {
  __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(rows[0] + at)));
  v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[1] + at)), 1);
  v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[2] + at)), 2);
  return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[3] + at)), 3);
}

void herd_gemm_q4_0_avx512(int n, const uint8_t *w, size_t row_bytes, int nrows, const herd_act *x, int nx, float *out,
                           size_t out_stride) {
  const int nb = n / QK;
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  // After the transpose, lane 4i + k holds row 4k + i.
  const uint8_t *wr[16];
  int row_of[16];
  for (int r = 0; r < 16; r++) wr[r] = w + (size_t)(r < nrows ? r : nrows - 1) * row_bytes;
  for (int l = 0; l < 16; l++) row_of[l] = 4 * (l & 3) + (l >> 2);
  __m512 acc[GEMM_VECS];
  for (int t0 = 0; t0 < nx; t0 += GEMM_VECS) {
    row_prefetch pf = next_rows(w, (size_t)16 * row_bytes, nb);
    const int T = nx - t0 < GEMM_VECS ? nx - t0 : GEMM_VECS;
    const herd_act *xs = x + t0;
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
      const size_t at = (size_t)b * 18;
      prefetch_step(&pf);
      __m512i q[4];
      for (int k = 0; k < 4; k++) q[k] = load_4x128(wr + 4 * k, at + 2);
      const __m512i a0 = _mm512_unpacklo_epi32(q[0], q[1]), a1 = _mm512_unpackhi_epi32(q[0], q[1]);
      const __m512i a2 = _mm512_unpacklo_epi32(q[2], q[3]), a3 = _mm512_unpackhi_epi32(q[2], q[3]);
      const __m512i d0 = _mm512_unpacklo_epi64(a0, a2), d1 = _mm512_unpackhi_epi64(a0, a2);
      const __m512i d2 = _mm512_unpacklo_epi64(a1, a3), d3 = _mm512_unpackhi_epi64(a1, a3);
      // lo[j]: quants 4j … 4j+3 of each row (low nibbles), hi[j]: quants 16 + 4j … (high)
      const __m512i lo0 = _mm512_and_si512(d0, m4), lo1 = _mm512_and_si512(d1, m4);
      const __m512i lo2 = _mm512_and_si512(d2, m4), lo3 = _mm512_and_si512(d3, m4);
      const __m512i hi0 = _mm512_and_si512(_mm512_srli_epi16(d0, 4), m4), hi1 = _mm512_and_si512(_mm512_srli_epi16(d1, 4), m4);
      const __m512i hi2 = _mm512_and_si512(_mm512_srli_epi16(d2, 4), m4), hi3 = _mm512_and_si512(_mm512_srli_epi16(d3, 4), m4);
      // The rows' f16 scales, in lane order (scalar loads: the vector ports are the busy ones).
      uint16_t dh[16];
      for (int l = 0; l < 16; l++) memcpy(&dh[l], wr[row_of[l]] + at, 2);
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)dh));
      for (int t = 0; t < T; t++) {
        const herd_act *a = &xs[t];
        int32_t y[8];
        memcpy(y, a->qs + (size_t)b * QK, 32);
        __m512i s0 = _mm512_set1_epi32(a->qoff[b]), s1 = _mm512_setzero_si512();
        s0 = _mm512_dpbusd_epi32(s0, lo0, _mm512_set1_epi32(y[0]));
        s1 = _mm512_dpbusd_epi32(s1, hi0, _mm512_set1_epi32(y[4]));
        s0 = _mm512_dpbusd_epi32(s0, lo1, _mm512_set1_epi32(y[1]));
        s1 = _mm512_dpbusd_epi32(s1, hi1, _mm512_set1_epi32(y[5]));
        s0 = _mm512_dpbusd_epi32(s0, lo2, _mm512_set1_epi32(y[2]));
        s1 = _mm512_dpbusd_epi32(s1, hi2, _mm512_set1_epi32(y[6]));
        s0 = _mm512_dpbusd_epi32(s0, lo3, _mm512_set1_epi32(y[3]));
        s1 = _mm512_dpbusd_epi32(s1, hi3, _mm512_set1_epi32(y[7]));
        const __m512 dwdx = _mm512_mul_ps(dw, _mm512_set1_ps(a->d[b]));
        acc[t] = _mm512_fmadd_ps(dwdx, _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), acc[t]);
      }
    }
    for (int t = 0; t < T; t++) {
      float v[16];
      _mm512_storeu_ps(v, acc[t]);
      for (int l = 0; l < 16; l++) {
        if (row_of[l] < nrows) out[(size_t)(t0 + t) * out_stride + row_of[l]] = v[l];
      }
    }
  }
}

#endif

// ---- NEON: 16 bytes per vector; the integer dot is vdotq_s32 when the CPU has it (Pi 5),
// else widening multiplies (vmull_s8) and pairwise adds (Pi 4). ----

#if defined(HERD_NEON)

// The fifth bits of qh for values 0-15 (lo) and 16-31 (hi): 0x10 where set.
static inline void bits_32_neon(const uint8_t *p, uint8x16_t *lo, uint8x16_t *hi) {
  static const uint8_t idx_lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
  static const uint8_t idx_hi[16] = {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
  static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
  const uint8x16_t qh = vreinterpretq_u8_u32(vdupq_n_u32(herd_le32(p)));
  const uint8x16_t m = vld1q_u8(bit);
  *lo = vandq_u8(vtstq_u8(vqtbl1q_u8(qh, vld1q_u8(idx_lo)), m), vdupq_n_u8(0x10));
  *hi = vandq_u8(vtstq_u8(vqtbl1q_u8(qh, vld1q_u8(idx_hi)), m), vdupq_n_u8(0x10));
}

// acc + (Σ q·y over one block's 32 values)·scale; lo and hi are values 0-15 and 16-31.
static inline float32x4_t block_fma(float32x4_t acc, int8x16_t lo, int8x16_t hi, const int8_t *y, float scale, int dotprod) {
  const int32x4_t p = herd_dot16(herd_dot16(vdupq_n_s32(0), lo, vld1q_s8(y), dotprod), hi, vld1q_s8(y + 16), dotprod);
  return vfmaq_n_f32(acc, vcvtq_f32_s32(p), scale);
}

static inline float q8_0_neon(int n, const uint8_t *w, const herd_act *x, int dotprod) {
  float32x4_t acc = vdupq_n_f32(0.0f);
  for (int b = 0; b < n / QK; b++, w += 34) {
    const int8x16_t lo = vld1q_s8((const int8_t *)(w + 2)), hi = vld1q_s8((const int8_t *)(w + 18));
    acc = block_fma(acc, lo, hi, x->qs + b * QK, herd_half(w) * x->d[b], dotprod);
  }
  return vaddvq_f32(acc);
}

static HERD_INLINE float q45_neon(int n, const uint8_t *w, const herd_act *x, int dotprod, const int five, const int with_min) {
  const int bytes = q45_bytes(five, with_min);
  const int8x16_t offset = vdupq_n_s8((int8_t)q45_offset(five, with_min));
  float32x4_t acc = vdupq_n_f32(0.0f);
  float mins = 0.0f;
  for (int b = 0; b < n / QK; b++, w += bytes) {
    if (with_min) mins += herd_half(w + 2) * x->s[b];
    const uint8x16_t v = vld1q_u8(w + bytes - QK / 2);
    uint8x16_t lo = vandq_u8(v, vdupq_n_u8(0x0f)), hi = vshrq_n_u8(v, 4);
    if (five) {
      uint8x16_t hlo, hhi;
      bits_32_neon(w + q45_head(with_min), &hlo, &hhi);
      lo = vorrq_u8(lo, hlo);
      hi = vorrq_u8(hi, hhi);
    }
    const int8x16_t slo = vsubq_s8(vreinterpretq_s8_u8(lo), offset), shi = vsubq_s8(vreinterpretq_s8_u8(hi), offset);
    acc = block_fma(acc, slo, shi, x->qs + b * QK, herd_half(w) * x->d[b], dotprod);
  }
  return with_min ? vaddvq_f32(acc) + mins : vaddvq_f32(acc);
}

static inline float q4_0_neon(int n, const uint8_t *w, const herd_act *x, int dotprod) { return q45_neon(n, w, x, dotprod, 0, 0); }
static inline float q4_1_neon(int n, const uint8_t *w, const herd_act *x, int dotprod) { return q45_neon(n, w, x, dotprod, 0, 1); }
static inline float q5_0_neon(int n, const uint8_t *w, const herd_act *x, int dotprod) { return q45_neon(n, w, x, dotprod, 1, 0); }
static inline float q5_1_neon(int n, const uint8_t *w, const herd_act *x, int dotprod) { return q45_neon(n, w, x, dotprod, 1, 1); }

HERD_NEON_PAIR(q8_0)
HERD_NEON_PAIR(q4_0)
HERD_NEON_PAIR(q4_1)
HERD_NEON_PAIR(q5_0)
HERD_NEON_PAIR(q5_1)

#endif
