// Pieces shared by the K-quant rows (q2_k … q6_k): ggml's scale searches and the 6-bit
// scale/min packing of Q4_K and Q5_K.
//
// The searches are transcriptions of ggml-quants.c's reference helpers, kept in f32: every
// operation is rounded with Math.fround in the order C evaluates it, because the quantizers
// must write the same bytes as llama-quantize (without an imatrix) does. A double-precision
// rewrite would pick different scales on near-ties and so different files.

import { nearestInt } from './activation.ts';

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
export function makeQxQuants(n: number, nmax: number, x: Float32Array, xOff: number, L: Uint8Array, lOff: number): number {
  let max = 0;
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[xOff + i]);
    if (ax > amax) {
      amax = ax;
      max = x[xOff + i];
    }
  }
  if (amax < GROUP_MAX_EPS) {
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
export function makeQ3Quants(n: number, nmax: number, x: Float32Array, xOff: number, L: Uint8Array, lOff: number, lw: Int8Array): number {
  let max = 0;
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[xOff + i]);
    if (ax > amax) {
      amax = ax;
      max = x[xOff + i];
    }
  }
  if (amax < GROUP_MAX_EPS) {
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
