// A real-shape model through the herd: the synthetic TinyLlama-1.1B (Q4_0, random weights,
// written once into .cache/bench like `npm run bench`) split over two daemons on loopback
// gives the same greedy tokens as one process.

import test from 'ava';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { synthShape } from '../src/model/synth.ts';
import { stopProcess } from './helpers/netns.ts';
import {
  localSpawn,
  runHerd,
  startNode,
  type RunningNode,
  type Spawner,
  loopbackNodeArgs,
} from './helpers/herd-proc.ts';
import { repoRoot } from './helpers/paths.ts';

const KEY = 'tinyllama-test-key-0123456789abcdef';
let dir: string;
let model: string;
let nodes: RunningNode[] = [];

test.before(async () => {
  const cache = join(repoRoot, '.cache/bench');
  mkdirSync(cache, { recursive: true });
  model = join(cache, 'tinyllama-q4_0-s1.gguf');
  if (!existsSync(model)) synthShape('tinyllama', 'q4_0', 1, model);
  dir = mkdtempSync(join(tmpdir(), 'herd-tinyllama-'));
  for (const i of [0, 1]) {
    nodes.push(
      await startNode([...loopbackNodeArgs(join(dir, `node${i}`)), '--cluster-key', KEY, '--name', `tl-${i}`]),
    );
  }
});

test.after.always(async () => {
  await Promise.all(nodes.map((n) => stopProcess(n.child, 5000)));
  nodes = [];
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface RunJson {
  tokens: number[];
  plan: { address: string; layers: [number, number] }[];
  shards?: { source: string; bytes_transferred: number }[];
  timings: { decode_tps: number };
}

test('a 2-stage run of the synthetic TinyLlama gives the same greedy tokens as one node', async (t) => {
  const common = ['run', '--model', model, '--ctx', '32', '--temp', '0', '-n', '4', '--json', 'Once'];
  const env = { HERD_CACHE_DIR: join(dir, 'coordinator') };
  const spawner: Spawner = (cmd, args, opts) => localSpawn(cmd, args, { ...opts, env: { ...process.env, ...env } });
  const local = await runHerd([...common, '--nodes', 'local'], spawner, 240_000);
  t.is(local.code, 0, local.stderr);
  const peers = nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
  const herd = await runHerd([...common, '--nodes', peers, '--stages', '2', '--cluster-key', KEY], spawner, 240_000);
  t.is(herd.code, 0, herd.stderr);
  const a = JSON.parse(local.stdout) as RunJson;
  const b = JSON.parse(herd.stdout) as RunJson;
  t.log(
    `one process: ${local.ms} ms, ${a.timings.decode_tps} tok/s; two stages: ${herd.ms} ms, ${b.timings.decode_tps} tok/s; plan ${JSON.stringify(b.plan.map((p) => p.layers))}`,
  );
  t.is(a.tokens.length, 4);
  t.deepEqual(b.tokens, a.tokens);
  t.is(b.plan.length, 2);
  t.deepEqual([b.plan[0].layers[0], b.plan[1].layers[1]], [0, 22]);
  t.true(
    b.shards?.every((s) => s.source === 'fetched' && s.bytes_transferred > 100e6),
    JSON.stringify(b.shards),
  );
});
