// Pieces shared by the K-quant formats (q2_k … q6_k): ggml's scale searches, the
// re-rounding against quantized scales, and the 6-bit scale/min packing of Q4_K and Q5_K.
//
// The searches are transcriptions of ggml-quants.c's reference helpers, kept in f32: every
// operation is rounded with Math.fround in the order C evaluates it, because the quantizers
// must write the same bytes as llama-quantize (without an imatrix) does. A double-precision
// rewrite would pick different scales on near-ties and so different files.

import { nearestInt } from './activation.ts';
import { writeF16, signedMax } from './block.ts';

const f = Math.fround;

/** ggml's GROUP_MAX_EPS: below this a group counts as all zero. */
export const GROUP_MAX_EPS = f(1e-15);
const TENTH = f(0.1);

/**
 * make_qkx2_quants: an asymmetric fit x ≈ scale·L + min (min ≤ 0) of the n values at
 * x[xOff..], L in [0, nmax], trying nstep+1 scales around nmax/(max-min) and keeping the one
 * with the least weighted error. Writes L[lOff..], the negated min to minOut[minIdx], returns
 * the scale. laux holds at least n entries of scratch.
 */
export function makeQkx2Quants(
  n: number,
  nmax: number,
  x: Float32Array,
  xOff: number,
  weights: Float32Array,
  L: Uint8Array,
  lOff: number,
  minOut: Float32Array,
  minIdx: number,
  laux: Uint8Array,
  rmin: number,
  rdelta: number,
  nstep: number,
  useMad: boolean,
): number {
  rmin = f(rmin);
  rdelta = f(rdelta);
  let min = x[xOff];
  let max = x[xOff];
  let sumW = weights[0];
  let sumX = f(sumW * x[xOff]);
  for (let i = 1; i < n; i++) {
    const xi = x[xOff + i];
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    const w = weights[i];
    sumW = f(sumW + w);
    sumX = f(sumX + f(w * xi));
  }
  if (min > 0) min = 0;
  if (max === min) {
    L.fill(0, lOff, lOff + n);
    minOut[minIdx] = -min;
    return 0;
  }
  let iscale = f(nmax / f(max - min));
  let scale = f(1 / iscale);
  let bestError = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xOff + i];
    const l = Math.max(0, Math.min(nmax, nearestInt(f(iscale * f(xi - min)))));
    L[lOff + i] = l;
    let diff = f(f(f(scale * l) + min) - xi);
    diff = useMad ? Math.abs(diff) : f(diff * diff);
    bestError = f(bestError + f(weights[i] * diff));
  }
  if (nstep < 1) {
    minOut[minIdx] = -min;
    return scale;
  }
  for (let is = 0; is <= nstep; is++) {
    // ggml measures from the best min found so far, not the block's own min: kept as is.
    iscale = f(f(f(rmin + f(rdelta * is)) + nmax) / f(max - min));
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xOff + i];
      const l = Math.max(0, Math.min(nmax, nearestInt(f(iscale * f(xi - min)))));
      laux[i] = l;
      const wl = f(weights[i] * l);
      sumL = f(sumL + wl);
      sumL2 = f(sumL2 + f(wl * l));
      sumXL = f(sumXL + f(wl * xi));
    }
    const D = f(f(sumW * sumL2) - f(sumL * sumL));
    if (D > 0) {
      let thisScale = f(f(f(sumW * sumXL) - f(sumX * sumL)) / D);
      let thisMin = f(f(f(sumL2 * sumX) - f(sumL * sumXL)) / D);
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = f(sumXL / sumL2);
      }
      let curError = 0;
      for (let i = 0; i < n; i++) {
        let diff = f(f(f(thisScale * laux[i]) + thisMin) - x[xOff + i]);
        diff = useMad ? Math.abs(diff) : f(diff * diff);
        curError = f(curError + f(weights[i] * diff));
      }
      if (curError < bestError) {
        for (let i = 0; i < n; i++) L[lOff + i] = laux[i];
        bestError = curError;
        scale = thisScale;
        min = thisMin;
      }
    }
  }
  minOut[minIdx] = -min;
  return scale;
}

// The x²-weighted least-squares sums of a symmetric rounding, Σ x²·x·l and Σ x²·l² (f32):
// set by fitSymmetric, read by the two symmetric searches.
const sums = { lx: 0, l2: 0 };
const lw = new Int8Array(32);

/**
 * Rounds the n values at x[xOff..] at iscale to levels l in [-nmax, nmax), written to lw,
 * and sums the fit of x ≈ scale·l weighted by x² into `sums`.
 */
function fitSymmetric(n: number, nmax: number, x: Float32Array, xOff: number, iscale: number): void {
  let sumlx = 0;
  let suml2 = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xOff + i];
    const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * xi))));
    lw[i] = l;
    const w = f(xi * xi);
    sumlx = f(sumlx + f(f(w * xi) * l));
    suml2 = f(suml2 + f(f(w * l) * l));
  }
  sums.lx = sumlx;
  sums.l2 = suml2;
}

/**
 * The start both symmetric searches share: the value of largest magnitude; when it is below
 * GROUP_MAX_EPS, all-zero levels and 0; else the first fit at -nmax/max (in lw and `sums`).
 */
function startSymmetric(n: number, nmax: number, x: Float32Array, xOff: number, L: Uint8Array, lOff: number): number {
  const max = signedMax(x, xOff, n);
  if (Math.abs(max) < GROUP_MAX_EPS) {
    L.fill(0, lOff, lOff + n);
    return 0;
  }
  fitSymmetric(n, nmax, x, xOff, f(-nmax / max));
  return max;
}

/**
 * A symmetric search of Q3_K's or Q6_K's: fits the n values at x[xOff..] as x ≈ scale·(L - nmax)
 * with levels L in [0, 2·nmax) written to L[lOff..], and returns the scale.
 */
export type SymmetricSearch = (
  n: number,
  nmax: number,
  x: Float32Array,
  xOff: number,
  L: Uint8Array,
  lOff: number,
) => number;

/**
 * make_qx_quants with rmse_type 1 and no importance weights (what the reference quantizers
 * use): a symmetric fit x ≈ scale·(L - nmax), L in [0, 2·nmax), weighting each value by x²,
 * trying 19 scales around -nmax/max. Writes L[lOff..], returns the scale.
 */
export const makeQxQuants: SymmetricSearch = (n, nmax, x, xOff, L, lOff) => {
  const max = startSymmetric(n, nmax, x, xOff, L, lOff);
  if (max === 0) return 0;
  for (let i = 0; i < n; i++) L[lOff + i] = lw[i] + nmax;
  let scale = sums.l2 !== 0 ? f(sums.lx / sums.l2) : 0;
  let best = f(scale * sums.lx);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    fitSymmetric(n, nmax, x, xOff, f(-f(nmax + f(TENTH * is)) / max));
    if (sums.l2 > 0 && f(sums.lx * sums.lx) > f(best * sums.l2)) {
      for (let i = 0; i < n; i++) L[lOff + i] = lw[i] + nmax;
      scale = f(sums.lx / sums.l2);
      best = f(scale * sums.lx);
    }
  }
  return scale;
};

/**
 * make_q3_quants with do_rmse: makeQxQuants' first guess, then up to five passes that move
 * single values to the level that most improves the x²-weighted fit. L in [0, 2·nmax).
 */
export const makeQ3Quants: SymmetricSearch = (n, nmax, x, xOff, L, lOff) => {
  if (startSymmetric(n, nmax, x, xOff, L, lOff) === 0) return 0;
  let sumlx = sums.lx;
  let suml2 = sums.l2;
  for (let itry = 0; itry < 5; itry++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xOff + i];
      const w = f(xi * xi);
      const li = lw[i];
      let slx = f(sumlx - f(f(w * xi) * li));
      if (slx > 0) {
        let sl2 = f(suml2 - f(f(w * li) * li));
        const newL = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(f(xi * sl2) / slx))));
        if (newL !== li) {
          slx = f(slx + f(f(w * xi) * newL));
          sl2 = f(sl2 + f(f(w * newL) * newL));
          if (sl2 > 0 && f(f(slx * slx) * suml2) > f(f(sumlx * sumlx) * sl2)) {
            lw[i] = newL;
            sumlx = slx;
            suml2 = sl2;
            changed++;
          }
        }
      }
    }
    if (changed === 0) break;
  }
  for (let i = 0; i < n; i++) L[lOff + i] = lw[i] + nmax;
  return suml2 > 0 ? f(sumlx / suml2) : 0;
};

/**
 * The head of the block Q4_K and Q5_K share: groups of 32 values, an f16 d at 0 and dmin at
 * 2, then at 4 the 12 bytes of their 6-bit scales and mins (decodeScaleMinK4).
 */
export const scaleMinK4 = {
  group: 32,
  at: { d: 0, dmin: 2 },
  scales: (w: Uint8Array, o: number, sc: Int16Array, mn: Int16Array) => decodeScaleMinK4(w, o + 4, sc, mn),
} as const;

/**
 * Decodes the eight 6-bit scales and mins of a Q4_K/Q5_K block (ggml's get_scale_min_k4)
 * from the 12 bytes at w[o..]: scales and mins 0-3 are the low 6 bits of bytes 0-3 and 4-7;
 * 4-7 take their low 4 bits from the nibbles of bytes 8-11 and their top 2 bits from the
 * spare top bits of bytes 0-3 (scales) and 4-7 (mins).
 */
function decodeScaleMinK4(w: Uint8Array, o: number, sc: Int16Array, mn: Int16Array): void {
  for (let j = 0; j < 4; j++) {
    sc[j] = w[o + j] & 63;
    mn[j] = w[o + j + 4] & 63;
    sc[j + 4] = (w[o + j + 8] & 0xf) | ((w[o + j] >> 6) << 4);
    mn[j + 4] = (w[o + j + 8] >> 4) | ((w[o + j + 4] >> 6) << 4);
  }
}

/** The inverse of decodeScaleMinK4: packs eight 6-bit scales and mins into w[o..o+12). */
function encodeScaleMinK4(sc: Int16Array, mn: Int16Array, w: Uint8Array, o: number): void {
  for (let j = 0; j < 4; j++) {
    w[o + j] = sc[j] | ((sc[j + 4] >> 4) << 6);
    w[o + j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
    w[o + j + 8] = (sc[j + 4] & 0xf) | ((mn[j + 4] & 0xf) << 4);
  }
}

/** How a K-quant with mins searches each group's fit (make_qkx2_quants' parameters). */
export interface MinSearch {
  /** The largest level. */
  readonly nmax: number;
  /** The scales tried: nmax + rmin + 0.1·i over (max - min) for i in [0, nstep]. */
  readonly rmin: number;
  readonly nstep: number;
  /** Weights |x| and minimises the absolute error (Q2_K), else weights rms + |x| and the squared error. */
  readonly mad: boolean;
}

// Scratch of fitWithMins: one group's weights and search buffer, and the fits it returns.
const laux = new Uint8Array(32);
const weights = new Float32Array(32);
const minFits = { scales: new Float32Array(16), mins: new Float32Array(16), maxScale: 0, maxMin: 0 };

/**
 * The first pass of Q2_K, Q4_K and Q5_K: per group of `group` values of the super-block at
 * x[xb..] an asymmetric fit (make_qkx2_quants). The levels go to L; returns each group's
 * scale and negated min, and the largest of each (at least 0, as ggml's running maxima),
 * in scratch that the next call overwrites.
 */
export function fitWithMins(x: Float32Array, xb: number, group: number, search: MinSearch, L: Uint8Array) {
  const { nmax, rmin, nstep, mad } = search;
  const { scales, mins } = minFits;
  let maxScale = 0;
  let maxMin = 0;
  for (let g = 0; g < 256 / group; g++) {
    const xg = xb + group * g;
    let avX = 0;
    if (!mad) {
      let sumX2 = 0;
      for (let l = 0; l < group; l++) sumX2 = f(sumX2 + f(x[xg + l] * x[xg + l]));
      avX = f(Math.sqrt(f(sumX2 / group)));
    }
    for (let l = 0; l < group; l++) weights[l] = avX + Math.abs(x[xg + l]);
    scales[g] = makeQkx2Quants(group, nmax, x, xg, weights, L, group * g, mins, g, laux, rmin, 0.1, nstep, mad);
    if (scales[g] > maxScale) maxScale = scales[g];
    if (mins[g] > maxMin) maxMin = mins[g];
  }
  minFits.maxScale = maxScale;
  minFits.maxMin = maxMin;
  return minFits;
}

/**
 * ggml's second pass for Q2_K, Q4_K and Q5_K: each group of `group` values at x[xb..]
 * re-rounded against its quantized scale d = dq·sc[g] and min dm = dminq·mn[g]:
 * L = clamp(round((x + dm) / d), 0, nmax). A zero d leaves the group's levels as the search
 * left them, as in ggml.
 */
export function roundWithMins(
  x: Float32Array,
  xb: number,
  group: number,
  dq: number,
  sc: Int16Array,
  dminq: number,
  mn: Int16Array,
  nmax: number,
  L: Uint8Array,
): void {
  for (let g = 0; g < 256 / group; g++) {
    const d = f(dq * sc[g]);
    if (d === 0) continue;
    const dm = f(dminq * mn[g]);
    for (let i = group * g; i < group * (g + 1); i++) {
      L[i] = Math.max(0, Math.min(nmax, nearestInt(f(f(x[xb + i] + dm) / d))));
    }
  }
}

/**
 * ggml's second pass for Q3_K and Q6_K: each group of 16 values at x[xb..] re-rounded against
 * its quantized scale d = dq·sc[g]: L = clamp(round(x / d), -nmax, nmax - 1) + nmax. A zero
 * d keeps the levels of the search, as ggml does.
 */
export function roundSymmetric(
  x: Float32Array,
  xb: number,
  dq: number,
  sc: Int16Array,
  nmax: number,
  L: Uint8Array,
): void {
  for (let g = 0; g < 16; g++) {
    const d = f(dq * sc[g]);
    if (d === 0) continue;
    for (let i = 16 * g; i < 16 * (g + 1); i++) {
      L[i] = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(x[xb + i] / d)))) + nmax;
    }
  }
}

const groupScales = new Float32Array(16);

/**
 * The first pass of Q3_K and Q6_K: each 16-value group of the super-block at x[xb..] fitted
 * by `search` (makeQ3Quants or makeQxQuants) with levels in [0, 2·nmax) to L. Returns the 16
 * scales, in scratch that the next call overwrites.
 */
export function fitSymmetricGroups(x: Float32Array, xb: number, nmax: number, search: SymmetricSearch, L: Uint8Array) {
  for (let g = 0; g < 16; g++) groupScales[g] = search(16, nmax, x, xb + 16 * g, L, 16 * g);
  return groupScales;
}

/**
 * The scales and levels of quantize_row_q4_K_ref, which quantize_row_q5_K_ref repeats with
 * another search: per 32-value sub-block of the super-block at x[xb..] the fit of
 * fitWithMins; the scales and mins quantized to 6 bits against the block's largest and
 * written with the f16 d and dmin to dst[o..o+16) (sc and mn hold the 6-bit forms); then
 * the 256 levels re-rounded against the quantized scales into L. The format packs L in its
 * own layout.
 */
export function quantizeScaleMinK4(
  x: Float32Array,
  xb: number,
  search: MinSearch,
  dst: Uint8Array,
  o: number,
  L: Uint8Array,
  sc: Int16Array,
  mn: Int16Array,
): void {
  const { scales, mins, maxScale, maxMin } = fitWithMins(x, xb, 32, search, L);
  const invScale = maxScale > 0 ? f(63 / maxScale) : 0;
  const invMin = maxMin > 0 ? f(63 / maxMin) : 0;
  for (let j = 0; j < 8; j++) {
    // ggml stores nearest_int into a uint8_t before clamping: a (theoretical) negative
    // scale wraps and clamps to 63, kept for identical bytes.
    sc[j] = Math.min(63, nearestInt(f(invScale * scales[j])) & 0xff);
    mn[j] = Math.min(63, nearestInt(f(invMin * mins[j])) & 0xff);
  }
  encodeScaleMinK4(sc, mn, dst, o + 4);
  const dq = writeF16(dst, o, f(maxScale / 63));
  const dminq = writeF16(dst, o + 2, f(maxMin / 63));
  roundWithMins(x, xb, 32, dq, sc, dminq, mn, search.nmax, L);
}
