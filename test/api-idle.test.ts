// `herd serve --idle-timeout`: a finished request's session, kept for prompt reuse, is closed
// (its KV caches freed) once it has been idle that long, and the server carries on.

import test from 'ava';
import { HUNG_MS, startServe } from './helpers/serve.ts';

const IDLE_S = 2;

interface State {
  sessions: { active: number; idle: number; queued: number; slots: number };
}

test('a kept session is closed after --idle-timeout seconds idle; the next request opens a fresh one', async (t) => {
  const serve = await startServe(['--idle-timeout', String(IDLE_S), '--parallel', '2', '--log-level', 'debug']);
  try {
    const state = async () => (await (await fetch(`${serve.url}/api/state`)).json()) as State;
    const complete = async (prompt: string) => {
      const r = await fetch(`${serve.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt, max_tokens: 4, temperature: 0 }),
      });
      t.is(r.status, 200);
      return (await r.json()) as { usage: { prompt_tokens_details?: { cached_tokens?: number } } };
    };
    const t0 = Date.now();
    await complete('Once upon a time');
    const kept = await state();
    // The session was kept after t0, so a state answered less than IDLE_S after t0 must show it
    // idle. On a machine so loaded that the answer came later, it may be gone already; the
    // session.expired line below still shows it was kept (only an idle session expires).
    if (Date.now() - t0 < IDLE_S * 1000 - 100) t.is(kept.sessions.idle, 1, 'kept for prompt reuse');
    else
      t.log(`/api/state answered ${Date.now() - t0} ms after the request was sent: too late to see the session idle`);
    const expired = await serve.waitFor((e) => e.event === 'session.expired', HUNG_MS);
    t.true(Date.now() - t0 >= IDLE_S * 1000, `not before ${IDLE_S} s`);
    t.is(expired.idleSeconds, IDLE_S);
    t.true(Number(expired.tokens) > 0, "the expired session held the request's tokens");
    t.is((await state()).sessions.idle, 0);
    // The same prompt again: nothing is cached any more, and generation works as before.
    const again = await complete('Once upon a time');
    t.is(again.usage.prompt_tokens_details?.cached_tokens ?? 0, 0);
  } finally {
    await serve.stop();
  }
});
