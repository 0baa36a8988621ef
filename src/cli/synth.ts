// `herd synth`: a random-weight model of a real shape, to try herd (or a cluster) with no download.

import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { SYNTH_SHAPES, synthShape, type SynthShape } from '../model/synth.ts';
import { QUANT_TARGETS } from '../model/quantize.ts';
import { UsageError } from './errors.ts';
import type { ArgsOf } from './yargs.ts';

function builder(y: Argv) {
  return y
    .option('shape', {
      choices: Object.keys(SYNTH_SHAPES) as SynthShape[],
      demandOption: true,
      describe: 'Model shape (TinyLlama-1.1B or Llama-2-7B)',
    })
    .option('type', {
      choices: QUANT_TARGETS,
      default: 'q4_0',
      describe: 'Weight type, chosen per tensor as llama-quantize does',
    })
    .option('seed', { type: 'number', default: 1, describe: 'Random seed; the same seed writes the same file' })
    .option('out', { alias: 'o', type: 'string', demandOption: true, describe: 'GGUF file to write' });
}

type SynthArgs = ArgsOf<typeof builder>;

function handler(args: ArgumentsCamelCase<SynthArgs>): void {
  if (!Number.isInteger(args.seed) || args.seed < 0)
    throw new UsageError(`--seed must be an integer >= 0, got ${args.seed}`);
  const t0 = performance.now();
  const m = synthShape(args.shape, args.type, args.seed, args.out);
  process.stderr.write(
    `herd: wrote ${m.path}: ${args.shape} ${args.type}, ${m.nLayers} layers, dim ${m.dim}, ` +
      `${(m.fileSize / 2 ** 20).toFixed(1)} MiB in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`,
  );
}

export const synthCommand: CommandModule<object, SynthArgs> = {
  command: 'synth',
  describe: 'Write a random-weight llama model of a real shape (TinyLlama, Llama-2-7B)',
  builder,
  handler,
};
