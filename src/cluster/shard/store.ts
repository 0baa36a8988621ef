// The node's shards: slices of models resident in memory, and how they get there. In order:
// already in memory (reused, no reload); the same model file in --model-dir (read directly);
// a slice file in the cache dir from an earlier transfer (survives restarts); else the tensors
// of the range are pulled from the coordinator (FetchTensors), checked and cached. A
// tensor-parallel member's slice holds only its share (its manifest lists the parts,
// model/share-cut.ts): it pulls, checks and caches only those bytes, under its share's name.
//
// Integrity: the coordinator's LoadShard carries the range's manifest (manifest.ts), each
// tensor's sha256 from its own file. Fetched bytes are checked against it, not against the
// sha256 the sender supplies; the slice is written under a temporary name, parsed and checked
// whole, and only then enters the cache with a record of its manifest (record.ts). A cached
// slice whose record does not hold is neither advertised nor used, and is replaced. A load that
// fails discards the slice and fetches once more before it fails, naming the tensor and node.
//
// Bounds: loaded shards not in use are evicted least recently used first when a new one would
// not fit the node's room for weights; the cache dir holds at most `cacheMaxBytes` of slices,
// least recently used ones not loaded go first.

import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { freemem } from 'node:os';
import { join } from 'node:path';
import { GgufFile } from '../../gguf/reader.ts';
import { Transformer } from '../../model/transformer.ts';
import { TensorMember } from '../../engine/tensor-split.ts';
import type { TensorShare } from '../../model/tensor-share.ts';
import type { KvType } from '../../model/kv-cache.ts';
import type { KernelBackend } from '../../kernels/backend.ts';
import { readConfig } from '../../model/config.ts';
import { sameCut, shareCut } from '../../model/share-cut.ts';
import { partsToWire, type SliceHeader, type WireLoadProgress } from '../wire.ts';
import { ClusterError, invalid } from '../errors.ts';
import type { Logger } from '../log.ts';
import { coordinatorClient, describeCallError } from '../rpc.ts';
import type { ClusterKey } from '../auth.ts';
import { checkSlice, metadataDigest, sameTensor, type SliceManifest } from './manifest.ts';
import { modelHash } from './model-hash.ts';
import { commitSlice, discardSlice, lastUsed, touch, verifiedManifest } from './record.ts';
import { describeShard, HASH_RE, shardKey, shareName, sliceName } from './shard.ts';
import { SliceWriter, type SliceTensor } from './slice.ts';
import { watchSilence, type Silence } from '../silence.ts';

export type ShardSource = 'local' | 'cache' | 'fetched';

export interface LoadRequest {
  readonly modelHash: string;
  readonly modelSize: number;
  readonly modelName: string;
  readonly start: number;
  readonly end: number;
  readonly nLayers: number;
  readonly ctx: number;
  readonly kvType: KvType;
  /** host:port of the coordinator that serves FetchTensors. */
  readonly coordinator: string;
  /** The range's tensors with their sha256, from the coordinator's model file (checked: checkManifest). */
  readonly manifest: SliceManifest;
  /** A tensor-parallel group's member: its manifest lists its share, the slice holds only that. */
  readonly share?: GroupShare;
}

/** A member's share of a group of `size`. */
export interface GroupShare {
  readonly size: number;
  readonly share: TensorShare;
}

/** What a node keeps beside a member's shard: its group's data plane, closed with the shard. */
export interface ShardGroup {
  /** The group's id (the Hop's group in a route). */
  readonly id: string;
  close(): void;
}

/** A shard's key: its range, and for a member its share (a node may hold a range whole and as a share). */
export function loadKey(req: Pick<LoadRequest, 'modelHash' | 'start' | 'end' | 'share'>): string {
  const g = req.share;
  if (!g) return shardKey(req);
  return `${shardKey(req)}#${shareName(req.start, req.end, g.size, g.share)}`;
}

interface SliceFile {
  readonly modelHash: string;
  readonly start: number;
  readonly end: number;
  /** A member's slice of its share (named by shard.ts shareName). */
  readonly share: boolean;
  readonly path: string;
  readonly bytes: number;
}

export interface LoadedShard {
  readonly key: string;
  readonly modelHash: string;
  readonly start: number;
  readonly end: number;
  readonly nLayers: number;
  readonly ctx: number;
  readonly kvType: KvType;
  /** The range's layers whole, or a group member's share of them. */
  readonly model: Transformer | TensorMember;
  readonly share?: GroupShare;
  /** A member's linked data plane (set by the node once the group is up). */
  group?: ShardGroup;
  readonly bytes: number;
  readonly source: ShardSource;
  /** Open sessions using it; a shard in use is never evicted. */
  sessions: number;
  /** The slice file it was read from (a cache entry in use is not evicted). */
  readonly path: string;
  /** performance.now() of its last load or reuse: eviction goes least recently used first. */
  lastUsed: number;
}

export interface StoreCounters {
  shardLoads: number;
  shardReuses: number;
  tensorsFetched: number;
  bytesFetched: number;
  evictions: number;
}

export interface ShardStoreOptions {
  readonly cacheDir: string;
  readonly modelDir?: string;
  readonly backend: KernelBackend;
  readonly key?: ClusterKey;
  readonly log: Logger;
  readonly counters: StoreCounters;
  /** This node's name, in errors a coordinator reads. */
  readonly nodeName: string;
  /** Bytes loaded weights may take at most now (the node's budget less its sessions' KV caches). */
  readonly weightRoom?: () => number;
  /** Bytes of slice files the cache dir keeps at most. */
  readonly cacheMaxBytes?: number;
  /** A transfer that brings nothing for this long is cancelled (and fetched once more); default TRANSFER_STALL_MS. */
  readonly transferStallMs?: number;
}

/**
 * A shard transfer silent this long is cut: the keepalive finds a dead link, this a live peer
 * that stopped sending (a chunk of 1 MiB takes milliseconds on a LAN, seconds on a bad Wi-Fi).
 */
export const TRANSFER_STALL_MS = 30_000;

const MAX_METADATA_BYTES = 256 * 1024 * 1024;

type Progress = (p: Partial<WireLoadProgress>) => void;

export class ShardStore {
  readonly loaded = new Map<string, LoadedShard>();
  private readonly pending = new Map<string, Promise<LoadedShard>>();

  constructor(private readonly o: ShardStoreOptions) {}

  get(hash: string, start: number, end: number): LoadedShard | undefined {
    return this.loaded.get(shardKey({ modelHash: hash, start, end }));
  }

  sliceDir(hash: string): string {
    return join(this.o.cacheDir, 'shards', hash);
  }

  /** Makes the shard resident; `progress` hears each phase. Concurrent loads of one key share. */
  async load(req: LoadRequest, progress: Progress): Promise<{ shard: LoadedShard; reused: boolean }> {
    const key = loadKey(req);
    const have = this.loaded.get(key);
    if (have && have.ctx >= req.ctx && have.kvType === req.kvType) {
      this.o.counters.shardReuses++;
      have.lastUsed = performance.now();
      this.evictOthers(have);
      return { shard: have, reused: true };
    }
    let p = this.pending.get(key);
    if (!p) {
      p = this.doLoad(req, progress).finally(() => this.pending.delete(key));
      this.pending.set(key, p);
    }
    const shard = await p;
    return { shard, reused: false };
  }

  /** A new plan replaces the old one: other ranges of the same model go, unless in use. */
  private evictOthers(keep: LoadedShard): void {
    for (const s of [...this.loaded.values()])
      if (s.key !== keep.key && s.modelHash === keep.modelHash && s.sessions === 0) this.evict(s, 'replaced');
  }

  private evict(s: LoadedShard, reason: string): void {
    this.loaded.delete(s.key);
    s.group?.close();
    this.o.counters.evictions++;
    this.o.log.log('info', 'shard.evict', {
      model: s.modelHash.slice(0, 12),
      start: s.start,
      end: s.end,
      bytes: s.bytes,
      reason,
    });
  }

  /** Evicts loaded shards no session uses, least recently used first, until `req`'s weights fit the room. */
  private makeRoom(req: LoadRequest): void {
    const room = this.o.weightRoom?.();
    if (room === undefined) return;
    const need = req.manifest.tensors.reduce((sum, t) => sum + t.nBytes, 0);
    const key = loadKey(req);
    const others = () => [...this.loaded.values()].filter((s) => s.key !== key);
    while (others().reduce((sum, s) => sum + s.bytes, 0) + need > room) {
      const idle = others()
        .filter((s) => s.sessions === 0)
        .sort((a, b) => a.lastUsed - b.lastUsed)[0];
      if (!idle) return;
      this.evict(idle, 'memory');
    }
  }

  /**
   * Local file, else a cached slice, else a transfer. A slice that fails to load (or a transfer
   * that fails its checks) is discarded and fetched once more before the load fails.
   */
  private async doLoad(req: LoadRequest, progress: Progress): Promise<LoadedShard> {
    const t0 = performance.now();
    progress({ phase: 'resolving' });
    this.makeRoom(req);
    const local = await this.findLocal(req);
    if (local) return this.open(req, local, 'local', 0, t0, progress);
    const cached = this.findCached(req);
    if (cached) {
      try {
        return await this.open(req, cached, 'cache', 0, t0, progress);
      } catch (e) {
        this.discard(req, cached, e);
      }
    }
    const dest = this.slicePath(req);
    for (let attempt = 1; ; attempt++) {
      try {
        const transferred = await this.fetch(req, dest, progress);
        return await this.open(req, dest, 'fetched', transferred, t0, progress);
      } catch (e) {
        this.discard(req, dest, e);
        if (attempt >= 2) {
          throw new ClusterError(
            'shard',
            `node ${this.o.nodeName}: ${describeShard(req)} failed to load twice: ${(e as Error).message}`,
          );
        }
      }
    }
  }

  /** Where the request's slice is cached: its range, and for a member its share. */
  private slicePath(req: LoadRequest): string {
    const g = req.share;
    const name = g ? shareName(req.start, req.end, g.size, g.share) : `${req.start}-${req.end}`;
    return join(this.sliceDir(req.modelHash), `${name}.gguf`);
  }

  /** A slice that failed leaves the cache: the next load fetches it again. */
  private discard(req: LoadRequest, path: string, e: unknown): void {
    discardSlice(path);
    this.o.log.log('warn', 'shard.discard', {
      model: req.modelHash.slice(0, 12),
      start: req.start,
      end: req.end,
      path,
      error: (e as Error).message,
    });
  }

  /** Loads a slice file (or the local model file) into memory. */
  private async open(
    req: LoadRequest,
    path: string,
    source: ShardSource,
    transferred: number,
    t0: number,
    progress: Progress,
  ): Promise<LoadedShard> {
    progress({
      phase: 'loading',
      source,
      bytesTransferred: transferred,
      bytesDone: 0,
      bytesTotal: 0,
      tensorsDone: 0,
      tensorsTotal: 0,
    });
    if (source !== 'local') touch(path);
    const file = GgufFile.open(path);
    // Report every 5%; loadAsync lets each report leave on the stream as its layer is read.
    let step = -1;
    const onProgress = (p: { bytes: number; total: number }) => {
      const s = p.total > 0 ? Math.floor((20 * p.bytes) / p.total) : 20;
      if (s === step) return;
      step = s;
      progress({ phase: 'loading', bytesDone: p.bytes, bytesTotal: p.total });
    };
    if (req.share && source !== 'local') this.checkShare(req, req.share, file);
    // A member's slice holds its share; a local model file is read for the share alone (model/share-weights.ts).
    const model = req.share
      ? TensorMember.load(file, {
          share: req.share.share,
          ctx: req.ctx,
          kvType: req.kvType,
          layers: [req.start, req.end],
          backend: this.o.backend,
        })
      : await Transformer.loadAsync(file, {
          ctx: req.ctx,
          kvType: req.kvType,
          layers: [req.start, req.end],
          backend: this.o.backend,
          onProgress,
        });
    if (model.config.nLayers !== req.nLayers) {
      throw new ClusterError(
        'shard',
        `${path} has ${model.config.nLayers} layers, the coordinator says ${req.nLayers}`,
      );
    }
    const shard: LoadedShard = {
      key: loadKey(req),
      modelHash: req.modelHash,
      start: req.start,
      end: req.end,
      nLayers: req.nLayers,
      ctx: req.ctx,
      kvType: req.kvType,
      model,
      share: req.share,
      bytes: model.weights.bytes,
      source,
      sessions: 0,
      path,
      lastUsed: performance.now(),
    };
    const old = this.loaded.get(shard.key);
    if (old) shard.sessions = old.sessions;
    // a reloaded member links a new group; the old one's sessions fail and resume on it
    old?.group?.close();
    this.loaded.set(shard.key, shard);
    this.o.counters.shardLoads++;
    this.evictOthers(shard);
    if (source === 'fetched') this.trimCache();
    this.o.log.log('info', 'shard.load', {
      model: req.modelHash.slice(0, 12),
      start: req.start,
      end: req.end,
      source,
      path,
      bytes: shard.bytes,
      transferred,
      ms: Math.round(performance.now() - t0),
    });
    progress({ phase: 'done', source, bytesTransferred: transferred, bytesDone: shard.bytes, bytesTotal: shard.bytes });
    return shard;
  }

  /**
   * The manifest's parts must be the member's share (its group's KV heads and FFN rows): the
   * loader checks the shapes, this which rows and columns they are.
   */
  private checkShare(req: LoadRequest, g: GroupShare, file: GgufFile): void {
    const config = readConfig(file);
    for (const t of req.manifest.tensors) {
      if (!sameCut(t.cut, shareCut(t.name, config, g.share)))
        throw new ClusterError(
          'shard',
          `the manifest's tensor ${t.name} is not member ${g.share.member}'s share of ${describeShard(req)}`,
        );
    }
  }

  /** Removes cached slices no loaded shard uses, least recently used first, while over cacheMaxBytes. */
  private trimCache(): void {
    const cap = this.o.cacheMaxBytes;
    if (cap === undefined) return;
    const inUse = new Set([...this.loaded.values()].map((s) => s.path));
    const files = this.sliceFiles();
    let total = files.reduce((sum, f) => sum + f.bytes, 0);
    for (const f of files.filter((x) => !inUse.has(x.path)).sort((a, b) => lastUsed(a.path) - lastUsed(b.path))) {
      if (total <= cap) break;
      discardSlice(f.path);
      total -= f.bytes;
      this.o.counters.evictions++;
      this.o.log.log('info', 'shard.cache_evict', { path: f.path, bytes: f.bytes, cacheBytes: total, cap });
    }
  }

  /** The same model file in --model-dir, by size and then hash. */
  private async findLocal(req: LoadRequest): Promise<string | undefined> {
    const dir = this.o.modelDir;
    if (!dir || !existsSync(dir)) return undefined;
    for (const name of readdirSync(dir).sort()) {
      if (!name.endsWith('.gguf')) continue;
      const path = join(dir, name);
      try {
        const st = statSync(path);
        if (!st.isFile() || st.size !== req.modelSize) continue;
        if ((await modelHash(path, this.o.cacheDir)) === req.modelHash) return path;
      } catch {
        // unreadable: not ours
      }
    }
    return undefined;
  }

  /** Slice files in the cache dir, checked or not; `share` set for a member's (shard.ts shareName). */
  private sliceFiles(): SliceFile[] {
    const root = join(this.o.cacheDir, 'shards');
    if (!existsSync(root)) return [];
    const out: SliceFile[] = [];
    for (const hash of readdirSync(root)) {
      if (!HASH_RE.test(hash)) continue;
      for (const name of readdirSync(join(root, hash))) {
        const slice = sliceName(name);
        if (!slice) continue;
        const path = join(root, hash, name);
        try {
          const bytes = statSync(path).size;
          out.push({ modelHash: hash, ...slice, path, bytes });
        } catch {
          // removed meanwhile
        }
      }
    }
    return out;
  }

  /** Cached whole-range slices whose record holds (record.ts), by model hash and range: what Info advertises. */
  cachedSlices(): { modelHash: string; start: number; end: number; bytes: number }[] {
    return this.sliceFiles()
      .filter((f) => !f.share && verifiedManifest(f.path) !== undefined)
      .map(({ modelHash, start, end, bytes }) => ({ modelHash, start, end, bytes }));
  }

  /**
   * A cached slice whose range covers the request (a covering slice holds every tensor needed)
   * and whose record says it holds exactly the manifest's bytes for them. One whose record does
   * not hold (a corrupted or half-written entry) is removed, so the load fetches it again.
   */
  private findCached(req: LoadRequest): string | undefined {
    let best: { path: string; width: number } | undefined;
    // a member's slice is its share's alone; a whole range comes from whole-range slices
    const share = req.share && this.slicePath(req);
    for (const f of this.sliceFiles()) {
      if (f.modelHash !== req.modelHash || (share ? f.path !== share : f.share)) continue;
      const covers = f.start <= req.start && req.end <= f.end && (req.end < req.nLayers || f.end === req.nLayers);
      if (!covers) continue;
      const held = verifiedManifest(f.path);
      if (!held) {
        this.discard(req, f.path, new Error('its record does not match the file'));
        continue;
      }
      const byName = new Map(held.tensors.map((t) => [t.name, t]));
      const matches =
        held.metadataSha256 === req.manifest.metadataSha256 &&
        req.manifest.tensors.every((t) => {
          const h = byName.get(t.name);
          return h !== undefined && sameTensor(h, t);
        });
      if (matches && (!best || f.end - f.start < best.width)) best = { path: f.path, width: f.end - f.start };
    }
    return best?.path;
  }

  /** Pulls the range's tensors from the coordinator into a slice file; returns bytes received. */
  private async fetch(req: LoadRequest, dest: string, progress: Progress): Promise<number> {
    mkdirSync(this.sliceDir(req.modelHash), { recursive: true });
    const client = coordinatorClient(req.coordinator, this.o.key);
    let writer: SliceWriter | undefined;
    let stall: Silence | undefined;
    let stalled = false;
    const stallMs = this.o.transferStallMs ?? TRANSFER_STALL_MS;
    try {
      // a member asks for its manifest's parts; a whole range for every tensor of it
      const parts = req.share ? partsToWire(req.manifest.tensors) : [];
      const call = client.fetchTensors({ modelHash: req.modelHash, start: req.start, end: req.end, tensors: parts });
      stall = watchSilence(stallMs, () => {
        stalled = true;
        call.cancel();
      });
      let tensors: SliceTensor[] = [];
      let index = 0;
      let got = 0;
      let hash = createHash('sha256');
      let total = 0;
      let received = 0;
      let lastReport = 0;
      for await (const raw of call) {
        stall.touch();
        const msg = raw as {
          header?: SliceHeader;
          chunk?: { index: number; offset: number; data: Buffer; sha256: Buffer };
        };
        if (msg.header) {
          if (writer) throw invalid('FetchTensors sent a second header');
          tensors = this.checkHeader(req, msg.header);
          total = tensors.reduce((s, t) => s + t.nBytes, 0);
          writer = new SliceWriter(
            dest,
            { bytes: msg.header.metadata, count: msg.header.metadataCount },
            msg.header.alignment,
            tensors,
          );
          progress({ phase: 'fetching', bytesTotal: total, tensorsTotal: tensors.length, source: 'fetched' });
          continue;
        }
        const c = msg.chunk;
        if (!c || !writer) throw invalid('FetchTensors sent a chunk before its header');
        const t = tensors[index];
        if (c.index !== index || !t) throw invalid(`FetchTensors sent tensor #${c.index}, expected #${index}`);
        if (c.offset !== got) throw invalid(`tensor ${t.name}: chunk at offset ${c.offset}, expected ${got}`);
        writer.write(index, got, c.data);
        hash.update(c.data);
        got += c.data.length;
        received += c.data.length;
        if (got === t.nBytes) {
          // The manifest's sha256, from the coordinator's own file; the one sent with the bytes proves nothing.
          const digest = hash.digest('hex');
          const want = req.manifest.tensors[index].sha256;
          if (digest !== want) {
            throw new ClusterError(
              'shard',
              `tensor ${t.name} from ${req.coordinator}: its bytes hash to ${digest}, the manifest says ${want}`,
            );
          }
          this.o.counters.tensorsFetched++;
          index++;
          got = 0;
          hash = createHash('sha256');
        }
        this.o.counters.bytesFetched += c.data.length;
        if (received - lastReport >= 4 << 20 || index === tensors.length) {
          lastReport = received;
          progress({
            phase: 'fetching',
            bytesDone: received,
            bytesTotal: total,
            tensorsDone: index,
            tensorsTotal: tensors.length,
            source: 'fetched',
          });
        }
      }
      if (!writer) throw invalid('FetchTensors ended without a header');
      if (index !== tensors.length)
        throw new ClusterError('shard', `FetchTensors ended after ${index} of ${tensors.length} tensors`);
      // Parsed and checked whole under its temporary name; only then into the cache.
      const written = writer.finish();
      checkSlice(written, req.manifest);
      commitSlice(written, dest, req.manifest);
      return received;
    } catch (e) {
      writer?.abort();
      if (stalled) {
        const why = `no data for ${stallMs / 1000} s`;
        throw new ClusterError('shard', `fetching ${describeShard(req)} from ${req.coordinator}: ${why}`);
      }
      if (e instanceof ClusterError) throw e;
      throw new ClusterError(
        'shard',
        `fetching ${describeShard(req)} from ${req.coordinator}: ${describeCallError(e)}`,
      );
    } finally {
      stall?.stop();
      client.close();
    }
  }

  /** The header must announce exactly the manifest's tensors, in its order, and its metadata. */
  private checkHeader(req: LoadRequest, h: SliceHeader): SliceTensor[] {
    const from = `FetchTensors from ${req.coordinator}`;
    if (h.metadata.length > MAX_METADATA_BYTES)
      throw invalid(`${from}: slice metadata is ${h.metadata.length} bytes, at most ${MAX_METADATA_BYTES}`);
    const want = req.manifest.tensors;
    if (h.tensors.length !== want.length)
      throw invalid(`${from}: the header lists ${h.tensors.length} tensors, the manifest ${want.length}`);
    if (metadataDigest({ bytes: h.metadata, count: h.metadataCount }, h.alignment) !== req.manifest.metadataSha256)
      throw invalid(`${from}: the slice's metadata is not the manifest's`);
    let total = 0;
    const out = h.tensors.map((t, i) => {
      const m = want[i];
      // the header names no cut: the request did
      if (!sameTensor({ ...t, sha256: m.sha256, cut: m.cut }, m)) {
        throw invalid(
          `${from}: header entry ${i} is tensor ${t.name} [${t.dims.join(', ')}] type ${t.ggmlType}, ` +
            `the manifest has ${m.name} [${m.dims.join(', ')}] type ${m.ggmlType}`,
        );
      }
      total += t.nBytes;
      return { name: t.name, dims: t.dims, ggmlType: t.ggmlType, nBytes: t.nBytes };
    });
    // The slice is loaded into memory right after: refuse what cannot fit.
    if (total > freemem()) {
      throw new ClusterError(
        'shard',
        `the slice is ${total} bytes but only ${freemem()} bytes of memory are available`,
      );
    }
    return out;
  }
}
