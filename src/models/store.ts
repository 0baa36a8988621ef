// The model store: pulled GGUF files in one directory (~/.cache/herd/models, or $HERD_MODELS),
// each `NAME.gguf` beside a `NAME.json` manifest saying where it came from, its size, sha256,
// quantization and the references it was pulled by (so `--model hf.co/ORG/REPO:QUANT` finds
// it again without the network). Downloads in progress live in `.partial/` until verified, so
// the store never holds a truncated or unverified model.

import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ModelStoreError } from './errors.ts';

export interface StoredPart {
  readonly path: string;
  readonly size: number;
  readonly sha256: string;
}

/** A manifest, as written to NAME.json. */
export interface StoredModel {
  readonly name: string;
  /** Absolute path of the GGUF file. */
  readonly path: string;
  readonly size: number;
  readonly sha256: string;
  /** Where the bytes came from: the (first) file's URL. */
  readonly source: string;
  /** The reference as the user typed it for `herd pull`. */
  readonly pulledAs: string;
  /** Canonical references (reference.ts) this model answers to. */
  readonly references: readonly string[];
  readonly repo?: string;
  readonly quant?: string;
  /** The parts of a split GGUF that were merged into this file. */
  readonly parts?: readonly StoredPart[];
  readonly pulledAt: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** $HERD_MODELS, else herd's cache dir's `models` (~/.cache/herd/models). */
export function defaultModelsDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HERD_MODELS) return env.HERD_MODELS;
  return join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'herd', 'models');
}

export function checkModelName(name: string): void {
  if (!NAME.test(name) || name.endsWith('.json') || name.endsWith('.gguf'))
    throw new ModelStoreError('usage', `not a usable model name: "${name}" (letters, digits, '.', '_' and '-')`);
}

export class ModelStore {
  constructor(readonly dir: string) {}

  /** Where downloads wait until they are complete and verified. */
  partialDir(): string {
    const d = join(this.dir, '.partial');
    mkdirSync(d, { recursive: true });
    return d;
  }

  /** Every stored model whose manifest reads and whose file is there, by name. */
  list(): StoredModel[] {
    if (!existsSync(this.dir)) return [];
    return readdirSync(this.dir)
      .filter((f) => f.endsWith('.json'))
      .map((f) => this.get(f.slice(0, -'.json'.length)))
      .filter((m): m is StoredModel => m !== undefined)
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  get(name: string): StoredModel | undefined {
    if (!NAME.test(name)) return undefined;
    const manifest = join(this.dir, `${name}.json`);
    if (!existsSync(manifest)) return undefined;
    const m = parseManifest(readFileSync(manifest, 'utf8'), manifest);
    const path = join(this.dir, `${name}.gguf`);
    if (m.name !== name || !existsSync(path)) return undefined;
    return { ...m, path };
  }

  /** The model pulled by this canonical reference. */
  find(reference: string): StoredModel | undefined {
    return this.list().find((m) => m.references.includes(reference));
  }

  /** Moves a verified file into the store as `model.name` and writes its manifest. */
  add(file: string, model: Omit<StoredModel, 'path'>): StoredModel {
    checkModelName(model.name);
    mkdirSync(this.dir, { recursive: true });
    const path = join(this.dir, `${model.name}.gguf`);
    renameSync(file, path);
    this.writeManifest({ ...model, path });
    return { ...model, path };
  }

  /** Records one more reference a stored model answers to. */
  addReference(model: StoredModel, reference: string): StoredModel {
    if (model.references.includes(reference)) return model;
    const updated = { ...model, references: [...model.references, reference] };
    this.writeManifest(updated);
    return updated;
  }

  remove(name: string): StoredModel {
    const m = this.get(name);
    if (!m) throw new ModelStoreError('usage', `no stored model named "${name}" (herd models lists them)`);
    // The manifest first: a model without one is no longer listed or found, whatever happens next.
    rmSync(join(this.dir, `${name}.json`), { force: true });
    rmSync(m.path, { force: true });
    return m;
  }

  private writeManifest(m: StoredModel): void {
    const { path, ...rest } = m;
    void path;
    const target = join(this.dir, `${m.name}.json`);
    const tmp = `${target}.${process.pid}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(rest, null, 2)}\n`);
    renameSync(tmp, target);
  }
}

function parseManifest(text: string, file: string): Omit<StoredModel, 'path'> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ModelStoreError('file', `${file}: not JSON (${(e as Error).message}); remove it or pull the model again`);
  }
  const o = v as Record<string, unknown>;
  const str = (k: string) => typeof o[k] === 'string';
  if (
    typeof v !== 'object' ||
    v === null ||
    !str('name') ||
    !str('sha256') ||
    !str('source') ||
    !str('pulledAs') ||
    !str('pulledAt') ||
    typeof o.size !== 'number' ||
    !Array.isArray(o.references) ||
    !o.references.every((r) => typeof r === 'string')
  ) {
    throw new ModelStoreError('file', `${file}: not a herd model manifest; remove it or pull the model again`);
  }
  return v as Omit<StoredModel, 'path'>;
}

/** Bytes of a file, or 0 when there is none. */
export function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}
