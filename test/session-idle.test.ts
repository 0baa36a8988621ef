// A node drops a session no message reached for --session-idle seconds (issue 14: node sessions
// had no idle limit), and a coordinator that kept it for prompt reuse carries on: the next request
// gets the same text.

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startNode, type RunningNode, loopbackNodeArgs, nodeSessions } from './helpers/herd-proc.ts';
import { HUNG_MS, startServe, type RunningServe } from './helpers/serve.ts';

const dir = mkdtempSync(join(tmpdir(), 'herd-session-idle-'));
const nodes: RunningNode[] = [];
let serve: RunningServe;

test.before(async () => {
  for (const name of ['alpha', 'beta'])
    nodes.push(await startNode([...loopbackNodeArgs(join(dir, name)), '--name', name, '--session-idle', '1']));
  const peers = nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
  // The server keeps finished sessions idle far longer than the nodes do.
  serve = await startServe(['--nodes', peers, '--stages', '2', '--ctx', '256', '--idle-timeout', '600'], {
    env: { ...process.env, HERD_CACHE_DIR: join(dir, 'serve') },
  });
});

test.after.always(async () => {
  await serve?.stop();
  for (const n of nodes) {
    n.child.kill('SIGTERM');
    await n.exited();
  }
  rmSync(dir, { recursive: true, force: true });
});

async function complete(prompt: string): Promise<string> {
  const r = await fetch(`${serve.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: 24, temperature: 0 }),
  });
  if (r.status !== 200) throw new Error(`${r.status}: ${await r.text()}`);
  return ((await r.json()) as { choices: { text: string }[] }).choices[0].text;
}

test('an idle session is dropped by the nodes after --session-idle, and the next request still gets its text', async (t) => {
  const first = await complete('Once upon a time');
  t.is(await nodeSessions(nodes), 2, 'the finished request stays open for prompt reuse, one stage session per node');
  const deadline = Date.now() + HUNG_MS;
  while ((await nodeSessions(nodes)) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  t.is(await nodeSessions(nodes), 0, 'both nodes dropped it');
  t.true(nodes.some((n) => n.events.some((e) => e.event === 'session.idle')));
  t.is(await complete('Once upon a time'), first);
});
