// GPT-2 style byte-level BPE (`tokenizer.ggml.model == "gpt2"`) as llama.cpp's llm_tokenizer_bpe
// does it: pre-tokenize into words, spell each word's UTF-8 bytes in GPT-2's byte alphabet, then
// within the word repeatedly apply the lowest-ranked merge among adjacent symbols (leftmost first
// on ties).

import { PairQueue } from './pair-queue.ts';
import { preTokenizer, type PreTokenizer } from './pretokenize.ts';
import { BYTE_TO_CHAR, utf8Bytes } from './unicode.ts';
import type { Vocab } from './vocab.ts';

// Words repeat a lot in real text; a bounded memo of word -> ids saves most of the merge work.
// (Long words are rare and not worth keeping: a run of 100k spaces is one "word".)
const CACHE_LIMIT = 1 << 16;
const CACHE_WORD_MAX = 64;

export class BpeTokenizer {
  private readonly pre: PreTokenizer;
  private readonly cache = new Map<string, readonly number[]>();

  constructor(private readonly vocab: Vocab) {
    this.pre = preTokenizer(vocab.pre, vocab.path);
  }

  encode(text: string, out: number[]): void {
    for (const word of this.pre.split(text)) {
      const encoded = byteEncode(word);
      let ids = this.cache.get(encoded);
      if (!ids) {
        ids = this.encodeWord(encoded);
        if (encoded.length <= CACHE_WORD_MAX) {
          if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
          this.cache.set(encoded, ids);
        }
      }
      for (const id of ids) out.push(id);
    }
  }

  private encodeWord(word: string): number[] {
    const { tokenToId, mergeRanks, ignoreMerges } = this.vocab;
    if (ignoreMerges) {
      const id = tokenToId.get(word);
      if (id !== undefined) return [id];
    }

    const sym = Array.from(word); // code points; a merged symbol holds the text, the absorbed one ''
    const n = sym.length;
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }

    // Lowest rank first, leftmost on ties. llama.cpp drops a queued pair whose text is no longer
    // left + right; symbols only ever grow by absorbing their right neighbour, so comparing the
    // lengths (both symbols still alive) decides the same thing without building strings.
    const queue = new PairQueue();
    const tryAdd = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const rank = mergeRanks.get(`${sym[left]} ${sym[right]}`);
      if (rank === undefined) return;
      queue.push(rank, left, right, sym[left].length + sym[right].length);
    };
    for (let i = 1; i < n; i++) tryAdd(i - 1, i);

    while (queue.pop()) {
      const { left, right } = queue;
      if (sym[left] === '' || sym[right] === '' || sym[left].length + sym[right].length !== queue.size) continue;
      sym[left] += sym[right];
      sym[right] = '';
      next[left] = next[right];
      if (next[right] >= 0) prev[next[right]] = left;
      tryAdd(prev[left], left);
      tryAdd(left, next[left]);
    }

    const ids: number[] = [];
    for (const s of sym) {
      if (s === '') continue;
      const id = tokenToId.get(s);
      if (id !== undefined) {
        ids.push(id);
        continue;
      }
      // A symbol missing from the vocabulary: llama.cpp looks up each of its UTF-8 bytes as a
      // one-byte token and silently drops the bytes that are not one.
      for (const byte of utf8Bytes(s)) {
        const bid = byte < 0x80 ? tokenToId.get(String.fromCharCode(byte)) : undefined;
        if (bid !== undefined) ids.push(bid);
      }
    }
    return ids;
  }
}

/** A word's UTF-8 bytes in GPT-2's byte alphabet. */
function byteEncode(word: string): string {
  let s = '';
  for (const b of utf8Bytes(word)) s += BYTE_TO_CHAR[b];
  return s;
}
