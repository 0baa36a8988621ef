// One member of a tensor-parallel group: the layers of a range, each split across the group
// (model/tensor-share.ts says who takes what). Every member holds the whole hidden state and
// runs the norms and residual adds itself (replicated); the matrices are cut so each member's
// products give a partial sum of the attention block's output and of the FFN block's output,
// and the group adds those partials up (all-reduce) — two syncs per layer. Read forwardLayers
// beside Transformer.forwardLayers: the same steps, on the member's heads and rows, with the
// two syncs where the residual adds take the block outputs.

import type { GgufFile } from '../gguf/reader.ts';
import { getRow, type Weight } from '../kernels/matvec.ts';
import { JsBackend, type KernelBackend } from '../kernels/backend.ts';
import { rmsnorm, rope, ropeAngles, addInPlace } from '../kernels/ops.ts';
import { readConfig, ModelError, type ModelConfig } from '../model/config.ts';
import { KvCache, type KvType } from '../model/kv-cache.ts';
import { loadShareWeights, type ShareWeights } from '../model/share-weights.ts';
import type { TensorShare } from '../model/tensor-share.ts';
import type { Segment } from '../model/transformer.ts';

/**
 * Replaces buf, this member's partial output of a block (rows × dim), with the sum of every
 * member's partial. It must give every member the same values bit for bit (sum the partials
 * in member order), or the replicated hidden states drift apart.
 */
export type AllReduce = (buf: Float32Array) => Promise<void>;

export interface MemberOptions {
  readonly share: TensorShare;
  /** Layer range [start, end); defaults to every layer. */
  readonly layers?: readonly [number, number];
  /** Positions the KV cache holds; defaults to the trained context length. */
  readonly ctx?: number;
  readonly kvType?: KvType;
  /** Most rows one step takes; default 32. */
  readonly batch?: number;
  readonly backend?: KernelBackend;
}

/** Workspace of one step for up to `batch` rows, sized for the member's share. */
class MemberState {
  readonly xb: Float32Array;
  readonly xb2: Float32Array;
  readonly q: Float32Array;
  readonly k: Float32Array;
  readonly v: Float32Array;
  readonly attOut: Float32Array;
  readonly hb: Float32Array;
  readonly hb2: Float32Array;
  readonly logits: Float32Array;
  readonly ropeCos: Float32Array;
  readonly ropeSin: Float32Array;

  constructor(c: ModelConfig, w: ShareWeights, batch: number) {
    const qDim = w.nHeads * c.headDim;
    const kvDim = w.nKvHeads * c.headDim;
    this.xb = new Float32Array(batch * c.dim);
    this.xb2 = new Float32Array(batch * c.dim);
    this.q = new Float32Array(batch * qDim);
    this.k = new Float32Array(batch * kvDim);
    this.v = new Float32Array(batch * kvDim);
    this.attOut = new Float32Array(batch * qDim);
    this.hb = new Float32Array(batch * w.ffnRows);
    this.hb2 = new Float32Array(batch * w.ffnRows);
    this.logits = new Float32Array(c.vocabSize);
    this.ropeCos = new Float32Array((batch * c.ropeDims) / 2);
    this.ropeSin = new Float32Array((batch * c.ropeDims) / 2);
  }
}

function row(buf: Float32Array, i: number, n: number): Float32Array {
  return buf.subarray(i * n, (i + 1) * n);
}

export class TensorMember {
  private readonly state: MemberState;
  /** forward()'s cache: this member's KV heads only. */
  readonly cache: KvCache;
  private readonly one: Float32Array;

  private constructor(
    readonly config: ModelConfig,
    readonly weights: ShareWeights,
    readonly ctx: number,
    readonly kvType: KvType,
    readonly backend: KernelBackend,
    readonly batch: number,
  ) {
    this.state = new MemberState(config, weights, batch);
    this.cache = this.newCache();
    this.one = new Float32Array(config.dim);
  }

  static load(file: GgufFile, opts: MemberOptions): TensorMember {
    const config = readConfig(file);
    const ctx = opts.ctx ?? config.ctxTrain;
    if (!Number.isInteger(ctx) || ctx < 1)
      throw new ModelError(file.path, `context size must be a positive integer, got ${ctx}`);
    const batch = opts.batch ?? 32;
    if (!Number.isInteger(batch) || batch < 1)
      throw new ModelError(file.path, `batch size must be a positive integer, got ${batch}`);
    const [start, end] = opts.layers ?? [0, config.nLayers];
    const backend = opts.backend ?? new JsBackend();
    const weights = loadShareWeights(file, config, start, end, opts.share, backend);
    return new TensorMember(config, weights, ctx, opts.kvType ?? 'f32', backend, batch);
  }

  get isFirst(): boolean {
    return this.weights.tokenEmbd !== undefined;
  }

  get isLast(): boolean {
    return this.weights.output !== undefined;
  }

  /** A KV cache for one sequence: this member's KV heads of every layer in the range. */
  newCache(): KvCache {
    const w = this.weights;
    return new KvCache(this.kvType, w.layers.length, this.ctx, w.nKvHeads * this.config.headDim);
  }

  /** The whole model for one token at one position: the next token's logits. */
  async forward(token: number, pos: number, allReduce: AllReduce, cache: KvCache = this.cache): Promise<Float32Array> {
    this.embed([token], this.one);
    await this.forwardLayers(this.one, [{ start: pos, n: 1, cache }], allReduce);
    return this.head(this.one);
  }

  /** First range: the tokens' embedding rows into x (tokens.length × dim). */
  embed(tokens: readonly number[], x: Float32Array): void {
    const w = this.weights;
    if (!w.tokenEmbd) throw new Error(`member of layers [${w.start}, ${w.end}) holds no token embedding`);
    this.checkRows(tokens.length);
    for (let i = 0; i < tokens.length; i++) getRow(w.tokenEmbd, tokens[i], row(x, i, this.config.dim));
  }

  private checkRows(n: number): void {
    if (!(Number.isInteger(n) && n >= 1 && n <= this.batch))
      throw new RangeError(`a step takes 1..${this.batch} tokens, got ${n}`);
  }

  private matmul(w: Weight, xs: Float32Array, n: number, out: Float32Array): void {
    if (n === 1) this.backend.matvec(w, xs, out);
    else if (this.backend.matmul) this.backend.matmul(w, xs, n, out);
    else for (let i = 0; i < n; i++) this.backend.matvec(w, row(xs, i, w.cols), row(out, i, w.rows));
  }

  /**
   * Runs the range's layers in place over the hidden states x (the segments' rows, n × dim in
   * all), syncing twice per layer through allReduce; every member of the group must make the
   * same call with the same x.
   */
  async forwardLayers(x: Float32Array, segments: readonly Segment[], allReduce: AllReduce): Promise<void> {
    const c = this.config;
    const w = this.weights;
    const s = this.state;
    const qDim = w.nHeads * c.headDim;
    const kvDim = w.nKvHeads * c.headDim;
    const half = c.ropeDims / 2;
    const n = segments.reduce((sum, seg) => sum + seg.n, 0);
    this.checkRows(n);
    if (x.length < n * c.dim) throw new RangeError(`hidden states of ${x.length} values, ${n} × ${c.dim} needed`);
    let r = 0;
    for (const seg of segments) {
      if (!(Number.isInteger(seg.start) && seg.start >= 0 && seg.start + seg.n <= this.ctx))
        throw new RangeError(`positions ${seg.start}..${seg.start + seg.n - 1} are outside the context of ${this.ctx}`);
      if (seg.cache.kvDim !== kvDim)
        throw new RangeError(`a KV cache of ${seg.cache.kvDim} values per position, this member's share is ${kvDim}`);
      for (let i = 0; i < seg.n; i++) {
        const cos = row(s.ropeCos, r + i, half);
        const sin = row(s.ropeSin, r + i, half);
        ropeAngles(seg.start + i, c.ropeDims, c.ropeBase, c.ropeFreqScale, cos, sin, w.ropeFreqs);
      }
      r += seg.n;
    }
    const out = s.xb2.subarray(0, n * c.dim);

    for (let l = 0; l < w.layers.length; l++) {
      const lw = w.layers[l];

      // attention rmsnorm (replicated)
      for (let i = 0; i < n; i++) rmsnorm(row(s.xb, i, c.dim), row(x, i, c.dim), lw.attnNorm, c.dim, c.rmsEps);

      // q, k, v of this member's heads (+ bias for qwen2)
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
        // per-head q/k norm (qwen3), RoPE: per head, so a member's heads need only themselves
        if (lw.qNorm && lw.kNorm) {
          for (let h = 0; h < w.nHeads; h++) rmsnorm(q, q, lw.qNorm, c.headDim, c.rmsEps, h * c.headDim);
          for (let h = 0; h < w.nKvHeads; h++) rmsnorm(k, k, lw.kNorm, c.headDim, c.rmsEps, h * c.headDim);
        }
        const cos = row(s.ropeCos, i, half);
        const sin = row(s.ropeSin, i, half);
        rope(q, w.nHeads, c.headDim, c.ropeDims, c.ropeNeox, cos, sin);
        rope(k, w.nKvHeads, c.headDim, c.ropeDims, c.ropeNeox, cos, sin);
      }

      // this member's KV heads into its cache share; attention of its query heads over them
      r = 0;
      for (const seg of segments) {
        for (let i = 0; i < seg.n; i++)
          seg.cache.write(l, seg.start + i, row(s.k, r + i, kvDim), row(s.v, r + i, kvDim));
        this.backend.attend({
          keys: seg.cache.keys[l],
          values: seg.cache.values[l],
          nHeads: w.nHeads,
          nKvHeads: w.nKvHeads,
          headDim: c.headDim,
          start: seg.start,
          n: seg.n,
          q: s.q.subarray(r * qDim, (r + seg.n) * qDim),
          out: s.attOut.subarray(r * qDim, (r + seg.n) * qDim),
        });
        r += seg.n;
      }

      // output projection over this member's columns: a partial sum; sync 1 adds the group's up
      this.matmul(lw.wo, s.attOut, n, s.xb2);
      await allReduce(out);
      addInPlace(x, out, n * c.dim);

      // ffn rmsnorm (replicated)
      for (let i = 0; i < n; i++) rmsnorm(row(s.xb, i, c.dim), row(x, i, c.dim), lw.ffnNorm, c.dim, c.rmsEps);

      // SwiGLU over this member's rows: down(silu(gate(x)) * up(x)), a partial sum; sync 2
      this.matmul(lw.wGate, s.xb, n, s.hb);
      this.matmul(lw.wUp, s.xb, n, s.hb2);
      this.backend.swiglu(s.hb, s.hb, s.hb2, n * w.ffnRows);
      this.matmul(lw.wDown, s.hb, n, s.xb2);
      await allReduce(out);
      addInPlace(x, out, n * c.dim);
    }
  }

  /** Last range: final rmsnorm and the classifier on one row (workspace: read before the next call). */
  head(x: Float32Array): Float32Array {
    const w = this.weights;
    const s = this.state;
    const dim = this.config.dim;
    if (!w.output || !w.outputNorm) throw new Error(`member of layers [${w.start}, ${w.end}) holds no output head`);
    const xb = row(s.xb, 0, dim);
    rmsnorm(xb, x.subarray(0, dim), w.outputNorm, dim, this.config.rmsEps);
    this.backend.matvec(w.output, xb, s.logits);
    return s.logits;
  }
}
