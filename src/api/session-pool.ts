// The sessions of `herd serve` and `herd chat`: every request gets its own session with its own
// KV caches, admitted through a fair queue of slots, opened on the runner's current model.
//
// Prompt cache (llama.cpp's cache_prompt): a finished request's session may stay open, idle,
// holding the tokens its KV caches hold. A request whose prompt shares a prefix with them takes
// it, goes back to the common prefix and computes only the rest. An idle session keeps its slot
// until a request is waiting for one: then the least recently used idle session is closed;
// and, with idleSeconds, once it has been idle that long.
//
// Over the herd a node may refuse a new session for want of memory (RESOURCE_EXHAUSTED, its
// budget: cluster/node/budget.ts). The request then waits, holding its slot: an idle session
// is closed first to free its KV caches, else it waits until another session ends and tries
// again; only when no session is open to wait for does it fail (503).
//
// In-process, the sessions share one model, and the active requests' steps share its steps
// (engine/batcher.ts: continuous batching, up to the slots at once). Over the herd, each
// session is its own Forward stream, so stages work on different requests at once (pipeline
// parallelism).

import type { Logger } from 'pino';
import { commonPrefix, type InferenceSession, type StagedSession, type StageTime } from '../engine/session.ts';
import type { SamplingOptions, TokenLogprobs } from '../engine/sampler.ts';
import { CapacityError } from '../cluster/capacity.ts';
import type { ModelRunner, Served, SessionKeeper } from './model-runner.ts';
import { queueFull, unavailable } from './errors.ts';
import { AbortedError, FairQueue, type Release } from './queue.ts';

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

export interface PoolOptions {
  /** Sessions (KV caches) at once. */
  readonly size: number;
  /** Seconds a kept session may stay idle before it is closed (0: until a request needs its slot). */
  readonly idleSeconds?: number;
  readonly log: Logger;
  /** Hears every step of every session (the metrics). */
  readonly onStep?: StepObserver;
  /**
   * Requests that may wait for a slot (beyond those an idle session's slot will take): one more
   * is refused with a 429 at once rather than queued without bound. Default: unbounded.
   */
  readonly maxWaiting?: number;
}

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
  readonly served: Served;
  readonly session: StagedSession;
  readonly release: Release;
  lastUsed: number;
  /** A step failed: what the stages hold is unknown, so the session is not kept. */
  broken: boolean;
  /** Whose prompt the session holds (an API key, a client address): only they may reuse it. */
  readonly owner: string | undefined;
}

export class SessionPool implements SessionKeeper {
  readonly slots: FairQueue;
  /** Kept sessions no request holds, for prompt reuse; each keeps its slot. */
  private readonly idle: Held[] = [];
  /** Idle sessions being closed to give their slot to a waiting request. */
  private yielding = 0;
  /** Sessions being opened (those open, lent or idle, the runner counts: runner.openSessions). */
  private opening = 0;
  /** Requests waiting for a session to end (a node had no room for theirs). */
  private readonly endWaiters = new Set<() => void>();
  /** How long a request holds its slot, seconds (moving average): a refused client's Retry-After. */
  private holdSeconds = 1;

  constructor(
    private readonly runner: ModelRunner,
    private readonly o: PoolOptions,
  ) {
    this.slots = new FairQueue(o.size);
  }

  /** Sessions kept open, idle, for prompt reuse (each holds a slot). */
  get idleSessions(): number {
    return this.idle.length;
  }

  /** Sessions lent to requests now. */
  get activeSessions(): number {
    return this.slots.active - this.idle.length;
  }

  get busy(): boolean {
    return this.slots.active > this.idle.length || this.slots.waiting > 0;
  }

  /**
   * Waits (fairly) for a slot, then opens a session — or, given the prompt, takes a kept
   * session that holds a prefix of it (`cached` says how much). Rejects with 503 when the herd
   * is not ready, with 429 when maxWaiting requests wait already, and with AbortedError when
   * `signal` aborts while waiting. Only a session kept for the same `owner` is reused: another
   * client's kept prompt is neither continued nor revealed (cached tokens) to this one.
   */
  async lease(
    sampling: SamplingOptions,
    signal?: AbortSignal,
    prompt?: readonly number[],
    owner?: string,
  ): Promise<Lease> {
    this.runner.current();
    let held = prompt ? this.takeIdle(prompt, owner) : undefined;
    if (held) held.session.resample(sampling);
    else {
      this.refuseWhenFull();
      const pending = this.slots.acquire(signal);
      // Someone waits for a slot: idle sessions give theirs up.
      this.yieldIdle();
      const release: Release = await pending;
      let opened: { served: Served; session: StagedSession };
      try {
        opened = await this.open(sampling, signal);
      } catch (e) {
        release();
        throw e;
      }
      this.runner.opened(opened.served);
      held = { ...opened, release, lastUsed: 0, broken: false, owner };
    }
    const h = held;
    const cached = prompt ? commonPrefix(h.session.tokens, prompt) : 0;
    let closed = false;
    const t0 = performance.now();
    return {
      session: new TimedSession(h, this.o.onStep),
      cached,
      close: async (keep = false) => {
        if (closed) return;
        closed = true;
        this.holdSeconds = 0.8 * this.holdSeconds + (0.2 * (performance.now() - t0)) / 1000;
        if (keep && this.keep(h)) return;
        await this.drop(h);
      },
    };
  }

  /**
   * Opens a session on the current model; while a node has no room for it, frees an idle
   * session or waits for one to end, and tries again.
   */
  private async open(
    sampling: SamplingOptions,
    signal?: AbortSignal,
  ): Promise<{ served: Served; session: StagedSession }> {
    for (;;) {
      let refused: CapacityError;
      this.opening++;
      try {
        const served = this.runner.current();
        return { served, session: await served.open(sampling) };
      } catch (e) {
        if (!(e instanceof CapacityError)) throw this.runner.clusterFailure(e);
        refused = e;
      } finally {
        this.opening--;
        // Opened or refused, the herd's memory changed: requests waiting for room look again.
        this.wakeWaiters();
      }
      if (this.idle.length > 0) {
        await this.drop(this.idle.splice(this.lruIdle(), 1)[0]);
        continue;
      }
      // Nothing open or opening will end and make room: fail rather than wait forever.
      const open = this.runner.openSessions;
      if (open + this.opening === 0) throw unavailable(`no room for a session on the herd: ${refused.message}`);
      this.o.log.info({ error: refused.message, open }, 'session.wait_for_memory');
      await this.sessionEnded(signal);
    }
  }

  /** Resolves when a session closes; AbortedError when `signal` aborts first. */
  private sessionEnded(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(new AbortedError());
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        this.endWaiters.delete(done);
        reject(new AbortedError());
      };
      const done = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      this.endWaiters.add(done);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private wakeWaiters(): void {
    const waiters = [...this.endWaiters];
    this.endWaiters.clear();
    for (const w of waiters) w();
  }

  private lruIdle(): number {
    let lru = 0;
    for (let i = 1; i < this.idle.length; i++) if (this.idle[i].lastUsed < this.idle[lru].lastUsed) lru = i;
    return lru;
  }

  /**
   * The idle session for this prompt, out of the idle list: the one sharing the longest prefix
   * when that is at least half of the prompt (as llama.cpp's slot similarity), or the best one
   * anyway when no slot is free (reusing beats closing one and opening another). Undefined:
   * open a new session in a free slot, leaving the idle ones to the requests they match.
   */
  private takeIdle(prompt: readonly number[], owner: string | undefined): Held | undefined {
    // A pipeline that broke while idle (a node went away) is closed, not lent.
    void this.dropFailedIdle();
    let best: Held | undefined;
    let bestN = -1;
    for (const h of this.idle) {
      if (h.owner !== owner) continue;
      const n = commonPrefix(h.session.tokens, prompt);
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

  /**
   * A 429 when maxWaiting requests wait for a slot already, not counting those an idle session
   * (closing now or soon) will make room for. Retry-After: the slots' turnover for that line.
   */
  private refuseWhenFull(): void {
    const max = this.o.maxWaiting ?? Infinity;
    const waiting = this.slots.waiting - this.idle.length - this.yielding;
    if (waiting < max) return;
    const retry = Math.min(60, Math.max(1, Math.ceil((this.holdSeconds * (waiting + 1)) / this.slots.size)));
    throw queueFull(`${this.slots.waiting} requests wait for a session already (herd serve --queue ${max})`, retry);
  }

  /** Keeps a lent session idle, if it is intact and of the current model; false: close it. */
  private keep(h: Held): boolean {
    if (h.broken || !this.runner.isCurrent(h.served)) return false;
    h.lastUsed = performance.now();
    this.idle.push(h);
    // A request waiting for room may close it now (open()).
    this.wakeWaiters();
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
    this.o.log.debug({ idleSeconds: idleMs / 1000, tokens: h.session.tokens.length }, 'session.expired');
    void this.drop(h);
  }

  /** Closes least recently used idle sessions while requests wait for their slots. */
  private yieldIdle(): void {
    while (this.slots.waiting > this.yielding && this.idle.length > 0) {
      const [h] = this.idle.splice(this.lruIdle(), 1);
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

  /** Closes the idle sessions whose pipeline broke or runs on a replaced plan. */
  async dropFailedIdle(): Promise<void> {
    const failed = this.idle.filter((h) => h.session.failed === true);
    for (const h of failed) this.idle.splice(this.idle.indexOf(h), 1);
    await Promise.all(failed.map((h) => this.drop(h)));
  }

  /** Frees a session's KV caches, then its slot. */
  private async drop(h: Held): Promise<void> {
    try {
      await h.session.close();
    } catch {
      // a failed pipeline is closed already
    } finally {
      h.release();
      this.runner.ended(h.served);
      // Its KV caches are freed on every node: a request waiting for room tries again.
      this.wakeWaiters();
    }
  }
}

/** What a request steps: the held session, each step timed and handed to the observer. */
class TimedSession implements InferenceSession {
  /** The next step is the request's first: its prefill. */
  private first = true;

  constructor(
    private readonly h: Held,
    private readonly observe: StepObserver | undefined,
  ) {}

  get ctx(): number {
    return this.h.session.ctx;
  }

  get logprobs(): TokenLogprobs | undefined {
    return this.h.session.logprobs;
  }

  async step(tokens: readonly number[], start: number): Promise<number> {
    const t0 = performance.now();
    let token: number;
    try {
      token = await this.h.session.step(tokens, start);
    } catch (e) {
      this.h.broken = true;
      throw e;
    }
    const seconds = (performance.now() - t0) / 1000;
    this.observe?.({
      phase: this.first ? 'prefill' : 'decode',
      tokens: tokens.length,
      seconds,
      stages: this.h.session.lastStages,
    });
    this.first = false;
    return token;
  }

  resample(sampling: SamplingOptions): void {
    this.h.session.resample(sampling);
  }

  close(): Promise<void> {
    return this.h.session.close();
  }
}
