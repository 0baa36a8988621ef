// What the module tells the JavaScript side about itself: the types it computes, which
// build it is and which forms its products take. Exported through index.ts. The GGML_TYPE_*
// ids are compile-time constants from src/ggml/types.ts (scripts/build-wasm.mjs).

import { RELAXED } from './simd';
import { tiled } from './tiles';

/** Whether this module computes weights of ggml type `type`. */
export function supports(type: i32): bool {
  switch (type) {
    case GGML_TYPE_F32:
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16:
    case GGML_TYPE_Q8_0:
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q5_1:
    case GGML_TYPE_Q2_K:
    case GGML_TYPE_Q3_K:
    case GGML_TYPE_Q4_K:
    case GGML_TYPE_Q5_K:
    case GGML_TYPE_Q6_K:
      return true;
  }
  return false;
}

/** Whether this build uses relaxed SIMD (kernels-relaxed.wasm). */
export function relaxedSimd(): bool {
  return RELAXED;
}

/** Whether the four-vector tile of `type` reads CTL_ACT16 (activations widened to i16) when
 *  wide tiles are wanted; the relaxed build multiplies int8 directly except for Q8_0, whose
 *  signed weights the relaxed dot product cannot take. */
export function wideTile(type: i32): bool {
  return RELAXED ? type == GGML_TYPE_Q8_0 : tiled(type);
}

/** Whether Q4_0 products read the activations' offset sums (offsetSumsQ8_0) at CTL_ACT_X. */
export function q4Offsets(): bool {
  return RELAXED;
}

/** First byte after the module's static data: the JavaScript allocator starts above it. */
export function heapBase(): usize {
  return __heap_base;
}
