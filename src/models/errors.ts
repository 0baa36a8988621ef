// Errors of the model store and of `herd pull`, each with the kind that says what it means on
// the CLI (cluster/errors.ts maps kinds to exit codes): a reference the user mistyped or has not
// pulled is `usage`, a hub that refuses the token `auth`, a download that fails its checksum or
// is not a GGUF file `file`, a hub or host that cannot be reached `unavailable`.

import type { ErrorKind, KindedError } from '../cluster/errors.ts';

export class ModelStoreError extends Error implements KindedError {
  constructor(
    readonly kind: ErrorKind,
    message: string,
  ) {
    super(message);
    this.name = 'ModelStoreError';
  }
}
