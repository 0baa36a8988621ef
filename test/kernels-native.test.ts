// The native backend against the js reference kernels (src/kernels/types.ts rows): every
// type, every instruction-set path this build compiled, odd shapes, 1–3 threads; the
// activations it prepares bit-identical to activation.ts; matmul equal to n matvecs; and
// stories260K's 64 greedy tokens equal to the js backend's.
//
// The addon is built at install time (scripts/build-native.mjs). When it is not built these
// tests fail, saying so: CI builds it, and a missing build must not pass as skipped tests.
//
// Tolerance: the integer block sums and the per-block scales are exactly the reference's;
// only the float summation differs (f32 lanes in C, f64 in js). The allowed |native − js| per
// output is the textbook bound for summing k terms in f32, (k + 4)·2⁻²⁴·M with k = cols and
// M = Σ|terms|: Σ|wᵢ·aᵢ| with aᵢ the activation as the kernel sees it, and for weights with a
// min term (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) Σ(|wᵢ + mᵢ| + |mᵢ|)·|aᵢ|, since the scaled quants
// and the mins are summed apart. Observed errors are 10–100× below it (relative ~1e-6);
// a single wrong block of 32 values would exceed it ~100-fold.
//
// Attention and SwiGLU (ops.c) against attention.ts and ops.ts: the C code sums in f32
// where js sums in f64, and has its own exp (within 2 ulp). With an f32 cache every output
// is within 1e-5 of js (values in [-1, 1]; observed ≤ 5e-7). With an f16 cache the queries
// are rounded to f16 exactly as js rounds them (bit for bit), but a probability that lands
// near the midpoint of two f16 values may round the other way, moving by one f16 step
// (≤ 2⁻¹⁰·p): each output is within 1e-5 + 2⁻¹⁰·max|v| + ctx·2⁻²⁴ of js, and such flips
// are rare, so at most 1% of the outputs may differ by more than 1e-5 (observed ~0.1%;
// skipping the probability rounding would put ~60% over). SwiGLU: |Δ| ≤ 1e-6·|js| + 1e-35.

import test from 'ava';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { GgmlTypeInfo } from '../src/ggml/types.ts';
import { f32ToF16 } from '../src/ggml/half.ts';
import type { AttentionStep } from '../src/kernels/attention.ts';
import { Activation, type ActivationKind } from '../src/kernels/activation.ts';
import { JsBackend, type KernelBackend } from '../src/kernels/backend.ts';
import { makeWeight, type Weight } from '../src/kernels/matvec.ts';
import { supportedTypes } from '../src/kernels/types.ts';
import { NativeBackend, NativeBackendError, isNativeAvailable, type NativeIsa } from '../src/kernels/native/index.ts';
import { repoRoot } from './helpers/paths.ts';
import { edgeVector, quantizedBytes, randomVector, rng } from './helpers/kernel-inputs.ts';
import { greedyMatchesJs } from './helpers/greedy.ts';
import { matmulMismatches } from './helpers/matmul.ts';
import { summationBounds } from './helpers/kernel-bounds.ts';

const run = promisify(execFile);
const NOT_BUILT = 'the native addon is not built or does not load here: run `npm run build:native` (needs a C compiler); CI builds it';

/** The same quantized weight in `backend`'s memory and as a plain copy for js. */
function makePair(backend: KernelBackend, info: GgmlTypeInfo, rows: number, cols: number, seed: number): { native: Weight; js: Weight } {
  const bytes = quantizedBytes(info, rows, cols, seed);
  const data = backend.alloc(bytes.length);
  data.set(bytes);
  const name = `${info.name}[${rows}×${cols}]`;
  return { native: makeWeight(name, info, [cols, rows], data), js: makeWeight(name, info, [cols, rows], bytes.slice()) };
}

const ROWS = [1, 7, 33, 67];

/** Row lengths per type: several block multiples, 2080 (65 blocks of 32), 512 and 2816 for K-quants. */
function colsFor(info: GgmlTypeInfo): number[] {
  if (info.blockSize === 1) return [1, 7, 33, 96, 2080];
  if (info.blockSize === 32) return [32, 96, 2080];
  return [256, 512, 2816];
}

const available = isNativeAvailable();
const isas: NativeIsa[] = available ? NativeBackend.isas() : [];

test('the native addon is built and loads', (t) => {
  t.true(available, NOT_BUILT);
  t.true(isas.includes('scalar'));
  if (process.arch === 'x64') t.true(isas.includes('avx2'), `an x64 build machine without AVX2? paths: ${isas.join(', ')}`);
  if (process.arch === 'arm64') t.true(isas.includes('neon'), `an arm64 build without NEON? paths: ${isas.join(', ')}`);
});

// js outputs per case, shared by every path and thread count.
const reference = new Map<string, { want: Float32Array; bound: Float64Array; x: Float32Array }>();

for (const isa of available ? isas : ['unbuilt' as NativeIsa]) {
  for (const threads of [1, 2, 3]) {
    test(`every type on the ${isa} path matches the js reference within the f32 summation bound, ${threads} thread(s)`, async (t) => {
      const native = await NativeBackend.create({ threads, isa, minParallelBytes: 0 });
      t.is(native.threads, threads);
      const js = new JsBackend();
      try {
        for (const info of supportedTypes) {
          t.true(native.supports(info.id), `${info.name} has native kernels`);
          for (const rows of ROWS) {
            for (const cols of colsFor(info)) {
              const seed = rows * 7919 + cols;
              const w = makePair(native, info, rows, cols, seed);
              const key = `${info.name} ${rows} ${cols}`;
              let ref = reference.get(key);
              if (!ref) {
                const x = randomVector(cols, rng(seed + 1));
                const want = new Float32Array(rows);
                js.matvec(w.js, x, want);
                ref = { want, bound: summationBounds(w.js, x), x };
                reference.set(key, ref);
              }
              const got = new Float32Array(rows);
              native.matvec(w.native, ref.x, got);
              for (let r = 0; r < rows; r++) {
                const err = Math.abs(got[r] - ref.want[r]);
                if (!(err <= ref.bound[r])) t.fail(`${w.native.name} row ${r} (${isa}): native ${got[r]} js ${ref.want[r]} |Δ| ${err} > ${ref.bound[r]}`);
              }
            }
          }
        }
      } finally {
        await native.close();
      }
    });
  }
}

test('matmul over n vectors equals n matvecs bit for bit, rows split over 3 threads', async (t) => {
  const native = await NativeBackend.create({ threads: 3, minParallelBytes: 0 });
  try {
    t.deepEqual(matmulMismatches(native, supportedTypes, 5), []);
  } finally {
    await native.close();
  }
});

test('results do not depend on the thread count', async (t) => {
  const one = await NativeBackend.create({ threads: 1 });
  const three = await NativeBackend.create({ threads: 3, minParallelBytes: 0 });
  try {
    for (const name of ['Q4_0', 'Q4_K', 'F16']) {
      const info = supportedTypes.find((ty) => ty.name === name)!;
      const w = makePair(one, info, 67, 512, 3).native;
      const x = randomVector(512, rng(4));
      const a = new Float32Array(67);
      const b = new Float32Array(67);
      one.matvec(w, x, a);
      three.matvec(w, x, b);
      t.deepEqual(Array.from(a), Array.from(b), name);
    }
  } finally {
    await one.close();
    await three.close();
  }
});

test('the addon prepares Q8_0, Q8_1, Q8_K, f16 and bf16 activations bit for bit like activation.ts', async (t) => {
  const native = await NativeBackend.create({ threads: 1 });
  const next = rng(7);
  const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
  try {
    const edge = edgeVector(next);
    const inputs = [edge, edge.map((v) => -v), randomVector(2048, next), randomVector(256, next).map((v) => v * 1000), randomVector(2080, next)];
    for (const x of inputs) {
      const n = x.length;
      for (const kind of ['q8_0', 'q8_1', 'q8_k', 'f16', 'bf16'] as ActivationKind[]) {
        if (kind === 'q8_k' && n % 256 !== 0) continue;
        const want = new Activation(n).fill(kind, x, n);
        const got = native.activation(kind, x, n);
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
    await native.close();
  }
});

test('alloc() gives zeroed memory the kernels read in place; any Uint8Array works too; bad arguments are clear errors', async (t) => {
  const native = await NativeBackend.create({ threads: 2, minParallelBytes: 0 });
  const js = new JsBackend();
  const info = supportedTypes.find((ty) => ty.name === 'Q4_0')!;
  try {
    const big = native.alloc(3 * 2 ** 20); // mmap-backed
    t.is(big.length, 3 * 2 ** 20);
    t.true(big.every((v) => v === 0));
    t.is(native.alloc(0).length, 0);
    const pair = makePair(native, info, 7, 96, 13);
    const x = randomVector(96, rng(1));
    const a = new Float32Array(7);
    const b = new Float32Array(7);
    js.matvec(pair.js, x, a);
    native.matvec(pair.native, x, b);
    const bound = summationBounds(pair.js, x);
    t.true(a.every((v, i) => Math.abs(v - b[i]) <= bound[i]));
    // Writes through the view are what the kernels see.
    pair.native.data.fill(0);
    native.matvec(pair.native, x, b);
    t.true(b.every((v) => v === 0));
    // Weights in ordinary js memory, at an odd byte offset: read in place.
    const raw = new Uint8Array(pair.js.data.length + 1);
    raw.set(pair.js.data, 1);
    native.matvec(makeWeight('odd', info, [96, 7], raw.subarray(1)), x, b);
    t.true(a.every((v, i) => Math.abs(v - b[i]) <= bound[i]));
    t.throws(() => native.matvec(pair.js, x.subarray(0, 95), b), { instanceOf: NativeBackendError, message: /input holds 95 values/ });
    t.throws(() => native.matvec(pair.js, x, b.subarray(0, 6)), { instanceOf: NativeBackendError, message: /output holds 6 values/ });
    t.throws(() => native.alloc(-1), { instanceOf: NativeBackendError });
  } finally {
    await native.close();
  }
  t.throws(() => native.alloc(16), { instanceOf: NativeBackendError, message: /closed/ });
  await t.throwsAsync(NativeBackend.create({ threads: 0 }), { instanceOf: NativeBackendError, message: /threads must be/ });
});

test('threads inside the addon do not keep the process alive', async (t) => {
  const script = `import { NativeBackend } from ${JSON.stringify(join(repoRoot, 'src/kernels/native/index.ts'))};
    const b = await NativeBackend.create({ threads: 3 });
    console.log('threads', b.threads);`;
  // A process kept alive would never exit: the timeout bounds that, generous for tsx's cold
  // compile in the child on a loaded CI machine.
  const { stdout } = await run(process.execPath, ['--import=tsx', '--input-type=module', '-e', script], { cwd: repoRoot, timeout: 90_000 });
  t.is(stdout.trim(), 'threads 3');
});

test('an addon built on another CPU is refused before it is loaded', async (t) => {
  t.true(available, NOT_BUILT);
  const dir = mkdtempSync(join(tmpdir(), 'herd-native-'));
  try {
    const copy = join(dir, 'herd_native.node');
    copyFileSync(join(repoRoot, 'build/Release/herd_native.node'), copy);
    writeFileSync(join(dir, 'herd_native.cpu'), 'arm64 | Cortex-A76 | fp asimd asimddp\n');
    const script = `import { NativeBackend, isNativeAvailable } from ${JSON.stringify(join(repoRoot, 'src/kernels/native/index.ts'))};
      console.log(isNativeAvailable());
      await NativeBackend.create({ threads: 1 }).catch((e) => console.log(e.code, e.message));`;
    const { stdout } = await run(process.execPath, ['--import=tsx', '--input-type=module', '-e', script], {
      cwd: repoRoot,
      env: { ...process.env, HERD_NATIVE_ADDON: copy },
      timeout: 90_000,
    });
    const [availability, error] = stdout.trim().split('\n');
    t.is(availability, 'false');
    t.regex(error, /^NATIVE_UNAVAILABLE native backend: .* was built for another CPU \(arm64, Cortex-A76; this is .*\); run npm run build:native on this machine$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('without a C compiler the install step still succeeds and says herd will use wasm', async (t) => {
  const { stdout } = await run(process.execPath, [join(repoRoot, 'scripts/build-native.mjs')], {
    cwd: repoRoot,
    env: { ...process.env, CC: 'false' },
    timeout: 60_000,
  });
  t.regex(stdout.trim(), /^herd: native kernels not built \(no working C compiler \(CC=false\)\); herd will use the wasm backend$/);
});

/** [nHeads, nKvHeads, headDim]: groups of 1, 4 and 8 query heads per KV head; 18 leaves row tails. */
const HEADS: [number, number, number][] = [[4, 4, 16], [12, 3, 80], [16, 2, 64], [8, 1, 80], [6, 3, 18]];

/** A step with a random cache of start + n (+ 3 unused) positions, f32 or f16, and random queries. */
function attentionStep(nHeads: number, nKvHeads: number, headDim: number, start: number, n: number, half: boolean, seed: number): AttentionStep {
  const next = rng(seed);
  const cells = (start + n + 3) * nKvHeads * headDim;
  const cache = (): Float32Array | Uint16Array => (half ? Uint16Array.from(randomVector(cells, next), f32ToF16) : randomVector(cells, next));
  const keys = cache();
  const values = cache();
  // queries up to ±3: scores of a few units, so the softmax is neither flat nor one-hot
  const q = randomVector(n * nHeads * headDim, next).map((v) => 3 * v);
  return { keys, values, nHeads, nKvHeads, headDim, start, n, q, out: new Float32Array(n * nHeads * headDim) };
}

/** The same step with its own copy of q (rounded in place with an f16 cache) and its own out. */
function copyStep(s: AttentionStep): AttentionStep {
  return { ...s, q: s.q.slice(), out: new Float32Array(s.out.length) };
}

const bitsOf = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

// Steps (q as drawn) and the js reference's results (q rounded, out), shared by every path and thread count.
const attentionCases = new Map<string, { step: AttentionStep; want: AttentionStep }>();

function attentionCase(nHeads: number, nKvHeads: number, headDim: number, start: number, n: number, half: boolean) {
  const key = `${nHeads} ${nKvHeads} ${headDim} ${start} ${n} ${half}`;
  let c = attentionCases.get(key);
  if (!c) {
    const step = attentionStep(nHeads, nKvHeads, headDim, start, n, half, nHeads * 131 + headDim * 7 + start * 3 + n);
    const want = copyStep(step);
    new JsBackend().attend(want);
    c = { step, want };
    attentionCases.set(key, c);
  }
  return c;
}

for (const isa of available ? isas : ['unbuilt' as NativeIsa]) {
  for (const threads of [1, 2, 3]) {
    test(`attention on the ${isa} path matches the js reference (f32 cache within 1e-5; f16 within one f16 step per probability, q rounded bit for bit), ${threads} thread(s)`, async (t) => {
      const native = await NativeBackend.create({ threads, isa, minParallelBytes: 0 });
      let worst32 = 0;
      let worst16 = 0;
      let total16 = 0;
      let over16 = 0;
      try {
        for (const [nHeads, nKvHeads, headDim] of HEADS) {
          for (const start of [0, 13, 100]) {
            for (const n of [1, 3, 8]) {
              for (const half of [false, true]) {
                const label = `${nHeads}/${nKvHeads} heads of ${headDim}, start ${start}, n ${n}, ${half ? 'f16' : 'f32'} cache (${isa})`;
                const { step, want } = attentionCase(nHeads, nKvHeads, headDim, start, n, half);
                const got = copyStep(step);
                native.attend(got);
                t.deepEqual(bitsOf(got.q), bitsOf(want.q), `${label}: q as js leaves it`);
                const ctx = start + n;
                const bound = half ? 1e-5 + 2 ** -10 + ctx * 2 ** -24 : 1e-5;
                for (let i = 0; i < want.out.length; i++) {
                  const err = Math.abs(got.out[i] - want.out[i]);
                  if (!(err <= bound)) t.fail(`${label}: out[${i}] native ${got.out[i]} js ${want.out[i]} |Δ| ${err} > ${bound}`);
                  if (half) {
                    total16++;
                    if (err > 1e-5) over16++;
                    worst16 = Math.max(worst16, err);
                  } else {
                    worst32 = Math.max(worst32, err);
                  }
                }
              }
            }
          }
        }
        t.true(over16 <= total16 / 100, `f16: ${over16} of ${total16} outputs differ by more than 1e-5`);
        t.log(`max |Δ| f32 ${worst32.toExponential(2)}, f16 ${worst16.toExponential(2)} (${over16} of ${total16} over 1e-5)`);
      } finally {
        await native.close();
      }
    });
  }
}

test('attention over n tokens equals n one-token steps, and does not depend on the thread count, bit for bit', async (t) => {
  const one = await NativeBackend.create({ threads: 1 });
  const three = await NativeBackend.create({ threads: 3, minParallelBytes: 0 });
  try {
    for (const [nHeads, nKvHeads, headDim] of HEADS) {
      for (const half of [false, true]) {
        const label = `${nHeads}/${nKvHeads} heads of ${headDim}, ${half ? 'f16' : 'f32'}`;
        const start = 21;
        const n = 6;
        const step = attentionStep(nHeads, nKvHeads, headDim, start, n, half, 5);
        const a = copyStep(step);
        const b = copyStep(step);
        one.attend(a);
        three.attend(b);
        t.deepEqual(bitsOf(b.out), bitsOf(a.out), `${label}: 1 and 3 threads`);
        const qDim = nHeads * headDim;
        for (let i = 0; i < n; i++) {
          const q = step.q.slice(i * qDim, (i + 1) * qDim);
          const out = new Float32Array(qDim);
          // one token at a time, as decode steps: several threads share its heads
          three.attend({ ...step, start: start + i, n: 1, q, out });
          t.deepEqual(bitsOf(out), bitsOf(a.out.subarray(i * qDim, (i + 1) * qDim)), `${label}: token ${i} alone`);
          t.deepEqual(bitsOf(q), bitsOf(a.q.subarray(i * qDim, (i + 1) * qDim)), `${label}: token ${i} q`);
        }
      }
    }
  } finally {
    await one.close();
    await three.close();
  }
});

for (const isa of available ? isas : ['unbuilt' as NativeIsa]) {
  test(`swiglu on the ${isa} path matches the js reference within 1e-6 relative, in place too, 1–3 threads`, async (t) => {
    const js = new JsBackend();
    const next = rng(99);
    const edges = [0, -0, 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 20, -20, 88, -88, 89, -89, 100, -100, 1e30, -1e30];
    for (const threads of [1, 2, 3]) {
      const native = await NativeBackend.create({ threads, isa, minParallelBytes: 0 });
      try {
        for (const n of [0, 1, 7, 15, 17, 33, edges.length, 100_003]) {
          const gate = n === edges.length ? Float32Array.from(edges) : randomVector(n, next).map((v) => 12 * v);
          const up = randomVector(n, next);
          const want = new Float32Array(n + 1);
          const got = new Float32Array(n + 1).fill(7);
          js.swiglu(want, gate, up, n);
          native.swiglu(got, gate, up, n);
          t.is(got[n], 7, `n ${n}: nothing written past n`);
          const inPlace = gate.slice();
          native.swiglu(inPlace, inPlace, up, n);
          for (let i = 0; i < n; i++) {
            const bound = 1e-6 * Math.abs(want[i]) + 1e-35;
            if (!(Math.abs(got[i] - want[i]) <= bound)) t.fail(`n ${n} [${i}] (${isa}, ${threads} threads): silu(${gate[i]})·${up[i]} native ${got[i]} js ${want[i]}`);
          }
          const differs = inPlace.findIndex((v, i) => i < n && !Object.is(v, got[i]));
          t.is(differs, -1, `n ${n}: out = gate gives the same values`);
        }
      } finally {
        await native.close();
      }
    }
  });
}

test('attention and swiglu refuse bad arguments with NATIVE_ARGUMENT errors naming the problem', async (t) => {
  const native = await NativeBackend.create({ threads: 2 });
  const ok = attentionStep(8, 2, 16, 4, 2, false, 1);
  const half = attentionStep(8, 2, 16, 4, 2, true, 1);
  const bad = (s: Partial<AttentionStep>, message: RegExp) =>
    t.throws(() => native.attend({ ...copyStep(ok), ...s }), { instanceOf: NativeBackendError, message }, String(message));
  try {
    native.attend(copyStep(ok));
    native.attend(copyStep(half));
    bad({ values: half.values }, /values must be a Float32Array like the keys/);
    bad({ keys: new Int16Array(ok.keys.length) as unknown as Uint16Array }, /keys must be a Float32Array \(f32 cache\) or a Uint16Array/);
    bad({ nKvHeads: 3 }, /nKvHeads must divide nHeads \(8\), got 3/);
    bad({ nHeads: 0 }, /nHeads must be a positive integer, got 0/);
    bad({ headDim: 15 }, /headDim must be an even integer ≥ 2, got 15/);
    bad({ start: -1 }, /start must be an integer ≥ 0, got -1/);
    bad({ n: 0 }, /n must be an integer ≥ 1, got 0/);
    bad({ n: 1.5 }, /n must be an integer ≥ 1, got 1.5/);
    bad({ start: 8 }, /keys hold 288 values, 320 needed for positions 0…9/);
    bad({ values: ok.values.subarray(0, 100) }, /values hold 100 values, 192 needed/);
    bad({ q: ok.q.subarray(1) }, /q holds 255 values, 256 needed/);
    bad({ out: new Float32Array(255) }, /out holds 255 values, 256 needed/);
    const x = new Float32Array(10);
    t.throws(() => native.swiglu(x, x, x.subarray(1), 10), { instanceOf: NativeBackendError, message: /swiglu: up holds 9 values, 10 needed/ });
    t.throws(() => native.swiglu(x.subarray(2), x, x, 10), { instanceOf: NativeBackendError, message: /swiglu: out holds 8 values, 10 needed/ });
    t.throws(() => native.swiglu(x, x, x, -1), { instanceOf: NativeBackendError, message: /swiglu over -1 values/ });
  } finally {
    await native.close();
  }
  t.throws(() => native.attend(copyStep(ok)), { instanceOf: NativeBackendError, message: /closed/ });
  t.throws(() => native.swiglu(new Float32Array(1), new Float32Array(1), new Float32Array(1), 1), { instanceOf: NativeBackendError, message: /closed/ });
});

greedyMatchesJs(test, 'native', () => NativeBackend.create({ threads: 2, minParallelBytes: 0 }));
