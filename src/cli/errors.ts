// The one place where errors become what a CLI user sees: one line on stderr, a non-zero exit.

import { GgufError } from '../gguf/reader.ts';
import { ModelError } from '../model/config.ts';
import { KernelError } from '../kernels/matvec.ts';
import { ContextError } from '../engine/generate.ts';
import { SamplingError } from '../engine/sampler.ts';
import { ClusterError } from '../cluster/errors.ts';

/** Errors whose message is already a complete sentence for the user. */
const userFacing = [GgufError, ModelError, KernelError, ContextError, SamplingError, ClusterError];

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export function reportAndExit(err: unknown): never {
  const e = err instanceof Error ? err : new Error(String(err));
  const known = e instanceof UsageError || userFacing.some((cls) => e instanceof cls) || e.name === 'TokenizerError';
  process.stderr.write(`herd: error: ${e.message}\n`);
  if (!known && process.env.HERD_DEBUG) process.stderr.write(`${e.stack ?? ''}\n`);
  process.exit(e instanceof UsageError ? 2 : 1);
}
