// SentencePiece-style tokenization (`tokenizer.ggml.model == "llama"`) as llama.cpp's
// llm_tokenizer_spm does it: start from single characters, repeatedly merge the adjacent pair
// whose concatenation is the highest-scoring token (leftmost first on ties), and spell any
// character left without a token as its UTF-8 bytes with the <0xNN> tokens.

import { TokenizerError } from './errors.ts';
import { PairQueue } from './pair-queue.ts';
import { utf8Bytes } from './unicode.ts';
import type { Vocab } from './vocab.ts';

export class SpmTokenizer {
  private readonly byteIds = new Int32Array(256).fill(-2); // -2: not looked up yet

  constructor(private readonly vocab: Vocab) {}

  /**
   * Tokenizes one piece of raw text. The caller has already put the leading space (if any);
   * spaces become U+2581 here.
   */
  encode(raw: string, out: number[]): void {
    const text = raw.replaceAll(' ', '\u2581');
    const { tokenToId, scores } = this.vocab;

    // Symbols are the code points of the text, as UTF-16 [start, start + len) spans, in a
    // doubly linked list; a merge grows the left span and empties the right one.
    const start: number[] = [];
    for (let i = 0; i < text.length; i += (text.codePointAt(i) ?? 0) > 0xffff ? 2 : 1) start.push(i);
    const n = start.length;
    if (n === 0) return;
    const len = new Int32Array(n);
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      len[i] = (i + 1 < n ? start[i + 1] : text.length) - start[i];
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }

    // Highest score first (the key is its negation), leftmost on ties. A queued pair is stale
    // once either symbol took part in another merge: then its lengths no longer add up.
    const queue = new PairQueue();
    const tryAdd = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const size = len[left] + len[right];
      const id = tokenToId.get(text.slice(start[left], start[left] + size));
      if (id === undefined) return;
      queue.push(-scores[id], left, right, size);
    };
    for (let i = 1; i < n; i++) tryAdd(i - 1, i);

    while (queue.pop()) {
      const { left, right } = queue;
      if (len[left] === 0 || len[right] === 0 || len[left] + len[right] !== queue.size) continue;
      len[left] += len[right];
      len[right] = 0;
      next[left] = next[right];
      if (next[right] >= 0) prev[next[right]] = left;
      tryAdd(prev[left], left);
      tryAdd(left, next[left]);
    }

    // Every merge produced a token, so a symbol without one is a single unknown character.
    // (llama.cpp's rev_merge re-segmentation never finds anything for it for that reason.)
    for (let i = 0; i !== -1; i = next[i]) {
      const piece = text.slice(start[i], start[i] + len[i]);
      const id = tokenToId.get(piece);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      for (const byte of utf8Bytes(piece)) out.push(this.byteToken(byte));
    }
  }

  /** The <0xNN> token of a byte, or the byte itself as a token (llama.cpp's fallback). */
  private byteToken(byte: number): number {
    let id = this.byteIds[byte];
    if (id === -2) {
      const hex = byte.toString(16).toUpperCase().padStart(2, '0');
      id =
        this.vocab.tokenToId.get(`<0x${hex}>`) ??
        (byte < 0x80 ? this.vocab.tokenToId.get(String.fromCharCode(byte)) : undefined) ??
        -1;
      this.byteIds[byte] = id;
    }
    if (id < 0) {
      throw new TokenizerError(
        'missing-token',
        this.vocab.path,
        'tokenizer.ggml.tokens',
        `no byte token <0x${byte.toString(16).toUpperCase().padStart(2, '0')}> for a character outside the vocabulary`,
      );
    }
    return id;
  }
}
