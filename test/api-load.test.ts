// Load on `herd serve` (issue 12, scope 5): a real server on loopback with the bundled
// stories260K and --parallel 8 takes 64 concurrent streaming requests at once — completions
// and chat, each with its own max_tokens, greedy and seeded. Every one completes with the right
// token count (usage, the final chunk's token ids and the SSE chunks), none is lost, none errs,
// and each gets exactly what the same request gets run alone (exactness under batching). Time
// to first token and inter-chunk latency are logged, never asserted.

import test from 'ava';
import { parsePrometheus } from './helpers/prometheus.ts';
import { eventually, HUNG_MS, startServe, type RunningServe } from './helpers/serve.ts';
import {
  interChunkMs,
  quantile,
  streamRequest,
  ttftMs,
  type Endpoint,
  type StreamResult,
} from './helpers/sse-client.ts';

const PARALLEL = 8;
const REQUESTS = 64;

let serve: RunningServe;

test.before(async () => {
  // The line holds every request: none is refused.
  serve = await startServe([
    '--nodes',
    'local',
    '--ctx',
    '512',
    '--parallel',
    String(PARALLEL),
    '--queue',
    String(REQUESTS),
  ]);
});

test.after.always(async () => {
  serve?.child.kill('SIGCONT');
  await serve?.stop();
});

const openings = [
  'Once upon a time',
  'The dog ran to the park and',
  'Lily had a red ball. One day',
  'Tom was sad',
  'There was a big tree in the garden. A little bird',
  'Mom said',
  'The sun was hot and the children wanted to',
  'Sam and his friend found a box',
];
const names = ['', ' Anna', ' the cat', ' a boy named Ben', ' Spot', ' the old man', ' Sue and Max'];

interface LoadRequest {
  readonly endpoint: Endpoint;
  readonly maxTokens: number;
  readonly body: Record<string, unknown>;
}

/** The i-th request: a quarter chat, a fifth seeded, max_tokens 4..64, prompts of different lengths. */
function request(i: number): LoadRequest {
  const endpoint: Endpoint = i % 4 === 3 ? 'chat' : 'completions';
  const maxTokens = 4 + ((i * 37) % 61);
  const text = openings[i % openings.length] + names[i % names.length];
  const sampling = i % 5 === 4 ? { temperature: 0.8, seed: 1000 + i } : { temperature: 0 };
  // A fresh session each: kept sessions' prompt reuse may differ from a fresh prefill in the last bit.
  const common = { max_tokens: maxTokens, cache_prompt: false, ...sampling };
  const body =
    endpoint === 'chat' ? { ...common, messages: [{ role: 'user', content: text }] } : { ...common, prompt: text };
  return { endpoint, maxTokens, body };
}

/** Every way a streamed answer can be incomplete or wrong on its own; empty when it is whole. */
function problems(r: StreamResult, req: LoadRequest): string[] {
  const out: string[] = [];
  if (r.status !== 200) out.push(`status ${r.status}: ${JSON.stringify(r.error)}`);
  if (r.error !== undefined) out.push(`error event: ${JSON.stringify(r.error)}`);
  if (!r.done) out.push('no [DONE]');
  if (!r.usage) out.push('no usage chunk');
  if (!r.herd) out.push('no final chunk with herd.tokens');
  const n = r.herd?.tokens.length ?? -1;
  if (r.usage && r.usage.completion_tokens !== n) out.push(`usage says ${r.usage.completion_tokens} tokens, got ${n}`);
  if (r.finish === 'length' && n !== req.maxTokens) out.push(`finish length after ${n} of ${req.maxTokens} tokens`);
  if (r.finish !== 'length' && r.finish !== 'stop') out.push(`finish_reason ${r.finish}`);
  if (n > req.maxTokens) out.push(`${n} tokens past max_tokens ${req.maxTokens}`);
  // Each token of these requests brings text of its own (no partial UTF-8, no held-back stop
  // string prefix, checked on the runs alone too): one SSE text chunk per token.
  if (r.chunks.length !== n) out.push(`${r.chunks.length} text chunks for ${n} tokens`);
  return out;
}

const ms = (x: number) => `${x.toFixed(1)} ms`;

test.serial('64 concurrent streams all complete, each with exactly its text and tokens run alone', async (t) => {
  t.timeout(10 * 60_000);
  const reqs = Array.from({ length: REQUESTS }, (_, i) => request(i));
  // Bounds a hung server only: the whole run takes seconds.
  const deadline = () => AbortSignal.timeout(5 * HUNG_MS);

  const alone: StreamResult[] = [];
  for (const req of reqs) alone.push(await streamRequest(serve.url, req.endpoint, req.body, deadline()));
  for (const [i, r] of alone.entries()) t.deepEqual(problems(r, reqs[i]), [], `request ${i} alone`);
  t.true(new Set(alone.map((r) => r.chunks.map((c) => c.text).join(''))).size > REQUESTS / 2, 'varied texts');
  t.true(
    alone.some((r) => r.finish === 'length'),
    'some requests end at their max_tokens',
  );

  // Hold the server while all 64 are sent, so it finds them all at once: 8 run, 56 wait in line.
  serve.child.kill('SIGSTOP');
  const released = new Promise((r) => setTimeout(r, 500)).finally(() => serve.child.kill('SIGCONT'));
  const together = await Promise.all(reqs.map((req) => streamRequest(serve.url, req.endpoint, req.body, deadline())));
  await released;

  for (const [i, r] of together.entries()) {
    t.deepEqual(problems(r, reqs[i]), [], `request ${i} under load`);
    t.deepEqual(r.herd?.tokens, alone[i].herd?.tokens, `request ${i}: the tokens it gets alone`);
    t.deepEqual(
      r.chunks.map((c) => c.text),
      alone[i].chunks.map((c) => c.text),
      `request ${i}: the SSE text chunks it gets alone`,
    );
    t.is(r.finish, alone[i].finish, `request ${i}: finish_reason`);
  }

  // Several streams were under way at once: the most text chunks' [first, last] spans overlapping.
  const spans = together.filter((r) => r.chunks.length > 0).map((r) => [r.chunks[0].at, r.chunks.at(-1)!.at]);
  const overlap = Math.max(...spans.map(([s]) => spans.filter(([a, b]) => a <= s && s <= b).length));
  t.true(overlap > 1, `streams overlapped (at most ${overlap} at once)`);

  const health = (await (await fetch(`${serve.url}/health`)).json()) as {
    sessions: { active: number; queued: number };
  };
  t.deepEqual([health.sessions.active, health.sessions.queued], [0, 0], 'nothing left running or waiting');
  t.false(
    serve.events.some((e) => e.level === 'error'),
    'no error logged',
  );

  const ttft = together.map((r) => ttftMs(r)).filter((x): x is number => x !== undefined);
  const itl = together.flatMap((r) => interChunkMs(r));
  const tokens = together.reduce((s, r) => s + (r.usage?.completion_tokens ?? 0), 0);
  const wall = Math.max(...together.map((r) => r.chunks.at(-1)?.at ?? 0)) - Math.min(...together.map((r) => r.sentAt));
  t.log(
    `${REQUESTS} streams, --parallel ${PARALLEL}: ${tokens} tokens in ${ms(wall)} (server held 500 ms at the start)`,
  );
  t.log(`time to first token (queue wait included): p50 ${ms(quantile(ttft, 0.5))}, p99 ${ms(quantile(ttft, 0.99))}`);
  t.log(`inter-chunk latency: p50 ${ms(quantile(itl, 0.5))}, p99 ${ms(quantile(itl, 0.99))}; ${overlap} at once`);
});

/** Streams with these bodies all sent while the server is held, so it finds them all at once. */
async function burst(
  s: RunningServe,
  bodies: readonly Record<string, unknown>[],
  signals: readonly AbortSignal[],
): Promise<(StreamResult | undefined)[]> {
  s.child.kill('SIGSTOP');
  const released = new Promise((r) => setTimeout(r, 500)).finally(() => s.child.kill('SIGCONT'));
  const out = await Promise.all(
    bodies.map((b, i) =>
      streamRequest(s.url, 'completions', b, signals[i]).catch((e: unknown) => {
        if (!signals[i].aborted) throw e;
        return undefined;
      }),
    ),
  );
  await released;
  return out;
}

test.serial(
  'soak: 16× more requests than slots wait in line; clients leaving the line do not disturb the rest',
  async (t) => {
    t.timeout(10 * 60_000);
    const small = await startServe(['--nodes', 'local', '--ctx', '512', '--parallel', '2', '--queue', '64']);
    try {
      const n = 32;
      const reqs: LoadRequest[] = Array.from({ length: n }, (_, i) => ({
        endpoint: 'completions',
        body: { prompt: openings[i % openings.length], max_tokens: 16, temperature: 0, cache_prompt: false },
        maxTokens: 16,
      }));
      // The last 4 sent give up once the server reports a line: they leave it (or their stream).
      const leavers = new Set([28, 29, 30, 31]);
      const controllers = reqs.map(() => new AbortController());
      const signals = controllers.map((c) => AbortSignal.any([c.signal, AbortSignal.timeout(5 * HUNG_MS)]));
      const queued = eventually(async () => {
        const h = (await (await fetch(`${small.url}/health`)).json()) as { sessions: { queued: number } };
        return h.sessions.queued > 0;
      }).then(() => leavers.forEach((i) => controllers[i].abort()));
      const results = await burst(
        small,
        reqs.map((r) => r.body),
        signals,
      );
      await queued;
      for (const [i, r] of results.entries()) {
        if (leavers.has(i) && r === undefined) continue; // it left before its answer ended
        t.deepEqual(r ? problems(r, reqs[i]) : ['no answer'], [], `request ${i}`);
      }
      const left = results.filter((r, i) => leavers.has(i) && r === undefined).length;
      t.log(`${left} of ${leavers.size} left before their end`);
      await eventually(async () => {
        const h = (await (await fetch(`${small.url}/health`)).json()) as {
          sessions: { active: number; queued: number };
        };
        return h.sessions.active === 0 && h.sessions.queued === 0;
      });
      t.false(
        small.events.some((e) => e.level === 'error'),
        'no error logged',
      );
      // The server counted each leaver as cancelled and every other request as finished.
      const outcomes = parsePrometheus(await (await fetch(`${small.url}/metrics`)).text())
        .samples.filter((x) => x.name === 'herd_generations_total' && x.value !== 0)
        .map((x) => [x.labels.outcome, x.value]);
      t.deepEqual(Object.fromEntries(outcomes), { length: n - left, ...(left > 0 ? { cancelled: left } : {}) });
    } finally {
      small.child.kill('SIGCONT');
      await small.stop();
    }
  },
);

// The wait-queue cap (`herd serve --queue N`): the excess is refused at once with a 429, an
// OpenAI error object and Retry-After, and what was taken in still completes whole.
const QUEUE = 4;

test.serial('overload: requests beyond --queue are refused with 429 and Retry-After; the rest complete', async (t) => {
  t.timeout(10 * 60_000);
  const small = await startServe(['--nodes', 'local', '--ctx', '512', '--parallel', '2', '--queue', String(QUEUE)]);
  try {
    const n = 24;
    const reqs: LoadRequest[] = Array.from({ length: n }, (_, i) => ({
      endpoint: 'completions',
      body: { prompt: openings[i % openings.length], max_tokens: 32, temperature: 0, cache_prompt: false },
      maxTokens: 32,
    }));
    const results = await burst(
      small,
      reqs.map((r) => r.body),
      reqs.map(() => AbortSignal.timeout(5 * HUNG_MS)),
    );
    const served = results.filter((r) => r?.status === 200);
    const refused = results.filter((r) => r !== undefined && r.status !== 200) as StreamResult[];
    t.log(`${served.length} served, ${refused.length} refused`);
    // All arrive at once: 2 run, 4 wait, the others find the line full.
    t.true(served.length >= 2 + QUEUE, 'the slots and the line were filled');
    t.true(refused.length > 0, 'the excess was refused');
    for (const [i, r] of results.entries())
      if (r?.status === 200) t.deepEqual(problems(r, reqs[i]), [], `request ${i}`);
    for (const r of refused) {
      t.is(r.status, 429);
      t.regex(r.headers.get('retry-after') ?? '', /^[1-9]\d*$/, 'Retry-After in whole seconds');
      const e = r.error as { message?: unknown; type?: unknown };
      t.true(typeof e.message === 'string' && e.message.length > 0, 'an OpenAI error object with a message');
    }
  } finally {
    small.child.kill('SIGCONT');
    await small.stop();
  }
});
