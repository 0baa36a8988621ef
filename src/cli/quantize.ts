// `herd quantize`: rewrite a model's weights in another type, like llama-quantize.

import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { QUANT_TARGETS, quantizeFile } from '../model/quantize.ts';
import { resolveModelPath } from './model-path.ts';
import { UsageError } from './errors.ts';
import type { ArgsOf } from './yargs.ts';

function builder(y: Argv) {
  return y
    .positional('input', { type: 'string', demandOption: true, describe: 'GGUF model to read' })
    .positional('output', { type: 'string', demandOption: true, describe: 'GGUF file to write' })
    .option('type', { choices: QUANT_TARGETS, demandOption: true, describe: 'Target type or K-quant mix' });
}

type QuantizeArgs = ArgsOf<typeof builder>;

function handler(args: ArgumentsCamelCase<QuantizeArgs>): void {
  const input = resolveModelPath(args.input);
  if (args.output === input) throw new UsageError('the output must be another file than the input');
  const t0 = performance.now();
  const r = quantizeFile(input, args.output, args.type);
  const counts = new Map<string, number>();
  for (const t of r.tensors) counts.set(`${t.from}→${t.to}`, (counts.get(`${t.from}→${t.to}`) ?? 0) + 1);
  const summary = [...counts].map(([k, n]) => `${n}× ${k}`).join(', ');
  process.stderr.write(
    `herd: wrote ${args.output} (${(r.written.fileSize / 2 ** 20).toFixed(1)} MiB) in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${summary}\n`,
  );
}

export const quantizeCommand: CommandModule<object, QuantizeArgs> = {
  command: 'quantize <input> <output>',
  describe: 'Rewrite a GGUF model with its weights in another type',
  builder,
  handler,
};
