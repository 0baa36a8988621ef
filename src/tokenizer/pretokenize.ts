// Pre-tokenizers of GPT-2 style BPE vocabularies: the regexes that cut text into words before any
// merge happens, chosen by `tokenizer.ggml.pre`, and the splitter that applies them the way
// llama.cpp's `unicode_regex_split` does.
//
// How llama.cpp applies a list of regexes (and so how we do):
// - Each regex runs inside every piece the previous ones produced (a piece's ends are the ends of
//   the text for it: lookaheads and `$` cannot see past them). Both what a regex matches and the
//   gaps between matches become pieces.
// - std::regex has no \p{..}, so llama.cpp first "collapses" the text: ASCII stays, non-ASCII
//   whitespace becomes \v, every other code point becomes one stand-in byte for its category
//   (number, letter, punctuation, mark, symbol, other), and \p{X} in the regex becomes a class of
//   that stand-in plus the ASCII members of X. We do the same with private-use stand-ins and
//   llama.cpp's category table, rather than JS \p{X}: its ASCII part of \p{S} leaves out '~', and
//   its Unicode 15.1 data knows no character assigned since.
// - A regex with no \p{..} runs on the code points directly (std::wregex), again with non-ASCII
//   whitespace replaced by \v; its \s is then ASCII only.
// llama.cpp hand-codes the GPT-2 and Llama-3 regexes for speed; those functions give the same
// pieces as the regexes, so here the regexes are used as written.

import { TokenizerError } from './errors.ts';
import { ASCII_SPACE_CLASS, Cat, category, isWhitespace } from './unicode.ts';

const GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
const CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
const LLAMA3 = `${CONTRACTIONS}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`;
const QWEN2 = `${CONTRACTIONS}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`;
// Cased letters as DeepSeek's tokenizer.json lists them (code points spelled out: several of these
// characters have canonical equivalents, and an editor normalizing them would break the ranges).
const DEEPSEEK_LETTERS =
  '\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}' +
  '\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}' +
  '\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}' +
  '\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}' +
  '\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}' +
  '\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}' +
  '\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}' +
  '\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}' +
  '\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}' +
  '\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}' +
  '\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+';
const DEEPSEEK_PUNCT = '\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+';
const CJK_HANGUL = '[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+';
const BLOOM = ' ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+';
// Upper-then-lower letter runs written with lookaheads, as llama.cpp adapts them for std::regex.
const CASED_WORDS =
  '[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+%C|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*%C';

/** What a `tokenizer.ggml.pre` value means: its regexes and the vocabulary flags it implies. */
export interface PreTokenizerSpec {
  readonly regexes: readonly string[];
  /** Detokenizer removes spaces before punctuation (llama.cpp's clean_spaces). */
  readonly cleanSpaces: boolean;
  /** A word that is already a token is emitted whole, without running its merges. */
  readonly ignoreMerges: boolean;
  /** Default of add_bos_token when the file does not say. */
  readonly addBos: boolean;
  /** The vocabulary has no BOS token whatever the file says. */
  readonly noBos?: boolean;
}

function spec(regexes: readonly string[], cleanSpaces = true, extra: Partial<PreTokenizerSpec> = {}): PreTokenizerSpec {
  return { regexes, cleanSpaces, ignoreMerges: false, addBos: false, ...extra };
}

const DEFAULT = spec(['[\\p{P}\\$\\+<=>\\^~\\|]+', GPT2, '\\p{N}+', '[0-9][0-9][0-9]']);
const LLAMA3_SPEC = spec([LLAMA3], true, { ignoreMerges: true, addBos: true });
const GPT2_SPEC = spec([GPT2]);
const STARCODER = spec(['\\p{N}', GPT2]);
const QWEN2_SPEC = spec([QWEN2], false);
const BLOOM_SPEC = spec([BLOOM]);

/** The pre-tokenizers llama.cpp knew at commit c392e509 (Feb 2025), by `tokenizer.ggml.pre`. */
export const PRE_TOKENIZERS: ReadonlyMap<string, PreTokenizerSpec> = new Map<string, PreTokenizerSpec>([
  ['default', DEFAULT],
  ['llama3', LLAMA3_SPEC],
  ['llama-v3', LLAMA3_SPEC],
  ['llama-bpe', LLAMA3_SPEC],
  ['falcon3', LLAMA3_SPEC],
  ['deepseek-llm', spec(['[\r\n]', DEEPSEEK_LETTERS, DEEPSEEK_PUNCT, '\\s+$', CJK_HANGUL, '\\p{N}+'], false)],
  ['deepseek-coder', spec(['[\r\n]', '\\s?\\p{L}+', '\\s?\\p{P}+', CJK_HANGUL, '\\p{N}'], false)],
  [
    'deepseek-v3',
    spec(
      [
        '\\p{N}{1,3}',
        '[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+',
        '[!"#$%&\'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+',
      ],
      false,
    ),
  ],
  ['falcon', spec(['[\\p{P}\\$\\+<=>\\^~\\|`]+', GPT2, '[0-9][0-9][0-9]'])],
  ['mpt', GPT2_SPEC],
  ['starcoder', STARCODER],
  ['gpt-2', GPT2_SPEC],
  ['phi-2', GPT2_SPEC],
  ['jina-es', GPT2_SPEC],
  ['jina-de', GPT2_SPEC],
  ['gigachat', GPT2_SPEC],
  ['jina-v1-en', GPT2_SPEC],
  ['jina-v2-es', GPT2_SPEC],
  ['jina-v2-de', GPT2_SPEC],
  ['jina-v2-code', GPT2_SPEC],
  ['roberta-bpe', GPT2_SPEC],
  ['refact', STARCODER],
  ['command-r', spec(['\\p{N}', GPT2], false)],
  ['qwen2', QWEN2_SPEC],
  ['deepseek-r1-qwen', QWEN2_SPEC],
  ['megrez', spec([QWEN2])],
  ['stablelm2', spec([QWEN2])],
  ['olmo', GPT2_SPEC],
  ['dbrx', spec([LLAMA3])],
  ['smaug-bpe', spec([LLAMA3])],
  ['poro-chat', spec([BLOOM], false)],
  ['chatglm-bpe', spec([LLAMA3], true, { noBos: true })],
  ['viking', spec([BLOOM, '\\p{N}'], false)],
  ['jais', GPT2_SPEC],
  [
    'tekken',
    spec(
      [CASED_WORDS.replaceAll('%C', '') + '|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+'],
      false,
      { ignoreMerges: true, addBos: true },
    ),
  ],
  ['smollm', spec(['\\p{N}', GPT2], false)],
  ['codeshell', STARCODER],
  ['bloom', BLOOM_SPEC],
  ['gpt3-finnish', BLOOM_SPEC],
  ['exaone', STARCODER],
  [
    'chameleon',
    spec(
      [
        '<sentinel:[0-9]+>',
        '(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z',
        '([\\t\\n]|    |  )',
        '\\p{N}',
        '[\\p{P}!-/:-@\\[-`{-~]',
        GPT2,
      ],
      false,
      { addBos: true },
    ),
  ],
  ['minerva-7b', STARCODER],
  [
    'gpt-4o',
    spec(
      [
        CASED_WORDS.replaceAll('%C', `${CONTRACTIONS}?`) +
          '|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+',
      ],
      false,
    ),
  ],
]);

// --- compiling llama.cpp regexes to JS ---------------------------------------------------------

// Private-use stand-ins for collapsed categories (llama.cpp uses the bytes 0xD0..0xD5). Any
// non-ASCII code point of the text collapses to one of these, so they cannot be confused with text.
const STAND_IN_OTHER = 0xe0d0;
const standIn: Partial<Record<Cat, number>> = {
  [Cat.Number]: 0xe0d1,
  [Cat.Letter]: 0xe0d2,
  [Cat.Punctuation]: 0xe0d3,
  [Cat.Mark]: 0xe0d4,
  [Cat.Symbol]: 0xe0d5,
};

/** \p{X} of a collapsed regex: the stand-in plus the ASCII members llama.cpp lists for X. */
const collapsedClass: Record<string, { cat: Cat; ascii: string }> = {
  N: { cat: Cat.Number, ascii: '0-9' },
  L: { cat: Cat.Letter, ascii: 'A-Za-z' },
  P: { cat: Cat.Punctuation, ascii: '!-#%-*,-/:-;?-@\\[-\\]_\\{\\}' },
  M: { cat: Cat.Mark, ascii: '' },
  S: { cat: Cat.Symbol, ascii: '\\$\\+<->\\^`\\|' }, // no '~': llama.cpp's table leaves it out
};

interface CompiledRegex {
  /** Runs on the collapsed text (the source used \p{..}) rather than on the code points. */
  readonly collapsed: boolean;
  readonly re: RegExp;
}

/** Rewrites \p{X} like llama.cpp's collapsing loop, including its naive "[ not after \" scan. */
function collapseSource(src: string): string {
  let out = '';
  let inside = false;
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (c === '[' && (i === 0 || src[i - 1] !== '\\')) {
      out += c;
      inside = true;
      continue;
    }
    if (inside && c === ']' && src[i - 1] !== '\\') {
      out += c;
      inside = false;
      continue;
    }
    if (c === '\\' && src[i + 1] === 'p' && src[i + 2] === '{') {
      const close = src.indexOf('}', i + 3);
      const cls = close < 0 ? undefined : collapsedClass[src.slice(i + 3, close)];
      if (!cls) throw new Error(`unsupported Unicode property in pre-tokenizer regex: ${src.slice(i, close + 1)}`);
      const body = String.fromCharCode(standIn[cls.cat] ?? STAND_IN_OTHER) + cls.ascii;
      out += inside ? body : `[${body}]`;
      i = close;
      continue;
    }
    out += c;
  }
  return out;
}

/** Makes \s and \S mean std::regex's ASCII whitespace (JS's \s also knows U+FEFF and others). */
function asciiSpaces(src: string): string {
  let out = '';
  let inClass = false;
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (c === '\\') {
      const e = src[i + 1];
      i++;
      if (e === 's') out += inClass ? ASCII_SPACE_CLASS : `[${ASCII_SPACE_CLASS}]`;
      else if (e === 'S' && !inClass) out += `[^${ASCII_SPACE_CLASS}]`;
      else if (e === 'S') throw new Error('\\S inside a character class is not supported');
      else out += c + e;
      continue;
    }
    if (c === '[' && !inClass) inClass = true;
    else if (c === ']' && inClass) inClass = false;
    out += c;
  }
  return out;
}

function compile(src: string): CompiledRegex {
  const collapsed = /\\p\{/.test(src);
  if (collapsed) {
    if (/[\u0080-\uffff]/.test(src)) throw new Error('a regex with \\p{..} must be ASCII (llama.cpp refuses it too)');
    // The collapsed text is all single UTF-16 units, so the non-Unicode mode is exact here.
    return { collapsed, re: new RegExp(asciiSpaces(collapseSource(src)), 'g') };
  }
  return { collapsed, re: new RegExp(asciiSpaces(src), 'gu') };
}

export class PreTokenizer {
  private readonly regexes: readonly CompiledRegex[];

  constructor(
    readonly name: string,
    sources: readonly string[],
  ) {
    this.regexes = sources.map(compile);
  }

  /** Cuts text into the words BPE merges within (original text, not yet byte-encoded). */
  split(text: string): string[] {
    const cps: number[] = [];
    for (const ch of text) cps.push(ch.codePointAt(0) as number);
    const n = cps.length;
    const astral = text.length !== n;

    // Code point index -> UTF-16 offset in the text (and in its whitespace-replaced twin).
    let cpToUnit: Int32Array | undefined;
    let unitToCp: Int32Array | undefined;
    if (astral) {
      cpToUnit = new Int32Array(n + 1);
      unitToCp = new Int32Array(text.length + 1);
      let u = 0;
      for (let i = 0; i < n; i++) {
        cpToUnit[i] = u;
        unitToCp[u] = i;
        u += cps[i] > 0xffff ? 2 : 1;
      }
      cpToUnit[n] = u;
      unitToCp[u] = n;
    }

    let collapsedText: string | undefined;
    let wideText: string | undefined;
    let pieces: number[] = [n]; // lengths in code points, as llama.cpp's bpe_offsets

    for (const { collapsed, re } of this.regexes) {
      let target: string;
      let toUnit: (cp: number) => number;
      let toCp: (unit: number) => number;
      if (collapsed) {
        collapsedText ??= collapse(cps);
        target = collapsedText;
        toUnit = toCp = (x) => x;
      } else {
        wideText ??= replaceWideSpaces(text);
        target = wideText;
        toUnit = cpToUnit ? (cp) => (cpToUnit as Int32Array)[cp] : (x) => x;
        toCp = unitToCp ? (u) => (unitToCp as Int32Array)[u] : (x) => x;
      }

      const next: number[] = [];
      let start = 0;
      for (const len of pieces) {
        const u0 = toUnit(start);
        const chunk = target.slice(u0, toUnit(start + len));
        let prevEnd = 0; // code points into this piece
        re.lastIndex = 0;
        for (let m = re.exec(chunk); m !== null; m = re.exec(chunk)) {
          if (m[0].length === 0) {
            // None of the known regexes can match empty; skip forward like std::regex_iterator.
            re.lastIndex = m.index + ((chunk.codePointAt(m.index) ?? 0) > 0xffff ? 2 : 1);
            continue;
          }
          const ms = toCp(u0 + m.index) - start;
          const me = toCp(u0 + m.index + m[0].length) - start;
          if (ms > prevEnd) next.push(ms - prevEnd);
          next.push(me - ms);
          prevEnd = me;
        }
        if (prevEnd < len) next.push(len - prevEnd);
        start += len;
      }
      pieces = next;
    }

    const words: string[] = new Array(pieces.length);
    let start = 0;
    for (let i = 0; i < pieces.length; i++) {
      const end = start + pieces[i];
      words[i] = cpToUnit ? text.slice(cpToUnit[start], cpToUnit[end]) : text.slice(start, end);
      start = end;
    }
    return words;
  }
}

/** llama.cpp's collapsed text: ASCII kept, non-ASCII whitespace -> \v, others -> a stand-in. */
function collapse(cps: readonly number[]): string {
  const units = new Uint16Array(cps.length);
  for (let i = 0; i < cps.length; i++) {
    const cp = cps[i];
    if (cp < 0x80) units[i] = cp;
    else if (isWhitespace(cp)) units[i] = 0x0b;
    else units[i] = standIn[category(cp)] ?? STAND_IN_OTHER;
  }
  let s = '';
  for (let i = 0; i < units.length; i += 8192) s += String.fromCharCode(...units.subarray(i, i + 8192));
  return s;
}

/** The text std::wregex sees: non-ASCII whitespace replaced by \v (all of it is in the BMP). */
function replaceWideSpaces(text: string): string {
  return text.replace(/[\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/g, '\v');
}

const compiled = new Map<string, PreTokenizer>();

/** The pre-tokenizer for a `tokenizer.ggml.pre` value (compiled once per process). */
export function preTokenizer(name: string, path = '', key = 'tokenizer.ggml.pre'): PreTokenizer {
  let pt = compiled.get(name);
  if (pt) return pt;
  const s = PRE_TOKENIZERS.get(name);
  if (!s) throw new TokenizerError('unknown-pre', path, key, `unknown pre-tokenizer "${name}"`);
  pt = new PreTokenizer(name, s.regexes);
  compiled.set(name, pt);
  return pt;
}
