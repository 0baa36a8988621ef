// F16 weights: IEEE half precision. ggml's CPU backend rounds the activations to f16 as well
// (F16's vec_dot_type), so that every product is exact in f32 and only the sums round; the
// prepared activation holds those values (or plain f32 ones, see F16Activation in matvec.ts).

import { f16ToF32, f32ToF16 } from '../ggml/half.ts';
import type { Activation } from './activation.ts';

export function dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void {
  for (let i = 0; i < n; i++) out[outOff + i] = f16ToF32(w[off + 2 * i] | (w[off + 2 * i + 1] << 8));
}

export function dot(w: Uint8Array, off: number, n: number, x: Activation): number {
  const xf = x.f;
  let sum = 0;
  for (let i = 0, o = off; i < n; i++, o += 2) sum += f16ToF32(w[o] | (w[o + 1] << 8)) * xf[i];
  return sum;
}

export function quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  for (let i = 0; i < n; i++) {
    const h = f32ToF16(x[xOff + i]);
    dst[dstOff + 2 * i] = h & 0xff;
    dst[dstOff + 2 * i + 1] = h >> 8;
  }
}
