// A tensor-parallel member pulls only its share (issue 13 scope 5), in one process: the
// coordinator's share manifests and FetchTensors parts, a node's ShardStore fetching, checking
// and caching a member's slice. The slice holds exactly the share's bytes (counted from the
// manifest), a new store on the same cache dir loads it without a transfer, the members it
// makes compute what members cut from the whole file compute, and a tampered part is refused.

import test from 'ava';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GgufFile } from '../src/gguf/reader.ts';
import { synthModel } from '../src/model/synth.ts';
import { shares, splitShape, type TensorShare } from '../src/model/tensor-share.ts';
import { cutLayout, shareCut } from '../src/model/share-cut.ts';
import { TensorMember } from '../src/engine/tensor-split.ts';
import { JsBackend } from '../src/kernels/backend.ts';
import { CoordinatorServer } from '../src/cluster/coordinator/server.ts';
import { ModelSource } from '../src/cluster/shard/source.ts';
import { ShardStore, type LoadRequest, type StoreCounters } from '../src/cluster/shard/store.ts';
import type { SliceManifest } from '../src/cluster/shard/manifest.ts';
import { silentLogger } from '../src/cluster/log.ts';
import { joinHeads, LocalGroup } from './helpers/local-group.ts';
import { TINY_LLAMA } from './helpers/tiny-llama.ts';

const dir = mkdtempSync(join(tmpdir(), 'herd-shard-share-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

const tiny = synthModel({ ...TINY_LLAMA, type: 'q4_0', seed: 13, out: join(dir, 'tiny-q4_0.gguf') }).path;

let source: ModelSource;
let coordinator: string;
const servers: CoordinatorServer[] = [];
test.before(async () => {
  source = await ModelSource.open(tiny, join(dir, 'coordinator'));
  coordinator = await serve(source);
});
test.after.always(async () => {
  for (const s of servers) await s.stop();
});

async function serve(s: ModelSource): Promise<string> {
  const server = new CoordinatorServer(s, undefined, silentLogger);
  servers.push(server);
  return `127.0.0.1:${await server.start('127.0.0.1')}`;
}

function memberShares(weights: readonly number[], layers: readonly [number, number]): TensorShare[] {
  return shares(splitShape(source.file, source.config, layers), weights);
}

function newStore(cacheDir: string): { store: ShardStore; counters: StoreCounters } {
  const counters = { shardLoads: 0, shardReuses: 0, tensorsFetched: 0, bytesFetched: 0, evictions: 0 };
  const store = new ShardStore({ cacheDir, backend: new JsBackend(), log: silentLogger, counters, nodeName: 'test' });
  return { store, counters };
}

function request(
  start: number,
  end: number,
  size: number,
  share: TensorShare,
  manifest: SliceManifest,
  from = coordinator,
): LoadRequest {
  return {
    modelHash: source.hash,
    modelSize: source.size,
    modelName: source.name,
    start,
    end,
    nLayers: source.nLayers,
    ctx: 64,
    kvType: 'f32',
    coordinator: from,
    manifest,
    share: { size, share },
  };
}

/** Loads the request's share; the bytes it transferred and where it came from. */
async function load(store: ShardStore, req: LoadRequest) {
  let transferred = 0;
  let source = '';
  const { shard } = await store.load(req, (p) => {
    if (p.bytesTransferred !== undefined) transferred = p.bytesTransferred;
    if (p.source) source = p.source;
  });
  return { shard, transferred, source };
}

const bytesOf = (m: SliceManifest) => m.tensors.reduce((s, t) => s + t.nBytes, 0);

test.serial(
  'each member pulls and caches exactly its share; the cache serves it again without a transfer',
  async (t) => {
    const layers = [0, 3] as const;
    const group = memberShares([1, 1], layers);
    const manifests = await source.shareManifestsFor(...layers, group);
    const whole = bytesOf(source.manifestFor(...layers));
    // What each member must hold, computed from the model: its parts of the split tensors and
    // of the head (the range is the last), every replicated tensor whole, the embedding on the
    // leader alone.
    t.truthy(group[1].vocabRows, 'the members share the head');
    for (const [m, share] of group.entries()) {
      let want = 0;
      for (const e of source.manifestFor(...layers).tensors) {
        if (m !== 0 && e.name === 'token_embd.weight') continue;
        want += cutLayout(e, shareCut(e.name, source.config, share), 'test').nBytes;
      }
      t.is(bytesOf(manifests[m]), want, `member ${m}'s manifest is its share`);
    }
    t.log(`whole range ${whole} bytes; shares ${manifests.map(bytesOf).join(' + ')}`);
    t.true(bytesOf(manifests[1]) < whole / 2, 'a follower holds less than half the range');

    const cacheDirs = group.map((_, m) => join(dir, `member-${m}`));
    const fetched = await Promise.all(
      group.map(async (share, m) => {
        const { store, counters } = newStore(cacheDirs[m]);
        const got = await load(store, request(...layers, 2, share, manifests[m]));
        t.is(got.source, 'fetched');
        t.is(got.transferred, bytesOf(manifests[m]), `member ${m} transferred exactly its share`);
        t.is(counters.bytesFetched, bytesOf(manifests[m]));
        return got.shard.model as TensorMember;
      }),
    );
    // A restarted member (a new store on the same cache dir) loads its share without a transfer.
    for (const [m, share] of group.entries()) {
      const { store } = newStore(cacheDirs[m]);
      const again = await load(store, request(...layers, 2, share, manifests[m]));
      t.is(again.source, 'cache', `member ${m} loads its share from the cache`);
      t.is(again.transferred, 0);
      t.deepEqual(store.cachedSlices(), [], 'a share slice is not advertised as a cached range');
    }

    // The members from share slices compute what members cut from the whole file compute.
    const file = GgufFile.open(tiny);
    const cut = group.map((share) => TensorMember.load(file, { share, ctx: 64 }));
    t.falsy(fetched[1].weights.tokenEmbd, "a follower's slice has no embedding");
    t.is(fetched[1].weights.output?.rows, group[1].vocabRows![1] - group[1].vocabRows![0], "a follower's head rows");
    const run = async (members: readonly TensorMember[]) => {
      const g = new LocalGroup(members.length);
      const x = members.map(() => new Float32Array(source.config.dim));
      const logits: Float32Array[] = [];
      for (const [pos, token] of [1, 42, 7, 99, 3].entries()) {
        members[0].embed([token], x[0]);
        for (const xi of x.slice(1)) xi.set(x[0]);
        const caches = members.map((mm) => mm.cache);
        await Promise.all(
          members.map((mm, i) => mm.forwardLayers(x[i], [{ start: pos, n: 1, cache: caches[i] }], g.allReduce(i))),
        );
        logits.push(
          joinHeads(
            members,
            members.map((mm, i) => mm.head(x[i]).slice()),
          ),
        );
      }
      return logits;
    };
    t.deepEqual(await run(fetched), await run(cut));
  },
);

test.serial('a share whose bytes were tampered with is refused, twice, and nothing is cached', async (t) => {
  const layers = [1, 3] as const;
  const group = memberShares([1, 1], layers);
  const manifests = await source.shareManifestsFor(...layers, group);
  // A poisoner's copy: bytes of member 1's columns of blk.2.ffn_down changed.
  const target = 'blk.2.ffn_down.weight';
  const path = join(dir, 'poisoned.gguf');
  copyFileSync(tiny, path);
  const info = GgufFile.open(path).requireTensor(target);
  const layout = cutLayout(
    { name: target, dims: info.dims, ggmlType: info.type.id },
    shareCut(target, source.config, group[1]),
    'test',
  );
  const bytes = readFileSync(path);
  for (let i = 0; i < 16; i++) bytes[info.fileOffset + layout.first + layout.stride + i] ^= 0x55;
  writeFileSync(path, bytes);
  const poison = await ModelSource.open(path);
  Object.defineProperty(poison, 'hash', { value: source.hash });
  const poisoner = await serve(poison);

  const cacheDir = join(dir, 'poison-target');
  const { store } = newStore(cacheDir);
  const err = await t.throwsAsync(load(store, request(...layers, 2, group[1], manifests[1], poisoner)));
  t.regex(err.message, /failed to load twice/);
  t.regex(err.message, new RegExp(`tensor ${target.replace(/\./g, '\\.')} from ${poisoner}: its bytes hash to`));
  t.deepEqual(readdirSync(join(cacheDir, 'shards', source.hash)), [], 'no slice, record or temporary file is left');
  // Member 0's part of the same tensor is intact: its share passes.
  const ok = await load(newStore(cacheDir).store, request(...layers, 2, group[0], manifests[0], poisoner));
  t.is(ok.source, 'fetched');
});

test.serial('a share whose column cut is not block aligned is refused, naming the tensor and the share', async (t) => {
  const bad: TensorShare[] = [
    { member: 0, kvHeads: [0, 2], ffnRows: [0, 700] },
    { member: 1, kvHeads: [2, 4], ffnRows: [700, 1408] },
  ];
  const err = await t.throwsAsync(source.shareManifestsFor(0, 1, bad));
  t.regex(
    err.message,
    /tensor blk\.0\.ffn_down\.weight \[1408, 512\], member 0's share .*: columns \[0, 700\) do not fall on Q4_0 block boundaries \(every 32\)/,
  );
});
