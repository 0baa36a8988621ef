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

import type { KernelBackend } from '../backend.ts';
import type { AttentionStep } from '../attention.ts';
import { Activation, type ActivationKind } from '../activation.ts';
import { MatvecScratch, matvecs, type Weight } from '../matvec.ts';
import {
  KernelBackendError,
  checkActivation,
  checkAlloc,
  checkAttention,
  checkProduct,
  checkSwiglu,
  threadOptions,
} from '../checks.ts';
import { ACT_KINDS, NATIVE_ISAS, loadAddon, type NativeAddon, type NativeHandle, type NativeIsa } from './addon.ts';

export type { NativeIsa } from './addon.ts';

export type NativeBackendErrorCode = 'NATIVE_UNAVAILABLE' | 'NATIVE_CLOSED' | 'NATIVE_ARGUMENT';

export class NativeBackendError extends KernelBackendError<NativeBackendErrorCode> {
  constructor(code: NativeBackendErrorCode, message: string) {
    super(code, 'native', message);
    this.name = 'NativeBackendError';
  }
}

const argument = (message: string) => new NativeBackendError('NATIVE_ARGUMENT', message);

export interface NativeBackendOptions {
  /** Threads computing each product, the calling one included (1 … MAX_THREADS of ../checks.ts); defaults to the core count. */
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
  private readonly jsScratch = new MatvecScratch(0);

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
    const defaults = { spinMicros: 200, minParallelBytes: 64 * 1024 };
    const { threads, spinMicros, minParallelBytes } = threadOptions(opts, defaults, argument);
    const compiled = NativeBackend.isas();
    const isa = opts.isa ?? compiled[compiled.length - 1];
    if (!compiled.includes(isa))
      throw argument(`instruction-set path ${isa} is not in this build (it has ${compiled.join(', ')})`);
    const handle = addon.create(threads, spinMicros, NATIVE_ISAS.indexOf(isa));
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
    checkAlloc(bytes, argument);
    return new Uint8Array(this.addon.alloc(bytes));
  }

  matvec(w: Weight, x: Float32Array, out: Float32Array): void {
    const handle = this.live();
    checkProduct(w, x, 1, out, argument);
    if (!this.types.has(w.kernel.info.id)) {
      matvecs(w, x, 1, out, this.jsScratch);
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
    checkProduct(w, xs, n, out, argument);
    if (!this.types.has(w.kernel.info.id)) {
      matvecs(w, xs, n, out, this.jsScratch);
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
    checkAttention(step, argument);
    const { keys, values, nHeads, nKvHeads, headDim, start, n, q, out } = step;
    const cache = (start + n) * nKvHeads * headDim;
    const bytes = 2 * n * cache * keys.BYTES_PER_ELEMENT; // about what the step reads
    this.addon.attend(
      handle,
      keys,
      values,
      nHeads,
      nKvHeads,
      headDim,
      start,
      n,
      q,
      out,
      bytes >= this.minParallelBytes ? 1 : 0,
    );
  }

  /** out[i] = silu(gate[i])·up[i] in C (out may be gate or up, element for element). */
  swiglu(out: Float32Array, gate: Float32Array, up: Float32Array, n: number): void {
    const handle = this.live();
    checkSwiglu(out, gate, up, n, argument);
    this.addon.swiglu(handle, out, gate, up, n, 12 * n >= this.minParallelBytes ? 1 : 0);
  }

  /** x[0..n) prepared as `kind` by the C code, for tests against activation.ts. */
  activation(kind: ActivationKind, x: Float32Array, n: number): Activation {
    this.live();
    checkActivation(kind, x, n, argument);
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
}
