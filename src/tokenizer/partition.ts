// Special tokens in raw text: before tokenizing, llama.cpp cuts the text at every occurrence of
// a special token's text (longest tokens first) and emits those tokens as they are. User-defined
// tokens are always cut out; control and unknown tokens only when the caller asks to parse
// special text (otherwise "<s>" in a prompt is just three characters).

import { TokenAttr, type Vocab } from './vocab.ts';

export type Fragment =
  { readonly text: string; readonly id?: undefined } | { readonly id: number; readonly text?: undefined };

const isCSpace = (c: number) => c === 0x20 || (c >= 0x09 && c <= 0x0d);

export function partitionSpecial(vocab: Vocab, text: string, parseSpecial: boolean): Fragment[] {
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
