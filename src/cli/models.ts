// `herd models`: what `herd pull` stored (name, size, quantization, source); `herd models rm
// NAME` deletes one.

import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { formatBytes } from '../cluster/caps.ts';
import { defaultModelsDir, ModelStore } from '../models/store.ts';
import { writeTable } from './table.ts';
import type { ArgsOf } from './yargs.ts';

function rmBuilder(y: Argv) {
  return y.positional('name', { type: 'string', demandOption: true, describe: 'The stored model to delete' });
}

const rmCommand: CommandModule<object, ArgsOf<typeof rmBuilder>> = {
  command: 'rm <name>',
  describe: 'Delete a stored model',
  builder: rmBuilder,
  // async: a thrown error reaches yargs' fail handler (errors.ts) instead of escaping the parse.
  handler: async (args) => {
    const m = new ModelStore(defaultModelsDir()).remove(args.name);
    process.stdout.write(`deleted ${m.name} (${formatBytes(m.size)})\n`);
  },
};

function builder(y: Argv) {
  return y
    .command(rmCommand)
    .option('json', { type: 'boolean', default: false, global: false, describe: 'Print one JSON array' })
    .epilog('The store is $HERD_MODELS (default ~/.cache/herd/models).');
}

type ModelsArgs = ArgsOf<typeof builder>;

async function handler(args: ArgumentsCamelCase<ModelsArgs>): Promise<void> {
  const store = new ModelStore(defaultModelsDir());
  const models = store.list();
  if (args.json) {
    process.stdout.write(
      `${JSON.stringify(
        models.map((m) => ({
          name: m.name,
          path: m.path,
          size: m.size,
          quant: m.quant ?? null,
          source: m.source,
          pulled_as: m.pulledAs,
          references: m.references,
          sha256: m.sha256,
          pulled_at: m.pulledAt,
        })),
      )}\n`,
    );
    return;
  }
  if (models.length === 0) {
    process.stdout.write(`no models in ${store.dir}: herd pull hf.co/ORG/REPO[:QUANT] fetches one\n`);
    return;
  }
  const rows = [
    ['NAME', 'SIZE', 'QUANT', 'SOURCE'],
    ...models.map((m) => [m.name, formatBytes(m.size), m.quant ?? '-', m.pulledAs]),
  ];
  writeTable(rows);
}

export const modelsCommand: CommandModule<object, ModelsArgs> = {
  command: 'models',
  describe: 'List the models herd pull stored (herd models rm NAME deletes one)',
  builder,
  handler,
};
