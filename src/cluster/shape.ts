// A model's shape for the planner, read from the GGUF tensor index (no weights are read).

import type { GgufFile } from '../gguf/reader.ts';
import { readConfig } from '../model/config.ts';
import type { KvType } from '../model/kv-cache.ts';
import type { ModelShape } from './planner.ts';

export function modelShape(file: GgufFile, ctx: number, kvType: KvType): ModelShape {
  const c = readConfig(file);
  const layerBytes = new Array<number>(c.nLayers).fill(0);
  for (const t of file.tensors) {
    const m = /^blk\.(\d+)\./.exec(t.name);
    if (m && Number(m[1]) < c.nLayers) layerBytes[Number(m[1])] += t.nBytes;
  }
  const size = (name: string) => file.tensor(name)?.nBytes ?? 0;
  const tiedHead = !file.tensor('output.weight');
  const embedBytes = size('token_embd.weight');
  const kvDim = c.nKvHeads * c.headDim;
  const f32 = 4;
  const bufferBytes = f32 * (3 * c.dim + 2 * c.nHeads * c.headDim + 2 * kvDim + ctx + 2 * c.ffnDim + c.vocabSize);
  return {
    nLayers: c.nLayers,
    layerBytes,
    embedBytes,
    headBytes: (tiedHead ? embedBytes : size('output.weight')) + size('output_norm.weight'),
    tiedHead,
    sharedBytes: size('rope_freqs.weight'),
    kvBytesPerLayer: 2 * ctx * kvDim * (kvType === 'f16' ? 2 : 4),
    bufferBytes,
    dim: c.dim,
    kvHeads: c.nKvHeads,
    vocabSize: c.vocabSize,
  };
}
