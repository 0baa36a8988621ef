// The OpenAI-compatible HTTP surface of `herd serve`, on node:http (a handful of routes, SSE
// and per-request cancellation need nothing more): /v1/chat/completions, /v1/completions,
// /v1/models, /health, /metrics, the dashboard at / and its JSON at /api/state. Errors become
// OpenAI error objects here and nowhere else.
//
// Facing a LAN of phones, guests and the web pages its users visit: with an API key, everything
// but /health and the dashboard's static files needs it; no other web origin gets a CORS grant
// unless --cors names it, and a POST must say it is JSON (a cross-site form or text/plain post,
// which a browser sends without asking, is refused before its body is read); a request has
// --request-timeout seconds to arrive (its answer, a stream of minutes, is not bounded); and
// the line of requests waiting for a session is capped (429 with Retry-After).

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { TokenLogprobs } from '../engine/sampler.ts';
import { ApiKeys } from './api-keys.ts';
import { CorsPolicy } from './cors.ts';
import {
  ApiError,
  badRequest,
  modelNotFound,
  notFound,
  toApiError,
  unavailable,
  unsupportedMediaType,
} from './errors.ts';
import { runGeneration, type GenerationOutcome } from './generation.ts';
import { chatLogprobs, CompletionLogprobsWriter } from './logprobs.ts';
import { ModelHost, type HostOptions } from './host.ts';
import { ApiMetrics } from './metrics.ts';
import { AbortedError } from './queue.ts';
import { parseChatRequest, parseCompletionRequest, type GenerationParams } from './requests.ts';

const MAX_BODY_BYTES = 4 * 1024 * 1024;

export interface ServerOptions {
  /** The model to serve: the server opens the host with its metrics as the observers. */
  readonly host: HostOptions;
  /**
   * Bearer keys: each /v1, /metrics and /api/state request must carry one; each is a client of
   * its own for prompt reuse. None (or empty) leaves the API open.
   */
  readonly apiKeys?: readonly string[];
  /** Web origins granted cross-origin access (`*`: any); none by default. */
  readonly cors?: readonly string[];
  /** Seconds a request's headers and body may take to arrive (default 30; headers at most 10). */
  readonly requestTimeoutSeconds?: number;
  readonly log: Logger;
  readonly version: string;
}

export const DEFAULT_REQUEST_TIMEOUT_S = 30;
const MAX_HEADERS_TIMEOUT_S = 10;

/** Static files of the dashboard: no build step, read once. */
const dashboardDir = new URL('./dashboard/', import.meta.url);
const STATIC: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/dashboard.js': { file: 'dashboard.js', type: 'text/javascript; charset=utf-8' },
  '/dashboard.css': { file: 'dashboard.css', type: 'text/css; charset=utf-8' },
};

/** Route labels for the metrics: known routes by name, everything else as one label. */
const ROUTES = new Set([
  '/',
  '/health',
  '/metrics',
  '/api/state',
  '/v1/models',
  '/v1/chat/completions',
  '/v1/completions',
  '/dashboard.js',
  '/dashboard.css',
]);

export class ApiServer {
  readonly host: ModelHost;
  readonly metrics: ApiMetrics;
  private readonly http: Server;
  private readonly inflight = new Set<AbortController>();
  /** The bearer keys, which gRPC Generate checks too (herd serve hands them to GrpcApi). */
  readonly keys: ApiKeys;
  private readonly cors: CorsPolicy;
  private readonly started = performance.now();
  private readonly fingerprint: string;
  private readonly files = new Map<string, Buffer>();

  constructor(private readonly o: ServerOptions) {
    const host = ModelHost.open({
      ...o.host,
      onStep: (step) => this.metrics.observeStep(step),
      onRecovery: (e) => this.metrics.observeRecovery(e),
    });
    this.host = host;
    this.metrics = new ApiMetrics({
      queueDepth: () => host.slots.waiting,
      sessionsActive: () => host.activeSessions,
      sessionsIdle: () => host.idleSessions,
      slots: host.slots.size,
      ready: () => host.status === 'ready',
    });
    this.keys = new ApiKeys(o.apiKeys ?? []);
    this.cors = new CorsPolicy(o.cors ?? []);
    this.fingerprint = `herd-${o.version}`;
    for (const { file } of Object.values(STATIC)) this.files.set(file, readFileSync(new URL(file, dashboardDir)));
    // Node's requestTimeout bounds receiving a request (headers and body) only, not the answer:
    // a generation streams for minutes (test/api-security.test.ts holds it to that). Node
    // checks the timeouts every connectionsCheckingInterval, then answers 408 and closes.
    const requestMs = (o.requestTimeoutSeconds ?? DEFAULT_REQUEST_TIMEOUT_S) * 1000;
    this.http = createServer(
      {
        requestTimeout: requestMs,
        headersTimeout: Math.min(requestMs, MAX_HEADERS_TIMEOUT_S * 1000),
        connectionsCheckingInterval: Math.min(1000, requestMs),
      },
      (req, res) => void this.handle(req, res),
    );
  }

  /** Listens; resolves with the bound address (port 0 picks a free port). */
  listen(host: string, port: number): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(port, host, () => {
        this.http.off('error', reject);
        resolve(this.http.address() as AddressInfo);
      });
    });
  }

  /** Stops listening, cancels every generation in flight and closes the connections. */
  async close(): Promise<void> {
    for (const c of this.inflight) c.abort();
    await new Promise<void>((resolve) => {
      this.http.close(() => resolve());
      this.http.closeIdleConnections();
      setTimeout(() => this.http.closeAllConnections(), 1000).unref();
    });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://herd');
    const path = url.pathname.length > 1 ? url.pathname.replace(/\/+$/, '') : url.pathname;
    const route = ROUTES.has(path) ? path : path.startsWith('/v1/models/') ? '/v1/models/:id' : 'other';
    res.on('finish', () => this.metrics.httpRequests.inc({ route, status: String(res.statusCode) }));
    for (const [k, v] of Object.entries(this.cors.grant(req.headers.origin))) res.setHeader(k, v);
    try {
      if (req.method === 'OPTIONS') return this.cors.preflight(req, res);
      const get = req.method === 'GET' || req.method === 'HEAD';
      const guarded = path.startsWith('/v1/') || path === '/metrics' || path === '/api/state';
      // The client, for prompt reuse: its key, else (an open API) its address.
      const owner = guarded && this.keys.required ? this.keys.identify(req.headers.authorization) : clientAddress(req);
      if (get && STATIC[path]) return this.sendStatic(res, STATIC[path]);
      if (get && path === '/health') return this.health(res);
      if (get && path === '/metrics') return await this.sendMetrics(res);
      if (get && path === '/api/state') return sendJson(res, 200, await this.state());
      if (get && path === '/v1/models') return sendJson(res, 200, { object: 'list', data: [this.modelObject()] });
      if (get && path.startsWith('/v1/models/')) {
        const id = decodeURIComponent(path.slice('/v1/models/'.length));
        if (!this.servesModel(id)) throw modelNotFound(id, this.host.modelId);
        return sendJson(res, 200, this.modelObject());
      }
      if (req.method === 'POST' && path === '/v1/chat/completions') return await this.chat(req, res, owner);
      if (req.method === 'POST' && path === '/v1/completions') return await this.completions(req, res, owner);
      const known = ROUTES.has(path) || path.startsWith('/v1/models/');
      if (known)
        throw new ApiError(
          405,
          'invalid_request_error',
          'method_not_allowed',
          `${req.method} is not allowed on ${path}`,
        );
      throw notFound(`no route ${req.method} ${path}`);
    } catch (e) {
      this.fail(res, e);
    }
  }

  private fail(res: ServerResponse, e: unknown): void {
    if (e instanceof AbortedError || res.destroyed) return;
    const err = toApiError(e);
    if (err.status === 500)
      this.o.log.error({ error: (e as Error).message, stack: (e as Error).stack }, 'request.error');
    else if (err.status >= 500)
      this.o.log.warn({ status: err.status, code: err.code, error: err.message }, 'request.unavailable');
    else this.o.log.debug({ status: err.status, code: err.code, error: err.message }, 'request.refused');
    if (res.headersSent) {
      // Mid-stream: the status is gone, so the error travels as an event, then the stream ends.
      res.end(`data: ${JSON.stringify(err.body())}\n\n`);
      return;
    }
    sendJson(res, err.status, err.body(), err.headers);
  }

  private servesModel(id: string): boolean {
    const own = this.host.modelId;
    return id === own || id === `${own}.gguf`;
  }

  private checkModel(p: GenerationParams): void {
    if (p.model !== undefined && p.model !== '' && !this.servesModel(p.model))
      throw modelNotFound(p.model, this.host.modelId);
  }

  private modelObject(): object {
    const h = this.host;
    return {
      id: h.modelId,
      object: 'model',
      created: h.created,
      owned_by: 'herd',
      herd: {
        path: h.file.path,
        architecture: h.config.arch,
        layers: h.config.nLayers,
        context: h.ctx,
        chat_template: h.template.name,
      },
    };
  }

  private sendStatic(res: ServerResponse, s: { file: string; type: string }): void {
    const body = this.files.get(s.file) as Buffer;
    res.writeHead(200, { 'Content-Type': s.type, 'Content-Length': body.length, 'Cache-Control': 'no-cache' });
    res.end(body);
  }

  private health(res: ServerResponse): void {
    const h = this.host;
    const body = {
      status: h.status === 'ready' ? 'ok' : h.status,
      model: h.modelId,
      mode: h.mode ?? null,
      sessions: { active: h.activeSessions, idle: h.idleSessions, queued: h.slots.waiting, slots: h.slots.size },
      ...(h.error ? { error: h.error } : {}),
    };
    sendJson(res, h.status === 'ready' ? 200 : 503, body);
  }

  private async sendMetrics(res: ServerResponse): Promise<void> {
    const text = await this.metrics.text();
    res.writeHead(200, { 'Content-Type': this.metrics.contentType });
    res.end(text);
  }

  /** What the dashboard draws. */
  async state(): Promise<object> {
    const h = this.host;
    const value = async (c: { get(): Promise<{ values: { value: number }[] }> }) =>
      (await c.get()).values.reduce((s, v) => s + v.value, 0);
    return {
      version: this.o.version,
      status: h.status,
      error: h.error ?? null,
      mode: h.mode ?? null,
      model: {
        id: h.modelId,
        path: h.file.path,
        architecture: h.config.arch,
        layers: h.config.nLayers,
        context: h.ctx,
        bytes: h.file.fileSize,
        chat_template: h.template.name,
      },
      nodes: (await h.nodes()).map((n) => ({ ...n, stageMs: this.metrics.recentStage(n.address) })),
      plan_reason: h.planReason ?? null,
      sessions: { active: h.activeSessions, idle: h.idleSessions, queued: h.slots.waiting, slots: h.slots.size },
      tokens_per_second: this.metrics.tokensPerSecond(),
      tokens_generated: await value(this.metrics.generatedTokens),
      prompt_tokens: await value(this.metrics.promptTokens),
      prompt_tokens_reused: await value(this.metrics.promptTokensReused),
      uptime_s: Math.round((performance.now() - this.started) / 1000),
    };
  }

  /** The request's AbortController: aborted when the client goes away or the server closes. */
  private track(res: ServerResponse): AbortController {
    const ac = new AbortController();
    this.inflight.add(ac);
    res.on('close', () => {
      this.inflight.delete(ac);
      if (!res.writableFinished) ac.abort();
    });
    return ac;
  }

  /**
   * What a chat or completions request sets up before generating: its id, the fields every
   * answer and chunk repeat, its AbortController, the event stream when one was asked for, and
   * the log-probabilities waiting for the next chunk (each chunk carries those of the tokens
   * since the previous one).
   */
  private begin(res: ServerResponse, r: GenerationParams, idPrefix: string) {
    const id = `${idPrefix}-${randomBytes(12).toString('base64url')}`;
    const created = Math.floor(Date.now() / 1000);
    return {
      id,
      head: { id, created, model: this.host.modelId, system_fingerprint: this.fingerprint },
      ac: this.track(res),
      stream: r.stream ? new EventStream(res) : undefined,
      wantLogprobs: r.sampling.logprobs !== undefined,
      pending: new PendingLogprobs(),
    };
  }

  private async chat(req: IncomingMessage, res: ServerResponse, owner: string): Promise<void> {
    const h = this.host;
    const r = parseChatRequest(await readJson(req));
    this.checkModel(r);
    const prompt = h.template.render(r.messages).ids;
    const { id, head, ac, stream, wantLogprobs, pending } = this.begin(res, r, 'chatcmpl');
    const chunk = (delta: object, finish: string | null, extra: object = {}) => {
      const lp = pending.take();
      return {
        ...head,
        object: 'chat.completion.chunk',
        choices: [
          { index: 0, delta, logprobs: lp.length > 0 ? chatLogprobs(h.tokenizer, lp) : null, finish_reason: finish },
        ],
        ...extra,
      };
    };
    const out = await runGeneration(
      h,
      this.metrics,
      {
        prompt,
        maxTokens: r.maxTokens,
        stop: [...r.stop, ...h.template.stops],
        sampling: r.sampling,
        cachePrompt: r.cachePrompt,
        owner,
        signal: ac.signal,
        endpoint: 'chat',
        onToken: stream && wantLogprobs ? (_id, lp) => pending.add(lp) : undefined,
      },
      stream && ((text) => stream.send(chunk({ content: text }, null))),
      stream && (() => stream.send(chunk({ role: 'assistant', content: '' }, null))),
    );
    this.logDone(id, 'chat', prompt.length, out, ac.signal.aborted);
    if (ac.signal.aborted) return this.endAborted(res);
    const usage = usageOf(prompt.length, out);
    const herd = this.extension(prompt, r, out);
    if (stream) {
      stream.send(chunk({}, out.finishReason, { herd }));
      if (r.includeUsage) stream.send({ ...head, object: 'chat.completion.chunk', choices: [], usage });
      stream.done();
      return;
    }
    sendJson(res, 200, {
      ...head,
      object: 'chat.completion',
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content: out.text },
          logprobs: wantLogprobs ? chatLogprobs(h.tokenizer, out.logprobs) : null,
          finish_reason: out.finishReason,
        },
      ],
      usage,
      herd,
    });
  }

  private async completions(req: IncomingMessage, res: ServerResponse, owner: string): Promise<void> {
    const h = this.host;
    const r = parseCompletionRequest(await readJson(req), h.tokenizer.vocabSize);
    this.checkModel(r);
    // As `herd run`: the text with the vocabulary's BOS, control-token text left as text.
    const prompt = typeof r.prompt === 'string' ? h.tokenizer.encode(r.prompt) : r.prompt;
    const echoText = r.echo ? (typeof r.prompt === 'string' ? r.prompt : h.tokenizer.decode(r.prompt)) : '';
    const { id, head, ac, stream, wantLogprobs, pending } = this.begin(res, r, 'cmpl');
    const writer = new CompletionLogprobsWriter(h.tokenizer);
    const chunk = (text: string, finish: string | null, extra: object = {}) => {
      const lp = pending.take();
      return {
        ...head,
        object: 'text_completion',
        choices: [{ index: 0, text, logprobs: lp.length > 0 ? writer.next(lp) : null, finish_reason: finish }],
        ...extra,
      };
    };
    const out = await runGeneration(
      h,
      this.metrics,
      // OpenAI's completions default to 16 tokens.
      {
        prompt,
        maxTokens: r.maxTokens ?? 16,
        stop: r.stop,
        sampling: r.sampling,
        cachePrompt: r.cachePrompt,
        owner,
        signal: ac.signal,
        endpoint: 'completions',
        onToken: stream && wantLogprobs ? (_id, lp) => pending.add(lp) : undefined,
      },
      stream && ((text) => stream.send(chunk(text, null))),
      stream && (() => echoText && stream.send(chunk(echoText, null))),
    );
    this.logDone(id, 'completions', prompt.length, out, ac.signal.aborted);
    if (ac.signal.aborted) return this.endAborted(res);
    const usage = usageOf(prompt.length, out);
    const herd = this.extension(prompt, r, out);
    if (stream) {
      stream.send(chunk('', out.finishReason, { herd }));
      if (r.includeUsage) stream.send({ ...head, object: 'text_completion', choices: [], usage });
      stream.done();
      return;
    }
    const logprobs = wantLogprobs ? writer.next(out.logprobs) : null;
    sendJson(res, 200, {
      ...head,
      object: 'text_completion',
      choices: [{ index: 0, text: echoText + out.text, logprobs, finish_reason: out.finishReason }],
      usage,
      herd,
    });
  }

  /** A generation cut short: by the client (nothing to say) or by the server closing. */
  private endAborted(res: ServerResponse): void {
    if (res.destroyed || res.writableEnded) return;
    this.fail(res, unavailable('the server is shutting down', 'shutting_down'));
  }

  /** herd's own fields beside OpenAI's: what `herd run --json` prints (clients ignore them). */
  private extension(prompt: readonly number[], r: GenerationParams, out: GenerationOutcome): object {
    return {
      tokens: out.tokens,
      prompt_tokens: prompt,
      stop_reason: out.stopReason,
      seed: r.sampling.seed,
      // Token ids, as `herd run --json --logprobs` prints them.
      ...(r.sampling.logprobs !== undefined ? { logprobs: out.logprobs } : {}),
      timings: out.timings,
      ttft_ms: out.ttftMs === undefined ? null : Math.round(out.ttftMs * 100) / 100,
      plan: this.host.plan,
      ...(this.host.mode === 'local' && this.host.o.backend
        ? {
            backend: this.host.o.backend.name,
            isa: this.host.o.backend.isa,
            threads: this.host.o.backend.threads,
            peak_rss_mib: Math.round(process.resourceUsage().maxRSS / 1024),
          }
        : {}),
    };
  }

  private logDone(
    id: string,
    endpoint: string,
    promptTokens: number,
    out: GenerationOutcome,
    cancelled: boolean,
  ): void {
    this.o.log.info(
      {
        id,
        endpoint,
        promptTokens,
        promptReused: out.timings.prompt_cached,
        completionTokens: out.tokens.length,
        finish: cancelled ? 'cancelled' : out.finishReason,
        ttftMs: out.ttftMs === undefined ? null : Math.round(out.ttftMs),
        ms: Math.round(out.totalMs),
      },
      cancelled ? 'request.cancelled' : 'request.done',
    );
  }
}

/** A stream's log-probabilities not yet sent: the tokens since the last chunk. */
class PendingLogprobs {
  private entries: TokenLogprobs[] = [];

  add(lp: TokenLogprobs | undefined): void {
    if (lp) this.entries.push(lp);
  }

  take(): TokenLogprobs[] {
    const out = this.entries;
    this.entries = [];
    return out;
  }
}

/** Server-sent events: headers go out when the first event does (after the queue wait). */
class EventStream {
  constructor(private readonly res: ServerResponse) {}

  send(event: object): void {
    if (!this.res.headersSent) {
      this.res.writeHead(200, {
        'Content-Type': 'text/event-stream; charset=utf-8',
        'Cache-Control': 'no-cache',
        Connection: 'keep-alive',
        'X-Accel-Buffering': 'no',
      });
    }
    if (!this.res.writableEnded) this.res.write(`data: ${JSON.stringify(event)}\n\n`);
  }

  done(): void {
    if (!this.res.writableEnded) this.res.end('data: [DONE]\n\n');
  }
}

function usageOf(promptTokens: number, out: GenerationOutcome): object {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: out.tokens.length,
    total_tokens: promptTokens + out.tokens.length,
    // OpenAI's prompt caching field: prompt tokens a kept session already held.
    prompt_tokens_details: { cached_tokens: out.timings.prompt_cached },
  };
}

/** An open API's client identity: the address it connects from. */
function clientAddress(req: IncomingMessage): string {
  return `addr-${req.socket.remoteAddress ?? 'unknown'}`;
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

/** The body of a POST, which must say it is JSON: 415 before a byte of it is read otherwise. */
async function readJson(req: IncomingMessage): Promise<unknown> {
  const type = req.headers['content-type'];
  if (type?.split(';')[0].trim().toLowerCase() !== 'application/json') throw unsupportedMediaType(type);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY_BYTES)
      throw new ApiError(
        413,
        'invalid_request_error',
        'request_too_large',
        `the request body exceeds ${MAX_BODY_BYTES} bytes`,
      );
    chunks.push(c as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') throw badRequest('the request body is empty: send a JSON object', null, 'invalid_json');
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw badRequest(`the request body is not valid JSON: ${(e as Error).message}`, null, 'invalid_json');
  }
}
