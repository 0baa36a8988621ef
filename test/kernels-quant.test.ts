import test from 'ava';
import { createHash } from 'node:crypto';
import { kernelType, type KernelType } from '../src/kernels/types.ts';
import { Activation, type ActivationKind } from '../src/kernels/activation.ts';
import { makeWeight, matvec, MatvecScratch, KernelError } from '../src/kernels/matvec.ts';
import { JsBackend } from '../src/kernels/backend.ts';
import { ggmlTypeByName } from '../src/ggml/types.ts';
import { f16ToF32, f32ToF16 } from '../src/ggml/half.ts';

// The quantized weight types beyond Q4_0/Q8_0, each with the activation form ggml pairs it
// with (vec_dot_type) and the relative RMS round-trip error allowed on N(0, 1) data. The
// bounds sit ~10% above what ggml's reference quantizers reach (measured: Q4_1 0.078,
// Q5_0 0.043, Q5_1 0.038, Q2_K 0.296, Q3_K 0.150, Q4_K 0.071, Q5_K 0.036, Q6_K 0.0177).
const cases: { name: string; activation: ActivationKind; maxRelRms: number }[] = [
  { name: 'q4_1', activation: 'q8_1', maxRelRms: 0.086 },
  { name: 'q5_0', activation: 'q8_0', maxRelRms: 0.047 },
  { name: 'q5_1', activation: 'q8_1', maxRelRms: 0.042 },
  { name: 'q2_k', activation: 'q8_k', maxRelRms: 0.325 },
  { name: 'q3_k', activation: 'q8_k', maxRelRms: 0.165 },
  { name: 'q4_k', activation: 'q8_k', maxRelRms: 0.078 },
  { name: 'q5_k', activation: 'q8_k', maxRelRms: 0.04 },
  { name: 'q6_k', activation: 'q8_k', maxRelRms: 0.0195 },
];

function kernel(name: string): KernelType {
  const info = ggmlTypeByName(name);
  const k = info && kernelType(info.id);
  if (!k) throw new Error(`no kernels for ${name}`);
  return k;
}

/** mulberry32: a small seeded PRNG, so every run sees the same data. */
function prng(seed: number): () => number {
  let a = seed | 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function gauss(r: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

function gaussArray(n: number, seed: number, scale = 1): Float32Array {
  const r = prng(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = gauss(r) * scale;
  return x;
}

function quantize(k: KernelType, x: Float32Array): Uint8Array {
  const bytes = new Uint8Array((x.length / k.info.blockSize) * k.info.typeSize);
  k.quantizeRow(x, 0, x.length, bytes, 0);
  return bytes;
}

function dequantize(k: KernelType, bytes: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  k.dequantizeRow(bytes, 0, n, out, 0);
  return out;
}

/** The values a quantized activation stands for: d·q per block (32 values, or 256 for q8_k). */
function activationValues(a: Activation): Float64Array {
  const block = a.kind === 'q8_k' ? 256 : 32;
  const v = new Float64Array(a.n);
  for (let i = 0; i < a.n; i++) v[i] = a.d[Math.floor(i / block)] * a.qs[i];
  return v;
}

/**
 * Σ dequantize(w)·dequantize(x) and the tolerance dot may differ from it by: f32 rounding of
 * the combined scales, plus, for Q8_1 pairs, the activation's s = f16(d·Σq), which ggml
 * rounds from the unrounded f32 d (up to ~2^-10 of |s|, times the weight block's min).
 */
function referenceDot(
  k: KernelType,
  w: Uint8Array,
  off: number,
  n: number,
  a: Activation,
): { value: number; tol: number } {
  const wv = new Float32Array(n);
  k.dequantizeRow(w, off, n, wv, 0);
  const av = activationValues(a);
  let value = 0;
  let mag = 0;
  for (let i = 0; i < n; i++) {
    value += wv[i] * av[i];
    mag += Math.abs(wv[i] * av[i]);
  }
  let tol = 1e-5 * mag + 1e-30;
  if (a.kind === 'q8_1') {
    for (let b = 0; b < n / 32; b++) {
      const o = off + b * k.info.typeSize;
      tol += Math.abs(f16ToF32(w[o + 2] | (w[o + 3] << 8))) * Math.abs(a.s[b]) * 2 ** -9;
    }
  }
  return { value, tol };
}

for (const c of cases) {
  test(`${c.name} pairs with ${c.activation} activations`, (t) => {
    t.is(kernel(c.name).activation, c.activation);
  });

  test(`${c.name} round trip stays within ${c.maxRelRms} relative RMS error on gaussian data`, (t) => {
    const k = kernel(c.name);
    const x = gaussArray(256 * 64, 11);
    const y = dequantize(k, quantize(k, x), x.length);
    let err = 0;
    let sig = 0;
    for (let i = 0; i < x.length; i++) {
      err += (x[i] - y[i]) ** 2;
      sig += x[i] ** 2;
    }
    const rel = Math.sqrt(err / sig);
    t.true(rel < c.maxRelRms, `relative RMS error ${rel}`);
    // Far below the type's resolution would mean the data never reached the quantizer.
    t.true(rel > c.maxRelRms / 20, `relative RMS error ${rel} is implausibly small`);
  });

  test(`${c.name} round trip maps zeros to zeros and commutes with power-of-two scaling`, (t) => {
    const k = kernel(c.name);
    const n = 512;
    const zeros = dequantize(k, quantize(k, new Float32Array(n)), n);
    t.true(zeros.every((v) => v === 0));
    // Scaling the input by a power of two scales the output the same way.
    const x = gaussArray(n, 5);
    const big = Float32Array.from(x, (v) => v * 1024);
    const a = dequantize(k, quantize(k, x), n);
    const b = dequantize(k, quantize(k, big), n);
    for (let i = 0; i < n; i++) t.is(b[i], a[i] * 1024);
  });

  test(`${c.name} dot equals the sum of dequantized products`, (t) => {
    const k = kernel(c.name);
    const cols = 1024;
    const rows = 5;
    const w = gaussArray(cols * rows, 21, 0.05);
    // An offset makes the Q*_1 and K-quant mins matter.
    for (let i = 0; i < w.length; i++) w[i] += 0.02;
    const rb = (cols / k.info.blockSize) * k.info.typeSize;
    const bytes = new Uint8Array(rb * rows);
    for (let r = 0; r < rows; r++) k.quantizeRow(w, r * cols, cols, bytes, r * rb);
    const x = gaussArray(cols, 22);
    const a = new Activation(cols).fill(k.activation, x, cols);
    for (let r = 0; r < rows; r++) {
      const got = k.dot(bytes, r * rb, cols, a);
      const { value, tol } = referenceDot(k, bytes, r * rb, cols, a);
      t.true(Math.abs(got - value) <= tol, `row ${r}: dot ${got}, dequantized ${value}, tolerance ${tol}`);
    }
  });

  test(`${c.name} matvec over an odd number of rows matches per-row dequantized products`, (t) => {
    const k = kernel(c.name);
    const cols = 512;
    const rows = 7;
    const w = gaussArray(cols * rows, 31, 0.1);
    const rb = (cols / k.info.blockSize) * k.info.typeSize;
    const bytes = new Uint8Array(rb * rows);
    for (let r = 0; r < rows; r++) k.quantizeRow(w, r * cols, cols, bytes, r * rb);
    const weight = makeWeight('blk.0.ffn_up.weight', k.info, [cols, rows], bytes);
    const x = gaussArray(cols, 32);
    const out = new Float32Array(rows);
    matvec(weight, x, out, new MatvecScratch(cols));
    const a = new Activation(cols).fill(k.activation, x, cols);
    for (let r = 0; r < rows; r++) {
      const { value, tol } = referenceDot(k, bytes, r * rb, cols, a);
      // out is f32: allow its rounding on top.
      t.true(Math.abs(out[r] - value) <= tol + Math.abs(value) * 2 ** -23, `row ${r}: ${out[r]} vs ${value}`);
    }
  });

  test(`${c.name} weights with a partial last block are refused`, (t) => {
    const k = kernel(c.name);
    const cols = k.info.blockSize + 1;
    const data = new Uint8Array(Math.ceil((cols / k.info.blockSize) * k.info.typeSize) * 3);
    t.throws(() => makeWeight('bad', k.info, [cols, 3], data), { instanceOf: KernelError });
  });

  // 1.5 blocks of any type here is a whole number of bytes: the byte count alone cannot tell.
  test(`${c.name} weights with a partial last block are refused even when their byte count is whole`, (t) => {
    const k = kernel(c.name);
    const cols = k.info.blockSize + k.info.blockSize / 2;
    const data = new Uint8Array((cols / k.info.blockSize) * k.info.typeSize * 3);
    t.throws(() => makeWeight('bad', k.info, [cols, 3], data), { instanceOf: KernelError });
  });

  test(`${c.name} weights of the wrong byte size are refused`, (t) => {
    const k = kernel(c.name);
    const data = new Uint8Array(k.info.typeSize * 4 - 1);
    t.throws(() => makeWeight('bad', k.info, [k.info.blockSize * 2, 2], data), { instanceOf: KernelError });
  });
}

// --- Hand-built blocks: random bytes decoded by a per-value transcription of ggml's layout
// (ggml-common.h / dequantize_row_*), written independently of the kernels' loops, so a
// layout mistake shared by a quantizer and its dequantizer cannot hide behind a round trip.

const half = (w: Uint8Array, o: number): number => f16ToF32(w[o] | (w[o + 1] << 8));
const i8 = (v: number): number => (v << 24) >> 24;

/** ggml's get_scale_min_k4, as written there. */
function scaleMinK4(j: number, q: Uint8Array, o: number): [number, number] {
  if (j < 4) return [q[o + j] & 63, q[o + j + 4] & 63];
  return [(q[o + j + 4] & 0xf) | ((q[o + j - 4] >> 6) << 4), (q[o + j + 4] >> 4) | ((q[o + j] >> 6) << 4)];
}

/** Value e (0 ≤ e < block size) of the block at w[0..]. */
const spec: Record<string, (w: Uint8Array, e: number) => number> = {
  q4_1: (w, e) => {
    const byte = w[4 + (e & 15)];
    return (e < 16 ? byte & 15 : byte >> 4) * half(w, 0) + half(w, 2);
  },
  q5_0: (w, e) => {
    const qh = (w[2] | (w[3] << 8) | (w[4] << 16) | (w[5] << 24)) >>> 0;
    const byte = w[6 + (e & 15)];
    const q = (e < 16 ? byte & 15 : byte >> 4) | (((qh >>> e) & 1) << 4);
    return half(w, 0) * (q - 16);
  },
  q5_1: (w, e) => {
    const qh = (w[4] | (w[5] << 8) | (w[6] << 16) | (w[7] << 24)) >>> 0;
    const byte = w[8 + (e & 15)];
    const q = (e < 16 ? byte & 15 : byte >> 4) | (((qh >>> e) & 1) << 4);
    return q * half(w, 0) + half(w, 2);
  },
  q2_k: (w, e) => {
    const s = w[e >> 4];
    const q = (w[16 + 32 * (e >> 7) + (e & 31)] >> (2 * ((e >> 5) & 3))) & 3;
    return half(w, 80) * (s & 15) * q - half(w, 82) * (s >> 4);
  },
  q3_k: (w, e) => {
    const j = e >> 4;
    const low = j < 8 ? w[96 + j] & 15 : w[96 + j - 8] >> 4;
    const sc = (low | (((w[96 + 8 + (j % 4)] >> (2 * Math.floor(j / 4))) & 3) << 4)) - 32;
    const q = (w[32 + 32 * (e >> 7) + (e & 31)] >> (2 * ((e >> 5) & 3))) & 3;
    const h = (w[e & 31] >> (e >> 5)) & 1;
    return half(w, 108) * sc * (q - (h ? 0 : 4));
  },
  q4_k: (w, e) => {
    const [sc, m] = scaleMinK4(e >> 5, w, 4);
    const byte = w[16 + 32 * (e >> 6) + (e & 31)];
    const q = (e >> 5) & 1 ? byte >> 4 : byte & 15;
    return half(w, 0) * sc * q - half(w, 2) * m;
  },
  q5_k: (w, e) => {
    const [sc, m] = scaleMinK4(e >> 5, w, 4);
    const byte = w[48 + 32 * (e >> 6) + (e & 31)];
    const q = ((e >> 5) & 1 ? byte >> 4 : byte & 15) | (((w[16 + (e & 31)] >> (e >> 5)) & 1) << 4);
    return half(w, 0) * sc * q - half(w, 2) * m;
  },
  q6_k: (w, e) => {
    const h = e >> 7;
    const p = e & 127;
    const quarter = p >> 5;
    const l = p & 31;
    const byte = w[64 * h + 32 * (quarter & 1) + l];
    const lo = quarter >= 2 ? byte >> 4 : byte & 15;
    const hi = (w[128 + 32 * h + l] >> (2 * quarter)) & 3;
    return half(w, 208) * i8(w[192 + 8 * h + (p >> 4)]) * ((lo | (hi << 4)) - 32);
  },
};

/** Offsets of a block's f16 fields, which random bytes must fill with finite values. */
const halfFields: Record<string, number[]> = {
  q4_1: [0, 2],
  q5_0: [0],
  q5_1: [0, 2],
  q2_k: [80, 82],
  q3_k: [108],
  q4_k: [0, 2],
  q5_k: [0, 2],
  q6_k: [208],
};

for (const c of cases) {
  test(`${c.name} dequantizes hand-built blocks as ggml's layout defines`, (t) => {
    const k = kernel(c.name);
    const r = prng(77);
    const nBlocks = 3;
    const w = new Uint8Array(k.info.typeSize * nBlocks);
    for (let i = 0; i < w.length; i++) w[i] = Math.floor(r() * 256);
    for (let b = 0; b < nBlocks; b++) {
      for (const o of halfFields[c.name]) {
        const h = f32ToF16((r() - 0.3) * 2);
        w[b * k.info.typeSize + o] = h & 0xff;
        w[b * k.info.typeSize + o + 1] = h >> 8;
      }
    }
    const n = k.info.blockSize * nBlocks;
    const got = dequantize(k, w, n);
    for (let b = 0; b < nBlocks; b++) {
      const block = w.subarray(b * k.info.typeSize);
      for (let e = 0; e < k.info.blockSize; e++) {
        const want = Math.fround(spec[c.name](block, e));
        if (got[b * k.info.blockSize + e] !== want) {
          t.fail(`block ${b} value ${e}: ${got[b * k.info.blockSize + e]}, layout says ${want}`);
          return;
        }
      }
    }
    t.pass();
  });
}

test("q4_0 quantizer rounds x·id + 8.5 to f32 before truncating, as ggml's float sum does", (t) => {
  // -8 sets d = 1 (id = 1); 2.5 − 2⁻²² + 8.5 is 11 − 2⁻²², which f32 rounds to 11: level 11, not 10.
  const x = new Float32Array(32);
  x[0] = -8;
  x[1] = 2.5 - 2 ** -22;
  const w = new Uint8Array(18);
  kernel('q4_0').quantizeRow(x, 0, 32, w, 0);
  t.is(w[2 + 1] & 15, 11);
  t.is(w[2] & 15, 0);
});

test('q4_1 literal block: d=0.5, m=-2', (t) => {
  const w = new Uint8Array(20);
  w.set([0x00, 0x38, 0x00, 0xc0]); // f16 0.5, f16 -2
  for (let j = 0; j < 16; j++) w[4 + j] = j | ((15 - j) << 4);
  const y = dequantize(kernel('q4_1'), w, 32);
  t.is(y[0], -2);
  t.is(y[3], -0.5);
  t.is(y[15], 5.5);
  t.is(y[16], 5.5); // high nibble of byte 0 is 15
  t.is(y[31], -2);
});

test('q5_0 literal block: the fifth bits come from qh, little-endian', (t) => {
  const w = new Uint8Array(22);
  w.set([0x00, 0x34]); // f16 0.25
  w.set([0x01, 0x00, 0x00, 0x80], 2); // qh bits 0 and 31
  for (let j = 0; j < 16; j++) w[6 + j] = j | (j << 4);
  const y = dequantize(kernel('q5_0'), w, 32);
  t.is(y[0], 0); // (0 | 16) - 16
  t.is(y[1], -3.75); // 1 - 16
  t.is(y[16], -4); // 0 - 16
  t.is(y[31], 3.75); // (15 | 16) - 16
});

test('q4_k literal block: scale and min 0 and 7 of the 6-bit packing', (t) => {
  const w = new Uint8Array(144);
  w.set([0x00, 0x38, 0x00, 0x34]); // d 0.5, dmin 0.25
  w[4] = 2 | (1 << 6); // sc0 = 2; top bits of sc4 = 1
  w[8] = 1 | (3 << 6); // m0 = 1; top bits of m4 = 3
  w[7] = 0; // sc3
  w[11] = 0; // m3 (and top bits of m7)
  w[15] = 0x95; // sc7 low nibble 5, m7 low nibble 9
  w[12] = 0x21; // sc4 low nibble 1, m4 low nibble 2
  w[16] = 0x73; // value 0 = 3, value 32 = 7
  w[16 + 64 + 5] = 0x0a; // value 128 + 5 (sub-block 4) = 10
  const y = dequantize(kernel('q4_k'), w, 256);
  t.is(y[0], 0.5 * 2 * 3 - 0.25 * 1);
  t.is(y[32], 0); // sub-block 1: scale 0, min 0
  t.is(y[128 + 5], 0.5 * (1 | (1 << 4)) * 10 - 0.25 * (2 | (3 << 4)));
  t.is(y[255], -0.25 * 9); // sub-block 7: scale 5, q 0, min 9
});

test('q6_k literal block: signed scales and the split 6-bit quants', (t) => {
  const w = new Uint8Array(210);
  w.set([0x00, 0x3c], 208); // d = 1
  w[192] = 0xfe; // scale of values 0-15: -2
  w[192 + 4] = 3; // scale of values 64-79
  w[0] = 0x5f; // value 0 low nibble 15, value 64 low nibble 5
  w[128] = (2 << 0) | (1 << 4); // value 0 high bits 2, value 64 high bits 1
  const y = dequantize(kernel('q6_k'), w, 256);
  t.is(y[0], -2 * ((15 | (2 << 4)) - 32));
  t.is(y[64], 3 * ((5 | (1 << 4)) - 32));
  t.is(y[1], 64); // all-zero bits are q = -32, times the scale -2
});
/**
 * Eight super-blocks that walk the quantizers' branches: plain and weight-sized gaussians,
 * an all-positive block (mins clamp to 0), values on a 1/8 grid (exact rounding ties), rare
 * large outliers, all-zero 32-blocks, a constant run with tiny noise, and an all-zero block.
 */
function goldenInput(): Float32Array {
  const r = prng(2024);
  const x = new Float32Array(2048);
  for (let i = 0; i < x.length; i++) {
    switch (i >> 8) {
      case 0:
        x[i] = gauss(r);
        break;
      case 1:
        x[i] = gauss(r) * 0.02;
        break;
      case 2:
        x[i] = r() * 3 + 0.5;
        break;
      case 3:
        x[i] = Math.round(gauss(r) * 8) / 8;
        break;
      case 4:
        x[i] = gauss(r) * (r() < 0.03 ? 40 : 1);
        break;
      case 5:
        x[i] = (i >> 5) & 1 ? 0 : gauss(r);
        break;
      case 6:
        x[i] = (i >> 4) % 3 === 0 ? -0.75 : gauss(r) * 1e-3;
        break;
      default:
        x[i] = 0;
    }
  }
  return x;
}

/** A quantized activation in ggml's block_q8_1 / block_q8_K byte layout. */
function serializeActivation(a: Activation): Uint8Array {
  const k = a.kind === 'q8_k';
  const block = k ? 256 : 32;
  const size = k ? 4 + 256 + 32 : 4 + 32;
  const out = new Uint8Array((a.n / block) * size);
  const view = new DataView(out.buffer);
  for (let b = 0; b < a.n / block; b++) {
    const o = b * size;
    if (k) {
      view.setFloat32(o, a.d[b], true);
      for (let j = 0; j < 16; j++) view.setInt16(o + 260 + 2 * j, a.bsums[b * 16 + j], true);
    } else {
      view.setUint16(o, f32ToF16(a.d[b]), true);
      view.setUint16(o + 2, f32ToF16(a.s[b]), true);
    }
    for (let j = 0; j < block; j++) view.setInt8(o + 4 + j, a.qs[b * block + j]);
  }
  return out;
}

// SHA-256 of each reference quantizer's output on goldenInput(), as ggml's own
// quantize_row_*_ref (and, for q8_1, the x86 AVX quantize_row_q8_1) wrote it when compiled
// without FMA contraction, as x86-64 builds of ggml-base are. Byte-identical output is what
// lets herd write GGUF files that match llama-quantize's.
const golden: Record<string, string> = {
  q4_1: '78cda4e2a303f35bc88c4b4991e3fe09a4cd64105628de39ae21eb4f73ec8139',
  q5_0: 'ca13beafb4580786cad9901e1f230d339ce0ff01384a605b9836a1848450df0e',
  q5_1: '4240d104a887d02e5b085b2965c744702848ddbd855343d5c2d136d024a2cbbd',
  q2_k: '9e61308c8a20a370e7d890d0567b7341724a6b0435ef4a6257d5274bb0817e20',
  q3_k: '5898235c8185bb010ad8ab055aa183ba58a8dd0c934e5d3b2f8d7982478fc485',
  q4_k: '780c34a2ec049e03b429869849e6d00e7c3a81b13876cfae7829edbef6f8456d',
  q5_k: 'aa2f5924975c7c4491dfb349dd892d04826357e4bd9aa0eebde8bac588f7b8d8',
  q6_k: '77c5fe595ca47d4b6f3b7be5d5d409b520ba9f8283425aa9cb0cd6f9f835a22e',
  q8_1: 'b1f1c9ec2b38ce8640c8de096c947a200e51e81cbc317c1ba63d9d6ee6f51b87',
  q8_k: 'a7ef14dded16d8b59a5cdc778421840a60db4f09bd1719a2e3abc93adba5d957',
};

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

for (const c of cases) {
  test(`${c.name} quantizer writes the same bytes as ggml's reference`, (t) => {
    const x = goldenInput();
    t.is(sha256(quantize(kernel(c.name), x)), golden[c.name]);
  });
}

for (const kind of ['q8_1', 'q8_k'] as const) {
  test(`${kind} activations are quantized as ggml quantizes them`, (t) => {
    const x = goldenInput();
    t.is(sha256(serializeActivation(new Activation(x.length).fill(kind, x, x.length))), golden[kind]);
  });
}

test('q8_k activations refuse a length that is not whole super-blocks', (t) => {
  t.throws(() => new Activation(300).fill('q8_k', new Float32Array(300), 300), { instanceOf: RangeError });
});

test('q8_1 activation s is d·Σq from the unrounded scale, rounded to f16', (t) => {
  const x = gaussArray(64, 9);
  const a = new Activation(64).fill('q8_1', x, 64);
  for (let b = 0; b < 2; b++) {
    let amax = 0;
    let sum = 0;
    for (let i = 32 * b; i < 32 * b + 32; i++) amax = Math.max(amax, Math.abs(x[i]));
    for (let i = 32 * b; i < 32 * b + 32; i++) sum += a.qs[i];
    t.is(a.s[b], f16ToF32(f32ToF16(Math.fround(Math.fround(amax / 127) * sum))));
    t.is(a.d[b], f16ToF32(f32ToF16(amax / 127)));
  }
});

test('F16 weights take f16-rounded activations, or plain f32 ones when the js backend is asked to', (t) => {
  const cols = 40;
  const rows = 3;
  const info = ggmlTypeByName('f16')!;
  const data = new Uint8Array(rows * cols * 2);
  const wf = new Float32Array(rows * cols);
  const x = new Float32Array(cols);
  for (let i = 0; i < rows * cols; i++) {
    const h = f32ToF16(Math.sin(i * 1.7) * 2);
    data[2 * i] = h & 0xff;
    data[2 * i + 1] = h >> 8;
    wf[i] = f16ToF32(h);
  }
  // Values between two f16 neighbours, so rounding them changes every product.
  for (let i = 0; i < cols; i++) x[i] = 1 + (2 * i + 1) / 4096 + 1 / 65536;
  const w = makeWeight('w', info, [cols, rows], data);
  const dots = (round: boolean) =>
    Array.from({ length: rows }, (_, r) => {
      let s = 0;
      for (let c = 0; c < cols; c++) s += wf[r * cols + c] * (round ? f16ToF32(f32ToF16(x[c])) : x[c]);
      return Math.fround(s);
    });
  const out = new Float32Array(rows);
  new JsBackend().matvec(w, x, out);
  t.deepEqual(Array.from(out), dots(true));
  new JsBackend({ f16Activation: 'f32' }).matvec(w, x, out);
  t.deepEqual(Array.from(out), dots(false));
  t.notDeepEqual(dots(true), dots(false));
});
