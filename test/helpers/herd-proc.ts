// Starting `herd` processes in tests: a node daemon whose JSON log lines are collected and
// whose `node.ready` event gives the port, and a CLI run with its stdout/stderr.

import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { fetchInfo } from '../../src/cluster/discovery/static.ts';
import { herdBin, repoRoot } from './paths.ts';
import { HUNG_MS } from './serve.ts';

export type Spawner = (command: string, args: readonly string[], opts: SpawnOptions) => ChildProcess;

export const localSpawn: Spawner = (command, args, opts) =>
  spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });

export interface LogEvent {
  event: string;
  level: string;
  [k: string]: unknown;
}

export interface RunningNode {
  readonly child: ChildProcess;
  readonly ready: LogEvent;
  readonly port: number;
  /** Every JSON log line so far. */
  readonly events: LogEvent[];
  /** Resolves with the first event (past or future) matching. */
  waitFor(pred: (e: LogEvent) => boolean, timeoutMs: number): Promise<LogEvent>;
  exited(): Promise<number | null>;
}

/** `herd node` flags for a daemon on loopback only: no mDNS, a free port, its own cache dir. */
export function loopbackNodeArgs(cacheDir: string): string[] {
  return ['--no-mdns', '--host', '127.0.0.1', '--port', '0', '--cache-dir', cacheDir];
}

/** Stage sessions open on the nodes (their Info, summed over every shard). */
export async function nodeSessions(nodes: readonly RunningNode[], clusterKey?: Buffer): Promise<number> {
  const infos = await Promise.all(nodes.map((n) => fetchInfo(`127.0.0.1:${n.port}`, HUNG_MS, clusterKey)));
  return infos.reduce((s, i) => s + i.shards.reduce((a, sh) => a + sh.sessions, 0), 0);
}

export async function startNode(
  args: readonly string[],
  spawner: Spawner = localSpawn,
  timeoutMs = HUNG_MS,
): Promise<RunningNode> {
  const child = spawner(process.execPath, [herdBin, 'node', ...args], { cwd: repoRoot });
  const events: LogEvent[] = [];
  const waiters: { pred: (e: LogEvent) => boolean; resolve: (e: LogEvent) => void }[] = [];
  let buf = '';
  let raw = '';
  child.stderr?.on('data', (b: Buffer) => {
    buf += b.toString();
    raw += b.toString();
    if (raw.length > 100_000) raw = raw.slice(-50_000);
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line.startsWith('{')) continue;
      try {
        const e = JSON.parse(line) as LogEvent;
        events.push(e);
        for (const w of [...waiters]) {
          if (w.pred(e)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve(e);
          }
        }
      } catch {
        // not ours
      }
    }
  });
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const waitFor = (pred: (e: LogEvent) => boolean, ms: number) => {
    const seen = events.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise<LogEvent>((resolve, reject) => {
      const w = { pred, resolve: (e: LogEvent) => (clearTimeout(timer), resolve(e)) };
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(w), 1);
        reject(new Error(`node: no matching log event in ${ms} ms; stderr tail:\n${raw.slice(-3000)}`));
      }, ms);
      waiters.push(w);
      void exit.then((code) => {
        if (waiters.includes(w)) {
          clearTimeout(timer);
          waiters.splice(waiters.indexOf(w), 1);
          reject(new Error(`node exited (${code}) before the awaited event; stderr tail:\n${raw.slice(-3000)}`));
        }
      });
    });
  };
  const ready = await waitFor((e) => e.event === 'node.ready', timeoutMs);
  return { child, ready, port: Number(ready.port), events, waitFor, exited: () => exit };
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs `herd ARGS` to completion (killed after timeoutMs). */
export function runHerd(
  args: readonly string[],
  spawner: Spawner = localSpawn,
  timeoutMs = 180_000,
): Promise<CliResult> {
  const t0 = Date.now();
  const child = spawner(process.execPath, [herdBin, ...args], { cwd: repoRoot });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (stderr += b.toString()));
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      stderr += `\n[test: killed after ${timeoutMs} ms]`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      // a process killed by a signal has no exit code: say which, for the failure message
      if (signal) stderr += `\n[test: exited on ${signal}]`;
      resolve({ code, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}
