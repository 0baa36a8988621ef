// The wasm backend against the js reference kernels (src/kernels/types.ts rows): every type
// it computes, odd shapes, 1–3 threads, in both builds (relaxed SIMD and plain SIMD128); Q8_0
// activation quants bit-identical; attention over f32 and f16 caches and SwiGLU; the committed
// .wasm files equal to a fresh build; and stories260K's greedy tokens unchanged.

import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ggmlTypeInfo, type GgmlTypeInfo } from '../src/ggml/types.ts';
import { f16ToF32, f32ToF16 } from '../src/ggml/half.ts';
import { Activation, type ActivationKind } from '../src/kernels/activation.ts';
import { JsBackend, type KernelBackend } from '../src/kernels/backend.ts';
import { makeWeight, type Weight } from '../src/kernels/matvec.ts';
import { supportedTypes } from '../src/kernels/types.ts';
import { WasmBackend, WasmBackendError, relaxedSimdAvailable, type WasmSimd } from '../src/kernels/wasm/backend.ts';
import { repoRoot } from './helpers/paths.ts';
import { edgeVector, quantizedBytes, randomVector, rng } from './helpers/kernel-inputs.ts';
import { greedyMatchesJs } from './helpers/greedy.ts';
import { matmulMismatches } from './helpers/matmul.ts';

const run = promisify(execFile);

/** A quantized weight in `backend`'s memory, and the same bytes as a plain copy for js. */
function makePair(backend: KernelBackend, info: GgmlTypeInfo, rows: number, cols: number, seed: number): { wasm: Weight; js: Weight } {
  const bytes = quantizedBytes(info, rows, cols, seed);
  const data = backend.alloc(bytes.length);
  data.set(bytes);
  return { wasm: makeWeight(`${info.name}[${rows}×${cols}]`, info, [cols, rows], data), js: makeWeight('js', info, [cols, rows], bytes.slice()) };
}

/** Q4_1 and Q5_1 store value = d·q + m with an f16 min m at bytes 2–3 of each 32-value block. */
const MIN_TYPES = new Set(['Q4_1', 'Q5_1']);
/** K-quants sum integers within 256 values and do the float step in f64 as js does: exact. */
const EXACT_TYPES = new Set(['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K']);

/**
 * Allowed |wasm − js| per output: the standard bound for summing k terms in f32,
 * (k + 4)·2⁻²⁴·M, where M is the sum of the magnitudes of what is added: Σ|wᵢ·aᵢ| with aᵢ
 * the activation as the kernel sees it (f16/bf16-rounded, or Q8-dequantized), and for
 * weights with a min term Σ(|wᵢ − m|·|aᵢ| + |m|·|aᵢ|), since d·q and m are summed apart.
 * The integer block sums are exact in both backends; only the f32 lane sums (wasm) versus
 * the f64 sums (js) differ, i.e. summation order and precision.
 */
function bounds(w: Weight, x: Float32Array): Float32Array {
  const act = new Activation(w.cols).fill(w.kernel.activation, x, w.cols);
  const a = new Float64Array(w.cols);
  const q8 = act.kind === 'q8_0' || act.kind === 'q8_1';
  for (let i = 0; i < w.cols; i++) a[i] = q8 ? act.d[i >> 5] * act.qs[i] : act.kind === 'q8_k' ? act.d[i >> 8] * act.qs[i] : act.f[i];
  const row = new Float32Array(w.cols);
  const out = new Float32Array(w.rows);
  const hasMin = MIN_TYPES.has(w.kernel.info.name);
  for (let r = 0; r < w.rows; r++) {
    const off = r * w.rowBytes;
    w.kernel.dequantizeRow(w.data, off, w.cols, row, 0);
    let s = 0;
    for (let i = 0; i < w.cols; i++) {
      const o = off + (i >> 5) * w.kernel.info.typeSize;
      const m = hasMin ? f16ToF32(w.data[o + 2] | (w.data[o + 3] << 8)) : 0;
      s += (Math.abs(row[i] - m) + 1.001 * Math.abs(m)) * Math.abs(a[i]);
    }
    out[r] = (w.cols + 4) * 2 ** -24 * s + 1e-30;
  }
  return out;
}

/** The types both the js table and the wasm module compute. */
async function wasmTypes(): Promise<GgmlTypeInfo[]> {
  const b = await WasmBackend.create({ threads: 1 });
  try {
    return supportedTypes.filter((t) => b.supports(t.id));
  } finally {
    await b.close();
  }
}

const ROWS = [1, 7, 33, 67];

/** Both builds of the kernels: relaxed SIMD (the default where it works) and plain SIMD128. */
const BUILDS: WasmSimd[] = ['relaxed', 'simd128'];

test('relaxed SIMD is available and checked correct on this runtime (x64 and arm64 Node 20+)', (t) => {
  t.true(relaxedSimdAvailable());
});

for (const [simd, threads] of [['relaxed', 1], ['relaxed', 2], ['relaxed', 3], ['simd128', 1], ['simd128', 3]] as const) {
  test(`every wasm type matches the js reference (K-quants bit for bit, others within the f32 summation bound), ${simd}, ${threads} thread(s)`, async (t) => {
    const types = await wasmTypes();
    const names = types.map((ty) => ty.name);
    for (const n of ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K']) t.true(names.includes(n), n);
    // minParallelBytes 0: split even tiny products, so row ranges of 0–1 rows per thread run.
    const wasm = await WasmBackend.create({ threads, minParallelBytes: 0, simd });
    const js = new JsBackend();
    const next = rng(100 + threads);
    try {
      for (const info of types) {
        const colsList = info.blockSize === 1 ? [1, 7, 32, 33, 96, 2080] : [32, 96, 2080].filter((c) => c % info.blockSize === 0);
        if (info.blockSize > 32) colsList.push(info.blockSize, 3 * info.blockSize, 9 * info.blockSize);
        for (const rows of ROWS) {
          for (const cols of colsList) {
            const w = makePair(wasm, info, rows, cols, rows * 7919 + cols);
            const x = randomVector(cols, next);
            const want = new Float32Array(rows);
            const got = new Float32Array(rows);
            js.matvec(w.js, x, want);
            wasm.matvec(w.wasm, x, got);
            if (EXACT_TYPES.has(info.name)) {
              if (!got.every((v, r) => Object.is(v, want[r]))) t.fail(`${w.wasm.name}: wasm ${Array.from(got)} js ${Array.from(want)} (expected identical)`);
              continue;
            }
            const bound = bounds(w.js, x);
            for (let r = 0; r < rows; r++) {
              const err = Math.abs(got[r] - want[r]);
              if (!(err <= bound[r])) t.fail(`${w.wasm.name} row ${r}: wasm ${got[r]} js ${want[r]} |Δ| ${err} > ${bound[r]}`);
            }
          }
        }
      }
      t.pass();
    } finally {
      await wasm.close();
    }
  });
}

test('thousands of back-to-back products on 3 threads give the 1-thread bits', async (t) => {
  // Products alternate between one chunk (below minParallelBytes: the calling thread alone)
  // and many chunks claimed by all threads, so workers keep meeting jobs that moved on.
  const one = await WasmBackend.create({ threads: 1 });
  const three = await WasmBackend.create({ threads: 3, minParallelBytes: 4096 });
  try {
    const info = ggmlTypeInfo(2)!; // Q4_0
    const shapes = [
      [5, 64],
      [67, 256],
      [300, 96],
      [2, 512],
      [1000, 32],
    ];
    const pairs = shapes.map(([rows, cols], i) => ({ a: makePair(one, info, rows, cols, 50 + i).wasm, b: makePair(three, info, rows, cols, 50 + i).wasm }));
    const next = rng(9);
    for (let k = 0; k < 3000; k++) {
      const { a, b } = pairs[k % pairs.length];
      const x = randomVector(a.cols, next);
      const want = new Float32Array(a.rows);
      const got = new Float32Array(a.rows);
      one.matvec(a, x, want);
      three.matvec(b, x, got);
      if (!got.every((v, r) => Object.is(v, want[r]))) {
        t.fail(`product ${k} (${a.name}) differs between 3 threads and 1`);
        return;
      }
    }
    t.pass();
  } finally {
    await Promise.all([one.close(), three.close()]);
  }
});

for (const simd of BUILDS) {
  for (const wideTiles of [true, false]) {
    // Eight-vector (relaxed Q4_0) and four-vector tiles (wide: i16 activations, the x86
    // default; narrow: int8, arm's and the relaxed build's) and the single-vector remainder
    // must all give the matvec's bits: 13 vectors take all three.
    test(`matmul over n vectors equals n matvecs, rows split over 3 threads, ${simd}, ${wideTiles ? 'wide' : 'narrow'} tiles`, async (t) => {
      const wasm = await WasmBackend.create({ threads: 3, minParallelBytes: 0, wideTiles, simd });
      try {
        const names = ['F32', 'F16', 'Q8_0', 'Q4_0', 'Q5_1', 'Q4_K', 'Q6_K'];
        t.deepEqual(matmulMismatches(wasm, supportedTypes.filter((ty) => names.includes(ty.name)), 13), []);
      } finally {
        await wasm.close();
      }
    });
  }
}

test('wasm prepares Q8_0, Q8_1, Q8_K, f16 and bf16 activations bit-for-bit like the js reference', async (t) => {
  const wasm = await WasmBackend.create({ threads: 1 });
  const next = rng(7);
  const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
  try {
    const edge = edgeVector(next); // 512 values
    const inputs = [edge, edge.map((v) => -v), randomVector(2048, next), randomVector(256, next).map((v) => v * 1000)];
    for (const x of inputs) {
      const n = x.length;
      for (const kind of ['q8_0', 'q8_1', 'q8_k', 'f16', 'bf16'] as ActivationKind[]) {
        const want = new Activation(n).fill(kind, x, n);
        const got = wasm.activation(kind, x, n);
        if (kind === 'f16' || kind === 'bf16') {
          t.deepEqual(bits(got.f), bits(want.f), `${kind} values (bits)`);
          continue;
        }
        t.deepEqual(got.qs, want.qs, `${kind} quants`);
        t.deepEqual(bits(got.d), bits(want.d), `${kind} scales (bits)`);
        if (kind === 'q8_1') t.deepEqual(bits(got.s), bits(want.s), 'q8_1 d·Σq (bits)');
        if (kind === 'q8_k') t.deepEqual(got.bsums, want.bsums, 'q8_k Σq per 16');
      }
    }
  } finally {
    await wasm.close();
  }
});

/** A layer's cache of `rows` positions: f32, or the same values as f16 bits. */
function randomCache(rows: number, kvDim: number, half: boolean, next: () => number): Float32Array | Uint16Array {
  const f = randomVector(rows * kvDim, next);
  return half ? Uint16Array.from(f, (v) => f32ToF16(v)) : f;
}

for (const threads of [1, 3]) {
  test(`attention matches the js reference (f32 cache within 1e-5, f16 cache with q rounded identically), ${threads} thread(s)`, async (t) => {
    // minParallelBytes 0: even one token's attention is split into (token, KV head) chunks.
    const wasm = await WasmBackend.create({ threads, minParallelBytes: 0 });
    const js = new JsBackend();
    const next = rng(200 + threads);
    let cases = 0;
    try {
      for (const half of [false, true]) {
        for (const group of [1, 4, 8]) {
          for (const nKvHeads of [1, 3]) {
            for (const headDim of [16, 64, 80]) {
              for (const start of [0, 13]) {
                for (const n of [1, 5]) {
                  // peaked: large scores, so most probabilities are tiny (f16 subnormals, exp underflow)
                  for (const qScale of [1, 12]) {
                    const nHeads = group * nKvHeads;
                    const kvDim = nKvHeads * headDim;
                    const qDim = nHeads * headDim;
                    const ctx = start + n + 2; // rows past the step must not be read
                    const keys = randomCache(ctx, kvDim, half, next);
                    const values = randomCache(ctx, kvDim, half, next);
                    const q = randomVector(n * qDim, next).map((v) => v * qScale);
                    // f16 rounding edges: ties to even either way, a half subnormal, below half the smallest
                    q.set([1 + 2 ** -11, -(1 + 3 * 2 ** -11), 2 ** -20 + 2 ** -26, 2 ** -26], 0);
                    const qJs = q.slice();
                    const want = new Float32Array(n * qDim);
                    const got = new Float32Array(n * qDim).fill(NaN);
                    const shape = { keys, values, nHeads, nKvHeads, headDim, start, n };
                    js.attend({ ...shape, q: qJs, out: want });
                    wasm.attend({ ...shape, q, out: got });
                    const name = `${half ? 'f16' : 'f32'} group ${group} nKv ${nKvHeads} headDim ${headDim} start ${start} n ${n} q×${qScale}`;
                    cases++;
                    if (!q.every((v, i) => Object.is(v, qJs[i]))) t.fail(`${name}: q after the step differs from the js reference's`);
                    // f32: the sums differ in order and precision only; f16: see f16Bounds.
                    const bound = keys instanceof Uint16Array && values instanceof Uint16Array ? f16Bounds({ ...shape, keys, values, q }) : undefined;
                    for (let i = 0; i < want.length; i++) {
                      const err = Math.abs(got[i] - want[i]);
                      if (!(err <= (bound?.[i] ?? 1e-5))) {
                        t.fail(`${name} output ${i}: wasm ${got[i]} js ${want[i]} |Δ| ${err} > ${bound?.[i] ?? 1e-5}`);
                        break;
                      }
                    }
                  }
                }
              }
            }
          }
        }
      }
      t.is(cases, 288);
    } finally {
      await wasm.close();
    }
  });
}

/**
 * Allowed |wasm − js| per output of an attention step over an f16 cache. Both round the
 * probabilities to f16, but from values that differ by f32 rounding (about 1e-5 relative at
 * most here), so a probability that lies that close to an f16 rounding boundary may round to
 * the neighbouring half: it then moves the output by one f16 ulp of p times |v|. Elsewhere
 * the two must round alike, so the bound is 1e-5 plus those ulps alone. The probabilities are
 * recomputed here in f64 from the f16-rounded q (q as the step left it).
 */
function f16Bounds(s: { keys: Uint16Array; values: Uint16Array; nHeads: number; nKvHeads: number; headDim: number; start: number; n: number; q: Float32Array }): Float64Array {
  const { nHeads, nKvHeads, headDim, start, n } = s;
  const group = nHeads / nKvHeads;
  const kvDim = nKvHeads * headDim;
  const bound = new Float64Array(n * nHeads * headDim).fill(1e-5);
  const near = (p: number) => f32ToF16(p * (1 - 1e-4)) !== f32ToF16(p * (1 + 1e-4));
  const ulp = (p: number) => (p < 2 ** -14 ? 2 ** -24 : 2 ** (Math.floor(Math.log2(p)) - 10));
  for (let i = 0; i < n; i++) {
    const len = start + i + 1;
    for (let h = 0; h < nHeads; h++) {
      const qo = (i * nHeads + h) * headDim;
      const ko = Math.floor(h / group) * headDim;
      const sc = new Float64Array(len);
      for (let t = 0; t < len; t++) {
        for (let d = 0; d < headDim; d++) sc[t] += s.q[qo + d] * f16ToF32(s.keys[t * kvDim + ko + d]);
        sc[t] /= Math.sqrt(headDim);
      }
      const max = Math.max(...sc);
      let sum = 0;
      for (let t = 0; t < len; t++) sum += sc[t] = Math.exp(sc[t] - max);
      for (let t = 0; t < len; t++) {
        const p = sc[t] / sum;
        if (!near(p)) continue;
        for (let d = 0; d < headDim; d++) bound[qo + d] += ulp(p) * Math.abs(f16ToF32(s.values[t * kvDim + ko + d]));
      }
    }
  }
  return bound;
}

test('attention over a long context (prefill of 70 tokens after 300) matches the js reference on 2 threads', async (t) => {
  const wasm = await WasmBackend.create({ threads: 2 });
  const js = new JsBackend();
  const next = rng(77);
  try {
    for (const half of [false, true]) {
      const nHeads = 32, nKvHeads = 4, headDim = 64, start = 300, n = 70;
      const keys = randomCache(start + n, nKvHeads * headDim, half, next);
      const values = randomCache(start + n, nKvHeads * headDim, half, next);
      const q = randomVector(n * nHeads * headDim, next).map((v) => v * 4);
      const qJs = q.slice();
      const want = new Float32Array(q.length);
      const got = new Float32Array(q.length);
      js.attend({ keys, values, nHeads, nKvHeads, headDim, start, n, q: qJs, out: want });
      wasm.attend({ keys, values, nHeads, nKvHeads, headDim, start, n, q, out: got });
      t.deepEqual(Array.from(q), Array.from(qJs), 'q after the step');
      const bound = keys instanceof Uint16Array && values instanceof Uint16Array ? f16Bounds({ keys, values, nHeads, nKvHeads, headDim, start, n, q }) : undefined;
      let over = 0;
      for (let i = 0; i < want.length; i++) if (!(Math.abs(got[i] - want[i]) <= (bound?.[i] ?? 1e-5))) over++;
      t.is(over, 0, `${half ? 'f16' : 'f32'}: outputs off by more than the bound`);
    }
  } finally {
    await wasm.close();
  }
});

test('swiglu matches the js reference within 1e-6 relative, odd sizes, in place, 1 and 2 threads', async (t) => {
  const js = new JsBackend();
  const next = rng(31);
  for (const threads of [1, 2]) {
    const wasm = await WasmBackend.create({ threads, minParallelBytes: 0 });
    try {
      for (const n of [1, 3, 7, 64, 1001, 100_003]) {
        // gates from ±0.01 to ±200: e^-g over- and underflows f32 at the ends
        const gate = Float32Array.from({ length: n }, () => (next() * 2 - 1) * 10 ** (next() * 4 - 2) * 2);
        const up = randomVector(n, next);
        const want = new Float32Array(n);
        js.swiglu(want, gate, up, n);
        const got = gate.slice();
        wasm.swiglu(got, got, up, n); // out may be gate
        for (let i = 0; i < n; i++) {
          const err = Math.abs(got[i] - want[i]);
          if (!(err <= 1e-6 * Math.abs(want[i]) + 1e-30)) {
            t.fail(`${threads} thread(s) n ${n} [${i}]: gate ${gate[i]} up ${up[i]}: wasm ${got[i]} js ${want[i]}`);
            break;
          }
        }
      }
      const short = new Float32Array(2);
      t.throws(() => wasm.swiglu(short, short, short, 3), { instanceOf: WasmBackendError, message: /3 needed/ });
    } finally {
      await wasm.close();
    }
  }
  t.pass();
});

test('views returned by alloc() stay valid and addressable as the memory grows', async (t) => {
  const wasm = await WasmBackend.create({ threads: 2, minParallelBytes: 0 });
  const js = new JsBackend();
  const next = rng(3);
  try {
    const first = makePair(wasm, ggmlTypeInfo(8)!, 33, 96, 12); // Q8_0
    const before = first.wasm.data.buffer.byteLength;
    const big = wasm.alloc(96 * 2 ** 20);
    t.true(big.buffer.byteLength > before, 'the memory grew');
    t.is(first.wasm.data.byteOffset % 64, 0);
    big.fill(0xa5);
    t.deepEqual(first.wasm.data, first.js.data, 'old view still reads the weight bytes');
    const x = randomVector(96, next);
    const a = new Float32Array(33);
    const b = new Float32Array(33);
    js.matvec(first.js, x, a);
    wasm.matvec(first.wasm, x, b);
    const bound = bounds(first.js, x);
    t.true(a.every((v, i) => Math.abs(v - b[i]) <= bound[i]));
    // Writes through the old view are what the kernels see.
    first.wasm.data.fill(0);
    wasm.matvec(first.wasm, x, b);
    t.true(b.every((v) => v === 0));
  } finally {
    await wasm.close();
  }
});

test('weights outside the wasm memory are copied in, and unsupported arguments are clear errors', async (t) => {
  const wasm = await WasmBackend.create({ threads: 2, minParallelBytes: 0 });
  const js = new JsBackend();
  const next = rng(5);
  try {
    const pair = makePair(js, ggmlTypeInfo(2)!, 7, 96, 13); // Q4_0 in a plain Uint8Array
    const x = randomVector(96, next);
    const a = new Float32Array(7);
    const b = new Float32Array(7);
    js.matvec(pair.js, x, a);
    wasm.matvec(pair.wasm, x, b);
    const bound = bounds(pair.js, x);
    t.true(a.every((v, i) => Math.abs(v - b[i]) <= bound[i]));
    t.throws(() => wasm.matvec(pair.wasm, x.subarray(0, 95), b), { instanceOf: WasmBackendError, message: /input holds 95 values/ });
    t.throws(() => wasm.matvec(pair.wasm, x, b.subarray(0, 6)), { instanceOf: WasmBackendError, message: /output holds 6 values/ });
  } finally {
    await wasm.close();
  }
  t.throws(() => wasm.alloc(16), { instanceOf: WasmBackendError, message: /closed/ });
});

test('allocating past the memory cap is a clear error', async (t) => {
  const wasm = await WasmBackend.create({ threads: 1, maxMemoryBytes: 8 * 2 ** 20 });
  try {
    t.is(wasm.maxBytes, 8 * 2 ** 20);
    wasm.alloc(4 * 2 ** 20);
    const err = t.throws(() => wasm.alloc(8 * 2 ** 20), { instanceOf: WasmBackendError });
    t.is(err?.code, 'WASM_MEMORY_LIMIT');
    t.regex(err?.message ?? '', /cannot allocate 8388608 bytes: .* capped at 0\.01 GiB/);
  } finally {
    await wasm.close();
  }
});

test('without WebAssembly SIMD, create() fails with WASM_UNAVAILABLE', async (t) => {
  const validate = WebAssembly.validate;
  WebAssembly.validate = () => false;
  const pending = WasmBackend.create({ threads: 1 });
  WebAssembly.validate = validate;
  const err = await t.throwsAsync(pending, { instanceOf: WasmBackendError });
  t.is(err?.code, 'WASM_UNAVAILABLE');
  t.regex(err?.message ?? '', /no WebAssembly SIMD128; use the js backend/);
});

test('worker threads do not keep the process alive', async (t) => {
  // A child that creates a 3-thread backend and neither closes it nor exits explicitly.
  const script = `import { WasmBackend } from ${JSON.stringify(join(repoRoot, 'src/kernels/wasm/backend.ts'))};
    const b = await WasmBackend.create({ threads: 3 });
    console.log('threads', b.threads);`;
  // A process kept alive would never exit: the timeout bounds that. It is generous because
  // tsx compiles the module graph cold in the child, slow on a loaded 2-core CI machine.
  const { stdout } = await run(process.execPath, ['--import=tsx', '--input-type=module', '-e', script], { cwd: repoRoot, timeout: 90_000 });
  t.is(stdout.trim(), 'threads 3');
});

test('the committed kernels.wasm and kernels-relaxed.wasm are byte-identical to a fresh asc build', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'herd-wasm-'));
  try {
    await run(process.execPath, [join(repoRoot, 'scripts/build-wasm.mjs'), '--out', dir], { cwd: repoRoot, timeout: 120_000 });
    for (const file of ['kernels.wasm', 'kernels-relaxed.wasm']) {
      const committed = readFileSync(join(repoRoot, 'src/kernels/wasm', file));
      t.true(committed.equals(readFileSync(join(dir, file))), `${file} is stale: run npm run build:wasm and commit it`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

greedyMatchesJs(test, 'wasm', () => WasmBackend.create({ threads: 2, minParallelBytes: 0 }));
