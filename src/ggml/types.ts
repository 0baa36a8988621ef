// The ggml tensor types as GGUF numbers them, with their block geometry. This table is a
// fact of the file format: the GGUF reader sizes tensors with it, the kernels' per-type
// table (src/kernels/types.ts) adds the arithmetic.

export const GgmlType = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  IQ2_XXS: 16,
  IQ2_XS: 17,
  IQ3_XXS: 18,
  IQ1_S: 19,
  IQ4_NL: 20,
  IQ3_S: 21,
  IQ2_S: 22,
  IQ4_XS: 23,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  IQ1_M: 29,
  BF16: 30,
  TQ1_0: 34,
  TQ2_0: 35,
  MXFP4: 39,
} as const;

export type GgmlType = (typeof GgmlType)[keyof typeof GgmlType];

export interface GgmlTypeInfo {
  readonly id: GgmlType;
  readonly name: string;
  /** Elements stored in one block (1 for plain scalar types). */
  readonly blockSize: number;
  /** Bytes one block takes in the file. */
  readonly typeSize: number;
}

const QK_K = 256;

const table: GgmlTypeInfo[] = [
  { id: GgmlType.F32, name: 'F32', blockSize: 1, typeSize: 4 },
  { id: GgmlType.F16, name: 'F16', blockSize: 1, typeSize: 2 },
  { id: GgmlType.Q4_0, name: 'Q4_0', blockSize: 32, typeSize: 2 + 16 },
  { id: GgmlType.Q4_1, name: 'Q4_1', blockSize: 32, typeSize: 4 + 16 },
  { id: GgmlType.Q5_0, name: 'Q5_0', blockSize: 32, typeSize: 2 + 4 + 16 },
  { id: GgmlType.Q5_1, name: 'Q5_1', blockSize: 32, typeSize: 4 + 4 + 16 },
  { id: GgmlType.Q8_0, name: 'Q8_0', blockSize: 32, typeSize: 2 + 32 },
  { id: GgmlType.Q8_1, name: 'Q8_1', blockSize: 32, typeSize: 4 + 32 },
  { id: GgmlType.Q2_K, name: 'Q2_K', blockSize: QK_K, typeSize: 16 + 64 + 4 },
  { id: GgmlType.Q3_K, name: 'Q3_K', blockSize: QK_K, typeSize: 32 + 64 + 12 + 2 },
  { id: GgmlType.Q4_K, name: 'Q4_K', blockSize: QK_K, typeSize: 4 + 12 + 128 },
  { id: GgmlType.Q5_K, name: 'Q5_K', blockSize: QK_K, typeSize: 4 + 12 + 32 + 128 },
  { id: GgmlType.Q6_K, name: 'Q6_K', blockSize: QK_K, typeSize: 128 + 64 + 16 + 2 },
  { id: GgmlType.Q8_K, name: 'Q8_K', blockSize: QK_K, typeSize: 4 + 256 + 32 },
  { id: GgmlType.IQ2_XXS, name: 'IQ2_XXS', blockSize: QK_K, typeSize: 2 + 64 },
  { id: GgmlType.IQ2_XS, name: 'IQ2_XS', blockSize: QK_K, typeSize: 2 + 64 + 8 },
  { id: GgmlType.IQ3_XXS, name: 'IQ3_XXS', blockSize: QK_K, typeSize: 2 + 96 },
  { id: GgmlType.IQ1_S, name: 'IQ1_S', blockSize: QK_K, typeSize: 2 + 32 + 16 },
  { id: GgmlType.IQ4_NL, name: 'IQ4_NL', blockSize: 32, typeSize: 2 + 16 },
  { id: GgmlType.IQ3_S, name: 'IQ3_S', blockSize: QK_K, typeSize: 2 + 64 + 8 + 32 + 4 },
  { id: GgmlType.IQ2_S, name: 'IQ2_S', blockSize: QK_K, typeSize: 2 + 64 + 8 + 8 },
  { id: GgmlType.IQ4_XS, name: 'IQ4_XS', blockSize: QK_K, typeSize: 2 + 2 + 4 + 128 },
  { id: GgmlType.I8, name: 'I8', blockSize: 1, typeSize: 1 },
  { id: GgmlType.I16, name: 'I16', blockSize: 1, typeSize: 2 },
  { id: GgmlType.I32, name: 'I32', blockSize: 1, typeSize: 4 },
  { id: GgmlType.I64, name: 'I64', blockSize: 1, typeSize: 8 },
  { id: GgmlType.F64, name: 'F64', blockSize: 1, typeSize: 8 },
  { id: GgmlType.IQ1_M, name: 'IQ1_M', blockSize: QK_K, typeSize: 32 + 16 + 8 },
  { id: GgmlType.BF16, name: 'BF16', blockSize: 1, typeSize: 2 },
  { id: GgmlType.TQ1_0, name: 'TQ1_0', blockSize: QK_K, typeSize: 48 + 4 + 2 },
  { id: GgmlType.TQ2_0, name: 'TQ2_0', blockSize: QK_K, typeSize: 64 + 2 },
  { id: GgmlType.MXFP4, name: 'MXFP4', blockSize: 32, typeSize: 1 + 16 },
];

const byId = new Map<number, GgmlTypeInfo>(table.map((t) => [t.id, t]));
const byName = new Map<string, GgmlTypeInfo>(table.map((t) => [t.name.toLowerCase(), t]));

/** The type with this GGUF number, or undefined when ggml defines none. */
export function ggmlTypeInfo(id: number): GgmlTypeInfo | undefined {
  return byId.get(id);
}

/** The type named like `q4_0` or `F16` (case does not matter), or undefined. */
export function ggmlTypeByName(name: string): GgmlTypeInfo | undefined {
  return byName.get(name.toLowerCase());
}

/** Bytes of a row of `n` elements; n must be a multiple of the block size. */
export function rowBytes(info: GgmlTypeInfo, n: number): number {
  return (n / info.blockSize) * info.typeSize;
}
