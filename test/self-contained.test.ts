// A clone in an empty folder must run every test, benchmark and script: nothing may read a
// file beside the repository (a folder of data next to a developer's checkout is in nobody's clone).
// Every relative path literal in src/, test/, scripts/, bin/ and .ci/ must resolve inside the
// repository from the file that holds it.

import test from 'ava';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { repoRoot } from './helpers/paths.ts';

const ROOTS = ['src', 'test', 'scripts', 'bin', '.ci'];
const SKIP = new Set(['node_modules', 'fixtures', 'proto']);
const TEXT = /\.(ts|mts|mjs|js|cjs|sh|c|h|py|json|yaml)$|^run$/;

function* files(dir: string): Generator<string> {
  for (const entry of readdirSync(dir)) {
    if (SKIP.has(entry)) continue;
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) yield* files(path);
    else if (TEXT.test(entry)) yield path;
  }
}

/** Quoted literals that start with ../ (a path relative to the file, or to a URL of it). */
const RELATIVE = /['"`]((?:\.\.\/)+[^'"`$\s]*)['"`]/g;
/** Paths of the developers' machines, and the shared folder by any route. */
const FORBIDDEN = /\.\.\/shared\b|\/work\/(shared|main)\b|\bshared\/(models|vocab)\b/;

test('no source, test, script or CI file reads a path outside the repository', (t) => {
  const root = resolve(repoRoot);
  const outside: string[] = [];
  let scanned = 0;
  for (const top of ROOTS) {
    for (const file of files(join(root, top))) {
      scanned++;
      const lines = readFileSync(file, 'utf8').split('\n');
      lines.forEach((line, i) => {
        const where = `${relative(root, file)}:${i + 1}`;
        if (FORBIDDEN.test(line)) outside.push(`${where}: ${line.trim()}`);
        for (const m of line.matchAll(RELATIVE)) {
          const target = resolve(dirname(file), m[1]);
          if (target !== root && !target.startsWith(root + sep))
            outside.push(`${where}: ${m[1]} leaves the repository`);
        }
      });
    }
  }
  t.true(scanned > 100, `scanned only ${scanned} files`);
  t.deepEqual(outside, []);
});
