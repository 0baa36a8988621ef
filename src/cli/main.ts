// The `herd` command line: one yargs program, one module per command.

import type { Argv } from 'yargs';
import { reportAndExit, UsageError } from './errors.ts';
import { createYargs } from './yargs.ts';

// Each command's module is imported only when it runs: `herd run` on a Pi then never loads
// gRPC, mDNS, prom-client or the API server, whose modules cost tens of MiB of memory the
// model slice needs. A line without a known command first (--help, a typo) loads them all.
const commands: Record<string, (program: Argv) => Promise<unknown>> = {
  run: async (p) => p.command((await import('./run.ts')).runCommand),
  tokenize: async (p) => p.command((await import('./tokenize.ts')).tokenizeCommand),
  quantize: async (p) => p.command((await import('./quantize.ts')).quantizeCommand),
  synth: async (p) => p.command((await import('./synth.ts')).synthCommand),
  node: async (p) => p.command((await import('./node.ts')).nodeCommand),
  nodes: async (p) => p.command((await import('./nodes.ts')).nodesCommand),
  plan: async (p) => p.command((await import('./plan.ts')).planCommand),
  serve: async (p) => p.command((await import('./serve.ts')).serveCommand),
  chat: async (p) => p.command((await import('./chat.ts')).chatCommand),
  keygen: async (p) => p.command((await import('./keygen.ts')).keygenCommand),
  pull: async (p) => p.command((await import('./pull.ts')).pullCommand),
  models: async (p) => p.command((await import('./models.ts')).modelsCommand),
};
// What follows `node bin/herd.js` (yargs' hideBin, which would load its help renderer).
const argv = process.argv.slice(2);
const named = Object.hasOwn(commands, argv[0] ?? '') ? [commands[argv[0]]] : Object.values(commands);
const program = await createYargs(argv);
for (const register of named) await register(program);

await program
  .scriptName('herd')
  .usage('$0 <command> [options]\n\nRun GGUF language models on one machine or a herd of small ones.')
  .demandCommand(1, 'Name a command (see --help).')
  .strict()
  .help()
  .alias('h', 'help')
  .version()
  .wrap(Math.min(100, process.stdout.columns ?? 100))
  .fail((msg, err) => {
    reportAndExit(err ?? new UsageError(msg));
  })
  .parseAsync();
