// The seed files the GGUF fuzzer mutates: the real models in the repository (the bundled f32
// stories260K, its Q8_0 and Q4_0 variants), a real tokenizer-only vocabulary, the small base
// file of the malformed-file corpus (test/gguf-malformed.test.ts: every metadata type, nested
// arrays, three tensor types) and a qwen3 model made from stories260K, so the loader's qwen
// paths (per-head q/k norms, NeoX RoPE) are fuzzed too, and a middle slice of stories260K as a
// node keeps one in its cache (no embedding, no head: the vocabulary size comes from metadata).

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GgmlType } from '../../src/ggml/types.ts';
import { GgufFile } from '../../src/gguf/reader.ts';
import { copyMetadata, meta, writeGguf, type MetaEntry, type TensorSpec } from '../../src/gguf/writer.ts';
import { writeMalformedBase } from '../../test/helpers/gguf-malformed-base.ts';
import { walkGguf, type Layout } from '../../test/helpers/gguf-layout.ts';

export interface Seed {
  readonly name: string;
  readonly bytes: Uint8Array;
  readonly layout: Layout;
  /** Relative weight when picking a seed for a case. */
  readonly weight: number;
}

const repo = fileURLToPath(new URL('../../', import.meta.url));
export const SEED_FILES = {
  stories: join(repo, 'models/stories260K.gguf'),
  storiesQ8: join(repo, 'test/fixtures/models/stories260K-q8_0.gguf'),
  storiesQ4: join(repo, 'test/fixtures/models/stories260K-q4_0.gguf'),
  vocab: join(repo, 'test/fixtures/vocab/ggml-vocab-bert-bge.gguf'),
} as const;

function seed(name: string, bytes: Uint8Array, weight: number): Seed {
  return { name, bytes, layout: walkGguf(bytes), weight };
}

/** Builds the seeds; `dir` holds the files written on the way. */
export function buildCorpus(dir: string): Seed[] {
  const read = (p: string) => new Uint8Array(readFileSync(p));
  return [
    seed('malformed-base', writeMalformedBase(join(dir, 'seed-base.gguf')), 4),
    seed('stories260K-q4_0', read(SEED_FILES.storiesQ4), 3),
    seed('stories260K-q8_0', read(SEED_FILES.storiesQ8), 2),
    seed('stories260K-f32', read(SEED_FILES.stories), 1),
    seed('qwen3-from-stories', writeQwen3(join(dir, 'seed-qwen3.gguf')), 2),
    seed('slice-of-stories', writeMiddleSlice(join(dir, 'seed-slice.gguf')), 2),
    seed('vocab-bert-bge', read(SEED_FILES.vocab), 1),
  ];
}

/** stories260K (Q8_0) relabelled qwen3, with per-head q/k norm weights added to every layer. */
function writeQwen3(path: string): Uint8Array {
  const src = GgufFile.open(SEED_FILES.storiesQ8);
  const renamed: MetaEntry[] = copyMetadata(src).map((e) => {
    if (e.key === 'general.architecture') return meta.str(e.key, 'qwen3');
    return e.key.startsWith('llama.') ? { ...e, key: `qwen3.${e.key.slice('llama.'.length)}` } : e;
  });
  const headDim = src.number('llama.embedding_length') / src.number('llama.attention.head_count');
  const ones = new Uint8Array(new Float32Array(headDim).fill(1).buffer);
  const tensors: TensorSpec[] = src.tensors.map((t) => ({
    name: t.name,
    dims: t.dims,
    type: t.type.id,
    data: src.readTensor(t),
  }));
  for (let l = 0; l < src.number('llama.block_count'); l++) {
    for (const n of ['attn_q_norm', 'attn_k_norm'])
      tensors.push({ name: `blk.${l}.${n}.weight`, dims: [headDim], type: GgmlType.F32, data: ones });
  }
  writeGguf(path, { metadata: renamed, tensors });
  return new Uint8Array(readFileSync(path));
}

/** Layers 1..3 of stories260K (Q4_0) and its metadata with llama.vocab_size, like a node's cached slice. */
function writeMiddleSlice(path: string): Uint8Array {
  const src = GgufFile.open(SEED_FILES.storiesQ4);
  const metadata = [...copyMetadata(src), meta.u32('llama.vocab_size', src.requireTensor('token_embd.weight').dims[1])];
  const tensors: TensorSpec[] = src.tensors
    .filter((t) => /^blk\.[123]\./.test(t.name))
    .map((t) => ({ name: t.name, dims: t.dims, type: t.type.id, data: src.readTensor(t) }));
  writeGguf(path, { metadata, tensors });
  return new Uint8Array(readFileSync(path));
}
