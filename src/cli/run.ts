// `herd run`: generate a continuation of a prompt and stream it to stdout.

import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { GgufFile } from '../gguf/reader.ts';
import { readConfig } from '../model/config.ts';
import { Tokenizer } from '../tokenizer/index.ts';
import { generate } from '../engine/generate.ts';
import { openInference } from '../api/open.ts';
import { loadClusterKey } from '../cluster/key.ts';
import {
  asUsage,
  defaultCacheDir,
  engineOptions,
  herdOptions,
  samplingOptions,
  tensorArg,
  tensorOptions,
} from './cluster-options.ts';
import { defaultSampling, MAX_LOGPROBS, validateSampling, type SamplingOptions } from '../engine/sampler.ts';
import { resolveModelPath } from './model-path.ts';
import { createBackend } from '../kernels/select.ts';
import { LOCAL_ADDRESS } from '../engine/local.ts';
import { UsageError } from './errors.ts';
import { runOnServer } from './client.ts';
import { ProgressRenderer } from './progress.ts';
import type { ArgsOf } from './yargs.ts';

function integer(name: string, v: number | undefined, min: number): void {
  if (v !== undefined && !(Number.isInteger(v) && v >= min)) {
    throw new UsageError(`--${name} must be an integer >= ${min}, got ${String(v)}`);
  }
}

function builder(y: Argv) {
  const engine = engineOptions(y.positional('prompt', { type: 'string', default: '', describe: 'Text to continue' }), {
    ctx: "Context size in tokens (default: the model's, at most 4096)",
    backend: 'Kernels: auto picks native, else wasm, else js',
  });
  const sampling = samplingOptions(
    engine.option('max-tokens', { alias: 'n', type: 'number', default: 256, describe: 'Most tokens to generate' }),
  )
    .option('frequency-penalty', { type: 'number', default: 0, describe: 'Subtract per occurrence of a recent token' })
    .option('presence-penalty', { type: 'number', default: 0, describe: 'Subtract once for a recent token' })
    .option('seed', { type: 'number', describe: 'Random seed (default: random); same seed, same text' })
    // Not `array: true`: that would swallow the prompt after `--stop TEXT`; repeats still collect.
    .option('stop', { type: 'string', describe: 'Stop before this text (repeatable)' })
    .option('json', {
      type: 'boolean',
      default: false,
      describe: 'Print one JSON object with text, token ids and timings',
    })
    .option('logprobs', {
      type: 'number',
      describe:
        `With --json: each token's log-probability and the N most likely tokens' (0..${MAX_LOGPROBS}), ` +
        'from the raw logits before penalties and temperature',
    });
  return tensorOptions(
    herdOptions(sampling, { interface: 'Discover and serve the coordinator on this network interface only' }),
  )
    .option('server', {
      type: 'string',
      describe:
        'Send the prompt to a running herd serve (URL, or auto: find it over mDNS) instead of coordinating here',
    })
    .option('api-key', { type: 'string', describe: "The server's API key (default: $HERD_API_KEY)" })
    .group(['server', 'api-key'], 'Herd:');
}

type RunArgs = ArgsOf<typeof builder>;

async function handler(args: ArgumentsCamelCase<RunArgs>): Promise<void> {
  integer('max-tokens', args.maxTokens, 0);
  integer('seed', args.seed, 0);
  integer('threads', args.threads, 1);
  integer('ctx', args.ctx, 1);
  integer('logprobs', args.logprobs, 0);
  if (args.logprobs !== undefined && args.logprobs > MAX_LOGPROBS)
    throw new UsageError(`--logprobs must be at most ${MAX_LOGPROBS}, got ${args.logprobs}`);
  if (args.logprobs !== undefined && !args.json)
    throw new UsageError('--logprobs prints in the JSON object: add --json');
  const sampling: SamplingOptions = validateSampling({
    temperature: args.temp,
    topK: args.topK,
    topP: args.topP,
    minP: args.minP,
    repeatPenalty: args.repeatPenalty,
    frequencyPenalty: args.frequencyPenalty,
    presencePenalty: args.presencePenalty,
    penaltyLastN: defaultSampling.penaltyLastN,
    seed: args.seed ?? Math.floor(Math.random() * 0xffffffff),
    logprobs: args.logprobs,
  });
  if (args.server !== undefined) {
    return runOnServer({
      server: args.server,
      apiKey: args.apiKey,
      prompt: args.prompt,
      model: args.model,
      maxTokens: args.maxTokens,
      sampling,
      stop: [args.stop ?? []].flat(),
      json: args.json,
      discoveryTimeoutMs: args.discoveryTimeout * 1000,
      interface: args.interface,
    });
  }

  const path = resolveModelPath(args.model);
  const tLoad = performance.now();
  const file = GgufFile.open(path);
  const tokenizer = Tokenizer.fromGguf(file);
  const prompt = tokenizer.encode(args.prompt);
  const ctx = args.ctx ?? Math.min(readConfig(file).ctxTrain, 4096);
  // Refuse a prompt that cannot fit before reading any weights.
  if (prompt.length >= ctx) {
    throw new UsageError(
      `the prompt is ${prompt.length} tokens but the context holds ${ctx}: shorten the prompt or raise --ctx`,
    );
  }
  integer('stages', args.stages, 1);
  const tensor = tensorArg(args.tensor, args.nodes);
  const note = (line: string) => process.stderr.write(`herd: ${line}\n`);
  const backend = await createBackend(args.backend, { threads: args.threads, note });
  const inference = await asUsage(() =>
    openInference({
      file,
      ctx,
      kvType: args.kvType,
      sampling,
      backend,
      nodes: args.nodes,
      stages: args.stages,
      tensor,
      sync: args.sync,
      interface: args.interface,
      key: loadClusterKey(args),
      wire: args.wire,
      discoveryTimeoutMs: args.discoveryTimeout * 1000,
      cacheDir: defaultCacheDir(),
      note,
      progress: new ProgressRenderer(process.stderr).sink,
    }),
  ).catch(async (e: unknown) => {
    await backend.close();
    throw e;
  });
  const inProcess = inference.plan.every((p) => p.address === LOCAL_ADDRESS);
  const session = inference.session;
  const loadMs = performance.now() - tLoad;
  const result = await generate(
    session,
    tokenizer,
    { prompt, maxTokens: args.maxTokens, stop: [args.stop ?? []].flat() },
    args.json ? undefined : (text) => process.stdout.write(text),
  ).finally(async () => {
    await inference.close();
    await backend.close();
  });

  if (args.json) {
    process.stdout.write(
      `${JSON.stringify({
        text: result.text,
        tokens: result.tokens,
        prompt_tokens: prompt,
        stop_reason: result.stopReason,
        seed: sampling.seed,
        ...(args.logprobs !== undefined ? { logprobs: result.logprobs } : {}),
        timings: result.timings,
        plan: inference.plan,
        ...(inference.planReason !== undefined ? { plan_reason: inference.planReason } : {}),
        ...(inProcess
          ? { backend: backend.name, isa: backend.isa, threads: backend.threads, peak_rss_mib: peakRssMib() }
          : {}),
        ...(inference.shards ? { shards: inference.shards } : {}),
      })}\n`,
    );
  } else {
    process.stdout.write('\n');
    const t = result.timings;
    process.stderr.write(
      `herd: load ${loadMs.toFixed(0)} ms | prompt ${t.prompt_tokens} tokens, ${t.prompt_ms} ms (${t.prompt_tps} tok/s)` +
        ` | decode ${t.decode_tokens} tokens, ${t.decode_ms} ms (${t.decode_tps} tok/s) | stop: ${result.stopReason} | seed ${sampling.seed}` +
        `${inProcess ? ` | ${backend.name} kernels (${backend.isa}), ${backend.threads} threads` : ''}\n`,
    );
  }
}

/** This process's peak resident memory: the model, the KV cache and Node itself, in MiB. */
function peakRssMib(): number {
  return Math.round(process.resourceUsage().maxRSS / 1024);
}

export const runCommand: CommandModule<object, RunArgs> = {
  command: 'run [prompt]',
  describe: 'Generate a continuation of PROMPT, streamed to stdout',
  builder,
  handler,
};
