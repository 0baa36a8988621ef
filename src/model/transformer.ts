// The llama-family transformer over a range of layers, written to be read top to bottom
// like llama2.c's run.c. A slice holding layers [start, end) runs them over hidden states the
// caller owns (embedded from tokens on the first slice, received from the slice before on the
// others) and leaves them there for the next; the last slice turns a row into logits. Nothing
// carries over from one call to the next but what the caller passes in (the hidden states and
// the KV caches): the buffers below are workspace, allocated once, up front.
// engine/slice.ts is the one caller that takes a step through here, whoever runs it.

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
 * One sequence's rows of a step: `n` consecutive rows of the hidden states, at positions
 * start, start+1, …, attending over (and written into) `cache`.
 */
export interface Segment {
  readonly start: number;
  readonly n: number;
  readonly cache: KvCache;
}

/**
 * The workspace of one forward step, for up to `batch` rows at once: row i of xb, q, … belongs
 * to row i of the step's hidden states. Decode is a row per sequence; prefill runs a prompt in
 * steps of up to `batch` rows, so each weight is read once per step. Every call fills what it
 * reads here before reading it.
 */
class RunState {
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

  constructor(
    c: ModelConfig,
    readonly batch: number,
  ) {
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
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
  /** forward()'s cache, for a caller that runs one sequence token by token (tests, benchmarks). */
  readonly cache: KvCache;
  /** forward()'s hidden state: one row. */
  private readonly one: Float32Array;

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
    this.one = new Float32Array(config.dim);
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
    if (!Number.isInteger(ctx) || ctx < 1)
      throw new ModelError(file.path, `context size must be a positive integer, got ${ctx}`);
    const batch = opts.batch ?? 32;
    if (!Number.isInteger(batch) || batch < 1)
      throw new ModelError(file.path, `batch size must be a positive integer, got ${batch}`);
    const [start, end] = opts.layers ?? [0, config.nLayers];
    return { config, ctx, batch, start, end, kvType: opts.kvType ?? 'f32', backend: opts.backend ?? new JsBackend() };
  }

  /** Most rows one step takes. */
  get batch(): number {
    return this.state.batch;
  }

  /** out (n × rows) = xs (n × cols) · wᵀ: one pass over the weight for the whole step. */
  private matmul(w: Weight, xs: Float32Array, n: number, out: Float32Array): void {
    if (n === 1) this.backend.matvec(w, xs, out);
    else if (this.backend.matmul) this.backend.matmul(w, xs, n, out);
    else for (let i = 0; i < n; i++) this.backend.matvec(w, row(xs, i, w.cols), row(out, i, w.rows));
  }

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

  /** The whole model for one token at one position of `cache`: the logits of the next token. */
  forward(token: number, pos: number, cache: KvCache = this.cache): Float32Array {
    this.embed([token], this.one);
    this.forwardLayers(this.one, [{ start: pos, n: 1, cache }]);
    return this.head(this.one);
  }

  /** First slice: the tokens' embedding rows, written into x (tokens.length × dim). */
  embed(tokens: readonly number[], x: Float32Array): void {
    const w = this.weights;
    if (!w.tokenEmbd) throw new Error(`stage [${w.start}, ${w.end}) holds no token embedding`);
    this.checkRows(tokens.length);
    for (let i = 0; i < tokens.length; i++) getRow(w.tokenEmbd, tokens[i], row(x, i, this.config.dim));
  }

  private checkRows(n: number): void {
    if (!(Number.isInteger(n) && n >= 1 && n <= this.batch))
      throw new RangeError(`a step takes 1..${this.batch} tokens, got ${n}`);
  }

  /**
   * Runs this slice's layers, in place, over the hidden states x: the segments' rows one after
   * the other (n × dim in all). Each layer is one matrix product per weight over every row;
   * attention runs per segment over its own KV cache.
   */
  forwardLayers(x: Float32Array, segments: readonly Segment[]): void {
    const c = this.config;
    const s = this.state;
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    const half = c.ropeDims / 2;
    const n = segments.reduce((sum, seg) => sum + seg.n, 0);
    this.checkRows(n);
    if (x.length < n * c.dim) throw new RangeError(`hidden states of ${x.length} values, ${n} × ${c.dim} needed`);
    let r = 0;
    for (const seg of segments) {
      if (!(Number.isInteger(seg.start) && seg.start >= 0 && seg.start + seg.n <= this.ctx)) {
        const what = seg.n === 1 ? `position ${seg.start} is` : `positions ${seg.start}..${seg.start + seg.n - 1} are`;
        throw new RangeError(`${what} outside the context of ${this.ctx}`);
      }
      // each row's RoPE angles, from its own position
      for (let i = 0; i < seg.n; i++) {
        ropeAngles(
          seg.start + i,
          c.ropeDims,
          c.ropeBase,
          c.ropeFreqScale,
          row(s.ropeCos, r + i, half),
          row(s.ropeSin, r + i, half),
          this.weights.ropeFreqs,
        );
      }
      r += seg.n;
    }

    for (let l = 0; l < this.weights.layers.length; l++) {
      const lw = this.weights.layers[l];

      // attention rmsnorm
      for (let i = 0; i < n; i++) rmsnorm(row(s.xb, i, c.dim), row(x, i, c.dim), lw.attnNorm, c.dim, c.rmsEps);

      // q, k, v projections (+ bias for qwen2)
      this.matmul(lw.wq, s.xb, n, s.q);
      this.matmul(lw.wk, s.xb, n, s.k);
      this.matmul(lw.wv, s.xb, n, s.v);
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
      }

      // per segment: write k, v of its positions into its cache, then attend over that cache,
      // each row seeing positions up to its own (grouped-query: each group of nHeads/nKvHeads
      // query heads shares one KV head)
      r = 0;
      for (const seg of segments) {
        for (let i = 0; i < seg.n; i++)
          seg.cache.write(l, seg.start + i, row(s.k, r + i, kvDim), row(s.v, r + i, kvDim));
        this.backend.attend({
          keys: seg.cache.keys[l],
          values: seg.cache.values[l],
          nHeads: c.nHeads,
          nKvHeads: c.nKvHeads,
          headDim: c.headDim,
          start: seg.start,
          n: seg.n,
          q: s.q.subarray(r * qDim, (r + seg.n) * qDim),
          out: s.attOut.subarray(r * qDim, (r + seg.n) * qDim),
        });
        r += seg.n;
      }

      // output projection and residual
      this.matmul(lw.wo, s.attOut, n, s.xb2);
      addInPlace(x, s.xb2, n * c.dim);

      // ffn rmsnorm
      for (let i = 0; i < n; i++) rmsnorm(row(s.xb, i, c.dim), row(x, i, c.dim), lw.ffnNorm, c.dim, c.rmsEps);

      // SwiGLU: down(silu(gate(x)) * up(x))
      this.matmul(lw.wGate, s.xb, n, s.hb);
      this.matmul(lw.wUp, s.xb, n, s.hb2);
      this.backend.swiglu(s.hb, s.hb, s.hb2, n * c.ffnDim);
      this.matmul(lw.wDown, s.hb, n, s.xb2);

      // residual
      addInPlace(x, s.xb2, n * c.dim);
    }
  }

  /** Last slice: final rmsnorm and the classifier turn one row of hidden state into logits (workspace: read before the next call). */
  head(x: Float32Array): Float32Array {
    const w = this.weights;
    const s = this.state;
    const dim = this.config.dim;
    if (!w.output || !w.outputNorm) throw new Error(`stage [${w.start}, ${w.end}) holds no output head`);
    const xb = row(s.xb, 0, dim);
    rmsnorm(xb, x.subarray(0, dim), w.outputNorm, dim, this.config.rmsEps);
    this.backend.matvec(w.output, xb, s.logits);
    return s.logits;
  }
}
