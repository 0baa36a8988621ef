// TinyLlama's shape in miniature for tests of tensor-parallel groups: grouped-query attention
// (4 query heads per KV head, 4 KV heads), FFN 2.75 × dim; the column cuts of attn_output and
// ffn_down fall on quant-block boundaries. With Q4_0 weights and 3 layers, about 4 MB.
export const TINY_LLAMA = {
  arch: 'llama',
  dim: 512,
  nHeads: 16,
  nKvHeads: 4,
  ffnDim: 1408,
  nLayers: 3,
  ctxTrain: 256,
} as const;
