// Picks the next token from the logits. The chain follows llama.cpp's default order:
// penalties → top-k → top-p → min-p → temperature → draw; temperature 0 is greedy.
// Asked for log-probabilities, it reports them from the logits as they arrive, before any of
// the chain (as llama-server's n_probs without post_sampling_probs).

import { Rng } from './rng.ts';

export interface SamplingOptions {
  /** 0 means greedy (argmax). */
  temperature: number;
  /** Keep the k most likely tokens; 0 keeps all. */
  topK: number;
  /** Keep the smallest set whose probability reaches p; 1 keeps all. */
  topP: number;
  /** Drop tokens less likely than minP × the most likely one; 0 keeps all. */
  minP: number;
  /** Divides positive logits (multiplies negative ones) of recent tokens; 1 is off. */
  repeatPenalty: number;
  /** Subtracted once per occurrence of a token in the recent window. */
  frequencyPenalty: number;
  /** Subtracted once if a token occurs in the recent window. */
  presencePenalty: number;
  /** How many recent tokens the penalties look at. */
  penaltyLastN: number;
  seed: number;
  /**
   * Report the sampled token's log-probability and the `logprobs` most likely tokens' (0..20,
   * MAX_LOGPROBS) with each token; undefined reports none.
   */
  logprobs?: number;
}

/** Most tokens a request may ask the log-probabilities of (OpenAI's top_logprobs bound). */
export const MAX_LOGPROBS = 20;

/** One token and the natural log of its probability. */
export interface TokenLogprob {
  token: number;
  logprob: number;
}

/**
 * The log-probabilities of one sampled token: log_softmax of the raw logits (in float64),
 * before penalties, temperature and truncation.
 */
export interface TokenLogprobs extends TokenLogprob {
  /** The most likely tokens, most likely first (ties: lower id first); the sampled one among them or not. */
  top: TokenLogprob[];
}

export const defaultSampling: SamplingOptions = {
  temperature: 0.8,
  topK: 40,
  topP: 0.95,
  minP: 0.05,
  repeatPenalty: 1,
  frequencyPenalty: 0,
  presencePenalty: 0,
  penaltyLastN: 64,
  seed: 0,
};

export class SamplingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SamplingError';
  }
}

/** Checks ranges once, so the token loop can trust them. */
export function validateSampling(o: SamplingOptions): SamplingOptions {
  const check = (ok: boolean, what: string) => {
    if (!ok) throw new SamplingError(what);
  };
  check(Number.isFinite(o.temperature) && o.temperature >= 0, `temperature must be >= 0, got ${o.temperature}`);
  check(Number.isInteger(o.topK) && o.topK >= 0, `top-k must be an integer >= 0, got ${o.topK}`);
  check(o.topP > 0 && o.topP <= 1, `top-p must be in (0, 1], got ${o.topP}`);
  check(o.minP >= 0 && o.minP <= 1, `min-p must be in [0, 1], got ${o.minP}`);
  check(Number.isFinite(o.repeatPenalty) && o.repeatPenalty > 0, `repeat penalty must be > 0, got ${o.repeatPenalty}`);
  check(Number.isFinite(o.frequencyPenalty), `frequency penalty must be a number, got ${o.frequencyPenalty}`);
  check(Number.isFinite(o.presencePenalty), `presence penalty must be a number, got ${o.presencePenalty}`);
  check(
    Number.isInteger(o.penaltyLastN) && o.penaltyLastN >= 0,
    `penalty window must be an integer >= 0, got ${o.penaltyLastN}`,
  );
  check(
    Number.isInteger(o.seed) && o.seed >= 0 && o.seed <= 0xffffffff,
    `seed must be an integer in 0..4294967295, got ${o.seed}`,
  );
  check(
    o.logprobs === undefined || (Number.isInteger(o.logprobs) && o.logprobs >= 0 && o.logprobs <= MAX_LOGPROBS),
    `logprobs must be an integer in 0..${MAX_LOGPROBS}, got ${o.logprobs}`,
  );
  return o;
}

export class Sampler {
  private readonly rng: Rng;
  private readonly ids: Int32Array;
  private readonly probs: Float64Array;
  /** The logits as the model gave them, for log-probabilities (the draw modifies its input). */
  private readonly raw: Float32Array;
  private readonly counts = new Map<number, number>();
  /** The log-probabilities of the last sampled token, when the options ask for them. */
  logprobs: TokenLogprobs | undefined;

  constructor(
    readonly options: SamplingOptions,
    vocabSize: number,
  ) {
    validateSampling(options);
    this.rng = new Rng(options.seed);
    this.ids = new Int32Array(vocabSize);
    this.probs = new Float64Array(vocabSize);
    this.raw = new Float32Array(options.logprobs === undefined ? 0 : vocabSize);
  }

  /** Chooses a token; `history` is every token so far (prompt and generated). Modifies logits. */
  sample(logits: Float32Array, history: readonly number[]): number {
    const o = this.options;
    if (o.logprobs === undefined) return this.draw(logits, history);
    // From the logits as the model gave them: keep them for the sampled token's.
    const raw = this.raw;
    raw.set(logits);
    const top = this.topLogprobs(raw, o.logprobs);
    const token = this.draw(logits, history);
    this.logprobs = { token, logprob: raw[token] - top.shift, top: top.top };
    return token;
  }

  private draw(logits: Float32Array, history: readonly number[]): number {
    const o = this.options;
    this.applyPenalties(logits, history);
    if (o.temperature === 0) return argmax(logits);

    // top-k: the candidates, most likely first
    const n = this.topK(logits, o.topK > 0 ? Math.min(o.topK, logits.length) : logits.length);
    const ids = this.ids;
    const p = this.probs;

    // softmax over the candidates (at temperature 1, as llama.cpp's top-p and min-p see them)
    const max = logits[ids[0]];
    let sum = 0;
    for (let i = 0; i < n; i++) sum += p[i] = Math.exp(logits[ids[i]] - max);
    for (let i = 0; i < n; i++) p[i] /= sum;

    // top-p: the shortest prefix whose mass reaches p
    let keep = n;
    if (o.topP < 1) {
      let cum = 0;
      for (let i = 0; i < n; i++) {
        cum += p[i];
        if (cum >= o.topP) {
          keep = i + 1;
          break;
        }
      }
    }

    // min-p: drop tokens below minP × the top probability
    if (o.minP > 0) {
      const floor = o.minP * p[0];
      let m = 1;
      while (m < keep && p[m] >= floor) m++;
      keep = m;
    }

    // temperature, then a draw from the renormalised distribution
    let total = 0;
    for (let i = 0; i < keep; i++) total += p[i] = Math.exp((logits[ids[i]] - max) / o.temperature);
    let r = this.rng.next() * total;
    for (let i = 0; i < keep; i++) {
      r -= p[i];
      if (r < 0) return ids[i];
    }
    return ids[keep - 1];
  }

  /**
   * The n most likely tokens' log-probabilities, and `shift` = max + log Σ exp(x − max): a
   * token's log-probability is its logit − shift (float64, stable for any logit range).
   */
  private topLogprobs(logits: Float32Array, n: number): { top: TokenLogprob[]; shift: number } {
    let max = -Infinity;
    for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
    let sum = 0;
    for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
    const shift = max + Math.log(sum);
    const k = n > 0 ? this.topK(logits, Math.min(n, logits.length)) : 0;
    const top: TokenLogprob[] = [];
    for (let i = 0; i < k; i++) top.push({ token: this.ids[i], logprob: logits[this.ids[i]] - shift });
    return { top, shift };
  }

  private applyPenalties(logits: Float32Array, history: readonly number[]): void {
    const o = this.options;
    if (o.repeatPenalty === 1 && o.frequencyPenalty === 0 && o.presencePenalty === 0) return;
    const counts = this.counts;
    counts.clear();
    for (let i = Math.max(0, history.length - o.penaltyLastN); i < history.length; i++) {
      counts.set(history[i], (counts.get(history[i]) ?? 0) + 1);
    }
    for (const [id, count] of counts) {
      if (id < 0 || id >= logits.length) continue;
      let l = logits[id];
      l = l > 0 ? l / o.repeatPenalty : l * o.repeatPenalty;
      logits[id] = l - count * o.frequencyPenalty - o.presencePenalty;
    }
  }

  /** Fills ids[0..k) with the k largest logits in descending order (ties: lower id first). */
  private topK(logits: Float32Array, k: number): number {
    const ids = this.ids;
    if (k === logits.length) {
      for (let i = 0; i < k; i++) ids[i] = i;
      const sorted = Array.from(ids).sort((a, b) => logits[b] - logits[a] || a - b);
      ids.set(sorted);
      return k;
    }
    // A min-heap of the best k seen so far: O(n log k) instead of sorting the vocabulary.
    const worse = (a: number, b: number) => logits[a] < logits[b] || (logits[a] === logits[b] && a > b);
    let size = 0;
    const siftDown = (i: number) => {
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < size && worse(ids[l], ids[m])) m = l;
        if (r < size && worse(ids[r], ids[m])) m = r;
        if (m === i) return;
        [ids[i], ids[m]] = [ids[m], ids[i]];
        i = m;
      }
    };
    for (let t = 0; t < logits.length; t++) {
      if (size < k) {
        let i = size++;
        ids[i] = t;
        while (i > 0) {
          const parent = (i - 1) >> 1;
          if (!worse(ids[i], ids[parent])) break;
          [ids[i], ids[parent]] = [ids[parent], ids[i]];
          i = parent;
        }
      } else if (worse(ids[0], t)) {
        ids[0] = t;
        siftDown(0);
      }
    }
    const best = Array.from(ids.subarray(0, k)).sort((a, b) => logits[b] - logits[a] || a - b);
    ids.set(best);
    return k;
  }
}

export function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}
