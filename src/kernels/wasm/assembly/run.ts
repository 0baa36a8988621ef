// The job loop every thread runs (run) and the type dispatch of the products (rowsOf: one
// case per ggml type, as native's table.c has one row per type). The GGML_TYPE_* ids are
// compile-time constants from src/ggml/types.ts (scripts/build-wasm.mjs).

import {
  CTL_DONE, CTL_NEXT, CTL_OP, CTL_CHUNKS, CTL_CHUNK_ROWS, CTL_W, CTL_ROW_BYTES, CTL_ROWS, CTL_COLS, CTL_N, CTL_ACT, CTL_ACT_STRIDE,
  CTL_ACT_D, CTL_ACT_D_STRIDE, CTL_ACT_X, CTL_ACT_X_STRIDE, CTL_OUT, CTL_ACT16, CTL_F16_TABLE, OP_ATTEND, OP_SWIGLU, OP_F16_TO_F32,
} from './control';
import { RELAXED } from './simd';
import { f16Range } from './half';
import { dotF32, dotF16, dotBf16 } from './dot_float';
import { dotQ8_0, dotQ4_0, dotQ4_1, dotQ5_0, dotQ5_1 } from './dot_q';
import { dotQ2_K, dotQ3_K, dotQ4_K, dotQ5_K, dotQ6_K } from './dot_k';
import { tileQ4_0x8, tiled, tile4 } from './tiles';
import { attendPairs, swigluRange } from './ops';

// The row loop. Rows [r0, r1) of out = W · x_j for the n activation vectors; with n > 1
// (a matmul for prefill) a weight row is read from memory once and reused from L1 for every
// vector, which is the whole gain of batching on a memory-bound machine. The switch costs
// one predictable branch per row.

/**
 * Takes part in job `gen` of the control block at ctl: claims chunks of rows (or of the
 * attention and element-wise jobs' work items) until none is left, computes each, and
 * counts it done (waking the main thread after the last one). Chunks are claimed, not
 * assigned, so a thread that is descheduled or slow (a busy core, a little core) leaves its
 * share to the others instead of holding the job up.
 *
 * A claim is a compare-and-swap of NEXT that only succeeds while NEXT still carries this
 * job's tag. The main thread retags NEXT before it rewrites the job, so a thread that read
 * the job and was then delayed past its end claims nothing and writes nothing.
 */
export function run(ctl: usize, gen: i32): void {
  const tag = (gen & 0xfffff) << 12;
  const chunks = load<i32>(ctl + CTL_CHUNKS);
  for (;;) {
    const v = atomic.load<i32>(ctl + CTL_NEXT);
    const chunk = v & 0xfff;
    if ((v & ~0xfff) != tag || chunk >= chunks) return;
    if (atomic.cmpxchg<i32>(ctl + CTL_NEXT, v, v + 1) != v) continue;
    // Claimed: the job cannot change before this chunk is counted done, so its words are
    // read (again) from here on.
    const chunkRows = load<i32>(ctl + CTL_CHUNK_ROWS);
    const r0 = chunk * chunkRows;
    const r1 = min(load<i32>(ctl + CTL_ROWS), r0 + chunkRows);
    const op = load<i32>(ctl + CTL_OP);
    if (op == OP_ATTEND) attendPairs(ctl, r0, r1, chunk);
    else if (op == OP_SWIGLU) swigluRange(ctl, r0, r1);
    else if (op == OP_F16_TO_F32) f16Range(ctl, r0, r1);
    else rowsOf(ctl, op, r0, r1);
    if (atomic.add<i32>(ctl + CTL_DONE, 1) + 1 == chunks) atomic.notify(ctl + CTL_DONE);
  }
}

/** Rows [r0, r1) of the job's product, for every activation vector. */
function rowsOf(ctl: usize, op: i32, r0: i32, r1: i32): void {
  const w = <usize>load<u32>(ctl + CTL_W);
  const rb = <usize>load<u32>(ctl + CTL_ROW_BYTES);
  const rows = load<i32>(ctl + CTL_ROWS);
  const cols = load<i32>(ctl + CTL_COLS);
  const n = load<i32>(ctl + CTL_N);
  const act = <usize>load<u32>(ctl + CTL_ACT);
  const actStride = <usize>load<u32>(ctl + CTL_ACT_STRIDE);
  const actD = <usize>load<u32>(ctl + CTL_ACT_D);
  const actDStride = <usize>load<u32>(ctl + CTL_ACT_D_STRIDE);
  const actX = <usize>load<u32>(ctl + CTL_ACT_X);
  const actXStride = <usize>load<u32>(ctl + CTL_ACT_X_STRIDE);
  const out = <usize>load<u32>(ctl + CTL_OUT);
  const act16 = <usize>load<u32>(ctl + CTL_ACT16);
  const f16t = <usize>load<u32>(ctl + CTL_F16_TABLE);
  const oStride = <usize>rows << 2;
  for (let r = r0; r < r1; r++) {
    const p = w + <usize>r * rb;
    let j = 0;
    if (RELAXED && op == GGML_TYPE_Q4_0) {
      for (; j + 8 <= n; j += 8) {
        const o = out + ((<usize>j * <usize>rows + <usize>r) << 2);
        tileQ4_0x8(p, cols >> 5, act + <usize>j * actStride, actStride, actD + <usize>j * actDStride, actDStride, actX + <usize>j * actXStride, actXStride, o, oStride, f16t);
      }
    }
    if (tiled(op)) {
      for (; j + 4 <= n; j += 4) {
        const x = act + <usize>j * actStride;
        const x16 = act16 + ((<usize>j * actStride) << 1);
        const xd = actD + <usize>j * actDStride;
        const xx = actX + <usize>j * actXStride;
        const o = out + ((<usize>j * <usize>rows + <usize>r) << 2);
        tile4(op, act16 != 0, p, cols, x, x16, actStride, xd, actDStride, xx, actXStride, o, oStride, f16t);
      }
    }
    for (; j < n; j++) {
      const x = act + <usize>j * actStride;
      const xd = actD + <usize>j * actDStride;
      const xx = actX + <usize>j * actXStride;
      let v: f32 = 0;
      switch (op) {
        case GGML_TYPE_F32:
          v = dotF32(p, cols, x);
          break;
        case GGML_TYPE_F16:
          v = dotF16(p, cols, x);
          break;
        case GGML_TYPE_BF16:
          v = dotBf16(p, cols, x);
          break;
        case GGML_TYPE_Q8_0:
          v = dotQ8_0(p, cols, x, xd);
          break;
        case GGML_TYPE_Q4_0:
          v = dotQ4_0(p, cols, x, xd, xx);
          break;
        case GGML_TYPE_Q4_1:
          v = dotQ4_1(p, cols, x, xd, xx);
          break;
        case GGML_TYPE_Q5_0:
          v = dotQ5_0(p, cols, x, xd);
          break;
        case GGML_TYPE_Q5_1:
          v = dotQ5_1(p, cols, x, xd, xx);
          break;
        case GGML_TYPE_Q2_K:
          v = dotQ2_K(p, cols, x, xd, xx);
          break;
        case GGML_TYPE_Q3_K:
          v = dotQ3_K(p, cols, x, xd);
          break;
        case GGML_TYPE_Q4_K:
          v = dotQ4_K(p, cols, x, xd, xx);
          break;
        case GGML_TYPE_Q5_K:
          v = dotQ5_K(p, cols, x, xd, xx);
          break;
        case GGML_TYPE_Q6_K:
          v = dotQ6_K(p, cols, x, xd, xx);
          break;
        default:
          unreachable();
      }
      store<f32>(out + ((<usize>j * <usize>rows + <usize>r) << 2), v);
    }
  }
}
