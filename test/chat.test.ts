// `herd chat` as a person uses it: in a pseudo-terminal (python3's pty module), and piped.

import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { herdBin, repoRoot } from './helpers/paths.ts';
import { startServe } from './helpers/serve.ts';

const ptyDrive = fileURLToPath(new URL('./helpers/pty-drive.py', import.meta.url));

interface Step {
  send?: string;
  prompts?: number;
  text?: string;
  grow?: number;
  timeout?: number;
}

function drive(args: readonly string[], steps: Step[]): Promise<{ ok: boolean[]; status: number | null; out: string }> {
  // Each step waits for its output, so its timeout only bounds a hung chat (the driver's default
  // of 30 s is a start-up and model load away from a slow, loaded machine).
  const spec = JSON.stringify({
    cmd: [process.execPath, herdBin, ...args],
    cwd: repoRoot,
    steps: steps.map((s) => ({ timeout: 60, ...s })),
  });
  return new Promise((resolve, reject) => {
    execFile('python3', [ptyDrive, spec], { maxBuffer: 16 << 20, timeout: 300_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`pty driver: ${err.message}\n${stderr}`));
      else resolve(JSON.parse(stdout) as { ok: boolean[]; status: number | null; out: string });
    });
  });
}

/** Runs `herd chat ARGS` with `input` on a pipe; resolves with stdout and the exit code. */
function piped(
  args: readonly string[],
  input: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [herdBin, 'chat', ...args], {
      cwd: repoRoot,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input);
  });
}

/** The replies in piped output: "> reply1\n> reply2\n> ". */
function pipedReplies(stdout: string): string[] {
  return stdout
    .replace(/^> /, '')
    .split('\n> ')
    .map((r) => r.replace(/\n$/, ''))
    .filter((r) => r !== '');
}

/** Terminal output without escape sequences and with \n line ends. */
function plain(out: string): string {
  return out
    .replace(new RegExp(String.raw`\u001b\[[0-9;?]*[A-Za-z]`, 'g'), '')
    .replace(/\r\n/g, '\n')
    .replace(/\r/g, '');
}

/** The reply after the echoed line `said` in terminal output. */
function ttyReply(out: string, said: string): string {
  const from = out.indexOf(`> ${said}\n`);
  if (from < 0) throw new Error(`"${said}" not echoed in:\n${out}`);
  const start = from + said.length + 3;
  const end = out.indexOf('\n> ', start);
  return out.slice(start, end < 0 ? undefined : end);
}

const args = ['chat', '--temp', '0', '-n', '60', '--system', 'You are a storyteller.'];

test('in a terminal: two turns, /reset, /exit; the replies are those of the same turns on a pipe', async (t) => {
  const r = await drive(args, [
    { prompts: 1 },
    { send: 'Hello there\r', prompts: 2 },
    { send: 'Tell me more\r', prompts: 3 },
    { send: '/reset\r', text: '(conversation cleared)' },
    { prompts: 4 },
    { send: '/exit\r' },
  ]);
  t.deepEqual(
    r.ok,
    r.ok.map(() => true),
    plain(r.out),
  );
  t.is(r.status, 0, plain(r.out));
  const out = plain(r.out);
  const first = ttyReply(out, 'Hello there');
  const second = ttyReply(out, 'Tell me more');
  t.true(first.length > 0 && second.length > 0);
  t.not(first, second, 'the second turn sees the first');

  // The terminal changes nothing but the keys.
  const p = await piped(args.slice(1), 'Hello there\nTell me more\n');
  t.is(p.code, 0, p.stderr);
  t.deepEqual(pipedReplies(p.stdout), [first, second]);
});

test('in a terminal: Ctrl-C stops a long reply and keeps the session; at the prompt it only says how to leave', async (t) => {
  // A long context and token limit: the reply is still being written when Ctrl-C arrives.
  const r = await drive(
    ['chat', '--temp', '0', '-n', '3000', '--ctx', '4096', '--timings'],
    [
      { prompts: 1 },
      { send: 'Tell me a long story\r', grow: 40 },
      { send: '\u0003', text: '[stopped]' },
      { prompts: 2 },
      { send: 'And then?\r', grow: 40 },
      { send: '\u0003', text: '[stopped]' },
      { prompts: 3 },
      { send: '\u0003', text: '/exit or Ctrl-D to leave' },
      { prompts: 4 },
      { send: '/exit\r' },
    ],
  );
  t.deepEqual(
    r.ok,
    r.ok.map(() => true),
    plain(r.out),
  );
  t.is(r.status, 0, plain(r.out));
  const out = plain(r.out);
  t.regex(ttyReply(out, 'Tell me a long story'), / \[stopped\]/);
  // The stopped turn left the session whole: the next turn goes on from it.
  const turns = [...out.matchAll(/^herd: prompt (\d+) tokens \((\d+) reused, (\d+) computed\)/gm)].map((m) => ({
    prompt: Number(m[1]),
    reused: Number(m[2]),
  }));
  t.is(turns.length, 2, out);
  t.true(turns[1].reused > turns[0].prompt, JSON.stringify(turns));
});

test('--server: the same conversation through herd serve gives the replies the API gives', async (t) => {
  const serve = await startServe(['--ctx', '1024']);
  try {
    const system = 'You are a storyteller.';
    const p = await piped(
      ['--server', serve.url, '--temp', '0', '-n', '40', '--system', system],
      'Hello there\nTell me more\n/exit\n',
    );
    t.is(p.code, 0, p.stderr);
    const replies = pipedReplies(p.stdout);
    t.is(replies.length, 2, p.stdout);

    const messages: { role: string; content: string }[] = [{ role: 'system', content: system }];
    for (const [i, said] of ['Hello there', 'Tell me more'].entries()) {
      messages.push({ role: 'user', content: said });
      const r = await fetch(`${serve.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ messages, max_tokens: 40, temperature: 0 }),
      });
      const reply = ((await r.json()) as { choices: { message: { content: string } }[] }).choices[0].message.content;
      t.is(replies[i], reply, `turn ${i + 1}`);
      messages.push({ role: 'assistant', content: reply });
    }
    // and a local chat of the same conversation agrees
    const local = await piped(
      ['--temp', '0', '-n', '40', '--ctx', '1024', '--system', system],
      'Hello there\nTell me more\n',
    );
    t.deepEqual(pipedReplies(local.stdout), replies);
  } finally {
    await serve.stop();
  }
});

test("one session across turns: the second turn computes only what follows it, /reset starts fresh; the replies are cold sessions'", async (t) => {
  const system = 'You are a storyteller.';
  const p = await piped(
    ['--temp', '0', '-n', '40', '--ctx', '1024', '--system', system, '--timings'],
    'Hello there\nTell me more\n/reset\nHello there\n',
  );
  t.is(p.code, 0, p.stderr);
  const turns = [...p.stderr.matchAll(/^herd: prompt (\d+) tokens \((\d+) reused, (\d+) computed\)/gm)].map((m) => ({
    prompt: Number(m[1]),
    reused: Number(m[2]),
    computed: Number(m[3]),
  }));
  t.is(turns.length, 3, p.stderr);
  const [one, two, afterReset] = turns;
  t.is(one.reused, 0);
  // The session holds the first prompt and the reply fed back: only the rest is computed.
  t.true(two.reused >= one.prompt, `turn 2 reused ${two.reused}, turn 1's prompt was ${one.prompt}`);
  t.is(two.reused + two.computed, two.prompt);
  t.true(two.computed <= two.prompt - one.prompt, `turn 2 computed ${two.computed} of ${two.prompt}`);
  t.deepEqual(afterReset, { ...one }, '/reset: a fresh session computes the whole first prompt again');

  // Each turn as a fresh session (no prompt cache) on a server gives the same replies.
  const replies = pipedReplies(p.stdout).filter((r) => r !== '(conversation cleared)');
  t.is(replies.length, 3, p.stdout);
  t.is(replies[2], replies[0]);
  const serve = await startServe(['--ctx', '1024']);
  try {
    const messages: { role: string; content: string }[] = [{ role: 'system', content: system }];
    for (const [i, said] of ['Hello there', 'Tell me more'].entries()) {
      messages.push({ role: 'user', content: said });
      const r = await fetch(`${serve.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ messages, max_tokens: 40, temperature: 0, cache_prompt: false }),
      });
      const body = (await r.json()) as {
        choices: { message: { content: string } }[];
        usage: { prompt_tokens_details: { cached_tokens: number } };
      };
      t.is(body.usage.prompt_tokens_details.cached_tokens, 0);
      t.is(replies[i], body.choices[0].message.content, `turn ${i + 1}`);
      messages.push({ role: 'assistant', content: body.choices[0].message.content });
    }
  } finally {
    await serve.stop();
  }
});
