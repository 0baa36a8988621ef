// Code point facts as llama.cpp's unicode.cpp sees them: the general category (one of the
// groups its regex collapsing and WordPiece splitting use), its own whitespace set, the first
// code point of the NFD form, simple lowercase, and GPT-2's byte-to-character table.
//
// Categories come from llama.cpp's own table (unicode-data.ts, Unicode 15.1). NFD and lowercase
// come from the JS engine: mappings of assigned characters never change between Unicode versions,
// and for code points llama.cpp considers unassigned both are the identity, as in its tables.

import { CATEGORY_RUNS } from './unicode-data.ts';

/** The category groups of llama.cpp's `unicode_cpt_flags` (one per code point). */
export const Cat = {
  Undefined: 0, // Cn: unassigned
  Number: 1, // \p{N}
  Letter: 2, // \p{L}
  Separator: 3, // \p{Z}
  Mark: 4, // \p{M}
  Punctuation: 5, // \p{P}
  Symbol: 6, // \p{S}
  Control: 7, // Cc, Cf, Co, Cs
} as const;
export type Cat = (typeof Cat)[keyof typeof Cat];

const CODEPOINTS = 0x110000;

// One byte per code point (1.1 MB), expanded from the run-length table on first use.
let categories: Uint8Array | undefined;

function expandCategories(): Uint8Array {
  const table = new Uint8Array(CODEPOINTS);
  let cp = 0;
  for (const m of CATEGORY_RUNS.matchAll(/([0-9A-F]+)([a-h])/g)) {
    const n = parseInt(m[1], 16);
    table.fill(m[2].charCodeAt(0) - 0x61, cp, cp + n);
    cp += n;
  }
  if (cp !== CODEPOINTS) throw new Error(`unicode-data.ts covers ${cp} code points, not ${CODEPOINTS}`);
  return table;
}

export function category(cp: number): Cat {
  if (!(cp >= 0 && cp < CODEPOINTS)) return Cat.Undefined;
  categories ??= expandCategories();
  return categories[cp] as Cat;
}

/**
 * llama.cpp's whitespace: the Unicode White_Space property. Unlike JS `\s` it includes U+0085
 * (NEL) and excludes U+FEFF (BOM).
 */
export function isWhitespace(cp: number): boolean {
  if (cp <= 0x20) return cp === 0x20 || (cp >= 0x09 && cp <= 0x0d);
  if (cp < 0x85) return false;
  return (
    cp === 0x85 ||
    cp === 0xa0 ||
    cp === 0x1680 ||
    (cp >= 0x2000 && cp <= 0x200a) ||
    cp === 0x2028 ||
    cp === 0x2029 ||
    cp === 0x202f ||
    cp === 0x205f ||
    cp === 0x3000
  );
}

/** The ASCII whitespace std::regex's `\s` knows, as the body of a character class. */
export const ASCII_SPACE_CLASS = '\\t\\n\\v\\f\\r ';

/**
 * The first code point of the canonical decomposition: llama.cpp's "NFD" keeps only this one
 * (so "é" becomes "e" and the accent is gone), which is what BERT's WordPiece relies on.
 */
export function nfdFirst(cp: number): number {
  if (cp < 0xc0 || category(cp) === Cat.Undefined) return cp; // nothing below U+00C0 decomposes
  return String.fromCodePoint(cp).normalize('NFD').codePointAt(0) ?? cp;
}

/** Simple (one code point) lowercase mapping, as UnicodeData.txt's lowercase field gives it. */
export function toLower(cp: number): number {
  if (cp < 0x80) return cp >= 0x41 && cp <= 0x5a ? cp + 32 : cp;
  if (category(cp) === Cat.Undefined) return cp;
  // The full mapping only differs for U+0130, whose first code point is the simple mapping.
  return String.fromCodePoint(cp).toLowerCase().codePointAt(0) ?? cp;
}

/** Replaces lone surrogates by U+FFFD: what UTF-8 encoding (and so llama.cpp) would see. */
export function toWellFormed(s: string): string {
  return s.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD');
}

export function utf8Bytes(s: string): Uint8Array {
  return Buffer.from(s, 'utf8');
}

/** UTF-8 length without encoding (called once per vocabulary entry, so kept in JS). */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3; // BMP character or lone surrogate (encoded as U+FFFD)
  }
  return n;
}

/**
 * GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes
 * are moved to U+0100.. so that every byte is a visible character in the vocabulary.
 */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const out: string[] = new Array(256);
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let n = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCharCode(printable(b) ? b : 256 + n++);
  return out;
})();

export const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));
