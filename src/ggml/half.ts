// IEEE binary16 (F16) and bfloat16 (BF16) conversions, bit-exact with ggml's scalar paths:
//   f32 → f16  like ggml_compute_fp32_to_fp16: round to nearest even, overflow to ±inf,
//              f16 subnormals kept (not flushed), any NaN → sign | 0x7e00.
//   f32 → bf16 like ggml_compute_fp32_to_bf16: round to nearest even, f32 subnormals kept,
//              NaN keeps its top payload bits and is forced quiet.
//   f16/bf16 → f32 are exact (every f16 and bf16 value is an f32 value).
//
// The byte helpers read and write little-endian explicitly, as GGUF stores it, so they do
// not depend on the host's byte order; the f32 side goes through a Uint32Array view of the
// Float32Array, so NaN payloads survive (a JS number round trip may canonicalise them).

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** The bit pattern of x rounded to f32. */
export function f32Bits(x: number): number {
  scratchF32[0] = x;
  return scratchU32[0];
}

/** The f32 value with this bit pattern. */
export function f32FromBits(bits: number): number {
  scratchU32[0] = bits;
  return scratchF32[0];
}

/** f16 bits of the f32 whose bits are w. */
export function f32BitsToF16(w: number): number {
  const sign = (w >>> 16) & 0x8000;
  const abs = w & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00;
  // 0x477ff000 is 65520, the midpoint between the largest f16 (65504, odd mantissa) and
  // 2^16: the tie goes to the even side, which is infinity.
  if (abs >= 0x477ff000) return sign | 0x7c00;
  if (abs >= 0x38800000) {
    // Normal f16: re-bias the exponent (127 → 15) and round the 13 dropped mantissa bits to
    // nearest even. A carry out of the mantissa correctly bumps the exponent.
    const m = abs - 0x38000000;
    return sign | ((m + 0xfff + ((m >>> 13) & 1)) >>> 13);
  }
  // f16 subnormal (or zero): count units of 2^-24. The f32 is mant × 2^(e-150), so the unit
  // count is mant >> (126 - e) with the dropped bits rounded to nearest even. Below 2^-25
  // (shift > 24) everything rounds to zero, f32 subnormals included.
  const e = abs >>> 23;
  const shift = 126 - e;
  if (shift > 24) return sign;
  const mant = (abs & 0x7fffff) | 0x800000;
  let q = mant >>> shift;
  const rem = mant & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && (q & 1) === 1)) q++;
  // q may reach 0x400, which is exactly the encoding of the smallest normal f16.
  return sign | q;
}

/** f32 bits of the f16 h. */
export function f16ToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0x1f) return (sign | 0x7f800000 | (m << 13)) >>> 0;
  if (e !== 0) return (sign | ((e + 112) << 23) | (m << 13)) >>> 0;
  if (m === 0) return sign >>> 0;
  // Subnormal f16 is a normal f32: shift the leading one into the implicit position.
  let shift = 0;
  let mm = m;
  while ((mm & 0x400) === 0) {
    mm <<= 1;
    shift++;
  }
  return (sign | ((113 - shift) << 23) | ((mm & 0x3ff) << 13)) >>> 0;
}

/** bf16 bits of the f32 whose bits are w. */
export function f32BitsToBf16(w: number): number {
  if ((w & 0x7fffffff) > 0x7f800000) return ((w >>> 16) | 0x40) & 0xffff;
  // The largest finite input (0xff7fffff) plus the rounding bias stays below 2^32.
  return ((w >>> 0) + 0x7fff + ((w >>> 16) & 1)) >>> 16;
}

/** f32 bits of the bf16 h. */
export function bf16ToF32Bits(h: number): number {
  return (h << 16) >>> 0;
}

// Number-level conveniences: x is first rounded to f32, as ggml's functions take a float.

export function f32ToF16(x: number): number {
  return f32BitsToF16(f32Bits(x));
}

export function f16ToF32(h: number): number {
  return f32FromBits(f16ToF32Bits(h));
}

export function f32ToBf16(x: number): number {
  return f32BitsToBf16(f32Bits(x));
}

export function bf16ToF32(h: number): number {
  return f32FromBits(bf16ToF32Bits(h));
}

// Kernels decode F16 rows element by element; like ggml's ggml_table_f32_f16 a 64 K-entry
// table (256 KiB) turns that into one load.
let f16Table: Uint32Array | undefined;

/** f32 bits for every f16 bit pattern, built on first use. */
export function f16ToF32Table(): Uint32Array {
  if (!f16Table) {
    f16Table = new Uint32Array(1 << 16);
    for (let h = 0; h < 1 << 16; h++) f16Table[h] = f16ToF32Bits(h);
  }
  return f16Table;
}

let f16Floats: Float32Array | undefined;

/** The same table as f32 values: F16_TABLE[h] is the value of the f16 with bits h. */
export function f16Float32Table(): Float32Array {
  f16Floats ??= new Float32Array(f16ToF32Table().buffer);
  return f16Floats;
}

/** Little-endian F16 bytes of src, two per element. */
export function f32ToF16Bytes(src: Float32Array): Uint8Array {
  return halfBytes(src, f32BitsToF16);
}

/** Little-endian BF16 bytes of src, two per element. */
export function f32ToBf16Bytes(src: Float32Array): Uint8Array {
  return halfBytes(src, f32BitsToBf16);
}

/** Little-endian half-precision bytes of src, each element's made by `toHalf` from its f32 bits. */
function halfBytes(src: Float32Array, toHalf: (bits: number) => number): Uint8Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint8Array(src.length * 2);
  for (let i = 0; i < bits.length; i++) {
    const h = toHalf(bits[i]);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >>> 8;
  }
  return out;
}

function checkHalfBytes(bytes: Uint8Array, out: Float32Array | undefined): Float32Array {
  if (bytes.length % 2 !== 0) throw new RangeError(`half-precision data has an odd byte count ${bytes.length}`);
  const n = bytes.length / 2;
  if (!out) return new Float32Array(n);
  if (out.length < n) throw new RangeError(`output holds ${out.length} floats, ${n} needed`);
  return out;
}

/** Decodes little-endian F16 bytes into out (or a new array). */
export function f16BytesToF32(bytes: Uint8Array, out?: Float32Array): Float32Array {
  const dst = checkHalfBytes(bytes, out);
  const dstBits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  const table = f16ToF32Table();
  for (let i = 0, n = bytes.length / 2; i < n; i++) dstBits[i] = table[bytes[2 * i] | (bytes[2 * i + 1] << 8)];
  return dst;
}

/** Decodes little-endian BF16 bytes into out (or a new array). */
export function bf16BytesToF32(bytes: Uint8Array, out?: Float32Array): Float32Array {
  const dst = checkHalfBytes(bytes, out);
  const dstBits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0, n = bytes.length / 2; i < n; i++) dstBits[i] = ((bytes[2 * i] | (bytes[2 * i + 1] << 8)) << 16) >>> 0;
  return dst;
}
