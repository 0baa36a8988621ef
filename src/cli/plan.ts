// `herd plan`: show which layers of a model would go to which node, before anything loads.

import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { GgufFile } from '../gguf/reader.ts';
import { readConfig } from '../model/config.ts';
import { resolveNodes, withHoldings } from '../cluster/coordinator/nodes.ts';
import { modelHash } from '../cluster/shard/model-hash.ts';
import { plan, type PlanSummary } from '../cluster/planner.ts';
import { shareJson, shares, splitShape } from '../model/tensor-share.ts';
import { modelShape } from '../cluster/shape.ts';
import { formatBytes } from '../cluster/caps.ts';
import { resolveModelPath } from './model-path.ts';
import { loadClusterKey } from '../cluster/key.ts';
import { asUsage, defaultCacheDir, keyOptions, tensorArg } from './cluster-options.ts';
import { DEFAULT_SYNC, SYNC_FORMATS } from '../cluster/sync/format.ts';
import { UsageError } from './errors.ts';
import { writeTable } from './table.ts';
import type { ArgsOf } from './yargs.ts';

function builder(y: Argv) {
  return keyOptions(y)
    .option('model', {
      alias: 'm',
      type: 'string',
      describe:
        'GGUF model: a file, a stored model (herd models) or a pulled hf.co/ORG/REPO[:QUANT] (default: the bundled stories260K)',
    })
    .option('nodes', { type: 'string', default: 'auto', describe: 'auto (mDNS), local, or host:port,…' })
    .option('stages', { type: 'number', describe: 'Exactly this many pipeline stages' })
    .option('tensor', {
      type: 'number',
      describe:
        'Make every stage a tensor-parallel group of N nodes; 1: one node per stage (default: groups only where predicted 15% faster, as herd run chooses)',
    })
    .option('sync', {
      choices: SYNC_FORMATS,
      default: DEFAULT_SYNC,
      describe: "Element type of a group's partial sums (as herd run --sync): the bytes of each predicted sync",
    })
    .option('interface', { alias: 'i', type: 'string', describe: 'Discover on this network interface only' })
    .option('timeout', { type: 'number', default: 2, describe: 'Seconds to wait for nodes to answer' })
    .option('ctx', {
      alias: 'c',
      type: 'number',
      describe: "Context size the KV caches must hold (default: the model's, at most 4096)",
    })
    .option('kv-type', { choices: ['f32', 'f16'] as const, default: 'f16' as const, describe: 'KV cache element type' })
    .option('parallel', {
      type: 'number',
      default: 1,
      describe:
        'Sessions whose KV caches and activation buffers must fit at once on every node (as herd serve --parallel)',
    })
    .option('json', { type: 'boolean', default: false, describe: 'Print one JSON object' });
}

type PlanArgs = ArgsOf<typeof builder>;

async function handler(args: ArgumentsCamelCase<PlanArgs>): Promise<void> {
  if (args.stages !== undefined && !(Number.isInteger(args.stages) && args.stages >= 1))
    throw new UsageError('--stages must be an integer >= 1');
  if (!(Number.isInteger(args.parallel) && args.parallel >= 1 && args.parallel <= 256))
    throw new UsageError('--parallel must be an integer in 1..256');
  const tensor = tensorArg(args.tensor);
  const path = resolveModelPath(args.model);
  const file = GgufFile.open(path);
  const config = readConfig(file);
  const ctx = args.ctx ?? Math.min(config.ctxTrain, 4096);
  const key = asUsage(() => loadClusterKey(args));
  const set = await asUsage(() =>
    resolveNodes({
      nodes: args.nodes,
      interface: args.interface,
      timeoutMs: args.timeout * 1000,
      want: args.stages !== undefined && tensor !== undefined ? args.stages * tensor : args.stages,
      key,
    }),
  );
  for (const n of set.notes) process.stderr.write(`herd: ${n}\n`);
  // Plan as `herd run` would: preferring the ranges the nodes already hold.
  const nodes = set.mode === 'cluster' ? withHoldings(set, await modelHash(path, defaultCacheDir())) : set.nodes;
  const p = plan(nodes, modelShape(file, ctx, args.kvType), {
    stages: args.stages,
    sessions: args.parallel,
    tensor,
    sync: args.sync,
    shares: (start, end, weights) => shares(splitShape(file, config, [start, end]), weights),
  });
  // A group's members, the leader first, each with its KV heads, FFN rows and head rows.
  const membersOf = (s: (typeof p.stages)[number]) =>
    (s.members ?? [{ node: s.node, share: undefined }]).map((m) => ({
      node: m.node.name,
      address: m.node.address,
      share: m.share ? shareJson(m.share) : null,
    }));
  if (args.json) {
    process.stdout.write(
      `${JSON.stringify({
        model: path,
        layers: config.nLayers,
        ctx,
        kv_type: args.kvType,
        parallel: args.parallel,
        mode: set.mode,
        plan: p.stages.map((s) => ({
          node: s.node.name,
          address: s.node.address,
          layers: [s.start, s.end],
          nodes: membersOf(s),
          weight_bytes: s.weightBytes,
          kv_bytes: s.kvBytes,
          buffer_bytes: s.bufferBytes,
          mem_bytes: s.memBytes,
          mem_available: s.node.memAvailable,
          ms_per_token: s.seconds * 1000,
          sync_ms: s.syncSeconds === undefined ? null : s.syncSeconds * 1000,
        })),
        bottleneck_ms: p.bottleneckSeconds * 1000,
        token_ms: p.tokenSeconds * 1000,
        reason: p.reason,
        rejected: p.rejected
          ? {
              plan: p.rejected.kind,
              bottleneck_ms: p.rejected.bottleneckSeconds * 1000,
              token_ms: p.rejected.tokenSeconds * 1000,
            }
          : null,
      })}\n`,
    );
    return;
  }
  const rows = [
    ['STAGE', 'NODE', 'ADDRESS', 'LAYERS', 'WEIGHTS', 'KV', 'NEEDS', 'AVAILABLE', 'MS/TOKEN'],
    ...p.stages.map((s, i) => [
      String(i + 1),
      membersOf(s)
        .map((m) =>
          m.share
            ? `${m.node} (kv ${m.share.kv_heads.join('-')}, ffn ${m.share.ffn_rows.join('-')}` +
              `${m.share.vocab_rows ? `, head ${m.share.vocab_rows.join('-')}` : ''})`
            : m.node,
        )
        .join(' + '),
      membersOf(s)
        .map((m) => m.address)
        .join(','),
      `[${s.start}, ${s.end})`,
      formatBytes(s.weightBytes),
      formatBytes(s.kvBytes),
      formatBytes(s.memBytes),
      formatBytes(s.node.memAvailable),
      (s.seconds * 1000).toFixed(2),
    ]),
  ];
  const sessions = args.parallel === 1 ? 'one session' : `${args.parallel} sessions`;
  process.stdout.write(
    `${path}: ${config.nLayers} layers, ctx ${ctx}, ${args.kvType} KV cache; KV for ${sessions} counted on every node\n`,
  );
  writeTable(rows);
  const times = (x: PlanSummary) =>
    `${(x.tokenSeconds * 1000).toFixed(2)} ms/token through all stages, slowest stage ${(x.bottleneckSeconds * 1000).toFixed(2)} ms`;
  const syncs = p.stages.some((s) => s.members) ? ', and 2 syncs per layer of a group from measured link latency' : '';
  process.stdout.write(`predicted ${times(p)} (from measured matvec throughput${syncs})\n`);
  if (p.rejected) process.stdout.write(`rejected ${p.rejected.kind}: ${times(p.rejected)}\n`);
  process.stdout.write(`why: ${p.reason}\n`);
}

export const planCommand: CommandModule<object, PlanArgs> = {
  command: 'plan',
  describe: 'Show how a model would be split across the herd',
  builder,
  handler,
};
