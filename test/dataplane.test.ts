import test from 'ava';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { SyncGroup, type Endpoint } from '../src/cluster/dataplane/group.ts';
import { FrameKind, HEADER_BYTES, formatCode, helloFrame, newFrame } from '../src/cluster/dataplane/frame.ts';
import { SyncCodec, sumPayloads, type SyncFormat } from '../src/cluster/sync/format.ts';
import { herdTls } from '../src/cluster/tls.ts';
import { HUNG_MS } from './helpers/serve.ts';
import { partial } from './helpers/partials.ts';
import { repoRoot } from './helpers/paths.ts';

const loopback: Endpoint = { host: '127.0.0.1', port: 0 };

interface GroupOpts {
  format?: SyncFormat;
  maxValues?: number;
  timeoutMs?: number;
  token?: Buffer;
  tls?: (m: number) => { caPem: Buffer; certPem: Buffer; keyPem: Buffer };
  at?: (m: number) => Endpoint;
  maxGather?: number;
}

/** size members in this process, each with its own listener and sockets, linked. */
async function makeGroup(size: number, o: GroupOpts = {}): Promise<SyncGroup[]> {
  const token = o.token ?? randomBytes(32);
  const groups = await Promise.all(
    Array.from({ length: size }, (_, member) =>
      SyncGroup.listen(
        {
          member,
          size,
          token,
          format: o.format ?? 'f32',
          maxValues: o.maxValues ?? 4096,
          timeoutMs: o.timeoutMs ?? HUNG_MS,
          tls: o.tls?.(member),
        },
        o.at?.(member) ?? loopback,
      ),
    ),
  );
  const endpoints = groups.map((g) => g.endpoint);
  await Promise.all(groups.map((g) => g.connect(endpoints, o.maxGather)));
  return groups;
}

/** What every member must end with: each partial through the format, summed in member order. */
function expected(format: SyncFormat, parts: Float32Array[]): Float32Array {
  const codec = new SyncCodec(format);
  const n = parts[0].length;
  const payloads = parts.map((p) => {
    const b = new Uint8Array(codec.bytes(n));
    codec.encode(p, b);
    return b;
  });
  const out = new Float32Array(n);
  sumPayloads(codec, payloads, n, out, new Float32Array(n));
  return out;
}

async function rounds(
  t: import('ava').ExecutionContext,
  groups: SyncGroup[],
  format: SyncFormat,
  n: number,
  count: number,
) {
  for (let r = 0; r < count; r++) {
    const parts = groups.map((_, m) => partial(m, r, n));
    const bufs = parts.map((p) => p.slice());
    await Promise.all(groups.map((g, m) => g.allReduce(bufs[m])));
    const want = expected(format, parts);
    for (const b of bufs) t.deepEqual(b, want);
  }
}

for (const size of [2, 3]) {
  for (const format of ['f32', 'f16', 'q8_0'] as const) {
    test(`a group of ${size} over loopback TCP sums every member's ${format} partial, the same bits on each`, async (t) => {
      const groups = await makeGroup(size, { format });
      try {
        await rounds(t, groups, format, 2048, 20);
        // the batch of a prefill step: more values, then fewer again
        await rounds(t, groups, format, 4096, 2);
        await rounds(t, groups, format, 64, 2);
        t.is(
          groups[0].stats.bytesSent,
          24 * (size - 1) * HEADER_BYTES +
            20 * (size - 1) * new SyncCodec(format).bytes(2048) +
            2 * (size - 1) * (new SyncCodec(format).bytes(4096) + new SyncCodec(format).bytes(64)),
        );
        t.like(groups[0].stats, { rounds: 24, values: 20 * 2048 + 2 * (4096 + 64) });
      } finally {
        for (const g of groups) g.close();
      }
    });
  }
}

test('a group of 3 over unix sockets', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'herd-dataplane-'));
  const groups = await makeGroup(3, { format: 'q8_0', at: (m) => ({ path: join(dir, `m${m}.sock`) }) });
  try {
    await rounds(t, groups, 'q8_0', 2048, 5);
  } finally {
    for (const g of groups) g.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a group over mutual TLS with the herd certificates; a member of another herd cannot link', async (t) => {
  const key = randomBytes(32);
  const groups = await makeGroup(2, { tls: () => herdTls(key) });
  try {
    await rounds(t, groups, 'f32', 2048, 5);
  } finally {
    for (const g of groups) g.close();
  }
  const other = herdTls(randomBytes(32));
  await t.throwsAsync(makeGroup(2, { timeoutMs: 5000, tls: (m) => (m === 0 ? herdTls(key) : other) }), {
    message: /data plane/,
  });
});

test('a connection without the group token is dropped; the members still link', async (t) => {
  const token = randomBytes(32);
  const [a, b] = await Promise.all(
    [0, 1].map((member) =>
      SyncGroup.listen({ member, size: 2, token, format: 'f32', maxValues: 64, timeoutMs: HUNG_MS }, loopback),
    ),
  );
  try {
    const at = a.endpoint as { host: string; port: number };
    const intruder = net.connect(at);
    await new Promise((r) => intruder.once('connect', r));
    intruder.write(helloFrame(1, randomBytes(32), 2, 0));
    await new Promise((r) => intruder.once('close', r));
    t.pass('the intruder was disconnected');
    await Promise.all([a.connect([a.endpoint, b.endpoint]), b.connect([a.endpoint, b.endpoint])]);
    const x = [partial(0, 0, 64), partial(1, 0, 64)];
    const want = expected('f32', x);
    await Promise.all([a.allReduce(x[0]), b.allReduce(x[1])]);
    t.deepEqual(x[0], want);
    t.deepEqual(x[1], want);
  } finally {
    a.close();
    b.close();
  }
});

/** Member 0 of a group of 2 whose member 1 is this test's raw socket, past the hello. */
async function withRawPeer(format: SyncFormat, timeoutMs: number, maxGather = 0) {
  const token = randomBytes(32);
  const a = await SyncGroup.listen({ member: 0, size: 2, token, format, maxValues: 64, timeoutMs }, loopback);
  const raw = net.connect(a.endpoint as { host: string; port: number });
  // the member drops it when a test's frame fails the group: a reset, not an uncaught error
  raw.on('error', () => {});
  raw.setNoDelay(true);
  const linked = a.connect([a.endpoint, { host: '127.0.0.1', port: 1 }], maxGather);
  await new Promise((r) => raw.once('connect', r));
  raw.write(helloFrame(1, token, 2, 0));
  await linked;
  return { a, raw };
}

test('a frame whose size does not match its count fails the all-reduce', async (t) => {
  const { a, raw } = await withRawPeer('q8_0', HUNG_MS);
  try {
    // 64 q8_0 values are 68 bytes; the frame says 256
    const bad = newFrame({
      kind: FrameKind.sync,
      format: formatCode('q8_0'),
      from: 1,
      round: 1,
      count: 64,
      bytes: 256,
    });
    bad.fill(0, HEADER_BYTES);
    raw.write(bad);
    await t.throwsAsync(a.allReduce(new Float32Array(64)), { message: /sent 256 bytes for 64 q8_0 values/ });
    await t.throwsAsync(a.allReduce(new Float32Array(64)), { message: /sent 256 bytes/ }, 'the group stays failed');
  } finally {
    a.close();
    raw.destroy();
  }
});

test('a frame larger than the group takes is refused before it is read', async (t) => {
  const { a, raw } = await withRawPeer('f32', HUNG_MS);
  try {
    // the header alone: the payload is never sent, the refusal must not wait for it
    raw.write(
      newFrame({
        kind: FrameKind.sync,
        format: formatCode('f32'),
        from: 1,
        round: 1,
        count: 1 << 30,
        bytes: (4 << 30) >>> 0,
      }).subarray(0, HEADER_BYTES),
    );
    await t.throwsAsync(a.allReduce(new Float32Array(64)), { message: /sent 1073741824 values \(at most 64\)/ });
  } finally {
    a.close();
    raw.destroy();
  }
});

test('an all-reduce a member never joins times out', async (t) => {
  // long enough to link on a busy machine too
  const { a, raw } = await withRawPeer('f32', 1500);
  try {
    await t.throwsAsync(a.allReduce(new Float32Array(64)), {
      message: /all-reduce 1 incomplete after 1500 ms \(missing members 1\)/,
    });
  } finally {
    a.close();
    raw.destroy();
  }
});

for (const format of ['f32', 'q8_0'] as const) {
  test(`the leader gathers the others' parts in member order, in step with the all-reduces (${format} group)`, async (t) => {
    const groups = await makeGroup(3, { format, maxGather: 1000 });
    // an f32 group gathers f32, bit for bit; any other f16
    const wire = new SyncCodec(format === 'f32' ? 'f32' : 'f16');
    t.is(groups[0].gatherCodec.format, wire.format);
    try {
      for (let r = 0; r < 3; r++) {
        await rounds(t, groups, format, 256, 2);
        // parts of unequal sizes (a head's rows shared 2:1:1)
        const parts = [1, 2].map((m) => partial(m, r, m === 1 ? 300 : 200));
        groups[1].sendGather(parts[0]);
        groups[2].sendGather(parts[1]);
        const got = (await groups[0].gather()).map((b) => {
          const out = new Float32Array(b.length / wire.bytes(1));
          wire.decode(b, out.length, out);
          return out;
        });
        const want = parts.map((p) => {
          const bytes = new Uint8Array(wire.bytes(p.length));
          wire.encode(p, bytes);
          const out = new Float32Array(p.length);
          wire.decode(bytes, p.length, out);
          return out;
        });
        t.deepEqual(got, want);
        if (format === 'f32') t.deepEqual(got, parts);
      }
      t.throws(() => groups[0].sendGather(new Float32Array(4)), { message: /the leader takes the gathers/ });
      await t.throwsAsync(groups[1].gather(), { message: /only the leader/ });
    } finally {
      for (const g of groups) g.close();
    }
  });
}

test('a gather part larger than the leader takes, or one nobody asked for, fails the group', async (t) => {
  const gatherFrame = (round: number, count: number) => {
    const f = newFrame({ kind: FrameKind.gather, format: formatCode('f32'), from: 1, round, count, bytes: 4 * count });
    f.fill(0, HEADER_BYTES);
    return f;
  };
  const big = await withRawPeer('f32', HUNG_MS, 64);
  try {
    big.raw.write(gatherFrame(1, 65).subarray(0, HEADER_BYTES));
    await t.throwsAsync(big.a.gather(), { message: /a gather part of 65 values \(at most 64\)/ });
  } finally {
    big.a.close();
    big.raw.destroy();
  }
  const eager = await withRawPeer('f32', HUNG_MS, 64);
  try {
    eager.raw.write(Buffer.concat([gatherFrame(1, 8), gatherFrame(2, 8)]));
    await t.throwsAsync(new Promise((_, reject) => eager.a.onFail(reject)), {
      message: /sent a gather part nobody asked for/,
    });
  } finally {
    eager.a.close();
    eager.raw.destroy();
  }
});

test('a group of 3 processes links over loopback and sums', async (t) => {
  const token = randomBytes(32).toString('hex');
  const members = [0, 1, 2].map((m) =>
    spawn(process.execPath, ['--import=tsx', 'test/helpers/dataplane-member.ts', String(m), '3', token], {
      cwd: repoRoot,
      stdio: ['pipe', 'pipe', 'inherit'],
    }),
  );
  const lines = members.map((p) => {
    const got: string[] = [];
    let partialLine = '';
    const waiters: (() => void)[] = [];
    p.stdout.on('data', (d: Buffer) => {
      const parts = (partialLine + d.toString()).split('\n');
      partialLine = parts.pop()!;
      got.push(...parts);
      for (const w of waiters.splice(0)) w();
    });
    return async () => {
      while (got.length === 0) await new Promise<void>((r) => waiters.push(r));
      return got.shift()!;
    };
  });
  const kill = setTimeout(() => members.forEach((p) => p.kill('SIGKILL')), HUNG_MS);
  try {
    const endpoints = await Promise.all(lines.map((next) => next()));
    for (const p of members) p.stdin.write(`${JSON.stringify(endpoints.map((e) => JSON.parse(e)))}\n`);
    const sums = await Promise.all(lines.map((next) => next()));
    const parts = [0, 1, 2].map((m) => Array.from({ length: 10 }, (_, r) => partial(m, r, 2048)));
    let want = 0;
    for (let r = 0; r < 10; r++)
      want += expected('q8_0', [parts[0][r], parts[1][r], parts[2][r]]).reduce((a, b) => a + b, 0);
    for (const s of sums) t.is(Number(s), want);
    for (const p of members) p.stdin.write('close\n');
  } finally {
    clearTimeout(kill);
    for (const p of members) p.kill();
  }
});
