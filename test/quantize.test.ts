import test from 'ava';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GgufFile } from '../src/gguf/reader.ts';
import { GgmlType } from '../src/ggml/types.ts';
import { chooseType, quantTarget, quantizeFile } from '../src/model/quantize.ts';
import { synthModel, LLAMA_VOCAB } from '../src/model/synth.ts';
import { Transformer } from '../src/model/transformer.ts';
import { repoRoot, fixtureModels } from './helpers/paths.ts';

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'herd-quant-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

for (const type of ['q8_0', 'q4_0'] as const) {
  test(`quantizing stories260K to ${type} gives llama.cpp's tensors byte for byte`, (t) => {
    const out = join(tempDir(t), `s-${type}.gguf`);
    const report = quantizeFile(join(repoRoot, 'models/stories260K.gguf'), out, type);
    const ours = GgufFile.open(out);
    const theirs = GgufFile.open(join(fixtureModels, `stories260K-${type}.gguf`));
    t.is(ours.tensors.length, theirs.tensors.length);
    for (const a of ours.tensors) {
      const b = theirs.requireTensor(a.name);
      t.is(a.type.id, b.type.id, a.name);
      t.true(ours.readTensor(a).equals(theirs.readTensor(b)), `${a.name} bytes differ`);
    }
    for (const [key, value] of theirs.metadata) t.deepEqual(ours.metadata.get(key), value, key);
    // ffn_down rows are 172 wide: no 32-block fits, so they stay f32, as in llama.cpp's files.
    t.is(report.tensors.find((x) => x.name === 'blk.0.ffn_down.weight')?.to, 'F32');
  });
}

test('Q4_K_M gives the head Q6_K and more bits to attn_v and ffn_down of some layers, like llama-quantize', (t) => {
  const target = quantTarget('q4_k_m');
  const n = 22;
  const at = (name: string, dims = [2048, 2048]) => chooseType({ name, dims }, target, n);
  t.is(at('output.weight', [2048, 32000]), GgmlType.Q6_K);
  t.is(at('token_embd.weight', [2048, 32000]), GgmlType.Q4_K);
  t.is(at('blk.5.attn_q.weight'), GgmlType.Q4_K);
  t.is(at('output_norm.weight', [2048]), undefined);
  // use_more_bits(i, 22): i < 2.75, i >= 19.25, or (i - 2) % 3 == 2
  const more = Array.from({ length: n }, (_, i) => at(`blk.${i}.ffn_down.weight`, [5632, 2048]) === GgmlType.Q6_K);
  t.deepEqual(
    more.flatMap((m, i) => (m ? [i] : [])),
    [0, 1, 2, 4, 7, 10, 13, 16, 19, 20, 21],
  );
  t.is(at('blk.4.attn_v.weight', [2048, 256]), GgmlType.Q6_K);
  // A row no 256-block fits falls back as llama-quantize does (Q4_K → Q5_0).
  t.is(at('blk.5.ffn_down.weight', [5632 + 32, 2048]), GgmlType.Q5_0);
});

test('synthetic models are deterministic for a seed, and a K-quant mix runs', (t) => {
  const dir = tempDir(t);
  const opts = {
    arch: 'llama',
    type: 'q4_k_m',
    dim: 256,
    nHeads: 4,
    nKvHeads: 2,
    ffnDim: 512,
    nLayers: 2,
    std: 0.02,
    vocabFrom: LLAMA_VOCAB,
  } as const;
  const a = synthModel({ ...opts, seed: 7, out: join(dir, 'a.gguf') });
  const b = synthModel({ ...opts, seed: 7, out: join(dir, 'b.gguf') });
  const c = synthModel({ ...opts, seed: 8, out: join(dir, 'c.gguf') });
  const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
  t.is(sha(a.path), sha(b.path));
  t.not(sha(a.path), sha(c.path));
  const file = GgufFile.open(a.path);
  t.is(file.requireTensor('output.weight').type.name, 'Q6_K');
  t.is(file.requireTensor('blk.0.attn_q.weight').type.name, 'Q4_K');
  t.is(file.number('general.file_type'), 15);
  t.is(a.vocabSize, 32000);
  const m = Transformer.load(file, { ctx: 16 });
  const logits = m.forward(1, 0);
  t.true(logits.every(Number.isFinite));
});
