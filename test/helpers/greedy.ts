// Greedy decoding through a Transformer, for comparing backends token for token.

import type { Transformer } from '../../src/model/transformer.ts';

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
