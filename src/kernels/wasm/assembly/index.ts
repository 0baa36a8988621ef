// herd's WebAssembly SIMD128 kernels (AssemblyScript), the entry file: what the module
// exports, the type dispatch and the job loop. Built by scripts/build-wasm.mjs into
// ../kernels.wasm and ../kernels-relaxed.wasm, which are committed so a Raspberry Pi needs
// nothing but Node to run them.
//
// The module imports one shared memory and holds no state of its own: every thread (the
// main one and each worker) instantiates it on the same memory, and a job is described by
// a control block in that memory (control.ts) so one call, run(ctl, gen), makes a thread
// take part in any job (a matrix product, attention, SwiGLU). The plain TypeScript kernels
// in src/kernels/ are the reference: the activation quantizers and the integer block sums
// give identical bits; the K-quant dot products too (their one float step per 256 values is
// done in f64, in the reference's order); the other float sums differ only by summation
// order and precision (four f32 lanes here, one f64 sum there).
//
// The kernels are split by job, as the native ones are (src/kernels/native/*.c):
//   control.ts     the control block layout and the job ops
//   info.ts        what the module says about itself (supports, wideTile, …)
//   run.ts         the job loop every thread runs, the type dispatch
//   simd.ts        the relaxed-SIMD switch and SIMD helpers every file shares
//   half.ts        f16/bf16 conversions and rounding, widening an f16 cache
//   activation.ts  quantizing activations (Q8_0, Q8_1, Q8_K)
//   dot_float.ts   F32, F16, BF16 dot products
//   dot_q.ts       Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 dot products
//   dot_k.ts       Q2_K … Q6_K dot products
//   tiles.ts       four- and eight-vector tiles for prefill
//   ops.ts         attention and SwiGLU
//
// The ggml type ids (GGML_TYPE_F32, GGML_TYPE_Q4_0, …) are declared nowhere in these files:
// scripts/build-wasm.mjs defines them as compile-time constants from src/ggml/types.ts, the
// one table of them (asc --use GGML_TYPE_Q4_0=2 …).

// The module's exports (the JavaScript side, ../module.ts and ../worker.mjs, reads the
// control block layout and calls the functions). Only this file's exports become the
// module's; their order here is their order in the built module.
export {
  CTL_GEN, CTL_DONE, CTL_ERROR, CTL_NEXT, CTL_OP, CTL_CHUNKS, CTL_CHUNK_ROWS, CTL_W, CTL_ROW_BYTES, CTL_ROWS,
  CTL_COLS, CTL_N, CTL_ACT, CTL_ACT_STRIDE, CTL_ACT_D, CTL_ACT_D_STRIDE, CTL_ACT_X, CTL_ACT_X_STRIDE,
  CTL_OUT, CTL_A_KEYS, CTL_A_VALUES, CTL_A_Q, CTL_A_OUT, CTL_A_ATT, CTL_A_ATT_STRIDE, CTL_A_N_KV,
  CTL_A_GROUP, CTL_A_HEAD_DIM, CTL_A_START, CTL_A_N, CTL_A_HALF, CTL_ACT16, CTL_F16_TABLE, CTL_BYTES,
  OP_STOP, OP_ATTEND, OP_SWIGLU, OP_F16_TO_F32,
} from './control';
export { supports, relaxedSimd, wideTile, q4Offsets, heapBase } from './info';
export { fillF16Table, roundF16, roundBf16 } from './half';
export { quantizeQ8_0, quantizeQ8_1, quantizeQ8_K, widenI8, offsetSumsQ8_0 } from './activation';
export {
  tileQ4_0x8, tileQ4_0Wide, tileQ4_0, tileQ8_0Wide, tileQ8_0, tileQ4_KWide, tileQ4_KNarrow, tileQ6_KWide, tileQ6_KNarrow,
} from './tiles';
export { run } from './run';
