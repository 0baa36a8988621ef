// A corpus of malformed GGUF files, each derived from one small valid file made by the writer:
// every one must fail with a GgufError carrying the specific code and naming the field, fast,
// and without a RangeError, a crash, a hang or a large allocation. Cut files, claims that fit a
// huge file and the fuzzer's finds are in gguf-malformed-limits.test.ts.

import test from 'ava';
import { join } from 'node:path';
import { GgufError, MetaType, type GgufErrorCode } from '../src/gguf/reader.ts';
import {
  at,
  base,
  describe,
  dir,
  layout,
  le,
  MAX_MS,
  parse,
  patch,
  splice,
  stringBytes,
} from './helpers/gguf-malformed.ts';

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
