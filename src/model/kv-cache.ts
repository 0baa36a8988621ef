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
    const Store = type === 'f32' ? Float32Array : Uint16Array;
    for (let l = 0; l < nLayers; l++) {
      this.keys.push(new Store(ctx * kvDim));
      this.values.push(new Store(ctx * kvDim));
    }
  }

  get bytes(): number {
    return 2 * this.nLayers * this.ctx * this.kvDim * (this.type === 'f32' ? 4 : 2);
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
