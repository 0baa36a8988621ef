// The coordinator's side of shard transfer: the model file it holds, and the FetchTensors
// stream of one range's tensors (a header with the metadata section, then 1 MiB chunks, the
// last chunk of each tensor carrying the sha256 of the whole tensor). A request may name the
// tensors it wants, each whole or a part (a group member's share, model/share-cut.ts): only
// the part's bytes are read from the file and sent.

import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { basename } from 'node:path';
import type { ServerWritableStream } from '@grpc/grpc-js';
import { GgufFile } from '../../gguf/reader.ts';
import { readConfig, type ModelConfig } from '../../model/config.ts';
import { cutLayout, shareCut, type CutLayout } from '../../model/share-cut.ts';
import { describeShare, TensorShareError, type TensorShare } from '../../model/tensor-share.ts';
import { partsFromWire, type FetchTensorsReply, type FetchTensorsRequest, type TensorPart } from '../wire.ts';
import { ClusterError, invalid } from '../errors.ts';
import { metadataDigest, modelManifest, sliceOf, type SliceManifest } from './manifest.ts';
import { modelHash } from './model-hash.ts';
import { shardTensorNames, shareName, shareTensorNames, tensorBelongs } from './shard.ts';
import { shareManifests } from './share-manifest.ts';
import { readMetadataSection, type MetadataSection } from './slice.ts';

export const CHUNK_BYTES = 1 << 20;
const MAX_PARTS = 100_000;

export class ModelSource {
  /** Share manifests computed in this process, by shareName. */
  private readonly shares = new Map<string, Promise<SliceManifest>>();

  private constructor(
    readonly path: string,
    readonly file: GgufFile,
    readonly config: ModelConfig,
    readonly hash: string,
    readonly size: number,
    readonly metadata: MetadataSection,
    readonly nLayers: number,
    /** Every tensor of the file with its sha256: what a node checks the bytes of its slice against. */
    readonly manifest: SliceManifest,
    private readonly cacheDir: string | undefined,
  ) {}

  static async open(path: string, cacheDir?: string): Promise<ModelSource> {
    const file = GgufFile.open(path);
    const config = readConfig(file);
    const metadata = readMetadataSection(path, file.dataOffset);
    // A file hashed for its manifest now was hashed whole in the same read: not read again.
    const { manifest, fileSha256 } = await modelManifest(
      path,
      file,
      metadataDigest(metadata, file.alignment),
      cacheDir,
    );
    const hash = await modelHash(path, cacheDir, fileSha256);
    return new ModelSource(path, file, config, hash, statSync(path).size, metadata, config.nLayers, manifest, cacheDir);
  }

  /** The manifest of layers [start, end): the tensors FetchTensors sends for them, in its order. */
  manifestFor(start: number, end: number): SliceManifest {
    return sliceOf(this.manifest, shardTensorNames(this.file, start, end, this.nLayers));
  }

  /**
   * The manifests of a group's shares of layers [start, end), in member order: what each
   * member's slice holds, its parts hashed from this file (once, then kept in the cache dir).
   * A ClusterError('shard') naming the tensor and the share when a share cannot be cut.
   */
  async shareManifestsFor(start: number, end: number, shares: readonly TensorShare[]): Promise<SliceManifest[]> {
    const key = (s: TensorShare) => shareName(start, end, shares.length, s);
    const missing = shares.filter((s) => !this.shares.has(key(s)));
    if (missing.length > 0) {
      const wanted = missing.map((s) => ({
        key: key(s),
        who: `${describeShare(s)} of layers [${start}, ${end})`,
        tensors: shareTensorNames(this.file, start, end, this.nLayers, s).map((name) => {
          const cut = shareCut(name, this.config, s);
          return cut ? { name, cut } : { name };
        }),
      }));
      const all = shareManifests(this.path, this.file, this.manifest, wanted, this.cacheDir).catch((e: unknown) => {
        for (const s of missing) this.shares.delete(key(s));
        if (e instanceof TensorShareError) throw new ClusterError('shard', e.message);
        throw e;
      });
      missing.forEach((s, i) =>
        this.shares.set(
          key(s),
          all.then((m) => m[i]),
        ),
      );
    }
    return Promise.all(shares.map((s) => this.shares.get(key(s))!));
  }

  get name(): string {
    return basename(this.path);
  }

  /** The tensors a request asks for, each with where its bytes lie; INVALID_ARGUMENT for one outside the range. */
  private partsOf(req: FetchTensorsRequest): { part: TensorPart; layout: CutLayout }[] {
    const { start, end } = req;
    const asked = partsFromWire(req.tensors);
    if (asked.length > MAX_PARTS) throw invalid(`FetchTensors asks for ${asked.length} tensors, at most ${MAX_PARTS}`);
    const parts: TensorPart[] =
      asked.length > 0 ? asked : shardTensorNames(this.file, start, end, this.nLayers).map((name) => ({ name }));
    const seen = new Set<string>();
    return parts.map((part) => {
      const t = this.file.tensor(part.name);
      if (!t || !tensorBelongs(part.name, start, end, this.nLayers) || seen.has(part.name))
        throw invalid(`tensor ${part.name.slice(0, 64)} is not one of layers [${start}, ${end}) or is asked twice`);
      seen.add(part.name);
      try {
        return {
          part,
          layout: cutLayout({ name: t.name, dims: t.dims, ggmlType: t.type.id }, part.cut, 'the part asked'),
        };
      } catch (e) {
        if (e instanceof TensorShareError) throw invalid(e.message);
        throw e;
      }
    });
  }

  /** Serves one FetchTensors call; honours back-pressure and cancellation. */
  async serve(
    call: ServerWritableStream<FetchTensorsRequest, FetchTensorsReply>,
    onBytes?: (n: number) => void,
  ): Promise<void> {
    const { modelHash: hash, start, end } = call.request;
    if (hash !== this.hash)
      throw invalid(`model ${hash.slice(0, 12)} is not the one this coordinator serves (${this.hash.slice(0, 12)})`);
    if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start < end && end <= this.nLayers)) {
      throw invalid(`layer range [${start}, ${end}) is not within the model's ${this.nLayers} layers`);
    }
    const parts = this.partsOf(call.request);
    // A whole tensor's sha256 is the manifest's (hashed once when the model was opened); a part's is hashed as it goes.
    const sums = sliceOf(
      this.manifest,
      parts.map((p) => p.part.name),
    ).tensors.map((t) => Buffer.from(t.sha256, 'hex'));
    let cancelled = false;
    call.once('cancelled', () => (cancelled = true));
    const send = async (msg: FetchTensorsReply) => {
      if (!call.write(msg)) await new Promise<void>((resolve) => call.once('drain', resolve));
    };
    await send({
      header: {
        metadata: this.metadata.bytes,
        metadataCount: this.metadata.count,
        alignment: this.file.alignment,
        tensors: parts.map(({ part, layout }) => ({
          name: part.name,
          dims: [...layout.dims],
          ggmlType: this.file.requireTensor(part.name).type.id,
          nBytes: layout.nBytes,
          sha256: Buffer.alloc(0),
        })),
      },
    });
    const fd = openSync(this.path, 'r');
    try {
      for (let i = 0; i < parts.length && !cancelled; i++) {
        const { part, layout: l } = parts[i];
        const t = this.file.requireTensor(part.name);
        const sha = part.cut ? createHash('sha256') : undefined;
        for (let off = 0; off < l.nBytes && !cancelled; off += CHUNK_BYTES) {
          const n = Math.min(CHUNK_BYTES, l.nBytes - off);
          const data = Buffer.allocUnsafe(n);
          // byte p of the part is byte p % length of run ⌊p / length⌋
          for (let got = 0; got < n;) {
            const p = off + got;
            const run = Math.floor(p / l.length);
            const within = p % l.length;
            const want = Math.min(n - got, l.length - within);
            const r = readSync(fd, data, got, want, t.fileOffset + l.first + run * l.stride + within);
            if (r === 0) throw new Error(`${this.path}: short read in tensor ${t.name}`);
            got += r;
          }
          sha?.update(data);
          const last = off + n === l.nBytes;
          const sum = last ? (sha?.digest() ?? sums[i]) : Buffer.alloc(0);
          await send({ chunk: { index: i, offset: off, data, sha256: sum } });
          onBytes?.(n);
        }
      }
    } finally {
      closeSync(fd);
    }
    call.end();
  }
}
