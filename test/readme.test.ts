// The README's CLI reference is `herd --help`, kept in sync: every command has a section whose
// table lists exactly the long options its --help lists.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { herd } from './helpers/herd.ts';
import { repoRoot } from './helpers/paths.ts';

const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');

/** Long options of a --help text: `  -m, --model …` or `      --json …` at the start of a line. */
function helpOptions(help: string): string[] {
  const out = new Set<string>();
  for (const m of help.matchAll(/^ {2,6}(?:-\w, +)?--([a-z][a-z0-9-]*)/gm)) out.add(`--${m[1]}`);
  for (const builtin of ['--help', '--version']) out.delete(builtin);
  return [...out].sort();
}

/** The README section `### \`herd CMD …\``: the long options in the first column of its table. */
function readmeOptions(cmd: string): string[] | undefined {
  const head = new RegExp(`^### \`herd ${cmd}(?: [^\`]*)?\`$`, 'm').exec(readme);
  if (!head) return undefined;
  const rest = readme.slice(head.index + head[0].length);
  const end = rest.search(/^#{2,3} /m);
  const section = end < 0 ? rest : rest.slice(0, end);
  const out = new Set<string>();
  for (const row of section
    .split('\n')
    .filter((l) => l.startsWith('| ') && !l.startsWith('| ---') && !l.startsWith('| option'))) {
    const first = row.split(' | ')[0];
    // `--no-bos` documents yargs' boolean `--bos` (default true).
    for (const m of first.matchAll(/--(?:no-)?([a-z][a-z0-9-]*)/g)) out.add(`--${m[1]}`);
  }
  return [...out].sort();
}

test('every command of `herd --help` has a README section listing exactly its options', async (t) => {
  const top = await herd(['--help']);
  t.is(top.code, 0);
  const commands = [...top.stdout.matchAll(/^ {2}herd ([a-z]+)/gm)].map((m) => m[1]);
  t.true(commands.includes('serve') && commands.includes('chat'), commands.join(' '));
  const helps = await Promise.all(commands.map((c) => herd([c, '--help'])));
  for (const [i, cmd] of commands.entries()) {
    const documented = readmeOptions(cmd);
    t.truthy(documented, `README has no "### \`herd ${cmd}\`" section`);
    if (!documented) continue;
    const actual = helpOptions(helps[i].stdout);
    t.true(actual.length > 0, `herd ${cmd} --help lists options`);
    t.deepEqual(
      {
        cmd,
        missingFromReadme: actual.filter((o) => !documented.includes(o)),
        notInHelp: documented.filter((o) => !actual.includes(o)),
      },
      { cmd, missingFromReadme: [], notInHelp: [] },
    );
  }
});
