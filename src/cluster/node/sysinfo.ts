// What this machine offers, measured once at start-up: memory and cores (systeminformation),
// and a short micro-benchmark of the kernel the model runs (Q8_0 matvec on the node's backend),
// reported as weight bytes streamed per second.

import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import si from 'systeminformation';
import { ggmlTypeInfo, GgmlType } from '../../ggml/types.ts';
import { makeWeight } from '../../kernels/matvec.ts';
import { quantizeRow } from '../../kernels/q8_0.ts';
import type { KernelBackend } from '../../kernels/backend.ts';

export interface HostInfo {
  readonly hostname: string;
  readonly arch: string;
  readonly platform: string;
  readonly cores: number;
  readonly memTotal: number;
  readonly memAvailable: number;
}

export async function readHostInfo(): Promise<HostInfo> {
  const [mem, cpu] = await Promise.all([si.mem(), si.cpu()]);
  return {
    hostname: hostname(),
    arch: process.arch,
    platform: process.platform,
    cores: cpu.cores || 1,
    memTotal: mem.total,
    // MemAvailable, not `free` (which leaves out reclaimable page cache).
    memAvailable: mem.available,
  };
}

/** Q8_0 matvec throughput of `backend` in weight bytes per second (~budgetMs of work). */
export function benchmarkMatvec(backend: KernelBackend, budgetMs = 150): number {
  const cols = 1024;
  const rows = 512;
  const type = ggmlTypeInfo(GgmlType.Q8_0);
  if (!type) throw new Error('Q8_0 missing from the ggml type table');
  const rowBytes = (cols / type.blockSize) * type.typeSize;
  const data = backend.alloc(rows * rowBytes);
  const src = new Float32Array(cols);
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) src[c] = rand();
    quantizeRow(src, 0, cols, data, r * rowBytes);
  }
  const w = makeWeight('bench', type, [cols, rows], data);
  const x = new Float32Array(cols).map(() => rand());
  const out = new Float32Array(rows);
  backend.matvec(w, x, out); // warm-up (JIT)
  // The best of several short windows of wall time (a multi-threaded backend's speed is its
  // wall-clock speed): other work on the machine — start-up, a neighbour process, GC — can only
  // pull a window down, so the best window is the kernel's speed. Nodes measure again while idle.
  const windows = 8;
  let best = 0;
  const t0 = performance.now();
  for (let k = 0; k < windows; k++) {
    const end = t0 + ((k + 1) * budgetMs) / windows;
    const start = performance.now();
    let iters = 0;
    let now: number;
    do {
      backend.matvec(w, x, out);
      iters++;
      now = performance.now();
    } while (now < end);
    best = Math.max(best, (iters * rows * rowBytes) / ((now - start) / 1000));
  }
  return best;
}

/** A random id kept in the cache dir, so a node keeps its identity across restarts. */
export function nodeId(cacheDir: string): string {
  const file = join(cacheDir, 'node-id');
  try {
    const id = readFileSync(file, 'utf8').trim();
    if (/^[A-Za-z0-9_-]{8,64}$/.test(id)) return id;
  } catch {
    // first start
  }
  const id = randomBytes(8).toString('hex');
  mkdirSync(cacheDir, { recursive: true });
  writeFileSync(file, `${id}\n`);
  return id;
}

export function herdVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
      version?: unknown;
    };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}
