// Cluster key auth by challenge-response, for `herd serve --grpc-port`'s Generate, whose clients
// are not herd members (the herd's own channels use mutual TLS instead, tls.ts): a server hands
// out nonces (Challenge); a caller proves it holds the key with HMAC-SHA256(key, nonce ‖ method
// path) in call metadata. The key never travels; a nonce works once, for one method, for a
// short time. Nonces are stateless — the expiry and a MAC under a per-process secret are in the
// nonce itself — so Challenge calls store nothing and cannot crowd out a caller's nonce; only
// nonces spent by a valid proof are remembered, until they expire.

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { Metadata, status, type sendUnaryData, type ServerErrorResponse, type ServerUnaryCall } from '@grpc/grpc-js';
import type { ClusterKey } from './key.ts';

export const NONCE_HEADER = 'herd-nonce';
export const PROOF_HEADER = 'herd-proof';
export const NONCE_TTL_MS = 30_000;
/** A nonce: expiry (ms since the epoch, 6 bytes big-endian) ‖ 10 random bytes ‖ a 16-byte MAC of both. */
const NONCE_BYTES = 32;

export type { ClusterKey } from './key.ts';

export function proof(key: ClusterKey, nonce: Uint8Array, method: string): Buffer {
  return createHmac('sha256', key).update(nonce).update(method, 'utf8').digest();
}

/** Metadata proving the key for one call of `method`, given a nonce from the server. */
export function authMetadata(key: ClusterKey | undefined, nonce: Uint8Array, method: string): Metadata {
  const md = new Metadata();
  if (key) {
    md.set(NONCE_HEADER, Buffer.from(nonce).toString('hex'));
    md.set(PROOF_HEADER, proof(key, nonce, method).toString('hex'));
  }
  return md;
}

/** A call a server refused, for its log. */
export interface Refusal {
  readonly method: string;
  readonly peer: string;
  readonly reason: string;
}

/**
 * The server side: issues nonces (the Challenge handler) and checks proofs. Without a key every
 * call is accepted.
 */
export class Authenticator {
  private readonly secret = randomBytes(32);
  /** Nonces a valid proof has spent, with their expiry. */
  private readonly spent = new Map<string, number>();

  constructor(
    readonly key: ClusterKey | undefined,
    private readonly onRefused: (r: Refusal) => void = () => {},
  ) {}

  /** The Challenge method of every herd service. */
  readonly challenge = (
    _call: ServerUnaryCall<unknown, unknown>,
    cb: sendUnaryData<{ nonce: Buffer; ttlMs: number }>,
  ): void => {
    cb(null, { nonce: this.issue(), ttlMs: NONCE_TTL_MS });
  };

  /** UNAUTHENTICATED for a call of `method` without a valid proof, else undefined. */
  refuse(call: { readonly metadata: Metadata; getPeer(): string }, method: string): ServerErrorResponse | undefined {
    const reason = this.check(call.metadata, method);
    if (reason === undefined) return undefined;
    this.onRefused({ method, peer: call.getPeer(), reason });
    return {
      name: 'Unauthenticated',
      message: reason,
      code: status.UNAUTHENTICATED,
      details: `cluster key: ${reason}`,
    };
  }

  get required(): boolean {
    return this.key !== undefined;
  }

  issue(): Buffer {
    const head = Buffer.alloc(16);
    head.writeUIntBE(Date.now() + NONCE_TTL_MS, 0, 6);
    randomBytes(10).copy(head, 6);
    return Buffer.concat([head, this.mac(head)]);
  }

  private mac(head: Buffer): Buffer {
    return createHmac('sha256', this.secret)
      .update(head)
      .digest()
      .subarray(0, NONCE_BYTES - 16);
  }

  /** Undefined when the call may proceed, else why it may not. */
  check(md: Metadata, method: string): string | undefined {
    if (!this.key) return undefined;
    const nonceHex = first(md, NONCE_HEADER);
    const proofHex = first(md, PROOF_HEADER);
    if (nonceHex === undefined || proofHex === undefined) return 'missing cluster key proof';
    if (!/^[0-9a-f]{64}$/.test(nonceHex) || !/^[0-9a-f]{64}$/.test(proofHex)) return 'malformed cluster key proof';
    const nonce = Buffer.from(nonceHex, 'hex');
    const head = nonce.subarray(0, 16);
    if (!timingSafeEqual(this.mac(head), nonce.subarray(16))) return 'unknown nonce';
    const now = Date.now();
    const expires = head.readUIntBE(0, 6);
    if (expires < now) return 'expired nonce';
    if (this.spent.has(nonceHex)) return 'already used nonce';
    const want = proof(this.key, nonce, method);
    if (!timingSafeEqual(want, Buffer.from(proofHex, 'hex'))) return 'wrong cluster key';
    for (const [n, exp] of this.spent) if (exp < now) this.spent.delete(n);
    this.spent.set(nonceHex, expires);
    return undefined;
  }
}

function first(md: Metadata, key: string): string | undefined {
  const v = md.get(key)[0];
  return typeof v === 'string' ? v : undefined;
}
