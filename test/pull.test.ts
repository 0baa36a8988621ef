// `herd pull`, `herd models` and `--model` references, run as a user runs them (the real CLI in
// a child process, HERD_MODELS in a temporary directory) against a hub-shaped server on
// loopback (test/helpers/hub-server.ts, HF_ENDPOINT pointing at it): nothing else is contacted.

import test from 'ava';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GgufFile } from '../src/gguf/reader.ts';
import { copyMetadata, meta, writeGguf } from '../src/gguf/writer.ts';
import { herd, type HerdResult } from './helpers/herd.ts';
import { startHub, type HubRepoSpec, type HubServer } from './helpers/hub-server.ts';
import { bundledModel, fixtureModels } from './helpers/paths.ts';

const f32 = readFileSync(bundledModel);
const q4 = readFileSync(join(fixtureModels, 'stories260K-q4_0.gguf'));
const q8 = readFileSync(join(fixtureModels, 'stories260K-q8_0.gguf'));
const referenceText = readFileSync(join(fixtureModels, 'stories260K.reference.txt'), 'utf8');
const f32Tokens = (
  JSON.parse(readFileSync(join(fixtureModels, 'stories260K.reference.json'), 'utf8')) as { generated_tokens: number[] }
).generated_tokens;
const q4Tokens = (/q4_0 generated ids: \[([\d, ]+)\]/.exec(referenceText)?.[1] ?? '').split(',').map(Number);
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

interface Setup {
  readonly hub: HubServer;
  readonly store: string;
  readonly run: (args: readonly string[], env?: NodeJS.ProcessEnv) => Promise<HerdResult>;
}

/** A hub with these repositories, an empty store, and `herd` pointed at both. */
async function setup(
  t: { teardown: (f: () => Promise<void> | void) => void },
  repos: Record<string, HubRepoSpec>,
  o: { token?: string; pageSize?: number } = {},
): Promise<Setup> {
  const hub = await startHub({ repos, ...o });
  const store = mkdtempSync(join(tmpdir(), 'herd-models-'));
  t.teardown(async () => {
    await hub.close();
    rmSync(store, { recursive: true, force: true });
  });
  const base: NodeJS.ProcessEnv = { ...process.env, HERD_MODELS: store, HF_ENDPOINT: hub.endpoint };
  delete base.HF_TOKEN;
  return { hub, store, run: (args, env = {}) => herd(args, { env: { ...base, ...env }, timeoutMs: 120_000 }) };
}

const greedy = ['run', '--temp', '0', '-n', '64', '--json', 'Once upon a time'];
const tokensOf = (r: HerdResult) => (JSON.parse(r.stdout) as { tokens: number[] }).tokens;
const listed = async (s: Setup) => JSON.parse((await s.run(['models', '--json'])).stdout) as Record<string, unknown>[];
const cdnGets = (hub: HubServer, digest: string) =>
  hub.requests.filter((r) => r.server === 'cdn' && r.url.startsWith(`/blobs/${digest}`));

const storiesRepo: HubRepoSpec = {
  files: [
    { path: 'README.md', bytes: Buffer.from('# stories260K\n') },
    { path: 'stories260K-F32.gguf', bytes: f32 },
    { path: 'stories260K-Q4_0.gguf', bytes: q4 },
    { path: 'stories260K-Q8_0.gguf', bytes: q8 },
  ],
};

test('pull hf.co/ORG/REPO:QUANT interrupted halfway resumes with Range, checks sha256, and run --model NAME uses it', async (t) => {
  const s = await setup(t, { 'tiny/stories-GGUF': storiesRepo }, { pageSize: 2 });
  s.hub.dropAt('tiny/stories-GGUF', 'stories260K-Q4_0.gguf', q4.length >> 1, 1);
  const r = await s.run(['pull', 'hf.co/tiny/stories-GGUF:q4_0']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /interrupted at \d+ bytes .*resuming/);
  t.regex(r.stdout, /stories260K-Q4_0: .*Q4_0 \(sha256 verified\)/);
  // The listing was paged (pageSize 2): the second page was asked for.
  t.true(s.hub.requests.some((q) => q.server === 'hub' && q.url.includes('cursor=2')));
  const gets = cdnGets(s.hub, sha(q4));
  t.is(gets.length, 2);
  t.is(gets[0].range, undefined);
  const resumedAt = Number(/^bytes=(\d+)-$/.exec(gets[1].range ?? '')?.[1]);
  t.true(resumedAt > 0 && resumedAt <= q4.length >> 1, `resumed at ${resumedAt}`);

  const stored = join(s.store, 'stories260K-Q4_0.gguf');
  t.is(sha(readFileSync(stored)), sha(q4));
  t.deepEqual(readdirSync(join(s.store, '.partial')), []);

  const byName = await s.run([...greedy, '--model', 'stories260K-Q4_0']);
  t.is(byName.code, 0, byName.stderr);
  t.deepEqual(tokensOf(byName), q4Tokens);
  const byRef = await s.run([...greedy, '--model', 'hf.co/tiny/stories-GGUF:Q4_0']);
  t.is(byRef.code, 0, byRef.stderr);
  t.deepEqual(tokensOf(byRef), q4Tokens);

  // Pulled already: nothing is fetched again.
  const before = s.hub.requests.length;
  const again = await s.run(['pull', 'hf.co/tiny/stories-GGUF:Q4_0']);
  t.is(again.code, 0, again.stderr);
  t.regex(again.stdout, /already stored/);
  t.is(s.hub.requests.length, before);
});

test('a pull interrupted for good keeps its part file, and the next herd pull resumes it', async (t) => {
  const s = await setup(t, { 'tiny/stories-GGUF': storiesRepo });
  const half = q8.length >> 1;
  s.hub.dropAt('tiny/stories-GGUF', 'stories260K-Q8_0.gguf', half, Infinity);
  const failed = await s.run(['pull', 'hf.co/tiny/stories-GGUF:Q8_0']);
  t.is(failed.code, 1, failed.stderr);
  t.regex(
    failed.stderr,
    /herd: error: stories260K-Q8_0\.gguf: download interrupted at \d+ of \d+ bytes .*run herd pull again to resume/,
  );
  const part = join(s.store, '.partial', 'stories260K-Q8_0.gguf.part');
  const kept = statSync(part).size;
  t.true(kept > 0 && kept <= half, `kept ${kept}`);
  t.deepEqual(await listed(s), []);

  s.hub.heal('tiny/stories-GGUF', 'stories260K-Q8_0.gguf');
  const seen = cdnGets(s.hub, sha(q8)).length;
  const resumed = await s.run(['pull', 'hf.co/tiny/stories-GGUF:Q8_0']);
  t.is(resumed.code, 0, resumed.stderr);
  const gets = cdnGets(s.hub, sha(q8)).slice(seen);
  t.is(gets.length, 1);
  t.is(gets[0].range, `bytes=${kept}-`);
  t.is(sha(readFileSync(join(s.store, 'stories260K-Q8_0.gguf'))), sha(q8));
  t.false(existsSync(part));
});

test("a download that does not match the hub's sha256 is refused and not stored", async (t) => {
  const s = await setup(t, { 'tiny/stories-GGUF': storiesRepo });
  s.hub.corrupt('tiny/stories-GGUF', 'stories260K-Q4_0.gguf');
  const r = await s.run(['pull', 'hf.co/tiny/stories-GGUF:Q4_0']);
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /does not match the hub's checksum .*expected [0-9a-f]{64}.*discarded/);
  t.deepEqual(await listed(s), []);
  t.deepEqual(readdirSync(join(s.store, '.partial')), []);
  t.false(existsSync(join(s.store, 'stories260K-Q4_0.gguf')));
  const run = await s.run([...greedy, '--model', 'hf.co/tiny/stories-GGUF:Q4_0']);
  t.is(run.code, 2);
  t.regex(
    run.stderr,
    /hf\.co\/tiny\/stories-GGUF:Q4_0 is not pulled yet: run herd pull hf\.co\/tiny\/stories-GGUF:Q4_0/,
  );
});

test('hf.co/ORG/REPO pulls Q4_K_M whatever the case of the file name; a missing quantization lists those there are', async (t) => {
  const s = await setup(t, {
    'tiny/quants': {
      files: [
        { path: 'tiny.Q4_K_S.gguf', bytes: f32 },
        { path: 'Q8/tiny.Q8_0.gguf', bytes: q8 },
        { path: 'tiny.q4_k_m.gguf', bytes: q4 },
        { path: 'mmproj-tiny-Q4_K_M.gguf', bytes: f32 },
      ],
    },
  });
  const r = await s.run(['pull', 'hf.co/tiny/quants']);
  t.is(r.code, 0, r.stderr);
  const [m] = await listed(s);
  t.like(m, { name: 'tiny.q4_k_m', quant: 'Q4_K_M', sha256: sha(q4) });
  t.deepEqual(m.references, ['hf.co/tiny/quants', 'hf.co/tiny/quants:q4_k_m']);
  for (const ref of ['hf.co/tiny/quants', 'hf.co/tiny/quants:q4_k_m', 'tiny.q4_k_m']) {
    const run = await s.run([...greedy, '--model', ref]);
    t.is(run.code, 0, `${ref}: ${run.stderr}`);
    t.deepEqual(tokensOf(run), q4Tokens, ref);
  }

  const missing = await s.run(['pull', 'hf.co/tiny/quants:Q5_K_M']);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /hf\.co\/tiny\/quants has no Q5_K_M file; it has Q4_K_S, Q8_0, Q4_K_M/);
  const q8ref = await s.run(['pull', 'hf.co/tiny/quants:q8_0']);
  t.is(q8ref.code, 0, q8ref.stderr);
  t.true(existsSync(join(s.store, 'tiny.Q8_0.gguf')));
});

/** stories260K written as llama.cpp's gguf-split writes it: two parts, the metadata in the first. */
function splitParts(): Buffer[] {
  const src = GgufFile.open(bundledModel);
  const dir = mkdtempSync(join(tmpdir(), 'herd-split-'));
  try {
    const half = src.tensors.length >> 1;
    const groups = [src.tensors.slice(0, half), src.tensors.slice(half)];
    return groups.map((tensors, i) => {
      const path = join(dir, `part${i}.gguf`);
      const split = [
        meta.u16('split.no', i),
        meta.u16('split.count', groups.length),
        meta.i32('split.tensors.count', src.tensors.length),
      ];
      writeGguf(path, {
        metadata: i === 0 ? [...copyMetadata(src), ...split] : split,
        tensors: tensors.map((x) => ({ name: x.name, dims: x.dims, type: x.type.id, data: src.readTensor(x) })),
      });
      return readFileSync(path);
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('a split GGUF: every part is pulled, verified and merged into one model that runs', async (t) => {
  const parts = splitParts();
  const s = await setup(t, {
    'tiny/split': {
      files: [
        { path: 'stories-F32-00001-of-00002.gguf', bytes: parts[0] },
        { path: 'stories-F32-00002-of-00002.gguf', bytes: parts[1] },
      ],
    },
  });
  const r = await s.run(['pull', 'hf.co/tiny/split:f32']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /merging 2 parts into stories-F32\.gguf/);
  for (const p of parts) t.is(cdnGets(s.hub, sha(p)).length, 1);
  const [m] = await listed(s);
  t.like(m, { name: 'stories-F32', quant: 'F32' });
  const merged = GgufFile.open(join(s.store, 'stories-F32.gguf'));
  t.is(merged.tensors.length, GgufFile.open(bundledModel).tensors.length);
  t.false([...merged.metadata.keys()].some((k) => k.startsWith('split.')));
  const run = await s.run([...greedy, '--model', 'hf.co/tiny/split:F32']);
  t.is(run.code, 0, run.stderr);
  t.deepEqual(tokensOf(run), f32Tokens);
});

test('a gated repository: 401 says to set HF_TOKEN, a refused token 403, HF_TOKEN pulls it and never reaches the CDN', async (t) => {
  const s = await setup(
    t,
    { 'meta/gated': { gated: true, files: [{ path: 'gated-Q4_K_M.gguf', bytes: q4 }] } },
    { token: 'hf_right' },
  );
  const anonymous = await s.run(['pull', 'hf.co/meta/gated']);
  t.is(anonymous.code, 1);
  t.regex(
    anonymous.stderr,
    /answered 401 \(gated repository\): set HF_TOKEN \(or pass --token\).*accepted the licence on http:\/\/127\.0\.0\.1:\d+\/meta\/gated/,
  );
  const wrong = await s.run(['pull', 'hf.co/meta/gated', '--token', 'hf_wrong']);
  t.is(wrong.code, 1);
  t.regex(wrong.stderr, /answered 403 \(gated repository\): the token was refused/);
  t.deepEqual(await listed(s), []);

  const ok = await s.run(['pull', 'hf.co/meta/gated'], { HF_TOKEN: 'hf_right' });
  t.is(ok.code, 0, ok.stderr);
  t.true(s.hub.requests.some((q) => q.server === 'hub' && q.authorization === 'Bearer hf_right'));
  const cdn = s.hub.requests.filter((q) => q.server === 'cdn');
  t.true(cdn.length > 0);
  t.true(cdn.every((q) => q.authorization === undefined));
});

test('a file reference and a plain URL pull verified files; a missing file is named as not found', async (t) => {
  const s = await setup(t, { 'tiny/stories-GGUF': storiesRepo });
  const file = await s.run(['pull', 'hf.co/tiny/stories-GGUF/stories260K-Q8_0.gguf', '--name', 'story8']);
  t.is(file.code, 0, file.stderr);
  t.regex(file.stdout, /story8: .*Q8_0 \(sha256 verified\)/);
  const url = `${s.hub.endpoint}/tiny/stories-GGUF/resolve/main/stories260K-F32.gguf`;
  const plain = await s.run(['pull', url]);
  t.is(plain.code, 0, plain.stderr);
  t.regex(plain.stdout, /stories260K-F32: .*\(sha256 verified\)/);
  // The same bytes by another reference: recorded on the stored model, not downloaded again.
  const cdnBefore = s.hub.requests.filter((q) => q.server === 'cdn').length;
  const sameBytes = await s.run(['pull', 'hf.co/tiny/stories-GGUF:Q8_0']);
  t.is(sameBytes.code, 0, sameBytes.stderr);
  t.regex(sameBytes.stdout, /story8: .*already stored/);
  t.is(s.hub.requests.filter((q) => q.server === 'cdn').length, cdnBefore);
  const models = await listed(s);
  t.deepEqual(
    models.map((m) => [m.name, m.sha256, m.source]),
    [
      ['stories260K-F32', sha(f32), url],
      ['story8', sha(q8), `${s.hub.endpoint}/tiny/stories-GGUF/resolve/main/stories260K-Q8_0.gguf`],
    ],
  );
  const run = await s.run([...greedy, '--model', url]);
  t.is(run.code, 0, run.stderr);
  t.deepEqual(tokensOf(run), f32Tokens);

  const missing = await s.run(['pull', 'hf.co/tiny/stories-GGUF/missing-Q4_0.gguf']);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /not found on http:\/\/127\.0\.0\.1:\d+ \(EntryNotFound\)/);
  const noRepo = await s.run(['pull', 'hf.co/nobody/nothing']);
  t.is(noRepo.code, 1);
  t.regex(noRepo.stderr, /401 \(RepoNotFound\)/);
});

test('herd models lists the stored models and herd models rm deletes one', async (t) => {
  const s = await setup(t, { 'tiny/stories-GGUF': storiesRepo });
  const empty = await s.run(['models']);
  t.is(empty.code, 0, empty.stderr);
  t.regex(empty.stdout, /no models in .*herd pull/);
  t.is((await s.run(['pull', 'hf.co/tiny/stories-GGUF:Q8_0'])).code, 0);
  const table = await s.run(['models']);
  t.is(table.code, 0, table.stderr);
  const lines = table.stdout.trimEnd().split('\n');
  t.regex(lines[0], /^NAME\s+SIZE\s+QUANT\s+SOURCE$/);
  t.regex(lines[1], /^stories260K-Q8_0\s+\d+\.\d KiB\s+Q8_0\s+hf\.co\/tiny\/stories-GGUF:Q8_0$/);

  const rm = await s.run(['models', 'rm', 'stories260K-Q8_0']);
  t.is(rm.code, 0, rm.stderr);
  t.deepEqual(await listed(s), []);
  t.false(existsSync(join(s.store, 'stories260K-Q8_0.gguf')));
  const byName = await s.run([...greedy, '--model', 'stories260K-Q8_0']);
  t.is(byName.code, 2);
  t.regex(byName.stderr, /model file not found: stories260K-Q8_0 \(nor a stored model/);
  const again = await s.run(['models', 'rm', 'stories260K-Q8_0']);
  t.is(again.code, 2);
  t.regex(again.stderr, /no stored model named "stories260K-Q8_0"/);
});
