// One fuzz case: the file is parsed by the real reader and, where it parses, loaded as far as
// herd loads a model (tokenizer, config, the weights of all layers or of a slice, the KV cache),
// and the outcome judged.
//
// Acceptable outcomes are success, or a clear error. A clear error is
//   - one of the loaders' own classes: GgufError (the reader), ModelError (config and weights),
//     TokenizerError (the vocabulary) — never a RangeError from a typed array, a TypeError, a
//     KernelError without the file, or anything else;
//   - about this file: its message starts with the file's path and ': ';
//   - readable: one line of at most MAX_MESSAGE characters with no control characters (a key or
//     tensor name out of a hostile file must not write escape sequences to a terminal or a log).
// A success must be a sound one: every tensor lies inside the file, and the loaded model holds
// memory in proportion to the file, not to a number the file claims.

import { GgufError, GgufFile } from '../../src/gguf/reader.ts';
import { ModelError, readConfig } from '../../src/model/config.ts';
import { Transformer } from '../../src/model/transformer.ts';
import { Tokenizer } from '../../src/tokenizer/tokenizer.ts';
import { TokenizerError } from '../../src/tokenizer/errors.ts';
import { Rng } from './rng.ts';

const MAX_MESSAGE = 1000;
/** What `herd run` caps the context at: the KV cache the loader allocates is this at most. */
const MAX_CTX = 4096;
/** The seeds are at most a few MiB: a model loaded from one that holds more trusted a claim. */
const MAX_HELD_BYTES = 256 * 1024 * 1024;

export type Stage = 'parse' | 'tokenizer' | 'config' | 'load';

export type Verdict =
  | { readonly outcome: 'loaded' | 'parsed'; readonly stage: Stage }
  | { readonly outcome: 'rejected'; readonly stage: Stage; readonly error: string; readonly code?: string }
  | {
      readonly outcome: 'bug';
      readonly stage: Stage;
      readonly why: string;
      readonly error: string;
      readonly stack?: string;
    };

const ACCEPTED: readonly (abstract new (...args: never[]) => Error)[] = [GgufError, ModelError, TokenizerError];

/** Why an error thrown for the file at path is not a clear one, or undefined when it is. */
export function unclear(e: unknown, path: string): string | undefined {
  if (!(e instanceof Error)) return `threw a non-Error ${typeof e}`;
  if (!ACCEPTED.some((c) => e instanceof c)) return `${e.name} is not a loader error class`;
  if (!e.message.startsWith(`${path}: `)) return 'message does not start with the file path';
  if (e.message.length > MAX_MESSAGE) return `message is ${e.message.length} characters`;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(e.message)) return 'message holds control characters';
  return undefined;
}

function describe(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message.length > 400 ? `${e.message.slice(0, 400)}…` : e.message}`;
  return String(e);
}

/** The stream a case's loader choices draw from: apart from its mutations', as reproducible. */
export function loaderRng(runSeed: number, index: number): Rng {
  return Rng.forCase(runSeed ^ 0x5bd1e995, index);
}

/** Parses and loads the file at path; `rng` picks the layer range (the whole model or a slice). */
export function checkFile(path: string, rng: Rng): Verdict {
  let stage: Stage = 'parse';
  try {
    const file = GgufFile.open(path);
    const soundness = unsound(file);
    if (soundness) return { outcome: 'bug', stage, why: soundness, error: 'parsed without error' };
    if (!file.has('general.architecture')) return { outcome: 'parsed', stage };
    stage = 'tokenizer';
    if (file.has('tokenizer.ggml.model')) Tokenizer.fromGguf(file);
    stage = 'config';
    const config = readConfig(file);
    stage = 'load';
    // The layers the file holds (all of a model, a range of a slice); sometimes a part of them.
    const [lo, hi] = layersHeld(file, config.nLayers);
    const start = rng.chance(0.7) ? lo : rng.range(lo, hi - 1);
    const end = rng.chance(0.7) ? hi : rng.range(start + 1, hi);
    const before = process.memoryUsage().arrayBuffers;
    Transformer.load(file, { ctx: Math.min(config.ctxTrain, MAX_CTX), layers: [start, end], batch: 4 });
    // Typed arrays are allocated lazily (calloc): a 16 GiB logits buffer costs no RSS until
    // written, so the bytes the model holds are counted, not the memory it touched.
    const held = process.memoryUsage().arrayBuffers - before;
    if (held > MAX_HELD_BYTES)
      return { outcome: 'bug', stage, why: `the loaded model holds ${held} bytes`, error: 'unbounded allocation' };
    return { outcome: 'loaded', stage };
  } catch (e) {
    const why = unclear(e, path);
    if (why) return { outcome: 'bug', stage, why, error: describe(e), stack: e instanceof Error ? e.stack : undefined };
    return { outcome: 'rejected', stage, error: describe(e), code: e instanceof GgufError ? e.code : undefined };
  }
}

/** Why a parsed file's index is not sound, or undefined. */
function unsound(file: GgufFile): string | undefined {
  for (const t of file.tensors) {
    if (!t.dims.every((d) => Number.isSafeInteger(d) && d > 0)) return `tensor ${t.name} has dims ${t.dims}`;
    if (!(t.fileOffset >= file.dataOffset && t.fileOffset + t.nBytes <= file.fileSize))
      return `tensor ${t.name} [${t.fileOffset}, +${t.nBytes}) lies outside the file of ${file.fileSize} bytes`;
  }
  return undefined;
}

/** [first, last + 1) of the blk.N tensors in the file, within [0, nLayers]; all layers when none. */
function layersHeld(file: GgufFile, nLayers: number): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (const t of file.tensors) {
    const m = /^blk\.(\d+)\./.exec(t.name);
    if (!m) continue;
    lo = Math.min(lo, Number(m[1]));
    hi = Math.max(hi, Number(m[1]) + 1);
  }
  if (!(lo < hi)) return [0, nLayers];
  return [Math.min(lo, nLayers - 1), Math.max(Math.min(hi, nLayers), Math.min(lo, nLayers - 1) + 1)];
}
