// A streaming OpenAI-API client that keeps what a load test or a benchmark needs: each content
// chunk with its arrival time, the final chunk's finish reason and `herd` extension, the usage
// chunk, whether `data: [DONE]` came, and any error event. Used by test/api-load.test.ts,
// test/api-cluster-batching.test.ts and scripts/bench-serve.ts.

export type Endpoint = 'completions' | 'chat';

export interface StreamedChunk {
  readonly text: string;
  /** performance.now() when the chunk was parsed. */
  readonly at: number;
}

export interface StreamResult {
  readonly status: number;
  /** performance.now() just before the request was sent. */
  readonly sentAt: number;
  /** Chunks that carried text (chat: delta.content, completions: text), in order. */
  readonly chunks: StreamedChunk[];
  readonly finish: string | null;
  readonly usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  /** herd's extension on the final chunk: the generated token ids among others. */
  readonly herd?: { tokens: number[]; stop_reason: string };
  readonly done: boolean;
  /** The error object of an error event, or the body of a non-200 answer. */
  readonly error?: unknown;
  /** Response headers (a refused request's Retry-After, for one). */
  readonly headers: Headers;
}

interface Choice {
  text?: string;
  delta?: { content?: string };
  finish_reason?: string | null;
}

interface Event {
  choices?: Choice[];
  usage?: StreamResult['usage'];
  herd?: StreamResult['herd'];
  error?: unknown;
}

/**
 * POSTs `body` with `stream: true` to /v1/{chat/,}completions and reads the stream to its end;
 * `onChunk` hears the text chunks so far each time one arrives.
 */
export async function streamRequest(
  baseUrl: string,
  endpoint: Endpoint,
  body: Record<string, unknown>,
  signal?: AbortSignal,
  onChunk?: (chunks: readonly StreamedChunk[]) => void,
): Promise<StreamResult> {
  const path = endpoint === 'chat' ? '/v1/chat/completions' : '/v1/completions';
  const sentAt = performance.now();
  const r = await fetch(`${baseUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (r.status !== 200 || !r.body) {
    const text = await r.text();
    let error: unknown = text;
    try {
      error = (JSON.parse(text) as Event).error ?? text;
    } catch {
      // not JSON: keep the text
    }
    return { status: r.status, sentAt, chunks: [], finish: null, done: false, error, headers: r.headers };
  }
  const chunks: StreamedChunk[] = [];
  let finish: string | null = null;
  let usage: StreamResult['usage'];
  let herd: StreamResult['herd'];
  let done = false;
  let error: unknown;
  let buf = '';
  const decoder = new TextDecoder();
  for await (const bytes of r.body) {
    buf += decoder.decode(bytes as Uint8Array, { stream: true });
    let end: number;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const data = buf.slice(0, end).replace(/^data: /, '');
      buf = buf.slice(end + 2);
      if (data === '[DONE]') {
        done = true;
        continue;
      }
      const e = JSON.parse(data) as Event;
      if (e.error !== undefined) error = e.error;
      if (e.usage) usage = e.usage;
      if (e.herd) herd = e.herd;
      const c = e.choices?.[0];
      if (!c) continue;
      finish = c.finish_reason ?? finish;
      const text = endpoint === 'chat' ? c.delta?.content : c.text;
      if (!text) continue;
      chunks.push({ text, at: performance.now() });
      onChunk?.(chunks);
    }
  }
  return { status: r.status, sentAt, chunks, finish, usage, herd, done, error, headers: r.headers };
}

/** Time to the first text, ms (undefined without any). */
export function ttftMs(r: StreamResult): number | undefined {
  return r.chunks.length > 0 ? r.chunks[0].at - r.sentAt : undefined;
}

/** Gaps between consecutive text chunks, ms. */
export function interChunkMs(r: StreamResult): number[] {
  return r.chunks.slice(1).map((c, i) => c.at - r.chunks[i].at);
}

/** The q-quantile (0..1) of the values, nearest rank; NaN for none. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}
