// One entry point for the commands: find nodes by mDNS or from a peer list, then ask each for
// its Info. The Info call is what makes a node count: with a cluster key it runs over mutual
// TLS, so only a holder of the key answers; mDNS adverts and goodbyes are hints that anyone on
// the LAN can forge. Info also brings current numbers (mDNS TXT is written at start-up).

import { DEFAULT_PORT } from '../caps.ts';
import type { ClusterKey } from '../key.ts';
import { parsePeers } from '../net.ts';
import { describeCallError } from '../rpc.ts';
import { MdnsDiscovery } from './mdns.ts';
import { fetchInfo, StaticDiscovery } from './static.ts';
import { capsFromInfo } from '../wire.ts';
import type { DiscoveredNode, DiscoveryResult } from './types.ts';

export interface FindOptions {
  /** host:port,… — when given, no multicast at all. */
  readonly peers?: string;
  readonly interface?: string;
  readonly timeoutMs: number;
  readonly want?: number;
  /** The herd's key: nodes are asked over mutual TLS and must hold it. */
  readonly key: ClusterKey | undefined;
}

export async function findNodes(o: FindOptions): Promise<DiscoveryResult> {
  if (o.peers !== undefined) {
    const d = new StaticDiscovery(parsePeers(o.peers, DEFAULT_PORT), o.key);
    return d.discover({ timeoutMs: o.timeoutMs });
  }
  const d = new MdnsDiscovery({ interface: o.interface });
  let found: DiscoveryResult;
  try {
    found = await d.discover({ timeoutMs: o.timeoutMs, want: o.want });
  } finally {
    await d.close();
  }
  return verify(found.nodes, o.key, Math.max(2000, o.timeoutMs));
}

/**
 * The candidates that answer Info (over mutual TLS with a key) as the node they advertise, one
 * per node id, the first advert's first. A candidate that said goodbye and does not answer has
 * left, and is not reported.
 */
export async function verify(
  candidates: readonly DiscoveredNode[],
  key: ClusterKey | undefined,
  timeoutMs: number,
): Promise<DiscoveryResult> {
  const unreachable: { address: string; error: string }[] = [];
  const answers = await Promise.all(
    candidates.map(async (n): Promise<DiscoveredNode | undefined> => {
      try {
        const info = await fetchInfo(n.address, timeoutMs, key);
        if (info.nodeId !== n.caps.nodeId) {
          unreachable.push({
            address: n.address,
            error: `it answers as node ${info.nodeId}, but was advertised as ${n.caps.nodeId}`,
          });
          return undefined;
        }
        return { address: n.address, via: n.via, caps: capsFromInfo(info), info };
      } catch (e) {
        if (!n.goodbye) unreachable.push({ address: n.address, error: describeCallError(e) });
        return undefined;
      }
    }),
  );
  const nodes = new Map<string, DiscoveredNode>();
  for (const n of answers) if (n && !nodes.has(n.caps.nodeId)) nodes.set(n.caps.nodeId, n);
  const sorted = [...nodes.values()].sort(
    (a, b) => a.caps.name.localeCompare(b.caps.name) || a.address.localeCompare(b.address),
  );
  return { nodes: sorted, unreachable };
}
