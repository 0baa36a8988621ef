// `herd run --server URL` against a running `herd serve`: the same tokens, text and --json shape
// as a local run.

import test from 'ava';
import { createServer } from 'node:net';
import { herd } from './helpers/herd.ts';
import { startServe, type RunningServe } from './helpers/serve.ts';

let serve: RunningServe;

test.before(async () => {
  serve = await startServe(['--api-key', 'run-server-key']);
});

test.after.always(async () => {
  await serve?.stop();
});

interface RunJson {
  text: string;
  tokens: number[];
  prompt_tokens: number[];
  stop_reason: string;
  seed: number;
  timings: Record<string, number>;
  plan: { node: string; address: string; layers: number[] }[];
}

const env = { ...process.env, HERD_API_KEY: 'run-server-key' };

test('greedy: --server prints the same tokens and text as a local run, in the same --json shape', async (t) => {
  const args = ['run', '--temp', '0', '-n', '64', '--json', 'Once upon a time'];
  const [local, remote] = await Promise.all([herd(args), herd([...args, '--server', serve.url], { env })]);
  t.is(local.code, 0, local.stderr);
  t.is(remote.code, 0, remote.stderr);
  const a = JSON.parse(local.stdout) as RunJson;
  const b = JSON.parse(remote.stdout) as RunJson;
  t.deepEqual(b.tokens, a.tokens);
  t.is(b.text, a.text);
  t.deepEqual(b.prompt_tokens, a.prompt_tokens);
  t.is(b.stop_reason, a.stop_reason);
  for (const k of ['text', 'tokens', 'prompt_tokens', 'stop_reason', 'seed', 'timings', 'plan']) t.true(k in b, k);
  t.deepEqual(Object.keys(b.timings).sort(), Object.keys(a.timings).sort());
  t.deepEqual(
    Object.keys(b).filter((k) => k !== 'server'),
    Object.keys(a),
    'the same keys in the same order',
  );
  t.deepEqual(
    b.plan.map((p) => p.layers),
    [[0, 5]],
  );
});

test('plain output: stdout is the continuation, as a local run prints it', async (t) => {
  const args = ['run', '--temp', '0', '-n', '40', 'The little dog'];
  const [local, remote] = await Promise.all([
    herd(args),
    herd([...args, '--server', serve.url.replace('http://', '')], { env }),
  ]);
  t.is(remote.code, 0, remote.stderr);
  t.is(remote.stdout, local.stdout);
  t.regex(remote.stderr, /server http:\/\/127\.0\.0\.1:\d+.*decode 40 tokens/);
});

test('a seed samples the same tokens on the server as locally; stop strings apply', async (t) => {
  const args = ['run', '--seed', '1234', '--temp', '0.9', '-n', '40', '--json', '--stop', 'Lily', 'Once upon a time'];
  const [local, remote] = await Promise.all([herd(args), herd([...args, '--server', serve.url], { env })]);
  const a = JSON.parse(local.stdout) as RunJson;
  const b = JSON.parse(remote.stdout) as RunJson;
  t.deepEqual(b.tokens, a.tokens);
  t.is(b.text, a.text);
  t.is(b.seed, 1234);
  t.is(b.stop_reason, a.stop_reason);
});

test('server errors become one line on stderr and a non-zero exit', async (t) => {
  const noKey = await herd(['run', '-n', '4', '--server', serve.url, 'x'], {
    env: { ...process.env, HERD_API_KEY: '' },
  });
  t.is(noKey.code, 1);
  t.regex(noKey.stderr, /^herd: error: server: .*API key.*\(401\)\n$/);
  const wrongModel = await herd(['run', '-n', '4', '--server', serve.url, '--model', '/models/llama-7b.gguf', 'x'], {
    env,
  });
  t.is(wrongModel.code, 1);
  t.regex(wrongModel.stderr, /llama-7b.*does not exist.*\(404\)/);
  const closed = await freePort();
  const nobody = await herd(['run', '-n', '4', '--server', `http://127.0.0.1:${closed}`, 'x'], { env });
  t.is(nobody.code, 1);
  t.regex(nobody.stderr, new RegExp(`cannot reach http://127\\.0\\.0\\.1:${closed}: ECONNREFUSED`));
  const bad = await herd(['run', '--server', 'ftp://x', 'x']);
  t.is(bad.code, 2);
});

/** A loopback port nothing listens on (bound, then closed). */
function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}
