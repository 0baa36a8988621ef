// The GGUF fuzzer's parent: runs the cases in a child process (gguf-worker.ts) whose heap is
// capped, watches it, and turns a crash, an out-of-memory death or a case that stops answering
// into a finding for the case it was on, then goes on in a fresh child from the next case.
// Every finding names the run seed and case index, and its file is written to the output folder
// so it can be opened again (`npm run fuzz -- --gguf-case I --seed S` re-runs one).

import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { buildCorpus, type Seed } from './gguf-corpus.ts';
import { makeCase } from './gguf-mutate.ts';
import type { WorkerLine } from './gguf-worker.ts';

export interface GgufFuzzOptions {
  readonly seed: number;
  /** Cases [from, from + cases). */
  readonly cases: number;
  readonly from?: number;
  /** Where failing files go (created when there is one). */
  readonly outDir: string;
  /** --max-old-space-size of the child. */
  readonly heapMiB?: number;
  /** Peak RSS of the child past which a case counts as an unbounded allocation. */
  readonly rssCapMiB?: number;
  /** A case slower than this is a finding. */
  readonly slowMs?: number;
  /** A child silent this long is hung on its case: killed, and the case is a finding. */
  readonly hangMs?: number;
  /** Stop starting cases after this long (the report says how many ran). */
  readonly timeLimitMs?: number;
  readonly onProgress?: (done: number, total: number) => void;
  /** Test hook: make case I of the child crash, hang or run out of heap ('crash@I', …). */
  readonly inject?: string;
}

export interface GgufFinding {
  readonly index: number;
  readonly kind: 'bug' | 'crash' | 'oom' | 'hang';
  readonly seedFile: string;
  readonly ops: readonly string[];
  readonly detail: string;
  /** The mutated file, kept for a rerun. */
  readonly file: string;
}

export interface GgufFuzzReport {
  readonly seed: number;
  readonly from: number;
  readonly casesRun: number;
  readonly seconds: number;
  readonly casesPerSecond: number;
  /** Outcome counts: loaded, parsed, rejected:<stage>[:<code>], bug. */
  readonly outcomes: Readonly<Record<string, number>>;
  readonly findings: readonly GgufFinding[];
  readonly childRestarts: number;
}

const WORKER = fileURLToPath(new URL('./gguf-worker.ts', import.meta.url));
const MAX_FINDINGS = 200;

interface ChildResult {
  /** The case the child was on when it stopped, if it stopped inside one. */
  readonly inCase?: number;
  readonly next: number;
  readonly why?: 'crash' | 'oom' | 'hang' | 'time';
  readonly stderr: string;
}

export async function fuzzGguf(o: GgufFuzzOptions): Promise<GgufFuzzReport> {
  const from = o.from ?? 0;
  const end = from + o.cases;
  const scratch = mkdtempSync(join(tmpdir(), 'herd-fuzz-gguf-'));
  const outcomes: Record<string, number> = {};
  const findings: GgufFinding[] = [];
  let corpus: Seed[] | undefined;
  let restarts = 0;
  let run = 0;
  const t0 = Date.now();
  const deadline = o.timeLimitMs === undefined ? Infinity : t0 + o.timeLimitMs;

  const record = (index: number, kind: GgufFinding['kind'], detail: string): void => {
    if (findings.length >= MAX_FINDINGS) return;
    corpus ??= buildCorpus(scratch);
    const c = makeCase(corpus, o.seed, index);
    mkdirSync(o.outDir, { recursive: true });
    const file = join(o.outDir, `gguf-seed${o.seed}-case${index}.gguf`);
    writeFileSync(file, c.bytes);
    findings.push({ index, kind, seedFile: c.seed, ops: c.ops, detail, file });
  };

  try {
    let next = from;
    while (next < end && Date.now() < deadline) {
      const r = await runChild(o, next, end, scratch, deadline, (line) => {
        if (line.t !== 'done') return;
        run++;
        o.onProgress?.(run, o.cases);
        const key =
          line.outcome === 'rejected'
            ? `rejected:${line.stage}${line.code ? `:${line.code}` : ''}`
            : line.outcome === 'bug'
              ? 'bug'
              : line.outcome;
        outcomes[key] = (outcomes[key] ?? 0) + 1;
        if (line.outcome === 'bug') record(line.i, 'bug', `${line.stage}: ${line.why}: ${line.error}`);
      });
      if (r.why === 'time') break;
      if (r.inCase !== undefined && r.why) {
        run++;
        outcomes[r.why] = (outcomes[r.why] ?? 0) + 1;
        record(r.inCase, r.why, r.stderr.trim().split('\n').slice(-5).join(' | '));
      }
      if (r.next < end) restarts++;
      next = r.next;
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  const seconds = (Date.now() - t0) / 1000;
  return {
    seed: o.seed,
    from,
    casesRun: run,
    seconds,
    casesPerSecond: run / seconds,
    outcomes,
    findings,
    childRestarts: restarts,
  };
}

/** Runs one child over [from, end) until it finishes, dies, hangs or the time is up. */
function runChild(
  o: GgufFuzzOptions,
  from: number,
  end: number,
  scratch: string,
  deadline: number,
  onLine: (line: WorkerLine) => void,
): Promise<ChildResult> {
  const hangMs = o.hangMs ?? 30_000;
  const args = [
    '--import',
    'tsx',
    `--max-old-space-size=${o.heapMiB ?? 256}`,
    WORKER,
    String(o.seed),
    String(from),
    String(end),
    join(scratch, 'work'),
    String(o.rssCapMiB ?? 768),
    String(o.slowMs ?? 5_000),
  ];
  const env = { ...process.env, HERD_FUZZ_INJECT: o.inject ?? '' };
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => {
    stderr = (stderr + b.toString()).slice(-20_000);
  });
  let current: number | undefined;
  let ready = false;
  let next = from;
  let why: ChildResult['why'];
  // The child's start-up (tsx, the corpus) is not a case: the watchdog starts at its first line.
  let watchdog: NodeJS.Timeout | undefined;
  const arm = (ms: number) => {
    clearTimeout(watchdog);
    watchdog = setTimeout(
      () => {
        why = Date.now() >= deadline ? 'time' : 'hang';
        child.kill('SIGKILL');
      },
      Math.max(1, Math.min(ms, deadline - Date.now())),
    );
  };
  arm(Math.max(hangMs, 60_000));
  const lines = createInterface({ input: child.stdout });
  lines.on('line', (text) => {
    const line = JSON.parse(text) as WorkerLine;
    if (line.t === 'ready') ready = true;
    if (line.t === 'start') current = line.i;
    if (line.t === 'done') {
      current = undefined;
      next = line.i + 1;
    }
    onLine(line);
    arm(hangMs);
  });
  return new Promise((resolve, reject) => {
    child.once('close', (code, signal) => {
      clearTimeout(watchdog);
      // A child that dies before its first case is the fuzzer broken, not a finding.
      if (!ready && why !== 'time') {
        reject(new Error(`the GGUF fuzz worker failed to start (${signal ?? code}): ${stderr.slice(-2000)}`));
        return;
      }
      if (why === undefined && current !== undefined && (code !== 0 || signal)) {
        why = /heap out of memory|Allocation failed|ERR_MEMORY/i.test(stderr) ? 'oom' : 'crash';
      }
      // Exit 3: the child stopped itself after a case over the memory cap (already reported).
      if (why === undefined && code !== 0 && code !== 3 && current === undefined && next < end) why = 'crash';
      const inCase = current ?? (why === 'crash' ? next : undefined);
      resolve({ inCase, next: inCase !== undefined && why !== 'time' ? inCase + 1 : next, why, stderr });
    });
  });
}
