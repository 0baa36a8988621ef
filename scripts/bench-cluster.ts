// `npm run bench:cluster`: the herd on loopback, not a test. Three `herd node` daemons on
// 127.0.0.1; for the synthetic TinyLlama-1.1B Q4_0 (written once into .cache/bench) it runs
// one process, then 1, 2 and 3 stages, and reports decode tok/s, the ratio to one process and
// the shard transfer rate; on stories260K (where compute is tiny) it reports the per-hop cost.
//
//   npm run bench:cluster [-- --tokens N] [--skip-tinyllama]

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { synthShape } from '../src/model/synth.ts';

const root = fileURLToPath(new URL('../', import.meta.url));
const herdBin = join(root, 'bin/herd.js');
const argv = process.argv.slice(2);
const tokens = Number(argv[argv.indexOf('--tokens') + 1] ?? NaN) || 16;
const skipTiny = argv.includes('--skip-tinyllama');
const log = (s: string) => process.stderr.write(`bench-cluster: ${s}\n`);

interface RunOut {
  tokens: number[];
  timings: { prompt_ms: number; decode_tokens: number; decode_ms: number; decode_tps: number };
  plan: { node: string; layers: [number, number] }[];
  shards?: { source: string; bytes_transferred: number; ms: number }[];
}

function run(model: string, nodes: string, stages: number | undefined, env: NodeJS.ProcessEnv): RunOut {
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
  const r = spawnSync(process.execPath, args, {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    cwd: root,
    timeout: 30 * 60_000,
  });
  if (r.status !== 0) throw new Error(`herd run ${nodes} --stages ${stages}: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as RunOut;
}

async function startNode(i: number, dir: string): Promise<{ port: number; stop: () => void }> {
  const child = spawn(
    process.execPath,
    [
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

const msPerToken = (r: RunOut) => r.timings.decode_ms / Math.max(1, r.timings.decode_tokens);
const fmt = (x: number, d = 2) => x.toFixed(d);

const dir = mkdtempSync(join(tmpdir(), 'herd-bench-cluster-'));
const env = { HERD_CACHE_DIR: join(dir, 'coordinator') };
const nodes: { port: number; stop: () => void }[] = [];
try {
  for (let i = 0; i < 3; i++) nodes.push(await startNode(i, dir)); // one at a time: each measures its kernel
  const peers = nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
  const rows: string[][] = [];

  if (!skipTiny) {
    const cache = join(root, '.cache/bench');
    mkdirSync(cache, { recursive: true });
    const tiny = join(cache, 'tinyllama-q4_0-s1.gguf');
    if (!existsSync(tiny)) {
      log('writing the synthetic TinyLlama Q4_0 (once; cached in .cache/bench)');
      synthShape('tinyllama', 'q4_0', 1, tiny);
    }
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

  const stories = join(root, 'models/stories260K.gguf');
  log('stories260K: per-hop cost');
  const sLocal = run(stories, 'local', undefined, env);
  rows.push(['stories260K', 'one process', fmt(sLocal.timings.decode_tps), '1.00', '', '']);
  for (const stages of [1, 2, 3]) {
    run(stories, peers, stages, env);
    const r = run(stories, peers, stages, env);
    // A token crosses stages + 1 hops: coordinator → stage 1 → … → stage N → coordinator.
    const perHop = (msPerToken(r) - msPerToken(sLocal)) / (stages + 1);
    rows.push([
      'stories260K',
      `${stages} stage(s)`,
      fmt(r.timings.decode_tps),
      fmt(r.timings.decode_tps / sLocal.timings.decode_tps),
      `per hop ${fmt(perHop, 3)} ms`,
      JSON.stringify(r.tokens) === JSON.stringify(sLocal.tokens) ? 'same tokens' : 'TOKENS DIFFER',
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
    `(loopback, ${tokens} decoded tokens per run, nodes on the ${backends || '?'} kernel backend, ${spawnSync('nproc', { encoding: 'utf8' }).stdout.trim()} cores)\n`,
  );
} finally {
  for (const n of nodes) n.stop();
  rmSync(dir, { recursive: true, force: true });
}
