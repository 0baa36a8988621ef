// The cluster key: the shared secret of a herd, read from the command line or a file. Apart
// from auth.ts (which proves it over gRPC) so that reading it loads no gRPC code.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ClusterError } from './errors.ts';

export type ClusterKey = Buffer;

/**
 * The shortest key accepted: 32 characters, 128 bits as hex digits (more as base64 or text). A
 * shorter key could be guessed offline from one recorded handshake or proof.
 */
export const MIN_KEY_CHARS = 32;

/** A new key as `herd keygen` writes it: 256 random bits as 64 hex digits. */
export function generateClusterKey(): string {
  return randomBytes(32).toString('hex');
}

/** The key from --cluster-key or --cluster-key-file (trimmed), or undefined for an open cluster. */
export function loadClusterKey(opts: { clusterKey?: string; clusterKeyFile?: string }): ClusterKey | undefined {
  if (opts.clusterKey !== undefined && opts.clusterKeyFile !== undefined) {
    throw new ClusterError('usage', 'give --cluster-key or --cluster-key-file, not both');
  }
  let text = opts.clusterKey;
  if (opts.clusterKeyFile !== undefined) {
    try {
      text = readFileSync(opts.clusterKeyFile, 'utf8');
    } catch (e) {
      throw new ClusterError('usage', `cannot read the cluster key file: ${(e as Error).message}`);
    }
  }
  if (text === undefined) return undefined;
  const key = text.trim();
  if (key.length < MIN_KEY_CHARS) {
    throw new ClusterError(
      'usage',
      `the cluster key has ${key.length} characters; it must have at least ${MIN_KEY_CHARS} (128 bits as hex): ` +
        'make one with `herd keygen > herd.key` and pass --cluster-key-file herd.key on every machine',
    );
  }
  return Buffer.from(key, 'utf8');
}
