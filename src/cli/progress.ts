// Progress of model loading and shard transfer, for the user on stderr. On a terminal each
// node/stage gets one line, redrawn in place (a bar, MiB done of total, MB/s); otherwise
// (a pipe, a log file) each stage prints plain one-line events: at its start, at every
// quarter and at the end. No dependency: a few ANSI escapes do it.

import type { ProgressEvent, ProgressSink } from '../cluster/coordinator/progress.ts';

/** The part of a stream the renderer uses (process.stderr, or a fake in tests). */
export interface ProgressStream {
  write(chunk: string): unknown;
  readonly isTTY?: boolean;
  readonly columns?: number;
}

export interface ProgressOptions {
  /** Redraw in place; default `stream.isTTY`. */
  readonly tty?: boolean;
  /** Milliseconds clock; default performance.now. */
  readonly now?: () => number;
  /** Least time between terminal redraws (the last one always draws); default 100 ms. */
  readonly redrawMs?: number;
}

interface StageState {
  readonly label: string;
  readonly t0: number;
  bytes: number;
  total: number;
  /** Plain mode: the last quarter printed (0..4), -1 before the start line. */
  quarter: number;
  done: boolean;
}

const MIB = 1024 * 1024;
const BAR = 24;

export class ProgressRenderer {
  private readonly stages = new Map<string, StageState>();
  private readonly tty: boolean;
  private readonly now: () => number;
  private readonly redrawMs: number;
  /** Terminal mode: lines drawn so far (the cursor sits below them). */
  private drawn = 0;
  private lastDraw = -Infinity;

  constructor(
    private readonly stream: ProgressStream,
    o: ProgressOptions = {},
  ) {
    this.tty = o.tty ?? stream.isTTY === true;
    this.now = o.now ?? (() => performance.now());
    this.redrawMs = o.redrawMs ?? 100;
  }

  /** The sink to hand to openInference. */
  readonly sink: ProgressSink = (e) => this.update(e);

  update(e: ProgressEvent): void {
    if (!(e.total > 0)) return;
    const key = `${e.phase} ${e.stage}`;
    let s = this.stages.get(key);
    // A stage loaded again (herd serve re-planning) starts over; a repeat of 100% is ignored.
    if (s?.done && e.bytes >= e.total) return;
    if (!s || s.done) {
      s = { label: key, t0: this.now(), bytes: 0, total: e.total, quarter: -1, done: false };
      this.stages.set(key, s);
    }
    s.bytes = Math.min(Math.max(e.bytes, 0), e.total);
    s.total = e.total;
    s.done = s.bytes >= s.total;
    if (this.tty) this.redraw(s.done || s.quarter < 0);
    else this.plain(s);
    s.quarter = Math.max(s.quarter, 0);
  }

  private plain(s: StageState): void {
    const q = Math.floor((4 * s.bytes) / s.total);
    if (s.quarter >= 0 && q <= s.quarter && !s.done) return;
    if (s.quarter >= 4) return;
    s.quarter = s.done ? 4 : q;
    this.stream.write(`herd: ${this.describe(s)}\n`);
  }

  private redraw(force: boolean): void {
    const t = this.now();
    if (!force && t - this.lastDraw < this.redrawMs) return;
    this.lastDraw = t;
    const width = this.stream.columns && this.stream.columns > 20 ? this.stream.columns - 1 : Infinity;
    let out = this.drawn > 0 ? `\x1b[${this.drawn}A` : '';
    for (const s of this.stages.values()) {
      const pct = s.bytes / s.total;
      const fill = Math.round(pct * BAR);
      const line = `herd: ${s.label} [${'#'.repeat(fill)}${'.'.repeat(BAR - fill)}] ${this.numbers(s)}`;
      out += `\r${line.length > width ? line.slice(0, width) : line}\x1b[K\n`;
    }
    this.drawn = this.stages.size;
    this.stream.write(out);
  }

  private describe(s: StageState): string {
    return `${s.label}: ${this.numbers(s)}`;
  }

  private numbers(s: StageState): string {
    const secs = (this.now() - s.t0) / 1000;
    const rate = secs > 0 ? s.bytes / 1e6 / secs : 0;
    const pct = Math.floor((100 * s.bytes) / s.total);
    return `${(s.bytes / MIB).toFixed(1)}/${(s.total / MIB).toFixed(1)} MiB (${pct}%), ${rate.toFixed(rate < 10 ? 1 : 0)} MB/s`;
  }
}
