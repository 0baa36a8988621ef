// From ids back to text, as llama.cpp's token_to_piece and llama_detokenize do it: a token's
// piece is bytes (a byte token is one byte, half of a UTF-8 character perhaps), so text is only
// made once the bytes are joined. TextStream does that incrementally for generation.

import { CHAR_TO_BYTE, utf8Bytes } from './unicode.ts';
import { TokenAttr, type Vocab } from './vocab.ts';

const EMPTY = new Uint8Array(0);
const SPECIAL = TokenAttr.Unknown | TokenAttr.Control;

export class PieceTable {
  // Pieces with control/unknown tokens spelled out, built on first use of each id.
  private readonly cache: (Uint8Array | undefined)[];

  constructor(private readonly vocab: Vocab) {
    this.cache = new Array(vocab.tokens.length);
  }

  /**
   * The bytes of one token. `special` false renders control and unknown tokens as nothing,
   * which is what a user reading generated text wants.
   */
  bytes(id: number, special: boolean): Uint8Array {
    const { tokens, attrs } = this.vocab;
    if (!Number.isInteger(id) || id < 0 || id >= tokens.length) {
      throw new RangeError(`token id ${id} is outside the vocabulary (0..${tokens.length - 1})`);
    }
    const attr = attrs[id];
    if (!special && attr & SPECIAL) return EMPTY;
    let piece = this.cache[id];
    if (piece === undefined) {
      piece = this.render(tokens[id], attr);
      this.cache[id] = piece;
    }
    return piece;
  }

  private render(text: string, attr: number): Uint8Array {
    if (attr & (SPECIAL | TokenAttr.UserDefined)) return utf8Bytes(text);
    if (this.vocab.type === 'bpe') {
      return attr & TokenAttr.Normal ? gpt2Decode(text) : EMPTY;
    }
    if (attr & TokenAttr.Normal) return utf8Bytes(text.replaceAll('\u2581', ' '));
    if (attr & TokenAttr.Byte) return Uint8Array.of(parseInt(text.slice(3, 5), 16) || 0); // "<0xNN>"
    return EMPTY; // unused and undefined tokens have no text
  }
}

/** GPT-2 alphabet back to bytes; a character outside it is shown as llama.cpp shows it. */
function gpt2Decode(text: string): Uint8Array {
  const out: number[] = [];
  for (const ch of text) {
    const b = CHAR_TO_BYTE.get(ch);
    if (b !== undefined) {
      out.push(b);
      continue;
    }
    const hex = Array.from(utf8Bytes(ch), (x) => x.toString(16).padStart(2, '0')).join('');
    out.push(...utf8Bytes(`[UNK_BYTE_0x${hex}${text}]`));
  }
  return Uint8Array.from(out);
}

export interface DetokenizeOptions {
  /** Drop a leading BOS and trailing EOS when the vocabulary adds them (default false). */
  removeSpecial?: boolean;
  /** Spell control tokens such as "</s>" instead of dropping them (default false). */
  unparseSpecial?: boolean;
}

/** llama_detokenize: join the pieces, drop the SPM leading space, tidy spaces if the vocab says. */
export function detokenize(
  vocab: Vocab,
  pieces: PieceTable,
  ids: readonly number[],
  opts: DetokenizeOptions = {},
): Uint8Array {
  let begin = 0;
  let end = ids.length;
  // The space SPM put in front of the first word goes away, unless a BOS was there to take it.
  let removeSpace = vocab.addSpacePrefix;
  if (opts.removeSpecial && vocab.addBos && end > 0 && ids[0] === vocab.special.bos) {
    removeSpace = false;
    begin++;
  }
  if (opts.removeSpecial && vocab.addEos && end > begin && ids[end - 1] === vocab.special.eos) end--;

  const parts: Uint8Array[] = [];
  let total = 0;
  for (let i = begin; i < end; i++) {
    let piece = pieces.bytes(ids[i], opts.unparseSpecial ?? false);
    if (removeSpace && piece[0] === 0x20) piece = piece.subarray(1);
    removeSpace = false;
    parts.push(piece);
    total += piece.length;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return vocab.cleanSpaces ? cleanSpaces(out) : out;
}

const [SP, QUOTE, QMARK, BANG, DOT, COMMA] = [' ', "'", '?', '!', '.', ','].map((c) => c.charCodeAt(0));
const [s_, m_, r_, v_, e_] = ['s', 'm', 'r', 'v', 'e'].map((c) => c.charCodeAt(0));

/**
 * clean_up_tokenization_spaces, byte for byte as llama.cpp does it in place (which is why the
 * second pass can see the NUL it wrote over a removed space).
 */
function cleanSpaces(t: Uint8Array): Uint8Array {
  // " ?", " !", " .", " ," lose their space.
  let total = t.length;
  let w = total ? 1 : 0;
  for (let i = 1; i < total; i++) {
    const x = t[i];
    if (t[i - 1] === SP && (x === QMARK || x === BANG || x === DOT || x === COMMA)) w--;
    t[w++] = x;
  }
  // " ' " becomes "'".
  total = w;
  w = total ? 1 : 0;
  for (let i = 1; i < total; i++) {
    const x = t[i];
    if (x === QUOTE && i + 1 < total && t[i - 1] === SP && t[i + 1] === SP) {
      w--;
      t[++i] = 0;
    }
    t[w++] = x;
  }
  // " 's", " 'm", " 're", " 've" lose their space (" 't", " 'd", " 'll" keep it).
  total = w;
  w = total ? 1 : 0;
  for (let i = 1; i < total; i++) {
    const x = t[i];
    if (t[i - 1] === SP && x === QUOTE && i + 1 < total) {
      const x1 = t[i + 1];
      if (x1 === s_ || x1 === m_) w--;
      else if (i + 2 < total && (x1 === r_ || x1 === v_) && t[i + 2] === e_) w--;
    }
    t[w++] = x;
  }
  return t.subarray(0, w);
}

/**
 * Streaming decoder: push ids as they are generated, get text back as soon as it is whole.
 * Bytes of a character split across tokens are held until the rest arrives; a byte sequence that
 * can never be valid UTF-8 comes out as U+FFFD rather than stalling the stream.
 */
export class TextStream {
  // ignoreBOM: a generated U+FEFF is text like any other.
  private readonly decoder = new TextDecoder('utf-8', { ignoreBOM: true });

  constructor(
    private readonly pieces: PieceTable,
    private readonly special = false,
  ) {}

  push(id: number): string {
    return this.decoder.decode(this.pieces.bytes(id, this.special), { stream: true });
  }

  /** Whatever is still held (an incomplete character becomes U+FFFD); the stream can be reused. */
  flush(): string {
    return this.decoder.decode();
  }
}

export function bytesToText(bytes: Uint8Array): string {
  return new TextDecoder('utf-8', { ignoreBOM: true }).decode(bytes);
}
