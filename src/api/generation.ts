// One request's generation on a ModelHost: check the prompt fits, wait fairly for a session
// (or take a kept one holding a prefix of the prompt), run the engine's loop with the request's
// AbortSignal from where the session's tokens and the prompt part, always end the lease
// (keeping the session for the next request when it finished cleanly), and count what happened
// for the metrics. Shared by the HTTP handlers and `herd chat`.

import { checkPromptFits, generate, type GenerateResult } from '../engine/generate.ts';
import type { SamplingOptions, TokenLogprobs } from '../engine/sampler.ts';
import type { ModelHost } from './host.ts';
import type { ApiMetrics } from './metrics.ts';

export interface GenerationJob {
  readonly prompt: readonly number[];
  /** Default: until the context is full. */
  readonly maxTokens?: number;
  /** Stop strings (for chat, the caller adds the template's end-of-turn text). */
  readonly stop: readonly string[];
  readonly sampling: SamplingOptions;
  /**
   * Reuse a kept session's KV caches for a common prompt prefix, and keep this one's for the
   * next request (llama.cpp's cache_prompt; default true).
   */
  readonly cachePrompt?: boolean;
  /** The client (an API key's label, an address): kept sessions are reused by their owner only. */
  readonly owner?: string;
  readonly signal?: AbortSignal;
  /** Label of the metrics: chat, completions or grpc. */
  readonly endpoint: string;
  /**
   * Hears each generated token id as it is sampled (before its text may be held back), with its
   * log-probabilities when `sampling.logprobs` asks for them.
   */
  readonly onToken?: (id: number, logprobs: TokenLogprobs | undefined) => void;
}

export type FinishReason = 'stop' | 'length';

export interface GenerationOutcome extends GenerateResult {
  /** OpenAI's finish_reason: stop (EOS, end of turn or a stop string) or length (max_tokens or context). */
  readonly finishReason: FinishReason;
  /** From the job's start (queue wait included) to the first token, ms; undefined without tokens. */
  readonly ttftMs: number | undefined;
  readonly totalMs: number;
}

export async function runGeneration(
  host: ModelHost,
  metrics: ApiMetrics | undefined,
  job: GenerationJob,
  onText?: (text: string) => void,
  /** Called once the request holds a session, before the first step. */
  onStart?: () => void,
): Promise<GenerationOutcome> {
  const t0 = performance.now();
  checkPromptFits(job.prompt.length, host.ctx);
  const maxTokens = job.maxTokens ?? host.ctx - job.prompt.length;
  let first: number | undefined;
  const onToken = (id: number, logprobs: TokenLogprobs | undefined) => {
    job.onToken?.(id, logprobs);
    if (first === undefined) {
      first = performance.now();
      metrics?.ttft.observe((first - t0) / 1000);
    }
    metrics?.addTokens(1);
  };
  let result: GenerateResult;
  try {
    const cache = job.cachePrompt !== false;
    const lease = await host.lease(job.sampling, job.signal, cache ? job.prompt : undefined, job.owner);
    let keep = false;
    try {
      metrics?.promptTokens.inc(job.prompt.length);
      onStart?.();
      result = await generate(
        lease.session,
        host.tokenizer,
        { prompt: job.prompt, cached: lease.cached, maxTokens, stop: job.stop, signal: job.signal, onToken },
        onText && ((text) => onText(text)),
      );
      metrics?.promptTokensReused.inc(result.timings.prompt_cached);
      // Ended between steps (a stop, the limit, a cancel): the session holds what it says.
      keep = cache;
    } finally {
      await lease.close(keep);
    }
  } catch (e) {
    const cancelled = job.signal?.aborted === true;
    metrics?.generations.inc({ endpoint: job.endpoint, outcome: cancelled ? 'cancelled' : 'error' });
    throw host.clusterFailure(e);
  }
  const totalMs = performance.now() - t0;
  const aborted = result.stopReason === 'aborted';
  const finishReason: FinishReason =
    result.stopReason === 'length' || result.stopReason === 'context' ? 'length' : 'stop';
  metrics?.generations.inc({ endpoint: job.endpoint, outcome: aborted ? 'cancelled' : finishReason });
  if (!aborted) metrics?.latency.observe({ endpoint: job.endpoint }, totalMs / 1000);
  return { ...result, finishReason, ttftMs: first === undefined ? undefined : first - t0, totalMs };
}
