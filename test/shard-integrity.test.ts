// Shard integrity and admission on a real node daemon (issue 14 scope 2, "Admission"; issue 12
// scope 4): tensors are checked against the coordinator's manifest, not the sender's sha256; a
// slice enters the cache only once it validates; a corrupted cached slice is neither advertised
// nor used; the cache dir and the loaded shards stay under their caps; sessions are admitted
// against the node's memory budget before anything is allocated. A group member's share is
// checked against its share's manifest like a whole slice against the range's.

import test, { type ExecutionContext } from 'ava';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { status, type ServiceError } from '@grpc/grpc-js';
import { nodeClient, unary } from '../src/cluster/rpc.ts';
import { CoordinatorServer } from '../src/cluster/coordinator/server.ts';
import { ModelSource } from '../src/cluster/shard/source.ts';
import { GgufFile } from '../src/gguf/reader.ts';
import { silentLogger } from '../src/cluster/log.ts';
import { manifestToWire, samplingToWire, shareToWire } from '../src/cluster/wire.ts';
import { defaultSampling } from '../src/engine/sampler.ts';
import {
  DType,
  KvType,
  type ForwardReply,
  type HerdNodeClient,
  type LoadProgress,
  type TensorGroup,
} from '../src/proto/herd.ts';
import { shares, splitShape } from '../src/model/tensor-share.ts';
import type { SliceManifest } from '../src/cluster/shard/manifest.ts';
import { loopbackNodeArgs, startNode, type RunningNode } from './helpers/herd-proc.ts';
import { HUNG_MS } from './helpers/serve.ts';
import { bundledModel, fixtureModels } from './helpers/paths.ts';
import { SyncGroup } from '../src/cluster/dataplane/group.ts';
import { herdTls } from '../src/cluster/tls.ts';

const KEY = 'f'.repeat(64);
const key = Buffer.from(KEY);

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'herd-integrity-'));
  dirs.push(d);
  return d;
}
test.after.always(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

let good: ModelSource;
test.before(async () => {
  good = await ModelSource.open(bundledModel, tempDir());
});

interface Herd {
  node: RunningNode;
  client: HerdNodeClient;
  cacheDir: string;
}

async function startHerdNode(t: ExecutionContext, name: string, extra: string[] = []): Promise<Herd> {
  const cacheDir = tempDir();
  const node = await startNode([...loopbackNodeArgs(cacheDir), '--cluster-key', KEY, '--name', name, ...extra]);
  const client = nodeClient(`127.0.0.1:${node.port}`, key);
  t.teardown(async () => {
    client.close();
    node.child.kill('SIGTERM');
    await node.exited();
  });
  return { node, client, cacheDir };
}

/**
 * Opens a greedy session of ctx 32768 over all 5 layers of `good` on `h` (the stream is cancelled
 * at teardown); `result` is 'ready' once the node admitted it, or the error it refused it with.
 */
function openWholeModelSession(t: ExecutionContext, h: Herd, coord: string, sessionId: string, source = good) {
  const stream = h.client.forward();
  t.teardown(() => stream.cancel());
  const result = new Promise<ServiceError | 'ready'>((resolve) => {
    stream.on('data', (r: ForwardReply) => r.ready && resolve('ready'));
    stream.on('error', (e: ServiceError) => resolve(e));
  });
  stream.write({
    open: {
      sessionId,
      modelHash: source.hash,
      route: [{ address: `127.0.0.1:${h.node.port}`, start: 0, end: 5 }],
      hop: 0,
      ctx: 32768,
      wire: DType.DTYPE_F32,
      sampling: samplingToWire({ ...defaultSampling, temperature: 0 }),
      deliverTo: coord,
    },
  });
  return { stream, result };
}

async function serveSource(t: ExecutionContext, source: ModelSource): Promise<string> {
  const coord = new CoordinatorServer(source, key, silentLogger);
  const port = await coord.start('127.0.0.1');
  t.teardown(() => coord.stop());
  return `127.0.0.1:${port}`;
}

/** LoadShard of [start, end) of `good`'s model, manifest from `good`, tensors from `from`. */
function load(
  h: Herd,
  from: string,
  start: number,
  end: number,
  o: { ctx?: number; source?: ModelSource; group?: TensorGroup; manifest?: SliceManifest } = {},
): Promise<LoadProgress> {
  const s = o.source ?? good;
  return new Promise((resolve, reject) => {
    let last: LoadProgress | undefined;
    const call = h.client.loadShard({
      modelHash: s.hash,
      modelSize: s.size,
      modelName: s.name,
      start,
      end,
      nLayers: s.nLayers,
      ctx: o.ctx ?? 64,
      kvType: KvType.KV_TYPE_F32,
      coordinator: from,
      manifest: manifestToWire(o.manifest ?? s.manifestFor(start, end)),
      group: o.group,
    });
    call.on('data', (p: LoadProgress) => (last = p));
    call.on('error', reject);
    call.on('end', () => (last ? resolve(last) : reject(new Error('no progress'))));
  });
}

function sliceFiles(h: Herd): string[] {
  const dir = join(h.cacheDir, 'shards', good.hash);
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}

async function cachedRanges(h: Herd): Promise<string[]> {
  const info = await unary(h.client, h.client.info, {}, HUNG_MS);
  return info.cached.map((c) => `${c.start}-${c.end}`).sort();
}

/** A copy of the model whose tensor `name` has different bytes: a poisoner's file. */
function poisonedCopy(name: string): string {
  const path = join(tempDir(), 'poisoned.gguf');
  copyFileSync(bundledModel, path);
  const t = GgufFile.open(path).requireTensor(name);
  const bytes = readFileSync(path);
  for (let i = 0; i < Math.min(64, t.nBytes); i++) bytes[t.fileOffset + i] ^= 0x55;
  writeFileSync(path, bytes);
  return path;
}

test.serial(
  'a peer serving wrong bytes with a matching sha256 of its own is refused, twice, and nothing is cached',
  async (t) => {
    const h = await startHerdNode(t, 'poison-target');
    const target = 'blk.2.attn_q.weight';
    const poison = await ModelSource.open(poisonedCopy(target));
    t.not(poison.hash, good.hash);
    // The poisoner claims the real model and sends its own bytes with their own (correct) sha256.
    Object.defineProperty(poison, 'hash', { value: good.hash });
    const poisoner = await serveSource(t, poison);

    const err = (await load(h, poisoner, 1, 5).catch((e: ServiceError) => e)) as ServiceError;
    t.true(err instanceof Error, 'the load fails');
    t.not(err.code, status.OK);
    t.regex(err.details, new RegExp(`node poison-target: .*tensor ${target.replace(/\./g, '\\.')} from ${poisoner}`));
    t.regex(err.details, /failed to load twice/);
    // Fetched once more before failing, and each poisoned transfer discarded.
    // (its log lines come on stderr, which may trail the call's status)
    const discards = () => h.node.events.filter((e) => e.event === 'shard.discard').length;
    for (let i = 0; i < 100 && discards() < 2; i++) await new Promise((r) => setTimeout(r, 50));
    t.is(discards(), 2);
    t.deepEqual(sliceFiles(h), [], 'no slice, record or temporary file is left');
    t.deepEqual(await cachedRanges(h), []);
    t.true((await unary(h.client, h.client.health, {}, HUNG_MS)).ok);

    // The honest coordinator's bytes pass.
    const honest = await serveSource(t, good);
    const done = await load(h, honest, 1, 5);
    t.is(done.phase, 'done');
    t.is(done.source, 'fetched');
    t.deepEqual(await cachedRanges(h), ['1-5']);
  },
);

test.serial("a member's share with tampered bytes is refused against its share's manifest, twice", async (t) => {
  const h = await startHerdNode(t, 'share-target');
  // The poisoner changes the first bytes of ffn_down: row 0's first columns, the leader's part.
  const target = 'blk.2.ffn_down.weight';
  const poison = await ModelSource.open(poisonedCopy(target));
  Object.defineProperty(poison, 'hash', { value: good.hash });
  const poisoner = await serveSource(t, poison);
  const group2 = shares(splitShape(good.file, good.config, [1, 5]), [1, 1]);
  const leader = group2[0];
  const [manifest] = await good.shareManifestsFor(1, 5, group2);
  t.truthy(manifest.tensors.find((x) => x.name === target)?.cut, 'the manifest lists the part');
  const group: TensorGroup = {
    size: 2,
    member: 0,
    ...shareToWire(leader),
    sessions: 1,
    sync: 'f32',
    token: Buffer.alloc(32, 7),
    peers: [],
  };
  const err = (await load(h, poisoner, 1, 5, { group, manifest }).catch((e: ServiceError) => e)) as ServiceError;
  t.true(err instanceof Error, 'the load fails');
  t.regex(err.details, new RegExp(`failed to load twice: tensor ${target.replace(/\./g, '\\.')} from ${poisoner}`));
  t.deepEqual(sliceFiles(h), [], 'no slice, record or temporary file is left');
  t.true((await unary(h.client, h.client.health, {}, HUNG_MS)).ok);
});

test.serial(
  "a follower reserves its KV cache shares for the group's sessions at load, until the group ends",
  async (t) => {
    // Member 1 of a group of 2 over layers [1, 5) holds 2 of stories260K's 4 KV heads: 16 MiB of
    // f32 KV cache per session of ctx 32768. Its node has 100 MiB.
    const h = await startHerdNode(t, 'follower-budget', ['--max-memory', '100']);
    const coord = await serveSource(t, good);
    const pair = shares(splitShape(good.file, good.config, [1, 5]), [1, 1]);
    const manifest = (await good.shareManifestsFor(1, 5, pair))[1];
    const token = randomBytes(32);
    // member 0 is this test, on the data plane
    const leader = await SyncGroup.listen(
      { member: 0, size: 2, token, format: 'f32', maxValues: 32 * good.config.dim, tls: herdTls(key) },
      { host: '127.0.0.1', port: 0 },
    );
    t.teardown(() => leader.close());
    const at = leader.endpoint as { host: string; port: number };
    const group = (sessions: number): TensorGroup => ({
      size: 2,
      member: 1,
      ...shareToWire(pair[1]),
      sessions,
      sync: 'f32',
      token,
      peers: [`127.0.0.1:${at.port}`],
    });
    const refused = (await load(h, coord, 1, 5, { ctx: 32768, group: group(8), manifest }).catch(
      (e: ServiceError) => e,
    )) as ServiceError;
    t.is(refused.code, status.RESOURCE_EXHAUSTED);
    t.regex(
      refused.details,
      /node follower-budget: .* asks 134217728 bytes .*member 1's KV cache shares for 8 sessions/,
    );

    const linked = leader.connect([at, { host: '', port: 0 }]);
    t.is((await load(h, coord, 1, 5, { ctx: 32768, group: group(4), manifest })).phase, 'done');
    await linked;
    // 64 MiB reserved for the group: a whole-model session of another model (40 MiB) waits.
    const other = await ModelSource.open(join(fixtureModels, 'stories260K-q8_0.gguf'), tempDir());
    const otherCoord = await serveSource(t, other);
    t.is((await load(h, otherCoord, 0, 5, { ctx: 32768, source: other })).phase, 'done');
    const waits = await openWholeModelSession(t, h, otherCoord, 'beside-a-group', other).result;
    t.not(waits, 'ready');
    if (waits !== 'ready') t.is(waits.code, status.RESOURCE_EXHAUSTED);
    // The group ends (its leader goes): the follower's reservation goes with it.
    leader.close();
    let admitted: ServiceError | 'ready' = waits;
    for (let i = 0; i < 100 && admitted !== 'ready'; i++) {
      await new Promise((r) => setTimeout(r, 50));
      admitted = await openWholeModelSession(t, h, otherCoord, `after-the-group-${i}`, other).result;
    }
    t.is(admitted, 'ready');
  },
);

test.serial('a corrupted cached slice is not advertised, not used, and is replaced', async (t) => {
  const h = await startHerdNode(t, 'corrupt-cache');
  const honest = await serveSource(t, good);
  t.is((await load(h, honest, 1, 5)).source, 'fetched');
  // Another range of the same model replaces [1, 5) in memory; its slice stays cached.
  t.is((await load(h, honest, 0, 1)).source, 'fetched');
  t.deepEqual(await cachedRanges(h), ['0-1', '1-5']);

  // Flip bytes in the middle of the cached [1, 5) slice.
  const slice = join(h.cacheDir, 'shards', good.hash, '1-5.gguf');
  const bytes = readFileSync(slice);
  const mid = Math.floor(bytes.length / 2);
  for (let i = mid; i < mid + 32; i++) bytes[i] ^= 0xff;
  writeFileSync(slice, bytes);

  t.deepEqual(await cachedRanges(h), ['0-1'], 'the corrupted slice is not advertised');
  const again = await load(h, honest, 1, 5);
  t.is(again.source, 'fetched', 'the corrupted slice is not used: fetched again');
  t.true(again.bytesTransferred > 0);
  t.deepEqual(await cachedRanges(h), ['0-1', '1-5'], 'and replaced');
  t.false(readFileSync(slice).equals(bytes));
  // An intact cached slice is still used.
  t.is((await load(h, honest, 0, 1)).source, 'cache');
});

test.serial('a LoadShard without a manifest, or with one that is not its range, is INVALID_ARGUMENT', async (t) => {
  const h = await startHerdNode(t, 'manifest-check');
  const honest = await serveSource(t, good);
  const call = (manifest: ReturnType<typeof manifestToWire> | undefined) =>
    new Promise<ServiceError | 'ok'>((resolve) => {
      const c = h.client.loadShard({
        modelHash: good.hash,
        modelSize: good.size,
        modelName: good.name,
        start: 1,
        end: 5,
        nLayers: good.nLayers,
        ctx: 64,
        kvType: KvType.KV_TYPE_F32,
        coordinator: honest,
        manifest,
      });
      c.on('data', () => {});
      c.on('error', (e: ServiceError) => resolve(e));
      c.on('end', () => resolve('ok'));
    });
  const none = await call(undefined);
  t.not(none, 'ok');
  if (none !== 'ok') {
    t.is(none.code, status.INVALID_ARGUMENT);
    t.regex(none.details, /no tensor manifest/);
  }
  const other = await call(manifestToWire(good.manifestFor(0, 1)));
  t.not(other, 'ok');
  if (other !== 'ok') {
    t.is(other.code, status.INVALID_ARGUMENT);
    t.regex(other.details, /token_embd\.weight|not part of it/);
  }
  t.deepEqual(sliceFiles(h), []);
});

test.serial('the cache dir stays under --cache-max: least recently used slices not loaded go', async (t) => {
  // Slices of stories260K: about 0.2 MiB per layer range here; a 0.6 MiB cap holds two or three.
  const h = await startHerdNode(t, 'cache-cap', ['--cache-max', '0.6']);
  const honest = await serveSource(t, good);
  for (const [a, b] of [
    [0, 1],
    [1, 2],
    [2, 3],
    [3, 4],
    [4, 5],
  ]) {
    t.is((await load(h, honest, a, b)).source, 'fetched');
  }
  await h.node.waitFor((e) => e.event === 'shard.cache_evict', HUNG_MS);
  const evicted = h.node.events.filter((e) => e.event === 'shard.cache_evict');
  t.true(evicted.length > 0, 'slices were evicted');
  const total = readdirSync(join(h.cacheDir, 'shards', good.hash))
    .filter((n) => n.endsWith('.gguf'))
    .reduce((s, n) => s + readFileSync(join(h.cacheDir, 'shards', good.hash, n)).length, 0);
  t.true(total <= 0.6 * 1024 * 1024, `cache holds ${total} bytes`);
  // The loaded slice (the last) stays; the oldest went first.
  const ranges = await cachedRanges(h);
  t.true(ranges.includes('4-5'));
  t.false(ranges.includes('0-1'));
  t.is(evicted[0].path, join(h.cacheDir, 'shards', good.hash, '0-1.gguf'));
});

test.serial(
  'a node out of memory budget refuses a session with RESOURCE_EXHAUSTED, keeps serving, and admits the next one after a session ends',
  async (t) => {
    // Sessions of ctx 32768 with an f32 KV cache over stories260K's 5 layers take 40 MiB each
    // (committed lazily, so only the budget keeps them from over-committing): two fit in 100 MiB.
    const h = await startHerdNode(t, 'budget-node', ['--max-memory', '100']);
    const coordServer = new CoordinatorServer(good, key, silentLogger);
    const coordPort = await coordServer.start('127.0.0.1');
    t.teardown(() => coordServer.stop());
    const coord = `127.0.0.1:${coordPort}`;
    t.is((await load(h, coord, 0, 5, { ctx: 32768 })).phase, 'done');

    let n = 0;
    const open = () => openWholeModelSession(t, h, coord, `budget-${++n}-session`);
    const a = open();
    t.is(await a.result, 'ready');
    const b = open();
    t.is(await b.result, 'ready');
    const c = open();
    const refused = await c.result;
    t.not(refused, 'ready');
    if (refused !== 'ready') {
      t.is(refused.code, status.RESOURCE_EXHAUSTED);
      t.regex(
        refused.details,
        /node budget-node: session budget-3-session asks 41943040 bytes .* \d+ bytes .* are left/,
      );
    }
    const health = await unary(h.client, h.client.health, {}, HUNG_MS);
    t.true(health.ok);
    t.is(health.sessions, 2);

    // One ends: the next is admitted.
    a.stream.end();
    for (let i = 0; i < 100; i++) {
      if ((await unary(h.client, h.client.health, {}, HUNG_MS)).sessions === 1) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const d = open();
    t.is(await d.result, 'ready');
  },
);

test.serial(
  'loaded shards not in use are evicted, least recently used first, when a new one would not fit the budget',
  async (t) => {
    // A second model (the same tensors, another file hash) and a budget that holds one of them.
    const otherPath = join(tempDir(), 'other.gguf');
    writeFileSync(otherPath, Buffer.concat([readFileSync(bundledModel), Buffer.alloc(64)]));
    const other = await ModelSource.open(otherPath);
    t.not(other.hash, good.hash);
    const h = await startHerdNode(t, 'lru-node', ['--max-memory', '1.5']);
    const first = await serveSource(t, good);
    const second = await serveSource(t, other);
    t.is((await load(h, first, 0, 5)).phase, 'done');
    t.is((await load(h, second, 0, 5, { source: other })).phase, 'done');
    const info = await unary(h.client, h.client.info, {}, HUNG_MS);
    t.deepEqual(
      info.shards.map((s) => s.modelHash),
      [other.hash],
      'the older model left memory for the newer',
    );
    const evict = await h.node.waitFor((e) => e.event === 'shard.evict' && e.reason === 'memory', HUNG_MS);
    t.is(evict.model, good.hash.slice(0, 12));
  },
);

test.serial('herd serve makes a request the node has no room for wait, and serves it once another ends', async (t) => {
  // 150 MiB: the plan fits --parallel 2 sessions of 40 MiB (with the planner's 64 MiB overhead),
  // but two sessions of another coordinator hold 80 MiB of the node's budget already.
  const h = await startHerdNode(t, 'crowded', ['--max-memory', '150']);
  const coordServer = new CoordinatorServer(good, key, silentLogger);
  const coord = `127.0.0.1:${await coordServer.start('127.0.0.1')}`;
  t.teardown(() => coordServer.stop());
  t.is((await load(h, coord, 0, 5, { ctx: 32768 })).phase, 'done');
  for (const id of ['elsewhere-one', 'elsewhere-two']) {
    t.is(await openWholeModelSession(t, h, coord, id).result, 'ready');
  }

  const { startServe } = await import('./helpers/serve.ts');
  const serve = await startServe(
    [
      ...['--nodes', `127.0.0.1:${h.node.port}`, '--cluster-key', KEY, '--no-mdns'],
      ...['--ctx', '32768', '--kv-type', 'f32', '--parallel', '2'],
    ],
    { env: { ...process.env, HERD_CACHE_DIR: tempDir() } },
  );
  t.teardown(() => serve.stop());
  const complete = async (prompt: string) => {
    const r = await fetch(`${serve.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt, max_tokens: 24, temperature: 0 }),
    });
    return { status: r.status, body: (await r.json()) as { usage?: { completion_tokens: number } } };
  };
  const results = await Promise.all([complete('Once upon a time'), complete('Tom was sad')]);
  for (const r of results) {
    t.is(r.status, 200, JSON.stringify(r.body));
    t.true((r.body.usage?.completion_tokens ?? 0) > 0);
  }
  const waited = await serve.waitFor((e) => e.event === 'session.wait_for_memory', HUNG_MS);
  t.regex(String(waited.error), /RESOURCE_EXHAUSTED: node crowded: session \S+ asks 41943040 bytes/);
  t.true((await unary(h.client, h.client.health, {}, HUNG_MS)).ok);
});

test.serial(
  'a transfer that stops mid-way is cut after --transfer-stall, fetched once more, and fails clearly',
  async (t) => {
    const h = await startHerdNode(t, 'stall-target', ['--transfer-stall', '1']);
    // A coordinator whose FetchTensors sends its header and one chunk, then nothing, never ending.
    const stalling = await ModelSource.open(bundledModel, tempDir());
    const serve = stalling.serve.bind(stalling);
    Object.defineProperty(stalling, 'serve', {
      value: (call: Parameters<ModelSource['serve']>[0], onBytes: Parameters<ModelSource['serve']>[1]) => {
        let sent = 0;
        const quiet = new Proxy(call, {
          get(target, prop) {
            if (prop === 'write')
              return (...a: Parameters<typeof call.write>) => (++sent <= 2 ? target.write(...a) : true);
            if (prop === 'end') return () => {};
            const v: unknown = Reflect.get(target, prop);
            return typeof v === 'function' ? (v as (...x: unknown[]) => unknown).bind(target) : v;
          },
        });
        return serve(quiet, onBytes);
      },
    });
    const staller = await serveSource(t, stalling);
    const t0 = Date.now();
    const err = (await load(h, staller, 1, 5).catch((e: ServiceError) => e)) as ServiceError;
    t.true(err instanceof Error, 'the load fails');
    t.regex(err.details, /failed to load twice: .*no data for 1 s/);
    t.log(`${err.details} (after ${Date.now() - t0} ms)`);
    t.deepEqual(sliceFiles(h), [], 'nothing of the stalled transfers is kept');
    // The node goes on: the same range from an honest coordinator loads.
    const honest = await serveSource(t, good);
    t.is((await load(h, honest, 1, 5)).phase, 'done');
  },
);
