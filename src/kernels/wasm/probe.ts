// Feature probes for the wasm backend: whether this runtime has WebAssembly SIMD128 and
// shared memory (without them the backend cannot run), and whether its relaxed SIMD gives the
// right answers (which build of the kernels to run).

import { setFlagsFromString } from 'node:v8';

// (func (result v128) i32.const 0 i8x16.splat i8x16.popcnt): compiles only with SIMD128.
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11,
]);

// (memory (export "m") 1) (func (export "f") (v128.store (i32.const 0)
//   (i16x8.relaxed_dot_i8x16_i7x16_s (v128.const i8x16 PROBE_A) (v128.const i8x16 PROBE_B)))):
// compiles only with relaxed SIMD; its result is checked against PROBE_A·PROBE_B pairwise.
const RELAXED_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 3, 2, 1, 0, 5, 3, 1, 0, 1, 7, 9, 2, 1, 109, 2, 0, 1, 102, 0, 0, 10,
  49, 1, 47, 0, 65, 0, 253, 12, 129, 127, 255, 100, 5, 250, 7, 248, 9, 246, 11, 244, 13, 128, 15, 240, 253, 12, 127,
  127, 63, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 253, 146, 2, 253, 11, 4, 0, 11,
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
  relaxedChecked = Array.from(got).every(
    (v, k) => v === PROBE_A[2 * k] * PROBE_B[2 * k] + PROBE_A[2 * k + 1] * PROBE_B[2 * k + 1],
  );
  return relaxedChecked;
}

/** Why this runtime cannot run the wasm kernels at all, or undefined when it can. */
export function wasmMissing(): string | undefined {
  if (!WebAssembly.validate(SIMD_PROBE)) return 'this runtime has no WebAssembly SIMD128; use the js backend';
  if (typeof SharedArrayBuffer !== 'function')
    return 'this runtime has no SharedArrayBuffer (shared wasm memory); use the js backend';
  return undefined;
}
