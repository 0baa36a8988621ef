// The coordinator's membership of a herd: `HerdCluster.start` hashes the model, plans, serves
// the model's tensors, and has every stage load its shard; it keeps the plan new sessions open
// on (PipelineSession, pipeline.ts) and, after a node was lost, the one recovery.ts makes.

import { createSocket } from 'node:dgram';
import type { KvType } from '../../model/kv-cache.ts';
import { readConfig } from '../../model/config.ts';
import type { SamplingOptions } from '../../engine/sampler.ts';
import type { ClusterKey } from '../auth.ts';
import { ClusterError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { formatHostPort, interfaceIpv4, parseHostPort } from '../net.ts';
import { plan as makePlan, type ModelShape, type Plan, type PlanNode } from '../planner.ts';
import { authenticate, deadline, describeCallError, nodeClient } from '../rpc.ts';
import { ModelSource } from '../shard/source.ts';
import { modelShape } from '../shape.ts';
import { kvTypeToWire, METHOD, type HerdNodeClient, type WireLoadProgress } from '../wire.ts';
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
    const plan = makePlan(nodes, shape, { stages: o.stages });
    if (plan.stages.some((s) => s.node.address === 'in-process')) {
      throw new ClusterError('usage', 'a plan over the in-process node runs without a cluster');
    }
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

  client(address: string): HerdNodeClient {
    let c = this.clients.get(address);
    if (!c) {
      c = nodeClient(address);
      this.clients.set(address, c);
    }
    return c;
  }

  /** Has every stage of `plan` load its range. */
  loadPlan(plan: Plan, timeoutMs: number): Promise<StageLoad[]> {
    return Promise.all(plan.stages.map((s) => this.loadStage(s.node, s.start, s.end, timeoutMs)));
  }

  /** Makes a loaded plan the one new sessions open on. */
  adopt(plan: Plan, loads: StageLoad[], generation: number): void {
    this.current = { plan, loads, generation };
    this.server.nodes = plan.stages.map((s) => ({ address: s.node.address, info: undefined }));
  }

  private async loadStage(node: PlanNode, start: number, end: number, timeoutMs: number): Promise<StageLoad> {
    const t0 = performance.now();
    const client = this.client(node.address);
    const md = await authenticate(client, this.o.key, METHOD.loadShard).catch((e: unknown) => {
      throw new ClusterError('shard', `node ${node.name} (${node.address}): ${describeCallError(e)}`);
    });
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
        },
        md,
        { deadline: deadline(timeoutMs) },
      );
      call.on('data', (p: WireLoadProgress) => {
        latest = p;
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
    };
    this.o.log.log('info', 'stage.loaded', { ...load, layers: load.layers });
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
