// The tokenizer of a GGUF model, with llama.cpp's behaviour (commit c392e509) as the contract:
// the same ids for the same text, the same text for the same ids.

import type { GgufFile } from '../gguf/reader.ts';
import { BpeTokenizer } from './bpe.ts';
import { PieceTable, TextStream, bytesToText, detokenize, type DetokenizeOptions } from './decode.ts';
import { partitionSpecial, type TextRange } from './partition.ts';
import { SpmTokenizer } from './spm.ts';
import { toWellFormed } from './unicode.ts';
import { loadVocab, type Vocab, type VocabSource } from './vocab.ts';
import { WpmTokenizer } from './wpm.ts';

export interface EncodeOptions {
  /** Add BOS/EOS (WordPiece: [CLS]/[SEP]) as the vocabulary asks. Default true. */
  addSpecial?: boolean;
  /** Turn the text of control tokens ("<s>", "<|im_end|>") into their ids. Default false. */
  parseSpecial?: boolean;
  /**
   * With parseSpecial: spans of the text ([start, end) in UTF-16 units) where control-token text
   * stays text — the user's parts of a rendered chat template.
   */
  plain?: readonly TextRange[];
}

export class Tokenizer {
  private readonly spm?: SpmTokenizer;
  private readonly bpe?: BpeTokenizer;
  private readonly wpm?: WpmTokenizer;
  private readonly pieces: PieceTable;

  constructor(readonly vocab: Vocab) {
    if (vocab.type === 'spm') this.spm = new SpmTokenizer(vocab);
    else if (vocab.type === 'bpe') this.bpe = new BpeTokenizer(vocab);
    else this.wpm = new WpmTokenizer(vocab);
    this.pieces = new PieceTable(vocab);
  }

  /** The tokenizer of a GgufFile (or of anything carrying its path and metadata). */
  static fromGguf(file: GgufFile | VocabSource): Tokenizer {
    return new Tokenizer(loadVocab(file));
  }

  get vocabSize(): number {
    return this.vocab.tokens.length;
  }

  get bos(): number | undefined {
    return this.vocab.special.bos;
  }

  get eos(): number | undefined {
    return this.vocab.special.eos;
  }

  /** True for every token that ends generation (EOS, EOT, EOM, end-of-turn tokens). */
  isEog(id: number): boolean {
    return this.vocab.eog.has(id);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const addSpecial = opts.addSpecial ?? true;
    const { vocab } = this;
    const { special } = vocab;
    const out: number[] = [];
    const frags = partitionSpecial(vocab, toWellFormed(text), opts.parseSpecial ?? false, opts.plain);

    if (this.spm) {
      if (addSpecial && vocab.addBos) out.push(special.bos as number);
      // Each run of text after a special token (or at the start) gets the space prefix.
      let afterSpecial = true;
      for (const f of frags) {
        if (f.id !== undefined) {
          out.push(f.id);
          afterSpecial = true;
        } else {
          this.spm.encode(vocab.addSpacePrefix && afterSpecial ? ` ${f.text}` : f.text, out);
          afterSpecial = false;
        }
      }
      if (addSpecial && vocab.addEos) out.push(special.eos as number);
    } else if (this.bpe) {
      if (addSpecial && vocab.addBos) out.push(special.bos as number);
      for (const f of frags) {
        if (f.id !== undefined) out.push(f.id);
        else this.bpe.encode(f.text, out);
      }
      if (addSpecial && vocab.addEos) out.push(special.eos as number);
    } else if (this.wpm) {
      if (addSpecial) out.push(special.bos as number);
      for (const f of frags) {
        if (f.id !== undefined) out.push(f.id);
        else this.wpm.encode(f.text, out);
      }
      if (addSpecial) out.push(special.sep as number);
    }
    return out;
  }

  /**
   * llama_detokenize: the text of a sequence of ids. The SPM space before the first word is
   * removed (a BOS in front keeps it, as in llama.cpp); control tokens vanish unless
   * `unparseSpecial`.
   */
  decode(ids: readonly number[], opts: DetokenizeOptions = {}): string {
    return bytesToText(detokenize(this.vocab, this.pieces, ids, opts));
  }

  /**
   * The text of one token: byte tokens are their byte (alone, not a whole character, so it shows
   * as U+FFFD), SPM's ▁ is a space. Control tokens show their text unless `special` is false.
   */
  piece(id: number, opts: { special?: boolean } = {}): string {
    return bytesToText(this.pieces.bytes(id, opts.special ?? true));
  }

  /** The raw bytes of one token's piece. */
  pieceBytes(id: number, opts: { special?: boolean } = {}): Uint8Array {
    return this.pieces.bytes(id, opts.special ?? true);
  }

  /**
   * A streaming decoder for generated ids: concatenated pieces, as llama.cpp's examples print
   * them, emitted only in whole characters. Control tokens print nothing unless `special`.
   */
  stream(opts: { special?: boolean } = {}): TextStream {
    return new TextStream(this.pieces, opts.special ?? false);
  }
}
