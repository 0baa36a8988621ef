// Generation for gRPC clients: `herd serve --grpc-port P` serves HerdCoordinator's Challenge and
// Generate on the same ModelHost as the HTTP API — the same fair slots, sessions and metrics.
// A Generate call streams each decoded piece of text with its token ids (and their
// log-probabilities when the request's sampling sets `logprobs`), then one `done` event;
// cancelling the call aborts the generation and frees its session. With a cluster key, Generate
// needs the challenge-response proof of src/cluster/auth.ts; with API keys (herd serve
// --api-key), also `authorization: Bearer KEY` metadata, as the HTTP API (UNAUTHENTICATED
// otherwise). A full wait line is RESOURCE_EXHAUSTED with the HTTP answer's retry-after.

import {
  Metadata,
  Server,
  status,
  type ServerErrorResponse,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
} from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { Authenticator, type ClusterKey } from '../cluster/auth.ts';
import { errorKind, type KindedError } from '../cluster/errors.ts';
import { bind, channelOptions, shutdown, toStatus } from '../cluster/rpc.ts';
import {
  HerdCoordinatorService,
  logprobsToWire,
  METHOD,
  samplingFromRequest,
  type GenerateEvent,
  type GenerateRequest,
  type ListNodesReply,
} from '../cluster/wire.ts';
import { defaultSampling, type SamplingOptions, type TokenLogprobs } from '../engine/sampler.ts';
import type { ApiKeys } from './api-keys.ts';
import { ApiError } from './errors.ts';
import { runGeneration } from './generation.ts';
import type { ModelHost } from './host.ts';
import type { ApiMetrics } from './metrics.ts';

const MAX_STOPS = 4;
const MAX_PROMPT_CHARS = 1 << 20;

/** A request the caller must fix: INVALID_ARGUMENT. */
class BadRequest extends Error implements KindedError {
  readonly kind = 'invalid';
}

export class GrpcApi {
  private readonly server = new Server(channelOptions);
  private readonly auth: Authenticator;
  private readonly calls = new Set<AbortController>();
  private ids = 0;

  constructor(
    private readonly host: ModelHost,
    private readonly metrics: ApiMetrics | undefined,
    key: ClusterKey | undefined,
    private readonly log: Logger,
    private readonly keys?: ApiKeys,
  ) {
    this.auth = new Authenticator(key, (r) => this.log.warn(r, 'auth.refused'));
    // FetchTensors and Deliver belong to `herd run`'s coordinator: grpc-js answers UNIMPLEMENTED.
    this.server.addService(HerdCoordinatorService, {
      challenge: this.auth.challenge,
      listNodes: (_call: ServerUnaryCall<unknown, ListNodesReply>, cb: sendUnaryData<ListNodesReply>) =>
        cb(null, { nodes: [] }),
      generate: (call: ServerWritableStream<GenerateRequest, GenerateEvent>) => void this.generate(call),
    });
  }

  /** Binds host:port (0: any free port) and returns the port. */
  listen(host: string, port: number): Promise<number> {
    return bind(this.server, host, port);
  }

  /** Cancels what is in flight and stops. */
  async close(): Promise<void> {
    for (const ac of this.calls) ac.abort();
    await shutdown(this.server, 2000);
  }

  private parse(r: GenerateRequest): {
    prompt: number[];
    maxTokens: number | undefined;
    sampling: SamplingOptions;
    stop: string[];
  } {
    if (r.prompt.length === 0) throw new BadRequest('prompt: must not be empty');
    if (r.prompt.length > MAX_PROMPT_CHARS) throw new BadRequest(`prompt: at most ${MAX_PROMPT_CHARS} characters`);
    if (r.stop.length > MAX_STOPS) throw new BadRequest(`stop: at most ${MAX_STOPS} strings, got ${r.stop.length}`);
    let sampling: SamplingOptions;
    try {
      sampling = r.sampling ? samplingFromRequest(r.sampling) : { ...defaultSampling };
    } catch (e) {
      throw new BadRequest(`sampling: ${(e as Error).message}`);
    }
    const prompt = this.host.tokenizer.encode(r.prompt);
    return { prompt, maxTokens: r.maxTokens === 0 ? undefined : r.maxTokens, sampling, stop: r.stop };
  }

  private async generate(call: ServerWritableStream<GenerateRequest, GenerateEvent>): Promise<void> {
    const peer = call.getPeer();
    const refused = this.auth.refuse(call, METHOD.generate);
    if (refused) {
      call.emit('error', refused);
      return;
    }
    const id = `grpc-${++this.ids}`;
    const ac = new AbortController();
    this.calls.add(ac);
    call.on('cancelled', () => ac.abort());
    let pending: number[] = [];
    let pendingLogprobs: TokenLogprobs[] = [];
    try {
      // As over HTTP: the API key's identity owns the kept session, else the peer's address.
      const owner = this.keys?.required
        ? this.keys.identify(String(call.metadata.get('authorization')[0] ?? ''))
        : `addr-${peer.replace(/^ipv[46]:/, '').replace(/:\d+$/, '')}`;
      const job = { ...this.parse(call.request), owner };
      this.log.debug({ id, peer, promptTokens: job.prompt.length, maxTokens: job.maxTokens }, 'grpc.generate');
      const out = await runGeneration(
        this.host,
        this.metrics,
        {
          ...job,
          signal: ac.signal,
          endpoint: 'grpc',
          onToken: (t, lp) => {
            pending.push(t);
            if (lp) pendingLogprobs.push(lp);
          },
        },
        (text) => {
          if (ac.signal.aborted) return;
          call.write({ text: { text, tokenIds: pending, logprobs: pendingLogprobs.map(logprobsToWire) } });
          pending = [];
          pendingLogprobs = [];
        },
      );
      if (ac.signal.aborted) {
        this.log.info({ id, completionTokens: out.tokens.length }, 'request.cancelled');
        return;
      }
      // Tokens whose text never came out (cut by a stop string, or held back at the end).
      if (pending.length > 0)
        call.write({ text: { text: '', tokenIds: pending, logprobs: pendingLogprobs.map(logprobsToWire) } });
      const t = out.timings;
      call.write({
        done: {
          stopReason: out.stopReason,
          promptTokens: t.prompt_tokens,
          promptMs: t.prompt_ms,
          decodeTokens: t.decode_tokens,
          decodeMs: t.decode_ms,
        },
      });
      call.end();
      this.log.info(
        {
          id,
          endpoint: 'grpc',
          promptTokens: t.prompt_tokens,
          completionTokens: t.decode_tokens,
          stopReason: out.stopReason,
          ms: Math.round(out.totalMs),
        },
        'request.done',
      );
    } catch (e) {
      if (ac.signal.aborted) {
        this.log.info({ id }, 'request.cancelled');
        return;
      }
      const err = e instanceof ApiError ? apiStatus(e) : toStatus(e);
      if (errorKind(e) === 'internal') this.log.error({ id, error: err.message }, 'request.failed');
      else if (e instanceof ApiError && e.status === 401) this.log.warn({ id, peer, error: e.message }, 'auth.refused');
      call.emit('error', err);
    } finally {
      this.calls.delete(ac);
    }
  }
}

/** The API's refusals in gRPC terms: a key refused, a full line (with its retry-after), the rest by kind. */
function apiStatus(e: ApiError): ServerErrorResponse {
  const base = { name: e.name, message: e.message, details: e.message };
  if (e.status === 401) return { ...base, code: status.UNAUTHENTICATED };
  if (e.status === 429) {
    const metadata = new Metadata();
    for (const [k, v] of Object.entries(e.headers)) metadata.set(k.toLowerCase(), v);
    return { ...base, code: status.RESOURCE_EXHAUSTED, metadata };
  }
  return toStatus(e);
}
