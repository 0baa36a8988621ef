// One GGUF fuzz case again, in this process: its mutations, its file and its verdict, for
// debugging a finding (`npm run fuzz -- --seed S --gguf-case I`).

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildCorpus } from './gguf-corpus.ts';
import { checkFile, loaderRng, type Verdict } from './gguf-check.ts';
import { makeCase } from './gguf-mutate.ts';

export interface ReplayedCase {
  readonly seed: number;
  readonly index: number;
  readonly seedFile: string;
  readonly ops: readonly string[];
  readonly file: string;
  readonly verdict: Verdict;
}

export function replayGgufCase(seed: number, index: number, outDir: string): ReplayedCase {
  const scratch = mkdtempSync(join(tmpdir(), 'herd-fuzz-replay-'));
  try {
    const c = makeCase(buildCorpus(scratch), seed, index);
    mkdirSync(outDir, { recursive: true });
    const file = join(outDir, `gguf-seed${seed}-case${index}.gguf`);
    writeFileSync(file, c.bytes);
    const verdict = checkFile(file, loaderRng(seed, index));
    return { seed, index, seedFile: c.seed, ops: c.ops, file, verdict };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}
