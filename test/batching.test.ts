// Continuous batching in this process (engine/batcher.ts): sessions of one model that step at
// the same time share the runner's steps, and each gets exactly the tokens it gets alone —
// greedy and seeded, prompts of different lengths (one longer than a step's budget, run in
// pieces beside the others' decode), a session joining while the others decode, one cancelled
// mid-way, one ending on a stop string — on the native and wasm kernels, f32 and Q4_0 weights.
// Over a pipeline of 2 stages (a node's batcher at each), sessions that start out of step settle
// into 2 even groups that go round the ring together, and still get exactly their tokens alone.

import test from 'ava';
import { join } from 'node:path';
import { GgufFile } from '../src/gguf/reader.ts';
import { Tokenizer } from '../src/tokenizer/index.ts';
import { createBackend } from '../src/kernels/select.ts';
import type { BackendName, KernelBackend } from '../src/kernels/backend.ts';
import { loadLocalModel, type LocalModel } from '../src/engine/local.ts';
import { SessionClosedError, StepBatcher } from '../src/engine/batcher.ts';
import { generate, type GenerateResult } from '../src/engine/generate.ts';
import type { InferenceSession } from '../src/engine/session.ts';
import { SliceRunner, type Sequence, type SliceModel, type StepEntry, type StepOutcome } from '../src/engine/slice.ts';
import { Transformer } from '../src/model/transformer.ts';
import { readConfig } from '../src/model/config.ts';
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

/**
 * A stage of a 2-stage ring as a node runs it: a slice of the layers whose steps take STAGE_MS
 * of their own (the node's core; the tiny model's compute is a fraction of a millisecond), during
 * which other sessions' steps queue. Records how many sessions each step served.
 */
const STAGE_MS = 15;
/** One step a TimedRunner ran: its sessions, whether it ran prompt tokens, and when it ended (performance.now()). */
interface TimedStep {
  readonly seqs: readonly Sequence[];
  readonly prompt: boolean;
  readonly end: number;
}
class TimedRunner extends SliceRunner {
  readonly steps: TimedStep[] = [];
  constructor(
    model: SliceModel,
    readonly ms = STAGE_MS,
  ) {
    super(model);
  }

  override async step(entries: readonly StepEntry[]): Promise<StepOutcome> {
    await sleep(this.ms);
    const outcome = await super.step(entries);
    this.steps.push({
      seqs: entries.map((e) => e.seq),
      prompt: entries.some((e) => e.tokens.length > 1),
      end: performance.now(),
    });
    return { ...outcome, seconds: this.ms / 1000 };
  }

  /** How many sessions each step served. */
  get sizes(): number[] {
    return this.steps.map((s) => s.seqs.length);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One session going round the ring (stage 1, stage 2, back to stage 1 with its token): its tokens. */
async function ring(stages: StepBatcher[], prompt: number[], n: number): Promise<number[]> {
  const [first, last] = stages;
  const dim = first.runner.model.config.dim;
  const a = first.runner.open(CTX);
  const b = last.runner.open(CTX, greedy);
  const out: number[] = [];
  let tokens = prompt;
  try {
    while (out.length < n) {
      const start = a.position;
      const hidden = new Float32Array(tokens.length * dim);
      await first.step({ seq: a, tokens, start, hiddenOut: (rows, from) => hidden.set(rows, from * dim) }, 2);
      const { token } = await last.step(
        {
          seq: b,
          tokens,
          start,
          hiddenIn: (rows, from) => rows.set(hidden.subarray(from * dim, from * dim + rows.length)),
        },
        2,
      );
      out.push(token);
      tokens = [token];
    }
  } finally {
    // As a node closes a session's stream.
    first.cancel(a);
    last.cancel(b);
  }
  return out;
}

/** A fresh 2-stage ring over the model's layers, halved. */
function twoStages(file: GgufFile): StepBatcher[] {
  const { nLayers } = readConfig(file);
  const cut = Math.floor(nLayers / 2);
  return [
    [0, cut],
    [cut, nLayers],
  ].map(
    ([from, to]) =>
      new StepBatcher(new TimedRunner(Transformer.load(file, { ctx: CTX, kvType: 'f32', layers: [from, to] }))),
  );
}

const sizesOf = (b: StepBatcher) => (b.runner as TimedRunner).sizes;

/**
 * The sessions of `prompts` round one ring at once, each starting 4/3 of a step after the one
 * before (so they meet the stages out of step), `n` tokens each: their tokens, and the ring.
 */
async function together(file: GgufFile, prompts: number[][], n: number) {
  const stages = twoStages(file);
  const tokens = await Promise.all(
    prompts.map(async (p, i) => {
      await sleep((i * 4 * STAGE_MS) / 3);
      return ring(stages, p, n);
    }),
  );
  return { tokens, stages };
}

test.serial('over 2 stages, sessions started apart settle into 2 groups that go round together', async (t) => {
  const file = GgufFile.open(bundledModel);
  const tokenizer = Tokenizer.fromGguf(file);
  const n = 40;
  const prompts = texts.slice(0, 4).map((text) => tokenizer.encode(text));
  const alone: number[][] = [];
  for (const p of prompts) alone.push(await ring(twoStages(file), p, n));

  const { tokens, stages } = await together(file, prompts, n);
  t.deepEqual(tokens, alone, 'each session gets the tokens it gets alone');
  // Every session decodes from the end of the last prompt piece anywhere in the ring (the
  // longest prompt runs in pieces for a while, and its session is rightly not waited for)
  // until a session takes its last step.
  const timed = stages.map((b) => (b.runner as TimedRunner).steps);
  const prompted = Math.max(
    ...timed
      .flat()
      .filter((s) => s.prompt)
      .map((s) => s.end),
  );
  for (const [i, stage] of stages.entries()) {
    // Once every session decodes, each stage runs 2 steps of 2 a round, not 2 + 1 + 1.
    const steps = timed[i];
    const lastStep = new Map<Sequence, number>();
    for (const s of steps) for (const seq of s.seqs) lastStep.set(seq, s.end);
    const ended = Math.min(...lastStep.values());
    const steady = steps.filter((s) => s.end > prompted && s.end < ended).map((s) => s.seqs.length);
    const pairs = steady.filter((s) => s === 2).length;
    t.log(
      `stage ${i + 1}: steps of ${sizesOf(stage).join(' ')}; ${steady.length} with every session decoding; ${stage.holds.steps} held, ${stage.holds.seconds.toFixed(3)} s`,
    );
    t.true(steady.length >= 30, `stage ${i + 1}: only ${steady.length} steps with every session decoding`);
    t.true(pairs >= 0.9 * steady.length, `stage ${i + 1}: steps of ${steady.join(' ')} with every session decoding`);
    t.true(stage.stats.maxEntries <= 2, 'a step takes at most half the sessions');
    t.true(stage.holds.seconds < 0.2 * stage.stats.steps * (STAGE_MS / 1000), 'the steps waited little');
  }
});

test.serial('over 2 stages, 3 sessions settle into 2 + 1 and then no step waits', async (t) => {
  const file = GgufFile.open(bundledModel);
  const tokenizer = Tokenizer.fromGguf(file);
  const n = 40;
  const prompts = texts.slice(0, 3).map((text) => tokenizer.encode(text));
  const { tokens, stages } = await together(file, prompts, n);
  for (const [i, p] of prompts.entries()) t.deepEqual(tokens[i], await ring(twoStages(file), p, n));
  for (const [i, stage] of stages.entries()) {
    const sizes = sizesOf(stage);
    t.true(sizes.length <= 2 * n + 8, `stage ${i + 1}: ${sizes.length} steps for ${n} tokens each: ${sizes.join(' ')}`);
    t.true(stage.holds.steps <= 6, `stage ${i + 1}: ${stage.holds.steps} steps held`);
  }
});

test.serial(
  'over a pipeline, a step waits for the group due while it fits, and not for a closed session',
  async (t) => {
    const file = GgufFile.open(bundledModel);
    const tokenizer = Tokenizer.fromGguf(file);
    // The whole model as a stage of 2 (the batcher only needs to know the ring's length).
    const runner = new TimedRunner(Transformer.load(file, { ctx: CTX, kvType: 'f32' }), 40);
    const batcher = new StepBatcher(runner);
    const prompts = [0, 1, 4, 5].map((i) => tokenizer.encode(texts[i]));
    const seqs = prompts.map(() => runner.open(CTX, greedy));
    const step = async (i: number, tokens: number[]) =>
      (await batcher.step({ seq: seqs[i], tokens, start: seqs[i].position }, 2)).token;
    const all = (f: (i: number) => number[]) => Promise.all(seqs.map((_, i) => step(i, f(i))));

    // 4 prompts, then 4 decode steps, at once: groups of 2 (a + b, c + d).
    let next = await all((i) => prompts[i]);
    next = await all((i) => [next[i]]);
    t.deepEqual(runner.sizes, [2, 2, 2, 2]);
    t.is(batcher.holds.steps, 0);

    // a's step waits for b, the rest of its group, arriving 10 ms later: they run as one.
    const a = step(0, [next[0]]);
    await sleep(10);
    [next[0], next[1]] = await Promise.all([a, step(1, [next[1]])]);
    t.deepEqual(runner.sizes.slice(4), [2]);
    t.is(batcher.holds.steps, 1);
    // c + d fill a step: no wait.
    [next[2], next[3]] = await Promise.all([step(2, [next[2]]), step(3, [next[3]])]);
    t.is(batcher.holds.steps, 1);

    // a waits for b again; b's session closes: a runs at once (the group due now, c + d, does not fit).
    const held = batcher.holds.seconds;
    const again = step(0, [next[0]]);
    await sleep(10);
    t.false(batcher.cancel(seqs[1]), 'b had no step queued');
    await again;
    t.deepEqual(runner.sizes.slice(5), [2, 1]);
    t.is(batcher.holds.steps, 2);
    t.true(
      batcher.holds.seconds - held < 0.06,
      `held ${batcher.holds.seconds - held} s, at most 0.08 s without the close`,
    );
    t.is(batcher.pending, 0);
  },
);
