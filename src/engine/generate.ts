// The generation loop: prefill the prompt, then decode one token at a time until EOS, a
// stop string, the token limit or the end of the context.

import type { TokenLogprobs } from './sampler.ts';
import type { InferenceSession } from './session.ts';

/** What the loop needs of a tokenizer: end-of-generation ids and a streaming decoder. */
export interface Vocabulary {
  isEog(id: number): boolean;
  /** A fresh decoder that turns ids into text without splitting UTF-8 characters. */
  stream(): { push(id: number): string; flush(): string };
}

export interface GenerateRequest {
  /** Prompt token ids, BOS included when the model wants one. */
  prompt: readonly number[];
  /**
   * Leading prompt tokens the session already holds at their positions (a kept session's
   * common prefix with this prompt): only the rest is computed, at least the last token.
   */
  cached?: number;
  maxTokens: number;
  /** Generation ends before the first occurrence of any of these strings. */
  stop?: readonly string[];
  signal?: AbortSignal;
  /**
   * Hears each generated token as it is kept (before its text may be held back), with its
   * log-probabilities when the session's sampling asks for them.
   */
  onToken?: (token: number, logprobs: TokenLogprobs | undefined) => void;
}

export type StopReason = 'eos' | 'stop' | 'length' | 'context' | 'aborted';

export interface Timings {
  prompt_tokens: number;
  /** Of prompt_tokens, those the session already held (not computed; prompt_tps leaves them out). */
  prompt_cached: number;
  prompt_ms: number;
  prompt_tps: number;
  decode_tokens: number;
  decode_ms: number;
  decode_tps: number;
}

export interface GenerateResult {
  text: string;
  tokens: number[];
  /** One per token of `tokens` when the session's sampling asks for them; otherwise empty. */
  logprobs: TokenLogprobs[];
  stopReason: StopReason;
  timings: Timings;
}

export class ContextError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ContextError';
  }
}

/** Refuses, before any compute, a prompt that leaves no room to generate. */
export function checkPromptFits(promptLength: number, ctx: number): void {
  if (promptLength === 0)
    throw new ContextError('the prompt is empty: nothing to condition on (the model adds no BOS token)');
  if (promptLength >= ctx) {
    throw new ContextError(
      `the prompt is ${promptLength} tokens but the context holds ${ctx}: shorten the prompt or raise --ctx`,
    );
  }
}

export async function generate(
  session: InferenceSession,
  vocab: Vocabulary,
  req: GenerateRequest,
  onText?: (text: string, token: number) => void,
): Promise<GenerateResult> {
  const ctx = session.ctx;
  checkPromptFits(req.prompt.length, ctx);
  if (!Number.isInteger(req.maxTokens) || req.maxTokens < 0)
    throw new RangeError(`max tokens must be an integer >= 0, got ${req.maxTokens}`);
  const stops = (req.stop ?? []).filter((s) => s.length > 0);
  const tokens: number[] = [];
  const logprobs: TokenLogprobs[] = [];
  const decoder = vocab.stream();
  let text = '';
  let emitted = 0;
  let stopReason: StopReason = 'length';

  const cached = req.cached ?? 0;
  if (!(Number.isInteger(cached) && cached >= 0))
    throw new RangeError(`cached prompt tokens must be an integer >= 0, got ${cached}`);
  // The last prompt token is always stepped: its logits give the first token.
  const from = Math.min(cached, req.prompt.length - 1);

  // prefill: the prompt (past what the session holds) in one step gives the first token
  const t0 = performance.now();
  let pos = req.prompt.length;
  let next = req.maxTokens > 0 ? await session.step(req.prompt.slice(from), from) : -1;
  let nextLogprobs = session.logprobs;
  const computed = req.maxTokens > 0 ? req.prompt.length - from : 0;
  const t1 = performance.now();

  // decode: each sampled token is fed back until a stop condition
  while (tokens.length < req.maxTokens) {
    if (req.signal?.aborted) {
      stopReason = 'aborted';
      break;
    }
    if (vocab.isEog(next)) {
      stopReason = 'eos';
      break;
    }
    tokens.push(next);
    if (nextLogprobs) logprobs.push(nextLogprobs);
    req.onToken?.(next, nextLogprobs);
    text += decoder.push(next);

    const hit = firstStop(text, stops, emitted);
    if (hit >= 0) {
      text = text.slice(0, hit);
      stopReason = 'stop';
      break;
    }
    // Hold back text that could still grow into a stop string.
    const safe = text.length - partialStopLength(text, stops);
    if (safe > emitted) {
      onText?.(text.slice(emitted, safe), next);
      emitted = safe;
    }
    if (tokens.length === req.maxTokens) break;
    if (pos >= ctx) {
      stopReason = 'context';
      break;
    }
    next = await session.step([next], pos++);
    nextLogprobs = session.logprobs;
  }
  if (stopReason !== 'stop') text += decoder.flush();
  if (text.length > emitted) onText?.(text.slice(emitted), tokens[tokens.length - 1] ?? -1);
  const t2 = performance.now();

  const promptMs = t1 - t0;
  const decodeMs = t2 - t1;
  return {
    text,
    tokens,
    logprobs,
    stopReason,
    timings: {
      prompt_tokens: req.prompt.length,
      prompt_cached: req.maxTokens > 0 ? from : 0,
      prompt_ms: round(promptMs),
      prompt_tps: round(computed / (promptMs / 1000)),
      decode_tokens: tokens.length,
      decode_ms: round(decodeMs),
      decode_tps: round(tokens.length / (decodeMs / 1000)),
    },
  };
}

/** Index of the earliest stop string that ends past `from`, or -1. */
function firstStop(text: string, stops: readonly string[], from: number): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s, Math.max(0, from - s.length + 1));
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

/** Length of the longest end of `text` that is a proper prefix of some stop string. */
function partialStopLength(text: string, stops: readonly string[]): number {
  let best = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > best; n--) {
      if (text.endsWith(s.slice(0, n))) {
        best = n;
        break;
      }
    }
  }
  return best;
}

function round(x: number): number {
  return Number.isFinite(x) ? Math.round(x * 100) / 100 : 0;
}
