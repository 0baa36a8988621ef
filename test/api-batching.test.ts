// `herd serve` in-process with continuous batching (engine/batcher.ts): 4 concurrent greedy
// streams share the model's steps, and each returns exactly the text of its request run alone.

import test from 'ava';
import { startServe, type RunningServe } from './helpers/serve.ts';

let serve: RunningServe;

test.before(async () => {
  serve = await startServe(['--nodes', 'local', '--ctx', '1024', '--parallel', '4']);
});

test.after.always(async () => {
  await serve?.stop();
});

const prompts = ['Once upon a time', 'The dog ran to the park and', 'Lily had a red ball. One day', 'Tom was sad'];

interface Completion {
  choices: { text: string; finish_reason: string }[];
}

async function complete(prompt: string): Promise<string> {
  const r = await fetch(`${serve.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: 200, temperature: 0, cache_prompt: false }),
  });
  if (r.status !== 200) throw new Error(`${r.status}: ${await r.text()}`);
  return ((await r.json()) as Completion).choices[0].text;
}

/** A streamed completion: its text, and when its first and last pieces came (performance.now()). */
async function stream(prompt: string): Promise<{ text: string; first: number; last: number }> {
  const r = await fetch(`${serve.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: 200, temperature: 0, cache_prompt: false, stream: true }),
  });
  if (r.status !== 200 || !r.body) throw new Error(`${r.status}: ${await r.text()}`);
  let text = '';
  let buf = '';
  let first = 0;
  let last = 0;
  const decoder = new TextDecoder();
  for await (const bytes of r.body) {
    buf += decoder.decode(bytes as Uint8Array, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, nl).replace(/^data: /, '');
      buf = buf.slice(nl + 2);
      if (event === '[DONE]' || !event.startsWith('{')) continue;
      const piece = (JSON.parse(event) as Completion).choices[0]?.text ?? '';
      if (piece.length === 0) continue;
      text += piece;
      last = performance.now();
      first ||= last;
    }
  }
  return { text, first, last };
}

test('4 concurrent greedy streams each return exactly the text of their request run alone', async (t) => {
  const alone: string[] = [];
  for (const p of prompts) alone.push(await complete(p));
  t.is(new Set(alone).size, prompts.length, 'the prompts lead to different texts');

  // Hold the server while the four are sent, so it finds them all waiting when it resumes.
  serve.child.kill('SIGSTOP');
  const released = new Promise((r) => setTimeout(r, 300)).finally(() => serve.child.kill('SIGCONT'));
  const together = await Promise.all(prompts.map((p) => stream(p)));
  await released;
  t.deepEqual(
    together.map((s) => s.text),
    alone,
  );
  // They ran at once: every stream had its first text before any had its last.
  const firstLast = Math.min(...together.map((s) => s.last));
  for (const s of together) t.true(s.first <= firstLast);
});
