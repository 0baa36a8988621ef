#!/usr/bin/env node
// Compiles src/**/*.ts into plain JavaScript under dist/ (same tree, same depth, so every
// path a module finds from import.meta.url still resolves), and copies the files beside
// them that modules load at run time (kernels.wasm, the wasm worker, the dashboard). Run
// by `npm install` (the package's install script) and by `npm run build:js`.
//
// Why: bin/herd.js runs dist/ when it is up to date, plain Node with no loader. Running
// the TypeScript through tsx instead costs a loader thread and esbuild's state, about
// 31 MiB of resident memory on top of Node's 39, which a Pi holding a model slice
// needs for the model. When dist/ is missing or older than a source file, herd runs the
// sources through tsx as before, so an edited checkout never runs stale code.
//
// Each file is compiled on its own (no bundling): esbuild transpiles it and the relative
// imports are kept as imports, `.ts` rewritten to `.js`. Types are not checked here
// (`npm run typecheck` does that). Never fails the install: without esbuild, herd uses tsx.
//
// The npm package ships dist/ already compiled (the prepack step runs this) and no
// TypeScript, so installing it runs nothing here and needs neither esbuild nor tsx.

import { cpSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const srcDir = join(root, 'src');
const outDir = join(root, 'dist');
const strict = process.argv.includes('--strict');

/** Files under dir, recursively, skipping the AssemblyScript sources (compiled to the .wasm files). */
function walk(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      if (p !== join(srcDir, 'kernels', 'wasm', 'assembly')) out.push(...walk(p));
    } else out.push(p);
  }
  return out;
}

/** Keeps relative imports as imports of the compiled sibling files. */
const relativeImportsAsJs = {
  name: 'relative-imports-as-js',
  setup(build) {
    build.onResolve({ filter: /^\.\.?\// }, (args) => ({ path: args.path.replace(/\.ts$/, '.js'), external: true }));
  },
};

/** Builds into a fresh directory beside dist/, then swaps it in: a herd starting meanwhile sees the old or the new tree. */
async function main() {
  const { build } = await import('esbuild');
  const files = walk(srcDir);
  const next = `${outDir}.next`;
  rmSync(next, { recursive: true, force: true });
  await build({
    entryPoints: files.filter((f) => f.endsWith('.ts')),
    outdir: next,
    outbase: srcDir,
    bundle: true,
    packages: 'external',
    plugins: [relativeImportsAsJs],
    platform: 'node',
    format: 'esm',
    target: 'node20',
    logLevel: 'error',
  });
  for (const f of files) {
    if (/\.(wasm|mjs|html|css|js)$/.test(f)) {
      const to = join(next, relative(srcDir, f));
      mkdirSync(dirname(to), { recursive: true });
      cpSync(f, to);
    }
  }
  // Written last: bin/herd.js takes dist/ as complete and current only when this exists and
  // is newer than every source file.
  writeFileSync(join(next, 'BUILT'), `${new Date().toISOString()}\n`);
  const old = `${outDir}.old`;
  rmSync(old, { recursive: true, force: true });
  if (existsSync(outDir)) renameSync(outDir, old);
  renameSync(next, outDir);
  rmSync(old, { recursive: true, force: true });
}

if (!existsSync(join(srcDir, 'cli', 'main.ts'))) {
  // The installed package: dist/ came compiled in it.
  if (strict && !existsSync(join(outDir, 'BUILT'))) throw new Error('neither TypeScript sources nor a compiled dist/');
  process.exit(0);
}
try {
  await main();
} catch (err) {
  rmSync(`${outDir}.next`, { recursive: true, force: true });
  if (strict) throw err;
  console.log(
    `herd: could not compile the sources to dist/ (${err instanceof Error ? err.message.split('\n')[0] : err}); herd will run them through tsx`,
  );
}
if (!existsSync(join(outDir, 'BUILT')) && strict) process.exit(1);
