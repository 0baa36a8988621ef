#!/usr/bin/env node
// Rebuilds the wasm kernels from the AssemblyScript sources in src/kernels/wasm/assembly/
// (`npm run build:wasm`): kernels.wasm (SIMD128) and kernels-relaxed.wasm (SIMD128 and
// relaxed SIMD, the same source with ASC_FEATURE_RELAXED_SIMD set). Both are committed so a
// Pi needs only Node at run time; test/kernels-backends.test.ts checks they equal a fresh build.
//
//   node scripts/build-wasm.mjs              write both into src/kernels/wasm/
//   node scripts/build-wasm.mjs --out DIR    write them into DIR instead (used by the test)
//
// The flags are the module's contract with src/kernels/wasm/backend.ts: memory is imported
// ("env"."memory"), shared (so worker threads instantiate the module on the same bytes),
// up to the 65536 pages (4 GiB) wasm32 can address; nothing else is imported, since the
// stub runtime never allocates and assertions and abort() are compiled out.
//
// The ggml type ids the kernels dispatch on come from src/ggml/types.ts, the one table of
// them, as compile-time constants (asc --use GGML_TYPE_Q4_0=2 …): the AssemblyScript
// declares none.

import asc from 'assemblyscript/asc';
import { tsImport } from 'tsx/esm/api';
import { fileURLToPath } from 'node:url';
import { join, relative, resolve } from 'node:path';

const root = fileURLToPath(new URL('..', import.meta.url));
const entry = 'src/kernels/wasm/assembly/index.ts';
const outIndex = process.argv.indexOf('--out');
const outDir = outIndex > 0 ? relative(root, process.argv[outIndex + 1]) : 'src/kernels/wasm';

export const ascFlags = [
  '--enable',
  'simd',
  '--enable',
  'threads',
  '--optimizeLevel',
  '3',
  '--shrinkLevel',
  '0',
  '--noAssert',
  '--runtime',
  'stub',
  '--use',
  'abort=',
  '--importMemory',
  '--noExportMemory',
  '--sharedMemory',
  '--initialMemory',
  '1',
  '--maximumMemory',
  '65536',
];

const { GgmlType } = await tsImport('../src/ggml/types.ts', import.meta.url);
const typeFlags = Object.entries(GgmlType).flatMap(([name, id]) => ['--use', `GGML_TYPE_${name}=${id}`]);

const builds = [
  { file: 'kernels.wasm', flags: [] },
  { file: 'kernels-relaxed.wasm', flags: ['--enable', 'relaxed-simd'] },
];

for (const { file, flags } of builds) {
  const out = join(outDir, file);
  const { error, stderr } = await asc.main([
    entry,
    '--baseDir',
    root,
    '--outFile',
    out,
    ...ascFlags,
    ...typeFlags,
    ...flags,
  ]);
  if (error) {
    process.stderr.write(stderr.toString());
    process.stderr.write(`build-wasm: ${file}: ${error.message}\n`);
    process.exit(1);
  }
  console.log(`build-wasm: wrote ${resolve(root, out)}`);
}
