// Which nodes a coordinator plans over: `--nodes auto` (mDNS), `local` (this process), or a
// host:port list. `auto` with nobody answering falls back to this process, with a note. Each
// node's link is timed with a few Health calls on a warm channel: the planner's latency for a
// tensor group's syncs.

import { JsBackend } from '../../kernels/backend.ts';
import { findNodes } from '../discovery/find.ts';
import type { DiscoveredNode } from '../discovery/types.ts';
import { ClusterError } from '../errors.ts';
import type { ClusterKey } from '../key.ts';
import { nodeClient, unary } from '../rpc.ts';
import { benchmarkMatvec, readHostInfo } from '../node/sysinfo.ts';
import type { PlanNode } from '../planner.ts';
import { heldRanges, type NodeInfo } from '../wire.ts';
import { LOCAL_ADDRESS } from '../../engine/local.ts';

export interface NodeSet {
  /** 'local' when generation runs in this process. */
  readonly mode: 'local' | 'cluster';
  readonly nodes: PlanNode[];
  /** What the user should know (fallbacks, unreachable peers), one line each. */
  readonly notes: string[];
  /** Each node's Info answer, by address. */
  readonly infos: ReadonlyMap<string, NodeInfo>;
}

/** The nodes with the layer ranges of this model each holds in memory or in its cache. */
export function withHoldings(set: NodeSet, modelHash: string): PlanNode[] {
  return set.nodes.map((n) => {
    const info = set.infos.get(n.address);
    if (!info) return n;
    return { ...n, holds: heldRanges(info, modelHash) };
  });
}

export interface ResolveOptions {
  readonly nodes: string;
  readonly interface?: string;
  readonly timeoutMs: number;
  readonly want?: number;
  /** The herd's key: only nodes that hold it answer (mutual TLS). */
  readonly key: ClusterKey | undefined;
}

export function planNode(n: DiscoveredNode, rttSeconds?: number): PlanNode {
  return {
    id: n.caps.nodeId,
    name: n.caps.name,
    address: n.address,
    memAvailable: n.caps.memAvailable,
    throughput: n.caps.throughput,
    rttSeconds,
  };
}

/** Timed Health calls per node; the least is its round trip (the others waited on something else). */
const PINGS = 5;

/**
 * Each node's round trip in seconds (undefined where a call failed): channels are opened side
 * by side (TCP, TLS), then timed one node at a time so the pings do not queue behind each other.
 */
export async function measureLinks(
  addresses: readonly string[],
  key: ClusterKey | undefined,
  timeoutMs: number,
): Promise<(number | undefined)[]> {
  const clients = addresses.map((a) => nodeClient(a, key));
  const ping = async (c: (typeof clients)[number]): Promise<number | undefined> => {
    const t0 = performance.now();
    try {
      await unary(c, c.health, {}, timeoutMs);
      return (performance.now() - t0) / 1000;
    } catch {
      return undefined;
    }
  };
  try {
    const warm = await Promise.all(clients.map(ping));
    const out: (number | undefined)[] = [];
    for (const [i, c] of clients.entries()) {
      let best: number | undefined;
      for (let k = 0; warm[i] !== undefined && k < PINGS; k++) {
        const t = await ping(c);
        if (t !== undefined) best = Math.min(best ?? t, t);
      }
      out.push(best);
    }
    return out;
  } finally {
    for (const c of clients) c.close();
  }
}

export async function localNode(): Promise<PlanNode> {
  const h = await readHostInfo();
  return {
    id: 'local',
    name: h.hostname,
    address: LOCAL_ADDRESS,
    memAvailable: h.memAvailable,
    throughput: benchmarkMatvec(new JsBackend(), 100),
  };
}

export async function resolveNodes(o: ResolveOptions): Promise<NodeSet> {
  const spec = o.nodes.trim();
  if (spec === 'local') return { mode: 'local', nodes: [await localNode()], notes: [], infos: new Map() };
  const auto = spec === 'auto';
  const r = await findNodes({
    peers: auto ? undefined : spec,
    interface: o.interface,
    timeoutMs: o.timeoutMs,
    want: o.want,
    key: o.key,
  });
  const notes = r.unreachable.map((u) => `node ${u.address} did not answer: ${u.error}`);
  if (r.nodes.length === 0) {
    if (auto) {
      notes.push(`no herd nodes answered over mDNS in ${o.timeoutMs / 1000} s: running in-process`);
      return { mode: 'local', nodes: [await localNode()], notes, infos: new Map() };
    }
    throw new ClusterError(
      'discovery',
      `none of the nodes answered (${r.unreachable.map((u) => `${u.address}: ${u.error}`).join('; ')})`,
    );
  }
  const infos = new Map<string, NodeInfo>();
  for (const n of r.nodes) if (n.info) infos.set(n.address, n.info);
  const rtts = await measureLinks(
    r.nodes.map((n) => n.address),
    o.key,
    o.timeoutMs,
  );
  return { mode: 'cluster', nodes: r.nodes.map((n, i) => planNode(n, rtts[i])), notes, infos };
}
