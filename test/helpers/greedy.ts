// Greedy decoding through a Transformer, for comparing backends token for token.

import { join } from 'node:path';
import type { TestFn } from 'ava';
import { GgufFile } from '../../src/gguf/reader.ts';
import type { KernelBackend } from '../../src/kernels/backend.ts';
import { Transformer } from '../../src/model/transformer.ts';
import { bundledModel, fixtureModels } from './paths.ts';

export const GREEDY_PROMPT = [1, 403, 407, 261, 378];

/** Sampling options that decode greedily (a gRPC Sampling message, or the API's options). */
export const GREEDY_SAMPLING = {
  temperature: 0,
  topK: 0,
  topP: 1,
  minP: 0,
  repeatPenalty: 1,
  frequencyPenalty: 0,
  presencePenalty: 0,
  penaltyLastN: 64,
  seed: 0,
};

/** stories260K in f32 (bundled), Q8_0 and Q4_0 (test fixtures). */
export const STORIES_MODELS = [
  bundledModel,
  join(fixtureModels, 'stories260K-q8_0.gguf'),
  join(fixtureModels, 'stories260K-q4_0.gguf'),
];

/** One test per stories260K file: the backend gives the js backend's 64 greedy tokens. */
export function greedyMatchesJs(test: TestFn, label: string, create: () => Promise<KernelBackend>): void {
  for (const path of STORIES_MODELS) {
    const name = path.slice(path.lastIndexOf('/') + 1);
    test(`${name}: the ${label} backend on 2 threads gives the js backend's 64 greedy tokens`, async (t) => {
      const file = GgufFile.open(path);
      const want = greedy(Transformer.load(file, { kvType: 'f32' }), GREEDY_PROMPT, 64);
      const backend = await create();
      try {
        t.deepEqual(greedy(Transformer.load(file, { backend, kvType: 'f32' }), GREEDY_PROMPT, 64), want);
      } finally {
        await backend.close();
      }
    });
  }
}

/** Feeds the prompt, then each argmax back, and returns `count` generated ids. */
export function greedy(m: Transformer, prompt: readonly number[], count: number): number[] {
  const out: number[] = [];
  let token = prompt[0];
  for (let pos = 0; out.length < count; pos++) {
    const logits = m.forward(token, pos);
    if (pos + 1 < prompt.length) {
      token = prompt[pos + 1];
      continue;
    }
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    out.push(best);
    token = best;
  }
  return out;
}
