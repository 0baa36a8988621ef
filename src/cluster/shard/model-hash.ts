// A model's identity is the sha256 of its whole file. Hashing a multi-GB file takes seconds,
// so results are remembered in the cache dir, keyed by path, size and modification time.

import { createHash } from 'node:crypto';
import { createReadStream, mkdirSync, readFileSync, realpathSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

type HashIndex = Record<string, string>;

function indexKey(path: string): string {
  const st = statSync(path);
  return `${realpathSync(path)}|${st.size}|${Math.floor(st.mtimeMs)}`;
}

function readIndex(file: string): HashIndex {
  try {
    const v = JSON.parse(readFileSync(file, 'utf8')) as unknown;
    return typeof v === 'object' && v !== null ? (v as HashIndex) : {};
  } catch {
    return {};
  }
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/**
 * sha256 hex of the file, from the cache dir's index when the file has not changed. `justHashed`:
 * its sha256 computed a moment ago (manifest.ts hashes the file whole as it hashes its tensors),
 * used and remembered rather than read again.
 */
export async function modelHash(path: string, cacheDir?: string, justHashed?: string): Promise<string> {
  if (!cacheDir) return justHashed ?? sha256File(path);
  const indexFile = join(cacheDir, 'model-hashes.json');
  const key = indexKey(path);
  const known = justHashed === undefined ? readIndex(indexFile)[key] : undefined;
  if (known && /^[0-9a-f]{64}$/.test(known)) return known;
  const hash = justHashed ?? (await sha256File(path));
  try {
    mkdirSync(cacheDir, { recursive: true });
    const index = readIndex(indexFile);
    index[key] = hash;
    const tmp = `${indexFile}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(index, null, 1));
    renameSync(tmp, indexFile);
  } catch {
    // a read-only cache only costs a re-hash next time
  }
  return hash;
}
