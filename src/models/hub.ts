// The Hugging Face hub, as its own client libraries speak to it: the address from $HF_ENDPOINT
// (default https://huggingface.co), the token from $HF_TOKEN or --token as a Bearer header sent
// to the hub only (never to the CDN a download is redirected to), the file listing from
// `GET /api/models/ORG/REPO/tree/main?recursive=true` (paged by a `Link: <…>; rel="next"`
// header; each LFS file carries its sha256 as `lfs.oid`), files at `/ORG/REPO/resolve/main/PATH`,
// and refusals explained by the `X-Error-Code` header (RepoNotFound, GatedRepo, EntryNotFound).

import { ModelStoreError } from './errors.ts';

export const DEFAULT_HUB = 'https://huggingface.co';

export interface HubFile {
  readonly path: string;
  readonly size: number;
  /** The LFS object's sha256; absent for files kept in git itself. */
  readonly sha256?: string;
}

/** Listing pages followed at most: a repository of GGUFs has a few pages at most. */
const MAX_PAGES = 100;

export class HubClient {
  readonly endpoint: string;
  private readonly origin: string;

  constructor(
    endpoint: string,
    private readonly token?: string,
  ) {
    this.endpoint = endpoint.replace(/\/+$/, '');
    try {
      this.origin = new URL(this.endpoint).origin;
    } catch {
      throw new ModelStoreError('usage', `HF_ENDPOINT is not a URL: ${endpoint}`);
    }
  }

  /** The hub of $HF_ENDPOINT with `token` or $HF_TOKEN. */
  static fromEnv(token?: string, env: NodeJS.ProcessEnv = process.env): HubClient {
    return new HubClient(env.HF_ENDPOINT || DEFAULT_HUB, token ?? (env.HF_TOKEN || undefined));
  }

  fileUrl(repo: string, path: string): string {
    return `${this.endpoint}/${repo}/resolve/main/${path.split('/').map(encodeURIComponent).join('/')}`;
  }

  /** The headers a request to `url` carries: the token only for the hub itself. */
  headersFor(url: string): Record<string, string> {
    return this.token && new URL(url).origin === this.origin ? { authorization: `Bearer ${this.token}` } : {};
  }

  /** Every file of the repository's main revision. */
  async listFiles(repo: string): Promise<HubFile[]> {
    const files: HubFile[] = [];
    let url: string | undefined = `${this.endpoint}/api/models/${repo}/tree/main?recursive=true`;
    for (let page = 0; url !== undefined; page++) {
      if (page === MAX_PAGES) throw new ModelStoreError('unavailable', `${repo}: the file listing has over ${MAX_PAGES} pages`);
      const res = await request(url, { headers: { accept: 'application/json', ...this.headersFor(url) } });
      if (!res.ok) throw this.refusal(res, `listing the files of ${repo}`, repo);
      const body: unknown = await res.json();
      if (!Array.isArray(body)) throw new ModelStoreError('unavailable', `${url}: the hub's listing is not a JSON array`);
      for (const e of body) files.push(...listingEntry(e));
      url = nextPage(res.headers.get('link'), url);
    }
    return files;
  }

  /** The error to show for a refused hub request, saying what the user can do about it. */
  refusal(res: Response, what: string, repo: string | undefined): ModelStoreError {
    const code = res.headers.get('x-error-code') ?? '';
    const page = repo ? `${this.endpoint}/${repo}` : 'the model page';
    const tokenHint = this.token
      ? `the token was refused: check that its account has accepted the licence on ${page} and that the token may read it`
      : `set HF_TOKEN (or pass --token) to a token of an account that has accepted the licence on ${page}`;
    if (code === 'GatedRepo' || res.status === 403)
      return new ModelStoreError('auth', `${what}: the hub answered ${res.status} (gated repository): ${tokenHint}`);
    if (res.status === 401)
      return new ModelStoreError(
        'auth',
        `${what}: the hub answered 401 (${code || 'unauthorized'}): the repository does not exist, or it is private or gated: ${tokenHint}`,
      );
    if (res.status === 404)
      return new ModelStoreError('usage', `${what}: not found on ${this.endpoint} (${code || '404'})`);
    return new ModelStoreError('unavailable', `${what}: the hub answered ${res.status} ${res.statusText}`);
  }
}

function listingEntry(e: unknown): HubFile[] {
  if (typeof e !== 'object' || e === null) return [];
  const o = e as Record<string, unknown>;
  if (o.type !== 'file' || typeof o.path !== 'string' || typeof o.size !== 'number') return [];
  const lfs = o.lfs as Record<string, unknown> | undefined;
  const sha256 = typeof lfs?.oid === 'string' && SHA256.test(lfs.oid) ? lfs.oid.toLowerCase() : undefined;
  const size = typeof lfs?.size === 'number' ? lfs.size : o.size;
  return [{ path: o.path, size, sha256 }];
}

export const SHA256 = /^[0-9a-f]{64}$/i;

/** The `rel="next"` target of a Link header, resolved against the page it came with. */
function nextPage(link: string | null, base: string): string | undefined {
  if (!link) return undefined;
  for (const part of link.split(',')) {
    const m = /<([^>]*)>\s*;\s*rel="?next"?/i.exec(part);
    if (m) return new URL(m[1], base).href;
  }
  return undefined;
}

/** fetch, with a network failure turned into an error that names the address. */
export async function request(url: string, init: RequestInit): Promise<Response> {
  try {
    return await fetch(url, init);
  } catch (e) {
    const cause = (e as { cause?: { message?: string } }).cause?.message ?? (e as Error).message;
    throw new ModelStoreError('unavailable', `cannot reach ${new URL(url).origin}: ${cause}`);
  }
}
