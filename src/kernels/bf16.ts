// BF16 weights: the top 16 bits of an f32, stored as F16 is; llama.cpp rounds the
// activations to bf16 as well.

import { GgmlType } from '../ggml/types.ts';
import { bf16ToF32, f32ToBf16 } from '../ggml/half.ts';
import { halfKernels } from './f16.ts';

export const type = GgmlType.BF16;
export const activation = 'bf16';
export const { dequantizeRow, dot, quantizeRow } = halfKernels(bf16ToF32, f32ToBf16);
