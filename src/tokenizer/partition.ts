// Special tokens in raw text: before tokenizing, llama.cpp cuts the text at every occurrence of
// a special token's text (longest tokens first) and emits those tokens as they are. User-defined
// tokens are always cut out; control and unknown tokens only when the caller asks to parse
// special text (otherwise "<s>" in a prompt is just three characters).

import { TokenAttr, type Vocab } from './vocab.ts';

export type Fragment =
  { readonly text: string; readonly id?: undefined } | { readonly id: number; readonly text?: undefined };

const isCSpace = (c: number) => c === 0x20 || (c >= 0x09 && c <= 0x0d);

/** A span of text, [start, end) in UTF-16 code units. */
export type TextRange = readonly [start: number, end: number];

/**
 * The text cut into special tokens and runs of text. With `parseSpecial`, control-token text
 * inside the `plain` ranges stays text: a chat message's "<|im_end|>" must not end its turn
 * while the template's own markers around it do.
 */
export function partitionSpecial(
  vocab: Vocab,
  text: string,
  parseSpecial: boolean,
  plain: readonly TextRange[] = [],
): Fragment[] {
  if (!parseSpecial || plain.length === 0) return partitionRun(vocab, text, parseSpecial);
  const runs: Fragment[] = [];
  let at = 0;
  for (const [start, end] of [...plain].sort((a, b) => a[0] - b[0])) {
    if (start < at || end < start || end > text.length)
      throw new RangeError(`plain ranges must be ordered, disjoint and inside the text, got [${start}, ${end})`);
    if (start > at) runs.push(...partitionRun(vocab, text.slice(at, start), true));
    runs.push(...partitionRun(vocab, text.slice(start, end), false));
    at = end;
  }
  if (at < text.length) runs.push(...partitionRun(vocab, text.slice(at), true));
  return joinRuns(vocab, runs);
}

/**
 * Runs partitioned apart, made one: adjacent text joins (the tokenizer sees the words whole, as
 * without ranges), and a token that strips spaces beside it does so across a run's edge too.
 */
function joinRuns(vocab: Vocab, runs: readonly Fragment[]): Fragment[] {
  const out: Fragment[] = [];
  for (const f of runs) {
    const last = out[out.length - 1];
    if (f.text !== undefined && last?.text !== undefined) out[out.length - 1] = { text: last.text + f.text };
    else out.push(f);
  }
  for (let i = 0; i < out.length; i++) {
    const f = out[i];
    if (f.id === undefined) continue;
    const attr = vocab.attrs[f.id];
    const before = out[i - 1];
    if (attr & TokenAttr.LStrip && before?.text !== undefined) {
      let end = before.text.length;
      while (end > 0 && isCSpace(before.text.charCodeAt(end - 1))) end--;
      out[i - 1] = { text: before.text.slice(0, end) };
    }
    const after = out[i + 1];
    if (attr & TokenAttr.RStrip && after?.text !== undefined) {
      let from = 0;
      while (from < after.text.length && isCSpace(after.text.charCodeAt(from))) from++;
      out[i + 1] = { text: after.text.slice(from) };
    }
  }
  return out.filter((f) => f.text !== '');
}

function partitionRun(vocab: Vocab, text: string, parseSpecial: boolean): Fragment[] {
  let frags: Fragment[] = text === '' ? [] : [{ text }];
  for (const id of vocab.specialTokens) {
    const attr = vocab.attrs[id];
    if (!parseSpecial && attr & (TokenAttr.Control | TokenAttr.Unknown)) continue;
    const tok = vocab.tokens[id];
    let out: Fragment[] | undefined; // allocated on the first hit only: most tokens never occur
    for (let f = 0; f < frags.length; f++) {
      const frag = frags[f];
      const s = frag.text;
      let at = s === undefined ? -1 : s.indexOf(tok);
      if (at < 0 || s === undefined) {
        out?.push(frag);
        continue;
      }
      out ??= frags.slice(0, f);
      let from = 0;
      while (at >= 0) {
        let leftEnd = at;
        if (attr & TokenAttr.LStrip) while (leftEnd > from && isCSpace(s.charCodeAt(leftEnd - 1))) leftEnd--;
        if (leftEnd > from) out.push({ text: s.slice(from, leftEnd) });
        out.push({ id });
        from = at + tok.length;
        if (attr & TokenAttr.RStrip) while (from < s.length && isCSpace(s.charCodeAt(from))) from++;
        at = s.indexOf(tok, from);
      }
      if (from < s.length) out.push({ text: s.slice(from) });
    }
    if (out) frags = out;
  }
  return frags;
}
