// The vocabulary a GGUF file carries (`tokenizer.ggml.*`), validated into one typed value with
// the defaults and fix-ups llama.cpp's `llama_vocab::load` applies (commit c392e509, Feb 2025):
// default special ids per tokenizer kind, special tokens found by their text, end-of-generation
// ids, and the list of tokens that are matched in raw text before tokenizing.

import type { GgufFile, MetadataValue } from '../gguf/reader.ts';
import { TokenizerError } from './errors.ts';
import { PRE_TOKENIZERS } from './pretokenize.ts';
import { utf8Length } from './unicode.ts';

export type VocabType = 'spm' | 'bpe' | 'wpm';

/** llama.cpp's token attributes (bit flags; a token can carry several). */
export const TokenAttr = {
  Undefined: 0,
  Unknown: 1 << 0,
  Unused: 1 << 1,
  Normal: 1 << 2,
  Control: 1 << 3,
  UserDefined: 1 << 4,
  Byte: 1 << 5,
  Normalized: 1 << 6,
  LStrip: 1 << 7,
  RStrip: 1 << 8,
  SingleWord: 1 << 9,
} as const;

/** `tokenizer.ggml.token_type` values (GGUF) as attributes. */
const attrOfType: Record<number, number> = {
  0: TokenAttr.Undefined,
  1: TokenAttr.Normal,
  2: TokenAttr.Unknown,
  3: TokenAttr.Control,
  4: TokenAttr.UserDefined,
  5: TokenAttr.Unused,
  6: TokenAttr.Byte,
};

export interface SpecialIds {
  bos?: number;
  eos?: number;
  eot?: number;
  eom?: number;
  unk?: number;
  sep?: number;
  pad?: number;
  /** BERT's [CLS]; WordPiece puts it first where other tokenizers put BOS. */
  cls?: number;
  mask?: number;
  fimPre?: number;
  fimSuf?: number;
  fimMid?: number;
  fimPad?: number;
  fimRep?: number;
  fimSep?: number;
}

export interface Vocab {
  /** The file it came from, for error messages. */
  readonly path: string;
  readonly type: VocabType;
  /** `tokenizer.ggml.model` as written ("llama", "gpt2", "bert"). */
  readonly model: string;
  /** `tokenizer.ggml.pre`, or "default" when absent. Only BPE uses it. */
  readonly pre: string;
  readonly tokens: readonly string[];
  readonly scores: Float32Array;
  /** TokenAttr bits per token. */
  readonly attrs: Uint16Array;
  readonly tokenToId: ReadonlyMap<string, number>;
  /** BPE merges: "left right" -> rank (lower merges first). Empty for other kinds. */
  readonly mergeRanks: ReadonlyMap<string, number>;
  readonly special: Readonly<SpecialIds>;
  readonly addBos: boolean;
  readonly addEos: boolean;
  /** SPM: a space is put before the text, so the first word looks like any other. */
  readonly addSpacePrefix: boolean;
  readonly removeExtraWhitespaces: boolean;
  /** The detokenizer tidies " ," / " 's" and the like (llama.cpp's clean_spaces). */
  readonly cleanSpaces: boolean;
  /** BPE: a pre-tokenized word that is a token is not merged piecewise. */
  readonly ignoreMerges: boolean;
  /** Tokens that end generation: EOS, EOT, EOM and the usual end-of-turn texts. */
  readonly eog: ReadonlySet<number>;
  /** Control, user-defined and unknown tokens, longest text first: matched in raw text. */
  readonly specialTokens: readonly number[];
  /** Longest token, in UTF-8 bytes. */
  readonly maxTokenLength: number;
  /** What llama.cpp would log as a warning while loading. */
  readonly warnings: readonly string[];
}

const KEY = {
  model: 'tokenizer.ggml.model',
  pre: 'tokenizer.ggml.pre',
  tokens: 'tokenizer.ggml.tokens',
  scores: 'tokenizer.ggml.scores',
  tokenType: 'tokenizer.ggml.token_type',
  merges: 'tokenizer.ggml.merges',
  addBos: 'tokenizer.ggml.add_bos_token',
  addEos: 'tokenizer.ggml.add_eos_token',
  addSpacePrefix: 'tokenizer.ggml.add_space_prefix',
  removeExtraWhitespaces: 'tokenizer.ggml.remove_extra_whitespaces',
} as const;

// Metadata keys of special ids; later entries of the same slot (the deprecated FIM names) win
// only if present, as in llama.cpp's list.
const specialKeys: ReadonlyArray<readonly [keyof SpecialIds, string]> = [
  ['bos', 'tokenizer.ggml.bos_token_id'],
  ['eos', 'tokenizer.ggml.eos_token_id'],
  ['eot', 'tokenizer.ggml.eot_token_id'],
  ['eom', 'tokenizer.ggml.eom_token_id'],
  ['unk', 'tokenizer.ggml.unknown_token_id'],
  ['sep', 'tokenizer.ggml.seperator_token_id'], // sic: llama.cpp's spelling
  ['pad', 'tokenizer.ggml.padding_token_id'],
  ['cls', 'tokenizer.ggml.cls_token_id'],
  ['mask', 'tokenizer.ggml.mask_token_id'],
  ['fimPre', 'tokenizer.ggml.fim_pre_token_id'],
  ['fimSuf', 'tokenizer.ggml.fim_suf_token_id'],
  ['fimMid', 'tokenizer.ggml.fim_mid_token_id'],
  ['fimPad', 'tokenizer.ggml.fim_pad_token_id'],
  ['fimRep', 'tokenizer.ggml.fim_rep_token_id'],
  ['fimSep', 'tokenizer.ggml.fim_sep_token_id'],
  ['fimPre', 'tokenizer.ggml.prefix_token_id'],
  ['fimSuf', 'tokenizer.ggml.suffix_token_id'],
  ['fimMid', 'tokenizer.ggml.middle_token_id'],
];

// Special tokens recognised by their text when the file does not name them (first match wins).
const byText: ReadonlyArray<readonly [keyof SpecialIds, readonly string[]]> = [
  [
    'eot',
    [
      '<|eot_id|>',
      '<|im_end|>',
      '<|end|>',
      '<end_of_turn>',
      '<|endoftext|>',
      '<EOT>',
      '_<EOT>',
      '<｜end▁of▁sentence｜>',
    ],
  ],
  ['eom', ['<|eom_id|>']],
  ['fimPre', ['<|fim_prefix|>', '<fim-prefix>', '<｜fim▁begin｜>', '<PRE>', '▁<PRE>']],
  ['fimSuf', ['<|fim_suffix|>', '<fim-suffix>', '<｜fim▁hole｜>', '<SUF>', '▁<SUF>']],
  ['fimMid', ['<|fim_middle|>', '<fim-middle>', '<｜fim▁end｜>', '<MID>', '▁<MID>']],
  ['fimPad', ['<|fim_pad|>', '<fim-pad>', '<PAD>']],
  ['fimRep', ['<|fim_repo|>', '<|repo_name|>', '<fim-repo>', '<REPO>']],
  ['fimSep', ['<|file_sep|>', '<fim-sep>']],
];

const eogTexts = [
  '<|eot_id|>',
  '<|im_end|>',
  '<|end|>',
  '<end_of_turn>',
  '<|endoftext|>',
  '<|eom_id|>',
  '<EOT>',
  '_<EOT>',
];

/** What the vocabulary is read from: a GgufFile, or anything with its path and metadata. */
export type VocabSource = Pick<GgufFile, 'path' | 'metadata'>;

/** Reads and validates the vocabulary of a GGUF file. Throws TokenizerError naming the key at fault. */
export function loadVocab(file: VocabSource): Vocab {
  const path = file.path;
  const warnings: string[] = [];
  const fail = (code: 'missing-key' | 'bad-value', key: string, detail: string) =>
    new TokenizerError(code, path, key, detail);
  const meta = (key: string): MetadataValue | undefined => file.metadata.get(key);
  const str = (key: string): string | undefined => {
    const v = meta(key);
    if (v !== undefined && typeof v !== 'string') throw fail('bad-value', key, `should be a string, found ${kind(v)}`);
    return v;
  };
  const bool = (key: string): boolean | undefined => {
    const v = meta(key);
    if (v !== undefined && typeof v !== 'boolean')
      throw fail('bad-value', key, `should be a boolean, found ${kind(v)}`);
    return v;
  };

  // Kind of tokenizer and the defaults that come with it.
  const model = str(KEY.model);
  if (model === undefined) throw fail('missing-key', KEY.model, 'missing: the file has no tokenizer');
  let type: VocabType;
  const special: SpecialIds = {};
  if (model === 'llama') {
    type = 'spm';
    Object.assign(special, { bos: 1, eos: 2, unk: 0 });
  } else if (model === 'gpt2') {
    type = 'bpe';
    Object.assign(special, { bos: 11, eos: 11 });
  } else if (model === 'bert') {
    type = 'wpm';
    Object.assign(special, { cls: 101, unk: 100, sep: 102, pad: 0, mask: 103 });
  } else {
    throw new TokenizerError(
      'unsupported-model',
      path,
      KEY.model,
      `tokenizer "${model}" is not supported (supported: llama, gpt2, bert)`,
    );
  }

  let pre = str(KEY.pre) ?? '';
  let addSpacePrefix = false;
  let cleanSpaces: boolean;
  let ignoreMerges = false;
  let addBos: boolean;
  let addEos = false;
  if (type === 'bpe') {
    if (pre === '') {
      warnings.push(`${KEY.pre} is missing: using the default pre-tokenizer (generation quality may suffer)`);
      pre = 'default';
    }
    const spec = PRE_TOKENIZERS.get(pre);
    if (!spec) throw new TokenizerError('unknown-pre', path, KEY.pre, `unknown pre-tokenizer "${pre}"`);
    cleanSpaces = spec.cleanSpaces;
    ignoreMerges = spec.ignoreMerges;
    addBos = spec.addBos;
    if (spec.noBos) delete special.bos;
  } else {
    pre = pre || 'default';
    addSpacePrefix = type === 'spm';
    cleanSpaces = type === 'wpm';
    addBos = true;
  }
  addSpacePrefix = bool(KEY.addSpacePrefix) ?? addSpacePrefix;
  const removeExtraWhitespaces = bool(KEY.removeExtraWhitespaces) ?? false;

  // Tokens, scores, types.
  const tokensRaw = meta(KEY.tokens);
  if (tokensRaw === undefined) throw fail('missing-key', KEY.tokens, 'missing: the file has no token list');
  if (!Array.isArray(tokensRaw))
    throw fail('bad-value', KEY.tokens, `should be an array of strings, found ${kind(tokensRaw)}`);
  const n = tokensRaw.length;
  if (n === 0) throw fail('bad-value', KEY.tokens, 'is empty');
  const scores = new Float32Array(n);
  const scoresRaw = meta(KEY.scores);
  if (scoresRaw !== undefined) {
    const arr = numberArray(scoresRaw, KEY.scores, n, fail);
    for (let i = 0; i < n; i++) scores[i] = arr[i];
  }
  const attrs = new Uint16Array(n).fill(TokenAttr.Normal);
  const typesRaw = meta(KEY.tokenType);
  if (typesRaw !== undefined) {
    const arr = numberArray(typesRaw, KEY.tokenType, n, fail);
    for (let i = 0; i < n; i++) attrs[i] = attrOfType[arr[i]] ?? TokenAttr.Undefined;
  }

  const tokens: string[] = new Array(n);
  const tokenToId = new Map<string, number>();
  let maxTokenLength = 0;
  for (let i = 0; i < n; i++) {
    let t = tokensRaw[i];
    if (typeof t !== 'string') throw fail('bad-value', KEY.tokens, `item ${i} should be a string, found ${kind(t)}`);
    if (t === '') {
      warnings.push(`empty token at index ${i}`);
      t = `[EMPTY_${i}]`;
    }
    const prev = tokenToId.get(t);
    if (prev !== undefined) {
      throw new TokenizerError(
        'duplicate-token',
        path,
        KEY.tokens,
        `token ${JSON.stringify(t)} appears at ${prev} and ${i}`,
      );
    }
    tokenToId.set(t, i);
    tokens[i] = t;
    maxTokenLength = Math.max(maxTokenLength, utf8Length(t));
  }

  // BPE merge ranks: "a b" splits at the first space after the first character.
  const mergeRanks = new Map<string, number>();
  if (type === 'bpe') {
    const raw = meta(KEY.merges);
    if (raw === undefined) throw fail('missing-key', KEY.merges, 'missing: a gpt2 tokenizer needs its merges');
    if (!Array.isArray(raw)) throw fail('bad-value', KEY.merges, `should be an array of strings, found ${kind(raw)}`);
    for (let i = 0; i < raw.length; i++) {
      const m = raw[i];
      if (typeof m !== 'string') throw fail('bad-value', KEY.merges, `item ${i} should be a string, found ${kind(m)}`);
      // A merge without a space can never be looked up; the first of duplicates keeps its rank.
      if (m.indexOf(' ', 1) > 0 && !mergeRanks.has(m)) mergeRanks.set(m, i);
    }
  }

  // Special ids: a default outside the vocabulary is dropped; a bad id in the file keeps the default.
  for (const [slot] of specialKeys) {
    const id = special[slot];
    if (id !== undefined && id >= n) {
      warnings.push(`default ${slot} token ${id} is outside the vocabulary: none`);
      delete special[slot];
    }
  }
  for (const [slot, key] of specialKeys) {
    const v = meta(key);
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isInteger(v))
      throw fail('bad-value', key, `should be an integer, found ${kind(v)}`);
    if (v < 0 || v >= n) {
      warnings.push(`${key} = ${v} is outside the vocabulary (${n} tokens): keeping ${special[slot] ?? 'none'}`);
      continue;
    }
    special[slot] = v;
  }
  // WordPiece starts with [CLS] where the others put BOS (unless the file names a BOS itself).
  if (type === 'wpm' && meta('tokenizer.ggml.bos_token_id') === undefined) special.bos = special.cls;

  addBos = bool(KEY.addBos) ?? addBos;
  addEos = bool(KEY.addEos) ?? addEos;
  if (addBos && type !== 'wpm' && special.bos === undefined)
    throw fail('bad-value', KEY.addBos, 'is true but the vocabulary has no BOS token');
  if (addEos && special.eos === undefined)
    throw fail('bad-value', KEY.addEos, 'is true but the vocabulary has no EOS token');
  if (type === 'wpm' && (special.bos === undefined || special.sep === undefined)) {
    throw fail('bad-value', 'tokenizer.ggml.cls_token_id', 'a WordPiece vocabulary needs [CLS] and [SEP] tokens');
  }

  // Tokens found by their text become control tokens (and only that: llama.cpp replaces the
  // type), so raw text never produces them.
  const markControl = (id: number) => {
    if ((attrs[id] & TokenAttr.Control) === 0) {
      warnings.push(`control-looking token ${id} ${JSON.stringify(tokens[id])} was not control-type: now it is`);
      attrs[id] = TokenAttr.Control;
    }
  };
  for (const [slot, texts] of byText) {
    if (special[slot] !== undefined) continue;
    for (const t of texts) {
      const id = tokenToId.get(t);
      if (id !== undefined) {
        special[slot] = id;
        markControl(id);
        break;
      }
    }
  }

  const eog = new Set<number>();
  for (const id of [special.fimPad, special.fimRep, special.fimSep]) if (id !== undefined) eog.add(id);
  for (const t of eogTexts) {
    const id = tokenToId.get(t);
    if (id !== undefined) {
      eog.add(id);
      markControl(id);
    }
  }
  for (const id of [special.eos, special.eot, special.eom]) if (id !== undefined) eog.add(id);

  // Matched in raw text longest first (ties: lower id first; llama.cpp leaves that order open).
  const specialTokens: number[] = [];
  for (let i = 0; i < n; i++) {
    if (attrs[i] & (TokenAttr.Control | TokenAttr.UserDefined | TokenAttr.Unknown)) specialTokens.push(i);
  }
  const byteLen = new Map(specialTokens.map((id) => [id, utf8Length(tokens[id])]));
  specialTokens.sort((a, b) => (byteLen.get(b) as number) - (byteLen.get(a) as number) || a - b);

  // Per-model attributes llama.cpp sets by name (the GGUF cannot express them yet).
  const name = (str('general.name') ?? '').toLowerCase();
  const setAttr = (id: number | undefined, bit: number, on: boolean) => {
    if (id !== undefined) attrs[id] = on ? attrs[id] | bit : attrs[id] & ~bit;
  };
  if (['jina-v2-de', 'jina-v2-es', 'jina-v2-code'].some((p) => pre.includes(p))) {
    setAttr(tokenToId.get('<mask>'), TokenAttr.LStrip, true);
  } else if (name.includes('phi-3') || name.includes('phi3')) {
    for (const id of specialTokens) setAttr(id, TokenAttr.RStrip, true);
    setAttr(tokenToId.get('</s>'), TokenAttr.RStrip, true);
    for (const t of ['<unk>', '<s>', '<|endoftext|>']) setAttr(tokenToId.get(t), TokenAttr.RStrip, false);
  }

  return {
    path,
    type,
    model,
    pre,
    tokens,
    scores,
    attrs,
    tokenToId,
    mergeRanks,
    special,
    addBos,
    addEos,
    addSpacePrefix,
    removeExtraWhitespaces,
    cleanSpaces,
    ignoreMerges,
    eog,
    specialTokens,
    maxTokenLength,
    warnings,
  };
}

function kind(v: MetadataValue | undefined): string {
  if (v === undefined) return 'nothing';
  return Array.isArray(v) ? 'an array' : typeof v;
}

function numberArray(
  v: MetadataValue,
  key: string,
  n: number,
  fail: (code: 'bad-value', key: string, detail: string) => TokenizerError,
): number[] {
  if (!Array.isArray(v)) throw fail('bad-value', key, `should be an array of numbers, found ${kind(v)}`);
  if (v.length < n) throw fail('bad-value', key, `has ${v.length} items for ${n} tokens`);
  for (let i = 0; i < n; i++) {
    if (typeof v[i] !== 'number') throw fail('bad-value', key, `item ${i} should be a number, found ${kind(v[i])}`);
  }
  return v as number[];
}
