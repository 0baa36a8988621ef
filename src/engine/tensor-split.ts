// One member of a tensor-parallel group: the layers of a range, each split across the group
// (model/tensor-share.ts says who takes what). Every member holds the whole hidden state and
// runs the norms and residual adds itself (replicated); the matrices are cut so each member's
// products give a partial sum of the attention block's output and of the FFN block's output,
// and the group adds those partials up (all-reduce) — two syncs per layer. The layer walk is
// model/transformer.ts's LayerRange.walk, the one a whole model runs, here over the member's
// heads and rows: it yields each block's partial output where the residual add takes it, and
// forwardLayers all-reduces it there. A shared head is no sum: each member computes the logits
// of its vocabulary rows and the leader puts the parts side by side (placeHeadRows).

import type { GgufFile } from '../gguf/reader.ts';
import type { KernelBackend } from '../kernels/backend.ts';
import type { ModelConfig } from '../model/config.ts';
import type { KvCache, KvType } from '../model/kv-cache.ts';
import { loadShareWeights, type ShareWeights } from '../model/share-weights.ts';
import type { TensorShare } from '../model/tensor-share.ts';
import { checkLoad, LayerRange, type RangeOptions, type Segment } from '../model/transformer.ts';

/**
 * Replaces buf, this member's partial output of a block (rows × dim), with the sum of every
 * member's partial. It must give every member the same values bit for bit (sum the partials
 * in member order), or the replicated hidden states drift apart.
 */
export type AllReduce = (buf: Float32Array) => Promise<void>;

export interface MemberOptions extends RangeOptions {
  readonly share: TensorShare;
}

/** One member's share of the layers of a range: its heads, its FFN rows, its share of the KV cache. */
export class TensorMember extends LayerRange<ShareWeights> {
  private constructor(
    config: ModelConfig,
    weights: ShareWeights,
    ctx: number,
    kvType: KvType,
    backend: KernelBackend,
    batch: number,
  ) {
    super(config, weights, weights, ctx, kvType, backend, batch);
  }

  static load(file: GgufFile, opts: MemberOptions): TensorMember {
    const l = checkLoad(file, opts);
    const weights = loadShareWeights(file, l.config, l.start, l.end, opts.share, l.backend);
    return new TensorMember(l.config, weights, l.ctx, l.kvType, l.backend, l.batch);
  }

  protected override get label(): string {
    return `member ${this.weights.share.member} of layers [${this.weights.start}, ${this.weights.end})`;
  }

  /** The whole model for one token at one position: the next token's logits — this member's head rows of them (placeHeadRows) when the head is shared. */
  async forward(token: number, pos: number, allReduce: AllReduce, cache: KvCache = this.cache): Promise<Float32Array> {
    this.embed([token], this.one);
    await this.forwardLayers(this.one, [{ start: pos, n: 1, cache }], allReduce);
    return this.head(this.one);
  }

  /**
   * Runs the range's layers in place over the hidden states x (the segments' rows, n × dim in
   * all), syncing twice per layer through allReduce; every member of the group must make the
   * same call with the same x.
   */
  async forwardLayers(x: Float32Array, segments: readonly Segment[], allReduce: AllReduce): Promise<void> {
    for (const partial of this.walk(x, segments)) await allReduce(partial);
  }
}

/**
 * Puts a member's logits of n rows (n × width, its head rows from `from`) into the group's
 * logits of those rows (n × vocabSize): the leader's own part of a split head.
 */
export function placeHeadRows(
  logits: Float32Array,
  vocabSize: number,
  part: Float32Array,
  n: number,
  from: number,
): void {
  const width = part.length / n;
  if (!(Number.isInteger(width) && width >= 1 && from + width <= vocabSize))
    throw new RangeError(`a head part of ${part.length} values for ${n} rows from row ${from} of ${vocabSize}`);
  for (let i = 0; i < n; i++) logits.set(part.subarray(i * width, (i + 1) * width), i * vocabSize + from);
}
