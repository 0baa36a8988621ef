// The data plane of a tensor-parallel group: one socket per pair of members (a full mesh —
// for the 2–4 members of a group on a LAN one round of direct sends is the fewest hops; a ring
// saves bandwidth only on wide vectors), kept open for the group's life, carrying each
// member's partial of every all-reduce as one frame (frame.ts).
//
// Why not gRPC: a sync per block, two per layer, 44 per TinyLlama token, must cost about one
// one-way trip; a grpc-js stream message costs 30–45 µs of framing and scheduling on top
// (scripts/bench-sync.ts measures both).
//
// Trust: the members learn the group's one-time token and each other's data plane addresses
// from the coordinator, over the authenticated gRPC control channel. A link opens only when
// its first frame is a hello that carries that token (compared in constant time), the group
// size and the right member indices; anything else is dropped and logged. With `tls`, the
// links are TLS with the herd's certificates (cluster/tls.ts) on both ends, so a peer must
// also hold the cluster key, and the activations are encrypted.
//
// Besides the syncs, the leader (member 0) may send control frames to the others (sendControl):
// opaque to the data plane, read by the group's owner (onControl), in order with the syncs; and
// the others may send it their parts of a gather (sendGather: e.g. their rows of the head's
// logits), which it takes in member order (gather), in the group's gatherFormat.
//
// Counters (stats) say where a member's sync time goes: encoding and writing its frame,
// waiting for the peers', decoding and summing; and the gathers, their bytes and the leader's
// wait for them. Each burst of all-reduces (a request's steps: ended by a second without one, or
// by close) is logged once as dataplane.stats.
//
// Member i dials every member below it and accepts every member above; once every link is up
// the listener closes. An all-reduce that does not complete within the timeout, a lost link or
// a malformed frame fails the group for good: every later call rejects, and the caller
// re-plans.

import net from 'node:net';
import tls from 'node:tls';
import { timingSafeEqual } from 'node:crypto';
import { ClusterError, invalid } from '../errors.ts';
import { silentLogger, type Logger } from '../log.ts';
import { TLS_NAME } from '../tls.ts';
import { gatherFormat, SyncCodec, sumPayloads, type SyncFormat } from '../sync/format.ts';
import {
  FrameKind,
  FrameReader,
  HEADER_BYTES,
  HELLO_BYTES,
  TOKEN_BYTES,
  formatCode,
  helloFrame,
  newFrame,
  parseHello,
  writeHeader,
  type FrameHeader,
} from './frame.ts';

/** Where a member's data plane listens: a TCP address, or a unix socket path (same host). */
export type Endpoint = { readonly host: string; readonly port: number } | { readonly path: string };

export interface SyncGroupOptions {
  /** This member's index, 0..size-1: the order partials are summed in. */
  readonly member: number;
  readonly size: number;
  /** The group's one-time secret, 32 bytes, handed out over the authenticated control channel. */
  readonly token: Buffer;
  readonly format: SyncFormat;
  /** Most values one all-reduce carries (batch × dim): longer frames are refused unread. */
  readonly maxValues: number;
  /** Largest control frame payload the leader may send (0, the default: none). */
  readonly maxControlBytes?: number;
  /** Longest wait for a link to open and for one all-reduce, ms; default 10 000. */
  readonly timeoutMs?: number;
  /** The herd's TLS identity (PEM): links run over mutual TLS. */
  readonly tls?: { readonly caPem: Buffer; readonly certPem: Buffer; readonly keyPem: Buffer };
  readonly log?: Logger;
}

interface Inbound {
  readonly round: number;
  readonly count: number;
  readonly payload: Buffer;
}

/** What a member's all-reduces cost, summed since the group opened. */
export interface SyncStats {
  rounds: number;
  /** Values all-reduced (rows × dim per round). */
  values: number;
  /** Frame bytes, headers included, control frames too (gather frames aside). */
  bytesSent: number;
  bytesReceived: number;
  /** Gather parts sent (a follower) or taken (the leader), and their frame bytes. */
  gathers: number;
  gatherBytes: number;
  /** ms the leader waited in gather for the others' parts. */
  gatherMs: number;
  /** ms in allReduce encoding this member's partial and writing it to the links. */
  sendMs: number;
  /** ms in allReduce waiting for the peers' frames (their compute left over, and the wire). */
  waitMs: number;
  /** ms in allReduce decoding and summing the partials. */
  sumMs: number;
}

const noStats = (): SyncStats => ({
  rounds: 0,
  values: 0,
  bytesSent: 0,
  bytesReceived: 0,
  gathers: 0,
  gatherBytes: 0,
  gatherMs: 0,
  sendMs: 0,
  waitMs: 0,
  sumMs: 0,
});

/** An all-reduce this long after the last one ends the burst before it (logged as dataplane.stats). */
const BURST_GAP_MS = 1000;

/** One pending all-reduce or gather: done when every frame it needs is in. */
interface Waiter {
  ready(): boolean;
  resolve(): void;
  reject(e: Error): void;
}

export class SyncGroup {
  private readonly codec: SyncCodec;
  private readonly timeoutMs: number;
  private readonly log: Logger;
  private readonly links: (net.Socket | undefined)[];
  private readonly inbox: Inbound[][];
  /** The last round received from each peer. */
  private readonly received: number[];
  private linkWaiters: { resolve(): void; reject(e: Error): void }[] = [];
  private waiter: Waiter | undefined;
  private round = 0;
  /** Gathers: the last one sent (a follower) or taken (the leader), and the parts received from each peer, in order. */
  private gatherRound = 0;
  private readonly gathered: number[];
  private readonly gatherBox: Buffer[][];
  /** Most values one gather part carries (set at connect: 0, none). */
  private maxGather = 0;
  /** How gather parts go on the wire (sync/format.ts gatherFormat). */
  readonly gatherCodec: SyncCodec;
  private failure: Error | undefined;
  private readonly scratch: Float32Array;
  /**
   * Two sync frames of maxValues, used by round parity. A frame written in round r may still be
   * queued on a link in round r + 1 (the peers send theirs without waiting for it), but not in
   * round r + 2: that one starts only after every peer's frame of r + 1, which each peer sends
   * only once it has read this member's frame of r.
   */
  private readonly frames: [Buffer, Buffer];
  /** The payloads of the all-reduce being summed, in member order. */
  private readonly payloads: Buffer[];
  private readonly accepted = new Set<net.Socket>();
  private controlHandler: ((payload: Buffer) => void) | undefined;
  private failHandlers: ((e: Error) => void)[] = [];
  readonly stats: SyncStats = noStats();
  /** stats when the current burst began, and when its last all-reduce ended (performance.now()). */
  private burstFrom: SyncStats = noStats();
  private lastRoundEnd = 0;

  private constructor(
    private readonly opts: SyncGroupOptions,
    private readonly server: net.Server,
  ) {
    this.codec = new SyncCodec(opts.format);
    this.gatherCodec = new SyncCodec(gatherFormat(opts.format));
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.log = (opts.log ?? silentLogger).child({ member: opts.member, group: opts.size });
    this.links = new Array<net.Socket | undefined>(opts.size).fill(undefined);
    this.inbox = Array.from({ length: opts.size }, () => []);
    this.received = new Array<number>(opts.size).fill(0);
    this.gathered = new Array<number>(opts.size).fill(0);
    this.gatherBox = Array.from({ length: opts.size }, () => []);
    this.scratch = new Float32Array(opts.maxValues);
    const frameBytes = HEADER_BYTES + this.codec.bytes(opts.maxValues);
    this.frames = [Buffer.allocUnsafe(frameBytes), Buffer.allocUnsafe(frameBytes)];
    this.payloads = new Array<Buffer>(opts.size);
  }

  /** Opens this member's listener (port 0: any free port); its address is `endpoint`. */
  static async listen(opts: SyncGroupOptions, at: Endpoint): Promise<SyncGroup> {
    const { member, size, token, maxValues } = opts;
    if (!(Number.isInteger(size) && size >= 2 && size <= 0xffff))
      throw new ClusterError('usage', `a group has 2.. members, got ${size}`);
    if (!(Number.isInteger(member) && member >= 0 && member < size))
      throw new ClusterError('usage', `member index ${member} is outside the group of ${size}`);
    if (token.length !== TOKEN_BYTES)
      throw new ClusterError('usage', `the group token must be ${TOKEN_BYTES} bytes, got ${token.length}`);
    if (!(Number.isInteger(maxValues) && maxValues >= 1))
      throw new ClusterError('usage', `maxValues must be a positive integer, got ${maxValues}`);
    const server = opts.tls
      ? tls.createServer({
          ca: opts.tls.caPem,
          cert: opts.tls.certPem,
          key: opts.tls.keyPem,
          requestCert: true,
          rejectUnauthorized: true,
        })
      : net.createServer();
    const group = new SyncGroup(opts, server);
    server.on(opts.tls ? 'secureConnection' : 'connection', (s: net.Socket) => group.accept(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = () => {
        server.off('error', reject);
        resolve();
      };
      if ('path' in at) server.listen(at.path, done);
      else server.listen(at.port, at.host, done);
    });
    return group;
  }

  /** Where this member listens (the port the system chose, for port 0). */
  get endpoint(): Endpoint {
    const a = this.server.address();
    if (typeof a === 'string') return { path: a };
    if (!a) throw new ClusterError('pipeline', 'the data plane listener is closed');
    return { host: a.address, port: a.port };
  }

  /**
   * Links to every other member (`peers[m]`: member m's endpoint; this member's own entry
   * unused). `maxGatherValues`: the most values the leader takes in one member's gather part.
   */
  async connect(peers: readonly Endpoint[], maxGatherValues = 0): Promise<void> {
    if (peers.length !== this.opts.size)
      throw new ClusterError('usage', `${peers.length} endpoints for a group of ${this.opts.size}`);
    this.maxGather = maxGatherValues;
    const all = new Promise<void>((resolve, reject) => this.linkWaiters.push({ resolve, reject }));
    const timer = setTimeout(
      () => this.fail(new ClusterError('pipeline', `data plane: links not up within ${this.timeoutMs} ms`)),
      this.timeoutMs,
    );
    for (let m = 0; m < this.opts.member; m++) this.dial(m, peers[m]);
    this.checkLinks();
    try {
      await all;
    } finally {
      clearTimeout(timer);
    }
    this.server.close();
    this.log.log('info', 'dataplane.connected', { format: this.opts.format, tls: this.opts.tls !== undefined });
  }

  /**
   * Replaces buf (this member's partial) with the sum, in member order, of every member's
   * partial as the sync format carries it; the same bits on every member.
   */
  async allReduce(buf: Float32Array): Promise<void> {
    if (this.failure) throw this.failure;
    const n = buf.length;
    if (n < 1 || n > this.opts.maxValues)
      throw new ClusterError('usage', `an all-reduce of ${n} values (this group takes 1..${this.opts.maxValues})`);
    const t0 = performance.now();
    if (t0 - this.lastRoundEnd > BURST_GAP_MS) this.logBurst();
    const round = ++this.round;
    const bytes = this.codec.bytes(n);
    const frame = this.frames[round & 1].subarray(0, HEADER_BYTES + bytes);
    writeHeader(frame, {
      kind: FrameKind.sync,
      format: formatCode(this.opts.format),
      from: this.opts.member,
      round,
      count: n,
      bytes,
    });
    const own = frame.subarray(HEADER_BYTES);
    this.codec.encode(buf, own);
    for (const link of this.links) {
      if (!link) continue;
      link.write(frame);
      this.stats.bytesSent += frame.length;
    }
    const t1 = performance.now();

    if (!this.roundIn(round))
      await this.until(
        () => this.roundIn(round),
        () =>
          `all-reduce ${round} incomplete after ${this.timeoutMs} ms (missing members ${this.missing(round).join(', ')})`,
      );

    const payloads = this.payloads;
    for (let m = 0; m < this.opts.size; m++) {
      if (m === this.opts.member) {
        payloads[m] = own;
        continue;
      }
      const f = this.inbox[m].shift()!;
      if (f.count !== n)
        throw this.fail(
          invalid(`data plane: member ${m} sent ${f.count} values in all-reduce ${round}, this member ${n}`),
        );
      payloads[m] = f.payload;
    }
    const t2 = performance.now();
    sumPayloads(this.codec, payloads, n, buf, this.scratch);
    const t3 = performance.now();
    const st = this.stats;
    st.rounds++;
    st.values += n;
    st.sendMs += t1 - t0;
    st.waitMs += t2 - t1;
    st.sumMs += t3 - t2;
    this.lastRoundEnd = t3;
  }

  /** A follower's part of the leader's next gather (in gatherCodec's format), in order with its syncs. */
  sendGather(part: Float32Array): void {
    if (this.failure) throw this.failure;
    if (this.opts.member === 0) throw new ClusterError('usage', 'the leader takes the gathers, it sends none');
    const frame = newFrame({
      kind: FrameKind.gather,
      format: formatCode(this.gatherCodec.format),
      from: this.opts.member,
      round: ++this.gatherRound,
      count: part.length,
      bytes: this.gatherCodec.bytes(part.length),
    });
    this.gatherCodec.encode(part, frame.subarray(HEADER_BYTES));
    this.links[0]!.write(frame);
    this.stats.gathers++;
    this.stats.gatherBytes += frame.length;
  }

  /**
   * The leader's next gather: every other member's part, in member order (entry m − 1 is member
   * m's), in gatherCodec's format — views into the read buffers: decode them before the next await.
   */
  async gather(): Promise<Buffer[]> {
    if (this.failure) throw this.failure;
    if (this.opts.member !== 0) throw new ClusterError('usage', 'only the leader (member 0) takes gathers');
    const round = ++this.gatherRound;
    const t0 = performance.now();
    const inAll = () => this.gatherBox.every((box, m) => m === 0 || box.length > 0);
    if (!inAll())
      await this.until(inAll, () => {
        const missing = this.gatherBox.flatMap((box, m) => (m > 0 && box.length === 0 ? [m] : []));
        return `gather ${round} incomplete after ${this.timeoutMs} ms (missing members ${missing.join(', ')})`;
      });
    const parts = this.gatherBox.slice(1).map((box) => box.shift()!);
    this.stats.gathers++;
    for (const p of parts) this.stats.gatherBytes += HEADER_BYTES + p.length;
    this.stats.gatherMs += performance.now() - t0;
    return parts;
  }

  /** Waits until `ready()` (checked on every frame), failing the group after the timeout. */
  private until(ready: () => boolean, late: () => string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new ClusterError('pipeline', `data plane: ${late()}`)), this.timeoutMs);
      this.waiter = {
        ready,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  /**
   * The leader's control frame of `bytes` payload bytes, written by `fill` straight into the
   * frame, to every other member (read there by onControl, in order with the syncs).
   */
  sendControl(bytes: number, fill: (payload: Buffer) => void): void {
    if (this.failure) throw this.failure;
    if (this.opts.member !== 0) throw new ClusterError('usage', 'only the leader (member 0) sends control frames');
    if (bytes > (this.opts.maxControlBytes ?? 0))
      throw new ClusterError('usage', `a control frame of ${bytes} bytes (at most ${this.opts.maxControlBytes ?? 0})`);
    const frame = newFrame({ kind: FrameKind.control, format: 0, from: 0, round: 0, count: 0, bytes });
    fill(frame.subarray(HEADER_BYTES));
    for (const link of this.links) {
      if (!link) continue;
      link.write(frame);
      this.stats.bytesSent += frame.length;
    }
  }

  /** Hears the leader's control frames (a view into the read buffer: use it before returning, or copy). */
  onControl(handler: (payload: Buffer) => void): void {
    this.controlHandler = handler;
  }

  /** Hears the group fail (a lost link, a timeout, a malformed frame, close()); at once if it has. */
  onFail(handler: (e: Error) => void): void {
    if (this.failure) handler(this.failure);
    else this.failHandlers.push(handler);
  }

  /** Why the group failed, if it has. */
  get failed(): Error | undefined {
    return this.failure;
  }

  /** Closes every link and the listener. */
  close(): void {
    this.fail(new ClusterError('pipeline', 'data plane closed'), false);
  }

  /** Whether every peer's frame of `round` is in (checked on every frame: allocates nothing). */
  private roundIn(round: number): boolean {
    for (let m = 0; m < this.opts.size; m++) if (!this.hasRound(m, round)) return false;
    return true;
  }

  private missing(round: number): number[] {
    const out: number[] = [];
    for (let m = 0; m < this.opts.size; m++) if (!this.hasRound(m, round)) out.push(m);
    return out;
  }

  private hasRound(m: number, round: number): boolean {
    return m === this.opts.member || (this.inbox[m].length > 0 && this.inbox[m][0].round === round);
  }

  /** Logs the counters of the burst that ended (if it had any all-reduces) and starts the next. */
  private logBurst(): void {
    const s = this.stats;
    const from = this.burstFrom;
    if (s.rounds === from.rounds) return;
    const ms = (x: number) => Math.round(x * 1000) / 1000;
    this.log.log('info', 'dataplane.stats', {
      format: this.opts.format,
      rounds: s.rounds - from.rounds,
      values: s.values - from.values,
      bytesSent: s.bytesSent - from.bytesSent,
      bytesReceived: s.bytesReceived - from.bytesReceived,
      sendMs: ms(s.sendMs - from.sendMs),
      waitMs: ms(s.waitMs - from.waitMs),
      sumMs: ms(s.sumMs - from.sumMs),
      gathers: s.gathers - from.gathers,
      gatherBytes: s.gatherBytes - from.gatherBytes,
      gatherMs: ms(s.gatherMs - from.gatherMs),
    });
    this.burstFrom = { ...s };
  }

  /** Fails the group: every pending and later call rejects with e. Returns e, to throw. */
  private fail(e: Error, logIt = true): Error {
    if (this.failure) return this.failure;
    this.logBurst();
    this.failure = e;
    if (logIt) this.log.log('warn', 'dataplane.failed', { error: e.message });
    for (const s of [...this.links, ...this.accepted]) s?.destroy();
    this.server.close();
    this.waiter?.reject(e);
    this.waiter = undefined;
    for (const w of this.linkWaiters) w.reject(e);
    this.linkWaiters = [];
    for (const h of this.failHandlers) h(e);
    this.failHandlers = [];
    return e;
  }

  private checkLinks(): void {
    if (this.links.every((l, m) => m === this.opts.member || l !== undefined)) {
      for (const w of this.linkWaiters) w.resolve();
      this.linkWaiters = [];
    }
  }

  private dial(m: number, at: Endpoint): void {
    const t = this.opts.tls;
    const s = t
      ? tls.connect({ ...at, ca: t.caPem, cert: t.certPem, key: t.keyPem, servername: TLS_NAME })
      : net.connect(at);
    s.setNoDelay(true);
    s.once(t ? 'secureConnect' : 'connect', () =>
      s.write(helloFrame(this.opts.member, this.opts.token, this.opts.size, m)),
    );
    this.serve(s, m);
  }

  private accept(s: net.Socket): void {
    if (this.failure) return void s.destroy();
    s.setNoDelay(true);
    this.accepted.add(s);
    s.once('close', () => this.accepted.delete(s));
    this.serve(s, undefined);
  }

  /**
   * Reads a link: first a hello (from member `expect` when this end dialed; from any member
   * above this one when it accepted), then sync frames.
   */
  private serve(s: net.Socket, expect: number | undefined): void {
    const { member, size, token, maxValues } = this.opts;
    const where = expect === undefined ? `a connection from ${s.remoteAddress ?? 'a unix socket'}` : `member ${expect}`;
    let peer: number | undefined;
    const refuse = (e: Error) => {
      if (peer !== undefined || expect !== undefined) return void this.fail(e);
      // an unauthenticated connection: dropped, the group goes on
      this.log.log('warn', 'dataplane.refused', { error: e.message });
      s.destroy();
    };
    const check = (h: FrameHeader) => {
      if (peer === undefined) {
        if (h.kind !== FrameKind.hello || h.bytes !== HELLO_BYTES)
          throw new ClusterError('auth', `data plane: ${where} did not open with a hello`);
        return;
      }
      if (h.kind === FrameKind.control) {
        if (peer !== 0 || !this.controlHandler)
          throw invalid(`data plane: member ${peer} sent a control frame (only the leader does, to the others)`);
        if (h.bytes > (this.opts.maxControlBytes ?? 0))
          throw invalid(`data plane: a control frame of ${h.bytes} bytes (at most ${this.opts.maxControlBytes ?? 0})`);
        return;
      }
      if (h.kind === FrameKind.gather) {
        if (member !== 0) throw invalid(`data plane: member ${peer} sent a gather part (only the leader takes them)`);
        if (h.count < 1 || h.count > this.maxGather)
          throw invalid(
            `data plane: member ${peer} sent a gather part of ${h.count} values (at most ${this.maxGather})`,
          );
        if (h.format !== formatCode(this.gatherCodec.format) || h.bytes !== this.gatherCodec.bytes(h.count))
          throw invalid(
            `data plane: member ${peer} sent ${h.bytes} bytes for ${h.count} gather values (format ${h.format}, the group's is ${this.gatherCodec.format})`,
          );
        if (h.round !== this.gathered[peer] + 1)
          throw invalid(`data plane: member ${peer} sent gather part ${h.round} after ${this.gathered[peer]}`);
        return;
      }
      if (h.kind !== FrameKind.sync) throw invalid(`data plane: member ${peer} sent a second hello`);
      if (h.from !== peer) throw invalid(`data plane: member ${peer}'s link carries a frame from member ${h.from}`);
      if (h.format !== formatCode(this.opts.format))
        throw invalid(`data plane: member ${peer} sent sync format ${h.format}, the group's is ${this.opts.format}`);
      if (h.count < 1 || h.count > maxValues)
        throw invalid(`data plane: member ${peer} sent ${h.count} values (at most ${maxValues})`);
      if (h.bytes !== this.codec.bytes(h.count))
        throw invalid(`data plane: member ${peer} sent ${h.bytes} bytes for ${h.count} ${this.opts.format} values`);
      if (h.round !== this.received[peer] + 1)
        throw invalid(`data plane: member ${peer} sent all-reduce ${h.round} after ${this.received[peer]}`);
    };
    const onFrame = (h: FrameHeader, payload: Buffer) => {
      if (peer === undefined) {
        const hello = parseHello(payload);
        const want = expect ?? h.from;
        const ok =
          timingSafeEqual(hello.token, token) &&
          hello.size === size &&
          hello.to === member &&
          h.from === want &&
          (expect !== undefined || (h.from > member && h.from < size && this.links[h.from] === undefined));
        if (!ok) throw new ClusterError('auth', `data plane: ${where} sent a hello that does not match this group`);
        peer = h.from;
        this.links[peer] = s;
        this.accepted.delete(s);
        if (expect === undefined) s.write(helloFrame(member, token, size, peer));
        this.checkLinks();
        return;
      }
      if (h.kind !== FrameKind.gather) this.stats.bytesReceived += HEADER_BYTES + payload.length;
      if (h.kind === FrameKind.control) return void this.controlHandler?.(payload);
      if (h.kind === FrameKind.gather) {
        this.gathered[peer] = h.round;
        const parts = this.gatherBox[peer];
        parts.push(payload);
        // a member sends a part for a head the leader asked for, and the leader asks again only once it took the last
        if (parts.length > 1) throw invalid(`data plane: member ${peer} sent a gather part nobody asked for`);
      } else {
        this.received[peer] = h.round;
        const box = this.inbox[peer];
        box.push({ round: h.round, count: h.count, payload });
        // a member finishes round r only with this member's frame of r, so it can be one round ahead, not more
        if (box.length > 2) throw invalid(`data plane: member ${peer} is ${box.length} all-reduces ahead`);
      }
      const w = this.waiter;
      if (w && w.ready()) {
        this.waiter = undefined;
        w.resolve();
      }
    };
    const reader = new FrameReader(check, onFrame);
    s.on('data', (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch (e) {
        refuse(e as Error);
      }
    });
    s.on('error', (e) => refuse(new ClusterError('pipeline', `data plane: link to ${where}: ${e.message}`)));
    s.on('close', () => {
      if (peer !== undefined) this.fail(new ClusterError('pipeline', `data plane: member ${peer} closed its link`));
      else if (expect !== undefined)
        this.fail(new ClusterError('pipeline', `data plane: ${where} closed before its hello`));
    });
    // An accepted connection has the timeout to say hello.
    if (expect === undefined) {
      const timer = setTimeout(() => {
        if (peer === undefined)
          refuse(new ClusterError('auth', `data plane: ${where} sent no hello within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      s.once('close', () => clearTimeout(timer));
    }
  }
}
