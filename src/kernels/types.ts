// One table drives every weight type (as ggml's type_traits do): how to dequantize a row,
// which form the activations take for the dot product (ggml's vec_dot_type: Q4_0, Q5_0 and
// Q8_0 weights pair with Q8_0 activations, Q4_1 and Q5_1 with Q8_1, the K-quants with Q8_K,
// f16 weights with f16-rounded activations), and the dot product itself. Adding a type
// means adding its kernel file and listing it here.

import { ggmlTypeInfo, type GgmlType, type GgmlTypeInfo } from '../ggml/types.ts';
import * as f32 from './f32.ts';
import * as f16 from './f16.ts';
import * as bf16 from './bf16.ts';
import * as q8_0 from './q8_0.ts';
import * as q4_0 from './q4_0.ts';
import * as q4_1 from './q4_1.ts';
import * as q5_0 from './q5_0.ts';
import * as q5_1 from './q5_1.ts';
import * as q2_k from './q2_k.ts';
import * as q3_k from './q3_k.ts';
import * as q4_k from './q4_k.ts';
import * as q5_k from './q5_k.ts';
import * as q6_k from './q6_k.ts';
import type { Activation, ActivationKind } from './activation.ts';

export interface KernelType {
  readonly info: GgmlTypeInfo;
  /** The form the activation vector is converted to before dot products with this type. */
  readonly activation: ActivationKind;
  /** Writes n values of the row starting at byte offset `off` of `w` to out[outOff..]. */
  dequantizeRow(w: Uint8Array, off: number, n: number, out: Float32Array, outOff: number): void;
  /** Dot product of the n-element row at byte offset `off` with the prepared activation. */
  dot(w: Uint8Array, off: number, n: number, x: Activation): number;
  /** Reference quantizer: n values of x into bytes at dst[dstOff..] (what GGUF stores). */
  quantizeRow(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void;
}

// Each kernel file names its ggml type and the activation form its dot product takes (the
// block formats' follows from their layout: see blocks.ts).
const kernels = [f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k];

const rows: KernelType[] = kernels.map((k) => ({
  info: must(k.type),
  activation: k.activation,
  dequantizeRow: k.dequantizeRow,
  dot: k.dot,
  quantizeRow: k.quantizeRow,
}));

function must(id: GgmlType): GgmlTypeInfo {
  const info = ggmlTypeInfo(id);
  if (!info) throw new Error(`ggml type ${id} missing from the type table`);
  return info;
}

const byId = new Map<number, KernelType>(rows.map((r) => [r.info.id, r]));

/** The kernels for a ggml type, or undefined when herd cannot compute with it yet. */
export function kernelType(id: number): KernelType | undefined {
  return byId.get(id);
}

export const supportedTypes: readonly GgmlTypeInfo[] = rows.map((r) => r.info);
