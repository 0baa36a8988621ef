// Addresses: host:port parsing and the IPv4 address of a named interface.

import { networkInterfaces } from 'node:os';
import { ClusterError } from './errors.ts';

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** Parses "host:port" or "[v6]:port"; a missing port takes `defaultPort`. */
export function parseHostPort(s: string, defaultPort?: number): HostPort {
  const text = s.trim();
  const m = /^\[([0-9a-fA-F:.]+)\](?::(\d+))?$/.exec(text) ?? /^([^:\s[\]]+)(?::(\d+))?$/.exec(text);
  if (!m) throw new ClusterError('usage', `not a host:port address: "${s}"`);
  const port = m[2] === undefined ? defaultPort : Number(m[2]);
  if (port === undefined || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new ClusterError('usage', `address "${s}" needs a port in 1..65535`);
  }
  return { host: m[1], port };
}

export function formatHostPort({ host, port }: HostPort): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Parses a comma-separated list of host:port addresses. */
export function parsePeers(list: string, defaultPort?: number): HostPort[] {
  const parts = list
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p.length > 0);
  if (parts.length === 0) throw new ClusterError('usage', 'the peer list is empty');
  return parts.map((p) => parseHostPort(p, defaultPort));
}

/** The first IPv4 address of interface `name`, or an error listing the interfaces there are. */
export function interfaceIpv4(name: string): string {
  const all = networkInterfaces();
  const addrs = all[name];
  if (!addrs) {
    throw new ClusterError('usage', `no network interface "${name}" (have: ${Object.keys(all).join(', ') || 'none'})`);
  }
  const v4 = addrs.find((a) => a.family === 'IPv4');
  if (!v4) throw new ClusterError('usage', `interface "${name}" has no IPv4 address`);
  return v4.address;
}
