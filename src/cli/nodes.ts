// `herd nodes`: list the herd daemons that answer, found over mDNS or from --peers.

import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { findNodes } from '../cluster/discovery/find.ts';
import { formatBytes } from '../cluster/caps.ts';
import { loadClusterKey } from '../cluster/key.ts';
import { asUsage, keyOptions } from './cluster-options.ts';
import { UsageError } from './errors.ts';
import { writeTable } from './table.ts';
import type { ArgsOf } from './yargs.ts';

function builder(y: Argv) {
  return keyOptions(y)
    .option('json', { type: 'boolean', default: false, describe: 'Print one JSON object' })
    .option('timeout', { type: 'number', default: 2, describe: 'Seconds to listen for answers' })
    .option('interface', { alias: 'i', type: 'string', describe: 'Browse mDNS on this network interface only' })
    .option('peers', {
      type: 'string',
      describe: 'host:port,… to ask directly instead of mDNS (where multicast is blocked)',
    });
}

type NodesArgs = ArgsOf<typeof builder>;

async function handler(args: ArgumentsCamelCase<NodesArgs>): Promise<void> {
  if (!(args.timeout > 0 && args.timeout <= 600)) throw new UsageError('--timeout must be in (0, 600] seconds');
  const key = asUsage(() => loadClusterKey(args));
  const r = await asUsage(() =>
    findNodes({ peers: args.peers, interface: args.interface, timeoutMs: args.timeout * 1000, key }),
  );
  if (args.json) {
    process.stdout.write(
      `${JSON.stringify({
        nodes: r.nodes.map((n) => ({
          address: n.address,
          via: n.via,
          ...n.caps,
          ...(n.info
            ? {
                version: n.info.version,
                auth_required: n.info.authRequired,
                shards: n.info.shards,
                cached: n.info.cached,
                counters: n.info.counters,
              }
            : {}),
        })),
        unreachable: r.unreachable,
      })}\n`,
    );
    return;
  }
  if (r.nodes.length === 0) {
    process.stdout.write(
      `no herd nodes answered in ${args.timeout} s${args.peers ? '' : ' (mDNS; try --peers host:port,… where multicast is blocked)'}\n`,
    );
  } else {
    const rows = [
      ['NAME', 'ADDRESS', 'ARCH', 'BACKEND', 'CORES', 'MEM AVAIL', 'MEM TOTAL', 'MATVEC'],
      ...r.nodes.map((n) => [
        n.caps.name,
        n.address,
        n.caps.arch,
        n.caps.backend,
        String(n.caps.cores),
        formatBytes(n.caps.memAvailable),
        formatBytes(n.caps.memTotal),
        `${(n.caps.throughput / 1e9).toFixed(2)} GB/s`,
      ]),
    ];
    writeTable(rows);
  }
  for (const u of r.unreachable) process.stderr.write(`herd: ${u.address} did not answer: ${u.error}\n`);
}

export const nodesCommand: CommandModule<object, NodesArgs> = {
  command: 'nodes',
  describe: 'List the herd nodes on the LAN (mDNS) or at --peers',
  builder,
  handler,
};
