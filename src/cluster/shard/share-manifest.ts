// The manifest of a tensor-parallel member's share of a range: what its slice holds and the
// sha256 of each part, from the coordinator's own file. A tensor the member holds whole keeps
// the model's entry (hashed once with the model); a cut one (model/share-cut.ts) gets its part's
// shape, size and the sha256 of the part's bytes, hashed here — each cut tensor read once for
// every share asked at the same time — and remembered in the cache dir like the model's manifest
// (path, size, mtime, and which share).

import { createHash, type Hash } from 'node:crypto';
import { open } from 'node:fs/promises';
import type { GgufFile } from '../../gguf/reader.ts';
import { cutLayout, sameCut, type CutLayout, type TensorCut } from '../../model/share-cut.ts';
import { recallManifest, rememberManifest, type ManifestTensor, type SliceManifest } from './manifest.ts';

/** One member's share of a range: the tensors its slice holds, each whole or cut. */
export interface ShareWanted {
  /** Names the share in the cache dir: its range and share, file-name safe. */
  readonly key: string;
  /** Names it in errors, e.g. "member 1's share (KV heads [2, 4), FFN rows [704, 1408))". */
  readonly who: string;
  readonly tensors: readonly { readonly name: string; readonly cut?: TensorCut }[];
}

const READ_BYTES = 4 << 20;

/** The manifests of `wanted`, in its order; `model` is the file's whole manifest. */
export async function shareManifests(
  path: string,
  file: GgufFile,
  model: SliceManifest,
  wanted: readonly ShareWanted[],
  cacheDir?: string,
): Promise<SliceManifest[]> {
  const byName = new Map(model.tensors.map((t) => [t.name, t]));
  const entry = (name: string): ManifestTensor => {
    const t = byName.get(name);
    if (!t) throw new Error(`internal: tensor ${name} is not in the model's manifest`);
    return t;
  };
  // Layouts are checked now, so a share whose cut does not fit fails before any read.
  const plans = wanted.map((w) =>
    w.tensors.map(({ name, cut }) => ({ name, cut, layout: cut && cutLayout(entry(name), cut, w.who) })),
  );
  const usable = (w: ShareWanted) => (m: SliceManifest) =>
    m.metadataSha256 === model.metadataSha256 &&
    m.tensors.length === w.tensors.length &&
    m.tensors.every((t, i) => t.name === w.tensors[i].name && sameCut(t.cut, w.tensors[i].cut));
  const out = wanted.map((w) => (cacheDir ? recallManifest(path, `.share-${w.key}`, cacheDir, usable(w)) : undefined));
  const missing = wanted.flatMap((_, i) => (out[i] ? [] : [i]));
  if (missing.length === 0) return out as SliceManifest[];
  const hashed = await hashCuts(
    path,
    file,
    missing.map((i) => plans[i]),
  );
  for (const [k, i] of missing.entries()) {
    const m: SliceManifest = {
      metadataSha256: model.metadataSha256,
      tensors: plans[i].map(({ name, cut, layout }, j) => {
        const sha256 = hashed[k][j];
        if (!cut || !layout || sha256 === undefined) return entry(name);
        return { ...entry(name), dims: [...layout.dims], nBytes: layout.nBytes, sha256, cut };
      }),
    };
    if (cacheDir) rememberManifest(path, `.share-${wanted[i].key}`, cacheDir, m);
    out[i] = m;
  }
  return out as SliceManifest[];
}

/**
 * The sha256 hex of every cut part of `plans` (undefined for whole tensors), reading each cut
 * tensor once, in blocks, hashing every plan's runs within each block.
 */
async function hashCuts(
  path: string,
  file: GgufFile,
  plans: readonly (readonly { name: string; layout?: CutLayout }[])[],
): Promise<(string | undefined)[][]> {
  const out = plans.map((p) => p.map((): string | undefined => undefined));
  const byTensor = new Map<string, { plan: number; at: number; layout: CutLayout }[]>();
  plans.forEach((p, plan) =>
    p.forEach(({ name, layout }, at) => {
      if (!layout) return;
      const list = byTensor.get(name) ?? [];
      list.push({ plan, at, layout });
      byTensor.set(name, list);
    }),
  );
  const fh = await open(path, 'r');
  const buf = Buffer.allocUnsafe(READ_BYTES);
  try {
    for (const [name, cuts] of byTensor) {
      const t = file.requireTensor(name);
      const hashes: Hash[] = cuts.map(() => createHash('sha256'));
      for (let pos = 0; pos < t.nBytes;) {
        const n = Math.min(READ_BYTES, t.nBytes - pos);
        const { bytesRead } = await fh.read(buf, 0, n, t.fileOffset + pos);
        if (bytesRead === 0) throw new Error(`${path}: short read in tensor ${name}`);
        const end = pos + bytesRead;
        cuts.forEach(({ layout: l }, k) => {
          // runs overlapping [pos, end): from the first that ends after pos
          const stride = l.stride || l.length;
          for (let i = Math.max(0, Math.floor((pos - l.first) / stride)); i < l.count; i++) {
            const a = l.first + i * stride;
            if (a >= end) break;
            const from = Math.max(a, pos);
            const to = Math.min(a + l.length, end);
            if (from < to) hashes[k].update(buf.subarray(from - pos, to - pos));
          }
        });
        pos = end;
      }
      cuts.forEach(({ plan, at }, k) => (out[plan][at] = hashes[k].digest('hex')));
    }
  } finally {
    await fh.close();
  }
  return out;
}
