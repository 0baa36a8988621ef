// Continuous batching, in this process and on every stage of a herd: the sessions of one model
// (or of one node's shard) share its SliceRunner, and their steps share the runner's steps. A
// session's step() is queued; on the next turn of the event loop the batcher takes every step
// waiting, under a per-step token budget, and runs them
// as ONE SliceRunner.step — each layer one matrix product over all their rows, attention per
// session over its own KV cache, sampling per session. A session that starts while others
// decode joins at the next step.
//
// Decode steps (one token) go first, then prompts, in arrival order, in pieces that fill what
// is left of the budget (on a node also of STEP_TARGET_SECONDS, as the last prompt step
// measured: chunked prefill): a long prompt runs over several steps beside the others' decode
// rather than stalling it, and its session hears its token after the last piece.
// Only the last piece samples, so the sampler's random state and penalties see exactly what
// they see when the session runs alone. Every kernel computes a row the same way whichever rows
// share its matrix product (the matmul = matvecs check), so each session's tokens are exactly
// those it gets alone.
//
// Over a pipeline of S stages a step takes at most 1/S of the sessions active here, so S
// micro-batches go round the ring (first stage, …, last, coordinator, first again) and every
// stage works on one while the others are elsewhere. Sessions that start at different times
// would form uneven groups (2 + 1 + 1 over 2 stages: 3 steps a round where 2 do), so a decode
// step with room left waits (two decode steps' compute at most) for the group due here next when
// all of it fits (hold()): the groups merge into S even ones and stay so. Waiting never changes
// what a session computes, only which steps it shares.

import { StepError } from './history.ts';
import type { SliceRunner, Sequence, StepEntry } from './slice.ts';

/** What a session's step returns: the token sampled after its last, and the compute it shared. */
export interface BatchedStep {
  readonly token: number;
  /** Compute time of the steps the session's tokens went through, seconds. */
  readonly seconds: number;
}

/** One session's step as a caller asks for it: the runner's entry, whole (the batcher cuts it into pieces). */
export type StepRequest = Omit<StepEntry, 'sample'>;

/** One session's step, waiting or under way (a prompt run in pieces). */
interface Pending {
  readonly req: StepRequest;
  /** Stages of the pipeline the session runs through (1 in-process). */
  readonly stages: number;
  /** Tokens already run (earlier pieces). */
  done: number;
  seconds: number;
  readonly resolve: (r: BatchedStep) => void;
  readonly reject: (e: unknown) => void;
}

/** Counts of the steps run, for tests and benchmarks. */
export interface BatcherStats {
  steps: number;
  /** Session entries over all steps. */
  entries: number;
  /** The most sessions one step served. */
  maxEntries: number;
  /** Compute time of the steps, seconds. */
  seconds: number;
}

/**
 * The compute a node's step with prompt pieces aims at: its event loop turns between steps, so
 * it answers keepalive pings and calls at least about this often even during a long prefill on
 * a slow machine (a silent peer counts as lost after seconds, cluster/rpc.ts). In-process there
 * is no such peer, and steps are bounded by the token budget alone.
 */
export const STEP_TARGET_SECONDS = 0.5;

/**
 * The longest a step waits for a group to join it (hold(): about two decode steps otherwise).
 * The event loop runs meanwhile, so the node answers calls and keepalives (cluster/rpc.ts); only
 * the held sessions wait, and in vain at most once before the batcher backs off.
 */
const MAX_HOLD_SECONDS = 1;
/** After holds in vain in a row, steps run without holding: 2, 4, … up to this many rounds of the ring. */
const MAX_CALM = 64;

export class SessionClosedError extends Error {
  constructor() {
    super('the session was closed while its step waited');
    this.name = 'SessionClosedError';
  }
}

export class StepBatcher {
  private readonly queue: Pending[] = [];
  private scheduled = false;
  /** A step is under way: a group's step awaits its syncs, and the next must wait for it. */
  private running = false;
  readonly stats: BatcherStats;
  /** Tokens one step takes at most (a session's decode token always counts; prompts fill the rest). */
  readonly budget: number;
  /** Steps run here: the clock of `last`. */
  private count = 0;
  /**
   * Each session's last step here (by `count`): the sessions of the last 2 × stages steps are
   * those active here, whose steps are elsewhere in the ring now; those of one step, a group.
   */
  private readonly last = new Map<Sequence, number>();
  /** Sessions whose last step here ran prompt tokens: in prefill, slower elsewhere than a decode step. */
  private readonly prompting = new Set<Sequence>();
  private stages = 1;
  /** Sessions a step may take now (microBatch()). */
  private cap = Infinity;
  /** The step about to run is held for a group arriving (hold()): since when, ms, and its timer. */
  private heldSince: number | undefined;
  private holdTimer: NodeJS.Timeout | undefined;
  /** Holds in a row that waited in vain (`missed`: the one ending now), and the steps to run before holding again. */
  private misses = 0;
  private calm = 0;
  private missed = false;
  /** Compute of the last decode step, seconds: about how long a group takes to come round one stage. */
  private decodeSeconds = 0;
  /** Steps that were held for a group, and the time they waited, seconds. */
  readonly holds = { steps: 0, seconds: 0 };
  /** Prompt tokens a step takes at most: those that fit targetSeconds, from the last step with prompt pieces. */
  private promptCap = Infinity;
  private readonly targetSeconds: number | undefined;

  constructor(
    readonly runner: SliceRunner,
    /**
     * `stats`: counts to add to (a node sums the steps of all its shards). `targetSeconds`: cut
     * prompt pieces to about this much compute per step (a node: STEP_TARGET_SECONDS).
     */
    o: { budget?: number; stats?: BatcherStats; targetSeconds?: number } = {},
  ) {
    this.targetSeconds = o.targetSeconds;
    const budget = o.budget ?? runner.model.batch;
    if (!(Number.isInteger(budget) && budget >= 1))
      throw new RangeError(`a step's token budget must be an integer >= 1, got ${budget}`);
    this.budget = budget;
    this.stats = o.stats ?? { steps: 0, entries: 0, maxEntries: 0, seconds: 0 };
  }

  /** Sessions with a step waiting or under way. */
  get pending(): number {
    return this.queue.length;
  }

  /**
   * Queues the request's tokens at positions start, … of its session for the next step;
   * resolves with the token sampled after the last (-1 on a slice without the head). Rejects at
   * once (StepError) when the step does not fit the session, and when the session already has a
   * step queued. `stages`: of the pipeline the session runs through (see plan()).
   */
  step(req: StepRequest, stages = 1): Promise<BatchedStep> {
    try {
      if (this.queue.some((p) => p.req.seq === req.seq)) throw new StepError('a session steps once at a time');
      this.runner.check([req]);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise<BatchedStep>((resolve, reject) => {
      this.queue.push({ req, stages, done: 0, seconds: 0, resolve, reject });
      this.schedule();
    });
  }

  /** Drops the session's queued step (its promise rejects with SessionClosedError); false if none. */
  cancel(seq: Sequence): boolean {
    // Closed: no longer active here, so no step holds for it (nor counts it in the micro-batch).
    this.last.delete(seq);
    this.prompting.delete(seq);
    if (this.heldSince !== undefined) this.schedule();
    const i = this.queue.findIndex((p) => p.req.seq === seq);
    if (i < 0) return false;
    const [p] = this.queue.splice(i, 1);
    p.reject(new SessionClosedError());
    return true;
  }

  /**
   * Runs the next step on the next turn of the event loop: every session woken by the last step
   * feeds its token back in the same turn (promise continuations), so each decoding session makes
   * the next step, and timers, sockets and aborts run in between.
   */
  private schedule(): void {
    if (this.scheduled || this.running) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.run();
    });
  }

  /**
   * The pieces of the next step: decode steps first, then prompts in arrival order, within the
   * budget. Over a pipeline of S stages, a step takes at most 1/S of the sessions active here
   * (micro-batches): with all of them in one step the stages would take turns, each idle while
   * the others compute; in S groups every stage works on one while the others are elsewhere in
   * the ring. A group, once formed, keeps its place in the queue's order (and hold() merges
   * groups that are too small).
   */
  private plan(): { p: Pending; n: number }[] {
    const picks: { p: Pending; n: number }[] = [];
    const slots = this.microBatch();
    let left = this.budget;
    for (const p of this.queue) {
      if (left === 0 || picks.length === slots) break;
      if (p.req.tokens.length - p.done === 1) {
        picks.push({ p, n: 1 });
        left--;
      }
    }
    // While sessions decode, a prompt takes a small piece of their step, so their next token
    // waits little longer than alone (inter-token latency); with none decoding, all the budget.
    const decoding = picks.length > 0;
    const cap = decoding ? Math.min(this.promptCap, Math.max(1, Math.floor(this.budget / 4))) : this.promptCap;
    let promptLeft = Math.max(1, Math.min(left, cap));
    for (const p of this.queue) {
      if (left === 0 || promptLeft === 0 || picks.length === slots) break;
      const rest = p.req.tokens.length - p.done;
      if (rest > 1) {
        const n = Math.min(rest, left, promptLeft);
        picks.push({ p, n });
        left -= n;
        promptLeft -= n;
      }
    }
    return picks;
  }

  /** Sessions one step may take: all in-process; over S stages, 1/S of those active here. */
  private microBatch(): number {
    this.stages = 1;
    for (const p of this.queue) if (p.stages > this.stages) this.stages = p.stages;
    if (this.stages === 1) return (this.cap = Infinity);
    const here = this.waiting();
    let active = here.size;
    for (const [seq, at] of this.last) if (!here.has(seq) && this.isActive(at)) active++;
    return (this.cap = Math.ceil(active / this.stages));
  }

  private waiting(): Set<Sequence> {
    return new Set(this.queue.map((p) => p.req.seq));
  }

  /** A session that last stepped here at step `at` is active: stepped within the last 2 × stages steps. */
  private isActive(at: number): boolean {
    return this.count - at < 2 * this.stages;
  }

  /**
   * How long the step about to run waits yet, ms (0: run now). Over a pipeline, sessions that
   * start at different times form groups of different sizes, which go round the ring apart
   * for good: 2 + 1 + 1 over 2 stages is 3 steps per round at each stage, where 2 + 2 is 2. So
   * a decode step with room under the micro-batch waits for the group due here next — the one
   * that stepped here longest ago among those elsewhere in the ring (the ring keeps its order),
   * or the rest of its own group, split on the way — when all of it fits, and the two go on as
   * one. A group that does not fit is not waited for: 3 over 2 stages settles to 2 + 1, and
   * then no step waits; nor is a session whose last step here ran prompt tokens (its prefill
   * takes longer). A wait is bounded by about two decode steps' compute (the group due is at
   * most a step away on the stage before) and MAX_HOLD_SECONDS. A group that does not come in
   * that time (its sessions ended, went idle, or lag) makes the batcher back off: no step holds
   * for the next 2, 4, … rounds, until a hold is met again; an idle session stops counting as
   * active meanwhile, and a closed one is forgotten at once (cancel). A prompt piece never waits.
   */
  private hold(picks: readonly { p: Pending; n: number }[]): number {
    if (this.stages === 1 || this.calm > 0 || picks.length >= this.cap || picks.length < this.queue.length) return 0;
    if (picks.some(({ p }) => p.req.tokens.length !== 1)) return 0;
    const here = this.waiting();
    let due = Infinity;
    let size = 0;
    for (const [seq, at] of this.last) {
      if (here.has(seq) || this.prompting.has(seq) || !this.isActive(at) || at > due) continue;
      if (at < due) {
        due = at;
        size = 0;
      }
      size++;
    }
    if (size === 0 || picks.length + size > this.cap) return 0;
    const now = performance.now();
    this.heldSince ??= now;
    const left = this.heldSince + 1000 * Math.min(MAX_HOLD_SECONDS, 2 * this.decodeSeconds) - now;
    if (left >= 1) return left;
    this.missed = true;
    this.misses++;
    this.calm = Math.min(2 ** this.misses, MAX_CALM) * this.stages;
    return 0;
  }

  /** The held step runs (or has gone): counts the wait. */
  private endHold(): void {
    if (this.heldSince === undefined) return;
    if (!this.missed) this.misses = 0;
    this.missed = false;
    this.holds.steps++;
    this.holds.seconds += (performance.now() - this.heldSince) / 1000;
    this.heldSince = undefined;
    clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
  }

  private async run(): Promise<void> {
    const picks = this.plan();
    const wait = picks.length > 0 ? this.hold(picks) : 0;
    if (wait > 0) {
      // Re-planned on every arrival (schedule()); the timer runs the step at the latest.
      this.holdTimer ??= setTimeout(() => {
        this.holdTimer = undefined;
        this.schedule();
      }, wait);
      return;
    }
    this.endHold();
    if (picks.length === 0) return;
    const entries = picks.map(({ p, n }) => piece(p, n));
    this.count++;
    if (this.calm > 0) this.calm--;
    for (const e of entries) {
      this.last.set(e.seq, this.count);
      if (e.tokens.length > 1) this.prompting.add(e.seq);
      else this.prompting.delete(e.seq);
    }
    for (const [seq, at] of this.last) {
      if (this.isActive(at)) continue;
      this.last.delete(seq);
      this.prompting.delete(seq);
    }
    this.running = true;
    this.stats.steps++;
    this.stats.entries += entries.length;
    this.stats.maxEntries = Math.max(this.stats.maxEntries, entries.length);
    try {
      // Without a pause a Transformer's step runs start to end without yielding: no session is
      // closed or queued while it runs. A group's step yields at its syncs; steps queued meanwhile
      // wait for it (running), and a session closed meanwhile only loses its token.
      const { sampled, seconds } = await this.runner.step(entries);
      this.stats.seconds += seconds;
      const rows = entries.reduce((n, e) => n + e.tokens.length, 0);
      if (rows === entries.length) this.decodeSeconds = seconds;
      else if (this.targetSeconds !== undefined && seconds > 0)
        this.promptCap = Math.max(1, Math.floor((rows * this.targetSeconds) / seconds));
      picks.forEach(({ p, n }, i) => {
        p.done += n;
        p.seconds += seconds;
        if (p.done < p.req.tokens.length) return;
        this.remove(p);
        p.resolve({ token: sampled[i], seconds: p.seconds });
      });
    } catch (e) {
      for (const { p } of picks) {
        this.remove(p);
        p.reject(e);
      }
    }
    this.running = false;
    if (this.queue.length > 0) this.schedule();
  }

  private remove(p: Pending): void {
    const i = this.queue.indexOf(p);
    if (i >= 0) this.queue.splice(i, 1);
  }
}

/**
 * The next `n` tokens of a waiting step as a runner entry. A new generation's sampling goes with
 * the first piece (the sampler restarts before anything samples); hidden states are read and
 * written at the piece's offset into the whole request's rows.
 */
function piece(p: Pending, n: number): StepEntry {
  const { req, done } = p;
  const whole = done === 0 && n === req.tokens.length;
  if (whole) return req;
  const { hiddenIn, hiddenOut } = req;
  return {
    seq: req.seq,
    tokens: req.tokens.slice(done, done + n),
    start: req.start + done,
    sampling: done === 0 ? req.sampling : undefined,
    sample: done + n === req.tokens.length,
    hiddenIn: hiddenIn && ((rows, from) => hiddenIn(rows, from + done)),
    hiddenOut: hiddenOut && ((rows, from) => hiddenOut(rows, from + done)),
  };
}
