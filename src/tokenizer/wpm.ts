// WordPiece (`tokenizer.ggml.model == "bert"`) as llama.cpp's llm_tokenizer_wpm does it: lowercase,
// strip accents, split on whitespace and around punctuation and CJK characters, then cover each
// word greedily with the longest vocabulary entries. GGUF BERT vocabularies mark word starts with
// U+2581 (the converter turned "##" continuations into plain pieces), so each word gets one.

import { Cat, category, isWhitespace, nfdFirst, toLower } from './unicode.ts';
import type { Vocab } from './vocab.ts';

export class WpmTokenizer {
  constructor(private readonly vocab: Vocab) {}

  encode(text: string, out: number[]): void {
    const { tokenToId, maxTokenLength } = this.vocab;
    const unk = this.vocab.special.unk;
    for (const word of splitWords(text)) {
      const w = `\u2581${word}`;
      const mark = out.length;
      // maxTokenLength counts UTF-8 bytes, never fewer than UTF-16 units: a safe bound here.
      for (let i = 0; i < w.length;) {
        let j = Math.min(w.length, i + maxTokenLength + 1);
        let id: number | undefined;
        for (; j > i; j--) {
          id = tokenToId.get(w.slice(i, j));
          if (id !== undefined) break;
        }
        if (id === undefined) {
          out.length = mark; // one uncovered position discards the whole word
          break;
        }
        out.push(id);
        i = j;
      }
      if (out.length === mark && unk !== undefined) out.push(unk);
    }
  }
}

/**
 * BERT's basic tokenizer as llama.cpp writes it: each code point is replaced by the first code
 * point of its NFD form (dropping accents) and lowercased; whitespace ends a word; NUL, U+FFFD
 * and control characters vanish; punctuation, ASCII symbols and CJK ideographs stand alone.
 */
function splitWords(text: string): string[] {
  const words: string[] = [];
  let cur = '';
  for (const ch of text) {
    const cp = nfdFirst(ch.codePointAt(0) as number);
    if (isWhitespace(cp)) {
      if (cur) words.push(cur);
      cur = '';
      continue;
    }
    const cat = category(cp);
    if (cp === 0 || cp === 0xfffd || cat === Cat.Control) continue;
    const s = String.fromCodePoint(toLower(cp));
    if (cat === Cat.Punctuation || (cp < 0x7f && cat === Cat.Symbol) || isChinese(cp)) {
      if (cur) words.push(cur);
      words.push(s);
      cur = '';
    } else {
      cur += s;
    }
  }
  if (cur) words.push(cur);
  return words;
}

function isChinese(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b920 && cp <= 0x2ceaf) || // sic: HF's range, not Unicode's 0x2B820
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}
