import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GgufFile } from '../src/gguf/reader.ts';
import { Transformer } from '../src/model/transformer.ts';
import type { KvType } from '../src/model/kv-cache.ts';
import { bundledModel, fixtureModels, fixtureVocab } from './helpers/paths.ts';

interface Reference {
  prompt_tokens: number[];
  generated_tokens: number[];
}

const reference = JSON.parse(readFileSync(join(fixtureModels, 'stories260K.reference.json'), 'utf8')) as Reference;
const referenceText = readFileSync(join(fixtureModels, 'stories260K.reference.txt'), 'utf8');

/** The q4_0 variant's greedy ids, as listed in section 4 of the reference text. */
function q4Generated(): number[] {
  const m = /q4_0 generated ids: \[([\d, ]+)\]/.exec(referenceText);
  if (!m) throw new Error('q4_0 ids not found in stories260K.reference.txt');
  return m[1].split(',').map(Number);
}

function readLogits(name: string): Float32Array {
  const buf = readFileSync(join(fixtureModels, name));
  return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
}

/** Runs the 69-token reference sequence and returns the largest logit difference and argmax hits. */
function compare(model: string, logitsFile: string, kvType: KvType, generated: number[]) {
  const m = Transformer.load(GgufFile.open(join(fixtureModels, model)), { kvType });
  const expected = readLogits(logitsFile);
  const seq = [...reference.prompt_tokens, ...generated];
  const vocab = m.config.vocabSize;
  let maxDiff = 0;
  let argmaxHits = 0;
  for (let pos = 0; pos < seq.length; pos++) {
    const logits = m.forward(seq[pos], pos);
    let best = 0;
    for (let i = 0; i < vocab; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(logits[i] - expected[pos * vocab + i]));
      if (logits[i] > logits[best]) best = i;
    }
    if (pos >= 4 && pos + 1 < seq.length && best === seq[pos + 1]) argmaxHits++;
  }
  return { maxDiff, argmaxHits, positions: seq.length };
}

test('stories260K f32 logits match llama.cpp within 1e-4 with an f32 KV cache', (t) => {
  const r = compare('stories260K.gguf', 'stories260K.logits-kvf32.f32', 'f32', reference.generated_tokens);
  t.log(`max |Δlogit| ${r.maxDiff.toExponential(2)} over ${r.positions} positions`);
  t.true(r.maxDiff <= 1e-4);
  t.is(r.argmaxHits, 64);
});

test('stories260K with an f16 KV cache stays within 0.03 of llama.cpp f16-cache logits', (t) => {
  const r = compare('stories260K.gguf', 'stories260K.logits-kvf16.f32', 'f16', reference.generated_tokens);
  t.log(`max |Δlogit| ${r.maxDiff.toExponential(2)}`);
  t.true(r.maxDiff <= 0.03);
  t.is(r.argmaxHits, 64);
});

test('stories260K q8_0 logits within 0.5 of llama.cpp', (t) => {
  const r = compare('stories260K-q8_0.gguf', 'stories260K-q8_0.logits-kvf32.f32', 'f32', reference.generated_tokens);
  t.log(`max |Δlogit| ${r.maxDiff.toExponential(2)}`);
  t.true(r.maxDiff <= 0.5);
  t.is(r.argmaxHits, 64);
});

test('stories260K q4_0 logits within 0.5 of llama.cpp', (t) => {
  const r = compare('stories260K-q4_0.gguf', 'stories260K-q4_0.logits-kvf32.f32', 'f32', q4Generated());
  t.log(`max |Δlogit| ${r.maxDiff.toExponential(2)}`);
  t.true(r.maxDiff <= 0.5);
  t.is(r.argmaxHits, 64);
});

test('a stage split in two gives the same logits as the whole model', (t) => {
  const file = GgufFile.open(bundledModel);
  const whole = Transformer.load(file, { kvType: 'f32' });
  const first = Transformer.load(file, { kvType: 'f32', layers: [0, 2] });
  const second = Transformer.load(file, { kvType: 'f32', layers: [2, 5] });
  t.true(first.isFirst && !first.isLast && !second.isFirst && second.isLast);
  const seq = reference.prompt_tokens;
  for (let pos = 0; pos < seq.length; pos++) {
    const a = whole.forward(seq[pos], pos);
    first.embed(seq[pos]);
    second.state.x.set(first.forwardLayers(pos));
    second.forwardLayers(pos);
    t.deepEqual(Array.from(second.head()), Array.from(a));
  }
});

test('a prompt run in batched steps gives the logits of token-by-token steps', (t) => {
  const file = GgufFile.open(bundledModel);
  const seq = [...reference.prompt_tokens, ...reference.generated_tokens];
  const single = Transformer.load(file, { kvType: 'f32', batch: 1 });
  const batched = Transformer.load(file, { kvType: 'f32', batch: 16 });
  let expected = new Float32Array(0);
  for (let pos = 0; pos < seq.length; pos++) expected = Float32Array.from(single.forward(seq[pos], pos));
  for (let start = 0; start < seq.length; start += 16) {
    batched.embed(seq.slice(start, start + 16));
    batched.forwardLayers(start);
  }
  const got = batched.head();
  let maxDiff = 0;
  for (let i = 0; i < got.length; i++) maxDiff = Math.max(maxDiff, Math.abs(got[i] - expected[i]));
  t.log(`max |Δlogit| ${maxDiff.toExponential(2)} after 69 tokens in steps of 16`);
  t.true(maxDiff <= 1e-5);
  t.throws(() => batched.embed(seq.slice(0, 17)), { message: /a step takes 1\.\.16 tokens, got 17/ });
});

test('model errors name the file and the problem', (t) => {
  const file = GgufFile.open(bundledModel);
  t.throws(() => Transformer.load(file, { layers: [3, 9] }), { message: /stories260K\.gguf: layer range \[3, 9\) is not within the model's 5 layers/ });
  const vocabOnly = GgufFile.open(join(fixtureVocab, 'ggml-vocab-gpt-2.gguf'));
  t.throws(() => Transformer.load(vocabOnly), { message: /architecture "gpt2" is not supported/ });
  const m = Transformer.load(file, { ctx: 8 });
  t.throws(() => m.forward(1, 8), { message: /position 8 is outside the context of 8/ });
});
