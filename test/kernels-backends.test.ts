// Every compiled kernel backend against the js reference kernels (src/kernels/types.ts rows),
// with the same checks: the native addon on every instruction-set path this build compiled,
// and the wasm kernels in both builds (relaxed SIMD where the runtime has it, plain SIMD128;
// see test/helpers/kernel-backends.ts). Each backend computes every type itself, within the
// f32 summation bound of js, at 1–3 threads; a matmul equals its matvecs bit for bit and
// results do not depend on the thread count; the activations it prepares are bit-identical
// to activation.ts; attention and SwiGLU agree with attention.ts and ops.ts; memory from
// alloc() is read in place; bad arguments are refused alike (src/kernels/checks.ts); and
// stories260K's 64 greedy tokens equal the js backend's. Checks only one backend can make
// (the native build and its CPU record; wasm's K-quants bit for bit, memory growth and cap,
// the committed .wasm builds) are labelled with it, at the end.
//
// The native addon is built at install time (scripts/build-native.mjs). When it is not
// built the native tests fail, saying so: CI builds it, and a missing build must not pass as
// skipped tests.
//
// Tolerance: the integer block sums and the per-block scales are exactly the reference's;
// only the float summation differs (f32 lanes in C and wasm, f64 in js). The allowed
// |backend − js| per output is the textbook bound for summing k terms in f32,
// (k + 4)·2⁻²⁴·M with k = cols and M = Σ|terms|: Σ|wᵢ·aᵢ| with aᵢ the activation as the
// kernel sees it, and for weights with a min term (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K)
// Σ(|wᵢ + mᵢ| + |mᵢ|)·|aᵢ|, since the scaled quants and the mins are summed apart
// (test/helpers/kernel-bounds.ts). Observed errors are 10–100× below it (relative ~1e-6);
// a single wrong block of 32 values would exceed it ~100-fold.
//
// Attention and SwiGLU: the compiled code sums in f32 where js sums in f64, and has its own
// exp (within 2 ulp). With an f32 cache every output is within 1e-5 of js (values in
// [-1, 1]; observed ≤ 5e-7). With an f16 cache the queries are rounded to f16 exactly as js
// rounds them (bit for bit), but a probability that lands near the midpoint of two f16
// values may round the other way, moving by one f16 step (≤ 2⁻¹⁰·p): each output is within
// 1e-5 + 2⁻¹⁰·max|v| + ctx·2⁻²⁴ of js, and such flips are rare, so at most 1% of the outputs
// may differ by more than 1e-5 (observed ~0.1%; skipping the probability rounding would put
// ~60% over); on steps built to hit the f16 rounding edges the bound is per output, one f16
// ulp per probability that lies near a rounding boundary (f16AttentionBounds). SwiGLU:
// |Δ| ≤ 1e-6·|js| + 1e-35.

import test from 'ava';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { GgmlTypeInfo } from '../src/ggml/types.ts';
import type { AttentionStep } from '../src/kernels/attention.ts';
import { JsBackend, type KernelBackend } from '../src/kernels/backend.ts';
import { KernelBackendError, MAX_THREADS } from '../src/kernels/checks.ts';
import { makeWeight, type Weight } from '../src/kernels/matvec.ts';
import { supportedTypes } from '../src/kernels/types.ts';
import { NativeBackend, isNativeAvailable } from '../src/kernels/native/index.ts';
import { WasmBackend, WasmBackendError } from '../src/kernels/wasm/backend.ts';
import { repoRoot } from './helpers/paths.ts';
import { attentionStep, copyStep, edgeVector, randomVector, rng, weightPair } from './helpers/kernel-inputs.ts';
import { f16AttentionBounds, summationBounds } from './helpers/kernel-bounds.ts';
import {
  SUBJECTS,
  nativeAvailable,
  nativeIsas,
  relaxedAvailable,
  withBackend,
  type BackendErrorClass,
  type Subject,
} from './helpers/kernel-backends.ts';
import { greedyMatchesJs } from './helpers/greedy.ts';
import { activationMismatches, matmulMismatches } from './helpers/kernel-checks.ts';

const run = promisify(execFile);
const NOT_BUILT =
  'the native addon is not built or does not load here: run `npm run build:native` (needs a C compiler); CI builds it';
const THREADS = [1, 2, 3];
const ROWS = [1, 7, 33, 67];

/** Row lengths per type: odd and block-multiple lengths, 2080 (65 blocks of 32), and 1, 2, 3, 9, 11 super-blocks for K-quants. */
function colsFor(info: GgmlTypeInfo): number[] {
  if (info.blockSize === 1) return [1, 7, 32, 33, 96, 2080];
  if (info.blockSize === 32) return [32, 96, 2080];
  return [256, 512, 768, 2304, 2816];
}

/** K-quants sum integers within 256 values and do the float step in f64 as js does. */
const EXACT_K = new Set(['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K']);
const bitsOf = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

/** Whether b's product of `w` (by default the pair's own weight) with x lies within the f32 summation bound of js's. */
function agreesWithJs(b: KernelBackend, pair: { own: Weight; js: Weight }, x: Float32Array, w = pair.own): boolean {
  const want = new Float32Array(w.rows);
  const got = new Float32Array(w.rows);
  new JsBackend().matvec(pair.js, x, want);
  b.matvec(w, x, got);
  const bound = summationBounds(pair.js, x);
  return want.every((v, i) => Math.abs(v - got[i]) <= bound[i]);
}

test('the native addon is built and loads', (t) => {
  t.true(nativeAvailable, NOT_BUILT);
  t.true(nativeIsas.includes('scalar'));
  if (process.arch === 'x64')
    t.true(nativeIsas.includes('avx2'), `an x64 build machine without AVX2? paths: ${nativeIsas.join(', ')}`);
  if (process.arch === 'arm64')
    t.true(nativeIsas.includes('neon'), `an arm64 build without NEON? paths: ${nativeIsas.join(', ')}`);
});

test('Q4_0 products: the AVX2 and AVX-512 gemms give the same bits, matvec and matmul alike', async (t) => {
  if (!(nativeIsas.includes('avx2') && nativeIsas.includes('avx512'))) {
    t.pass(`this build has ${nativeIsas.join(', ')}: nothing to compare`);
    return;
  }
  const info = supportedTypes.find((i) => i.name === 'Q4_0')!;
  const outs: Float32Array[][] = [];
  for (const isa of ['avx2', 'avx512'] as const) {
    const b = await NativeBackend.create({ threads: 2, isa });
    try {
      const next = rng(7);
      // 37 rows: two whole groups of 16 and a short one (and an odd group of 8 on AVX2)
      const w = weightPair(b, info, 37, 256, 11).own;
      const xs = randomVector(5 * 256, next);
      const mat = new Float32Array(5 * 37);
      b.matmul(w, xs, 5, mat);
      const vec = new Float32Array(37);
      b.matvec(w, xs.subarray(3 * 256, 4 * 256), vec);
      outs.push([mat, vec]);
    } finally {
      await b.close();
    }
  }
  t.deepEqual(outs[0], outs[1]);
  t.deepEqual(outs[0][1], outs[0][0].subarray(3 * 37, 4 * 37), 'a matvec is its row of the matmul');
});

test('relaxed SIMD is available and checked correct on this runtime (x64 and arm64 Node 20+)', (t) => {
  t.true(relaxedAvailable);
});

// js outputs per case, shared by every backend and thread count.
const reference = new Map<string, { want: Float32Array; bound: Float64Array; x: Float32Array }>();

for (const s of SUBJECTS) {
  for (const threads of THREADS) {
    test(`${s.label}: every type matches the js reference within the f32 summation bound, ${threads} thread(s)`, async (t) => {
      const js = new JsBackend();
      // minParallelBytes 0: split even tiny products, so row ranges of 0–1 rows per thread run.
      await withBackend(s, { threads, minParallelBytes: 0 }, (b) => {
        t.is(b.name, s.kind);
        t.is(b.isa, s.isa);
        t.is(b.threads, threads);
        for (const info of supportedTypes) {
          // A type the backend dropped would pass unnoticed through its js fallback.
          t.true(b.supports(info.id), `${info.name} has ${s.kind} kernels`);
          for (const rows of ROWS) {
            for (const cols of colsFor(info)) {
              const seed = rows * 7919 + cols;
              const w = weightPair(b, info, rows, cols, seed);
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
              b.matvec(w.own, ref.x, got);
              // wasm only: its K-quant dot products equal the js reference bit for bit.
              if (s.kind === 'wasm' && EXACT_K.has(info.name) && !got.every((v, r) => Object.is(v, ref.want[r]))) {
                t.fail(
                  `${w.own.name} (${s.label}): ${Array.from(got)} js ${Array.from(ref.want)} (expected identical)`,
                );
              }
              for (let r = 0; r < rows; r++) {
                const err = Math.abs(got[r] - ref.want[r]);
                if (!(err <= ref.bound[r]))
                  t.fail(
                    `${w.own.name} row ${r} (${s.label}): ${got[r]} js ${ref.want[r]} |Δ| ${err} > ${ref.bound[r]}`,
                  );
              }
            }
          }
        }
      });
    });
  }

  for (const wideTiles of s.tileForms) {
    // Eight-vector (relaxed Q4_0) and four-vector tiles (wasm wide: i16 activations, the x86
    // default; narrow: int8, arm's and the relaxed build's) and the single-vector remainder
    // must all give the matvec's bits: 5 vectors take a tile and one, 13 every form; on native
    // AVX-512, Q4_0 runs its gemm for every n (2: a batch of two decoding sessions; 70: more
    // vectors than the gemm holds accumulators for at once).
    const form = wideTiles === undefined ? '' : `, ${wideTiles ? 'wide' : 'narrow'} tiles`;
    test(`${s.label}: matmul over n vectors equals n matvecs bit for bit, rows split over 3 threads${form}`, async (t) => {
      await withBackend(s, { threads: 3, minParallelBytes: 0, wideTiles }, (b) => {
        t.deepEqual(matmulMismatches(b, supportedTypes, 5), []);
        t.deepEqual(matmulMismatches(b, supportedTypes, 13), []);
        t.deepEqual(matmulMismatches(b, supportedTypes, 2), []);
        t.deepEqual(matmulMismatches(b, supportedTypes, 7), []);
        // more vectors than native's gemm keeps accumulators for at once (64)
        t.deepEqual(matmulMismatches(b, supportedTypes, 70), []);
      });
    });
  }

  test(`${s.label}: results do not depend on the thread count`, async (t) => {
    await withBackend(s, { threads: 1 }, (one) =>
      withBackend(s, { threads: 3, minParallelBytes: 0 }, (three) => {
        for (const name of ['Q4_0', 'Q4_K', 'F16']) {
          const info = supportedTypes.find((ty) => ty.name === name)!;
          const w = weightPair(one, info, 67, 512, 3).own;
          const x = randomVector(512, rng(4));
          const a = new Float32Array(67);
          const b = new Float32Array(67);
          one.matvec(w, x, a);
          three.matvec(w, x, b);
          t.deepEqual(bitsOf(a), bitsOf(b), name);
        }
      }),
    );
  });

  test(`${s.label}: thousands of back-to-back products on 3 threads give the 1-thread bits`, async (t) => {
    // Products alternate between one chunk (below minParallelBytes: the calling thread alone)
    // and many chunks claimed by all threads, so workers keep meeting jobs that moved on.
    await withBackend(s, { threads: 1 }, (one) =>
      withBackend(s, { threads: 3, minParallelBytes: 4096 }, (three) => {
        const info = supportedTypes.find((ty) => ty.name === 'Q4_0')!;
        const shapes = [
          [5, 64],
          [67, 256],
          [300, 96],
          [2, 512],
          [1000, 32],
        ];
        const pairs = shapes.map(([rows, cols], i) => ({
          a: weightPair(one, info, rows, cols, 50 + i).own,
          b: weightPair(three, info, rows, cols, 50 + i).own,
        }));
        const next = rng(9);
        for (let k = 0; k < 3000; k++) {
          const { a, b } = pairs[k % pairs.length];
          const x = randomVector(a.cols, next);
          const want = new Float32Array(a.rows);
          const got = new Float32Array(a.rows);
          one.matvec(a, x, want);
          three.matvec(b, x, got);
          if (!got.every((v, r) => Object.is(v, want[r])))
            return t.fail(`product ${k} (${a.name}) differs between 3 threads and 1`);
        }
        t.pass();
      }),
    );
  });

  test(`${s.label}: Q8_0, Q8_1, Q8_K, f16 and bf16 activations are bit for bit those of activation.ts`, async (t) => {
    const next = rng(7);
    const edge = edgeVector(next); // 512 values
    const inputs = [
      edge,
      edge.map((v) => -v),
      randomVector(2048, next),
      randomVector(256, next).map((v) => v * 1000),
      randomVector(2080, next),
    ];
    await withBackend(s, { threads: 1 }, (b) => {
      for (const x of inputs) t.deepEqual(activationMismatches(b, x), []);
      t.throws(() => b.activation('q8_k', new Float32Array(96), 96), {
        instanceOf: s.error,
        message: /q8_k activations need a multiple of 256 values, got 96/,
      });
    });
  });
}

/** [nHeads, nKvHeads, headDim]: groups of 1, 4 and 8 query heads per KV head; 18 leaves row tails. */
const HEADS: [number, number, number][] = [
  [4, 4, 16],
  [12, 3, 80],
  [16, 2, 64],
  [8, 1, 80],
  [6, 3, 18],
];

// Steps (q as drawn) and the js reference's results (q rounded, out), shared by every backend and thread count.
const attentionCases = new Map<string, { step: AttentionStep; want: AttentionStep }>();

function attentionCase(
  nHeads: number,
  nKvHeads: number,
  headDim: number,
  start: number,
  n: number,
  half: boolean,
  qScale = 3,
) {
  const key = `${nHeads} ${nKvHeads} ${headDim} ${start} ${n} ${half} ${qScale}`;
  let c = attentionCases.get(key);
  if (!c) {
    const seed = nHeads * 131 + headDim * 7 + start * 3 + n + (qScale === 3 ? 0 : 1000 * qScale);
    const step = attentionStep(nHeads, nKvHeads, headDim, start, n, half, seed, qScale);
    if (qScale !== 3) {
      // f16 rounding edges: ties to even either way, a half subnormal, below half the smallest
      step.q.set([1 + 2 ** -11, -(1 + 3 * 2 ** -11), 2 ** -20 + 2 ** -26, 2 ** -26], 0);
    }
    const want = copyStep(step);
    new JsBackend().attend(want);
    c = { step, want };
    attentionCases.set(key, c);
  }
  return c;
}

for (const s of SUBJECTS) {
  for (const threads of THREADS) {
    test(`${s.label}: attention matches the js reference (f32 cache within 1e-5; f16 within one f16 step per probability, q rounded bit for bit), ${threads} thread(s)`, async (t) => {
      let worst32 = 0;
      let worst16 = 0;
      let total16 = 0;
      let over16 = 0;
      // minParallelBytes 0: even one token's attention is split into (token, KV head) chunks.
      await withBackend(s, { threads, minParallelBytes: 0 }, (b) => {
        for (const [nHeads, nKvHeads, headDim] of HEADS) {
          for (const start of [0, 13, 100]) {
            for (const n of [1, 3, 8]) {
              for (const half of [false, true]) {
                const label = `${nHeads}/${nKvHeads} heads of ${headDim}, start ${start}, n ${n}, ${half ? 'f16' : 'f32'} cache (${s.label})`;
                const { step, want } = attentionCase(nHeads, nKvHeads, headDim, start, n, half);
                const got = copyStep(step);
                b.attend(got);
                t.deepEqual(bitsOf(got.q), bitsOf(want.q), `${label}: q as js leaves it`);
                const bound = half ? 1e-5 + 2 ** -10 + (start + n) * 2 ** -24 : 1e-5;
                for (let i = 0; i < want.out.length; i++) {
                  const err = Math.abs(got.out[i] - want.out[i]);
                  if (!(err <= bound))
                    t.fail(`${label}: out[${i}] ${got.out[i]} js ${want.out[i]} |Δ| ${err} > ${bound}`);
                  if (!half) worst32 = Math.max(worst32, err);
                  else {
                    total16++;
                    if (err > 1e-5) over16++;
                    worst16 = Math.max(worst16, err);
                  }
                }
              }
            }
          }
        }
      });
      t.true(over16 <= total16 / 100, `f16: ${over16} of ${total16} outputs differ by more than 1e-5`);
      t.log(
        `max |Δ| f32 ${worst32.toExponential(2)}, f16 ${worst16.toExponential(2)} (${over16} of ${total16} over 1e-5)`,
      );
    });
  }

  test(`${s.label}: attention at the f16 rounding edges and with peaked scores stays within the per-probability f16 bound, 1 and 3 threads`, async (t) => {
    let cases = 0;
    for (const threads of [1, 3]) {
      await withBackend(s, { threads, minParallelBytes: 0 }, (b) => {
        for (const half of [false, true]) {
          for (const group of [1, 4, 8]) {
            for (const nKvHeads of [1, 3]) {
              for (const headDim of [16, 64, 80]) {
                for (const start of [0, 13]) {
                  for (const n of [1, 5]) {
                    // peaked: large scores, so most probabilities are tiny (f16 subnormals, exp underflow)
                    for (const qScale of [1, 12]) {
                      const { step, want } = attentionCase(group * nKvHeads, nKvHeads, headDim, start, n, half, qScale);
                      const got = copyStep(step);
                      b.attend(got);
                      const name = `${half ? 'f16' : 'f32'} group ${group} nKv ${nKvHeads} headDim ${headDim} start ${start} n ${n} q×${qScale}, ${threads} thread(s)`;
                      cases++;
                      if (!got.q.every((v, i) => Object.is(v, want.q[i])))
                        t.fail(`${name}: q after the step differs from the js reference's`);
                      const { keys, values } = got;
                      const bound =
                        keys instanceof Uint16Array && values instanceof Uint16Array
                          ? f16AttentionBounds({ ...got, keys, values })
                          : undefined;
                      const i = want.out.findIndex((v, k) => !(Math.abs(got.out[k] - v) <= (bound?.[k] ?? 1e-5)));
                      if (i >= 0)
                        t.fail(`${name} output ${i}: ${got.out[i]} js ${want.out[i]} > ${bound?.[i] ?? 1e-5}`);
                    }
                  }
                }
              }
            }
          }
        }
      });
    }
    t.is(cases, 576);
  });

  test(`${s.label}: attention over a long context (prefill of 70 tokens after 300) matches the js reference on 2 threads`, async (t) => {
    const js = new JsBackend();
    await withBackend(s, { threads: 2 }, (b) => {
      for (const half of [false, true]) {
        const step = attentionStep(32, 4, 64, 300, 70, half, 77, 4);
        const want = copyStep(step);
        const got = copyStep(step);
        js.attend(want);
        b.attend(got);
        t.deepEqual(bitsOf(got.q), bitsOf(want.q), 'q after the step');
        const { keys, values } = got;
        const bound =
          keys instanceof Uint16Array && values instanceof Uint16Array
            ? f16AttentionBounds({ ...got, keys, values })
            : undefined;
        const over = want.out.filter((v, i) => !(Math.abs(got.out[i] - v) <= (bound?.[i] ?? 1e-5))).length;
        t.is(over, 0, `${half ? 'f16' : 'f32'}: outputs off by more than the bound`);
      }
    });
  });

  test(`${s.label}: attention over n tokens equals n one-token steps, and does not depend on the thread count, bit for bit`, async (t) => {
    await withBackend(s, { threads: 1 }, (one) =>
      withBackend(s, { threads: 3, minParallelBytes: 0 }, (three) => {
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
      }),
    );
  });

  test(`${s.label}: swiglu matches the js reference within 1e-6 relative, odd sizes, in place too, 1–3 threads`, async (t) => {
    const js = new JsBackend();
    const next = rng(99);
    // wasm only: its exp saturates at e^88, so silu(g) for g below about -88 is g/e^88, not ~0:
    // within the bound while |g| < 1e3 (|Δ| ≤ |g|·6e-39), so its edges stop short of ±1e30.
    const edges = [
      0,
      -0,
      1e-30,
      -1e-30,
      1e-7,
      -1e-7,
      0.5,
      -0.5,
      20,
      -20,
      88,
      -88,
      89,
      -89,
      100,
      -100,
      ...(s.kind === 'wasm' ? [] : [1e30, -1e30]),
    ];
    // gates from ±0.01 to ±200: e^-g over- and underflows f32 at the ends
    const wide = (n: number) => Float32Array.from({ length: n }, () => (next() * 2 - 1) * 10 ** (next() * 4 - 2) * 2);
    for (const threads of THREADS) {
      await withBackend(s, { threads, minParallelBytes: 0 }, (b) => {
        for (const n of [0, 1, 3, 7, 15, 17, 33, 64, 1001, edges.length, 100_003]) {
          for (const gate of [
            n === edges.length ? Float32Array.from(edges) : randomVector(n, next).map((v) => 12 * v),
            wide(n),
          ]) {
            const up = randomVector(n, next);
            const want = new Float32Array(n + 1);
            const got = new Float32Array(n + 1).fill(7);
            js.swiglu(want, gate, up, n);
            b.swiglu(got, gate, up, n);
            t.is(got[n], 7, `n ${n}: nothing written past n`);
            const inPlace = gate.slice();
            b.swiglu(inPlace, inPlace, up, n); // out may be gate
            const i = want.findIndex((v, k) => k < n && !(Math.abs(got[k] - v) <= 1e-6 * Math.abs(v) + 1e-35));
            if (i >= 0)
              t.fail(
                `n ${n} [${i}] (${s.label}, ${threads} threads): silu(${gate[i]})·${up[i]} ${got[i]} js ${want[i]}`,
              );
            t.is(
              inPlace.findIndex((v, k) => k < n && !Object.is(v, got[k])),
              -1,
              `n ${n}: out = gate gives the same values`,
            );
          }
        }
      });
    }
  });

  test(`${s.label}: alloc() gives zeroed memory the kernels read in place; a plain Uint8Array works too; closed is an error`, async (t) => {
    const info = supportedTypes.find((ty) => ty.name === 'Q4_0')!;
    const b = await s.create({ threads: 2, minParallelBytes: 0 });
    try {
      const big = b.alloc(3 * 2 ** 20);
      t.is(big.length, 3 * 2 ** 20);
      t.true(big.every((v) => v === 0));
      t.is(b.alloc(0).length, 0);
      const pair = weightPair(b, info, 7, 96, 13);
      const x = randomVector(96, rng(1));
      t.true(agreesWithJs(b, pair, x));
      // Writes through the view are what the kernels see.
      pair.own.data.fill(0);
      const got = new Float32Array(7);
      b.matvec(pair.own, x, got);
      t.true(got.every((v) => v === 0));
      // Weights in ordinary js memory, at an odd byte offset (native reads them in place, wasm copies them in).
      const raw = new Uint8Array(pair.js.data.length + 1);
      raw.set(pair.js.data, 1);
      t.true(agreesWithJs(b, pair, x, makeWeight('odd', info, [96, 7], raw.subarray(1))));
    } finally {
      await b.close();
    }
    const one = new Float32Array(1);
    t.throws(() => b.alloc(16), { instanceOf: s.error, message: /closed/ });
    t.throws(() => b.attend(copyStep(attentionStep(8, 2, 16, 4, 2, false, 1))), {
      instanceOf: s.error,
      message: /closed/,
    });
    t.throws(() => b.swiglu(one, one, one, 1), { instanceOf: s.error, message: /closed/ });
  });

  test(`${s.label}: bad options are ${s.code}_ARGUMENT errors naming the limit`, async (t) => {
    for (const [opts, message] of [
      [{ threads: 0 }, /threads must be an integer 1 … 256, got 0/],
      [{ threads: 1.5 }, /threads must be an integer 1 … 256, got 1.5/],
      [{ threads: MAX_THREADS + 1 }, /threads must be an integer 1 … 256, got 257/],
      [{ threads: 1, spinMicros: -1 }, /spinMicros must be an integer 0 … 1000000, got -1/],
      [{ threads: 1, minParallelBytes: -1 }, /minParallelBytes must be an integer ≥ 0, got -1/],
    ] as const) {
      const err = await t.throwsAsync(s.create(opts), { instanceOf: s.error, message });
      t.is((err as KernelBackendError<string> | undefined)?.code, `${s.code}_ARGUMENT`);
    }
  });
}

// The argument checks are one set (src/kernels/checks.ts), the js reference's included.
const CHECKED: { label: string; create: () => Promise<KernelBackend>; error: BackendErrorClass; code: string }[] = [
  { label: 'js', create: async () => new JsBackend(), error: KernelBackendError<string>, code: 'JS_ARGUMENT' },
  ...SUBJECTS.map((s) => ({
    label: s.label,
    create: () => s.create({ threads: 2 }),
    error: s.error,
    code: `${s.code}_ARGUMENT`,
  })),
];

for (const c of CHECKED) {
  test(`${c.label}: products, attention and swiglu refuse bad arguments with ${c.code} errors naming the problem`, async (t) => {
    const b = await c.create();
    const ok = attentionStep(8, 2, 16, 4, 2, false, 1);
    const half = attentionStep(8, 2, 16, 4, 2, true, 1);
    const throws = (f: () => void, message: RegExp) => {
      const err = t.throws(f, { instanceOf: c.error, message }, String(message));
      t.is((err as KernelBackendError<string> | undefined)?.code, c.code);
    };
    const bad = (s: Partial<AttentionStep>, message: RegExp) =>
      throws(() => b.attend({ ...copyStep(ok), ...s }), message);
    try {
      b.attend(copyStep(ok));
      b.attend(copyStep(half));
      bad({ values: half.values }, /values must be a Float32Array like the keys/);
      bad(
        { keys: new Int16Array(ok.keys.length) as unknown as Uint16Array },
        /keys must be a Float32Array \(f32 cache\) or a Uint16Array/,
      );
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
      throws(() => b.swiglu(x, x, x.subarray(1), 10), /swiglu: up holds 9 values, 10 needed/);
      throws(() => b.swiglu(x.subarray(2), x, x, 10), /swiglu: out holds 8 values, 10 needed/);
      throws(() => b.swiglu(x, x, x, -1), /swiglu over -1 values/);
      const w = weightPair(
        b,
        supportedTypes.find((ty) => ty.name === 'Q4_0')!,
        7,
        96,
        13,
      ).own;
      const v = randomVector(96, rng(5));
      const out = new Float32Array(7);
      throws(() => b.matvec(w, v.subarray(0, 95), out), /Q4_0\[7×96\]: input holds 95 values, 1×96 needed/);
      throws(() => b.matvec(w, v, out.subarray(0, 6)), /Q4_0\[7×96\]: output holds 6 values, 1×7 needed/);
      if (b.matmul)
        throws(() => b.matmul?.(w, v, 0, out), /Q4_0\[7×96\]: vector count must be a positive integer, got 0/);
      throws(() => b.alloc(-1), /cannot allocate -1 bytes/);
    } finally {
      await b.close();
    }
  });
}

for (const [kind, module, make] of [
  ['native', 'src/kernels/native/index.ts', 'NativeBackend'],
  ['wasm', 'src/kernels/wasm/backend.ts', 'WasmBackend'],
] as const) {
  test(`${kind}: worker threads do not keep the process alive`, async (t) => {
    // A child that creates a 3-thread backend and neither closes it nor exits explicitly.
    const script = `import { ${make} } from ${JSON.stringify(join(repoRoot, module))};
      const b = await ${make}.create({ threads: 3 });
      console.log('threads', b.threads);`;
    // A process kept alive would never exit: the timeout bounds that. It is generous because
    // tsx compiles the module graph cold in the child, slow on a loaded 2-core CI machine.
    const { stdout } = await run(process.execPath, ['--import=tsx', '--input-type=module', '-e', script], {
      cwd: repoRoot,
      timeout: 90_000,
    });
    t.is(stdout.trim(), 'threads 3');
  });
}

for (const s of SUBJECTS) greedyMatchesJs(test, s.label, () => s.create({ threads: 2, minParallelBytes: 0 }));

// ---- native only --------------------------------------------------------------------------

test('native only: an addon built on another CPU is refused before it is loaded', async (t) => {
  t.true(isNativeAvailable(), NOT_BUILT);
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
    t.regex(
      error,
      /^NATIVE_UNAVAILABLE native backend: .* was built for another CPU \(arm64, Cortex-A76; this is .*\); run npm run build:native on this machine$/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('native only: without a C compiler the install step still succeeds and says herd will use wasm', async (t) => {
  const { stdout } = await run(process.execPath, [join(repoRoot, 'scripts/build-native.mjs')], {
    cwd: repoRoot,
    env: { ...process.env, CC: 'false' },
    timeout: 60_000,
  });
  t.regex(
    stdout.trim(),
    /^herd: native kernels not built \(no working C compiler \(CC=false\)\); herd will use the wasm backend$/,
  );
});

test('native only: the instruction-set paths of the build are reported, and one not built is refused', async (t) => {
  t.true(nativeAvailable, NOT_BUILT);
  const b = await NativeBackend.create({ threads: 1 });
  try {
    t.is(b.isa, nativeIsas[nativeIsas.length - 1], 'the best path by default');
  } finally {
    await b.close();
  }
  const missing = (['scalar', 'avx2', 'avx512', 'neon', 'neon-dotprod'] as const).find(
    (isa) => !nativeIsas.includes(isa),
  )!;
  await t.throwsAsync(NativeBackend.create({ threads: 1, isa: missing }), {
    message: new RegExp(`instruction-set path ${missing} is not in this build`),
  });
});

// ---- wasm only ----------------------------------------------------------------------------

test('wasm only: the default build is relaxed SIMD where the runtime has it', async (t) => {
  const b = await WasmBackend.create({ threads: 1 });
  try {
    t.is(b.simd, relaxedAvailable ? 'relaxed' : 'simd128');
    t.is(b.isa, relaxedAvailable ? 'relaxed-simd' : 'simd128');
  } finally {
    await b.close();
  }
});

test('wasm only: views returned by alloc() stay valid and addressable as the memory grows', async (t) => {
  const wasm = await WasmBackend.create({ threads: 2, minParallelBytes: 0 });
  try {
    const first = weightPair(
      wasm,
      supportedTypes.find((ty) => ty.name === 'Q8_0')!,
      33,
      96,
      12,
    );
    const before = first.own.data.buffer.byteLength;
    const big = wasm.alloc(96 * 2 ** 20);
    t.true(big.buffer.byteLength > before, 'the memory grew');
    t.is(first.own.data.byteOffset % 64, 0);
    big.fill(0xa5);
    t.deepEqual(first.own.data, first.js.data, 'old view still reads the weight bytes');
    t.true(agreesWithJs(wasm, first, randomVector(96, rng(3))), 'the kernels read the weight through the grown memory');
  } finally {
    await wasm.close();
  }
});

test('wasm only: allocating past the memory cap is a clear error', async (t) => {
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

test('wasm only: without WebAssembly SIMD, create() fails with WASM_UNAVAILABLE', async (t) => {
  const validate = WebAssembly.validate;
  WebAssembly.validate = () => false;
  const pending = WasmBackend.create({ threads: 1 });
  WebAssembly.validate = validate;
  const err = await t.throwsAsync(pending, { instanceOf: WasmBackendError });
  t.is(err?.code, 'WASM_UNAVAILABLE');
  t.regex(err?.message ?? '', /no WebAssembly SIMD128; use the js backend/);
});

test('wasm only: the committed kernels.wasm and kernels-relaxed.wasm are byte-identical to a fresh asc build', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'herd-wasm-'));
  try {
    await run(process.execPath, [join(repoRoot, 'scripts/build-wasm.mjs'), '--out', dir], {
      cwd: repoRoot,
      timeout: 120_000,
    });
    for (const file of ['kernels.wasm', 'kernels-relaxed.wasm']) {
      const committed = readFileSync(join(repoRoot, 'src/kernels/wasm', file));
      t.true(committed.equals(readFileSync(join(dir, file))), `${file} is stale: run npm run build:wasm and commit it`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the backends under test: every native path this build compiled and both wasm builds', (t) => {
  const labels = SUBJECTS.map((s: Subject) => s.label);
  for (const isa of nativeIsas) t.true(labels.includes(`native ${isa}`));
  t.true(labels.includes('wasm simd128'));
  if (relaxedAvailable) t.true(labels.includes('wasm relaxed'));
});
