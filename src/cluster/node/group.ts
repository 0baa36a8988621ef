// A node's part in a tensor-parallel group (a stage whose layers are split across nodes,
// engine/tensor-split.ts). The leader (member 0) is the stage the route names: its sessions
// run through the shard's StepBatcher and SliceRunner like any stage's, over a GroupLeader,
// whose forwardLayers first tells the other members what the step runs — each entry's KV slot,
// start and rows, and the hidden rows themselves — in one control frame on the data plane,
// then runs its share with the group's all-reduce. A follower runs the same step on its share
// as the frames come, in order, with a KV cache share per slot; the leader frees a slot when
// its session closes. Batching carries over: a step of several sessions is one frame and one
// set of syncs. A shared head (model/tensor-share.ts: each member holds rows of output.weight)
// is one more control frame — the rows to sample from — after which every member computes its
// rows' logits, and the leader gathers the followers' parts beside its own before sampling (f32
// in an f32 group, else f16: dataplane/group.ts).
//
// Linking: at LoadShard the member listens on an ephemeral port (reported in LoadProgress),
// the coordinator passes each member the ports of the members before it, and the member
// dials them once its share is loaded (dataplane/group.ts checks the one-time token). The
// group lives as long as the shard; a lost member fails it for good: the leader's step fails,
// its Forward stream with it, and the coordinator re-plans (coordinator/recovery.ts).

import { createHash } from 'node:crypto';
import type { KvCache } from '../../model/kv-cache.ts';
import type { Segment } from '../../model/transformer.ts';
import type { SliceModel } from '../../engine/slice.ts';
import { placeHeadRows, type TensorMember } from '../../engine/tensor-split.ts';
import type { TensorShare } from '../../model/tensor-share.ts';
import { SyncGroup, type Endpoint } from '../dataplane/group.ts';
import { TOKEN_BYTES } from '../dataplane/frame.ts';
import { isSyncFormat, type SyncFormat } from '../sync/format.ts';
import { ClusterError, invalid } from '../errors.ts';
import type { Logger } from '../log.ts';
import { parseHostPort } from '../net.ts';
import type { ShardGroup } from '../shard/store.ts';
import type { WireTensorGroup } from '../wire.ts';
import type { SliceManifest } from '../shard/manifest.ts';

/** Rows a group step takes at most: the batch every shard loads with (Transformer's and TensorMember's default). */
export const GROUP_BATCH = 32;
/** Sessions a group holds at most (the node's session limit). */
const MAX_SLOTS = 256;
const MAX_GROUP = 64;
/** A lost member fails the group at once (its link closes); this bounds a silent one and the linking. */
const GROUP_TIMEOUT_MS = 120_000;

const CONTROL_STEP = 1;
const CONTROL_FREE = 2;
/**
 * The head of n rows (u16 entries = n, then n × u32: which rows of the last step's hidden
 * states, which every member holds alike): each member's logits of its head rows, gathered.
 */
const CONTROL_LOGITS = 3;
/** u8 kind, u8 0, u16 entries. */
const CONTROL_HEAD = 4;
/** u32 slot, u32 start, u32 rows per entry. */
const ENTRY_BYTES = 12;

/** A group's id in routes: the first 8 bytes of sha256(token), hex (the token itself stays with the members). */
export function groupId(token: Buffer): string {
  return createHash('sha256').update(token).digest('hex').slice(0, 16);
}

/** A checked TensorGroup of a LoadShard. */
export interface MemberPlace {
  readonly size: number;
  readonly share: TensorShare;
  readonly sync: SyncFormat;
  readonly token: Buffer;
  readonly peers: readonly Endpoint[];
  /** Sessions the group holds at once: the leader opens at most this many, a follower reserves their KV shares. */
  readonly sessions: number;
}

/** Checks a LoadShard's group (its shares' bounds are the model's: checked at load). */
export function checkGroup(g: WireTensorGroup): MemberPlace {
  if (!(g.size >= 2 && g.size <= MAX_GROUP)) throw invalid(`group size ${g.size} must be in 2..${MAX_GROUP}`);
  if (!(g.member < g.size)) throw invalid(`member ${g.member} is outside the group of ${g.size}`);
  if (!isSyncFormat(g.sync)) throw invalid(`sync format "${g.sync.slice(0, 16)}" is not q8_0, f16 or f32`);
  if (g.token.length !== TOKEN_BYTES) throw invalid(`the group token must be ${TOKEN_BYTES} bytes`);
  if (g.peers.length !== g.member)
    throw invalid(`member ${g.member} needs the data plane addresses of the ${g.member} members before it`);
  const peers = g.peers.map((p, i): Endpoint => {
    try {
      return parseHostPort(p);
    } catch {
      throw invalid(`group peer ${i} has a bad address "${p.slice(0, 64)}"`);
    }
  });
  // Checked against the model's metadata at load (loadShareWeights), and the manifest's parts against them (shard/store.ts)
  if (!(g.kvStart < g.kvEnd)) throw invalid(`KV heads [${g.kvStart}, ${g.kvEnd}) are empty`);
  if (!(g.ffnStart < g.ffnEnd)) throw invalid(`FFN rows [${g.ffnStart}, ${g.ffnEnd}) are empty`);
  const headShared = g.vocabEnd > 0;
  if (headShared && !(g.vocabStart < g.vocabEnd)) throw invalid(`head rows [${g.vocabStart}, ${g.vocabEnd}) are empty`);
  // the leader places the members' parts after its own, in member order
  if (headShared && g.member === 0 && g.vocabStart !== 0)
    throw invalid(`the leader's head rows must start at row 0, not ${g.vocabStart}`);
  const sessions = g.sessions || 1;
  if (sessions > MAX_SLOTS) throw invalid(`a group holds at most ${MAX_SLOTS} sessions, asked ${sessions}`);
  const share: TensorShare = { member: g.member, kvHeads: [g.kvStart, g.kvEnd], ffnRows: [g.ffnStart, g.ffnEnd] };
  return {
    size: g.size,
    share: headShared ? { ...share, vocabRows: [g.vocabStart, g.vocabEnd] } : share,
    sync: g.sync,
    token: Buffer.from(g.token),
    peers,
    sessions,
  };
}

/** The most values one all-reduce of the range carries: GROUP_BATCH rows of dim (a norm's length: norms are whole in a share). */
export function groupMaxValues(manifest: SliceManifest, start: number): number {
  const norm = manifest.tensors.find((x) => x.name === `blk.${start}.attn_norm.weight`);
  if (!norm) throw invalid(`the manifest has no blk.${start}.attn_norm.weight`);
  return GROUP_BATCH * Number(norm.dims[0]);
}

/** Opens the member's data plane listener (any free port on `host`). */
export function listenMember(
  place: MemberPlace,
  maxValues: number,
  host: string,
  tls: { caPem: Buffer; certPem: Buffer; keyPem: Buffer } | undefined,
  log: Logger,
): Promise<SyncGroup> {
  return SyncGroup.listen(
    {
      member: place.share.member,
      size: place.size,
      token: place.token,
      format: place.sync,
      maxValues,
      maxControlBytes: CONTROL_HEAD + GROUP_BATCH * ENTRY_BYTES + 4 * maxValues,
      timeoutMs: GROUP_TIMEOUT_MS,
      tls,
      log,
    },
    { host, port: 0 },
  );
}

/** Links the member to the others (dials the ones before it) and starts its part: the leader's model, or the follower's loop. */
export async function linkMember(
  sync: SyncGroup,
  place: MemberPlace,
  member: TensorMember,
  maxValues: number,
  log: Logger,
): Promise<GroupRole> {
  if (member.batch * member.config.dim > maxValues || member.batch > GROUP_BATCH)
    throw new ClusterError('shard', `a member's steps of ${member.batch} rows exceed the group's ${maxValues} values`);
  const peers: Endpoint[] = [...place.peers];
  // connect() reads the endpoints of the members before this one; the rest dial in
  while (peers.length < place.size) peers.push({ host: '', port: 0 });
  // the leader takes each other member's head rows' logits of up to a step's rows
  await sync.connect(peers, place.share.member === 0 ? member.batch * member.config.vocabSize : 0);
  const id = groupId(place.token);
  return place.share.member === 0
    ? new GroupLeader(member, sync, id, place.sessions)
    : new GroupFollower(member, sync, id, place.sessions, log);
}

export type GroupRole = GroupLeader | GroupFollower;

/** The leader's shard as a runner sees it: each step told to the followers, then run with the group's syncs. */
export class GroupLeader implements SliceModel, ShardGroup {
  private readonly slots = new WeakMap<KvCache, number>();
  private nextSlot = 1;
  /** Sessions open on the group now (at most `sessions`: the followers hold KV room for that many). */
  open = 0;
  private readonly allReduce = (buf: Float32Array) => this.sync.allReduce(buf);
  /** The gathered logits of a shared head (grown on demand). */
  private logits = new Float32Array(0);

  constructor(
    readonly member: TensorMember,
    readonly sync: SyncGroup,
    readonly id: string,
    readonly sessions: number,
  ) {}

  get config() {
    return this.member.config;
  }
  get ctx(): number {
    return this.member.ctx;
  }
  get batch(): number {
    return this.member.batch;
  }
  get isFirst(): boolean {
    return this.member.isFirst;
  }
  get isLast(): boolean {
    return this.member.isLast;
  }

  /** A session's KV cache share here; the followers open theirs on its first step. */
  newCache(): KvCache {
    if (this.open >= this.sessions)
      throw new ClusterError('pipeline', `group ${this.id} holds ${this.open} sessions, its most`);
    const c = this.member.newCache();
    this.slots.set(c, this.nextSlot++);
    this.open++;
    return c;
  }

  embed(tokens: readonly number[], x: Float32Array): void {
    this.member.embed(tokens, x);
  }

  /**
   * The logits of n rows: with a shared head the followers are told which rows of the step's
   * hidden states (`at`) and compute their head rows while the leader computes its own, then the
   * leader puts the parts side by side; else the leader's whole head.
   */
  async head(x: Float32Array, n: number, at?: readonly number[]): Promise<Float32Array> {
    if (!this.member.weights.share.vocabRows) return this.member.head(x, n);
    if (!at || at.length !== n)
      throw new ClusterError('pipeline', 'a shared head needs the rows its hidden states are');
    const { vocabSize } = this.config;
    this.sync.sendControl(CONTROL_HEAD + 4 * n, (frame) => {
      frame[0] = CONTROL_LOGITS;
      frame[1] = 0;
      frame.writeUInt16LE(n, 2);
      for (let i = 0; i < n; i++) frame.writeUInt32LE(at[i], CONTROL_HEAD + 4 * i);
    });
    if (this.logits.length < n * vocabSize) this.logits = new Float32Array(n * vocabSize);
    const logits = this.logits.subarray(0, n * vocabSize);
    const own = this.member.head(x, n);
    placeHeadRows(logits, vocabSize, own, n, 0);
    let rows = own.length / n;
    const codec = this.sync.gatherCodec;
    for (const [i, part] of (await this.sync.gather()).entries()) {
      const rowBytes = part.length / n;
      const width = rowBytes / codec.bytes(1);
      if (!(Number.isInteger(width) && width >= 1 && rows + width <= vocabSize))
        throw this.fails(
          `member ${i + 1} sent ${part.length} bytes of logits for ${n} rows from head row ${rows} of ${vocabSize}`,
        );
      // row by row into the logits' rows, each vocabSize apart
      for (let r = 0; r < n; r++)
        codec.decode(
          part.subarray(r * rowBytes, (r + 1) * rowBytes),
          width,
          logits.subarray(r * vocabSize + rows, r * vocabSize + rows + width),
        );
      rows += width;
    }
    if (rows !== vocabSize) throw this.fails(`the members' head rows cover ${rows} of the ${vocabSize}`);
    return logits;
  }

  /** A follower broke the group's protocol: the group fails for good (the coordinator re-plans). */
  private fails(why: string): Error {
    const e = new ClusterError('pipeline', `group ${this.id}: ${why}`);
    this.sync.close();
    return e;
  }

  async forwardLayers(x: Float32Array, segments: readonly Segment[]): Promise<void> {
    const dim = this.config.dim;
    const n = segments.reduce((s, seg) => s + seg.n, 0);
    const slots = segments.map((seg) => {
      const slot = this.slots.get(seg.cache);
      if (slot === undefined) throw new ClusterError('pipeline', 'a KV cache this group did not open');
      return slot;
    });
    this.sync.sendControl(CONTROL_HEAD + segments.length * ENTRY_BYTES + 4 * n * dim, (frame) => {
      frame[0] = CONTROL_STEP;
      frame[1] = 0;
      frame.writeUInt16LE(segments.length, 2);
      let off = CONTROL_HEAD;
      for (const [i, seg] of segments.entries()) {
        frame.writeUInt32LE(slots[i], off);
        frame.writeUInt32LE(seg.start, off + 4);
        frame.writeUInt32LE(seg.n, off + 8);
        off += ENTRY_BYTES;
      }
      frame.set(new Uint8Array(x.buffer, x.byteOffset, 4 * n * dim), off);
    });
    await this.member.forwardLayers(x, segments, this.allReduce);
  }

  /** The session of this cache closed: the followers drop their share of it. */
  release(cache: KvCache): void {
    const slot = this.slots.get(cache);
    if (slot === undefined) return;
    this.slots.delete(cache);
    this.open--;
    if (this.sync.failed) return;
    this.sync.sendControl(CONTROL_HEAD + 4, (frame) => {
      frame[0] = CONTROL_FREE;
      frame[1] = 0;
      frame.writeUInt16LE(1, 2);
      frame.writeUInt32LE(slot, CONTROL_HEAD);
    });
  }

  close(): void {
    this.sync.close();
  }
}

/** A member other than the leader: runs each step the leader sends, on its share, in order. */
export class GroupFollower implements ShardGroup {
  private readonly caches = new Map<number, KvCache>();
  /** The hidden states of the last step, as its layers left them (a head frame names rows of them). */
  private readonly x: Float32Array;
  private stepRows = 0;
  /** The rows a head frame names, side by side. */
  private readonly headX: Float32Array;
  private chain: Promise<void> = Promise.resolve();
  private readonly allReduce = (buf: Float32Array) => this.sync.allReduce(buf);
  steps = 0;

  constructor(
    readonly member: TensorMember,
    readonly sync: SyncGroup,
    readonly id: string,
    /** KV slots it holds at most (reserved in its node's budget at load). */
    private readonly sessions: number,
    private readonly log: Logger,
  ) {
    this.x = new Float32Array(member.batch * member.config.dim);
    this.headX = new Float32Array(member.batch * member.config.dim);
    sync.onControl((payload) => {
      // copied: the payload is a view into the socket's read buffer
      const frame = Buffer.from(payload);
      this.chain = this.chain
        .then(() => (this.sync.failed ? undefined : this.handle(frame)))
        .catch((e: unknown) => {
          this.log.log('warn', 'group.step_failed', { group: this.id, error: (e as Error).message });
          this.sync.close();
        });
    });
    sync.onFail(() => this.caches.clear());
  }

  private async handle(frame: Buffer): Promise<void> {
    if (frame.length < CONTROL_HEAD) throw invalid('group control frame shorter than its header');
    const kind = frame[0];
    const entries = frame.readUInt16LE(2);
    if (kind === CONTROL_FREE) {
      if (frame.length !== CONTROL_HEAD + 4 * entries) throw invalid('group free frame of the wrong length');
      for (let i = 0; i < entries; i++) this.caches.delete(frame.readUInt32LE(CONTROL_HEAD + 4 * i));
      return;
    }
    const dim = this.member.config.dim;
    if (kind === CONTROL_LOGITS) {
      if (entries < 1 || entries > this.member.batch || frame.length !== CONTROL_HEAD + 4 * entries)
        throw invalid(`group head frame of ${entries} rows in ${frame.length} bytes`);
      if (!this.member.weights.share.vocabRows) throw invalid('a head frame to a member without head rows');
      // the named rows of the last step's hidden states (this.x, as its layers left them), side by side
      for (let i = 0; i < entries; i++) {
        const row = frame.readUInt32LE(CONTROL_HEAD + 4 * i);
        if (row >= this.stepRows) throw invalid(`group head frame names row ${row} of a step of ${this.stepRows}`);
        this.headX.set(this.x.subarray(row * dim, (row + 1) * dim), i * dim);
      }
      this.sync.sendGather(this.member.head(this.headX, entries));
      return;
    }
    if (kind !== CONTROL_STEP) throw invalid(`group control frame of unknown kind ${kind}`);
    const segments: Segment[] = [];
    let rows = 0;
    for (let i = 0; i < entries; i++) {
      const off = CONTROL_HEAD + i * ENTRY_BYTES;
      if (off + ENTRY_BYTES > frame.length) throw invalid('group step frame cut short');
      const slot = frame.readUInt32LE(off);
      const start = frame.readUInt32LE(off + 4);
      const n = frame.readUInt32LE(off + 8);
      let cache = this.caches.get(slot);
      if (!cache) {
        if (this.caches.size >= this.sessions)
          throw invalid(`the leader opened more than the group's ${this.sessions} sessions`);
        this.caches.set(slot, (cache = this.member.newCache()));
      }
      segments.push({ start, n, cache });
      rows += n;
    }
    const off = CONTROL_HEAD + entries * ENTRY_BYTES;
    if (rows < 1 || rows > this.member.batch || frame.length !== off + 4 * rows * dim)
      throw invalid(`group step of ${rows} rows in a frame of ${frame.length} bytes`);
    const x = this.x.subarray(0, rows * dim);
    new Uint8Array(x.buffer, x.byteOffset, 4 * rows * dim).set(frame.subarray(off));
    this.stepRows = 0;
    await this.member.forwardLayers(x, segments, this.allReduce);
    this.stepRows = rows;
    this.steps++;
  }

  close(): void {
    this.sync.close();
  }
}
