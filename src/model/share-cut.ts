// Which part of each tensor a tensor-parallel member's share is (tensor-share.ts says whose
// heads and rows): rows of attn_q, attn_k, attn_v, ffn_gate and ffn_up; columns of
// attn_output and ffn_down; the matching elements of the q, k, v biases; rows of output.weight
// when the share has head rows; every other tensor whole. A cut is the same run of bytes in every row of the tensor (one run for a row cut, since
// rows are contiguous), so the coordinator hashes and sends only those bytes, and a member
// reads its share out of a whole model file the same way it reads a slice of only its share.

import { ggmlTypeInfo } from '../ggml/types.ts';
import type { ModelConfig } from './config.ts';
import { TensorShareError, type TensorShare } from './tensor-share.ts';

/** Rows or columns [start, end) of a tensor's matrix (a 1-D tensor is one row). */
export interface TensorCut {
  readonly axis: 'rows' | 'cols';
  readonly start: number;
  readonly end: number;
}

/** Where a tensor's part lies in its data: `count` runs of `length` bytes, `stride` apart from `first`. */
export interface CutLayout {
  /** The part's shape (ggml order) and bytes. */
  readonly dims: readonly number[];
  readonly nBytes: number;
  readonly first: number;
  readonly length: number;
  readonly stride: number;
  readonly count: number;
}

const SPLIT = /^blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.(weight|bias)$/;

/** The cut of tensor `name` in `share`; undefined for a tensor every member holds whole. */
export function shareCut(name: string, c: ModelConfig, share: TensorShare): TensorCut | undefined {
  if (name === 'output.weight' && share.vocabRows)
    return { axis: 'rows', start: share.vocabRows[0], end: share.vocabRows[1] };
  const m = SPLIT.exec(name);
  if (!m) return undefined;
  const [, kind, what] = m;
  const group = c.nHeads / c.nKvHeads;
  const [k0, k1] = share.kvHeads;
  const q = { start: k0 * group * c.headDim, end: k1 * group * c.headDim };
  const kv = { start: k0 * c.headDim, end: k1 * c.headDim };
  const ffn = { start: share.ffnRows[0], end: share.ffnRows[1] };
  // a bias is one row: its elements are columns
  const along = what === 'bias' ? 'cols' : 'rows';
  switch (kind) {
    case 'attn_q':
      return { axis: along, ...q };
    case 'attn_k':
    case 'attn_v':
      return { axis: along, ...kv };
    case 'attn_output':
      return what === 'weight' ? { axis: 'cols', ...q } : undefined;
    case 'ffn_gate':
    case 'ffn_up':
      return what === 'weight' ? { axis: 'rows', ...ffn } : undefined;
    default: // ffn_down
      return what === 'weight' ? { axis: 'cols', ...ffn } : undefined;
  }
}

/**
 * The layout of `cut` (whole when undefined) within a tensor of this shape and type. Throws
 * TensorShareError naming the tensor and `who` (e.g. "member 1's share") when the cut is not
 * within it, or a column cut does not fall on its type's block boundaries.
 */
export function cutLayout(
  t: { readonly name: string; readonly dims: readonly number[]; readonly ggmlType: number },
  cut: TensorCut | undefined,
  who: string,
): CutLayout {
  const info = ggmlTypeInfo(t.ggmlType);
  if (!info) throw new TensorShareError(`tensor ${t.name} has unknown type ${t.ggmlType}`);
  const cols = t.dims[0];
  const rows = t.dims.slice(1).reduce((a, b) => a * b, 1);
  const rowBytes = (cols / info.blockSize) * info.typeSize;
  if (!cut) return { dims: t.dims, nBytes: rows * rowBytes, first: 0, length: rows * rowBytes, stride: 0, count: 1 };
  const { start, end } = cut;
  const of = cut.axis === 'rows' ? rows : cols;
  const what = `tensor ${t.name} [${t.dims.join(', ')}], ${who}: ${cut.axis === 'rows' ? 'rows' : 'columns'} [${start}, ${end})`;
  if (!(Number.isSafeInteger(start) && Number.isSafeInteger(end) && 0 <= start && start < end && end <= of))
    throw new TensorShareError(`${what} are not within its ${of}`);
  if (t.dims.length > 2 || (cut.axis === 'rows' && t.dims.length !== 2))
    throw new TensorShareError(`${what}: only a matrix's rows or a matrix's or vector's columns are cut`);
  if (cut.axis === 'rows') {
    const n = end - start;
    return {
      dims: [cols, n],
      nBytes: n * rowBytes,
      first: start * rowBytes,
      length: n * rowBytes,
      stride: 0,
      count: 1,
    };
  }
  if (start % info.blockSize !== 0 || end % info.blockSize !== 0)
    throw new TensorShareError(`${what} do not fall on ${info.name} block boundaries (every ${info.blockSize})`);
  const length = ((end - start) / info.blockSize) * info.typeSize;
  return {
    dims: t.dims.length === 1 ? [end - start] : [end - start, rows],
    nBytes: rows * length,
    first: (start / info.blockSize) * info.typeSize,
    length,
    stride: rowBytes,
    count: rows,
  };
}

/** Copies the part `layout` describes out of a tensor's data (in memory) into dst (layout.nBytes). */
export function copyCut(data: Uint8Array, layout: CutLayout, dst: Uint8Array): void {
  for (let i = 0; i < layout.count; i++) {
    const from = layout.first + i * layout.stride;
    dst.set(data.subarray(from, from + layout.length), i * layout.length);
  }
}

/** Whether two cuts are the same (both absent included). */
export function sameCut(a: TensorCut | undefined, b: TensorCut | undefined): boolean {
  return a === b || (a !== undefined && b !== undefined && a.axis === b.axis && a.start === b.start && a.end === b.end);
}
