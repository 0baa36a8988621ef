// The one error class of the tokenizer: a vocabulary that cannot be used names its file and the
// metadata key at fault, so `herd` can tell the user which model is broken and where.

export type TokenizerErrorCode =
  'missing-key' | 'bad-value' | 'unsupported-model' | 'unknown-pre' | 'duplicate-token' | 'missing-token';

export class TokenizerError extends Error {
  constructor(
    readonly code: TokenizerErrorCode,
    readonly path: string,
    readonly key: string,
    detail: string,
  ) {
    super(`${path}: ${key}: ${detail}`);
    this.name = 'TokenizerError';
  }
}
