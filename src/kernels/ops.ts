// The element-wise and per-head steps of a transformer layer, in plain TypeScript.

/** out = x / sqrt(mean(x²) + eps) ⊙ weight (RMSNorm). */
export function rmsnorm(
  out: Float32Array,
  x: Float32Array,
  weight: Float32Array,
  n: number,
  eps: number,
  off = 0,
): void {
  let ss = 0;
  for (let i = 0; i < n; i++) ss += x[off + i] * x[off + i];
  const scale = Math.fround(1 / Math.sqrt(Math.fround(ss / n) + eps));
  for (let i = 0; i < n; i++) out[off + i] = x[off + i] * scale * weight[i];
}

/** In place softmax of x[0..n). */
export function softmax(x: Float32Array, n: number): void {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (x[i] > max) max = x[i];
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp(x[i] - max);
    x[i] = e;
    sum += e;
  }
  for (let i = 0; i < n; i++) x[i] /= sum;
}

/** out = silu(gate) ⊙ up, the SwiGLU activation. */
export function swiglu(out: Float32Array, gate: Float32Array, up: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) {
    const g = gate[i];
    out[i] = (g / (1 + Math.exp(-g))) * up[i];
  }
}

/** x += y. */
export function addInPlace(x: Float32Array, y: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) x[i] += y[i];
}

/**
 * Rotary position embedding tables for one position: cos/sin of pos·θ_i for the i-th pair.
 * θ_i = freqScale · base^(-2i/dims), multiplied up in f32 as ggml does so the angles match.
 */
export function ropeAngles(
  pos: number,
  dims: number,
  base: number,
  freqScale: number,
  cos: Float32Array,
  sin: Float32Array,
  freqFactors?: Float32Array,
): void {
  const thetaScale = Math.fround(Math.pow(base, -2 / dims));
  let theta = Math.fround(pos);
  for (let i = 0; i < dims / 2; i++) {
    const t = Math.fround((freqScale * theta) / (freqFactors ? freqFactors[i] : 1));
    cos[i] = Math.cos(t);
    sin[i] = Math.sin(t);
    theta = Math.fround(theta * thetaScale);
  }
}

/**
 * Rotates each head of x in place. `neox` pairs element i with i + dims/2 (GPT-NeoX, Qwen);
 * otherwise adjacent elements 2i and 2i+1 are a pair (the original llama layout in GGUF).
 * Only the first `dims` elements of each head rotate.
 */
export function rope(
  x: Float32Array,
  nHeads: number,
  headDim: number,
  dims: number,
  neox: boolean,
  cos: Float32Array,
  sin: Float32Array,
): void {
  const half = dims / 2;
  for (let h = 0; h < nHeads; h++) {
    const o = h * headDim;
    for (let i = 0; i < half; i++) {
      const a = neox ? o + i : o + 2 * i;
      const b = neox ? o + i + half : a + 1;
      const x0 = x[a];
      const x1 = x[b];
      x[a] = x0 * cos[i] - x1 * sin[i];
      x[b] = x0 * sin[i] + x1 * cos[i];
    }
  }
}
