// Tensor-parallel groups in the herd (issue 13), with real `herd node` daemons on loopback and
// the real `herd run`: `--tensor 2 --sync f32` gives one node's greedy tokens, alone and with 2
// pipeline stages of groups (4 nodes); q8_0 sync runs and its agreement with one node is
// reported; a member killed mid-run makes the herd re-plan and the run ends with the text of an
// uninterrupted one. Each member pulls only its share of the layers (exactly its manifest's
// bytes), and a restarted member loads it from its cache without a transfer.

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { synthModel } from '../src/model/synth.ts';
import { ModelSource } from '../src/cluster/shard/source.ts';
import type { SliceManifest } from '../src/cluster/shard/manifest.ts';
import type { StageLoad } from '../src/cluster/coordinator/cluster.ts';
import { loopbackNodeArgs, runHerd, startNode, type RunningNode } from './helpers/herd-proc.ts';
import { bundledModel, herdBin, repoRoot } from './helpers/paths.ts';
import { HUNG_MS, startServe } from './helpers/serve.ts';
import { TINY_LLAMA } from './helpers/tiny-llama.ts';

const PROMPT = 'Once upon a time';
const dir = mkdtempSync(join(tmpdir(), 'herd-cluster-tensor-'));
// the coordinator's cache (runHerd's children inherit this process's environment)
process.env.HERD_CACHE_DIR = join(dir, 'coordinator');
const nodes: RunningNode[] = [];
const addr = (n: RunningNode) => `127.0.0.1:${n.port}`;

const tiny = synthModel({
  ...TINY_LLAMA,
  nLayers: 4,
  ctxTrain: 512,
  type: 'q4_0',
  seed: 13,
  out: join(dir, 'tiny-q4_0.gguf'),
}).path;

test.before(async () => {
  for (const name of ['alpha', 'beta', 'gamma', 'delta'])
    nodes.push(await startNode([...loopbackNodeArgs(join(dir, name)), '--name', name]));
});

test.after.always(async () => {
  for (const n of nodes) {
    n.child.kill('SIGTERM');
    await n.exited();
  }
  rmSync(dir, { recursive: true, force: true });
});

interface RunJson {
  text: string;
  tokens: number[];
  plan: { node: string; layers: [number, number]; nodes?: { name: string; address: string; share: unknown }[] }[];
  shards: StageLoad[];
}

async function run(args: readonly string[]): Promise<RunJson> {
  const r = await runHerd(['run', '--temp', '0', '--ctx', '512', '--json', ...args, PROMPT], undefined, HUNG_MS);
  if (r.code !== 0) throw new Error(`herd run ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as RunJson;
}

const reference = new Map<string, Promise<RunJson>>();
function oneNode(model: string, n: number): Promise<RunJson> {
  const key = `${model} ${n}`;
  if (!reference.has(key)) reference.set(key, run(['--model', model, '--nodes', 'local', '-n', String(n)]));
  return reference.get(key)!;
}

const stories = bundledModel;

for (const [label, model, n] of [
  ['stories260K', stories, 60],
  ['a TinyLlama-shaped Q4_0 model', tiny, 24],
] as const) {
  test.serial(`herd run --nodes A,B --tensor 2 --sync f32 --temp 0 gives one node's tokens (${label})`, async (t) => {
    const want = await oneNode(model, n);
    const got = await run([
      '--model',
      model,
      '--nodes',
      `${addr(nodes[0])},${addr(nodes[1])}`,
      '--tensor',
      '2',
      '--sync',
      'f32',
      '-n',
      String(n),
    ]);
    t.deepEqual(got.tokens, want.tokens);
    t.is(got.text, want.text);
    t.is(got.plan.length, 1, 'one stage');
    const members = got.plan[0].nodes ?? [];
    t.deepEqual(members.map((m) => m.name).sort(), ['alpha', 'beta']);
    t.true(
      members.every((m) => m.share !== null),
      'each member has its share',
    );
  });
}

test.serial('each member transfers exactly its share, and a restarted member loads it from its cache', async (t) => {
  // Pinned throughputs: the same shares after the restart (measured speeds would move them).
  const names = ['eta', 'theta'];
  const start = (name: string) =>
    startNode([...loopbackNodeArgs(join(dir, name)), '--name', name, '--throughput', '1']);
  let pair = await Promise.all(names.map(start));
  const args = () => [
    '--model',
    tiny,
    '--nodes',
    pair.map(addr).join(','),
    '--tensor',
    '2',
    '--sync',
    'f32',
    '-n',
    '24',
  ];
  try {
    const first = await run(args());
    t.deepEqual(first.tokens, (await oneNode(tiny, 24)).tokens);
    const loads = [...first.shards].sort((a, b) => a.share!.member - b.share!.member);
    t.deepEqual(
      loads.map((l) => l.share?.member),
      [0, 1],
    );
    // What each member must move, from the model file: its share's manifest.
    const source = await ModelSource.open(tiny, join(dir, 'expected'));
    const [s, e] = loads[0].layers;
    const manifests = await source.shareManifestsFor(
      s,
      e,
      loads.map((l) => ({
        member: l.share!.member,
        kvHeads: [l.share!.kv_heads[0], l.share!.kv_heads[1]],
        ffnRows: [l.share!.ffn_rows[0], l.share!.ffn_rows[1]],
        vocabRows: l.share!.vocab_rows && [l.share!.vocab_rows[0], l.share!.vocab_rows[1]],
      })),
    );
    const bytes = (m: SliceManifest) => m.tensors.reduce((sum, x) => sum + x.nBytes, 0);
    for (const [m, l] of loads.entries()) {
      t.is(l.source, 'fetched');
      t.is(l.bytes_transferred, bytes(manifests[m]), `member ${m} transferred exactly its share`);
    }
    t.log(
      `layers [${s}, ${e}): the whole slice is ${bytes(source.manifestFor(s, e))} bytes; ` +
        `the members pulled ${loads.map((l) => l.bytes_transferred).join(' and ')}`,
    );

    // Restarted on the same cache dirs: each member loads its share without a transfer.
    for (const n of pair) {
      n.child.kill('SIGTERM');
      await n.exited();
    }
    pair = await Promise.all(names.map(start));
    const second = await run(args());
    t.deepEqual(second.tokens, first.tokens);
    t.deepEqual(
      second.shards.map((l) => [l.source, l.bytes_transferred]),
      [
        ['cache', 0],
        ['cache', 0],
      ],
    );
  } finally {
    for (const n of pair) {
      n.child.kill('SIGKILL');
      await n.exited();
    }
  }
});

test.serial("groups of 2 in 2 pipeline stages (4 nodes) give one node's tokens", async (t) => {
  const want = await oneNode(stories, 60);
  const got = await run([
    '--model',
    stories,
    '--nodes',
    nodes.map(addr).join(','),
    '--tensor',
    '2',
    '--stages',
    '2',
    '--sync',
    'f32',
    '-n',
    '60',
  ]);
  t.deepEqual(got.tokens, want.tokens);
  t.is(got.plan.length, 2);
  t.deepEqual(
    got.plan.map((s) => s.nodes?.length),
    [2, 2],
  );
  t.deepEqual(got.plan.flatMap((s) => s.nodes?.map((m) => m.name) ?? []).sort(), ['alpha', 'beta', 'delta', 'gamma']);
});

test.serial('q8_0 sync runs; its top-1 agreement with one node is reported', async (t) => {
  const n = 60;
  const want = await oneNode(stories, n);
  const got = await run([
    '--model',
    stories,
    '--nodes',
    `${addr(nodes[0])},${addr(nodes[1])}`,
    '--tensor',
    '2',
    '--sync',
    'q8_0',
    '-n',
    String(n),
  ]);
  t.is(got.tokens.length, n);
  // Greedy decode feeds back its own tokens: agreement is the prefix up to the first difference.
  let same = 0;
  while (same < n && got.tokens[same] === want.tokens[same]) same++;
  t.log(`q8_0 sync: the first ${same} of ${n} greedy tokens equal one node's`);
  t.true(same >= 1, "the first token (a prompt of 5 tokens through q8_0 syncs) equals one node's");
});

test.serial('herd plan --tensor 2 shows the group, its shares and a predicted ms/token', async (t) => {
  const r = await runHerd(['plan', '--nodes', `${addr(nodes[0])},${addr(nodes[1])}`, '--tensor', '2', '--json']);
  t.is(r.code, 0, r.stderr);
  const p = JSON.parse(r.stdout) as {
    plan: { layers: number[]; nodes: { node: string; share: { kv_heads: number[]; ffn_rows: number[] } }[] }[];
    token_ms: number;
  };
  t.is(p.plan.length, 1);
  const [a, b] = p.plan[0].nodes;
  t.deepEqual([a.share.kv_heads[0], a.share.kv_heads[1] === b.share.kv_heads[0], b.share.kv_heads[1]], [0, true, 4]);
  t.deepEqual([a.share.ffn_rows[0], a.share.ffn_rows[1] === b.share.ffn_rows[0], b.share.ffn_rows[1]], [0, true, 172]);
  t.true(p.token_ms > 0);
});

test.serial('--tensor larger than the herd is refused with the reason', async (t) => {
  const r = await runHerd([
    'run',
    '--nodes',
    `${addr(nodes[0])},${addr(nodes[1])}`,
    '--tensor',
    '3',
    '-n',
    '1',
    PROMPT,
  ]);
  t.not(r.code, 0);
  t.regex(r.stderr, /--tensor 3 needs at least 3 nodes, 2 available/);
});

test.serial('a member killed mid-run: the herd re-plans and the run ends with the uninterrupted text', async (t) => {
  const n = 400;
  const want = await oneNode(stories, n);
  const pair = [
    await startNode([...loopbackNodeArgs(join(dir, 'epsilon')), '--name', 'epsilon']),
    await startNode([...loopbackNodeArgs(join(dir, 'zeta')), '--name', 'zeta']),
  ];
  try {
    const child = spawn(
      process.execPath,
      [
        herdBin,
        'run',
        '--nodes',
        pair.map(addr).join(','),
        '--tensor',
        '2',
        '--sync',
        'f32',
        '--ctx',
        '512',
        '--temp',
        '0',
        '-n',
        String(n),
        PROMPT,
      ],
      { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    let victim: RunningNode | undefined;
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      if (!victim && stdout.length >= 40) {
        // the member that is not the leader: the route names the leader, the follower only syncs
        victim = pair.find((p) => p.events.some((e) => e.event === 'group.linked' && e.member === 1));
        victim?.child.kill('SIGKILL');
      }
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), HUNG_MS);
      child.once('exit', (c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
    t.is(code, 0, stderr);
    t.truthy(victim, 'a follower was killed mid-run');
    t.regex(stderr, /lost node (epsilon|zeta)/);
    t.regex(stderr, /resumed at position/);
    t.is(stdout.trim(), want.text.trim());
  } finally {
    for (const p of pair) {
      p.child.kill('SIGKILL');
      await p.exited();
    }
  }
});

test.serial('herd serve --tensor 2 --sync f32: concurrent completions over a group each equal one node', async (t) => {
  const prompts = [PROMPT, 'The dog ran to the park and', 'Tom was sad'];
  const want = await Promise.all(
    prompts.map(async (p) => {
      const r = await runHerd(['run', '--temp', '0', '--ctx', '512', '--json', '-n', '40', p], undefined, HUNG_MS);
      if (r.code !== 0) throw new Error(r.stderr);
      return (JSON.parse(r.stdout) as RunJson).text;
    }),
  );
  const serve = await startServe([
    '--nodes',
    `${addr(nodes[0])},${addr(nodes[1])}`,
    '--tensor',
    '2',
    '--sync',
    'f32',
    '--ctx',
    '512',
  ]);
  try {
    const got = await Promise.all(
      prompts.map(async (prompt) => {
        const r = await fetch(`${serve.url}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ prompt, max_tokens: 40, temperature: 0, cache_prompt: false }),
        });
        if (r.status !== 200) throw new Error(`${r.status}: ${await r.text()}`);
        return ((await r.json()) as { choices: { text: string }[] }).choices[0].text;
      }),
    );
    t.deepEqual(got, want);
    const ready = await serve.waitFor((e) => e.event === 'model.ready');
    // One stage, a group of the two nodes (the faster one leads).
    const plan = ready.plan as string[];
    t.is(plan.length, 1);
    t.regex(plan[0], /^(alpha\+beta|beta\+alpha)@127\.0\.0\.1:\d+\[0,5\)$/);
  } finally {
    await serve.stop();
  }
});
