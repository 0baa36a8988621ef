// The coordinator's side of shard transfer: the model file it holds, and the FetchTensors
// stream of one range's tensors (a header with the metadata section, then 1 MiB chunks, the
// last chunk of each tensor carrying the sha256 of the whole tensor, from the model's manifest).

import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { basename } from 'node:path';
import type { ServerWritableStream } from '@grpc/grpc-js';
import { GgufFile } from '../../gguf/reader.ts';
import { readConfig } from '../../model/config.ts';
import type { FetchTensorsReply, FetchTensorsRequest } from '../wire.ts';
import { invalid } from '../errors.ts';
import { metadataDigest, modelManifest, sliceOf, type SliceManifest } from './manifest.ts';
import { modelHash } from './model-hash.ts';
import { shardTensorNames } from './shard.ts';
import { readMetadataSection, type MetadataSection } from './slice.ts';

export const CHUNK_BYTES = 1 << 20;

export class ModelSource {
  private constructor(
    readonly path: string,
    readonly file: GgufFile,
    readonly hash: string,
    readonly size: number,
    readonly metadata: MetadataSection,
    readonly nLayers: number,
    /** Every tensor of the file with its sha256: what a node checks the bytes of its slice against. */
    readonly manifest: SliceManifest,
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
    return new ModelSource(path, file, hash, statSync(path).size, metadata, config.nLayers, manifest);
  }

  /** The manifest of layers [start, end): the tensors FetchTensors sends for them, in its order. */
  manifestFor(start: number, end: number): SliceManifest {
    return sliceOf(this.manifest, shardTensorNames(this.file, start, end, this.nLayers));
  }

  get name(): string {
    return basename(this.path);
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
    const names = shardTensorNames(this.file, start, end, this.nLayers);
    const tensors = names.map((n) => this.file.requireTensor(n));
    // Each tensor's sha256 is the manifest's (hashed once when the model was opened), not hashed again here.
    const sums = sliceOf(this.manifest, names).tensors.map((t) => Buffer.from(t.sha256, 'hex'));
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
        tensors: tensors.map((t) => ({
          name: t.name,
          dims: [...t.dims],
          ggmlType: t.type.id,
          nBytes: t.nBytes,
          sha256: Buffer.alloc(0),
        })),
      },
    });
    const fd = openSync(this.path, 'r');
    try {
      for (let i = 0; i < tensors.length && !cancelled; i++) {
        const t = tensors[i];
        for (let off = 0; off < t.nBytes && !cancelled; off += CHUNK_BYTES) {
          const n = Math.min(CHUNK_BYTES, t.nBytes - off);
          const data = Buffer.allocUnsafe(n);
          let got = 0;
          while (got < n) {
            const r = readSync(fd, data, got, n - got, t.fileOffset + off + got);
            if (r === 0) throw new Error(`${this.path}: short read in tensor ${t.name}`);
            got += r;
          }
          const last = off + n === t.nBytes;
          await send({ chunk: { index: i, offset: off, data, sha256: last ? sums[i] : Buffer.alloc(0) } });
          onBytes?.(n);
        }
      }
    } finally {
      closeSync(fd);
    }
    call.end();
  }
}
