import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Activation, DType, FetchTensorsReply, ForwardRequest, NodeInfo, ProtocolVersion } from '../src/proto/herd.ts';
import { PROTOCOL_VERSION } from '../src/cluster/caps.ts';
import { encodeFetchReply } from '../src/cluster/shard/fetch-reply.ts';
import { repoRoot } from './helpers/paths.ts';

test('nodes speak the version the proto file names as current', (t) => {
  t.is(PROTOCOL_VERSION, ProtocolVersion.PROTOCOL_VERSION_CURRENT as number);
});

test('the committed src/proto is exactly what `npm run gen:proto` generates', (t) => {
  const out = mkdtempSync(join(tmpdir(), 'herd-proto-'));
  try {
    // The same command as the gen:proto script, with its output moved under a temp dir.
    execFileSync(join(repoRoot, 'node_modules/.bin/buf'), ['generate', '-o', out], { cwd: repoRoot, stdio: 'pipe' });
    const committed = readdirSync(join(repoRoot, 'src/proto')).sort();
    const generated = readdirSync(join(out, 'src/proto')).sort();
    t.deepEqual(generated, committed);
    for (const f of committed) {
      const a = readFileSync(join(repoRoot, 'src/proto', f));
      const b = readFileSync(join(out, 'src/proto', f));
      t.true(a.equals(b), `src/proto/${f} differs from a fresh generation: run npm run gen:proto`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test('an activation round-trips with its hidden bytes and stage timings intact', (t) => {
  const hidden = Buffer.from(new Uint8Array(3 * 64 * 4).map((_, i) => i & 0xff));
  const msg: ForwardRequest = {
    activation: {
      sessionId: 'abcdef0123456789',
      position: 7,
      tokenIds: [1, 403, 407],
      hidden,
      dtype: DType.DTYPE_F32,
      dim: 64,
      timings: [{ nodeId: 'a1b2c3d4e5f60718', start: 0, end: 11, seconds: 0.0125 }],
    },
  };
  const bytes = ForwardRequest.encode(msg).finish();
  const back = ForwardRequest.decode(bytes);
  const a = back.activation as Activation;
  t.is(a.sessionId, 'abcdef0123456789');
  t.is(a.position, 7);
  t.deepEqual(a.tokenIds, [1, 403, 407]);
  t.is(a.dim, 64);
  t.is(a.dtype, DType.DTYPE_F32);
  t.deepEqual(Buffer.from(a.hidden), Buffer.from(hidden));
  t.deepEqual(a.timings, [{ nodeId: 'a1b2c3d4e5f60718', start: 0, end: 11, seconds: 0.0125 }]);
});

test('64-bit counters decode as numbers', (t) => {
  const info = NodeInfo.decode(
    NodeInfo.encode(NodeInfo.fromPartial({ memTotal: 24 * 2 ** 30, throughput: 2 ** 40 })).finish(),
  );
  t.is(info.memTotal, 24 * 2 ** 30);
  t.is(info.throughput, 2 ** 40);
});

test('the one-copy shard chunk encoder writes exactly what ts-proto writes', (t) => {
  const cases: FetchTensorsReply[] = [
    { chunk: { index: 0, offset: 0, data: Buffer.from([1, 2, 3]), sha256: Buffer.alloc(0) } },
    { chunk: { index: 300, offset: 5 * 2 ** 32 + 7, data: Buffer.alloc(200_000, 9), sha256: Buffer.alloc(32, 0xab) } },
    { chunk: { index: 1, offset: 1 << 20, data: Buffer.alloc(0), sha256: Buffer.alloc(0) } },
    { header: { metadata: Buffer.from('kv'), metadataCount: 1, alignment: 32, tensors: [] } },
  ];
  for (const msg of cases) {
    t.true(encodeFetchReply(msg).equals(Buffer.from(FetchTensorsReply.encode(msg).finish())));
  }
});
