// `herd serve --idle-timeout`: a finished request's session, kept for prompt reuse, is closed
// (its KV caches freed) once it has been idle that long, and the server carries on.

import test from 'ava';
import { startServe } from './helpers/serve.ts';

interface State {
  sessions: { active: number; idle: number; queued: number; slots: number };
}

test('a kept session is closed after --idle-timeout seconds idle; the next request opens a fresh one', async (t) => {
  const serve = await startServe(['--idle-timeout', '1', '--parallel', '2', '--log-level', 'debug']);
  try {
    const state = async () => (await (await fetch(`${serve.url}/api/state`)).json()) as State;
    const complete = async (prompt: string) => {
      const r = await fetch(`${serve.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt, max_tokens: 4, temperature: 0 }) });
      t.is(r.status, 200);
      return (await r.json()) as { usage: { prompt_tokens_details?: { cached_tokens?: number } } };
    };
    const t0 = Date.now();
    await complete('Once upon a time');
    const kept = await state();
    t.is(kept.sessions.idle, 1, 'kept for prompt reuse');
    const expired = await serve.waitFor((e) => e.event === 'session.expired', 10_000);
    t.true(Date.now() - t0 >= 1000, 'not before a second');
    t.is(expired.idleSeconds, 1);
    t.is((await state()).sessions.idle, 0);
    // The same prompt again: nothing is cached any more, and generation works as before.
    const again = await complete('Once upon a time');
    t.is(again.usage.prompt_tokens_details?.cached_tokens ?? 0, 0);
  } finally {
    await serve.stop();
  }
});
