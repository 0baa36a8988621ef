// Starts a real `herd serve` on loopback (port 0: a free one) and collects its JSON log lines.

import { spawn, type ChildProcess } from 'node:child_process';
import type { Spawner } from './herd-proc.ts';
import { herdBin, repoRoot } from './paths.ts';

export interface LogLine {
  event: string;
  level: string;
  [k: string]: unknown;
}

export interface RunningServe {
  readonly child: ChildProcess;
  /** http://127.0.0.1:PORT */
  readonly url: string;
  readonly events: LogLine[];
  /** Everything the process wrote to stderr so far. */
  stderr(): string;
  waitFor(pred: (e: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** SIGTERM, then the exit code (SIGKILL after 30 s: only a hung process takes that long). */
  stop(): Promise<number | null>;
}

/** `spawn` runs it elsewhere (a network namespace: its loopback is the namespace's own). */
export async function startServe(
  args: readonly string[],
  opts: { waitReady?: boolean; env?: NodeJS.ProcessEnv; spawn?: Spawner } = {},
): Promise<RunningServe> {
  const argv = [herdBin, 'serve', '--host', '127.0.0.1', '--port', '0', ...args];
  const spawnOpts = {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'] as ['ignore', 'pipe', 'pipe'],
    env: opts.env ?? process.env,
  };
  const child = opts.spawn ? opts.spawn(process.execPath, argv, spawnOpts) : spawn(process.execPath, argv, spawnOpts);
  const events: LogLine[] = [];
  const waiters: { pred: (e: LogLine) => boolean; resolve: (e: LogLine) => void }[] = [];
  let raw = '';
  let buf = '';
  let out = '';
  let announced: (url: string) => void = () => {};
  const url = new Promise<string>((resolve) => (announced = resolve));
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    const m = /serving \S+ on (http:\/\/\S+)/.exec(out);
    if (m) announced(m[1]);
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    raw += d;
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line.startsWith('{')) continue;
      let e: LogLine;
      try {
        e = JSON.parse(line) as LogLine;
      } catch {
        continue;
      }
      events.push(e);
      for (const w of [...waiters]) {
        if (w.pred(e)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(e);
        }
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const waitFor = (pred: (e: LogLine) => boolean, timeoutMs = HUNG_MS): Promise<LogLine> => {
    const seen = events.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve: (e: LogLine) => (clearTimeout(timer), resolve(e)) };
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(w), 1);
        reject(new Error(`herd serve: no matching log line in ${timeoutMs} ms; stderr:\n${raw.slice(-3000)}`));
      }, timeoutMs);
      waiters.push(w);
      void exited.then((code) => {
        if (!waiters.includes(w)) return;
        clearTimeout(timer);
        waiters.splice(waiters.indexOf(w), 1);
        reject(new Error(`herd serve exited (${code}); stderr:\n${raw.slice(-3000)}`));
      });
    });
  };
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), HUNG_MS);
    const code = await exited;
    clearTimeout(timer);
    return code;
  };
  try {
    let timer: NodeJS.Timeout | undefined;
    const listening = await Promise.race([
      url,
      exited.then((code) => Promise.reject(new Error(`herd serve exited (${code}); stderr:\n${raw.slice(-3000)}`))),
      new Promise<never>(
        (_, reject) =>
          (timer = setTimeout(
            () => reject(new Error(`herd serve did not listen in ${HUNG_MS / 1000} s; stderr:\n${raw.slice(-3000)}`)),
            HUNG_MS,
          )),
      ),
    ]).finally(() => clearTimeout(timer));
    if (opts.waitReady ?? true) await waitFor((e) => e.event === 'model.ready');
    return { child, url: listening, events, stderr: () => raw, waitFor, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/**
 * How long a wait for something that takes milliseconds (a log line, a freed session, a process
 * start or exit) may last before the test calls it hung. Waits return as soon as the thing
 * happens, so this only bounds a failing test: it is far beyond any slow or loaded machine.
 */
export const HUNG_MS = 60_000;

/** Polls until `check` returns true (or throws after timeoutMs: only a hung server takes that long). */
export async function eventually(
  check: () => Promise<boolean>,
  timeoutMs = HUNG_MS,
  what = 'condition',
): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
