// DNS-SD for the API: `herd serve` advertises `_herd-api._tcp` (ciao, as the node daemons
// advertise `_herd._tcp`), and `herd run|chat --server auto` browses for it (bonjour-service).
// The advertisement is pinned to what the server binds: a loopback address is not advertised
// at all (nothing on the LAN could reach it), a specific address only on its interface.

import { networkInterfaces } from 'node:os';
import { getResponder, type CiaoService, type Responder } from '@homebridge/ciao';
import { Bonjour, type Service } from 'bonjour-service';
import { interfaceIpv4 } from '../cluster/net.ts';

export const API_SERVICE_TYPE = 'herd-api';
/** Bumped when the TXT record or the API's herd extensions change meaning. */
export const API_PROTOCOL_VERSION = '1';

export interface ApiAdvertiseOptions {
  readonly name: string;
  /** The address the server listens on. */
  readonly host: string;
  readonly port: number;
  readonly model: string;
  readonly auth: boolean;
  readonly version: string;
  /** Pin to this interface (default: the one holding `host`, or all for a wildcard address). */
  readonly interface?: string;
}

/** Why an address is not advertised, or the interface to pin to ('' for every interface). */
export function advertiseScope(host: string, iface?: string): { interface: string } | { skip: string } {
  if (isLoopback(host)) return { skip: `the server listens on loopback (${host}) only` };
  if (iface) return { interface: iface };
  if (host === '0.0.0.0' || host === '::' || host === '') return { interface: '' };
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    if (addrs?.some((a) => a.address === host)) return { interface: name };
  }
  return { skip: `no interface holds ${host}` };
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

export class ApiAdvertiser {
  private constructor(
    private readonly responder: Responder,
    private readonly service: CiaoService,
  ) {}

  /** Advertises, or returns the reason it did not. */
  static async start(o: ApiAdvertiseOptions): Promise<ApiAdvertiser | string> {
    const scope = advertiseScope(o.host, o.interface);
    if ('skip' in scope) return scope.skip;
    const pinned = scope.interface || undefined;
    const responder = getResponder(pinned ? { interface: pinned, disableIpv6: true } : { disableIpv6: true });
    const service = responder.createService({
      name: o.name,
      type: API_SERVICE_TYPE,
      port: o.port,
      txt: { pv: API_PROTOCOL_VERSION, model: o.model, path: '/v1', auth: o.auth ? '1' : '0', v: o.version },
      restrictedAddresses: pinned ? [pinned] : undefined,
      disabledIpv6: true,
    });
    await service.advertise();
    return new ApiAdvertiser(responder, service);
  }

  get instanceName(): string {
    return this.service.getFQDN();
  }

  async stop(): Promise<void> {
    await this.service.end();
    await this.responder.shutdown();
  }
}

export interface FoundServer {
  readonly url: string;
  readonly name: string;
  readonly model: string;
  readonly auth: boolean;
}

/** Browses `_herd-api._tcp` for up to timeoutMs; resolves with the first server that answers. */
export async function findApiServer(o: { timeoutMs: number; interface?: string }): Promise<FoundServer | undefined> {
  const mdnsOpts = o.interface ? { interface: interfaceIpv4(o.interface), bind: '0.0.0.0' } : {};
  const bonjour = new Bonjour(mdnsOpts as object, () => {});
  try {
    return await new Promise<FoundServer | undefined>((resolve) => {
      const browser = bonjour.find({ type: API_SERVICE_TYPE, protocol: 'tcp' });
      const done = (f: FoundServer | undefined) => {
        clearTimeout(timer);
        clearInterval(requery);
        browser.stop();
        resolve(f);
      };
      const consider = (s: Service) => {
        const txt = (s.txt ?? {}) as Record<string, unknown>;
        if (String(txt.pv ?? '') !== API_PROTOCOL_VERSION) return;
        const v4 = (s.addresses ?? []).filter((a) => /^\d+\.\d+\.\d+\.\d+$/.test(a));
        const from = s.referer?.address;
        const host = from && v4.includes(from) ? from : (v4[0] ?? from);
        if (!host || !Number.isInteger(s.port)) return;
        done({
          url: `http://${host}:${s.port}`,
          name: s.name,
          model: String(txt.model ?? ''),
          auth: String(txt.auth ?? '') === '1',
        });
      };
      browser.on('up', consider);
      const requery = setInterval(() => browser.update(), 1000);
      const timer = setTimeout(() => done(undefined), o.timeoutMs);
    });
  } finally {
    await new Promise<void>((resolve) => bonjour.destroy(() => resolve()));
  }
}
