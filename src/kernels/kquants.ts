// Pieces shared by the K-quant rows (q2_k … q6_k): ggml's scale searches and the 6-bit
// scale/min packing of Q4_K and Q5_K.
//
// The searches are transcriptions of ggml-quants.c's reference helpers, kept in f32: every
// operation is rounded with Math.fround in the order C evaluates it, because the quantizers
// must write the same bytes as llama-quantize (without an imatrix) does. A double-precision
// rewrite would pick different scales on near-ties and so different files.

import { nearestInt } from './activation.ts';
import { readF16, writeF16, signedMax } from './block.ts';

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

/**
 * make_qx_quants with rmse_type 1 and no importance weights (what the reference quantizers
 * use): a symmetric fit x ≈ scale·(L - nmax), L in [0, 2·nmax), weighting each value by x²,
 * trying 19 scales around -nmax/max. Writes L[lOff..], returns the scale.
 */
export function makeQxQuants(
  n: number,
  nmax: number,
  x: Float32Array,
  xOff: number,
  L: Uint8Array,
  lOff: number,
): number {
  const max = signedMax(x, xOff, n);
  if (Math.abs(max) < GROUP_MAX_EPS) {
    L.fill(0, lOff, lOff + n);
    return 0;
  }
  let iscale = f(-nmax / max);
  let sumlx = 0;
  let suml2 = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xOff + i];
    const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * xi))));
    L[lOff + i] = l + nmax;
    const w = f(xi * xi);
    sumlx = f(sumlx + f(f(w * xi) * l));
    suml2 = f(suml2 + f(f(w * l) * l));
  }
  let scale = suml2 !== 0 ? f(sumlx / suml2) : 0;
  let best = f(scale * sumlx);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    iscale = f(-f(nmax + f(TENTH * is)) / max);
    sumlx = 0;
    suml2 = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xOff + i];
      const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * xi))));
      const w = f(xi * xi);
      sumlx = f(sumlx + f(f(w * xi) * l));
      suml2 = f(suml2 + f(f(w * l) * l));
    }
    if (suml2 > 0 && f(sumlx * sumlx) > f(best * suml2)) {
      for (let i = 0; i < n; i++) {
        L[lOff + i] = nmax + Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * x[xOff + i]))));
      }
      scale = f(sumlx / suml2);
      best = f(scale * sumlx);
    }
  }
  return scale;
}

/**
 * make_q3_quants with do_rmse: like makeQxQuants' first guess, then up to five passes that
 * move single values to the level that most improves the x²-weighted fit. L in [0, 2·nmax).
 * lw is scratch for n signed levels.
 */
export function makeQ3Quants(
  n: number,
  nmax: number,
  x: Float32Array,
  xOff: number,
  L: Uint8Array,
  lOff: number,
  lw: Int8Array,
): number {
  const max = signedMax(x, xOff, n);
  if (Math.abs(max) < GROUP_MAX_EPS) {
    L.fill(0, lOff, lOff + n);
    return 0;
  }
  const iscale = f(-nmax / max);
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
}

/**
 * Decodes the eight 6-bit scales and mins of a Q4_K/Q5_K block (ggml's get_scale_min_k4)
 * from the 12 bytes at w[o..]: scales and mins 0-3 are the low 6 bits of bytes 0-3 and 4-7;
 * 4-7 take their low 4 bits from the nibbles of bytes 8-11 and their top 2 bits from the
 * spare top bits of bytes 0-3 (scales) and 4-7 (mins).
 */
export function decodeScaleMinK4(w: Uint8Array, o: number, sc: Uint8Array, mn: Uint8Array): void {
  for (let j = 0; j < 4; j++) {
    sc[j] = w[o + j] & 63;
    mn[j] = w[o + j + 4] & 63;
    sc[j + 4] = (w[o + j + 8] & 0xf) | ((w[o + j] >> 6) << 4);
    mn[j + 4] = (w[o + j + 8] >> 4) | ((w[o + j + 4] >> 6) << 4);
  }
}

/** The inverse of decodeScaleMinK4: packs eight 6-bit scales and mins into w[o..o+12). */
export function encodeScaleMinK4(sc: Uint8Array, mn: Uint8Array, w: Uint8Array, o: number): void {
  for (let j = 0; j < 4; j++) {
    w[o + j] = sc[j] | ((sc[j + 4] >> 4) << 6);
    w[o + j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
    w[o + j + 8] = (sc[j + 4] & 0xf) | ((mn[j + 4] & 0xf) << 4);
  }
}

/**
 * A super-block's share of the dot product with the Q8_K activation for the types with a
 * min: d·dx·isum - dmin·dx·msum, where the f16 d and dmin are at w[o..o+4) and d·dx and
 * dmin·dx round to f32 as in ggml.
 */
export function scaleMinSum(w: Uint8Array, o: number, xd: number, isum: number, msum: number): number {
  return f(readF16(w, o) * xd) * isum - f(readF16(w, o + 2) * xd) * msum;
}

/** Σ m·Σqx of a Q4_K/Q5_K super-block b: each 6-bit min mn[s] times the activation's two per-16 sums of sub-block s. */
export function minSumK4(bsums: Int16Array, b: number, mn: Uint8Array): number {
  let msum = 0;
  for (let j = 0; j < 16; j++) msum += bsums[b * 16 + j] * mn[j >> 1];
  return msum;
}

/**
 * Re-rounds n values against their group's quantized scale d and min dm (both > or = 0,
 * d ≠ 0): L = clamp(round((x + dm) / d), 0, nmax), as ggml's second pass for Q2_K, Q4_K, Q5_K.
 */
export function roundWithMin(
  x: Float32Array,
  xOff: number,
  n: number,
  d: number,
  dm: number,
  nmax: number,
  L: Uint8Array,
  lOff: number,
): void {
  for (let i = 0; i < n; i++) L[lOff + i] = Math.max(0, Math.min(nmax, nearestInt(f(f(x[xOff + i] + dm) / d))));
}

/**
 * Re-rounds n values against their group's quantized scale d ≠ 0: L = clamp(round(x / d),
 * -nmax, nmax - 1) + nmax, as ggml's second pass for Q3_K and Q6_K.
 */
export function roundSymmetric(
  x: Float32Array,
  xOff: number,
  n: number,
  d: number,
  nmax: number,
  L: Uint8Array,
  lOff: number,
): void {
  for (let i = 0; i < n; i++) L[lOff + i] = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(x[xOff + i] / d)))) + nmax;
}

/**
 * Packs 256 2-bit levels the way Q2_K and Q3_K store their low bits: by 128 values, value
 * 128·c + 32·j + l at bits 2j..2j+1 of dst[q + 32·c + l].
 */
export function pack2Bits(L: Uint8Array, dst: Uint8Array, q: number): void {
  for (let c = 0; c < 2; c++) {
    const lc = 128 * c;
    for (let l = 0; l < 32; l++) {
      dst[q + 32 * c + l] = L[lc + l] | (L[lc + l + 32] << 2) | (L[lc + l + 64] << 4) | (L[lc + l + 96] << 6);
    }
  }
}

// Scratch of quantizeScaleMinK4: one sub-block's weights and search buffer, the fits.
const laux = new Uint8Array(32);
const weights = new Float32Array(32);
const scales = new Float32Array(8);
const mins = new Float32Array(8);
const sc = new Uint8Array(8);
const mn = new Uint8Array(8);

/**
 * The first half of quantize_row_q4_K_ref, which quantize_row_q5_K_ref repeats with other
 * search parameters: per 32-value sub-block of the super-block at x[xb..] an asymmetric fit
 * weighted by rms + |x| (make_qkx2_quants with nmax levels, scales tried from rmin in nstep
 * steps of 0.1); the scales and mins quantized to 6 bits against the block's largest and
 * written with the f16 d and dmin to dst[o..o+16); then the 256 levels re-rounded against
 * the quantized scales into L. The caller packs L in its own layout.
 */
export function quantizeScaleMinK4(
  x: Float32Array,
  xb: number,
  nmax: number,
  rmin: number,
  nstep: number,
  dst: Uint8Array,
  o: number,
  L: Uint8Array,
): void {
  let maxScale = 0;
  let maxMin = 0;
  for (let j = 0; j < 8; j++) {
    const xj = xb + 32 * j;
    let sumX2 = 0;
    for (let l = 0; l < 32; l++) sumX2 = f(sumX2 + f(x[xj + l] * x[xj + l]));
    const avX = f(Math.sqrt(f(sumX2 / 32)));
    for (let l = 0; l < 32; l++) weights[l] = avX + Math.abs(x[xj + l]);
    scales[j] = makeQkx2Quants(32, nmax, x, xj, weights, L, 32 * j, mins, j, laux, rmin, 0.1, nstep, false);
    if (scales[j] > maxScale) maxScale = scales[j];
    if (mins[j] > maxMin) maxMin = mins[j];
  }
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
  for (let j = 0; j < 8; j++) {
    const d = f(dq * sc[j]);
    // A zero scale leaves the sub-block's levels as the search left them, as in ggml.
    if (d !== 0) roundWithMin(x, xb + 32 * j, 32, d, f(dminq * mn[j]), nmax, L, 32 * j);
  }
}
