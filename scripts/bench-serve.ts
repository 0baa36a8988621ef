// `npm run bench:serve`: serving figures for K concurrent streams (issue 12), in one run. For
// each K of the list, K greedy streaming /v1/completions of `--tokens` tokens each, sent at
// once, with prompts of different lengths (token ids, the same for every engine):
//   herd in-process   `herd serve --nodes local --threads T` (continuous batching)
//   llama.cpp         node-llama-cpp 3.21.1 (test/oracle), one context with `sequences: K`,
//                     K concurrent sequence evaluations, T threads, the same file
//   herd 2 stages     `herd node` daemons on loopback, each pinned to one core (taskset -c,
//   herd 3 stages     --threads 1, cores taken round robin), a coordinator `herd serve --nodes …`
// Aggregate tok/s is all streams' tokens over the time from the first request to the last
// token; TTFT is each stream's time to its first token; ITL the gaps between its tokens
// (herd: between SSE text chunks, so a token whose text is held back — a partial UTF-8
// character — merges with the next). herd's figures go through HTTP and SSE, llama.cpp's are
// taken in-process. Each herd stream's tokens are checked against its prompt run alone (on the
// first herd server measured): neither batching nor the layout may change them.
//
// All engines stand ready at once and are measured K by K in turn, so a slow phase of the
// machine hits them alike; with --reps R each figure is the best of R.
//
//   npm run bench:serve -- [--model F.gguf] [--k 1,2,4,8] [--tokens 48] [--threads 2]
//                          [--runs local,llama.cpp,stages2,stages3] [--reps 1] [--json]
//
// The model defaults to the synthetic TinyLlama-1.1B-shape Q4_0 (written once by `herd synth`'s
// code into .cache/bench). The machine is usually shared: read the figures as noisy.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { GgufFile } from '../src/gguf/reader.ts';
import { fetchInfo } from '../src/cluster/discovery/static.ts';
import { synthShape } from '../src/model/synth.ts';
import { startNode, loopbackNodeArgs, type RunningNode, type Spawner } from '../test/helpers/herd-proc.ts';
import { startServe, type RunningServe } from '../test/helpers/serve.ts';
import { quantile, streamRequest } from '../test/helpers/sse-client.ts';

const root = fileURLToPath(new URL('../', import.meta.url));
const RUNS = ['local', 'llama.cpp', 'stages2', 'stages3'] as const;
type RunName = (typeof RUNS)[number];
const LABEL: Record<RunName, string> = {
  local: 'herd in-process',
  'llama.cpp': 'llama.cpp',
  stages2: 'herd 2 stages',
  stages3: 'herd 3 stages',
};

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    k: { type: 'string', default: '1,2,4,8' },
    tokens: { type: 'string', default: '48' },
    threads: { type: 'string', default: '2' },
    runs: { type: 'string', default: RUNS.join(',') },
    reps: { type: 'string', default: '1' },
    json: { type: 'boolean', default: false },
  },
});
const ks = values.k.split(',').map(Number);
const tokens = Number(values.tokens);
const threads = Number(values.threads);
const runs = values.runs.split(',') as RunName[];
const reps = Number(values.reps);
if (!(Number.isInteger(reps) && reps >= 1)) throw new Error(`--reps must be an integer >= 1, got ${values.reps}`);
for (const k of ks) if (!(Number.isInteger(k) && k >= 1)) throw new Error(`--k: ${k} is not a positive integer`);
if (!(Number.isInteger(tokens) && tokens >= 2)) throw new Error(`--tokens must be an integer >= 2, got ${tokens}`);
for (const r of runs) if (!RUNS.includes(r)) throw new Error(`--runs: unknown run ${r} (known: ${RUNS.join(', ')})`);
const maxK = Math.max(...ks);
/** Per session: the longest prompt and the tokens, with room (llama.cpp pads to 256 anyway). */
const CTX = 256;
const log = (line: string) => process.stderr.write(`bench-serve: ${line}\n`);

interface Figures {
  run: RunName;
  k: number;
  tokens: number;
  wall_ms: number;
  tps: number;
  ttft_p50_ms: number;
  ttft_p99_ms: number;
  itl_p50_ms: number;
  itl_p99_ms: number;
  /** herd: every stream got the tokens its prompt gets alone. */
  same_tokens?: boolean;
  /** herd over stages: where each process's time went during the K streams. */
  processes?: ProcessTime[];
}

/**
 * One process of a staged run over the K streams: its CPU seconds (all threads) against the wall
 * time, and for a node the compute of its batched steps (NodeCounters.step_seconds): the rest
 * of its CPU is messages, (de)serialisation and the event loop.
 */
interface ProcessTime {
  name: string;
  cpu_s: number;
  wall_s: number;
  step_s?: number;
  steps?: number;
  entries?: number;
}

/** CPU seconds (user + system, every thread) a live process has used, from /proc. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces) in its parentheses: utime is the 14th field, stime the 15th.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / 100;
}

function ensureModel(): string {
  if (values.model) return values.model;
  const dir = join(root, '.cache/bench');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, 'tinyllama-q4_0-s1.gguf');
  if (!existsSync(path)) {
    log('writing the synthetic TinyLlama Q4_0 file (once; cached in .cache/bench)');
    synthShape('tinyllama', 'q4_0', 1, path);
  }
  return path;
}

/** Stream i's prompt: BOS then 8 + 5i ids spread over the vocabulary, past the special tokens. */
function prompt(i: number, vocab: number, bos: number): number[] {
  const out = [bos];
  for (let j = 1; j <= 8 + 5 * i; j++) out.push(3 + ((j * 7919 + i * 104729) % (vocab - 3)));
  return out;
}

function figures(
  run: RunName,
  k: number,
  streams: { sent: number; at: number[]; n: number }[],
  sameTokens?: boolean,
): Figures {
  const n = streams.reduce((s, x) => s + x.n, 0);
  const wall = Math.max(...streams.map((s) => s.at.at(-1) ?? s.sent)) - Math.min(...streams.map((s) => s.sent));
  const ttft = streams.filter((s) => s.at.length > 0).map((s) => s.at[0] - s.sent);
  const itl = streams.flatMap((s) => s.at.slice(1).map((t, i) => t - s.at[i]));
  return {
    run,
    k,
    tokens: n,
    wall_ms: wall,
    tps: n / (wall / 1000),
    ttft_p50_ms: quantile(ttft, 0.5),
    ttft_p99_ms: quantile(ttft, 0.99),
    itl_p50_ms: quantile(itl, 0.5),
    itl_p99_ms: quantile(itl, 0.99),
    same_tokens: sameTokens,
  };
}

/** One engine standing ready to measure K streams; closed at the end. */
interface Setup {
  readonly run: RunName;
  measure(k: number): Promise<Figures>;
  close(): Promise<void>;
  /** A herd server's process id. */
  readonly pid?: number;
}

/** Each prompt's tokens run alone on the first herd server set up: every stream of every run must get them. */
const aloneTokens = new Map<number, string>();

const body = (p: number[], n: number) => ({ prompt: p, max_tokens: n, temperature: 0, cache_prompt: false });

/** A `herd serve` on loopback, warmed up, measured through its API. */
async function serveSetup(
  run: RunName,
  args: string[],
  env: NodeJS.ProcessEnv,
  stopAlso: () => Promise<void> = async () => {},
): Promise<Setup> {
  let serve: RunningServe;
  try {
    serve = await startServe(
      ['--ctx', String(CTX), '--parallel', String(maxK), '--no-mdns', '--log-level', 'info', ...args],
      { env: { ...process.env, ...env } },
    );
  } catch (e) {
    await stopAlso();
    throw e;
  }
  const close = async () => {
    await serve.stop();
    await stopAlso();
  };
  try {
    const warm = await streamRequest(serve.url, 'completions', body(prompts[0], 4));
    if (warm.status !== 200)
      throw new Error(`${LABEL[run]}: warm-up answered ${warm.status}: ${JSON.stringify(warm.error)}`);
    if (aloneTokens.size === 0) {
      log(`${LABEL[run]}: each prompt alone, for the check`);
      for (const [i, p] of prompts.entries()) {
        const r = await streamRequest(serve.url, 'completions', body(p, tokens));
        if (!r.herd) throw new Error(`${LABEL[run]}: prompt ${i} alone: ${r.status} ${JSON.stringify(r.error)}`);
        aloneTokens.set(i, JSON.stringify(r.herd.tokens));
      }
    }
  } catch (e) {
    await close();
    throw e;
  }
  const measure = async (k: number) => {
    const res = await Promise.all(
      prompts.slice(0, k).map((p) => streamRequest(serve.url, 'completions', body(p, tokens))),
    );
    let same = true;
    for (const [i, r] of res.entries()) {
      if (r.status !== 200 || r.error !== undefined || !r.herd)
        throw new Error(`${LABEL[run]} K=${k} stream ${i}: ${r.status} ${JSON.stringify(r.error)}`);
      same &&= aloneTokens.get(i) === JSON.stringify(r.herd.tokens);
    }
    const streams = res.map((r) => ({
      sent: r.sentAt,
      at: r.chunks.map((c) => c.at),
      n: r.usage?.completion_tokens ?? 0,
    }));
    return figures(run, k, streams, same);
  };
  return { run, measure, close, pid: serve.child.pid };
}

/** The few node-llama-cpp 3.21.1 calls used here (dist/evaluator/LlamaContext/LlamaContext.d.ts). */
interface LlamaSequence {
  evaluate(tokens: number[], options: { temperature: number }): AsyncGenerator<number, void, void>;
  dispose(): void;
}
interface LlamaModel {
  createContext(o: { contextSize: number; sequences: number; threads: number; batchSize: number }): Promise<{
    getSequence(): LlamaSequence;
    dispose(): Promise<void>;
  }>;
  dispose(): Promise<void>;
}

/** llama.cpp in this process: for K streams, one context with K sequences evaluating at once. */
async function llamaSetup(): Promise<Setup> {
  const { getOracleLlama } = await import('../test/oracle/llama.ts');
  const llama = await getOracleLlama();
  const loaded = (await llama.loadModel({ modelPath: model, gpuLayers: 0 })) as unknown as LlamaModel;
  const generate = async (k: number, n: number) => {
    const context = await loaded.createContext({ contextSize: CTX, sequences: k, threads, batchSize: 512 });
    try {
      return await Promise.all(
        prompts.slice(0, k).map(async (p) => {
          const seq = context.getSequence();
          const s = { sent: performance.now(), at: [] as number[], n: 0 };
          for await (const _token of seq.evaluate(p, { temperature: 0 })) {
            s.at.push(performance.now());
            if (++s.n === n) break;
          }
          seq.dispose();
          return s;
        }),
      );
    } finally {
      await context.dispose();
    }
  };
  await generate(1, 4); // warm-up: first touches of the weights
  return {
    run: 'llama.cpp',
    measure: async (k) => figures('llama.cpp', k, await generate(k, tokens)),
    close: () => loaded.dispose(),
  };
}

/** `herd node` under `taskset -c CORE`: one core each. */
const pinned =
  (core: number): Spawner =>
  (command, args, opts) =>
    spawn('taskset', ['-c', String(core), command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });

/** `stages` pinned `herd node` daemons and a coordinator `herd serve --nodes …` over them. */
async function stagesSetup(stages: number, dir: string): Promise<Setup> {
  const nodes: RunningNode[] = [];
  const stopNodes = async () => {
    for (const n of nodes) {
      n.child.kill('SIGTERM');
      await n.exited();
    }
  };
  try {
    for (let i = 0; i < stages; i++) {
      const args = [
        ...loopbackNodeArgs(join(dir, `stages${stages}-node${i}`)),
        '--name',
        `bench-${stages}-${i}`,
        '--model-dir',
        dirname(model),
        '--threads',
        '1',
        // The same weight for every node: the plan splits the layers evenly, whatever the noise.
        '--throughput',
        '10',
      ];
      nodes.push(await startNode(args, pinned(i % cpus().length)));
    }
  } catch (e) {
    await stopNodes();
    throw e;
  }
  const addresses = nodes.map((n) => `127.0.0.1:${n.port}`);
  const setup = await serveSetup(
    stages === 2 ? 'stages2' : 'stages3',
    ['--model', model, '--nodes', addresses.join(','), '--stages', String(stages)],
    { HERD_CACHE_DIR: join(dir, `stages${stages}-serve`) },
    stopNodes,
  );
  interface Sample {
    name: string;
    cpu: number;
    node?: { steps: number; entries: number; seconds: number };
  }
  const sample = async () => {
    const at = performance.now() / 1000;
    const all: Sample[] = [{ name: 'coordinator', cpu: cpuSeconds(setup.pid!) }];
    for (const [i, n] of nodes.entries()) {
      const c = (await fetchInfo(addresses[i], 10_000, undefined)).counters;
      if (!c) throw new Error(`node ${i + 1} reported no counters`);
      const node = { steps: Number(c.steps), entries: Number(c.stepEntries), seconds: c.stepSeconds };
      all.push({ name: `node ${i + 1}`, cpu: cpuSeconds(n.child.pid!), node });
    }
    return { at, all };
  };
  return {
    ...setup,
    measure: async (k) => {
      const before = await sample();
      const f = await setup.measure(k);
      const after = await sample();
      const processes = after.all.map((a, i): ProcessTime => {
        const b = before.all[i];
        const t: ProcessTime = { name: a.name, cpu_s: a.cpu - b.cpu, wall_s: after.at - before.at };
        if (!a.node || !b.node) return t;
        return {
          ...t,
          step_s: a.node.seconds - b.node.seconds,
          steps: a.node.steps - b.node.steps,
          entries: a.node.entries - b.node.entries,
        };
      });
      return { ...f, processes };
    },
  };
}

const model = ensureModel();
const file = GgufFile.open(model);
const vocab = file.requireTensor('token_embd.weight').dims[1];
const bos = file.number('tokenizer.ggml.bos_token_id', 1);
const prompts = Array.from({ length: maxK }, (_, i) => prompt(i, vocab, bos));
if (runs.includes('llama.cpp'))
  spawnSync(process.execPath, [join(root, 'test/oracle/ensure.mjs')], { stdio: ['ignore', 'inherit', 'inherit'] });

/** Other work on the machine, for reading the figures. */
const loadBefore = loadavg();
const dir = mkdtempSync(join(tmpdir(), 'herd-bench-serve-'));
const setups: Setup[] = [];
/** The best of the repetitions for each run and K (a shared machine's slow phases only ever slow a run down). */
const best = new Map<string, Figures>();
try {
  for (const run of runs) {
    log(`setting up ${LABEL[run]}`);
    if (run === 'local')
      setups.push(await serveSetup(run, ['--model', model, '--nodes', 'local', '--threads', String(threads)], {}));
    else if (run === 'llama.cpp') setups.push(await llamaSetup());
    else setups.push(await stagesSetup(run === 'stages2' ? 2 : 3, dir));
  }
  // K by K, every engine in turn: a slow phase of the machine hits them all alike.
  for (let rep = 0; rep < reps; rep++)
    for (const k of ks)
      for (const s of setups) {
        const f = await s.measure(k);
        log(`${LABEL[s.run]} K=${k}: ${f.tps.toFixed(1)} tok/s${f.same_tokens === false ? ' (TOKENS DIFFER)' : ''}`);
        const key = `${s.run}/${k}`;
        const prev = best.get(key);
        if (!prev || f.tps > prev.tps)
          best.set(key, { ...f, same_tokens: f.same_tokens && prev?.same_tokens !== false });
        else if (f.same_tokens === false) prev.same_tokens = false;
      }
} finally {
  for (const s of setups) await s.close();
  rmSync(dir, { recursive: true, force: true });
}
const rows = runs.flatMap((run) => ks.map((k) => best.get(`${run}/${k}`)).filter((f): f is Figures => f !== undefined));

const at = (run: RunName, k: number) => rows.find((r) => r.run === run && r.k === k);
/** a / b of a field, undefined when either run is missing. */
const ratio = (a: Figures | undefined, b: Figures | undefined, field: 'tps' | 'itl_p99_ms') =>
  a && b ? a[field] / b[field] : undefined;
const ratios = [
  { what: 'herd in-process: K=4 / K=1 tok/s', target: '≥ 2.0', value: ratio(at('local', 4), at('local', 1), 'tps') },
  {
    what: 'herd in-process / llama.cpp at K=4, tok/s',
    target: '≥ 1.0',
    value: ratio(at('local', 4), at('llama.cpp', 4), 'tps'),
  },
  {
    what: 'herd 2 stages: K=4 / K=1 tok/s',
    target: '≥ 3.0',
    value: ratio(at('stages2', 4), at('stages2', 1), 'tps'),
  },
  {
    what: 'herd in-process: p99 ITL K=4 / K=1',
    target: '≤ 3.0',
    value: ratio(at('local', 4), at('local', 1), 'itl_p99_ms'),
  },
];

const load = (l: number[]) => l.map((x) => x.toFixed(1)).join(' ');
const machine =
  `${cpus()[0]?.model} (${cpus().length} cores), ${threads} threads in-process, nodes one core each; ` +
  `load average ${load(loadBefore)} before, ${load(loadavg())} after`;
if (values.json) {
  process.stdout.write(`${JSON.stringify({ machine, model, tokens, rows, ratios })}\n`);
} else {
  const fmt = (x: number | undefined, d = 1) => (x !== undefined && Number.isFinite(x) ? x.toFixed(d) : '–');
  const lines = [
    `machine: ${machine}; ${tokens} greedy tokens per stream`,
    '',
    `| K streams | ${runs.map((r) => `${LABEL[r]} tok/s`).join(' | ')} |`,
    `| ---: | ${runs.map(() => '---:').join(' | ')} |`,
    ...ks.map((k) => `| ${k} | ${runs.map((r) => fmt(at(r, k)?.tps)).join(' | ')} |`),
    '',
    '| run | K | tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | tokens |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
    ...rows.map(
      (r) =>
        `| ${LABEL[r.run]} | ${r.k} | ${fmt(r.tps)} | ${fmt(r.ttft_p50_ms, 0)} | ${fmt(r.ttft_p99_ms, 0)} | ` +
        `${fmt(r.itl_p50_ms)} | ${fmt(r.itl_p99_ms)} | ${r.same_tokens === undefined ? '' : r.same_tokens ? 'same as alone' : 'DIFFER'} |`,
    ),
    '',
    "Where the time of each staged run went (CPU: every thread of the process; step: compute of its batched steps; the rest of a node's CPU is its messages and event loop):",
    '',
    '| run | K | process | CPU % of wall | step % of wall | other CPU per entry ms | entries per step |',
    '| --- | ---: | --- | ---: | ---: | ---: | ---: |',
    ...rows.flatMap((r) =>
      (r.processes ?? []).map(
        (p) =>
          `| ${LABEL[r.run]} | ${r.k} | ${p.name} | ${fmt((100 * p.cpu_s) / p.wall_s, 0)} | ` +
          `${p.step_s === undefined ? '–' : fmt((100 * p.step_s) / p.wall_s, 0)} | ` +
          `${p.step_s === undefined || !p.entries ? '–' : fmt((1000 * (p.cpu_s - p.step_s)) / p.entries, 2)} | ` +
          `${p.steps ? fmt(p.entries! / p.steps, 2) : '–'} |`,
      ),
    ),
    '',
    '| ratio | target | measured |',
    '| --- | ---: | ---: |',
    ...ratios.map((r) => `| ${r.what} | ${r.target} | ${fmt(r.value, 2)} |`),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}
process.exit(0);
