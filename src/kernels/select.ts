// Choosing the kernel backend: `auto` takes the fastest one this machine has (native when
// the addon built at install time loads, else wasm, else the js reference).

import { JsBackend, type BackendName, type KernelBackend } from './backend.ts';
import { MAX_THREADS } from './checks.ts';

export type BackendChoice = 'auto' | BackendName;
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'native', 'wasm', 'js'];

export interface SelectOptions {
  /** Threads for the products; default: the machine's physical cores (at most MAX_THREADS). */
  threads?: number;
  /** Told once why `auto` did not take a faster backend. */
  note?: (message: string) => void;
}

/** Physical cores (hyper-threads share a core's memory bandwidth and SIMD units). */
export async function physicalCores(): Promise<number> {
  const { cpu } = await import('systeminformation');
  const c = await cpu();
  const { availableParallelism } = await import('node:os');
  return c.physicalCores > 0 ? c.physicalCores : availableParallelism();
}

export async function createBackend(choice: BackendChoice, opts: SelectOptions = {}): Promise<KernelBackend> {
  const threads = opts.threads ?? (choice === 'js' ? 1 : Math.min(await physicalCores(), MAX_THREADS));
  if (choice === 'js') return new JsBackend();
  if (choice === 'native' || choice === 'auto') {
    const { NativeBackend, isNativeAvailable } = await import('./native/index.ts');
    if (choice === 'native' || isNativeAvailable()) return NativeBackend.create({ threads });
    opts.note?.('native kernels are not built on this machine (no compiler at install time?): using wasm');
  }
  const { WasmBackend } = await import('./wasm/backend.ts');
  if (choice === 'wasm') return WasmBackend.create({ threads });
  try {
    return await WasmBackend.create({ threads });
  } catch (e) {
    opts.note?.(`wasm kernels unavailable (${(e as Error).message}): using the js reference`);
    return new JsBackend();
  }
}
