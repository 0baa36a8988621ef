// The `herd` command line: one yargs program, one module per command.

import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { runCommand } from './run.ts';
import { tokenizeCommand } from './tokenize.ts';
import { quantizeCommand } from './quantize.ts';
import { synthCommand } from './synth.ts';
import { nodeCommand } from './node.ts';
import { nodesCommand } from './nodes.ts';
import { planCommand } from './plan.ts';
import { serveCommand } from './serve.ts';
import { chatCommand } from './chat.ts';
import { reportAndExit, UsageError } from './errors.ts';

await yargs(hideBin(process.argv))
  .scriptName('herd')
  .usage('$0 <command> [options]\n\nRun GGUF language models on one machine or a herd of small ones.')
  .command(runCommand)
  .command(tokenizeCommand)
  .command(quantizeCommand)
  .command(synthCommand)
  .command(nodeCommand)
  .command(nodesCommand)
  .command(planCommand)
  .command(serveCommand)
  .command(chatCommand)
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
