// `herd pull REFERENCE`: fetch a GGUF model from the Hugging Face hub (or any URL) into the
// model store, resumable and checksum-verified, so `--model NAME` or `--model REFERENCE` finds it.

import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { formatBytes } from '../cluster/caps.ts';
import { HubClient } from '../models/hub.ts';
import { pull } from '../models/pull.ts';
import { defaultModelsDir, ModelStore } from '../models/store.ts';
import { ProgressRenderer } from './progress.ts';
import type { ArgsOf } from './yargs.ts';

function builder(y: Argv) {
  return y
    .positional('reference', {
      type: 'string',
      demandOption: true,
      describe:
        'hf.co/ORG/REPO[:QUANT] (default quantization Q4_K_M), hf.co/ORG/REPO/FILE.gguf, or an https URL of a .gguf file',
    })
    .option('token', {
      type: 'string',
      describe: 'Hugging Face token, for gated or private repositories (default: $HF_TOKEN)',
    })
    .option('name', {
      type: 'string',
      describe: 'Store the model under this name (default: its file name without .gguf)',
    })
    .epilog(
      'The hub is $HF_ENDPOINT (default https://huggingface.co); models go to $HERD_MODELS (default ~/.cache/herd/models). ' +
        'An interrupted pull resumes where it stopped when run again.',
    );
}

type PullArgs = ArgsOf<typeof builder>;

async function handler(args: ArgumentsCamelCase<PullArgs>): Promise<void> {
  const store = new ModelStore(defaultModelsDir());
  const bar = new ProgressRenderer(process.stderr);
  const r = await pull(args.reference, {
    store,
    hub: HubClient.fromEnv(args.token),
    name: args.name,
    progress: (file, bytes, total) => {
      if (total !== undefined) bar.update({ phase: 'fetch', stage: file, bytes, total });
    },
    note: (line) => process.stderr.write(`herd: ${line}\n`),
  });
  const m = r.model;
  const how = r.existed ? 'already stored' : r.verified ? 'sha256 verified' : 'no checksum published: not verified';
  process.stdout.write(
    `${m.name}: ${formatBytes(m.size)}${m.quant ? `, ${m.quant}` : ''} (${how}) in ${m.path}\n` +
      `run it with: herd run --model ${m.name}\n`,
  );
}

export const pullCommand: CommandModule<object, PullArgs> = {
  command: 'pull <reference>',
  describe: 'Download a GGUF model from the Hugging Face hub or a URL into the model store',
  builder,
  handler,
};
