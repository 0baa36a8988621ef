// The wasm backend's memory: one shared WebAssembly.Memory holding the control block, every
// weight (alloc() is a bump allocator in it, so the model reads each tensor from the GGUF
// file straight into memory the kernels address) and one scratch region for the inputs,
// activations and outputs of a job. Growing a shared memory never detaches the
// SharedArrayBuffers handed out before, so the views alloc() returned stay valid; wasm32
// addresses at most 4 GiB. Nothing is freed before the backend closes.

import { WasmBackendError } from './module.ts';

const PAGE = 65536;
const WASM32_PAGES = 65536; // 4 GiB: all a 32-bit address reaches
/** A cache line: weights and scratch never share one across threads. */
export const ALIGN = 64;

export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * A shared memory as large as this host lets us reserve: V8 reserves a shared memory's
 * maximum up front (it can never move), which a 32-bit process cannot do for 4 GiB.
 */
export function sharedMemory(maxBytes: number | undefined): { memory: WebAssembly.Memory; maxBytes: number } {
  const is32 = process.arch === 'arm' || process.arch === 'ia32';
  let pages = Math.min(WASM32_PAGES, Math.floor((maxBytes ?? (is32 ? 2 ** 30 : 2 ** 32)) / PAGE));
  if (pages < 1) throw new WasmBackendError('WASM_ARGUMENT', `maxMemoryBytes ${maxBytes} is below one 64 KiB page`);
  for (;;) {
    try {
      return { memory: new WebAssembly.Memory({ initial: 1, maximum: pages, shared: true }), maxBytes: pages * PAGE };
    } catch (err) {
      if (pages <= 256)
        throw new WasmBackendError('WASM_UNAVAILABLE', `cannot create a shared memory: ${(err as Error).message}`);
      pages >>= 1;
    }
  }
}

/**
 * Tells V8 that the process grew by `bytes` outside its heap, as an ArrayBuffer's backing
 * store does. V8 does not count a shared memory as external memory, so loading a model
 * into one triggers none of the garbage collections that loading into the native
 * backend's external ArrayBuffers does, and without a mark-compact while the main thread
 * allocates little the main isolate keeps the young generation it grew parsing the
 * vocabulary: 8 MiB more peak RSS, measured with TinyLlama. The only way to tell V8 from
 * JavaScript is to allocate an ArrayBuffer of that size, which it counts, and drop it;
 * its pages are never touched, so never resident. At least 33 MiB, above glibc's largest
 * dynamic mmap threshold (32 MiB): a smaller block, freed, raises the threshold, and
 * later mid-sized callocs then come from the malloc heap, where they are zeroed, so made
 * resident, whole (measured: 12 MiB more peak RSS than without the hint).
 */
function reportExternalGrowth(bytes: number): void {
  try {
    void new ArrayBuffer(Math.max(bytes, 33 * 2 ** 20));
  } catch {
    // Out of address space (a 32-bit host) or commit limit: this is only a hint to the GC.
  }
}

export class Arena {
  /** Every buffer memory.buffer has returned: views into any of them are ours. */
  private readonly buffers = new WeakSet<ArrayBufferLike>();
  private views = { f32: new Float32Array(0), u16: new Uint16Array(0), u8: new Uint8Array(0) };
  private top: number;
  private scratch = { ptr: 0, bytes: 0 };

  /** An arena of `memory` (which may grow to maxBytes) whose allocations start at `base`. */
  constructor(
    readonly memory: WebAssembly.Memory,
    readonly maxBytes: number,
    base: number,
  ) {
    this.top = base;
    this.refreshViews();
  }

  /** The whole memory as f32, u16 and u8, for copying operands in and results out. */
  get f32(): Float32Array {
    return this.views.f32;
  }
  get u16(): Uint16Array {
    return this.views.u16;
  }
  get u8(): Uint8Array {
    return this.views.u8;
  }

  /** Bytes in use (weights, scratch and what lies below the base). */
  get usedBytes(): number {
    return this.top;
  }

  /** Zeroed, 64-byte aligned memory the kernels read in place. */
  alloc(bytes: number): Uint8Array {
    const ptr = this.reserve(bytes); // first: it may grow the memory, replacing memory.buffer
    return new Uint8Array(this.memory.buffer, ptr, bytes);
  }

  /** The scratch region, grown (by allocating a larger one) to at least `bytes`. */
  scratchFor(bytes: number): number {
    if (bytes > this.scratch.bytes) {
      const size = Math.max(bytes, this.scratch.bytes * 2, 64 * 1024);
      this.scratch = { ptr: this.reserve(size), bytes: size };
    }
    return this.scratch.ptr;
  }

  /** Whether the kernels address `data` where it is (it lies in this memory). */
  owns(data: Uint8Array): boolean {
    return this.buffers.has(data.buffer);
  }

  /** Bump-allocates `bytes` at a 64-byte boundary, growing the memory as needed. */
  reserve(bytes: number): number {
    const ptr = alignUp(this.top, ALIGN);
    const end = ptr + bytes;
    if (end > this.maxBytes) {
      const gib = (v: number) => `${(v / 2 ** 30).toFixed(2)} GiB`;
      throw new WasmBackendError(
        'WASM_MEMORY_LIMIT',
        `cannot allocate ${bytes} bytes: ${gib(this.top)} in use and the shared memory is capped at ${gib(this.maxBytes)}` +
          (this.maxBytes >= 2 ** 32 ? ' (all that wasm32 can address)' : '') +
          '; hold fewer layers on this node or use another backend',
      );
    }
    const have = this.memory.buffer.byteLength;
    if (end > have) {
      // Grow by at least an eighth so loading a model tensor by tensor grows rarely.
      const want = Math.min(this.maxBytes, Math.max(end, have + have / 8));
      const pages = Math.ceil((want - have) / PAGE);
      this.memory.grow(pages);
      this.refreshViews();
      reportExternalGrowth(pages * PAGE);
    }
    this.top = end;
    return ptr;
  }

  private refreshViews(): void {
    const buf = this.memory.buffer;
    this.buffers.add(buf);
    this.views = { f32: new Float32Array(buf), u16: new Uint16Array(buf), u8: new Uint8Array(buf) };
  }
}
