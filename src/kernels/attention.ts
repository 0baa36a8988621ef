// Attention of one query head over a layer's cached keys and values. The cache holds f32
// or f16 (as Uint16Array bits); rows are positions, kvOff selects the KV head in a row.

import { f16ToF32, f32ToF16 } from '../ggml/half.ts';

/**
 * Attention of one head over positions 0..pos: scores = q·k/√d, causal softmax, Σ p·v.
 * With an f16 cache, q and the probabilities are rounded to f16 before their products,
 * as llama.cpp's f16 matrix products do, so the two agree closely.
 */
export function attendHead(
  keys: Float32Array | Uint16Array, values: Float32Array | Uint16Array, kvDim: number, pos: number,
  q: Float32Array, qOff: number, kvOff: number, headDim: number,
  att: Float32Array, out: Float32Array, outOff: number,
): void {
  const scale = 1 / Math.sqrt(headDim);
  const half = keys instanceof Uint16Array;
  if (half) for (let i = 0; i < headDim; i++) q[qOff + i] = f16ToF32(f32ToF16(q[qOff + i]));

  let max = -Infinity;
  for (let t = 0; t <= pos; t++) {
    const ko = t * kvDim + kvOff;
    let s = 0;
    if (half) for (let i = 0; i < headDim; i++) s += q[qOff + i] * f16ToF32(keys[ko + i]);
    else for (let i = 0; i < headDim; i++) s += q[qOff + i] * keys[ko + i];
    s *= scale;
    att[t] = s;
    if (s > max) max = s;
  }
  let sum = 0;
  for (let t = 0; t <= pos; t++) {
    const e = Math.exp(att[t] - max);
    att[t] = e;
    sum += e;
  }
  for (let i = 0; i < headDim; i++) out[outOff + i] = 0;
  for (let t = 0; t <= pos; t++) {
    let p = att[t] / sum;
    const vo = t * kvDim + kvOff;
    if (half) {
      p = f16ToF32(f32ToF16(p));
      for (let i = 0; i < headDim; i++) out[outOff + i] += p * f16ToF32(values[vo + i]);
    } else {
      for (let i = 0; i < headDim; i++) out[outOff + i] += p * values[vo + i];
    }
  }
}
