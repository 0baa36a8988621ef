// One sequence being generated: feed tokens at positions, get the next token back. The
// sampler lives with the model's last layers, so a pipeline of nodes returns a token id,
// not a vocabulary of logits; a single process is the same thing with one stage.

import type { Transformer } from '../model/transformer.ts';
import type { KvCache } from '../model/kv-cache.ts';
import { Sampler, type SamplingOptions } from './sampler.ts';

export interface InferenceSession {
  /** Positions the session's KV caches hold. */
  readonly ctx: number;
  /**
   * Runs `tokens` at positions start, start+1, … and returns the token sampled after the
   * last of them. Positions must continue where the previous step ended.
   */
  step(tokens: readonly number[], start: number): Promise<number>;
  /** Frees the session's KV caches. */
  close(): Promise<void>;
}

/** A whole model in this process. */
export class LocalSession implements InferenceSession {
  private readonly cache: KvCache;
  private readonly sampler: Sampler;
  private readonly history: number[] = [];

  constructor(
    private readonly model: Transformer,
    sampling: SamplingOptions,
  ) {
    if (!model.isFirst || !model.isLast) throw new Error('a local session needs every layer of the model');
    this.cache = model.newCache();
    this.sampler = new Sampler(sampling, model.config.vocabSize);
  }

  get ctx(): number {
    return this.model.ctx;
  }

  async step(tokens: readonly number[], start: number): Promise<number> {
    if (start !== this.history.length) throw new RangeError(`step at position ${start}, but the session is at ${this.history.length}`);
    if (tokens.length === 0) throw new RangeError('step with no tokens');
    // The prompt goes through in steps of up to the model's batch size.
    for (let i = 0; i < tokens.length; i += this.model.batch) {
      const step = tokens.slice(i, i + this.model.batch);
      this.model.embed(step);
      this.model.forwardLayers(start + i, this.cache);
      this.history.push(...step);
    }
    return this.sampler.sample(this.model.head(), this.history);
  }

  async close(): Promise<void> {}
}
