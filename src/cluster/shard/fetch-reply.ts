// A hand-rolled encoder for FetchTensors replies carrying a chunk: the same bytes ts-proto
// writes, with the tensor data copied once instead of three times (BinaryWriter, finish(),
// Buffer.from). Shard transfer is the one bulk path; everything else uses the generated code.

import { FetchTensorsReply } from '../wire.ts';

function varint(n: number, out: number[]): void {
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
}

function tag(field: number, wireType: number, out: number[]): void {
  varint(field * 8 + wireType, out);
}

export function encodeFetchReply(msg: FetchTensorsReply): Buffer {
  const c = msg.chunk;
  if (!c || msg.header) return Buffer.from(FetchTensorsReply.encode(msg).finish());
  // TensorChunk: 1 index (varint), 2 offset (varint), 3 data (bytes), 4 sha256 (bytes); proto3
  // leaves out fields at their default value, as ts-proto does.
  const head: number[] = [];
  if (c.index !== 0) {
    tag(1, 0, head);
    varint(c.index, head);
  }
  if (c.offset !== 0) {
    tag(2, 0, head);
    varint(c.offset, head);
  }
  const dataHead: number[] = [];
  if (c.data.length !== 0) {
    tag(3, 2, dataHead);
    varint(c.data.length, dataHead);
  }
  const tail: number[] = [];
  if (c.sha256.length !== 0) {
    tag(4, 2, tail);
    varint(c.sha256.length, tail);
  }
  const innerLen = head.length + dataHead.length + c.data.length + tail.length + c.sha256.length;
  const outer: number[] = [];
  tag(2, 2, outer); // FetchTensorsReply.chunk
  varint(innerLen, outer);
  const buf = Buffer.allocUnsafe(outer.length + innerLen);
  let p = 0;
  for (const b of [outer, head, dataHead]) {
    buf.set(b, p);
    p += b.length;
  }
  buf.set(c.data, p);
  p += c.data.length;
  buf.set(tail, p);
  p += tail.length;
  buf.set(c.sha256, p);
  return buf;
}
