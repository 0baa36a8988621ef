// The kernel backends behind one interface. The model asks its backend for weight memory
// (so wasm/native kernels read weights where they live, copied from the file once), for
// the matrix products, for attention over the KV cache and for the SwiGLU activation;
// RMSNorm, RoPE and the residual adds are O(dim) per token and stay in TypeScript.

import { MatvecScratch, matvec, type F16Activation, type Weight } from './matvec.ts';
import { AttentionScratch, attend, type AttentionStep } from './attention.ts';
import { swiglu } from './ops.ts';
import { KernelBackendError, checkAlloc, checkAttention, checkProduct, checkSwiglu } from './checks.ts';

export type BackendName = 'js' | 'wasm' | 'native';

export interface KernelBackend {
  readonly name: BackendName;
  /** The instruction set the kernels run on: native's path (avx512, avx2, neon-dotprod, …),
   *  the wasm build (relaxed-simd, simd128), or js. */
  readonly isa: string;
  readonly threads: number;
  /** Zeroed memory for `bytes` of weight data that this backend's kernels can read. */
  alloc(bytes: number): Uint8Array;
  /** out[r] = Σ_c w[r, c] · x[c]. */
  matvec(w: Weight, x: Float32Array, out: Float32Array): void;
  /**
   * out (n × rows) = xs (n × cols) · wᵀ, reading the weight once for all n vectors (prefill).
   * Optional: without it the model runs n matvecs.
   */
  matmul?(w: Weight, xs: Float32Array, n: number, out: Float32Array): void;
  /** Causal grouped-query attention of a step's tokens over one layer's KV cache. */
  attend(step: AttentionStep): void;
  /** out[i] = silu(gate[i]) · up[i] for i < n (out may be gate). */
  swiglu(out: Float32Array, gate: Float32Array, up: Float32Array, n: number): void;
  /** Stops worker threads and frees memory; the backend is unusable afterwards. */
  close(): Promise<void>;
}

export interface JsBackendOptions {
  /**
   * How F16 weights take their activations (see F16Activation): 'f16' by default, as ggml's
   * type table says and as the wasm and native backends do. 'f32' reproduces llama.cpp on a
   * CPU where it runs F16 products in its AMX buffer, for the parity tests on such a host.
   */
  f16Activation?: F16Activation;
}

const argument = (message: string) => new KernelBackendError('JS_ARGUMENT', 'js', message);

/** The plain TypeScript reference: one thread, the oracle other backends are tested against. */
export class JsBackend implements KernelBackend {
  readonly name = 'js';
  readonly isa = 'js';
  readonly threads = 1;
  private readonly f16Activation: F16Activation;
  private readonly scratch: MatvecScratch;
  private readonly attention = new AttentionScratch();

  constructor(opts: JsBackendOptions = {}) {
    this.f16Activation = opts.f16Activation ?? 'f16';
    this.scratch = new MatvecScratch(0, this.f16Activation);
  }

  alloc(bytes: number): Uint8Array {
    checkAlloc(bytes, argument);
    return new Uint8Array(bytes);
  }

  matvec(w: Weight, x: Float32Array, out: Float32Array): void {
    checkProduct(w, x, 1, out, argument);
    matvec(w, x, out, this.scratch);
  }

  attend(step: AttentionStep): void {
    checkAttention(step, argument);
    attend(step, this.attention);
  }

  swiglu(out: Float32Array, gate: Float32Array, up: Float32Array, n: number): void {
    checkSwiglu(out, gate, up, n, argument);
    swiglu(out, gate, up, n);
  }

  async close(): Promise<void> {}
}
