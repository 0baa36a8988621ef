// The tolerance of a kernel's dot products against the js reference: only the float
// summation may differ (f32 lanes against f64), so the bound is that of summing in f32.
// Shared by the native kernel tests and the arm checks (scripts/arm-check.ts).

import { f16ToF32 } from '../../src/ggml/half.ts';
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
 * (see test/kernels-native.test.ts's header).
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
