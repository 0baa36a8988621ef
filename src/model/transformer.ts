// The llama-family transformer over a range of layers, written to be read top to bottom
// like llama2.c's run.c. A slice holding layers [start, end) runs them over hidden states the
// caller owns (embedded from tokens on the first slice, received from the slice before on the
// others) and leaves them there for the next; the last slice turns a row into logits. Nothing
// carries over from one call to the next but what the caller passes in (the hidden states and
// the KV caches): the buffers below are workspace, allocated once, up front.
// engine/slice.ts is the one caller that takes a step through here, whoever runs it.
//
// The layer walk exists once, in LayerRange.walk, for the whole model and for a
// tensor-parallel member's share of it (engine/tensor-split.ts): it runs on the heads and FFN
// rows the range computes and yields each block's output where a group must add its members'
// partial outputs up. A Transformer is a group of one: its outputs are already the sums, so it
// just steps through.

import type { GgufFile } from '../gguf/reader.ts';
import { getRow, type Weight } from '../kernels/matvec.ts';
import { JsBackend, type KernelBackend } from '../kernels/backend.ts';
import { rmsnorm, rope, ropeAngles, addInPlace } from '../kernels/ops.ts';
import { readConfig, ModelError, type ModelConfig } from './config.ts';
import { loadStageWeights, loadStageWeightsAsync, type LoadProgress, type StageWeights } from './weights.ts';
import { KvCache, type KvType } from './kv-cache.ts';

/** What a range of layers is loaded with, whole or as a member's share. */
export interface RangeOptions {
  /** Positions the KV cache holds; defaults to the trained context length. */
  readonly ctx?: number;
  readonly kvType?: KvType;
  /** Layer range [start, end); defaults to every layer. */
  readonly layers?: readonly [number, number];
  /** Most tokens one forward step takes (prefill step size); default 32. */
  readonly batch?: number;
  /** Kernel backend for the matrix products; defaults to the js reference. */
  readonly backend?: KernelBackend;
}

export interface LoadOptions extends RangeOptions {
  /** Hears the bytes read after each tensor (and once at 0 before the first). */
  readonly onProgress?: (p: LoadProgress) => void;
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

/** How much of each layer a range computes: every head and FFN row, or a member's share. */
export interface Heads {
  /** Query heads and KV heads. */
  readonly nHeads: number;
  readonly nKvHeads: number;
  /** Rows of ffn_gate and ffn_up (columns of ffn_down). */
  readonly ffnRows: number;
}

/** The tensors a range reads: a stage's (model/weights.ts) or a member's share of them (model/share-weights.ts). */
export type RangeWeights = Pick<
  StageWeights,
  'start' | 'end' | 'tokenEmbd' | 'layers' | 'outputNorm' | 'output' | 'ropeFreqs'
>;

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
  /** Logits of as many rows as the last head call took (grown on demand: a step samples few rows). */
  logits: Float32Array;
  readonly ropeCos: Float32Array;
  readonly ropeSin: Float32Array;

  constructor(
    c: ModelConfig,
    h: Heads,
    readonly batch: number,
  ) {
    const qDim = h.nHeads * c.headDim;
    const kvDim = h.nKvHeads * c.headDim;
    this.xb = new Float32Array(batch * c.dim);
    this.xb2 = new Float32Array(batch * c.dim);
    this.q = new Float32Array(batch * qDim);
    this.k = new Float32Array(batch * kvDim);
    this.v = new Float32Array(batch * kvDim);
    this.attOut = new Float32Array(batch * qDim);
    this.hb = new Float32Array(batch * h.ffnRows);
    this.hb2 = new Float32Array(batch * h.ffnRows);
    this.logits = new Float32Array(c.vocabSize);
    this.ropeCos = new Float32Array((batch * c.ropeDims) / 2);
    this.ropeSin = new Float32Array((batch * c.ropeDims) / 2);
  }
}

/** Row i (of width n) of a batch buffer. */
function row(buf: Float32Array, i: number, n: number): Float32Array {
  return buf.subarray(i * n, (i + 1) * n);
}

/** The options of a load, checked and defaulted before any tensor is read. */
export function checkLoad(file: GgufFile, opts: RangeOptions) {
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

/** Layers [start, end) of the model, or a tensor-parallel member's share of them: embed, walk the layers, head. */
export abstract class LayerRange<W extends RangeWeights = RangeWeights> {
  readonly state: RunState;
  /** forward()'s cache, for a caller that runs one sequence token by token (tests, benchmarks). */
  readonly cache: KvCache;
  /** forward()'s hidden state: one row. */
  protected readonly one: Float32Array;

  protected constructor(
    readonly config: ModelConfig,
    readonly weights: W,
    /** What of each layer this range computes. */
    readonly heads: Heads,
    readonly ctx: number,
    readonly kvType: KvType,
    readonly backend: KernelBackend,
    batch: number,
  ) {
    this.state = new RunState(config, heads, batch);
    this.cache = this.newCache();
    this.one = new Float32Array(config.dim);
  }

  /** Names the range in errors. */
  protected get label(): string {
    return `stage [${this.weights.start}, ${this.weights.end})`;
  }

  /** Most rows one step takes. */
  get batch(): number {
    return this.state.batch;
  }

  get isFirst(): boolean {
    return this.weights.tokenEmbd !== undefined;
  }

  get isLast(): boolean {
    return this.weights.output !== undefined;
  }

  /** A KV cache for one sequence: the range's KV heads of each of its layers. */
  newCache(): KvCache {
    return new KvCache(this.kvType, this.weights.layers.length, this.ctx, this.heads.nKvHeads * this.config.headDim);
  }

  /** First slice: the tokens' embedding rows, written into x (tokens.length × dim). */
  embed(tokens: readonly number[], x: Float32Array): void {
    const w = this.weights;
    if (!w.tokenEmbd) throw new Error(`${this.label} holds no token embedding`);
    this.checkRows(tokens.length);
    for (let i = 0; i < tokens.length; i++) getRow(w.tokenEmbd, tokens[i], row(x, i, this.config.dim));
  }

  private checkRows(n: number): void {
    if (!(Number.isInteger(n) && n >= 1 && n <= this.batch))
      throw new RangeError(`a step takes 1..${this.batch} tokens, got ${n}`);
  }

  /** out (n × rows) = xs (n × cols) · wᵀ: one pass over the weight for the whole step. */
  private matmul(w: Weight, xs: Float32Array, n: number, out: Float32Array): void {
    if (n === 1) this.backend.matvec(w, xs, out);
    else if (this.backend.matmul) this.backend.matmul(w, xs, n, out);
    else for (let i = 0; i < n; i++) this.backend.matvec(w, row(xs, i, w.cols), row(out, i, w.rows));
  }

  /**
   * Runs the range's layers, in place, over the hidden states x: the segments' rows one after
   * the other (n × dim in all). Each layer is one matrix product per weight over every row;
   * attention runs per segment over its own KV cache. Twice a layer it yields a block's output
   * (n × dim, workspace) before adding it to x: the driver replaces it with the sum of the
   * group's partial outputs (a member computes only its heads and FFN rows), or, for a group
   * of one, leaves it as it is.
   */
  protected *walk(x: Float32Array, segments: readonly Segment[]): Generator<Float32Array, void, void> {
    const c = this.config;
    const h = this.heads;
    const s = this.state;
    const qDim = h.nHeads * c.headDim;
    const kvDim = h.nKvHeads * c.headDim;
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
      if (seg.cache.kvDim !== kvDim)
        throw new RangeError(`a KV cache of ${seg.cache.kvDim} values per position, ${this.label} computes ${kvDim}`);
      // each row's RoPE angles, from its own position
      for (let i = 0; i < seg.n; i++) {
        const cos = row(s.ropeCos, r + i, half);
        const sin = row(s.ropeSin, r + i, half);
        ropeAngles(seg.start + i, c.ropeDims, c.ropeBase, c.ropeFreqScale, cos, sin, this.weights.ropeFreqs);
      }
      r += seg.n;
    }
    const out = s.xb2.subarray(0, n * c.dim);

    for (let l = 0; l < this.weights.layers.length; l++) {
      const lw = this.weights.layers[l];

      // attention rmsnorm
      for (let i = 0; i < n; i++) rmsnorm(row(s.xb, i, c.dim), row(x, i, c.dim), lw.attnNorm, c.dim, c.rmsEps);

      // q, k, v projections of the range's heads (+ bias for qwen2)
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

        // per-head q/k norm (qwen3): per head, like RoPE, so a share of the heads needs only itself
        if (lw.qNorm && lw.kNorm) {
          for (let j = 0; j < h.nHeads; j++) rmsnorm(q, q, lw.qNorm, c.headDim, c.rmsEps, j * c.headDim);
          for (let j = 0; j < h.nKvHeads; j++) rmsnorm(k, k, lw.kNorm, c.headDim, c.rmsEps, j * c.headDim);
        }

        // RoPE on q and k
        const cos = row(s.ropeCos, i, half);
        const sin = row(s.ropeSin, i, half);
        rope(q, h.nHeads, c.headDim, c.ropeDims, c.ropeNeox, cos, sin);
        rope(k, h.nKvHeads, c.headDim, c.ropeDims, c.ropeNeox, cos, sin);
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
          nHeads: h.nHeads,
          nKvHeads: h.nKvHeads,
          headDim: c.headDim,
          start: seg.start,
          n: seg.n,
          q: s.q.subarray(r * qDim, (r + seg.n) * qDim),
          out: s.attOut.subarray(r * qDim, (r + seg.n) * qDim),
        });
        r += seg.n;
      }

      // output projection (over the range's heads' columns: a partial sum, summed by the group) and residual
      this.matmul(lw.wo, s.attOut, n, s.xb2);
      yield out;
      addInPlace(x, out, n * c.dim);

      // ffn rmsnorm
      for (let i = 0; i < n; i++) rmsnorm(row(s.xb, i, c.dim), row(x, i, c.dim), lw.ffnNorm, c.dim, c.rmsEps);

      // SwiGLU over the range's FFN rows: down(silu(gate(x)) * up(x)), a partial sum, summed by the group
      this.matmul(lw.wGate, s.xb, n, s.hb);
      this.matmul(lw.wUp, s.xb, n, s.hb2);
      this.backend.swiglu(s.hb, s.hb, s.hb2, n * h.ffnRows);
      this.matmul(lw.wDown, s.hb, n, s.xb2);
      yield out;

      // residual
      addInPlace(x, out, n * c.dim);
    }
  }

  /**
   * Last slice: final rmsnorm and the classifier turn n rows of hidden state (n ≤ batch) into
   * n rows of logits, one matrix product over them all (workspace: read before the next call).
   * A member with a share of the head's rows gets n rows of its rows' logits.
   */
  head(x: Float32Array, n = 1): Float32Array {
    const w = this.weights;
    const s = this.state;
    const { dim } = this.config;
    if (!w.output || !w.outputNorm) throw new Error(`${this.label} holds no output head`);
    if (!(Number.isInteger(n) && n >= 1 && n <= this.batch))
      throw new RangeError(`${this.label}: a head of ${n} rows (1..${this.batch})`);
    for (let i = 0; i < n; i++) rmsnorm(row(s.xb, i, dim), row(x, i, dim), w.outputNorm, dim, this.config.rmsEps);
    const width = w.output.rows;
    if (s.logits.length < n * width) s.logits = new Float32Array(n * width);
    const logits = s.logits.subarray(0, n * width);
    this.matmul(w.output, s.xb, n, logits);
    return logits;
  }
}

/** A pipeline stage's layers, whole: every head and FFN row on this node. */
export class Transformer extends LayerRange<StageWeights> {
  private constructor(
    config: ModelConfig,
    weights: StageWeights,
    ctx: number,
    kvType: KvType,
    backend: KernelBackend,
    batch: number,
  ) {
    const heads = { nHeads: config.nHeads, nKvHeads: config.nKvHeads, ffnRows: config.ffnDim };
    super(config, weights, heads, ctx, kvType, backend, batch);
  }

  static load(file: GgufFile, opts: LoadOptions = {}): Transformer {
    const l = checkLoad(file, opts);
    const weights = loadStageWeights(file, l.config, l.start, l.end, l.backend, opts.onProgress);
    return new Transformer(l.config, weights, l.ctx, l.kvType, l.backend, l.batch);
  }

  /** As load(), giving the event loop a turn after each layer (a node streams its progress meanwhile). */
  static async loadAsync(file: GgufFile, opts: LoadOptions = {}): Promise<Transformer> {
    const l = checkLoad(file, opts);
    const weights = await loadStageWeightsAsync(file, l.config, l.start, l.end, l.backend, opts.onProgress);
    return new Transformer(l.config, weights, l.ctx, l.kvType, l.backend, l.batch);
  }

  /** The whole model for one token at one position of `cache`: the logits of the next token. */
  forward(token: number, pos: number, cache: KvCache = this.cache): Float32Array {
    this.embed([token], this.one);
    this.forwardLayers(this.one, [{ start: pos, n: 1, cache }]);
    return this.head(this.one);
  }

  /**
   * Runs this slice's layers in place over the hidden states x (LayerRange.walk says how).
   * `turn`, if given, is asked after each block and may return a promise to await before the
   * next (a node gives its event loop a turn there); without it the walk never yields.
   */
  forwardLayers(x: Float32Array, segments: readonly Segment[]): void;
  forwardLayers(
    x: Float32Array,
    segments: readonly Segment[],
    turn: (() => Promise<void> | undefined) | undefined,
  ): void | Promise<void>;
  forwardLayers(
    x: Float32Array,
    segments: readonly Segment[],
    turn?: () => Promise<void> | undefined,
  ): void | Promise<void> {
    // A group of one: each block's output is already the whole sum, so there is nothing to add.
    const walk = this.walk(x, segments);
    if (!turn) {
      while (!walk.next().done);
      return;
    }
    return (async () => {
      while (!walk.next().done) await turn();
    })();
  }
}
