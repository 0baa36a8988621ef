// Loading the native addon and narrowing its untyped exports to the interface below. The
// C side is src/kernels/native/addon.c; the numbers here are its enums.
//
// Which file: HERD_NATIVE_ADDON when set (a cross-build under test); else the one
// scripts/build-native.mjs compiled on this machine for this very CPU
// (build/Release/herd_native.node, -march=native), when it was built here; else the npm
// package's prebuilt addon for this platform and CPU level (./prebuilt.ts). Without any,
// herd runs the wasm kernels.

import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { choosePrebuilt } from './prebuilt.ts';

declare const handleBrand: unique symbol;
/** A backend's state inside the addon (a Node-API external). */
export type NativeHandle = { readonly [handleBrand]: true };

export interface NativeAddon {
  info(): { isas: string[]; types: number[] };
  create(threads: number, spinMicros: number, isa: number): NativeHandle;
  close(handle: NativeHandle): void;
  threads(handle: NativeHandle): number;
  alloc(bytes: number): ArrayBuffer;
  matvec(
    handle: NativeHandle,
    type: number,
    w: Uint8Array,
    rows: number,
    cols: number,
    x: Float32Array,
    out: Float32Array,
    parallel: number,
  ): void;
  matmul(
    handle: NativeHandle,
    type: number,
    w: Uint8Array,
    rows: number,
    cols: number,
    xs: Float32Array,
    n: number,
    out: Float32Array,
    parallel: number,
  ): void;
  prepare(
    kind: number,
    x: Float32Array,
    n: number,
    f: Float32Array,
    qs: Int8Array,
    d: Float32Array,
    s: Float32Array,
    bsums: Int16Array,
  ): void;
  /** Causal grouped-query attention (ops.c); keys and values both f32 or both f16 bits. */
  attend(
    handle: NativeHandle,
    keys: Float32Array | Uint16Array,
    values: Float32Array | Uint16Array,
    nHeads: number,
    nKvHeads: number,
    headDim: number,
    start: number,
    n: number,
    q: Float32Array,
    out: Float32Array,
    parallel: number,
  ): void;
  swiglu(
    handle: NativeHandle,
    out: Float32Array,
    gate: Float32Array,
    up: Float32Array,
    n: number,
    parallel: number,
  ): void;
}

/** Instruction-set paths, in the order of the C enum herd_isa. */
export const NATIVE_ISAS = ['scalar', 'avx2', 'avx512', 'neon', 'neon-dotprod'] as const;
export type NativeIsa = (typeof NATIVE_ISAS)[number];

/** Activation kinds, in the order of the C enum herd_act_kind. */
export const ACT_KINDS = ['f32', 'f16', 'bf16', 'q8_0', 'q8_1', 'q8_k'] as const;

/** The addon compiled on this machine by scripts/build-native.mjs. */
const localBuild = fileURLToPath(new URL('../../../build/Release/herd_native.node', import.meta.url));
/** The package's prebuilt addons (scripts/prebuild.mjs). */
const prebuildsDir = fileURLToPath(new URL('../../../prebuilds', import.meta.url));

const FUNCTIONS = [
  'info',
  'create',
  'close',
  'threads',
  'alloc',
  'matvec',
  'matmul',
  'prepare',
  'attend',
  'swiglu',
] as const;

function isAddon(v: unknown): v is NativeAddon {
  if (typeof v !== 'object' || v === null) return false;
  return FUNCTIONS.every((name) => typeof (v as Record<string, unknown>)[name] === 'function');
}

/**
 * Architecture, CPU model and instruction-set flags, as scripts/build-native.mjs records
 * them next to the addon it built (keep the two in step).
 */
export function cpuFingerprint(): string {
  let flags = '';
  try {
    flags = /^(?:flags|Features)\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? '';
  } catch {
    // not Linux: the model name has to do
  }
  return `${process.arch} | ${cpus()[0]?.model ?? '?'} | ${flags}`;
}

/**
 * Why the addon must not be loaded here, if it was built on a CPU other than this one: its
 * -march=native code could use instructions this CPU lacks and kill the process (SIGILL)
 * before any error could be caught.
 */
function builtElsewhere(path: string): string | undefined {
  const recordPath = path.replace(/\.node$/, '.cpu');
  if (!existsSync(recordPath)) return undefined; // a build without a record (e.g. a cross-build under test)
  const built = readFileSync(recordPath, 'utf8').trim();
  const here = cpuFingerprint();
  if (built === here) return undefined;
  const model = (s: string) => s.split(' | ').slice(0, 2).join(', ');
  return `${path} was built for another CPU (${model(built)}; this is ${model(here)})`;
}

export interface LoadedAddon {
  addon?: NativeAddon;
  /** The file loaded, and where it came from: HERD_NATIVE_ADDON, built on this machine, or prebuilt for a CPU level. */
  path?: string;
  source?: 'env' | 'local' | `prebuilt ${string}`;
  /** Why there is no addon. */
  error?: string;
}

/** Loads one file; an error names it and says why. */
function loadFile(path: string): { addon?: NativeAddon; error?: string } {
  try {
    const exports: unknown = createRequire(import.meta.url)(path);
    return isAddon(exports) ? { addon: exports } : { error: `${path} is not herd's native addon or is stale` };
  } catch (err) {
    // e.g. an addon for another architecture, or built against an incompatible Node.
    return { error: `cannot load ${path}: ${err instanceof Error ? err.message : String(err)}` };
  }
}

let cached: LoadedAddon | undefined;

/** The addon and which file it is, or the reason none can be used here. */
export function loadAddon(): LoadedAddon {
  cached ??= findAddon();
  return cached;
}

function findAddon(): LoadedAddon {
  const override = process.env.HERD_NATIVE_ADDON;
  if (override) {
    if (!existsSync(override)) return { error: `HERD_NATIVE_ADDON=${override} does not exist` };
    const elsewhere = builtElsewhere(override);
    if (elsewhere) return { error: `${elsewhere}; run npm run build:native on this machine` };
    const r = loadFile(override);
    return r.addon ? { addon: r.addon, path: override, source: 'env' } : { error: r.error };
  }
  const reasons: string[] = [];
  if (existsSync(localBuild)) {
    const elsewhere = builtElsewhere(localBuild);
    const r = elsewhere ? { error: elsewhere } : loadFile(localBuild);
    if (r.addon) return { addon: r.addon, path: localBuild, source: 'local' };
    reasons.push(r.error ?? `cannot load ${localBuild}`);
  } else {
    reasons.push(`no addon built on this machine (${localBuild})`);
  }
  const prebuilt = choosePrebuilt(prebuildsDir);
  if (prebuilt.path !== undefined) {
    const r = loadFile(prebuilt.path);
    if (r.addon) return { addon: r.addon, path: prebuilt.path, source: `prebuilt ${prebuilt.level}` };
    reasons.push(r.error ?? `cannot load ${prebuilt.path}`);
  } else {
    reasons.push(prebuilt.why);
  }
  return { error: `${reasons.join('; ')}; run npm run build:native, which needs a C compiler` };
}
