// The API's bearer keys (`herd serve --api-key-file`, one key per line): who may use /v1,
// /metrics, /api/state and gRPC Generate. Each key is a client identity too: kept sessions
// (prompt reuse) go back only to requests carrying the key that made them, so one client's
// conversation never becomes another's cached prefix. Keys are compared as SHA-256 digests in
// constant time; logs and labels name a key by its position, never by its text.

import { createHash, timingSafeEqual } from 'node:crypto';
import { unauthorized } from './errors.ts';

export class ApiKeys {
  private readonly digests: readonly Buffer[];

  constructor(keys: readonly string[]) {
    this.digests = keys.map(sha256);
  }

  /** Whether requests must carry a key. */
  get required(): boolean {
    return this.digests.length > 0;
  }

  /**
   * The identity of the key an `Authorization: Bearer KEY` value carries (`key-1`, `key-2`, …
   * in the file's order); a 401 ApiError when it carries none or a wrong one.
   */
  identify(authorization: string | undefined): string {
    const m = /^Bearer\s+(.+)$/i.exec(authorization ?? '');
    if (!m)
      throw unauthorized('You didn\'t provide an API key: send "Authorization: Bearer KEY" (herd serve --api-key)');
    const got = sha256(m[1].trim());
    let found = -1;
    // Every digest compared, whichever matches: the time says nothing about which key it was.
    this.digests.forEach((d, i) => {
      if (timingSafeEqual(got, d) && found < 0) found = i;
    });
    if (found < 0) throw unauthorized('Incorrect API key provided');
    return `key-${found + 1}`;
  }
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}
