// A persistent pool of worker threads for the products. A job is a number of chunks
// (row ranges); the calling (Node main) thread and the workers take chunks from a shared
// cursor until none are left. The caller waits only for chunks a worker has actually
// taken: a worker that is asleep, or descheduled on a busy machine, never holds up a
// product it has not joined. Idle workers spin for a while after each job, since in decode
// the next product follows within microseconds, then sleep on a condition variable, so an
// idle herd costs no CPU.

#ifndef HERD_POOL_H
#define HERD_POOL_H

// Runs chunk `chunk` of a job.
typedef void (*herd_chunk_fn)(void *ctx, int chunk);

typedef struct herd_pool herd_pool;

// A pool running jobs on up to `threads` threads (the caller included: threads - 1
// workers). spin_us bounds how long an idle worker polls before it sleeps. NULL on failure.
herd_pool *herd_pool_create(int threads, int spin_us);
int herd_pool_threads(const herd_pool *p);
// Runs fn(ctx, i) for every i in [0, chunks), on the calling thread and any workers that
// join; returns when every chunk is done. parallel = 0 keeps it on the calling thread.
void herd_pool_run(herd_pool *p, herd_chunk_fn fn, void *ctx, int chunks, int parallel);
// Stops and joins the workers and frees the pool.
void herd_pool_destroy(herd_pool *p);

#endif
