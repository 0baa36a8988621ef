// Loading the native addon (build/Release/herd_native.node, built at install time by
// scripts/build-native.mjs) and narrowing its untyped exports to the interface below. The
// C side is src/kernels/native/addon.c; the numbers here are its enums.

import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';

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

/** Where the addon is looked for: HERD_NATIVE_ADDON (a cross-build under test), else build/. */
export function addonPath(): string {
  return (
    process.env.HERD_NATIVE_ADDON ?? fileURLToPath(new URL('../../../build/Release/herd_native.node', import.meta.url))
  );
}

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
  return `${path} was built for another CPU (${model(built)}; this is ${model(here)}); run npm run build:native on this machine`;
}

let cached: { addon?: NativeAddon; error?: string } | undefined;

/** The addon, or the reason it cannot be used (not built, stale, or built for another CPU). */
export function loadAddon(): { addon?: NativeAddon; error?: string } {
  if (cached) return cached;
  const path = addonPath();
  if (!existsSync(path)) {
    cached = {
      error: `the native addon is not built (no ${path}); run npm run build:native, which needs a C compiler`,
    };
    return cached;
  }
  const elsewhere = builtElsewhere(path);
  if (elsewhere) {
    cached = { error: elsewhere };
    return cached;
  }
  try {
    const exports: unknown = createRequire(import.meta.url)(path);
    cached = isAddon(exports)
      ? { addon: exports }
      : { error: `${path} is not herd's native addon or is stale; run npm run build:native` };
  } catch (err) {
    // e.g. an addon for another architecture, or built against an incompatible Node.
    cached = {
      error: `cannot load ${path}: ${err instanceof Error ? err.message : String(err)}; run npm run build:native`,
    };
  }
  return cached;
}
