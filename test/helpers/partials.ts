// Deterministic partial outputs for data plane tests: distinct values per member and round,
// the same in every process.

export function partial(m: number, r: number, n: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.1 + m * 1.3 + r) * (m + 1) + (i % 17) * 0.01);
}
