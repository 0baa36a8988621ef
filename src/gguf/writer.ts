// GGUF v3 writer: the layout src/gguf/reader.ts parses, written the way llama.cpp's gguf.cpp
// writes it (every tensor's data padded to general.alignment, the last one too).
//
// Metadata values carry their GGUF type explicitly, because a JS number cannot say whether it
// was meant as u8, i32 or f32 and llama.cpp rejects a key stored with the wrong type.
//
// Only the header, metadata and tensor index are built in memory; tensor data goes to the file
// with one write per tensor (or per chunk, when a tensor's data is produced by a generator), so
// a multi-GB synthetic model never has to exist in memory at once. The file is written under a
// temporary name and renamed at the end, so a failed write never leaves a plausible-looking
// truncated model behind.

import { closeSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { ggmlTypeInfo, type GgmlType, type GgmlTypeInfo } from '../ggml/types.ts';
import {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GgufError,
  MetaType,
  U32,
  U64,
  U8,
  bigScalars,
  numberScalars,
  type GgufFile,
  type MetaTypeDesc,
  type MetadataValue,
  type Scalar,
} from './reader.ts';

const GGUF_VERSION = 3;
const MAX_DIMS = 4;
// ggml's GGML_MAX_NAME is 64 bytes including the terminating NUL.
const MAX_TENSOR_NAME_BYTES = 63;

type NumberMetaType =
  | typeof MetaType.UINT8
  | typeof MetaType.INT8
  | typeof MetaType.UINT16
  | typeof MetaType.INT16
  | typeof MetaType.UINT32
  | typeof MetaType.INT32
  | typeof MetaType.FLOAT32
  | typeof MetaType.FLOAT64;
type BigMetaType = typeof MetaType.UINT64 | typeof MetaType.INT64;

/** An array value: items all of itemType; when itemType is ARRAY each item is a MetaArray. */
export interface MetaArray {
  readonly itemType: MetaType;
  readonly value: readonly MetaItem[];
}
export type MetaItem = number | bigint | boolean | string | MetaArray;

/** One metadata key with its GGUF type. 64-bit integers take a bigint or a safe integer. */
export type MetaEntry =
  | { readonly key: string; readonly type: NumberMetaType; readonly value: number }
  | { readonly key: string; readonly type: BigMetaType; readonly value: bigint | number }
  | { readonly key: string; readonly type: typeof MetaType.BOOL; readonly value: boolean }
  | { readonly key: string; readonly type: typeof MetaType.STRING; readonly value: string }
  | ({ readonly key: string; readonly type: typeof MetaType.ARRAY } & MetaArray);

/** Typed constructors, so call sites read `meta.u32('llama.block_count', 6)`. */
export const meta = {
  u8: (key: string, value: number): MetaEntry => ({ key, type: MetaType.UINT8, value }),
  i8: (key: string, value: number): MetaEntry => ({ key, type: MetaType.INT8, value }),
  u16: (key: string, value: number): MetaEntry => ({ key, type: MetaType.UINT16, value }),
  i16: (key: string, value: number): MetaEntry => ({ key, type: MetaType.INT16, value }),
  u32: (key: string, value: number): MetaEntry => ({ key, type: MetaType.UINT32, value }),
  i32: (key: string, value: number): MetaEntry => ({ key, type: MetaType.INT32, value }),
  f32: (key: string, value: number): MetaEntry => ({ key, type: MetaType.FLOAT32, value }),
  f64: (key: string, value: number): MetaEntry => ({ key, type: MetaType.FLOAT64, value }),
  u64: (key: string, value: bigint | number): MetaEntry => ({ key, type: MetaType.UINT64, value }),
  i64: (key: string, value: bigint | number): MetaEntry => ({ key, type: MetaType.INT64, value }),
  bool: (key: string, value: boolean): MetaEntry => ({ key, type: MetaType.BOOL, value }),
  str: (key: string, value: string): MetaEntry => ({ key, type: MetaType.STRING, value }),
  array: (key: string, itemType: MetaType, value: readonly MetaItem[]): MetaEntry => ({
    key,
    type: MetaType.ARRAY,
    itemType,
    value,
  }),
  /** An array item of an array whose itemType is ARRAY. */
  nested: (itemType: MetaType, value: readonly MetaItem[]): MetaArray => ({ itemType, value }),
} as const;

/**
 * The metadata of a file read by GgufFile, as entries with the types it was stored with, so a
 * rewritten file (quantized, or a slice of layers) keeps every key as llama.cpp expects it.
 */
export function copyMetadata(file: GgufFile, keep: (key: string) => boolean = () => true): MetaEntry[] {
  const out: MetaEntry[] = [];
  for (const [key, value] of file.metadata) {
    if (!keep(key)) continue;
    const desc = file.metadataTypes.get(key);
    if (!desc) throw new GgufError('missing-key', file.path, `metadata "${key}" has no recorded type`);
    out.push({ key, ...typedItem(value, desc) } as MetaEntry);
  }
  return out;
}

function typedItem(
  value: MetadataValue,
  desc: MetaTypeDesc,
): { type: MetaType; value: MetaItem | readonly MetaItem[]; itemType?: MetaType } {
  if (desc.type !== MetaType.ARRAY) return { type: desc.type, value: value as MetaItem };
  const item = desc.item ?? { type: MetaType.UINT8 };
  return { type: MetaType.ARRAY, itemType: item.type, value: toItems(value as MetadataValue[], item) };
}

function toItems(values: MetadataValue[], item: MetaTypeDesc): MetaItem[] {
  if (item.type !== MetaType.ARRAY) return values as MetaItem[];
  const inner = item.item ?? { type: MetaType.UINT8 };
  return values.map((v) => meta.nested(inner.type, toItems(v as MetadataValue[], inner)));
}

/** Tensor data: all bytes at once, or a generator of chunks for tensors too big to hold. */
export type TensorData = Uint8Array | (() => Iterable<Uint8Array>);

export interface TensorSpec {
  readonly name: string;
  /** ggml order: dims[0] is the row length. */
  readonly dims: readonly number[];
  readonly type: GgmlType;
  readonly data: TensorData;
}

export interface GgufSpec {
  readonly metadata?: readonly MetaEntry[];
  readonly tensors?: readonly TensorSpec[];
}

export interface WrittenGguf {
  readonly fileSize: number;
  readonly alignment: number;
  /** Absolute file offset where the data section starts. */
  readonly dataOffset: number;
  /** Per tensor, in order: absolute file offset of its data and its byte count. */
  readonly tensors: readonly { readonly name: string; readonly fileOffset: number; readonly nBytes: number }[];
}

/** A growable little-endian byte buffer for the header, metadata and tensor index. */
class ByteSink {
  private buf = Buffer.alloc(4096);
  length = 0;

  private reserve(n: number): number {
    if (this.length + n > this.buf.length) {
      const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
      this.buf.copy(next, 0, 0, this.length);
      this.buf = next;
    }
    const at = this.length;
    this.length += n;
    return at;
  }

  put<T extends number | bigint>(s: Scalar<T>, v: T): void {
    // reserve() may swap this.buf, so it must run before this.buf is read.
    const at = this.reserve(s.bytes);
    s.write(this.buf, v, at);
  }

  string(s: string): void {
    const n = Buffer.byteLength(s, 'utf8');
    this.put(U64, BigInt(n));
    const at = this.reserve(n);
    this.buf.write(s, at, n, 'utf8');
  }

  bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

const intRange: Partial<Record<MetaType, readonly [number, number]>> = {
  [MetaType.UINT8]: [0, 0xff],
  [MetaType.INT8]: [-0x80, 0x7f],
  [MetaType.UINT16]: [0, 0xffff],
  [MetaType.INT16]: [-0x8000, 0x7fff],
  [MetaType.UINT32]: [0, 0xffffffff],
  [MetaType.INT32]: [-0x80000000, 0x7fffffff],
};

const bigRange: Partial<Record<MetaType, readonly [bigint, bigint]>> = {
  [MetaType.UINT64]: [0n, (1n << 64n) - 1n],
  [MetaType.INT64]: [-(1n << 63n), (1n << 63n) - 1n],
};

function isMetaArray(v: unknown): v is MetaArray {
  return (
    typeof v === 'object' && v !== null && 'itemType' in v && 'value' in v && Array.isArray((v as MetaArray).value)
  );
}

/** Encodes one value of the given type, checking that the JS value fits it. */
function encodeValue(out: ByteSink, type: number, value: unknown, what: string, path: string): void {
  const bad = (want: string): GgufError =>
    new GgufError(
      'bad-value-type',
      path,
      `${what} should be ${want}, got ${typeof value === 'bigint' ? `${value}n` : (JSON.stringify(value) ?? String(value))}`,
    );

  switch (type) {
    case MetaType.BOOL:
      if (typeof value !== 'boolean') throw bad('a boolean');
      return out.put(U8, value ? 1 : 0);
    case MetaType.STRING:
      if (typeof value !== 'string') throw bad('a string');
      return out.string(value);
    case MetaType.ARRAY: {
      if (!isMetaArray(value)) throw bad('an array { itemType, value }');
      if (!Object.values(MetaType).includes(value.itemType)) {
        throw new GgufError('bad-value-type', path, `${what} has unknown item type ${value.itemType}`);
      }
      out.put(U32, value.itemType);
      out.put(U64, BigInt(value.value.length));
      for (let i = 0; i < value.value.length; i++)
        encodeValue(out, value.itemType, value.value[i], `${what}[${i}]`, path);
      return;
    }
  }

  const big = bigScalars[type];
  const bigs = bigRange[type as MetaType];
  if (big && bigs) {
    let v: bigint;
    if (typeof value === 'number' && Number.isSafeInteger(value)) v = BigInt(value);
    else if (typeof value === 'bigint') v = value;
    else throw bad('a bigint or a safe integer');
    if (v < bigs[0] || v > bigs[1]) throw bad(`in [${bigs[0]}, ${bigs[1]}]`);
    return out.put(big, v);
  }
  const num = numberScalars[type];
  if (!num) throw new GgufError('bad-value-type', path, `${what} has unknown type ${type}`);
  const ints = intRange[type as MetaType];
  if (ints) {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < ints[0] || value > ints[1]) {
      throw bad(`an integer in [${ints[0]}, ${ints[1]}]`);
    }
  } else if (typeof value !== 'number') throw bad('a number');
  out.put(num, value);
}

interface PlannedTensor {
  readonly spec: TensorSpec;
  readonly info: GgmlTypeInfo;
  readonly nBytes: number;
  /** Offset inside the data section. */
  readonly offset: number;
}

function planTensor(t: TensorSpec, offset: number, path: string): PlannedTensor {
  const nameBytes = Buffer.byteLength(t.name, 'utf8');
  if (nameBytes === 0 || nameBytes > MAX_TENSOR_NAME_BYTES) {
    throw new GgufError(
      'bad-tensor',
      path,
      `tensor name "${t.name}" is ${nameBytes} bytes, ggml allows 1..${MAX_TENSOR_NAME_BYTES}`,
    );
  }
  const info = ggmlTypeInfo(t.type);
  if (!info) throw new GgufError('unknown-type', path, `tensor "${t.name}" has unknown ggml type ${t.type}`);
  if (t.dims.length < 1 || t.dims.length > MAX_DIMS) {
    throw new GgufError(
      'bad-shape',
      path,
      `tensor "${t.name}" has ${t.dims.length} dimensions, ggml allows 1..${MAX_DIMS}`,
    );
  }
  let n = 1;
  for (const [d, dim] of t.dims.entries()) {
    if (!Number.isSafeInteger(dim) || dim < 1)
      throw new GgufError('bad-shape', path, `tensor "${t.name}" dimension ${d} is ${dim}`);
    n *= dim;
    if (!Number.isSafeInteger(n)) throw new GgufError('bad-shape', path, `tensor "${t.name}" element count overflows`);
  }
  if (t.dims[0] % info.blockSize !== 0) {
    throw new GgufError(
      'bad-shape',
      path,
      `tensor "${t.name}" row length ${t.dims[0]} is not a multiple of the ${info.name} block size ${info.blockSize}`,
    );
  }
  const nBytes = (n / info.blockSize) * info.typeSize;
  if (t.data instanceof Uint8Array && t.data.length !== nBytes) {
    throw new GgufError(
      'bad-tensor',
      path,
      `tensor "${t.name}" data is ${t.data.length} bytes, ${info.name} [${t.dims.join(', ')}] takes ${nBytes}`,
    );
  }
  return { spec: t, info, nBytes, offset };
}

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

/** The alignment general.alignment asks for, or the default. */
function alignmentOf(metadata: readonly MetaEntry[], path: string): number {
  const entry = metadata.find((m) => m.key === 'general.alignment');
  if (!entry) return GGUF_DEFAULT_ALIGNMENT;
  // llama.cpp reads general.alignment with gguf_get_val_u32 and rejects any other type.
  const v = entry.value;
  if (
    entry.type !== MetaType.UINT32 ||
    typeof v !== 'number' ||
    !Number.isInteger(v) ||
    v <= 0 ||
    v > 0x80000000 ||
    (v & (v - 1)) !== 0
  ) {
    throw new GgufError(
      'bad-alignment',
      path,
      `general.alignment must be a u32 power of two, got ${String(v)} (type ${entry.type})`,
    );
  }
  return v;
}

/** Writes all of buf at the file's current position. */
function writeAll(fd: number, buf: Uint8Array): void {
  // Node refuses a single write over 2 GiB, and a tensor of a big model can be larger.
  const MAX_WRITE = 1 << 30;
  let done = 0;
  while (done < buf.length) done += writeSync(fd, buf, done, Math.min(buf.length - done, MAX_WRITE));
}

/** Writes a GGUF v3 file. Throws GgufError (naming the key or tensor) for values that cannot be encoded. */
export function writeGguf(path: string, spec: GgufSpec): WrittenGguf {
  const metadata = spec.metadata ?? [];
  const tensors = spec.tensors ?? [];
  const alignment = alignmentOf(metadata, path);

  const head = new ByteSink();
  head.put(U32, GGUF_MAGIC);
  head.put(U32, GGUF_VERSION);
  head.put(U64, BigInt(tensors.length));
  head.put(U64, BigInt(metadata.length));

  const keys = new Set<string>();
  for (const m of metadata) {
    if (keys.has(m.key)) throw new GgufError('duplicate-key', path, `metadata key "${m.key}" given twice`);
    keys.add(m.key);
    head.string(m.key);
    head.put(U32, m.type);
    encodeValue(
      head,
      m.type,
      m.type === MetaType.ARRAY ? { itemType: m.itemType, value: m.value } : m.value,
      `metadata "${m.key}"`,
      path,
    );
  }

  const planned: PlannedTensor[] = [];
  const names = new Set<string>();
  let offset = 0;
  for (const t of tensors) {
    if (names.has(t.name)) throw new GgufError('duplicate-tensor', path, `tensor "${t.name}" given twice`);
    names.add(t.name);
    const p = planTensor(t, offset, path);
    planned.push(p);
    offset = alignUp(offset + p.nBytes, alignment);
    head.string(t.name);
    head.put(U32, t.dims.length);
    for (const d of t.dims) head.put(U64, BigInt(d));
    head.put(U32, t.type);
    head.put(U64, BigInt(p.offset));
  }

  const dataOffset = alignUp(head.length, alignment);
  const fileSize = dataOffset + offset;
  const tmp = `${path}.${process.pid}.tmp`;
  const fd = openSync(tmp, 'w');
  let ok = false;
  try {
    writeAll(fd, head.bytes());
    writeAll(fd, new Uint8Array(dataOffset - head.length));
    for (const p of planned) {
      let written = 0;
      const chunks: Iterable<Uint8Array> = p.spec.data instanceof Uint8Array ? [p.spec.data] : p.spec.data();
      for (const chunk of chunks) {
        if (written + chunk.length > p.nBytes) break;
        writeAll(fd, chunk);
        written += chunk.length;
      }
      if (written !== p.nBytes) {
        throw new GgufError(
          'bad-tensor',
          path,
          `tensor "${p.spec.name}" data generator gave a wrong byte count, ${p.info.name} [${p.spec.dims.join(', ')}] takes ${p.nBytes}`,
        );
      }
      writeAll(fd, new Uint8Array(alignUp(p.nBytes, alignment) - p.nBytes));
    }
    ok = true;
  } finally {
    closeSync(fd);
    if (ok) renameSync(tmp, path);
    else unlinkSync(tmp);
  }

  return {
    fileSize,
    alignment,
    dataOffset,
    tensors: planned.map((p) => ({ name: p.spec.name, fileOffset: dataOffset + p.offset, nBytes: p.nBytes })),
  };
}
