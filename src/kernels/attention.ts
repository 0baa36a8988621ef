// Attention over a layer's cached keys and values: the js reference of KernelBackend.attend.
// attendGroup does the query heads that share one KV head (grouped-query attention). The cache holds f32 or f16 (as Uint16Array bits); rows are
// positions, kvOff selects the KV head in a row. Each cached key and value row is read (and,
// for f16, converted) once for the whole group, not once per query head.

import { f16Float32Table, f16ToF32, f32ToF16 } from '../ggml/half.ts';

// Reading an f16 cache is one load per element through ggml's kind of lookup table, built
// when the js attention first runs (native and wasm kernels never need it).
let F16: Float32Array | undefined;

/**
 * For each of the `group` query heads starting at q[qOff] (headDim apart): scores =
 * q·k/√d over positions 0..pos, softmax, Σ p·v into out[outOff..] (same layout as q).
 * `att` holds group × (pos+1) scores; `row` one converted key or value row (headDim).
 * With an f16 cache, q and the probabilities are rounded to f16 before their products,
 * as llama.cpp's f16 matrix products do, so the two agree closely.
 */
export function attendGroup(
  keys: Float32Array | Uint16Array,
  values: Float32Array | Uint16Array,
  kvDim: number,
  pos: number,
  q: Float32Array,
  qOff: number,
  group: number,
  kvOff: number,
  headDim: number,
  att: Float32Array,
  row: Float32Array,
  out: Float32Array,
  outOff: number,
): void {
  const scale = 1 / Math.sqrt(headDim);
  const half = keys instanceof Uint16Array;
  const table = (F16 ??= f16Float32Table());
  const n = pos + 1;
  if (half) for (let i = 0; i < group * headDim; i++) q[qOff + i] = f16ToF32(f32ToF16(q[qOff + i]));

  // scores of every head of the group against each cached key
  for (let t = 0; t < n; t++) {
    const ko = t * kvDim + kvOff;
    if (half) for (let i = 0; i < headDim; i++) row[i] = table[keys[ko + i]];
    else for (let i = 0; i < headDim; i++) row[i] = keys[ko + i];
    for (let h = 0; h < group; h++) {
      const qo = qOff + h * headDim;
      let s = 0;
      for (let i = 0; i < headDim; i++) s += q[qo + i] * row[i];
      att[h * n + t] = s * scale;
    }
  }

  // softmax per head
  for (let h = 0; h < group; h++) {
    const a = h * n;
    let max = -Infinity;
    for (let t = 0; t < n; t++) if (att[a + t] > max) max = att[a + t];
    let sum = 0;
    for (let t = 0; t < n; t++) sum += att[a + t] = Math.exp(att[a + t] - max);
    for (let t = 0; t < n; t++) att[a + t] = half ? f16ToF32(f32ToF16(att[a + t] / sum)) : att[a + t] / sum;
  }

  // weighted sum of the cached values
  out.fill(0, outOff, outOff + group * headDim);
  for (let t = 0; t < n; t++) {
    const vo = t * kvDim + kvOff;
    if (half) for (let i = 0; i < headDim; i++) row[i] = table[values[vo + i]];
    else for (let i = 0; i < headDim; i++) row[i] = values[vo + i];
    for (let h = 0; h < group; h++) {
      const p = att[h * n + t];
      const o = outOff + h * headDim;
      for (let i = 0; i < headDim; i++) out[o + i] += p * row[i];
    }
  }
}

/** One attention step: n consecutive tokens of one sequence against one layer's cache. */
export interface AttentionStep {
  /** The layer's cached keys and values, ctx × kvDim each: f32, or f16 bits as Uint16Array. */
  readonly keys: Float32Array | Uint16Array;
  readonly values: Float32Array | Uint16Array;
  readonly nHeads: number;
  readonly nKvHeads: number;
  readonly headDim: number;
  /** Position of the step's first token; token i sees positions 0..start+i (causal). */
  readonly start: number;
  /** Tokens in the step. */
  readonly n: number;
  /** n × nHeads·headDim queries, RoPE applied. With an f16 cache they are rounded to f16 in place. */
  readonly q: Float32Array;
  /** n × nHeads·headDim: each head's attention-weighted sum of the cached values. */
  readonly out: Float32Array;
}

/** Scratch for attend(): one group's scores over the context and one converted cache row. */
export class AttentionScratch {
  att = new Float32Array(0);
  row = new Float32Array(0);
}

/** The step's attention, token by token and KV head by KV head, in plain TypeScript. */
export function attend(s: AttentionStep, scratch: AttentionScratch): void {
  const group = s.nHeads / s.nKvHeads;
  const kvDim = s.nKvHeads * s.headDim;
  const qDim = s.nHeads * s.headDim;
  if (scratch.att.length < group * (s.start + s.n)) scratch.att = new Float32Array(group * (s.start + s.n));
  if (scratch.row.length < s.headDim) scratch.row = new Float32Array(s.headDim);
  for (let i = 0; i < s.n; i++) {
    const q = s.q.subarray(i * qDim, (i + 1) * qDim);
    const out = s.out.subarray(i * qDim, (i + 1) * qDim);
    for (let g = 0; g < s.nKvHeads; g++) {
      const qOff = g * group * s.headDim;
      attendGroup(
        s.keys,
        s.values,
        kvDim,
        s.start + i,
        q,
        qOff,
        group,
        g * s.headDim,
        s.headDim,
        scratch.att,
        scratch.row,
        out,
        qOff,
      );
    }
  }
}
