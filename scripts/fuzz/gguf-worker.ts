// The child process of the GGUF fuzzer: runs cases [from, to) of a seeded run and writes one
// JSON line to stdout before each case ({"t":"start"}) and one after ({"t":"done"}), so the
// parent, which caps this process's heap and watches its time, knows which case a crash, an
// out-of-memory death or a hang belongs to.
//
//   node --import tsx --max-old-space-size=MiB scripts/fuzz/gguf-worker.ts SEED FROM TO DIR RSS_CAP_MIB SLOW_MS

import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { buildCorpus } from './gguf-corpus.ts';
import { checkFile, loaderRng, type Verdict } from './gguf-check.ts';
import { makeCase } from './gguf-mutate.ts';

export type WorkerLine =
  | { readonly t: 'ready'; readonly seeds: number }
  | { readonly t: 'start'; readonly i: number }
  | ({ readonly t: 'done'; readonly i: number; readonly ms: number; readonly seed: string } & Verdict);

function emit(line: WorkerLine): void {
  // stdout to a pipe is synchronous on Linux: the line is out before the next case can crash.
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function main(): void {
  const [seedArg, fromArg, toArg, dir, rssCapArg, slowArg] = process.argv.slice(2);
  const runSeed = Number(seedArg);
  const from = Number(fromArg);
  const to = Number(toArg);
  const rssCap = Number(rssCapArg) * 1024; // maxRSS is in KiB
  const slowMs = Number(slowArg);
  mkdirSync(dir, { recursive: true });
  const corpus = buildCorpus(dir);
  emit({ t: 'ready', seeds: corpus.length });
  const path = join(dir, `case-${process.pid}.gguf`);
  const fault = injectedFault();
  for (let i = from; i < to; i++) {
    emit({ t: 'start', i });
    if (fault?.index === i) fault.run();
    const c = makeCase(corpus, runSeed, i);
    writeFileSync(path, c.bytes);
    const t0 = performance.now();
    let verdict: Verdict = checkFile(path, loaderRng(runSeed, i));
    const ms = performance.now() - t0;
    if (verdict.outcome !== 'bug' && ms > slowMs)
      verdict = { outcome: 'bug', stage: verdict.stage, why: `took ${ms.toFixed(0)} ms`, error: 'slow' };
    const rss = process.resourceUsage().maxRSS;
    if (verdict.outcome !== 'bug' && rss > rssCap)
      verdict = {
        outcome: 'bug',
        stage: verdict.stage,
        why: `peak RSS reached ${(rss / 1024).toFixed(0)} MiB`,
        error: 'memory',
      };
    emit({ t: 'done', i, ms: Math.round(ms * 100) / 100, seed: c.seed, ...verdict });
    // Once over the cap, every later case would be blamed too: start afresh.
    if (rss > rssCap) process.exit(3);
  }
  rmSync(path, { force: true });
}

/**
 * HERD_FUZZ_INJECT=crash@I|hang@I|oom@I makes case I die, loop or exhaust the heap: how
 * test/fuzz-gguf.test.ts shows the parent catches each (the fuzz must be able to fail).
 */
function injectedFault(): { index: number; run: () => void } | undefined {
  const m = /^(crash|hang|oom)@(\d+)$/.exec(process.env.HERD_FUZZ_INJECT ?? '');
  if (!m) return undefined;
  const kind = m[1];
  const run = () => {
    if (kind === 'crash') process.abort();
    const hoard: number[][] = [];
    for (;;) if (kind === 'oom') hoard.push(new Array<number>(1 << 20).fill(1));
  };
  return { index: Number(m[2]), run };
}

main();
