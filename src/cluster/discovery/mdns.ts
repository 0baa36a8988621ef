// mDNS/DNS-SD with pure JS libraries, so a bare Pi needs no avahi-daemon, D-Bus or compat
// library (the `mdns` npm package needs all three and aborts Node 20 in its default browser):
// @homebridge/ciao advertises (RFC 6762 probing and conflict resolution), bonjour-service
// browses. Both speak standard records: `avahi-browse -r _herd._tcp` lists herd daemons.
// Anyone on the LAN can send mDNS, so what browsing finds is only a list of candidates to ask
// (find.ts): every advert is kept by node id and address — a second advert for a node id never
// replaces the first — and a goodbye only marks its advert, for the Info call to settle.

import { getResponder, type CiaoService, type Responder } from '@homebridge/ciao';
import { Bonjour, type Service } from 'bonjour-service';
import { capsFromTxt, capsToTxt, PROTOCOL_VERSION, SERVICE_TYPE, type NodeCapabilities } from '../caps.ts';
import { formatHostPort, interfaceIpv4 } from '../net.ts';
import type { DiscoveredNode, DiscoverOptions, Discovery, DiscoveryResult } from './types.ts';

export interface AdvertiseOptions {
  /** Instance name (ciao renames on conflict). */
  readonly name: string;
  readonly port: number;
  readonly caps: NodeCapabilities;
  /** Pin the responder and the advertised address to this interface. */
  readonly interface?: string;
}

/** Advertises one `_herd._tcp` service until stop(), which sends goodbyes. */
export class MdnsAdvertiser {
  private constructor(
    private readonly responder: Responder,
    private readonly service: CiaoService,
  ) {}

  static async start(o: AdvertiseOptions): Promise<MdnsAdvertiser> {
    const responder = getResponder(o.interface ? { interface: o.interface, disableIpv6: true } : { disableIpv6: true });
    const service = responder.createService({
      name: o.name,
      type: SERVICE_TYPE,
      port: o.port,
      txt: capsToTxt(o.caps),
      restrictedAddresses: o.interface ? [o.interface] : undefined,
      disabledIpv6: true,
    });
    await service.advertise();
    return new MdnsAdvertiser(responder, service);
  }

  get instanceName(): string {
    return this.service.getFQDN();
  }

  async updateTxt(caps: NodeCapabilities): Promise<void> {
    this.service.updateTxt(capsToTxt(caps));
  }

  /** Goodbye packets (TTL 0), then the sockets close. */
  async stop(): Promise<void> {
    await this.service.end();
    await this.responder.shutdown();
  }
}

export interface MdnsDiscoveryOptions {
  /** Browse on this interface only. */
  readonly interface?: string;
  /** Query again this often: bonjour-service's browser asks once by itself. */
  readonly queryIntervalMs?: number;
}

/** Browses `_herd._tcp` and turns announcements into candidate nodes (unverified). */
export class MdnsDiscovery implements Discovery {
  private readonly bonjour: Bonjour;

  constructor(private readonly opts: MdnsDiscoveryOptions = {}) {
    // multicast-dns bound to the interface's IP receives no multicast: bind 0.0.0.0 and select
    // the interface for membership and sending.
    const mdnsOpts = opts.interface ? { interface: interfaceIpv4(opts.interface), bind: '0.0.0.0' } : {};
    this.bonjour = new Bonjour(mdnsOpts as object, (err: unknown) => {
      process.stderr.write(`herd: mDNS error: ${err instanceof Error ? err.message : String(err)}\n`);
    });
  }

  discover(o: DiscoverOptions): Promise<DiscoveryResult> {
    return new Promise((resolve) => {
      // By node id and address: a spoofed advert for a node id adds a candidate, never replaces one.
      const found = new Map<string, DiscoveredNode>();
      const ids = () => new Set([...found.values()].map((n) => n.caps.nodeId)).size;
      const browser = this.bonjour.find({ type: SERVICE_TYPE, protocol: 'tcp' });
      let settle: NodeJS.Timeout | undefined;
      const finish = () => {
        clearInterval(requery);
        clearTimeout(timer);
        if (settle) clearTimeout(settle);
        browser.stop();
        resolve({ nodes: [...found.values()], unreachable: [] });
      };
      const consider = (s: Service) => {
        const node = toNode(s);
        if (!node || node.caps.protocolVersion !== PROTOCOL_VERSION) return;
        found.set(candidateKey(node), node);
        if (o.want !== undefined && ids() >= o.want) {
          if (settle) clearTimeout(settle);
          settle = setTimeout(finish, 250);
        }
      };
      browser.on('up', consider);
      browser.on('txt-update', consider);
      browser.on('srv-update', consider);
      browser.on('down', (s: Service) => {
        const node = toNode(s);
        const known = node && found.get(candidateKey(node));
        if (known) found.set(candidateKey(known), { ...known, goodbye: true });
      });
      const requery = setInterval(() => browser.update(), this.opts.queryIntervalMs ?? 1000);
      const timer = setTimeout(finish, o.timeoutMs);
    });
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.bonjour.destroy(() => resolve()));
  }
}

function candidateKey(n: DiscoveredNode): string {
  return `${n.caps.nodeId} ${n.address}`;
}

function toNode(s: Service): DiscoveredNode | undefined {
  const caps = capsFromTxt(s.txt);
  if (!caps || !Number.isInteger(s.port) || s.port < 1 || s.port > 65535) return undefined;
  const v4 = (s.addresses ?? []).filter((a) => /^\d+\.\d+\.\d+\.\d+$/.test(a));
  // Prefer the address the announcement came from: it is on the link we browse.
  const from = s.referer?.address;
  const host = from && v4.includes(from) ? from : (v4[0] ?? from);
  if (!host) return undefined;
  return { address: formatHostPort({ host, port: s.port }), caps, via: 'mdns' };
}
