// `herd serve` advertises _herd-api._tcp on the interface it binds, and `herd run --server auto`
// finds it — on a LAN of network namespaces (root; nothing is sent from the root namespace).
// A server bound to loopback is not advertised at all.

import test from 'ava';
import type { ChildProcess } from 'node:child_process';
import { herd } from './helpers/herd.ts';
import { createLan, stopProcess, type LanHost, type TestLan } from './helpers/netns.ts';
import { herdBin, repoRoot } from './helpers/paths.ts';
import { HUNG_MS } from './helpers/serve.ts';

/** Starts herd serve inside a namespace; resolves once it listens, with its JSON log lines. */
function serveIn(
  lan: TestLan,
  host: LanHost,
  args: readonly string[],
): Promise<{ child: ChildProcess; events: Record<string, unknown>[] }> {
  const child = lan.spawn(host, process.execPath, [herdBin, 'serve', ...args], { cwd: repoRoot });
  const events: Record<string, unknown>[] = [];
  let err = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`herd serve did not start in ${HUNG_MS / 1000} s:\n${err}`)),
      HUNG_MS,
    );
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      err += d;
      for (const line of d.split('\n')) {
        try {
          events.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          // partial line or not JSON
        }
      }
      if (events.some((e) => e.event === 'model.ready')) {
        clearTimeout(timer);
        resolve({ child, events });
      }
    });
    child.once('exit', (code) => reject(new Error(`herd serve exited (${code}):\n${err}`)));
  });
}

function runIn(
  lan: TestLan,
  host: LanHost,
  args: readonly string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = lan.spawn(host, process.execPath, [herdBin, ...args], { cwd: repoRoot });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, stdout, stderr })));
}

test('--server auto finds herd serve over mDNS on the LAN; a loopback server stays silent', async (t) => {
  const lan = await createLan(2, 'api');
  t.teardown(() => lan.close());
  const [server, client] = lan.hosts;
  const args = ['run', '--temp', '0', '-n', '24', '--json', 'Once upon a time'];
  const local = herd(args);

  const lanServe = await serveIn(lan, server, ['--host', server.ip, '--port', '8080', '--name', 'herd-api-test']);
  const adv = lanServe.events.find((e) => e.event === 'mdns.advertise');
  t.truthy(adv, 'advertised');
  // The browse ends at the first server that answers: the timeout only bounds a hung one.
  const found = await runIn(lan, client, [
    ...args,
    '--server',
    'auto',
    '--interface',
    'eth0',
    '--discovery-timeout',
    '60',
  ]);
  t.is(found.code, 0, found.stderr);
  t.regex(found.stderr, new RegExp(`using herd-api-test.* at http://${server.ip.replace(/\./g, '\\.')}:8080`));
  const a = JSON.parse((await local).stdout) as { tokens: number[]; text: string };
  const b = JSON.parse(found.stdout) as { tokens: number[]; text: string; server: string };
  t.deepEqual(b.tokens, a.tokens);
  t.is(b.text, a.text);
  t.is(b.server, `http://${server.ip}:8080`);
  await stopProcess(lanServe.child, HUNG_MS);

  const loopServe = await serveIn(lan, server, ['--host', '127.0.0.1', '--port', '8081']);
  t.truthy(loopServe.events.find((e) => e.event === 'mdns.skipped'));
  t.falsy(loopServe.events.find((e) => e.event === 'mdns.advertise'));
  const none = await runIn(lan, client, [
    'run',
    '-n',
    '4',
    '--server',
    'auto',
    '--interface',
    'eth0',
    '--discovery-timeout',
    '1.5',
    'x',
  ]);
  t.is(none.code, 2);
  t.regex(none.stderr, /no herd serve answered over mDNS/);
});

test('a node that boots after herd serve --nodes auto joins the plan at the next look', async (t) => {
  const lan = await createLan(3, 'join');
  t.teardown(() => lan.close());
  const [server, late, client] = lan.hosts;
  const serve = await serveIn(lan, server, [
    '--host',
    server.ip,
    '--port',
    '8080',
    '--nodes',
    'auto',
    '--interface',
    'eth0',
    '--discovery-timeout',
    '1',
    '--rediscover',
    '2',
    '--no-mdns',
  ]);
  t.is(serve.events.find((e) => e.event === 'model.ready')?.mode, 'local', 'nobody answered yet: in-process');
  const cache = lan.exec(late, 'mktemp', ['-d']).trim();
  lan.spawn(late, process.execPath, [herdBin, 'node', '--interface', 'eth0', '--cache-dir', cache], { cwd: repoRoot });
  // The server looks again every 2 s; the node's start-up takes what the machine makes of it.
  const deadline = Date.now() + 2 * HUNG_MS;
  while (!serve.events.some((e) => e.event === 'model.ready' && e.mode === 'cluster') && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 200));
  const changed = serve.events.find((e) => e.event === 'herd.changed');
  t.truthy(changed, 'the server saw the new node');
  const ready = serve.events.find((e) => e.event === 'model.ready' && e.mode === 'cluster');
  t.truthy(ready, 're-planned over the herd');
  t.regex(String(ready?.plan), /herd-h1@10\.77\.0\.11:7077/);

  const args = ['run', '--temp', '0', '-n', '24', '--json', 'Once upon a time'];
  const [local, remote] = await Promise.all([
    herd(args),
    runIn(lan, client, [...args, '--server', `http://${server.ip}:8080`]),
  ]);
  t.is(remote.code, 0, remote.stderr);
  const b = JSON.parse(remote.stdout) as { tokens: number[]; plan: { node: string }[] };
  t.deepEqual(b.tokens, (JSON.parse(local.stdout) as { tokens: number[] }).tokens);
  t.deepEqual(
    b.plan.map((p) => p.node),
    ['herd-h1'],
  );
});
