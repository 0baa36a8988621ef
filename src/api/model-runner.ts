// The model behind `herd serve` and `herd chat`, kept loaded: in this process (`--nodes local`)
// or as a plan over the herd (api/open.ts chooses). A load that fails is tried again with
// back-off (2 s doubling to 30 s) while the server answers 503. With `--nodes auto` it browses
// again while idle and re-plans when the set of nodes changed (a Pi that booted late joins).
// A replaced model retires: it closes once the last session opened on it has ended.
//
// A node lost mid-generation (over the herd): the cluster re-plans over the nodes that still
// answer and each broken session replays its tokens on the new plan (cluster/coordinator/
// resume.ts); the client sees a pause. Only when the model no longer fits does the request
// fail, and the runner reloads in the background.

import { freemem, totalmem } from 'node:os';
import type { Logger } from 'pino';
import type { GgufFile } from '../gguf/reader.ts';
import type { PlanEntry } from '../engine/session.ts';
import { ClusterError } from '../cluster/errors.ts';
import { jsonLogger, silentLogger } from '../cluster/log.ts';
import type { NodeSet } from '../cluster/coordinator/nodes.ts';
import { findHerd, type RecoveryEvent } from '../cluster/coordinator/herd-model.ts';
import { fetchInfo } from '../cluster/discovery/static.ts';
import { unavailable } from './errors.ts';
import { loadModel, type LoadedModel, type ModelOptions } from './open.ts';

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

/** Hears a lost node, each re-plan and each resumed request (for the metrics). */
export type RecoveryObserver = (e: RecoveryEvent) => void;

/** The loaded model, with how the dashboard sees its nodes. */
export type Served = LoadedModel & { nodes(): Promise<NodeView[]> };

export interface RunnerOptions extends ModelOptions {
  readonly modelPath: string;
  /** The id clients name in `model`. */
  readonly modelId: string;
  readonly file: GgufFile;
  readonly ctx: number;
  /** Sessions at once (for the log). */
  readonly slots: number;
  readonly log: Logger;
  /** Seconds between attempts to bring up a herd that is not ready (default 2, doubling to 30). */
  readonly retrySeconds?: number;
  /** With `nodes: auto`, browse again this often while idle (default 30; 0: never). */
  readonly rediscoverSeconds?: number;
}

/** What the runner asks of whoever keeps the sessions. */
export interface SessionKeeper {
  /** Requests hold or wait for sessions: no re-plan now. */
  readonly busy: boolean;
  /** Closes the kept sessions (their model was replaced or failed). */
  dropIdle(): Promise<void>;
  /** Closes the kept sessions whose pipeline broke or runs on a replaced plan. */
  dropFailedIdle(): Promise<void>;
}

export class ModelRunner {
  private served: Served | undefined;
  private state: HostStatus = 'loading';
  private lastError: string | undefined;
  private loading: Promise<void> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryMs: number;
  private watchTimer: NodeJS.Timeout | undefined;
  /** The node ids the current plan was made from ('' for in-process). */
  private discovered = '';
  /** Open sessions per model, so a replaced model closes when its last session ends. */
  private readonly sessions = new Map<Served, number>();
  private readonly retiring = new Set<Served>();

  constructor(
    private readonly o: RunnerOptions,
    /** Whoever keeps the sessions (the pool, made after the runner). */
    private readonly keeper: () => SessionKeeper,
  ) {
    this.retryMs = (o.retrySeconds ?? 2) * 1000;
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
    return this.served?.mode;
  }

  get plan(): PlanEntry[] {
    return this.served?.plan ?? [];
  }

  /** Why the planner chose the herd's plan (undefined in-process or before a load). */
  get planReason(): string | undefined {
    return this.served?.mode === 'cluster' ? this.served.reason : undefined;
  }

  /** Loads the model (in-process or over the herd); on failure it retries with backoff. */
  start(): Promise<void> {
    this.loading ??= this.load().finally(() => (this.loading = undefined));
    return this.loading;
  }

  private async load(): Promise<void> {
    const log = this.o.log;
    this.state = 'loading';
    const t0 = performance.now();
    log.info({ model: this.o.modelPath, nodes: this.o.nodes, ctx: this.o.ctx, slots: this.o.slots }, 'model.loading');
    try {
      const set = await this.resolve();
      const served = await this.make(set);
      if (this.closed) {
        await served.close();
        return;
      }
      this.served = served;
      this.discovered = nodeSetKey(set);
      this.state = 'ready';
      this.lastError = undefined;
      this.retryMs = (this.o.retrySeconds ?? 2) * 1000;
      this.logReady(served, t0);
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

  private logReady(served: Served, t0: number): void {
    // A tensor-parallel group shows as its members, leader first: alpha+beta@leader[0,5).
    const who = (p: PlanEntry) => (p.nodes && p.nodes.length > 1 ? p.nodes.map((m) => m.name).join('+') : p.node);
    const plan = served.plan.map((p) => `${who(p)}@${p.address}[${p.layers[0]},${p.layers[1]})`);
    this.o.log.info({ mode: served.mode, plan, ms: Math.round(performance.now() - t0) }, 'model.ready');
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
      if (this.keeper().busy) return;
      const set = await this.resolve();
      const key = nodeSetKey(set);
      if (key === this.discovered || this.state !== 'ready') return;
      this.o.log.info({ before: this.discovered || 'in-process', after: key || 'in-process' }, 'herd.changed');
      const t0 = performance.now();
      const served = await this.make(set);
      if (this.closed) {
        await served.close();
        return;
      }
      const old = this.served;
      this.served = served;
      this.discovered = key;
      this.logReady(served, t0);
      // Kept sessions belong to the old plan.
      void this.keeper().dropIdle();
      if (old) this.retire(old);
    } catch (e) {
      this.o.log.warn({ error: (e as Error).message }, 'herd.replan_failed');
    } finally {
      this.scheduleWatch();
    }
  }

  /** Closes a replaced model once its last session has ended. */
  private retire(served: Served): void {
    if ((this.sessions.get(served) ?? 0) === 0) void served.close();
    else this.retiring.add(served);
  }

  private async make(set: NodeSet | undefined): Promise<Served> {
    const o = this.o;
    let served: Served | undefined;
    const onRecovery = (e: RecoveryEvent) => this.recovered(served, e);
    const loaded = await loadModel(
      {
        ...o,
        onRecovery,
        // The plan fits every slot's KV caches and buffers on each node (issue 12 scope 4).
        sessions: o.slots,
        log: o.log.isLevelEnabled('debug') ? jsonLogger({ role: 'coordinator' }) : silentLogger,
      },
      set,
    );
    if (loaded.mode === 'local') {
      const view = { ...loaded.plan[0], backend: loaded.model.backend.name, arch: process.arch };
      return {
        ...loaded,
        nodes: async () => [{ ...view, memTotal: totalmem(), memAvailable: freemem(), rss: process.memoryUsage().rss }],
      };
    }
    o.log.info({ reason: loaded.reason }, 'plan');
    for (const l of loaded.shards) o.log.info({ ...l, layers: l.layers }, 'stage.loaded');
    const infos = new Map(set?.infos);
    let fetched = 0;
    // Onto `loaded` itself: its plan is a getter (a re-plan changes it).
    served = Object.assign(loaded, {
      nodes: async () => {
        // Memory changes as nodes load and serve: ask again at most every 5 s.
        if (performance.now() - fetched > 5000) {
          fetched = performance.now();
          await Promise.all(
            loaded.plan.map(async (p) => {
              try {
                infos.set(p.address, await fetchInfo(p.address, 1500, o.key));
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
    return served;
  }

  /** A recovery event of a model's herd: one log line; a new plan drops the idle sessions of the old. */
  private recovered(served: Served | undefined, e: RecoveryEvent): void {
    const { event, ...fields } = e;
    if (event === 'node.lost' || (event === 'replan.done' && !e.ok)) this.o.log.warn(fields, event);
    else this.o.log.info(fields, event);
    this.o.onRecovery?.(e);
    if (event === 'replan.done' && e.ok && served && served === this.served) {
      this.discovered = [...e.nodeIds].sort().join(',');
      void this.keeper().dropFailedIdle();
    }
  }

  /** The model to open a session on; 503 when none is ready. */
  current(): Served {
    if (this.state === 'ready' && this.served) return this.served;
    if (this.state === 'loading') throw unavailable(`the model ${this.o.modelId} is still loading`, 'model_loading');
    throw unavailable(`no herd is ready${this.lastError ? `: ${this.lastError}` : ''}`);
  }

  /** True while `served` is the model new sessions open on: its sessions may be kept. */
  isCurrent(served: Served): boolean {
    return served === this.served && this.state === 'ready';
  }

  /** Sessions open now on any model, the current and those retiring. */
  get openSessions(): number {
    let n = 0;
    for (const count of this.sessions.values()) n += count;
    return n;
  }

  /** A session opened on `served`. */
  opened(served: Served): void {
    this.sessions.set(served, (this.sessions.get(served) ?? 0) + 1);
  }

  /** A session of `served` ended: a replaced model closes with its last. */
  ended(served: Served): void {
    const left = (this.sessions.get(served) ?? 1) - 1;
    if (left > 0) this.sessions.set(served, left);
    else {
      this.sessions.delete(served);
      if (this.retiring.delete(served)) void served.close();
    }
  }

  /** A cluster error during a request: the herd is reloaded in the background; 503 to the client. */
  clusterFailure(e: unknown): unknown {
    if (!(e instanceof ClusterError) || this.served?.mode !== 'cluster' || this.state !== 'ready') return e;
    this.o.log.error({ error: e.message }, 'herd.failed');
    const old = this.served;
    this.served = undefined;
    this.state = 'unavailable';
    this.lastError = e.message;
    void this.keeper().dropIdle();
    void old.close().finally(() => void this.start());
    return unavailable(`the herd failed: ${e.message}`);
  }

  async nodes(): Promise<NodeView[]> {
    return this.served ? this.served.nodes() : [];
  }

  /** No more loads, re-plans or kept sessions; close() then closes the model. */
  stop(): void {
    this.state = 'closed';
    clearTimeout(this.retryTimer);
    clearTimeout(this.watchTimer);
  }

  async close(): Promise<void> {
    this.stop();
    await this.loading?.catch(() => {});
    await this.served?.close();
    for (const r of this.retiring) await r.close();
    this.retiring.clear();
    this.served = undefined;
  }
}

/** Which nodes answered: the sorted node ids, '' when generation runs in-process. */
function nodeSetKey(set: NodeSet | undefined): string {
  return !set || set.mode === 'local'
    ? ''
    : set.nodes
        .map((n) => n.id)
        .sort()
        .join(',');
}
