// The one runner for a model slice (engine/slice.ts): a step of several sessions at once gives
// each the tokens it gets alone, however the step's rows are cut into chunks; a step that does
// not fit its session is refused before anything runs.

import test from 'ava';
import { GgufFile } from '../src/gguf/reader.ts';
import { Transformer } from '../src/model/transformer.ts';
import { StepError } from '../src/engine/history.ts';
import { defaultSampling, type SamplingOptions } from '../src/engine/sampler.ts';
import { SliceRunner, type Sequence } from '../src/engine/slice.ts';
import { Tokenizer } from '../src/tokenizer/index.ts';
import { bundledModel } from './helpers/paths.ts';

const file = GgufFile.open(bundledModel);
const tokenizer = Tokenizer.fromGguf(file);
const greedy: SamplingOptions = { ...defaultSampling, temperature: 0, repeatPenalty: 1.2, penaltyLastN: 16 };
const prompts = [
  'Once upon a time, there was a little girl',
  'The dog ran',
  'Tom and Sue went to the park to play with a ball',
].map((p) => tokenizer.encode(p));

/** Each session's prompt, then `n` tokens fed back one by one: one list of tokens per session. */
async function generate(runner: SliceRunner, seqs: Sequence[], together: boolean, n: number): Promise<number[][]> {
  const out: number[][] = seqs.map(() => []);
  let steps = seqs.map((seq, i) => ({ seq, tokens: prompts[i], start: 0 }));
  for (let k = 0; k < n; k++) {
    const sampled = together
      ? (await runner.step(steps)).sampled
      : await Promise.all(steps.map(async (e) => (await runner.step([e])).sampled[0]));
    sampled.forEach((t, i) => out[i].push(t));
    steps = steps.map((e, i) => ({ seq: e.seq, tokens: [sampled[i]], start: e.seq.position }));
  }
  return out;
}

test('a step of three sessions gives each the tokens it gets alone, in chunks across sessions', async (t) => {
  // A batch of 8 cuts the prompts' rows (11 + 4 + 13) across chunks and sessions.
  const model = Transformer.load(file, { kvType: 'f32', batch: 8 });
  const runner = new SliceRunner(model);
  const alone = await generate(
    runner,
    prompts.map(() => runner.open(64, greedy)),
    false,
    12,
  );
  const together = await generate(
    runner,
    prompts.map(() => runner.open(64, greedy)),
    true,
    12,
  );
  t.deepEqual(together, alone);
});

test('a step that does not fit its session is refused before anything runs', async (t) => {
  const model = Transformer.load(file, { kvType: 'f32' });
  const runner = new SliceRunner(model);
  const seq = runner.open(16, greedy);
  await runner.step([{ seq, tokens: [1, 2, 3], start: 0 }]);
  const other = runner.open(16, greedy);
  const refused = async (entries: Parameters<SliceRunner['step']>[0], message: RegExp) => {
    await t.throwsAsync(() => runner.step(entries), { instanceOf: StepError, message });
    t.deepEqual(seq.tokens, [1, 2, 3]);
  };
  await refused([{ seq, tokens: [4], start: 4 }], /step at position 4, past the session's end at 3/);
  await refused([{ seq, tokens: [], start: 3 }], /a step with no tokens/);
  await refused(
    [{ seq, tokens: new Array(14).fill(1), start: 3 }],
    /positions \[3, 17\) run past the session's context of 16/,
  );
  await refused([{ seq, tokens: [model.config.vocabSize], start: 3 }], /outside the vocabulary/);
  // One bad entry refuses the whole step: the good one's session is untouched too.
  await refused(
    [
      { seq: other, tokens: [1], start: 0 },
      { seq, tokens: [4], start: 5 },
    ],
    /past the session's end/,
  );
  t.is(other.position, 0);
  await refused(
    [
      { seq, tokens: [4], start: 3 },
      { seq, tokens: [5], start: 3 },
    ],
    /twice/,
  );
  // Going back is a step too: the session forgets what follows its start.
  await runner.step([{ seq, tokens: [7], start: 1 }]);
  t.deepEqual(seq.tokens, [1, 7]);
});

test("a node's runner gives the event loop turns inside a step, and the tokens do not change", async (t) => {
  const model = Transformer.load(file, { kvType: 'f32', batch: 8 });
  const plain = new SliceRunner(model);
  const alone = await generate(
    plain,
    prompts.map(() => plain.open(64, greedy)),
    true,
    6,
  );
  // turnSeconds 0: a turn after every block of every layer
  const turning = new SliceRunner(model, { turnSeconds: 0 });
  const seqs = prompts.map(() => turning.open(64, greedy));
  let turns = 0;
  const tick = () => {
    turns++;
    if (turns < 10_000) timer = setImmediate(tick);
  };
  let timer = setImmediate(tick);
  const before = turns;
  const step = turning.step(seqs.map((seq, i) => ({ seq, tokens: prompts[i], start: 0 })));
  const first = await step;
  clearImmediate(timer);
  // the bundled model has 5 layers of two blocks each: the loop turned while the step ran
  t.true(turns - before >= 2 * model.config.nLayers, `${turns - before} turns during the step`);
  t.deepEqual(
    first.sampled,
    alone.map((tokens) => tokens[0]),
  );
  const rest = await generate(
    turning,
    prompts.map(() => turning.open(64, greedy)),
    true,
    6,
  );
  t.deepEqual(rest, alone);
});
