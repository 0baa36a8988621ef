// Tensor manifests: what a slice of a model must hold, from the coordinator's own model file.
// A node trusts a tensor's bytes only when their sha256 is the manifest's, whoever sent them
// (the sha256 a FetchTensors sender supplies proves nothing: a poisoning sender computes it over
// its own bytes). The coordinator hashes each tensor of its file once and remembers the result
// in its cache dir, keyed like the model hash (path, size, modification time).

import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, realpathSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { GgufFile } from '../../gguf/reader.ts';
import { ClusterError, invalid } from '../errors.ts';
import { tensorBelongs } from './shard.ts';
import { sameCut, type TensorCut } from '../../model/share-cut.ts';
import { readMetadataSection, tensorDataBytes, type MetadataSection } from './slice.ts';

export interface ManifestTensor {
  readonly name: string;
  readonly dims: readonly number[];
  readonly ggmlType: number;
  readonly nBytes: number;
  /** sha256 hex of the tensor's data. */
  readonly sha256: string;
  /**
   * In a group member's manifest: the part of the model's tensor this entry is (dims, nBytes and
   * sha256 are the part's); absent: the tensor whole.
   */
  readonly cut?: TensorCut;
}

/** The tensors of one slice (or of a whole model) and the digest of the metadata it carries. */
export interface SliceManifest {
  /** metadataDigest() of the slice header's metadata section and alignment. */
  readonly metadataSha256: string;
  readonly tensors: readonly ManifestTensor[];
}

const SHA_RE = /^[0-9a-f]{64}$/;
const MAX_TENSORS = 100_000;
const READ_BYTES = 4 << 20;

/** sha256 hex of what a slice header carries besides its tensors. */
export function metadataDigest(metadata: MetadataSection, alignment: number): string {
  const head = Buffer.alloc(12);
  head.writeBigUInt64LE(BigInt(metadata.count), 0);
  head.writeUInt32LE(alignment, 8);
  return createHash('sha256').update(head).update(metadata.bytes).digest('hex');
}

/** sha256 hex of a manifest's every field, in order: a slice's record stores it. */
export function manifestDigest(m: SliceManifest): string {
  const h = createHash('sha256').update(m.metadataSha256);
  for (const t of m.tensors) {
    h.update(`\n${t.name}\t${t.dims.join(',')}\t${t.ggmlType}\t${t.nBytes}\t${t.sha256}`);
    // only when cut: the digests of whole-tensor records written before cuts existed still hold
    if (t.cut) h.update(`\t${t.cut.axis}\t${t.cut.start}\t${t.cut.end}`);
  }
  return h.digest('hex');
}

/** The entries of `names`, in that order (the order FetchTensors sends them). */
export function sliceOf(model: SliceManifest, names: readonly string[]): SliceManifest {
  const byName = new Map(model.tensors.map((t) => [t.name, t]));
  return {
    metadataSha256: model.metadataSha256,
    tensors: names.map((n) => {
      const t = byName.get(n);
      if (!t) throw new Error(`internal: tensor ${n} is not in the model's manifest`);
      return t;
    }),
  };
}

/** Whether two entries describe the same tensor with the same bytes. */
export function sameTensor(a: ManifestTensor, b: ManifestTensor): boolean {
  return (
    a.name === b.name &&
    a.ggmlType === b.ggmlType &&
    a.nBytes === b.nBytes &&
    a.sha256 === b.sha256 &&
    sameCut(a.cut, b.cut) &&
    a.dims.length === b.dims.length &&
    a.dims.every((d, i) => d === b.dims[i])
  );
}

/** Checks a manifest a coordinator sent for layers [start, end): INVALID_ARGUMENT when malformed. */
export function checkManifest(m: SliceManifest, start: number, end: number, nLayers: number): void {
  if (!SHA_RE.test(m.metadataSha256)) throw invalid('manifest: metadata sha256 must be 32 bytes');
  if (m.tensors.length === 0 || m.tensors.length > MAX_TENSORS)
    throw invalid(`manifest lists ${m.tensors.length} tensors, expected 1..${MAX_TENSORS}`);
  const seen = new Set<string>();
  for (const t of m.tensors) {
    if (seen.has(t.name)) throw invalid(`manifest lists tensor ${t.name} twice`);
    seen.add(t.name);
    if (!tensorBelongs(t.name, start, end, nLayers))
      throw invalid(`manifest for layers [${start}, ${end}) lists tensor ${t.name}, which is not part of it`);
    if (tensorDataBytes(t.ggmlType, t.dims) !== t.nBytes) {
      throw invalid(
        `manifest: tensor ${t.name}: ${t.nBytes} bytes do not match type ${t.ggmlType} and shape [${t.dims.join(', ')}]`,
      );
    }
    if (!SHA_RE.test(t.sha256)) throw invalid(`manifest: tensor ${t.name} has no 32-byte sha256`);
    const c = t.cut;
    if (c && !(Number.isSafeInteger(c.start) && Number.isSafeInteger(c.end) && 0 <= c.start && c.start < c.end))
      throw invalid(`manifest: tensor ${t.name}: cut [${c.start}, ${c.end}) is empty`);
  }
}

/**
 * Hashes every tensor of the file, and the whole file on the way (the model hash, model-hash.ts):
 * one sequential read of it, off the event loop's back.
 */
async function hashModel(
  path: string,
  file: GgufFile,
  metadataSha256: string,
): Promise<{ manifest: SliceManifest; fileSha256: string }> {
  const fh = await open(path, 'r');
  const buf = Buffer.allocUnsafe(READ_BYTES);
  const whole = createHash('sha256');
  const hashes = file.tensors.map(() => createHash('sha256'));
  // By offset: the tensors a chunk overlaps are a run of these, from the first not yet done.
  const order = file.tensors.map((t, i) => ({ start: t.fileOffset, end: t.fileOffset + t.nBytes, i }));
  order.sort((a, b) => a.start - b.start);
  const dataEnd = order.reduce((m, t) => Math.max(m, t.end), 0);
  try {
    const size = (await fh.stat()).size;
    if (dataEnd > size) throw new Error(`${path}: short read: its tensors end at ${dataEnd}, the file at ${size}`);
    let first = 0;
    for (let pos = 0; pos < size;) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(READ_BYTES, size - pos), pos);
      if (bytesRead === 0) throw new Error(`${path}: short read at ${pos}`);
      const end = pos + bytesRead;
      whole.update(buf.subarray(0, bytesRead));
      while (first < order.length && order[first].end <= pos) first++;
      for (let j = first; j < order.length && order[j].start < end; j++) {
        const t = order[j];
        const a = Math.max(t.start, pos);
        const b = Math.min(t.end, end);
        if (a < b) hashes[t.i].update(buf.subarray(a - pos, b - pos));
      }
      pos = end;
    }
  } finally {
    await fh.close();
  }
  const tensors = file.tensors.map((t, i) => ({
    name: t.name,
    dims: [...t.dims],
    ggmlType: t.type.id,
    nBytes: t.nBytes,
    sha256: hashes[i].digest('hex'),
  }));
  return { manifest: { metadataSha256, tensors }, fileSha256: whole.digest('hex') };
}

/**
 * Parses a slice file written from a transfer (the GGUF validator: header, metadata, index) and
 * checks that it is exactly the manifest's: its tensors in order, with their shapes and types,
 * and its metadata. The data's sha256 were checked as the bytes arrived.
 */
export function checkSlice(path: string, m: SliceManifest): void {
  const file = GgufFile.open(path);
  const fail = (why: string) => new ClusterError('shard', `the slice written to ${path} ${why}`);
  if (file.tensors.length !== m.tensors.length)
    throw fail(`holds ${file.tensors.length} tensors, the manifest ${m.tensors.length}`);
  for (const [i, t] of file.tensors.entries()) {
    const want = m.tensors[i];
    const same =
      t.name === want.name &&
      t.type.id === want.ggmlType &&
      t.nBytes === want.nBytes &&
      t.dims.length === want.dims.length &&
      t.dims.every((d, j) => d === want.dims[j]);
    if (!same) throw fail(`has tensor ${t.name} where the manifest has ${want.name} as described`);
  }
  if (metadataDigest(readMetadataSection(path, file.dataOffset), file.alignment) !== m.metadataSha256)
    throw fail("carries metadata whose sha256 is not the manifest's");
}

function isManifest(v: unknown): v is SliceManifest {
  const m = v as Partial<SliceManifest> | null;
  return typeof m === 'object' && m !== null && typeof m.metadataSha256 === 'string' && Array.isArray(m.tensors);
}

/** Where the manifest `name` tells apart (the model's, or a share's) of the file at `path` is kept: by path, size, mtime. */
function rememberedPath(path: string, name: string, cacheDir: string): string {
  const st = statSync(path);
  const key = createHash('sha256')
    .update(`${realpathSync(path)}|${st.size}|${Math.floor(st.mtimeMs)}`)
    .digest('hex');
  return join(cacheDir, 'manifests', `${key}${name}.json`);
}

/** The manifest `name` of this file (path, size, mtime) hashed before, when kept and `usable`; else undefined. */
export function recallManifest(
  path: string,
  name: string,
  cacheDir: string,
  usable: (m: SliceManifest) => boolean,
): SliceManifest | undefined {
  try {
    const v = JSON.parse(readFileSync(rememberedPath(path, name, cacheDir), 'utf8')) as unknown;
    return isManifest(v) && usable(v) ? v : undefined;
  } catch {
    return undefined; // not hashed yet, or unreadable: hash again
  }
}

/** Keeps a manifest just hashed for recallManifest. */
export function rememberManifest(path: string, name: string, cacheDir: string, m: SliceManifest): void {
  try {
    const known = rememberedPath(path, name, cacheDir);
    mkdirSync(dirname(known), { recursive: true });
    const tmp = `${known}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(m));
    renameSync(tmp, known);
  } catch {
    // a read-only cache only costs a re-hash next time
  }
}

/**
 * The model's manifest: from the cache dir when this file (path, size, mtime) was hashed before,
 * else hashed now and remembered there. `fileSha256` is the whole file's sha256 when it was
 * hashed now, in the same read (for modelHash), else undefined.
 */
export async function modelManifest(
  path: string,
  file: GgufFile,
  metadataSha256: string,
  cacheDir?: string,
): Promise<{ manifest: SliceManifest; fileSha256?: string }> {
  if (!cacheDir) return hashModel(path, file, metadataSha256);
  const known = recallManifest(
    path,
    '',
    cacheDir,
    (m) => m.metadataSha256 === metadataSha256 && m.tensors.length === file.tensors.length,
  );
  if (known) return { manifest: known };
  const hashed = await hashModel(path, file, metadataSha256);
  rememberManifest(path, '', cacheDir, hashed.manifest);
  return hashed;
}
