// `herd serve` driven by the official openai npm client on loopback, with the bundled
// stories260K model: greedy text as `herd run`, streaming, concurrency, cancellation, prompt
// reuse, errors.

import test from 'ava';
import OpenAI from 'openai';
import { herd } from './helpers/herd.ts';
import { parsePrometheus, sum } from './helpers/prometheus.ts';
import { eventually, HUNG_MS, startServe, type RunningServe } from './helpers/serve.ts';

const KEY = 'test-key-0123456789';
let serve: RunningServe;
let client: OpenAI;

test.before(async () => {
  // A long context so a stream can be cancelled long before it would end by itself.
  serve = await startServe(['--api-key', KEY, '--ctx', '1024', '--parallel', '3', '--log-level', 'debug']);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: KEY, maxRetries: 0 });
});

test.after.always(async () => {
  await serve?.stop();
});

interface State {
  sessions: { active: number; idle: number; queued: number; slots: number };
  prompt_tokens: number;
  prompt_tokens_reused: number;
}

const auth = { authorization: `Bearer ${KEY}` };

async function state(): Promise<State> {
  return (await fetch(`${serve.url}/api/state`, { headers: auth })).json() as Promise<State>;
}

test.serial('a greedy completion is the text `herd run --temp 0` prints', async (t) => {
  const [run, completion] = await Promise.all([
    herd(['run', '--temp', '0', '-n', '64', '--json', 'Once upon a time']),
    client.completions.create({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 64, temperature: 0 }),
  ]);
  t.is(run.code, 0, run.stderr);
  const local = JSON.parse(run.stdout) as { text: string; tokens: number[]; prompt_tokens: number[] };
  t.is(completion.choices[0].text, local.text);
  t.is(completion.choices[0].finish_reason, 'length');
  // The server's first request: nothing to reuse.
  t.deepEqual(completion.usage, {
    prompt_tokens: 5,
    completion_tokens: 64,
    total_tokens: 69,
    prompt_tokens_details: { cached_tokens: 0 },
  });
  const ext = (completion as unknown as { herd: { tokens: number[]; prompt_tokens: number[] } }).herd;
  t.deepEqual(ext.tokens, local.tokens);
  t.deepEqual(ext.prompt_tokens, local.prompt_tokens);
});

test.serial('a streamed chat arrives in several chunks and ends like the same request unstreamed', async (t) => {
  const messages = [
    { role: 'system' as const, content: 'You tell short stories.' },
    { role: 'user' as const, content: 'Tell me about a cat.' },
  ];
  const whole = await client.chat.completions.create({
    model: 'stories260K',
    messages,
    max_tokens: 40,
    temperature: 0,
  });
  const stream = await client.chat.completions.create({
    model: 'stories260K',
    messages,
    max_tokens: 40,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  const pieces: string[] = [];
  let finish: string | null = null;
  let usage: OpenAI.CompletionUsage | undefined | null;
  let role: string | undefined;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const c = chunk.choices[0];
    if (!c) continue;
    role ??= c.delta.role;
    if (c.delta.content) pieces.push(c.delta.content);
    if (c.finish_reason) finish = c.finish_reason;
  }
  t.true(pieces.length >= 5, `${pieces.length} content chunks`);
  t.is(role, 'assistant');
  t.is(pieces.join(''), whole.choices[0].message.content ?? '');
  t.is(finish, whole.choices[0].finish_reason);
  // The same prompt again: the kept session of the first holds all of it but the last token,
  // which is stepped again for its logits.
  t.deepEqual(usage, {
    ...whole.usage,
    prompt_tokens_details: { cached_tokens: (whole.usage?.prompt_tokens ?? 0) - 1 },
  });
  t.is(whole.object, 'chat.completion');
  t.is(whole.choices[0].message.role, 'assistant');
});

test.serial('the SSE stream ends with data: [DONE]', async (t) => {
  const r = await fetch(`${serve.url}/v1/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 8, temperature: 0, stream: true }),
  });
  t.is(r.status, 200);
  t.regex(r.headers.get('content-type') ?? '', /^text\/event-stream/);
  const body = await r.text();
  const events = body.split('\n\n').filter((e) => e.length > 0);
  t.true(events.every((e) => e.startsWith('data: ')));
  t.is(events[events.length - 1], 'data: [DONE]');
  const text = events
    .slice(0, -1)
    .map((e) => (JSON.parse(e.slice(6)) as { choices: { text: string }[] }).choices[0].text)
    .join('');
  const whole = await client.completions.create({
    model: 'stories260K',
    prompt: 'Once upon a time',
    max_tokens: 8,
    temperature: 0,
  });
  t.is(text, whole.choices[0].text);
});

test.serial('8 concurrent streamed chats all complete, each equal to its own sequential greedy result', async (t) => {
  const topics = ['a dog', 'the sea', 'a red ball', 'a tree', 'Lily', 'a small bird', 'a cake', 'a big truck'];
  const ask = (topic: string) => [{ role: 'user' as const, content: `Tell me a story about ${topic}.` }];
  const sequential: string[] = [];
  for (const topic of topics) {
    const r = await client.chat.completions.create({
      model: 'stories260K',
      messages: ask(topic),
      max_tokens: 128,
      temperature: 0,
    });
    sequential.push(r.choices[0].message.content ?? '');
  }
  t.is(new Set(sequential).size, topics.length, 'the prompts lead to different texts');

  let maxQueued = 0;
  let polling = true;
  // However fast the server generates, the eight must arrive together: hold the server
  // (SIGSTOP) while they are sent, so that it finds them all waiting when it resumes and the
  // queue lasts at least one whole generation (three interleaved: 3 × 128 steps), not a race
  // against the requests' arrival.
  serve.child.kill('SIGSTOP');
  let poller: Promise<void> = Promise.resolve();
  const pending = (async () => {
    try {
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      serve.child.kill('SIGCONT');
    }
    poller = (async () => {
      while (polling) {
        maxQueued = Math.max(maxQueued, (await state()).sessions.queued);
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
  })();
  const concurrent = await Promise.all(
    topics.map(async (topic) => {
      const stream = await client.chat.completions.create({
        model: 'stories260K',
        messages: ask(topic),
        max_tokens: 128,
        temperature: 0,
        stream: true,
      });
      let text = '';
      let chunks = 0;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta.content ?? '';
        chunks++;
      }
      return { text, chunks };
    }),
  );
  await pending;
  polling = false;
  await poller;
  t.deepEqual(
    concurrent.map((c) => c.text),
    sequential,
  );
  for (const c of concurrent) t.true(c.chunks > 3);
  // 8 requests on 3 slots: some waited their turn.
  t.true(maxQueued > 0, `max queued ${maxQueued}`);
  const s = await state();
  t.is(s.sessions.active, 0);
  t.is(s.sessions.queued, 0);
  // Finished sessions stay open, idle, for prompt reuse: never more than the slots.
  t.true(s.sessions.idle >= 1 && s.sessions.idle <= s.sessions.slots, `idle ${s.sessions.idle}`);
});

test.serial('a cancelled stream frees its session, and the server keeps serving', async (t) => {
  const ac = new AbortController();
  const stream = await client.chat.completions.create(
    {
      model: 'stories260K',
      messages: [{ role: 'user', content: 'Tell me a long story.' }],
      max_tokens: 900,
      temperature: 0,
      stream: true,
    },
    { signal: ac.signal },
  );
  let chunks = 0;
  try {
    for await (const _ of stream) {
      if (++chunks === 3) {
        t.is((await state()).sessions.active, 1, 'the stream holds a session while it runs');
        ac.abort();
        break;
      }
    }
  } catch (e) {
    // the client reports the abort as an error, or just ends the iteration
    t.true(e instanceof Error);
  }
  t.is(chunks, 3);
  await eventually(async () => (await state()).sessions.active === 0, HUNG_MS, 'the session to be freed');
  const cancelled = await serve.waitFor((e) => e.event === 'request.cancelled', HUNG_MS);
  t.true(Number(cancelled.completionTokens) < 900, `generated ${String(cancelled.completionTokens)} of 900`);
  const metrics = await (await fetch(`${serve.url}/metrics`, { headers: auth })).text();
  t.regex(metrics, /^herd_generations_total\{endpoint="chat",outcome="cancelled"\} 1$/m);
  t.regex(metrics, /^herd_sessions_active 0$/m);
  // A cancel ends between two steps: the session is whole, so it is kept idle like any other
  // (holding its slot only until a request waits for one).
  const s = await state();
  t.true(s.sessions.idle >= 1 && s.sessions.idle <= s.sessions.slots, `idle ${s.sessions.idle}`);
  t.regex(metrics, new RegExp(`^herd_sessions_idle ${s.sessions.idle}$`, 'm'));
  const after = await client.completions.create({
    model: 'stories260K',
    prompt: 'Once upon a time',
    max_tokens: 4,
    temperature: 0,
  });
  t.is(after.usage?.completion_tokens, 4);
});

test.serial(
  "a chat that extends the previous one reuses its session: only the new tokens are computed, the text is a cold session's",
  async (t) => {
    const reused = async () =>
      sum(
        parsePrometheus(await (await fetch(`${serve.url}/metrics`, { headers: auth })).text()).samples,
        'herd_prompt_tokens_reused_total',
      );
    const messages: OpenAI.ChatCompletionMessageParam[] = [
      { role: 'system', content: 'You are a storyteller who likes owls.' },
      { role: 'user', content: 'Tell me about an owl in the forest.' },
    ];
    const first = await client.chat.completions.create({
      model: 'stories260K',
      messages,
      max_tokens: 32,
      temperature: 0,
    });
    messages.push(
      { role: 'assistant', content: first.choices[0].message.content ?? '' },
      { role: 'user', content: 'What did the owl eat?' },
    );

    const before = await reused();
    const second = await client.chat.completions.create({
      model: 'stories260K',
      messages,
      max_tokens: 32,
      temperature: 0,
    });
    const after = await reused();
    const cached = second.usage?.prompt_tokens_details?.cached_tokens ?? 0;
    // At least the first request's whole prompt was already in its kept session.
    t.true(
      cached >= (first.usage?.prompt_tokens ?? Infinity),
      `reused ${cached} of ${second.usage?.prompt_tokens}, the first prompt was ${first.usage?.prompt_tokens}`,
    );
    t.true(cached < (second.usage?.prompt_tokens ?? 0));
    t.is(after - before, cached, 'herd_prompt_tokens_reused_total counts them');
    const done = await serve.waitFor((e) => e.event === 'request.done' && e.id === second.id, HUNG_MS);
    t.is(done.promptReused, cached);

    // The same conversation without the cache: a fresh session computes the whole prompt.
    const cold = await client.chat.completions.create({
      model: 'stories260K',
      messages,
      max_tokens: 32,
      temperature: 0,
      cache_prompt: false,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    t.is(cold.usage?.prompt_tokens_details?.cached_tokens, 0);
    t.is(await reused(), after);
    t.is(second.choices[0].message.content, cold.choices[0].message.content);
    t.deepEqual(
      (second as unknown as { herd: { tokens: number[] } }).herd.tokens,
      (cold as unknown as { herd: { tokens: number[] } }).herd.tokens,
    );
  },
);

test.serial('a seeded sampled request gives the same text on a kept session as on a fresh one', async (t) => {
  const body = {
    model: 'stories260K',
    prompt: 'Once upon a time, in a big forest,',
    max_tokens: 32,
    temperature: 0.9,
    seed: 1234,
  };
  const a = await client.completions.create(body);
  const b = await client.completions.create(body);
  const cold = await client.completions.create({
    ...body,
    cache_prompt: false,
  } as OpenAI.CompletionCreateParamsNonStreaming);
  t.true((b.usage as { prompt_tokens_details?: { cached_tokens: number } }).prompt_tokens_details!.cached_tokens > 0);
  t.is(a.choices[0].text, cold.choices[0].text);
  t.is(b.choices[0].text, cold.choices[0].text);
});

test.serial('idle sessions give their slots to waiting requests', async (t) => {
  // Fill every slot with an idle session, then ask for more sessions than slots at once: the
  // first three take the idle ones, the others wait; each session that ends while someone
  // waits is closed at once to pass its slot on (kept, it would hold it forever).
  const prompts = ['The sun', 'A frog', 'The moon', 'A boat', 'The king'];
  for (const p of prompts.slice(0, 3))
    await client.completions.create({ model: 'stories260K', prompt: p, max_tokens: 4, temperature: 0 });
  let s = await state();
  t.is(s.sessions.idle, s.sessions.slots);
  t.is(s.sessions.active, 0);
  const all = await Promise.all(
    prompts.map((p) =>
      client.completions.create({ model: 'stories260K', prompt: `${p} and the cat`, max_tokens: 8, temperature: 0 }),
    ),
  );
  t.true(all.every((c) => c.usage?.completion_tokens === 8));
  s = await state();
  t.is(s.sessions.active, 0);
  t.is(s.sessions.queued, 0);
  t.true(s.sessions.idle <= s.sessions.slots);
});

/** Posts raw JSON text; returns the status and the parsed body. */
async function post(
  path: string,
  body: string,
  key: string | null = KEY,
): Promise<{
  status: number;
  json: { error?: { message: string; type: string; code: string | null; param: string | null } };
}> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (key !== null) headers.authorization = `Bearer ${key}`;
  const r = await fetch(`${serve.url}${path}`, { method: 'POST', headers, body });
  return {
    status: r.status,
    json: (await r.json()) as { error?: { message: string; type: string; code: string | null; param: string | null } },
  };
}

function isOpenAiError(
  t: { true(v: boolean, m?: string): void; is(a: unknown, b: unknown, m?: string): void },
  json: { error?: Record<string, unknown> },
  code: string,
): void {
  t.true(json.error !== undefined, 'has an error object');
  const e = json.error as Record<string, unknown>;
  t.is(typeof e.message, 'string');
  t.true((e.message as string).length > 0);
  t.is(typeof e.type, 'string');
  t.is(e.code, code);
  t.true('param' in e);
}

test.serial('malformed JSON and fields of the wrong type: 400 with an OpenAI error object', async (t) => {
  const bad = await post('/v1/chat/completions', '{"messages": [');
  t.is(bad.status, 400);
  isOpenAiError(t, bad.json, 'invalid_json');
  t.is(bad.json.error?.type, 'invalid_request_error');

  const cases: [string, string, string][] = [
    ['/v1/chat/completions', JSON.stringify({ messages: 'hello' }), 'messages'],
    [
      '/v1/chat/completions',
      JSON.stringify({ messages: [{ role: 'user', content: 'x' }], max_tokens: 'ten' }),
      'max_tokens',
    ],
    [
      '/v1/chat/completions',
      JSON.stringify({ messages: [{ role: 'user', content: 'x' }], temperature: true }),
      'temperature',
    ],
    ['/v1/chat/completions', JSON.stringify({ messages: [{ role: 'user', content: 'x' }], stream: 'yes' }), 'stream'],
    ['/v1/chat/completions', JSON.stringify({ messages: [{ role: 'wizard', content: 'x' }] }), 'messages[0].role'],
    ['/v1/completions', JSON.stringify({ prompt: 42 }), 'prompt'],
    ['/v1/completions', JSON.stringify({ prompt: 'x', stop: [1, 2] }), 'stop'],
  ];
  for (const [path, body, param] of cases) {
    const r = await post(path, body);
    t.is(r.status, 400, body);
    t.is(r.json.error?.param, param, body);
    t.is(r.json.error?.type, 'invalid_request_error');
  }
  // The official client surfaces it as a BadRequestError.
  const e = await t.throwsAsync(client.chat.completions.create({ model: 'stories260K', messages: [], max_tokens: 1 }));
  t.true(e instanceof OpenAI.BadRequestError);
  t.is((e as InstanceType<typeof OpenAI.APIError>).status, 400);
});

test.serial('a prompt longer than the context: 400 context_length_exceeded', async (t) => {
  const long = 'Once upon a time there was a little dog. '.repeat(200);
  const r = await post('/v1/completions', JSON.stringify({ prompt: long, max_tokens: 4 }));
  t.is(r.status, 400);
  isOpenAiError(t, r.json, 'context_length_exceeded');
  t.regex(r.json.error?.message ?? '', /context holds 1024/);
  const chat = await post(
    '/v1/chat/completions',
    JSON.stringify({ messages: [{ role: 'user', content: long }], stream: true }),
  );
  t.is(chat.status, 400, 'a stream that cannot start gets a real status, not an event');
  isOpenAiError(t, chat.json, 'context_length_exceeded');
});

test.serial('a wrong or missing API key: 401', async (t) => {
  const wrong = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: 'not-the-key', maxRetries: 0 });
  const e = await t.throwsAsync(wrong.models.list());
  t.true(e instanceof OpenAI.AuthenticationError);
  const r = await post('/v1/completions', JSON.stringify({ prompt: 'x' }), null);
  t.is(r.status, 401);
  isOpenAiError(t, r.json, 'invalid_api_key');
  // Health and the dashboard page stay open to the LAN; what the page shows needs the key.
  t.is((await fetch(`${serve.url}/health`)).status, 200);
  t.is((await fetch(serve.url)).status, 200);
  t.is((await fetch(`${serve.url}/metrics`)).status, 401);
  t.is((await fetch(`${serve.url}/api/state`)).status, 401);
});

test.serial('an unknown model: 404 model_not_found; /v1/models lists the served one', async (t) => {
  const r = await post(
    '/v1/chat/completions',
    JSON.stringify({ model: 'gpt-9', messages: [{ role: 'user', content: 'x' }] }),
  );
  t.is(r.status, 404);
  isOpenAiError(t, r.json, 'model_not_found');
  const e = await t.throwsAsync(client.completions.create({ model: 'llama-70b', prompt: 'x' }));
  t.true(e instanceof OpenAI.NotFoundError);
  const models = await client.models.list();
  t.deepEqual(
    models.data.map((m) => m.id),
    ['stories260K'],
  );
  const one = await client.models.retrieve('stories260K');
  t.is(one.id, 'stories260K');
  const missing = await fetch(`${serve.url}/nowhere`);
  t.is(missing.status, 404);
});

test.serial('no herd ready: 503 from the API and /health, while the server keeps answering', async (t) => {
  // Port 1 on loopback: nothing listens there, so no node answers.
  const down = await startServe(['--nodes', '127.0.0.1:1', '--discovery-timeout', '0.5'], { waitReady: false });
  try {
    await down.waitFor((e) => e.event === 'model.unavailable');
    const health = await fetch(`${down.url}/health`);
    t.is(health.status, 503);
    t.is(((await health.json()) as { status: string }).status, 'unavailable');
    const c = new OpenAI({ baseURL: `${down.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const e = await t.throwsAsync(
      c.chat.completions.create({ model: 'stories260K', messages: [{ role: 'user', content: 'x' }] }),
    );
    t.true(e instanceof OpenAI.InternalServerError);
    t.is((e as InstanceType<typeof OpenAI.APIError>).status, 503);
    const r = await fetch(`${down.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'x' }),
    });
    t.is(r.status, 503);
    isOpenAiError(t, (await r.json()) as { error?: Record<string, unknown> }, 'cluster_unavailable');
    t.is((await fetch(`${down.url}/v1/models`)).status, 200);
  } finally {
    t.is(await down.stop(), 0);
  }
});

test.serial('after every error above the server still generates', async (t) => {
  const r = await client.completions.create({
    model: 'stories260K',
    prompt: 'Once upon a time',
    max_tokens: 3,
    temperature: 0,
  });
  t.is(r.usage?.completion_tokens, 3);
  t.is(serve.child.exitCode, null);
});
