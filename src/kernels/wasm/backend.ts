// The wasm backend: SIMD128 kernels compiled from AssemblyScript (./assembly/, built into the
// committed ./kernels.wasm, and ./kernels-relaxed.wasm with relaxed SIMD's int8 dot product,
// used where the runtime has it), run on threads that share one WebAssembly memory. This
// file is the KernelBackend itself: each method checks its arguments (../checks.ts), lays
// out its operands in the scratch space and runs the job on the pool. The parts:
//   probe.ts   what the runtime has: SIMD128, shared memory, working relaxed SIMD
//   module.ts  compiling and instantiating a build; its exports and control block layout
//   arena.ts   the shared memory: weights, scratch, growth
//   pool.ts    the worker threads and how a job is handed out and awaited

import type { KernelBackend } from '../backend.ts';
import type { AttentionStep } from '../attention.ts';
import { MatvecScratch, matvecs, type Weight } from '../matvec.ts';
import { Activation, Q8K_BLOCK, Q8_BLOCK, type ActivationKind } from '../activation.ts';
import { checkActivation, checkAlloc, checkAttention, checkProduct, checkSwiglu, threadOptions } from '../checks.ts';
import { GgmlType } from '../../ggml/types.ts';
import { relaxedSimdAvailable } from './probe.ts';
import {
  WasmBackendError,
  instantiate,
  kernelsModule,
  type KernelExports,
  type Layout,
  type WasmSimd,
} from './module.ts';
import { ALIGN, Arena, alignUp, sharedMemory } from './arena.ts';
import { WorkerPool } from './pool.ts';

export { relaxedSimdAvailable } from './probe.ts';
export { WasmBackendError, type WasmBackendErrorCode, type WasmSimd } from './module.ts';

export interface WasmBackendOptions {
  /** Threads computing each product, the calling one included (1 … MAX_THREADS of ../checks.ts); defaults to the core count. */
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

const F16_TABLE_BYTES = 65536 * 4;
/**
 * Chunks per thread: more balance the end of a product better, each costs a contended CAS.
 * A job has fewer than 4096 chunks (the claim counter's 12 bits), which MAX_THREADS
 * (../checks.ts) keeps true.
 */
const CHUNKS_PER_THREAD = 8;
const argument = (message: string) => new WasmBackendError('WASM_ARGUMENT', message);

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

export class WasmBackend implements KernelBackend {
  readonly name = 'wasm';
  /** relaxed-simd or simd128. */
  readonly isa: string;
  private readonly L: Layout;
  /** Types whose tiles read the quants widened to i16 (wideTiles and assembly/info.ts wideTile()). */
  private readonly wideTypes: ReadonlySet<number>;
  /** Whether Q4_0 products read the activations' offset sums (assembly/info.ts q4Offsets()). */
  private readonly q4Offsets: boolean;
  private readonly jsScratch = new MatvecScratch(0);
  private closed = false;

  private constructor(
    private readonly ex: KernelExports,
    private readonly arena: Arena,
    private readonly pool: WorkerPool,
    readonly threads: number,
    /** The build of the kernels that runs. */
    readonly simd: WasmSimd,
    private readonly minParallelBytes: number,
    wideTiles: boolean,
  ) {
    this.isa = simd === 'relaxed' ? 'relaxed-simd' : 'simd128';
    this.L = ex.layout;
    // Constant for the module: asked once here, not on every product.
    this.wideTypes = new Set(wideTiles ? Object.values(GgmlType).filter((t) => ex.wideTile(t) !== 0) : []);
    this.q4Offsets = ex.q4Offsets() !== 0;
    // The f16 → f32 table the prefill tiles read (CTL_F16_TABLE), 256 KiB, filled once.
    const table = arena.reserve(F16_TABLE_BYTES);
    ex.fillF16Table(table);
    pool.control[this.L.f16Table] = table;
  }

  /**
   * Compiles (once per process) and instantiates the kernels, and starts threads-1 workers.
   * Throws WasmBackendError WASM_UNAVAILABLE when the runtime lacks SIMD128 or shared
   * memory, so the caller can fall back to the js backend.
   */
  static async create(opts: WasmBackendOptions = {}): Promise<WasmBackend> {
    const defaults = { spinMicros: 300, minParallelBytes: 256 * 1024 };
    const { threads, spinMicros, minParallelBytes } = threadOptions(opts, defaults, argument);
    const simd = opts.simd ?? (relaxedSimdAvailable() ? 'relaxed' : 'simd128');
    const module = kernelsModule(simd);
    const { memory, maxBytes } = sharedMemory(opts.maxMemoryBytes);
    const ex = instantiate(module, memory);
    // The control block sits at the start of the heap; allocations follow it.
    const ctl = alignUp(ex.heapBase(), ALIGN);
    const arena = new Arena(memory, maxBytes, ctl + ex.layout.bytes);
    const pool = await WorkerPool.start(module, memory, ex, ctl, threads, spinMicros);
    const wideTiles = opts.wideTiles ?? (process.arch === 'x64' || process.arch === 'ia32');
    return new WasmBackend(ex, arena, pool, threads, simd, minParallelBytes, wideTiles);
  }

  /** Bytes the memory may grow to (its maximum). */
  get maxBytes(): number {
    return this.arena.maxBytes;
  }

  /** Bytes of the shared memory in use (weights, scratch and the control block). */
  get usedBytes(): number {
    return this.arena.usedBytes;
  }

  /** Whether the wasm kernels compute this ggml type (others fall back to the js kernels). */
  supports(type: number): boolean {
    return this.ex.supports(type) !== 0;
  }

  /** Zeroed, 64-byte aligned memory the kernels read in place. Never freed before close(). */
  alloc(bytes: number): Uint8Array {
    this.checkOpen();
    checkAlloc(bytes, argument);
    return this.arena.alloc(bytes);
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
    this.pool.checkHealthy();
    checkAttention(s, argument);
    const { nHeads, nKvHeads, headDim, start, n } = s;
    const group = nHeads / nKvHeads;
    const half = s.keys instanceof Uint16Array;
    const len = start + n;
    const qDim = nHeads * headDim;
    const cache = len * nKvHeads * headDim;

    // Multiply-adds (scores and value sums over the causal triangle), weighed as 4 bytes
    // each against minParallelBytes.
    const work = 2 * n * nHeads * (start + (n + 1) / 2) * headDim;
    const pairs = n * nKvHeads;
    const chunks = this.wantsThreads(4 * work) ? Math.min(pairs, this.threads * CHUNKS_PER_THREAD) : 1;
    // Scratch: f32 keys then values (back to back: an f16 cache is widened in one range),
    // q, out, the scores of each chunk, and an f16 cache's bits.
    const attStride = alignUp(group * len * 4, ALIGN);
    const qBytes = alignUp(n * qDim * 4, ALIGN);
    const kPtr = this.arena.scratchFor(
      alignUp(2 * cache * 4, ALIGN) + 2 * qBytes + chunks * attStride + (half ? 2 * cache * 2 : 0),
    );
    const vPtr = kPtr + cache * 4;
    const qPtr = kPtr + alignUp(2 * cache * 4, ALIGN);
    const outPtr = qPtr + qBytes;
    const attPtr = outPtr + qBytes;
    const stage = attPtr + chunks * attStride;

    this.arena.f32.set(s.q.subarray(0, n * qDim), qPtr / 4);
    if (half) {
      this.ex.roundF16(qPtr, qPtr, n * qDim);
      s.q.set(this.arena.f32.subarray(qPtr / 4, qPtr / 4 + n * qDim));
      this.arena.u16.set(s.keys.subarray(0, cache), stage / 2);
      this.arena.u16.set(s.values.subarray(0, cache), stage / 2 + cache);
      this.elementJob(this.L.f16ToF32, stage, 0, kPtr, 2 * cache, 6, 'attention cache');
    } else {
      this.arena.f32.set(s.keys.subarray(0, cache), kPtr / 4);
      this.arena.f32.set(s.values.subarray(0, cache), vPtr / 4);
    }

    const L = this.L;
    this.pool.run(L.attend, pairs, chunks, Math.ceil(pairs / chunks), 'attention', (c) => {
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
    s.out.set(this.arena.f32.subarray(outPtr / 4, outPtr / 4 + n * qDim));
  }

  swiglu(out: Float32Array, gate: Float32Array, up: Float32Array, n: number): void {
    this.checkOpen();
    this.pool.checkHealthy();
    checkSwiglu(out, gate, up, n, argument);
    if (n === 0) return;
    const bytes = alignUp(n * 4, ALIGN);
    const gPtr = this.arena.scratchFor(3 * bytes);
    this.arena.f32.set(gate.subarray(0, n), gPtr / 4);
    this.arena.f32.set(up.subarray(0, n), (gPtr + bytes) / 4);
    this.elementJob(this.L.swiglu, gPtr, gPtr + bytes, gPtr + 2 * bytes, n, 12, 'swiglu');
    out.set(this.arena.f32.subarray((gPtr + 2 * bytes) / 4, (gPtr + 2 * bytes) / 4 + n));
  }

  /**
   * x[0..n) converted by the wasm code into the form `kind` that dot products take, returned
   * as the js Activation: Q8_0/Q8_1/Q8_K blocks (Q8_0 is also what a node can send
   * downstream) or f16/bf16-rounded values.
   */
  activation(kind: ActivationKind, x: Float32Array, n: number): Activation {
    this.checkOpen();
    checkActivation(kind, x, n, argument);
    const act = new Activation(n);
    if (kind === 'f32') return act.fill(kind, x, n);
    const lay = activationLayout(kind, n);
    const xPtr = this.arena.scratchFor(alignUp(n * 4, ALIGN) + lay.bytes(1));
    this.arena.f32.set(x.subarray(0, n), xPtr / 4);
    const p = this.prepare(kind, xPtr, 1, n, xPtr + alignUp(n * 4, ALIGN), lay);
    const buf = this.arena.memory.buffer;
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
  private prepare(
    kind: ActivationKind,
    xPtr: number,
    n: number,
    cols: number,
    actPtr: number,
    lay: ActivationLayout,
  ): { q: number; d: number; x: number } {
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
    await this.pool.close();
  }

  private product(w: Weight, x: Float32Array, n: number, out: Float32Array): void {
    this.checkOpen();
    this.pool.checkHealthy();
    checkProduct(w, x, n, out, argument);
    const { rows, cols } = w;
    const type = w.kernel.info.id;
    if (!this.supports(type)) {
      matvecs(w, x, n, out, this.jsScratch);
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
    const own = this.arena.owns(w.data);
    const xPtr = this.arena.scratchFor(xBytes + actBytes + alignUp(n * rows * 4, ALIGN) + (own ? 0 : wBytes));
    const actPtr = kind === 'f32' ? xPtr : xPtr + xBytes;
    const outPtr = xPtr + xBytes + actBytes;
    let wPtr = w.data.byteOffset;
    if (!own) {
      // A weight in memory the kernels cannot address (not from alloc()): copied per call.
      // Correct but slow; the model always allocates its weights here.
      wPtr = outPtr + alignUp(n * rows * 4, ALIGN);
      this.arena.u8.set(w.data.subarray(0, wBytes), wPtr);
    }
    this.arena.f32.set(x.subarray(0, n * cols), xPtr / 4);
    const ptrs = this.prepare(kind, xPtr, n, cols, actPtr, lay);
    const act16 = wide ? actPtr + lay.bytes(n) : 0;
    if (wide) this.ex.widenI8(ptrs.q, act16, n * lay.q);

    // Small products are one chunk, which the calling thread claims itself.
    const chunks = this.wantsThreads(wBytes) ? Math.min(rows, this.threads * CHUNKS_PER_THREAD) : 1;
    const L = this.L;
    this.pool.run(type, rows, chunks, Math.ceil(rows / chunks), w.name, (c) => {
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
    out.set(this.arena.f32.subarray(outPtr / 4, outPtr / 4 + n * rows));
  }

  /** Whether a job touching about `bytes` is worth waking the workers for. */
  private wantsThreads(bytes: number): boolean {
    return this.pool.parallel && bytes >= this.minParallelBytes;
  }

  /**
   * An element-wise job over `count` elements (op OP_SWIGLU or OP_F16_TO_F32) with operands
   * at a, b (ACT, W) and out; split over the threads when count × bytesPerElement is large.
   */
  private elementJob(
    op: number,
    a: number,
    b: number,
    out: number,
    count: number,
    bytesPerElement: number,
    what: string,
  ): void {
    const chunks = this.wantsThreads(count * bytesPerElement)
      ? Math.min(Math.ceil(count / 64), this.threads * CHUNKS_PER_THREAD)
      : 1;
    const per = alignUp(Math.ceil(count / chunks), 8);
    const L = this.L;
    this.pool.run(op, count, Math.ceil(count / per), per, what, (c) => {
      c[L.act] = a;
      c[L.w] = b;
      c[L.out] = out;
    });
  }

  private checkOpen(): void {
    if (this.closed) throw new WasmBackendError('WASM_CLOSED', 'the backend is closed');
  }
}
