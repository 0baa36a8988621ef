// /metrics in Prometheus text format counts what the requests did; pino logs are JSON lines.

import test from 'ava';
import { hostname } from 'node:os';
import OpenAI from 'openai';
import { parsePrometheus, sum } from './helpers/prometheus.ts';
import { startServe } from './helpers/serve.ts';

test('/metrics parses as Prometheus text and counts the tokens the requests generated', async (t) => {
  const serve = await startServe([]);
  try {
    const client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const a = await client.completions.create({
      model: 'stories260K',
      prompt: 'Once upon a time',
      max_tokens: 20,
      temperature: 0,
    });
    const b = await client.completions.create({
      model: 'stories260K',
      prompt: 'The little dog',
      max_tokens: 30,
      temperature: 0.8,
      seed: 7,
    });
    const stream = await client.chat.completions.create({
      model: 'stories260K',
      messages: [{ role: 'user', content: 'Hi' }],
      max_tokens: 25,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let chatUsage: OpenAI.CompletionUsage | undefined;
    let chatFinish = '';
    for await (const c of stream) {
      if (c.usage) chatUsage = c.usage;
      if (c.choices[0]?.finish_reason) chatFinish = c.choices[0].finish_reason;
    }
    const runs = [
      {
        usage: a.usage as OpenAI.CompletionUsage,
        finish: a.choices[0].finish_reason as string,
        endpoint: 'completions',
      },
      {
        usage: b.usage as OpenAI.CompletionUsage,
        finish: b.choices[0].finish_reason as string,
        endpoint: 'completions',
      },
      { usage: chatUsage as OpenAI.CompletionUsage, finish: chatFinish, endpoint: 'chat' },
    ];
    const generated = runs.reduce((s, r) => s + r.usage.completion_tokens, 0);
    const prompt = runs.reduce((s, r) => s + r.usage.prompt_tokens, 0);
    t.true(generated > 0);

    const res = await fetch(`${serve.url}/metrics`);
    t.is(res.status, 200);
    t.regex(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const { samples, types } = parsePrometheus(await res.text());

    t.is(types.get('herd_generated_tokens_total'), 'counter');
    t.is(sum(samples, 'herd_generated_tokens_total'), generated);
    t.is(sum(samples, 'herd_prompt_tokens_total'), prompt);
    t.is(types.get('herd_time_to_first_token_seconds'), 'histogram');
    t.is(sum(samples, 'herd_time_to_first_token_seconds_count'), 3);
    t.is(sum(samples, 'herd_request_duration_seconds_count', { endpoint: 'completions' }), 2);
    t.is(sum(samples, 'herd_request_duration_seconds_count', { endpoint: 'chat' }), 1);
    for (const r of runs)
      t.true(sum(samples, 'herd_generations_total', { endpoint: r.endpoint, outcome: r.finish }) >= 1);
    t.is(sum(samples, 'herd_generations_total'), 3);
    // One prefill step per request; a decode step per token after the first (and one more to see an EOS).
    // In-process, the one stage is this host, and its time is the step's.
    const decodeSteps = runs.reduce((s, r) => s + r.usage.completion_tokens - (r.finish === 'length' ? 1 : 0), 0);
    t.is(types.get('herd_step_seconds'), 'histogram');
    t.is(sum(samples, 'herd_step_seconds_count', { phase: 'prefill' }), 3);
    t.is(sum(samples, 'herd_step_seconds_count', { phase: 'decode' }), decodeSteps);
    t.is(sum(samples, 'herd_stage_step_seconds_count', { node: hostname(), node_id: 'local', phase: 'prefill' }), 3);
    t.is(
      sum(samples, 'herd_stage_step_seconds_count', { node: hostname(), node_id: 'local', phase: 'decode' }),
      decodeSteps,
    );
    t.is(sum(samples, 'herd_stage_step_seconds_count'), 3 + decodeSteps);
    t.true(sum(samples, 'herd_tokens_per_second') > 0);
    t.is(sum(samples, 'herd_queue_depth'), 0);
    t.is(sum(samples, 'herd_sessions_active'), 0);
    t.is(sum(samples, 'herd_ready'), 1);
    t.is(sum(samples, 'herd_http_requests_total', { route: '/v1/completions', status: '200' }), 2);
    t.true(sum(samples, 'herd_process_resident_memory_bytes') > 0);

    // Every stderr line is a JSON log event; each request left one request.done.
    const lines = serve
      .stderr()
      .split('\n')
      .filter((l) => l.length > 0);
    for (const l of lines) {
      const e = JSON.parse(l) as Record<string, unknown>;
      t.is(typeof e.event, 'string', l);
      t.is(typeof e.time, 'string', l);
      t.true(['debug', 'info', 'warn', 'error'].includes(e.level as string), l);
    }
    const done = serve.events.filter((e) => e.event === 'request.done');
    t.deepEqual(
      done.map((e) => e.completionTokens),
      runs.map((r) => r.usage.completion_tokens),
    );
  } finally {
    await serve.stop();
  }
});

test('--log-level warn keeps info lines out; debug adds refused requests', async (t) => {
  const [quiet, loud] = await Promise.all([
    startServe(['--log-level', 'warn'], { waitReady: false }),
    startServe(['--log-level', 'debug']),
  ]);
  try {
    for (const s of [quiet, loud]) {
      await fetch(`${s.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"prompt": 1}',
      });
    }
    // Wait for the line itself, however long the pipe takes on a loaded machine.
    const refused = await loud.waitFor((e) => e.event === 'request.refused');
    t.is(refused.level, 'debug');
    t.is(refused.status, 400);
    // Lines the quiet server should not have written would have been written by now, before
    // its answer; a short grace for the pipe (a slow machine can only hide one, not invent one).
    await new Promise((r) => setTimeout(r, 100));
    t.deepEqual(
      quiet.events.filter((e) => e.level === 'info' || e.level === 'debug'),
      [],
    );
  } finally {
    await Promise.all([quiet.stop(), loud.stop()]);
  }
});
