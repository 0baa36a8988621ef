// The node daemon's gRPC server (HerdNode): Info, Health, Challenge, LoadShard, Forward,
// DropSession. State-changing calls need the cluster key proof; every message is validated;
// errors become statuses here and are logged, and the node keeps serving.

import {
  Server,
  ServerCredentials,
  status,
  type ClientDuplexStream,
  type ClientWritableStream,
  type Metadata,
  type ServerDuplexStream,
  type ServerErrorResponse,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { freemem } from 'node:os';
import {
  HerdNodeService,
  KvType,
  type DeliverReply,
  type Delivery,
  type DropSessionReply,
  type DropSessionRequest,
  type ForwardReply,
  type ForwardRequest,
  type HerdCoordinatorClient,
  type HerdNodeClient,
  type LoadProgress,
  type LoadShardRequest,
  type NodeInfo,
  type SessionOpen,
} from '../../proto/herd.ts';
import type { KernelBackend } from '../../kernels/backend.ts';
import { Authenticator, type ClusterKey } from '../auth.ts';
import { PROTOCOL_VERSION, type NodeCapabilities } from '../caps.ts';
import { ClusterError, invalid } from '../errors.ts';
import type { Logger } from '../log.ts';
import { parseHostPort } from '../net.ts';
import { authenticate, channelOptions, coordinatorClient, describeCallError, isServiceError, nodeClient, toStatus } from '../rpc.ts';
import { HASH_RE } from '../shard/shard.ts';
import { ShardStore, type StoreCounters } from '../shard/store.ts';
import { checkOpen, kvTypeOf, StageSession } from './stage.ts';
import type { HostInfo } from './sysinfo.ts';

export const METHOD = {
  loadShard: '/herd.v1.HerdNode/LoadShard',
  forward: '/herd.v1.HerdNode/Forward',
  dropSession: '/herd.v1.HerdNode/DropSession',
  deliver: '/herd.v1.HerdCoordinator/Deliver',
} as const;

const OPEN_TIMEOUT_MS = 60_000;
const MAX_SESSIONS = 256;
const MAX_LAYERS = 4096;
const MAX_CTX = 1 << 20;

/** A request whose bytes did not decode: handlers answer INVALID_ARGUMENT. */
class Malformed {
  constructor(readonly reason: string) {}
}

/** grpc-js answers INTERNAL when a deserializer throws; ours hand the handler a Malformed. */
function tolerant<S extends object>(svc: S): S {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(svc)) {
    const m = v as { requestDeserialize: (b: Buffer) => unknown };
    out[k] = {
      ...m,
      requestDeserialize: (b: Buffer) => {
        try {
          return m.requestDeserialize(b);
        } catch (e) {
          return new Malformed(e instanceof Error ? e.message : String(e));
        }
      },
    };
  }
  return out as S;
}

/** A downstream call's failure, passed upstream with its status code and who failed. */
class StatusError extends Error {
  constructor(
    readonly code: status,
    readonly details: string,
  ) {
    super(details);
    this.name = 'StatusError';
  }
}

export interface NodeServerOptions {
  readonly nodeId: string;
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly cacheDir: string;
  readonly modelDir?: string;
  readonly key?: ClusterKey;
  readonly backend: KernelBackend;
  readonly hostInfo: HostInfo;
  /** Measured matvec throughput, weight bytes per second (at start-up; see remeasure()). */
  readonly throughput: number;
  readonly version: string;
  readonly log: Logger;
  /** Offer coordinators at most this many bytes of memory (`herd node --max-memory`). */
  readonly maxMemory?: number;
}

interface OpenSession {
  readonly stage: StageSession;
  close(graceful: boolean): void;
}

export class NodeServer {
  private readonly server = new Server(channelOptions);
  private readonly auth: Authenticator;
  readonly store: ShardStore;
  private readonly sessions = new Map<string, OpenSession>();
  private readonly nodeClients = new Map<string, HerdNodeClient>();
  private readonly coordClients = new Map<string, HerdCoordinatorClient>();
  private readonly started = performance.now();
  private draining = false;
  private throughput: number;
  private remeasureTimer?: NodeJS.Timeout;
  boundPort = 0;
  readonly counters: StoreCounters & {
    sessionsOpened: number;
    activations: number;
    authFailures: number;
    invalidRequests: number;
  } = {
    shardLoads: 0, shardReuses: 0, tensorsFetched: 0, bytesFetched: 0, evictions: 0,
    sessionsOpened: 0, activations: 0, authFailures: 0, invalidRequests: 0,
  };

  constructor(private readonly o: NodeServerOptions) {
    this.auth = new Authenticator(o.key);
    this.throughput = o.throughput;
    this.store = new ShardStore({
      cacheDir: o.cacheDir, modelDir: o.modelDir, backend: o.backend, key: o.key, log: o.log, counters: this.counters,
    });
    this.server.addService(tolerant(HerdNodeService), {
      info: this.handleInfo,
      health: this.handleHealth,
      challenge: this.handleChallenge,
      loadShard: this.handleLoadShard,
      forward: this.handleForward,
      dropSession: this.handleDropSession,
    });
  }

  get capabilities(): NodeCapabilities {
    const h = this.o.hostInfo;
    return {
      protocolVersion: PROTOCOL_VERSION,
      nodeId: this.o.nodeId,
      name: this.o.name,
      arch: h.arch,
      backend: this.o.backend.name,
      memTotal: h.memTotal,
      memAvailable: Math.min(freemem(), this.o.maxMemory ?? Infinity),
      cores: h.cores,
      throughput: this.throughput,
    };
  }

  async start(): Promise<number> {
    const addr = this.o.host.includes(':') ? `[${this.o.host}]:${this.o.port}` : `${this.o.host}:${this.o.port}`;
    this.boundPort = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(addr, ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port)));
    });
    return this.boundPort;
  }

  /**
   * Measures the kernel again a few times while idle and keeps the best: a measurement can only
   * be pulled down by other work (start-up, a neighbour process), never pushed up.
   */
  remeasure(measure: () => number, onChange: (throughput: number) => void, delaysMs = [1000, 3000, 10_000, 300_000]): void {
    const [delay, ...rest] = delaysMs;
    if (delay === undefined || this.draining) return;
    this.remeasureTimer = setTimeout(() => {
      if (this.sessions.size === 0) {
        const t = measure();
        if (t > this.throughput) {
          const changed = t > this.throughput * 1.1;
          this.throughput = t;
          if (changed) onChange(t);
        }
      }
      this.remeasure(measure, onChange, rest.length > 0 ? rest : [delay]);
    }, delay);
    this.remeasureTimer.unref();
  }

  /** Refuses new work, lets in-flight calls finish for up to graceMs, then closes everything. */
  async stop(graceMs = 5000): Promise<void> {
    this.draining = true;
    clearTimeout(this.remeasureTimer);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        for (const s of this.sessions.values()) s.close(false);
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    for (const c of this.nodeClients.values()) c.close();
    for (const c of this.coordClients.values()) c.close();
  }

  info(): NodeInfo {
    const c = this.capabilities;
    return {
      protocolVersion: PROTOCOL_VERSION,
      nodeId: c.nodeId,
      name: c.name,
      arch: c.arch,
      platform: this.o.hostInfo.platform,
      backend: c.backend,
      threads: this.o.backend.threads,
      cores: c.cores,
      memTotal: c.memTotal,
      memAvailable: c.memAvailable,
      throughput: Math.round(c.throughput),
      version: this.o.version,
      authRequired: this.auth.required,
      shards: [...this.store.loaded.values()].map((s) => ({
        modelHash: s.modelHash, start: s.start, end: s.end, nLayers: s.nLayers, bytes: s.bytes, ctx: s.ctx,
        kvType: s.kvType === 'f16' ? KvType.KV_TYPE_F16 : KvType.KV_TYPE_F32, sessions: s.sessions, source: s.source,
      })),
      counters: { ...this.counters },
      cached: this.store.cachedSlices().map((c) => ({
        modelHash: c.modelHash, start: c.start, end: c.end, nLayers: 0, bytes: c.bytes, ctx: 0,
        kvType: KvType.KV_TYPE_UNSPECIFIED, sessions: 0, source: 'cache',
      })),
    };
  }

  // --- auth and errors, in one place ---------------------------------------------------------

  private authorize(md: Metadata, method: string, peer: string): ServerErrorResponse | undefined {
    const reason = this.auth.check(md, method);
    if (reason === undefined) return undefined;
    this.counters.authFailures++;
    this.o.log.log('warn', 'auth.refused', { method, peer, reason });
    return { name: 'Unauthenticated', message: reason, code: status.UNAUTHENTICATED, details: `cluster key: ${reason}` };
  }

  private failure(e: unknown, method: string, peer: string): ServerErrorResponse {
    const s = toStatus(e);
    if (s.code === status.INVALID_ARGUMENT) this.counters.invalidRequests++;
    this.o.log.log(s.code === status.CANCELLED ? 'debug' : 'warn', 'request.failed', {
      method, peer, code: status[s.code ?? status.UNKNOWN], details: s.details,
    });
    return s;
  }

  // --- unary calls ---------------------------------------------------------------------------

  private readonly handleInfo = (_call: ServerUnaryCall<unknown, NodeInfo>, cb: sendUnaryData<NodeInfo>): void => {
    cb(null, this.info());
  };

  private readonly handleHealth = (_call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<{ ok: boolean; uptimeS: number; sessions: number }>): void => {
    cb(null, { ok: !this.draining, uptimeS: (performance.now() - this.started) / 1000, sessions: this.sessions.size });
  };

  private readonly handleChallenge = (_call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<{ nonce: Buffer; ttlMs: number }>): void => {
    cb(null, { nonce: this.auth.issue(), ttlMs: 30_000 });
  };

  private readonly handleDropSession = (
    call: ServerUnaryCall<DropSessionRequest | Malformed, DropSessionReply>,
    cb: sendUnaryData<DropSessionReply>,
  ): void => {
    const peer = call.getPeer();
    const refused = this.authorize(call.metadata, METHOD.dropSession, peer);
    if (refused) return cb(refused);
    if (call.request instanceof Malformed) return cb(this.failure(invalid(`undecodable request: ${call.request.reason}`), METHOD.dropSession, peer));
    const s = this.sessions.get(call.request.sessionId);
    if (s) s.close(false);
    cb(null, { dropped: s !== undefined });
  };

  // --- LoadShard -----------------------------------------------------------------------------

  private readonly handleLoadShard = (call: ServerWritableStream<LoadShardRequest | Malformed, LoadProgress>): void => {
    const peer = call.getPeer();
    const refused = this.authorize(call.metadata, METHOD.loadShard, peer);
    if (refused) {
      call.emit('error', refused);
      return;
    }
    void (async () => {
      try {
        const r = call.request;
        if (r instanceof Malformed) throw invalid(`undecodable request: ${r.reason}`);
        if (this.draining) throw new StatusError(status.UNAVAILABLE, 'the node is shutting down');
        if (!HASH_RE.test(r.modelHash)) throw invalid('model hash must be 64 lowercase hex digits');
        if (!(r.nLayers >= 1 && r.nLayers <= MAX_LAYERS)) throw invalid(`n_layers ${r.nLayers} must be in 1..${MAX_LAYERS}`);
        if (!(r.start < r.end && r.end <= r.nLayers)) throw invalid(`layer range [${r.start}, ${r.end}) is not within the model's ${r.nLayers} layers`);
        if (!(r.ctx >= 1 && r.ctx <= MAX_CTX)) throw invalid(`ctx ${r.ctx} must be in 1..${MAX_CTX}`);
        const kvType = kvTypeOf(r.kvType);
        if (!kvType) throw invalid('kv_type must be f32 or f16');
        try {
          parseHostPort(r.coordinator);
        } catch {
          throw invalid(`coordinator "${r.coordinator}" is not a host:port`);
        }
        const progress: LoadProgress = { phase: '', bytesDone: 0, bytesTotal: 0, tensorsDone: 0, tensorsTotal: 0, source: '', bytesTransferred: 0 };
        const { shard, reused } = await this.store.load(
          { modelHash: r.modelHash, modelSize: r.modelSize, modelName: r.modelName, start: r.start, end: r.end, nLayers: r.nLayers, ctx: r.ctx, kvType, coordinator: r.coordinator },
          (p) => {
            Object.assign(progress, p);
            call.write({ ...progress });
          },
        );
        if (reused) {
          this.o.log.log('info', 'shard.reuse', { model: r.modelHash.slice(0, 12), start: r.start, end: r.end });
          call.write({ phase: 'done', source: 'memory', bytesDone: shard.bytes, bytesTotal: shard.bytes, tensorsDone: 0, tensorsTotal: 0, bytesTransferred: 0 });
        }
        call.end();
      } catch (e) {
        call.emit('error', this.failure(e, METHOD.loadShard, peer));
      }
    })();
  };

  // --- Forward -------------------------------------------------------------------------------

  private readonly handleForward = (call: ServerDuplexStream<ForwardRequest | Malformed, ForwardReply>): void => {
    const peer = call.getPeer();
    const refused = this.authorize(call.metadata, METHOD.forward, peer);
    if (refused) {
      call.emit('error', refused);
      return;
    }
    let stage: StageSession | undefined;
    let down: ClientDuplexStream<ForwardRequest, ForwardReply> | undefined;
    let deliver: ClientWritableStream<Delivery> | undefined;
    let finished = false;
    let chain: Promise<void> = Promise.resolve();

    const release = (graceful: boolean) => {
      if (stage) {
        this.sessions.delete(stage.id);
        stage.shard.sessions--;
        this.o.log.log('debug', 'session.close', { session: stage.id, positions: stage.pos });
        stage = undefined;
      }
      for (const call of [down, deliver]) {
        if (call && graceful) call.end();
        else if (call) call.cancel();
      }
      down = undefined;
      deliver = undefined;
    };
    const fail = (e: unknown) => {
      if (finished) return;
      finished = true;
      release(false);
      call.emit('error', this.failure(e, METHOD.forward, peer));
    };

    const open = async (o: SessionOpen) => {
      if (stage) throw invalid('a second open on one stream');
      if (this.draining) throw new StatusError(status.UNAVAILABLE, 'the node is shutting down');
      if (this.sessions.size >= MAX_SESSIONS) throw new StatusError(status.RESOURCE_EXHAUSTED, `the node holds ${MAX_SESSIONS} sessions already`);
      const c = checkOpen(o, this.store, (id) => this.sessions.has(id));
      const s = new StageSession(o.sessionId, o.ctx, c, this.o.nodeId);
      if (s.cache.bytes > freemem()) {
        throw new StatusError(status.RESOURCE_EXHAUSTED, `a KV cache of ${s.cache.bytes} bytes does not fit the ${freemem()} bytes available`);
      }
      stage = s;
      c.shard.sessions++;
      this.sessions.set(s.id, { stage: s, close: (graceful) => (graceful ? release(true) : fail(new StatusError(status.ABORTED, 'session dropped'))) });
      this.counters.sessionsOpened++;
      if (c.next) down = await this.openDownstream(c.next, { ...o, hop: o.hop + 1 }, fail);
      if (c.deliverTo) deliver = await this.openDeliver(c.deliverTo, fail);
      if (finished) return;
      this.o.log.log('debug', 'session.open', { session: s.id, hop: o.hop, start: c.shard.start, end: c.shard.end, next: c.next ?? c.deliverTo });
      call.write({ ready: true, nodeId: this.o.nodeId });
    };

    const handle = async (msg: ForwardRequest | Malformed) => {
      if (msg instanceof Malformed) throw invalid(`undecodable message: ${msg.reason}`);
      if (msg.open) return open(msg.open);
      if (!msg.activation) throw invalid('empty message: neither open nor activation');
      if (!stage) throw invalid('activation before the session was opened');
      const r = await stage.run(msg.activation);
      this.counters.activations++;
      if (r.out) down?.write({ activation: r.out });
      if (r.delivery) deliver?.write(r.delivery);
    };

    call.on('data', (msg: ForwardRequest | Malformed) => {
      chain = chain.then(() => (finished ? undefined : handle(msg))).catch(fail);
    });
    call.on('end', () => {
      chain = chain.then(() => {
        if (finished) return;
        finished = true;
        release(true);
        call.end();
      });
    });
    call.on('cancelled', () => {
      finished = true;
      release(false);
    });
    call.on('error', () => {
      finished = true;
      release(false);
    });
  };

  /** Opens the session on the next stage and waits until it (and everything after) is ready. */
  private async openDownstream(
    address: string,
    open: SessionOpen,
    fail: (e: unknown) => void,
  ): Promise<ClientDuplexStream<ForwardRequest, ForwardReply>> {
    let client = this.nodeClients.get(address);
    if (!client) {
      client = nodeClient(address);
      this.nodeClients.set(address, client);
    }
    const md = await authenticate(client, this.o.key, METHOD.forward).catch((e: unknown) => {
      throw remote(address, e);
    });
    const stream = client.forward(md);
    let pending: { resolve: () => void; reject: (e: unknown) => void } | undefined;
    const ready = new Promise<void>((resolve, reject) => (pending = { resolve, reject }));
    const timer = setTimeout(() => pending?.reject(new StatusError(status.DEADLINE_EXCEEDED, `next stage ${address} did not open the session in ${OPEN_TIMEOUT_MS / 1000} s`)), OPEN_TIMEOUT_MS);
    stream.on('data', (r: ForwardReply) => {
      if (r.ready && pending) {
        clearTimeout(timer);
        pending.resolve();
        pending = undefined;
      }
    });
    stream.on('error', (e: unknown) => {
      clearTimeout(timer);
      const err = remote(address, e);
      if (pending) pending.reject(err);
      else if (!(isServiceError(e) && e.code === status.CANCELLED)) fail(err);
      pending = undefined;
    });
    stream.on('end', () => clearTimeout(timer));
    stream.write({ open });
    await ready;
    return stream;
  }

  /** The last stage's stream of sampled tokens to the coordinator. */
  private async openDeliver(address: string, fail: (e: unknown) => void): Promise<ClientWritableStream<Delivery>> {
    let client = this.coordClients.get(address);
    if (!client) {
      client = coordinatorClient(address);
      this.coordClients.set(address, client);
    }
    const md = await authenticate(client, this.o.key, METHOD.deliver).catch((e: unknown) => {
      throw remote(address, e);
    });
    return client.deliver(md, (err: unknown, _reply?: DeliverReply) => {
      if (err && !(isServiceError(err) && err.code === status.CANCELLED)) fail(remote(address, err));
    });
  }
}

function remote(address: string, e: unknown): StatusError {
  if (e instanceof StatusError) return e;
  if (e instanceof ClusterError) return new StatusError(toStatus(e).code ?? status.UNKNOWN, e.message);
  const code = isServiceError(e) ? e.code : status.UNAVAILABLE;
  return new StatusError(code, `${address}: ${describeCallError(e)}`);
}
