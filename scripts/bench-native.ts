// Matvec throughput of the native backend in GB/s of weight bytes, per instruction-set
// path, at 1 and 2 threads, for a matrix that stays in the last-level cache and one that
// must stream from DRAM. Not a test: figures for the kernel work (see issue 3).
//
//   npx tsx scripts/bench-native.ts [--types Q4_0,Q8_0,Q4_K] [--isas avx2,avx512] [--seconds 1.5] [--dram-mib 1100] [--matmul 32]
//
// Say which regime a figure is in: this VM's L3 is 300 MiB, so "in cache" is a 2048×5632
// matrix (6–12 MB) and "DRAM" one over 1 GiB by default. On a Pi 4/5 (1–2 MiB L2, no L3)
// both are DRAM-bound. With --matmul N it also times an N-vector matmul (prefill) in both regimes and
// reports it as GB/s of weights and as effective GB/s (n × weight bytes per second).

import { parseArgs } from 'node:util';
import { ggmlTypeByName, rowBytes, type GgmlTypeInfo } from '../src/ggml/types.ts';
import { makeWeight, type Weight } from '../src/kernels/matvec.ts';
import { kernelType } from '../src/kernels/types.ts';
import { NativeBackend, type NativeIsa } from '../src/kernels/native/index.ts';

const { values } = parseArgs({
  options: {
    types: { type: 'string', default: 'Q4_0,Q8_0,Q4_K' },
    isas: { type: 'string' },
    seconds: { type: 'string', default: '1.5' },
    'dram-mib': { type: 'string', default: '1100' },
    matmul: { type: 'string', default: '0' },
  },
});
const seconds = Number(values.seconds);
const matmulN = Number(values.matmul);
const compiled = NativeBackend.isas();
const isas = (values.isas?.split(',') ?? compiled.filter((i) => i !== 'scalar')) as NativeIsa[];

/** A rows×cols weight filled with one quantized random block of rows, repeated (speed only). */
function fillWeight(backend: NativeBackend, info: GgmlTypeInfo, rows: number, cols: number): Weight {
  const kernel = kernelType(info.id);
  if (!kernel) throw new Error(`no kernel for ${info.name}`);
  const rb = rowBytes(info, cols);
  const data = backend.alloc(rows * rb);
  const seedRows = Math.min(rows, 64);
  const src = Float32Array.from({ length: seedRows * cols }, () => Math.random() * 2 - 1);
  for (let r = 0; r < seedRows; r++) kernel.quantizeRow(src, r * cols, cols, data, r * rb);
  for (let r = seedRows; r < rows; r += seedRows) data.copyWithin(r * rb, 0, Math.min(seedRows, rows - r) * rb);
  return makeWeight(`${info.name} ${rows}×${cols}`, info, [cols, rows], data);
}

/** Best-of-runs seconds per call: this machine is shared, and the best run is the least disturbed. */
function best(fn: () => void): number {
  fn(); // warm up (and page in)
  let min = Infinity;
  const until = performance.now() + seconds * 1000;
  let runs = 0;
  do {
    const t0 = performance.now();
    fn();
    min = Math.min(min, performance.now() - t0);
    runs++;
  } while (performance.now() < until || runs < 3);
  return min / 1000;
}

const header = ['type', 'regime', 'shape', 'MiB', 'isa', '1T', '2T'];
if (matmulN > 0) header.push(`mm${matmulN} 2T`, `mm${matmulN} eff`);
const table: string[][] = [header];
for (const name of values.types.split(',')) {
  const info = ggmlTypeByName(name);
  if (!info) throw new Error(`unknown type ${name}`);
  const dramRows = Math.ceil((Number(values['dram-mib']) * 2 ** 20) / rowBytes(info, 16384));
  for (const s of [
    { label: 'in cache', rows: 2048, cols: 5632 },
    { label: 'DRAM', rows: dramRows, cols: 16384 },
  ]) {
    const bytes = s.rows * rowBytes(info, s.cols);
    // One weight per shape, shared by every backend: alloc()'s memory outlives its backend.
    const owner = await NativeBackend.create({ threads: 1 });
    const w = fillWeight(owner, info, s.rows, s.cols);
    await owner.close();
    const x = Float32Array.from({ length: s.cols }, () => Math.random() * 2 - 1);
    const out = new Float32Array(s.rows);
    for (const isa of isas) {
      const row = [info.name, s.label, `${s.rows}×${s.cols}`, (bytes / 2 ** 20).toFixed(0), isa];
      for (const threads of [1, 2]) {
        const b = await NativeBackend.create({ threads, isa });
        row.push((bytes / best(() => b.matvec(w, x, out)) / 1e9).toFixed(2));
        if (matmulN > 0 && threads === 2) {
          const xs = Float32Array.from({ length: s.cols * matmulN }, () => Math.random() * 2 - 1);
          const outs = new Float32Array(s.rows * matmulN);
          const t = best(() => b.matmul(w, xs, matmulN, outs));
          row.push((bytes / t / 1e9).toFixed(2), ((matmulN * bytes) / t / 1e9).toFixed(1));
        }
        await b.close();
      }
      table.push(row);
      console.error(row.join('  '));
    }
  }
}
const widths = table[0].map((_, i) => Math.max(...table.map((r) => (r[i] ?? '').length)));
console.log(table.map((r) => r.map((c, i) => c.padStart(widths[i])).join('  ')).join('\n'));
console.log(
  'GB/s of weight bytes per second, best run; mmN: an N-vector matmul (prefill), eff = N × weight bytes / time.',
);
