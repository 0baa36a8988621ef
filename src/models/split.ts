// Split GGUFs (llama.cpp's gguf-split: `NAME-00001-of-00003.gguf` …) merged into one file, as
// `llama-gguf-split --merge` does, because herd's reader, planner and shard transfer work on one
// file. The first part holds every metadata key and `split.no`, `split.count` and
// `split.tensors.count`; each part holds its own tensors. The merged file keeps the first part's
// metadata without the `split.*` keys and every part's tensors in order, streamed through in
// chunks so a multi-GB model never sits in memory.

import { closeSync, openSync, readSync } from 'node:fs';
import { GgufFile, type TensorInfo } from '../gguf/reader.ts';
import { copyMetadata, writeGguf } from '../gguf/writer.ts';
import { ModelStoreError } from './errors.ts';

const CHUNK = 4 * 1024 * 1024;

/** Writes the parts (in order) as one GGUF at `out`; returns its tensor count. */
export function mergeSplitGguf(parts: readonly string[], out: string): number {
  const files = parts.map((p) => GgufFile.open(p));
  for (const [i, f] of files.entries()) {
    const no = f.metadata.get('split.no');
    const count = f.metadata.get('split.count');
    if (no !== i || count !== parts.length) {
      throw new ModelStoreError(
        'file',
        `${f.path}: split.no ${String(no)} of split.count ${String(count)}, expected part ${i} of ${parts.length}`,
      );
    }
  }
  const tensors = files.flatMap((f) => f.tensors.map((t) => ({ file: f, t })));
  const declared = files[0].metadata.get('split.tensors.count');
  if (declared !== undefined && declared !== tensors.length) {
    throw new ModelStoreError(
      'file',
      `${files[0].path}: split.tensors.count is ${String(declared)} but the parts hold ${tensors.length} tensors`,
    );
  }
  writeGguf(out, {
    metadata: copyMetadata(files[0], (key) => !key.startsWith('split.')),
    tensors: tensors.map(({ file, t }) => ({
      name: t.name,
      dims: t.dims,
      type: t.type.id,
      data: () => chunks(file.path, t),
    })),
  });
  return tensors.length;
}

function* chunks(path: string, t: TensorInfo): Iterable<Uint8Array> {
  const fd = openSync(path, 'r');
  try {
    for (let done = 0; done < t.nBytes; ) {
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, t.nBytes - done));
      const n = readSync(fd, buf, 0, buf.length, t.fileOffset + done);
      if (n === 0) throw new ModelStoreError('file', `${path}: tensor ${t.name} ends past the end of the file`);
      done += n;
      yield n === buf.length ? buf : buf.subarray(0, n);
    }
  } finally {
    closeSync(fd);
  }
}
