// `npm run bench:cluster`: the herd on loopback, not a test. Three `herd node` daemons on
// 127.0.0.1; for the synthetic TinyLlama-1.1B Q4_0 (written once into .cache/bench) it runs
// one process, then 1, 2 and 3 stages, and reports decode tok/s, the ratio to one process and
// the shard transfer rate; on stories260K (where compute is tiny) it reports the per-hop cost.
// Tensor-parallel groups (issue 13): two more nodes pinned to one core each (`taskset -c 0`,
// `-c 1`, one kernel thread) run single-stream decode of TinyLlama as one node, as a 2-node
// group (default sync, and f32), and as 2 pipeline stages, with the data plane's bytes per token.
//
//   npm run bench:cluster [-- --tokens N] [--skip-tinyllama] [--skip-tensor | --tensor-only]

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { synthShape } from '../src/model/synth.ts';
import { GgufFile } from '../src/gguf/reader.ts';
import { readConfig } from '../src/model/config.ts';
import { DEFAULT_SYNC, payloadBytes, type SyncFormat } from '../src/cluster/sync/format.ts';

const root = fileURLToPath(new URL('../', import.meta.url));
const herdBin = join(root, 'bin/herd.js');
const argv = process.argv.slice(2);
const tokens = Number(argv[argv.indexOf('--tokens') + 1] ?? NaN) || 16;
const skipTiny = argv.includes('--skip-tinyllama');
const skipTensor = argv.includes('--skip-tensor') || skipTiny;
const tensorOnly = argv.includes('--tensor-only') && !skipTensor;
const log = (s: string) => process.stderr.write(`bench-cluster: ${s}\n`);

interface RunOut {
  tokens: number[];
  timings: { prompt_ms: number; decode_tokens: number; decode_ms: number; decode_tps: number };
  plan: { node: string; layers: [number, number] }[];
  shards?: { source: string; bytes_transferred: number; ms: number }[];
}

function run(
  model: string,
  nodes: string,
  stages: number | undefined,
  env: NodeJS.ProcessEnv,
  extra: readonly string[] = [],
): RunOut {
  const args = [
    herdBin,
    'run',
    '--model',
    model,
    '--nodes',
    nodes,
    '--ctx',
    '256',
    '--temp',
    '0',
    '-n',
    String(tokens),
    '--json',
    'Once upon a time',
  ];
  if (stages !== undefined) args.push('--stages', String(stages));
  args.push(...extra);
  const r = spawnSync(process.execPath, args, {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    cwd: root,
    timeout: 30 * 60_000,
  });
  if (r.status !== 0) throw new Error(`herd run ${nodes} --stages ${stages}: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as RunOut;
}

/** A node daemon; `core`: pinned to that core with one kernel thread. */
async function startNode(i: number, dir: string, core?: number): Promise<{ port: number; stop: () => void }> {
  const pin = core === undefined ? [] : ['taskset', '-c', String(core)];
  const threads = core === undefined ? [] : ['--threads', '1'];
  const [cmd, ...pre] = [...pin, process.execPath];
  const child = spawn(
    cmd,
    [
      ...pre,
      herdBin,
      'node',
      '--no-mdns',
      '--host',
      '127.0.0.1',
      '--port',
      '0',
      '--cache-dir',
      join(dir, `node${i}`),
      '--name',
      `bench-${i}`,
      ...threads,
    ],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
      cwd: root,
    },
  );
  const port = await new Promise<number>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error('node did not start in 60 s')), 60_000);
    child.stderr.on('data', (b: Buffer) => {
      buf += b.toString();
      const m = /"event":"node\.ready".*?"port":(\d+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.once('exit', (code) => reject(new Error(`node exited (${code}): ${buf.slice(-500)}`)));
  });
  child.stderr.removeAllListeners('data');
  child.stderr.resume();
  return { port, stop: () => child.kill('SIGTERM') };
}

/**
 * Single-stream decode on cores pinned one per node: one node, a 2-node group (the default
 * sync and f32), 2 stages. Bytes per token are the data plane's frames of one decode step, both
 * directions (a 16-byte header each): the leader's step frame (an entry and the hidden row) and
 * every member's partial of 2 syncs per layer.
 */
async function tensorRows(model: string, dir: string, env: NodeJS.ProcessEnv): Promise<string[][]> {
  const pinned = [await startNode(10, dir, 0), await startNode(11, dir, 1)];
  try {
    const [a, b] = pinned.map((n) => `127.0.0.1:${n.port}`);
    const file = GgufFile.open(model);
    const c = readConfig(file);
    const wire = (sync: SyncFormat) => 16 + 4 + 12 + 4 * c.dim + 2 * 2 * c.nLayers * (16 + payloadBytes(sync, c.dim));
    const measure = (what: string, nodes: string, extra: string[]) => {
      log(`TinyLlama Q4_0 pinned: ${what}`);
      run(model, nodes, undefined, env, extra); // loads the shards
      return run(model, nodes, undefined, env, extra);
    };
    const one = measure('one node', a, []);
    const out: string[][] = [
      ['TinyLlama Q4_0', 'one node, 1 core', fmt(one.timings.decode_tps), '1.00 (pinned)', '', ''],
    ];
    for (const sync of [DEFAULT_SYNC, 'f32'] as const) {
      const r = measure(`2-node group, --sync ${sync}`, `${a},${b}`, ['--tensor', '2', '--sync', sync]);
      out.push([
        'TinyLlama Q4_0',
        `2-node group, 1 core each, --sync ${sync}`,
        fmt(r.timings.decode_tps),
        fmt(r.timings.decode_tps / one.timings.decode_tps),
        `${fmt(wire(sync) / 1024, 1)} KiB/token on the data plane`,
        JSON.stringify(r.tokens) === JSON.stringify(one.tokens) ? 'same tokens' : 'tokens differ',
      ]);
    }
    const staged = measure('2 stages', `${a},${b}`, ['--stages', '2']);
    out.push([
      'TinyLlama Q4_0',
      '2 stages, 1 core each',
      fmt(staged.timings.decode_tps),
      fmt(staged.timings.decode_tps / one.timings.decode_tps),
      '',
      JSON.stringify(staged.tokens) === JSON.stringify(one.tokens) ? 'same tokens' : 'TOKENS DIFFER',
    ]);
    return out;
  } finally {
    for (const n of pinned) n.stop();
  }
}

const msPerToken = (r: RunOut) => r.timings.decode_ms / Math.max(1, r.timings.decode_tokens);
const fmt = (x: number, d = 2) => x.toFixed(d);

const dir = mkdtempSync(join(tmpdir(), 'herd-bench-cluster-'));
const env = { HERD_CACHE_DIR: join(dir, 'coordinator') };
const nodes: { port: number; stop: () => void }[] = [];
try {
  // one at a time: each measures its kernel
  if (!tensorOnly) for (let i = 0; i < 3; i++) nodes.push(await startNode(i, dir));
  const peers = nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
  const rows: string[][] = [];
  const cache = join(root, '.cache/bench');
  const tiny = join(cache, 'tinyllama-q4_0-s1.gguf');
  if (!skipTiny && !existsSync(tiny)) {
    mkdirSync(cache, { recursive: true });
    log('writing the synthetic TinyLlama Q4_0 (once; cached in .cache/bench)');
    synthShape('tinyllama', 'q4_0', 1, tiny);
  }

  if (!skipTiny && !tensorOnly) {
    log(`TinyLlama Q4_0: one process, ${tokens} tokens`);
    const local = run(tiny, 'local', undefined, env);
    rows.push(['TinyLlama Q4_0', 'one process', fmt(local.timings.decode_tps), '1.00', '', '']);
    for (const stages of [1, 2, 3]) {
      log(`TinyLlama Q4_0: ${stages} stage(s)`);
      const first = run(tiny, peers, stages, env); // loads (and transfers) the shards
      const again = run(tiny, peers, stages, env); // a standing herd: slices already loaded
      const same = JSON.stringify(again.tokens) === JSON.stringify(local.tokens) ? 'same tokens' : 'TOKENS DIFFER';
      const fetched = (first.shards ?? []).filter((s) => s.source === 'fetched');
      const bytes = fetched.reduce((s, x) => s + x.bytes_transferred, 0);
      const ms = Math.max(0, ...fetched.map((x) => x.ms));
      rows.push([
        'TinyLlama Q4_0',
        `${stages} stage(s) ${JSON.stringify(again.plan.map((p) => p.layers))}`,
        fmt(again.timings.decode_tps),
        fmt(again.timings.decode_tps / local.timings.decode_tps),
        bytes > 0 ? `${fmt(bytes / 1e6, 0)} MB in ${fmt(ms / 1000, 1)} s = ${fmt(bytes / 1e3 / ms, 0)} MB/s` : 'cached',
        same,
      ]);
    }
  }

  if (!skipTensor) rows.push(...(await tensorRows(tiny, dir, env)));

  const stories = join(root, 'models/stories260K.gguf');
  if (!tensorOnly) log('stories260K: per-hop cost');
  const sLocal = tensorOnly ? undefined : run(stories, 'local', undefined, env);
  if (sLocal) rows.push(['stories260K', 'one process', fmt(sLocal.timings.decode_tps), '1.00', '', '']);
  for (const stages of sLocal ? [1, 2, 3] : []) {
    run(stories, peers, stages, env);
    const r = run(stories, peers, stages, env);
    // A token crosses stages + 1 hops: coordinator → stage 1 → … → stage N → coordinator.
    const perHop = (msPerToken(r) - msPerToken(sLocal!)) / (stages + 1);
    rows.push([
      'stories260K',
      `${stages} stage(s)`,
      fmt(r.timings.decode_tps),
      fmt(r.timings.decode_tps / sLocal!.timings.decode_tps),
      `per hop ${fmt(perHop, 3)} ms`,
      JSON.stringify(r.tokens) === JSON.stringify(sLocal!.tokens) ? 'same tokens' : 'TOKENS DIFFER',
    ]);
  }

  const head = ['model', 'run', 'decode tok/s', '× one process', 'transfer / hop', 'check'];
  const all = [head, ...rows];
  const widths = head.map((_, i) => Math.max(...all.map((r) => r[i].length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  process.stdout.write(
    `${line(head)}\n| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |\n${rows.map(line).join('\n')}\n`,
  );
  const listed = spawnSync(process.execPath, [herdBin, 'nodes', '--peers', peers, '--json'], {
    encoding: 'utf8',
    cwd: root,
  });
  const backends = [
    ...new Set(
      (JSON.parse(listed.stdout || '{"nodes":[]}') as { nodes: { backend: string }[] }).nodes.map((n) => n.backend),
    ),
  ].join(', ');
  process.stdout.write(
    `(loopback, ${tokens} decoded tokens per run, nodes on the ${backends || '?'} kernel backend, ${spawnSync('nproc', { encoding: 'utf8' }).stdout.trim()} cores, load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')})\n`,
  );
} finally {
  for (const n of nodes) n.stop();
  rmSync(dir, { recursive: true, force: true });
}
