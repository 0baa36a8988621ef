// The thread pool (see pool.h).
//
// Protocol. A job is published by writing fn/ctx/chunks, then the cursor (generation in
// the high 32 bits, next chunk in the low 32), then bumping gen. Anyone takes a chunk by a
// compare-and-swap on the cursor that keeps the generation: a worker that wakes late, after
// the job is over, sees another generation and takes nothing, so it never reads a stale
// job. A successful take pins the job: the caller publishes the next one only after `done`
// counts every chunk, so fn and ctx (on the caller's stack) stay valid while a taken chunk
// runs. Workers that find no new generation after spinning sleep on a condition variable;
// the publisher signals only when some are asleep.

#define _GNU_SOURCE
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#elif defined(__aarch64__) || defined(__arm__)
static inline void cpu_relax(void) { __asm__ __volatile__("yield"); }
#else
static inline void cpu_relax(void) {}
#endif

struct herd_pool {
  int threads;
  int spin_us;
  pthread_t *tids;
  herd_chunk_fn fn;
  void *ctx;
  atomic_int chunks;
  _Atomic uint64_t cursor;
  atomic_int done;
  atomic_uint gen;
  atomic_int stop;
  atomic_int sleepers;
  pthread_mutex_t mu;
  pthread_cond_t cv;
};

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

// Waits until gen differs from seen: spin first, then sleep.
static unsigned wait_job(herd_pool *p, unsigned seen) {
  unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
  if (g != seen) return g;
  const uint64_t until = now_us() + (uint64_t)p->spin_us;
  for (unsigned i = 1;; i++) {
    cpu_relax();
    g = atomic_load_explicit(&p->gen, memory_order_acquire);
    if (g != seen) return g;
    if ((i & 255) == 0 && now_us() >= until) break;
  }
  pthread_mutex_lock(&p->mu);
  // sleepers and gen are seq_cst: either the publisher sees this sleeper and signals, or
  // this load sees the publisher's new generation.
  atomic_fetch_add(&p->sleepers, 1);
  while ((g = atomic_load(&p->gen)) == seen) pthread_cond_wait(&p->cv, &p->mu);
  atomic_fetch_sub(&p->sleepers, 1);
  pthread_mutex_unlock(&p->mu);
  return g;
}

// Takes the next chunk of generation g, or returns -1 when there is none (or the job of
// generation g is over).
static int take(herd_pool *p, unsigned g, int chunks) {
  uint64_t c = atomic_load_explicit(&p->cursor, memory_order_acquire);
  for (;;) {
    if ((unsigned)(c >> 32) != g || (int)(uint32_t)c >= chunks) return -1;
    if (atomic_compare_exchange_weak_explicit(&p->cursor, &c, c + 1, memory_order_acq_rel, memory_order_acquire)) return (int)(uint32_t)c;
  }
}

static void *worker_main(void *arg) {
  herd_pool *p = arg;
  unsigned seen = 0;
  for (;;) {
    seen = wait_job(p, seen);
    if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
    // chunks is read before the take, so it may belong to a newer job; take() then fails
    // on the generation, which is all that matters.
    const int chunks = atomic_load_explicit(&p->chunks, memory_order_relaxed);
    for (int i; (i = take(p, seen, chunks)) >= 0;) {
      p->fn(p->ctx, i);
      atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
  }
  return NULL;
}

herd_pool *herd_pool_create(int threads, int spin_us) {
  if (threads < 1) threads = 1;
  herd_pool *p = calloc(1, sizeof(*p));
  if (!p) return NULL;
  p->threads = threads;
  p->spin_us = spin_us < 0 ? 0 : spin_us;
  atomic_init(&p->cursor, 0);
  atomic_init(&p->done, 0);
  atomic_init(&p->chunks, 0);
  atomic_init(&p->gen, 0);
  atomic_init(&p->stop, 0);
  atomic_init(&p->sleepers, 0);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  p->tids = calloc((size_t)threads, sizeof(pthread_t));
  if (!p->tids) {
    free(p);
    return NULL;
  }
  for (int i = 1; i < threads; i++) {
    if (pthread_create(&p->tids[i], NULL, worker_main, p) != 0) {
      p->threads = i;  // run with the workers that started; destroy joins exactly those
      break;
    }
  }
  return p;
}

int herd_pool_threads(const herd_pool *p) { return p->threads; }

static void wake(herd_pool *p) {
  if (atomic_load(&p->sleepers) > 0) {
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
  }
}

void herd_pool_run(herd_pool *p, herd_chunk_fn fn, void *ctx, int chunks, int parallel) {
  if (!parallel || p->threads == 1 || chunks <= 1) {
    for (int i = 0; i < chunks; i++) fn(ctx, i);
    return;
  }
  const unsigned g = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
  p->fn = fn;
  p->ctx = ctx;
  atomic_store_explicit(&p->chunks, chunks, memory_order_relaxed);
  atomic_store_explicit(&p->done, 0, memory_order_relaxed);
  atomic_store_explicit(&p->cursor, (uint64_t)g << 32, memory_order_release);
  atomic_store(&p->gen, g);  // seq_cst: the job before it, the sleepers check after it
  wake(p);
  int mine = 0;
  for (int i; (i = take(p, g, chunks)) >= 0; mine++) fn(ctx, i);
  // Only chunks a worker took are outstanding; wait for those.
  const int want = chunks - mine;
  for (unsigned i = 1; atomic_load_explicit(&p->done, memory_order_acquire) < want; i++) {
    if (i < 4096) cpu_relax();
    else sched_yield();
  }
}

void herd_pool_destroy(herd_pool *p) {
  if (!p) return;
  atomic_store_explicit(&p->stop, 1, memory_order_release);
  atomic_fetch_add(&p->gen, 1);
  pthread_mutex_lock(&p->mu);
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 1; i < p->threads; i++) pthread_join(p->tids[i], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p->tids);
  free(p);
}
