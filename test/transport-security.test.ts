import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type ClientHttp2Session } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { credentials, Server, ServerCredentials, status, type ServiceError } from '@grpc/grpc-js';
import { verify } from '../src/cluster/discovery/find.ts';
import { MAX_UNARY_BYTES } from '../src/cluster/guard.ts';
import { herdTls, tlsChannelOptions } from '../src/cluster/tls.ts';
import { nodeClient, unary } from '../src/cluster/rpc.ts';
import { capsFromInfo, HerdNodeService, type NodeInfo } from '../src/cluster/wire.ts';
import { HerdNodeClient } from '../src/proto/herd.ts';
import { stopProcess } from './helpers/netns.ts';
import { loopbackNodeArgs, startNode, type RunningNode } from './helpers/herd-proc.ts';
import { HUNG_MS } from './helpers/serve.ts';

const KEY = Buffer.from('transport-security-test-key-0123456789abcdef');
const OTHER_KEY = Buffer.from('another-herd-entirely-0123456789abcdefghij');
const MiB = 1024 * 1024;

let node: RunningNode;
let address: string;
let cacheDir: string;

test.before(async () => {
  cacheDir = mkdtempSync(join(tmpdir(), 'herd-tls-'));
  node = await startNode([...loopbackNodeArgs(cacheDir), '--cluster-key', KEY.toString(), '--name', 'tls']);
  address = `127.0.0.1:${node.port}`;
});

test.after.always(async () => {
  if (node) await stopProcess(node.child, 5000);
  rmSync(cacheDir, { recursive: true, force: true });
});

async function info(client: HerdNodeClient): Promise<NodeInfo | ServiceError> {
  try {
    return await unary(client, client.info, {}, HUNG_MS);
  } catch (e) {
    return e as ServiceError;
  } finally {
    client.close();
  }
}

test.serial('with a cluster key, a node answers only a peer whose certificate chains to the key', async (t) => {
  const ok = await info(nodeClient(address, KEY));
  t.is((ok as NodeInfo).nodeId, node.ready.id as string);

  // Plaintext, TLS without a client certificate, and a certificate of another key's herd CA.
  const plain = await info(nodeClient(address, undefined));
  t.is((plain as ServiceError).code, status.UNAVAILABLE);
  const ours = herdTls(KEY);
  const noCert = new HerdNodeClient(address, credentials.createSsl(ours.caPem), tlsChannelOptions);
  t.is(((await info(noCert)) as ServiceError).code, status.UNAVAILABLE);
  const other = await info(nodeClient(address, OTHER_KEY));
  t.is((other as ServiceError).code, status.UNAVAILABLE);

  t.is(((await info(nodeClient(address, KEY))) as NodeInfo).name, 'tls', 'the node keeps serving');
});

test.serial('a keyless fake node is not counted, and cannot relay to the real node', async (t) => {
  const real = (await info(nodeClient(address, KEY))) as NodeInfo;
  // The fake: it advertises the real node's id and answers Info itself.
  const fakes: Server[] = [];
  const fakeAddress = async (creds: ServerCredentials): Promise<string> => {
    const s = new Server();
    s.addService(HerdNodeService, { info: (_c: unknown, cb: (e: null, r: NodeInfo) => void) => cb(null, real) });
    fakes.push(s);
    const port = await new Promise<number>((resolve, reject) =>
      s.bindAsync('127.0.0.1:0', creds, (e, p) => (e ? reject(e) : resolve(p))),
    );
    return `127.0.0.1:${port}`;
  };
  t.teardown(() => fakes.forEach((s) => s.forceShutdown()));
  const plain = await fakeAddress(ServerCredentials.createInsecure());
  const otherHerd = await fakeAddress(herdTls(OTHER_KEY).server);
  const caps = capsFromInfo(real);
  const r = await verify(
    [plain, otherHerd, address].map((a) => ({ address: a, caps, via: 'mdns' as const })),
    KEY,
    HUNG_MS,
  );
  t.deepEqual(
    r.nodes.map((n) => n.address),
    [address],
  );
  t.deepEqual(r.unreachable.map((u) => u.address).sort(), [otherHerd, plain].sort());
  // A goodbye is a hint too: a node that said it (or was said to) counts while it answers; one
  // that is gone is dropped without a complaint.
  const gone = await fakeAddress(herdTls(OTHER_KEY).server);
  await new Promise<void>((resolve) => fakes.at(-1)?.tryShutdown(() => resolve()));
  const bye = await verify(
    [address, gone].map((a) => ({ address: a, caps, via: 'mdns' as const, goodbye: true })),
    KEY,
    HUNG_MS,
  );
  t.deepEqual(
    bye.nodes.map((n) => n.address),
    [address],
  );
  t.deepEqual(bye.unreachable, []);
  // Relaying onwards, the fake has only what it can make without the key.
  for (const key of [undefined, OTHER_KEY]) {
    const c = nodeClient(address, key);
    const e = await new Promise<ServiceError | 'ok'>((resolve) => {
      const call = c.dropSession({ sessionId: 'someone' }, (err) => resolve(err ?? 'ok'));
      void call;
    });
    c.close();
    t.not(e, 'ok');
    if (e !== 'ok') t.is(e.code, status.UNAVAILABLE);
  }
});

/** A raw HTTP/2 gRPC call with this process's herd certificate: the grpc-status it ends with. */
function rawCall(session: ClientHttp2Session, path: string, body: Buffer, gzip: boolean): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = session.request({
      ':method': 'POST',
      ':path': path,
      'content-type': 'application/grpc',
      te: 'trailers',
      ...(gzip ? { 'grpc-encoding': 'gzip' } : {}),
    });
    let code: number | undefined;
    const take = (h: Record<string, unknown>) => {
      if (h['grpc-status'] !== undefined) code = Number(h['grpc-status']);
    };
    req.on('response', take);
    req.on('trailers', take);
    req.on('data', () => {});
    req.on('error', reject);
    req.on('close', () => (code === undefined ? reject(new Error(`${path}: no grpc-status`)) : resolve(code)));
    const head = Buffer.alloc(5);
    head[0] = gzip ? 1 : 0;
    head.writeUInt32BE(body.length, 1);
    // The write may be cut short by the server's answer; the status is what counts.
    req.on('error', () => {});
    req.end(Buffer.concat([head, body]));
  });
}

function tlsSession(): ClientHttp2Session {
  const tls = herdTls(KEY);
  return connect(`https://${address}`, { ca: tls.caPem, key: tls.keyPem, cert: tls.certPem, servername: 'herd' });
}

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

test.serial('gzip bombs from a key holder are refused unread: node RSS stays within 64 MiB of idle', async (t) => {
  const pid = node.child.pid as number;
  const session = tlsSession();
  t.teardown(() => session.close());
  // 16 gzip members of 16 MiB of zeros each: about 256 KiB on the wire, 256 MiB inflated.
  const member = gzipSync(Buffer.alloc(16 * MiB));
  const bomb = Buffer.concat(new Array<Buffer>(16).fill(member));
  t.log(`bomb: ${bomb.length} bytes compressed, ${256} MiB inflated`);
  const idle = rssBytes(pid);
  let peak = idle;
  const sampler = setInterval(() => (peak = Math.max(peak, rssBytes(pid))), 20);
  try {
    const codes = await Promise.all([
      ...[1, 2, 3, 4].map(() => rawCall(session, '/herd.v1.HerdNode/DropSession', bomb, true)),
      rawCall(session, '/herd.v1.HerdNode/Forward', bomb, true),
    ]);
    await new Promise((r) => setTimeout(r, 500));
    for (const c of codes) t.is(c, status.UNIMPLEMENTED);
  } finally {
    clearInterval(sampler);
  }
  peak = Math.max(peak, rssBytes(pid));
  t.log(`node RSS idle ${(idle / MiB).toFixed(1)} MiB, peak ${(peak / MiB).toFixed(1)} MiB`);
  t.true(peak - idle < 64 * MiB, `RSS grew by ${((peak - idle) / MiB).toFixed(1)} MiB`);
  t.is(((await info(nodeClient(address, KEY))) as NodeInfo).name, 'tls', 'the node keeps serving');
  const refused = await node.waitFor((e) => e.event === 'request.refused', HUNG_MS);
  t.regex(String(refused.reason), /compressed/);
});

test.serial('a 5 MiB unary request is refused; the Forward stream takes a 6 MiB message', async (t) => {
  const session = tlsSession();
  t.teardown(() => session.close());
  const big = await rawCall(session, '/herd.v1.HerdNode/DropSession', Buffer.alloc(5 * MiB), false);
  t.is(big, status.RESOURCE_EXHAUSTED);
  const atLimit = await rawCall(session, '/herd.v1.HerdNode/DropSession', Buffer.alloc(MAX_UNARY_BYTES - 16), false);
  t.not(atLimit, status.RESOURCE_EXHAUSTED);
  // 0xff bytes are no valid ForwardRequest: refused as undecodable, not for its size.
  const step = await rawCall(session, '/herd.v1.HerdNode/Forward', Buffer.alloc(6 * MiB, 0xff), false);
  t.is(step, status.INVALID_ARGUMENT);
  t.is(((await info(nodeClient(address, KEY))) as NodeInfo).name, 'tls', 'the node keeps serving');
});
