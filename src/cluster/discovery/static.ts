// Static discovery: a --peers list of host:port, for networks where multicast is blocked.
// Each peer is asked for its Info over gRPC; the ones that do not answer are reported.

import type { NodeInfo } from '../../proto/herd.ts';
import { PROTOCOL_VERSION, type NodeCapabilities } from '../caps.ts';
import { formatHostPort, type HostPort } from '../net.ts';
import { describeCallError, nodeClient, unary } from '../rpc.ts';
import type { DiscoveredNode, DiscoverOptions, Discovery, DiscoveryResult } from './types.ts';

export function capsFromInfo(info: NodeInfo): NodeCapabilities {
  return {
    protocolVersion: info.protocolVersion,
    nodeId: info.nodeId,
    name: info.name,
    arch: info.arch,
    backend: info.backend,
    memTotal: info.memTotal,
    memAvailable: info.memAvailable,
    cores: info.cores,
    throughput: info.throughput,
  };
}

/** Asks one node for its Info; rejects with the call's error. */
export async function fetchInfo(address: string, timeoutMs: number): Promise<NodeInfo> {
  const client = nodeClient(address);
  try {
    return await unary(client, client.info, {}, timeoutMs);
  } finally {
    client.close();
  }
}

export class StaticDiscovery implements Discovery {
  constructor(private readonly peers: readonly HostPort[]) {}

  async discover(o: DiscoverOptions): Promise<DiscoveryResult> {
    const answers = await Promise.all(
      this.peers.map(async (p) => {
        const address = formatHostPort(p);
        try {
          const info = await fetchInfo(address, o.timeoutMs);
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
          unreachable.push({ address: a.address, error: `it speaks herd protocol ${a.info.protocolVersion} (herd ${a.info.version}); this herd speaks ${PROTOCOL_VERSION}` });
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
