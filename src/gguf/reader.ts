// GGUF reader: header, metadata, tensor index, and lazy reads of one tensor's bytes.
//
// Layout (GGUF v2/v3, little-endian):
//   magic "GGUF" u32 version, u64 n_tensors, u64 n_kv
//   n_kv × { string key, u32 value_type, value }
//   n_tensors × { string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset }
//   padding to general.alignment, then the data section (tensor offsets are relative to it).
//
// The file is read through a small window, never whole: every count and length is checked
// against the bytes left in the file before anything is allocated for it, so a hostile file
// fails fast with a GgufError naming the field and its offset.

import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { ggmlTypeInfo, type GgmlType, type GgmlTypeInfo } from '../ggml/types.ts';

export type MetadataValue = number | bigint | boolean | string | MetadataValue[];

/** The GGUF type a metadata value was stored with (for arrays, also their items' type). */
export type MetaTypeDesc = { readonly type: MetaType; readonly item?: MetaTypeDesc };

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_DEFAULT_ALIGNMENT = 32;
const MAX_DIMS = 4;
const MAX_TENSOR_NAME = 64;
const MAX_ARRAY_NESTING = 8;
// Checking claims against the bytes left is not enough in a multi-GB model: a hostile string
// length could still ask for gigabytes (V8 cannot even make a string past ~512 MiB), an array
// count for more items than a JS array holds, or for a JS value per file byte. These caps sit far
// above real files (the largest strings are embedded tokenizer.json files of tens of MiB, the
// largest arrays vocabularies of a few hundred thousand tokens).
const MAX_STRING_BYTES = 128 * 1024 * 1024;
const MAX_ARRAY_ITEMS = 1 << 24;

export const MetaType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;
export type MetaType = (typeof MetaType)[keyof typeof MetaType];

/** How a fixed-size value is stored: its width and the Buffer calls that read and write it. */
export interface Scalar<T extends number | bigint> {
  readonly bytes: number;
  read(buf: Buffer, at: number): T;
  write(buf: Buffer, value: T, at: number): void;
}

export const U8: Scalar<number> = {
  bytes: 1,
  read: (b, at) => b.readUInt8(at),
  write: (b, v, at) => b.writeUInt8(v, at),
};
export const U32: Scalar<number> = {
  bytes: 4,
  read: (b, at) => b.readUInt32LE(at),
  write: (b, v, at) => b.writeUInt32LE(v, at),
};
export const U64: Scalar<bigint> = {
  bytes: 8,
  read: (b, at) => b.readBigUInt64LE(at),
  write: (b, v, at) => b.writeBigUInt64LE(v, at),
};

/** The metadata types whose values are JS numbers (a bool is a u8 that must be 0 or 1). */
export const numberScalars: Readonly<Partial<Record<number, Scalar<number>>>> = {
  [MetaType.UINT8]: U8,
  [MetaType.INT8]: { bytes: 1, read: (b, at) => b.readInt8(at), write: (b, v, at) => b.writeInt8(v, at) },
  [MetaType.UINT16]: { bytes: 2, read: (b, at) => b.readUInt16LE(at), write: (b, v, at) => b.writeUInt16LE(v, at) },
  [MetaType.INT16]: { bytes: 2, read: (b, at) => b.readInt16LE(at), write: (b, v, at) => b.writeInt16LE(v, at) },
  [MetaType.UINT32]: U32,
  [MetaType.INT32]: { bytes: 4, read: (b, at) => b.readInt32LE(at), write: (b, v, at) => b.writeInt32LE(v, at) },
  [MetaType.FLOAT32]: { bytes: 4, read: (b, at) => b.readFloatLE(at), write: (b, v, at) => b.writeFloatLE(v, at) },
  [MetaType.FLOAT64]: { bytes: 8, read: (b, at) => b.readDoubleLE(at), write: (b, v, at) => b.writeDoubleLE(v, at) },
  [MetaType.BOOL]: U8,
};

/** The 64-bit integer types, whose values are bigints (or safe integers once read). */
export const bigScalars: Readonly<Partial<Record<number, Scalar<bigint>>>> = {
  [MetaType.UINT64]: U64,
  [MetaType.INT64]: {
    bytes: 8,
    read: (b, at) => b.readBigInt64LE(at),
    write: (b, v, at) => b.writeBigInt64LE(v, at),
  },
};

/** Bytes a value of a fixed-size type takes; undefined for strings, arrays and unknown types. */
export function scalarBytes(type: number): number | undefined {
  return (numberScalars[type] ?? bigScalars[type])?.bytes;
}

/** Bytes a value of this type takes at least in the file (a string takes its u64 length). */
function minBytes(type: number): number | undefined {
  return type === MetaType.STRING ? 8 : type === MetaType.ARRAY ? 12 : scalarBytes(type);
}

export type GgufErrorCode =
  | 'io'
  | 'truncated'
  | 'bad-magic'
  | 'bad-version'
  | 'bad-count'
  | 'bad-string'
  | 'bad-value-type'
  | 'bad-array'
  | 'duplicate-key'
  | 'bad-alignment'
  | 'bad-tensor'
  | 'duplicate-tensor'
  | 'unknown-type'
  | 'bad-shape'
  | 'bad-offset'
  | 'missing-key'
  | 'wrong-key-type';

const MAX_QUOTED = 80;
// C0 and C1 controls, DEL, line and paragraph separators and the bidirectional overrides
// (which can make a terminal show text other than the bytes, as in "Trojan Source").
// eslint-disable-next-line no-control-regex
const UNSAFE_CHAR = /[\u0000-\u001f\u007f-\u009f"\\\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/;

/**
 * A key or tensor name read from a file, for a message: quoted, with anything that could move a
 * terminal's cursor or forge a log line escaped, and at most MAX_QUOTED characters of it once
 * escaped (a hostile length can make a "name" swallow the rest of the header).
 */
export function quoted(name: string): string {
  let out = '';
  let used = 0;
  for (const ch of name.slice(0, MAX_QUOTED)) {
    const e = !UNSAFE_CHAR.test(ch)
      ? ch
      : ch === '"' || ch === '\\'
        ? `\\${ch}`
        : `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`;
    if (out.length + e.length > MAX_QUOTED) break;
    out += e;
    used += ch.length;
  }
  return used < name.length ? `"${out}…" (${name.length} characters)` : `"${out}"`;
}

export class GgufError extends Error {
  constructor(
    readonly code: GgufErrorCode,
    readonly path: string,
    detail: string,
    readonly offset?: number,
  ) {
    super(`${path}: ${detail}${offset === undefined ? '' : ` (at offset 0x${offset.toString(16)})`}`);
    this.name = 'GgufError';
  }
}

export interface TensorInfo {
  readonly name: string;
  /** ggml order: dims[0] is the row length (fastest varying). */
  readonly dims: readonly number[];
  readonly type: GgmlTypeInfo;
  readonly nElements: number;
  readonly nBytes: number;
  /** Absolute offset of the first byte in the file. */
  readonly fileOffset: number;
}

/** Reads a file sequentially through a window, checking every read against the file size. */
class Cursor {
  private buf = Buffer.alloc(0);
  private bufStart = 0;
  pos = 0;

  constructor(
    private readonly fd: number,
    readonly size: number,
    private readonly path: string,
  ) {}

  get remaining(): number {
    return this.size - this.pos;
  }

  /** Makes n bytes at pos available in the window and returns the window offset. */
  private need(n: number, what: string): number {
    if (n > this.remaining) {
      throw new GgufError(
        'truncated',
        this.path,
        `file ends inside ${what}: needs ${n} bytes, ${this.remaining} left`,
        this.pos,
      );
    }
    const off = this.pos - this.bufStart;
    if (off >= 0 && off + n <= this.buf.length) return off;
    const len = Math.min(Math.max(n, 1 << 16), this.remaining);
    if (this.buf.length < len) this.buf = Buffer.allocUnsafe(len);
    let got = 0;
    while (got < len) {
      const r = readSync(this.fd, this.buf, got, len - got, this.pos + got);
      if (r === 0) throw new GgufError('io', this.path, `short read inside ${what}`, this.pos + got);
      got += r;
    }
    this.bufStart = this.pos;
    return 0;
  }

  /** A fixed-size value. */
  scalar<T extends number | bigint>(s: Scalar<T>, what: string): T {
    const o = this.need(s.bytes, what);
    this.pos += s.bytes;
    return s.read(this.buf, o);
  }
  u32(what: string): number {
    return this.scalar(U32, what);
  }
  u64(what: string): bigint {
    return this.scalar(U64, what);
  }

  /** A u64 count whose items take at least itemBytes each: it must fit in the rest of the file. */
  count(what: string, itemBytes: number): number {
    const at = this.pos;
    const n = this.u64(what);
    if (n > BigInt(Math.floor(this.remaining / Math.max(itemBytes, 1)))) {
      throw new GgufError(
        'bad-count',
        this.path,
        `${what} is ${n}, more than the ${this.remaining} bytes left in the file can hold`,
        at,
      );
    }
    return Number(n);
  }

  string(what: string): string {
    // A vocabulary is tens of thousands of strings: the length is read as two u32 halves and
    // messages are built only on error, so reading one allocates nothing but the string.
    const at = this.pos;
    const lo = this.need(8, what);
    const len = this.buf.readUInt32LE(lo) + this.buf.readUInt32LE(lo + 4) * 2 ** 32;
    if (len > this.remaining - 8 || len > MAX_STRING_BYTES) {
      const n = this.buf.readBigUInt64LE(lo);
      const why =
        len > this.remaining - 8
          ? `only ${this.remaining - 8} left in the file`
          : `more than the ${MAX_STRING_BYTES} a GGUF string may take`;
      throw new GgufError('bad-string', this.path, `${what} claims ${n} bytes, ${why}`, at);
    }
    this.pos += 8;
    const o = this.need(len, what);
    this.pos += len;
    return this.buf.toString('utf8', o, o + len);
  }
}

function safeNumber(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

export class GgufFile {
  private constructor(
    readonly path: string,
    readonly version: number,
    readonly metadata: ReadonlyMap<string, MetadataValue>,
    /** How each metadata value was stored, so a rewritten file keeps llama.cpp's types. */
    readonly metadataTypes: ReadonlyMap<string, MetaTypeDesc>,
    readonly tensors: readonly TensorInfo[],
    readonly alignment: number,
    readonly dataOffset: number,
    readonly fileSize: number,
  ) {
    this.byName = new Map(tensors.map((t) => [t.name, t]));
  }

  private readonly byName: Map<string, TensorInfo>;

  /** Parses and validates the header, metadata and tensor index of a GGUF file. */
  static open(path: string): GgufFile {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      throw new GgufError('io', path, `cannot open: ${(e as Error).message}`);
    }
    try {
      return GgufFile.parse(fd, path);
    } finally {
      closeSync(fd);
    }
  }

  private static parse(fd: number, path: string): GgufFile {
    const size = fstatSync(fd).size;
    const c = new Cursor(fd, size, path);

    const magic = c.u32('magic');
    if (magic !== GGUF_MAGIC) {
      throw new GgufError(
        'bad-magic',
        path,
        `not a GGUF file: magic is 0x${magic.toString(16).padStart(8, '0')}, expected "GGUF"`,
        0,
      );
    }
    const version = c.u32('version');
    if (version !== 2 && version !== 3) {
      const hint = version >= 0x01000000 ? ' (a big-endian file? only little-endian is supported)' : '';
      throw new GgufError(
        'bad-version',
        path,
        `unsupported GGUF version ${version}${hint}; versions 2 and 3 are supported`,
        4,
      );
    }
    // A tensor info takes at least 8 (name length) + 4 + 4 + 8 bytes; a key/value at least 8 + 4 + 1.
    const nTensors = c.count('tensor count', 24);
    const nKv = c.count('metadata count', 13);

    const metadata = new Map<string, MetadataValue>();
    const metadataTypes = new Map<string, MetaTypeDesc>();
    for (let i = 0; i < nKv; i++) {
      const at = c.pos;
      const key = c.string(`metadata key #${i}`);
      if (metadata.has(key))
        throw new GgufError('duplicate-key', path, `metadata key ${quoted(key)} appears twice`, at);
      const type = c.u32(`type of metadata ${quoted(key)}`);
      const desc: { type: MetaType; item?: MetaTypeDesc } = { type: type as MetaType };
      metadata.set(key, readValue(c, type, key, 0, path, desc));
      metadataTypes.set(key, desc);
    }

    let alignment = GGUF_DEFAULT_ALIGNMENT;
    const align = metadata.get('general.alignment');
    if (align !== undefined) {
      // The bit test only sees the low 32 bits, so it needs an integer no larger than a u32
      // power of two: 1.5 or 3 * 2^32 would pass it, and BigInt(1.5) below would then throw.
      if (
        typeof align !== 'number' ||
        !Number.isInteger(align) ||
        align <= 0 ||
        align > 0x80000000 ||
        (align & (align - 1)) !== 0
      ) {
        throw new GgufError('bad-alignment', path, `general.alignment must be a power of two, got ${String(align)}`);
      }
      alignment = align;
    }

    interface RawTensor {
      name: string;
      dims: number[];
      type: GgmlTypeInfo;
      nElements: number;
      nBytes: number;
      offset: bigint;
      at: number;
    }
    const raw: RawTensor[] = [];
    const seen = new Set<string>();
    for (let i = 0; i < nTensors; i++) {
      const at = c.pos;
      const name = c.string(`name of tensor #${i}`);
      if (name.length >= MAX_TENSOR_NAME) {
        throw new GgufError(
          'bad-tensor',
          path,
          `tensor #${i} name is ${name.length} characters, ggml allows ${MAX_TENSOR_NAME - 1}`,
          at,
        );
      }
      if (seen.has(name)) throw new GgufError('duplicate-tensor', path, `tensor ${quoted(name)} appears twice`, at);
      seen.add(name);
      const nDims = c.u32(`dimension count of tensor ${quoted(name)}`);
      if (nDims < 1 || nDims > MAX_DIMS) {
        throw new GgufError(
          'bad-shape',
          path,
          `tensor ${quoted(name)} has ${nDims} dimensions, ggml allows 1..${MAX_DIMS}`,
          at,
        );
      }
      const dims: number[] = [];
      let elements = 1n;
      for (let d = 0; d < nDims; d++) {
        const dim = c.u64(`dimension ${d} of tensor ${quoted(name)}`);
        if (dim === 0n)
          throw new GgufError('bad-shape', path, `tensor ${quoted(name)} has a zero-sized dimension ${d}`, at);
        elements *= dim;
        if (elements > BigInt(Number.MAX_SAFE_INTEGER)) {
          throw new GgufError(
            'bad-shape',
            path,
            `tensor ${quoted(name)} element count overflows (dimension ${d} is ${dim})`,
            at,
          );
        }
        dims.push(Number(dim));
      }
      const typeId = c.u32(`type of tensor ${quoted(name)}`);
      const type = ggmlTypeInfo(typeId);
      if (!type)
        throw new GgufError('unknown-type', path, `tensor ${quoted(name)} has unknown ggml type ${typeId}`, at);
      if (dims[0] % type.blockSize !== 0) {
        throw new GgufError(
          'bad-shape',
          path,
          `tensor ${quoted(name)} row length ${dims[0]} is not a multiple of the ${type.name} block size ${type.blockSize}`,
          at,
        );
      }
      const nElements = Number(elements);
      const offset = c.u64(`data offset of tensor ${quoted(name)}`);
      raw.push({ name, dims, type, nElements, nBytes: (nElements / type.blockSize) * type.typeSize, offset, at });
    }

    const dataOffset = Math.ceil(c.pos / alignment) * alignment;
    if (nTensors > 0 && dataOffset > size) {
      throw new GgufError(
        'truncated',
        path,
        `data section would start at ${dataOffset}, past the end of the file (${size} bytes)`,
        c.pos,
      );
    }
    const dataSize = BigInt(Math.max(0, size - dataOffset));
    const tensors: TensorInfo[] = raw.map((t) => {
      if (t.offset % BigInt(alignment) !== 0n) {
        throw new GgufError(
          'bad-offset',
          path,
          `tensor ${quoted(t.name)} data offset ${t.offset} is not aligned to ${alignment}`,
          t.at,
        );
      }
      if (t.offset + BigInt(t.nBytes) > dataSize) {
        throw new GgufError(
          'bad-offset',
          path,
          `tensor ${quoted(t.name)} data [${t.offset}, ${t.offset + BigInt(t.nBytes)}) lies past the end of the data section (${dataSize} bytes)`,
          t.at,
        );
      }
      return {
        name: t.name,
        dims: t.dims,
        type: t.type,
        nElements: t.nElements,
        nBytes: t.nBytes,
        fileOffset: dataOffset + Number(t.offset),
      };
    });

    return new GgufFile(path, version, metadata, metadataTypes, tensors, alignment, dataOffset, size);
  }

  tensor(name: string): TensorInfo | undefined {
    return this.byName.get(name);
  }

  /** The tensor named, or a GgufError naming the file and the tensor. */
  requireTensor(name: string): TensorInfo {
    const t = this.byName.get(name);
    if (!t) throw new GgufError('bad-tensor', this.path, `tensor ${quoted(name)} is missing`);
    return t;
  }

  /** Reads one tensor's bytes from disk into a fresh buffer (off the JS heap). */
  readTensor(t: TensorInfo): Buffer {
    // Not allocUnsafe: below 4 KiB that hands out a slice of Node's shared pool, and a typed
    // array made over `.buffer` would then see other allocations' bytes.
    const out = Buffer.allocUnsafeSlow(t.nBytes);
    this.readTensorInto(t, out);
    return out;
  }

  /** Reads one tensor's bytes into dst (e.g. a kernel backend's memory), dst.length = t.nBytes. */
  readTensorInto(t: TensorInfo, dst: Uint8Array): void {
    if (dst.length !== t.nBytes) {
      throw new GgufError(
        'io',
        this.path,
        `tensor ${quoted(t.name)} is ${t.nBytes} bytes, destination holds ${dst.length}`,
      );
    }
    const fd = openSync(this.path, 'r');
    try {
      let got = 0;
      while (got < t.nBytes) {
        const r = readSync(fd, dst, got, Math.min(t.nBytes - got, 1 << 30), t.fileOffset + got);
        if (r === 0) throw new GgufError('io', this.path, `short read in tensor ${quoted(t.name)}`, t.fileOffset + got);
        got += r;
      }
    } finally {
      closeSync(fd);
    }
  }

  // Typed metadata accessors: a missing key or a value of the wrong kind names the key.

  has(key: string): boolean {
    return this.metadata.has(key);
  }

  string(key: string): string;
  string(key: string, fallback: string): string;
  string(key: string, fallback?: string): string {
    return this.typed(key, 'a string', (v) => typeof v === 'string', fallback);
  }

  number(key: string): number;
  number(key: string, fallback: number): number;
  number(key: string, fallback?: number): number {
    return this.typed(key, 'a number', (v) => typeof v === 'number', fallback);
  }

  bool(key: string, fallback: boolean): boolean {
    return this.typed(key, 'a boolean', (v) => typeof v === 'boolean', fallback);
  }

  array(key: string): MetadataValue[] | undefined {
    return this.metadata.has(key) ? this.typed(key, 'an array', (v) => Array.isArray(v)) : undefined;
  }

  /** The value of key, if `is` accepts it; fallback when the key is missing and one is given. */
  private typed<T extends MetadataValue>(key: string, want: string, is: (v: MetadataValue) => v is T, fallback?: T): T {
    const v = this.metadata.get(key);
    if (v === undefined && fallback !== undefined) return fallback;
    if (v === undefined || !is(v)) throw this.keyError(key, want, v);
    return v;
  }

  private keyError(key: string, want: string, got: MetadataValue | undefined): GgufError {
    if (got === undefined) return new GgufError('missing-key', this.path, `metadata ${quoted(key)} is missing`);
    const kind = Array.isArray(got) ? 'an array' : typeof got;
    return new GgufError('wrong-key-type', this.path, `metadata ${quoted(key)} should be ${want}, found ${kind}`);
  }
}

/** Reads one value; for arrays, records the item type (of the first item, for nested ones) in desc. */
function readValue(
  c: Cursor,
  type: number,
  key: string,
  depth: number,
  path: string,
  desc?: { item?: MetaTypeDesc },
  what = `value of ${quoted(key)}`,
): MetadataValue {
  const big = bigScalars[type];
  if (big) return safeNumber(c.scalar(big, what));
  switch (type) {
    case MetaType.BOOL: {
      const at = c.pos;
      const b = c.scalar(U8, what);
      if (b > 1) throw new GgufError('bad-value-type', path, `${what} is a bool stored as ${b}`, at);
      return b === 1;
    }
    case MetaType.STRING:
      return c.string(what);
    case MetaType.ARRAY: {
      const at = c.pos;
      if (depth >= MAX_ARRAY_NESTING)
        throw new GgufError('bad-array', path, `${what} nests arrays deeper than ${MAX_ARRAY_NESTING}`, at);
      const itemType = c.u32(`array item type of ${quoted(key)}`);
      const min = minBytes(itemType);
      if (min === undefined)
        throw new GgufError('bad-value-type', path, `array ${quoted(key)} has unknown item type ${itemType}`, at);
      const countAt = c.pos;
      const n = c.count(`item count of array ${quoted(key)}`, min);
      if (n > MAX_ARRAY_ITEMS) {
        throw new GgufError(
          'bad-count',
          path,
          `item count of array ${quoted(key)} is ${n}, more than the ${MAX_ARRAY_ITEMS} a GGUF array may hold`,
          countAt,
        );
      }
      const out: MetadataValue[] = new Array(n);
      const item: { type: MetaType; item?: MetaTypeDesc } = { type: itemType as MetaType };
      if (desc) desc.item = item;
      for (let i = 0; i < n; i++)
        out[i] = readValue(c, itemType, key, depth + 1, path, i === 0 ? item : undefined, what);
      return out;
    }
  }
  const num = numberScalars[type];
  if (!num)
    throw new GgufError('bad-value-type', path, `metadata ${quoted(key)} has unknown value type ${type}`, c.pos - 4);
  return c.scalar(num, what);
}

export type { GgmlType };
