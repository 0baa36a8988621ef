// `npm run bench`: herd against llama.cpp (node-llama-cpp, the same prebuilt llama.cpp the
// oracle tests use) on the same synthetic TinyLlama-shape files, in one run, 2 threads,
// engines alternating so machine noise hits both. Decode and prefill tok/s, the ratio to
// llama.cpp, each decode figure as a share of the memory-bandwidth limit (weight bytes read
// per token ÷ measured read bandwidth), and peak RSS against file + KV cache + 64 MiB.
// herd's RSS is that of a real `herd run` (bin/herd.js, as a user runs it) on the same
// file, context and KV type; the speed figures come from scripts/bench-engine.ts.
//
//   npm run bench -- [--models q4_0,q8_0,q4_k_m] [--backends native,wasm] [--reps 2]
//                    [--threads 2] [--decode 64] [--prefill 128] [--json]
//
// --backends also takes wasm-simd128: the wasm kernels without relaxed SIMD, as a runtime
// that lacks it runs them (its RSS is the wasm one's, so no `herd run` is measured for it).

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { GgufFile } from '../src/gguf/reader.ts';
import { synthShape } from '../src/model/synth.ts';

const root = fileURLToPath(new URL('../', import.meta.url));
const { values } = parseArgs({
  options: {
    models: { type: 'string', default: 'q4_0,q8_0,q4_k_m' },
    backends: { type: 'string', default: 'native,wasm' },
    reps: { type: 'string', default: '2' },
    threads: { type: 'string', default: '2' },
    decode: { type: 'string', default: '64' },
    prefill: { type: 'string', default: '128' },
    json: { type: 'boolean', default: false },
  },
});
const threads = Number(values.threads);
const log = (line: string) => process.stderr.write(`bench: ${line}\n`);

interface Figures {
  engine: string;
  backend: string;
  isa: string;
  prefill_tps: number;
  decode_tps: number;
  peak_rss_mib: number;
}

/** Best read bandwidth of `threads` workers each scanning its share of 1 GiB (memchr speed). */
async function readBandwidth(): Promise<number> {
  const bytes = 1 << 30;
  const sab = new SharedArrayBuffer(bytes);
  new Uint8Array(sab).fill(0);
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const { sab, from, to } = workerData;
    const buf = Buffer.from(sab, from, to - from);
    parentPort.on('message', () => { buf.indexOf(1); parentPort.postMessage(0); });`;
  const share = bytes / threads;
  const workers = Array.from(
    { length: threads },
    (_, i) => new Worker(code, { eval: true, workerData: { sab, from: i * share, to: (i + 1) * share } }),
  );
  const round = () =>
    Promise.all(
      workers.map(
        (w) =>
          new Promise((r) => {
            w.once('message', r);
            w.postMessage(0);
          }),
      ),
    );
  await round();
  let best = 0;
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    await round();
    best = Math.max(best, bytes / ((performance.now() - t) / 1000));
  }
  await Promise.all(workers.map((w) => w.terminate()));
  return best;
}

/** Bytes of weights one decode step reads: every tensor but the embedding (one row of it). */
function bytesPerToken(f: GgufFile): number {
  const tied = !f.tensor('output.weight');
  return f.tensors.reduce((sum, t) => sum + (t.name === 'token_embd.weight' && !tied ? 0 : t.nBytes), 0);
}

function kvBytes(f: GgufFile, ctx: number): number {
  const arch = f.string('general.architecture');
  const layers = f.number(`${arch}.block_count`);
  const heads = f.number(`${arch}.attention.head_count`);
  const kvHeads = f.number(`${arch}.attention.head_count_kv`, heads);
  const headDim = f.number(`${arch}.embedding_length`) / heads;
  return 2 * layers * ctx * kvHeads * headDim * 2; // f16 K and V
}

function ensureModel(type: string): string {
  const dir = `${root}.cache/bench`;
  mkdirSync(dir, { recursive: true });
  const path = `${dir}/tinyllama-${type}-s1.gguf`;
  if (!existsSync(path)) {
    log(`writing the synthetic TinyLlama ${type} file (once; cached in .cache/bench)`);
    const t = performance.now();
    synthShape('tinyllama', type, 1, path);
    log(`wrote ${path} in ${((performance.now() - t) / 1000).toFixed(0)} s`);
  }
  return path;
}

function runEngine(args: string[]): Figures | undefined {
  const r = spawnSync(process.execPath, ['--import', 'tsx', `${root}scripts/bench-engine.ts`, ...args], {
    encoding: 'utf8',
    cwd: root,
  });
  if (r.status !== 0) {
    log(`engine ${args.join(' ')} failed: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    return undefined;
  }
  return JSON.parse(r.stdout.trim().split('\n').pop() as string) as Figures;
}

/** Peak RSS (MiB) of `herd run` generating `decode` tokens on the model with this backend. */
function herdRunRss(model: string, backend: string): number | undefined {
  const args = [
    'run',
    '--model',
    model,
    '--backend',
    backend,
    '--threads',
    String(threads),
    '--ctx',
    '512',
    '--kv-type',
    'f16',
    '--max-tokens',
    values.decode,
    '--temp',
    '0',
    '--json',
    'Once upon a time, in a village between two rivers, there lived',
  ];
  const r = spawnSync(process.execPath, [`${root}bin/herd.js`, ...args], { encoding: 'utf8', cwd: root });
  if (r.status !== 0) {
    log(`herd run --backend ${backend} failed: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    return undefined;
  }
  return (JSON.parse(r.stdout) as { peak_rss_mib: number }).peak_rss_mib;
}

spawnSync(process.execPath, [`${root}test/oracle/ensure.mjs`], { stdio: ['ignore', 'inherit', 'inherit'] });
const bandwidth = await readBandwidth();
log(`read bandwidth ${(bandwidth / 1e9).toFixed(1)} GB/s with ${threads} threads`);

interface Row extends Figures {
  model: string;
  decode_ratio: number;
  prefill_ratio: number;
  bandwidth_share: number;
  rss_budget_mib: number;
}
const rows: Row[] = [];
const engines = [['llama.cpp', 'cpu'], ...values.backends.split(',').map((b) => ['herd', b])];
/** bench-engine's arguments for an engine and backend ("wasm-simd128": the SIMD128 build). */
const engineArgs = (engine: string, backend: string) => [
  '--engine',
  engine,
  ...(backend === 'wasm-simd128' ? ['--backend', 'wasm', '--simd', 'simd128'] : ['--backend', backend]),
];
for (const type of values.models.split(',')) {
  const model = ensureModel(type);
  const file = GgufFile.open(model);
  const limitTps = bandwidth / bytesPerToken(file);
  const best = new Map<string, Figures>();
  for (let rep = 0; rep < Number(values.reps); rep++) {
    for (const [engine, backend] of engines) {
      const f = runEngine([
        ...engineArgs(engine, backend),
        '--model',
        model,
        '--threads',
        String(threads),
        '--decode',
        values.decode,
        '--prefill',
        values.prefill,
      ]);
      if (!f) continue;
      const key = `${engine}/${backend}`;
      const prev = best.get(key);
      best.set(
        key,
        prev
          ? {
              ...f,
              decode_tps: Math.max(prev.decode_tps, f.decode_tps),
              prefill_tps: Math.max(prev.prefill_tps, f.prefill_tps),
              peak_rss_mib: Math.max(prev.peak_rss_mib, f.peak_rss_mib),
            }
          : f,
      );
      log(
        `${type} ${key}: decode ${f.decode_tps.toFixed(1)} tok/s, prefill ${f.prefill_tps.toFixed(1)} tok/s, peak RSS ${f.peak_rss_mib.toFixed(0)} MiB`,
      );
    }
  }
  for (const [key, f] of best) {
    if (f.engine !== 'herd') continue;
    if (key === 'herd/wasm-simd128') {
      best.set(key, { ...f, peak_rss_mib: NaN });
      continue;
    }
    const rss = herdRunRss(model, f.backend);
    log(`${type} ${key}: herd run peak RSS ${rss?.toFixed(0) ?? '?'} MiB`);
    best.set(key, { ...f, peak_rss_mib: rss ?? NaN });
  }
  const ref = best.get('llama.cpp/cpu');
  const budget = (file.fileSize + kvBytes(file, 512)) / 2 ** 20 + 64;
  for (const f of best.values()) {
    rows.push({
      ...f,
      model: `tinyllama-${type}`,
      decode_ratio: ref ? f.decode_tps / ref.decode_tps : NaN,
      prefill_ratio: ref ? f.prefill_tps / ref.prefill_tps : NaN,
      bandwidth_share: f.decode_tps / limitTps,
      rss_budget_mib: budget,
    });
  }
}

if (values.json) {
  process.stdout.write(
    `${JSON.stringify({ machine: { cpu: cpus()[0]?.model, cores: cpus().length, memory_gib: totalmem() / 2 ** 30 }, threads, bandwidth_gbs: bandwidth / 1e9, rows })}\n`,
  );
} else {
  const fmt = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '–');
  const lines = [
    `machine: ${cpus()[0]?.model} (${cpus().length} cores), ${threads} threads, read bandwidth ${fmt(bandwidth / 1e9)} GB/s`,
    '',
    '| model | engine | decode tok/s | ×llama.cpp | of bandwidth limit | prefill tok/s | ×llama.cpp | peak RSS MiB | budget MiB |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map(
      (r) =>
        `| ${r.model} | ${r.engine === 'herd' ? `herd ${r.backend} (${r.isa})` : r.engine} | ${fmt(r.decode_tps)} | ${fmt(r.decode_ratio, 2)} | ` +
        `${fmt(100 * r.bandwidth_share, 0)}% | ${fmt(r.prefill_tps)} | ${fmt(r.prefill_ratio, 2)} | ${fmt(r.peak_rss_mib, 0)} | ${fmt(r.rss_budget_mib, 0)} |`,
    ),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}
