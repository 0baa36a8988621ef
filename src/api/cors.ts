// Cross-origin access to the API: none unless `herd serve --cors ORIGIN` names the web origins
// whose pages may call it. Without a grant a browser lets no other site's page read an answer,
// and preflights (a JSON POST from another origin needs one) are refused, so a page the user
// happens to visit cannot drive a server on the LAN. `*` grants every origin: only sensible
// with an API key.

import type { IncomingMessage, ServerResponse } from 'node:http';
import { ApiError } from './errors.ts';

export class CorsPolicy {
  private readonly origins: ReadonlySet<string>;
  private readonly any: boolean;

  /** `origins`: each `scheme://host[:port]`, or `*` (see parseOrigins). */
  constructor(origins: readonly string[]) {
    this.any = origins.includes('*');
    this.origins = new Set(origins.filter((o) => o !== '*'));
  }

  get enabled(): boolean {
    return this.any || this.origins.size > 0;
  }

  /** The grant headers for a request from `origin`: none when it is not allowed (or absent). */
  grant(origin: string | undefined): Record<string, string> {
    if (!this.enabled) return {};
    // The answer depends on Origin: caches must keep one per origin.
    const vary = { Vary: 'Origin' };
    if (origin === undefined) return vary;
    if (this.any) return { 'Access-Control-Allow-Origin': '*' };
    return this.origins.has(origin) ? { ...vary, 'Access-Control-Allow-Origin': origin } : vary;
  }

  /** Answers an OPTIONS preflight: 204 with the grant for an allowed origin, 403 otherwise. */
  preflight(req: IncomingMessage, res: ServerResponse): void {
    const grant = this.grant(req.headers.origin);
    if (!grant['Access-Control-Allow-Origin']) {
      const from = req.headers.origin === undefined ? 'without an Origin' : `from ${req.headers.origin}`;
      throw new ApiError(
        403,
        'invalid_request_error',
        'cors_not_allowed',
        `cross-origin requests ${from} are not allowed (herd serve --cors ORIGIN allows a web origin)`,
      );
    }
    res.writeHead(204, {
      ...grant,
      'Access-Control-Allow-Methods': 'GET, POST, OPTIONS',
      'Access-Control-Allow-Headers': 'Authorization, Content-Type',
      'Access-Control-Max-Age': '600',
    });
    res.end();
  }
}

/** `--cors` values (repeated, or comma-separated) as origins; a RangeError names a bad one. */
export function parseOrigins(values: readonly string[]): string[] {
  const origins = values.flatMap((v) => v.split(',')).map((o) => o.trim());
  for (const o of origins) {
    if (o !== '*' && !isOrigin(o))
      throw new RangeError(`"${o}" is not a web origin: give scheme://host[:port] (no path), or *`);
  }
  return origins;
}

function isOrigin(s: string): boolean {
  try {
    const u = new URL(s);
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.origin === s;
  } catch {
    return false;
  }
}
