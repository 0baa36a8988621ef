// Sessions that go back: a session truncated to a prefix of what it holds and stepped on gives
// exactly the tokens of a fresh session fed the whole sequence — in-process, and through two
// real node daemons on loopback (the last stage truncates its penalty history and restarts its
// sampler when asked). What prompt reuse in herd chat and herd serve stands on.

import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GgufFile } from '../src/gguf/reader.ts';
import { Tokenizer } from '../src/tokenizer/index.ts';
import { commonPrefix, type InferenceSession } from '../src/engine/session.ts';
import { defaultSampling, type SamplingOptions } from '../src/engine/sampler.ts';
import { silentLogger } from '../src/cluster/log.ts';
import { findHerd } from '../src/cluster/coordinator/herd-model.ts';
import { loadModel, type LoadedModel } from '../src/api/open.ts';
import { stopProcess } from './helpers/netns.ts';
import { startNode, type RunningNode, loopbackNodeArgs } from './helpers/herd-proc.ts';
import { bundledModel } from './helpers/paths.ts';

const file = GgufFile.open(bundledModel);
const tokenizer = Tokenizer.fromGguf(file);
const CTX = 256;
const herdOptions = { kvType: 'f32' as const, wire: 'f32' as const, discoveryTimeoutMs: 2000 };

// Penalties make the last stage's token history matter; temperature 0 makes the draw exact.
const greedy: SamplingOptions = { ...defaultSampling, temperature: 0, repeatPenalty: 1.3, penaltyLastN: 16 };
const sampled = (seed: number): SamplingOptions => ({ ...defaultSampling, temperature: 0.9, repeatPenalty: 1.1, seed });

/** Steps `tokens` from `start` (the session holds the positions before it), then `n` tokens fed back. */
async function continueFrom(
  s: InferenceSession,
  tokens: readonly number[],
  start: number,
  n: number,
): Promise<{ out: number[]; held: number[] }> {
  const held = [...tokens];
  const out: number[] = [];
  let next = await s.step(tokens.slice(start), start);
  for (let i = 0; i < n; i++) {
    out.push(next);
    if (i === n - 1) break;
    held.push(next);
    next = await s.step([next], held.length - 1);
  }
  return { out, held };
}

async function checkReuse(t: ExecutionContext, loaded: LoadedModel): Promise<void> {
  const first = tokenizer.encode('Once upon a time, there was a little girl named Lily.');
  const other = tokenizer.encode(' The dog ran to the park and', { addSpecial: false });

  // A session that served one request: the prompt and 24 tokens it generated.
  const kept = await loaded.open(greedy);
  try {
    const a = await continueFrom(kept, first, 0, 24);
    t.is(a.out.length, 24);

    // Cases: back into the generated tokens, back into the prompt, and all the way to 0.
    for (const keep of [first.length + 10, 5, 0]) {
      const prompt = [...a.held.slice(0, keep), ...other];
      t.is(commonPrefix(a.held, prompt), keep);
      const fresh = await loaded.open(greedy);
      let expected: number[];
      try {
        expected = (await continueFrom(fresh, prompt, 0, 16)).out;
      } finally {
        await fresh.close();
      }
      kept.resample(greedy);
      const got = await continueFrom(kept, prompt, keep, 16);
      t.deepEqual(got.out, expected, `rewound to ${keep} of ${a.held.length}`);
      // The session now holds `got.held`: rewind from there next time.
      a.held.splice(0, a.held.length, ...got.held);
    }

    // A new generation with other sampling options: the sampler starts over from the seed.
    const fresh = await loaded.open(sampled(7));
    let expected: number[];
    try {
      expected = (await continueFrom(fresh, first, 0, 24)).out;
    } finally {
      await fresh.close();
    }
    kept.resample(sampled(7));
    const got = await continueFrom(kept, first, commonPrefix(a.held, first), 24);
    t.deepEqual(got.out, expected, 'seeded sampling after resample');

    // Past the end is refused; the session stays usable.
    await t.throwsAsync(() => kept.step([1], got.held.length + 1), {
      message: /step at position \d+, past the session's end at \d+/,
    });
    const again = await kept.step([got.out[23]], got.held.length);
    t.true(again >= 0 && again < tokenizer.vocabSize);
  } finally {
    await kept.close();
  }
}

test('in-process: a session rewound to a prefix gives the tokens of a fresh session', async (t) => {
  const loaded = await loadModel({ ...herdOptions, nodes: 'local', file, ctx: CTX, log: silentLogger }, undefined);
  try {
    await checkReuse(t, loaded);
  } finally {
    await loaded.close();
  }
});

test('over two loopback nodes: a pipeline session rewound to a prefix gives the tokens of a fresh one', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'herd-reuse-'));
  const nodes: RunningNode[] = [];
  try {
    for (const name of ['one', 'two']) {
      nodes.push(await startNode([...loopbackNodeArgs(join(dir, name)), '--name', name]));
    }
    const o = {
      ...herdOptions,
      nodes: nodes.map((n) => `127.0.0.1:${n.port}`).join(','),
      stages: 2,
      cacheDir: join(dir, 'coordinator'),
    };
    const set = await findHerd(o, () => {});
    const loaded = await loadModel({ ...o, file, ctx: CTX, log: silentLogger }, set);
    try {
      t.is(loaded.mode, 'cluster');
      t.is(loaded.plan.length, 2);
      await checkReuse(t, loaded);
    } finally {
      await loaded.close();
    }
    // The nodes refused nothing: every rewind was a valid activation.
    t.false(nodes.some((n) => n.events.some((e) => e.event === 'request.failed' && e.code === 'INVALID_ARGUMENT')));
  } finally {
    await Promise.all(nodes.map((n) => stopProcess(n.child, 5000)));
    rmSync(dir, { recursive: true, force: true });
  }
});
