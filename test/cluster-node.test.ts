import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { PROTOCOL_VERSION } from '../src/cluster/caps.ts';
import { coordinatorClient, nodeClient, unary } from '../src/cluster/rpc.ts';
import { stopProcess } from './helpers/netns.ts';
import { startNode, type RunningNode, loopbackNodeArgs } from './helpers/herd-proc.ts';
import { HUNG_MS } from './helpers/serve.ts';
import {
  DType,
  KvType,
  type Delivery,
  type ForwardRequest,
  type HerdNodeClient,
  type LoadProgress,
  type SessionOpen,
  type StageTiming,
} from '../src/proto/herd.ts';
import { CoordinatorServer } from '../src/cluster/coordinator/server.ts';
import { stageTimesOf } from '../src/cluster/coordinator/pipeline.ts';
import { ModelSource } from '../src/cluster/shard/source.ts';
import { silentLogger } from '../src/cluster/log.ts';
import { manifestToWire, samplingToWire } from '../src/cluster/wire.ts';
import { defaultSampling } from '../src/engine/sampler.ts';
import { bundledModel } from './helpers/paths.ts';

const KEY = 'correct horse battery staple, herd';
const FORWARD = '/herd.v1.HerdNode/Forward';

let node: RunningNode;
let client: HerdNodeClient;
let cacheDir: string;

test.before(async () => {
  cacheDir = mkdtempSync(join(tmpdir(), 'herd-node-'));
  node = await startNode([...loopbackNodeArgs(cacheDir), '--cluster-key', KEY, '--name', 'loop']);
  client = nodeClient(`127.0.0.1:${node.port}`, Buffer.from(KEY));
});

test.after.always(async () => {
  client?.close();
  if (node) await stopProcess(node.child, 5000);
  rmSync(cacheDir, { recursive: true, force: true });
});

function loadShard(md: Metadata): Promise<LoadProgress[]> {
  return new Promise((resolve, reject) => {
    const got: LoadProgress[] = [];
    const call = client.loadShard(
      {
        modelHash: 'a'.repeat(64),
        modelSize: 1,
        modelName: 'x.gguf',
        start: 0,
        end: 1,
        nLayers: 1,
        ctx: 16,
        kvType: KvType.KV_TYPE_F32,
        coordinator: '127.0.0.1:1',
      },
      md,
    );
    call.on('data', (p: LoadProgress) => got.push(p));
    call.on('error', reject);
    call.on('end', () => resolve(got));
  });
}

/** Sends the messages on one Forward stream and returns the status it ends with. */
function forward(md: Metadata, msgs: (ForwardRequest | Buffer)[]): Promise<ServiceError | 'ok'> {
  return new Promise((resolve) => {
    const raw = msgs.some((m) => Buffer.isBuffer(m));
    // Raw bytes need a stream without the generated serializer.
    const call = raw
      ? client.makeBidiStreamRequest<Buffer, Buffer>(
          FORWARD,
          (b) => b,
          (b) => b,
          md,
        )
      : client.forward(md);
    call.on('data', () => {});
    call.on('error', (e: ServiceError) => resolve(e));
    call.on('end', () => resolve('ok'));
    for (const m of msgs) (call.write as (x: unknown) => void)(m);
    call.end();
  });
}

test.serial('Info answers a holder of the key and reports capabilities', async (t) => {
  const info = await unary(client, client.info, {}, HUNG_MS);
  t.is(info.name, 'loop');
  t.is(info.protocolVersion, PROTOCOL_VERSION);
  t.true(info.authRequired);
  t.true(info.cores >= 1);
  t.true(info.memTotal > 0);
  t.true(info.throughput > 0, 'a measured kernel throughput');
  t.is(info.nodeId, node.ready.id as string);
  const h = await unary(client, client.health, {}, HUNG_MS);
  t.true(h.ok);
});

test.serial('a caller with the key gets past the transport (this request then fails on its own merits)', async (t) => {
  const ok = await loadShard(new Metadata()).catch((e: ServiceError) => e);
  t.is((ok as ServiceError).code, status.INVALID_ARGUMENT);
});

test.serial('malformed forward messages get INVALID_ARGUMENT and the node keeps serving', async (t) => {
  const cases: [string, (ForwardRequest | Buffer)[], RegExp][] = [
    [
      'activation before open',
      [
        {
          activation: {
            sessionId: 'session-1',
            position: 0,
            tokenIds: [1],
            hidden: Buffer.alloc(0),
            dtype: DType.DTYPE_F32,
            dim: 64,
            timings: [],
          },
        },
      ],
      /before the session was opened/,
    ],
    ['empty message', [{}], /neither open nor activation/],
    ['undecodable bytes', [Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f])], /undecodable/],
    [
      'bad session id',
      [
        {
          open: {
            sessionId: 'x',
            modelHash: 'a'.repeat(64),
            route: [],
            hop: 0,
            ctx: 8,
            wire: DType.DTYPE_F32,
            deliverTo: '',
          },
        },
      ],
      /session id/,
    ],
    [
      'shard not loaded',
      [
        {
          open: {
            sessionId: 'session-2',
            modelHash: 'b'.repeat(64),
            route: [{ address: '127.0.0.1:1', start: 0, end: 5 }],
            hop: 0,
            ctx: 8,
            wire: DType.DTYPE_F32,
            deliverTo: '127.0.0.1:2',
          },
        },
      ],
      /not loaded here/,
    ],
    [
      'route with a gap',
      [
        {
          open: {
            sessionId: 'session-3',
            modelHash: 'b'.repeat(64),
            route: [
              { address: '127.0.0.1:1', start: 0, end: 2 },
              { address: '127.0.0.1:1', start: 3, end: 5 },
            ],
            hop: 0,
            ctx: 8,
            wire: DType.DTYPE_F32,
            deliverTo: '',
          },
        },
      ],
      /route hop 1/,
    ],
  ];
  for (const [name, msgs, re] of cases) {
    const r = await forward(new Metadata(), msgs);
    t.not(r, 'ok', name);
    if (r === 'ok') continue;
    t.is(r.code, status.INVALID_ARGUMENT, `${name}: ${r.details}`);
    t.regex(r.details, re, name);
  }
  const h = await unary(client, client.health, {}, HUNG_MS);
  t.true(h.ok);
  const info = await unary(client, client.info, {}, HUNG_MS);
  t.true((info.counters?.invalidRequests ?? 0) >= cases.length);
});

test.serial(
  'activations are checked against the loaded shard: INVALID_ARGUMENT, then a good one is served',
  async (t) => {
    const key = Buffer.from(KEY);
    const source = await ModelSource.open(bundledModel);
    const coord = new CoordinatorServer(source, key, silentLogger);
    const port = await coord.start('127.0.0.1');
    t.teardown(() => coord.stop());
    const coordAddr = `127.0.0.1:${port}`;

    // The node pulls layers [1, 5) (a later stage, with the head) from our coordinator.
    const progress = await new Promise<LoadProgress[]>((resolve, reject) => {
      const got: LoadProgress[] = [];
      const call = client.loadShard({
        modelHash: source.hash,
        modelSize: source.size,
        modelName: source.name,
        start: 1,
        end: 5,
        nLayers: 5,
        ctx: 64,
        kvType: KvType.KV_TYPE_F32,
        coordinator: coordAddr,
        manifest: manifestToWire(source.manifestFor(1, 5)),
      });
      call.on('data', (p: LoadProgress) => got.push(p));
      call.on('error', reject);
      call.on('end', () => resolve(got));
    });
    t.is(progress.at(-1)?.phase, 'done');
    t.is(progress.at(-1)?.source, 'fetched');
    t.true((progress.at(-1)?.bytesTransferred ?? 0) > 0);

    const dim = 64;
    let n = 0;
    const open = (): SessionOpen => ({
      sessionId: `validate-${++n}`,
      modelHash: source.hash,
      hop: 1,
      ctx: 64,
      wire: DType.DTYPE_F32,
      deliverTo: coordAddr,
      route: [
        { address: '127.0.0.1:9', start: 0, end: 1 },
        { address: `127.0.0.1:${node.port}`, start: 1, end: 5 },
      ],
      sampling: samplingToWire({ ...defaultSampling, temperature: 0 }),
    });
    // What stage 1 (layers [0, 1)) would have appended.
    const upstream: StageTiming = { nodeId: 'stage-one', start: 0, end: 1, seconds: 0.002 };
    const act = (o: SessionOpen, over: Partial<NonNullable<ForwardRequest['activation']>>): ForwardRequest => ({
      activation: {
        sessionId: o.sessionId,
        position: 0,
        tokenIds: [1],
        hidden: Buffer.alloc(dim * 4),
        dtype: DType.DTYPE_F32,
        dim,
        timings: [upstream],
        ...over,
      },
    });
    const bad: [string, (o: SessionOpen) => ForwardRequest[], RegExp][] = [
      ['wrong dim', (o) => [act(o, { dim: 32, hidden: Buffer.alloc(32 * 4) })], /hidden dim 32/],
      ['short hidden', (o) => [act(o, { hidden: Buffer.alloc(dim * 4 - 2) })], /hidden state is 254 bytes/],
      ['position past the end', (o) => [act(o, { position: 3 })], /position 3, past the session's end at 0/],
      [
        'position past the end after a step',
        (o) => [act(o, {}), act(o, { position: 2 })],
        /position 2, past the session's end at 1/,
      ],
      [
        'bad sampling for a new generation',
        (o) => [act(o, { sampling: samplingToWire({ ...defaultSampling, topP: 0 }) })],
        /sampling: top-p must be in/,
      ],
      ['other session id', (o) => [act(o, { sessionId: 'someone-else' })], /on the stream of session/],
      ['token outside the vocabulary', (o) => [act(o, { tokenIds: [100000] })], /outside the vocabulary/],
      ['no tokens', (o) => [act(o, { tokenIds: [], hidden: Buffer.alloc(0) })], /no tokens/],
      ['bad dtype', (o) => [act(o, { dtype: 7 as DType })], /dtype/],
      [
        'past the context',
        (o) => [act(o, { position: 0, tokenIds: new Array(65).fill(1), hidden: Buffer.alloc(65 * dim * 4) })],
        /past the session's context/,
      ],
      ['second open', (o) => [{ open: o }], /second open/],
      ['no stage timing', (o) => [act(o, { timings: [] })], /0 stage timings, expected 1/],
      ['a stage timing too many', (o) => [act(o, { timings: [upstream, upstream] })], /2 stage timings, expected 1/],
      [
        'stage timing for other layers',
        (o) => [act(o, { timings: [{ ...upstream, end: 2 }] })],
        /stage timing 0 is for layers \[0, 2\)/,
      ],
      ['stage timing without a node id', (o) => [act(o, { timings: [{ ...upstream, nodeId: '' }] })], /bad node id/],
      [
        'stage timing with a bad node id',
        (o) => [act(o, { timings: [{ ...upstream, nodeId: 'a b' }] })],
        /bad node id/,
      ],
      ['negative stage time', (o) => [act(o, { timings: [{ ...upstream, seconds: -1 }] })], /says -1 s/],
      ['stage time not a number', (o) => [act(o, { timings: [{ ...upstream, seconds: NaN }] })], /says NaN s/],
    ];
    for (const [name, messages, re] of bad) {
      const o = open();
      const r = await forward(new Metadata(), [{ open: o }, ...messages(o)]);
      t.not(r, 'ok', name);
      if (r !== 'ok') {
        t.is(r.code, status.INVALID_ARGUMENT, `${name}: ${r.details}`);
        t.regex(r.details, re, name);
      }
    }

    // A good message on a fresh session: the last stage samples and delivers to the coordinator.
    const o = open();
    const delivered = new Promise<Delivery>((resolve) =>
      coord.sinks.set(o.sessionId, { deliver: resolve, fail: () => {} }),
    );
    const hidden = Buffer.from(new Float32Array(dim).map((_, i) => Math.sin(i)).buffer);
    const r = await forward(new Metadata(), [{ open: o }, act(o, { hidden })]);
    t.is(r, 'ok');
    const d = await delivered;
    t.is(d.position, 1);
    t.true(d.tokenId >= 0 && d.tokenId < 512);
    // Stage 1's timing passed on, then this node's own for its layers.
    t.is(d.timings.length, 2);
    t.deepEqual(d.timings[0], upstream);
    t.like(d.timings[1], { nodeId: node.ready.id as string, start: 1, end: 5 });
    t.true(d.timings[1].seconds > 0 && d.timings[1].seconds < 60);
    t.true((await unary(client, client.health, {}, HUNG_MS)).ok);
  },
);

test.serial(
  'the coordinator refuses a delivery whose stage timings do not match the plan: INVALID_ARGUMENT',
  async (t) => {
    const key = Buffer.from(KEY);
    const source = await ModelSource.open(bundledModel);
    const coord = new CoordinatorServer(source, key, silentLogger);
    const port = await coord.start('127.0.0.1');
    const deliverClient = coordinatorClient(`127.0.0.1:${port}`, key);
    t.teardown(async () => {
      deliverClient.close();
      await coord.stop();
    });
    const planned = (id: string, name: string) => ({
      id,
      name,
      address: '127.0.0.1:9',
      memAvailable: 1,
      throughput: 1,
    });
    const stages = [
      { node: planned('node-one', 'one'), start: 0, end: 2 },
      { node: planned('node-two', 'two'), start: 2, end: 5 },
    ];
    const good: StageTiming[] = [
      { nodeId: 'node-one', start: 0, end: 2, seconds: 0.01 },
      { nodeId: 'node-two', start: 2, end: 5, seconds: 0.02 },
    ];
    t.like(stageTimesOf(good, stages)[1], { node: 'two', nodeId: 'node-two', layers: [2, 5], seconds: 0.02 });

    /** Delivers one token of a session whose sink checks against the plan; the status Deliver ends with. */
    const deliver = async (timings: StageTiming[]): Promise<ServiceError | 'ok'> => {
      coord.sinks.set('timing-check', { deliver: (d) => void stageTimesOf(d.timings, stages), fail: () => {} });
      return new Promise((resolve) => {
        const call = deliverClient.deliver((err: ServiceError | null) => resolve(err ?? 'ok'));
        call.write({ sessionId: 'timing-check', position: 1, tokenId: 7, timings });
        call.end();
      });
    };
    t.is(await deliver(good), 'ok');
    const bad: [string, StageTiming[], RegExp][] = [
      ['a stage missing', good.slice(1), /1 stage timings, expected 2/],
      [
        'another node than planned',
        [good[0], { ...good[1], nodeId: 'node-three' }],
        /stage timing 1 is from node node-three, the plan has two \(node-two\)/,
      ],
      ['stages out of order', [good[1], good[0]], /stage timing 0 is for layers \[2, 5\)/],
      ['infinite seconds', [good[0], { ...good[1], seconds: Infinity }], /says Infinity s/],
    ];
    for (const [name, timings, re] of bad) {
      const r = await deliver(timings);
      t.not(r, 'ok', name);
      if (r === 'ok') continue;
      t.is(r.code, status.INVALID_ARGUMENT, `${name}: ${r.details}`);
      t.regex(r.details, re, name);
    }
  },
);

test.serial('SIGTERM ends the daemon cleanly with exit 0', async (t) => {
  node.child.kill('SIGTERM');
  t.is(await node.exited(), 0);
  t.truthy(node.events.find((e) => e.event === 'node.exit' && e.code === 0));
});
