import test from 'ava';
import { Sampler, defaultSampling, validateSampling, argmax, type SamplingOptions } from '../src/engine/sampler.ts';

const opts = (o: Partial<SamplingOptions>): SamplingOptions => ({ ...defaultSampling, ...o });

function logitsOf(values: number[]): Float32Array {
  return Float32Array.from(values);
}

test('temperature 0 is argmax', (t) => {
  const s = new Sampler(opts({ temperature: 0 }), 5);
  t.is(s.sample(logitsOf([0.1, 3, 2.9, -1, 0]), []), 1);
  t.is(argmax(logitsOf([1, 1, 0])), 0);
});

test('the same seed gives the same draws, another seed other draws', (t) => {
  const logits = Array.from({ length: 100 }, (_, i) => Math.sin(i) * 2);
  const draw = (seed: number) => {
    const s = new Sampler(opts({ temperature: 1, topK: 0, topP: 1, minP: 0, seed }), 100);
    return Array.from({ length: 50 }, () => s.sample(logitsOf(logits), []));
  };
  t.deepEqual(draw(42), draw(42));
  t.notDeepEqual(draw(42), draw(43));
});

test('top-k keeps only the k most likely tokens', (t) => {
  const logits = [5, 4, 3, 2, 1, 0];
  const s = new Sampler(opts({ temperature: 5, topK: 2, topP: 1, minP: 0, seed: 1 }), 6);
  const seen = new Set(Array.from({ length: 300 }, () => s.sample(logitsOf(logits), [])));
  t.deepEqual([...seen].sort(), [0, 1]);
});

test('top-p keeps the smallest set that reaches the mass', (t) => {
  // probabilities ~0.5, 0.3, 0.2 (log-space), top-p 0.7 keeps the first two
  const logits = [Math.log(0.5), Math.log(0.3), Math.log(0.2)];
  const s = new Sampler(opts({ temperature: 1, topK: 0, topP: 0.7, minP: 0, seed: 3 }), 3);
  const seen = new Set(Array.from({ length: 300 }, () => s.sample(logitsOf(logits), [])));
  t.deepEqual([...seen].sort(), [0, 1]);
});

test('min-p drops tokens far below the most likely', (t) => {
  const logits = [Math.log(0.6), Math.log(0.35), Math.log(0.05)];
  const s = new Sampler(opts({ temperature: 1, topK: 0, topP: 1, minP: 0.1, seed: 5 }), 3);
  const seen = new Set(Array.from({ length: 500 }, () => s.sample(logitsOf(logits), [])));
  t.deepEqual([...seen].sort(), [0, 1]);
});

test('draw frequencies follow the softmax at temperature 1', (t) => {
  const p = [0.6, 0.3, 0.1];
  const s = new Sampler(opts({ temperature: 1, topK: 0, topP: 1, minP: 0, seed: 9 }), 3);
  const counts = [0, 0, 0];
  const n = 20000;
  for (let i = 0; i < n; i++) counts[s.sample(logitsOf(p.map(Math.log)), [])]++;
  for (let i = 0; i < 3; i++) t.true(Math.abs(counts[i] / n - p[i]) < 0.02, `token ${i}: ${counts[i] / n}`);
});

test('repetition, frequency and presence penalties change the greedy choice', (t) => {
  const greedy = (o: Partial<SamplingOptions>, history: number[]) =>
    new Sampler(opts({ temperature: 0, ...o }), 3).sample(logitsOf([2, 1.9, -1]), history);
  t.is(greedy({}, [0, 0]), 0);
  t.is(greedy({ repeatPenalty: 1.1 }, [0]), 1); // 2 / 1.1 < 1.9
  t.is(greedy({ frequencyPenalty: 0.06 }, [0, 0]), 1); // 2 - 0.12 < 1.9
  t.is(greedy({ frequencyPenalty: 0.06 }, [0]), 0); // 2 - 0.06 > 1.9
  t.is(greedy({ presencePenalty: 0.2 }, [0]), 1);
  t.is(greedy({ repeatPenalty: 1.1, penaltyLastN: 1 }, [0, 2]), 0); // token 0 outside the window
});

test('bad sampling options are refused with a message', (t) => {
  t.throws(() => validateSampling(opts({ temperature: -1 })), { message: /temperature must be >= 0/ });
  t.throws(() => validateSampling(opts({ topP: 0 })), { message: /top-p must be in \(0, 1\]/ });
  t.throws(() => validateSampling(opts({ topK: 1.5 })), { message: /top-k must be an integer/ });
  t.throws(() => validateSampling(opts({ seed: -3 })), { message: /seed must be an integer/ });
});
