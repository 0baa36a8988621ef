// One sequence being generated: feed tokens at positions, get the next token back. The
// sampler lives with the model's last layers, so a pipeline of nodes returns a token id,
// not a vocabulary of logits; a single process is the same thing with one stage.
//
// A session can go back: a step that starts before the session's end first forgets the
// positions from there on (their KV entries are overwritten by the step), so a session kept
// after one request continues the next from the prompt prefix they share (prompt reuse).

import type { Transformer } from '../model/transformer.ts';
import type { KvCache } from '../model/kv-cache.ts';
import { Sampler, type SamplingOptions, type TokenLogprobs } from './sampler.ts';

export interface InferenceSession {
  /** Positions the session's KV caches hold. */
  readonly ctx: number;
  /**
   * Runs `tokens` at positions start, start+1, … and returns the token sampled after the
   * last of them. `start` is at most where the previous step ended; before it, the session
   * is first truncated to `start` positions (and the penalties' token history with it).
   */
  step(tokens: readonly number[], start: number): Promise<number>;
  /**
   * The log-probabilities of the token the last step returned, when the sampling options ask
   * for them (SamplingOptions.logprobs); undefined otherwise.
   */
  readonly logprobs?: TokenLogprobs;
  /**
   * From the next step on, samples with these options from a fresh random state (the seed's),
   * as a new session would: a kept session then answers a new request exactly as a fresh one.
   */
  resample(sampling: SamplingOptions): void;
  /** Frees the session's KV caches. */
  close(): Promise<void>;
}

/** Length of the longest common prefix of two token lists. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/** A whole model in this process. */
export class LocalSession implements InferenceSession {
  private readonly cache: KvCache;
  private sampler: Sampler;
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

  get logprobs(): TokenLogprobs | undefined {
    return this.sampler.logprobs;
  }

  async step(tokens: readonly number[], start: number): Promise<number> {
    if (!(Number.isInteger(start) && start >= 0 && start <= this.history.length)) {
      throw new RangeError(`step at position ${start}, but the session is at ${this.history.length}`);
    }
    if (tokens.length === 0) throw new RangeError('step with no tokens');
    if (start + tokens.length > this.ctx) throw new RangeError(`positions [${start}, ${start + tokens.length}) run past the context of ${this.ctx}`);
    // Going back: the positions from start on are recomputed below.
    this.history.length = start;
    // The prompt goes through in steps of up to the model's batch size.
    for (let i = 0; i < tokens.length; i += this.model.batch) {
      const step = tokens.slice(i, i + this.model.batch);
      this.model.embed(step);
      this.model.forwardLayers(start + i, this.cache);
      this.history.push(...step);
    }
    return this.sampler.sample(this.model.head(), this.history);
  }

  resample(sampling: SamplingOptions): void {
    this.sampler = new Sampler(sampling, this.model.config.vocabSize);
  }

  async close(): Promise<void> {}
}
