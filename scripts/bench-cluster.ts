// `npm run bench:cluster`: the herd on loopback, not a test. Three `herd node` daemons on
// 127.0.0.1; for the synthetic TinyLlama-1.1B Q4_0 (written once into .cache/bench) it runs
// one process, then 1, 2 and 3 stages, and reports decode tok/s, the ratio to one process and
// the shard transfer rate; on stories260K (where compute is tiny) it reports the per-hop cost.
// Tensor-parallel groups (issue 13): two more nodes pinned to one core each (`taskset -c 0`,
// `-c 1`, one kernel thread) run single-stream decode as one node, as a 2-node group (q8_0 and
// f32 sync), and as 2 pipeline stages, on TinyLlama and on the Llama-2-7B shape (Q4_0, -c 1024,
// 8 tokens; written once into .cache/bench, 3.8 GB), with the data plane's bytes per token and
// time per sync round from its counters (the members' dataplane.stats log lines). From those it
// models Raspberry Pi 4B ×1/2/4 over gigabit for Llama 2 7B beside distributed-llama's figures.
//
// With --reps R the pinned runs go round R times (one node, the groups, the stages in turn, so
// a slow phase of the machine hits each alike) and each figure is the best of its R; the sync
// counters, and the split of a group's token by them, are the last round's.
//
//   npm run bench:cluster [-- --tokens N] [--skip-tinyllama] [--skip-tensor | --tensor-only] [--skip-7b] [--reps R]

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { synthShape } from '../src/model/synth.ts';
import { GgufFile } from '../src/gguf/reader.ts';
import { readConfig } from '../src/model/config.ts';
import { gatherFormat, payloadBytes, type SyncFormat } from '../src/cluster/sync/format.ts';
import { HEADER_BYTES } from '../src/cluster/dataplane/frame.ts';

const root = fileURLToPath(new URL('../', import.meta.url));
const herdBin = join(root, 'bin/herd.js');
const argv = process.argv.slice(2);
const tokens = Number(argv[argv.indexOf('--tokens') + 1] ?? NaN) || 16;
const skipTiny = argv.includes('--skip-tinyllama');
const skipTensor = argv.includes('--skip-tensor') || skipTiny;
const tensorOnly = argv.includes('--tensor-only') && !skipTensor;
const skip7b = argv.includes('--skip-7b');
const reps = argv.includes('--reps') ? Number(argv[argv.indexOf('--reps') + 1]) : 1;
if (!(Number.isInteger(reps) && reps >= 1)) throw new Error(`--reps must be an integer >= 1`);
/** Decoded tokens of the 7B runs: a few suffice at ~1 s each on one core. */
const TOKENS_7B = 8;
const log = (s: string) => process.stderr.write(`bench-cluster: ${s}\n`);

interface RunOut {
  tokens: number[];
  timings: { prompt_ms: number; decode_tokens: number; decode_ms: number; decode_tps: number };
  plan: { node: string; layers: [number, number] }[];
  shards?: { source: string; bytes_transferred: number; ms: number }[];
}

function run(
  model: string,
  nodes: string,
  stages: number | undefined,
  env: NodeJS.ProcessEnv,
  extra: readonly string[] = [],
  shape: { ctx: number; tokens: number } = { ctx: 256, tokens },
): RunOut {
  const args = [
    herdBin,
    'run',
    '--model',
    model,
    '--nodes',
    nodes,
    '--ctx',
    String(shape.ctx),
    '--temp',
    '0',
    '-n',
    String(shape.tokens),
    '--json',
    'Once upon a time',
  ];
  if (stages !== undefined) args.push('--stages', String(stages));
  args.push(...extra);
  const r = spawnSync(process.execPath, args, {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    cwd: root,
    timeout: 30 * 60_000,
  });
  if (r.status !== 0) throw new Error(`herd run ${nodes} --stages ${stages}: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as RunOut;
}

/** A member's counters over one burst of syncs (one `herd run`), as its dataplane.stats line says. */
interface SyncBurst {
  member: number;
  format: string;
  rounds: number;
  values: number;
  bytesSent: number;
  sendMs: number;
  waitMs: number;
  sumMs: number;
  /** The leader's gathers of a shared head's logits (its parts taken, their frame bytes, its wait). */
  gathers?: number;
  gatherBytes?: number;
  gatherMs?: number;
}

interface BenchNode {
  port: number;
  /** The data plane's bursts this node logged, in order. */
  bursts: SyncBurst[];
  stop: () => void;
}

/** A node daemon; `core`: pinned to that core with one kernel thread. */
async function startNode(i: number, dir: string, core?: number): Promise<BenchNode> {
  const pin = core === undefined ? [] : ['taskset', '-c', String(core)];
  const threads = core === undefined ? [] : ['--threads', '1'];
  const [cmd, ...pre] = [...pin, process.execPath];
  const child = spawn(
    cmd,
    [
      ...pre,
      herdBin,
      'node',
      '--no-mdns',
      '--host',
      '127.0.0.1',
      '--port',
      '0',
      '--cache-dir',
      join(dir, `node${i}`),
      '--name',
      `bench-${i}`,
      ...threads,
    ],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
      cwd: root,
    },
  );
  const bursts: SyncBurst[] = [];
  const port = await new Promise<number>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error('node did not start in 60 s')), 60_000);
    child.stderr.on('data', (b: Buffer) => {
      buf += b.toString();
      const m = /"event":"node\.ready".*?"port":(\d+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.once('exit', (code) => reject(new Error(`node exited (${code}): ${buf.slice(-500)}`)));
  });
  child.stderr.removeAllListeners('data');
  createInterface({ input: child.stderr }).on('line', (l) => {
    if (l.includes('"dataplane.stats"')) bursts.push(JSON.parse(l) as SyncBurst);
  });
  return { port, bursts, stop: () => child.kill('SIGTERM') };
}

interface TensorModel {
  readonly label: string;
  readonly path: string;
  readonly ctx: number;
  readonly tokens: number;
}

/** What the group's counters say for one sync format: ms per round, and bytes per decode sync. */
interface SyncCost {
  format: SyncFormat;
  /** Each member's ms per round in allReduce: encoding and writing, waiting for the peer, decoding and summing. */
  members: { send: number; wait: number; sum: number }[];
  /** Bytes of one single-row sync frame (a decode step's, dim values), from the counted bytes per value. */
  bytesPerSync: number;
  dim: number;
  /** The leader's gathers of the head's logits: frame bytes and ms waiting, per gather (0: the head is not shared). */
  gatherBytes: number;
  gatherMs: number;
}

/**
 * Single-stream decode on cores pinned one per node: one node, a 2-node group (q8_0 and f32
 * sync), 2 stages. Bytes per token are the data plane's frames of one decode step, both
 * directions (a 16-byte header each): the leader's step frame (an entry and the hidden row),
 * every member's partial of 2 syncs per layer, the leader's head frame (the index of the row to sample from) and the
 * follower's logits of its head rows (counted). Time per sync is the members' counters over the
 * measured run (its prompt step's rounds included).
 */
async function tensorRows(
  models: readonly TensorModel[],
  dir: string,
  env: NodeJS.ProcessEnv,
): Promise<{ rows: string[][]; costs: Map<string, SyncCost[]>; splits: string[]; backends: string[] }> {
  const pinned = [await startNode(10, dir, 0), await startNode(11, dir, 1)];
  const rows: string[][] = [];
  const splits: string[] = [];
  const costs = new Map<string, SyncCost[]>();
  try {
    const [a, b] = pinned.map((n) => `127.0.0.1:${n.port}`);
    for (const model of models) {
      const c = readConfig(GgufFile.open(model.path));
      const stepFrame = HEADER_BYTES + 4 + 12 + 4 * c.dim;
      const headFrame = HEADER_BYTES + 4 + 4; // one row index
      const wire = (sync: SyncFormat, cost: SyncCost | undefined) =>
        stepFrame +
        2 * 2 * c.nLayers * (HEADER_BYTES + payloadBytes(sync, c.dim)) +
        (cost && cost.gatherBytes > 0 ? headFrame + cost.gatherBytes : 0);
      // a run that fails (say a node on a busy core misses its keepalive in a long 7B step) is
      // reported as such and the others still run
      const measure = (what: string, nodes: string, extra: string[]): RunOut | string => {
        log(`${model.label} pinned: ${what} (load ${loadAvg()})`);
        try {
          run(model.path, nodes, undefined, env, extra, model); // loads the shards
          return run(model.path, nodes, undefined, env, extra, model);
        } catch (e) {
          const why = (e as Error).message.trim().split('\n').at(-1) ?? '';
          log(`${model.label} ${what} failed: ${why}`);
          return `failed: ${why.slice(0, 120)}`;
        }
      };
      // each configuration R times in turn, the best kept (a run that failed counts least)
      const configs = [
        { key: 'one', what: 'one node', nodes: a, extra: [] as string[] },
        ...(['q8_0', 'f32'] as const).map((sync) => ({
          key: sync,
          what: `2-node group, --sync ${sync}`,
          nodes: `${a},${b}`,
          extra: ['--tensor', '2', '--sync', sync],
        })),
        { key: 'stages', what: '2 stages', nodes: `${a},${b}`, extra: ['--stages', '2'] },
      ];
      const best = new Map<string, RunOut | string>();
      const last = new Map<string, RunOut | string>();
      const faster = (x: RunOut | string, y: RunOut | string | undefined) =>
        y === undefined ||
        (typeof x !== 'string' && (typeof y === 'string' || x.timings.decode_tps > y.timings.decode_tps));
      for (let r = 0; r < reps; r++)
        for (const cfg of configs) {
          const got = measure(reps > 1 ? `${cfg.what}, round ${r + 1} of ${reps}` : cfg.what, cfg.nodes, cfg.extra);
          if (faster(got, best.get(cfg.key))) best.set(cfg.key, got);
          last.set(cfg.key, got);
        }
      const one = best.get('one')!;
      const tps = (r: RunOut | string) => (typeof r === 'string' ? '-' : fmt(r.timings.decode_tps));
      const ratio = (r: RunOut | string) =>
        typeof r === 'string' || typeof one === 'string' ? '-' : fmt(r.timings.decode_tps / one.timings.decode_tps);
      const check = (r: RunOut | string) =>
        typeof r === 'string'
          ? r
          : typeof one === 'string'
            ? ''
            : JSON.stringify(r.tokens) === JSON.stringify(one.tokens)
              ? 'same tokens'
              : 'tokens differ';
      rows.push([model.label, 'one node, 1 core', tps(one), '1.00 (pinned)', '', typeof one === 'string' ? one : '']);
      const groupRuns: { sync: SyncFormat; r: RunOut | string }[] = [];
      for (const sync of ['q8_0', 'f32'] as const) groupRuns.push({ sync, r: best.get(sync)! });
      const staged = best.get('stages')!;
      // loading the stages closed the groups, which logged their last bursts: the measured runs'
      await new Promise((r) => setTimeout(r, 500));
      const modelCosts: SyncCost[] = [];
      for (const { sync, r } of groupRuns) {
        const cost =
          typeof r === 'string'
            ? undefined
            : syncCost(
                sync,
                pinned.map((n) => n.bursts.filter((x) => x.format === sync).at(-1)),
                c.dim,
              );
        if (cost && typeof r !== 'string') {
          modelCosts.push(cost);
          // the counters are the last round's: split that round's token
          const lastRun = last.get(sync)!;
          if (typeof lastRun !== 'string') splits.push(tokenSplit(model.label, lastRun, cost, 2 * c.nLayers));
        }
        rows.push([
          model.label,
          `2-node group, 1 core each, --sync ${sync}`,
          tps(r),
          ratio(r),
          `${fmt(wire(sync, cost) / 1024, 1)} KiB/token; ` +
            (cost
              ? `${cost.members.map((m) => fmt(m.send + m.wait + m.sum, 3)).join(' / ')} ms per sync (leader / follower), ${fmt(cost.bytesPerSync, 0)} B per sync`
              : 'no sync counters'),
          check(r),
        ]);
      }
      costs.set(model.label, modelCosts);
      rows.push([model.label, '2 stages, 1 core each', tps(staged), ratio(staged), '', check(staged)]);
      // a later model's groups start afresh
      for (const n of pinned) n.bursts.length = 0;
    }
    return { rows, costs, splits, backends: backendsOf(pinned.map((n) => `127.0.0.1:${n.port}`).join(',')) };
  } finally {
    for (const n of pinned) n.stop();
  }
}

/** The kernel backends the nodes at these addresses run (herd nodes --json). */
function backendsOf(peers: string): string[] {
  const listed = spawnSync(process.execPath, [herdBin, 'nodes', '--peers', peers, '--json'], {
    encoding: 'utf8',
    cwd: root,
  });
  return (JSON.parse(listed.stdout || '{"nodes":[]}') as { nodes: { backend: string }[] }).nodes.map((n) => n.backend);
}

/** The measured run's counters of both members, per round; undefined if a member logged none. */
function syncCost(format: SyncFormat, bursts: (SyncBurst | undefined)[], dim: number): SyncCost | undefined {
  if (bursts.some((x) => x === undefined || x.rounds === 0)) return undefined;
  // in member order (the plan picks which node leads)
  const bs = [...(bursts as SyncBurst[])].sort((x, y) => x.member - y.member);
  const follower = bs[1];
  // the follower sends only sync frames: a 16-byte header each and a payload linear in its values
  const perValue = (follower.bytesSent - HEADER_BYTES * follower.rounds) / follower.values;
  const leader = bs[0];
  const gathers = leader.gathers ?? 0;
  return {
    format,
    members: bs.map((x) => ({ send: x.sendMs / x.rounds, wait: x.waitMs / x.rounds, sum: x.sumMs / x.rounds })),
    bytesPerSync: HEADER_BYTES + perValue * dim,
    dim,
    gatherBytes: gathers > 0 ? (leader.gatherBytes ?? 0) / gathers : 0,
    gatherMs: gathers > 0 ? (leader.gatherMs ?? 0) / gathers : 0,
  };
}

/** Where a group's decode token goes, by its counters: the syncs' share of ms per token, each member (and the leader's wait for the head's logits). */
function tokenSplit(label: string, r: RunOut, cost: SyncCost, syncsPerToken: number): string {
  const perToken = msPerToken(r);
  const who = ['leader', 'follower'];
  const parts = cost.members.map((m, i) => {
    const round = m.send + m.wait + m.sum;
    const gather = i === 0 ? cost.gatherMs : 0;
    return (
      `${who[i] ?? `member ${i}`} ${fmt(perToken - syncsPerToken * round - gather, 1)} ms outside the syncs + ${syncsPerToken} × ${fmt(round, 3)} ms ` +
      `(encode and write ${fmt(m.send, 3)}, wait ${fmt(m.wait, 3)}, sum ${fmt(m.sum, 3)})` +
      (gather > 0 ? ` + ${fmt(gather, 3)} ms waiting for the follower's logits` : '')
    );
  });
  return `${label} --sync ${cost.format}, ${fmt(perToken, 1)} ms/token: ${parts.join('; ')}`;
}

const msPerToken = (r: RunOut) => r.timings.decode_ms / Math.max(1, r.timings.decode_tokens);
const fmt = (x: number, d = 2) => x.toFixed(d);
const loadAvg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
/** MemAvailable, bytes. */
const memAvailable = () => Number(/MemAvailable:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0) * 1024;

/**
 * distributed-llama's Llama 2 7B Q40 on Raspberry Pi 4B 8 GB over gigabit Ethernet (Q80 sync;
 * its README's "Average Single Token Generation Time", 16 samples): ms per token by Pis.
 */
const DLLAMA_MS: Record<number, number> = { 1: 1312.5, 2: 793.69, 4: 494.0 };

interface PiInputs {
  /** Bytes of the layers' weights and of the head (output norm and classifier). */
  readonly layerBytes: number;
  readonly headBytes: number;
  readonly nLayers: number;
  readonly dim: number;
  readonly vocabSize: number;
  /** A Pi 4B's weight bytes read per second: distributed-llama's one-Pi ms per token over the model's bytes. */
  readonly piBytesPerSec: number;
  /** Frame bytes of one single-row Q8_0 sync (measured: the counters' bytes per value × dim + header). */
  readonly syncBytes: number;
  /** One-way latency of a sync on gigabit, ms (stated). */
  readonly latencyMs: number;
  readonly linkBytesPerSec: number;
}

/**
 * herd's predicted ms per token on n Pis as one group: a member's share of the layers and of the
 * head's rows at the Pi's read rate, plus per token one step frame (the f32 hidden row) to each
 * other member, 2 syncs per layer, each latency + the bytes every member sends its n - 1 peers
 * over its one link, and the head: its frame (a row index) out, then the others' logits (f16 in a q8_0 group) of
 * their (n - 1)/n of the vocabulary into the leader's one link.
 */
function piModel(p: PiInputs, n: number): { computeMs: number; syncMs: number } {
  const computeMs = ((p.layerBytes + p.headBytes) / n / p.piBytesPerSec) * 1000;
  if (n === 1) return { computeMs, syncMs: 0 };
  const wire = (bytes: number) => p.latencyMs + (((n - 1) * bytes) / p.linkBytesPerSec) * 1000;
  const stepFrame = HEADER_BYTES + 4 + 12 + 4 * p.dim;
  const headFrame = HEADER_BYTES + 4 + 4; // one row index
  const logits = payloadBytes(gatherFormat('q8_0'), p.vocabSize);
  const gather = p.latencyMs + ((((n - 1) / n) * logits + (n - 1) * HEADER_BYTES) / p.linkBytesPerSec) * 1000;
  return { computeMs, syncMs: wire(stepFrame) + 2 * p.nLayers * wire(p.syncBytes) + wire(headFrame) + gather };
}

/** The Pi model's inputs and predictions, as printed lines. */
function piReport(model7b: string, q8: SyncCost | undefined): string {
  if (!existsSync(model7b)) return '(Pi 4B model skipped: no Llama-2-7B-shape file in .cache/bench)\n';
  if (!q8) return '(Pi 4B model skipped: no q8_0 sync counters)\n';
  const file = GgufFile.open(model7b);
  const c = readConfig(file);
  let layerBytes = 0;
  let headBytes = 0;
  for (const t of file.tensors) {
    if (t.name.startsWith('blk.')) layerBytes += t.nBytes;
    else if (t.name.startsWith('output')) headBytes += t.nBytes;
  }
  const p: PiInputs = {
    layerBytes,
    headBytes,
    nLayers: c.nLayers,
    dim: c.dim,
    vocabSize: c.vocabSize,
    piBytesPerSec: (layerBytes + headBytes) / (DLLAMA_MS[1] / 1000),
    // bytes per value of the measured group (either model), at 7B's width
    syncBytes: HEADER_BYTES + ((q8.bytesPerSync - HEADER_BYTES) / q8.dim) * c.dim,
    // a Pi 4B's ping over a gigabit switch is ~0.2-0.3 ms round trip; a sync waits one way plus
    // the Pi's wake-up and framing (the loopback counters above measure the latter on x86)
    latencyMs: 0.2,
    linkBytesPerSec: 125e6,
  };
  const lines = [
    `Raspberry Pi 4B x N over gigabit, Llama 2 7B Q4_0 (herd, modelled): layers ${fmt(p.layerBytes / 1e9, 3)} GB + head ${fmt(p.headBytes / 1e9, 3)} GB ` +
      `(of the synthetic 7B file); Pi read rate ${fmt(p.piBytesPerSec / 1e9, 2)} GB/s = those bytes / distributed-llama's one-Pi ${DLLAMA_MS[1]} ms; ` +
      `${fmt(p.syncBytes, 0)} B per q8_0 sync (measured bytes per value x ${p.dim}), ${p.latencyMs} ms latency per sync (stated), ` +
      `${fmt(p.linkBytesPerSec / 1e6, 0)} MB/s link, ${2 * p.nLayers} syncs and a gather of the head's f16 logits per token`,
  ];
  for (const n of [1, 2, 4]) {
    const m = piModel(p, n);
    lines.push(
      `  ${n} Pi${n > 1 ? 's' : ' '}: compute ${fmt(m.computeMs, 0)} ms + sync ${fmt(m.syncMs, 1)} ms = ${fmt(m.computeMs + m.syncMs, 0)} ms/token` +
        ` (distributed-llama measured ${DLLAMA_MS[n]} ms)`,
    );
  }
  return `${lines.join('\n')}\n`;
}

const dir = mkdtempSync(join(tmpdir(), 'herd-bench-cluster-'));
const env = { HERD_CACHE_DIR: join(dir, 'coordinator') };
const nodes: BenchNode[] = [];
try {
  // one at a time: each measures its kernel
  if (!tensorOnly) for (let i = 0; i < 3; i++) nodes.push(await startNode(i, dir));
  const peers = nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
  const rows: string[][] = [];
  const cache = join(root, '.cache/bench');
  const tiny = join(cache, 'tinyllama-q4_0-s1.gguf');
  if (!skipTiny && !existsSync(tiny)) {
    mkdirSync(cache, { recursive: true });
    log('writing the synthetic TinyLlama Q4_0 (once; cached in .cache/bench)');
    synthShape('tinyllama', 'q4_0', 1, tiny);
  }

  if (!skipTiny && !tensorOnly) {
    log(`TinyLlama Q4_0: one process, ${tokens} tokens`);
    const local = run(tiny, 'local', undefined, env);
    rows.push(['TinyLlama Q4_0', 'one process', fmt(local.timings.decode_tps), '1.00', '', '']);
    for (const stages of [1, 2, 3]) {
      log(`TinyLlama Q4_0: ${stages} stage(s)`);
      const first = run(tiny, peers, stages, env); // loads (and transfers) the shards
      const again = run(tiny, peers, stages, env); // a standing herd: slices already loaded
      const same = JSON.stringify(again.tokens) === JSON.stringify(local.tokens) ? 'same tokens' : 'TOKENS DIFFER';
      const fetched = (first.shards ?? []).filter((s) => s.source === 'fetched');
      const bytes = fetched.reduce((s, x) => s + x.bytes_transferred, 0);
      const ms = Math.max(0, ...fetched.map((x) => x.ms));
      rows.push([
        'TinyLlama Q4_0',
        `${stages} stage(s) ${JSON.stringify(again.plan.map((p) => p.layers))}`,
        fmt(again.timings.decode_tps),
        fmt(again.timings.decode_tps / local.timings.decode_tps),
        bytes > 0 ? `${fmt(bytes / 1e6, 0)} MB in ${fmt(ms / 1000, 1)} s = ${fmt(bytes / 1e3 / ms, 0)} MB/s` : 'cached',
        same,
      ]);
    }
  }

  const big = join(cache, 'llama2-7b-q4_0-s1.gguf');
  const tensorModels: TensorModel[] = [{ label: 'TinyLlama Q4_0', path: tiny, ctx: 256, tokens }];
  if (!skipTensor && !skip7b) {
    // the file, one node's whole copy and the two members' shares in memory at once, with room
    const need = 3 * (existsSync(big) ? statSync(big).size : 3.8e9);
    if (memAvailable() < need)
      log(`Llama-2-7B row skipped: ${fmt(memAvailable() / 1e9, 1)} GB available, ~${fmt(need / 1e9, 0)} GB needed`);
    else {
      if (!existsSync(big)) {
        mkdirSync(cache, { recursive: true });
        log('writing the synthetic Llama-2-7B-shape Q4_0 (once, 3.8 GB; cached in .cache/bench)');
        synthShape('llama2-7b', 'q4_0', 1, big);
      }
      tensorModels.push({ label: 'Llama-2-7B Q4_0', path: big, ctx: 1024, tokens: TOKENS_7B });
    }
  }
  const tensor = skipTensor ? undefined : await tensorRows(tensorModels, dir, env);
  if (tensor) rows.push(...tensor.rows);

  const stories = join(root, 'models/stories260K.gguf');
  if (!tensorOnly) log('stories260K: per-hop cost');
  const sLocal = tensorOnly ? undefined : run(stories, 'local', undefined, env);
  if (sLocal) rows.push(['stories260K', 'one process', fmt(sLocal.timings.decode_tps), '1.00', '', '']);
  for (const stages of sLocal ? [1, 2, 3] : []) {
    run(stories, peers, stages, env);
    const r = run(stories, peers, stages, env);
    // A token crosses stages + 1 hops: coordinator → stage 1 → … → stage N → coordinator.
    const perHop = (msPerToken(r) - msPerToken(sLocal!)) / (stages + 1);
    rows.push([
      'stories260K',
      `${stages} stage(s)`,
      fmt(r.timings.decode_tps),
      fmt(r.timings.decode_tps / sLocal!.timings.decode_tps),
      `per hop ${fmt(perHop, 3)} ms`,
      JSON.stringify(r.tokens) === JSON.stringify(sLocal!.tokens) ? 'same tokens' : 'TOKENS DIFFER',
    ]);
  }

  const head = ['model', 'run', 'decode tok/s', '× one process', 'transfer / hop', 'check'];
  const all = [head, ...rows];
  const widths = head.map((_, i) => Math.max(...all.map((r) => r[i].length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  process.stdout.write(
    `${line(head)}\n| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |\n${rows.map(line).join('\n')}\n`,
  );
  const backends = [...new Set([...(nodes.length > 0 ? backendsOf(peers) : []), ...(tensor?.backends ?? [])])].join(
    ', ',
  );
  process.stdout.write(
    `(loopback, ${tokens} decoded tokens per run (7B: ${TOKENS_7B}), ${reps > 1 ? `pinned rows the best of ${reps} rounds, ` : ''}nodes on the ${backends || '?'} kernel backend, ${spawnSync('nproc', { encoding: 'utf8' }).stdout.trim()} cores, load average ${loadAvg()})\n`,
  );
  if (tensor) {
    process.stdout.write(tensor.splits.map((l) => `${l}\n`).join(''));
    const costs = tensor.costs.get('Llama-2-7B Q4_0') ?? tensor.costs.get('TinyLlama Q4_0');
    process.stdout.write(
      piReport(
        big,
        costs?.find((x) => x.format === 'q8_0'),
      ),
    );
  }
} finally {
  for (const n of nodes) n.stop();
  rmSync(dir, { recursive: true, force: true });
}
