// `herd tokenize`: the token ids a model's tokenizer gives a text.

import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { GgufFile } from '../gguf/reader.ts';
import { Tokenizer } from '../tokenizer/index.ts';
import { resolveModelPath } from './model-path.ts';
import type { ArgsOf } from './yargs.ts';

function builder(y: Argv) {
  return y
    .positional('text', { type: 'string', default: '', describe: 'Text to tokenize' })
    .option('model', {
      alias: 'm',
      type: 'string',
      describe: 'GGUF file with a vocabulary (default: the bundled stories260K)',
    })
    .option('bos', {
      type: 'boolean',
      default: true,
      describe: 'Add BOS/EOS as the vocabulary asks (--no-bos: add none)',
    })
    .option('special', {
      type: 'boolean',
      default: false,
      describe: 'Parse special-token text such as <s> into its id',
    })
    .option('json', { type: 'boolean', default: false, describe: 'Print a JSON array of ids' });
}

type TokenizeArgs = ArgsOf<typeof builder>;

function handler(args: ArgumentsCamelCase<TokenizeArgs>): void {
  const tokenizer = Tokenizer.fromGguf(GgufFile.open(resolveModelPath(args.model)));
  const ids = tokenizer.encode(args.text, { addSpecial: args.bos, parseSpecial: args.special });
  if (args.json) {
    process.stdout.write(`${JSON.stringify(ids)}\n`);
  } else {
    for (const id of ids) process.stdout.write(`${id}\t${JSON.stringify(tokenizer.piece(id))}\n`);
  }
}

export const tokenizeCommand: CommandModule<object, TokenizeArgs> = {
  command: 'tokenize [text]',
  describe: 'Print the token ids of TEXT',
  builder,
  handler,
};
