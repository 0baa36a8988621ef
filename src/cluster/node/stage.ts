// One session on one stage: a Sequence on the shard's SliceRunner (engine/slice.ts: its KV
// cache, the tokens it holds, on the last stage its sampler), fed from the wire. Every message
// is checked against the loaded shard before use; a bad one is a ClusterError('invalid') —
// INVALID_ARGUMENT for the caller — never a crash, and leaves the session as it was. An
// activation may start before the session's end (a kept session reused from a common prompt
// prefix): the session goes back there first.

import type { KvCache } from '../../model/kv-cache.ts';
import type { SamplingOptions } from '../../engine/sampler.ts';
import { StepError } from '../../engine/history.ts';
import { SliceRunner, type Sequence, type SliceModel } from '../../engine/slice.ts';
import { STEP_TARGET_SECONDS, StepBatcher, type BatcherStats } from '../../engine/batcher.ts';
import { f16BytesToF32, f32ToF16Bytes } from '../../ggml/half.ts';
import { NODE_ID_RE } from '../caps.ts';
import { invalid } from '../errors.ts';
import { parseHostPort } from '../net.ts';
import { HASH_RE } from '../shard/shard.ts';
import type { LoadedShard, ShardStore } from '../shard/store.ts';
import { TensorMember } from '../../engine/tensor-split.ts';
import { GroupLeader } from './group.ts';
import {
  DType,
  dtypeBytes,
  logprobsToWire,
  samplingFromWire,
  type Delivery,
  type Hop,
  type SessionOpen,
  type StageTiming,
  type WireActivation,
} from '../wire.ts';

export const SESSION_ID_RE = /^[A-Za-z0-9_-]{8,64}$/;
const MAX_ROUTE = 64;
/** A stage's time on one message above this is not a measurement (a step times out long before). */
const MAX_STAGE_SECONDS = 86_400;

export interface CheckedOpen {
  readonly shard: LoadedShard;
  /** What the session's steps run through: the shard's layers, or its group (this node leads it). */
  readonly model: SliceModel;
  readonly isLast: boolean;
  /** host:port of the next stage (not on the last). */
  readonly next?: string;
  /** host:port of the coordinator's Deliver (last stage only). */
  readonly deliverTo?: string;
  readonly sampling?: SamplingOptions;
  readonly wire: DType;
  /** The stages before this one: each activation carries one timing per hop, in this order. */
  readonly upstream: readonly Hop[];
  /** Stages of the whole route: a step here takes 1/stages of the sessions waiting (engine/batcher.ts). */
  readonly stages: number;
}

/** Checks a message's stage timings: one per hop, each naming its hop's layer range. */
export function checkTimings(timings: readonly StageTiming[], hops: readonly Pick<Hop, 'start' | 'end'>[]): void {
  if (timings.length !== hops.length)
    throw invalid(`${timings.length} stage timings, expected ${hops.length} (one per stage so far)`);
  for (const [i, t] of timings.entries()) {
    const hop = hops[i];
    if (!NODE_ID_RE.test(t.nodeId)) throw invalid(`stage timing ${i} has a bad node id "${t.nodeId.slice(0, 64)}"`);
    if (t.start !== hop.start || t.end !== hop.end) {
      throw invalid(
        `stage timing ${i} is for layers [${t.start}, ${t.end}), that stage runs [${hop.start}, ${hop.end})`,
      );
    }
    if (!(t.seconds >= 0 && t.seconds <= MAX_STAGE_SECONDS))
      throw invalid(`stage timing ${i} says ${t.seconds} s, not in 0..${MAX_STAGE_SECONDS}`);
  }
}

/** Checks a SessionOpen against what this node holds. */
export function checkOpen(o: SessionOpen, store: ShardStore, existing: (id: string) => boolean): CheckedOpen {
  if (!SESSION_ID_RE.test(o.sessionId)) throw invalid('session id must be 8..64 characters of [A-Za-z0-9_-]');
  if (existing(o.sessionId)) throw invalid(`session ${o.sessionId} is already open`);
  if (!HASH_RE.test(o.modelHash)) throw invalid('model hash must be 64 lowercase hex digits');
  if (o.route.length < 1 || o.route.length > MAX_ROUTE)
    throw invalid(`route must have 1..${MAX_ROUTE} hops, got ${o.route.length}`);
  if (!(o.hop < o.route.length)) throw invalid(`hop ${o.hop} is outside the route of ${o.route.length}`);
  let expectStart = 0;
  for (const [i, h] of o.route.entries()) {
    if (h.start !== expectStart || !(h.end > h.start)) {
      throw invalid(
        `route hop ${i} covers [${h.start}, ${h.end}), expected a non-empty range starting at ${expectStart}`,
      );
    }
    expectStart = h.end;
    try {
      parseHostPort(h.address);
    } catch {
      throw invalid(`route hop ${i} has a bad address "${h.address}"`);
    }
  }
  const mine = o.route[o.hop];
  const { shard, model } = stageModel(store, o.modelHash, mine.start, mine.end, mine.group);
  if (expectStart !== shard.nLayers)
    throw invalid(`route ends at layer ${expectStart}, the model has ${shard.nLayers}`);
  if (!(o.ctx >= 1 && o.ctx <= shard.ctx))
    throw invalid(`session ctx ${o.ctx} must be in 1..${shard.ctx} (the loaded shard's)`);
  const isLast = o.hop === o.route.length - 1;
  if (!isLast && o.wire !== DType.DTYPE_F32 && o.wire !== DType.DTYPE_F16)
    throw invalid('wire dtype must be f32 or f16');
  if (isLast) {
    if (!o.sampling) throw invalid('the last stage needs sampling options');
    try {
      parseHostPort(o.deliverTo);
    } catch {
      throw invalid(`deliver_to "${o.deliverTo}" is not a host:port`);
    }
  }
  return {
    shard,
    model,
    isLast,
    next: isLast ? undefined : o.route[o.hop + 1].address,
    deliverTo: isLast ? o.deliverTo : undefined,
    sampling: isLast && o.sampling ? samplingFromWire(o.sampling) : undefined,
    wire: o.wire,
    upstream: o.route.slice(0, o.hop),
    stages: o.route.length,
  };
}

/** The shard a hop runs on: the range whole, or the group this node leads (by the hop's group id). */
function stageModel(
  store: ShardStore,
  hash: string,
  start: number,
  end: number,
  group: string | undefined,
): { shard: LoadedShard; model: SliceModel } {
  const what = `layers [${start}, ${end}) of model ${hash.slice(0, 12)}`;
  if (group) {
    for (const shard of store.loaded.values()) {
      const g = shard.group;
      if (shard.modelHash !== hash || shard.start !== start || shard.end !== end || g?.id !== group) continue;
      if (!(g instanceof GroupLeader)) throw invalid(`this node is not the leader of group ${group} (${what})`);
      if (g.sync.failed) throw invalid(`group ${group} (${what}) has failed: ${g.sync.failed.message}`);
      return { shard, model: g };
    }
    throw invalid(`${what} are not loaded here as group ${group.slice(0, 16)} (LoadShard first)`);
  }
  const shard = store.get(hash, start, end);
  if (!shard) throw invalid(`${what} are not loaded here (LoadShard first)`);
  if (shard.model instanceof TensorMember) throw invalid(`${what} are loaded here as a group member's share`);
  return { shard, model: shard.model };
}

/**
 * Each loaded model's batcher: the sessions on one shard share its runner, and the activations
 * that arrive while a step runs share the next step (engine/batcher.ts). The pipeline fills
 * itself this way: with more sessions than stages, each stage runs all the sessions waiting at
 * it as one step, reading its weights once for all of them.
 */
const batchers = new WeakMap<SliceModel, StepBatcher>();

/**
 * A node's step gives its event loop a turn between layers once it has computed this long.
 * Turns keep the step path's keepalive answered (cluster/rpc.ts counts a peer silent for 1.5 s
 * as lost), and they move hand-offs on: a grpc-js server keeps Node's 64 KiB HTTP/2 receive
 * window (it has no option to raise it), so a prompt's hidden states (9 rows of f32 TinyLlama
 * are 72 KiB) reach the next stage a window at a time, each sent only once this node's event
 * loop reads the peer's WINDOW_UPDATE, and likewise the peer's window opens only once its loop
 * reads the data. With turns every 0.25 s, the next stage sat idle for most of a prompt step
 * while the rest of a hand-off waited (bench:serve, 2 stages, K = 4: stage 2 started the first
 * prompt 270 ms after stage 1 sent it; TTFT p50 865 ms, 584–606 ms with turns every 5 ms or every block). A turn
 * with nothing waiting costs a few µs.
 */
const TURN_SECONDS = 0.005;

function batcherOf(model: SliceModel, stats: BatcherStats): StepBatcher {
  let b = batchers.get(model);
  if (!b)
    batchers.set(
      model,
      (b = new StepBatcher(new SliceRunner(model, { turnSeconds: TURN_SECONDS }), {
        stats,
        targetSeconds: STEP_TARGET_SECONDS,
      })),
    );
  return b;
}

export class StageSession {
  private readonly batcher: StepBatcher;
  private readonly seq: Sequence;
  readonly shard: LoadedShard;
  readonly wire: DType;
  readonly isLast: boolean;
  private readonly upstream: readonly Hop[];
  private readonly stages: number;

  constructor(
    readonly id: string,
    readonly ctx: number,
    c: CheckedOpen,
    /** This node's id, in the timing it appends to each message. */
    private readonly nodeId: string,
    /** The node's step counts, which every shard's batcher adds to. */
    stats: BatcherStats,
  ) {
    this.shard = c.shard;
    this.wire = c.wire;
    this.isLast = c.isLast;
    this.upstream = c.upstream;
    this.stages = c.stages;
    if (c.isLast && !c.sampling) throw invalid('the last stage needs sampling options');
    this.batcher = batcherOf(c.model, stats);
    this.seq = this.batcher.runner.open(ctx, c.sampling);
  }

  get cache(): KvCache {
    return this.seq.cache;
  }

  /** Where the session ends: the positions its KV cache holds. */
  get pos(): number {
    return this.seq.position;
  }

  get isFirst(): boolean {
    return this.shard.model.isFirst;
  }

  /**
   * Validates and runs one message through the shard's runner, in a step shared with the other
   * sessions' messages waiting: the activation for the next stage, or (last) the sampled token.
   * A long prompt runs in pieces over several steps, so the node answers other calls and the
   * other sessions' decode goes on meanwhile.
   */
  async run(a: WireActivation): Promise<{ out?: WireActivation; delivery?: Delivery }> {
    const { dim } = this.shard.model.config;
    if (a.sessionId !== this.id)
      throw invalid(`activation for session "${a.sessionId}" on the stream of session ${this.id}`);
    const n = a.tokenIds.length;
    const inBytes = dtypeBytes(a.dtype);
    if (this.isFirst) {
      if (a.hidden.length !== 0) throw invalid('the first stage embeds token ids: hidden state must be empty');
    } else {
      if (a.dtype !== DType.DTYPE_F32 && a.dtype !== DType.DTYPE_F16)
        throw invalid(`hidden dtype ${a.dtype} is not f32 or f16`);
      if (a.dim !== dim) throw invalid(`hidden dim ${a.dim}, the model's is ${dim}`);
      const want = n * dim * inBytes;
      if (a.hidden.length !== want)
        throw invalid(`hidden state is ${a.hidden.length} bytes, ${n} × ${dim} ${DType[a.dtype]} is ${want}`);
    }
    checkTimings(a.timings, this.upstream);
    // A new generation's sampling, checked on every stage; used by the last.
    const sampling = a.sampling ? samplingFromWire(a.sampling) : undefined;

    const out = Buffer.allocUnsafe(this.isLast ? 0 : n * dim * dtypeBytes(this.wire));
    let step;
    try {
      step = await this.batcher.step(
        {
          seq: this.seq,
          tokens: a.tokenIds,
          start: a.position,
          sampling,
          // Copied: a decoded bytes field is an unaligned view into a larger buffer.
          hiddenIn: (rows, from) => {
            const bytes = a.hidden.subarray(from * dim * inBytes, from * dim * inBytes + rows.length * inBytes);
            if (a.dtype === DType.DTYPE_F32) new Uint8Array(rows.buffer, rows.byteOffset, rows.length * 4).set(bytes);
            else f16BytesToF32(bytes, rows);
          },
          hiddenOut: (rows, from) => {
            if (this.wire === DType.DTYPE_F32)
              out.set(new Uint8Array(rows.buffer, rows.byteOffset, rows.length * 4), from * dim * 4);
            else out.set(f32ToF16Bytes(rows), from * dim * 2);
          },
        },
        this.stages,
      );
    } catch (e) {
      // Refused before anything ran: the session is as it was.
      if (e instanceof StepError) throw invalid(e.message);
      throw e;
    }
    const mine: StageTiming = {
      nodeId: this.nodeId,
      start: this.shard.start,
      end: this.shard.end,
      seconds: step.seconds,
    };
    const timings = [...a.timings, mine];
    if (this.isLast) {
      const logprobs = this.seq.logprobs;
      return {
        delivery: {
          sessionId: this.id,
          position: this.pos,
          tokenId: step.token,
          timings,
          logprobs: logprobs && logprobsToWire(logprobs),
        },
      };
    }
    return {
      out: {
        sessionId: this.id,
        position: a.position,
        tokenIds: a.tokenIds,
        hidden: out,
        dtype: this.wire,
        dim,
        timings,
        sampling: a.sampling,
      },
    };
  }

  /** Drops a step still waiting for the shared runner (its run() rejects); the KV cache goes with the session. */
  close(): void {
    this.batcher.cancel(this.seq);
    const m = this.batcher.runner.model;
    if (m instanceof GroupLeader) m.release(this.seq.cache);
  }
}
