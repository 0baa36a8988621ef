// The llama-family transformer over a range of layers, written to be read top to bottom
// like llama2.c's run.c. A stage holding layers [start, end) takes the hidden state in
// `state.x` (or embeds a token, on the first stage) and leaves it there for the next
// stage; the last stage turns it into logits. Every buffer is allocated once, up front.

import type { GgufFile } from '../gguf/reader.ts';
import { getRow, type Weight } from '../kernels/matvec.ts';
import { JsBackend, type KernelBackend } from '../kernels/backend.ts';
import { rmsnorm, rope, ropeAngles, addInPlace } from '../kernels/ops.ts';
import { readConfig, ModelError, type ModelConfig } from './config.ts';
import { loadStageWeights, loadStageWeightsAsync, type LoadProgress, type StageWeights } from './weights.ts';
import { KvCache, type KvType } from './kv-cache.ts';

export interface LoadOptions {
  /** Positions the KV cache holds; defaults to the trained context length. */
  ctx?: number;
  kvType?: KvType;
  /** Layer range [start, end); defaults to every layer. */
  layers?: readonly [number, number];
  /** Most tokens one forward step takes (prefill step size); default 32. */
  batch?: number;
  /** Kernel backend for the matrix products; defaults to the js reference. */
  backend?: KernelBackend;
  /** Hears the bytes read after each tensor (and once at 0 before the first). */
  onProgress?: (p: LoadProgress) => void;
}

/**
 * Every activation buffer of one forward step, for up to `batch` tokens at once: row i of
 * x, xb, q, … belongs to the i-th token of the step. Decode is a step of one token; prefill
 * runs the prompt in steps of up to `batch` tokens, so each weight is read once per step.
 */
class RunState {
  readonly x: Float32Array; // the residual stream (hidden states)
  readonly xb: Float32Array; // normed input of a sub-block
  readonly xb2: Float32Array; // sub-block output before the residual add
  readonly q: Float32Array;
  readonly k: Float32Array;
  readonly v: Float32Array;
  readonly attOut: Float32Array; // concatenated head outputs
  readonly hb: Float32Array;
  readonly hb2: Float32Array;
  readonly logits: Float32Array;
  readonly ropeCos: Float32Array;
  readonly ropeSin: Float32Array;

  constructor(c: ModelConfig, readonly batch: number) {
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    this.x = new Float32Array(batch * c.dim);
    this.xb = new Float32Array(batch * c.dim);
    this.xb2 = new Float32Array(batch * c.dim);
    this.q = new Float32Array(batch * qDim);
    this.k = new Float32Array(batch * kvDim);
    this.v = new Float32Array(batch * kvDim);
    this.attOut = new Float32Array(batch * qDim);
    this.hb = new Float32Array(batch * c.ffnDim);
    this.hb2 = new Float32Array(batch * c.ffnDim);
    this.logits = new Float32Array(c.vocabSize);
    this.ropeCos = new Float32Array((batch * c.ropeDims) / 2);
    this.ropeSin = new Float32Array((batch * c.ropeDims) / 2);
  }
}

/** Row i (of width n) of a batch buffer. */
function row(buf: Float32Array, i: number, n: number): Float32Array {
  return buf.subarray(i * n, (i + 1) * n);
}

export class Transformer {
  readonly state: RunState;
  /** The default sequence's cache; other sequences bring their own from newCache(). */
  readonly cache: KvCache;

  private constructor(
    readonly config: ModelConfig,
    readonly weights: StageWeights,
    readonly ctx: number,
    readonly kvType: KvType,
    readonly backend: KernelBackend,
    batch: number,
  ) {
    this.state = new RunState(config, batch);
    this.cache = this.newCache();
  }

  static load(file: GgufFile, opts: LoadOptions = {}): Transformer {
    const l = Transformer.checkLoad(file, opts);
    const weights = loadStageWeights(file, l.config, l.start, l.end, l.backend, opts.onProgress);
    return new Transformer(l.config, weights, l.ctx, l.kvType, l.backend, l.batch);
  }

  /** As load(), giving the event loop a turn after each layer (a node streams its progress meanwhile). */
  static async loadAsync(file: GgufFile, opts: LoadOptions = {}): Promise<Transformer> {
    const l = Transformer.checkLoad(file, opts);
    const weights = await loadStageWeightsAsync(file, l.config, l.start, l.end, l.backend, opts.onProgress);
    return new Transformer(l.config, weights, l.ctx, l.kvType, l.backend, l.batch);
  }

  /** The options of a load, checked and defaulted before any tensor is read. */
  private static checkLoad(file: GgufFile, opts: LoadOptions) {
    const config = readConfig(file);
    const ctx = opts.ctx ?? config.ctxTrain;
    if (!Number.isInteger(ctx) || ctx < 1) throw new ModelError(file.path, `context size must be a positive integer, got ${ctx}`);
    const batch = opts.batch ?? 32;
    if (!Number.isInteger(batch) || batch < 1) throw new ModelError(file.path, `batch size must be a positive integer, got ${batch}`);
    const [start, end] = opts.layers ?? [0, config.nLayers];
    return { config, ctx, batch, start, end, kvType: opts.kvType ?? 'f32', backend: opts.backend ?? new JsBackend() };
  }

  /** Tokens in the current step (rows of state.x in use). */
  private n = 1;

  get batch(): number {
    return this.state.batch;
  }

  /** out (n × rows) = xs (n × cols) · wᵀ: one pass over the weight for the whole step. */
  private readonly matmul = (w: Weight, xs: Float32Array, out: Float32Array): void => {
    const n = this.n;
    if (n === 1) this.backend.matvec(w, xs, out);
    else if (this.backend.matmul) this.backend.matmul(w, xs, n, out);
    else for (let i = 0; i < n; i++) this.backend.matvec(w, row(xs, i, w.cols), row(out, i, w.rows));
  };

  get isFirst(): boolean {
    return this.weights.tokenEmbd !== undefined;
  }

  get isLast(): boolean {
    return this.weights.output !== undefined;
  }

  newCache(): KvCache {
    const c = this.config;
    return new KvCache(this.kvType, this.weights.layers.length, this.ctx, c.nKvHeads * c.headDim);
  }

  /** The whole model for one token at one position: the logits of the next token. */
  forward(token: number, pos: number, cache: KvCache = this.cache): Float32Array {
    this.embed([token]);
    this.forwardLayers(pos, cache);
    return this.head();
  }

  /** First stage: the tokens' embedding rows become the hidden states of the step. */
  embed(tokens: number | readonly number[]): Float32Array {
    if (typeof tokens === 'number') tokens = [tokens];
    const w = this.weights;
    if (!w.tokenEmbd) throw new Error(`stage [${w.start}, ${w.end}) holds no token embedding`);
    this.setStep(tokens.length);
    for (let i = 0; i < tokens.length; i++) getRow(w.tokenEmbd, tokens[i], row(this.state.x, i, this.config.dim));
    return this.hidden;
  }

  /** Sets how many tokens the next step carries (a later stage sets it before filling state.x). */
  setStep(n: number): void {
    if (!(Number.isInteger(n) && n >= 1 && n <= this.batch)) throw new RangeError(`a step takes 1..${this.batch} tokens, got ${n}`);
    this.n = n;
  }

  /** The step's hidden states: n × dim, what one stage hands the next. */
  get hidden(): Float32Array {
    return this.state.x.subarray(0, this.n * this.config.dim);
  }

  /** Runs this stage's layers on the step's hidden states at positions start.., in place. */
  forwardLayers(start: number, cache: KvCache = this.cache): Float32Array {
    const n = this.n;
    if (!(Number.isInteger(start) && start >= 0 && start + n <= this.ctx)) {
      const what = n === 1 ? `position ${start} is` : `positions ${start}..${start + n - 1} are`;
      throw new RangeError(`${what} outside the context of ${this.ctx}`);
    }
    const c = this.config;
    const s = this.state;
    const matmul = this.matmul;
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    const half = c.ropeDims / 2;
    for (let i = 0; i < n; i++) {
      ropeAngles(start + i, c.ropeDims, c.ropeBase, c.ropeFreqScale, row(s.ropeCos, i, half), row(s.ropeSin, i, half), this.weights.ropeFreqs);
    }

    for (let l = 0; l < this.weights.layers.length; l++) {
      const lw = this.weights.layers[l];

      // attention rmsnorm
      for (let i = 0; i < n; i++) rmsnorm(row(s.xb, i, c.dim), row(s.x, i, c.dim), lw.attnNorm, c.dim, c.rmsEps);

      // q, k, v projections (+ bias for qwen2)
      matmul(lw.wq, s.xb, s.q);
      matmul(lw.wk, s.xb, s.k);
      matmul(lw.wv, s.xb, s.v);
      for (let i = 0; i < n; i++) {
        if (lw.bq) addInPlace(row(s.q, i, qDim), lw.bq, qDim);
        if (lw.bk) addInPlace(row(s.k, i, kvDim), lw.bk, kvDim);
        if (lw.bv) addInPlace(row(s.v, i, kvDim), lw.bv, kvDim);
      }

      for (let i = 0; i < n; i++) {
        const q = row(s.q, i, qDim);
        const k = row(s.k, i, kvDim);

        // per-head q/k norm (qwen3)
        if (lw.qNorm && lw.kNorm) {
          for (let h = 0; h < c.nHeads; h++) rmsnorm(q, q, lw.qNorm, c.headDim, c.rmsEps, h * c.headDim);
          for (let h = 0; h < c.nKvHeads; h++) rmsnorm(k, k, lw.kNorm, c.headDim, c.rmsEps, h * c.headDim);
        }

        // RoPE on q and k
        const cos = row(s.ropeCos, i, half);
        const sin = row(s.ropeSin, i, half);
        rope(q, c.nHeads, c.headDim, c.ropeDims, c.ropeNeox, cos, sin);
        rope(k, c.nKvHeads, c.headDim, c.ropeDims, c.ropeNeox, cos, sin);

        // write k, v of this position into the cache
        cache.write(l, start + i, k, row(s.v, i, kvDim));
      }

      // attention over the cache, each token seeing positions up to its own
      // (grouped-query: each group of nHeads/nKvHeads query heads shares one KV head)
      this.backend.attend({
        keys: cache.keys[l], values: cache.values[l], nHeads: c.nHeads, nKvHeads: c.nKvHeads, headDim: c.headDim,
        start, n, q: s.q, out: s.attOut,
      });

      // output projection and residual
      matmul(lw.wo, s.attOut, s.xb2);
      addInPlace(s.x, s.xb2, n * c.dim);

      // ffn rmsnorm
      for (let i = 0; i < n; i++) rmsnorm(row(s.xb, i, c.dim), row(s.x, i, c.dim), lw.ffnNorm, c.dim, c.rmsEps);

      // SwiGLU: down(silu(gate(x)) * up(x))
      matmul(lw.wGate, s.xb, s.hb);
      matmul(lw.wUp, s.xb, s.hb2);
      this.backend.swiglu(s.hb, s.hb, s.hb2, n * c.ffnDim);
      matmul(lw.wDown, s.hb, s.xb2);

      // residual
      addInPlace(s.x, s.xb2, n * c.dim);
    }
    return this.hidden;
  }

  /** Last stage: final rmsnorm and the classifier give the logits after the step's last token. */
  head(): Float32Array {
    const w = this.weights;
    const s = this.state;
    const dim = this.config.dim;
    if (!w.output || !w.outputNorm) throw new Error(`stage [${w.start}, ${w.end}) holds no output head`);
    const xb = row(s.xb, 0, dim);
    rmsnorm(xb, row(s.x, this.n - 1, dim), w.outputNorm, dim, this.config.rmsEps);
    this.backend.matvec(w.output, xb, s.logits);
    return s.logits;
  }
}
