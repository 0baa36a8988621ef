// Continuous batching at every stage of the herd: `herd serve --nodes A,B` with 4 concurrent
// greedy streams. Each stage runs the activations waiting at it as one step (engine/batcher.ts on
// the node); every stream still returns exactly the text of its request run alone.

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fetchInfo } from '../src/cluster/discovery/static.ts';
import { startNode, type RunningNode, loopbackNodeArgs, nodeSessions } from './helpers/herd-proc.ts';
import { HUNG_MS, startServe, type RunningServe } from './helpers/serve.ts';
import { streamRequest, type StreamedChunk } from './helpers/sse-client.ts';

const dir = mkdtempSync(join(tmpdir(), 'herd-cluster-batching-'));
const nodes: RunningNode[] = [];
let serve: RunningServe;

test.before(async () => {
  for (const name of ['alpha', 'beta'])
    nodes.push(await startNode([...loopbackNodeArgs(join(dir, name)), '--name', name]));
  const peers = nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
  serve = await startServe(['--nodes', peers, '--stages', '2', '--ctx', '1024', '--parallel', '8'], {
    env: { ...process.env, HERD_CACHE_DIR: join(dir, 'serve') },
  });
});

test.after.always(async () => {
  await serve?.stop();
  for (const n of nodes) {
    n.child.kill('SIGCONT');
    n.child.kill('SIGTERM');
    await n.exited();
  }
  rmSync(dir, { recursive: true, force: true });
});

const prompts = ['Once upon a time', 'The dog ran to the park and', 'Lily had a red ball. One day', 'Tom was sad'];

interface Streamed {
  text: string;
  finish: string | null;
}

/**
 * A streamed completion of `body` (greedy unless it says otherwise); `onPiece` hears the count
 * of text pieces so far. Aborted by `signal`, it resolves with what came.
 */
async function streamBody(
  body: Record<string, unknown>,
  onPiece: (n: number) => void = () => {},
  signal?: AbortSignal,
): Promise<Streamed> {
  let pieces: readonly StreamedChunk[] = [];
  const text = () => pieces.map((c) => c.text).join('');
  try {
    const r = await streamRequest(
      serve.url,
      'completions',
      { max_tokens: 200, temperature: 0, cache_prompt: false, ...body },
      signal,
      (chunks) => {
        pieces = chunks;
        onPiece(chunks.length);
      },
    );
    if (r.status !== 200) throw new Error(`${r.status}: ${JSON.stringify(r.error)}`);
    return { text: text(), finish: r.finish };
  } catch (e) {
    if (!signal?.aborted) throw e;
    return { text: text(), finish: null };
  }
}

/** A greedy streamed completion's text; `onFirst` runs when its first text arrives. */
async function stream(prompt: string, onFirst: () => void = () => {}): Promise<string> {
  return (await streamBody({ prompt }, (n) => n === 1 && onFirst())).text;
}

async function stepCounts(): Promise<{ steps: number; entries: number }[]> {
  const infos = await Promise.all(nodes.map((n) => fetchInfo(`127.0.0.1:${n.port}`, HUNG_MS, undefined)));
  return infos.map((i) => ({ steps: Number(i.counters?.steps ?? 0), entries: Number(i.counters?.stepEntries ?? 0) }));
}

test.serial('4 concurrent streams over 2 stages share each stage’s steps and each gets its text alone', async (t) => {
  const start = await stepCounts();
  const alone: string[] = [];
  for (const p of prompts) alone.push(await stream(p));
  t.is(new Set(alone).size, prompts.length, 'the prompts lead to different texts');
  const before = await stepCounts();
  for (const [i, c] of before.entries())
    t.is(c.entries - start[i].entries, c.steps - start[i].steps, 'one session at a time: one entry per step');

  // Once all four decode, hold the first stage for a moment: the four sessions' next
  // activations wait in its socket, and it must run them as one step when it resumes.
  let decoding = 0;
  let held: Promise<void> | undefined;
  const onFirst = () => {
    if (++decoding < prompts.length) return;
    nodes[0].child.kill('SIGSTOP');
    held = new Promise<void>((r) => setTimeout(r, 300)).then(() => void nodes[0].child.kill('SIGCONT'));
  };
  const together = await Promise.all(prompts.map((p) => stream(p, onFirst)));
  await held;
  t.deepEqual(together, alone);

  const after = await stepCounts();
  const first = { steps: after[0].steps - before[0].steps, entries: after[0].entries - before[0].entries };
  t.log(`stage 1: ${first.entries} session entries in ${first.steps} steps`);
  t.true(first.entries > first.steps, 'some steps of the first stage carried several sessions');
});

test.serial(
  '8 sessions over the herd: prompts of different lengths, one joining late, one cancelled, one stopped by a string, one seeded',
  async (t) => {
    const story =
      'Once upon a time there was a little girl named Lily. She loved to play outside in the park with her dog. ' +
      'One day, she saw a big red ball under a tree. She ran to get it, but the ball rolled away.';
    const bodies: Record<string, unknown>[] = [
      { prompt: 'Once upon a time' },
      { prompt: story, max_tokens: 60 },
      { prompt: 'Tom was sad', max_tokens: 120 },
      { prompt: 'The cat', stop: ['.'] },
      { prompt: 'Tom and Lily went to the', temperature: 0.8, seed: 42 },
      { prompt: story.slice(0, 90), max_tokens: 150 },
      { prompt: 'The dog ran to the park and' }, // joins once the others decode
    ];
    const alone: Streamed[] = [];
    for (const b of bodies) alone.push(await streamBody(b));
    t.false(alone[3].text.includes('.'), 'the stop string ends that stream');
    t.is(alone[3].finish, 'stop');

    const abort = new AbortController();
    let decoding = 0;
    let joined: Promise<Streamed> | undefined;
    const startLate = () => {
      if (++decoding === 5) joined = streamBody(bodies[6]);
    };
    const early = bodies.slice(0, 6).map((b) => streamBody(b, (n) => n === 1 && startLate()));
    // The eighth is cancelled mid-way: its stage sessions go, the others go on.
    const cancelled = streamBody(
      { prompt: 'Lily had a red ball. One day', max_tokens: 200 },
      (n) => {
        if (n === 5) abort.abort();
      },
      abort.signal,
    );
    const together = await Promise.all(early);
    t.truthy(joined, 'the late request joined while others decoded');
    together.push(await (joined as Promise<Streamed>));
    const cut = await cancelled;

    t.deepEqual(
      together.map((s) => s.text),
      alone.map((s) => s.text),
    );
    t.is(together[3].finish, 'stop');
    t.true(cut.text.length > 0 && cut.finish === null, 'the cancelled stream ended without finishing');
    // Every stage session has gone (none kept: cache_prompt is off), the cancelled one's too.
    const deadline = Date.now() + HUNG_MS;
    while ((await nodeSessions(nodes)) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    t.is(await nodeSessions(nodes), 0);
  },
);
