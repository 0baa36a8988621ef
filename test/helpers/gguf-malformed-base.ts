// The valid base file of the malformed-file corpus (test/gguf-malformed.test.ts), also a seed of
// the GGUF fuzzer (scripts/fuzz/gguf-corpus.ts): every metadata type, nested arrays and three
// tensor types.

import { readFileSync } from 'node:fs';
import { GgmlType } from '../../src/ggml/types.ts';
import { MetaType } from '../../src/gguf/reader.ts';
import { meta, writeGguf } from '../../src/gguf/writer.ts';

/** Writes the base file to `path` and returns its bytes. */
export function writeMalformedBase(path: string): Uint8Array {
  writeGguf(path, {
    metadata: [
      meta.str('general.architecture', 'llama'),
      meta.u32('general.alignment', 32),
      meta.u32('test.u32', 7),
      meta.bool('test.flag', true),
      // Same-length keys and tensor names, so one byte patched turns them into duplicates.
      meta.u32('test.dup_a', 1),
      meta.u32('test.dup_b', 2),
      meta.array('test.words', MetaType.STRING, ['a', 'bc', 'def']),
      meta.array('test.nums', MetaType.INT32, [1, 2, 3]),
      meta.array('test.nested', MetaType.ARRAY, [
        meta.nested(MetaType.UINT8, [1, 2]),
        meta.nested(MetaType.STRING, ['x']),
      ]),
    ],
    tensors: [
      { name: 'a.weight', type: GgmlType.F32, dims: [8, 2], data: new Uint8Array(64).fill(1) },
      { name: 'b.weight', type: GgmlType.Q8_0, dims: [32, 2], data: new Uint8Array(68).fill(2) },
      { name: 'c.weight', type: GgmlType.F16, dims: [16], data: new Uint8Array(32).fill(3) },
    ],
  });
  return new Uint8Array(readFileSync(path));
}
