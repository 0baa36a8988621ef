// `herd pull`: a reference (reference.ts) to the files it means, each downloaded and verified
// (download.ts), a split model merged into one file (split.ts), the result checked to be a
// GGUF and put in the store (store.ts) under its name with the references it answers to.

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { GgufError, GgufFile } from '../gguf/reader.ts';
import { download, type Downloaded } from './download.ts';
import { ModelStoreError } from './errors.ts';
import type { HubClient, HubFile } from './hub.ts';
import {
  canonicalReference,
  DEFAULT_QUANT,
  fileQuant,
  parseReference,
  splitPart,
  storeNameOf,
  type ModelReference,
} from './reference.ts';
import { mergeSplitGguf } from './split.ts';
import { checkModelName, fileSize, type ModelStore, type StoredModel, type StoredPart } from './store.ts';

export interface PullOptions {
  readonly store: ModelStore;
  readonly hub: HubClient;
  /** Store under this name instead of the file's. */
  readonly name?: string;
  readonly progress?: (file: string, bytes: number, total: number | undefined) => void;
  readonly note?: (line: string) => void;
  readonly retryMs?: number;
}

export interface PullResult {
  readonly model: StoredModel;
  /** Already in the store: nothing was downloaded. */
  readonly existed: boolean;
  /** Every file's sha256 was checked against the one the server published. */
  readonly verified: boolean;
}

/** One file to fetch. */
interface Wanted {
  readonly url: string;
  readonly file: string;
  readonly sha256?: string;
  readonly size?: number;
}

/** When `hf.co/ORG/REPO` names no quantization and the repository has no Q4_K_M. */
const FALLBACK_QUANTS = [DEFAULT_QUANT, 'Q4_K_S', 'Q4_0', 'Q5_K_M', 'Q8_0'];

export async function pull(text: string, o: PullOptions): Promise<PullResult> {
  const ref = parseReference(text);
  if (!ref) {
    throw new ModelStoreError(
      'usage',
      `not a model reference: ${text} (expected hf.co/ORG/REPO[:QUANT], hf.co/ORG/REPO/FILE.gguf or an https URL of a .gguf file)`,
    );
  }
  const canonical = canonicalReference(ref);
  const known = o.store.find(canonical);
  if (known) return { model: known, existed: true, verified: true };

  const { files, quant } = await wantedFiles(ref, o);
  const name = o.name ?? storeNameOf(files[0].file);
  checkModelName(name);
  const references = [canonical];
  if (ref.kind === 'hf-repo' && quant) references.push(canonicalReference({ ...ref, quant }));
  // The same bytes pulled by another reference (the listing gave the sha256): no download.
  const same = files.length === 1 && files[0].sha256 && o.store.list().find((m) => m.sha256 === files[0].sha256);
  if (same) return { model: references.reduce((m, r) => o.store.addReference(m, r), same), existed: true, verified: true };

  const partial = o.store.partialDir();
  const got: Downloaded[] = [];
  for (const w of files) {
    got.push(
      await download(
        { url: w.url, dest: join(partial, basename(w.file)), sha256: w.sha256, size: w.size },
        {
          headersFor: (url) => o.hub.headersFor(url),
          refusal: (res, what) => o.hub.refusal(res, what, ref.kind === 'url' ? undefined : ref.repo),
          progress: (bytes, total) => o.progress?.(basename(w.file), bytes, total),
          note: o.note,
          retryMs: o.retryMs,
        },
      ),
    );
  }

  let path = got[0].path;
  let sha256 = got[0].sha256;
  const parts: StoredPart[] = got.map((g, i) => ({ path: files[i].file, size: g.size, sha256: g.sha256 }));
  if (got.length > 1) {
    path = join(partial, `${name}.gguf`);
    o.note?.(`merging ${got.length} parts into ${name}.gguf`);
    try {
      mergeSplitGguf(
        got.map((g) => g.path),
        path,
      );
    } catch (e) {
      throw fileError(e, `${name}: the parts do not merge`);
    } finally {
      for (const g of got) await rm(g.path, { force: true });
    }
    sha256 = await sha256Of(path);
  } else {
    try {
      GgufFile.open(path);
    } catch (e) {
      await rm(path, { force: true });
      throw fileError(e, `${basename(files[0].file)} is not a usable GGUF file`);
    }
  }

  const existing = o.store.get(name);
  if (existing) {
    await rm(path, { force: true });
    if (existing.sha256 !== sha256) {
      throw new ModelStoreError(
        'usage',
        `a different model is stored as "${name}" (from ${existing.source}): herd models rm ${name}, or pull with --name`,
      );
    }
    const model = references.reduce((m, r) => o.store.addReference(m, r), existing);
    return { model, existed: true, verified: got.every((g) => g.verified) };
  }
  const model = o.store.add(path, {
    name,
    size: got.length > 1 ? fileSize(path) : got[0].size,
    sha256,
    source: files[0].url,
    pulledAs: text,
    references,
    ...(ref.kind === 'url' ? {} : { repo: ref.repo }),
    ...(quant ? { quant } : {}),
    ...(got.length > 1 ? { parts } : {}),
    pulledAt: new Date().toISOString(),
  });
  return { model, existed: false, verified: got.every((g) => g.verified) };
}

/** The files a reference means, with what the hub says of them, and their quantization. */
async function wantedFiles(ref: ModelReference, o: PullOptions): Promise<{ files: Wanted[]; quant?: string }> {
  if (ref.kind === 'url') {
    const file = new URL(ref.url).pathname;
    return { files: siblings(file).map((f) => ({ url: new URL(f, ref.url).href, file: basename(f) })), quant: fileQuant(file) };
  }
  if (ref.kind === 'hf-file') {
    return {
      files: siblings(ref.path).map((f) => ({ url: o.hub.fileUrl(ref.repo, f), file: f })),
      quant: fileQuant(ref.path),
    };
  }
  const listing = await o.hub.listFiles(ref.repo);
  const ggufs = listing.filter((f) => /\.gguf$/i.test(f.path) && !/^mmproj/i.test(basename(f.path)));
  if (ggufs.length === 0) throw new ModelStoreError('usage', `hf.co/${ref.repo} has no GGUF files`);
  const quants = [...new Set(ggufs.map((f) => fileQuant(f.path)).filter((q): q is string => q !== undefined))];
  const quant = ref.quant ?? FALLBACK_QUANTS.find((q) => quants.includes(q));
  if (quant === undefined || !quants.includes(quant)) {
    const which = ref.quant ? `no ${ref.quant} file` : `no ${DEFAULT_QUANT} file`;
    throw new ModelStoreError(
      'usage',
      `hf.co/${ref.repo} has ${which}; it has ${quants.join(', ') || 'no file named by its quantization'}: pull hf.co/${ref.repo}:QUANT`,
    );
  }
  if (ref.quant === undefined && quant !== DEFAULT_QUANT) o.note?.(`hf.co/${ref.repo} has no ${DEFAULT_QUANT}; pulling ${quant}`);
  // Several files of that quantization: the first (in listing order) and, if split, its parts.
  const first = ggufs.find((f) => fileQuant(f.path) === quant) as HubFile;
  const byPath = new Map(ggufs.map((f) => [f.path, f]));
  const files = siblings(first.path).map((p) => {
    const f = byPath.get(p);
    if (!f) throw new ModelStoreError('usage', `hf.co/${ref.repo}: ${p}, a part of ${first.path}, is not in the repository`);
    return { url: o.hub.fileUrl(ref.repo, p), file: p, sha256: f.sha256, size: f.size };
  });
  return { files, quant };
}

/** A file's path, or every part's of the split model it is a part of. */
function siblings(path: string): string[] {
  const split = splitPart(path);
  if (!split) return [path];
  if (split.count < 1 || split.index < 1 || split.index > split.count)
    throw new ModelStoreError('usage', `${path}: not a valid part number`);
  const pad = (n: number) => String(n).padStart(5, '0');
  return Array.from({ length: split.count }, (_, i) =>
    path.replace(/-\d{5}-of-(\d{5})(\.gguf)$/i, (_m, count: string, ext: string) => `-${pad(i + 1)}-of-${count}${ext}`),
  );
}

function fileError(e: unknown, what: string): Error {
  if (e instanceof GgufError || e instanceof ModelStoreError) return new ModelStoreError('file', `${what}: ${e.message}`);
  return e as Error;
}

async function sha256Of(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}
