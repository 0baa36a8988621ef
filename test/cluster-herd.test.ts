// The herd end to end, with real processes on a LAN of network namespaces (root, as in CI):
// three `herd node` daemons, each in its own namespace, and a coordinator in a fourth that
// finds them over mDNS and runs stories260K as a 3-stage pipeline. Each node's kernel
// throughput is pinned (--throughput): measured, it moves with the machine's load, and so would
// the plans this file checks.

import test from 'ava';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DiscoveryResult } from '../src/cluster/discovery/types.ts';
import { plan } from '../src/cluster/planner.ts';
import { modelShape } from '../src/cluster/shape.ts';
import { GgufFile } from '../src/gguf/reader.ts';
import { createLan, stopProcess, type LanHost, type TestLan } from './helpers/netns.ts';
import { runHerd, startNode, type RunningNode, type Spawner, loopbackNodeArgs } from './helpers/herd-proc.ts';
import { bundledModel, fixtureModels, repoRoot } from './helpers/paths.ts';
import { HUNG_MS } from './helpers/serve.ts';

interface Reference {
  prompt: string;
  generated_tokens: number[];
}
const reference = JSON.parse(readFileSync(join(fixtureModels, 'stories260K.reference.json'), 'utf8')) as Reference;

interface RunJson {
  tokens: number[];
  plan: { node: string; address: string; layers: [number, number] }[];
  shards?: { node: string; address: string; layers: [number, number]; source: string; bytes_transferred: number }[];
}

interface NodesJson {
  nodes: {
    address: string;
    name: string;
    throughput: number;
    memAvailable: number;
    counters?: Record<string, number>;
    shards?: unknown[];
    cached?: unknown[];
  }[];
}

/** GB/s each node advertises (--throughput) at first: equal, so the plan is the name order's. */
const SPEEDS = [10, 10, 10];
/**
 * GB/s after the restart: by speed alone the planner would now cut elsewhere, while the slices
 * the nodes cached are within its tolerance (20%) of that: a plan that keeps them shows the
 * planner prefers cached ranges.
 */
const RESTART_SPEEDS = [5, 10, 15];

const KEY = 'herd-test-cluster-key-0123456789ab';
let lan: TestLan;
let dir: string;
let keyFile: string;
let nodes: RunningNode[] = [];
let coordinator: LanHost;
let peers: string;
/** The plan of the first run, which left its slices in the nodes' caches. */
let firstPlan: RunJson['plan'] | undefined;

const on =
  (host: LanHost, env: NodeJS.ProcessEnv = {}): Spawner =>
  (cmd, args, opts) =>
    lan.spawn(host, cmd, args, { ...opts, env: { ...process.env, ...env } });

async function startNodes(speeds: readonly number[], extra: string[] = []): Promise<void> {
  nodes = [];
  for (const [i, h] of lan.hosts.slice(0, 3).entries()) {
    const args = [
      '--interface',
      'eth0',
      '--port',
      '7077',
      '--cache-dir',
      join(dir, `node${i}`),
      '--cluster-key-file',
      keyFile,
      '--name',
      `node-${i}`,
    ];
    nodes.push(await startNode([...args, '--throughput', String(speeds[i]), ...extra], on(h)));
  }
}

async function stopNodes(): Promise<void> {
  await Promise.all(nodes.map((n) => stopProcess(n.child, 8000)));
  nodes = [];
}

/** `herd …` in the coordinator's namespace. */
function herd(args: string[], timeoutMs = 180_000) {
  return runHerd(args, on(coordinator, { HERD_CACHE_DIR: join(dir, 'coordinator') }), timeoutMs);
}

const generate = (nodesFlag: string, key = KEY) => [
  'run',
  '--nodes',
  nodesFlag,
  '--stages',
  '3',
  '--interface',
  'eth0',
  '--cluster-key',
  key,
  '--discovery-timeout',
  '60',
  '--temp',
  '0',
  '-n',
  '64',
  '--json',
  reference.prompt,
];

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'herd-cluster-'));
  keyFile = join(dir, 'key');
  writeFileSync(keyFile, `${KEY}\n`);
  lan = await createLan(4, 'herd');
  coordinator = lan.hosts[3];
  peers = lan.hosts
    .slice(0, 3)
    .map((h) => `${h.ip}:7077`)
    .join(',');
  await startNodes(SPEEDS);
  // ciao probes before it announces: wait until every node says it is advertised.
  await Promise.all(nodes.map((n) => n.waitFor((e) => e.event === 'mdns.advertise', HUNG_MS)));
});

test.after.always(async () => {
  await stopNodes().catch(() => {});
  await lan?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test.serial('herd nodes finds the three daemons over mDNS', async (t) => {
  // No count to stop at: it listens the whole time. Three queries (one a second) to three idle
  // responders that answer in milliseconds.
  const r = await herd(['nodes', '--cluster-key-file', keyFile, '--interface', 'eth0', '--timeout', '5', '--json']);
  t.is(r.code, 0, r.stderr);
  const found = JSON.parse(r.stdout) as NodesJson;
  t.deepEqual(found.nodes.map((n) => n.name).sort(), ['node-0', 'node-1', 'node-2']);
  t.deepEqual(found.nodes.map((n) => n.address).sort(), peers.split(',').sort());
});

test.serial('each node advertises its --throughput, in mDNS TXT and in Info, instead of a measurement', async (t) => {
  // What a browser reads from TXT alone (herd nodes asks each node's Info too).
  const probe = lan.spawn(
    coordinator,
    process.execPath,
    ['--import=tsx', 'test/helpers/mdns-probe.ts', 'browse', 'eth0', String(HUNG_MS), '3'],
    { cwd: repoRoot },
  );
  let out = '';
  probe.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  await new Promise((resolve) => probe.once('exit', resolve));
  const txt = JSON.parse(out) as DiscoveryResult;
  const expected = SPEEDS.map((s, i) => [`node-${i}`, s * 1e9]);
  t.deepEqual(txt.nodes.map((n) => [n.caps.name, n.caps.throughput]).sort(), expected);
  const info = JSON.parse(
    (await herd(['nodes', '--cluster-key-file', keyFile, '--peers', peers, '--json'])).stdout,
  ) as NodesJson;
  t.deepEqual(info.nodes.map((n) => [n.name, n.throughput]).sort(), expected);
  for (const [i, n] of nodes.entries()) t.like(n.ready, { throughput: SPEEDS[i] * 1e9, throughputPinned: true });
});

test.serial('herd plan over mDNS splits the model across the three nodes', async (t) => {
  // --timeout bounds a hung browse only: it ends as soon as the three (--stages) answered.
  const r = await herd([
    'plan',
    '--cluster-key-file',
    keyFile,
    '--nodes',
    'auto',
    '--interface',
    'eth0',
    '--stages',
    '3',
    '--timeout',
    '60',
    '--json',
  ]);
  t.is(r.code, 0, r.stderr);
  const p = JSON.parse(r.stdout) as { plan: { address: string; layers: [number, number] }[] };
  t.deepEqual(p.plan.map((s) => s.address).sort(), peers.split(',').sort());
  t.is(p.plan[0].layers[0], 0);
  t.is(p.plan[2].layers[1], 5);
});

test.serial(
  'a coordinator found the nodes over mDNS and generated the 64 reference tokens through 3 stages',
  async (t) => {
    const r = await herd(['--model', bundledModel, ...generate('auto')]);
    t.is(r.code, 0, r.stderr);
    t.log(`3-stage run over mDNS: ${r.ms} ms (process start to exit)`);
    const out = JSON.parse(r.stdout) as RunJson;
    t.log(`plan ${JSON.stringify(out.plan)}`);
    firstPlan = out.plan;
    t.deepEqual(out.tokens, reference.generated_tokens);
    t.is(out.plan.length, 3);
    t.deepEqual(out.plan.map((p) => p.address).sort(), peers.split(',').sort());
    t.deepEqual(out.plan.map((p) => p.layers).flat(), [
      0,
      out.plan[0].layers[1],
      out.plan[1].layers[0],
      out.plan[1].layers[1],
      out.plan[2].layers[0],
      5,
    ]);
    // The nodes had nothing: each pulled exactly its slice from the coordinator.
    t.true(
      out.shards?.every((s) => s.source === 'fetched' && s.bytes_transferred > 0),
      JSON.stringify(out.shards),
    );
  },
);

test.serial('a second request reuses the loaded slices: no transfer, no reload', async (t) => {
  const before = JSON.parse(
    (await herd(['nodes', '--cluster-key-file', keyFile, '--peers', peers, '--json'])).stdout,
  ) as NodesJson;
  const r = await herd(['--model', bundledModel, ...generate('auto')]);
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as RunJson;
  t.deepEqual(out.tokens, reference.generated_tokens);
  t.true(
    out.shards?.every((s) => s.source === 'memory' && s.bytes_transferred === 0),
    JSON.stringify(out.shards),
  );
  const after = JSON.parse(
    (await herd(['nodes', '--cluster-key-file', keyFile, '--peers', peers, '--json'])).stdout,
  ) as NodesJson;
  for (const n of after.nodes) {
    const b = before.nodes.find((x) => x.address === n.address);
    t.is(n.counters?.shardLoads, 1, `${n.name} loaded its slice once`);
    t.is(n.counters?.bytesFetched, b?.counters?.bytesFetched, `${n.name} fetched nothing more`);
    t.is(n.counters?.shardReuses, (b?.counters?.shardReuses ?? 0) + 1);
    t.true((n.counters?.activations ?? 0) > (b?.counters?.activations ?? 0), 'activations went through every node');
  }
});

test.serial('a coordinator with the wrong key or none is refused and the nodes keep serving', async (t) => {
  const r = await herd(['--model', bundledModel, ...generate(peers, 'not-the-cluster-key-0123456789abcd')]);
  t.not(r.code, 0);
  t.regex(r.stderr, /none of the nodes answered/);
  // Without a key, a peer cannot even ask who is there: the TLS handshake fails.
  const keyless = await herd(['nodes', '--peers', peers, '--json']);
  const seen = JSON.parse(keyless.stdout) as NodesJson & { unreachable: { address: string }[] };
  t.deepEqual(seen.nodes, []);
  t.is(seen.unreachable.length, 3);
  const list = JSON.parse(
    (await herd(['nodes', '--cluster-key-file', keyFile, '--peers', peers, '--json'])).stdout,
  ) as NodesJson;
  t.is(list.nodes.length, 3);
});

test.serial(
  'restarted with mDNS off, the nodes serve --peers from their shard cache: nothing transferred',
  async (t) => {
    await stopNodes();
    await startNodes(RESTART_SPEEDS, ['--no-mdns']);
    const silent = await herd([
      'nodes',
      '--cluster-key-file',
      keyFile,
      '--interface',
      'eth0',
      '--timeout',
      '2',
      '--json',
    ]);
    t.deepEqual((JSON.parse(silent.stdout) as NodesJson).nodes, [], 'no node answers over mDNS');

    const listed = JSON.parse(
      (await herd(['nodes', '--cluster-key-file', keyFile, '--peers', peers, '--json'])).stdout,
    ) as NodesJson;
    t.log(`after restart: ${JSON.stringify(listed.nodes.map((n) => [n.name, n.throughput, n.cached]))}`);
    t.deepEqual(
      listed.nodes.map((n) => [n.name, n.throughput]).sort(),
      RESTART_SPEEDS.map((s, i) => [`node-${i}`, s * 1e9]),
    );
    // Planned by the new speeds alone (no cached ranges), the slices would move.
    const bySpeed = plan(
      listed.nodes.map((n) => ({
        id: n.name,
        name: n.name,
        address: n.address,
        memAvailable: n.memAvailable,
        throughput: n.throughput,
      })),
      modelShape(GgufFile.open(bundledModel), 512, 'f16'),
      { stages: 3 },
    );
    const layout = (p: readonly { node: string; layers: [number, number] }[]) =>
      p.map((s) => `${s.node} [${s.layers.join(', ')})`);
    t.notDeepEqual(
      layout(bySpeed.stages.map((s) => ({ node: s.node.name, layers: [s.start, s.end] }))),
      layout(firstPlan ?? []),
    );
    const r = await herd(['--model', bundledModel, ...generate(peers)]);
    t.is(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as RunJson;
    t.deepEqual(out.tokens, reference.generated_tokens);
    t.true(
      out.shards?.every((s) => s.source === 'cache' && s.bytes_transferred === 0),
      JSON.stringify(out.shards),
    );
    t.deepEqual(out.plan, firstPlan, 'the slices stay where they are cached though the speeds changed');
    const info = JSON.parse(
      (await herd(['nodes', '--cluster-key-file', keyFile, '--peers', peers, '--json'])).stdout,
    ) as NodesJson;
    for (const n of info.nodes) t.is(n.counters?.bytesFetched, 0, `${n.name} fetched nothing after the restart`);
  },
);

test('herd node refuses a --throughput that is not a positive number of GB/s', async (t) => {
  const values = ['0', '-3', 'fast', 'Infinity', '1e7'];
  // Refused before it binds anything; a node that started instead is killed by the timeout.
  const runs = await Promise.all(
    values.map((v) => runHerd(['node', ...loopbackNodeArgs(dir), '--throughput', v], undefined, 30_000)),
  );
  for (const [i, r] of runs.entries()) {
    t.is(r.code, 2, `${values[i]}: ${r.stderr}`);
    t.regex(r.stderr, /herd: error: --throughput must be a positive number of GB\/s/, values[i]);
  }
});
