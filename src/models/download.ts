// One file over HTTP into `dest`, resumable and verified, as the hub's own clients download:
// redirects followed by hand (so the hub's token never reaches the CDN it redirects to), the
// expected sha256 and size from the hub's listing or from the first answer's `X-Linked-Etag` /
// `X-Linked-Size` (or an `ETag` that is a sha256), bytes appended to `dest.part` and asked for
// again from where they stop with `Range: bytes=N-` after a dropped connection or in a later
// run. The sha256 is computed as the bytes arrive; a file that does not match is deleted, never
// kept, and `dest` appears only once the whole file is there and verified.

import { createHash, type Hash } from 'node:crypto';
import { open, readFile, rename, rm, truncate, writeFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { basename } from 'node:path';
import { ModelStoreError } from './errors.ts';
import { request, SHA256 } from './hub.ts';
import { fileSize } from './store.ts';

export interface DownloadTarget {
  readonly url: string;
  /** Where the verified file goes. */
  readonly dest: string;
  /** Known ahead (the hub's listing); otherwise learnt from the first answer's headers. */
  readonly sha256?: string;
  readonly size?: number;
}

export interface DownloadOptions {
  /** Headers for a request to this URL (the hub's token for the hub only). */
  readonly headersFor: (url: string) => Record<string, string>;
  /** The error for a refused request (4xx). */
  readonly refusal: (res: Response, what: string) => Error;
  readonly progress?: (bytes: number, total: number | undefined) => void;
  readonly note?: (line: string) => void;
  /** Tries in a row that bring no new byte before giving up; default 5. */
  readonly attempts?: number;
  /** Wait before the first retry, doubled for each one after it; default 500 ms. */
  readonly retryMs?: number;
}

export interface Downloaded {
  readonly path: string;
  readonly size: number;
  readonly sha256: string;
  /** The sha256 was checked against the one the server published. */
  readonly verified: boolean;
}

const MAX_REDIRECTS = 10;
const REDIRECT = new Set([301, 302, 303, 307, 308]);

/** What the `.part.json` beside a partial file records, so a resume continues the same file. */
interface PartInfo {
  url: string;
  sha256?: string;
  size?: number;
}

export async function download(t: DownloadTarget, o: DownloadOptions): Promise<Downloaded> {
  const part = `${t.dest}.part`;
  const info = `${part}.json`;
  const name = basename(t.dest);
  const expect: PartInfo = { url: t.url, sha256: t.sha256?.toLowerCase(), size: t.size };
  await keepPartIfSame(part, info, expect);

  let hash: Hash = createHash('sha256');
  let hashed = 0;
  let fruitless = 0;
  const maxFruitless = o.attempts ?? 5;
  for (;;) {
    let have = fileSize(part);
    if (expect.size !== undefined && have > expect.size) have = await restart(part);
    const before = have;
    let complete = false;
    let failure: unknown;
    try {
      if (expect.size !== undefined && have === expect.size) complete = true;
      else {
        const opened = await openAt(t.url, have, o);
        // The first answer's sha256 and size, unless the listing gave them.
        if (expect.sha256 === undefined && opened.sha256) expect.sha256 = opened.sha256;
        if (expect.size === undefined && opened.size !== undefined) expect.size = opened.size;
        if (opened.sha256 && expect.sha256 !== opened.sha256) {
          await opened.res.body?.cancel();
          if (t.sha256) {
            throw new ModelStoreError(
              'file',
              `${name}: the hub's listing gives sha256 ${expect.sha256} but the file's headers ${opened.sha256}`,
            );
          }
          // The file changed on the server since the partial download began: start it over.
          expect.sha256 = opened.sha256;
          expect.size = opened.size;
          await restart(part);
          throw new ModelStoreError('unavailable', 'the file changed on the server; starting over');
        }
        await writeFile(info, JSON.stringify(expect));
        const res = opened.res;
        if (res.status === 416) {
          await res.body?.cancel();
          const total = contentRangeTotal(res.headers.get('content-range'));
          if (total !== undefined && total === have) complete = true;
          else have = await restart(part);
        } else {
          let from = 0;
          if (res.status === 206) {
            from = contentRangeStart(res.headers.get('content-range')) ?? -1;
            if (from !== have) {
              await res.body?.cancel();
              throw new ModelStoreError('unavailable', `${name}: asked for bytes from ${have}, the server sent from ${from}`);
            }
          } else if (have > 0) {
            // A plain 200: the server ignores Range, so the file starts over.
            have = await restart(part);
          }
          const total =
            expect.size ??
            contentRangeTotal(res.headers.get('content-range')) ??
            lengthPlus(res.headers.get('content-length'), have);
          if (hashed > have) {
            hash = createHash('sha256');
            hashed = 0;
          }
          if (hashed < have) hashed += await hashRange(part, hashed, have, hash);
          const fh = await open(part, 'a');
          try {
            o.progress?.(have, total);
            for await (const chunk of res.body ?? []) {
              const bytes = chunk as Uint8Array;
              await fh.write(bytes);
              hash.update(bytes);
              have += bytes.length;
              hashed = have;
              o.progress?.(have, total);
            }
          } finally {
            await fh.close();
          }
          complete = total === undefined || have >= total;
        }
      }
    } catch (e) {
      if (e instanceof ModelStoreError && e.kind !== 'unavailable') throw e;
      if (!(e instanceof ModelStoreError) && !isNetworkError(e)) throw e;
      failure = e;
    }
    if (complete) return finish(part, info, t.dest, expect, hash, hashed);
    fruitless = fileSize(part) > before ? 1 : fruitless + 1;
    const why = failure instanceof Error ? failure.message : 'the connection closed early';
    if (fruitless >= maxFruitless) {
      throw new ModelStoreError(
        'unavailable',
        `${name}: download interrupted at ${fileSize(part)} of ${expect.size ?? '?'} bytes (${why}); run herd pull again to resume`,
      );
    }
    o.note?.(`${name}: interrupted at ${fileSize(part)} bytes (${why}); resuming`);
    await new Promise((r) => setTimeout(r, Math.min((o.retryMs ?? 500) * 2 ** (fruitless - 1), 5000)));
  }
}

/** The answer to a GET of `url` from byte `have`, redirects followed; the first hop's sha256 and size. */
async function openAt(
  url: string,
  have: number,
  o: DownloadOptions,
): Promise<{ res: Response; sha256?: string; size?: number }> {
  let current = url;
  let sha256: string | undefined;
  let size: number | undefined;
  for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
    const headers: Record<string, string> = { 'accept-encoding': 'identity', ...o.headersFor(current) };
    if (have > 0) headers.range = `bytes=${have}-`;
    const res = await request(current, { headers, redirect: 'manual' });
    if (hop === 0) {
      // The hub publishes an LFS file's sha256 as X-Linked-Etag (its ETag is the git object's id).
      sha256 = etagSha(res.headers.get('x-linked-etag')) ?? etagSha(res.headers.get('etag'));
      size = nonNegative(res.headers.get('x-linked-size'));
    }
    if (REDIRECT.has(res.status)) {
      const location = res.headers.get('location');
      await res.body?.cancel();
      if (!location) throw new ModelStoreError('unavailable', `${current}: redirect without a Location`);
      current = new URL(location, current).href;
      continue;
    }
    if (res.status >= 400 && res.status < 500 && res.status !== 416) {
      await res.body?.cancel();
      throw o.refusal(res, `downloading ${url}`);
    }
    if (res.status >= 500) {
      await res.body?.cancel();
      throw new ModelStoreError('unavailable', `${current}: the server answered ${res.status}`);
    }
    return { res, sha256, size };
  }
  throw new ModelStoreError('unavailable', `${url}: more than ${MAX_REDIRECTS} redirects`);
}

async function finish(
  part: string,
  info: string,
  dest: string,
  expect: PartInfo,
  hash: Hash,
  hashed: number,
): Promise<Downloaded> {
  const size = fileSize(part);
  if (hashed !== size) {
    // Complete from an earlier run: hash what is on disk.
    hash = createHash('sha256');
    await hashRange(part, 0, size, hash);
  }
  const sha256 = hash.digest('hex');
  const name = basename(dest);
  if ((expect.size !== undefined && size !== expect.size) || (expect.sha256 && sha256 !== expect.sha256)) {
    await rm(part, { force: true });
    await rm(info, { force: true });
    throw new ModelStoreError(
      'file',
      `${name}: the download does not match the hub's checksum (sha256 ${sha256}, ${size} bytes; ` +
        `expected ${expect.sha256 ?? 'any'}, ${expect.size ?? 'any'} bytes): it was discarded; run herd pull again`,
    );
  }
  await rename(part, dest);
  await rm(info, { force: true });
  return { path: dest, size, sha256, verified: expect.sha256 !== undefined };
}

/** Deletes a partial file left by a download of something else (another URL, a changed file). */
async function keepPartIfSame(part: string, info: string, expect: PartInfo): Promise<void> {
  let old: PartInfo | undefined;
  try {
    old = JSON.parse(await readFile(info, 'utf8')) as PartInfo;
  } catch {
    old = undefined;
  }
  const same =
    old !== undefined &&
    old.url === expect.url &&
    (expect.sha256 === undefined || old.sha256 === undefined || old.sha256 === expect.sha256) &&
    (expect.size === undefined || old.size === undefined || old.size === expect.size);
  if (!same) await rm(part, { force: true });
  if (same && old) {
    expect.sha256 ??= old.sha256;
    expect.size ??= old.size;
  }
}

async function restart(part: string): Promise<number> {
  if (fileSize(part) > 0) await truncate(part, 0);
  return 0;
}

/** Feeds bytes [from, to) of a file to `hash`; returns how many. */
async function hashRange(path: string, from: number, to: number, hash: Hash): Promise<number> {
  if (to <= from) return 0;
  for await (const chunk of createReadStream(path, { start: from, end: to - 1 })) hash.update(chunk as Buffer);
  return to - from;
}

function etagSha(v: string | null): string | undefined {
  const s = v?.replace(/^W\//, '').replace(/"/g, '').trim();
  return s && SHA256.test(s) ? s.toLowerCase() : undefined;
}

function nonNegative(v: string | null): number | undefined {
  const n = v === null ? NaN : Number(v);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

function contentRangeStart(v: string | null): number | undefined {
  const m = v ? /^bytes (\d+)-\d+\/(?:\d+|\*)$/.exec(v.trim()) : null;
  return m ? Number(m[1]) : undefined;
}

function contentRangeTotal(v: string | null): number | undefined {
  const m = v ? /\/(\d+)$/.exec(v.trim()) : null;
  return m ? Number(m[1]) : undefined;
}

function lengthPlus(v: string | null, have: number): number | undefined {
  const n = nonNegative(v);
  return n === undefined ? undefined : n + have;
}

/** A connection refused, reset or closed mid-body (undici's "terminated", "fetch failed"). */
function isNetworkError(e: unknown): boolean {
  return e instanceof TypeError || (e instanceof Error && /terminated|socket|ECONN|EPIPE|other side closed/i.test(e.message));
}
