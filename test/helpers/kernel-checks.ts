// Checks the compiled backends share, in the ava tests (test/kernels-backends.test.ts) and in
// the arm checks (scripts/arm-check.ts): each returns one line per mismatch, none when the
// backend is right.

import type { GgmlTypeInfo } from '../../src/ggml/types.ts';
import { Activation, type ActivationKind } from '../../src/kernels/activation.ts';
import type { KernelBackend } from '../../src/kernels/backend.ts';
import { makeWeight } from '../../src/kernels/matvec.ts';
import { quantizedBytes, randomVector, rng } from './kernel-inputs.ts';

/**
 * A matmul over n vectors gives, bit for bit, the n matvecs (the same kernel over the same
 * prepared activations), rows split over the backend's threads. For each type, a 67-row
 * weight (2080 columns, 2304 for 256-value blocks) in the backend's memory times n vectors.
 */
export function matmulMismatches(backend: KernelBackend, types: readonly GgmlTypeInfo[], n: number): string[] {
  if (!backend.matmul) return [`${backend.name} has no matmul`];
  const bad: string[] = [];
  const next = rng(42);
  for (const info of types) {
    const rows = 67;
    const cols = info.blockSize === 256 ? 2304 : 2080;
    const bytes = quantizedBytes(info, rows, cols, 11);
    const data = backend.alloc(bytes.length);
    data.set(bytes);
    const w = makeWeight(`${info.name}[${rows}×${cols}]`, info, [cols, rows], data);
    const xs = randomVector(n * cols, next);
    const out = new Float32Array(n * rows);
    backend.matmul(w, xs, n, out);
    const one = new Float32Array(rows);
    for (let j = 0; j < n; j++) {
      backend.matvec(w, xs.subarray(j * cols, (j + 1) * cols), one);
      const r = one.findIndex((v, i) => !Object.is(v, out[j * rows + i]));
      if (r >= 0) bad.push(`${w.name} vector ${j} row ${r}: matmul ${out[j * rows + r]}, matvec ${one[r]}`);
    }
  }
  return bad;
}

/** A backend that prepares activations itself (native, wasm). */
export type Preparing = { activation(kind: ActivationKind, x: Float32Array, n: number): Activation };

/** The Q8_0, Q8_1, Q8_K (where x fills whole 256-value blocks), f16 and bf16 activations of x, bit for bit those of activation.ts. */
export function activationMismatches(backend: Preparing, x: Float32Array): string[] {
  const bits = (a: ArrayLike<number> & { buffer: ArrayBufferLike; byteOffset: number }, n: number) =>
    Array.from(new Uint32Array(a.buffer, a.byteOffset, n)).join();
  const n = x.length;
  const bad: string[] = [];
  for (const kind of ['q8_0', 'q8_1', 'q8_k', 'f16', 'bf16'] as ActivationKind[]) {
    if (kind === 'q8_k' && n % 256 !== 0) continue;
    const want = new Activation(n).fill(kind, x, n);
    let got: Activation;
    try {
      got = backend.activation(kind, x, n);
    } catch (err) {
      bad.push(`${kind} of ${n} values: ${(err as Error).message}`);
      continue;
    }
    const differ = (what: string, a: string, b: string) =>
      a !== b && bad.push(`${kind} of ${n} values: ${what} differ`);
    if (kind === 'f16' || kind === 'bf16') {
      differ('values (bits)', bits(got.f, n), bits(want.f, n));
      continue;
    }
    differ('quants', got.qs.join(), want.qs.join());
    differ('scales (bits)', bits(got.d, got.d.length), bits(want.d, want.d.length));
    if (kind === 'q8_1') differ('d·Σq (bits)', bits(got.s, got.s.length), bits(want.s, want.s.length));
    if (kind === 'q8_k') differ('Σq per 16', got.bsums.join(), want.bsums.join());
  }
  return bad;
}
