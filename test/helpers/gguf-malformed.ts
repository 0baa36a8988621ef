// The small valid GGUF file the malformed-file tests derive their files from, where each of
// its fields lies, ways to change those fields, and a timed parse of the result
// (test/gguf-malformed.test.ts: one file per field; test/gguf-malformed-limits.test.ts: cuts,
// huge claims and what the fuzzer found). Each test file gets its own directory, removed after it.

import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { GgufError, GgufFile } from '../../src/gguf/reader.ts';
import { writeMalformedBase } from './gguf-malformed-base.ts';
import { walkGguf, type Field } from './gguf-layout.ts';

export const dir = mkdtempSync(join(tmpdir(), 'herd-gguf-malformed-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

export const base: Uint8Array = writeMalformedBase(join(dir, 'base.gguf'));

/** Where every field of the base is: patches address fields by name. */
export const layout = walkGguf(base);

export function at(name: string): Field {
  const f = layout.byName.get(name);
  if (!f) throw new Error(`no field ${name} in the base file`);
  return f;
}

/** A copy of the base with the field overwritten by a little-endian value of its own width. */
export function patch(name: string, value: number | bigint, bytes: Uint8Array = base): Uint8Array {
  const f = at(name);
  const out = bytes.slice();
  const v = new DataView(out.buffer);
  const width = f.end - f.start;
  if (width === 8) v.setBigUint64(f.start, BigInt(value), true);
  else if (width === 4) v.setUint32(f.start, Number(value), true);
  else if (width === 1) v.setUint8(f.start, Number(value));
  else throw new Error(`cannot patch ${name} of width ${width}`);
  return out;
}

/** A copy of the base with [start, end) replaced by insert. */
export function splice(start: number, end: number, insert: Uint8Array): Uint8Array {
  const out = new Uint8Array(base.length - (end - start) + insert.length);
  out.set(base.subarray(0, start), 0);
  out.set(insert, start);
  out.set(base.subarray(end), start + insert.length);
  return out;
}

export function le(...parts: ['u32' | 'u64' | 'f32', number | bigint][]): Uint8Array {
  const size = parts.reduce((s, [k]) => s + (k === 'u64' ? 8 : 4), 0);
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let p = 0;
  for (const [k, x] of parts) {
    if (k === 'u64') v.setBigUint64(p, BigInt(x), true);
    else if (k === 'u32') v.setUint32(p, Number(x), true);
    else v.setFloat32(p, Number(x), true);
    p += k === 'u64' ? 8 : 4;
  }
  return out;
}

export function stringBytes(s: string): Uint8Array {
  const b = Buffer.from(s, 'utf8');
  const out = new Uint8Array(8 + b.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(b.length), true);
  out.set(b, 8);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Running one malformed file

let fileSeq = 0;

export interface Outcome {
  readonly error: unknown;
  readonly ms: number;
}

function parseOnce(path: string): Outcome {
  const t0 = performance.now();
  try {
    GgufFile.open(path);
    return { error: undefined, ms: performance.now() - t0 };
  } catch (error) {
    return { error, ms: performance.now() - t0 };
  }
}

/**
 * Parses bytes from a file. A parse over the time limit is repeated (up to three in all) and the
 * fastest kept: a reader that loops or allocates on a claim is slow every time, a garbage
 * collection pause on a busy test machine is not.
 */
export function parse(bytes: Uint8Array): Outcome {
  const path = join(dir, `case-${fileSeq++}.gguf`);
  writeFileSync(path, bytes);
  try {
    let outcome = parseOnce(path);
    for (let retry = 0; retry < 2 && outcome.ms >= MAX_MS; retry++) {
      const again = parseOnce(path);
      if (again.ms < outcome.ms) outcome = again;
    }
    return outcome;
  } finally {
    rmSync(path, { force: true });
  }
}

export function describe(error: unknown): string {
  if (error === undefined) return 'no error';
  if (error instanceof GgufError) return `GgufError ${error.code}: ${error.message}`;
  return `${(error as Error).name}: ${(error as Error).message}`;
}

// A parse takes ~0.1 ms; the limit is generous for a loaded machine running every test file at
// once, and still far below what looping on a claimed count or allocating for it would cost.
// The every-byte test also holds the median to a few milliseconds.
export const MAX_MS = 250;
export const MAX_MEDIAN_MS = 10;
