import test from 'ava';
import { plan, PlanError, type ModelShape, type PlanNode } from '../src/cluster/planner.ts';
import { modelShape } from '../src/cluster/shape.ts';
import { GgufFile } from '../src/gguf/reader.ts';
import { bundledModel } from './helpers/paths.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** 22 equal layers of 40 MiB, a 60 MiB embedding and head: TinyLlama-like proportions and heads. */
const shape: ModelShape = {
  nLayers: 22,
  layerBytes: new Array(22).fill(40 * MiB),
  embedBytes: 60 * MiB,
  headBytes: 60 * MiB,
  tiedHead: false,
  sharedBytes: 0,
  kvBytesPerLayer: 4 * MiB,
  bufferBytes: 1 * MiB,
  dim: 2048,
  kvHeads: 4,
  vocabSize: 32000,
};

const node = (name: string, gbps: number, memGiB: number): PlanNode => ({
  id: name,
  name,
  address: `${name}:7077`,
  throughput: gbps * 1e9,
  memAvailable: memGiB * GiB,
});

const ranges = (p: ReturnType<typeof plan>) => p.stages.map((s) => [s.node.name, s.start, s.end]);

test('equal nodes split the layers evenly, contiguous and covering the model', (t) => {
  const p = plan([node('a', 1, 8), node('b', 1, 8), node('c', 1, 8)], shape);
  t.is(p.stages.length, 3);
  t.is(p.stages[0].start, 0);
  t.is(p.stages[2].end, 22);
  for (let i = 1; i < 3; i++) t.is(p.stages[i].start, p.stages[i - 1].end);
  // Balanced in time, not in layer count: the last stage also streams the head.
  const secs = p.stages.map((s) => s.seconds);
  t.true(Math.max(...secs) - Math.min(...secs) <= (40 * MiB) / 1e9 + 1e-9, JSON.stringify(ranges(p)));
  t.deepEqual(
    p.stages.map((s) => s.end - s.start),
    [8, 8, 6],
  );
});

test('a twice-as-fast node gets about twice the layers', (t) => {
  const p = plan([node('fast', 2, 8), node('slow', 1, 8)], shape);
  t.is(p.stages.length, 2);
  const fast = p.stages.find((s) => s.node.name === 'fast')!;
  const slow = p.stages.find((s) => s.node.name === 'slow')!;
  // 2:1 by speed, less the head that the last stage also streams.
  t.true(fast.end - fast.start >= 14 && fast.end - fast.start <= 16, JSON.stringify(ranges(p)));
  t.true(slow.end - slow.start >= 6);
  t.true(p.bottleneckSeconds <= Math.max(fast.seconds, slow.seconds) + 1e-12);
});

test('a node that would slow the pipeline is left out, unless --stages asks for it', (t) => {
  const nodes = [node('a', 1, 8), node('b', 1, 8), node('snail', 0.005, 8)];
  const auto = plan(nodes, shape);
  t.deepEqual(auto.stages.map((s) => s.node.name).sort(), ['a', 'b']);
  const forced = plan(nodes, shape, { stages: 3 });
  t.is(forced.stages.length, 3);
  t.true(forced.stages.some((s) => s.node.name === 'snail'));
  t.is(
    forced.stages.find((s) => s.node.name === 'snail')!.end - forced.stages.find((s) => s.node.name === 'snail')!.start,
    1,
  );
  t.true(forced.bottleneckSeconds > auto.bottleneckSeconds);
});

test('memory decides the split when a node is small', (t) => {
  // 'small' can hold at most 3 layers with its KV cache and overhead.
  const p = plan([node('big', 1, 8), node('small', 1, (64 + 3 * 44 + 10) / 1024)], shape, { stages: 2 });
  const small = p.stages.find((s) => s.node.name === 'small')!;
  t.true(small.memBytes <= small.node.memAvailable);
  t.true(small.end - small.start <= 3);
});

test('a model that does not fit names the short node and by how much', (t) => {
  const e = t.throws(() => plan([node('pi-a', 1, 0.4), node('pi-b', 1, 0.3)], shape), { instanceOf: PlanError });
  t.regex(
    e!.message,
    /does not fit: node pi-\w \(pi-\w:7077\) would need [\d.]+ MiB for layers \[\d+, \d+\) .* short by [\d.]+ MiB/,
  );
});

test('--stages beyond the nodes or the layers is refused clearly', (t) => {
  t.throws(() => plan([node('a', 1, 8)], shape, { stages: 2 }), { message: /more stages than the 1 node/ });
  t.throws(() => plan([node('a', 1, 8)], { ...shape, nLayers: 1, layerBytes: [1] }, { stages: 2 }), {
    message: /more stages than the model's 1 layers/,
  });
});

test('stories260K over three equal nodes uses all three with --stages 3', (t) => {
  const file = GgufFile.open(bundledModel);
  const s = modelShape(file, 512, 'f16');
  t.is(s.nLayers, 5);
  t.true(s.tiedHead || s.headBytes > 0);
  const p = plan([node('n1', 0.2, 4), node('n2', 0.2, 4), node('n3', 0.2, 4)], s, { stages: 3 });
  t.deepEqual(
    p.stages.map((x) => x.end - x.start).reduce((a, b) => a + b, 0),
    5,
  );
  t.is(p.stages.length, 3);
});

test('ranges the nodes already hold win among equally fast plans (noise does not move a standing herd)', (t) => {
  const first = plan([node('a', 1.0, 8), node('b', 1.0, 8), node('c', 1.0, 8)], shape);
  const held = new Map(first.stages.map((s) => [s.node.name, [[s.start, s.end] as const]]));
  // Re-measured throughputs differ by ±10%; the nodes hold their old ranges.
  const again = plan(
    [node('a', 1.1, 8), node('b', 0.92, 8), node('c', 1.05, 8)].map((n) => ({ ...n, holds: held.get(n.name) })),
    shape,
  );
  t.deepEqual(ranges(again), ranges(first));
});

test('a held range that is much slower than the best plan is not kept', (t) => {
  const nodes = [node('a', 1, 8), { ...node('b', 1, 8), holds: [[0, 21] as const] }];
  const p = plan(nodes, shape);
  t.true(
    p.stages.every((s) => s.end - s.start < 21),
    JSON.stringify(ranges(p)),
  );
});

test('--parallel 8 counts eight sessions of KV cache and buffers: a small node gets fewer layers', (t) => {
  // Two equally fast nodes, one with room for everything, one small (0.6 GiB): with one session
  // the small one takes half the layers; with eight, what fits next to their KV caches.
  const nodes = [node('big', 1, 8), node('small', 1, 0.6)];
  const one = plan(nodes, shape, { stages: 2 });
  const eight = plan(nodes, shape, { stages: 2, sessions: 8 });
  const layersOf = (p: ReturnType<typeof plan>) => {
    const s = p.stages.find((x) => x.node.name === 'small')!;
    return s.end - s.start;
  };
  t.true(layersOf(eight) < layersOf(one), `${layersOf(eight)} layers with 8 sessions, ${layersOf(one)} with one`);
  for (const s of eight.stages) {
    t.is(s.kvBytes, (s.end - s.start) * shape.kvBytesPerLayer * 8);
    t.is(s.bufferBytes, shape.bufferBytes * 8);
    t.true(s.memBytes <= s.node.memAvailable);
  }
  const e = t.throws(() => plan([node('tiny', 1, 1)], shape, { sessions: 8 }), { instanceOf: PlanError });
  t.regex(e.message, /the KV caches and buffers of 8 sessions/);
  t.throws(() => plan(nodes, shape, { sessions: 0 }), { instanceOf: PlanError, message: /sessions must be/ });
});

// Without --tensor the planner weighs groups against one node per stage. A share function that
// splits nothing real: the choice depends on the shape's sizes and the nodes, not on the shares.
const evenShares = (_start: number, _end: number, weights: readonly number[]) =>
  weights.map((_, i) => ({ member: i, kvHeads: [i, i + 1] as const, ffnRows: [10 * i, 10 * i + 10] as const }));
const linked = (n: PlanNode, rttMs: number): PlanNode => ({ ...n, rttSeconds: rttMs / 1000 });

test("members' shares follow their speeds in quarters of the fastest's: some percent of noise cuts the same shares", (t) => {
  const asked: number[][] = [];
  const record = (start: number, end: number, weights: readonly number[]) => {
    asked.push([...weights]);
    return evenShares(start, end, weights);
  };
  const pair = (a: number, b: number) => [linked(node('a', a, 8), 0.2), linked(node('b', b, 8), 0.2)];
  for (const [a, b] of [
    [1, 1],
    [1.06, 0.95],
    [0.94, 1.07],
    [2, 1],
    [2.2, 0.96],
    [4, 1],
  ])
    plan(pair(a, b), shape, { shares: record, tensor: 2 });
  t.deepEqual(asked, [
    [4, 4],
    [4, 4],
    [4, 4],
    [4, 2],
    [4, 2],
    [4, 1],
  ]);
});

test('fast equal nodes on a fast link become a group, and the plan says why', (t) => {
  const nodes = [linked(node('a', 1, 8), 0.2), linked(node('b', 1, 8), 0.2)];
  const p = plan(nodes, shape, { shares: evenShares });
  t.is(p.stages.length, 1);
  t.deepEqual(
    p.stages[0].members?.map((m) => m.node.name),
    ['a', 'b'],
  );
  t.regex(
    p.reason,
    /^a 2-node group: predicted [\d.]+ ms\/token vs [\d.]+ ms as 2 stages \(sync 0\.2\d ms, measured latency\)$/,
  );
  t.is(p.rejected?.kind, '2 stages');
  t.true(p.tokenSeconds <= 0.85 * p.rejected!.tokenSeconds);
  // One sync: the round trip, plus the f32 hidden state (2048 values) sent to the other member at 1 Gbit/s.
  t.is(p.stages[0].syncSeconds, 0.0002 + (4 * 2048) / 125e6);
});

test('a slow link keeps one node per stage: 44 syncs a token would cost more than the group saves', (t) => {
  const nodes = [linked(node('a', 1, 8), 20), linked(node('b', 1, 8), 20)];
  const p = plan(nodes, shape, { shares: evenShares });
  t.is(p.stages.length, 2);
  t.true(p.stages.every((s) => s.members === undefined));
  t.regex(
    p.reason,
    /^2 stages: predicted [\d.]+ ms\/token vs [\d.]+ ms as a 2-node group \(sync 20\.\d ms, measured latency\)$/,
  );
  t.is(p.rejected?.kind, 'a 2-node group');
});

test('groups a little faster than the pipeline are not worth it: the margin is 15%', (t) => {
  // Sharing the layers saves ~0.46 s a token; 44 syncs of 8.5 ms take most of it back (~9% left).
  const nodes = [linked(node('a', 1, 8), 8.5), linked(node('b', 1, 8), 8.5)];
  const p = plan(nodes, shape, { shares: evenShares });
  t.true(p.rejected !== undefined && p.rejected.tokenSeconds < p.tokenSeconds, p.reason);
  t.is(p.stages.length, 2, p.reason);
  t.regex(p.reason, /not the 15% faster groups must be/);
});

test('with several sessions at once the pipeline keeps every node busy: groups must win on throughput', (t) => {
  const nodes = [linked(node('a', 1, 8), 0.2), linked(node('b', 1, 8), 0.2)];
  const p = plan(nodes, shape, { shares: evenShares, sessions: 4 });
  t.is(p.stages.length, 2);
  t.true(p.stages.every((s) => s.members === undefined));
  t.regex(p.reason, /^2 stages: predicted [\d.]+ ms\/token at 4 sessions vs [\d.]+ ms as a 2-node group/);
});

test('a KV-head count no group size divides keeps one node per stage', (t) => {
  const nodes = ['a', 'b', 'c', 'd'].map((n) => linked(node(n, 1, 8), 0.2));
  const p = plan(nodes, { ...shape, kvHeads: 5 }, { shares: evenShares });
  t.true(p.stages.every((s) => s.members === undefined));
  t.regex(p.reason, /: no group size from 2 to 4 divides the model's 5 KV heads$/);
  t.is(p.rejected, undefined);
});

test('links never measured rule groups out', (t) => {
  const p = plan([node('a', 1, 8), linked(node('b', 1, 8), 0.2)], shape, { shares: evenShares });
  t.true(p.stages.every((s) => s.members === undefined));
  t.regex(p.reason, /not every link to the nodes was measured/);
});

test('--tensor N forces groups of N and --tensor 1 one node per stage, whatever the prediction', (t) => {
  const slow = [linked(node('a', 1, 8), 20), linked(node('b', 1, 8), 20)];
  const groups = plan(slow, shape, { shares: evenShares, tensor: 2 });
  t.is(groups.stages[0].members?.length, 2);
  t.regex(
    groups.reason,
    /^--tensor 2: a 2-node group, predicted [\d.]+ ms\/token \(sync 20\.\d ms, measured latency\)$/,
  );
  const fast = [linked(node('a', 1, 8), 0.2), linked(node('b', 1, 8), 0.2)];
  const pipeline = plan(fast, shape, { shares: evenShares, tensor: 1 });
  t.true(pipeline.stages.every((s) => s.members === undefined));
  t.regex(pipeline.reason, /^--tensor 1: 2 stages, predicted [\d.]+ ms\/token$/);
});

test('--stages counts groups as stages: two stages of 2-node groups need four nodes', (t) => {
  const four = ['a', 'b', 'c', 'd'].map((n) => linked(node(n, 1, 8), 0.2));
  const p = plan(four, shape, { shares: evenShares, stages: 2 });
  t.deepEqual(
    p.stages.map((s) => s.members?.length),
    [2, 2],
  );
  const two = plan(four.slice(0, 2), shape, { shares: evenShares, stages: 2 });
  t.true(two.stages.every((s) => s.members === undefined));
  t.regex(two.reason, /2 nodes make no groups for 2 stages/);
});

test('nodes left over after forming groups become stages of their own when that is faster', (t) => {
  // Three equal nodes of 600 MiB: a 2-node group alone does not fit (its leader needs 639 MiB),
  // three single stages do; a group beside one single stage shares most layers two ways.
  const mib = (name: string): PlanNode => linked({ ...node(name, 1, 0), memAvailable: 600 * MiB }, 0.2);
  const p = plan([mib('a'), mib('b'), mib('c')], shape, { shares: evenShares });
  t.is(p.kind, '2 stages, 1 of them 2-node groups', p.reason);
  const stages = p.stages.map((s) => (s.members?.map((m) => m.node.name) ?? [s.node.name]).join('+')).sort();
  t.true(['a+b,c', 'a+c,b', 'b+c,a'].includes(stages.join(',')), stages.join(','));
  t.deepEqual(p.stages.map((s) => s.members?.length ?? 1).sort(), [1, 2]);
  t.is(p.rejected?.kind, '3 stages');
  t.true(p.tokenSeconds <= 0.85 * p.rejected!.tokenSeconds, p.reason);
  // --tensor 2 still makes every stage a group: the third node stays out, and the group alone does not fit.
  t.throws(() => plan([mib('a'), mib('b'), mib('c')], shape, { shares: evenShares, tensor: 2 }), {
    message: /the model does not fit/,
  });
});

test('each group member must hold its own share: the leader also the embedding', (t) => {
  // One stage of two equal members: each holds half of the layers and KV cache (484 MiB), half
  // of the head (30 MiB: its rows are shared) and its buffers and overhead (65 MiB); the leader
  // also the embedding (60 MiB).
  const mib = (name: string, m: number): PlanNode => linked({ ...node(name, 1, 0), memAvailable: m * MiB }, 0.2);
  const err = t.throws(() => plan([mib('a', 600), mib('b', 600)], shape, { shares: evenShares, tensor: 2 }), {
    instanceOf: PlanError,
  });
  // Together they have 1200 MiB for the stage's 1153: the leader alone is short.
  t.regex(err!.message, /node a \(a:7077\) would need 639\.\d MiB for layers \[0, 22\).*short by 39\.\d MiB/);
  const p = plan([mib('a', 700), mib('b', 580)], shape, { shares: evenShares, tensor: 2 });
  t.deepEqual(
    p.stages[0].members?.map((m) => m.node.name),
    ['a', 'b'],
  );
  // A head tied to the embedding is the embedding: the leader holds it whole, the follower none of it.
  t.throws(() => plan([mib('a', 640), mib('b', 560)], shape, { shares: evenShares, tensor: 2 }), {
    message: /node b \(b:7077\) would need 579\.\d MiB/,
  });
  const tied = plan([mib('a', 640), mib('b', 560)], { ...shape, tiedHead: true }, { shares: evenShares, tensor: 2 });
  t.is(tied.stages[0].members?.length, 2);
});
