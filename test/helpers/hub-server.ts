// A Hugging Face hub on loopback, shaped like the real one for what `herd pull` uses: the file
// listing (`/api/models/ORG/REPO/tree/main?recursive=true`, paged with a Link header, LFS files
// with `lfs.oid` = sha256), `/ORG/REPO/resolve/main/PATH` answering 302 to a second server (the
// "CDN", another port) with X-Linked-Etag / X-Linked-Size / ETag, gated repositories (401 or 403
// with X-Error-Code: GatedRepo), missing files (404 EntryNotFound), and on the CDN Range
// requests (206 + Content-Range) and the faults a test asks for: a connection dropped after a
// given byte, or bytes that do not match the published sha256.

import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface HubFileSpec {
  readonly path: string;
  readonly bytes: Uint8Array;
}

export interface HubRepoSpec {
  readonly files: readonly HubFileSpec[];
  /** Needs `Authorization: Bearer <token>` (the hub's `token`). */
  readonly gated?: boolean;
}

export interface HubRequest {
  readonly server: 'hub' | 'cdn';
  readonly method: string;
  readonly url: string;
  readonly range?: string;
  readonly authorization?: string;
}

export interface HubServer {
  /** What HF_ENDPOINT is set to. */
  readonly endpoint: string;
  readonly cdnOrigin: string;
  readonly requests: HubRequest[];
  /** The sha256 the hub publishes for a file. */
  sha256(repo: string, path: string): string;
  /** The CDN closes the connection once byte `at` of the file is sent, `times` times (Infinity: always). */
  dropAt(repo: string, path: string, at: number, times: number): void;
  /** The CDN sends bytes that differ from the published sha256. */
  corrupt(repo: string, path: string): void;
  /** No more faults for this file. */
  heal(repo: string, path: string): void;
  close(): Promise<void>;
}

interface Fault {
  dropAt?: number;
  times: number;
  corrupt?: boolean;
}

interface Blob {
  readonly bytes: Uint8Array;
  readonly sha256: string;
  readonly gitOid: string;
}

/** LFS pointer file size, as the hub lists it. */
const POINTER_SIZE = 134;

export async function startHub(o: {
  repos: Record<string, HubRepoSpec>;
  token?: string;
  /** Listing entries per page. */
  pageSize?: number;
}): Promise<HubServer> {
  const requests: HubRequest[] = [];
  const blobs = new Map<string, Blob>();
  const byPath = new Map<string, Blob>();
  for (const [repo, spec] of Object.entries(o.repos)) {
    for (const f of spec.files) {
      const blob = {
        bytes: f.bytes,
        sha256: createHash('sha256').update(f.bytes).digest('hex'),
        gitOid: createHash('sha1').update(`blob ${f.bytes.length}\0`).update(f.bytes).digest('hex'),
      };
      blobs.set(blob.sha256, blob);
      byPath.set(`${repo}/${f.path}`, blob);
    }
  }
  const faults = new Map<string, Fault>();
  const record = (server: 'hub' | 'cdn', req: IncomingMessage) =>
    requests.push({
      server,
      method: req.method ?? '',
      url: req.url ?? '',
      range: req.headers.range,
      authorization: req.headers.authorization,
    });

  let cdnOrigin = '';
  let endpoint = '';
  const hub = createServer((req, res) => {
    record('hub', req);
    const url = new URL(req.url ?? '/', 'http://hub');
    const listing = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/main$/.exec(url.pathname);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/main\/(.+)$/.exec(url.pathname);
    const repoName = listing?.[1] ?? resolve?.[1];
    const repo = repoName ? o.repos[repoName] : undefined;
    if (!repoName || !repo) return refuse(res, 401, 'RepoNotFound', 'Repository not found');
    if (repo.gated) {
      const auth = req.headers.authorization;
      if (!auth) return refuse(res, 401, 'GatedRepo', `Access to model ${repoName} is restricted.`);
      if (auth !== `Bearer ${o.token}`)
        return refuse(res, 403, 'GatedRepo', `Access to model ${repoName} is restricted.`);
    }
    if (listing) {
      const entries = [
        { type: 'directory', oid: 'd'.repeat(40), size: 0, path: 'docs' },
        ...repo.files.map((f) => {
          const blob = byPath.get(`${repoName}/${f.path}`) as Blob;
          const lfs = f.path.endsWith('.gguf');
          return {
            type: 'file',
            oid: blob.gitOid,
            size: lfs ? POINTER_SIZE : f.bytes.length,
            path: f.path,
            ...(lfs ? { lfs: { oid: blob.sha256, size: f.bytes.length, pointerSize: POINTER_SIZE } } : {}),
          };
        }),
      ];
      const page = o.pageSize ?? 1000;
      const cursor = Number(url.searchParams.get('cursor') ?? 0);
      const next = cursor + page;
      if (next < entries.length) {
        res.setHeader(
          'link',
          `<${endpoint}/api/models/${repoName}/tree/main?recursive=true&cursor=${next}>; rel="next"`,
        );
      }
      res.setHeader('content-type', 'application/json');
      return res.end(JSON.stringify(entries.slice(cursor, next)));
    }
    const path = decodeURIComponent((resolve as RegExpExecArray)[2]);
    const blob = byPath.get(`${repoName}/${path}`);
    if (!blob) return refuse(res, 404, 'EntryNotFound', `${path} does not exist on "main"`);
    res.setHeader('x-repo-commit', 'c'.repeat(40));
    if (!path.endsWith('.gguf')) {
      res.setHeader('etag', `"${blob.gitOid}"`);
      return res.end(blob.bytes);
    }
    res.writeHead(302, {
      location: `${cdnOrigin}/blobs/${blob.sha256}?name=${encodeURIComponent(path)}`,
      'x-linked-etag': `"${blob.sha256}"`,
      'x-linked-size': String(blob.bytes.length),
      etag: `"${blob.gitOid}"`,
    });
    res.end();
  });

  const cdn = createServer((req, res) => {
    record('cdn', req);
    const m = /^\/blobs\/([0-9a-f]{64})$/.exec(new URL(req.url ?? '/', 'http://cdn').pathname);
    const blob = m ? blobs.get(m[1]) : undefined;
    if (!blob) return refuse(res, 404, 'NoSuchKey', 'no such blob');
    const fault = faults.get(blob.sha256);
    let bytes = blob.bytes;
    if (fault?.corrupt) {
      bytes = Uint8Array.from(bytes);
      bytes[bytes.length >> 1] ^= 0xff;
    }
    const total = bytes.length;
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    const start = range ? Number(range[1]) : 0;
    if (start >= total && range) {
      res.writeHead(416, { 'content-range': `bytes */${total}` });
      return res.end();
    }
    res.writeHead(range ? 206 : 200, {
      'content-length': String(total - start),
      'accept-ranges': 'bytes',
      etag: `"cdn-${blob.sha256.slice(0, 8)}"`,
      ...(range ? { 'content-range': `bytes ${start}-${total - 1}/${total}` } : {}),
    });
    if (fault?.dropAt !== undefined && fault.times > 0 && fault.dropAt < total) {
      fault.times--;
      const upTo = Math.max(fault.dropAt, start);
      res.flushHeaders();
      res.write(bytes.subarray(start, upTo), () => setTimeout(() => res.socket?.destroy(), 20));
      return;
    }
    res.end(bytes.subarray(start));
  });

  const listen = (s: Server) =>
    new Promise<number>((resolve) => s.listen(0, '127.0.0.1', () => resolve((s.address() as AddressInfo).port)));
  endpoint = `http://127.0.0.1:${await listen(hub)}`;
  cdnOrigin = `http://127.0.0.1:${await listen(cdn)}`;
  const shaOf = (repo: string, path: string) => {
    const b = byPath.get(`${repo}/${path}`);
    if (!b) throw new Error(`hub-server: no file ${repo}/${path}`);
    return b.sha256;
  };
  return {
    endpoint,
    cdnOrigin,
    requests,
    sha256: shaOf,
    dropAt: (repo, path, at, times) => faults.set(shaOf(repo, path), { dropAt: at, times }),
    corrupt: (repo, path) => faults.set(shaOf(repo, path), { corrupt: true, times: 0 }),
    heal: (repo, path) => faults.delete(shaOf(repo, path)),
    close: async () => {
      for (const s of [hub, cdn]) {
        s.closeAllConnections();
        await new Promise<void>((resolve) => s.close(() => resolve()));
      }
    },
  };
}

function refuse(res: ServerResponse, status: number, code: string, message: string): void {
  res.writeHead(status, { 'x-error-code': code, 'x-error-message': message, 'content-type': 'application/json' });
  res.end(JSON.stringify({ error: message }));
}
