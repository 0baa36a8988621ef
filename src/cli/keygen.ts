// `herd keygen`: a new cluster key (256 random bits as hex), on stdout or into a new file only
// its owner can read. Every machine of a herd needs the same key (--cluster-key-file).

import { writeFileSync } from 'node:fs';
import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { generateClusterKey } from '../cluster/key.ts';
import { UsageError } from './errors.ts';
import type { ArgsOf } from './yargs.ts';

function builder(y: Argv) {
  return y.option('out', {
    alias: 'o',
    type: 'string',
    describe: 'Write the key to this new file (mode 0600) instead of stdout',
  });
}

type KeygenArgs = ArgsOf<typeof builder>;

function handler(args: ArgumentsCamelCase<KeygenArgs>): void {
  const key = `${generateClusterKey()}\n`;
  if (args.out === undefined) {
    process.stdout.write(key);
    return;
  }
  try {
    // 'wx': never overwrite a key a herd may already use.
    writeFileSync(args.out, key, { mode: 0o600, flag: 'wx' });
  } catch (e) {
    throw new UsageError(`cannot write the key file ${args.out}: ${(e as Error).message}`);
  }
  process.stderr.write(`herd: wrote a new cluster key to ${args.out}: copy it to every machine of the herd\n`);
}

export const keygenCommand: CommandModule<object, KeygenArgs> = {
  command: 'keygen',
  describe: 'Make a new cluster key (256 bits)',
  builder,
  handler,
};
