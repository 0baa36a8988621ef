// Continuous batching in this process (engine/batcher.ts): sessions of one model that step at
// the same time share the runner's steps, and each gets exactly the tokens it gets alone —
// greedy and seeded, prompts of different lengths (one longer than a step's budget, run in
// pieces beside the others' decode), a session joining while the others decode, one cancelled
// mid-way, one ending on a stop string — on the native and wasm kernels, f32 and Q4_0 weights.

import test from 'ava';
import { join } from 'node:path';
import { GgufFile } from '../src/gguf/reader.ts';
import { Tokenizer } from '../src/tokenizer/index.ts';
import { createBackend } from '../src/kernels/select.ts';
import type { BackendName, KernelBackend } from '../src/kernels/backend.ts';
import { loadLocalModel, type LocalModel } from '../src/engine/local.ts';
import { SessionClosedError } from '../src/engine/batcher.ts';
import { generate, type GenerateResult } from '../src/engine/generate.ts';
import type { InferenceSession } from '../src/engine/session.ts';
import { SliceRunner } from '../src/engine/slice.ts';
import type { Transformer } from '../src/model/transformer.ts';
import { defaultSampling, type SamplingOptions } from '../src/engine/sampler.ts';
import { bundledModel, fixtureModels } from './helpers/paths.ts';
import { nativeAvailable } from './helpers/kernel-backends.ts';

const CTX = 512;
const greedy: SamplingOptions = { ...defaultSampling, temperature: 0, repeatPenalty: 1.2, penaltyLastN: 16 };
const seeded = (seed: number): SamplingOptions => ({ ...defaultSampling, temperature: 0.9, seed, logprobs: 2 });

const texts = [
  'Once upon a time',
  'The dog ran',
  'Tom and Sue went to the park to play with a ball. They had',
  // longer than a step's budget (32 tokens): its prompt runs in pieces over several steps
  'Lily was a little girl who loved to play in the garden. One day she saw a big red ball under a tree. ' +
    'She ran to the ball and picked it up. Her mom said she could keep it, and Lily was very happy. Then',
  'A',
  'One day, a cat',
  'Ben had a toy car. He liked to',
  'The sun was hot and the birds sang',
];

interface Request {
  readonly prompt: number[];
  readonly sampling: SamplingOptions;
  readonly maxTokens: number;
  readonly stop?: string[];
  /** Cancelled (its signal aborted) once it has this many tokens. */
  readonly abortAfter?: number;
}

/**
 * The reference: a session that steps the runner by itself, no batcher — each step one
 * SliceRunner.step of its own tokens alone (as every in-process session did before batching).
 */
function aloneSession(model: Transformer, sampling: SamplingOptions): InferenceSession {
  const runner = new SliceRunner(model);
  const seq = runner.open(CTX, sampling);
  return {
    ctx: seq.ctx,
    get logprobs() {
      return seq.logprobs;
    },
    step: async (tokens, start) => (await runner.step([{ seq, tokens, start }])).sampled[0],
    resample: (o) => seq.resample(o),
    close: async () => {},
  };
}

/** One request on a new session of the model (shared, or alone): its result, the session closed after it. */
async function run(
  loaded: LocalModel,
  tokenizer: Tokenizer,
  r: Request,
  onToken?: (n: number) => void,
  alone = false,
): Promise<GenerateResult> {
  const session = alone ? aloneSession(loaded.model, r.sampling) : await loaded.open(r.sampling);
  const abort = new AbortController();
  let n = 0;
  try {
    const result = await generate(session, tokenizer, {
      prompt: r.prompt,
      maxTokens: r.maxTokens,
      stop: r.stop,
      signal: abort.signal,
      onToken: () => {
        n++;
        if (r.abortAfter !== undefined && n >= r.abortAfter) abort.abort();
        onToken?.(n);
      },
    });
    return result;
  } finally {
    await session.close();
  }
}

const subjects: { backend: BackendName; model: string }[] = [
  { backend: 'wasm', model: bundledModel },
  { backend: 'wasm', model: join(fixtureModels, 'stories260K-q4_0.gguf') },
  ...(nativeAvailable
    ? [
        { backend: 'native' as const, model: bundledModel },
        { backend: 'native' as const, model: join(fixtureModels, 'stories260K-q4_0.gguf') },
      ]
    : []),
];

for (const s of subjects) {
  const name = s.model.endsWith('q4_0.gguf') ? 'Q4_0' : 'f32';
  test.serial(`${s.backend}, ${name}: 8 sessions at once each get exactly the tokens they get alone`, async (t) => {
    const file = GgufFile.open(s.model);
    const tokenizer = Tokenizer.fromGguf(file);
    let backend: KernelBackend | undefined;
    try {
      backend = await createBackend(s.backend, { threads: 2 });
      const loaded = await loadLocalModel(file, { ctx: CTX, kvType: 'f32', backend });
      const base: Request[] = texts.map((text, i) => ({
        prompt: tokenizer.encode(text),
        sampling: i % 2 === 0 ? greedy : seeded(1000 + i),
        maxTokens: 40 + 7 * i,
        ...(i === 5 ? { abortAfter: 12 } : {}),
      }));
      t.true(base[3].prompt.length > loaded.batcher.budget, 'one prompt is longer than a step takes');

      // Alone, one after another: the reference. Session 7 then ends on a stop string from its own text.
      const alone: GenerateResult[] = [];
      for (const r of base) alone.push(await run(loaded, tokenizer, r, undefined, true));
      const words = alone[7].text.trim().split(/\s+/);
      t.true(words.length > 6, alone[7].text);
      const reqs = base.map((r, i) => (i === 7 ? { ...r, stop: [` ${words[5]}`] } : r));
      alone[7] = await run(loaded, tokenizer, reqs[7], undefined, true);
      t.is(alone[7].stopReason, 'stop');
      t.is(alone[5].stopReason, 'aborted');
      t.is(alone[5].tokens.length, 12);

      // At once: session 6 joins once session 0 has 5 tokens (the others decoding by then).
      const stats0 = { ...loaded.batcher.stats };
      let joined!: (v: void) => void;
      const joining = new Promise((resolve) => (joined = resolve));
      const together = await Promise.all(
        reqs.map(async (r, i) => {
          if (i === 6) await joining;
          return run(loaded, tokenizer, r, i === 0 ? (n) => n === 5 && joined() : undefined);
        }),
      );
      for (let i = 0; i < reqs.length; i++) {
        t.deepEqual(together[i].tokens, alone[i].tokens, `session ${i}: tokens`);
        t.is(together[i].text, alone[i].text, `session ${i}: text`);
        t.is(together[i].stopReason, alone[i].stopReason, `session ${i}: stop reason`);
        t.deepEqual(together[i].logprobs, alone[i].logprobs, `session ${i}: logprobs`);
      }
      const stats = loaded.batcher.stats;
      const steps = stats.steps - stats0.steps;
      const tokens = together.reduce((sum, r) => sum + r.tokens.length, 0);
      t.true(stats.maxEntries >= 6, `a step served ${stats.maxEntries} sessions at most`);
      t.true(steps < tokens / 3, `${steps} steps for ${tokens} tokens: the sessions shared them`);
      await loaded.close();
    } finally {
      await backend?.close?.();
    }
  });
}

test.serial('a session closed while its prompt runs in pieces drops its step; the others are unaffected', async (t) => {
  const file = GgufFile.open(bundledModel);
  const tokenizer = Tokenizer.fromGguf(file);
  const backend = await createBackend('wasm', { threads: 2 });
  try {
    const loaded = await loadLocalModel(file, { ctx: CTX, kvType: 'f32', backend });
    const other: Request = { prompt: tokenizer.encode(texts[0]), sampling: greedy, maxTokens: 60 };
    const alone = await run(loaded, tokenizer, other, undefined, true);

    const long = tokenizer.encode(texts[3].repeat(3));
    t.true(long.length > 4 * loaded.batcher.budget);
    const doomed = await loaded.open(seeded(7));
    const pending = Promise.all([run(loaded, tokenizer, other), run(loaded, tokenizer, other)]);
    const step = doomed.step(long, 0);
    // Once its first piece ran, the session is closed: the rest of its prompt never runs.
    while (doomed.tokens.length === 0) await new Promise((r) => setImmediate(r));
    await doomed.close();
    await t.throwsAsync(step, { instanceOf: SessionClosedError });
    t.true(doomed.tokens.length < long.length);
    const results = await pending;
    t.is(loaded.batcher.pending, 0, 'no step left queued');
    for (const r of results) t.deepEqual(r.tokens, alone.tokens);
    await t.throwsAsync(doomed.step([1], 0), { message: /closed/ });
    await loaded.close();
  } finally {
    await backend.close?.();
  }
});
