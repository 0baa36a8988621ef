// How a tensor-parallel group shares a layer range: each member takes a run of KV heads (its
// query heads' rows of q, its KV heads' rows of k and v, the matching columns of attn_output)
// and a run of FFN rows (rows of gate and up, the matching columns of down). Rows of a
// row-major quantized matrix can be cut anywhere; columns only where a quantization block
// starts, so the cut points of attn_output's and ffn_down's columns must be multiples of their
// block size (1 for f32/f16, 32 for Q4_0/Q8_0…, 256 for the K-quants) in every layer of the
// range. Within those steps the work is shared in proportion to the members' weights
// (measured speed), every member getting at least one step of each. A range that ends with the
// model's own head (output.weight, not tied to the embedding) also shares the head's vocabulary
// rows: each member computes its rows' logits and the leader gathers them (node/group.ts), so
// the head no longer costs the leader alone a whole matrix per token.

import type { GgufFile } from '../gguf/reader.ts';
import { ModelError, type ModelConfig } from './config.ts';

export interface TensorShare {
  readonly member: number;
  /** KV heads [start, end); the member's query heads are [start·group, end·group) (group = nHeads / nKvHeads). */
  readonly kvHeads: readonly [number, number];
  /** Rows [start, end) of ffn_gate and ffn_up, the same columns of ffn_down. */
  readonly ffnRows: readonly [number, number];
  /** Rows [start, end) of the output head (vocabulary ids) the member computes; absent: the leader runs the whole head. */
  readonly vocabRows?: readonly [number, number];
}

/** Names a share in errors: "member 1's share (KV heads [2, 4), FFN rows [704, 1408), head rows [16000, 32000))". */
export function describeShare(s: TensorShare): string {
  const v = s.vocabRows ? `, head rows [${s.vocabRows[0]}, ${s.vocabRows[1]})` : '';
  return `member ${s.member}'s share (KV heads [${s.kvHeads[0]}, ${s.kvHeads[1]}), FFN rows [${s.ffnRows[0]}, ${s.ffnRows[1]})${v})`;
}

/** A tensor-parallel member's share as herd's JSON outputs show it (plan, run --json, /api/state). */
export interface ShareJson {
  readonly kv_heads: [number, number];
  readonly ffn_rows: [number, number];
  /** Rows of the output head whose logits the member computes (absent: the leader runs it whole). */
  readonly vocab_rows?: [number, number];
}

export function shareJson(s: TensorShare): ShareJson {
  return {
    kv_heads: [s.kvHeads[0], s.kvHeads[1]],
    ffn_rows: [s.ffnRows[0], s.ffnRows[1]],
    ...(s.vocabRows && { vocab_rows: [s.vocabRows[0], s.vocabRows[1]] as [number, number] }),
  };
}

/** Head rows are shared in steps of this many (a multiple of every kernel's row tile, so a row's logit is computed alike whoever holds it). */
export const VOCAB_STEP = 64;

/** What constrains the cuts: the model's shapes and the block sizes of the column-cut matrices. */
export interface SplitShape {
  readonly config: ModelConfig;
  /** Column cuts of attn_output must fall on multiples of this (the blocks of every layer in the range). */
  readonly attnOutBlock: number;
  /** Column cuts of ffn_down must fall on multiples of this. */
  readonly ffnDownBlock: number;
  /** The types the blocks come from, for error messages (e.g. "Q4_0"). */
  readonly attnOutTypes: readonly string[];
  readonly ffnDownTypes: readonly string[];
  /** The range ends with an untied head (output.weight), whose rows the members share. */
  readonly headRows: boolean;
}

export class TensorShareError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TensorShareError';
  }
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

const lcm = (a: number, b: number) => (a / gcd(a, b)) * b;

/** The split constraints of layers [start, end) of a model file. */
export function splitShape(file: GgufFile, config: ModelConfig, layers?: readonly [number, number]): SplitShape {
  const [start, end] = layers ?? [0, config.nLayers];
  let attnOutBlock = 1;
  let ffnDownBlock = 1;
  const attnOutTypes = new Set<string>();
  const ffnDownTypes = new Set<string>();
  for (let l = start; l < end; l++) {
    for (const [name, types, set] of [
      [`blk.${l}.attn_output.weight`, attnOutTypes, (b: number) => (attnOutBlock = lcm(attnOutBlock, b))],
      [`blk.${l}.ffn_down.weight`, ffnDownTypes, (b: number) => (ffnDownBlock = lcm(ffnDownBlock, b))],
    ] as const) {
      const t = file.tensor(name);
      if (!t) throw new ModelError(file.path, `tensor "${name}" is missing`);
      types.add(t.type.name);
      set(t.type.blockSize);
    }
  }
  return {
    config,
    attnOutBlock,
    ffnDownBlock,
    attnOutTypes: [...attnOutTypes],
    ffnDownTypes: [...ffnDownTypes],
    headRows: end === config.nLayers && file.tensor('output.weight') !== undefined,
  };
}

/**
 * Each member's share, in proportion to `weights` (one positive number per member, e.g. its
 * measured tokens per second), in the smallest steps the block sizes allow. Throws
 * TensorShareError, saying which constraint failed, when the group cannot split the layers.
 */
export function shares(shape: SplitShape, weights: readonly number[]): TensorShare[] {
  const g = weights.length;
  if (g < 1) throw new TensorShareError('a group needs at least one member');
  for (const [i, w] of weights.entries())
    if (!(Number.isFinite(w) && w > 0))
      throw new TensorShareError(`member ${i}'s weight must be a positive number, got ${w}`);
  const c = shape.config;
  const group = c.nHeads / c.nKvHeads;

  // attention: a cut after k KV heads is at column k·group·headDim of attn_output
  const headCols = group * c.headDim;
  const kvStep = shape.attnOutBlock / gcd(shape.attnOutBlock, headCols);
  const kvUnits = c.nKvHeads / kvStep;
  if (!Number.isInteger(kvUnits) || kvUnits < g)
    throw new TensorShareError(
      `attention cannot be shared by ${g} members: its ${c.nKvHeads} KV heads go in steps of ${kvStep} ` +
        `(attn_output is ${shape.attnOutTypes.join('/')}, whose columns are cut at multiples of ${shape.attnOutBlock}; ` +
        `a KV head is ${headCols} columns), so at most ${Math.floor(c.nKvHeads / kvStep)} members`,
    );

  // FFN: a cut after r rows is at column r of ffn_down
  const ffnUnits = c.ffnDim / shape.ffnDownBlock;
  if (!Number.isInteger(ffnUnits) || ffnUnits < g)
    throw new TensorShareError(
      `the FFN cannot be shared by ${g} members: its ${c.ffnDim} rows go in steps of ${shape.ffnDownBlock} ` +
        `(ffn_down is ${shape.ffnDownTypes.join('/')}), so at most ${Math.floor(c.ffnDim / shape.ffnDownBlock)} members`,
    );

  const kv = apportion(kvUnits, weights);
  const ffn = apportion(ffnUnits, weights);
  // the head's rows in steps of VOCAB_STEP, the last member's run ending at the vocabulary's end
  const vocabUnits = Math.ceil(c.vocabSize / VOCAB_STEP);
  const vocab = shape.headRows && vocabUnits >= g ? apportion(vocabUnits, weights) : undefined;
  const out: TensorShare[] = [];
  let k0 = 0;
  let f0 = 0;
  let v0 = 0;
  for (let i = 0; i < g; i++) {
    const k1 = k0 + kv[i] * kvStep;
    const f1 = f0 + ffn[i] * shape.ffnDownBlock;
    const share: TensorShare = { member: i, kvHeads: [k0, k1], ffnRows: [f0, f1] };
    if (vocab) {
      const v1 = Math.min(v0 + vocab[i] * VOCAB_STEP, c.vocabSize);
      out.push({ ...share, vocabRows: [v0, v1] });
      v0 = v1;
    } else out.push(share);
    k0 = k1;
    f0 = f1;
  }
  return out;
}

/**
 * `units` indivisible steps shared in proportion to weights, at least one each (largest
 * remainder: floors of the exact quotas, then the leftovers to the largest remainders).
 */
export function apportion(units: number, weights: readonly number[]): number[] {
  const total = weights.reduce((a, b) => a + b, 0);
  const quota = weights.map((w) => (units * w) / total);
  const n = quota.map((q) => Math.max(1, Math.floor(q)));
  let sum = n.reduce((a, b) => a + b, 0);
  // Minimums of one may overshoot: take back from whoever is furthest above its quota.
  while (sum > units) {
    let worst = -1;
    for (let i = 0; i < n.length; i++)
      if (n[i] > 1 && (worst < 0 || n[i] - quota[i] > n[worst] - quota[worst])) worst = i;
    n[worst]--;
    sum--;
  }
  while (sum < units) {
    let best = 0;
    for (let i = 1; i < n.length; i++) if (quota[i] - n[i] > quota[best] - n[best]) best = i;
    n[best]++;
    sum++;
  }
  return n;
}
