// The control block through which the JavaScript side hands a thread its job: byte
// offsets from the block's base, re-exported by index.ts as wasm globals so the JavaScript
// side (../module.ts, ../worker.mjs) reads them from the module instead of keeping a second
// copy of the layout.

/** Job generation, bumped by the main thread for every job (its own cache line). */
export const CTL_GEN: i32 = 0;
/** Chunks of the current job computed so far (its own cache line). */
export const CTL_DONE: i32 = 64;
/** Non-zero once a worker failed; the main thread reports it. */
export const CTL_ERROR: i32 = 68;
/** The next unclaimed chunk, tagged with the job: (generation & 0xfffff) << 12 | chunk. */
export const CTL_NEXT: i32 = 128;
/** The job: what to compute and where (written before the generation moves). */
export const CTL_OP: i32 = 192; // OP_STOP or a ggml type id
export const CTL_CHUNKS: i32 = 196; // the rows are cut into this many chunks (< 4096)
export const CTL_CHUNK_ROWS: i32 = 200; // rows per chunk (the last may have fewer)
export const CTL_W: i32 = 204; // weight bytes
export const CTL_ROW_BYTES: i32 = 208;
export const CTL_ROWS: i32 = 212;
export const CTL_COLS: i32 = 216;
export const CTL_N: i32 = 220; // activation vectors (1 for a matvec)
export const CTL_ACT: i32 = 224; // f32 values, or int8 quants for Q8_0/Q8_1/Q8_K activations
export const CTL_ACT_STRIDE: i32 = 228; // bytes from one activation vector to the next
export const CTL_ACT_D: i32 = 232; // Q8 activation scales (f32 per 32 values, or per 256 for Q8_K)
export const CTL_ACT_D_STRIDE: i32 = 236;
export const CTL_ACT_X: i32 = 240; // Q8_1: d·Σq per 32 (f32); Q8_K: Σq per 16 (i16)
export const CTL_ACT_X_STRIDE: i32 = 244;
export const CTL_OUT: i32 = 248; // f32 outputs, vector j at out + j * rows * 4
// Attention jobs (OP_ATTEND): ROWS counts (token, KV head) pairs, and these words say where
// the step lives. The cache rows 0..start+n are f32 copies in this memory.
export const CTL_A_KEYS: i32 = 256; // f32 keys, (start + n) × kvDim
export const CTL_A_VALUES: i32 = 260; // f32 values, the same shape
export const CTL_A_Q: i32 = 264; // n × nHeads·headDim queries (f16-rounded already for an f16 cache)
export const CTL_A_OUT: i32 = 268; // n × nHeads·headDim outputs
export const CTL_A_ATT: i32 = 272; // scores scratch: ATT_STRIDE bytes per chunk
export const CTL_A_ATT_STRIDE: i32 = 276;
export const CTL_A_N_KV: i32 = 280; // KV heads
export const CTL_A_GROUP: i32 = 284; // query heads per KV head
export const CTL_A_HEAD_DIM: i32 = 288;
export const CTL_A_START: i32 = 292; // position of the step's first token
export const CTL_A_N: i32 = 296; // tokens in the step
export const CTL_A_HALF: i32 = 300; // non-zero: round the probabilities to f16 (f16 cache)
/** 0, or the Q8 activation quants again widened to i16 (same stride in values): see tiles. */
export const CTL_ACT16: i32 = 304;
/** The f32 value of every f16 bit pattern (65536 × 4 bytes), filled once by fillF16Table:
 *  the prefill tiles read a block's f16 scale with one load instead of a dozen instructions. */
export const CTL_F16_TABLE: i32 = 308;
export const CTL_BYTES: i32 = 320;
// The element-wise jobs (OP_SWIGLU, OP_F16_TO_F32) use ROWS as the element count, CHUNK_ROWS
// as elements per chunk (a multiple of 8), and ACT, W, OUT as their operands.

export const OP_STOP: i32 = -1;
/** Causal grouped-query attention of a step's tokens over a layer's cache. */
export const OP_ATTEND: i32 = 1001;
/** OUT[i] = silu(ACT[i]) · W[i] (f32). */
export const OP_SWIGLU: i32 = 1002;
/** OUT[i] = the f32 value of the f16 bits ACT[i]. */
export const OP_F16_TO_F32: i32 = 1003;
