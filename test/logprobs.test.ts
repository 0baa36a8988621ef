// Log-probabilities (issue 10): `herd run --json --logprobs N`, the OpenAI API's `logprobs` on
// /v1/completions and /v1/chat/completions (streamed and not), gRPC Generate, and the same values
// over a 2-stage herd. Each token's entry must be what llama.cpp's softmax of the raw logits
// gives along the same tokens (llama-server's n_probs without post_sampling_probs): the sampler
// runs with temperature and a repeat penalty, neither of which may show in the numbers.

import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Metadata } from '@grpc/grpc-js';
import OpenAI from 'openai';
import { Sampler, defaultSampling, type TokenLogprobs } from '../src/engine/sampler.ts';
import type { GenerateEvent, HerdCoordinatorClient, TokenLogprobs as WireLogprobs } from '../src/proto/herd.ts';
import { coordinatorClient } from '../src/cluster/rpc.ts';
import { ClusterError } from '../src/cluster/errors.ts';
import { logprobsFromWire, samplingFromWire, samplingToWire } from '../src/cluster/wire.ts';
import { nextTokenDistributions } from './oracle/llama.ts';
import { herd } from './helpers/herd.ts';
import { runHerd, startNode, type RunningNode, type Spawner } from './helpers/herd-proc.ts';
import { createLan, stopProcess, type LanHost, type TestLan } from './helpers/netns.ts';
import { bundledModel } from './helpers/paths.ts';
import { startServe, type RunningServe } from './helpers/serve.ts';

/** |exp(herd's logprob) − llama.cpp's p|: measured ≤ 1.3e-6 with f32 KV caches on stories260K (≥ 75× margin). */
const P_BOUND = 1e-4;
const PROMPT = 'Once upon a time';
/** Sampled, penalised: the logprobs must still be those of the raw logits. */
const RUN = [
  '--temp',
  '0.8',
  '--seed',
  '7',
  '--repeat-penalty',
  '1.3',
  '--kv-type',
  'f32',
  '-n',
  '24',
  '--json',
  '--logprobs',
  '5',
];

interface RunJson {
  text: string;
  tokens: number[];
  prompt_tokens: number[];
  logprobs: TokenLogprobs[];
}

/**
 * Teacher-forces prompt + generated tokens through llama.cpp (f32 KV) and checks each entry:
 * the sampled token's probability and the top-N ids and probabilities. Returns max |Δp|.
 */
async function checkAgainstOracle(
  t: ExecutionContext,
  prompt: readonly number[],
  tokens: readonly number[],
  entries: readonly TokenLogprobs[],
  n: number,
): Promise<number> {
  t.is(entries.length, tokens.length, 'one entry per generated token');
  const all = [...prompt, ...tokens];
  const probs = await nextTokenDistributions(bundledModel, all, all.length - 1, { kvType: 'F32' });
  let worst = 0;
  for (const [j, e] of entries.entries()) {
    const p = probs[prompt.length - 1 + j];
    t.is(e.token, tokens[j]);
    worst = Math.max(worst, Math.abs(Math.exp(e.logprob) - p[e.token]));
    t.is(e.top.length, n);
    const want = Array.from(p.keys())
      .sort((a, b) => p[b] - p[a] || a - b)
      .slice(0, n);
    t.deepEqual(
      e.top.map((x) => x.token),
      want,
      `top ${n} ids at token ${j}`,
    );
    for (const [i, x] of e.top.entries()) {
      worst = Math.max(worst, Math.abs(Math.exp(x.logprob) - p[x.token]));
      if (i > 0) t.true(x.logprob <= e.top[i - 1].logprob, 'most likely first');
    }
  }
  t.true(worst < P_BOUND, `max |Δp| ${worst} >= ${P_BOUND}`);
  return worst;
}

function maxLogprobDiff(a: readonly TokenLogprobs[], b: readonly TokenLogprobs[]): number {
  let d = 0;
  for (const [i, x] of a.entries()) {
    d = Math.max(d, Math.abs(x.logprob - b[i].logprob));
    for (const [k, y] of x.top.entries()) d = Math.max(d, Math.abs(y.logprob - b[i].top[k].logprob));
  }
  return d;
}

let local: RunJson;

test.before(async () => {
  const r = await herd(['run', ...RUN, PROMPT]);
  if (r.code !== 0) throw new Error(`herd run failed: ${r.stderr}`);
  local = JSON.parse(r.stdout) as RunJson;
});

test("herd run --json --logprobs 5: each token and its top 5 are llama.cpp's probabilities of the raw logits", async (t) => {
  t.is(local.tokens.length, 24);
  const worst = await checkAgainstOracle(t, local.prompt_tokens, local.tokens, local.logprobs, 5);
  t.log(`max |Δp| vs llama.cpp (f32 KV): ${worst.toExponential(2)}`);
});

test("the sampler's log-probabilities are a stable log_softmax of the raw logits", (t) => {
  // Logits where a plain exp overflows; a vocabulary of 20, so the top 20 are all of it.
  const raw = Float32Array.from({ length: 20 }, (_, i) => 3000 + ((i * 7) % 20) / 3);
  const logits = Float32Array.from(raw);
  const best = raw.indexOf(Math.max(...raw));
  const s = new Sampler({ ...defaultSampling, temperature: 0, repeatPenalty: 2, logprobs: 20 }, logits.length);
  // The most likely token was seen: the penalty halves its logit and greedy picks another.
  const token = s.sample(logits, [best]);
  const lp = s.logprobs as TokenLogprobs;
  t.is(lp.token, token);
  t.is(lp.top.length, 20);
  const total = lp.top.reduce((sum, x) => sum + Math.exp(x.logprob), 0);
  t.true(Math.abs(total - 1) < 1e-12, `probabilities sum to ${total}`);
  t.true(lp.top.every((x) => Number.isFinite(x.logprob) && x.logprob <= 0));
  // The numbers come from the logits before the penalty.
  t.is(lp.top[0].token, best);
  t.not(token, best, 'the penalised draw picks another token');
  t.true(
    Math.abs(lp.top[0].logprob - (raw[best] - 3000 - Math.log(raw.reduce((a, x) => a + Math.exp(x - 3000), 0)))) <
      1e-12,
  );
  t.is(new Sampler({ ...defaultSampling }, 4).logprobs, undefined, 'none unless asked');
});

test('the wire: a stage refuses more than 20 logprobs, the coordinator a malformed delivery of them', (t) => {
  t.is(samplingFromWire(samplingToWire({ ...defaultSampling, logprobs: 3 })).logprobs, 3);
  t.is(samplingFromWire(samplingToWire({ ...defaultSampling })).logprobs, undefined);
  t.throws(() => samplingFromWire({ ...samplingToWire(defaultSampling), logprobs: 21 }), {
    instanceOf: ClusterError,
    message: /logprobs must be an integer in 0\.\.20/,
  });
  const top = [
    { tokenId: 4, logprob: -0.1 },
    { tokenId: 9, logprob: -2.5 },
  ];
  t.deepEqual(logprobsFromWire({ logprob: -2.5, top }, 9, 2, 512), {
    token: 9,
    logprob: -2.5,
    top: [
      { token: 4, logprob: -0.1 },
      { token: 9, logprob: -2.5 },
    ],
  });
  t.deepEqual(
    logprobsFromWire({ logprob: 0, top: [{ tokenId: 0, logprob: 0 }] }, 0, 5, 1).top,
    [{ token: 0, logprob: 0 }],
    'fewer only for a smaller vocabulary',
  );
  const bads: [WireLogprobs, RegExp][] = [
    [{ logprob: -1, top: [top[0]] }, /1 top log-probabilities, expected 2/],
    [{ logprob: 0.5, top }, /not <= 0/],
    [{ logprob: -1, top: [top[1], top[0]] }, /descending/],
    [{ logprob: -1, top: [top[0], { tokenId: 600, logprob: -3 }] }, /outside the vocabulary/],
  ];
  for (const [bad, msg] of bads) {
    t.throws(() => logprobsFromWire(bad, 4, 2, 512), { instanceOf: ClusterError, message: msg });
  }
});

test('herd run refuses --logprobs out of range or without --json', async (t) => {
  for (const [args, msg] of [
    [['--json', '--logprobs', '21'], /at most 20/],
    [['--json', '--logprobs', '-1'], />= 0/],
    [['--logprobs', '3'], /--json/],
  ] as const) {
    const r = await herd(['run', '-n', '2', ...args, PROMPT]);
    t.is(r.code, 2, r.stderr);
    t.regex(r.stderr, msg);
  }
});

test.serial(
  "the OpenAI API: completions and chat, streamed and not, carry the CLI's and llama.cpp's values",
  async (t) => {
    const serve: RunningServe = await startServe(['--kv-type', 'f32', '--ctx', '512', '--grpc-port', '0', '--no-mdns']);
    try {
      const client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: 'none', maxRetries: 0 });
      const sampling = { temperature: 0.8, seed: 7, repeat_penalty: 1.3 } as Record<string, number>;
      type Herd = { herd: { tokens: number[]; prompt_tokens: number[]; logprobs: TokenLogprobs[] } };

      // completions, not streamed: the CLI's tokens and values, in OpenAI's legacy shape
      const c = await client.completions.create({
        model: 'stories260K',
        prompt: PROMPT,
        max_tokens: 24,
        logprobs: 5,
        ...sampling,
      });
      const lp = c.choices[0].logprobs;
      t.truthy(lp);
      const h = (c as unknown as Herd).herd;
      t.deepEqual(h.tokens, local.tokens);
      t.deepEqual(h.logprobs, local.logprobs, 'herd.logprobs equals herd run --json --logprobs');
      t.deepEqual(
        lp?.token_logprobs,
        local.logprobs.map((e) => e.logprob),
      );
      t.is(lp?.tokens?.join(''), c.choices[0].text);
      t.is(lp?.text_offset?.[0], 0);
      for (const [i, off] of (lp?.text_offset ?? []).entries())
        if (i > 0) t.is(off, (lp?.text_offset?.[i - 1] ?? 0) + (lp?.tokens?.[i - 1].length ?? 0));
      for (const [i, top] of (lp?.top_logprobs ?? []).entries()) {
        const values = Object.values(top);
        t.true(values.length >= 1 && values.length <= 5);
        t.is(Math.max(...values), local.logprobs[i].top[0].logprob);
      }

      // completions, streamed: the chunks' logprobs joined are the whole answer's
      const cs = await client.completions.create({
        model: 'stories260K',
        prompt: PROMPT,
        max_tokens: 24,
        logprobs: 5,
        stream: true,
        ...sampling,
      });
      const joined = {
        tokens: [] as string[],
        token_logprobs: [] as number[],
        top_logprobs: [] as Record<string, number>[],
        text_offset: [] as number[],
      };
      let streamedText = '';
      for await (const chunk of cs) {
        const ch = chunk.choices[0];
        if (!ch) continue;
        streamedText += ch.text;
        if (ch.text !== '') t.truthy(ch.logprobs, "a text chunk carries its tokens' logprobs");
        if (ch.logprobs) {
          joined.tokens.push(...(ch.logprobs.tokens ?? []));
          joined.token_logprobs.push(...(ch.logprobs.token_logprobs ?? []));
          joined.top_logprobs.push(...(ch.logprobs.top_logprobs ?? []));
          joined.text_offset.push(...(ch.logprobs.text_offset ?? []));
        }
      }
      t.is(streamedText, c.choices[0].text);
      t.deepEqual(joined, lp);

      // chat, not streamed: OpenAI's content entries, checked against llama.cpp along the same tokens
      const messages = [{ role: 'user' as const, content: 'Tell me a story' }];
      const chat = await client.chat.completions.create({
        model: 'stories260K',
        messages,
        max_tokens: 16,
        logprobs: true,
        top_logprobs: 5,
        ...sampling,
      });
      const content = chat.choices[0].logprobs?.content ?? [];
      const ch = (chat as unknown as Herd).herd;
      t.is(content.length, ch.tokens.length);
      t.deepEqual(
        content.map((e) => e.logprob),
        ch.logprobs.map((e) => e.logprob),
      );
      for (const e of content) {
        t.is(e.top_logprobs.length, 5);
        t.deepEqual(e.bytes, Array.from(Buffer.from(e.token, 'utf8')));
      }
      const worst = await checkAgainstOracle(t, ch.prompt_tokens, ch.tokens, ch.logprobs, 5);
      t.log(`chat: max |Δp| vs llama.cpp (f32 KV): ${worst.toExponential(2)}`);

      // chat, streamed: the same entries, chunk by chunk
      const chatStream = await client.chat.completions.create({
        model: 'stories260K',
        messages,
        max_tokens: 16,
        logprobs: true,
        top_logprobs: 5,
        stream: true,
        ...sampling,
      });
      const streamed: unknown[] = [];
      for await (const chunk of chatStream) streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []));
      t.deepEqual(streamed, content);

      // logprobs: true alone: the sampled token's, no top ones
      const bare = await client.chat.completions.create({
        model: 'stories260K',
        messages,
        max_tokens: 4,
        logprobs: true,
        ...sampling,
      });
      t.true((bare.choices[0].logprobs?.content ?? []).every((e) => e.top_logprobs.length === 0 && e.logprob <= 0));
      t.is(bare.choices[0].logprobs?.content?.length, 4);
      // not asked: null, as OpenAI
      const none = await client.chat.completions.create({ model: 'stories260K', messages, max_tokens: 4, ...sampling });
      t.is(none.choices[0].logprobs, null);

      // herd run --server: the same JSON as the in-process run
      const remote = await herd(['run', '--server', serve.url, ...RUN, PROMPT]);
      t.is(remote.code, 0, remote.stderr);
      t.deepEqual((JSON.parse(remote.stdout) as RunJson).logprobs, local.logprobs);

      // gRPC Generate: one entry per token id, with token ids
      const grpcPort = (await serve.waitFor((l) => l.event === 'grpc.listening')).port;
      const g: HerdCoordinatorClient = coordinatorClient(`127.0.0.1:${String(grpcPort)}`, undefined);
      try {
        const events = await new Promise<GenerateEvent[]>((resolve, reject) => {
          const out: GenerateEvent[] = [];
          const sampled = { ...defaultSampling, temperature: 0.8, seed: 7, repeatPenalty: 1.3, logprobs: 5 };
          const call = g.generate({ prompt: PROMPT, maxTokens: 24, stop: [], sampling: sampled }, new Metadata());
          call.on('data', (e: GenerateEvent) => out.push(e));
          call.on('error', reject);
          call.on('end', () => resolve(out));
        });
        const texts = events.flatMap((e) => (e.text ? [e.text] : []));
        t.deepEqual(
          texts.flatMap((x) => x.tokenIds),
          local.tokens,
        );
        t.true(texts.every((x) => x.logprobs.length === x.tokenIds.length));
        const wire = texts.flatMap((x) => x.logprobs);
        t.deepEqual(
          wire.map((x) => x.logprob),
          local.logprobs.map((e) => e.logprob),
        );
        t.deepEqual(
          wire.map((x) => x.top.map((y) => y.tokenId)),
          local.logprobs.map((e) => e.top.map((y) => y.token)),
        );
      } finally {
        g.close();
      }
    } finally {
      await serve.stop();
    }
  },
);

test.serial('the OpenAI API refuses bad logprobs values with a 400 naming the field', async (t) => {
  const serve = await startServe(['--ctx', '256', '--no-mdns']);
  try {
    const post = async (path: string, body: object) => {
      const r = await fetch(`${serve.url}/v1/${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      return {
        status: r.status,
        error: ((await r.json()) as { error: { message: string; param: string | null; type: string } }).error,
      };
    };
    const completion = { prompt: PROMPT, max_tokens: 2 };
    const chat = { messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 };
    const cases: [string, object, string, RegExp][] = [
      ['completions', { ...completion, logprobs: 21 }, 'logprobs', /'logprobs' must be in \[0, 20\], got 21/],
      ['completions', { ...completion, logprobs: -1 }, 'logprobs', /\[0, 20\], got -1/],
      ['completions', { ...completion, logprobs: '5' }, 'logprobs', /must be an integer in \[0, 20\], got string/],
      ['completions', { ...completion, logprobs: 2.5 }, 'logprobs', /must be an integer/],
      ['completions', { ...completion, logprobs: 1, echo: true }, 'echo', /not the prompt's/],
      ['chat/completions', { ...chat, logprobs: 5 }, 'logprobs', /'logprobs' must be a boolean, got number 5/],
      ['chat/completions', { ...chat, logprobs: true, top_logprobs: 21 }, 'top_logprobs', /\[0, 20\], got 21/],
      ['chat/completions', { ...chat, logprobs: true, top_logprobs: -2 }, 'top_logprobs', /got -2/],
      ['chat/completions', { ...chat, logprobs: true, top_logprobs: 'x' }, 'top_logprobs', /must be an integer/],
      ['chat/completions', { ...chat, top_logprobs: 3 }, 'top_logprobs', /needs 'logprobs' set to true/],
    ];
    for (const [path, body, param, msg] of cases) {
      const r = await post(path, body);
      t.is(r.status, 400, JSON.stringify(body));
      t.is(r.error.type, 'invalid_request_error');
      t.is(r.error.param, param);
      t.regex(r.error.message, msg);
    }
    // Off: accepted, answered with logprobs null.
    const off = await fetch(`${serve.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...completion, logprobs: null }),
    });
    t.is(((await off.json()) as { choices: { logprobs: unknown }[] }).choices[0].logprobs, null);
  } finally {
    await serve.stop();
  }
});

test.serial('over a 2-stage herd the last stage sends the same logprobs as an in-process run', async (t) => {
  const KEY = 'logprobs-test-cluster-key-0123456789';
  const dir = mkdtempSync(join(tmpdir(), 'herd-logprobs-'));
  let lan: TestLan | undefined;
  const nodes: RunningNode[] = [];
  try {
    lan = await createLan(3, 'lp');
    const l = lan;
    const on =
      (host: LanHost): Spawner =>
      (cmd, args, opts) =>
        l.spawn(host, cmd, args, { ...opts, env: { ...process.env, HERD_CACHE_DIR: join(dir, host.hostname) } });
    for (const [i, h] of lan.hosts.slice(0, 2).entries()) {
      nodes.push(
        await startNode(
          [
            '--interface',
            'eth0',
            '--port',
            '7077',
            '--no-mdns',
            '--cache-dir',
            join(dir, `node${i}`),
            '--cluster-key',
            KEY,
            '--name',
            `node-${i}`,
          ],
          on(h),
        ),
      );
    }
    const peers = lan.hosts
      .slice(0, 2)
      .map((h) => `${h.ip}:7077`)
      .join(',');
    const r = await runHerd(
      [
        'run',
        '--model',
        bundledModel,
        '--nodes',
        peers,
        '--stages',
        '2',
        '--interface',
        'eth0',
        '--cluster-key',
        KEY,
        ...RUN,
        PROMPT,
      ],
      on(lan.hosts[2]),
    );
    t.is(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as RunJson & { plan: { address: string }[] };
    t.is(out.plan.length, 2);
    t.deepEqual(out.plan.map((p) => p.address).sort(), peers.split(',').sort());
    t.deepEqual(out.tokens, local.tokens);
    t.deepEqual(
      out.logprobs.map((e) => e.top.map((x) => x.token)),
      local.logprobs.map((e) => e.top.map((x) => x.token)),
    );
    const d = maxLogprobDiff(out.logprobs, local.logprobs);
    t.log(`2 stages vs in-process: max |Δlogprob| ${d.toExponential(2)}`);
    t.true(d < 1e-6, `max |Δlogprob| ${d}`);
  } finally {
    await Promise.all(nodes.map((n) => stopProcess(n.child, 8000)));
    await lan?.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
