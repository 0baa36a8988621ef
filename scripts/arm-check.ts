// The native and wasm kernel checks of test/kernels-backends.test.ts, split so that they
// can run on an emulated arm64 or armv7 Node
// (scripts/test-arm.sh): the slow parts (the js reference quantizers and products, the js
// greedy run) happen once on the host, the native and wasm parts under qemu against what
// the host wrote.
//
//   npx tsx scripts/arm-check.ts fixtures FILE [MODEL…]   host: write cases and js results
//   node arm-check.mjs check FILE [native] [wasm]           target (bundled): run the backends
//
// The bundle finds the .wasm files and worker.mjs next to itself (backend.ts resolves them
// against import.meta.url), so copy src/kernels/wasm/{*.wasm,worker.mjs} beside it.
// check prints one "ok …" / "not ok …" line per check and a closing "# ARCH BACKENDS: N ok,
// M not ok" comment (test-arm.sh counts the lines of every run), and exits 1 on any
// failure. The tolerance, for both backends, is the backend test's: (k + 4)·2⁻²⁴·Σ|terms| per
// output (see its header).

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { rowBytes, ggmlTypeInfo, type GgmlTypeInfo } from '../src/ggml/types.ts';
import { JsBackend, type KernelBackend } from '../src/kernels/backend.ts';
import { makeWeight } from '../src/kernels/matvec.ts';
import { kernelType, supportedTypes } from '../src/kernels/types.ts';
import { NativeBackend } from '../src/kernels/native/index.ts';
import { WasmBackend, relaxedSimdAvailable, type WasmSimd } from '../src/kernels/wasm/backend.ts';
import { edgeVector, randomVector, rng } from '../test/helpers/kernel-inputs.ts';
import { summationBounds } from '../test/helpers/kernel-bounds.ts';
import { greedy, GREEDY_PROMPT } from '../test/helpers/greedy.ts';
import { activationMismatches, matmulMismatches, type Preparing } from '../test/helpers/kernel-checks.ts';
import { GgufFile } from '../src/gguf/reader.ts';
import { Transformer } from '../src/model/transformer.ts';

interface Case {
  type: number;
  rows: number;
  cols: number;
  w: string; // base64 weight bytes
  x: number[];
  want: number[];
  bound: number[];
}

interface Fixtures {
  cases: Case[];
  activations: number[][];
  greedy: { model: string; tokens: number[] }[];
}

function fixtures(file: string, models: string[]): void {
  const js = new JsBackend();
  const cases: Case[] = [];
  for (const info of supportedTypes) {
    const colsList = info.blockSize === 1 ? [7, 96, 2080] : info.blockSize === 32 ? [96, 2080] : [256, 2816];
    for (const rows of [1, 7, 33]) {
      for (const cols of colsList) {
        const seed = rows * 7919 + cols;
        const kernel = kernelType(info.id)!;
        const rb = rowBytes(info, cols);
        const src = randomVector(rows * cols, rng(seed));
        const bytes = new Uint8Array(rows * rb);
        for (let r = 0; r < rows; r++) kernel.quantizeRow(src, r * cols, cols, bytes, r * rb);
        const w = makeWeight('w', info, [cols, rows], bytes);
        const x = randomVector(cols, rng(seed + 1));
        const want = new Float32Array(rows);
        js.matvec(w, x, want);
        cases.push({
          type: info.id,
          rows,
          cols,
          w: Buffer.from(bytes).toString('base64'),
          x: Array.from(x),
          want: Array.from(want),
          bound: Array.from(summationBounds(w, x)),
        });
      }
    }
  }
  // The backend test's activation inputs: the quantizers' edges, negated, and random ones.
  const next = rng(7);
  const edge = edgeVector(next);
  const activations = [
    edge,
    edge.map((v) => -v),
    randomVector(2048, next),
    randomVector(256, next).map((v) => v * 1000),
    randomVector(2080, next),
  ].map((a) => Array.from(a));
  const greedyRefs = models.map((model) => ({
    model,
    tokens: greedy(Transformer.load(GgufFile.open(model), { kvType: 'f32' }), GREEDY_PROMPT, 64),
  }));
  writeFileSync(file, JSON.stringify({ cases, activations, greedy: greedyRefs } satisfies Fixtures));
  console.log(`wrote ${cases.length} cases and ${greedyRefs.length} greedy references to ${file}`);
}

type Report = (ok: boolean, what: string) => void;

/** The backends under test: NativeBackend and WasmBackend both prepare activations too. */
type Backend = KernelBackend & Preparing;

/** Every fixture product on `backend`, each output within the case's f32 summation bound. */
function checkProducts(report: Report, label: string, backend: Backend, fx: Fixtures): void {
  const bad: string[] = [];
  for (const c of fx.cases) {
    const info: GgmlTypeInfo = ggmlTypeInfo(c.type)!;
    const bytes = Buffer.from(c.w, 'base64');
    const data = backend.alloc(bytes.length);
    data.set(bytes);
    const w = makeWeight(`${info.name}[${c.rows}×${c.cols}]`, info, [c.cols, c.rows], data);
    const got = new Float32Array(c.rows);
    try {
      backend.matvec(w, Float32Array.from(c.x), got);
    } catch (err) {
      bad.push(`${w.name}: ${(err as Error).message}`);
      continue;
    }
    for (let r = 0; r < c.rows; r++) {
      const err = Math.abs(got[r] - c.want[r]);
      if (!(err <= c.bound[r]))
        bad.push(`${w.name} row ${r}: ${backend.name} ${got[r]} js ${c.want[r]} |Δ| ${err} > ${c.bound[r]}`);
    }
  }
  report(
    bad.length === 0,
    `${label}, ${backend.threads} thread(s): ${fx.cases.length} products of every type within the f32 summation bound${bad.length ? `\n  ${bad.slice(0, 5).join('\n  ')}` : ''}`,
  );
}

/** The activations the backend prepares, bit for bit those of activation.ts. */
function checkActivations(report: Report, label: string, backend: Backend, fx: Fixtures): void {
  for (const values of fx.activations) {
    const bad = activationMismatches(backend, Float32Array.from(values));
    report(
      bad.length === 0,
      `${label}: activations of ${values.length} values bit-identical to activation.ts${bad.length ? `\n  ${bad.join('\n  ')}` : ''}`,
    );
  }
}

/** The host's 64 greedy tokens of every fixture model, generated on `backend`. */
function checkGreedy(report: Report, label: string, backend: Backend, fx: Fixtures): void {
  for (const g of fx.greedy) {
    const what = `${label}, ${backend.threads} thread(s): ${g.model.slice(g.model.lastIndexOf('/') + 1)}: 64 greedy tokens equal to the js backend's`;
    try {
      const got = greedy(Transformer.load(GgufFile.open(g.model), { backend, kvType: 'f32' }), GREEDY_PROMPT, 64);
      const same = got.join() === g.tokens.join();
      report(same, same ? what : `${what}\n  got  ${got.join(', ')}\n  want ${g.tokens.join(', ')}`);
    } catch (err) {
      report(false, `${what}\n  ${(err as Error).message}`);
    }
  }
}

async function checkNative(report: Report, fx: Fixtures): Promise<void> {
  const isas = NativeBackend.isas();
  console.log(`# ${process.arch}, native paths: ${isas.join(', ')}`);
  for (const isa of isas) {
    for (const threads of [1, 3]) {
      const native = await NativeBackend.create({ threads, isa, minParallelBytes: 0 });
      try {
        checkProducts(report, `native ${isa}`, native, fx);
      } finally {
        await native.close();
      }
    }
  }
  const native = await NativeBackend.create({ threads: 2, minParallelBytes: 0 });
  try {
    checkActivations(report, 'native', native, fx);
    checkGreedy(report, 'native', native, fx);
  } finally {
    await native.close();
  }
}

/** What the wasm kernels must compute themselves: a type it dropped would pass through the js fallback unnoticed. */
const WASM_TYPES = [
  'F32',
  'F16',
  'BF16',
  'Q8_0',
  'Q4_0',
  'Q4_1',
  'Q5_0',
  'Q5_1',
  'Q2_K',
  'Q3_K',
  'Q4_K',
  'Q5_K',
  'Q6_K',
];

async function checkWasm(report: Report, fx: Fixtures): Promise<void> {
  // The .wasm files and worker.mjs are found next to this script (new URL(…, import.meta.url)
  // in the bundled backend.ts): test-arm.sh copies them there.
  const relaxed = relaxedSimdAvailable();
  console.log(`# ${process.arch}, wasm backend; relaxed SIMD ${relaxed ? 'available' : 'unavailable'}`);
  // Node 20's V8 has relaxed SIMD on arm64 as on x64; a 32-bit Pi may run without it.
  if (process.arch === 'arm64') report(relaxed, 'wasm: relaxed SIMD available and checked correct');
  const runs: [WasmSimd, number][] = relaxed
    ? [
        ['relaxed', 1],
        ['relaxed', 3],
        ['simd128', 3],
      ]
    : [
        ['simd128', 1],
        ['simd128', 3],
      ];
  for (const [simd, threads] of runs) {
    const label = `wasm ${simd}`;
    let wasm: WasmBackend;
    try {
      // minParallelBytes 0: even the smallest product is split over the threads.
      wasm = await WasmBackend.create({ threads, minParallelBytes: 0, simd });
    } catch (err) {
      report(false, `${label}, ${threads} thread(s): WasmBackend.create failed\n  ${(err as Error).message}`);
      continue;
    }
    try {
      if (threads === 1) {
        const own = supportedTypes.filter((t) => wasm.supports(t.id)).map((t) => t.name);
        const missing = WASM_TYPES.filter((n) => !own.includes(n));
        const fallback = supportedTypes.filter((t) => !own.includes(t.name)).map((t) => t.name);
        report(
          missing.length === 0,
          `${label} computes ${WASM_TYPES.join(', ')} itself${fallback.length ? ` (js fallback: ${fallback.join(', ')})` : ''}${missing.length ? `\n  missing: ${missing.join(', ')}` : ''}`,
        );
      }
      checkProducts(report, label, wasm, fx);
      if (threads === 3) {
        // The prefill tiles (8 and 4 vectors, then single ones: 13 takes all three).
        const tiled = supportedTypes.filter((ty) => ['Q8_0', 'Q4_0', 'Q4_K', 'Q6_K'].includes(ty.name));
        const bad = matmulMismatches(wasm, tiled, 13);
        report(
          bad.length === 0,
          `${label}, 3 threads: a matmul of 13 vectors equals the 13 matvecs bit for bit (Q8_0, Q4_0, Q4_K, Q6_K)${bad.length ? `\n  ${bad.slice(0, 5).join('\n  ')}` : ''}`,
        );
        checkActivations(report, label, wasm, fx);
        checkGreedy(report, label, wasm, fx);
      }
    } finally {
      await wasm.close();
    }
  }
}

async function check(file: string, backends: string[]): Promise<number> {
  const fx = JSON.parse(readFileSync(file, 'utf8')) as Fixtures;
  let passed = 0;
  let failed = 0;
  const report: Report = (ok, what) => {
    if (ok) passed++;
    else failed++;
    console.log(`${ok ? 'ok' : 'not ok'} ${what}`);
  };
  for (const b of backends) {
    if (b === 'native') await checkNative(report, fx);
    else if (b === 'wasm') await checkWasm(report, fx);
    else report(false, `unknown backend ${b}`);
  }
  // Not the "N passed, M failed" form: test-arm.sh prints that once, over every run.
  console.log(`# ${process.arch} ${backends.join('+')}: ${passed} ok, ${failed} not ok`);
  return failed === 0 ? 0 : 1;
}

const [mode, file, ...models] = process.argv.slice(2);
if (mode === 'fixtures' && file)
  fixtures(file, models.length ? models : [join(process.cwd(), 'models/stories260K.gguf')]);
else if (mode === 'check' && file) process.exitCode = await check(file, models.length ? models : ['native', 'wasm']);
else {
  console.error('usage: arm-check.ts fixtures FILE [MODEL…] | check FILE [native|wasm…]');
  process.exitCode = 2;
}
