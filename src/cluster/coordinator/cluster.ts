// The coordinator's membership of a herd: `HerdCluster.start` hashes the model, plans, serves
// the model's tensors, and has every stage load its shard; it keeps the plan new sessions open
// on (PipelineSession, pipeline.ts) and, after a node was lost, the one recovery.ts makes.

import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import type { KvType } from '../../model/kv-cache.ts';
import { readConfig } from '../../model/config.ts';
import type { SamplingOptions } from '../../engine/sampler.ts';
import type { ClusterKey } from '../auth.ts';
import { ClusterError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { formatHostPort, interfaceIpv4, parseHostPort } from '../net.ts';
import { plan as makePlan, type ModelShape, type Plan, type PlanNode, type PlannedStage } from '../planner.ts';
import { shareJson, shares, splitShape, type ShareJson, type TensorShare } from '../../model/tensor-share.ts';
import { DEFAULT_SYNC, type SyncFormat } from '../sync/format.ts';
import { deadline, describeCallError, nodeClient, type ChannelPath } from '../rpc.ts';
import { ModelSource } from '../shard/source.ts';
import type { SliceManifest } from '../shard/manifest.ts';
import { modelShape } from '../shape.ts';
import {
  kvTypeToWire,
  manifestToWire,
  shareToWire,
  type HerdNodeClient,
  type WireLoadProgress,
  type WireTensorGroup,
} from '../wire.ts';
import { groupId } from '../node/group.ts';
import { PipelineSession } from './pipeline.ts';
import { Recovery, type RecoveryEvent } from './recovery.ts';
import { CoordinatorServer } from './server.ts';

const LOAD_TIMEOUT_MS = 10 * 60_000;

export interface ClusterOptions {
  readonly modelPath: string;
  /** The nodes, or a function of the model hash giving them (with what each already holds). */
  readonly nodes: readonly PlanNode[] | ((modelHash: string) => readonly PlanNode[]);
  readonly stages?: number;
  readonly ctx: number;
  readonly kvType: KvType;
  readonly wire: 'f32' | 'f16';
  readonly key?: ClusterKey;
  /** Bind the coordinator's server to this interface's address. */
  readonly interface?: string;
  readonly cacheDir?: string;
  readonly log: Logger;
  /** Per-token wait before the pipeline counts as stalled. */
  readonly stepTimeoutMs?: number;
  /** Hears each progress message a node streams while it makes its layers resident. */
  readonly onProgress?: (node: string, layers: [number, number], p: WireLoadProgress) => void;
  /** Bound on one re-plan after a node was lost (probe, plan, load); default 5 min. */
  readonly recoverTimeoutMs?: number;
  /** Hears every node lost, re-plan and resumed session. */
  readonly onRecovery?: (e: RecoveryEvent) => void;
  /** Sessions whose KV caches and buffers every plan fits on each node at once (default 1). */
  readonly sessions?: number;
  /** Every stage a tensor-parallel group of this many nodes (`--tensor`; 1: one node per stage; unset: the planner chooses). */
  readonly tensor?: number;
  /** How a group's members send their partial sums (`--sync`; default DEFAULT_SYNC). */
  readonly sync?: SyncFormat;
}

/** One plan the herd runs: sessions opened on it keep it until they close. */
interface Current {
  readonly plan: Plan;
  readonly loads: StageLoad[];
  /** Counts the plans: a session whose generation is older was opened on a replaced plan. */
  readonly generation: number;
}

/** How each stage got its shard for this run. */
export interface StageLoad {
  readonly node: string;
  readonly address: string;
  readonly layers: [number, number];
  /** memory (already loaded: no reload), local, cache (no transfer) or fetched. */
  readonly source: string;
  readonly bytes_transferred: number;
  readonly ms: number;
  /** A group member: its index, the group's size, its KV heads, FFN rows and head rows. */
  readonly share?: ShareJson & { readonly member: number; readonly size: number };
}

export class HerdCluster {
  private readonly clients = new Map<string, HerdNodeClient>();
  private current: Current;
  private readonly recovery: Recovery;
  closed = false;
  /** Tokens of the model's vocabulary (a delivered token's log-probabilities are checked against it). */
  readonly vocabSize: number;

  private constructor(
    readonly o: ClusterOptions,
    readonly source: ModelSource,
    readonly shape: ModelShape,
    nodes: readonly PlanNode[],
    plan: Plan,
    readonly server: CoordinatorServer,
    readonly deliverTo: string,
  ) {
    this.current = { plan, loads: [], generation: 0 };
    this.recovery = new Recovery(this, nodes);
    this.vocabSize = readConfig(source.file).vocabSize;
  }

  static async start(o: ClusterOptions): Promise<HerdCluster> {
    const source = await ModelSource.open(o.modelPath, o.cacheDir);
    const nodes = typeof o.nodes === 'function' ? o.nodes(source.hash) : o.nodes;
    const shape = modelShape(source.file, o.ctx, o.kvType);
    const plan = makePlan(nodes, shape, planOptions(o, source));
    if (plan.stages.some((s) => s.node.address === 'in-process')) {
      throw new ClusterError('usage', 'a plan over the in-process node runs without a cluster');
    }
    o.log.log('info', 'plan', {
      stages: plan.stages.map(
        (s) => `${(s.members ?? [s]).map((m) => `${m.node.name}@${m.node.address}`).join('+')}[${s.start},${s.end})`,
      ),
      reason: plan.reason,
      token_ms: plan.tokenSeconds * 1000,
      bottleneck_ms: plan.bottleneckSeconds * 1000,
    });
    const server = new CoordinatorServer(source, o.key, o.log);
    const bindHost = o.interface ? interfaceIpv4(o.interface) : '0.0.0.0';
    const port = await server.start(bindHost);
    const first = parseHostPort(plan.stages[0].node.address);
    const host = o.interface ? bindHost : await localAddressFor(first.host, first.port);
    const deliverTo = formatHostPort({ host, port });
    const cluster = new HerdCluster(o, source, shape, nodes, plan, server, deliverTo);
    try {
      cluster.adopt(plan, await cluster.loadPlan(plan, LOAD_TIMEOUT_MS), 0);
    } catch (e) {
      await cluster.close();
      throw e;
    }
    return cluster;
  }

  /** The plan new sessions open on. */
  get plan(): Plan {
    return this.current.plan;
  }

  /** How each stage of the current plan got its shard. */
  get loads(): StageLoad[] {
    return this.current.loads;
  }

  /** The current plan's number: 0 at start, one more per re-plan. */
  get generation(): number {
    return this.current.generation;
  }

  /** A node's client for `path` (cluster/rpc.ts: the step path pings more often), made on first use. */
  client(address: string, path: ChannelPath = 'control'): HerdNodeClient {
    const key = `${path} ${address}`;
    let c = this.clients.get(key);
    if (!c) {
      c = nodeClient(address, this.o.key, path);
      this.clients.set(key, c);
    }
    return c;
  }

  /** Has every stage of `plan` load its range (a group: every member its share, linked). */
  async loadPlan(plan: Plan, timeoutMs: number): Promise<StageLoad[]> {
    const loads = await Promise.all(
      plan.stages.map((s) =>
        s.members ? this.loadGroup(s, timeoutMs) : this.loadStage(s.node, s.start, s.end, timeoutMs).then((l) => [l]),
      ),
    );
    return loads.flat();
  }

  /** The stage's group id, by its leader's address: a route's hop names it. */
  groupOf(stage: PlannedStage): string | undefined {
    return this.groups.get(stage);
  }

  private readonly groups = new WeakMap<PlannedStage, string>();

  /**
   * Has every member of a group stage load its share and link the group: member m learns the
   * data plane addresses of members 0..m-1, so the calls start in order, each once the one
   * before has said where it listens; the loads themselves run side by side. Each member's
   * manifest lists only its share (hashed from this file first, shard/share-manifest.ts).
   */
  private async loadGroup(stage: PlannedStage, timeoutMs: number): Promise<StageLoad[]> {
    const members = stage.members!;
    const manifests = await this.source.shareManifestsFor(
      stage.start,
      stage.end,
      members.map((m) => m.share),
    );
    const token = randomBytes(32);
    const peers: string[] = [];
    const loads: Promise<StageLoad>[] = [];
    for (const [m, { node, share }] of members.entries()) {
      let linking!: (port: number) => void;
      const listening = new Promise<number>((resolve) => (linking = resolve));
      const group: WireTensorGroup = {
        size: members.length,
        member: m,
        ...shareToWire(share),
        sync: this.o.sync ?? DEFAULT_SYNC,
        // the sessions the plan counted on every node: the followers reserve their KV shares
        sessions: this.o.sessions ?? 1,
        token,
        peers: [...peers],
      };
      const manifest = manifests[m];
      const load = this.loadStage(node, stage.start, stage.end, timeoutMs, {
        group,
        share,
        manifest,
        onLinking: linking,
      });
      loads.push(load);
      const port = await Promise.race([listening, load.then(() => 0)]);
      if (port === 0) throw new ClusterError('shard', `node ${node.name} did not open its data plane`);
      peers.push(formatHostPort({ host: parseHostPort(node.address).host, port }));
    }
    const done = await Promise.all(loads);
    this.groups.set(stage, groupId(token));
    return done;
  }

  /** Makes a loaded plan the one new sessions open on. */
  adopt(plan: Plan, loads: StageLoad[], generation: number): void {
    this.current = { plan, loads, generation };
    this.server.nodes = plan.stages.map((s) => ({ address: s.node.address, info: undefined }));
  }

  private async loadStage(
    node: PlanNode,
    start: number,
    end: number,
    timeoutMs: number,
    member?: { group: WireTensorGroup; share: TensorShare; manifest: SliceManifest; onLinking: (port: number) => void },
  ): Promise<StageLoad> {
    const t0 = performance.now();
    const client = this.client(node.address);
    const last = await new Promise<WireLoadProgress>((resolve, reject) => {
      let latest: WireLoadProgress | undefined;
      const { hash: modelHash, size: modelSize, name: modelName, nLayers } = this.source;
      const call = client.loadShard(
        {
          modelHash,
          modelSize,
          modelName,
          start,
          end,
          nLayers,
          ctx: this.o.ctx,
          kvType: kvTypeToWire(this.o.kvType),
          coordinator: this.deliverTo,
          manifest: manifestToWire(member?.manifest ?? this.source.manifestFor(start, end)),
          group: member?.group,
        },
        { deadline: deadline(timeoutMs) },
      );
      call.on('data', (p: WireLoadProgress) => {
        latest = p;
        if (p.phase === 'linking' && p.dataplanePort) member?.onLinking(p.dataplanePort);
        this.o.log.log('debug', 'shard.progress', {
          node: node.name,
          phase: p.phase,
          done: p.bytesDone,
          total: p.bytesTotal,
        });
        this.o.onProgress?.(node.name, [start, end], p);
      });
      const who = `node ${node.name} (${node.address})`;
      call.on('error', (e) => {
        reject(new ClusterError('shard', `${who} could not load layers [${start}, ${end}): ${describeCallError(e)}`));
      });
      call.on('end', () => {
        if (latest?.phase === 'done') resolve(latest);
        else reject(new ClusterError('shard', `node ${node.name} ended LoadShard before it was done`));
      });
    });
    const load: StageLoad = {
      node: node.name,
      address: node.address,
      layers: [start, end],
      source: last.source,
      bytes_transferred: last.bytesTransferred,
      ms: Math.round(performance.now() - t0),
      ...(member && {
        share: {
          member: member.group.member,
          size: member.group.size,
          ...shareJson(member.share),
        },
      }),
    };
    const { share, ...fields } = load;
    this.o.log.log('info', 'stage.loaded', { ...fields, layers: load.layers, member: share?.member });
    return load;
  }

  async openSession(sampling: SamplingOptions): Promise<PipelineSession> {
    return PipelineSession.open(this, sampling);
  }

  /**
   * After a pipeline of plan `generation` broke with `cause`: re-plans over the nodes that still
   * answer (recovery.ts), once for every session that broke with that plan.
   */
  recover(generation: number, cause: Error): Promise<void> {
    return this.recovery.recover(generation, cause);
  }

  /** Logs a recovery event and tells `onRecovery`. */
  report(e: RecoveryEvent): void {
    this.recovery.report(e);
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
    await this.server.stop();
  }
}

/** How the cluster plans: its flags, and the model's tensor shares for groups. */
export function planOptions(
  o: Pick<ClusterOptions, 'stages' | 'sessions' | 'tensor' | 'sync'>,
  source: ModelSource,
): Parameters<typeof makePlan>[2] {
  const config = readConfig(source.file);
  return {
    stages: o.stages,
    sessions: o.sessions,
    tensor: o.tensor,
    sync: o.sync,
    shares: (start, end, weights) => shares(splitShape(source.file, config, [start, end]), weights),
  };
}

/** The local address this machine would use to reach host:port (a UDP connect sends nothing). */
function localAddressFor(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    s.once('error', (e) => {
      s.close();
      reject(new ClusterError('usage', `no route to ${host}: ${e.message}`));
    });
    s.connect(port, host, () => {
      const a = s.address().address;
      s.close();
      resolve(a);
    });
  });
}
