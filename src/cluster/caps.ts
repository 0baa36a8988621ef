// What a node offers: the capabilities it advertises in mDNS TXT and reports in Info, and
// what the planner consumes. TXT values arrive from the network, so decoding validates.

export const PROTOCOL_VERSION = 6;
export const SERVICE_TYPE = 'herd';
export const DEFAULT_PORT = 7077;

export interface NodeCapabilities {
  readonly protocolVersion: number;
  readonly nodeId: string;
  readonly name: string;
  readonly arch: string;
  readonly backend: string;
  readonly memTotal: number;
  readonly memAvailable: number;
  readonly cores: number;
  /** Matvec throughput: weight bytes per second, measured (or pinned by `herd node --throughput`). */
  readonly throughput: number;
}

/** TXT keys are short (a DNS-SD TXT record is best kept small). */
export function capsToTxt(c: NodeCapabilities): Record<string, string> {
  return {
    pv: String(c.protocolVersion),
    id: c.nodeId,
    name: c.name,
    arch: c.arch,
    be: c.backend,
    mem: String(c.memTotal),
    avail: String(c.memAvailable),
    cores: String(c.cores),
    tput: String(Math.round(c.throughput)),
  };
}

/** A node id as nodes advertise it (TXT `id`, NodeInfo.node_id, StageTiming.node_id). */
export const NODE_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** Narrows a decoded TXT record; undefined when it is not a herd node's. */
export function capsFromTxt(txt: unknown): NodeCapabilities | undefined {
  if (typeof txt !== 'object' || txt === null) return undefined;
  const r = txt as Record<string, unknown>;
  const str = (k: string, max = 64): string | undefined => {
    const v = r[k];
    const s = Buffer.isBuffer(v) ? v.toString('utf8') : v;
    return typeof s === 'string' && s.length <= max ? s : undefined;
  };
  const num = (k: string): number | undefined => {
    const s = str(k, 20);
    if (s === undefined || !/^\d+$/.test(s)) return undefined;
    const n = Number(s);
    return Number.isSafeInteger(n) ? n : undefined;
  };
  const pv = num('pv');
  const nodeId = str('id');
  if (pv === undefined || nodeId === undefined || !NODE_ID_RE.test(nodeId)) return undefined;
  return {
    protocolVersion: pv,
    nodeId,
    name: str('name') ?? nodeId,
    arch: str('arch') ?? 'unknown',
    backend: str('be') ?? 'unknown',
    memTotal: num('mem') ?? 0,
    memAvailable: num('avail') ?? 0,
    cores: num('cores') ?? 0,
    throughput: num('tput') ?? 0,
  };
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(u === 0 ? 0 : v < 10 ? 2 : 1)} ${units[u]}`;
}
