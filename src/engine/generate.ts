// The generation loop: prefill the prompt, then decode one token at a time until EOS, a
// stop string, the token limit or the end of the context.

import type { Transformer } from '../model/transformer.ts';
import { Sampler, type SamplingOptions } from './sampler.ts';

/** What the loop needs of a tokenizer: end-of-generation ids and a streaming decoder. */
export interface Vocabulary {
  isEog(id: number): boolean;
  /** A fresh decoder that turns ids into text without splitting UTF-8 characters. */
  stream(): { push(id: number): string; flush(): string };
}

export interface GenerateRequest {
  /** Prompt token ids, BOS included when the model wants one. */
  prompt: readonly number[];
  maxTokens: number;
  sampling: SamplingOptions;
  /** Generation ends before the first occurrence of any of these strings. */
  stop?: readonly string[];
  signal?: AbortSignal;
}

export type StopReason = 'eos' | 'stop' | 'length' | 'context' | 'aborted';

export interface Timings {
  prompt_tokens: number;
  prompt_ms: number;
  prompt_tps: number;
  decode_tokens: number;
  decode_ms: number;
  decode_tps: number;
}

export interface GenerateResult {
  text: string;
  tokens: number[];
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
  if (promptLength === 0) throw new ContextError('the prompt is empty: nothing to condition on (the model adds no BOS token)');
  if (promptLength >= ctx) {
    throw new ContextError(`the prompt is ${promptLength} tokens but the context holds ${ctx}: shorten the prompt or raise --ctx`);
  }
}

export async function generate(
  model: Transformer,
  vocab: Vocabulary,
  req: GenerateRequest,
  onText?: (text: string, token: number) => void,
): Promise<GenerateResult> {
  const ctx = model.ctx;
  checkPromptFits(req.prompt.length, ctx);
  if (!Number.isInteger(req.maxTokens) || req.maxTokens < 0) throw new RangeError(`max tokens must be an integer >= 0, got ${req.maxTokens}`);
  const sampler = new Sampler(req.sampling, model.config.vocabSize);
  const stops = (req.stop ?? []).filter((s) => s.length > 0);
  const cache = model.newCache();
  const history = [...req.prompt];
  const tokens: number[] = [];

  // prefill: every prompt token through the layers, logits only for the last
  const t0 = performance.now();
  let pos = 0;
  for (; pos < req.prompt.length; pos++) {
    model.embed(req.prompt[pos]);
    model.forwardLayers(pos, cache);
  }
  let logits = model.head();
  const t1 = performance.now();

  // decode
  const decoder = vocab.stream();
  let text = '';
  let emitted = 0;
  let stopReason: StopReason = 'length';
  while (tokens.length < req.maxTokens) {
    if (req.signal?.aborted) {
      stopReason = 'aborted';
      break;
    }
    const token = sampler.sample(logits, history);
    if (vocab.isEog(token)) {
      stopReason = 'eos';
      break;
    }
    tokens.push(token);
    history.push(token);
    text += decoder.push(token);

    const hit = firstStop(text, stops, emitted);
    if (hit >= 0) {
      text = text.slice(0, hit);
      stopReason = 'stop';
      break;
    }
    // Hold back text that could still grow into a stop string.
    const safe = text.length - partialStopLength(text, stops);
    if (safe > emitted) {
      onText?.(text.slice(emitted, safe), token);
      emitted = safe;
    }
    if (pos >= ctx) {
      stopReason = 'context';
      break;
    }
    if (tokens.length === req.maxTokens) break;
    model.embed(token);
    model.forwardLayers(pos++, cache);
    logits = model.head();
    // Let a caller's abort or a streaming consumer run between tokens.
    if (req.signal) await new Promise((r) => setImmediate(r));
  }
  if (stopReason !== 'stop') text += decoder.flush();
  if (text.length > emitted) onText?.(text.slice(emitted), tokens[tokens.length - 1] ?? -1);
  const t2 = performance.now();

  const promptMs = t1 - t0;
  const decodeMs = t2 - t1;
  return {
    text,
    tokens,
    stopReason,
    timings: {
      prompt_tokens: req.prompt.length,
      prompt_ms: round(promptMs),
      prompt_tps: round(req.prompt.length / (promptMs / 1000)),
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
