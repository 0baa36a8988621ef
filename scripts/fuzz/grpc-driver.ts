// The gRPC fuzzer: a live `herd node` on loopback (with a cluster key: mutual TLS, the client
// holding the key, so the calls reach the handlers), a real generation through it, then `calls`
// fuzz cases (grpc-cases.ts) one after another, each bounded by a deadline, then the same
// generation again. Findings: a status other than a clear refusal (UNKNOWN, INTERNAL: a handler
// threw something unplanned), a call not answered in time (a hang), the node process gone (a
// crash), node RSS more than rssBudgetMiB over idle, or a generation afterwards that fails or
// differs from the one before.

import {
  Client,
  credentials,
  Metadata,
  Server,
  status,
  type ChannelOptions,
  type ServerReadableStream,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { GgufFile } from '../../src/gguf/reader.ts';
import { readConfig } from '../../src/model/config.ts';
import { authMetadata } from '../../src/cluster/auth.ts';
import { generateClusterKey, loadClusterKey, type ClusterKey } from '../../src/cluster/key.ts';
import { bind, channelOptions, nodeClient, unary } from '../../src/cluster/rpc.ts';
import { herdTls, tlsChannelOptions } from '../../src/cluster/tls.ts';
import { HerdCoordinatorService, type NodeInfo } from '../../src/cluster/wire.ts';
import { bundledModel } from '../../test/helpers/paths.ts';
import { loopbackNodeArgs, runHerd, startNode, type RunningNode } from '../../test/helpers/herd-proc.ts';
import { makeCallCase, PATH, type CallCase, type Target } from './grpc-cases.ts';

export interface GrpcFuzzOptions {
  readonly seed: number;
  readonly calls: number;
  readonly outDir: string;
  /** Open mode: no cluster key, plaintext. */
  readonly open?: boolean;
  /** A call unanswered this long after its deadline is a hang. */
  readonly callMs?: number;
  readonly rssBudgetMiB?: number;
  readonly timeLimitMs?: number;
  readonly onProgress?: (done: number, total: number) => void;
  /** Hears every call's case and answer (`npm run fuzz -- --verbose`). */
  readonly onCall?: (c: CallCase, code: number, details: string) => void;
}

export interface GrpcFinding {
  readonly index: number;
  readonly what: string;
  readonly detail: string;
}

export interface GrpcFuzzReport {
  readonly seed: number;
  readonly calls: number;
  readonly seconds: number;
  readonly callsPerSecond: number;
  /** Count per method, strategy and status, e.g. "Forward wrong-size INVALID_ARGUMENT". */
  readonly statuses: Readonly<Record<string, number>>;
  readonly rssIdleMiB: number;
  readonly rssPeakMiB: number;
  readonly findings: readonly GrpcFinding[];
  readonly keyed: boolean;
}

/** Statuses a node may answer hostile input with: refusals that say what was wrong. */
const CLEAR = new Set<number>([
  status.OK,
  status.INVALID_ARGUMENT,
  status.NOT_FOUND,
  status.ALREADY_EXISTS,
  status.FAILED_PRECONDITION,
  status.RESOURCE_EXHAUSTED,
  status.OUT_OF_RANGE,
  status.UNIMPLEMENTED,
  status.UNAUTHENTICATED,
  status.PERMISSION_DENIED,
  status.ABORTED,
]);
/** LoadShard and Forward dial the coordinator or Deliver a request names: its failure is theirs to report. */
const DIALING = new Set(['LoadShard', 'Forward']);
const PROMPT = 'Once upon a time';

export async function fuzzGrpc(o: GrpcFuzzOptions): Promise<GrpcFuzzReport> {
  const dir = mkdtempSync(join(tmpdir(), 'herd-fuzz-grpc-'));
  const keyFile = join(dir, 'cluster.key');
  const keyArgs = o.open ? [] : ['--cluster-key-file', keyFile];
  if (!o.open) writeFileSync(keyFile, generateClusterKey(), { mode: 0o600 });
  const key = o.open ? undefined : loadClusterKey({ clusterKeyFile: keyFile });
  const findings: GrpcFinding[] = [];
  const statuses: Record<string, number> = {};
  const sink = await startSink(key);
  let node: RunningNode | undefined;
  let clients: Clients | undefined;
  const t0 = Date.now();
  let calls = 0;
  const rss = { idle: 0, peak: 0 };
  try {
    node = await startNode([
      ...loopbackNodeArgs(join(dir, 'cache')),
      '--model-dir',
      dirname(bundledModel),
      '--backend',
      'js',
      '--threads',
      '1',
      ...keyArgs,
    ]);
    const self = `127.0.0.1:${node.port}`;
    const generate = () =>
      runHerd(['run', '--nodes', self, ...keyArgs, '--temp', '0', '-n', '8', '--ctx', '64', '--json', PROMPT]);
    const before = await generate();
    if (before.code !== 0) throw new Error(`the generation before fuzzing failed: ${before.stderr.slice(-2000)}`);
    const tokensBefore = (JSON.parse(before.stdout) as { tokens: number[] }).tokens;

    clients = makeClients(self, key);
    const info = await unary<object, NodeInfo>(clients.typed, clients.typed.info, {}, 10_000);
    const target = targetFrom(info, self, sink.address);
    const pid = node.child.pid ?? 0;
    rss.idle = rss.peak = rssMiB(pid);
    const budget = o.rssBudgetMiB ?? 64;
    const replayable = () => {
      // A real proof (the right key) for another method and a nonce the node never issued.
      const md = authMetadata(key ?? Buffer.alloc(32), Buffer.alloc(32, 7), PATH.LoadShard).getMap();
      return Object.fromEntries(Object.entries(md).map(([k, v]) => [k, String(v)]));
    };
    const deadline = o.timeLimitMs === undefined ? Infinity : t0 + o.timeLimitMs;
    for (let i = 0; i < o.calls && Date.now() < deadline; i++) {
      const c = makeCallCase(target, o.seed, i, replayable);
      const r = await callOnce(clients, c, o.callMs ?? 10_000);
      calls++;
      o.onProgress?.(calls, o.calls);
      o.onCall?.(c, r.code, r.details);
      const key = `${c.method} ${c.strategy} ${r.hung ? 'HUNG' : (status[r.code] ?? r.code)}`;
      statuses[key] = (statuses[key] ?? 0) + 1;
      const alive = node.child.exitCode === null && node.child.signalCode === null;
      const now = alive ? rssMiB(pid) : 0;
      rss.peak = Math.max(rss.peak, now);
      const problem = !alive
        ? `the node died (${node.child.exitCode ?? node.child.signalCode})`
        : r.hung
          ? 'no answer within the deadline'
          : !(CLEAR.has(r.code) || (r.code === status.UNAVAILABLE && DIALING.has(c.method)))
            ? `answered ${status[r.code] ?? r.code}: ${r.details}`
            : now - rss.idle > budget
              ? `node RSS ${now} MiB, ${now - rss.idle} MiB over idle (budget ${budget})`
              : undefined;
      if (problem) {
        findings.push({ index: i, what: `${c.method} ${c.strategy}: ${c.what}`, detail: problem });
        saveCase(o.outDir, o.seed, c);
        if (!alive) break;
      }
    }
    if (node.child.exitCode === null) {
      const after = await generate();
      const tokensAfter = after.code === 0 ? (JSON.parse(after.stdout) as { tokens: number[] }).tokens : undefined;
      if (JSON.stringify(tokensAfter) !== JSON.stringify(tokensBefore)) {
        findings.push({
          index: calls,
          what: 'the generation after fuzzing',
          detail:
            after.code === 0
              ? `tokens ${JSON.stringify(tokensAfter)}, before ${JSON.stringify(tokensBefore)}`
              : `failed: ${after.stderr.slice(-500)}`,
        });
      }
    }
  } finally {
    clients?.close();
    if (node && node.child.exitCode === null) {
      node.child.kill('SIGTERM');
      await node.exited();
    }
    sink.server.forceShutdown();
    rmSync(dir, { recursive: true, force: true });
  }
  const seconds = (Date.now() - t0) / 1000;
  return {
    seed: o.seed,
    calls,
    seconds,
    callsPerSecond: calls / seconds,
    statuses,
    rssIdleMiB: rss.idle,
    rssPeakMiB: rss.peak,
    findings,
    keyed: key !== undefined,
  };
}

/** The node's resident memory now, from /proc (MiB). */
function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round(Number(m[1]) / 1024) : 0;
}

function targetFrom(info: NodeInfo, self: string, sink: string): Target {
  const shard = info.shards[0];
  if (!shard) throw new Error('the node holds no shard after a generation through it');
  const config = readConfig(GgufFile.open(bundledModel));
  return {
    modelHash: shard.modelHash,
    modelSize: Number(readFileSync(bundledModel).length),
    modelName: basename(bundledModel),
    nLayers: shard.nLayers,
    start: shard.start,
    end: shard.end,
    ctx: shard.ctx,
    dim: config.dim,
    vocab: config.vocabSize,
    self,
    sink,
  };
}

interface Clients {
  /** The generated client, for a well-formed Info. */
  readonly typed: ReturnType<typeof nodeClient>;
  /** A raw client, and one that gzip-compresses every message. */
  readonly raw: Client;
  readonly gzip: Client;
  close(): void;
}

/** Clients as the project makes them (rpc.ts, tls.ts): with a key, mutual TLS as a herd member. */
function makeClients(address: string, key: ClusterKey | undefined): Clients {
  const transport = (extra: ChannelOptions): [ReturnType<typeof credentials.createInsecure>, ChannelOptions] =>
    key
      ? [herdTls(key).client, { ...channelOptions, ...tlsChannelOptions, ...extra }]
      : [credentials.createInsecure(), { ...channelOptions, ...extra }];
  const typed = nodeClient(address, key);
  // Separate connections (the option is per channel), so a refused gzip call cannot disturb the rest.
  const raw = new Client(address, ...transport({ 'grpc.use_local_subchannel_pool': 1 }));
  const gzip = new Client(
    address,
    ...transport({ 'grpc.default_compression_algorithm': 2, 'grpc.use_local_subchannel_pool': 1 }),
  );
  return { typed, raw, gzip, close: () => [typed, raw, gzip].forEach((c) => c.close()) };
}

interface CallResult {
  readonly code: number;
  readonly details: string;
  readonly hung: boolean;
}

const identity = (b: Buffer) => b;

/** One case: its messages sent raw, its status awaited until the deadline and a grace after it. */
function callOnce(clients: Clients, c: CallCase, callMs: number): Promise<CallResult> {
  const client = c.compress ? clients.gzip : clients.raw;
  const md = new Metadata();
  for (const [k, v] of Object.entries(c.metadata)) md.set(k, v);
  const opts = { deadline: new Date(Date.now() + callMs) };
  const path = PATH[c.method];
  return new Promise((resolve) => {
    let settled = false;
    const settle = (r: CallResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(guard);
      resolve(r);
    };
    // The deadline makes grpc-js end the call itself; this catches a client that never settles.
    const guard = setTimeout(
      () => settle({ code: status.DEADLINE_EXCEEDED, details: 'no status', hung: true }),
      callMs + 5000,
    );
    const onStatus = (s: { code: number; details: string }) =>
      settle({ code: s.code, details: s.details, hung: s.code === status.DEADLINE_EXCEEDED });
    if (c.method === 'Forward') {
      const call = client.makeBidiStreamRequest(path, identity, identity, md, opts);
      call.on('data', () => {});
      call.on('error', () => {});
      call.on('status', onStatus);
      for (const m of c.messages) call.write(m);
      call.end();
    } else if (c.method === 'LoadShard') {
      const call = client.makeServerStreamRequest(path, identity, identity, c.messages[0], md, opts);
      call.on('data', () => {});
      call.on('error', () => {});
      call.on('status', onStatus);
    } else {
      const cb: sendUnaryData<Buffer> = () => {};
      const call = client.makeUnaryRequest(path, identity, identity, c.messages[0], md, opts, cb);
      call.on('status', onStatus);
    }
  });
}

/** The Deliver end a last stage sends tokens to: takes them and answers at the stream's end. */
async function startSink(key: ClusterKey | undefined): Promise<{ server: Server; address: string }> {
  const server = new Server(channelOptions);
  server.addService(HerdCoordinatorService, {
    deliver: (call: ServerReadableStream<unknown, unknown>, cb: sendUnaryData<object>) => {
      call.on('data', () => {});
      call.on('end', () => cb(null, {}));
      call.on('error', () => {});
    },
  });
  const port = await bind(server, '127.0.0.1', 0, key);
  return { server, address: `127.0.0.1:${port}` };
}

/** The case's messages, one file each, for a rerun. */
function saveCase(outDir: string, seed: number, c: CallCase): void {
  mkdirSync(outDir, { recursive: true });
  c.messages.forEach((m, i) => writeFileSync(join(outDir, `grpc-seed${seed}-call${c.index}-${c.method}-${i}.bin`), m));
}
