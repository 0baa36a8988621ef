// The Node-API face of the native kernels (loaded by ./index.ts, which checks arguments
// and gives errors their user-facing form; the checks here only keep memory safe).
//
//   info()                                   { isas: string[], types: number[] }
//   create(threads, spinUs, isa)             a backend handle (an external)
//   close(handle)                            stops its threads
//   alloc(bytes)                             zeroed ArrayBuffer, 64-byte aligned, owned here
//   matvec(handle, type, w, rows, cols, x, out, parallel)
//   matmul(handle, type, w, rows, cols, xs, n, out, parallel)    out[t·rows + r]
//   prepare(kind, x, n, f, qs, d, s, bsums)  an activation, for tests against activation.ts

#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#define _GNU_SOURCE
#include <node_api.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "herd.h"
#include "pool.h"
#include "ops.h"
#include "napi_util.h"

// ---- weight memory ----

// Weights of a megabyte or more come from mmap: zero pages cost nothing until the model
// writes the tensor into them, page alignment covers the 64-byte promise, and Linux may
// back them with huge pages (fewer TLB misses while streaming a matrix).
#define MMAP_MIN ((size_t)1 << 20)

static void free_weights(napi_env env, void *data, void *hint) {
  (void)env;
  const size_t bytes = (size_t)(uintptr_t)hint;
  if (bytes >= MMAP_MIN) munmap(data, bytes);
  else free(data);
}

static napi_value js_alloc(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  double req;
  CHECK(napi_get_value_double(env, argv[0], &req));
  if (!(req >= 0 && req <= (double)SIZE_MAX / 2)) THROW("cannot allocate %.0f bytes", req);
  const size_t bytes = (size_t)req;
  const size_t size = bytes < 64 ? 64 : bytes;  // never a zero-length block
  void *p = NULL;
  if (size >= MMAP_MIN) {
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) p = NULL;
#if defined(MADV_HUGEPAGE)
    if (p) madvise(p, size, MADV_HUGEPAGE);
#endif
  } else if (posix_memalign(&p, 64, size) == 0) {
    memset(p, 0, size);
  } else {
    p = NULL;
  }
  if (!p) THROW("out of memory allocating %zu bytes of weights", bytes);
  napi_value ab;
  const napi_status st = napi_create_external_arraybuffer(env, p, bytes, free_weights, (void *)(uintptr_t)size, &ab);
  if (st != napi_ok) {
    // Runtimes that forbid external buffers (napi_no_external_buffers_allowed): let V8
    // allocate. The kernels load unaligned, so only the alignment promise is lost.
    free_weights(env, p, (void *)(uintptr_t)size);
    void *data;
    CHECK(napi_create_arraybuffer(env, bytes, &data, &ab));
  }
  return ab;
}

// ---- backends ----

typedef struct {
  herd_pool *pool;
  int isa;
  napi_env env;
  // Activation scratch, grown on demand: never freed while the backend lives.
  size_t cap_f, cap_qs, cap_d, cap_s, cap_bs, cap_qoff, cap_acts;
  float *f, *d, *s;
  int8_t *qs;
  int16_t *bsums;
  int32_t *qoff;
  herd_act *acts;
} backend;

static void backend_stop(void *arg) {
  backend *b = arg;
  if (b->pool) herd_pool_destroy(b->pool);
  b->pool = NULL;
}

static void backend_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  backend *b = data;
  if (b->pool) {
    napi_remove_env_cleanup_hook(env, backend_stop, b);
    backend_stop(b);
  }
  free(b->f);
  free(b->d);
  free(b->s);
  free(b->qs);
  free(b->bsums);
  free(b->qoff);
  free(b->acts);
  free(b);
}

static napi_value js_create(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t threads, spin_us, isa;
  CHECK(napi_get_value_int32(env, argv[0], &threads));
  CHECK(napi_get_value_int32(env, argv[1], &spin_us));
  CHECK(napi_get_value_int32(env, argv[2], &isa));
  // MAX_THREADS of src/kernels/checks.ts, which the TypeScript side checks first.
  if (threads < 1 || threads > 256) THROW("threads must be 1 … 256, got %d", threads);
  if (isa < 0 || isa >= ISA_COUNT || !herd_isa_compiled(isa)) THROW("instruction-set path %d is not compiled in", isa);
  backend *b = calloc(1, sizeof(*b));
  if (!b) THROW("out of memory");
  b->isa = isa;
  b->env = env;
  b->pool = herd_pool_create(threads, spin_us);
  if (!b->pool) {
    free(b);
    THROW("cannot start %d threads", threads);
  }
  napi_add_env_cleanup_hook(env, backend_stop, b);
  napi_value handle;
  CHECK(napi_create_external(env, b, backend_finalize, NULL, &handle));
  return handle;
}

static backend *get_backend(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || !p) return NULL;
  return p;
}

herd_pool *herd_backend_pool(napi_env env, napi_value v, int *isa) {
  backend *b = get_backend(env, v);
  if (!b) return NULL;
  *isa = b->isa;
  return b->pool;
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  backend *b = get_backend(env, argv[0]);
  if (!b) THROW("not a backend handle");
  if (b->pool) {
    napi_remove_env_cleanup_hook(env, backend_stop, b);
    backend_stop(b);
  }
  return NULL;
}

static napi_value js_threads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  backend *b = get_backend(env, argv[0]);
  if (!b || !b->pool) THROW("backend is closed");
  napi_value v;
  CHECK(napi_create_int32(env, herd_pool_threads(b->pool), &v));
  return v;
}

// The scratch buffer `old` if it holds `need` elements of `size` bytes, else a new one
// (64-byte aligned) with *cap updated; NULL when out of memory (old is kept).
static void *grown(void *old, size_t *cap, size_t need, size_t size) {
  if (need <= *cap) return old;
  void *p = NULL;
  if (posix_memalign(&p, 64, need * size + 64) != 0) return NULL;
  free(old);
  *cap = need;
  return p;
}

#define GROW(field, cap, need)                                                  \
  do {                                                                          \
    void *p_ = grown(b->field, &b->cap, (need), sizeof(*b->field));             \
    if (!p_) return 0;                                                          \
    b->field = p_;                                                              \
  } while (0)

// One activation vector to prepare: vector t of a prepare_acts call.
typedef struct {
  backend *b;
  int kind, cols;
  const float *xs;
  size_t qstride, dstride, bstride;
  int qoff;  // Q8_0 for Q4_0's gemm: also -8·Σq per block (herd.h)
} prepare_job;

static void prepare_one(void *ctx, int t) {
  const prepare_job *j = ctx;
  backend *b = j->b;
  const int cols = j->cols;
  herd_act *a = &b->acts[t];
  const float *x = j->xs + (size_t)t * cols;
  memset(a, 0, sizeof(*a));
  a->kind = j->kind;
  a->n = cols;
  // Vector t's slice of the scratch arrays its kind uses.
  if (j->kind == ACT_F32 || j->kind == ACT_F16 || j->kind == ACT_BF16) {
    a->f = b->f + (size_t)t * cols;
  } else {
    a->qs = b->qs + (size_t)t * j->qstride;
    a->d = b->d + (size_t)t * j->dstride;
  }
  switch (j->kind) {
    case ACT_F32:
      // Copied (cols floats, nothing next to the weights), so an output that aliases the
      // input still reads the input as it was, as with the js reference.
      memcpy(a->f, x, (size_t)cols * sizeof(float));
      break;
    case ACT_F16: herd_round_f16(x, cols, a->f); break;
    case ACT_BF16: herd_round_bf16(x, cols, a->f); break;
    case ACT_Q8_0:
      herd_quantize_q8_0(x, cols, a->qs, a->d);
      if (j->qoff) {
        a->qoff = b->qoff + (size_t)t * j->dstride;
        for (int k = 0; k < cols / QK; k++) {
          int32_t sum = 0;
          for (int i = 0; i < QK; i++) sum += a->qs[(size_t)k * QK + i];
          a->qoff[k] = -8 * sum;
        }
      }
      break;
    case ACT_Q8_1:
      a->s = b->s + (size_t)t * j->dstride;
      herd_quantize_q8_1(x, cols, a->qs, a->d, a->s);
      break;
    case ACT_Q8_K:
      a->bsums = b->bsums + (size_t)t * j->bstride;
      herd_quantize_q8_k(x, cols, a->qs, a->d, a->bsums);
      break;
  }
}

// Prepares n activation vectors of `cols` values (xs: n·cols floats) in the backend's
// scratch, in the form `kind` (enum herd_act_kind), with Q4_0's offsets when `qoff` (a Q8_0
// kind for the gemm). 0 when out of memory. The vectors of a matmul are prepared on the
// pool's threads (parallel ≠ 0): each is written by one call, so the bits do not depend on
// which thread ran it.
static int prepare_acts(backend *b, int kind, const float *xs, int cols, int n, int qoff, int parallel) {
  const size_t blocks32 = ((size_t)cols + QK - 1) / QK;
  const size_t blocksK = ((size_t)cols + QK_K - 1) / QK_K;
  const size_t qstride = kind == ACT_Q8_K ? blocksK * QK_K : blocks32 * QK;
  const size_t dstride = kind == ACT_Q8_K ? blocksK : blocks32;
  const size_t bstride = blocksK * 16;
  GROW(acts, cap_acts, (size_t)n);
  switch (kind) {
    case ACT_F32:
    case ACT_F16:
    case ACT_BF16:
      GROW(f, cap_f, (size_t)n * cols);
      break;
    case ACT_Q8_0:
    case ACT_Q8_1:
    case ACT_Q8_K:
      GROW(qs, cap_qs, (size_t)n * qstride);
      GROW(d, cap_d, (size_t)n * dstride);
      if (kind == ACT_Q8_1) GROW(s, cap_s, (size_t)n * dstride);
      if (kind == ACT_Q8_K) GROW(bsums, cap_bs, (size_t)n * bstride);
      if (qoff) GROW(qoff, cap_qoff, (size_t)n * dstride);
      break;
    default:
      break;
  }
  prepare_job job = {b, kind, cols, xs, qstride, dstride, bstride, qoff && kind == ACT_Q8_0};
  herd_pool_run(b->pool, prepare_one, &job, n, parallel);
  return 1;
}

// ---- products ----

typedef struct {
  herd_dot_fn dot;
  herd_dot4_fn dot4;  // NULL: every vector goes through dot
  herd_gemm_fn gemm;  // when set, runs every output instead of dot/dot4
  const uint8_t *w;
  size_t row_bytes;
  int rows, cols, n;
  const herd_act *acts;
  float *out;  // out[t·rows + r]
  int chunk;  // rows per chunk
} product;

// One chunk of rows. Chunks go to whichever thread takes them first, so a thread slowed by
// the OS (or a slower core) simply takes fewer. Each row's result is computed by the same
// dot call whichever thread runs it, so results do not depend on the thread count.
static void product_chunk(void *ctx, int chunk) {
  product *p = ctx;
  const int r0 = chunk * p->chunk;
  const int r1 = r0 + p->chunk < p->rows ? r0 + p->chunk : p->rows;
  // A gemm unpacks 16 rows' weights once for every vector.
  if (p->gemm) {
    for (int r = r0; r < r1; r += HERD_GEMM_ROWS) {
      p->gemm(p->cols, p->w + (size_t)r * p->row_bytes, p->row_bytes, r1 - r < HERD_GEMM_ROWS ? r1 - r : HERD_GEMM_ROWS, p->acts,
              p->n, p->out + r, (size_t)p->rows);
    }
    return;
  }
  // Else four activations at a time stay in L1 while the chunk's rows (≤ 64, within L2) pass
  // over them; the weights are unpacked once per four vectors where the type has a
  // four-vector kernel.
  int t = 0;
  if (p->dot4) {
    for (; t + 4 <= p->n; t += 4) {
      const herd_act *xs[4] = {&p->acts[t], &p->acts[t + 1], &p->acts[t + 2], &p->acts[t + 3]};
      for (int r = r0; r < r1; r++) {
        float o[4];
        p->dot4(p->cols, p->w + (size_t)r * p->row_bytes, xs, o);
        for (int k = 0; k < 4; k++) p->out[(size_t)(t + k) * p->rows + r] = o[k];
      }
    }
  }
  for (; t < p->n; t++) {
    for (int r = r0; r < r1; r++) p->out[(size_t)t * p->rows + r] = p->dot(p->cols, p->w + (size_t)r * p->row_bytes, &p->acts[t]);
  }
}

// matvec(handle, type, w, rows, cols, x, out, parallel) is matmul(handle, type, w, rows,
// cols, xs, n, out, parallel) with n = 1: the same code computes both, so a prefill over n
// tokens gives bit-for-bit the logits of n decode steps.
static napi_value run_product(napi_env env, napi_callback_info info, int with_n) {
  const size_t want = with_n ? 9 : 8;
  size_t argc = 9;
  napi_value argv[9];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < want) THROW("%s takes %zu arguments", with_n ? "matmul" : "matvec", want);
  backend *b = get_backend(env, argv[0]);
  if (!b) THROW("not a backend handle");
  if (!b->pool) THROW("backend is closed");
  int32_t type, rows, cols, n = 1, parallel;
  view w, x, out;
  CHECK(napi_get_value_int32(env, argv[1], &type));
  CHECK(napi_get_value_int32(env, argv[3], &rows));
  CHECK(napi_get_value_int32(env, argv[4], &cols));
  if (with_n) CHECK(napi_get_value_int32(env, argv[6], &n));
  CHECK(napi_get_value_int32(env, argv[with_n ? 8 : 7], &parallel));
  const herd_type_traits *t = herd_traits(type);
  if (!t) THROW("no native kernels for ggml type %d", type);
  if (rows < 0 || cols < 0 || n < 1 || cols % t->block != 0) THROW("bad shape %d×%d (n %d) for %s", rows, cols, n, t->name);
  if (!typed_as(env, argv[2], napi_uint8_array, &w)) THROW("weights must be a Uint8Array");
  if (!typed_as(env, argv[5], napi_float32_array, &x)) THROW("input must be a Float32Array");
  if (!typed_as(env, argv[with_n ? 7 : 6], napi_float32_array, &out)) THROW("output must be a Float32Array");
  const size_t row_bytes = (size_t)(cols / t->block) * (size_t)t->block_bytes;
  if (w.length < row_bytes * (size_t)rows) THROW("weights hold %zu bytes, %zu needed", w.length, row_bytes * (size_t)rows);
  if (x.length < (size_t)cols * (size_t)n) THROW("input holds %zu values, %zu needed", x.length, (size_t)cols * (size_t)n);
  if (out.length < (size_t)rows * (size_t)n) THROW("output holds %zu values, %zu needed", out.length, (size_t)rows * (size_t)n);
  if (rows == 0) return NULL;
  product p;
  p.dot = herd_dot(t, b->isa);
  p.dot4 = herd_dot4(t, b->isa);
  p.gemm = herd_gemm(t, b->isa);
  if (!prepare_acts(b, t->act, x.data, cols, n, p.gemm != NULL, parallel)) THROW("out of memory preparing activations");
  p.w = w.data;
  p.row_bytes = row_bytes;
  p.rows = rows;
  p.cols = cols;
  p.n = n;
  p.acts = b->acts;
  p.out = out.data;
  // About four chunks per thread balance the load; at most 64 rows keep a chunk's weights
  // within L2 while the n activations pass over them.
  const int nth = herd_pool_threads(b->pool);
  const int chunk = rows / (4 * nth);
  p.chunk = chunk < 1 ? 1 : chunk > 64 ? 64 : chunk;
  // A gemm covers 16 rows: whole ones per chunk (only the last one is short).
  if (p.gemm) p.chunk = (p.chunk + HERD_GEMM_ROWS - 1) / HERD_GEMM_ROWS * HERD_GEMM_ROWS;
  herd_pool_run(b->pool, product_chunk, &p, (rows + p.chunk - 1) / p.chunk, parallel);
  return NULL;
}

static napi_value js_matvec(napi_env env, napi_callback_info info) { return run_product(env, info, 0); }
static napi_value js_matmul(napi_env env, napi_callback_info info) { return run_product(env, info, 1); }

// prepare(kind, x, n, f, qs, d, s, bsums): the activation of x[0..n) written into the
// given arrays, sized as src/kernels/activation.ts sizes them.
static napi_value js_prepare(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 8) THROW("prepare takes 8 arguments");
  int32_t kind, n;
  view x, f, qs, d, s, bs;
  CHECK(napi_get_value_int32(env, argv[0], &kind));
  CHECK(napi_get_value_int32(env, argv[2], &n));
  if (!typed_as(env, argv[1], napi_float32_array, &x) || !typed_as(env, argv[3], napi_float32_array, &f) ||
      !typed_as(env, argv[4], napi_int8_array, &qs) || !typed_as(env, argv[5], napi_float32_array, &d) ||
      !typed_as(env, argv[6], napi_float32_array, &s) || !typed_as(env, argv[7], napi_int16_array, &bs)) {
    THROW("prepare: wrong array types");
  }
  const size_t un = n < 0 ? 0 : (size_t)n;
  const size_t b32 = (un + QK - 1) / QK;
  if (x.length < un || f.length < un) THROW("prepare: arrays shorter than %d", n);
  switch (kind) {
    case ACT_F32: memcpy(f.data, x.data, un * sizeof(float)); break;
    case ACT_F16: herd_round_f16(x.data, n, f.data); break;
    case ACT_BF16: herd_round_bf16(x.data, n, f.data); break;
    case ACT_Q8_0:
    case ACT_Q8_1:
      if (qs.length < b32 * QK || d.length < b32 || s.length < b32) THROW("prepare: arrays too short for %d values", n);
      if (kind == ACT_Q8_0) herd_quantize_q8_0(x.data, n, qs.data, d.data);
      else herd_quantize_q8_1(x.data, n, qs.data, d.data, s.data);
      break;
    case ACT_Q8_K:
      if (n % QK_K != 0) THROW("q8_k activation of %d values: not a multiple of %d", n, QK_K);
      if (qs.length < un || d.length < un / QK_K || bs.length < un / 16) THROW("prepare: arrays too short for %d values", n);
      herd_quantize_q8_k(x.data, n, qs.data, d.data, bs.data);
      break;
    default: THROW("unknown activation kind %d", kind);
  }
  return NULL;
}

static napi_value js_info(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value obj, isas, types;
  CHECK(napi_create_object(env, &obj));
  CHECK(napi_create_array(env, &isas));
  CHECK(napi_create_array(env, &types));
  uint32_t k = 0;
  for (int isa = 0; isa < ISA_COUNT; isa++) {
    if (!herd_isa_compiled(isa)) continue;
    napi_value v;
    CHECK(napi_create_string_utf8(env, herd_isa_name(isa), NAPI_AUTO_LENGTH, &v));
    CHECK(napi_set_element(env, isas, k++, v));
  }
  k = 0;
  for (int type = 0; type < 64; type++) {
    if (!herd_traits(type)) continue;
    napi_value v;
    CHECK(napi_create_int32(env, type, &v));
    CHECK(napi_set_element(env, types, k++, v));
  }
  CHECK(napi_set_named_property(env, obj, "isas", isas));
  CHECK(napi_set_named_property(env, obj, "types", types));
  return obj;
}

static napi_value init(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"info", NULL, js_info, NULL, NULL, NULL, napi_default, NULL},
      {"create", NULL, js_create, NULL, NULL, NULL, napi_default, NULL},
      {"close", NULL, js_close, NULL, NULL, NULL, napi_default, NULL},
      {"threads", NULL, js_threads, NULL, NULL, NULL, napi_default, NULL},
      {"alloc", NULL, js_alloc, NULL, NULL, NULL, napi_default, NULL},
      {"matvec", NULL, js_matvec, NULL, NULL, NULL, napi_default, NULL},
      {"matmul", NULL, js_matmul, NULL, NULL, NULL, napi_default, NULL},
      {"prepare", NULL, js_prepare, NULL, NULL, NULL, napi_default, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props));
  CHECK(herd_register_ops(env, exports));  // attend, swiglu (ops.c)
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
