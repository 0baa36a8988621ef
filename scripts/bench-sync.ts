// What one sync round of a tensor-parallel pair costs on this machine: member A (this process)
// and member B (a child process) each send their partial of a TinyLlama hidden state (2048
// values) to the other and sum, over
//   grpc  a grpc-js bidirectional stream (raw Buffer messages, no protobuf), insecure
//   tcp   the data plane (src/cluster/dataplane): a TCP socket, setNoDelay, 16-byte frames
//   unix  the data plane over a unix socket (same host)
//   tls   the data plane over mutual TLS with the herd's certificates
// in the f32 and q8_0 sync formats. Prints the median and p99 per round and the bytes one
// member sends per round. Usage: npm run bench:sync [-- --rounds N --dim N]; ONLY=tcp (or grpc,
// unix, tls) runs one transport.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { SyncGroup, type Endpoint } from '../src/cluster/dataplane/group.ts';
import { SyncCodec, sumPayloads, type SyncFormat } from '../src/cluster/sync/format.ts';
import { herdTls } from '../src/cluster/tls.ts';

const TRANSPORTS = ['grpc', 'tcp', 'unix', 'tls'] as const;
type Transport = (typeof TRANSPORTS)[number];
const WARMUP = 300;

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
}

/** One line from a readable stream. */
function lineOf(input: NodeJS.ReadableStream): Promise<string> {
  const rl = createInterface({ input });
  return new Promise((resolve) =>
    rl.once('line', (l) => {
      rl.close();
      resolve(l);
    }),
  );
}

/** A sync over a grpc-js bidi stream: send own payload, take the peer's, sum in member order. */
const passthrough = (b: Buffer) => b;
const syncService: grpc.ServiceDefinition = {
  exchange: {
    path: '/herd.bench.Sync/Exchange',
    requestStream: true,
    responseStream: true,
    requestSerialize: passthrough,
    requestDeserialize: passthrough,
    responseSerialize: passthrough,
    responseDeserialize: passthrough,
  },
};

/** A queue of the stream's messages, taken one per round. */
function inbox(stream: NodeJS.EventEmitter): () => Promise<Buffer> {
  const got: Buffer[] = [];
  const waiting: ((b: Buffer) => void)[] = [];
  stream.on('data', (b: Buffer) => {
    const w = waiting.shift();
    if (w) w(b);
    else got.push(b);
  });
  return () => {
    const b = got.shift();
    return b ? Promise.resolve(b) : new Promise((r) => waiting.push(r));
  };
}

type Round = (buf: Float32Array) => Promise<void>;

function grpcRound(
  member: number,
  codec: SyncCodec,
  stream: grpc.ClientDuplexStream<Buffer, Buffer> | grpc.ServerDuplexStream<Buffer, Buffer>,
): Round {
  const next = inbox(stream);
  return async (buf) => {
    const own = Buffer.allocUnsafe(codec.bytes(buf.length));
    codec.encode(buf, own);
    stream.write(own);
    const peer = await next();
    sumPayloads(codec, member === 0 ? [own, peer] : [peer, own], buf.length, buf, new Float32Array(buf.length));
  };
}

/** Runs `rounds` rounds, timing each (after the warm-up). */
async function run(round: Round, dim: number, rounds: number): Promise<number[]> {
  const buf = new Float32Array(dim);
  const times: number[] = [];
  for (let r = 0; r < WARMUP + rounds; r++) {
    for (let i = 0; i < dim; i++) buf[i] = Math.sin(i + r);
    const t0 = process.hrtime.bigint();
    await round(buf);
    if (r >= WARMUP) times.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  return times;
}

/** Member `member` of the pair: links to the other through stdin/stdout, runs the rounds. */
interface Link {
  send(line: string): void;
  receive(): Promise<string>;
}

async function member(
  m: number,
  transport: Transport,
  format: SyncFormat,
  dim: number,
  rounds: number,
  token: Buffer,
  dir: string,
  link: Link,
): Promise<{ times: number[]; bytes: number }> {
  const codec = new SyncCodec(format);
  if (transport === 'grpc') {
    if (m === 1) {
      const server = new grpc.Server();
      const done = new Promise<void>((resolve) =>
        server.addService(syncService, {
          exchange: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
            const clientDone = new Promise((r) => call.once('end', r));
            void run(grpcRound(1, codec, call), dim, rounds)
              .then(() => clientDone)
              .then(() => {
                call.end();
                resolve();
              });
          },
        }),
      );
      const port = await new Promise<number>((resolve, reject) =>
        server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) =>
          e ? reject(e) : resolve(p),
        ),
      );
      link.send(JSON.stringify({ host: '127.0.0.1', port }));
      await done;
      await new Promise((r) => server.tryShutdown(r));
      return { times: [], bytes: 0 };
    }
    const at = JSON.parse(await link.receive()) as { host: string; port: number };
    const Client = grpc.makeGenericClientConstructor(syncService, 'Sync');
    const client = new Client(`${at.host}:${at.port}`, grpc.credentials.createInsecure());
    const stream = (client as unknown as { exchange(): grpc.ClientDuplexStream<Buffer, Buffer> }).exchange();
    const ended = new Promise((resolve) => stream.once('status', resolve));
    const times = await run(grpcRound(0, codec, stream), dim, rounds);
    stream.end();
    await ended;
    client.close();
    return { times, bytes: codec.bytes(dim) };
  }
  const at: Endpoint = transport === 'unix' ? { path: join(dir, `m${m}.sock`) } : { host: '127.0.0.1', port: 0 };
  const tls = transport === 'tls' ? herdTls(token) : undefined;
  const group = await SyncGroup.listen({ member: m, size: 2, token, format, maxValues: dim, tls }, at);
  link.send(JSON.stringify(group.endpoint));
  const peer = JSON.parse(await link.receive()) as Endpoint;
  await group.connect(m === 0 ? [group.endpoint, peer] : [peer, group.endpoint]);
  const times = await run((b) => group.allReduce(b), dim, rounds);
  const bytes = group.stats.bytesSent / (WARMUP + rounds);
  group.close();
  return { times, bytes };
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function main(): Promise<void> {
  const dim = arg('dim', 2048);
  const rounds = arg('rounds', 2000);
  if (process.argv[2] === 'child') {
    const [, , , transport, format, token, dir] = process.argv;
    const link = { send: (l: string) => process.stdout.write(`${l}\n`), receive: () => lineOf(process.stdin) };
    await member(1, transport as Transport, format as SyncFormat, dim, rounds, Buffer.from(token, 'hex'), dir, link);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'herd-bench-sync-'));
  console.log(`sync round: 2 processes on loopback, ${dim} values, ${rounds} rounds after ${WARMUP} warm-up`);
  console.log('transport  format  median µs  p99 µs  bytes/round/member');
  try {
    for (const transport of TRANSPORTS.filter((t) => !process.env.ONLY || t === process.env.ONLY)) {
      for (const format of ['f32', 'q8_0'] as const) {
        const token = randomBytes(32);
        const child = spawn(
          process.execPath,
          [
            '--import=tsx',
            fileURLToPath(import.meta.url),
            'child',
            transport,
            format,
            token.toString('hex'),
            dir,
            '--dim',
            String(dim),
            '--rounds',
            String(rounds),
          ],
          { stdio: ['pipe', 'pipe', 'inherit'] },
        );
        const link = { send: (l: string) => child.stdin.end(`${l}\n`), receive: () => lineOf(child.stdout) };
        const { times, bytes } = await member(0, transport, format, dim, rounds, token, dir, link);
        await new Promise((r) => child.once('exit', r));
        times.sort((a, b) => a - b);
        console.log(
          `${transport.padEnd(9)}  ${format.padEnd(6)}  ${quantile(times, 0.5).toFixed(1).padStart(9)}  ${quantile(times, 0.99).toFixed(1).padStart(6)}  ${bytes.toFixed(0).padStart(18)}`,
        );
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
