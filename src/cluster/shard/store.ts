// The node's shards: slices of models resident in memory, and how they get there. In order:
// already in memory (reused, no reload); the same model file in --model-dir (read directly);
// a slice file in the cache dir from an earlier transfer (survives restarts); else the tensors
// of the range are pulled from the coordinator (FetchTensors), checked and cached.

import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { freemem } from 'node:os';
import { join } from 'node:path';
import { GgufFile } from '../../gguf/reader.ts';
import { Transformer } from '../../model/transformer.ts';
import type { KvType } from '../../model/kv-cache.ts';
import type { KernelBackend } from '../../kernels/backend.ts';
import { METHOD, type SliceHeader, type WireLoadProgress } from '../wire.ts';
import { ClusterError, invalid } from '../errors.ts';
import type { Logger } from '../log.ts';
import { authenticate, coordinatorClient, describeCallError } from '../rpc.ts';
import type { ClusterKey } from '../auth.ts';
import { modelHash } from './model-hash.ts';
import { describeShard, HASH_RE, shardKey, tensorBelongs } from './shard.ts';
import { SliceWriter, tensorDataBytes, type SliceTensor } from './slice.ts';

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
}

export interface LoadedShard {
  readonly key: string;
  readonly modelHash: string;
  readonly start: number;
  readonly end: number;
  readonly nLayers: number;
  readonly ctx: number;
  readonly kvType: KvType;
  readonly model: Transformer;
  readonly bytes: number;
  readonly source: ShardSource;
  /** Open sessions using it; a shard in use is never evicted. */
  sessions: number;
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
}

const MAX_TENSORS = 100_000;
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
    const key = shardKey(req);
    const have = this.loaded.get(key);
    if (have && have.ctx >= req.ctx && have.kvType === req.kvType) {
      this.o.counters.shardReuses++;
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
    for (const [k, s] of this.loaded) {
      if (k !== keep.key && s.modelHash === keep.modelHash && s.sessions === 0) {
        this.loaded.delete(k);
        this.o.counters.evictions++;
        this.o.log.log('info', 'shard.evict', {
          model: s.modelHash.slice(0, 12),
          start: s.start,
          end: s.end,
          bytes: s.bytes,
        });
      }
    }
  }

  private async doLoad(req: LoadRequest, progress: Progress): Promise<LoadedShard> {
    const t0 = performance.now();
    progress({ phase: 'resolving' });
    let source: ShardSource;
    let path = await this.findLocal(req);
    let transferred = 0;
    if (path) {
      source = 'local';
    } else {
      path = this.findCached(req);
      if (path) {
        source = 'cache';
      } else {
        path = join(this.sliceDir(req.modelHash), `${req.start}-${req.end}.gguf`);
        transferred = await this.fetch(req, path, progress);
        source = 'fetched';
      }
    }
    progress({
      phase: 'loading',
      source,
      bytesTransferred: transferred,
      bytesDone: 0,
      bytesTotal: 0,
      tensorsDone: 0,
      tensorsTotal: 0,
    });
    const file = GgufFile.open(path);
    // Report every 5%; loadAsync lets each report leave on the stream as its layer is read.
    let step = -1;
    const onProgress = (p: { bytes: number; total: number }) => {
      const s = p.total > 0 ? Math.floor((20 * p.bytes) / p.total) : 20;
      if (s === step) return;
      step = s;
      progress({ phase: 'loading', bytesDone: p.bytes, bytesTotal: p.total });
    };
    const model = await Transformer.loadAsync(file, {
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
      key: shardKey(req),
      modelHash: req.modelHash,
      start: req.start,
      end: req.end,
      nLayers: req.nLayers,
      ctx: req.ctx,
      kvType: req.kvType,
      model,
      bytes: model.weights.bytes,
      source,
      sessions: 0,
    };
    const old = this.loaded.get(shard.key);
    if (old) shard.sessions = old.sessions;
    this.loaded.set(shard.key, shard);
    this.o.counters.shardLoads++;
    this.evictOthers(shard);
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

  /** Slice files in the cache dir, by model hash and range. */
  cachedSlices(): { modelHash: string; start: number; end: number; bytes: number }[] {
    const root = join(this.o.cacheDir, 'shards');
    if (!existsSync(root)) return [];
    const out: { modelHash: string; start: number; end: number; bytes: number }[] = [];
    for (const hash of readdirSync(root)) {
      if (!HASH_RE.test(hash)) continue;
      for (const name of readdirSync(join(root, hash))) {
        const m = /^(\d+)-(\d+)\.gguf$/.exec(name);
        if (m)
          out.push({
            modelHash: hash,
            start: Number(m[1]),
            end: Number(m[2]),
            bytes: statSync(join(root, hash, name)).size,
          });
      }
    }
    return out;
  }

  /** A cached slice whose range covers the request (a covering slice holds every tensor needed). */
  private findCached(req: LoadRequest): string | undefined {
    const dir = this.sliceDir(req.modelHash);
    if (!existsSync(dir)) return undefined;
    let best: { path: string; width: number } | undefined;
    for (const name of readdirSync(dir)) {
      const m = /^(\d+)-(\d+)\.gguf$/.exec(name);
      if (!m) continue;
      const a = Number(m[1]);
      const b = Number(m[2]);
      const covers = a <= req.start && req.end <= b && (req.end < req.nLayers || b === req.nLayers);
      if (covers && (!best || b - a < best.width)) best = { path: join(dir, name), width: b - a };
    }
    return best?.path;
  }

  /** Pulls the range's tensors from the coordinator into a slice file; returns bytes received. */
  private async fetch(req: LoadRequest, dest: string, progress: Progress): Promise<number> {
    mkdirSync(this.sliceDir(req.modelHash), { recursive: true });
    const client = coordinatorClient(req.coordinator);
    let writer: SliceWriter | undefined;
    try {
      const md = await authenticate(client, this.o.key, METHOD.fetchTensors);
      const call = client.fetchTensors({ modelHash: req.modelHash, start: req.start, end: req.end }, md);
      let tensors: SliceTensor[] = [];
      let index = 0;
      let got = 0;
      let hash = createHash('sha256');
      let total = 0;
      let received = 0;
      let lastReport = 0;
      for await (const raw of call) {
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
          const digest = hash.digest();
          if (c.sha256.length !== 32 || !digest.equals(c.sha256)) {
            throw new ClusterError(
              'shard',
              `tensor ${t.name}: sha256 mismatch after transfer (sent ${c.sha256.toString('hex') || 'none'}, got ${digest.toString('hex')})`,
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
      writer.finish();
      return received;
    } catch (e) {
      writer?.abort();
      if (e instanceof ClusterError) throw e;
      throw new ClusterError(
        'shard',
        `fetching ${describeShard(req)} from ${req.coordinator}: ${describeCallError(e)}`,
      );
    } finally {
      client.close();
    }
  }

  private checkHeader(req: LoadRequest, h: SliceHeader): SliceTensor[] {
    if (h.metadata.length > MAX_METADATA_BYTES)
      throw invalid(`slice metadata is ${h.metadata.length} bytes, at most ${MAX_METADATA_BYTES}`);
    if (h.tensors.length === 0 || h.tensors.length > MAX_TENSORS)
      throw invalid(`slice lists ${h.tensors.length} tensors`);
    const seen = new Set<string>();
    let total = 0;
    const out = h.tensors.map((t) => {
      if (seen.has(t.name)) throw invalid(`slice lists tensor ${t.name} twice`);
      seen.add(t.name);
      if (!tensorBelongs(t.name, req.start, req.end, req.nLayers)) {
        throw invalid(`slice for layers [${req.start}, ${req.end}) lists tensor ${t.name}, which is not part of it`);
      }
      const bytes = tensorDataBytes(t.ggmlType, t.dims);
      if (bytes === undefined || bytes !== t.nBytes) {
        throw invalid(
          `tensor ${t.name}: ${t.nBytes} bytes do not match type ${t.ggmlType} and shape [${t.dims.join(', ')}]`,
        );
      }
      total += bytes;
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
