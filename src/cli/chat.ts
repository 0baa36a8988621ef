// `herd chat`: a conversation in the terminal. Each turn renders the whole conversation with
// the model's chat template and streams the reply; `/reset` starts over, `/exit` (or Ctrl-D)
// leaves, Ctrl-C stops the reply being written and keeps the session. In-process (or over the
// herd with --nodes) by default; `--server URL|auto` sends the turns to a running herd serve.
//
// One session lives across the turns: it holds the conversation's tokens so far (prompt and
// reply), and each turn computes only what follows the prefix it shares with the newly
// rendered conversation (the host's prompt cache, one slot); `/reset` closes it.

import { createInterface } from 'node:readline';
import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { defaultSampling, validateSampling, type SamplingOptions } from '../engine/sampler.ts';
import { ContextError, type Timings } from '../engine/generate.ts';
import type { ChatMessage } from '../tokenizer/chat-template.ts';
import { loadClusterKey } from '../cluster/key.ts';
import { createBackend } from '../kernels/select.ts';
import {
  asUsage,
  CHAT_TEMPLATE_HELP,
  engineOptions,
  herdOptions,
  tensorOptions,
  hostModelOptions,
  samplingOptions,
} from './cluster-options.ts';
import { chatOnServer, resolveServer, ServerError, type ServerTarget } from './client.ts';
import { resolveModelPath } from './model-path.ts';
import { UsageError } from './errors.ts';
import type { ArgsOf } from './yargs.ts';

function builder(y: Argv) {
  const engine = engineOptions(y, {
    ctx: "Context size in tokens (default: the model's, at most 4096)",
    backend: 'Kernels: auto picks native, else wasm, else js',
  })
    .option('system', { alias: 's', type: 'string', describe: 'System prompt that opens the conversation' })
    .option('max-tokens', {
      alias: 'n',
      type: 'number',
      describe: 'Most tokens per reply (default: until the end of the turn or the context)',
    });
  const sampling = samplingOptions(engine)
    .option('seed', { type: 'number', describe: 'Random seed (default: random)' })
    .option('chat-template', { type: 'string', describe: CHAT_TEMPLATE_HELP });
  return tensorOptions(
    herdOptions(sampling, {
      interface: 'Discover nodes (or the server) on this network interface only',
      discoveryTimeout: 'Seconds to wait for nodes or a server to answer over mDNS',
    }),
  )
    .option('server', {
      type: 'string',
      describe: 'Chat through a running herd serve (URL, or auto: find it over mDNS)',
    })
    .option('api-key', { type: 'string', describe: "The server's API key (default: $HERD_API_KEY)" })
    .option('timings', {
      type: 'boolean',
      default: false,
      describe: 'After each reply, print on stderr its prompt tokens (reused from the session and computed) and speeds',
    })
    .group(['server', 'api-key'], 'Herd:');
}

type ChatArgs = ArgsOf<typeof builder>;

/** One turn's reply, with its timings when the backend tells them. */
interface Reply {
  readonly text: string;
  readonly timings?: Timings | Record<string, number>;
}

/** Answers one turn: streams text to onText, resolves with the whole reply. */
type Replier = (
  messages: readonly ChatMessage[],
  onText: (text: string) => void,
  signal: AbortSignal,
) => Promise<Reply>;

interface Backend {
  readonly describe: string;
  readonly reply: Replier;
  /** Forgets the conversation's session (`/reset`). */
  reset(): Promise<void>;
  close(): Promise<void>;
}

async function localBackend(args: ArgumentsCamelCase<ChatArgs>, sampling: () => SamplingOptions): Promise<Backend> {
  const { ModelHost } = await import('../api/host.ts');
  const { runGeneration } = await import('../api/generation.ts');
  const { apiLogger } = await import('./serve.ts');
  const backend = await createBackend(args.backend, {
    threads: args.threads,
    note: (line) => process.stderr.write(`herd: ${line}\n`),
  });
  const host = ModelHost.open({
    ...hostModelOptions(
      args,
      resolveModelPath(args.model),
      backend,
      asUsage(() => loadClusterKey(args)),
    ),
    parallel: 1,
    log: await apiLogger('silent'),
  });
  await host.start();
  if (host.status !== 'ready') {
    const why = host.error ?? host.status;
    await host.close();
    await backend.close();
    throw new UsageError(`no herd to chat with: ${why}`);
  }
  return {
    describe: `${host.modelId} (${host.mode === 'local' ? `in-process, ${backend.name} kernels` : `${host.plan.length} stages over the herd`}, template ${host.template.name})`,
    reply: async (messages, onText, signal) => {
      const prompt = host.template.render(messages).ids;
      // The host keeps the session between turns and steps only what follows the common prefix.
      const out = await runGeneration(
        host,
        undefined,
        {
          prompt,
          maxTokens: args.maxTokens,
          stop: [...host.template.stops],
          sampling: sampling(),
          cachePrompt: true,
          signal,
          endpoint: 'chat',
        },
        onText,
      );
      return { text: out.text, timings: out.timings };
    },
    reset: () => host.dropIdle(),
    close: async () => {
      await host.close();
      await backend.close();
    },
  };
}

async function serverBackend(args: ArgumentsCamelCase<ChatArgs>, sampling: () => SamplingOptions): Promise<Backend> {
  const note = (line: string) => process.stderr.write(`herd: ${line}\n`);
  const url = await resolveServer(args.server as string, {
    timeoutMs: args.discoveryTimeout * 1000,
    interface: args.interface,
    note,
  });
  const target: ServerTarget = { url, apiKey: args.apiKey ?? process.env.HERD_API_KEY };
  const model = args.model?.replace(/^.*[\\/]/, '').replace(/\.gguf$/i, '');
  return {
    describe: `${model ?? 'the served model'} at ${url}`,
    reply: async (messages, onText, signal) => {
      const r = await chatOnServer(
        target,
        messages,
        { maxTokens: args.maxTokens, sampling: sampling(), model },
        onText,
        signal,
      );
      return { text: r.text, timings: r.herd?.timings };
    },
    // The server keeps (or evicts) its own sessions.
    reset: async () => {},
    close: async () => {},
  };
}

async function handler(args: ArgumentsCamelCase<ChatArgs>): Promise<void> {
  for (const [name, v, min] of [
    ['max-tokens', args.maxTokens, 0],
    ['seed', args.seed, 0],
    ['ctx', args.ctx, 1],
    ['threads', args.threads, 1],
    ['stages', args.stages, 1],
  ] as const) {
    if (v !== undefined && !(Number.isInteger(v) && v >= min))
      throw new UsageError(`--${name} must be an integer >= ${min}, got ${String(v)}`);
  }
  const base = validateSampling({
    temperature: args.temp,
    topK: args.topK,
    topP: args.topP,
    minP: args.minP,
    repeatPenalty: args.repeatPenalty,
    frequencyPenalty: 0,
    presencePenalty: 0,
    penaltyLastN: defaultSampling.penaltyLastN,
    seed: args.seed ?? 0,
  });
  // A fixed --seed gives every turn the same draws (reproducible); otherwise each turn a fresh seed.
  const sampling = () => ({ ...base, seed: args.seed ?? Math.floor(Math.random() * 0xffffffff) });
  const backend = args.server !== undefined ? await serverBackend(args, sampling) : await localBackend(args, sampling);

  const tty = process.stdin.isTTY === true;
  const opening: ChatMessage[] = args.system ? [{ role: 'system', content: args.system }] : [];
  let messages: ChatMessage[] = [...opening];
  let replying: AbortController | undefined;
  process.stderr.write(`herd chat: ${backend.describe}\n/reset starts over, /exit leaves, Ctrl-C stops a reply\n`);

  const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: tty, prompt: '> ' });
  const interrupt = () => {
    if (replying) replying.abort();
    else {
      process.stdout.write('\n(/exit or Ctrl-D to leave)\n');
      rl.prompt();
    }
  };
  rl.on('SIGINT', interrupt);
  // Without a terminal, Ctrl-C arrives as a signal.
  process.on('SIGINT', interrupt);

  rl.prompt();
  for await (const raw of rl) {
    const line = raw.trim();
    if (line === '/exit' || line === '/quit' || line === '/bye') break;
    if (line === '/reset') {
      messages = [...opening];
      await backend.reset();
      process.stdout.write('(conversation cleared)\n');
    } else if (line.startsWith('/')) {
      process.stdout.write('commands: /reset starts over, /exit leaves; Ctrl-C stops a reply\n');
    } else if (line !== '') {
      messages.push({ role: 'user', content: raw });
      replying = new AbortController();
      try {
        const { text, timings } = await backend.reply(messages, (t) => process.stdout.write(t), replying.signal);
        messages.push({ role: 'assistant', content: text });
        process.stdout.write(replying.signal.aborted ? ' [stopped]\n' : '\n');
        if (args.timings && timings) process.stderr.write(`${timingsLine(timings)}\n`);
      } catch (e) {
        // The turn did not happen: leave the conversation as it was before it.
        messages.pop();
        if (e instanceof ContextError)
          process.stdout.write(`\n(the conversation no longer fits the context: /reset to start over)\n`);
        else if (e instanceof ServerError || e instanceof UsageError) process.stdout.write(`\n(error: ${e.message})\n`);
        else throw e;
      } finally {
        replying = undefined;
      }
    }
    rl.prompt();
  }
  rl.close();
  process.off('SIGINT', interrupt);
  await backend.close();
  if (tty) process.stdout.write('\n');
}

/** `herd: prompt 57 tokens (41 reused, 16 computed) 12 ms | reply 20 tokens 80 ms (250 tok/s)`. */
function timingsLine(t: Timings | Record<string, number>): string {
  const cached = t.prompt_cached ?? 0;
  return (
    `herd: prompt ${t.prompt_tokens} tokens (${cached} reused, ${t.prompt_tokens - cached} computed) ${t.prompt_ms} ms` +
    ` | reply ${t.decode_tokens} tokens ${t.decode_ms} ms (${t.decode_tps} tok/s)`
  );
}

export const chatCommand: CommandModule<object, ChatArgs> = {
  command: 'chat',
  describe: 'Chat with the model in the terminal (multi-turn, streamed, with its chat template)',
  builder,
  handler,
};
