// The compiled kernel backends under test, one entry per build: the native addon on each
// instruction-set path it compiled (where it is built), and the wasm kernels in both builds
// (relaxed SIMD where the runtime has it, and plain SIMD128). test/kernels-backends.test.ts
// runs the same checks on each against the js reference.

import type { ErrorConstructor } from 'ava';
import type { Activation, ActivationKind } from '../../src/kernels/activation.ts';
import type { KernelBackend } from '../../src/kernels/backend.ts';
import type { KernelBackendError } from '../../src/kernels/checks.ts';
import {
  NativeBackend,
  NativeBackendError,
  isNativeAvailable,
  type NativeIsa,
} from '../../src/kernels/native/index.ts';
import { WasmBackend, WasmBackendError, relaxedSimdAvailable, type WasmSimd } from '../../src/kernels/wasm/backend.ts';

/** A compiled backend: a KernelBackend that also says which types it computes itself and prepares activations. */
export type TestedBackend = KernelBackend &
  Required<Pick<KernelBackend, 'matmul'>> & {
    supports(type: number): boolean;
    activation(kind: ActivationKind, x: Float32Array, n: number): Activation;
  };

/** NativeBackendError or WasmBackendError, as ava's instanceOf takes them. */
export type BackendErrorClass = ErrorConstructor<KernelBackendError<string>>;

export interface BackendOptions {
  threads: number;
  minParallelBytes?: number;
  spinMicros?: number;
  /** wasm only: the i16 prefill tiles (see WasmBackendOptions). */
  wideTiles?: boolean;
}

export interface Subject {
  /** 'native avx2', 'wasm relaxed', …: names the tests. */
  label: string;
  kind: 'native' | 'wasm';
  /** What the backend's isa property must say. */
  isa: string;
  create(opts: BackendOptions): Promise<TestedBackend>;
  /** The class of the backend's errors, and the prefix of their codes. */
  error: BackendErrorClass;
  code: 'NATIVE' | 'WASM';
  /** Prefill tile forms to check matmul with (wasm: i16-widened and int8). */
  tileForms: (boolean | undefined)[];
}

export const nativeAvailable = isNativeAvailable();
export const nativeIsas: NativeIsa[] = nativeAvailable ? NativeBackend.isas() : [];
/** Asked once at load: a test that stubs WebAssembly.validate must not be the first to ask. */
export const relaxedAvailable = relaxedSimdAvailable();

function native(isa: NativeIsa): Subject {
  return {
    label: `native ${isa}`,
    kind: 'native',
    isa,
    create: (o) =>
      NativeBackend.create({ threads: o.threads, minParallelBytes: o.minParallelBytes, spinMicros: o.spinMicros, isa }),
    error: NativeBackendError,
    code: 'NATIVE',
    tileForms: [undefined],
  };
}

function wasm(simd: WasmSimd): Subject {
  return {
    label: `wasm ${simd}`,
    kind: 'wasm',
    isa: simd === 'relaxed' ? 'relaxed-simd' : 'simd128',
    create: (o) =>
      WasmBackend.create({
        threads: o.threads,
        minParallelBytes: o.minParallelBytes,
        spinMicros: o.spinMicros,
        wideTiles: o.wideTiles,
        simd,
      }),
    error: WasmBackendError,
    code: 'WASM',
    tileForms: [true, false],
  };
}

/** Every compiled backend this machine has, native paths plainest first. */
export const SUBJECTS: Subject[] = [
  ...nativeIsas.map(native),
  ...(relaxedAvailable ? [wasm('relaxed')] : []),
  wasm('simd128'),
];

/** Creates a backend, runs `body` with it and closes it whatever happens. */
export async function withBackend<T>(
  subject: Subject,
  opts: BackendOptions,
  body: (b: TestedBackend) => T | Promise<T>,
): Promise<T> {
  const b = await subject.create(opts);
  try {
    return await body(b);
  } finally {
    await b.close();
  }
}
