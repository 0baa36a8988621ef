// Tokenizers built from GGUF metadata, matching llama.cpp (SPM, GPT-2 BPE, WordPiece).

export { Tokenizer, type EncodeOptions } from './tokenizer.ts';
export { TextStream, type DetokenizeOptions } from './decode.ts';
export { loadVocab, TokenAttr, type Vocab, type VocabType, type SpecialIds, type VocabSource } from './vocab.ts';
export { PRE_TOKENIZERS, type PreTokenizerSpec } from './pretokenize.ts';
export { TokenizerError, type TokenizerErrorCode } from './errors.ts';
