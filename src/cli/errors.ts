// The one place where errors become what a CLI user sees: one line on stderr, the exit status
// of the error's kind (cluster/errors.ts), the stack under HERD_DEBUG for a bug.

import { errorKind, surfacesOf, type KindedError } from '../cluster/errors.ts';

export class UsageError extends Error implements KindedError {
  readonly kind = 'usage';

  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export function reportAndExit(err: unknown): never {
  const e = err instanceof Error ? err : new Error(String(err));
  process.stderr.write(`herd: error: ${e.message}\n`);
  if (errorKind(e) === 'internal' && process.env.HERD_DEBUG) process.stderr.write(`${e.stack ?? ''}\n`);
  process.exit(surfacesOf(e).exit);
}
