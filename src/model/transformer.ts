// The llama-family transformer over a range of layers, written to be read top to bottom
// like llama2.c's run.c. A stage holding layers [start, end) takes the hidden state in
// `state.x` (or embeds a token, on the first stage) and leaves it there for the next
// stage; the last stage turns it into logits. Every buffer is allocated once, up front.

import type { GgufFile } from '../gguf/reader.ts';
import { getRow, type Weight } from '../kernels/matvec.ts';
import { JsBackend, type KernelBackend } from '../kernels/backend.ts';
import { rmsnorm, rope, ropeAngles, swiglu, addInPlace } from '../kernels/ops.ts';
import { attendHead } from '../kernels/attention.ts';
import { readConfig, ModelError, type ModelConfig } from './config.ts';
import { loadStageWeights, type StageWeights } from './weights.ts';
import { KvCache, type KvType } from './kv-cache.ts';

export interface LoadOptions {
  /** Positions the KV cache holds; defaults to the trained context length. */
  ctx?: number;
  kvType?: KvType;
  /** Layer range [start, end); defaults to every layer. */
  layers?: readonly [number, number];
  /** Kernel backend for the matrix products; defaults to the js reference. */
  backend?: KernelBackend;
}

/** Every activation buffer of one forward step. */
class RunState {
  readonly x: Float32Array; // the residual stream (hidden state)
  readonly xb: Float32Array; // normed input of a sub-block
  readonly xb2: Float32Array; // sub-block output before the residual add
  readonly q: Float32Array;
  readonly k: Float32Array;
  readonly v: Float32Array;
  readonly attOut: Float32Array; // concatenated head outputs
  readonly att: Float32Array; // scores of one head over the context
  readonly hb: Float32Array;
  readonly hb2: Float32Array;
  readonly logits: Float32Array;
  readonly ropeCos: Float32Array;
  readonly ropeSin: Float32Array;

  constructor(c: ModelConfig, ctx: number) {
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    this.x = new Float32Array(c.dim);
    this.xb = new Float32Array(c.dim);
    this.xb2 = new Float32Array(c.dim);
    this.q = new Float32Array(qDim);
    this.k = new Float32Array(kvDim);
    this.v = new Float32Array(kvDim);
    this.attOut = new Float32Array(qDim);
    this.att = new Float32Array(ctx);
    this.hb = new Float32Array(c.ffnDim);
    this.hb2 = new Float32Array(c.ffnDim);
    this.logits = new Float32Array(c.vocabSize);
    this.ropeCos = new Float32Array(c.ropeDims / 2);
    this.ropeSin = new Float32Array(c.ropeDims / 2);
  }
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
  ) {
    this.state = new RunState(config, ctx);
    this.cache = this.newCache();
  }

  static load(file: GgufFile, opts: LoadOptions = {}): Transformer {
    const config = readConfig(file);
    const ctx = opts.ctx ?? config.ctxTrain;
    if (!Number.isInteger(ctx) || ctx < 1) throw new ModelError(file.path, `context size must be a positive integer, got ${ctx}`);
    const [start, end] = opts.layers ?? [0, config.nLayers];
    const backend = opts.backend ?? new JsBackend();
    const weights = loadStageWeights(file, config, start, end, backend);
    return new Transformer(config, weights, ctx, opts.kvType ?? 'f32', backend);
  }

  private readonly matvec = (w: Weight, x: Float32Array, out: Float32Array): void => this.backend.matvec(w, x, out);

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
    this.embed(token);
    this.forwardLayers(pos, cache);
    return this.head();
  }

  /** First stage: the token's embedding row becomes the hidden state. */
  embed(token: number): Float32Array {
    const w = this.weights;
    if (!w.tokenEmbd) throw new Error(`stage [${w.start}, ${w.end}) holds no token embedding`);
    getRow(w.tokenEmbd, token, this.state.x);
    return this.state.x;
  }

  /** Runs this stage's layers on state.x at position pos, in place. */
  forwardLayers(pos: number, cache: KvCache = this.cache): Float32Array {
    if (!(Number.isInteger(pos) && pos >= 0 && pos < this.ctx)) {
      throw new RangeError(`position ${pos} is outside the context of ${this.ctx}`);
    }
    const c = this.config;
    const s = this.state;
    const matvec = this.matvec;
    const kvDim = c.nKvHeads * c.headDim;
    const groupSize = c.nHeads / c.nKvHeads;
    ropeAngles(pos, c.ropeDims, c.ropeBase, c.ropeFreqScale, s.ropeCos, s.ropeSin, this.weights.ropeFreqs);

    for (let i = 0; i < this.weights.layers.length; i++) {
      const lw = this.weights.layers[i];

      // attention rmsnorm
      rmsnorm(s.xb, s.x, lw.attnNorm, c.dim, c.rmsEps);

      // q, k, v projections (+ bias for qwen2)
      matvec(lw.wq, s.xb, s.q);
      matvec(lw.wk, s.xb, s.k);
      matvec(lw.wv, s.xb, s.v);
      if (lw.bq) addInPlace(s.q, lw.bq, s.q.length);
      if (lw.bk) addInPlace(s.k, lw.bk, kvDim);
      if (lw.bv) addInPlace(s.v, lw.bv, kvDim);

      // per-head q/k norm (qwen3)
      if (lw.qNorm && lw.kNorm) {
        for (let h = 0; h < c.nHeads; h++) rmsnorm(s.q, s.q, lw.qNorm, c.headDim, c.rmsEps, h * c.headDim);
        for (let h = 0; h < c.nKvHeads; h++) rmsnorm(s.k, s.k, lw.kNorm, c.headDim, c.rmsEps, h * c.headDim);
      }

      // RoPE on q and k
      rope(s.q, c.nHeads, c.headDim, c.ropeDims, c.ropeNeox, s.ropeCos, s.ropeSin);
      rope(s.k, c.nKvHeads, c.headDim, c.ropeDims, c.ropeNeox, s.ropeCos, s.ropeSin);

      // write k, v of this position into the cache
      cache.write(i, pos, s.k, s.v);

      // attention per head over the cache (grouped-query: groupSize heads share a KV head)
      for (let h = 0; h < c.nHeads; h++) {
        const kvOff = Math.floor(h / groupSize) * c.headDim;
        attendHead(cache.keys[i], cache.values[i], kvDim, pos, s.q, h * c.headDim, kvOff, c.headDim, s.att, s.attOut, h * c.headDim);
      }

      // output projection and residual
      matvec(lw.wo, s.attOut, s.xb2);
      addInPlace(s.x, s.xb2, c.dim);

      // ffn rmsnorm
      rmsnorm(s.xb, s.x, lw.ffnNorm, c.dim, c.rmsEps);

      // SwiGLU: down(silu(gate(x)) * up(x))
      matvec(lw.wGate, s.xb, s.hb);
      matvec(lw.wUp, s.xb, s.hb2);
      swiglu(s.hb, s.hb, s.hb2, c.ffnDim);
      matvec(lw.wDown, s.hb, s.xb2);

      // residual
      addInPlace(s.x, s.xb2, c.dim);
    }
    return s.x;
  }

  /** Last stage: final rmsnorm and the classifier give the logits. */
  head(): Float32Array {
    const w = this.weights;
    const s = this.state;
    if (!w.output || !w.outputNorm) throw new Error(`stage [${w.start}, ${w.end}) holds no output head`);
    rmsnorm(s.xb, s.x, w.outputNorm, this.config.dim, this.config.rmsEps);
    this.matvec(w.output, s.xb, s.logits);
    return s.logits;
  }
}
