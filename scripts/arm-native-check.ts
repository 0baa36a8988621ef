// The native kernel checks of test/kernels-native.test.ts, split so that they can run on
// an emulated arm64 Node (scripts/test-arm.sh): the slow parts (the js reference
// quantizers and products, the js greedy run) happen once on the host, the native parts
// under qemu against what the host wrote.
//
//   npx tsx scripts/arm-native-check.ts fixtures FILE   host: write cases and js results
//   node arm-native-check.mjs check FILE                 target (bundled): run the native backend
//
// check prints one line per check and a closing "N passed, N failed", and exits 1 on any
// failure. The tolerance is the test's: (k + 4)·2⁻²⁴·Σ|terms| per output (see its header).

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { rowBytes, ggmlTypeInfo, type GgmlTypeInfo } from '../src/ggml/types.ts';
import { f16ToF32 } from '../src/ggml/half.ts';
import { Activation, type ActivationKind } from '../src/kernels/activation.ts';
import { JsBackend } from '../src/kernels/backend.ts';
import { makeWeight, type Weight } from '../src/kernels/matvec.ts';
import { kernelType, supportedTypes } from '../src/kernels/types.ts';
import { NativeBackend } from '../src/kernels/native/index.ts';
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

const PROMPT = [1, 403, 407, 261, 378];

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomVector(n: number, next: () => number): Float32Array {
  return Float32Array.from({ length: n }, () => next() * 2 - 1);
}

/** The min subtracted from value i (value = scaled quant − min), 0 for types without mins. */
function minOf(w: Weight, off: number, i: number): number {
  const d = w.data;
  switch (w.kernel.info.name) {
    case 'Q4_1':
    case 'Q5_1': {
      const o = off + (i >> 5) * w.kernel.info.typeSize;
      return -f16ToF32(d[o + 2] | (d[o + 3] << 8));
    }
    case 'Q2_K': {
      const o = off + (i >> 8) * 84;
      return f16ToF32(d[o + 82] | (d[o + 83] << 8)) * (d[o + ((i & 255) >> 4)] >> 4);
    }
    case 'Q4_K':
    case 'Q5_K': {
      const o = off + (i >> 8) * w.kernel.info.typeSize;
      const j = (i & 255) >> 5;
      const s = o + 4;
      const m = j < 4 ? d[s + j + 4] & 63 : (d[s + j + 4] >> 4) | ((d[s + j] >> 6) << 4);
      return f16ToF32(d[o + 2] | (d[o + 3] << 8)) * m;
    }
    default:
      return 0;
  }
}

function bounds(w: Weight, x: Float32Array): number[] {
  const act = new Activation(w.cols).fill(w.kernel.activation, x, w.cols);
  const a = new Float64Array(w.cols);
  for (let i = 0; i < w.cols; i++) {
    if (act.kind === 'q8_0' || act.kind === 'q8_1') a[i] = act.d[i >> 5] * act.qs[i];
    else if (act.kind === 'q8_k') a[i] = act.d[i >> 8] * act.qs[i];
    else a[i] = act.f[i];
  }
  const row = new Float32Array(w.cols);
  const out: number[] = [];
  for (let r = 0; r < w.rows; r++) {
    const off = r * w.rowBytes;
    w.kernel.dequantizeRow(w.data, off, w.cols, row, 0);
    let m = 0;
    for (let i = 0; i < w.cols; i++) {
      const mi = minOf(w, off, i);
      m += (Math.abs(row[i] + mi) + Math.abs(mi)) * Math.abs(a[i]);
    }
    out.push((w.cols + 4) * 2 ** -24 * m * 1.001 + 1e-30);
  }
  return out;
}

function greedy(m: Transformer, count: number): number[] {
  const out: number[] = [];
  let token = PROMPT[0];
  for (let pos = 0; out.length < count; pos++) {
    const logits = m.forward(token, pos);
    if (pos + 1 < PROMPT.length) {
      token = PROMPT[pos + 1];
      continue;
    }
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    out.push(best);
    token = best;
  }
  return out;
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
        cases.push({ type: info.id, rows, cols, w: Buffer.from(bytes).toString('base64'), x: Array.from(x), want: Array.from(want), bound: bounds(w, x) });
      }
    }
  }
  const next = rng(7);
  // Ties at .5 with amax = 127 (inverse scale exactly 1), an all-zero block, f16-subnormal and
  // overflowing scales, then random values over eight decades.
  const edge = new Float32Array(512);
  edge.set([127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 126.5, -126.5, 4.5, 5.5, -6.5, 7.49999, 7.5000005], 0);
  edge.set(randomVector(32, next).map((v) => v * 1e-6), 64);
  edge.set(randomVector(32, next).map((v) => v * 3e-9), 96);
  edge.set(randomVector(32, next).map((v) => v * 4e7), 128);
  for (let i = 192; i < edge.length; i++) edge[i] = (next() * 2 - 1) * 10 ** Math.floor(next() * 8 - 4);
  const activations = [edge, edge.map((v) => -v), randomVector(2048, next), randomVector(256, next).map((v) => v * 1000), randomVector(2080, next)].map((a) => Array.from(a));
  const greedyRefs = models.map((model) => ({ model, tokens: greedy(Transformer.load(GgufFile.open(model), { kvType: 'f32' }), 64) }));
  writeFileSync(file, JSON.stringify({ cases, activations, greedy: greedyRefs } satisfies Fixtures));
  console.log(`wrote ${cases.length} cases and ${greedyRefs.length} greedy references to ${file}`);
}

async function check(file: string): Promise<number> {
  const fx = JSON.parse(readFileSync(file, 'utf8')) as Fixtures;
  let passed = 0;
  let failed = 0;
  const report = (ok: boolean, what: string) => {
    if (ok) passed++;
    else failed++;
    console.log(`${ok ? 'ok' : 'not ok'} ${what}`);
  };
  const isas = NativeBackend.isas();
  console.log(`# ${process.arch}, native paths: ${isas.join(', ')}`);
  for (const isa of isas) {
    for (const threads of [1, 3]) {
      const native = await NativeBackend.create({ threads, isa, minParallelBytes: 0 });
      const bad: string[] = [];
      for (const c of fx.cases) {
        const info: GgmlTypeInfo = ggmlTypeInfo(c.type)!;
        const bytes = Buffer.from(c.w, 'base64');
        const data = native.alloc(bytes.length);
        data.set(bytes);
        const w = makeWeight(`${info.name}[${c.rows}×${c.cols}]`, info, [c.cols, c.rows], data);
        const got = new Float32Array(c.rows);
        native.matvec(w, Float32Array.from(c.x), got);
        for (let r = 0; r < c.rows; r++) {
          const err = Math.abs(got[r] - c.want[r]);
          if (!(err <= c.bound[r])) bad.push(`${w.name} row ${r}: native ${got[r]} js ${c.want[r]} |Δ| ${err} > ${c.bound[r]}`);
        }
      }
      report(bad.length === 0, `${isa}, ${threads} thread(s): ${fx.cases.length} products of every type within the f32 summation bound${bad.length ? `\n  ${bad.slice(0, 5).join('\n  ')}` : ''}`);
      await native.close();
    }
  }
  const native = await NativeBackend.create({ threads: 2, minParallelBytes: 0 });
  try {
    const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length)).join();
    for (const values of fx.activations) {
      const x = Float32Array.from(values);
      const n = x.length;
      for (const kind of ['q8_0', 'q8_1', 'q8_k', 'f16', 'bf16'] as ActivationKind[]) {
        if (kind === 'q8_k' && n % 256 !== 0) continue;
        const want = new Activation(n).fill(kind, x, n);
        const got = native.activation(kind, x, n);
        const same =
          kind === 'f16' || kind === 'bf16'
            ? bits(got.f) === bits(want.f)
            : got.qs.join() === want.qs.join() && bits(got.d) === bits(want.d) && bits(got.s) === bits(want.s) && got.bsums.join() === want.bsums.join();
        report(same, `${kind} activation of ${n} values bit-identical to activation.ts`);
      }
    }
    for (const g of fx.greedy) {
      const got = greedy(Transformer.load(GgufFile.open(g.model), { backend: native, kvType: 'f32' }), 64);
      report(got.join() === g.tokens.join(), `${g.model.slice(g.model.lastIndexOf('/') + 1)}: 64 greedy tokens equal to the js backend's`);
    }
  } finally {
    await native.close();
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed === 0 ? 0 : 1;
}

const [mode, file, ...models] = process.argv.slice(2);
if (mode === 'fixtures' && file) fixtures(file, models.length ? models : [join(process.cwd(), 'models/stories260K.gguf')]);
else if (mode === 'check' && file) process.exitCode = await check(file);
else {
  console.error('usage: arm-native-check.ts fixtures FILE [MODEL…] | check FILE');
  process.exitCode = 2;
}
