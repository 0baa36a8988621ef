// The tolerance of a kernel's dot products against the js reference: only the float
// summation may differ (f32 lanes against f64), so the bound is that of summing in f32.
// Shared by the backend tests (test/kernels-backends.test.ts) and the arm checks
// (scripts/arm-check.ts). Also the bound of an attention step over an f16 cache.

import { f16ToF32, f32ToF16 } from '../../src/ggml/half.ts';
import { Activation } from '../../src/kernels/activation.ts';
import type { Weight } from '../../src/kernels/matvec.ts';

/** The min mᵢ subtracted from value i (value = scaled quant − mᵢ), 0 for types without mins. */
function minOf(w: Weight, off: number, i: number): number {
  const d = w.data;
  switch (w.kernel.info.name) {
    case 'Q4_1':
    case 'Q5_1': {
      const o = off + (i >> 5) * w.kernel.info.typeSize;
      return -f16ToF32(d[o + 2] | (d[o + 3] << 8));
    }
    case 'Q2_K': {
      const o = off + (i >> 8) * 84;
      return f16ToF32(d[o + 82] | (d[o + 83] << 8)) * (d[o + ((i & 255) >> 4)] >> 4);
    }
    case 'Q4_K':
    case 'Q5_K': {
      const o = off + (i >> 8) * w.kernel.info.typeSize;
      const j = (i & 255) >> 5;
      const s = o + 4;
      const m = j < 4 ? d[s + j + 4] & 63 : (d[s + j + 4] >> 4) | ((d[s + j] >> 6) << 4);
      return f16ToF32(d[o + 2] | (d[o + 3] << 8)) * m;
    }
    default:
      return 0;
  }
}

/**
 * Allowed |kernel − js| per output row: the textbook bound for summing cols terms in f32,
 * (cols + 4)·2⁻²⁴·M, M = Σ(|wᵢ + mᵢ| + |mᵢ|)·|aᵢ| with aᵢ the activation as the kernel sees it
 * (see test/kernels-backends.test.ts's header).
 */
export function summationBounds(w: Weight, x: Float32Array): Float64Array {
  const act = new Activation(w.cols).fill(w.kernel.activation, x, w.cols);
  const a = new Float64Array(w.cols);
  for (let i = 0; i < w.cols; i++) {
    if (act.kind === 'q8_0' || act.kind === 'q8_1') a[i] = act.d[i >> 5] * act.qs[i];
    else if (act.kind === 'q8_k') a[i] = act.d[i >> 8] * act.qs[i];
    else a[i] = act.f[i];
  }
  const row = new Float32Array(w.cols);
  const out = new Float64Array(w.rows);
  for (let r = 0; r < w.rows; r++) {
    const off = r * w.rowBytes;
    w.kernel.dequantizeRow(w.data, off, w.cols, row, 0);
    let m = 0;
    for (let i = 0; i < w.cols; i++) {
      const mi = minOf(w, off, i);
      m += (Math.abs(row[i] + mi) + Math.abs(mi)) * Math.abs(a[i]);
    }
    out[r] = (w.cols + 4) * 2 ** -24 * m * 1.001 + 1e-30;
  }
  return out;
}

/** An attention step over an f16 cache, with q as the step left it (rounded to f16). */
export interface F16Step {
  keys: Uint16Array;
  values: Uint16Array;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  start: number;
  n: number;
  q: Float32Array;
}

/**
 * Allowed |kernel − js| per output of an attention step over an f16 cache. Both round the
 * probabilities to f16, but from values that differ by f32 rounding (about 1e-5 relative at
 * most here), so a probability that lies that close to an f16 rounding boundary may round to
 * the neighbouring half: it then moves the output by one f16 ulp of p times |v|. Elsewhere
 * the two must round alike, so the bound is 1e-5 plus those ulps alone. The probabilities are
 * recomputed here in f64 from the f16-rounded q.
 */
export function f16AttentionBounds(s: F16Step): Float64Array {
  const { nHeads, nKvHeads, headDim, start, n } = s;
  const group = nHeads / nKvHeads;
  const kvDim = nKvHeads * headDim;
  const bound = new Float64Array(n * nHeads * headDim).fill(1e-5);
  const near = (p: number) => f32ToF16(p * (1 - 1e-4)) !== f32ToF16(p * (1 + 1e-4));
  const ulp = (p: number) => (p < 2 ** -14 ? 2 ** -24 : 2 ** (Math.floor(Math.log2(p)) - 10));
  for (let i = 0; i < n; i++) {
    const len = start + i + 1;
    for (let h = 0; h < nHeads; h++) {
      const qo = (i * nHeads + h) * headDim;
      const ko = Math.floor(h / group) * headDim;
      const sc = new Float64Array(len);
      for (let t = 0; t < len; t++) {
        for (let d = 0; d < headDim; d++) sc[t] += s.q[qo + d] * f16ToF32(s.keys[t * kvDim + ko + d]);
        sc[t] /= Math.sqrt(headDim);
      }
      const max = Math.max(...sc);
      let sum = 0;
      for (let t = 0; t < len; t++) sum += sc[t] = Math.exp(sc[t] - max);
      for (let t = 0; t < len; t++) {
        const p = sc[t] / sum;
        if (!near(p)) continue;
        for (let d = 0; d < headDim; d++) bound[qo + d] += ulp(p) * Math.abs(f16ToF32(s.values[t * kvDim + ko + d]));
      }
    }
  }
  return bound;
}
