// The wasm backend: SIMD128 kernels compiled from AssemblyScript (./assembly/, built into the
// committed ./kernels.wasm, and ./kernels-relaxed.wasm with relaxed SIMD's int8 dot product,
// used where the runtime has it), run on threads that share one WebAssembly memory.
//
// Memory: one shared WebAssembly.Memory holds the control block, every weight (alloc() is
// a bump allocator in it, so the model reads each tensor from the GGUF file straight into
// memory the kernels address) and scratch space for activations and outputs. Growing a
// shared memory never detaches the SharedArrayBuffers handed out before, so the views that
// alloc() returned stay valid; wasm32 addresses at most 4 GiB.
//
// Threads: threads-1 worker_threads instantiate the same module on the same memory. A
// job (a product, an attention step, SwiGLU, widening an f16 cache) is written into the
// control block, then the generation counter is bumped and the workers notified; every
// thread, the calling one included, claims chunks of work items (weight rows, (token, KV
// head) pairs, elements) by a compare-and-swap on a counter until none is left, and the
// calling thread waits until every chunk is counted done. A worker that is slow or
// descheduled (a busy core) thus costs at most the chunk it holds. Atomics only, no
// postMessage per job.

import { availableParallelism } from 'node:os';
import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import type { KernelBackend } from '../backend.ts';
import type { AttentionStep } from '../attention.ts';
import { MatvecScratch, matvec as jsMatvec, type Weight } from '../matvec.ts';
import { Activation, Q8K_BLOCK, type ActivationKind } from '../activation.ts';
import { GgmlType } from '../../ggml/types.ts';

export type WasmBackendErrorCode = 'WASM_UNAVAILABLE' | 'WASM_MEMORY_LIMIT' | 'WASM_WORKER' | 'WASM_CLOSED' | 'WASM_ARGUMENT';

export class WasmBackendError extends Error {
  constructor(
    readonly code: WasmBackendErrorCode,
    message: string,
  ) {
    super(`wasm backend: ${message}`);
    this.name = 'WasmBackendError';
  }
}

export interface WasmBackendOptions {
  /** Threads computing each product, the calling one included; defaults to the core count. */
  threads?: number;
  /**
   * Products over fewer weight bytes than this run on the calling thread alone: waking the
   * workers costs more than it saves on a small matrix. Default 256 KiB; 0 always splits.
   * Attention counts 4 bytes per multiply-add, SwiGLU 12 bytes and f16 widening 6 per element.
   */
  minParallelBytes?: number;
  /** Upper bound of the shared memory (weights + scratch). Default 4 GiB on 64-bit hosts, 1 GiB on 32-bit. */
  maxMemoryBytes?: number;
  /**
   * Microseconds a worker polls for the next product before sleeping (default 300): long
   * enough to span the element-wise work between the products of a token, so workers are
   * awake when the next product starts; 0 sleeps at once (saves CPU, costs latency).
   */
  spinMicros?: number;
  /**
   * Prefill tiles multiply activation quants widened to i16 (i32x4.dot_i16x8_s) instead of
   * int8 (extmul): faster on x86, slower on arm64. Default: true on x64/ia32 only.
   */
  wideTiles?: boolean;
  /**
   * Which build of the kernels runs: 'relaxed' (kernels-relaxed.wasm, relaxed SIMD's int8
   * dot product for Q4_0, Q4_K, Q5_K and Q6_K) or 'simd128' (kernels.wasm). Default: relaxed
   * where the runtime has it (see relaxedSimdAvailable), else simd128.
   */
  simd?: WasmSimd;
}

export type WasmSimd = 'relaxed' | 'simd128';

/** The module's exports, narrowed from WebAssembly's untyped ones by kernelExports(). */
interface KernelExports {
  supports(type: number): number;
  heapBase(): number;
  roundF16(x: number, dst: number, n: number): void;
  roundBf16(x: number, dst: number, n: number): void;
  quantizeQ8_0(x: number, n: number, qs: number, d: number): void;
  quantizeQ8_1(x: number, n: number, qs: number, d: number, s: number): void;
  quantizeQ8_K(x: number, n: number, qs: number, d: number, bsums: number): void;
  widenI8(src: number, dst: number, n: number): void;
  offsetSumsQ8_0(qs: number, n: number, dst: number): void;
  fillF16Table(dst: number): void;
  wideTile(type: number): number;
  q4Offsets(): number;
  run(ctl: number, gen: number): void;
  layout: Layout;
}

/** Control block word indexes (byte offsets / 4) and the stop op, read from the module. */
interface Layout {
  gen: number;
  done: number;
  error: number;
  next: number;
  op: number;
  chunks: number;
  chunkRows: number;
  w: number;
  rowBytes: number;
  rows: number;
  cols: number;
  n: number;
  act: number;
  actStride: number;
  actD: number;
  actDStride: number;
  actX: number;
  actXStride: number;
  out: number;
  act16: number;
  f16Table: number;
  aKeys: number;
  aValues: number;
  aQ: number;
  aOut: number;
  aAtt: number;
  aAttStride: number;
  aNKv: number;
  aGroup: number;
  aHeadDim: number;
  aStart: number;
  aN: number;
  aHalf: number;
  bytes: number;
  stop: number;
  attend: number;
  swiglu: number;
  f16ToF32: number;
}

const PAGE = 65536;
const WASM32_PAGES = 65536; // 4 GiB: all a 32-bit address reaches
const ALIGN = 64; // a cache line: weights and scratch never share one across threads
const Q8_BLOCK = 32; // Q8_0/Q8_1 values per block (Q8_K: 256, from activation.ts)
const JOB_TIMEOUT_MS = 60_000;
const F16_TABLE_BYTES = 65536 * 4;
/** Chunks per thread: more balance the end of a product better, each costs a contended CAS. */
const CHUNKS_PER_THREAD = 8;

// (func (result v128) i32.const 0 i8x16.splat i8x16.popcnt): compiles only with SIMD128.
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);

// (memory (export "m") 1) (func (export "f") (v128.store (i32.const 0)
//   (i16x8.relaxed_dot_i8x16_i7x16_s (v128.const i8x16 PROBE_A) (v128.const i8x16 PROBE_B)))):
// compiles only with relaxed SIMD; its result is checked against PROBE_A·PROBE_B pairwise.
const RELAXED_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 3, 2, 1, 0, 5, 3, 1, 0, 1, 7, 9, 2, 1, 109, 2, 0, 1, 102, 0, 0, 10, 49, 1, 47, 0, 65, 0, 253, 12, 129, 127,
  255, 100, 5, 250, 7, 248, 9, 246, 11, 244, 13, 128, 15, 240, 253, 12, 127, 127, 63, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 253, 146, 2, 253, 11, 4, 0, 11,
]);
const PROBE_A = [-127, 127, -1, 100, 5, -6, 7, -8, 9, -10, 11, -12, 13, -128, 15, -16];
const PROBE_B = [127, 127, 63, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

let relaxedChecked: boolean | undefined;

/**
 * Whether this runtime runs relaxed SIMD's int8 dot product correctly. Node 22+ has relaxed
 * SIMD on; Node 20's V8 has it behind --experimental-wasm-relaxed-simd, which is switched on
 * here (a wasm feature flag, read when a module is compiled, so setting it now is enough and
 * reaches worker threads). The probe's answer is checked lane by lane, since Node 20's
 * implementation was not final: its i32x4 form (the dot product fused with an add) gives
 * wrong sums on x86, and relaxed_madd wrong results on armv7, so the kernels use only the
 * i16x8 dot product checked here (test:arm runs every kernel of the relaxed build on arm64
 * and armv7).
 */
export function relaxedSimdAvailable(): boolean {
  if (relaxedChecked !== undefined) return relaxedChecked;
  if (!WebAssembly.validate(RELAXED_PROBE)) setFlagsFromString('--experimental-wasm-relaxed-simd');
  relaxedChecked = false;
  if (!WebAssembly.validate(RELAXED_PROBE)) return relaxedChecked;
  const probe = new WebAssembly.Instance(new WebAssembly.Module(RELAXED_PROBE)).exports;
  (probe.f as () => void)();
  const got = new Int16Array((probe.m as WebAssembly.Memory).buffer, 0, 8);
  relaxedChecked = Array.from(got).every((v, k) => v === PROBE_A[2 * k] * PROBE_B[2 * k] + PROBE_A[2 * k + 1] * PROBE_B[2 * k + 1]);
  return relaxedChecked;
}

const compiled = new Map<WasmSimd, WebAssembly.Module>();

/** A build of the kernels, compiled once per process (workers receive it compiled). */
function kernelsModule(simd: WasmSimd): WebAssembly.Module {
  if (!WebAssembly.validate(SIMD_PROBE)) {
    throw new WasmBackendError('WASM_UNAVAILABLE', 'this runtime has no WebAssembly SIMD128; use the js backend');
  }
  if (typeof SharedArrayBuffer !== 'function') {
    throw new WasmBackendError('WASM_UNAVAILABLE', 'this runtime has no SharedArrayBuffer (shared wasm memory); use the js backend');
  }
  if (simd === 'relaxed' && !relaxedSimdAvailable()) {
    throw new WasmBackendError('WASM_UNAVAILABLE', 'this runtime has no working relaxed SIMD; use simd: simd128');
  }
  let module = compiled.get(simd);
  if (!module) {
    module = new WebAssembly.Module(readFileSync(new URL(simd === 'relaxed' ? './kernels-relaxed.wasm' : './kernels.wasm', import.meta.url)));
    compiled.set(simd, module);
  }
  return module;
}

function kernelExports(instance: WebAssembly.Instance): KernelExports {
  const ex = instance.exports;
  const fn = (name: string): ((...args: number[]) => number) => {
    const f = ex[name];
    if (typeof f !== 'function') throw new WasmBackendError('WASM_UNAVAILABLE', `kernels.wasm lacks function ${name}; rebuild it (npm run build:wasm)`);
    return f as (...args: number[]) => number;
  };
  const word = (name: string): number => {
    const g = ex[name];
    if (!(g instanceof WebAssembly.Global)) throw new WasmBackendError('WASM_UNAVAILABLE', `kernels.wasm lacks global ${name}; rebuild it (npm run build:wasm)`);
    return (g.value as number) / 4;
  };
  const op = (name: string): number => {
    const g = ex[name];
    if (!(g instanceof WebAssembly.Global)) throw new WasmBackendError('WASM_UNAVAILABLE', `kernels.wasm lacks global ${name}; rebuild it (npm run build:wasm)`);
    return g.value as number;
  };
  return {
    supports: fn('supports'),
    heapBase: fn('heapBase'),
    roundF16: fn('roundF16'),
    roundBf16: fn('roundBf16'),
    quantizeQ8_0: fn('quantizeQ8_0'),
    quantizeQ8_1: fn('quantizeQ8_1'),
    quantizeQ8_K: fn('quantizeQ8_K'),
    widenI8: fn('widenI8'),
    offsetSumsQ8_0: fn('offsetSumsQ8_0'),
    fillF16Table: fn('fillF16Table'),
    wideTile: fn('wideTile'),
    q4Offsets: fn('q4Offsets'),
    run: fn('run'),
    layout: {
      gen: word('CTL_GEN'),
      done: word('CTL_DONE'),
      error: word('CTL_ERROR'),
      next: word('CTL_NEXT'),
      op: word('CTL_OP'),
      chunks: word('CTL_CHUNKS'),
      chunkRows: word('CTL_CHUNK_ROWS'),
      w: word('CTL_W'),
      rowBytes: word('CTL_ROW_BYTES'),
      rows: word('CTL_ROWS'),
      cols: word('CTL_COLS'),
      n: word('CTL_N'),
      act: word('CTL_ACT'),
      actStride: word('CTL_ACT_STRIDE'),
      actD: word('CTL_ACT_D'),
      actDStride: word('CTL_ACT_D_STRIDE'),
      actX: word('CTL_ACT_X'),
      actXStride: word('CTL_ACT_X_STRIDE'),
      out: word('CTL_OUT'),
      act16: word('CTL_ACT16'),
      f16Table: word('CTL_F16_TABLE'),
      aKeys: word('CTL_A_KEYS'),
      aValues: word('CTL_A_VALUES'),
      aQ: word('CTL_A_Q'),
      aOut: word('CTL_A_OUT'),
      aAtt: word('CTL_A_ATT'),
      aAttStride: word('CTL_A_ATT_STRIDE'),
      aNKv: word('CTL_A_N_KV'),
      aGroup: word('CTL_A_GROUP'),
      aHeadDim: word('CTL_A_HEAD_DIM'),
      aStart: word('CTL_A_START'),
      aN: word('CTL_A_N'),
      aHalf: word('CTL_A_HALF'),
      bytes: word('CTL_BYTES') * 4,
      stop: op('OP_STOP'),
      attend: op('OP_ATTEND'),
      swiglu: op('OP_SWIGLU'),
      f16ToF32: op('OP_F16_TO_F32'),
    },
  };
}

/**
 * A shared memory as large as this host lets us reserve: V8 reserves a shared memory's
 * maximum up front (it can never move), which a 32-bit process cannot do for 4 GiB.
 */
function sharedMemory(maxBytes: number | undefined): { memory: WebAssembly.Memory; maxBytes: number } {
  const is32 = process.arch === 'arm' || process.arch === 'ia32';
  let pages = Math.min(WASM32_PAGES, Math.floor((maxBytes ?? (is32 ? 2 ** 30 : 2 ** 32)) / PAGE));
  if (pages < 1) throw new WasmBackendError('WASM_ARGUMENT', `maxMemoryBytes ${maxBytes} is below one 64 KiB page`);
  for (;;) {
    try {
      return { memory: new WebAssembly.Memory({ initial: 1, maximum: pages, shared: true }), maxBytes: pages * PAGE };
    } catch (err) {
      if (pages <= 256) throw new WasmBackendError('WASM_UNAVAILABLE', `cannot create a shared memory: ${(err as Error).message}`);
      pages >>= 1;
    }
  }
}

/** Per-vector byte strides of a prepared activation: values or quants, scales, extras. */
interface ActivationLayout {
  q: number;
  d: number;
  x: number;
  /** Bytes n vectors take, each array 64-byte aligned. */
  bytes(n: number): number;
}

/** offsets: a Q8_0 activation for the relaxed Q4_0 kernels, which read 8·Σq per block. */
function activationLayout(kind: ActivationKind, cols: number, offsets = false): ActivationLayout {
  let q = cols * 4; // f32/f16/bf16: f32 values
  let d = 0;
  let x = 0;
  if (kind === 'q8_0' || kind === 'q8_1') {
    q = alignUp(cols, 16);
    d = (cols / Q8_BLOCK) * 4;
    // Q8_1: s = d·Σq per block (f32); Q8_0 with offsets: (8·Σq, 0, 0, 0) per block (i32x4).
    x = kind === 'q8_1' ? d : offsets ? (cols / Q8_BLOCK) * 16 : 0;
  } else if (kind === 'q8_k') {
    q = alignUp(cols, 16);
    d = (cols / Q8K_BLOCK) * 4;
    x = alignUp((cols / 16) * 2, 4); // bsums: i16 per 16 values
  }
  return { q, d, x, bytes: (n) => alignUp(n * q, ALIGN) + alignUp(n * d, ALIGN) + alignUp(n * x, ALIGN) };
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * Tells V8 that the process grew by `bytes` outside its heap, as an ArrayBuffer's backing
 * store does. V8 does not count a shared memory as external memory, so loading a model
 * into one triggers none of the garbage collections that loading into the native
 * backend's external ArrayBuffers does, and without a mark-compact while the main thread
 * allocates little the main isolate keeps the young generation it grew parsing the
 * vocabulary: 8 MiB more peak RSS, measured with TinyLlama. The only way to tell V8 from
 * JavaScript is to allocate an ArrayBuffer of that size, which it counts, and drop it;
 * its pages are never touched, so never resident. At least 33 MiB, above glibc's largest
 * dynamic mmap threshold (32 MiB): a smaller block, freed, raises the threshold, and
 * later mid-sized callocs then come from the malloc heap, where they are zeroed, so made
 * resident, whole (measured: 12 MiB more peak RSS than without the hint).
 */
function reportExternalGrowth(bytes: number): void {
  try {
    void new ArrayBuffer(Math.max(bytes, 33 * 2 ** 20));
  } catch {
    // Out of address space (a 32-bit host) or commit limit: this is only a hint to the GC.
  }
}

interface WorkerHandle {
  worker: Worker;
  errors: MessagePort;
}

export class WasmBackend implements KernelBackend {
  readonly name = 'wasm';
  readonly threads: number;
  /** The build of the kernels that runs. */
  readonly simd: WasmSimd;
  /** relaxed-simd or simd128. */
  readonly isa: string;
  /** Bytes the memory may grow to (its maximum). */
  readonly maxBytes: number;
  private readonly memory: WebAssembly.Memory;
  private readonly ex: KernelExports;
  private readonly L: Layout;
  private readonly ctl: number;
  private readonly c: Int32Array;
  private readonly workers: WorkerHandle[];
  private readonly minParallelBytes: number;
  /** Types whose tiles read the quants widened to i16 (wideTiles and index.ts wideTile()). */
  private readonly wideTypes: ReadonlySet<number>;
  /** Whether Q4_0 products read the activations' offset sums (index.ts q4Offsets()). */
  private readonly q4Offsets: boolean;
  /** Every buffer memory.buffer has returned: views into any of them are ours. */
  private readonly buffers = new WeakSet<ArrayBufferLike>();
  private f32 = new Float32Array(0);
  private u16 = new Uint16Array(0);
  private u8 = new Uint8Array(0);
  private top: number;
  private scratch = { ptr: 0, bytes: 0 };
  private jsScratch = new MatvecScratch(0);
  private closed = false;
  /** Set when a worker thread died: every later product fails with it. */
  private failure: string | undefined;

  private constructor(
    memory: WebAssembly.Memory,
    maxBytes: number,
    ex: KernelExports,
    threads: number,
    minParallelBytes: number,
    wideTiles: boolean,
    workers: WorkerHandle[],
    ctl: number,
    simd: WasmSimd,
  ) {
    this.simd = simd;
    this.isa = simd === 'relaxed' ? 'relaxed-simd' : 'simd128';
    // Constant for the module: asked once here, not on every product.
    this.wideTypes = new Set(wideTiles ? Object.values(GgmlType).filter((t) => ex.wideTile(t) !== 0) : []);
    this.q4Offsets = ex.q4Offsets() !== 0;
    this.memory = memory;
    this.maxBytes = maxBytes;
    this.ex = ex;
    this.L = ex.layout;
    this.threads = threads;
    this.minParallelBytes = minParallelBytes;
    this.workers = workers;
    this.ctl = ctl;
    this.c = new Int32Array(memory.buffer, ctl, this.L.bytes / 4);
    this.top = ctl + this.L.bytes;
    this.refreshViews();
    // The f16 → f32 table the prefill tiles read (CTL_F16_TABLE), 256 KiB, filled once.
    const table = this.reserve(F16_TABLE_BYTES);
    ex.fillF16Table(table);
    this.c[this.L.f16Table] = table;
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
   * Compiles (once per process) and instantiates the kernels, and starts threads-1 workers.
   * Throws WasmBackendError WASM_UNAVAILABLE when the runtime lacks SIMD128 or shared
   * memory, so the caller can fall back to the js backend.
   */
  static async create(opts: WasmBackendOptions = {}): Promise<WasmBackend> {
    const threads = opts.threads ?? availableParallelism();
    if (!Number.isInteger(threads) || threads < 1 || threads > 256) {
      throw new WasmBackendError('WASM_ARGUMENT', `threads must be an integer in 1..256, got ${threads}`);
    }
    const minParallelBytes = opts.minParallelBytes ?? 256 * 1024;
    const spinMicros = opts.spinMicros ?? 300;
    if (!(spinMicros >= 0)) throw new WasmBackendError('WASM_ARGUMENT', `spinMicros must be >= 0, got ${spinMicros}`);
    const simd = opts.simd ?? (relaxedSimdAvailable() ? 'relaxed' : 'simd128');
    const module = kernelsModule(simd);
    const { memory, maxBytes } = sharedMemory(opts.maxMemoryBytes);
    const ex = kernelExports(new WebAssembly.Instance(module, { env: { memory } }));
    const ctl = alignUp(ex.heapBase(), ALIGN);

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
            worker.once('exit', (code) => reject(new WasmBackendError('WASM_WORKER', `worker ${part} exited with code ${code} while starting`)));
          }),
        );
      }
      await Promise.all(ready);
    } catch (err) {
      await Promise.all(workers.map((h) => h.worker.terminate()));
      throw err instanceof WasmBackendError ? err : new WasmBackendError('WASM_WORKER', `starting worker threads failed: ${(err as Error).message}`);
    }
    for (const h of workers) {
      // Blocked in Atomics.wait, a worker must not keep the process alive, nor must the
      // ports the main thread only reads synchronously.
      h.worker.removeAllListeners();
      h.worker.unref();
      h.errors.unref();
    }
    const wideTiles = opts.wideTiles ?? (process.arch === 'x64' || process.arch === 'ia32');
    return new WasmBackend(memory, maxBytes, ex, threads, minParallelBytes, wideTiles, workers, ctl, simd);
  }

  /** Bytes of the shared memory in use (weights, scratch and the control block). */
  get usedBytes(): number {
    return this.top;
  }

  /** Whether the wasm kernels compute this ggml type (others fall back to the js kernels). */
  supports(type: number): boolean {
    return this.ex.supports(type) !== 0;
  }

  /** Zeroed, 64-byte aligned memory the kernels read in place. Never freed before close(). */
  alloc(bytes: number): Uint8Array {
    this.checkOpen();
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new WasmBackendError('WASM_ARGUMENT', `cannot allocate ${bytes} bytes`);
    const ptr = this.reserve(bytes);
    return new Uint8Array(this.memory.buffer, ptr, bytes);
  }

  matvec(w: Weight, x: Float32Array, out: Float32Array): void {
    this.product(w, x, 1, out);
  }

  /**
   * Several activation vectors per pass over the weights (prefill): xs holds n vectors of
   * w.cols values back to back, out receives n vectors of w.rows. Each weight row is read
   * from memory once for all n vectors.
   */
  matmul(w: Weight, xs: Float32Array, n: number, out: Float32Array): void {
    this.product(w, xs, n, out);
  }

  /**
   * The step's attention in wasm: the cache rows 0..start+n of the layer are copied into the
   * scratch space (an f16 cache as its bits, widened to f32 there by all threads in one
   * pass, so every row is converted once per step however many tokens read it), then the
   * threads claim (token, KV head) pairs, longest first. With an f16 cache q is rounded to
   * f16 in place and the probabilities are rounded to f16, as the js reference does.
   */
  attend(s: AttentionStep): void {
    this.checkOpen();
    if (this.failure) throw new WasmBackendError('WASM_WORKER', this.failure);
    const { nHeads, nKvHeads, headDim, start, n } = s;
    const group = nHeads / nKvHeads;
    if (![nHeads, nKvHeads, headDim, n].every((v) => Number.isInteger(v) && v >= 1) || !Number.isInteger(group) || !Number.isInteger(start) || start < 0) {
      throw new WasmBackendError('WASM_ARGUMENT', `attention: bad shape nHeads ${nHeads}, nKvHeads ${nKvHeads}, headDim ${headDim}, start ${start}, n ${n}`);
    }
    const half = s.keys instanceof Uint16Array;
    if (half !== s.values instanceof Uint16Array) throw new WasmBackendError('WASM_ARGUMENT', 'attention: keys and values differ in type');
    const len = start + n;
    const kvDim = nKvHeads * headDim;
    const qDim = nHeads * headDim;
    const cache = len * kvDim;
    if (s.keys.length < cache || s.values.length < cache) {
      throw new WasmBackendError('WASM_ARGUMENT', `attention: the cache holds ${Math.min(s.keys.length, s.values.length)} values, ${len}×${kvDim} needed`);
    }
    if (s.q.length < n * qDim || s.out.length < n * qDim) {
      throw new WasmBackendError('WASM_ARGUMENT', `attention: q holds ${s.q.length} and out ${s.out.length} values, ${n}×${qDim} needed`);
    }

    // Multiply-adds (scores and value sums over the causal triangle), weighed as 4 bytes
    // each against minParallelBytes.
    const work = 2 * n * nHeads * (start + (n + 1) / 2) * headDim;
    const pairs = n * nKvHeads;
    const chunks = this.wantsThreads(4 * work) ? Math.min(pairs, this.threads * CHUNKS_PER_THREAD) : 1;
    // Scratch: f32 keys then values (back to back: an f16 cache is widened in one range),
    // q, out, the scores of each chunk, and an f16 cache's bits.
    const attStride = alignUp(group * len * 4, ALIGN);
    const qBytes = alignUp(n * qDim * 4, ALIGN);
    const kPtr = this.scratchFor(alignUp(2 * cache * 4, ALIGN) + 2 * qBytes + chunks * attStride + (half ? 2 * cache * 2 : 0));
    const vPtr = kPtr + cache * 4;
    const qPtr = kPtr + alignUp(2 * cache * 4, ALIGN);
    const outPtr = qPtr + qBytes;
    const attPtr = outPtr + qBytes;
    const stage = attPtr + chunks * attStride;

    this.f32.set(s.q.subarray(0, n * qDim), qPtr / 4);
    if (half) {
      this.ex.roundF16(qPtr, qPtr, n * qDim);
      s.q.set(this.f32.subarray(qPtr / 4, qPtr / 4 + n * qDim));
      this.u16.set(s.keys.subarray(0, cache), stage / 2);
      this.u16.set(s.values.subarray(0, cache), stage / 2 + cache);
      this.elementJob(this.L.f16ToF32, stage, 0, kPtr, 2 * cache, 6, 'attention cache');
    } else {
      this.f32.set(s.keys.subarray(0, cache), kPtr / 4);
      this.f32.set(s.values.subarray(0, cache), vPtr / 4);
    }

    const L = this.L;
    this.runJob(L.attend, pairs, chunks, Math.ceil(pairs / chunks), 'attention', (c) => {
      c[L.aKeys] = kPtr;
      c[L.aValues] = vPtr;
      c[L.aQ] = qPtr;
      c[L.aOut] = outPtr;
      c[L.aAtt] = attPtr;
      c[L.aAttStride] = attStride;
      c[L.aNKv] = nKvHeads;
      c[L.aGroup] = group;
      c[L.aHeadDim] = headDim;
      c[L.aStart] = start;
      c[L.aN] = n;
      c[L.aHalf] = half ? 1 : 0;
    });
    s.out.set(this.f32.subarray(outPtr / 4, outPtr / 4 + n * qDim));
  }

  swiglu(out: Float32Array, gate: Float32Array, up: Float32Array, n: number): void {
    this.checkOpen();
    if (this.failure) throw new WasmBackendError('WASM_WORKER', this.failure);
    if (!Number.isInteger(n) || n < 0) throw new WasmBackendError('WASM_ARGUMENT', `swiglu: element count must be a non-negative integer, got ${n}`);
    if (gate.length < n || up.length < n || out.length < n) {
      throw new WasmBackendError('WASM_ARGUMENT', `swiglu: gate ${gate.length}, up ${up.length}, out ${out.length} values, ${n} needed`);
    }
    if (n === 0) return;
    const bytes = alignUp(n * 4, ALIGN);
    const gPtr = this.scratchFor(3 * bytes);
    this.f32.set(gate.subarray(0, n), gPtr / 4);
    this.f32.set(up.subarray(0, n), (gPtr + bytes) / 4);
    this.elementJob(this.L.swiglu, gPtr, gPtr + bytes, gPtr + 2 * bytes, n, 12, 'swiglu');
    out.set(this.f32.subarray((gPtr + 2 * bytes) / 4, (gPtr + 2 * bytes) / 4 + n));
  }

  /**
   * x[0..n) converted by the wasm code into the form `kind` that dot products take, returned
   * as the js Activation: Q8_0/Q8_1/Q8_K blocks (Q8_0 is also what a node can send
   * downstream) or f16/bf16-rounded values.
   */
  activation(kind: ActivationKind, x: Float32Array, n: number): Activation {
    this.checkOpen();
    const act = new Activation(n);
    if (kind === 'f32') return act.fill(kind, x, n);
    const block = kind === 'q8_k' ? Q8K_BLOCK : kind === 'f16' || kind === 'bf16' ? 1 : Q8_BLOCK;
    if (n % block !== 0) throw new WasmBackendError('WASM_ARGUMENT', `${kind} activations need a multiple of ${block} values, got ${n}`);
    const lay = activationLayout(kind, n);
    const xPtr = this.scratchFor(alignUp(n * 4, ALIGN) + lay.bytes(1));
    this.f32.set(x.subarray(0, n), xPtr / 4);
    const p = this.prepare(kind, xPtr, 1, n, xPtr + alignUp(n * 4, ALIGN), lay);
    const buf = this.memory.buffer;
    act.kind = kind;
    act.n = n;
    if (kind === 'f16' || kind === 'bf16') {
      act.f.set(new Float32Array(buf, p.q, n));
      return act;
    }
    const nd = lay.d / 4;
    act.qs.set(new Int8Array(buf, p.q, n));
    act.d.set(new Float32Array(buf, p.d, nd));
    if (kind === 'q8_1') act.s.set(new Float32Array(buf, p.x, nd));
    if (kind === 'q8_k') act.bsums.set(new Int16Array(buf, p.x, n / 16));
    return act;
  }

  /**
   * Converts the n input vectors of `cols` f32 at xPtr into activations of `kind` at actPtr
   * (laid out as `lay` says); returns where the quants/values, scales and extras start.
   */
  private prepare(kind: ActivationKind, xPtr: number, n: number, cols: number, actPtr: number, lay: ActivationLayout): { q: number; d: number; x: number } {
    if (kind === 'f32') return { q: xPtr, d: 0, x: 0 };
    const q = actPtr;
    const d = q + alignUp(n * lay.q, ALIGN);
    const x = d + alignUp(n * lay.d, ALIGN);
    for (let j = 0; j < n; j++) {
      const xj = xPtr + j * cols * 4;
      const qj = q + j * lay.q;
      const dj = d + j * lay.d;
      const ej = x + j * lay.x;
      switch (kind) {
        case 'f16':
          this.ex.roundF16(xj, qj, cols);
          break;
        case 'bf16':
          this.ex.roundBf16(xj, qj, cols);
          break;
        case 'q8_0':
          this.ex.quantizeQ8_0(xj, cols, qj, dj);
          if (lay.x > 0) this.ex.offsetSumsQ8_0(qj, cols, ej);
          break;
        case 'q8_1':
          this.ex.quantizeQ8_1(xj, cols, qj, dj, ej);
          break;
        case 'q8_k':
          this.ex.quantizeQ8_K(xj, cols, qj, dj, ej);
          break;
      }
    }
    return { q, d, x };
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

  private product(w: Weight, x: Float32Array, n: number, out: Float32Array): void {
    this.checkOpen();
    if (this.failure) throw new WasmBackendError('WASM_WORKER', this.failure);
    const { rows, cols } = w;
    const type = w.kernel.info.id;
    if (!Number.isInteger(n) || n < 1) throw new WasmBackendError('WASM_ARGUMENT', `${w.name}: vector count must be a positive integer, got ${n}`);
    if (x.length < n * cols) throw new WasmBackendError('WASM_ARGUMENT', `${w.name}: input holds ${x.length} values, ${n}×${cols} needed`);
    if (out.length < n * rows) throw new WasmBackendError('WASM_ARGUMENT', `${w.name}: output holds ${out.length} values, ${n}×${rows} needed`);
    if (!this.supports(type)) {
      this.jsFallback(w, x, n, out);
      return;
    }

    // Scratch: the f32 input, the prepared activations (F32 weights read the input itself),
    // then the outputs, and a copy of the weight when it lives outside this memory.
    const kind = w.kernel.activation;
    const xBytes = alignUp(n * cols * 4, ALIGN);
    const lay = activationLayout(kind, cols, type === GgmlType.Q4_0 && this.q4Offsets);
    // With four or more vectors some tiles (index.ts wideTile()) read the quants widened to
    // i16 (wideTiles): a copy after the activations, made once for all rows.
    const wide = n >= 4 && this.wideTypes.has(type);
    const actBytes = kind === 'f32' ? 0 : lay.bytes(n) + (wide ? alignUp(2 * n * lay.q, ALIGN) : 0);
    const wBytes = rows * w.rowBytes;
    const own = this.owns(w.data);
    const xPtr = this.scratchFor(xBytes + actBytes + alignUp(n * rows * 4, ALIGN) + (own ? 0 : wBytes));
    const actPtr = kind === 'f32' ? xPtr : xPtr + xBytes;
    const outPtr = xPtr + xBytes + actBytes;
    let wPtr = w.data.byteOffset;
    if (!own) {
      // A weight in memory the kernels cannot address (not from alloc()): copied per call.
      // Correct but slow; the model always allocates its weights here.
      wPtr = outPtr + alignUp(n * rows * 4, ALIGN);
      this.u8.set(w.data.subarray(0, wBytes), wPtr);
    }
    this.f32.set(x.subarray(0, n * cols), xPtr / 4);
    const ptrs = this.prepare(kind, xPtr, n, cols, actPtr, lay);
    const act16 = wide ? actPtr + lay.bytes(n) : 0;
    if (wide) this.ex.widenI8(ptrs.q, act16, n * lay.q);

    // Small products are one chunk, which the calling thread claims itself.
    const chunks = this.wantsThreads(wBytes) ? Math.min(rows, this.threads * CHUNKS_PER_THREAD) : 1;
    const L = this.L;
    this.runJob(type, rows, chunks, Math.ceil(rows / chunks), w.name, (c) => {
      c[L.w] = wPtr;
      c[L.rowBytes] = w.rowBytes;
      c[L.cols] = cols;
      c[L.n] = n;
      c[L.act] = ptrs.q;
      c[L.actStride] = lay.q;
      c[L.actD] = ptrs.d;
      c[L.actDStride] = lay.d;
      c[L.actX] = ptrs.x;
      c[L.actXStride] = lay.x;
      c[L.out] = outPtr;
      c[L.act16] = act16;
    });
    out.set(this.f32.subarray(outPtr / 4, outPtr / 4 + n * rows));
  }

  /** Whether a job touching about `bytes` is worth waking the workers for. */
  private wantsThreads(bytes: number): boolean {
    return this.workers.length > 0 && bytes >= this.minParallelBytes;
  }

  /**
   * An element-wise job over `count` elements (op OP_SWIGLU or OP_F16_TO_F32) with operands
   * at a, b (ACT, W) and out; split over the threads when count × bytesPerElement is large.
   */
  private elementJob(op: number, a: number, b: number, out: number, count: number, bytesPerElement: number, what: string): void {
    const chunks = this.wantsThreads(count * bytesPerElement) ? Math.min(Math.ceil(count / 64), this.threads * CHUNKS_PER_THREAD) : 1;
    const per = alignUp(Math.ceil(count / chunks), 8);
    const L = this.L;
    this.runJob(op, count, Math.ceil(count / per), per, what, (c) => {
      c[L.act] = a;
      c[L.w] = b;
      c[L.out] = out;
    });
  }

  /**
   * Publishes a job of `rows` work items cut into `chunks` (< 4096) of chunkRows, takes part
   * in it and returns when every chunk is done. `words` writes the op's own job words.
   */
  private runJob(op: number, rows: number, chunks: number, chunkRows: number, what: string, words: (c: Int32Array) => void): void {
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
        const messages = this.workers.map((h) => receiveMessageOnPort(h.errors)?.message).filter((m) => m !== undefined);
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

  private jsFallback(w: Weight, x: Float32Array, n: number, out: Float32Array): void {
    if (this.jsScratch.capacity < w.cols) this.jsScratch = new MatvecScratch(w.cols);
    for (let j = 0; j < n; j++) {
      jsMatvec(w, x.subarray(j * w.cols, (j + 1) * w.cols), out.subarray(j * w.rows, (j + 1) * w.rows), this.jsScratch);
    }
  }

  /** The scratch region, grown (by allocating a larger one) to at least `bytes`. */
  private scratchFor(bytes: number): number {
    if (bytes > this.scratch.bytes) {
      const size = Math.max(bytes, this.scratch.bytes * 2, 64 * 1024);
      this.scratch = { ptr: this.reserve(size), bytes: size };
    }
    return this.scratch.ptr;
  }

  /** Bump-allocates `bytes` at a 64-byte boundary, growing the memory as needed. */
  private reserve(bytes: number): number {
    const ptr = alignUp(this.top, ALIGN);
    const end = ptr + bytes;
    if (end > this.maxBytes) {
      const gib = (v: number) => `${(v / 2 ** 30).toFixed(2)} GiB`;
      throw new WasmBackendError(
        'WASM_MEMORY_LIMIT',
        `cannot allocate ${bytes} bytes: ${gib(this.top)} in use and the shared memory is capped at ${gib(this.maxBytes)}` +
          (this.maxBytes >= 2 ** 32 ? ' (all that wasm32 can address)' : '') +
          '; hold fewer layers on this node or use another backend',
      );
    }
    const have = this.memory.buffer.byteLength;
    if (end > have) {
      // Grow by at least an eighth so loading a model tensor by tensor grows rarely.
      const want = Math.min(this.maxBytes, Math.max(end, have + have / 8));
      const pages = Math.ceil((want - have) / PAGE);
      this.memory.grow(pages);
      this.refreshViews();
      reportExternalGrowth(pages * PAGE);
    }
    this.top = end;
    return ptr;
  }

  private refreshViews(): void {
    const buf = this.memory.buffer;
    this.buffers.add(buf);
    this.f32 = new Float32Array(buf);
    this.u16 = new Uint16Array(buf);
    this.u8 = new Uint8Array(buf);
  }

  private owns(data: Uint8Array): boolean {
    return this.buffers.has(data.buffer);
  }

  private checkOpen(): void {
    if (this.closed) throw new WasmBackendError('WASM_CLOSED', 'the backend is closed');
  }
}
