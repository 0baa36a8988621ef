// A corpus of malformed GGUF files, each derived from one small valid file made by the writer:
// every one must fail with a GgufError carrying the specific code and naming the field, fast,
// and without a RangeError, a crash, a hang or a large allocation.

import test from 'ava';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { GgmlType, ggmlTypeInfo } from '../src/ggml/types.ts';
import { GgufError, GgufFile, MetaType, type GgufErrorCode } from '../src/gguf/reader.ts';
import { copyMetadata, meta, writeGguf, type MetaEntry, type TensorSpec } from '../src/gguf/writer.ts';
import { ModelError } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { fixtureModels } from './helpers/paths.ts';
import { writeMalformedBase } from './helpers/gguf-malformed-base.ts';

const dir = mkdtempSync(join(tmpdir(), 'herd-gguf-malformed-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// The valid base file

const basePath = join(dir, 'base.gguf');
const base: Uint8Array = writeMalformedBase(basePath);

// ---------------------------------------------------------------------------------------------
// An independent walk of the base file: where every field is, in the order the reader reads
// them, and for counts and string lengths what they claim. Patches address fields by name;
// the truncation test derives from it the error each cut must produce.

/** Least bytes an item of each metadata type takes, as the reader bounds counts with. */
const itemMinBytes: Record<number, number> = {
  0: 1,
  1: 1,
  2: 2,
  3: 2,
  4: 4,
  5: 4,
  6: 4,
  7: 1,
  8: 8,
  9: 12,
  10: 8,
  11: 8,
  12: 8,
};
const scalarBytes: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

interface Field {
  readonly name: string;
  readonly start: number;
  readonly end: number;
  /** A u64 count the reader bounds by the bytes left: n items of at least min bytes. */
  readonly count?: { readonly n: bigint; readonly min: number };
  /** A u64 string length the reader bounds by the bytes left. */
  readonly strlen?: bigint;
}

interface Layout {
  readonly fields: readonly Field[];
  readonly byName: ReadonlyMap<string, Field>;
  readonly infoEnd: number;
  readonly alignment: number;
  readonly tensors: readonly { readonly name: string; readonly offset: number; readonly nBytes: number }[];
}

function walk(bytes: Uint8Array): Layout {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fields: Field[] = [];
  let pos = 0;
  const field = (name: string, size: number, extra: Partial<Field> = {}): Field => {
    const f = { name, start: pos, end: pos + size, ...extra };
    fields.push(f);
    pos += size;
    return f;
  };
  const u32 = (name: string): number => {
    const x = v.getUint32(pos, true);
    field(name, 4);
    return x;
  };
  const count = (name: string, min: number): bigint => {
    const n = v.getBigUint64(pos, true);
    field(name, 8, { count: { n, min } });
    return n;
  };
  const string = (name: string): string => {
    const n = v.getBigUint64(pos, true);
    field(`${name}.len`, 8, { strlen: n });
    const s = Buffer.from(bytes.subarray(pos, pos + Number(n))).toString('utf8');
    field(name, Number(n));
    return s;
  };
  const value = (name: string, type: number): void => {
    if (type === MetaType.STRING) {
      string(name);
    } else if (type === MetaType.ARRAY) {
      const itemType = u32(`${name}.itemType`);
      const n = count(`${name}.count`, itemMinBytes[itemType]);
      for (let i = 0; i < n; i++) value(`${name}[${i}]`, itemType);
    } else {
      field(name, scalarBytes[type]);
    }
  };

  field('magic', 4);
  u32('version');
  const nTensors = count('n_tensors', 24);
  const nKv = count('n_kv', 13);
  let alignment = 32;
  for (let i = 0; i < nKv; i++) {
    const key = string(`kv#${i}.key`);
    const type = u32(`kv[${key}].type`);
    value(`kv[${key}]`, type);
    if (key === 'general.alignment') alignment = v.getUint32(pos - 4, true);
  }
  const tensors: { name: string; offset: number; nBytes: number }[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = string(`tensor#${i}.name`);
    const nDims = u32(`t[${name}].n_dims`);
    let n = 1;
    for (let d = 0; d < nDims; d++) {
      n *= Number(v.getBigUint64(pos, true));
      field(`t[${name}].dim${d}`, 8);
    }
    const info = ggmlTypeInfo(u32(`t[${name}].type`))!;
    const offset = Number(v.getBigUint64(pos, true));
    field(`t[${name}].offset`, 8);
    tensors.push({ name, offset, nBytes: (n / info.blockSize) * info.typeSize });
  }
  return { fields, byName: new Map(fields.map((f) => [f.name, f])), infoEnd: pos, alignment, tensors };
}

const layout = walk(base);

function at(name: string): Field {
  const f = layout.byName.get(name);
  if (!f) throw new Error(`no field ${name} in the base file`);
  return f;
}

/** A copy of the base with the field overwritten by a little-endian value of its own width. */
function patch(name: string, value: number | bigint, bytes: Uint8Array = base): Uint8Array {
  const f = at(name);
  const out = bytes.slice();
  const v = new DataView(out.buffer);
  const width = f.end - f.start;
  if (width === 8) v.setBigUint64(f.start, BigInt(value), true);
  else if (width === 4) v.setUint32(f.start, Number(value), true);
  else if (width === 1) v.setUint8(f.start, Number(value));
  else throw new Error(`cannot patch ${name} of width ${width}`);
  return out;
}

/** A copy of the base with [start, end) replaced by insert. */
function splice(start: number, end: number, insert: Uint8Array): Uint8Array {
  const out = new Uint8Array(base.length - (end - start) + insert.length);
  out.set(base.subarray(0, start), 0);
  out.set(insert, start);
  out.set(base.subarray(end), start + insert.length);
  return out;
}

function le(...parts: ['u32' | 'u64' | 'f32', number | bigint][]): Uint8Array {
  const size = parts.reduce((s, [k]) => s + (k === 'u64' ? 8 : 4), 0);
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let p = 0;
  for (const [k, x] of parts) {
    if (k === 'u64') v.setBigUint64(p, BigInt(x), true);
    else if (k === 'u32') v.setUint32(p, Number(x), true);
    else v.setFloat32(p, Number(x), true);
    p += k === 'u64' ? 8 : 4;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Running one malformed file

let fileSeq = 0;

interface Outcome {
  readonly error: unknown;
  readonly ms: number;
}

function parseOnce(path: string): Outcome {
  const t0 = performance.now();
  try {
    GgufFile.open(path);
    return { error: undefined, ms: performance.now() - t0 };
  } catch (error) {
    return { error, ms: performance.now() - t0 };
  }
}

/**
 * Parses bytes from a file. A parse over the time limit is repeated (up to three in all) and the
 * fastest kept: a reader that loops or allocates on a claim is slow every time, a garbage
 * collection pause on a busy test machine is not.
 */
function parse(bytes: Uint8Array): Outcome {
  const path = join(dir, `case-${fileSeq++}.gguf`);
  writeFileSync(path, bytes);
  try {
    let outcome = parseOnce(path);
    for (let retry = 0; retry < 2 && outcome.ms >= MAX_MS; retry++) {
      const again = parseOnce(path);
      if (again.ms < outcome.ms) outcome = again;
    }
    return outcome;
  } finally {
    rmSync(path, { force: true });
  }
}

function describe(error: unknown): string {
  if (error === undefined) return 'no error';
  if (error instanceof GgufError) return `GgufError ${error.code}: ${error.message}`;
  return `${(error as Error).name}: ${(error as Error).message}`;
}

// A parse takes ~0.1 ms; the limit is generous for a loaded machine running every test file at
// once, and still far below what looping on a claimed count or allocating for it would cost.
// The every-byte test also holds the median to a few milliseconds.
const MAX_MS = 250;
const MAX_MEDIAN_MS = 10;

interface Case {
  readonly name: string;
  readonly bytes: () => Uint8Array;
  readonly code: GgufErrorCode;
  /** What the message must name: the field, key or tensor at fault. */
  readonly names: RegExp;
}

const U64_MAX = (1n << 64n) - 1n;

const cases: Case[] = [
  // Header
  { name: 'wrong magic', bytes: () => splice(0, 4, Buffer.from('GGML')), code: 'bad-magic', names: /magic/ },
  { name: 'all-zero file', bytes: () => new Uint8Array(64), code: 'bad-magic', names: /magic/ },
  { name: 'version 1', bytes: () => patch('version', 1), code: 'bad-version', names: /version 1\b/ },
  { name: 'version 4', bytes: () => patch('version', 4), code: 'bad-version', names: /version 4\b/ },
  { name: 'version 0', bytes: () => patch('version', 0), code: 'bad-version', names: /version 0\b/ },
  {
    name: 'byte-swapped version 3 (big-endian file)',
    bytes: () => patch('version', 0x03000000),
    code: 'bad-version',
    names: /version .*big-endian/,
  },
  { name: 'tensor count 2^63', bytes: () => patch('n_tensors', 1n << 63n), code: 'bad-count', names: /tensor count/ },
  { name: 'tensor count 2^40', bytes: () => patch('n_tensors', 1n << 40n), code: 'bad-count', names: /tensor count/ },
  { name: 'tensor count 2^64-1', bytes: () => patch('n_tensors', U64_MAX), code: 'bad-count', names: /tensor count/ },
  { name: 'metadata count 2^63', bytes: () => patch('n_kv', 1n << 63n), code: 'bad-count', names: /metadata count/ },
  { name: 'metadata count 2^40', bytes: () => patch('n_kv', 1n << 40n), code: 'bad-count', names: /metadata count/ },

  // Metadata
  {
    name: 'key length 2^40',
    bytes: () => patch('kv#0.key.len', 1n << 40n),
    code: 'bad-string',
    names: /metadata key #0/,
  },
  {
    name: 'key length 2^64-1',
    bytes: () => patch('kv#0.key.len', U64_MAX),
    code: 'bad-string',
    names: /metadata key #0/,
  },
  {
    name: 'string value length 2^63',
    bytes: () => patch('kv[general.architecture].len', 1n << 63n),
    code: 'bad-string',
    names: /general\.architecture/,
  },
  {
    name: 'string length one past the end of the file',
    bytes: () => patch('kv[general.architecture].len', base.length - at('kv[general.architecture].len').end + 1),
    code: 'bad-string',
    names: /general\.architecture/,
  },
  {
    name: 'string array item length 2^40',
    bytes: () => patch('kv[test.words][1].len', 1n << 40n),
    code: 'bad-string',
    names: /test\.words/,
  },
  {
    name: 'array count 2^40',
    bytes: () => patch('kv[test.nums].count', 1n << 40n),
    code: 'bad-count',
    names: /array "test\.nums"/,
  },
  {
    name: 'array count 2^64-1',
    bytes: () => patch('kv[test.nums].count', U64_MAX),
    code: 'bad-count',
    names: /array "test\.nums"/,
  },
  {
    name: 'string array count 2^40',
    bytes: () => patch('kv[test.words].count', 1n << 40n),
    code: 'bad-count',
    names: /array "test\.words"/,
  },
  {
    name: 'unknown metadata value type 13',
    bytes: () => patch('kv[test.u32].type', 13),
    code: 'bad-value-type',
    names: /"test\.u32".*type 13/,
  },
  {
    name: 'unknown metadata value type 2^32-1',
    bytes: () => patch('kv[test.u32].type', 0xffffffff),
    code: 'bad-value-type',
    names: /"test\.u32"/,
  },
  {
    name: 'unknown array item type',
    bytes: () => patch('kv[test.nums].itemType', 13),
    code: 'bad-value-type',
    names: /array "test\.nums".*item type 13/,
  },
  {
    name: 'unknown item type in a nested array',
    bytes: () => patch('kv[test.nested][1].itemType', 99),
    code: 'bad-value-type',
    names: /test\.nested.*item type 99/,
  },
  {
    name: 'bool stored as 2',
    bytes: () => patch('kv[test.flag]', 2),
    code: 'bad-value-type',
    names: /"test\.flag".*bool/,
  },
  {
    name: 'bool stored as 255',
    bytes: () => patch('kv[test.flag]', 255),
    code: 'bad-value-type',
    names: /"test\.flag".*bool/,
  },
  {
    name: 'duplicate key',
    bytes: () => patchByteAt(at('kv#5.key').end - 1, 'a'),
    code: 'duplicate-key',
    names: /"test\.dup_a"/,
  },
  {
    name: 'alignment 48 (not a power of two)',
    bytes: () => patch('kv[general.alignment]', 48),
    code: 'bad-alignment',
    names: /general\.alignment/,
  },
  {
    name: 'alignment 0',
    bytes: () => patch('kv[general.alignment]', 0),
    code: 'bad-alignment',
    names: /general\.alignment/,
  },
  {
    name: 'alignment stored as f32 1.5',
    bytes: () =>
      splice(
        at('kv[general.alignment].type').start,
        at('kv[general.alignment]').end,
        le(['u32', MetaType.FLOAT32], ['f32', 1.5]),
      ),
    code: 'bad-alignment',
    names: /general\.alignment/,
  },
  {
    // 3 * 2^32: its low 32 bits are zero, which a 32-bit power-of-two test would wave through.
    name: 'alignment stored as u64 3*2^32',
    bytes: () =>
      splice(
        at('kv[general.alignment].type').start,
        at('kv[general.alignment]').end,
        le(['u32', MetaType.UINT64], ['u64', 3n << 32n]),
      ),
    code: 'bad-alignment',
    names: /general\.alignment/,
  },
  {
    name: 'alignment stored as u64 2^53+2 (a bigint)',
    bytes: () =>
      splice(
        at('kv[general.alignment].type').start,
        at('kv[general.alignment]').end,
        le(['u32', MetaType.UINT64], ['u64', (1n << 53n) + 2n]),
      ),
    code: 'bad-alignment',
    names: /general\.alignment/,
  },

  // Array nesting bombs
  {
    name: 'arrays nested 9 deep',
    bytes: () => nestingBomb(9, 0n),
    code: 'bad-array',
    names: /"test\.nested" nests arrays deeper than 8/,
  },
  {
    name: 'arrays nested 100000 deep',
    bytes: () => nestingBomb(100_000, 0n),
    code: 'bad-array',
    names: /"test\.nested" nests arrays deeper/,
  },
  {
    name: 'nested array claiming 2^40 arrays',
    bytes: () => patch('kv[test.nested].count', 1n << 40n),
    code: 'bad-count',
    names: /array "test\.nested"/,
  },
  {
    name: 'inner array claiming 2^40 items',
    bytes: () => patch('kv[test.nested][0].count', 1n << 40n),
    code: 'bad-count',
    names: /array "test\.nested"/,
  },
  {
    name: 'every level claiming 2^32 arrays',
    bytes: () => nestingBomb(6, 1n << 32n),
    code: 'bad-count',
    names: /array "test\.nested"/,
  },

  // Tensor index
  {
    name: 'tensor name length 2^40',
    bytes: () => patch('tensor#0.name.len', 1n << 40n),
    code: 'bad-string',
    names: /name of tensor #0/,
  },
  {
    name: 'tensor name of 64 bytes',
    bytes: () => splice(at('tensor#0.name.len').start, at('tensor#0.name').end, stringBytes('t'.repeat(64))),
    code: 'bad-tensor',
    names: /tensor #0 name/,
  },
  {
    name: 'unknown ggml type 4 (removed Q4_2)',
    bytes: () => patch('t[a.weight].type', 4),
    code: 'unknown-type',
    names: /"a\.weight".*type 4\b/,
  },
  {
    name: 'unknown ggml type 2^32-1',
    bytes: () => patch('t[a.weight].type', 0xffffffff),
    code: 'unknown-type',
    names: /"a\.weight"/,
  },
  {
    name: 'n_dims 0',
    bytes: () => patch('t[a.weight].n_dims', 0),
    code: 'bad-shape',
    names: /"a\.weight" has 0 dimensions/,
  },
  {
    name: 'n_dims 5',
    bytes: () => patch('t[a.weight].n_dims', 5),
    code: 'bad-shape',
    names: /"a\.weight" has 5 dimensions/,
  },
  {
    name: 'n_dims 2^32-1',
    bytes: () => patch('t[a.weight].n_dims', 0xffffffff),
    code: 'bad-shape',
    names: /"a\.weight" has 4294967295 dimensions/,
  },
  {
    name: 'a zero dimension',
    bytes: () => patch('t[a.weight].dim1', 0),
    code: 'bad-shape',
    names: /"a\.weight".*zero-sized dimension 1/,
  },
  {
    name: 'dims whose product overflows',
    bytes: () => patch('t[a.weight].dim1', 1n << 62n),
    code: 'bad-shape',
    names: /"a\.weight".*overflows/,
  },
  {
    name: 'one dim of 2^64-1',
    bytes: () => patch('t[a.weight].dim0', U64_MAX),
    code: 'bad-shape',
    names: /"a\.weight".*overflows/,
  },
  {
    name: 'row length not a multiple of the Q8_0 block',
    bytes: () => patch('t[b.weight].dim0', 33),
    code: 'bad-shape',
    names: /"b\.weight" row length 33 .*Q8_0 block size 32/,
  },
  {
    name: 'duplicate tensor name',
    bytes: () => patchByteAt(at('tensor#1.name').start, 'a'),
    code: 'duplicate-tensor',
    names: /"a\.weight"/,
  },

  // Tensor data placement
  {
    name: 'data offset misaligned',
    bytes: () => patch('t[b.weight].offset', 80),
    code: 'bad-offset',
    names: /"b\.weight".*not aligned to 32/,
  },
  {
    name: 'data offset past the end',
    bytes: () => patch('t[c.weight].offset', 1n << 40n),
    code: 'bad-offset',
    names: /"c\.weight".*past the end/,
  },
  {
    name: 'data offset 2^64-32 (aligned, would wrap in u64)',
    bytes: () => patch('t[c.weight].offset', U64_MAX - 31n),
    code: 'bad-offset',
    names: /"c\.weight".*past the end/,
  },
  {
    name: 'data running past the end',
    bytes: () => patch('t[c.weight].offset', 192),
    code: 'bad-offset',
    names: /"c\.weight".*past the end/,
  },
  {
    name: 'tensor grown past the end',
    bytes: () => patch('t[c.weight].dim0', 64),
    code: 'bad-offset',
    names: /"c\.weight".*past the end/,
  },
];

function patchByteAt(offset: number, char: string): Uint8Array {
  const out = base.slice();
  out[offset] = char.charCodeAt(0);
  return out;
}

function stringBytes(s: string): Uint8Array {
  const b = Buffer.from(s, 'utf8');
  const out = new Uint8Array(8 + b.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(b.length), true);
  out.set(b, 8);
  return out;
}

/**
 * test.nested's value replaced by `depth` array headers each holding one array (or `claim`
 * arrays when non-zero), ending in an empty u8 array.
 */
function nestingBomb(depth: number, claim: bigint): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let i = 0; i < depth; i++) parts.push(le(['u32', MetaType.ARRAY], ['u64', claim || 1n]));
  parts.push(le(['u32', MetaType.UINT8], ['u64', 0n]));
  const value = Buffer.concat(parts);
  const end = at('kv[test.nested][1][0]').end;
  return splice(at('kv[test.nested].itemType').start, end, value);
}

test('the base file of the corpus is valid', (t) => {
  const { error } = parse(base);
  t.is(error, undefined);
  t.is(layout.tensors.length, 3);
  t.is(layout.fields.at(-1)?.name, 't[c.weight].offset');
});

for (const c of cases) {
  test(`malformed: ${c.name}`, (t) => {
    parse(base); // warm the reader up so the timing measures this file, not the JIT
    const { error, ms } = parse(c.bytes());
    t.true(error instanceof GgufError, describe(error));
    if (!(error instanceof GgufError)) return;
    t.is(error.code, c.code, error.message);
    t.regex(error.message, c.names);
    t.true(error.message.includes(join(dir, 'case-')), 'the message names the file');
    t.true(ms < MAX_MS, `took ${ms.toFixed(2)} ms`);
  });
}

/**
 * The error a file cut to `size` bytes must give: walk the fields in reading order; the first
 * one that does not fit decides. Counts and string lengths are checked against the bytes left
 * before anything is read for them, so a cut after a count but before its items reads as a
 * count too large for the file rather than as a truncation.
 */
function expectedForCut(size: number): GgufErrorCode | undefined {
  for (const f of layout.fields) {
    if (f.end > size) return 'truncated';
    if (f.count && f.count.n > BigInt(Math.floor((size - f.end) / f.count.min))) return 'bad-count';
    if (f.strlen !== undefined && f.strlen > BigInt(size - f.end)) return 'bad-string';
  }
  const dataOffset = Math.ceil(layout.infoEnd / layout.alignment) * layout.alignment;
  if (layout.tensors.length > 0 && dataOffset > size) return 'truncated';
  for (const x of layout.tensors) if (x.offset + x.nBytes > size - dataOffset) return 'bad-offset';
  return undefined;
}

test('a file cut at every byte boundary fails with the error for the field it cuts', (t) => {
  parse(base);
  const seen = new Map<string, number>();
  const times: number[] = [];
  let failures = 0;
  for (let size = 0; size < base.length; size++) {
    const want = expectedForCut(size);
    const { error, ms } = parse(base.subarray(0, size));
    times.push(ms);
    const got = error instanceof GgufError ? error.code : describe(error);
    seen.set(got, (seen.get(got) ?? 0) + 1);
    if (got !== want) {
      failures++;
      if (failures <= 5) t.fail(`cut at ${size}: expected ${want ?? 'success'}, got ${describe(error)}`);
    }
  }
  t.is(failures, 0);
  // Every kind of cut occurred: inside a fixed field, after a count, after a string length,
  // before the data section, inside the data.
  for (const code of ['truncated', 'bad-count', 'bad-string', 'bad-offset'])
    t.true((seen.get(code) ?? 0) > 0, `${code}: ${JSON.stringify([...seen])}`);
  times.sort((a, b) => a - b);
  const median = times[times.length >> 1];
  const slowest = times[times.length - 1];
  t.true(median < MAX_MEDIAN_MS, `median cut took ${median.toFixed(2)} ms`);
  t.true(slowest < MAX_MS, `slowest cut took ${slowest.toFixed(2)} ms`);
  t.log(
    `${base.length} cuts: ${[...seen].map(([k, n]) => `${k} ${n}`).join(', ')}; median ${median.toFixed(3)} ms, slowest ${slowest.toFixed(2)} ms`,
  );
});

test('a cut inside the data section names the first tensor that no longer fits', (t) => {
  const dataOffset = Math.ceil(layout.infoEnd / 32) * 32;
  for (const [cut, tensor] of [
    [dataOffset + 1, 'a.weight'],
    [dataOffset + 64, 'b.weight'],
    [dataOffset + 140, 'c.weight'],
    [base.length - 1, 'c.weight'],
  ] as const) {
    const { error } = parse(base.subarray(0, cut));
    t.true(
      error instanceof GgufError && error.code === 'bad-offset' && error.message.includes(`"${tensor}"`),
      `cut at ${cut}: ${describe(error)}`,
    );
  }
});

test('parsing a file that claims 2^40 array items allocates nothing for them', (t) => {
  // Expose the collector for a clean baseline (the ava config has no --expose-gc).
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const claims = [
    patch('kv[test.nums].count', 1n << 40n),
    patch('kv[test.words].count', 1n << 40n),
    patch('kv[test.nested].count', 1n << 40n),
    // Below V8's array length limit, so a reader that trusted it would really allocate.
    patch('kv[test.nums].count', 1n << 26n),
  ];
  const paths = claims.map((bytes, i) => {
    const p = join(dir, `claim-${i}.gguf`);
    writeFileSync(p, bytes);
    return p;
  });
  t.teardown(() => paths.forEach((p) => rmSync(p, { force: true })));
  for (const p of paths) t.throws(() => GgufFile.open(p), { instanceOf: GgufError });

  gc();
  const before = process.memoryUsage();
  const peakBefore = process.resourceUsage().maxRSS;
  for (let round = 0; round < 20; round++) {
    for (const p of paths) {
      try {
        GgufFile.open(p);
      } catch (e) {
        if (!(e instanceof GgufError) || e.code !== 'bad-count') throw e;
      }
    }
  }
  const after = process.memoryUsage();
  const heap = after.heapUsed - before.heapUsed;
  const arrayBuffers = after.arrayBuffers - before.arrayBuffers;
  const peak = (process.resourceUsage().maxRSS - peakBefore) * 1024;
  t.log(
    `80 parses: heapUsed ${(heap / 1024).toFixed(0)} KiB, arrayBuffers ${(arrayBuffers / 1024).toFixed(0)} KiB, peak RSS +${(peak / 1024).toFixed(0)} KiB`,
  );
  // Each parse reads through one 64 KiB window and builds a few small values; 2^26 items
  // would be at least 512 MiB. Peak RSS catches an allocation freed again before the end.
  t.true(heap < 4 * 1024 * 1024, `heapUsed grew ${heap} bytes`);
  t.true(arrayBuffers < 8 * 1024 * 1024, `arrayBuffers grew ${arrayBuffers} bytes`);
  t.true(peak < 64 * 1024 * 1024, `peak RSS grew ${peak} bytes`);
});

/** A file of `size` bytes that starts with head and is a hole after it: no disk, no write time. */
function sparseFile(name: string, head: Uint8Array, size: number): string {
  const path = join(dir, name);
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, head);
    ftruncateSync(fd, size);
  } finally {
    closeSync(fd);
  }
  return path;
}

/** A GGUF header with no tensors and one key/value whose type and value start follow. */
function oneKeyHeader(key: string, typeAndValue: Uint8Array): Uint8Array {
  return Buffer.concat([Buffer.from('GGUF'), le(['u32', 3], ['u64', 0n], ['u64', 1n]), stringBytes(key), typeAndValue]);
}

// The claims above all exceed the file; on a multi-GB model a claim can fit the file and still
// be absurd. Sparse files stand in for big models.
test('claims that fit inside a huge file are still refused without allocating for them', (t) => {
  const cases: [string, Uint8Array, number, GgufErrorCode, RegExp][] = [
    // Just past what V8 can hold in one string: the reader must not read 512 MiB to find out.
    [
      'string of 512 MiB',
      oneKeyHeader('big.str', le(['u32', MetaType.STRING], ['u64', 0x20000000n])),
      0x20000000 + 4096,
      'bad-string',
      /"big\.str"/,
    ],
    // More items than a JS array can hold.
    [
      'array of 2^32 u8',
      oneKeyHeader('big.arr', le(['u32', MetaType.ARRAY], ['u32', MetaType.UINT8], ['u64', 1n << 32n])),
      2 ** 32 + 4096,
      'bad-count',
      /array "big\.arr"/,
    ],
    // A JS number per file byte: 2^28 items would be gigabytes of heap and seconds of parsing.
    [
      'array of 2^28 u8',
      oneKeyHeader('big.arr', le(['u32', MetaType.ARRAY], ['u32', MetaType.UINT8], ['u64', 1n << 28n])),
      2 ** 28 + 4096,
      'bad-count',
      /array "big\.arr"/,
    ],
  ];
  for (const [what, head, size, code, names] of cases) {
    const path = sparseFile(`sparse-${code}.gguf`, head, size);
    const peakBefore = process.resourceUsage().maxRSS;
    const t0 = performance.now();
    let error: unknown;
    try {
      GgufFile.open(path);
    } catch (e) {
      error = e;
    } finally {
      rmSync(path, { force: true });
    }
    const ms = performance.now() - t0;
    const peakGrowth = (process.resourceUsage().maxRSS - peakBefore) * 1024;
    t.true(error instanceof GgufError, `${what}: ${describe(error)}`);
    if (!(error instanceof GgufError)) continue;
    t.is(error.code, code, what);
    t.regex(error.message, names, what);
    t.true(ms < MAX_MS, `${what}: took ${ms.toFixed(1)} ms`);
    t.true(peakGrowth < 64 * 1024 * 1024, `${what}: peak RSS grew ${peakGrowth} bytes`);
  }
});

// ---------------------------------------------------------------------------------------------
// Found by the GGUF fuzzer (scripts/fuzz, test/fuzz-gguf.test.ts): each failed on the code before
// its fix.

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

test('a key holding escape sequences is named with them escaped', (t) => {
  const key = 'evil\u001b[2J\u001b]0;owned\u0007\r\nINFO forged log line\u202e';
  const { error } = parse(oneKeyHeader(key, le(['u32', 13])));
  t.true(error instanceof GgufError, describe(error));
  if (!(error instanceof GgufError)) return;
  t.is(error.code, 'bad-value-type');
  t.false(CONTROL.test(error.message), JSON.stringify(error.message));
  t.true(error.message.includes('"evil\\u001b[2J\\u001b]0;owned\\u0007\\u000d\\u000aINFO forged log line\\u202e"'));
});

test('a key length that swallows the rest of the header gives a short message', (t) => {
  // Key #0 claims most of the header: the "key" is then every field after it, NULs included,
  // and the error after it (an unknown value type) quoted all of it.
  const keyStart = at('kv#0.key').start;
  const { error } = parse(patch('kv#0.key.len', layout.infoEnd - keyStart - 8));
  t.true(error instanceof GgufError, describe(error));
  if (!(error instanceof GgufError)) return;
  t.true(error.message.length < 300, `${error.message.length} characters: ${JSON.stringify(error.message)}`);
  t.false(CONTROL.test(error.message), JSON.stringify(error.message));
  t.regex(error.message, /"general\.architecture.*…" \(\d+ characters\)/);
});

/** stories260K (Q4_0) rewritten with `edit` applied to its metadata and tensors. */
function storiesVariant(
  name: string,
  edit: (m: MetaEntry[], tensors: TensorSpec[]) => { metadata: MetaEntry[]; tensors: TensorSpec[] },
): string {
  const src = GgufFile.open(join(fixtureModels, 'stories260K-q4_0.gguf'));
  const tensors: TensorSpec[] = src.tensors.map((x) => ({
    name: x.name,
    dims: x.dims,
    type: x.type.id,
    data: src.readTensor(x),
  }));
  const path = join(dir, name);
  writeGguf(path, edit(copyMetadata(src), tensors));
  return path;
}

test('a weight of a type the kernels cannot compute is a ModelError naming the file and tensor', (t) => {
  // I8 is a valid GGUF tensor type (the reader sizes it), but no kernel multiplies by it.
  const path = storiesVariant('i8-weight.gguf', (metadata, tensors) => ({
    metadata,
    tensors: tensors.map((x) =>
      x.name === 'blk.0.attn_q.weight' ? { ...x, type: GgmlType.I8, data: new Uint8Array(x.dims[0] * x.dims[1]) } : x,
    ),
  }));
  const file = GgufFile.open(path);
  const error = t.throws(() => Transformer.load(file, { ctx: 16 }), { instanceOf: ModelError });
  t.true(error?.message.startsWith(`${path}: `), error?.message);
  t.regex(error?.message ?? '', /"blk\.0\.attn_q\.weight" has type I8, which herd cannot compute/);
});

test('a middle slice claiming a vocabulary of 2^31 tokens is refused before allocating for it', (t) => {
  // A middle stage holds neither the embedding nor the head, so the vocabulary size comes from
  // metadata; its logits buffer was sized by it (8 GiB, allocated lazily, so not even RSS showed it).
  const path = storiesVariant('huge-vocab-slice.gguf', (metadata, tensors) => ({
    metadata: [...metadata, meta.u32('llama.vocab_size', 2 ** 31)],
    tensors: tensors.filter((x) => /^blk\.[12]\./.test(x.name)),
  }));
  const file = GgufFile.open(path);
  const before = process.memoryUsage().arrayBuffers;
  const error = t.throws(() => Transformer.load(file, { ctx: 16, layers: [1, 3] }), { instanceOf: ModelError });
  t.regex(error?.message ?? '', /vocabSize 2147483648 exceeds/);
  t.true(process.memoryUsage().arrayBuffers - before < 64 * 1024 * 1024);
});
