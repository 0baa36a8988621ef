// A shard is a plain value shared by planner, node and coordinator: which model (by hash) and
// which contiguous layer range. shardTensorNames says which tensors a range needs.

import type { GgufFile } from '../../gguf/reader.ts';
import type { TensorShare } from '../../model/tensor-share.ts';

export interface Shard {
  /** sha256 hex of the whole GGUF file. */
  readonly modelHash: string;
  readonly start: number;
  readonly end: number;
  readonly nLayers: number;
}

export const HASH_RE = /^[0-9a-f]{64}$/;

export function shardKey(s: { modelHash: string; start: number; end: number }): string {
  return `${s.modelHash}:${s.start}-${s.end}`;
}

export function describeShard(s: { modelHash: string; start: number; end: number }): string {
  return `layers [${s.start}, ${s.end}) of model ${s.modelHash.slice(0, 12)}`;
}

/**
 * The tensors a stage holding layers [start, end) reads: its layers' blk.N.* tensors, the
 * token embedding on the first stage (and on the last when the head is tied to it), the
 * output norm and head on the last stage, and rope_freqs when present.
 */
export function shardTensorNames(file: GgufFile, start: number, end: number, nLayers: number): string[] {
  const names: string[] = [];
  const tied = !file.tensor('output.weight');
  for (const t of file.tensors) {
    const m = /^blk\.(\d+)\./.exec(t.name);
    if (m) {
      const l = Number(m[1]);
      if (l >= start && l < end) names.push(t.name);
    } else if (t.name === 'token_embd.weight') {
      if (start === 0 || (tied && end === nLayers)) names.push(t.name);
    } else if (t.name === 'rope_freqs.weight') {
      names.push(t.name);
    } else if ((t.name === 'output_norm.weight' || t.name === 'output.weight') && end === nLayers) {
      names.push(t.name);
    }
  }
  return names;
}

/**
 * A member's share of [start, end) in a group of `size`, file-name safe: its slice's name and
 * its manifest's, e.g. "0-22.m1of2.kv2-4.ffn2816-5632.v16000-32000" (sliceName reads it back).
 */
export function shareName(start: number, end: number, size: number, s: TensorShare): string {
  const [k0, k1] = s.kvHeads;
  const [f0, f1] = s.ffnRows;
  const v = s.vocabRows ? `.v${s.vocabRows[0]}-${s.vocabRows[1]}` : '';
  return `${start}-${end}.m${s.member}of${size}.kv${k0}-${k1}.ffn${f0}-${f1}${v}`;
}

/** A cached slice file's range and whether it holds a member's share (its name: "start-end.gguf" or shareName's). */
export function sliceName(file: string): { start: number; end: number; share: boolean } | undefined {
  const m = /^(\d+)-(\d+)(\.m\d+of\d+\.kv\d+-\d+\.ffn\d+-\d+(?:\.v\d+-\d+)?)?\.gguf$/.exec(file);
  return m ? { start: Number(m[1]), end: Number(m[2]), share: m[3] !== undefined } : undefined;
}

/** Tensors only a stage's leader reads: the group's other members get hidden states from it and send none on. */
const LEADER_ONLY = new Set(['token_embd.weight', 'output_norm.weight', 'output.weight']);
/** ... unless the share has rows of the head: then it also computes those rows' logits. */
const HEAD = new Set(['output_norm.weight', 'output.weight']);

/**
 * The tensors a member of a tensor-parallel group holding [start, end) reads (each whole or its
 * part, model/share-cut.ts): the range's, less the embedding and head for all but the leader
 * (member 0), which embeds the tokens — and the head too, unless the share has head rows.
 */
export function shareTensorNames(
  file: GgufFile,
  start: number,
  end: number,
  nLayers: number,
  share: TensorShare,
): string[] {
  const names = shardTensorNames(file, start, end, nLayers);
  if (share.member === 0) return names;
  return names.filter((n) => !LEADER_ONLY.has(n) || (share.vocabRows !== undefined && HEAD.has(n)));
}

/** Whether a tensor name may belong to the slice of [start, end) (checks what a peer sends). */
export function tensorBelongs(name: string, start: number, end: number, nLayers: number): boolean {
  const m = /^blk\.(\d+)\.[A-Za-z0-9_.]+$/.exec(name);
  if (m) {
    const l = Number(m[1]);
    return l >= start && l < end;
  }
  if (name === 'token_embd.weight' || name === 'rope_freqs.weight') return true;
  return (name === 'output_norm.weight' || name === 'output.weight') && end === nLayers;
}
