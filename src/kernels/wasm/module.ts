// The kernels module: compiling a build of it once per process, instantiating it on a shared
// memory, and its exports narrowed from WebAssembly's untyped ones (the control block
// layout is read from the module, ./assembly/control.ts, never kept a second time here).

import { readFileSync } from 'node:fs';
import { KernelBackendError } from '../checks.ts';
import { relaxedSimdAvailable, wasmMissing } from './probe.ts';

export type WasmBackendErrorCode =
  'WASM_UNAVAILABLE' | 'WASM_MEMORY_LIMIT' | 'WASM_WORKER' | 'WASM_CLOSED' | 'WASM_ARGUMENT';

export class WasmBackendError extends KernelBackendError<WasmBackendErrorCode> {
  constructor(code: WasmBackendErrorCode, message: string) {
    super(code, 'wasm', message);
    this.name = 'WasmBackendError';
  }
}

/** Which build of the kernels runs: kernels-relaxed.wasm or kernels.wasm. */
export type WasmSimd = 'relaxed' | 'simd128';

/** The module's exports, narrowed from WebAssembly's untyped ones by kernelExports(). */
export interface KernelExports {
  supports(type: number): number;
  heapBase(): number;
  roundF16(x: number, dst: number, n: number): void;
  roundBf16(x: number, dst: number, n: number): void;
  quantizeQ8_0(x: number, n: number, qs: number, d: number): void;
  quantizeQ8_1(x: number, n: number, qs: number, d: number, s: number): void;
  quantizeQ8_K(x: number, n: number, qs: number, d: number, bsums: number): void;
  widenI8(src: number, dst: number, n: number): void;
  offsetSumsQ8_0(qs: number, n: number, dst: number): void;
  fillF16Table(dst: number): void;
  wideTile(type: number): number;
  q4Offsets(): number;
  run(ctl: number, gen: number): void;
  layout: Layout;
}

/** Control block word indexes (byte offsets / 4) and the stop op, read from the module. */
export interface Layout {
  gen: number;
  done: number;
  error: number;
  next: number;
  op: number;
  chunks: number;
  chunkRows: number;
  w: number;
  rowBytes: number;
  rows: number;
  cols: number;
  n: number;
  act: number;
  actStride: number;
  actD: number;
  actDStride: number;
  actX: number;
  actXStride: number;
  out: number;
  act16: number;
  f16Table: number;
  aKeys: number;
  aValues: number;
  aQ: number;
  aOut: number;
  aAtt: number;
  aAttStride: number;
  aNKv: number;
  aGroup: number;
  aHeadDim: number;
  aStart: number;
  aN: number;
  aHalf: number;
  bytes: number;
  stop: number;
  attend: number;
  swiglu: number;
  f16ToF32: number;
}

const compiled = new Map<WasmSimd, WebAssembly.Module>();

/** A build of the kernels, compiled once per process (workers receive it compiled). */
export function kernelsModule(simd: WasmSimd): WebAssembly.Module {
  const missing = wasmMissing();
  if (missing) throw new WasmBackendError('WASM_UNAVAILABLE', missing);
  if (simd === 'relaxed' && !relaxedSimdAvailable()) {
    throw new WasmBackendError('WASM_UNAVAILABLE', 'this runtime has no working relaxed SIMD; use simd: simd128');
  }
  let module = compiled.get(simd);
  if (!module) {
    module = new WebAssembly.Module(
      readFileSync(new URL(simd === 'relaxed' ? './kernels-relaxed.wasm' : './kernels.wasm', import.meta.url)),
    );
    compiled.set(simd, module);
  }
  return module;
}

/** Instantiates the module on `memory` (shared, as every thread's instance is). */
export function instantiate(module: WebAssembly.Module, memory: WebAssembly.Memory): KernelExports {
  return kernelExports(new WebAssembly.Instance(module, { env: { memory } }));
}

function kernelExports(instance: WebAssembly.Instance): KernelExports {
  const ex = instance.exports;
  const fn = (name: string): ((...args: number[]) => number) => {
    const f = ex[name];
    if (typeof f !== 'function')
      throw new WasmBackendError(
        'WASM_UNAVAILABLE',
        `kernels.wasm lacks function ${name}; rebuild it (npm run build:wasm)`,
      );
    return f as (...args: number[]) => number;
  };
  const op = (name: string): number => {
    const g = ex[name];
    if (!(g instanceof WebAssembly.Global))
      throw new WasmBackendError(
        'WASM_UNAVAILABLE',
        `kernels.wasm lacks global ${name}; rebuild it (npm run build:wasm)`,
      );
    return g.value as number;
  };
  const word = (name: string): number => op(name) / 4;
  return {
    supports: fn('supports'),
    heapBase: fn('heapBase'),
    roundF16: fn('roundF16'),
    roundBf16: fn('roundBf16'),
    quantizeQ8_0: fn('quantizeQ8_0'),
    quantizeQ8_1: fn('quantizeQ8_1'),
    quantizeQ8_K: fn('quantizeQ8_K'),
    widenI8: fn('widenI8'),
    offsetSumsQ8_0: fn('offsetSumsQ8_0'),
    fillF16Table: fn('fillF16Table'),
    wideTile: fn('wideTile'),
    q4Offsets: fn('q4Offsets'),
    run: fn('run'),
    layout: {
      gen: word('CTL_GEN'),
      done: word('CTL_DONE'),
      error: word('CTL_ERROR'),
      next: word('CTL_NEXT'),
      op: word('CTL_OP'),
      chunks: word('CTL_CHUNKS'),
      chunkRows: word('CTL_CHUNK_ROWS'),
      w: word('CTL_W'),
      rowBytes: word('CTL_ROW_BYTES'),
      rows: word('CTL_ROWS'),
      cols: word('CTL_COLS'),
      n: word('CTL_N'),
      act: word('CTL_ACT'),
      actStride: word('CTL_ACT_STRIDE'),
      actD: word('CTL_ACT_D'),
      actDStride: word('CTL_ACT_D_STRIDE'),
      actX: word('CTL_ACT_X'),
      actXStride: word('CTL_ACT_X_STRIDE'),
      out: word('CTL_OUT'),
      act16: word('CTL_ACT16'),
      f16Table: word('CTL_F16_TABLE'),
      aKeys: word('CTL_A_KEYS'),
      aValues: word('CTL_A_VALUES'),
      aQ: word('CTL_A_Q'),
      aOut: word('CTL_A_OUT'),
      aAtt: word('CTL_A_ATT'),
      aAttStride: word('CTL_A_ATT_STRIDE'),
      aNKv: word('CTL_A_N_KV'),
      aGroup: word('CTL_A_GROUP'),
      aHeadDim: word('CTL_A_HEAD_DIM'),
      aStart: word('CTL_A_START'),
      aN: word('CTL_A_N'),
      aHalf: word('CTL_A_HALF'),
      bytes: word('CTL_BYTES') * 4,
      stop: op('OP_STOP'),
      attend: op('OP_ATTEND'),
      swiglu: op('OP_SWIGLU'),
      f16ToF32: op('OP_F16_TO_F32'),
    },
  };
}
