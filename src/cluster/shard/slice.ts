// Slice files: a GGUF holding only the tensors of one layer range, with the source model's
// metadata copied verbatim (so GgufFile and Transformer.load open it like the original).
// The metadata section is copied as raw bytes because GGUF values carry types (u32 vs f32, …)
// that a re-encoding from parsed values would have to guess.

import { closeSync, fsyncSync, ftruncateSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { GGUF_MAGIC, MetaType, scalarBytes } from '../../gguf/reader.ts';
import { ggmlTypeInfo } from '../../ggml/types.ts';
import { ClusterError } from '../errors.ts';

export interface SliceTensor {
  readonly name: string;
  readonly dims: readonly number[];
  readonly ggmlType: number;
  readonly nBytes: number;
}

export interface MetadataSection {
  /** The key/value pairs exactly as they are in the file. */
  readonly bytes: Buffer;
  readonly count: number;
}

/** The raw metadata section of a GGUF file the reader already validated. */
export function readMetadataSection(path: string, dataOffset: number): MetadataSection {
  const fd = openSync(path, 'r');
  try {
    // The header, metadata and tensor index all lie before the data section.
    const head = Buffer.alloc(dataOffset);
    let got = 0;
    while (got < dataOffset) {
      const r = readSync(fd, head, got, dataOffset - got, got);
      if (r === 0) break;
      got += r;
    }
    if (head.readUInt32LE(0) !== GGUF_MAGIC) throw new ClusterError('shard', `${path}: not a GGUF file`);
    const count = Number(head.readBigUInt64LE(16));
    let p = 24;
    const skipValue = (type: number): void => {
      if (type === MetaType.STRING) {
        p += 8 + Number(head.readBigUInt64LE(p));
      } else if (type === MetaType.ARRAY) {
        const itemType = head.readUInt32LE(p);
        const n = Number(head.readBigUInt64LE(p + 4));
        p += 12;
        if (itemType !== MetaType.STRING && itemType !== MetaType.ARRAY) p += n * (scalarBytes(itemType) ?? 0);
        else for (let i = 0; i < n; i++) skipValue(itemType);
      } else {
        const size = scalarBytes(type);
        if (size === undefined) throw new ClusterError('shard', `${path}: metadata value type ${type} unknown`);
        p += size;
      }
    };
    for (let i = 0; i < count; i++) {
      p += 8 + Number(head.readBigUInt64LE(p)); // key
      const type = head.readUInt32LE(p);
      p += 4;
      skipValue(type);
    }
    return { bytes: Buffer.from(head.subarray(24, p)), count };
  } finally {
    closeSync(fd);
  }
}

/** Bytes of a tensor's data from its type and shape; undefined for an unknown type or a bad row. */
export function tensorDataBytes(ggmlType: number, dims: readonly number[]): number | undefined {
  const info = ggmlTypeInfo(ggmlType);
  if (!info || dims.length < 1 || dims.length > 4) return undefined;
  if (!dims.every((d) => Number.isSafeInteger(d) && d > 0)) return undefined;
  if (dims[0] % info.blockSize !== 0) return undefined;
  const n = dims.reduce((a, b) => a * b, 1);
  if (!Number.isSafeInteger(n)) return undefined;
  return (n / info.blockSize) * info.typeSize;
}

/**
 * Writes a slice GGUF: the header goes out first, then tensor bytes arrive in any order by
 * (tensor, offset). The file is written under a temporary name, which finish() returns: the
 * caller validates it there and only then moves it into the cache (record.ts), so a cache entry
 * either is complete and checked or does not exist. abort() removes what is left.
 */
export class SliceWriter {
  private readonly fd: number;
  private readonly tmp: string;
  private readonly offsets: number[] = [];
  private closed = false;

  constructor(
    readonly path: string,
    metadata: MetadataSection,
    readonly alignment: number,
    readonly tensors: readonly SliceTensor[],
  ) {
    if (!Number.isInteger(alignment) || alignment < 1 || alignment > 65536 || (alignment & (alignment - 1)) !== 0) {
      throw new ClusterError('invalid', `alignment ${alignment} is not a power of two in 1..65536`);
    }
    const parts: Buffer[] = [];
    const u32 = (v: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(v);
      parts.push(b);
    };
    const u64 = (v: number) => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(BigInt(v));
      parts.push(b);
    };
    u32(GGUF_MAGIC);
    u32(3);
    u64(tensors.length);
    u64(metadata.count);
    parts.push(metadata.bytes);
    let rel = 0;
    for (const t of tensors) {
      const name = Buffer.from(t.name, 'utf8');
      u64(name.length);
      parts.push(name);
      u32(t.dims.length);
      for (const d of t.dims) u64(d);
      u32(t.ggmlType);
      u64(rel);
      this.offsets.push(rel);
      rel += Math.ceil(t.nBytes / alignment) * alignment;
    }
    const header = Buffer.concat(parts);
    const dataStart = Math.ceil(header.length / alignment) * alignment;
    this.offsets = this.offsets.map((o) => dataStart + o);
    this.tmp = `${path}.${process.pid}.${Date.now()}.tmp`;
    this.fd = openSync(this.tmp, 'w');
    // Sized up front (zeros, sparse): padding between tensors is part of the file.
    ftruncateSync(this.fd, dataStart + rel);
    writeSync(this.fd, header, 0, header.length, 0);
  }

  write(index: number, offset: number, data: Uint8Array): void {
    const t = this.tensors[index];
    if (!t) throw new ClusterError('invalid', `chunk for tensor #${index}, the slice has ${this.tensors.length}`);
    if (!(Number.isSafeInteger(offset) && offset >= 0 && offset + data.length <= t.nBytes)) {
      throw new ClusterError(
        'invalid',
        `chunk [${offset}, ${offset + data.length}) lies outside tensor ${t.name} (${t.nBytes} bytes)`,
      );
    }
    writeSync(this.fd, data, 0, data.length, this.offsets[index] + offset);
  }

  /** Flushes and closes the file; returns its temporary name. */
  finish(): string {
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.closed = true;
    return this.tmp;
  }

  /** Removes the temporary file (a no-op once it was moved into the cache). */
  abort(): void {
    if (!this.closed) {
      this.closed = true;
      try {
        closeSync(this.fd);
      } catch {
        // closed
      }
    }
    try {
      unlinkSync(this.tmp);
    } catch {
      // gone
    }
  }
}
