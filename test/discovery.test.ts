import test from 'ava';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLan, stopProcess } from './helpers/netns.ts';
import { repoRoot, fixtureModels } from './helpers/paths.ts';
import { runHerd, startNode } from './helpers/herd-proc.ts';
import { HUNG_MS } from './helpers/serve.ts';
import type { DiscoveryResult } from '../src/cluster/discovery/types.ts';
import { capsFromTxt, capsToTxt, PROTOCOL_VERSION } from '../src/cluster/caps.ts';
import { parseHostPort } from '../src/cluster/net.ts';

const probe = ['--import=tsx', 'test/helpers/mdns-probe.ts'];

/** Resolves with the process's stdout once a line matches, or rejects on exit or timeout. */
export function waitForLine(child: ChildProcess, re: RegExp, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(
      () => done(new Error(`timed out after ${timeoutMs} ms waiting for ${re}; stderr: ${err.slice(-2000)}`)),
      timeoutMs,
    );
    const onOut = (b: Buffer) => {
      out += b.toString();
      const m = out.split('\n').find((l) => re.test(l));
      if (m !== undefined) done(undefined, m);
    };
    const onErr = (b: Buffer) => (err += b.toString());
    const onExit = (code: number | null) =>
      done(new Error(`exited (${code}) before ${re}; stderr: ${err.slice(-2000)}`));
    const done = (e?: Error, line?: string) => {
      clearTimeout(timer);
      child.stdout?.off('data', onOut);
      child.stderr?.off('data', onErr);
      child.off('exit', onExit);
      if (e) reject(e);
      else resolve(line as string);
    };
    child.stdout?.on('data', onOut);
    child.stderr?.on('data', onErr);
    child.once('exit', onExit);
  });
}

test('TXT capabilities round-trip and junk is refused', (t) => {
  const caps = {
    protocolVersion: PROTOCOL_VERSION,
    nodeId: 'abc123',
    name: 'pi-4',
    arch: 'arm64',
    backend: 'wasm',
    memTotal: 4 * 2 ** 30,
    memAvailable: 3 * 2 ** 30,
    cores: 4,
    throughput: 123456789,
  };
  t.deepEqual(capsFromTxt(capsToTxt(caps)), caps);
  t.is(capsFromTxt({ pv: '1' }), undefined);
  t.is(capsFromTxt({ pv: 'x', id: 'a' }), undefined);
  t.is(capsFromTxt({ pv: '1', id: 'bad id with spaces' }), undefined);
  t.is(capsFromTxt(null), undefined);
  t.is(capsFromTxt({ pv: '1', id: 'n1', mem: '-5' })?.memTotal, 0);
});

test('host:port parsing', (t) => {
  t.deepEqual(parseHostPort('10.77.0.10:7077'), { host: '10.77.0.10', port: 7077 });
  t.deepEqual(parseHostPort('pi.local', 7077), { host: 'pi.local', port: 7077 });
  t.deepEqual(parseHostPort('[::1]:9'), { host: '::1', port: 9 });
  t.throws(() => parseHostPort('host:0'));
  t.throws(() => parseHostPort('host'));
  t.throws(() => parseHostPort('a:b:c'));
});

test('a browser in one namespace finds two advertisers in two others over mDNS', async (t) => {
  const lan = await createLan(3, 'disc');
  t.teardown(() => lan.close());
  const [a, b, browser] = lan.hosts;
  const ads = [
    lan.spawn(a, process.execPath, [...probe, 'advertise', 'alpha', '7101', 'eth0', 'node-alpha'], { cwd: repoRoot }),
    lan.spawn(b, process.execPath, [...probe, 'advertise', 'beta', '7102', 'eth0', 'node-beta'], { cwd: repoRoot }),
  ];
  await Promise.all(ads.map((p) => waitForLine(p, /^ready$/, HUNG_MS)));

  const started = Date.now();
  // It ends once both answered: the timeout only bounds a hung browse.
  const br = lan.spawn(browser, process.execPath, [...probe, 'browse', 'eth0', String(HUNG_MS), '2'], {
    cwd: repoRoot,
  });
  const line = await waitForLine(br, /^\{/, 2 * HUNG_MS);
  const result = JSON.parse(line) as DiscoveryResult;
  t.log(`found ${result.nodes.length} nodes in ${Date.now() - started} ms (incl. process start-up)`);
  const byId = new Map(result.nodes.map((n) => [n.caps.nodeId, n]));
  t.is(byId.get('node-alpha')?.address, `${a.ip}:7101`);
  t.is(byId.get('node-beta')?.address, `${b.ip}:7102`);
  t.is(byId.get('node-alpha')?.caps.name, 'alpha');
  t.is(byId.get('node-beta')?.caps.cores, 4);

  // Goodbyes: after alpha stops, a fresh browse sees only beta.
  await stopProcess(ads[0], HUNG_MS);
  t.is(ads[0].exitCode, 0);
  // No count to stop at (alpha must not be among the answers): five queries, one a second, to
  // an idle responder that answers in milliseconds.
  const br2 = lan.spawn(browser, process.execPath, [...probe, 'browse', 'eth0', '5000'], { cwd: repoRoot });
  const again = JSON.parse(await waitForLine(br2, /^\{/, HUNG_MS)) as DiscoveryResult;
  t.deepEqual(
    again.nodes.map((n) => n.caps.nodeId),
    ['node-beta'],
  );
  await once(br2, 'exit');
});

test('herd run --nodes auto with no daemon answering runs in-process and says so', async (t) => {
  const lan = await createLan(1, 'alone');
  t.teardown(() => lan.close());
  const [host] = lan.hosts;
  const ref = JSON.parse(readFileSync(join(fixtureModels, 'stories260K.reference.json'), 'utf8')) as {
    prompt: string;
    generated_tokens: number[];
  };
  const r = await runHerd(
    [
      'run',
      '--nodes',
      'auto',
      '--interface',
      'eth0',
      '--discovery-timeout',
      '1',
      '--temp',
      '0',
      '-n',
      '16',
      '--json',
      ref.prompt,
    ],
    (cmd, args, opts) => lan.spawn(host, cmd, args, opts),
    180_000,
  );
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /no herd nodes answered over mDNS in 1 s: running in-process/);
  const out = JSON.parse(r.stdout) as { tokens: number[]; plan: { address: string; layers: number[] }[] };
  t.deepEqual(out.tokens, ref.generated_tokens.slice(0, 16));
  t.deepEqual(
    out.plan.map((p) => [p.address, p.layers]),
    [['in-process', [0, 5]]],
  );
});

test('mDNS is a hint: a spoofed goodbye and a keyless node advertising the same id leave the real node listed', async (t) => {
  const lan = await createLan(3, 'spoof');
  const dir = mkdtempSync(join(tmpdir(), 'herd-spoof-'));
  t.teardown(async () => {
    await lan.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const [real, spoofer, browser] = lan.hosts;
  const key = 'mdns-hint-test-cluster-key-0123456789';
  const node = await startNode(
    ['--interface', 'eth0', '--port', '7077', '--cache-dir', join(dir, 'real'), '--cluster-key', key, '--name', 'real'],
    (cmd, args, opts) => lan.spawn(real, cmd, args, opts),
  );
  t.teardown(() => stopProcess(node.child, HUNG_MS));
  const instance = String((await node.waitFor((e) => e.event === 'mdns.advertise', HUNG_MS)).service).replace(
    /\.$/,
    '',
  );
  const id = node.ready.id as string;
  const fake = lan.spawn(spoofer, process.execPath, [...probe, 'spoof', 'eth0', id, instance, '7078'], {
    cwd: repoRoot,
  });
  t.teardown(() => stopProcess(fake, HUNG_MS));
  await waitForLine(fake, /^ready$/, HUNG_MS);

  const r = await runHerd(
    ['nodes', '--json', '--interface', 'eth0', '--timeout', '4', '--cluster-key', key],
    (cmd, args, opts) => lan.spawn(browser, cmd, args, opts),
    HUNG_MS,
  );
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as {
    nodes: { address: string; nodeId: string }[];
    unreachable: { address: string }[];
  };
  t.deepEqual(
    out.nodes.map((n) => [n.nodeId, n.address]),
    [[id, `${real.ip}:7077`]],
  );
  t.deepEqual(
    out.unreachable.map((u) => u.address),
    [`${spoofer.ip}:7078`],
  );
});
