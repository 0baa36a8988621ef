// F32 weights: four little-endian bytes per value.

import { GgmlType } from '../ggml/types.ts';
import type { Activation } from './activation.ts';

export const type = GgmlType.F32;
export const activation = 'f32';

function view(w: Uint8Array, off: number, n: number): Float32Array {
  const at = w.byteOffset + off;
  if (at % 4 === 0) return new Float32Array(w.buffer, at, n);
  return new Float32Array(w.slice(off, off + 4 * n).buffer);
}

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  out.set(view(w, off, n), outOff);
}

export function dot(w: Uint8Array, off: number, n: number, x: Activation): number {
  const row = view(w, off, n);
  const xf = x.f;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += row[i] * xf[i];
  return sum;
}

export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  new Uint8Array(dst.buffer, dst.byteOffset + dstOff, 4 * n).set(
    new Uint8Array(x.buffer, x.byteOffset + 4 * xOff, 4 * n),
  );
}
