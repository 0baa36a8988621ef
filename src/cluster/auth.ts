// Cluster key auth, challenge-response: a server hands out single-use nonces (Challenge); a
// caller proves it holds the key with HMAC-SHA256(key, nonce ‖ method path) in call metadata.
// The key never travels; a nonce works once, for one method, for a short time.

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { Metadata, status, type sendUnaryData, type ServerErrorResponse, type ServerUnaryCall } from '@grpc/grpc-js';
import type { ClusterKey } from './key.ts';

export const NONCE_HEADER = 'herd-nonce';
export const PROOF_HEADER = 'herd-proof';
export const NONCE_TTL_MS = 30_000;
const MAX_OUTSTANDING = 4096;

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
  private readonly nonces = new Map<string, number>();

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
    const now = Date.now();
    if (this.nonces.size >= MAX_OUTSTANDING) {
      for (const [n, exp] of this.nonces) if (exp <= now) this.nonces.delete(n);
      // Still full: forget the oldest (Map keeps insertion order).
      while (this.nonces.size >= MAX_OUTSTANDING) this.nonces.delete(this.nonces.keys().next().value as string);
    }
    const nonce = randomBytes(32);
    this.nonces.set(nonce.toString('hex'), now + NONCE_TTL_MS);
    return nonce;
  }

  /** Undefined when the call may proceed, else why it may not. */
  check(md: Metadata, method: string): string | undefined {
    if (!this.key) return undefined;
    const nonceHex = first(md, NONCE_HEADER);
    const proofHex = first(md, PROOF_HEADER);
    if (nonceHex === undefined || proofHex === undefined) return 'missing cluster key proof';
    if (!/^[0-9a-f]{64}$/.test(nonceHex) || !/^[0-9a-f]{64}$/.test(proofHex)) return 'malformed cluster key proof';
    const expires = this.nonces.get(nonceHex);
    if (expires === undefined) return 'unknown or already used nonce';
    this.nonces.delete(nonceHex);
    if (expires < Date.now()) return 'expired nonce';
    const want = proof(this.key, Buffer.from(nonceHex, 'hex'), method);
    if (!timingSafeEqual(want, Buffer.from(proofHex, 'hex'))) return 'wrong cluster key';
    return undefined;
  }
}

function first(md: Metadata, key: string): string | undefined {
  const v = md.get(key)[0];
  return typeof v === 'string' ? v : undefined;
}
