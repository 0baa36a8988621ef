// The wasm backend's threads: threads-1 worker_threads (./worker.mjs) instantiate the same
// module on the same memory. A job (a product, an attention step, SwiGLU, widening an f16
// cache) is written into the control block, then the generation counter is bumped and the
// workers notified; every thread, the calling one included, claims chunks of work items
// (weight rows, (token, KV head) pairs, elements) by a compare-and-swap on a counter until
// none is left, and the calling thread waits until every chunk is counted done. A worker
// that is slow or descheduled (a busy core) thus costs at most the chunk it holds. Atomics
// only, no postMessage per job.

import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { WasmBackendError, type KernelExports, type Layout } from './module.ts';

const JOB_TIMEOUT_MS = 60_000;

interface WorkerHandle {
  worker: Worker;
  errors: MessagePort;
}

export class WorkerPool {
  private readonly L: Layout;
  private readonly c: Int32Array;
  private closed = false;
  /** Set when a thread failed: every later job fails with it. */
  private failure: string | undefined;

  private constructor(
    private readonly ex: KernelExports,
    memory: WebAssembly.Memory,
    private readonly ctl: number,
    private readonly workers: WorkerHandle[],
  ) {
    this.L = ex.layout;
    this.c = new Int32Array(memory.buffer, ctl, this.L.bytes / 4);
    for (const [i, h] of workers.entries()) {
      // Events arrive only between products (a product blocks this thread), so a dead worker
      // is reported by the next product rather than by the one it left unfinished (that one
      // times out); and an 'error' event without a listener would crash the process.
      h.worker.on('error', (err) => (this.failure ??= `worker ${i + 1} failed: ${err.message}`));
      h.worker.on('exit', (code) => {
        if (!this.closed) this.failure ??= `worker ${i + 1} exited with code ${code}`;
      });
    }
  }

  /**
   * Starts threads-1 workers on the module and memory the calling thread's instance `ex`
   * uses, the control block at ctl; they poll for the next job for spinMicros before sleeping.
   */
  static async start(
    module: WebAssembly.Module,
    memory: WebAssembly.Memory,
    ex: KernelExports,
    ctl: number,
    threads: number,
    spinMicros: number,
  ): Promise<WorkerPool> {
    const workers: WorkerHandle[] = [];
    try {
      const ready: Promise<void>[] = [];
      for (let part = 1; part < threads; part++) {
        const { port1, port2 } = new MessageChannel();
        const worker = new Worker(new URL('./worker.mjs', import.meta.url), {
          workerData: { module, memory, ctl, part, spinMicros, errors: port2 },
          // The worker is plain JavaScript: it needs no loader (tsx) and must not inherit
          // flags that only make sense for the main script (--input-type, --test, ...).
          execArgv: [],
          transferList: [port2],
        });
        workers.push({ worker, errors: port1 });
        ready.push(
          new Promise<void>((resolve, reject) => {
            worker.once('message', () => resolve());
            worker.once('error', reject);
            worker.once('exit', (code) =>
              reject(new WasmBackendError('WASM_WORKER', `worker ${part} exited with code ${code} while starting`)),
            );
          }),
        );
      }
      await Promise.all(ready);
    } catch (err) {
      await Promise.all(workers.map((h) => h.worker.terminate()));
      throw err instanceof WasmBackendError
        ? err
        : new WasmBackendError('WASM_WORKER', `starting worker threads failed: ${(err as Error).message}`);
    }
    for (const h of workers) {
      // Blocked in Atomics.wait, a worker must not keep the process alive, nor must the
      // ports the main thread only reads synchronously.
      h.worker.removeAllListeners();
      h.worker.unref();
      h.errors.unref();
    }
    return new WorkerPool(ex, memory, ctl, workers);
  }

  /** Whether there are threads besides the calling one. */
  get parallel(): boolean {
    return this.workers.length > 0;
  }

  /** The control block's words (indexes in the module's Layout). */
  get control(): Int32Array {
    return this.c;
  }

  /** Throws the failure of an earlier job: a pool that lost a thread runs no more jobs. */
  checkHealthy(): void {
    if (this.failure) throw new WasmBackendError('WASM_WORKER', this.failure);
  }

  /**
   * Publishes a job of `rows` work items cut into `chunks` (< 4096) of chunkRows, takes part
   * in it and returns when every chunk is done. `words` writes the op's own job words.
   */
  run(op: number, rows: number, chunks: number, chunkRows: number, what: string, words: (c: Int32Array) => void): void {
    const c = this.c;
    const L = this.L;
    const gen = (c[L.gen] + 1) | 0;
    const tag = (gen & 0xfffff) << 12;
    // Retag the claim counter first, with no chunk claimable: a worker still holding the
    // previous job's words can then claim nothing while they are rewritten.
    Atomics.store(c, L.next, tag | 0xfff);
    c[L.op] = op;
    c[L.chunks] = chunks;
    c[L.chunkRows] = chunkRows;
    c[L.rows] = rows;
    words(c);
    Atomics.store(c, L.done, 0);
    // The seq-cst stores publish the plain job words above to whoever sees the new tag.
    Atomics.store(c, L.next, tag);
    Atomics.store(c, L.gen, gen);
    if (chunks > 1) Atomics.notify(c, L.gen);
    try {
      this.ex.run(this.ctl, gen);
    } catch (err) {
      // A trap (a kernel bug) leaves this thread's chunk uncounted and the workers possibly
      // still writing: report it, and refuse further jobs.
      this.failure = `${what}: ${(err as Error).message}`;
      throw new WasmBackendError('WASM_WORKER', this.failure);
    }
    this.awaitChunks(chunks, what);
  }

  /** Blocks until all `chunks` of the current job are done; reports a worker's failure. */
  private awaitChunks(chunks: number, what: string): void {
    const c = this.c;
    const L = this.L;
    let d = Atomics.load(c, L.done);
    // Another thread's last chunk usually ends within microseconds of this thread's.
    for (let i = 0; d !== chunks && i < 20_000; i++) d = Atomics.load(c, L.done);
    const deadline = Date.now() + JOB_TIMEOUT_MS;
    while (d !== chunks) {
      if (Atomics.load(c, L.error) !== 0) {
        // A worker died holding a chunk; others may still be writing theirs into the
        // scratch space, so this backend cannot be trusted with another product.
        const messages = this.workers
          .map((h) => receiveMessageOnPort(h.errors)?.message)
          .filter((m) => m !== undefined);
        this.failure = `${what}: ${messages.join('; ') || 'a worker thread failed'}`;
        throw new WasmBackendError('WASM_WORKER', this.failure);
      }
      Atomics.wait(c, L.done, d, 100);
      d = Atomics.load(c, L.done);
      // A worker that died (killed, out of memory) never counts its chunk: do not hang forever.
      if (d !== chunks && Date.now() > deadline) {
        this.failure = `${what}: worker threads did not finish within ${JOB_TIMEOUT_MS / 1000} s`;
        throw new WasmBackendError('WASM_WORKER', this.failure);
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.workers.length > 0) {
      Atomics.store(this.c, this.L.op, this.L.stop);
      Atomics.add(this.c, this.L.gen, 1);
      Atomics.notify(this.c, this.L.gen);
    }
    await Promise.all(
      this.workers.map(async (h) => {
        h.errors.close();
        await h.worker.terminate();
      }),
    );
  }
}
