// Flags and helpers shared by the cluster commands (node, nodes, plan, run).

import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Argv } from 'yargs';
import { ClusterError } from '../cluster/errors.ts';
import { UsageError } from './errors.ts';

export interface KeyArgs {
  clusterKey?: string;
  clusterKeyFile?: string;
}

export function keyOptions<T>(y: Argv<T>): Argv<T & KeyArgs> {
  return y
    .option('cluster-key', { type: 'string', describe: 'Shared secret of the herd (prefer --cluster-key-file: argv is visible to other users)' })
    .option('cluster-key-file', { type: 'string', describe: 'File holding the shared secret of the herd' }) as Argv<T & KeyArgs>;
}

export function defaultCacheDir(): string {
  if (process.env.HERD_CACHE_DIR) return process.env.HERD_CACHE_DIR;
  const base = process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache');
  return join(base, 'herd');
}

/** Cluster errors about what the user typed become usage errors (exit 2). */
export function asUsage<T>(f: () => T): T {
  const map = (e: unknown): never => {
    if (e instanceof ClusterError && e.code === 'usage') throw new UsageError(e.message);
    throw e;
  };
  try {
    const r = f();
    return (r instanceof Promise ? r.catch(map) : r) as T;
  } catch (e) {
    return map(e);
  }
}
