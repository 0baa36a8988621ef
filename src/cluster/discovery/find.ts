// One entry point for the commands: find nodes by mDNS or from a peer list, then ask each for
// its Info so the numbers are current (mDNS TXT is written at start-up).

import { DEFAULT_PORT } from '../caps.ts';
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
}

export async function findNodes(o: FindOptions): Promise<DiscoveryResult> {
  if (o.peers !== undefined) {
    const d = new StaticDiscovery(parsePeers(o.peers, DEFAULT_PORT));
    return d.discover({ timeoutMs: o.timeoutMs });
  }
  const d = new MdnsDiscovery({ interface: o.interface });
  let found: DiscoveryResult;
  try {
    found = await d.discover({ timeoutMs: o.timeoutMs, want: o.want });
  } finally {
    await d.close();
  }
  const unreachable = [...found.unreachable];
  const nodes = (
    await Promise.all(
      found.nodes.map(async (n): Promise<DiscoveredNode | undefined> => {
        try {
          const info = await fetchInfo(n.address, Math.max(2000, o.timeoutMs));
          return { ...n, caps: capsFromInfo(info), info };
        } catch (e) {
          unreachable.push({ address: n.address, error: describeCallError(e) });
          return undefined;
        }
      }),
    )
  ).filter((n): n is DiscoveredNode => n !== undefined);
  nodes.sort((a, b) => a.caps.name.localeCompare(b.caps.name) || a.address.localeCompare(b.address));
  return { nodes, unreachable };
}
