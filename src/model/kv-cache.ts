// Keys and values of past positions for a range of layers: one sequence's memory.
// f16 storage halves the memory, as llama.cpp's default cache does.

import { f32ToF16 } from '../ggml/half.ts';

export type KvType = 'f32' | 'f16';

export class KvCache {
  /** Per layer of the range: ctx × kvDim keys and values. */
  readonly keys: (Float32Array | Uint16Array)[] = [];
  readonly values: (Float32Array | Uint16Array)[] = [];

  constructor(
    readonly type: KvType,
    readonly nLayers: number,
    readonly ctx: number,
    readonly kvDim: number,
  ) {
    // One allocation for every layer (a few past the typed array length limit), views per layer:
    // a large calloc() is fresh mmap()ed memory, resident only as positions are written, whereas
    // small per-layer buffers may come from the malloc heap, where calloc() zeroes them up front.
    const Store = type === 'f32' ? Float32Array : Uint16Array;
    const n = ctx * kvDim;
    const perBlock = Math.max(1, Math.min(nLayers, Math.floor(2 ** 30 / (2 * n))));
    let block = new Store(0);
    for (let l = 0; l < nLayers; l++) {
      const i = l % perBlock;
      if (i === 0) block = new Store(2 * Math.min(perBlock, nLayers - l) * n);
      this.keys.push(block.subarray(2 * i * n, (2 * i + 1) * n));
      this.values.push(block.subarray((2 * i + 1) * n, (2 * i + 2) * n));
    }
  }

  /** Bytes a cache of this type and shape takes, before making one. */
  static size(type: KvType, nLayers: number, ctx: number, kvDim: number): number {
    return 2 * nLayers * ctx * kvDim * (type === 'f32' ? 4 : 2);
  }

  get bytes(): number {
    return KvCache.size(this.type, this.nLayers, this.ctx, this.kvDim);
  }

  /** Stores the key and value vectors of position pos for layer l (index within the range). */
  write(l: number, pos: number, k: Float32Array, v: Float32Array): void {
    const off = pos * this.kvDim;
    const kc = this.keys[l];
    const vc = this.values[l];
    if (kc instanceof Float32Array && vc instanceof Float32Array) {
      kc.set(k.subarray(0, this.kvDim), off);
      vc.set(v.subarray(0, this.kvDim), off);
    } else {
      for (let i = 0; i < this.kvDim; i++) {
        kc[off + i] = f32ToF16(k[i]);
        vc[off + i] = f32ToF16(v[i]);
      }
    }
  }
}
