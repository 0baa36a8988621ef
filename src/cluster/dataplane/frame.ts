// The data plane's frames: a fixed 16-byte little-endian header and a payload.
//
//   u8  kind      1 hello (opens a link), 2 sync (one member's partial of one all-reduce),
//                 3 control (the leader's word to the others: what a step runs; cluster/node/group.ts)
//                 4 gather (a member's part of a gather to the leader: its rows of the head's logits,
//                   in sync/format.ts gatherFormat)
//   u8  format    the sync format of the payload (sync and gather frames; 0 in a hello)
//   u16 from      the sender's member index
//   u32 round     sync and gather frames: the all-reduce's (gather's) sequence number on this link, from 1
//   u32 count     sync and gather frames: values in the payload
//   u32 bytes     payload bytes
//
// A hello's payload is the group's 32-byte token, the group size (u16) and the member index
// the sender means to reach (u16). The reader checks every header against the caller's limits
// before it buffers the payload, so a peer cannot make it hold more than one frame's worth.

import { invalid } from '../errors.ts';
import { SYNC_FORMATS, type SyncFormat } from '../sync/format.ts';

export const HEADER_BYTES = 16;
export const TOKEN_BYTES = 32;
export const HELLO_BYTES = TOKEN_BYTES + 4;

export const FrameKind = { hello: 1, sync: 2, control: 3, gather: 4 } as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

export interface FrameHeader {
  readonly kind: FrameKind;
  readonly format: number;
  readonly from: number;
  readonly round: number;
  readonly count: number;
  readonly bytes: number;
}

export function formatCode(f: SyncFormat): number {
  return SYNC_FORMATS.indexOf(f);
}

/** A frame with its payload space: the caller fills buf[HEADER_BYTES, HEADER_BYTES + h.bytes). */
export function newFrame(h: FrameHeader): Buffer {
  const buf = Buffer.allocUnsafe(HEADER_BYTES + h.bytes);
  writeHeader(buf, h);
  return buf;
}

/** Writes h into buf[0, HEADER_BYTES) (a frame buffer reused from round to round). */
export function writeHeader(buf: Buffer, h: FrameHeader): void {
  buf[0] = h.kind;
  buf[1] = h.format;
  buf.writeUInt16LE(h.from, 2);
  buf.writeUInt32LE(h.round, 4);
  buf.writeUInt32LE(h.count, 8);
  buf.writeUInt32LE(h.bytes, 12);
}

export function helloFrame(from: number, token: Buffer, size: number, to: number): Buffer {
  const buf = newFrame({ kind: FrameKind.hello, format: 0, from, round: 0, count: 0, bytes: HELLO_BYTES });
  token.copy(buf, HEADER_BYTES);
  buf.writeUInt16LE(size, HEADER_BYTES + TOKEN_BYTES);
  buf.writeUInt16LE(to, HEADER_BYTES + TOKEN_BYTES + 2);
  return buf;
}

export interface Hello {
  readonly token: Buffer;
  readonly size: number;
  readonly to: number;
}

export function parseHello(payload: Buffer): Hello {
  return {
    token: payload.subarray(0, TOKEN_BYTES),
    size: payload.readUInt16LE(TOKEN_BYTES),
    to: payload.readUInt16LE(TOKEN_BYTES + 2),
  };
}

/**
 * Cuts a byte stream into frames. `check` sees each header before its payload is buffered and
 * throws (a ClusterError) to refuse it; the frame handler runs synchronously per frame.
 */
export class FrameReader {
  private pending: Buffer | undefined;

  constructor(
    private readonly check: (h: FrameHeader) => void,
    private readonly onFrame: (h: FrameHeader, payload: Buffer) => void,
  ) {}

  /** Takes the next chunk of the stream. Throws what check throws, or on a malformed header. */
  push(chunk: Buffer): void {
    let buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = undefined;
    let off = 0;
    while (buf.length - off >= HEADER_BYTES) {
      const kind = buf[off];
      if (kind < FrameKind.hello || kind > FrameKind.gather) throw invalid(`data plane: unknown frame kind ${kind}`);
      const h: FrameHeader = {
        kind: kind as FrameKind,
        format: buf[off + 1],
        from: buf.readUInt16LE(off + 2),
        round: buf.readUInt32LE(off + 4),
        count: buf.readUInt32LE(off + 8),
        bytes: buf.readUInt32LE(off + 12),
      };
      this.check(h);
      if (buf.length - off < HEADER_BYTES + h.bytes) break;
      const start = off + HEADER_BYTES;
      off = start + h.bytes;
      this.onFrame(h, buf.subarray(start, off));
    }
    if (off < buf.length) {
      buf = buf.subarray(off);
      // a copy, so a partly read frame does not pin the whole chunk it came in
      this.pending = Buffer.from(buf);
    }
  }
}
