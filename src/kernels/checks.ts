// Argument checks and limits every kernel backend applies (js, wasm, native), so they accept
// and refuse the same calls with the same messages. Each check throws the error its backend
// makes of the message (`fail`), so callers still see that backend's error class and code.

import { availableParallelism } from 'node:os';
import type { AttentionStep } from './attention.ts';
import { Q8K_BLOCK, Q8_BLOCK, type ActivationKind } from './activation.ts';
import type { Weight } from './matvec.ts';

/** Makes a backend's argument error from a message. */
export type ArgumentError = (message: string) => Error;

/**
 * Threads a backend may run, the calling one included. The wasm backend's job counter holds
 * the chunk being claimed in 12 bits (at most 4095 chunks per job, one value reserved) and
 * cuts a job into 8 chunks per thread, so it cannot go past 511; 256 is the largest power of
 * two below that, and above the core count of any machine herd runs on (a Pi has 4, large
 * servers 128–192), so one limit serves every backend.
 */
export const MAX_THREADS = 256;

/** How long idle workers may poll for the next job: 1 s, far beyond any useful spin. */
export const MAX_SPIN_MICROS = 1_000_000;

/** Elements one call may cover: the C kernels and the wasm control block count in int32. */
export const MAX_ELEMENTS = 0x7fffffff;

/** The options every threaded backend takes. */
export interface ThreadOptions {
  threads: number;
  spinMicros: number;
  minParallelBytes: number;
}

/**
 * A backend's thread options: those given, the rest from `defaults` (threads: the cores Node
 * sees, within MAX_THREADS), each checked.
 */
export function threadOptions(
  given: Partial<ThreadOptions>,
  defaults: Omit<ThreadOptions, 'threads'>,
  fail: ArgumentError,
): ThreadOptions {
  const o: ThreadOptions = {
    threads: given.threads ?? Math.min(availableParallelism(), MAX_THREADS),
    spinMicros: given.spinMicros ?? defaults.spinMicros,
    minParallelBytes: given.minParallelBytes ?? defaults.minParallelBytes,
  };
  if (!(Number.isInteger(o.threads) && o.threads >= 1 && o.threads <= MAX_THREADS)) {
    throw fail(`threads must be an integer 1 … ${MAX_THREADS}, got ${o.threads}`);
  }
  if (!(Number.isInteger(o.spinMicros) && o.spinMicros >= 0 && o.spinMicros <= MAX_SPIN_MICROS)) {
    throw fail(`spinMicros must be an integer 0 … ${MAX_SPIN_MICROS}, got ${o.spinMicros}`);
  }
  if (!(Number.isSafeInteger(o.minParallelBytes) && o.minParallelBytes >= 0)) {
    throw fail(`minParallelBytes must be an integer ≥ 0, got ${o.minParallelBytes}`);
  }
  return o;
}

export function checkAlloc(bytes: number, fail: ArgumentError): void {
  if (!(Number.isSafeInteger(bytes) && bytes >= 0)) throw fail(`cannot allocate ${bytes} bytes`);
}

/** A product of w with n input vectors (a matvec when n is 1): vector count and lengths. */
export function checkProduct(w: Weight, x: Float32Array, n: number, out: Float32Array, fail: ArgumentError): void {
  if (!(Number.isInteger(n) && n >= 1)) throw fail(`${w.name}: vector count must be a positive integer, got ${n}`);
  if (x.length < n * w.cols) throw fail(`${w.name}: input holds ${x.length} values, ${n}×${w.cols} needed`);
  if (out.length < n * w.rows) throw fail(`${w.name}: output holds ${out.length} values, ${n}×${w.rows} needed`);
}

/** An attention step: array types, shape, and a cache and buffers large enough for it. */
export function checkAttention(step: AttentionStep, fail: ArgumentError): void {
  const { keys, values, nHeads, nKvHeads, headDim, start, n, q, out } = step;
  const bad = (what: string) => fail(`attention: ${what}`);
  const half = keys instanceof Uint16Array;
  if (!(half || keys instanceof Float32Array))
    throw bad('keys must be a Float32Array (f32 cache) or a Uint16Array (f16 cache)');
  if (!(half ? values instanceof Uint16Array : values instanceof Float32Array)) {
    throw bad(`values must be a ${half ? 'Uint16Array' : 'Float32Array'} like the keys`);
  }
  if (!(q instanceof Float32Array && out instanceof Float32Array)) throw bad('q and out must be Float32Arrays');
  if (!(Number.isInteger(nHeads) && nHeads >= 1)) throw bad(`nHeads must be a positive integer, got ${nHeads}`);
  if (!(Number.isInteger(nKvHeads) && nKvHeads >= 1 && nHeads % nKvHeads === 0)) {
    throw bad(`nKvHeads must divide nHeads (${nHeads}), got ${nKvHeads}`);
  }
  if (!(Number.isInteger(headDim) && headDim >= 2 && headDim % 2 === 0))
    throw bad(`headDim must be an even integer ≥ 2, got ${headDim}`);
  if (!(Number.isInteger(start) && start >= 0)) throw bad(`start must be an integer ≥ 0, got ${start}`);
  if (!(Number.isInteger(n) && n >= 1)) throw bad(`n must be an integer ≥ 1, got ${n}`);
  if ((start + n) * nHeads > MAX_ELEMENTS) throw bad(`${start + n} positions × ${nHeads} heads is too many`);
  const kvDim = nKvHeads * headDim;
  const qDim = nHeads * headDim;
  const cache = (start + n) * kvDim;
  if (keys.length < cache)
    throw bad(`keys hold ${keys.length} values, ${cache} needed for positions 0…${start + n - 1}`);
  if (values.length < cache)
    throw bad(`values hold ${values.length} values, ${cache} needed for positions 0…${start + n - 1}`);
  if (q.length < n * qDim) throw bad(`q holds ${q.length} values, ${n * qDim} needed`);
  if (out.length < n * qDim) throw bad(`out holds ${out.length} values, ${n * qDim} needed`);
}

/** SwiGLU over n elements: a count in range and Float32Arrays that hold it. */
export function checkSwiglu(
  out: Float32Array,
  gate: Float32Array,
  up: Float32Array,
  n: number,
  fail: ArgumentError,
): void {
  if (!(Number.isInteger(n) && n >= 0 && n <= MAX_ELEMENTS)) throw fail(`swiglu over ${n} values`);
  for (const [name, a] of [
    ['out', out],
    ['gate', gate],
    ['up', up],
  ] as const) {
    if (!(a instanceof Float32Array)) throw fail(`swiglu: ${name} must be a Float32Array`);
    if (a.length < n) throw fail(`swiglu: ${name} holds ${a.length} values, ${n} needed`);
  }
}

/** Values per block of an activation kind: n must be a multiple of it. */
export function activationBlock(kind: ActivationKind): number {
  return kind === 'q8_k' ? Q8K_BLOCK : kind === 'q8_0' || kind === 'q8_1' ? Q8_BLOCK : 1;
}

/** Preparing n values of x as activations of `kind` (the tests' entry to a backend's quantizers). */
export function checkActivation(kind: ActivationKind, x: Float32Array, n: number, fail: ArgumentError): void {
  const block = activationBlock(kind);
  if (!(Number.isInteger(n) && n >= 0 && n % block === 0))
    throw fail(`${kind} activations need a multiple of ${block} values, got ${n}`);
  if (x.length < n) throw fail(`${kind} activations: x holds ${x.length} values, ${n} needed`);
}

/** What a backend throws: a code for programs to act on, the backend's name in the message. */
export class KernelBackendError<Code extends string> extends Error {
  constructor(
    readonly code: Code,
    backend: string,
    message: string,
  ) {
    super(`${backend} backend: ${message}`);
    this.name = 'KernelBackendError';
  }
}
