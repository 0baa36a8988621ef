// Static discovery: a --peers list of host:port, for networks where multicast is blocked.
// Each peer is asked for its Info over gRPC (mutual TLS with a cluster key, so only holders of
// the key answer); the ones that do not answer are reported.

import { PROTOCOL_VERSION } from '../caps.ts';
import type { ClusterKey } from '../key.ts';
import { formatHostPort, type HostPort } from '../net.ts';
import { describeCallError, nodeClient, unary } from '../rpc.ts';
import { capsFromInfo, type NodeInfo } from '../wire.ts';
import type { DiscoveredNode, DiscoverOptions, Discovery, DiscoveryResult } from './types.ts';

/** Asks one node for its Info; rejects with the call's error (with a key: also when the node lacks it). */
export async function fetchInfo(address: string, timeoutMs: number, key: ClusterKey | undefined): Promise<NodeInfo> {
  const client = nodeClient(address, key);
  try {
    return await unary(client, client.info, {}, timeoutMs);
  } finally {
    client.close();
  }
}

export class StaticDiscovery implements Discovery {
  constructor(
    private readonly peers: readonly HostPort[],
    private readonly key: ClusterKey | undefined,
  ) {}

  async discover(o: DiscoverOptions): Promise<DiscoveryResult> {
    const answers = await Promise.all(
      this.peers.map(async (p) => {
        const address = formatHostPort(p);
        try {
          const info = await fetchInfo(address, o.timeoutMs, this.key);
          return { address, info };
        } catch (e) {
          return { address, error: describeCallError(e) };
        }
      }),
    );
    const nodes: DiscoveredNode[] = [];
    const unreachable: { address: string; error: string }[] = [];
    const seen = new Set<string>();
    for (const a of answers) {
      if ('info' in a && a.info) {
        // As mDNS browsing does: a node of another protocol version cannot join this herd's ring.
        if (a.info.protocolVersion !== PROTOCOL_VERSION) {
          unreachable.push({
            address: a.address,
            error: `it speaks herd protocol ${a.info.protocolVersion} (herd ${a.info.version}); this herd speaks ${PROTOCOL_VERSION}`,
          });
          continue;
        }
        if (seen.has(a.info.nodeId)) continue;
        seen.add(a.info.nodeId);
        nodes.push({ address: a.address, caps: capsFromInfo(a.info), via: 'peers', info: a.info });
      } else {
        unreachable.push({ address: a.address, error: a.error ?? 'no answer' });
      }
    }
    return { nodes, unreachable };
  }

  async close(): Promise<void> {}
}
