// Malformed GGUF files beyond the one-field corpus of gguf-malformed.test.ts: the base file cut
// at every byte, counts and lengths that claim more than any file (or JS) can hold, and the
// files the GGUF fuzzer found failing.

import test from 'ava';
import { closeSync, ftruncateSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { GgmlType } from '../src/ggml/types.ts';
import { GgufError, GgufFile, MetaType, type GgufErrorCode } from '../src/gguf/reader.ts';
import { copyMetadata, meta, writeGguf, type MetaEntry, type TensorSpec } from '../src/gguf/writer.ts';
import { ModelError } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { fixtureModels } from './helpers/paths.ts';
import {
  at,
  base,
  describe,
  dir,
  layout,
  le,
  MAX_MEDIAN_MS,
  MAX_MS,
  parse,
  patch,
  stringBytes,
} from './helpers/gguf-malformed.ts';

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
