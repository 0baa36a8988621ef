// `herd serve --nodes` over two real node daemons on loopback: the serve process is the standing
// coordinator, every request its own pipeline session (KV caches on both nodes), kept open idle
// after the request for the next one that shares its prompt prefix.

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { fetchInfo } from '../src/cluster/discovery/static.ts';
import { herd } from './helpers/herd.ts';
import { parsePrometheus, sum } from './helpers/prometheus.ts';
import { startNode, type RunningNode, loopbackNodeArgs, nodeSessions } from './helpers/herd-proc.ts';
import { eventually, HUNG_MS, startServe, type RunningServe } from './helpers/serve.ts';

const KEY = 'cluster-key-for-api-tests-0123456789';
const key = Buffer.from(KEY);
const dir = mkdtempSync(join(tmpdir(), 'herd-api-cluster-'));
const nodes: RunningNode[] = [];
let serve: RunningServe;
let client: OpenAI;

test.before(async () => {
  for (const name of ['alpha', 'beta']) {
    nodes.push(await startNode([...loopbackNodeArgs(join(dir, name)), '--cluster-key', KEY, '--name', name]));
  }
  const peers = nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
  serve = await startServe(['--nodes', peers, '--stages', '2', '--cluster-key', KEY, '--ctx', '1024'], {
    env: { ...process.env, HERD_CACHE_DIR: join(dir, 'serve') },
  });
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

interface State {
  sessions: { active: number; idle: number; queued: number; slots: number };
}

async function state(): Promise<State> {
  return (await fetch(`${serve.url}/api/state`)).json() as Promise<State>;
}

/** Every pipeline session the server holds (lent or idle) has one stage session on each node. */
async function sessionsHeld(): Promise<number> {
  const s = await state();
  return 2 * (s.sessions.active + s.sessions.idle);
}

test.serial('the plan spans both nodes and a greedy completion equals a local run', async (t) => {
  const state = (await (await fetch(`${serve.url}/api/state`)).json()) as {
    mode: string;
    nodes: { node: string; layers: number[] }[];
  };
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

test.serial("/metrics shows each node's own stage time, by phase, for every step of the ring", async (t) => {
  await client.completions.create({ model: 'stories260K', prompt: 'The little dog', max_tokens: 8, temperature: 0 });
  const { samples, types } = parsePrometheus(await (await fetch(`${serve.url}/metrics`)).text());
  t.is(types.get('herd_stage_step_seconds'), 'histogram');
  const ids = new Map(
    await Promise.all(
      nodes.map(
        async (n) => [(await fetchInfo(`127.0.0.1:${n.port}`, HUNG_MS, key)).name, n.ready.id as string] as const,
      ),
    ),
  );
  for (const phase of ['prefill', 'decode']) {
    const steps = sum(samples, 'herd_step_seconds_count', { phase });
    t.true(steps > 0, phase);
    for (const [node, id] of ids) {
      // Every step passes every stage: each node counts each step once.
      t.is(sum(samples, 'herd_stage_step_seconds_count', { node, node_id: id, phase }), steps, `${node} ${phase}`);
      t.true(sum(samples, 'herd_stage_step_seconds_sum', { node, phase }) > 0, `${node} ${phase}`);
    }
    // A stage's compute is part of the ring's time.
    const stages = [...ids.keys()].reduce(
      (a, node) => a + sum(samples, 'herd_stage_step_seconds_sum', { node, phase }),
      0,
    );
    t.true(stages < sum(samples, 'herd_step_seconds_sum', { phase }), phase);
  }
  t.deepEqual(
    samples
      .filter((x) => x.name === 'herd_stage_step_seconds_count')
      .map((x) => x.labels.node)
      .filter((n, i, a) => a.indexOf(n) === i)
      .sort(),
    ['alpha', 'beta'],
  );

  // The dashboard's JSON: each node's recent compute per token.
  const state = (await (await fetch(`${serve.url}/api/state`)).json()) as {
    nodes: { node: string; stageMs: { prefill?: number; decode?: number } }[];
  };
  for (const n of state.nodes) t.true((n.stageMs.decode ?? 0) > 0 && (n.stageMs.prefill ?? 0) > 0, n.node);
});

test.serial('concurrent streams run as separate pipeline sessions, each equal to its sequential result', async (t) => {
  const prompts = ['Once upon a time', 'The little dog', 'Tom and Lily', 'One day, a bird'];
  const sequential: string[] = [];
  for (const p of prompts)
    sequential.push(
      (await client.completions.create({ model: 'stories260K', prompt: p, max_tokens: 40, temperature: 0 })).choices[0]
        .text,
    );
  const concurrent = await Promise.all(
    prompts.map(async (p) => {
      let text = '';
      for await (const c of await client.completions.create({
        model: 'stories260K',
        prompt: p,
        max_tokens: 40,
        temperature: 0,
        stream: true,
      }))
        text += c.choices[0]?.text ?? '';
      return text;
    }),
  );
  t.deepEqual(concurrent, sequential);
  // What the nodes hold is exactly the sessions the server kept: nothing leaked.
  await eventually(
    async () => (await nodeSessions(nodes, key)) === (await sessionsHeld()),
    HUNG_MS,
    'the nodes to free every session the server let go',
  );
  const s = await state();
  t.is(s.sessions.active, 0);
  t.true(s.sessions.idle >= 1 && s.sessions.idle <= s.sessions.slots, `idle ${s.sessions.idle}`);
});

test.serial(
  "a chat that extends the previous one reuses its pipeline session; the text is a cold session's",
  async (t) => {
    const reused = async () =>
      sum(
        parsePrometheus(await (await fetch(`${serve.url}/metrics`)).text()).samples,
        'herd_prompt_tokens_reused_total',
      );
    const messages: OpenAI.ChatCompletionMessageParam[] = [
      { role: 'user', content: 'Tell me a story about a brave mouse.' },
    ];
    const first = await client.chat.completions.create({
      model: 'stories260K',
      messages,
      max_tokens: 32,
      temperature: 0,
    });
    messages.push(
      { role: 'assistant', content: first.choices[0].message.content ?? '' },
      { role: 'user', content: 'And then?' },
    );
    const before = await reused();
    const second = await client.chat.completions.create({
      model: 'stories260K',
      messages,
      max_tokens: 32,
      temperature: 0,
    });
    const cached = second.usage?.prompt_tokens_details?.cached_tokens ?? 0;
    t.true(cached >= (first.usage?.prompt_tokens ?? Infinity), `reused ${cached} of ${second.usage?.prompt_tokens}`);
    t.is((await reused()) - before, cached);
    const cold = await client.chat.completions.create({
      model: 'stories260K',
      messages,
      max_tokens: 32,
      temperature: 0,
      cache_prompt: false,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    t.is(cold.usage?.prompt_tokens_details?.cached_tokens, 0);
    t.is(second.choices[0].message.content, cold.choices[0].message.content);
  },
);

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
        const s = await state();
        t.is(s.sessions.active, 1);
        // The stream's session and the idle ones, each on both stages.
        t.is(
          await nodeSessions(nodes, key),
          await sessionsHeld(),
          'one session on each of the two stages per pipeline session',
        );
        ac.abort();
      }
    }
  } catch {
    // the client reports the abort
  }
  // The cancel ends between steps: the session is whole and kept idle (its slot free for any
  // request); the nodes hold exactly what the server keeps.
  await eventually(async () => (await state()).sessions.active === 0, HUNG_MS, 'the slot to be freed');
  await eventually(
    async () => (await nodeSessions(nodes, key)) === (await sessionsHeld()),
    HUNG_MS,
    'the nodes to free what the server let go',
  );
  const cancelled = await serve.waitFor((e) => e.event === 'request.cancelled', HUNG_MS);
  t.true(Number(cancelled.completionTokens) < 1000);
  // Without the prompt cache, a cancelled stream's KV caches go on every node.
  const held = await nodeSessions(nodes, key);
  const ac2 = new AbortController();
  const stream2 = await client.completions.create(
    {
      model: 'stories260K',
      prompt: 'A tiny red fish',
      max_tokens: 1000,
      temperature: 0,
      stream: true,
      cache_prompt: false,
    } as OpenAI.CompletionCreateParamsStreaming,
    { signal: ac2.signal },
  );
  chunks = 0;
  try {
    for await (const _ of stream2) if (++chunks === 5) ac2.abort();
  } catch {
    // the client reports the abort
  }
  await eventually(async () => (await state()).sessions.active === 0, HUNG_MS, 'the slot to be freed');
  await eventually(
    async () => (await nodeSessions(nodes, key)) === (await sessionsHeld()),
    HUNG_MS,
    'the nodes to free the session',
  );
  t.true((await nodeSessions(nodes, key)) <= held, 'the uncached stream left nothing behind');
});
