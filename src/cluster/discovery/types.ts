// Discovery behind one interface: mDNS/DNS-SD (mdns.ts) and a static --peers list
// (static.ts) both answer "which herd nodes are there, and what do they offer".

import type { NodeCapabilities } from '../caps.ts';
import type { NodeInfo } from '../wire.ts';

export interface DiscoveredNode {
  /** host:port of the node's HerdNode service. */
  readonly address: string;
  readonly caps: NodeCapabilities;
  readonly via: 'mdns' | 'peers';
  /**
   * mDNS: the last word heard from this advert was a goodbye. A hint like any advert: the node
   * still counts if it answers Info.
   */
  readonly goodbye?: boolean;
  /** The node's full Info answer, when it was asked. */
  readonly info?: NodeInfo;
}

export interface DiscoverOptions {
  /** Give up waiting after this long. */
  readonly timeoutMs: number;
  /** Return early once this many nodes answered (and no more arrived for a moment). */
  readonly want?: number;
}

export interface DiscoveryResult {
  readonly nodes: DiscoveredNode[];
  /** Peers that were asked and did not answer, or answered in another protocol version (static discovery). */
  readonly unreachable: { readonly address: string; readonly error: string }[];
}

export interface Discovery {
  discover(opts: DiscoverOptions): Promise<DiscoveryResult>;
  close(): Promise<void>;
}
