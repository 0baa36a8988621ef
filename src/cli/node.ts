// `herd node`: the daemon. Serves HerdNode over gRPC, advertises _herd._tcp over mDNS, logs
// one JSON line per event on stderr, and on SIGINT/SIGTERM says goodbye and exits 0.

import { hostname } from 'node:os';
import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { BACKEND_CHOICES, createBackend, type BackendChoice } from '../kernels/select.ts';
import { loadClusterKey } from '../cluster/key.ts';
import { DEFAULT_PORT } from '../cluster/caps.ts';
import { MdnsAdvertiser } from '../cluster/discovery/mdns.ts';
import { jsonLogger } from '../cluster/log.ts';
import { interfaceIpv4 } from '../cluster/net.ts';
import { NodeServer } from '../cluster/node/server.ts';
import { benchmarkMatvec, herdVersion, nodeId, readHostInfo } from '../cluster/node/sysinfo.ts';
import { asUsage, defaultCacheDir, keyOptions } from './cluster-options.ts';
import { UsageError } from './errors.ts';
import type { ArgsOf } from './yargs.ts';

/** Bytes per second in a GB/s (the unit of `--throughput` and of `herd nodes`' MATVEC column). */
const GB = 1e9;
/** Keeps the advertised bytes per second a safe integer (TXT `tput`, Info `throughput`). */
const MAX_THROUGHPUT_GBPS = 1e6;

function builder(y: Argv) {
  return keyOptions(
    y
      .option('port', { alias: 'p', type: 'number', default: DEFAULT_PORT, describe: 'gRPC port (0: any free port)' })
      .option('host', { type: 'string', describe: 'Address to listen on (default: all, or the --interface address)' })
      .option('name', { type: 'string', describe: 'Name shown to coordinators (default: the host name)' })
      .option('interface', {
        alias: 'i',
        type: 'string',
        describe: 'Pin mDNS and the advertised address to this network interface',
      })
      .option('cache-dir', {
        type: 'string',
        describe: 'Where shards and the node id live (default: $HERD_CACHE_DIR or ~/.cache/herd)',
      })
      .option('model-dir', {
        type: 'string',
        describe: 'Directory of GGUF files to read shards from directly when the hash matches',
      })
      .option('threads', {
        alias: 't',
        type: 'number',
        describe: 'Kernel threads (default: physical cores; the js backend runs on one)',
      })
      .option('backend', {
        choices: BACKEND_CHOICES,
        default: 'auto' as BackendChoice,
        describe: 'Kernels: auto picks native, else wasm, else js',
      })
      .option('mdns', {
        type: 'boolean',
        default: true,
        describe: 'Advertise over mDNS (--no-mdns: reachable only via --peers)',
      })
      .option('grace', {
        type: 'number',
        default: 5,
        describe: 'Seconds to let in-flight work finish on SIGINT/SIGTERM',
      })
      .option('max-memory', {
        type: 'number',
        describe:
          'Offer coordinators at most this many MiB of memory for layers and KV caches, and admit sessions within it (default: all that is free at start-up)',
      })
      .option('cache-max', {
        type: 'number',
        describe:
          'Keep at most this many MiB of shard slices in the cache dir; least recently used ones not loaded go first (default: no limit)',
      })
      .option('session-idle', {
        type: 'number',
        default: 3600,
        describe: 'Seconds a session may go without a message before the node drops it and frees its KV cache',
      })
      .option('transfer-stall', {
        type: 'number',
        default: 30,
        describe: 'Seconds a shard transfer may bring nothing before it is cut and fetched once more',
      })
      .option('throughput', {
        type: 'number',
        requiresArg: true,
        describe:
          "Advertise this kernel throughput (GB/s of weights) instead of measuring it at start-up: pins the node's weight in the plan",
      }),
  );
}

type NodeArgs = ArgsOf<typeof builder>;

async function handler(args: ArgumentsCamelCase<NodeArgs>): Promise<void> {
  if (!(Number.isInteger(args.port) && args.port >= 0 && args.port <= 65535))
    throw new UsageError(`--port must be in 0..65535, got ${args.port}`);
  if (args.threads !== undefined && !(Number.isInteger(args.threads) && args.threads >= 1))
    throw new UsageError('--threads must be an integer >= 1');
  if (args.maxMemory !== undefined && !(Number.isFinite(args.maxMemory) && args.maxMemory > 0))
    throw new UsageError('--max-memory must be a positive number of MiB');
  if (args.cacheMax !== undefined && !(Number.isFinite(args.cacheMax) && args.cacheMax >= 0))
    throw new UsageError('--cache-max must be a number of MiB >= 0');
  if (!(Number.isFinite(args.sessionIdle) && args.sessionIdle > 0))
    throw new UsageError('--session-idle must be a positive number of seconds');
  if (!(Number.isFinite(args.transferStall) && args.transferStall > 0))
    throw new UsageError('--transfer-stall must be a positive number of seconds');
  if (
    args.throughput !== undefined &&
    !(Number.isFinite(args.throughput) && args.throughput > 0 && args.throughput <= MAX_THROUGHPUT_GBPS)
  ) {
    throw new UsageError(
      `--throughput must be a positive number of GB/s (at most ${MAX_THROUGHPUT_GBPS}), got ${args.throughput}`,
    );
  }
  const key = asUsage(() => loadClusterKey(args));
  const host = args.host ?? (args.interface ? asUsage(() => interfaceIpv4(args.interface as string)) : '0.0.0.0');
  const name = args.name ?? hostname();
  const cacheDir = args.cacheDir ?? defaultCacheDir();
  const log = jsonLogger({ node: name });

  const hostInfo = await readHostInfo();
  const backend = await createBackend(args.backend, {
    threads: args.threads,
    note: (line) => log.log('warn', 'kernels.fallback', { detail: line }),
  });
  // Pinned (--throughput) or the kernel's measured speed, weight bytes per second.
  const pinned = args.throughput !== undefined;
  const throughput = pinned ? Math.max(1, Math.round((args.throughput as number) * GB)) : benchmarkMatvec(backend);
  const id = nodeId(cacheDir);
  const server = new NodeServer({
    nodeId: id,
    name,
    host,
    port: args.port,
    cacheDir,
    modelDir: args.modelDir,
    key,
    backend,
    hostInfo,
    throughput,
    version: herdVersion(),
    log,
    maxMemory: args.maxMemory === undefined ? undefined : Math.floor(args.maxMemory * 1024 * 1024),
    cacheMaxBytes: args.cacheMax === undefined ? undefined : Math.floor(args.cacheMax * 1024 * 1024),
    transferStallMs: args.transferStall * 1000,
    sessionIdleMs: args.sessionIdle * 1000,
  });
  const port = await server.start();
  if (!key) {
    const detail =
      'no cluster key: plaintext gRPC, and anyone on the network may use this node, read its prompts and ' +
      'model, and send it tokens (make a key with `herd keygen`)';
    log.log('warn', 'auth.open', { detail });
  }

  let advertiser: MdnsAdvertiser | undefined;
  if (args.mdns) {
    advertiser = await MdnsAdvertiser.start({ name, port, caps: server.capabilities, interface: args.interface });
    log.log('info', 'mdns.advertise', { service: advertiser.instanceName, interface: args.interface ?? 'all' });
  }
  if (!pinned) {
    server.remeasure(
      () => benchmarkMatvec(backend),
      (t) => {
        log.log('info', 'node.throughput', { throughput: Math.round(t) });
        void advertiser?.updateTxt(server.capabilities);
      },
    );
  }
  log.log('info', 'node.ready', {
    id,
    host,
    port,
    cacheDir,
    backend: backend.name,
    cores: hostInfo.cores,
    memTotal: hostInfo.memTotal,
    memAvailable: server.capabilities.memAvailable,
    throughput: Math.round(throughput),
    throughputPinned: pinned,
    auth: key !== undefined,
    mdns: args.mdns,
  });

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.log('info', 'node.stop', { signal });
    void (async () => {
      try {
        await advertiser?.stop(); // goodbye packets first: coordinators stop choosing us
        await server.stop(args.grace * 1000);
        await backend.close();
        log.log('info', 'node.exit', { code: 0 });
        process.exit(0);
      } catch (e) {
        log.log('error', 'node.exit', { code: 1, error: e instanceof Error ? e.message : String(e) });
        process.exit(1);
      }
    })();
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

export const nodeCommand: CommandModule<object, NodeArgs> = {
  command: 'node',
  describe: 'Run a herd node daemon: serve layers of models to coordinators on the LAN',
  builder,
  handler,
};
