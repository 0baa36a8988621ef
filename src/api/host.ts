// The standing coordinator behind `herd serve` (and `herd chat` without --server): the model
// is loaded once — in this process (`--nodes local`) or as a plan over the herd — and every
// request gets its own session with its own KV cache, admitted through a fair queue of slots.
//
// In-process, all sessions share one Transformer, whose activation buffers (RunState) hold one
// step at a time: a lock of size 1 around each step makes active requests take turns token by
// token, in arrival order. Over the herd, each session is its own Forward stream, so stages
// work on different requests at once (pipeline parallelism) and no lock is taken.
//
// Prompt cache (llama.cpp's cache_prompt): a finished request's session may stay open, idle,
// with the tokens its KV caches hold. A request whose prompt shares a prefix with them takes it,
// goes back to the common prefix and computes only the rest. An idle session keeps its slot
// until a request is waiting for one: then the least recently used idle session is closed;
// and, with idleSeconds, once it has been idle that long.
//
// A node lost mid-generation (over the herd): the cluster re-plans over the nodes that still
// answer and the request's session replays its tokens on the new plan (cluster/coordinator/
// resume.ts); the client sees a pause. Idle sessions of the broken plan are closed. Only when
// the model no longer fits does the request fail, and the host re-plans in the background.

import { freemem, totalmem } from 'node:os';
import { basename } from 'node:path';
import type { Logger } from 'pino';
import { GgufFile } from '../gguf/reader.ts';
import { Tokenizer } from '../tokenizer/index.ts';
import { ChatTemplate } from '../tokenizer/chat-template.ts';
import type { KvType } from '../model/kv-cache.ts';
import { readConfig, type ModelConfig } from '../model/config.ts';
import { commonPrefix, type InferenceSession } from '../engine/session.ts';
import type { SamplingOptions, TokenLogprobs } from '../engine/sampler.ts';
import { ClusterError } from '../cluster/errors.ts';
import { jsonLogger, silentLogger } from '../cluster/log.ts';
import type { NodeSet } from '../cluster/coordinator/nodes.ts';
import type { StagedSession, StageTime } from '../cluster/coordinator/pipeline.ts';
import { fetchInfo } from '../cluster/discovery/static.ts';
import { findHerd, loadModel, type HerdOptions, type LoadedModel, type PlanEntry, type RecoveryEvent } from '../cluster/coordinator/open.ts';
import { FairQueue, type Release } from './queue.ts';
import { unavailable } from './errors.ts';

export interface HostOptions extends HerdOptions {
  readonly modelPath: string;
  readonly ctx?: number;
  /** Sessions (KV caches) at once; default: 4, fewer if their caches would not fit in memory. */
  readonly parallel?: number;
  /** A fallback name, `model`, or a Jinja file (see ChatTemplate.forModel). */
  readonly chatTemplate?: string;
  readonly log: Logger;
  /** Seconds between attempts to bring up a herd that is not ready (default 2, doubling to 30). */
  readonly retrySeconds?: number;
  /**
   * With `nodes: auto`, browse again this often while idle and re-plan when the set of nodes
   * changed (a Pi that booted late joins; default 30; 0: never).
   */
  readonly rediscoverSeconds?: number;
  /**
   * Seconds a kept session may stay idle before it is closed and its KV caches (on every node)
   * freed (default 0: kept until a request needs its slot).
   */
  readonly idleSeconds?: number;
}

export type HostStatus = 'loading' | 'ready' | 'unavailable' | 'closed';

/** One node as the dashboard shows it. */
export interface NodeView {
  readonly node: string;
  readonly address: string;
  readonly layers: [number, number];
  readonly backend?: string;
  readonly arch?: string;
  readonly memTotal?: number;
  readonly memAvailable?: number;
  /** Resident memory of the herd process holding the layers (in-process only). */
  readonly rss?: number;
}

/** One step of one session, for the metrics. */
export interface StepTiming {
  readonly phase: 'prefill' | 'decode';
  readonly tokens: number;
  /** The whole step as this process waited for it (over the herd: the ring, hops included). */
  readonly seconds: number;
  /** Each stage's own compute on the step. */
  readonly stages: readonly StageTime[];
}

export type StepObserver = (step: StepTiming) => void;

/** Hears a lost node, each re-plan and each resumed request (for the metrics). */
export type RecoveryObserver = (e: RecoveryEvent) => void;

/** The loaded model, with how the dashboard sees its nodes. */
type Runner = LoadedModel & { nodes(): Promise<NodeView[]> };

/** A session lent to one request: close() frees its slot, and its KV caches unless kept. */
export interface Lease {
  readonly session: InferenceSession;
  /** Leading prompt tokens the session already holds (a kept session's common prefix). */
  readonly cached: number;
  /**
   * Ends the lease. With `keep`, the session stays open, idle, for a later request to continue
   * (when it is intact and the herd unchanged); otherwise its KV caches are freed.
   */
  close(keep?: boolean): Promise<void>;
}

/** A session with its slot, lent or idle. */
interface Held {
  readonly runner: Runner;
  readonly inner: StagedSession;
  /** Times the steps and tracks the tokens the KV caches hold. */
  readonly observed: ObservedSession;
  /** What a request steps: `observed`, in-process behind the step lock. */
  readonly session: InferenceSession;
  readonly release: Release;
  lastUsed: number;
}

export class ModelHost {
  readonly file: GgufFile;
  readonly tokenizer: Tokenizer;
  readonly template: ChatTemplate;
  readonly config: ModelConfig;
  /** The id clients name in `model` (the file name without .gguf). */
  readonly modelId: string;
  readonly ctx: number;
  readonly created = Math.floor(Date.now() / 1000);
  readonly slots: FairQueue;
  private readonly stepLock = new FairQueue(1);
  private runner: Runner | undefined;
  private state: HostStatus = 'loading';
  private lastError: string | undefined;
  private loading: Promise<void> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryMs: number;
  private watchTimer: NodeJS.Timeout | undefined;
  /** The node ids the current plan was made from ('' for in-process). */
  private discovered = '';
  /** Open leases per runner, so a replaced runner closes when its last session ends. */
  private readonly leases = new Map<Runner, number>();
  private readonly retiring = new Set<Runner>();
  /** Kept sessions no request holds, for prompt reuse; each keeps its slot. */
  private readonly idle: Held[] = [];
  /** Idle sessions being closed to give their slot to a waiting request. */
  private yielding = 0;
  onStep: StepObserver = () => {};
  onRecovery: RecoveryObserver = () => {};

  private constructor(readonly o: HostOptions) {
    this.file = GgufFile.open(o.modelPath);
    this.tokenizer = Tokenizer.fromGguf(this.file);
    this.template = ChatTemplate.forModel(this.file, this.tokenizer, o.chatTemplate);
    this.config = readConfig(this.file);
    this.modelId = basename(o.modelPath).replace(/\.gguf$/i, '');
    this.ctx = o.ctx ?? Math.min(this.config.ctxTrain, 4096);
    this.slots = new FairQueue(o.parallel ?? defaultParallel(this.config, this.ctx, o.kvType, o.nodes));
    this.retryMs = (o.retrySeconds ?? 2) * 1000;
  }

  /** Reads the model's header and vocabulary (a bad file fails here); start() loads the weights. */
  static open(o: HostOptions): ModelHost {
    return new ModelHost(o);
  }

  /** Read through a getter: the state changes while load() awaits. */
  private get closed(): boolean {
    return this.state === 'closed';
  }

  get status(): HostStatus {
    return this.state;
  }

  get error(): string | undefined {
    return this.lastError;
  }

  get mode(): 'local' | 'cluster' | undefined {
    return this.runner?.mode;
  }

  get plan(): PlanEntry[] {
    return this.runner?.plan ?? [];
  }

  /** Loads the model (in-process or over the herd); on failure the host retries with backoff. */
  start(): Promise<void> {
    this.loading ??= this.load().finally(() => (this.loading = undefined));
    return this.loading;
  }

  private async load(): Promise<void> {
    const log = this.o.log;
    this.state = 'loading';
    const t0 = performance.now();
    log.info({ model: this.o.modelPath, nodes: this.o.nodes, ctx: this.ctx, slots: this.slots.size }, 'model.loading');
    try {
      const set = await this.resolve();
      const runner = await this.makeRunner(set);
      if (this.closed) {
        await runner.close();
        return;
      }
      this.runner = runner;
      this.discovered = nodeSetKey(set);
      this.state = 'ready';
      this.lastError = undefined;
      this.retryMs = (this.o.retrySeconds ?? 2) * 1000;
      this.logReady(runner, t0);
      this.scheduleWatch();
    } catch (e) {
      if (this.closed) return;
      this.state = 'unavailable';
      this.lastError = (e as Error).message;
      log.error({ error: this.lastError, retryInS: this.retryMs / 1000 }, 'model.unavailable');
      this.retryTimer = setTimeout(() => void this.start(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 30_000);
    }
  }

  private logReady(runner: Runner, t0: number): void {
    const plan = runner.plan.map((p) => `${p.node}@${p.address}[${p.layers[0]},${p.layers[1]})`);
    this.o.log.info({ mode: runner.mode, plan, ms: Math.round(performance.now() - t0) }, 'model.ready');
  }

  /** The nodes to plan over; undefined for `--nodes local`. */
  private resolve(): Promise<NodeSet | undefined> {
    return findHerd(this.o, (detail) => this.o.log.warn({ detail }, 'herd.note'));
  }

  private scheduleWatch(): void {
    const every = this.o.rediscoverSeconds ?? 30;
    if (this.o.nodes.trim() !== 'auto' || every <= 0 || this.closed) return;
    clearTimeout(this.watchTimer);
    this.watchTimer = setTimeout(() => void this.watch(), every * 1000);
  }

  /** Re-plans, while idle, when the nodes that answer over mDNS are not the ones planned over. */
  private async watch(): Promise<void> {
    if (this.state !== 'ready') return; // load() schedules the next watch once ready again
    try {
      if (this.slots.active > this.idle.length || this.slots.waiting > 0) return;
      const set = await this.resolve();
      const key = nodeSetKey(set);
      if (key === this.discovered || this.state !== 'ready') return;
      this.o.log.info({ before: this.discovered || 'in-process', after: key || 'in-process' }, 'herd.changed');
      const t0 = performance.now();
      const runner = await this.makeRunner(set);
      if (this.closed) {
        await runner.close();
        return;
      }
      const old = this.runner;
      this.runner = runner;
      this.discovered = key;
      this.logReady(runner, t0);
      // Kept sessions belong to the old plan.
      void this.dropIdle();
      if (old) this.retire(old);
    } catch (e) {
      this.o.log.warn({ error: (e as Error).message }, 'herd.replan_failed');
    } finally {
      this.scheduleWatch();
    }
  }

  /** Closes a replaced runner once its last session has ended. */
  private retire(runner: Runner): void {
    if ((this.leases.get(runner) ?? 0) === 0) void runner.close();
    else this.retiring.add(runner);
  }

  private async makeRunner(set: NodeSet | undefined): Promise<Runner> {
    const o = this.o;
    let runner: Runner | undefined;
    const onRecovery = (e: RecoveryEvent) => this.recovered(runner, e);
    const loaded = await loadModel({ ...o, file: this.file, ctx: this.ctx, onRecovery, log: o.log.isLevelEnabled('debug') ? jsonLogger({ role: 'coordinator' }) : silentLogger }, set);
    if (loaded.mode === 'local') {
      const { model } = loaded;
      const view = { ...loaded.plan[0], backend: model.backend.name, arch: process.arch };
      return { ...loaded, nodes: async () => [{ ...view, memTotal: totalmem(), memAvailable: freemem(), rss: process.memoryUsage().rss }] };
    }
    for (const l of loaded.shards) o.log.info({ ...l, layers: l.layers }, 'stage.loaded');
    const infos = new Map(set?.infos);
    let fetched = 0;
    // Onto `loaded` itself: its plan is a getter (a re-plan changes it).
    runner = Object.assign(loaded, {
      nodes: async () => {
        // Memory changes as nodes load and serve: ask again at most every 5 s.
        if (performance.now() - fetched > 5000) {
          fetched = performance.now();
          await Promise.all(
            loaded.plan.map(async (p) => {
              try {
                infos.set(p.address, await fetchInfo(p.address, 1500));
              } catch {
                // keep the last answer; the pipeline reports dead nodes itself
              }
            }),
          );
        }
        return loaded.plan.map((p) => {
          const i = infos.get(p.address);
          return { ...p, backend: i?.backend, arch: i?.arch, memTotal: i?.memTotal, memAvailable: i?.memAvailable };
        });
      },
    });
    return runner;
  }

  /** A recovery event of a runner's herd: one log line; a new plan drops the idle sessions of the old. */
  private recovered(runner: Runner | undefined, e: RecoveryEvent): void {
    const { event, ...fields } = e;
    if (event === 'node.lost' || (event === 'replan.done' && !e.ok)) this.o.log.warn(fields, event);
    else this.o.log.info(fields, event);
    this.onRecovery(e);
    if (event === 'replan.done' && e.ok && runner && runner === this.runner) {
      this.discovered = [...e.nodeIds].sort().join(',');
      void this.dropFailedIdle();
    }
  }

  /** Closes the idle sessions whose pipeline broke or runs on a replaced plan. */
  private async dropFailedIdle(): Promise<void> {
    const failed = this.idle.filter((h) => h.inner.failed === true);
    for (const h of failed) this.idle.splice(this.idle.indexOf(h), 1);
    await Promise.all(failed.map((h) => this.drop(h)));
  }

  /** Sessions kept open, idle, for prompt reuse (each holds a slot). */
  get idleSessions(): number {
    return this.idle.length;
  }

  /** Sessions lent to requests now. */
  get activeSessions(): number {
    return this.slots.active - this.idle.length;
  }

  /**
   * Waits (fairly) for a slot, then opens a session — or, given the prompt, takes a kept
   * session that holds a prefix of it (`cached` says how much). Rejects with 503 when the herd
   * is not ready, and with AbortedError when `signal` aborts while waiting.
   */
  async lease(sampling: SamplingOptions, signal?: AbortSignal, prompt?: readonly number[]): Promise<Lease> {
    this.requireReady();
    let held = prompt ? this.takeIdle(prompt) : undefined;
    if (held) held.session.resample(sampling);
    else {
      const pending = this.slots.acquire(signal);
      // Someone waits for a slot: idle sessions give theirs up.
      this.yieldIdle();
      const release: Release = await pending;
      let session: StagedSession;
      let runner: Runner;
      try {
        this.requireReady();
        runner = this.runner as Runner;
        session = await runner.open(sampling);
      } catch (e) {
        release();
        throw this.clusterFailure(e);
      }
      this.leases.set(runner, (this.leases.get(runner) ?? 0) + 1);
      const observed = new ObservedSession(session, (step) => this.onStep(step));
      // In-process, the step is timed inside the lock: waiting for one's turn is not compute.
      held = { runner, inner: session, observed, session: runner.mode === 'local' ? new LockedSession(observed, this.stepLock) : observed, release, lastUsed: 0 };
    }
    const h = held;
    h.observed.begin();
    const cached = prompt ? commonPrefix(h.observed.tokens, prompt) : 0;
    let closed = false;
    return {
      session: h.session,
      cached,
      close: async (keep = false) => {
        if (closed) return;
        closed = true;
        if (keep && this.keep(h)) return;
        await this.drop(h);
      },
    };
  }

  /**
   * The idle session for this prompt, out of the idle list: the one sharing the longest prefix
   * when that is at least half of the prompt (as llama.cpp's slot similarity), or the best one
   * anyway when no slot is free (reusing beats closing one and opening another). Undefined:
   * open a new session in a free slot, leaving the idle ones to the requests they match.
   */
  private takeIdle(prompt: readonly number[]): Held | undefined {
    // A pipeline that broke while idle (a node went away) is closed, not lent.
    void this.dropFailedIdle();
    let best: Held | undefined;
    let bestN = -1;
    for (const h of this.idle) {
      const n = commonPrefix(h.observed.tokens, prompt);
      if (n > bestN || (n === bestN && best && h.lastUsed < best.lastUsed)) {
        best = h;
        bestN = n;
      }
    }
    if (!best) return undefined;
    const free = this.slots.active < this.slots.size && this.slots.waiting === 0;
    if (free && (bestN === 0 || 2 * bestN < prompt.length)) return undefined;
    this.idle.splice(this.idle.indexOf(best), 1);
    return best;
  }

  /** Keeps a lent session idle, if it is intact and of the current herd; false: close it. */
  private keep(h: Held): boolean {
    if (h.observed.broken || h.runner !== this.runner || this.state !== 'ready') return false;
    h.lastUsed = performance.now();
    this.idle.push(h);
    this.yieldIdle();
    const idleMs = (this.o.idleSeconds ?? 0) * 1000;
    if (idleMs > 0) setTimeout(() => this.expire(h, idleMs), idleMs).unref();
    return true;
  }

  /** Closes h if it is still idle and has been for idleMs (a later keep() sets a timer of its own). */
  private expire(h: Held, idleMs: number): void {
    const i = this.idle.indexOf(h);
    // 50 ms of slack: a timer may fire a hair before performance.now() says the time is up.
    if (i < 0 || performance.now() - h.lastUsed < idleMs - 50) return;
    this.idle.splice(i, 1);
    this.o.log.debug({ idleSeconds: idleMs / 1000, tokens: h.observed.tokens.length }, 'session.expired');
    void this.drop(h);
  }

  /** Closes least recently used idle sessions while requests wait for their slots. */
  private yieldIdle(): void {
    while (this.slots.waiting > this.yielding && this.idle.length > 0) {
      let lru = 0;
      for (let i = 1; i < this.idle.length; i++) if (this.idle[i].lastUsed < this.idle[lru].lastUsed) lru = i;
      const [h] = this.idle.splice(lru, 1);
      this.yielding++;
      void this.drop(h).finally(() => {
        this.yielding--;
        this.yieldIdle();
      });
    }
  }

  /** Closes idle sessions: `/reset` in herd chat, a new plan, shutdown. */
  async dropIdle(): Promise<void> {
    await Promise.all(this.idle.splice(0).map((h) => this.drop(h)));
  }

  /** Frees a session's KV caches, then its slot; a replaced runner closes with its last session. */
  private async drop(h: Held): Promise<void> {
    try {
      await h.inner.close();
    } catch {
      // a failed pipeline is closed already
    } finally {
      h.release();
      const left = (this.leases.get(h.runner) ?? 1) - 1;
      if (left > 0) this.leases.set(h.runner, left);
      else {
        this.leases.delete(h.runner);
        if (this.retiring.delete(h.runner)) void h.runner.close();
      }
    }
  }

  /** A cluster error during a request: the herd is re-planned in the background; 503 to the client. */
  clusterFailure(e: unknown): unknown {
    if (!(e instanceof ClusterError) || this.runner?.mode !== 'cluster' || this.state !== 'ready') return e;
    this.o.log.error({ error: e.message }, 'herd.failed');
    const old = this.runner;
    this.runner = undefined;
    this.state = 'unavailable';
    this.lastError = e.message;
    void this.dropIdle();
    void old.close().finally(() => void this.start());
    return unavailable(`the herd failed: ${e.message}`);
  }

  private requireReady(): void {
    if (this.state === 'ready' && this.runner) return;
    if (this.state === 'loading') throw unavailable(`the model ${this.modelId} is still loading`, 'model_loading');
    throw unavailable(`no herd is ready${this.lastError ? `: ${this.lastError}` : ''}`);
  }

  async nodes(): Promise<NodeView[]> {
    return this.runner ? this.runner.nodes() : [];
  }

  async close(): Promise<void> {
    this.state = 'closed';
    clearTimeout(this.retryTimer);
    clearTimeout(this.watchTimer);
    this.slots.drain(unavailable('the server is shutting down', 'shutting_down'));
    await this.dropIdle();
    await this.loading?.catch(() => {});
    await this.runner?.close();
    for (const r of this.retiring) await r.close();
    this.retiring.clear();
    this.runner = undefined;
  }
}

/** Which nodes answered: the sorted node ids, '' when generation runs in-process. */
function nodeSetKey(set: NodeSet | undefined): string {
  return !set || set.mode === 'local' ? '' : set.nodes.map((n) => n.id).sort().join(',');
}

/** 4 sessions, fewer if that many in-process KV caches would take over half the free memory. */
function defaultParallel(c: ModelConfig, ctx: number, kvType: KvType, nodes: string): number {
  if (nodes.trim() !== 'local') return 4;
  const kvBytes = 2 * c.nLayers * ctx * c.nKvHeads * c.headDim * (kvType === 'f32' ? 4 : 2);
  return Math.max(1, Math.min(4, Math.floor((0.5 * freemem()) / kvBytes)));
}

/** Takes the lock around each step: sessions on one Transformer never overlap a step. */
class LockedSession implements InferenceSession {
  constructor(
    private readonly inner: InferenceSession,
    private readonly lock: FairQueue,
  ) {}

  get ctx(): number {
    return this.inner.ctx;
  }

  get logprobs(): TokenLogprobs | undefined {
    return this.inner.logprobs;
  }

  async step(tokens: readonly number[], start: number): Promise<number> {
    const release = await this.lock.acquire();
    try {
      return await this.inner.step(tokens, start);
    } finally {
      release();
    }
  }

  resample(sampling: SamplingOptions): void {
    this.inner.resample(sampling);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/**
 * Times each step, and hands it with its stages' times to the metrics; tracks the tokens the
 * session's KV caches hold, for prompt reuse.
 */
class ObservedSession implements InferenceSession {
  /** The token at each position the session holds. */
  readonly tokens: number[] = [];
  /** A step failed: what the stages hold is unknown, so the session is not kept. */
  broken = false;
  /** The next step is a request's first: its prefill. */
  private first = true;

  constructor(
    private readonly inner: StagedSession,
    private readonly observe: StepObserver,
  ) {}

  get ctx(): number {
    return this.inner.ctx;
  }

  get logprobs(): TokenLogprobs | undefined {
    return this.inner.logprobs;
  }

  /** A new request starts on the session. */
  begin(): void {
    this.first = true;
  }

  async step(tokens: readonly number[], start: number): Promise<number> {
    const t0 = performance.now();
    let token: number;
    try {
      token = await this.inner.step(tokens, start);
    } catch (e) {
      this.broken = true;
      throw e;
    }
    const seconds = (performance.now() - t0) / 1000;
    this.tokens.length = start;
    this.tokens.push(...tokens);
    this.observe({ phase: this.first ? 'prefill' : 'decode', tokens: tokens.length, seconds, stages: this.inner.lastStages });
    this.first = false;
    return token;
  }

  resample(sampling: SamplingOptions): void {
    this.inner.resample(sampling);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
