// A cached slice's record: the manifest it was built from and checked against, its digest, and
// the slice file's size and modification time when it entered the cache. The cheap check before
// a cached slice is advertised or used: the record is intact (its digest matches its manifest)
// and the file is the one it describes (same size and mtime); a slice without a valid record is
// never trusted. The record's own mtime is the slice's last use, for the cache's LRU eviction.

import { readFileSync, renameSync, statSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { manifestDigest, type SliceManifest } from './manifest.ts';

interface SliceRecord {
  readonly digest: string;
  readonly manifest: SliceManifest;
  readonly size: number;
  readonly mtimeMs: number;
}

function recordPath(slice: string): string {
  return `${slice}.manifest.json`;
}

/**
 * Writes the record of `file` (the verified slice, still under its temporary name) for `slice`,
 * then moves the file to `slice`: a slice enters the cache only with its record.
 */
export function commitSlice(file: string, slice: string, manifest: SliceManifest): void {
  const st = statSync(file);
  const record: SliceRecord = { digest: manifestDigest(manifest), manifest, size: st.size, mtimeMs: st.mtimeMs };
  const tmp = `${recordPath(slice)}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(record));
  renameSync(tmp, recordPath(slice));
  // rename keeps the file's mtime, so the record still describes it
  renameSync(file, slice);
}

/** The manifest a cached slice was built from, when its record is intact and describes it; else undefined. */
export function verifiedManifest(slice: string): SliceManifest | undefined {
  try {
    const r = JSON.parse(readFileSync(recordPath(slice), 'utf8')) as Partial<SliceRecord>;
    if (typeof r !== 'object' || r === null || !r.manifest || !Array.isArray(r.manifest.tensors)) return undefined;
    if (r.digest !== manifestDigest(r.manifest)) return undefined;
    const st = statSync(slice);
    if (st.size !== r.size || st.mtimeMs !== r.mtimeMs) return undefined;
    return r.manifest;
  } catch {
    return undefined;
  }
}

/** When the slice was last used (its record's mtime); 0 when unknown. */
export function lastUsed(slice: string): number {
  try {
    return statSync(recordPath(slice)).mtimeMs;
  } catch {
    return 0;
  }
}

/** Marks the slice used now (LRU order of the cache). */
export function touch(slice: string): void {
  try {
    const now = new Date();
    utimesSync(recordPath(slice), now, now);
  } catch {
    // a read-only cache keeps its order
  }
}

/** Removes a slice and its record from the cache. */
export function discardSlice(slice: string): void {
  for (const p of [slice, recordPath(slice)]) {
    try {
      unlinkSync(p);
    } catch {
      // gone already
    }
  }
}
