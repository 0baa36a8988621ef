// F16 weights: IEEE half precision. ggml's CPU backend rounds the activations to f16 as well
// (F16's vec_dot_type), so that every product is exact in f32 and only the sums round; the
// prepared activation holds those values (or plain f32 ones, see F16Activation in matvec.ts).

import { GgmlType } from '../ggml/types.ts';
import { f16ToF32, f32ToF16 } from '../ggml/half.ts';
import type { Activation } from './activation.ts';

export const type = GgmlType.F16;
export const activation = 'f16';
export const { dequantizeRow, dot, quantizeRow } = halfKernels(f16ToF32, f32ToF16);

/** The kernels of a 16-bit float format, two little-endian bytes a value (F16, BF16), from its conversions. */
export function halfKernels(toF32: (h: number) => number, fromF32: (v: number) => number) {
  return {
    dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
      for (let i = 0, o = off; i < n; i++, o += 2) out[outOff + i] = toF32(w[o] | (w[o + 1] << 8));
    },
    dot(w: Uint8Array, off: number, n: number, x: Activation): number {
      const xf = x.f;
      let sum = 0;
      for (let i = 0, o = off; i < n; i++, o += 2) sum += toF32(w[o] | (w[o + 1] << 8)) * xf[i];
      return sum;
    },
    quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
      for (let i = 0, o = dstOff; i < n; i++, o += 2) {
        const h = fromF32(x[xOff + i]);
        dst[o] = h & 0xff;
        dst[o + 1] = h >> 8;
      }
    },
  };
}
