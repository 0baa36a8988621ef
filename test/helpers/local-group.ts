// A tensor-parallel group inside one process: the all-reduce of G members running
// concurrently in this event loop, each member's partial encoded in the sync format and every
// member summing all decoded payloads in member order — what the data plane does over sockets,
// without the sockets, so the engine's split can be checked on its own.

import { placeHeadRows, type AllReduce, type TensorMember } from '../../src/engine/tensor-split.ts';
import { SyncCodec, sumPayloads, type SyncFormat } from '../../src/cluster/sync/format.ts';

/**
 * The group's logits of n rows from each member's head output (`parts[m]`: its head rows' logits,
 * or the leader's whole head when the head is not shared), side by side as the leader gathers them.
 */
export function joinHeads(members: readonly TensorMember[], parts: readonly Float32Array[], n = 1): Float32Array {
  const vocab = members[0].config.vocabSize;
  if (!members[0].weights.share.vocabRows) return parts[0].slice();
  const logits = new Float32Array(n * vocab);
  members.forEach((m, i) => placeHeadRows(logits, vocab, parts[i], n, m.weights.share.vocabRows![0]));
  return logits;
}

export class LocalGroup {
  private readonly codec: SyncCodec;
  private payloads: Uint8Array[] = [];
  private waiting: ((parts: Uint8Array[]) => void)[] = [];
  private arrived = 0;
  /** Bytes each member would have sent, summed over members (payload × (size − 1) per sync). */
  bytesSent = 0;
  /** Syncs completed. */
  rounds = 0;

  constructor(
    readonly size: number,
    format: SyncFormat = 'f32',
  ) {
    this.codec = new SyncCodec(format);
  }

  /** Member m's all-reduce. */
  allReduce(m: number): AllReduce {
    return async (buf) => {
      const own = new Uint8Array(this.codec.bytes(buf.length));
      this.codec.encode(buf, own);
      this.payloads[m] = own;
      this.bytesSent += own.length * (this.size - 1);
      const parts = new Promise<Uint8Array[]>((resolve) => this.waiting.push(resolve));
      if (++this.arrived === this.size) {
        const all = this.payloads;
        const waiting = this.waiting;
        this.payloads = [];
        this.waiting = [];
        this.arrived = 0;
        this.rounds++;
        for (const w of waiting) w(all);
      }
      sumPayloads(this.codec, await parts, buf.length, buf, new Float32Array(buf.length));
    };
  }
}
