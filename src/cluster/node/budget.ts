// A node's memory budget for sessions, decided at start-up: `--max-memory`, else the memory
// available then. Loaded weights and every open session's KV cache count against it, the KV
// cache at its full size from the moment the session opens: its pages are committed lazily, as
// positions fill, so free memory at open time says nothing about what the session will take.
// A session is admitted before anything is allocated for it, or refused with what it asked and
// what is left (the server answers RESOURCE_EXHAUSTED).

import { formatBytes } from '../caps.ts';
import type { LoadedShard } from '../shard/store.ts';
import { TensorMember } from '../../engine/tensor-split.ts';
import { KvCache } from '../../model/kv-cache.ts';

/** Bytes a session's KV cache of `ctx` positions takes on this shard, before allocating it. */
export function kvCacheBytes(shard: LoadedShard, ctx: number): number {
  const c = shard.model.config;
  // a group member holds its KV heads only
  const kvHeads = shard.model instanceof TensorMember ? shard.model.weights.nKvHeads : c.nKvHeads;
  return KvCache.size(shard.kvType, shard.end - shard.start, ctx, kvHeads * c.headDim);
}

export class MemoryBudget {
  private readonly held = new Map<string, number>();

  constructor(
    /** Bytes for weights and KV caches together. */
    readonly limit: number,
    /** Sessions at once, whatever their size. */
    readonly maxSessions: number,
    /** Weight bytes loaded now. */
    private readonly weights: () => number,
  ) {}

  /** KV bytes the open sessions hold. */
  get reserved(): number {
    let s = 0;
    for (const b of this.held.values()) s += b;
    return s;
  }

  get sessions(): number {
    return this.held.size;
  }

  /** Bytes a new session may still take. */
  get left(): number {
    return Math.max(0, this.limit - this.weights() - this.reserved);
  }

  /** Why `bytes` for session `id` cannot be admitted on node `node`; undefined when they can. */
  refusal(node: string, id: string, bytes: number): string | undefined {
    if (this.held.size >= this.maxSessions)
      return `node ${node} holds ${this.held.size} sessions, its most (session ${id} waits for one to end)`;
    const left = this.left;
    if (bytes <= left) return undefined;
    return (
      `node ${node}: session ${id} asks ${bytes} bytes (${formatBytes(bytes)}) for its KV cache, ` +
      `${left} bytes (${formatBytes(left)}) are left of the node's ${formatBytes(this.limit)} budget ` +
      `(weights ${formatBytes(this.weights())}, ${this.held.size} sessions ${formatBytes(this.reserved)})`
    );
  }

  reserve(id: string, bytes: number): void {
    this.held.set(id, bytes);
  }

  release(id: string): void {
    this.held.delete(id);
  }
}
