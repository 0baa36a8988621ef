import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  bf16BytesToF32,
  bf16ToF32,
  f16BytesToF32,
  f16ToF32,
  f32Bits,
  f32FromBits,
  f32ToBf16,
  f32ToBf16Bytes,
  f32ToF16,
  f32ToF16Bytes,
} from '../src/ggml/half.ts';
import { GgmlType, ggmlTypeInfo } from '../src/ggml/types.ts';
import { GgufError, GgufFile, MetaType, type GgufErrorCode, type MetadataValue } from '../src/gguf/reader.ts';
import { copyMetadata, meta, writeGguf, type MetaEntry, type TensorSpec } from '../src/gguf/writer.ts';
import { bundledModel, fixtureModels, fixtureVocab } from './helpers/paths.ts';

const vocabDir = fixtureVocab;

/** A fresh directory that the test removes when it ends, pass or fail. */
function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'herd-gguf-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The GGUF type code stored for key: the u32 right after its length-prefixed name. */
function storedType(bytes: Uint8Array, key: string): number {
  const name = Buffer.from(key, 'utf8');
  const needle = Buffer.alloc(8 + name.length);
  needle.writeBigUInt64LE(BigInt(name.length));
  name.copy(needle, 8);
  const at = Buffer.from(bytes).indexOf(needle);
  if (at < 0) throw new Error(`key ${key} not found`);
  return Buffer.from(bytes).readUInt32LE(at + needle.length);
}

function deterministicBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

function tensorOf(name: string, type: GgmlType, dims: number[], seed: number): TensorSpec {
  const info = ggmlTypeInfo(type)!;
  const n = dims.reduce((a, b) => a * b, 1);
  return { name, type, dims, data: deterministicBytes((n / info.blockSize) * info.typeSize, seed) };
}

// ---------------------------------------------------------------------------------------------
// Writer → reader round trip

test('every scalar metadata type round-trips and is stored with its own type code', (t) => {
  const path = join(tempDir(t), 'scalars.gguf');
  const entries: [MetaEntry, MetadataValue][] = [
    [meta.u8('t.u8', 255), 255],
    [meta.i8('t.i8', -128), -128],
    [meta.u16('t.u16', 65535), 65535],
    [meta.i16('t.i16', -32768), -32768],
    [meta.u32('t.u32', 0xffffffff), 0xffffffff],
    [meta.i32('t.i32', -0x80000000), -0x80000000],
    [meta.f32('t.f32', 0.1), Math.fround(0.1)],
    [meta.f32('t.f32_inf', -Infinity), -Infinity],
    [meta.f64('t.f64', Math.PI), Math.PI],
    [meta.f64('t.f64_negzero', -0), -0],
    [meta.u64('t.u64', 42), 42],
    [meta.i64('t.i64', -5n), -5],
    [meta.bool('t.true', true), true],
    [meta.bool('t.false', false), false],
    [meta.str('t.str', 'héllo ▁world 🦙'), 'héllo ▁world 🦙'],
    [meta.str('t.empty', ''), ''],
  ];
  writeGguf(path, { metadata: entries.map(([e]) => e) });
  const bytes = readFileSync(path);
  const g = GgufFile.open(path);
  t.is(g.version, 3);
  t.is(g.tensors.length, 0);
  t.is(g.metadata.size, entries.length);
  for (const [e, want] of entries) {
    t.is(g.metadata.get(e.key), want, e.key);
    t.is(storedType(bytes, e.key), e.type, `type code of ${e.key}`);
  }
});

test('64-bit integers beyond 2^53 come back as bigint, safe ones as number', (t) => {
  const path = join(tempDir(t), 'big.gguf');
  writeGguf(path, {
    metadata: [
      meta.u64('u64.max', (1n << 64n) - 1n),
      meta.u64('u64.2^53', 1n << 53n),
      meta.u64('u64.safe', Number.MAX_SAFE_INTEGER),
      meta.i64('i64.min', -(1n << 63n)),
      meta.i64('i64.max', (1n << 63n) - 1n),
      meta.i64('i64.-2^53', -(1n << 53n)),
      meta.i64('i64.safe', Number.MIN_SAFE_INTEGER),
      meta.array('u64.items', MetaType.UINT64, [0n, 1n << 60n, 7]),
    ],
  });
  const g = GgufFile.open(path);
  t.is(g.metadata.get('u64.max'), 18446744073709551615n);
  t.is(g.metadata.get('u64.2^53'), 9007199254740992n);
  t.is(g.metadata.get('u64.safe'), Number.MAX_SAFE_INTEGER);
  t.is(g.metadata.get('i64.min'), -9223372036854775808n);
  t.is(g.metadata.get('i64.max'), 9223372036854775807n);
  t.is(g.metadata.get('i64.-2^53'), -9007199254740992n);
  t.is(g.metadata.get('i64.safe'), Number.MIN_SAFE_INTEGER);
  t.deepEqual(g.metadata.get('u64.items'), [0, 1152921504606846976n, 7]);
});

test('arrays of every item type, of strings and of nested arrays round-trip', (t) => {
  const path = join(tempDir(t), 'arrays.gguf');
  const deep = meta.nested(MetaType.ARRAY, [meta.nested(MetaType.ARRAY, [meta.nested(MetaType.INT16, [-1, 2])])]);
  writeGguf(path, {
    metadata: [
      meta.array('a.u8', MetaType.UINT8, [0, 1, 255]),
      meta.array('a.i8', MetaType.INT8, [-128, 127]),
      meta.array('a.u16', MetaType.UINT16, [65535]),
      meta.array('a.i16', MetaType.INT16, [-32768]),
      meta.array('a.u32', MetaType.UINT32, [0xffffffff, 0]),
      meta.array('a.i32', MetaType.INT32, [-1, 3]),
      meta.array('a.f32', MetaType.FLOAT32, [0.5, -0.25]),
      meta.array('a.f64', MetaType.FLOAT64, [1e300]),
      meta.array('a.i64', MetaType.INT64, [-1n, -(1n << 62n)]),
      meta.array('a.bool', MetaType.BOOL, [true, false, true]),
      meta.array('a.str', MetaType.STRING, ['<unk>', '', 'Ġthe', '日本']),
      meta.array('a.empty', MetaType.STRING, []),
      meta.array('a.nested', MetaType.ARRAY, [
        meta.nested(MetaType.STRING, ['x', 'yz']),
        meta.nested(MetaType.UINT8, []),
        meta.nested(MetaType.FLOAT64, [2.5]),
        deep,
      ]),
      meta.str('after', 'arrays did not desynchronise the stream'),
    ],
  });
  const g = GgufFile.open(path);
  t.deepEqual(g.array('a.u8'), [0, 1, 255]);
  t.deepEqual(g.array('a.i8'), [-128, 127]);
  t.deepEqual(g.array('a.u16'), [65535]);
  t.deepEqual(g.array('a.i16'), [-32768]);
  t.deepEqual(g.array('a.u32'), [0xffffffff, 0]);
  t.deepEqual(g.array('a.i32'), [-1, 3]);
  t.deepEqual(g.array('a.f32'), [0.5, -0.25]);
  t.deepEqual(g.array('a.f64'), [1e300]);
  t.deepEqual(g.array('a.i64'), [-1, -(1n << 62n)]);
  t.deepEqual(g.array('a.bool'), [true, false, true]);
  t.deepEqual(g.array('a.str'), ['<unk>', '', 'Ġthe', '日本']);
  t.deepEqual(g.array('a.empty'), []);
  t.deepEqual(g.array('a.nested'), [['x', 'yz'], [], [2.5], [[[-1, 2]]]]);
  t.is(g.string('after'), 'arrays did not desynchronise the stream');
  const bytes = readFileSync(path);
  t.is(storedType(bytes, 'a.nested'), MetaType.ARRAY);
});

for (const alignment of [undefined, 32, 64, 128]) {
  test(`tensors of several types round-trip with alignment ${alignment ?? 'default (32)'}`, (t) => {
    const path = join(tempDir(t), 'tensors.gguf');
    const tensors = [
      tensorOf('f32', GgmlType.F32, [7, 3], 1),
      tensorOf('f16', GgmlType.F16, [5], 2),
      tensorOf('bf16', GgmlType.BF16, [4, 2], 3),
      tensorOf('q8_0', GgmlType.Q8_0, [64, 3], 4),
      tensorOf('q4_0', GgmlType.Q4_0, [32], 5),
      tensorOf('q4_k', GgmlType.Q4_K, [256, 2], 6),
      tensorOf('q6_k', GgmlType.Q6_K, [256], 7),
      tensorOf('i8', GgmlType.I8, [3], 8),
      tensorOf('i32.4d', GgmlType.I32, [1, 2, 1, 3], 9),
    ];
    const metadata = [meta.str('general.architecture', 'llama')];
    if (alignment !== undefined) metadata.push(meta.u32('general.alignment', alignment));
    const written = writeGguf(path, { metadata, tensors });
    const align = alignment ?? 32;

    const g = GgufFile.open(path);
    t.is(g.alignment, align);
    t.is(g.dataOffset, written.dataOffset);
    t.is(g.dataOffset % align, 0);
    t.is(g.fileSize, statSync(path).size);
    t.is(g.fileSize, written.fileSize);
    t.deepEqual(
      g.tensors.map((x) => x.name),
      tensors.map((x) => x.name),
    );
    let expectedEnd = g.dataOffset;
    for (const [i, spec] of tensors.entries()) {
      const info = g.requireTensor(spec.name);
      t.deepEqual(info.dims, spec.dims);
      t.is(info.type.id, spec.type);
      t.is(info.fileOffset % align, 0, `${spec.name} is aligned`);
      t.is(info.fileOffset, written.tensors[i].fileOffset);
      t.is(info.fileOffset, expectedEnd, `${spec.name} follows the previous tensor's padded data`);
      t.is(info.nBytes, (spec.data as Uint8Array).length);
      t.deepEqual(new Uint8Array(g.readTensor(info)), spec.data);
      const into = new Uint8Array(info.nBytes);
      g.readTensorInto(info, into);
      t.deepEqual(into, spec.data);
      expectedEnd = Math.ceil((info.fileOffset + info.nBytes) / align) * align;
    }
    t.is(g.fileSize, expectedEnd, 'the last tensor is padded too, as llama.cpp does');
  });
}

test('a tensor produced by a chunk generator is streamed to the file', (t) => {
  const path = join(tempDir(t), 'gen.gguf');
  const rows = 300;
  const rowBytes = 4 * 64;
  let live = 0;
  const tensor: TensorSpec = {
    name: 'big',
    type: GgmlType.F32,
    dims: [64, rows],
    data: function* () {
      for (let r = 0; r < rows; r++) {
        const row = new Uint8Array(rowBytes).fill(r & 0xff);
        live++;
        yield row;
      }
    },
  };
  writeGguf(path, { tensors: [tensor, tensorOf('after', GgmlType.F16, [3], 1)] });
  t.is(live, rows);
  const g = GgufFile.open(path);
  const data = g.readTensor(g.requireTensor('big'));
  t.is(data.length, rows * rowBytes);
  for (const r of [0, 1, 255, 256, rows - 1]) t.is(data[r * rowBytes + 7], r & 0xff);
  t.deepEqual(new Uint8Array(g.readTensor(g.requireTensor('after'))), deterministicBytes(6, 1));
});

test('a generator that yields the wrong byte count fails and leaves no file behind', (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'short.gguf');
  const err = t.throws(
    () =>
      writeGguf(path, {
        tensors: [
          {
            name: 'short',
            type: GgmlType.F32,
            dims: [8],
            data: function* () {
              yield new Uint8Array(16);
            },
          },
        ],
      }),
    { instanceOf: GgufError },
  );
  t.is(err?.code, 'bad-tensor');
  t.regex(err?.message ?? '', /"short"/);
  t.false(existsSync(path));
  t.deepEqual(readdirSync(dir), []);
});

test('the writer refuses values and tensors it cannot encode faithfully', (t) => {
  const path = join(tempDir(t), 'bad.gguf');
  const cases: [string, () => void, GgufErrorCode, RegExp][] = [
    ['u8 out of range', () => writeGguf(path, { metadata: [meta.u8('k.u8', 256)] }), 'bad-value-type', /k\.u8/],
    ['i32 not an integer', () => writeGguf(path, { metadata: [meta.i32('k.i32', 1.5)] }), 'bad-value-type', /k\.i32/],
    ['u64 negative', () => writeGguf(path, { metadata: [meta.u64('k.u64', -1n)] }), 'bad-value-type', /k\.u64/],
    [
      'u64 unsafe number',
      () => writeGguf(path, { metadata: [meta.u64('k.u64', 2 ** 60)] }),
      'bad-value-type',
      /k\.u64/,
    ],
    [
      'array item of the wrong kind',
      () => writeGguf(path, { metadata: [meta.array('k.arr', MetaType.STRING, ['a', 1])] }),
      'bad-value-type',
      /k\.arr.*\[1\]/,
    ],
    ['duplicate key', () => writeGguf(path, { metadata: [meta.u8('k', 1), meta.u8('k', 2)] }), 'duplicate-key', /"k"/],
    [
      'alignment not a power of two',
      () => writeGguf(path, { metadata: [meta.u32('general.alignment', 48)] }),
      'bad-alignment',
      /general\.alignment/,
    ],
    [
      'alignment of the wrong type',
      () => writeGguf(path, { metadata: [meta.u64('general.alignment', 32)] }),
      'bad-alignment',
      /general\.alignment/,
    ],
    [
      'data length does not match the shape',
      () => writeGguf(path, { tensors: [{ name: 'w', type: GgmlType.F32, dims: [4], data: new Uint8Array(15) }] }),
      'bad-tensor',
      /"w"/,
    ],
    [
      'row length not a block multiple',
      () =>
        writeGguf(path, {
          tensors: [
            tensorOf('q', GgmlType.Q4_0, [64], 1),
            { name: 'q2', type: GgmlType.Q4_0, dims: [48], data: new Uint8Array(27) },
          ],
        }),
      'bad-shape',
      /"q2"/,
    ],
    [
      'five dimensions',
      () =>
        writeGguf(path, {
          tensors: [{ name: 'w', type: GgmlType.I8, dims: [1, 1, 1, 1, 1], data: new Uint8Array(1) }],
        }),
      'bad-shape',
      /"w"/,
    ],
    [
      'unknown ggml type',
      () => writeGguf(path, { tensors: [{ name: 'w', type: 4 as GgmlType, dims: [32], data: new Uint8Array(20) }] }),
      'unknown-type',
      /"w"/,
    ],
    [
      'duplicate tensor',
      () => writeGguf(path, { tensors: [tensorOf('w', GgmlType.I8, [1], 1), tensorOf('w', GgmlType.I8, [1], 1)] }),
      'duplicate-tensor',
      /"w"/,
    ],
    [
      'name too long for ggml',
      () => writeGguf(path, { tensors: [tensorOf('n'.repeat(64), GgmlType.I8, [1], 1)] }),
      'bad-tensor',
      /64 bytes/,
    ],
  ];
  for (const [what, run, code, message] of cases) {
    const err = t.throws(run, { instanceOf: GgufError }, what);
    t.is(err?.code, code, what);
    t.regex(err?.message ?? '', message, what);
  }
  t.false(existsSync(path));
});

test("nested arrays up to the reader's depth limit of 8 parse", (t) => {
  const path = join(tempDir(t), 'deep.gguf');
  let value = meta.nested(MetaType.UINT8, [1]);
  for (let i = 0; i < 6; i++) value = meta.nested(MetaType.ARRAY, [value]);
  writeGguf(path, { metadata: [meta.array('deep', MetaType.ARRAY, [value])] });
  let v: unknown = GgufFile.open(path).array('deep');
  let depth = 0;
  while (Array.isArray(v)) {
    v = v[0];
    depth++;
  }
  t.is(depth, 8);
  t.is(v, 1);
});

// ---------------------------------------------------------------------------------------------
// Real files made by llama.cpp

test('stories260K.gguf (llama.cpp, all f32) parses with the shapes of the 260K model', (t) => {
  const g = GgufFile.open(bundledModel);
  t.is(g.version, 3);
  t.is(g.alignment, 32);
  t.is(g.fileSize, 1185376);
  t.is(g.string('general.architecture'), 'llama');
  t.is(g.number('llama.context_length'), 128);
  t.is(g.number('llama.embedding_length'), 64);
  t.is(g.number('llama.block_count'), 5);
  t.is(g.number('llama.attention.head_count'), 8);
  t.is(g.number('llama.attention.head_count_kv'), 4);
  t.is(g.number('llama.feed_forward_length'), 172);
  t.is(g.number('llama.attention.layer_norm_rms_epsilon'), Math.fround(1e-5));
  t.is(g.string('tokenizer.ggml.model'), 'llama');
  const tokens = g.array('tokenizer.ggml.tokens')!;
  t.is(tokens.length, 512);
  t.deepEqual(tokens.slice(0, 4), ['<unk>', '<s>', '</s>', '<0x00>']);
  t.is(tokens[258], '<0xFF>');
  t.is(g.tensors.length, 3 + 9 * 5);
  t.deepEqual(g.requireTensor('token_embd.weight').dims, [64, 512]);
  t.deepEqual(g.requireTensor('blk.4.ffn_down.weight').dims, [172, 64]);
  for (const x of g.tensors) t.is(x.type.id, GgmlType.F32, x.name);
  const last = g.tensors.reduce((a, b) => (a.fileOffset > b.fileOffset ? a : b));
  t.is(last.fileOffset + last.nBytes, g.fileSize);
  // A small tensor (256 bytes): its buffer must own its memory, not be a slice of Node's shared
  // allocation pool, or a Float32Array over .buffer would see unrelated bytes.
  const normBytes = g.readTensor(g.requireTensor('output_norm.weight'));
  t.is(normBytes.byteOffset, 0);
  t.is(normBytes.buffer.byteLength, 256);
  const norm = new Float32Array(normBytes.buffer);
  t.true(norm.every((x) => Number.isFinite(x) && x !== 0));
});

test('rewriting stories260K.gguf with copied metadata reproduces it byte for byte', (t) => {
  const src = bundledModel;
  const g = GgufFile.open(src);
  const metadata = copyMetadata(g);
  t.is(g.metadataTypes.get('tokenizer.ggml.scores')?.item?.type, MetaType.FLOAT32);
  t.is(g.metadataTypes.get('llama.block_count')?.type, MetaType.UINT32);
  const tensors = g.tensors.map((x): TensorSpec => ({
    name: x.name,
    dims: x.dims,
    type: x.type.id,
    data: g.readTensor(x),
  }));
  const out = join(tempDir(t), 'stories260K.gguf');
  writeGguf(out, { metadata, tensors });
  const sha = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');
  t.is(sha(out), sha(src));
});

for (const variant of ['stories260K-q8_0.gguf', 'stories260K-q4_0.gguf']) {
  test(`${variant} parses, quantized where rows allow`, (t) => {
    const g = GgufFile.open(join(fixtureModels, variant));
    t.is(g.tensors.length, 48);
    const want = variant.includes('q8_0') ? GgmlType.Q8_0 : GgmlType.Q4_0;
    t.is(g.requireTensor('blk.0.attn_q.weight').type.id, want);
    t.is(g.requireTensor('blk.0.ffn_down.weight').type.id, GgmlType.F32, '172-wide rows are not a block multiple');
    const ends = g.tensors.map((x) => x.fileOffset + x.nBytes);
    t.true(Math.max(...ends) <= g.fileSize);
  });
}

const vocabFiles = readdirSync(vocabDir)
  .filter((f) => f.endsWith('.gguf'))
  .sort();

test('the shared vocab directory holds the llama.cpp vocab files', (t) => {
  t.true(vocabFiles.length >= 12, vocabFiles.join(', '));
});

for (const file of vocabFiles) {
  test(`vocab-only ${file} parses with zero tensors`, (t) => {
    const g = GgufFile.open(join(vocabDir, file));
    t.is(g.tensors.length, 0);
    t.true(g.version === 2 || g.version === 3);
    t.is(typeof g.string('tokenizer.ggml.model'), 'string');
    const tokens = g.array('tokenizer.ggml.tokens')!;
    t.true(tokens.length > 1000);
    t.true(tokens.every((x) => typeof x === 'string'));
    const types = g.array('tokenizer.ggml.token_type');
    if (types) t.is(types.length, tokens.length);
  });
}

// ---------------------------------------------------------------------------------------------
// f16 / bf16

// ggml's portable fp32 → fp16 (ggml_compute_fp32_to_fp16, from the FP16 library), transcribed
// with float32 arithmetic. It reaches round-to-nearest-even by a different road than half.ts
// (letting the FPU round), so agreeing with it bit for bit is a real cross-check.
function ggmlFp32ToFp16(f: number): number {
  const scaleToInf = f32FromBits(0x77800000);
  const scaleToZero = f32FromBits(0x08800000);
  let base = Math.fround(Math.fround(Math.abs(f) * scaleToInf) * scaleToZero);
  const w = f32Bits(f);
  const shl1w = (w << 1) >>> 0;
  const sign = (w & 0x80000000) >>> 0;
  let bias = (shl1w & 0xff000000) >>> 0;
  if (bias < 0x71000000) bias = 0x71000000;
  base = Math.fround(f32FromBits((bias >>> 1) + 0x07800000) + base);
  const bits = f32Bits(base);
  const expBits = (bits >>> 13) & 0x7c00;
  const mantissaBits = bits & 0x0fff;
  return (sign >>> 16) | (shl1w > 0xff000000 ? 0x7e00 : expBits + mantissaBits);
}

test('f32 → f16 matches known bit patterns, including ties, subnormals, inf and nan', (t) => {
  const cases: [number, number][] = [
    [0, 0x0000],
    [-0, 0x8000],
    [1, 0x3c00],
    [-2, 0xc000],
    [0.5, 0x3800],
    [0.1, 0x2e66],
    [1 / 3, 0x3555],
    [65504, 0x7bff],
    [65519, 0x7bff],
    [65520, 0x7c00],
    [1e6, 0x7c00],
    [-1e6, 0xfc00],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [NaN, 0x7e00],
    [2 ** -14, 0x0400],
    [2 ** -24, 0x0001],
    [-(2 ** -24), 0x8001],
    [1023 * 2 ** -24, 0x03ff],
    [2 ** -25, 0x0000],
    [1.5 * 2 ** -25, 0x0001],
    [3 * 2 ** -25, 0x0002],
    [5 * 2 ** -25, 0x0002],
    [1023.5 * 2 ** -24, 0x0400],
    [1e-45, 0x0000],
    [1 + 2 ** -11, 0x3c00],
    [1 + 3 * 2 ** -11, 0x3c02],
    [1 + 2 ** -11 + 2 ** -20, 0x3c01],
  ];
  for (const [x, bits] of cases) t.is(f32ToF16(x), bits, `f16(${x})`);
  t.is(f32ToF16(f32FromBits(0xffc00000)), 0xfe00, 'negative nan keeps its sign');
});

test('f16 → f32 matches known values and every f16 survives the round trip', (t) => {
  const cases: [number, number][] = [
    [0x0001, 2 ** -24],
    [0x03ff, 1023 * 2 ** -24],
    [0x0400, 2 ** -14],
    [0x3c00, 1],
    [0xc000, -2],
    [0x7bff, 65504],
    [0x7c00, Infinity],
    [0xfc00, -Infinity],
    [0x3555, 0.333251953125],
  ];
  for (const [bits, x] of cases) t.is(f16ToF32(bits), x, `f16 0x${bits.toString(16)}`);
  t.true(Object.is(f16ToF32(0x8000), -0));
  t.true(Number.isNaN(f16ToF32(0x7e00)));
  t.true(Number.isNaN(f16ToF32(0x7c01)));
  let mismatches = 0;
  for (let h = 0; h < 0x10000; h++) {
    const back = f32ToF16(f16ToF32(h));
    const isNan = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
    if (back !== (isNan ? (h & 0x8000) | 0x7e00 : h)) mismatches++;
  }
  t.is(mismatches, 0);
});

test("f32 → f16 agrees bit for bit with ggml's float-arithmetic conversion", (t) => {
  let mismatches = 0;
  let first = '';
  const check = (bits: number): void => {
    const f = f32FromBits(bits);
    const got = f32ToF16(f);
    const want = ggmlFp32ToFp16(f);
    if (got !== want && !(Number.isNaN(f) && (got & 0x7fff) === 0x7e00)) {
      if (!first) first = `0x${bits.toString(16)}: got 0x${got.toString(16)}, ggml 0x${want.toString(16)}`;
      mismatches++;
    }
  };
  // For every exponent that matters to f16 (2^-27 .. 2^17): every value of the 10 mantissa bits
  // f16 keeps, with the 13 dropped bits at zero, just below, at and just above the tie; plus
  // pseudo-random patterns for the subnormal range, where more bits are dropped.
  for (let e = 100; e <= 144; e++) {
    for (let m = 0; m < 0x800000; m += 0x2000) {
      for (const low of [0, 0x1, 0xfff, 0x1000, 0x1001, 0x1fff]) {
        const bits = ((e << 23) | m | low) >>> 0;
        check(bits);
        check((bits | 0x80000000) >>> 0);
      }
    }
  }
  const rng = deterministicBytes(4 * 200_000, 99);
  const view = new DataView(rng.buffer);
  for (let i = 0; i < 200_000; i++) check(view.getUint32(4 * i, true));
  t.is(mismatches, 0, first);
});

test('f32 → bf16 rounds to nearest even, keeps subnormals, quiets nan', (t) => {
  const cases: [number, number][] = [
    [0x3f800000, 0x3f80],
    [0xc0000000, 0xc000],
    [0x40490fdb, 0x4049], // 1, -2, pi
    [0x3f808000, 0x3f80],
    [0x3f818000, 0x3f82],
    [0x3f808001, 0x3f81], // ties to even, above tie
    [0x7f7fffff, 0x7f80],
    [0xff7fffff, 0xff80], // max finite rounds to infinity
    [0x7f800000, 0x7f80],
    [0xff800000, 0xff80],
    [0x00010000, 0x0001],
    [0x00008000, 0x0000],
    [0x00018000, 0x0002],
    [0x80010000, 0x8001], // subnormals
    [0x7fc00000, 0x7fc0],
    [0x7f800001, 0x7fc0],
    [0xffa00000, 0xffe0],
    [0x7f810000, 0x7fc1], // nan
  ];
  for (const [bits, want] of cases) t.is(f32ToBf16(f32FromBits(bits)), want, `bf16(0x${bits.toString(16)})`);
  t.is(bf16ToF32(0x3f80), 1);
  t.is(bf16ToF32(0x0001), 2 ** -133);
  t.is(bf16ToF32(0xff80), -Infinity);
  t.true(Number.isNaN(bf16ToF32(0x7fc0)));
  let mismatches = 0;
  for (let h = 0; h < 0x10000; h++) {
    const isNan = (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
    if (f32ToBf16(bf16ToF32(h)) !== (isNan ? h | 0x40 : h)) mismatches++;
  }
  t.is(mismatches, 0);
});

test('byte helpers write little-endian halves and read them back, nan payloads included', (t) => {
  const src = new Float32Array([1, -2, 65504, 2 ** -24, 0]);
  new Uint32Array(src.buffer)[4] = 0x7f800001; // a signalling nan, which a JS number could not carry
  t.deepEqual([...f32ToF16Bytes(src)], [0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00, 0x00, 0x7e]);
  t.deepEqual([...f32ToBf16Bytes(src)], [0x80, 0x3f, 0x00, 0xc0, 0x80, 0x47, 0x80, 0x33, 0xc0, 0x7f]);

  const f16 = f16BytesToF32(new Uint8Array([0x00, 0x3c, 0x01, 0x00, 0x00, 0xfc]));
  t.deepEqual([...f16], [1, 2 ** -24, -Infinity]);
  const out = new Float32Array(4);
  t.is(bf16BytesToF32(new Uint8Array([0x80, 0x3f, 0x01, 0x7f]), out), out);
  t.is(out[0], 1);
  t.is(new Uint32Array(out.buffer)[1], 0x7f010000, 'bf16 → f32 is a plain shift, payload kept');
  t.throws(() => f16BytesToF32(new Uint8Array(3)), { instanceOf: RangeError });

  // A subarray view must convert only its own elements.
  const big = new Float32Array([9, 1, 9]);
  t.deepEqual([...f32ToF16Bytes(big.subarray(1, 2))], [0x00, 0x3c]);
});
