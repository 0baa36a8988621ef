// The CLI as a LAN client of `herd serve`: `herd run --server` and `herd chat --server` post to
// its OpenAI-compatible API and read the SSE stream; `--server auto` finds it over mDNS.

import type { SamplingOptions, TokenLogprobs } from '../engine/sampler.ts';
import type { ChatMessage } from '../tokenizer/chat-template.ts';
import { UsageError } from './errors.ts';

/** An error the server answered with (OpenAI error object), or no answer at all. */
export class ServerError extends Error {
  constructor(
    message: string,
    readonly status?: number,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'ServerError';
  }
}

export interface ServerTarget {
  /** Base URL, without /v1. */
  readonly url: string;
  readonly apiKey?: string;
}

/** A URL (`http://host:port`, or just `host:port`), or `auto` to browse `_herd-api._tcp`. */
export async function resolveServer(
  spec: string,
  o: { timeoutMs: number; interface?: string; note: (line: string) => void },
): Promise<string> {
  const s = spec.trim();
  if (s === 'auto') {
    const { findApiServer } = await import('../api/advertise.ts');
    const found = await findApiServer({ timeoutMs: o.timeoutMs, interface: o.interface });
    if (!found)
      throw new UsageError(
        `no herd serve answered over mDNS (_herd-api._tcp) in ${o.timeoutMs / 1000} s: give --server URL`,
      );
    o.note(`using ${found.name} at ${found.url} (${found.model})`);
    return found.url;
  }
  const url = /^[a-z][a-z0-9+.-]*:\/\//i.test(s) ? s : `http://${s}`;
  try {
    const u = new URL(url);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('not http');
    return u.href.replace(/\/+$/, '').replace(/\/v1$/, '');
  } catch {
    throw new UsageError(`--server must be a URL like http://host:8080 or auto, got "${spec}"`);
  }
}

/** The request fields that carry sampling, in the API's names (llama.cpp's for the extensions). */
export function samplingFields(s: SamplingOptions): Record<string, number> {
  return {
    temperature: s.temperature,
    top_p: s.topP,
    top_k: s.topK,
    min_p: s.minP,
    repeat_penalty: s.repeatPenalty,
    frequency_penalty: s.frequencyPenalty,
    presence_penalty: s.presencePenalty,
    seed: s.seed,
  };
}

/** herd's extension on the last chunk of a stream (see src/api/server.ts). */
export interface HerdExtension {
  tokens: number[];
  prompt_tokens: number[];
  stop_reason: string;
  seed: number;
  /** When the request asked for logprobs: one per token, with token ids. */
  logprobs?: TokenLogprobs[];
  timings: Record<string, number>;
  ttft_ms: number | null;
  plan: unknown[];
  /** In-process only: the server's kernels. */
  backend?: string;
  isa?: string;
  threads?: number;
  /** In-process only: the server's peak resident memory. */
  peak_rss_mib?: number;
}

export interface StreamResult {
  text: string;
  finishReason: string | null;
  herd?: HerdExtension;
}

/**
 * POSTs `body` with stream: true to `path` and calls onText with each piece of text as it
 * arrives. Aborting `signal` closes the connection, which cancels the generation on the server.
 */
export async function postStream(
  target: ServerTarget,
  path: '/v1/completions' | '/v1/chat/completions',
  body: Record<string, unknown>,
  onText: (text: string) => void,
  signal?: AbortSignal,
): Promise<StreamResult> {
  const headers: Record<string, string> = { 'content-type': 'application/json', accept: 'text/event-stream' };
  if (target.apiKey) headers.authorization = `Bearer ${target.apiKey}`;
  let res: Response;
  try {
    res = await fetch(`${target.url}${path}`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ ...body, stream: true }),
      signal,
    });
  } catch (e) {
    if (signal?.aborted) return { text: '', finishReason: null };
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    throw new ServerError(`cannot reach ${target.url}: ${cause?.code ?? cause?.message ?? (e as Error).message}`);
  }
  if (!res.ok || !res.body) throw await errorOf(res);
  const result: StreamResult = { text: '', finishReason: null };
  const chat = path === '/v1/chat/completions';
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for await (const bytes of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(bytes, { stream: true });
      let end: number;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const event = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = event
          .split('\n')
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).trimStart())
          .join('\n');
        if (data === '') continue;
        if (data === '[DONE]') return result;
        const chunk = JSON.parse(data) as {
          error?: { message: string; code?: string };
          choices?: { text?: string; delta?: { content?: string }; finish_reason?: string | null }[];
          herd?: HerdExtension;
        };
        if (chunk.error) throw new ServerError(`server: ${chunk.error.message}`, undefined, chunk.error.code);
        const c = chunk.choices?.[0];
        const text = chat ? c?.delta?.content : c?.text;
        if (text) {
          result.text += text;
          onText(text);
        }
        if (c?.finish_reason) result.finishReason = c.finish_reason;
        if (chunk.herd) result.herd = chunk.herd;
      }
    }
  } catch (e) {
    if (signal?.aborted) return result;
    throw e;
  }
  if (signal?.aborted) return result;
  throw new ServerError(`the server at ${target.url} ended the stream early`);
}

async function errorOf(res: Response): Promise<ServerError> {
  let message = `${res.status} ${res.statusText}`;
  let code: string | undefined;
  try {
    const j = (await res.json()) as { error?: { message?: string; code?: string } };
    if (j.error?.message) message = `${j.error.message} (${res.status})`;
    code = j.error?.code;
  } catch {
    // not JSON: keep the status line
  }
  return new ServerError(`server: ${message}`, res.status, code);
}

export interface RemoteRunOptions {
  readonly server: string;
  readonly apiKey?: string;
  readonly prompt: string;
  readonly model?: string;
  readonly maxTokens: number;
  readonly sampling: SamplingOptions;
  readonly stop: string[];
  readonly json: boolean;
  readonly discoveryTimeoutMs: number;
  readonly interface?: string;
}

/** `herd run --server`: the same stdout, stderr and --json shape as a local run. */
export async function runOnServer(o: RemoteRunOptions): Promise<void> {
  const note = (line: string) => process.stderr.write(`herd: ${line}\n`);
  const url = await resolveServer(o.server, { timeoutMs: o.discoveryTimeoutMs, interface: o.interface, note });
  const target: ServerTarget = { url, apiKey: o.apiKey ?? process.env.HERD_API_KEY };
  const t0 = performance.now();
  const body: Record<string, unknown> = {
    prompt: o.prompt,
    max_tokens: o.maxTokens,
    stop: o.stop,
    ...samplingFields(o.sampling),
    ...(o.sampling.logprobs !== undefined ? { logprobs: o.sampling.logprobs } : {}),
    ...(o.model ? { model: o.model.replace(/^.*[\\/]/, '').replace(/\.gguf$/i, '') } : {}),
  };
  // Ctrl-C closes the connection: the server cancels the generation and frees its session.
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  const r = await postStream(
    target,
    '/v1/completions',
    body,
    o.json ? () => {} : (text) => process.stdout.write(text),
    ac.signal,
  );
  if (ac.signal.aborted) {
    process.stdout.write('\n');
    process.exit(130);
  }
  const h = r.herd;
  if (!h) throw new ServerError(`the server at ${url} is not a herd server (no herd fields in its answer)`);
  if (o.json) {
    process.stdout.write(
      `${JSON.stringify({
        text: r.text,
        tokens: h.tokens,
        prompt_tokens: h.prompt_tokens,
        stop_reason: h.stop_reason,
        seed: h.seed,
        ...(o.sampling.logprobs !== undefined ? { logprobs: h.logprobs ?? [] } : {}),
        timings: h.timings,
        plan: h.plan,
        ...(h.backend ? { backend: h.backend, isa: h.isa, threads: h.threads, peak_rss_mib: h.peak_rss_mib } : {}),
        server: url,
      })}\n`,
    );
    return;
  }
  process.stdout.write('\n');
  const t = h.timings;
  process.stderr.write(
    `herd: server ${url}, ${(performance.now() - t0).toFixed(0)} ms | prompt ${t.prompt_tokens} tokens, ${t.prompt_ms} ms (${t.prompt_tps} tok/s)` +
      ` | decode ${t.decode_tokens} tokens, ${t.decode_ms} ms (${t.decode_tps} tok/s) | stop: ${h.stop_reason} | seed ${h.seed}\n`,
  );
}

/** `herd chat --server`: one streamed reply to the conversation so far. */
export function chatOnServer(
  target: ServerTarget,
  messages: readonly ChatMessage[],
  params: { maxTokens?: number; sampling: SamplingOptions; model?: string },
  onText: (text: string) => void,
  signal: AbortSignal,
): Promise<StreamResult> {
  return postStream(
    target,
    '/v1/chat/completions',
    {
      messages,
      ...(params.maxTokens !== undefined ? { max_tokens: params.maxTokens } : {}),
      ...samplingFields(params.sampling),
      ...(params.model ? { model: params.model } : {}),
    },
    onText,
    signal,
  );
}
