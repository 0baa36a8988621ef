// The cluster key: the shared secret of a herd, read from the command line or a file. Apart
// from auth.ts (which proves it over gRPC) so that reading it loads no gRPC code.

import { readFileSync } from 'node:fs';
import { ClusterError } from './errors.ts';

export type ClusterKey = Buffer;

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
  if (key.length < 8) throw new ClusterError('usage', 'the cluster key must be at least 8 characters');
  return Buffer.from(key, 'utf8');
}
