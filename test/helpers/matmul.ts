// One check the compiled backends share (in the ava tests and scripts/arm-check.ts): a
// matmul over n vectors gives, bit for bit, the n matvecs (the same kernel over the same
// prepared activations), rows split over the backend's threads.

import type { GgmlTypeInfo } from '../../src/ggml/types.ts';
import type { KernelBackend } from '../../src/kernels/backend.ts';
import { makeWeight } from '../../src/kernels/matvec.ts';
import { quantizedBytes, randomVector, rng } from './kernel-inputs.ts';

/**
 * For each type, a 67-row weight (2080 columns, 2304 for 256-value blocks) in the backend's
 * memory times n vectors: where the matmul's output differs from the matvecs', one line each.
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
