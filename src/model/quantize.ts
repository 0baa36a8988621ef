// Rewriting a model's weights in another type, with llama-quantize's choices: norms and other
// 1-D tensors stay f32, the output head of a K-quant mix gets Q6_K, and Q4_K_M/Q5_K_M give
// attn_v and ffn_down more bits in some layers. Used by `herd quantize` and `herd synth`.

import { GgufFile, type TensorInfo } from '../gguf/reader.ts';
import { copyMetadata, meta, writeGguf, type TensorSpec, type WrittenGguf } from '../gguf/writer.ts';
import { GgmlType, ggmlTypeInfo, rowBytes, type GgmlTypeInfo } from '../ggml/types.ts';
import { kernelType, type KernelType } from '../kernels/types.ts';

/** A target named like llama-quantize's: a plain type, or a K-quant mix. */
export interface QuantTarget {
  readonly name: string;
  /** The type most 2-D weights get. */
  readonly base: GgmlType;
  /** llama_ftype written as general.file_type. */
  readonly fileType: number;
  /** Q4_K_M / Q5_K_M: attn_v and ffn_down of some layers get Q6_K. */
  readonly moreBits: boolean;
}

const targets: QuantTarget[] = [
  { name: 'f32', base: GgmlType.F32, fileType: 0, moreBits: false },
  { name: 'f16', base: GgmlType.F16, fileType: 1, moreBits: false },
  { name: 'bf16', base: GgmlType.BF16, fileType: 32, moreBits: false },
  { name: 'q8_0', base: GgmlType.Q8_0, fileType: 7, moreBits: false },
  { name: 'q4_0', base: GgmlType.Q4_0, fileType: 2, moreBits: false },
  { name: 'q4_1', base: GgmlType.Q4_1, fileType: 3, moreBits: false },
  { name: 'q5_0', base: GgmlType.Q5_0, fileType: 8, moreBits: false },
  { name: 'q5_1', base: GgmlType.Q5_1, fileType: 9, moreBits: false },
  { name: 'q2_k', base: GgmlType.Q2_K, fileType: 10, moreBits: false },
  { name: 'q3_k', base: GgmlType.Q3_K, fileType: 12, moreBits: false },
  { name: 'q4_k', base: GgmlType.Q4_K, fileType: 14, moreBits: false },
  { name: 'q4_k_m', base: GgmlType.Q4_K, fileType: 15, moreBits: true },
  { name: 'q5_k', base: GgmlType.Q5_K, fileType: 16, moreBits: false },
  { name: 'q5_k_m', base: GgmlType.Q5_K, fileType: 17, moreBits: true },
  { name: 'q6_k', base: GgmlType.Q6_K, fileType: 18, moreBits: false },
];

export const QUANT_TARGETS: readonly string[] = targets.map((t) => t.name);

export function quantTarget(name: string): QuantTarget {
  const t = targets.find((x) => x.name === name.toLowerCase());
  if (!t) throw new RangeError(`unknown quantization type "${name}" (known: ${QUANT_TARGETS.join(', ')})`);
  return t;
}

const K_TYPES = new Set<number>([GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K]);

// When a row is not a whole number of 256-blocks, llama-quantize falls back to a 32-block type.
const K_FALLBACK: Record<number, GgmlType> = {
  [GgmlType.Q2_K]: GgmlType.Q4_0,
  [GgmlType.Q3_K]: GgmlType.Q4_0,
  [GgmlType.Q4_K]: GgmlType.Q5_0,
  [GgmlType.Q5_K]: GgmlType.Q5_1,
  [GgmlType.Q6_K]: GgmlType.Q8_0,
};

/** llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between. */
function useMoreBits(i: number, n: number): boolean {
  return i < n / 8 || i >= (7 * n) / 8 || (i - Math.floor(n / 8)) % 3 === 2;
}

/**
 * The type a tensor gets under a target, or undefined to keep it as it is (1-D tensors, and
 * rows no block of the target fits).
 */
export function chooseType(
  t: { name: string; dims: readonly number[] },
  target: QuantTarget,
  nLayers: number,
): GgmlType | undefined {
  if (t.dims.length < 2) return undefined;
  let type: GgmlType = target.base;
  const layer = /^blk\.(\d+)\./.exec(t.name);
  if (K_TYPES.has(target.base)) {
    if (t.name === 'output.weight') type = GgmlType.Q6_K;
    else if (
      target.moreBits &&
      layer &&
      /\.(attn_v|ffn_down)\.weight$/.test(t.name) &&
      useMoreBits(Number(layer[1]), nLayers)
    ) {
      type = GgmlType.Q6_K;
    }
  }
  const info = ggmlTypeInfo(type);
  if (!info) return undefined;
  if (t.dims[0] % info.blockSize === 0) return type;
  const fallback = K_FALLBACK[type];
  if (fallback !== undefined && t.dims[0] % 32 === 0) return fallback;
  return undefined;
}

function kernelFor(id: number, what: string): KernelType {
  const k = kernelType(id);
  if (!k) throw new RangeError(`${what}: type ${ggmlTypeInfo(id)?.name ?? id} has no kernels in herd`);
  return k;
}

/** Rows at a time when converting, so a tensor never needs to be in memory as f32 whole. */
const CHUNK_ROWS = 256;

/** Tensor data in `to`, converted chunk by chunk from a source tensor. */
export function convertTensor(file: GgufFile, t: TensorInfo, to: GgmlTypeInfo): () => Iterable<Uint8Array> {
  const src = kernelFor(t.type.id, `${file.path}: tensor "${t.name}"`);
  const dst = kernelFor(to.id, `tensor "${t.name}"`);
  const cols = t.dims[0];
  const rows = t.nElements / cols;
  const inRow = rowBytes(t.type, cols);
  const outRow = rowBytes(to, cols);
  return function* () {
    const bytes = file.readTensor(t);
    const f32 = new Float32Array(cols * CHUNK_ROWS);
    for (let r0 = 0; r0 < rows; r0 += CHUNK_ROWS) {
      const n = Math.min(CHUNK_ROWS, rows - r0);
      const out = new Uint8Array(n * outRow);
      for (let r = 0; r < n; r++) {
        src.dequantizeRow(bytes, (r0 + r) * inRow, cols, f32, r * cols);
        dst.quantizeRow(f32, r * cols, cols, out, r * outRow);
      }
      yield out;
    }
  };
}

export interface QuantizeReport {
  readonly written: WrittenGguf;
  /** Per tensor: its type before and after. */
  readonly tensors: readonly { name: string; from: string; to: string }[];
}

/** Writes `input` to `output` with its weights in the target's types. */
export function quantizeFile(input: string, output: string, targetName: string): QuantizeReport {
  const target = quantTarget(targetName);
  const file = GgufFile.open(input);
  const arch = file.string('general.architecture', '');
  const nLayers = arch ? file.number(`${arch}.block_count`, 0) : 0;
  // general.file_type changes in place, so the rest of the header stays as it was.
  const fileType = meta.u32('general.file_type', target.fileType);
  const metadata = copyMetadata(file).map((e) => (e.key === fileType.key ? fileType : e));
  if (!file.has(fileType.key)) metadata.push(fileType);
  const report: { name: string; from: string; to: string }[] = [];
  const tensors: TensorSpec[] = file.tensors.map((t) => {
    const chosen = chooseType(t, target, nLayers);
    const to: GgmlTypeInfo = (chosen === undefined ? undefined : ggmlTypeInfo(chosen)) ?? t.type;
    report.push({ name: t.name, from: t.type.name, to: to.name });
    const data = to.id === t.type.id ? () => [file.readTensor(t)] : convertTensor(file, t, to);
    return { name: t.name, dims: t.dims, type: to.id, data };
  });
  return { written: writeGguf(output, { metadata, tensors }), tensors: report };
}
