#!/usr/bin/env node
// Rebuilds the wasm kernels from the AssemblyScript sources in src/kernels/wasm/assembly/
// (`npm run build:wasm`): kernels.wasm (SIMD128) and kernels-relaxed.wasm (SIMD128 and
// relaxed SIMD, the same source with ASC_FEATURE_RELAXED_SIMD set). Both are committed so a
// Pi needs only Node at run time; test/kernels-wasm.test.ts checks they equal a fresh build.
//
//   node scripts/build-wasm.mjs              write both into src/kernels/wasm/
//   node scripts/build-wasm.mjs --out DIR    write them into DIR instead (used by the test)
//
// The flags are the module's contract with src/kernels/wasm/backend.ts: memory is imported
// ("env"."memory"), shared (so worker threads instantiate the module on the same bytes),
// up to the 65536 pages (4 GiB) wasm32 can address; nothing else is imported, since the
// stub runtime never allocates and assertions and abort() are compiled out.

import asc from 'assemblyscript/asc';
import { fileURLToPath } from 'node:url';
import { join, relative, resolve } from 'node:path';

const root = fileURLToPath(new URL('..', import.meta.url));
const entry = 'src/kernels/wasm/assembly/index.ts';
const outIndex = process.argv.indexOf('--out');
const outDir = outIndex > 0 ? relative(root, process.argv[outIndex + 1]) : 'src/kernels/wasm';

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

const builds = [
  { file: 'kernels.wasm', flags: [] },
  { file: 'kernels-relaxed.wasm', flags: ['--enable', 'relaxed-simd'] },
];

for (const { file, flags } of builds) {
  const out = join(outDir, file);
  const { error, stderr } = await asc.main([entry, '--baseDir', root, '--outFile', out, ...ascFlags, ...flags]);
  if (error) {
    process.stderr.write(stderr.toString());
    process.stderr.write(`build-wasm: ${file}: ${error.message}\n`);
    process.exit(1);
  }
  console.log(`build-wasm: wrote ${resolve(root, out)}`);
}
