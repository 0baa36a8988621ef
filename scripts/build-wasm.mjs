#!/usr/bin/env node
// Rebuilds src/kernels/wasm/kernels.wasm from the AssemblyScript sources in
// src/kernels/wasm/assembly/ (`npm run build:wasm`). The .wasm is committed so a Pi needs
// only Node at run time; test/kernels-wasm.test.ts checks that it equals a fresh build.
//
//   node scripts/build-wasm.mjs              write src/kernels/wasm/kernels.wasm
//   node scripts/build-wasm.mjs --out FILE   write FILE instead (used by the test)
//
// The flags are the module's contract with src/kernels/wasm/backend.ts: memory is imported
// ("env"."memory"), shared (so worker threads instantiate the module on the same bytes),
// up to the 65536 pages (4 GiB) wasm32 can address; nothing else is imported, since the
// stub runtime never allocates and assertions and abort() are compiled out.

import asc from 'assemblyscript/asc';
import { fileURLToPath } from 'node:url';
import { relative, resolve } from 'node:path';

const root = fileURLToPath(new URL('..', import.meta.url));
const entry = 'src/kernels/wasm/assembly/index.ts';
const outIndex = process.argv.indexOf('--out');
const out = outIndex > 0 ? relative(root, process.argv[outIndex + 1]) : 'src/kernels/wasm/kernels.wasm';

export const ascFlags = [
  '--enable', 'simd',
  '--enable', 'threads',
  '--optimizeLevel', '3',
  '--shrinkLevel', '0',
  '--noAssert',
  '--runtime', 'stub',
  '--use', 'abort=',
  '--importMemory',
  '--noExportMemory',
  '--sharedMemory',
  '--initialMemory', '1',
  '--maximumMemory', '65536',
];

const { error, stderr } = await asc.main([entry, '--baseDir', root, '--outFile', out, ...ascFlags]);
if (error) {
  process.stderr.write(stderr.toString());
  process.stderr.write(`build-wasm: ${error.message}\n`);
  process.exit(1);
}
console.log(`build-wasm: wrote ${resolve(root, out)}`);
