// The node daemon's gRPC server (HerdNode): Info, Health, LoadShard, Forward, DropSession.
// With a cluster key every call comes over mutual TLS from a holder of the key (tls.ts); the
// guard (guard.ts) bounds each call before its body is read; every message is validated;
// errors become statuses here and are logged, and the node keeps serving.

import {
  status,
  type Server,
  type ClientDuplexStream,
  type ClientWritableStream,
  type ServerDuplexStream,
  type ServerErrorResponse,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { freemem } from 'node:os';
import type { KernelBackend } from '../../kernels/backend.ts';
import type { BatcherStats } from '../../engine/batcher.ts';
import { watchSilence, type Silence } from '../silence.ts';
import type { ClusterKey } from '../key.ts';
import { guardedServer } from '../guard.ts';
import { PROTOCOL_VERSION, type NodeCapabilities } from '../caps.ts';
import { ClusterError, invalid } from '../errors.ts';
import type { Logger } from '../log.ts';
import { parseHostPort } from '../net.ts';
import { bind, coordinatorClient, describeCallError, isServiceError, nodeClient, shutdown, toStatus } from '../rpc.ts';
import { HASH_RE } from '../shard/shard.ts';
import { ShardStore, type LoadedShard, type StoreCounters } from '../shard/store.ts';
import {
  HerdNodeService,
  kvTypeFromWire,
  manifestFromWire,
  METHOD,
  shardStatus,
  type DeliverReply,
  type Delivery,
  type DropSessionReply,
  type DropSessionRequest,
  type ForwardReply,
  type ForwardRequest,
  type HerdCoordinatorClient,
  type HerdNodeClient,
  type LoadShardRequest,
  type NodeInfo,
  type SessionOpen,
  type WireLoadProgress,
} from '../wire.ts';
import { checkOpen, StageSession } from './stage.ts';
import {
  checkGroup,
  GroupLeader,
  groupId,
  groupMaxValues,
  linkMember,
  listenMember,
  type MemberPlace,
} from './group.ts';
import type { SyncGroup } from '../dataplane/group.ts';
import { TensorMember } from '../../engine/tensor-split.ts';
import { herdTls } from '../tls.ts';
import { kvCacheBytes, MemoryBudget } from './budget.ts';
import { checkManifest } from '../shard/manifest.ts';
import type { HostInfo } from './sysinfo.ts';

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
  /** Keep at most this many bytes of slice files in the cache dir (`herd node --cache-max`). */
  readonly cacheMaxBytes?: number;
  /** Cut a shard transfer silent this long (`herd node --transfer-stall`). */
  readonly transferStallMs?: number;
  /** Drop a session no message reached for this long (`herd node --session-idle`); default SESSION_IDLE_MS. */
  readonly sessionIdleMs?: number;
}

/** Longer than any coordinator keeps a session idle by default (herd serve --idle-timeout 300). */
export const SESSION_IDLE_MS = 3_600_000;

interface OpenSession {
  readonly stage: StageSession;
  close(graceful: boolean): void;
}

export class NodeServer {
  private readonly server: Server;
  readonly store: ShardStore;
  /** Weights and KV caches against `--max-memory` (else the memory available at start-up). */
  readonly budget: MemoryBudget;
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
    invalidRequests: number;
  } = {
    shardLoads: 0,
    shardReuses: 0,
    tensorsFetched: 0,
    bytesFetched: 0,
    evictions: 0,
    sessionsOpened: 0,
    activations: 0,
    invalidRequests: 0,
  };

  /** Batched steps run over all shards: how many, and how many session entries they carried. */
  private readonly steps: BatcherStats = { steps: 0, entries: 0, maxEntries: 0, seconds: 0 };

  constructor(private readonly o: NodeServerOptions) {
    this.server = guardedServer({
      stepMethods: [METHOD.forward],
      onRefused: (r) => {
        this.counters.invalidRequests++;
        this.o.log.log('warn', 'request.refused', { ...r });
      },
    });
    this.throughput = o.throughput;
    this.budget = new MemoryBudget(o.maxMemory ?? freemem(), MAX_SESSIONS, () =>
      [...this.store.loaded.values()].reduce((sum, sh) => sum + sh.bytes, 0),
    );
    this.store = new ShardStore({
      cacheDir: o.cacheDir,
      modelDir: o.modelDir,
      backend: o.backend,
      key: o.key,
      log: o.log,
      counters: this.counters,
      nodeName: o.name,
      weightRoom: () => this.budget.limit - this.budget.reserved,
      cacheMaxBytes: o.cacheMaxBytes,
      transferStallMs: o.transferStallMs,
    });
    this.server.addService(tolerant(HerdNodeService), {
      info: this.handleInfo,
      health: this.handleHealth,
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
    this.boundPort = await bind(this.server, this.o.host, this.o.port, this.o.key);
    return this.boundPort;
  }

  /**
   * Measures the kernel again a few times while idle and keeps the best: a measurement can only
   * be pulled down by other work (start-up, a neighbour process), never pushed up.
   */
  remeasure(
    measure: () => number,
    onChange: (throughput: number) => void,
    delaysMs = [1000, 3000, 10_000, 300_000],
  ): void {
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
    await shutdown(this.server, graceMs, () => {
      for (const s of this.sessions.values()) s.close(false);
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
      authRequired: this.o.key !== undefined,
      shards: [...this.store.loaded.values()].map((s) =>
        shardStatus({
          modelHash: s.modelHash,
          start: s.start,
          end: s.end,
          bytes: s.bytes,
          loaded: { nLayers: s.nLayers, ctx: s.ctx, kvType: s.kvType, sessions: s.sessions, source: s.source },
        }),
      ),
      counters: {
        ...this.counters,
        steps: this.steps.steps,
        stepEntries: this.steps.entries,
        stepSeconds: this.steps.seconds,
      },
      cached: this.store.cachedSlices().map((c) => shardStatus(c)),
    };
  }

  // --- errors, in one place ------------------------------------------------------------------

  private failure(e: unknown, method: string, peer: string): ServerErrorResponse {
    const s = toStatus(e);
    if (s.code === status.INVALID_ARGUMENT) this.counters.invalidRequests++;
    this.o.log.log(s.code === status.CANCELLED ? 'debug' : 'warn', 'request.failed', {
      method,
      peer,
      code: status[s.code ?? status.UNKNOWN],
      details: s.details,
    });
    return s;
  }

  // --- unary calls ---------------------------------------------------------------------------

  private readonly handleInfo = (_call: ServerUnaryCall<unknown, NodeInfo>, cb: sendUnaryData<NodeInfo>): void => {
    cb(null, this.info());
  };

  private readonly handleHealth = (
    _call: ServerUnaryCall<unknown, unknown>,
    cb: sendUnaryData<{ ok: boolean; uptimeS: number; sessions: number }>,
  ): void => {
    cb(null, { ok: !this.draining, uptimeS: (performance.now() - this.started) / 1000, sessions: this.sessions.size });
  };

  private readonly handleDropSession = (
    call: ServerUnaryCall<DropSessionRequest | Malformed, DropSessionReply>,
    cb: sendUnaryData<DropSessionReply>,
  ): void => {
    if (call.request instanceof Malformed) {
      return cb(
        this.failure(invalid(`undecodable request: ${call.request.reason}`), METHOD.dropSession, call.getPeer()),
      );
    }
    const s = this.sessions.get(call.request.sessionId);
    if (s) s.close(false);
    cb(null, { dropped: s !== undefined });
  };

  // --- LoadShard -----------------------------------------------------------------------------

  private readonly handleLoadShard = (
    call: ServerWritableStream<LoadShardRequest | Malformed, WireLoadProgress>,
  ): void => {
    const peer = call.getPeer();
    void (async () => {
      try {
        const r = call.request;
        if (r instanceof Malformed) throw invalid(`undecodable request: ${r.reason}`);
        if (this.draining) throw new StatusError(status.UNAVAILABLE, 'the node is shutting down');
        if (!HASH_RE.test(r.modelHash)) throw invalid('model hash must be 64 lowercase hex digits');
        if (!(r.nLayers >= 1 && r.nLayers <= MAX_LAYERS))
          throw invalid(`n_layers ${r.nLayers} must be in 1..${MAX_LAYERS}`);
        if (!(r.start < r.end && r.end <= r.nLayers)) {
          throw invalid(`layer range [${r.start}, ${r.end}) is not within the model's ${r.nLayers} layers`);
        }
        if (!(r.ctx >= 1 && r.ctx <= MAX_CTX)) throw invalid(`ctx ${r.ctx} must be in 1..${MAX_CTX}`);
        const kvType = kvTypeFromWire(r.kvType);
        if (!kvType) throw invalid('kv_type must be f32 or f16');
        try {
          parseHostPort(r.coordinator);
        } catch {
          throw invalid(`coordinator "${r.coordinator}" is not a host:port`);
        }
        const progress: WireLoadProgress = {
          phase: '',
          bytesDone: 0,
          bytesTotal: 0,
          tensorsDone: 0,
          tensorsTotal: 0,
          source: '',
          bytesTransferred: 0,
        };
        const { modelHash, modelSize, modelName, start, end, nLayers, ctx, coordinator } = r;
        const manifest = manifestFromWire(r.manifest);
        checkManifest(manifest, start, end, nLayers);
        // A group member listens first and says where (the coordinator hands that to the members
        // after it), loads its share, then links the group (node/group.ts) before LoadShard ends.
        const place = r.group ? checkGroup(r.group) : undefined;
        if (!place && manifest.tensors.some((t) => t.cut))
          throw invalid('the manifest lists parts of tensors (a member share) but the load names no group');
        const maxValues = place ? groupMaxValues(manifest, start) : 0;
        const sync = place
          ? await listenMember(place, maxValues, this.o.host, this.o.key && herdTls(this.o.key), this.o.log)
          : undefined;
        let linked = false;
        if (sync) {
          // a load given up before it linked (grpc-js may also say cancelled after the end)
          call.on('cancelled', () => linked || sync.close());
          const at = sync.endpoint;
          call.write({ ...progress, phase: 'linking', dataplanePort: 'port' in at ? at.port : 0 });
        }
        let loaded;
        try {
          loaded = await this.store.load(
            {
              modelHash,
              modelSize,
              modelName,
              start,
              end,
              nLayers,
              ctx,
              kvType,
              coordinator,
              manifest,
              share: place && { size: place.size, share: place.share },
            },
            (p) => {
              Object.assign(progress, p);
              // a member is done once its group is linked
              if (!(sync && p.phase === 'done')) call.write({ ...progress });
            },
          );
          if (sync && place) {
            const { shard } = loaded;
            if (!(shard.model instanceof TensorMember))
              throw new ClusterError('shard', 'a member shard without its share');
            if (place.share.member > 0) this.reserveFollower(place, shard, ctx, sync);
            const role = await linkMember(sync, place, shard.model, maxValues, this.o.log);
            linked = true;
            shard.group?.close();
            shard.group = role;
            this.o.log.log('info', 'group.linked', {
              group: role.id,
              member: place.share.member,
              size: place.size,
              sync: place.sync,
              start,
              end,
            });
            const source = loaded.reused ? 'memory' : progress.source;
            call.write({ ...progress, phase: 'done', source, bytesDone: shard.bytes, bytesTotal: shard.bytes });
            return call.end();
          }
        } catch (e) {
          sync?.close();
          throw e;
        }
        const { shard, reused } = loaded;
        if (reused) {
          this.o.log.log('info', 'shard.reuse', { model: r.modelHash.slice(0, 12), start: r.start, end: r.end });
          call.write({ ...progress, phase: 'done', source: 'memory', bytesDone: shard.bytes, bytesTotal: shard.bytes });
        }
        call.end();
      } catch (e) {
        call.emit('error', this.failure(e, METHOD.loadShard, peer));
      }
    })();
  };

  /**
   * A follower's KV cache shares for the group's sessions, reserved in the node's budget for the
   * group's life (the leader admits the sessions; the follower opens their caches as steps come).
   */
  private reserveFollower(place: MemberPlace, shard: LoadedShard, ctx: number, sync: SyncGroup): void {
    const id = `group ${groupId(place.token)}`;
    const bytes = place.sessions * kvCacheBytes(shard, ctx);
    const refusal = this.budget.refusal(this.o.name, id, bytes);
    if (refusal)
      throw new StatusError(
        status.RESOURCE_EXHAUSTED,
        `${refusal} (member ${place.share.member}'s KV cache shares for ${place.sessions} sessions)`,
      );
    this.budget.reserve(id, bytes);
    sync.onFail(() => this.budget.release(id));
  }

  // --- Forward -------------------------------------------------------------------------------

  private readonly handleForward = (call: ServerDuplexStream<ForwardRequest | Malformed, ForwardReply>): void => {
    const peer = call.getPeer();
    let stage: StageSession | undefined;
    let down: ClientDuplexStream<ForwardRequest, ForwardReply> | undefined;
    let deliver: ClientWritableStream<Delivery> | undefined;
    let finished = false;
    let chain: Promise<void> = Promise.resolve();
    let idle: Silence | undefined;

    const release = (graceful: boolean) => {
      idle?.stop();
      if (stage) {
        stage.close();
        this.sessions.delete(stage.id);
        stage.shard.sessions--;
        this.budget.release(stage.id);
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
      const c = checkOpen(o, this.store, (id) => this.sessions.has(id));
      // Admitted against the node's budget before anything is allocated (budget.ts).
      const ask = kvCacheBytes(c.shard, o.ctx);
      const refusal =
        c.model instanceof GroupLeader && c.model.open >= c.model.sessions
          ? `node ${this.o.name}: group ${c.model.id} holds ${c.model.open} sessions, the most its members reserved KV cache room for (session ${o.sessionId} waits for one to end)`
          : this.budget.refusal(this.o.name, o.sessionId, ask);
      if (refusal) throw new StatusError(status.RESOURCE_EXHAUSTED, refusal);
      const s = new StageSession(o.sessionId, o.ctx, c, this.o.nodeId, this.steps);
      this.budget.reserve(s.id, ask);
      stage = s;
      c.shard.sessions++;
      const close = (graceful: boolean) =>
        graceful ? release(true) : fail(new StatusError(status.ABORTED, 'session dropped'));
      this.sessions.set(s.id, { stage: s, close });
      this.counters.sessionsOpened++;
      if (c.next) down = await this.openDownstream(c.next, { ...o, hop: o.hop + 1 }, fail);
      if (c.deliverTo) deliver = await this.openDeliver(c.deliverTo, fail);
      if (finished) return;
      this.o.log.log('debug', 'session.open', {
        session: s.id,
        hop: o.hop,
        start: c.shard.start,
        end: c.shard.end,
        next: c.next ?? c.deliverTo,
      });
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

    // A session no message reaches for sessionIdleMs goes, KV cache and all: a coordinator that
    // forgot it (or whose link died without a reset keepalive saw) holds no memory here for ever.
    const idleMs = this.o.sessionIdleMs ?? SESSION_IDLE_MS;
    idle = watchSilence(idleMs, () => {
      if (stage) this.o.log.log('info', 'session.idle', { session: stage.id, seconds: idleMs / 1000 });
      fail(new StatusError(status.DEADLINE_EXCEEDED, `session idle for ${idleMs / 1000} s: dropped`));
    });
    call.on('data', (msg: ForwardRequest | Malformed) => {
      idle?.touch();
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
    const client = cached(this.nodeClients, address, (a) => nodeClient(a, this.o.key, 'step'));
    const stream = client.forward();
    let pending: { resolve: () => void; reject: (e: unknown) => void } | undefined;
    const ready = new Promise<void>((resolve, reject) => (pending = { resolve, reject }));
    const timer = setTimeout(() => {
      const why = `next stage ${address} did not open the session in ${OPEN_TIMEOUT_MS / 1000} s`;
      pending?.reject(new StatusError(status.DEADLINE_EXCEEDED, why));
    }, OPEN_TIMEOUT_MS);
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
    const client = cached(this.coordClients, address, (a) => coordinatorClient(a, this.o.key, 'step'));
    return client.deliver((err: unknown, _reply?: DeliverReply) => {
      if (err && !(isServiceError(err) && err.code === status.CANCELLED)) fail(remote(address, err));
    });
  }
}

/** One client per address, made on first use. */
function cached<C>(clients: Map<string, C>, address: string, make: (address: string) => C): C {
  let c = clients.get(address);
  if (!c) clients.set(address, (c = make(address)));
  return c;
}

function remote(address: string, e: unknown): StatusError {
  if (e instanceof StatusError) return e;
  if (e instanceof ClusterError) return new StatusError(toStatus(e).code ?? status.UNKNOWN, e.message);
  const code = isServiceError(e) ? e.code : status.UNAVAILABLE;
  return new StatusError(code, `${address}: ${describeCallError(e)}`);
}
