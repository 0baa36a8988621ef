// What a tensor-parallel member's partial output looks like on the wire (`--sync`): f32 as it
// is, f16 (half the bytes), or Q8_0 blocks as ggml and distributed-llama lay them out — 32
// values as one f16 scale d = max|x| / 127 and 32 int8 q = round(x / d), 34 bytes for 128
// (0.27× f32). A last block of fewer than 32 values is padded with zeros.
//
// The sum of the group's partials must come out bit-identical on every member, or the
// replicated hidden states drift apart: every member decodes every payload — its own too,
// after the same lossy round trip — and adds them in member order (sumPayloads).

import { f16Float32Table, f32BitsToF16 } from '../../ggml/half.ts';
import * as q8_0 from '../../kernels/q8_0.ts';
import { GgmlType, ggmlTypeInfo } from '../../ggml/types.ts';

export const SYNC_FORMATS = ['q8_0', 'f16', 'f32'] as const;
export type SyncFormat = (typeof SYNC_FORMATS)[number];

/**
 * `--sync` when not given: f32 gives one node's tokens exactly, and was also the faster on a
 * quiet loopback (TinyLlama shape, 2-node group: 1.55× one node against q8_0's 1.33×), since
 * q8_0's encode and decode in JS cost more than its 0.27× bytes save on a fast link. q8_0 is
 * for slow links.
 */
export const DEFAULT_SYNC: SyncFormat = 'f32';

const { blockSize: QK, typeSize: Q8_BLOCK_BYTES } = ggmlTypeInfo(GgmlType.Q8_0)!;

export function isSyncFormat(s: string): s is SyncFormat {
  return (SYNC_FORMATS as readonly string[]).includes(s);
}

/**
 * How a group's gather parts (its members' logits of the head) go on the wire: f32 in an f32
 * group, else f16 — a q8_0 or f16 group has chosen fewer bytes over exact values, and q8_0
 * blocks would blur logits more than sampling should bear.
 */
export function gatherFormat(sync: SyncFormat): 'f32' | 'f16' {
  return sync === 'f32' ? 'f32' : 'f16';
}

/** Bytes of n values in this format. */
export function payloadBytes(format: SyncFormat, n: number): number {
  if (format === 'f32') return 4 * n;
  if (format === 'f16') return 2 * n;
  return Math.ceil(n / QK) * Q8_BLOCK_BYTES;
}

/** Encoder and decoder of one format, with the scratch they need (nothing allocated per call but views). */
export class SyncCodec {
  private readonly pad = new Float32Array(QK);
  private readonly padBytes = new Uint8Array(Q8_BLOCK_BYTES);
  private readonly f16 = f16Float32Table();

  constructor(readonly format: SyncFormat) {}

  bytes(n: number): number {
    return payloadBytes(this.format, n);
  }

  /** Writes src in this format into dst[0, bytes(src.length)). */
  encode(src: Float32Array, dst: Uint8Array): void {
    const n = src.length;
    if (dst.length < this.bytes(n))
      throw new RangeError(`${this.format} payload of ${n} values needs ${this.bytes(n)} bytes, got ${dst.length}`);
    if (this.format === 'f32') {
      dst.set(new Uint8Array(src.buffer, src.byteOffset, 4 * n));
    } else if (this.format === 'f16') {
      const bits = new Uint32Array(src.buffer, src.byteOffset, n);
      for (let i = 0; i < n; i++) {
        const h = f32BitsToF16(bits[i]);
        dst[2 * i] = h & 0xff;
        dst[2 * i + 1] = h >>> 8;
      }
    } else {
      const whole = n - (n % QK);
      q8_0.quantizeRow(src, 0, whole, dst, 0);
      if (whole < n) {
        this.pad.fill(0);
        this.pad.set(src.subarray(whole));
        q8_0.quantizeRow(this.pad, 0, QK, dst, (whole / QK) * Q8_BLOCK_BYTES);
      }
    }
  }

  /** Reads n values in this format from src[0, bytes(n)) into dst[0, n). */
  decode(src: Uint8Array, n: number, dst: Float32Array): void {
    this.check(src, n);
    if (this.format === 'f32') {
      new Uint8Array(dst.buffer, dst.byteOffset, 4 * n).set(src.subarray(0, 4 * n));
      return;
    }
    // -0 is the exact identity of f32 addition (-0 + v is v, the sign of a zero included)
    dst.fill(-0, 0, n);
    this.addHalfOrQ8(src, n, dst);
  }

  /**
   * dst[0, n) += the n values in src, each decoded exactly as decode gives it (the sums come
   * out bit for bit as decoding into scratch and adding). scratch: n values, for an f32 payload
   * that is not 4-byte aligned in its buffer.
   */
  add(src: Uint8Array, n: number, dst: Float32Array, scratch: Float32Array): void {
    this.check(src, n);
    if (this.format !== 'f32') return this.addHalfOrQ8(src, n, dst);
    let x: Float32Array;
    if (src.byteOffset % 4 === 0) x = new Float32Array(src.buffer, src.byteOffset, n);
    else {
      x = scratch;
      new Uint8Array(scratch.buffer, scratch.byteOffset, 4 * n).set(src.subarray(0, 4 * n));
    }
    for (let i = 0; i < n; i++) dst[i] += x[i];
  }

  /** dst[0, n) += an f16 or q8_0 payload's values. */
  private addHalfOrQ8(src: Uint8Array, n: number, dst: Float32Array): void {
    const t = this.f16;
    if (this.format === 'f16') {
      for (let i = 0; i < n; i++) dst[i] += t[src[2 * i] | (src[2 * i + 1] << 8)];
      return;
    }
    const whole = n - (n % QK);
    const q = new Int8Array(src.buffer, src.byteOffset, Math.ceil(n / QK) * Q8_BLOCK_BYTES);
    // d (an f16) times an int8 is exact in f32: no rounding before the add
    for (let i = 0, o = 0; i < whole; i += QK, o += Q8_BLOCK_BYTES) {
      const d = t[src[o] | (src[o + 1] << 8)];
      for (let j = 0; j < QK; j++) dst[i + j] += d * q[o + 2 + j];
    }
    if (whole < n) {
      const off = (whole / QK) * Q8_BLOCK_BYTES;
      this.padBytes.set(src.subarray(off, off + Q8_BLOCK_BYTES));
      q8_0.dequantizeRow(this.padBytes, 0, QK, this.pad, 0);
      for (let j = 0; j < n - whole; j++) dst[whole + j] += this.pad[j];
    }
  }

  private check(src: Uint8Array, n: number): void {
    if (src.length < this.bytes(n))
      throw new RangeError(`${this.format} payload of ${n} values needs ${this.bytes(n)} bytes, got ${src.length}`);
  }
}

/**
 * out[0, n) = Σ over members, in member order, of each decoded payload: the same bits on every
 * member that sums the same payloads. `scratch` holds n values.
 */
export function sumPayloads(
  codec: SyncCodec,
  payloads: readonly Uint8Array[],
  n: number,
  out: Float32Array,
  scratch: Float32Array,
): void {
  codec.decode(payloads[0], n, out);
  for (let m = 1; m < payloads.length; m++) codec.add(payloads[m], n, out, scratch);
}
