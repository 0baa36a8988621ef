// `herd serve`: the standing coordinator. Loads the model once (in-process or over the herd),
// serves the OpenAI-compatible API, /metrics and the dashboard, advertises `_herd-api._tcp`,
// logs one JSON line per event on stderr (pino), and on SIGINT/SIGTERM cancels what is in
// flight, says goodbye over mDNS and exits 0.

import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import type { Logger } from 'pino';
import type { ApiAdvertiser as ApiAdvertiserType } from '../api/advertise.ts';
import { loadClusterKey } from '../cluster/key.ts';
import { herdVersion } from '../cluster/node/sysinfo.ts';
import { createBackend } from '../kernels/select.ts';
import {
  asUsage,
  CHAT_TEMPLATE_HELP,
  engineOptions,
  herdOptions,
  hostModelOptions,
  tensorOptions,
} from './cluster-options.ts';
import { resolveModelPath } from './model-path.ts';
import { ProgressRenderer } from './progress.ts';
import { UsageError } from './errors.ts';
import type { ArgsOf } from './yargs.ts';

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'silent'] as const;
export type LogLevelName = (typeof LOG_LEVELS)[number];

/** --request-timeout's default, seconds. */
const REQUEST_TIMEOUT_S = 30;

function builder(y: Argv) {
  const listen = y
    .option('host', {
      type: 'string',
      default: '127.0.0.1',
      describe: 'Address to listen on (0.0.0.0: the whole LAN; auto: the LAN with an API key, else 127.0.0.1)',
    })
    .option('port', { alias: 'p', type: 'number', default: 8080, describe: 'HTTP port (0: any free port)' })
    .option('grpc-port', {
      type: 'number',
      describe:
        'Also serve gRPC HerdCoordinator.Generate on this port (0: any free port; default: off); ' +
        'needs the cluster key proof when one is set',
    });
  const engine = engineOptions(listen, {
    ctx: "Context size in tokens per session (default: the model's, at most 4096)",
    backend: 'Kernels for in-process layers: auto picks native, else wasm, else js',
  })
    .option('parallel', {
      type: 'number',
      describe:
        'Sessions generating at once; more requests wait in line (default: 4, fewer if their KV caches do not fit)',
    })
    .option('idle-timeout', {
      type: 'number',
      default: 300,
      describe:
        "Seconds a finished request's session stays open for prompt reuse before its KV caches are freed " +
        '(0: until a request needs its slot)',
    })
    .option('queue', {
      type: 'number',
      default: 32,
      describe: 'Requests that may wait for a session; more are refused with 429 and Retry-After',
    })
    .option('chat-template', { type: 'string', describe: CHAT_TEMPLATE_HELP })
    .option('api-key', {
      type: 'string',
      describe:
        'Require "Authorization: Bearer KEY" on /v1, /metrics, /api/state and gRPC Generate ' +
        '(prefer --api-key-file or $HERD_API_KEY)',
    })
    .option('api-key-file', {
      type: 'string',
      describe: 'File holding the API key, or several, one per line: one per client, whose kept prompts stay its own',
    })
    .option('cors', {
      type: 'string',
      array: true,
      describe: 'Let web pages of this origin (scheme://host[:port], or *) call the API; repeatable or comma-separated',
    })
    .option('request-timeout', {
      type: 'number',
      default: REQUEST_TIMEOUT_S,
      describe: "Seconds a request's headers (at most 10) and body may take to arrive; answers are not limited",
    })
    .option('log-level', {
      choices: LOG_LEVELS,
      default: 'info' as const,
      describe: 'JSON log lines on stderr from this level up',
    })
    .option('mdns', {
      type: 'boolean',
      default: true,
      describe: 'Advertise _herd-api._tcp over mDNS (never for a loopback --host)',
    })
    .option('name', { type: 'string', describe: 'mDNS instance name (default: herd on HOSTNAME)' });
  return tensorOptions(
    herdOptions(engine, {
      interface: 'Discover nodes, serve the coordinator and advertise on this network interface only',
    }),
  )
    .option('rediscover', {
      type: 'number',
      default: 30,
      describe:
        'With --nodes auto: seconds between looks for nodes that came or went, re-planning while idle (0: never)',
    })
    .group(['rediscover'], 'Herd:');
}

type ServeArgs = ArgsOf<typeof builder>;

function integerIn(name: string, v: number | undefined, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (v !== undefined && !(Number.isInteger(v) && v >= min && v <= max))
    throw new UsageError(`--${name} must be an integer in ${min}..${max}, got ${String(v)}`);
}

/** The API keys from --api-key, --api-key-file (one per line) or $HERD_API_KEY (in that order). */
function apiKeys(args: ArgumentsCamelCase<ServeArgs>): string[] {
  if (args.apiKey !== undefined && args.apiKeyFile !== undefined)
    throw new UsageError('give --api-key or --api-key-file, not both');
  if (args.apiKeyFile !== undefined) {
    let text: string;
    try {
      text = readFileSync(args.apiKeyFile, 'utf8');
    } catch (e) {
      throw new UsageError(`cannot read the API key file: ${(e as Error).message}`);
    }
    const keys = text
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '');
    if (keys.length === 0) throw new UsageError(`the API key file ${args.apiKeyFile} holds no key`);
    return keys;
  }
  // An empty $HERD_API_KEY (compose passes one through when unset) means no key.
  const key = (args.apiKey ?? (process.env.HERD_API_KEY || undefined))?.trim();
  if (key === '') throw new UsageError('the API key is empty');
  return key === undefined ? [] : [key];
}

/** pino, as one JSON line per event on stderr: {"level":"info","time":…,"event":"serve.listening",…}. */
export async function apiLogger(level: LogLevelName): Promise<Logger> {
  const { pino } = await import('pino');
  return pino(
    {
      level,
      base: undefined,
      messageKey: 'event',
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    pino.destination({ fd: 2, sync: true }),
  );
}

async function handler(args: ArgumentsCamelCase<ServeArgs>): Promise<void> {
  integerIn('port', args.port, 0, 65535);
  integerIn('grpc-port', args.grpcPort, 0, 65535);
  integerIn('ctx', args.ctx, 1);
  integerIn('parallel', args.parallel, 1, 256);
  integerIn('queue', args.queue, 0, 100_000);
  if (!(Number.isFinite(args.requestTimeout) && args.requestTimeout > 0 && args.requestTimeout <= 3600))
    throw new UsageError(`--request-timeout must be a number of seconds in (0, 3600], got ${args.requestTimeout}`);
  integerIn('stages', args.stages, 1);
  integerIn('threads', args.threads, 1);
  if (!(Number.isFinite(args.rediscover) && args.rediscover >= 0))
    throw new UsageError(`--rediscover must be a number of seconds >= 0, got ${args.rediscover}`);
  if (!(Number.isFinite(args.idleTimeout) && args.idleTimeout >= 0))
    throw new UsageError(`--idle-timeout must be a number of seconds >= 0, got ${args.idleTimeout}`);
  const keys = apiKeys(args);
  const key = keys.length > 0;
  // An open API stays on this machine unless the user says otherwise.
  const listenHost = args.host === 'auto' ? (key ? '0.0.0.0' : '127.0.0.1') : args.host;
  const clusterKey = asUsage(() => loadClusterKey(args));
  const log = await apiLogger(args.logLevel);
  const version = herdVersion();
  // Loaded here, not at the top: every other herd command starts without the API's packages.
  const { ApiServer } = await import('../api/server.ts');
  const { ApiAdvertiser } = await import('../api/advertise.ts');
  const { parseOrigins } = await import('../api/cors.ts');
  let cors: string[];
  try {
    cors = parseOrigins(args.cors ?? []);
  } catch (e) {
    throw new UsageError(`--cors: ${(e as Error).message}`);
  }
  const { GrpcApi } = args.grpcPort !== undefined ? await import('../api/grpc.ts') : { GrpcApi: undefined };

  const modelPath = resolveModelPath(args.model);
  const backend = await createBackend(args.backend, {
    threads: args.threads,
    note: (detail) => log.warn({ detail }, 'backend.note'),
  });
  const server = new ApiServer({
    host: {
      ...hostModelOptions(args, modelPath, backend, clusterKey),
      parallel: args.parallel,
      log,
      rediscoverSeconds: args.rediscover,
      idleSeconds: args.idleTimeout,
      queue: args.queue,
      // stderr carries the JSON logs: progress goes there as plain events (start, each quarter, end).
      progress: new ProgressRenderer(
        { write: (line) => log.info({ detail: line.replace(/^herd: /, '').trim() }, 'load.progress') },
        { tty: false },
      ).sink,
    },
    apiKeys: keys,
    cors,
    requestTimeoutSeconds: args.requestTimeout,
    log,
    version,
  });
  const host = server.host;
  const addr = await server.listen(listenHost, args.port).catch((e: NodeJS.ErrnoException) => {
    throw new UsageError(`cannot listen on ${listenHost}:${args.port}: ${e.code ?? e.message}`);
  });
  const url = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
  const grpc = GrpcApi && new GrpcApi(host, server.metrics, clusterKey, log, server.keys);
  if (grpc) {
    const port = await grpc.listen(listenHost, args.grpcPort as number).catch((e: Error) => {
      throw new UsageError(`cannot serve gRPC on ${listenHost}:${String(args.grpcPort)}: ${e.message}`);
    });
    log.info({ host: listenHost, port, auth: clusterKey !== undefined }, 'grpc.listening');
  }
  if (!key && !/^127\.|^::1$|^localhost$/.test(listenHost))
    log.warn({ detail: 'no API key: anyone on the network may use this server' }, 'auth.open');

  let advertiser: ApiAdvertiserType | undefined;
  if (args.mdns) {
    const r = await ApiAdvertiser.start({
      name: args.name ?? `herd on ${hostname()}`,
      host: listenHost,
      port: addr.port,
      model: host.modelId,
      auth: key,
      version,
      interface: args.interface,
    }).catch((e: Error) => `mDNS failed: ${e.message}`);
    if (typeof r === 'string') log.info({ reason: r }, 'mdns.skipped');
    else {
      advertiser = r;
      log.info({ service: r.instanceName, interface: args.interface ?? 'all' }, 'mdns.advertise');
    }
  }
  // One human line on stdout whatever the log level (the JSON lines go to stderr).
  process.stdout.write(`herd: serving ${host.modelId} on ${url}\n`);
  log.info(
    {
      url,
      host: addr.address,
      port: addr.port,
      model: host.modelId,
      template: host.template.name,
      slots: host.slots.size,
      backend: backend.name,
      threads: backend.threads,
      auth: key,
      keys: keys.length,
      cors,
      queue: args.queue,
      mdns: advertiser !== undefined,
    },
    'serve.listening',
  );

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'serve.stopping');
    await grpc?.close();
    await server.close();
    await advertiser?.stop().catch(() => {});
    await host.close();
    await backend.close();
    log.info({}, 'serve.stopped');
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));

  // Load after listening: /health answers 503 "loading" meanwhile (a big model takes a while).
  await host.start();
  if (host.status === 'ready') log.info({ url, model: host.modelId, mode: host.mode }, 'serve.ready');
}

export const serveCommand: CommandModule<object, ServeArgs> = {
  command: 'serve',
  describe: 'Serve the OpenAI-compatible API, /metrics and a dashboard: the standing coordinator of the herd',
  builder,
  handler,
};
