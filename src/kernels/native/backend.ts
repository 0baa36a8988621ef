// The native backend: C kernels in a Node-API addon (./addon.c and friends), compiled on
// the machine that runs them with -march=native, multithreaded inside the addon.
//
// Memory: alloc() hands out memory the addon owns (64-byte aligned, zeroed, freed when
// the last view of it is collected), so the model reads each tensor from the file straight
// into memory the kernels read; the kernels also accept any other Uint8Array (no copy).
//
// Threads: a persistent pthread pool; the calling thread takes a share of every product.
// Idle workers spin for spinMicros after a product (in decode the next one follows within
// microseconds), then sleep. Rows go out in chunks from a shared counter; each row's dot
// product is computed the same way whichever thread takes it, so results do not depend on
// the thread count, and matmul over n vectors equals n matvecs bit for bit. Attention and
// SwiGLU (ops.c) share the pool the same way: attention in units of (token, KV head), each
// head computed alike on any thread, so it too is independent of the thread count and a
// step of n tokens equals n one-token steps bit for bit.

import { availableParallelism } from 'node:os';
import type { KernelBackend } from '../backend.ts';
import type { AttentionStep } from '../attention.ts';
import { Activation, type ActivationKind } from '../activation.ts';
import { MatvecScratch, matvec as jsMatvec, type Weight } from '../matvec.ts';
import { ACT_KINDS, NATIVE_ISAS, loadAddon, type NativeAddon, type NativeHandle, type NativeIsa } from './addon.ts';

export type { NativeIsa } from './addon.ts';

export type NativeBackendErrorCode = 'NATIVE_UNAVAILABLE' | 'NATIVE_CLOSED' | 'NATIVE_ARGUMENT';

export class NativeBackendError extends Error {
  constructor(
    readonly code: NativeBackendErrorCode,
    message: string,
  ) {
    super(`native backend: ${message}`);
    this.name = 'NativeBackendError';
  }
}

export interface NativeBackendOptions {
  /** Threads computing each product, the calling one included; defaults to the core count. */
  threads?: number;
  /**
   * Products over fewer weight bytes than this run on the calling thread alone: waking
   * workers costs more than it saves on a small matrix. Default 64 KiB; 0 always splits.
   */
  minParallelBytes?: number;
  /** How long idle workers poll for the next product before sleeping. Default 200 µs. */
  spinMicros?: number;
  /** Instruction-set path; defaults to the best this build compiled (see NativeBackend.isas()). */
  isa?: NativeIsa;
}

/** True when the addon is built and loads on this machine. */
export function isNativeAvailable(): boolean {
  return loadAddon().addon !== undefined;
}

function requireAddon(): NativeAddon {
  const { addon, error } = loadAddon();
  if (!addon) throw new NativeBackendError('NATIVE_UNAVAILABLE', error ?? 'the native addon is unavailable');
  return addon;
}

function isNativeIsa(s: string): s is NativeIsa {
  return (NATIVE_ISAS as readonly string[]).includes(s);
}

export class NativeBackend implements KernelBackend {
  readonly name = 'native';
  private handle: NativeHandle | undefined;
  private readonly types: ReadonlySet<number>;
  private jsScratch = new MatvecScratch(0);

  private constructor(
    private readonly addon: NativeAddon,
    handle: NativeHandle,
    readonly threads: number,
    readonly isa: NativeIsa,
    private readonly minParallelBytes: number,
  ) {
    this.handle = handle;
    this.types = new Set(addon.info().types);
  }

  /** Starts the addon's threads; fails with NATIVE_UNAVAILABLE when the addon is not built. */
  static async create(opts: NativeBackendOptions = {}): Promise<NativeBackend> {
    const addon = requireAddon();
    const threads = opts.threads ?? availableParallelism();
    if (!Number.isInteger(threads) || threads < 1 || threads > 1024) {
      throw new NativeBackendError('NATIVE_ARGUMENT', `threads must be an integer 1 … 1024, got ${threads}`);
    }
    const compiled = NativeBackend.isas();
    const isa = opts.isa ?? compiled[compiled.length - 1];
    if (!compiled.includes(isa)) {
      throw new NativeBackendError('NATIVE_ARGUMENT', `instruction-set path ${isa} is not in this build (it has ${compiled.join(', ')})`);
    }
    const spin = opts.spinMicros ?? 200;
    if (!(Number.isInteger(spin) && spin >= 0 && spin <= 1_000_000)) {
      throw new NativeBackendError('NATIVE_ARGUMENT', `spinMicros must be an integer 0 … 1000000, got ${spin}`);
    }
    const minParallelBytes = opts.minParallelBytes ?? 64 * 1024;
    const handle = addon.create(threads, spin, NATIVE_ISAS.indexOf(isa));
    return new NativeBackend(addon, handle, addon.threads(handle), isa, minParallelBytes);
  }

  /** The instruction-set paths this build compiled, plainest first. */
  static isas(): NativeIsa[] {
    return requireAddon().info().isas.filter(isNativeIsa);
  }

  /** Whether the addon has kernels of its own for a ggml type (others run the js reference). */
  supports(type: number): boolean {
    return this.types.has(type);
  }

  alloc(bytes: number): Uint8Array {
    this.live();
    if (!(Number.isSafeInteger(bytes) && bytes >= 0)) throw new NativeBackendError('NATIVE_ARGUMENT', `cannot allocate ${bytes} bytes`);
    return new Uint8Array(this.addon.alloc(bytes));
  }

  matvec(w: Weight, x: Float32Array, out: Float32Array): void {
    const handle = this.live();
    this.check(w, x, 1, out);
    if (!this.types.has(w.kernel.info.id)) {
      if (this.jsScratch.capacity < w.cols) this.jsScratch = new MatvecScratch(w.cols);
      jsMatvec(w, x, out, this.jsScratch);
      return;
    }
    this.addon.matvec(handle, w.kernel.info.id, w.data, w.rows, w.cols, x, out, this.parallel(w));
  }

  /**
   * n products in one pass over the weights (prefill): xs holds n input vectors of w.cols
   * values one after another, out receives n output vectors of w.rows values the same way.
   * Equal, bit for bit, to n matvec calls.
   */
  matmul(w: Weight, xs: Float32Array, n: number, out: Float32Array): void {
    const handle = this.live();
    if (!(Number.isInteger(n) && n >= 1)) throw new NativeBackendError('NATIVE_ARGUMENT', `matmul over ${n} vectors`);
    this.check(w, xs, n, out);
    if (!this.types.has(w.kernel.info.id)) {
      for (let j = 0; j < n; j++) this.matvec(w, xs.subarray(j * w.cols, (j + 1) * w.cols), out.subarray(j * w.rows, (j + 1) * w.rows));
      return;
    }
    this.addon.matmul(handle, w.kernel.info.id, w.data, w.rows, w.cols, xs, n, out, this.parallel(w));
  }

  /**
   * The step's attention in C (ops.c), reading the cache and writing out in place; with an
   * f16 cache q is rounded to f16 in place, as the js reference does. Units of (token, KV
   * head) go to the threads when the step streams at least minParallelBytes of cache.
   */
  attend(step: AttentionStep): void {
    const handle = this.live();
    const { keys, values, nHeads, nKvHeads, headDim, start, n, q, out } = step;
    const bad = (what: string) => new NativeBackendError('NATIVE_ARGUMENT', `attention: ${what}`);
    const half = keys instanceof Uint16Array;
    if (!(half || keys instanceof Float32Array)) throw bad('keys must be a Float32Array (f32 cache) or a Uint16Array (f16 cache)');
    if (!(half ? values instanceof Uint16Array : values instanceof Float32Array)) {
      throw bad(`values must be a ${half ? 'Uint16Array' : 'Float32Array'} like the keys`);
    }
    if (!(q instanceof Float32Array && out instanceof Float32Array)) throw bad('q and out must be Float32Arrays');
    if (!(Number.isInteger(nHeads) && nHeads >= 1)) throw bad(`nHeads must be a positive integer, got ${nHeads}`);
    if (!(Number.isInteger(nKvHeads) && nKvHeads >= 1 && nHeads % nKvHeads === 0)) {
      throw bad(`nKvHeads must divide nHeads (${nHeads}), got ${nKvHeads}`);
    }
    if (!(Number.isInteger(headDim) && headDim >= 2 && headDim % 2 === 0)) throw bad(`headDim must be an even integer ≥ 2, got ${headDim}`);
    if (!(Number.isInteger(start) && start >= 0)) throw bad(`start must be an integer ≥ 0, got ${start}`);
    if (!(Number.isInteger(n) && n >= 1)) throw bad(`n must be an integer ≥ 1, got ${n}`);
    if ((start + n) * nHeads > 0x7fffffff) throw bad(`${start + n} positions × ${nHeads} heads is too many`);
    const kvDim = nKvHeads * headDim;
    const qDim = nHeads * headDim;
    const cache = (start + n) * kvDim;
    if (keys.length < cache) throw bad(`keys hold ${keys.length} values, ${cache} needed for positions 0…${start + n - 1}`);
    if (values.length < cache) throw bad(`values hold ${values.length} values, ${cache} needed for positions 0…${start + n - 1}`);
    if (q.length < n * qDim) throw bad(`q holds ${q.length} values, ${n * qDim} needed`);
    if (out.length < n * qDim) throw bad(`out holds ${out.length} values, ${n * qDim} needed`);
    const bytes = 2 * n * cache * keys.BYTES_PER_ELEMENT; // about what the step reads
    this.addon.attend(handle, keys, values, nHeads, nKvHeads, headDim, start, n, q, out, bytes >= this.minParallelBytes ? 1 : 0);
  }

  /** out[i] = silu(gate[i])·up[i] in C (out may be gate or up, element for element). */
  swiglu(out: Float32Array, gate: Float32Array, up: Float32Array, n: number): void {
    const handle = this.live();
    if (!(Number.isInteger(n) && n >= 0 && n <= 0x7fffffff)) throw new NativeBackendError('NATIVE_ARGUMENT', `swiglu over ${n} values`);
    for (const [name, a] of [['out', out], ['gate', gate], ['up', up]] as const) {
      if (!(a instanceof Float32Array)) throw new NativeBackendError('NATIVE_ARGUMENT', `swiglu: ${name} must be a Float32Array`);
      if (a.length < n) throw new NativeBackendError('NATIVE_ARGUMENT', `swiglu: ${name} holds ${a.length} values, ${n} needed`);
    }
    this.addon.swiglu(handle, out, gate, up, n, 12 * n >= this.minParallelBytes ? 1 : 0);
  }

  /** x[0..n) prepared as `kind` by the C code, for tests against activation.ts. */
  activation(kind: ActivationKind, x: Float32Array, n: number): Activation {
    this.live();
    const act = new Activation(n);
    act.kind = kind;
    act.n = n;
    this.addon.prepare(ACT_KINDS.indexOf(kind), x, n, act.f, act.qs, act.d, act.s, act.bsums);
    return act;
  }

  async close(): Promise<void> {
    if (this.handle) this.addon.close(this.handle);
    this.handle = undefined;
  }

  private live(): NativeHandle {
    if (!this.handle) throw new NativeBackendError('NATIVE_CLOSED', 'the backend is closed');
    return this.handle;
  }

  private parallel(w: Weight): number {
    return w.rows * w.rowBytes >= this.minParallelBytes ? 1 : 0;
  }

  private check(w: Weight, x: Float32Array, n: number, out: Float32Array): void {
    if (x.length < n * w.cols) throw new NativeBackendError('NATIVE_ARGUMENT', `${w.name}: input holds ${x.length} values, ${n * w.cols} needed`);
    if (out.length < n * w.rows) throw new NativeBackendError('NATIVE_ARGUMENT', `${w.name}: output holds ${out.length} values, ${n * w.rows} needed`);
  }
}
