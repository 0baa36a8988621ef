// The GGUF mutations: each case takes one seed file and applies one to three of them, chosen by
// the case's own PRNG stream, so (seed, index) makes the same bytes again. Besides blind byte
// flips and cuts they aim at the fields a reader must distrust: counts and string lengths
// (huge, just past the end, zero), value, item and tensor types (unknown or another valid one),
// dimensions (zero, overflowing), data offsets (unaligned, past the end, wrapping), duplicate
// keys and tensor names, and the model's own hyper-parameters (the loader's inputs).

import type { Field, FieldKind } from '../../test/helpers/gguf-layout.ts';
import type { Seed } from './gguf-corpus.ts';
import { Rng } from './rng.ts';

export interface GgufCase {
  readonly index: number;
  readonly seed: string;
  /** What was done, in order, for the report. */
  readonly ops: readonly string[];
  readonly bytes: Uint8Array;
}

const U64_MAX = (1n << 64n) - 1n;
/** Claims a reader must not trust: past any file, past V8's limits, sign-flipping, wrapping. */
const HUGE_U64 = [U64_MAX, 1n << 63n, (1n << 63n) - 1n, 1n << 53n, (1n << 53n) + 1n, 1n << 40n, 1n << 32n, 0xffffffffn];
const EDGE_U32 = [0, 1, 2, 3, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffffe, 0x10000, 0xff];
const NUMERIC_INTERESTING = [0, 1, -1, 2, 3, 7, 0x7fffffff, -0x80000000, 0xffffffff, 65536, 1 << 24];
const FLOAT_INTERESTING = [0, -0, -1, 1e-30, 1e30, Infinity, -Infinity, NaN, 0.5, 3.4e38];

/** A mutation of a seed's bytes, or undefined when the seed has no field it aims at. */
type Mutator = (bytes: Uint8Array, seed: Seed, rng: Rng) => { bytes: Uint8Array; op: string } | undefined;

/** A random field of these kinds, or undefined when the seed has none (a vocabulary has no tensors). */
function pickField(seed: Seed, rng: Rng, ...kinds: FieldKind[]): Field | undefined {
  const fields = seed.layout.fields.filter((f) => kinds.includes(f.kind));
  return fields.length > 0 ? rng.pick(fields) : undefined;
}

/** Overwrites the field (if it still lies inside the bytes: an earlier cut may have removed it). */
function writeUint(out: Uint8Array, f: Field, value: bigint): void {
  if (f.end > out.length) return;
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const width = f.end - f.start;
  if (width === 8) v.setBigUint64(f.start, BigInt.asUintN(64, value), true);
  else if (width === 4) v.setUint32(f.start, Number(BigInt.asUintN(32, value)), true);
  else if (width === 2) v.setUint16(f.start, Number(BigInt.asUintN(16, value)), true);
  else if (width === 1) v.setUint8(f.start, Number(BigInt.asUintN(8, value)));
}

function readUint(bytes: Uint8Array, f: Field): bigint {
  if (f.end > bytes.length) return 0n;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (f.end - f.start === 8) return v.getBigUint64(f.start, true);
  if (f.end - f.start === 4) return BigInt(v.getUint32(f.start, true));
  return 0n;
}

const where = (f: Field) => `${f.kind} of ${JSON.stringify(f.owner)} @${f.start}`;

const mutators: Record<string, Mutator> = {
  flipBytes(bytes, _seed, rng) {
    const out = bytes.slice();
    const n = rng.range(1, 8);
    // Half the flips land in the header, metadata and tensor index, where the parsing is.
    const head = Math.min(out.length, _seed.layout.infoEnd + 64);
    const at: number[] = [];
    for (let i = 0; i < n; i++) {
      const p = rng.chance(0.5) ? rng.int(head) : rng.int(out.length);
      out[p] = rng.chance(0.5) ? out[p] ^ (1 << rng.int(8)) : rng.int(256);
      at.push(p);
    }
    return { bytes: out, op: `flip bytes at ${at.join(',')}` };
  },
  truncate(bytes, seed, rng) {
    const head = Math.min(bytes.length, seed.layout.infoEnd + 64);
    const size = rng.chance(0.7) ? rng.int(head) : rng.int(bytes.length);
    return { bytes: bytes.slice(0, size), op: `truncate to ${size}` };
  },
  hugeClaim(bytes, seed, rng) {
    const f = pickField(seed, rng, 'count', 'strlen');
    if (!f) return undefined;
    const left = BigInt(bytes.length - f.end);
    const value = rng.pick([...HUGE_U64, left + 1n, left, left / 2n, 0n, BigInt(rng.int(1 << 20))]);
    const out = bytes.slice();
    writeUint(out, f, value);
    return { bytes: out, op: `${where(f)} := ${value}` };
  },
  wrongType(bytes, seed, rng) {
    const f = pickField(seed, rng, 'value-type', 'item-type', 'tensor-type');
    if (!f) return undefined;
    // Another valid type (a different width or layout), an unknown one, or a huge one.
    const value = rng.chance(0.6) ? rng.int(f.kind === 'tensor-type' ? 40 : 13) : rng.pick(EDGE_U32);
    const out = bytes.slice();
    writeUint(out, f, BigInt(value));
    return { bytes: out, op: `${where(f)} := ${value}` };
  },
  badOffset(bytes, seed, rng) {
    const f = pickField(seed, rng, 'offset');
    if (!f) return undefined;
    const a = BigInt(seed.layout.alignment);
    const size = BigInt(bytes.length);
    const old = readUint(bytes, f);
    const value = rng.pick([
      size,
      size - a,
      (size / a) * a,
      old + 1n,
      old + a,
      U64_MAX - a + 1n,
      1n << 63n,
      0n,
      old * 2n,
    ]);
    const out = bytes.slice();
    writeUint(out, f, value);
    return { bytes: out, op: `${where(f)} := ${value}` };
  },
  badShape(bytes, seed, rng) {
    const f = pickField(seed, rng, 'dim', 'n-dims');
    if (!f) return undefined;
    const out = bytes.slice();
    let value: bigint;
    if (f.kind === 'n-dims') value = BigInt(rng.pick([0, 1, 2, 3, 4, 5, 0xffffffff]));
    else {
      const old = readUint(bytes, f);
      value = rng.pick([
        0n,
        1n,
        old * 2n,
        old + 1n,
        old * 32n,
        1n << 32n,
        1n << 31n,
        1n << 53n,
        U64_MAX,
        1n << 27n,
        3n << 30n,
      ]);
    }
    writeUint(out, f, value);
    return { bytes: out, op: `${where(f)} := ${value}` };
  },
  duplicateName(bytes, seed, rng) {
    // Copy one key's or tensor name's bytes over another of the same length.
    const strings = seed.layout.fields.filter(
      (f) => f.kind === 'string' && (f.owner.startsWith('key #') || f.owner.startsWith('tensor #')),
    );
    const byLen = new Map<string, Field[]>();
    for (const f of strings) {
      const k = `${f.owner.startsWith('key') ? 'k' : 't'}${f.end - f.start}`;
      byLen.set(k, [...(byLen.get(k) ?? []), f]);
    }
    const groups = [...byLen.values()].filter((g) => g.length > 1);
    if (groups.length === 0) return undefined;
    const g = rng.pick(groups);
    const a = rng.pick(g);
    let b = rng.pick(g);
    if (b === a) b = g[(g.indexOf(a) + 1) % g.length];
    const out = bytes.slice();
    out.copyWithin(b.start, a.start, a.end);
    return { bytes: out, op: `copy ${a.owner} name over ${b.owner}` };
  },
  hyperParameter(bytes, seed, rng) {
    // The numbers the model loader turns into shapes and allocations.
    const scalars = seed.layout.fields.filter((f) => f.kind === 'scalar');
    const model = scalars.filter((f) => /^(llama|qwen\d?)\.|^tokenizer\.ggml\.\w+_token_id$|alignment/.test(f.owner));
    if (scalars.length === 0) return undefined;
    const f = rng.pick(model.length > 0 && rng.chance(0.8) ? model : scalars);
    if (f.end > bytes.length) return undefined;
    const out = bytes.slice();
    const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
    const old = f.metaType === 6 ? v.getFloat32(f.start, true) : Number(readUint(bytes, f));
    let value: number;
    if (f.metaType === 6 || f.metaType === 12) {
      value = rng.pick([...FLOAT_INTERESTING, old * 2, old / 3]);
      if (f.metaType === 6) v.setFloat32(f.start, value, true);
      else v.setFloat64(f.start, value, true);
    } else {
      value = rng.pick([...NUMERIC_INTERESTING, old + 1, old - 1, old * 2, old * 1000]);
      writeUint(out, f, BigInt(Math.trunc(value)));
    }
    return { bytes: out, op: `${f.owner} := ${value}` };
  },
  spliceChunk(bytes, seed, rng) {
    // Duplicate or delete a run of bytes in the header region: every later field shifts.
    const head = Math.min(bytes.length, seed.layout.infoEnd);
    const start = rng.int(head);
    const len = rng.range(1, 64);
    if (rng.chance(0.5)) {
      const out = new Uint8Array(bytes.length - Math.min(len, bytes.length - start));
      out.set(bytes.subarray(0, start), 0);
      out.set(bytes.subarray(start + len), start);
      return { bytes: out, op: `delete ${len} bytes at ${start}` };
    }
    const chunk = bytes.slice(start, start + len);
    const out = new Uint8Array(bytes.length + chunk.length);
    out.set(bytes.subarray(0, start), 0);
    out.set(chunk, start);
    out.set(bytes.subarray(start), start + chunk.length);
    return { bytes: out, op: `duplicate ${chunk.length} bytes at ${start}` };
  },
};

/** Draws from these, more often from those aimed at fields. */
const MENU: readonly (keyof typeof mutators)[] = [
  'flipBytes',
  'flipBytes',
  'truncate',
  'hugeClaim',
  'hugeClaim',
  'wrongType',
  'wrongType',
  'badOffset',
  'badShape',
  'badShape',
  'duplicateName',
  'hyperParameter',
  'hyperParameter',
  'hyperParameter',
  'spliceChunk',
];

function pickSeed(corpus: readonly Seed[], rng: Rng): Seed {
  const total = corpus.reduce((s, x) => s + x.weight, 0);
  let r = rng.int(total);
  for (const s of corpus) {
    if (r < s.weight) return s;
    r -= s.weight;
  }
  return corpus[corpus.length - 1];
}

/** Case `index` of a run seeded `seed`: the same arguments give the same bytes. */
export function makeCase(corpus: readonly Seed[], runSeed: number, index: number): GgufCase {
  const rng = Rng.forCase(runSeed, index);
  const seed = pickSeed(corpus, rng);
  let bytes = seed.bytes;
  const ops: string[] = [];
  // Later mutations address fields by the seed's layout, so they stack on the first only while
  // the fields stay where they were (a cut or splice moves them: later ones then hit other bytes,
  // which is fuzzing too).
  const n = rng.chance(0.6) ? 1 : rng.range(2, 3);
  for (let i = 0; i < n; i++) {
    const name = rng.pick(MENU);
    const r = mutators[name](bytes, seed, rng) ?? mutators.flipBytes(bytes, seed, rng);
    if (!r) continue;
    bytes = r.bytes;
    ops.push(`${name}: ${r.op}`);
  }
  return { index, seed: seed.name, ops, bytes };
}
