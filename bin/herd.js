#!/usr/bin/env node
// Entry point of the `herd` command. Runs the JavaScript that `npm install` compiled into
// dist/ (scripts/build-js.mjs) when it is newer than every source file; otherwise runs the
// TypeScript sources through tsx, so a fresh or edited checkout needs no build step. The
// npm package ships dist/ and no TypeScript: there dist/ is all there is.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

/** Newest modification time of the files under dir, in ms. */
function newest(dir) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) t = Math.max(t, statSync(`${e.parentPath ?? e.path}/${e.name}`).mtimeMs);
  }
  return t;
}

const built = `${root}dist/BUILT`;
const checkout = existsSync(`${root}src/cli/main.ts`);
if (
  !checkout ||
  (process.env.HERD_FROM_SOURCE !== '1' && existsSync(built) && statSync(built).mtimeMs >= newest(`${root}src`))
) {
  await import('../dist/cli/main.js');
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/cli/main.ts');
}
