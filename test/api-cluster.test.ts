// `herd serve --nodes` over two real node daemons on loopback: the serve process is the standing
// coordinator, every request its own pipeline session (KV caches on both nodes).

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { fetchInfo } from '../src/cluster/discovery/static.ts';
import { herd } from './helpers/herd.ts';
import { parsePrometheus, sum } from './helpers/prometheus.ts';
import { startNode, type RunningNode } from './helpers/herd-proc.ts';
import { eventually, startServe, type RunningServe } from './helpers/serve.ts';

const KEY = 'cluster-key-for-api-tests';
const dir = mkdtempSync(join(tmpdir(), 'herd-api-cluster-'));
const nodes: RunningNode[] = [];
let serve: RunningServe;
let client: OpenAI;

test.before(async () => {
  for (const name of ['alpha', 'beta']) {
    nodes.push(await startNode(['--no-mdns', '--host', '127.0.0.1', '--port', '0', '--cache-dir', join(dir, name), '--cluster-key', KEY, '--name', name]));
  }
  const peers = nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
  serve = await startServe(['--nodes', peers, '--stages', '2', '--cluster-key', KEY, '--ctx', '1024'], { env: { ...process.env, HERD_CACHE_DIR: join(dir, 'serve') } });
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: 'none', maxRetries: 0 });
});

test.after.always(async () => {
  await serve?.stop();
  for (const n of nodes) {
    n.child.kill('SIGTERM');
    await n.exited();
  }
  rmSync(dir, { recursive: true, force: true });
});

async function nodeSessions(): Promise<number> {
  const infos = await Promise.all(nodes.map((n) => fetchInfo(`127.0.0.1:${n.port}`, 2000)));
  return infos.reduce((s, i) => s + i.shards.reduce((a, sh) => a + sh.sessions, 0), 0);
}

test.serial('the plan spans both nodes and a greedy completion equals a local run', async (t) => {
  const state = (await (await fetch(`${serve.url}/api/state`)).json()) as { mode: string; nodes: { node: string; layers: number[] }[] };
  t.is(state.mode, 'cluster');
  t.deepEqual(state.nodes.map((n) => n.node).sort(), ['alpha', 'beta']);
  t.deepEqual(state.nodes.flatMap((n) => n.layers).sort((a, b) => a - b)[0], 0);
  const [run, c] = await Promise.all([
    herd(['run', '--temp', '0', '-n', '48', '--json', 'Once upon a time']),
    client.completions.create({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 48, temperature: 0 }),
  ]);
  const local = JSON.parse(run.stdout) as { text: string; tokens: number[] };
  t.is(c.choices[0].text, local.text);
  t.deepEqual((c as unknown as { herd: { tokens: number[]; plan: unknown[] } }).herd.tokens, local.tokens);
  t.is((c as unknown as { herd: { plan: unknown[] } }).herd.plan.length, 2);
});

test.serial('/metrics shows each node\'s own stage time, by phase, for every step of the ring', async (t) => {
  await client.completions.create({ model: 'stories260K', prompt: 'The little dog', max_tokens: 8, temperature: 0 });
  const { samples, types } = parsePrometheus(await (await fetch(`${serve.url}/metrics`)).text());
  t.is(types.get('herd_stage_step_seconds'), 'histogram');
  const ids = new Map(await Promise.all(nodes.map(async (n) => [(await fetchInfo(`127.0.0.1:${n.port}`, 2000)).name, n.ready.id as string] as const)));
  for (const phase of ['prefill', 'decode']) {
    const steps = sum(samples, 'herd_step_seconds_count', { phase });
    t.true(steps > 0, phase);
    for (const [node, id] of ids) {
      // Every step passes every stage: each node counts each step once.
      t.is(sum(samples, 'herd_stage_step_seconds_count', { node, node_id: id, phase }), steps, `${node} ${phase}`);
      t.true(sum(samples, 'herd_stage_step_seconds_sum', { node, phase }) > 0, `${node} ${phase}`);
    }
    // A stage's compute is part of the ring's time.
    const stages = [...ids.keys()].reduce((a, node) => a + sum(samples, 'herd_stage_step_seconds_sum', { node, phase }), 0);
    t.true(stages < sum(samples, 'herd_step_seconds_sum', { phase }), phase);
  }
  t.deepEqual(samples.filter((x) => x.name === 'herd_stage_step_seconds_count').map((x) => x.labels.node).filter((n, i, a) => a.indexOf(n) === i).sort(), ['alpha', 'beta']);

  // The dashboard's JSON: each node's recent compute per token.
  const state = (await (await fetch(`${serve.url}/api/state`)).json()) as { nodes: { node: string; stageMs: { prefill?: number; decode?: number } }[] };
  for (const n of state.nodes) t.true((n.stageMs.decode ?? 0) > 0 && (n.stageMs.prefill ?? 0) > 0, n.node);
});

test.serial('concurrent streams run as separate pipeline sessions, each equal to its sequential result', async (t) => {
  const prompts = ['Once upon a time', 'The little dog', 'Tom and Lily', 'One day, a bird'];
  const sequential: string[] = [];
  for (const p of prompts) sequential.push((await client.completions.create({ model: 'stories260K', prompt: p, max_tokens: 40, temperature: 0 })).choices[0].text);
  const concurrent = await Promise.all(
    prompts.map(async (p) => {
      let text = '';
      for await (const c of await client.completions.create({ model: 'stories260K', prompt: p, max_tokens: 40, temperature: 0, stream: true })) text += c.choices[0]?.text ?? '';
      return text;
    }),
  );
  t.deepEqual(concurrent, sequential);
  await eventually(async () => (await nodeSessions()) === 0, 5000, 'the nodes to free every session');
});

test.serial('a cancelled stream frees its KV caches on every node', async (t) => {
  const ac = new AbortController();
  const stream = await client.completions.create(
    { model: 'stories260K', prompt: 'Once upon a time', max_tokens: 1000, temperature: 0, stream: true },
    { signal: ac.signal },
  );
  let chunks = 0;
  try {
    for await (const _ of stream) {
      if (++chunks === 5) {
        t.is(await nodeSessions(), 2, 'one session on each of the two stages');
        ac.abort();
      }
    }
  } catch {
    // the client reports the abort
  }
  await eventually(async () => (await nodeSessions()) === 0, 5000, 'the nodes to free the session');
  const cancelled = await serve.waitFor((e) => e.event === 'request.cancelled', 5000);
  t.true(Number(cancelled.completionTokens) < 1000);
});
