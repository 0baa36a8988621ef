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

/** Softmax in float64 of one logit row. */
function probs(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]);
  const p = Float64Array.from(logits, (l) => Math.exp(l - max));
  const sum = p.reduce((a, b) => a + b, 0);
  return p.map((v) => v / sum);
}

/**
 * Runs the 69-token reference sequence and returns the largest logit and next-token
 * probability differences and the argmax hits.
 */
function compare(path: string, logitsFile: string, kvType: KvType, generated: number[]) {
  const m = Transformer.load(GgufFile.open(path), { kvType });
  const expected = readLogits(logitsFile);
  const seq = [...reference.prompt_tokens, ...generated];
  const vocab = m.config.vocabSize;
  let maxDiff = 0;
  let maxDp = 0;
  let argmaxHits = 0;
  for (let pos = 0; pos < seq.length; pos++) {
    const logits = m.forward(seq[pos], pos);
    let best = 0;
    for (let i = 0; i < vocab; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(logits[i] - expected[pos * vocab + i]));
      if (logits[i] > logits[best]) best = i;
    }
    const p = probs(logits);
    const pe = probs(expected.subarray(pos * vocab, (pos + 1) * vocab));
    for (let i = 0; i < vocab; i++) maxDp = Math.max(maxDp, Math.abs(p[i] - pe[i]));
    if (pos >= 4 && pos + 1 < seq.length && best === seq[pos + 1]) argmaxHits++;
  }
  return { maxDiff, maxDp, argmaxHits, positions: seq.length };
}

test('stories260K f32 logits match llama.cpp within 1e-4 with an f32 KV cache', (t) => {
  const r = compare(bundledModel, 'stories260K.logits-kvf32.f32', 'f32', reference.generated_tokens);
  t.log(`max |Δlogit| ${r.maxDiff.toExponential(2)} over ${r.positions} positions`);
  t.true(r.maxDiff <= 1e-4);
  t.is(r.argmaxHits, 64);
});

// herd rounds what llama.cpp rounds with an f16 cache (keys and values as they are stored, q
// and the attention weights before their products), but a last-bit f32 difference upstream
// now and then flips one of those roundings, and a flipped cached key or value moves every
// later position: here the gap steps up at positions 5 and 13 (to ~1e-3 in the logits) and
// stays, 1.2e-2 in the logits and 7e-4 in p at most. llama.cpp itself moves as much between
// a batched and a token-by-token run (test/oracle.test.ts). The bounds are ten times that.
test('stories260K with an f16 KV cache stays within 0.12 of llama.cpp f16-cache logits', (t) => {
  const r = compare(bundledModel, 'stories260K.logits-kvf16.f32', 'f16', reference.generated_tokens);
  t.log(`max |Δlogit| ${r.maxDiff.toExponential(2)}, max |Δp| ${r.maxDp.toExponential(2)}`);
  t.true(r.maxDiff <= 0.12);
  t.true(r.maxDp <= 7e-3);
  t.is(r.argmaxHits, 64);
});

test('stories260K q8_0 logits within 0.5 of llama.cpp', (t) => {
  const r = compare(
    join(fixtureModels, 'stories260K-q8_0.gguf'),
    'stories260K-q8_0.logits-kvf32.f32',
    'f32',
    reference.generated_tokens,
  );
  t.log(`max |Δlogit| ${r.maxDiff.toExponential(2)}`);
  t.true(r.maxDiff <= 0.5);
  t.is(r.argmaxHits, 64);
});

// Not q8_0's 2e-6: both sides quantize activations to 8 bits, so a last-bit difference in a
// sum can flip one rounding, and the flip moves every later position through the KV cache by
// the activation-quantization noise. herd's js and native backends part from this file (the
// AVX2 build, 8 tokens per decode) at position 36, by up to 0.18; llama.cpp token by token
// through the oracle parts from it at 48, by up to 0.40. The greedy tokens agree throughout.
test('stories260K q4_0 logits within 0.5 of llama.cpp', (t) => {
  const r = compare(
    join(fixtureModels, 'stories260K-q4_0.gguf'),
    'stories260K-q4_0.logits-kvf32.f32',
    'f32',
    q4Generated(),
  );
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
  const [cache1, cache2] = [first.newCache(), second.newCache()];
  // The hidden state first leaves for second, as over the wire.
  const x = new Float32Array(first.config.dim);
  for (let pos = 0; pos < seq.length; pos++) {
    const a = whole.forward(seq[pos], pos);
    first.embed([seq[pos]], x);
    first.forwardLayers(x, [{ start: pos, n: 1, cache: cache1 }]);
    second.forwardLayers(x, [{ start: pos, n: 1, cache: cache2 }]);
    t.deepEqual(Array.from(second.head(x)), Array.from(a));
  }
});

test('a prompt run in batched steps gives the logits of token-by-token steps', (t) => {
  const file = GgufFile.open(bundledModel);
  const seq = [...reference.prompt_tokens, ...reference.generated_tokens];
  const single = Transformer.load(file, { kvType: 'f32', batch: 1 });
  const batched = Transformer.load(file, { kvType: 'f32', batch: 16 });
  let expected = new Float32Array(0);
  for (let pos = 0; pos < seq.length; pos++) expected = Float32Array.from(single.forward(seq[pos], pos));
  const x = new Float32Array(16 * batched.config.dim);
  let last = 0;
  for (let start = 0; start < seq.length; start += 16) {
    const step = seq.slice(start, start + 16);
    batched.embed(step, x);
    batched.forwardLayers(x, [{ start, n: step.length, cache: batched.cache }]);
    last = step.length - 1;
  }
  const got = batched.head(x.subarray(last * batched.config.dim));
  let maxDiff = 0;
  for (let i = 0; i < got.length; i++) maxDiff = Math.max(maxDiff, Math.abs(got[i] - expected[i]));
  t.log(`max |Δlogit| ${maxDiff.toExponential(2)} after 69 tokens in steps of 16`);
  t.true(maxDiff <= 1e-5);
  t.throws(() => batched.embed(seq.slice(0, 17), new Float32Array(17 * batched.config.dim)), {
    message: /a step takes 1\.\.16 tokens, got 17/,
  });
});

test('model errors name the file and the problem', (t) => {
  const file = GgufFile.open(bundledModel);
  t.throws(() => Transformer.load(file, { layers: [3, 9] }), {
    message: /stories260K\.gguf: layer range \[3, 9\) is not within the model's 5 layers/,
  });
  const vocabOnly = GgufFile.open(join(fixtureVocab, 'ggml-vocab-gpt-2.gguf'));
  t.throws(() => Transformer.load(vocabOnly), { message: /architecture "gpt2" is not supported/ });
  const m = Transformer.load(file, { ctx: 8 });
  t.throws(() => m.forward(1, 8), { message: /position 8 is outside the context of 8/ });
});
