// A tensor-parallel member's weights: its share (tensor-share.ts) of every layer of its range.
// The file holds each tensor either whole (a model file in --model-dir, tests) or already cut
// to the share (a member's slice, fetched from the coordinator: cluster/shard); either way only
// the share's bytes are read (share-cut.ts says which). Norms are replicated whole; the token
// embedding is read by the leader of a range that has it (only the leader embeds, node/group.ts);
// the output head by every member with head rows (its rows), or else by the leader alone (whole).

import { closeSync, openSync, readSync } from 'node:fs';
import type { GgufFile, TensorInfo } from '../gguf/reader.ts';
import { makeWeight, getRow, type Weight } from '../kernels/matvec.ts';
import type { KernelBackend } from '../kernels/backend.ts';
import { kernelType, supportedTypes } from '../kernels/types.ts';
import { ModelError, type ModelConfig } from './config.ts';
import { readLayer, type LayerWeights } from './weights.ts';
import { cutLayout, shareCut, type CutLayout } from './share-cut.ts';
import { describeShare, type TensorShare } from './tensor-share.ts';

export interface ShareWeights {
  readonly start: number;
  readonly end: number;
  readonly share: TensorShare;
  /** Query heads and KV heads the member computes. */
  readonly nHeads: number;
  readonly nKvHeads: number;
  /** FFN rows the member computes. */
  readonly ffnRows: number;
  readonly layers: LayerWeights[];
  readonly tokenEmbd?: Weight;
  readonly outputNorm?: Float32Array;
  readonly output?: Weight;
  readonly ropeFreqs?: Float32Array;
  /** Bytes read into the backend's memory (the share's matrices and the head). */
  readonly bytes: number;
}

type Alloc = (bytes: number) => Uint8Array;

/** Reads the runs of `layout` of tensor t from the open file into dst. */
function readCut(fd: number, path: string, t: TensorInfo, layout: CutLayout, dst: Uint8Array): void {
  for (let i = 0; i < layout.count; i++) {
    const at = t.fileOffset + layout.first + i * layout.stride;
    for (let got = 0; got < layout.length;) {
      const r = readSync(fd, dst, i * layout.length + got, Math.min(layout.length - got, 1 << 30), at + got);
      if (r === 0) throw new ModelError(path, `short read in tensor "${t.name}"`);
      got += r;
    }
  }
}

const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

/**
 * Loads the share of layers [start, end) from a file holding each tensor whole or cut to the
 * share, checking each tensor's shape against the model's or the share's.
 */
export function loadShareWeights(
  file: GgufFile,
  c: ModelConfig,
  start: number,
  end: number,
  share: TensorShare,
  backend: KernelBackend,
): ShareWeights {
  const group = c.nHeads / c.nKvHeads;
  const [k0, k1] = share.kvHeads;
  const [f0, f1] = share.ffnRows;
  if (!(Number.isInteger(k0) && Number.isInteger(k1) && 0 <= k0 && k0 < k1 && k1 <= c.nKvHeads))
    throw new RangeError(`member ${share.member}: KV heads [${k0}, ${k1}) are not within the ${c.nKvHeads} KV heads`);
  if (!(Number.isInteger(f0) && Number.isInteger(f1) && 0 <= f0 && f0 < f1 && f1 <= c.ffnDim))
    throw new RangeError(`member ${share.member}: FFN rows [${f0}, ${f1}) are not within the ${c.ffnDim} rows`);
  const who = describeShare(share);
  let bytes = 0;
  const fd = openSync(file.path, 'r');

  /** The share of tensor `name`, whose whole shape is `dims`, into memory from `alloc`. */
  const read = (
    name: string,
    dims: readonly number[],
    alloc: Alloc,
  ): { t: TensorInfo; dims: readonly number[]; data: Uint8Array; label: string } => {
    const t = file.tensor(name);
    if (!t) throw new ModelError(file.path, `tensor "${name}" is missing`);
    if (!kernelType(t.type.id))
      throw new ModelError(
        file.path,
        `tensor "${name}" has type ${t.type.name}, which herd cannot compute (it computes ${supportedTypes.map((s) => s.name).join(', ')})`,
      );
    const cut = shareCut(name, c, share);
    const whole = { name, dims, ggmlType: t.type.id };
    const part = cutLayout(whole, cut, who);
    // a slice holds the part (same shape), a model file the whole tensor (cut here)
    const layout = same(t.dims, part.dims)
      ? cutLayout({ ...whole, dims: part.dims }, undefined, who)
      : same(t.dims, dims)
        ? part
        : undefined;
    if (!layout)
      throw new ModelError(
        file.path,
        `tensor "${name}" has shape [${t.dims.join(', ')}], expected [${dims.join(', ')}] or ${who}: [${part.dims.join(', ')}]`,
      );
    const data = alloc(layout.nBytes);
    readCut(fd, file.path, t, layout, data);
    return { t, dims: part.dims, data, label: cut ? `${name}[${cut.axis} ${cut.start}:${cut.end}]` : name };
  };
  const toBackend: Alloc = (n) => {
    bytes += n;
    return backend.alloc(n);
  };
  const ordinary: Alloc = (n) => new Uint8Array(n);
  const weight = (name: string, cols: number, rows: number, alloc: Alloc = toBackend): Weight => {
    const r = read(name, [cols, rows], alloc);
    return makeWeight(r.label, r.t.type, r.dims, r.data);
  };
  const vector = (name: string, n: number): Float32Array => {
    const r = read(name, [n], ordinary);
    const out = new Float32Array(r.dims[0]);
    getRow(makeWeight(r.label, r.t.type, [r.dims[0], 1], r.data), 0, out);
    return out;
  };
  const optionalVector = (name: string, n: number) => (file.tensor(name) ? vector(name, n) : undefined);

  try {
    const layers: LayerWeights[] = [];
    for (let l = start; l < end; l++) layers.push(readLayer(c, l, { weight, vector, optionalVector }));
    const embdName = 'token_embd.weight';
    // Only looked up rows, the embedding stays in ordinary memory; the head is a matvec, so it goes where the kernels read.
    const tokenEmbd = start === 0 && file.tensor(embdName) ? weight(embdName, c.dim, c.vocabSize, ordinary) : undefined;
    const last = end === c.nLayers;
    // Tied embeddings: without output.weight the head is the token embedding matrix.
    const headName = file.tensor('output.weight') ? 'output.weight' : embdName;
    const runsHead = last && (share.member === 0 || share.vocabRows !== undefined);
    const output = runsHead && file.tensor(headName) ? weight(headName, c.dim, c.vocabSize) : undefined;
    const outputNorm = output ? vector('output_norm.weight', c.dim) : undefined;
    const ropeFreqs = optionalVector('rope_freqs.weight', c.ropeDims / 2);
    return {
      start,
      end,
      share,
      nHeads: (k1 - k0) * group,
      nKvHeads: k1 - k0,
      ffnRows: f1 - f0,
      layers,
      tokenEmbd,
      outputNorm,
      output,
      ropeFreqs,
      bytes,
    };
  } finally {
    closeSync(fd);
  }
}
