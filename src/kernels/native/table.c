// The native type table: one row per ggml type, as src/kernels/types.ts, with the dot
// product of every instruction-set path this build compiled. Adding a type means adding
// its kernels and one row here.

#include "herd.h"

#if defined(HERD_AVX2)
#define AVX2(fn) fn
#else
#define AVX2(fn) NULL
#endif
#if defined(HERD_AVX512)
#define AVX512(fn) fn
#else
#define AVX512(fn) NULL
#endif
#if defined(HERD_NEON)
#define NEON(fn) fn
#else
#define NEON(fn) NULL
#endif
#if defined(HERD_NEON_DOTPROD)
#define NEONDOT(fn) fn
#else
#define NEONDOT(fn) NULL
#endif

#define ROW(TYPE, name, block, bytes, act, scalar, avx2, avx512, neon, neondot) \
  {TYPE, name, block, bytes, act, {scalar, AVX2(avx2), AVX512(avx512), NEON(neon), NEONDOT(neondot)}, {NULL}, {NULL}}
#define ROW4(TYPE, name, block, bytes, act, scalar, avx2, avx512, neon, neondot, avx2_4, avx512_4)     \
  {TYPE, name, block, bytes, act, {scalar, AVX2(avx2), AVX512(avx512), NEON(neon), NEONDOT(neondot)}, \
   {NULL, AVX2(avx2_4), AVX512(avx512_4), NULL, NULL}, {NULL}}
// ROW plus AVX2 and AVX-512 gemm kernels (dot_q.c), which then run every product on their paths.
#define ROWG(TYPE, name, block, bytes, act, scalar, avx2, avx512, neon, neondot, avx2_g, avx512_g) \
  {TYPE, name, block, bytes, act, {scalar, AVX2(avx2), AVX512(avx512), NEON(neon), NEONDOT(neondot)}, \
   {NULL}, {NULL, AVX2(avx2_g), AVX512(avx512_g), NULL, NULL}}

static const herd_type_traits table[] = {
    ROW(HERD_F32, "F32", 1, 4, ACT_F32, herd_dot_f32_scalar, herd_dot_f32_avx2, herd_dot_f32_avx512, herd_dot_f32_neon, NULL),
    ROW(HERD_F16, "F16", 1, 2, ACT_F16, herd_dot_f16_scalar, herd_dot_f16_avx2, herd_dot_f16_avx512, herd_dot_f16_neon, NULL),
    ROW(HERD_BF16, "BF16", 1, 2, ACT_BF16, herd_dot_bf16_scalar, herd_dot_bf16_avx2, herd_dot_bf16_avx512, herd_dot_bf16_neon, NULL),
    ROW4(HERD_Q8_0, "Q8_0", 32, 34, ACT_Q8_0, herd_dot_q8_0_scalar, herd_dot_q8_0_avx2, herd_dot_q8_0_avx512, herd_dot_q8_0_neon, herd_dot_q8_0_neondot,
         herd_dot4_q8_0_avx2, herd_dot4_q8_0_avx512),
    ROWG(HERD_Q4_0, "Q4_0", 32, 18, ACT_Q8_0, herd_dot_q4_0_scalar, herd_dot_q4_0_avx2, herd_dot_q4_0_avx512, herd_dot_q4_0_neon, herd_dot_q4_0_neondot,
         herd_gemm_q4_0_avx2, herd_gemm_q4_0_avx512),
    ROW(HERD_Q4_1, "Q4_1", 32, 20, ACT_Q8_1, herd_dot_q4_1_scalar, herd_dot_q4_1_avx2, NULL, herd_dot_q4_1_neon, herd_dot_q4_1_neondot),
    ROW(HERD_Q5_0, "Q5_0", 32, 22, ACT_Q8_0, herd_dot_q5_0_scalar, herd_dot_q5_0_avx2, NULL, herd_dot_q5_0_neon, herd_dot_q5_0_neondot),
    ROW(HERD_Q5_1, "Q5_1", 32, 24, ACT_Q8_1, herd_dot_q5_1_scalar, herd_dot_q5_1_avx2, NULL, herd_dot_q5_1_neon, herd_dot_q5_1_neondot),
    ROW(HERD_Q2_K, "Q2_K", 256, 84, ACT_Q8_K, herd_dot_q2_k_scalar, herd_dot_q2_k_avx2, NULL, herd_dot_q2_k_neon, herd_dot_q2_k_neondot),
    ROW(HERD_Q3_K, "Q3_K", 256, 110, ACT_Q8_K, herd_dot_q3_k_scalar, herd_dot_q3_k_avx2, NULL, herd_dot_q3_k_neon, herd_dot_q3_k_neondot),
    ROW4(HERD_Q4_K, "Q4_K", 256, 144, ACT_Q8_K, herd_dot_q4_k_scalar, herd_dot_q4_k_avx2, herd_dot_q4_k_avx512, herd_dot_q4_k_neon, herd_dot_q4_k_neondot,
         herd_dot4_q4_k_avx2, herd_dot4_q4_k_avx512),
    ROW4(HERD_Q5_K, "Q5_K", 256, 176, ACT_Q8_K, herd_dot_q5_k_scalar, herd_dot_q5_k_avx2, herd_dot_q5_k_avx512, herd_dot_q5_k_neon, herd_dot_q5_k_neondot,
         NULL, herd_dot4_q5_k_avx512),
    ROW4(HERD_Q6_K, "Q6_K", 256, 210, ACT_Q8_K, herd_dot_q6_k_scalar, herd_dot_q6_k_avx2, herd_dot_q6_k_avx512, herd_dot_q6_k_neon, herd_dot_q6_k_neondot,
         herd_dot4_q6_k_avx2, herd_dot4_q6_k_avx512),
};

const herd_type_traits *herd_traits(int type) {
  for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
    if (table[i].type == type) return &table[i];
  }
  return NULL;
}

// Each path falls back to the one below it: AVX-512 → AVX2 → scalar, NEON with the
// dot-product instruction → plain NEON → scalar.
static int isa_below(int isa) {
  switch (isa) {
    case ISA_AVX512: return ISA_AVX2;
    case ISA_NEON_DOTPROD: return ISA_NEON;
    default: return ISA_SCALAR;
  }
}

static int resolve(const herd_type_traits *t, int isa) {
  while (isa != ISA_SCALAR && t->dot[isa] == NULL) isa = isa_below(isa);
  return isa;
}

herd_dot_fn herd_dot(const herd_type_traits *t, int isa) {
  return t->dot[resolve(t, isa)];
}

// Only the four-vector kernel of the very path herd_dot runs: another path's would sum in
// another order, and matmul would no longer equal matvec bit for bit.
herd_dot4_fn herd_dot4(const herd_type_traits *t, int isa) {
  return t->dot4[resolve(t, isa)];
}

herd_gemm_fn herd_gemm(const herd_type_traits *t, int isa) {
  return t->gemm[resolve(t, isa)];
}

int herd_isa_compiled(int isa) {
  switch (isa) {
    case ISA_SCALAR: return 1;
#if defined(HERD_AVX2)
    case ISA_AVX2: return 1;
#endif
#if defined(HERD_AVX512)
    case ISA_AVX512: return 1;
#endif
#if defined(HERD_NEON)
    case ISA_NEON: return 1;
#endif
#if defined(HERD_NEON_DOTPROD)
    case ISA_NEON_DOTPROD: return 1;
#endif
    default: return 0;
  }
}

const char *herd_isa_name(int isa) {
  static const char *names[ISA_COUNT] = {"scalar", "avx2", "avx512", "neon", "neon-dotprod"};
  return isa >= 0 && isa < ISA_COUNT ? names[isa] : "?";
}
