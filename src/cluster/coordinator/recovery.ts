// Recovery after a node was lost mid-generation. A node that dies breaks every pipeline
// through it; `recover` (once for all the sessions that broke together) asks every node it
// knows whether it still answers, plans again over the ones that do, and has them load their
// new layer ranges; the sessions then replay their tokens on the new plan (resume.ts). When the
// model no longer fits the survivors, recover throws an error naming the lost nodes.

import { ClusterError } from '../errors.ts';
import type { ClusterKey } from '../key.ts';
import { plan as makePlan, PlanError, type PlanNode } from '../planner.ts';
import { describeCallError } from '../rpc.ts';
import { fetchInfo } from '../discovery/static.ts';
import { heldRanges, type NodeInfo } from '../wire.ts';
import { planOptions, type HerdCluster } from './cluster.ts';

/**
 * One Info probe of a node after a pipeline broke. A working node answers well within it: its
 * event loop turns between steps and, in a long step, every 0.25 s of compute (node/stage.ts).
 * So a cut link is found 1.5 s after the pipeline broke, which the step path's keepalive does
 * within 2.5 s of the cut (cluster/rpc.ts).
 */
const PROBE_TIMEOUT_MS = 1500;
/** Default bound on one re-plan: probing, planning and loading the new ranges. */
const RECOVER_TIMEOUT_MS = 5 * 60_000;

/** What happened while the herd recovered from a lost node, one structured log line each. */
export type RecoveryEvent =
  | {
      readonly event: 'node.lost';
      readonly node: string;
      readonly address: string;
      readonly layers?: readonly [number, number];
      readonly error: string;
    }
  | {
      readonly event: 'replan.start';
      readonly lost: readonly string[];
      readonly survivors: number;
      readonly cause: string;
    }
  | {
      readonly event: 'replan.done';
      readonly ok: true;
      readonly plan: readonly string[];
      readonly nodeIds: readonly string[];
      readonly ms: number;
    }
  | { readonly event: 'replan.done'; readonly ok: false; readonly error: string; readonly ms: number }
  | {
      readonly event: 'request.resumed';
      readonly session: string;
      readonly position: number;
      readonly steps: number;
      readonly attempt: number;
      readonly ms: number;
    };

/** What recovery needs of the cluster: its plan, and loading and adopting a new one. */
type Replannable = Pick<
  HerdCluster,
  'o' | 'shape' | 'source' | 'plan' | 'generation' | 'closed' | 'loadPlan' | 'adopt'
>;

export class Recovery {
  /** The nodes a re-plan may use: every node offered at start, less the ones found lost. */
  private candidates: PlanNode[];
  private recovering: Promise<void> | undefined;

  constructor(
    private readonly cluster: Replannable,
    nodes: readonly PlanNode[],
  ) {
    this.candidates = [...nodes];
  }

  /**
   * After a pipeline of plan `generation` broke with `cause`: re-plans over the nodes that still
   * answer and loads the new ranges, once for every session that broke with that plan (a
   * session of an older plan finds the new one in place). Throws a ClusterError naming the lost
   * nodes when the model no longer fits the survivors or the new plan could not load.
   */
  recover(generation: number, cause: Error): Promise<void> {
    if (this.cluster.closed) return Promise.reject(cause);
    if (generation < this.cluster.generation) return Promise.resolve();
    this.recovering ??= this.replan(cause).finally(() => (this.recovering = undefined));
    return this.recovering;
  }

  /** Logs a recovery event and tells `onRecovery`. */
  report(e: RecoveryEvent): void {
    const { event, ...fields } = e;
    const level = event === 'node.lost' || (event === 'replan.done' && !e.ok) ? 'warn' : 'info';
    this.cluster.o.log.log(
      level,
      event,
      fields as Record<string, string | number | boolean | readonly (string | number)[]>,
    );
    this.cluster.o.onRecovery?.(e);
  }

  private async replan(cause: Error): Promise<void> {
    const t0 = performance.now();
    const limit = this.cluster.o.recoverTimeoutMs ?? RECOVER_TIMEOUT_MS;
    const planned = this.cluster.plan.stages;
    let lostNames: string[] = [];
    try {
      const probes = await Promise.all(
        this.candidates.map(async (n) => ({ n, ...(await probe(n.address, this.cluster.o.key)) })),
      );
      const lost = probes.filter((p) => p.error !== undefined);
      lostNames = lost.map((p) => `${p.n.name} (${p.n.address})`);
      for (const p of lost) {
        const stage = planned.find((s) => s.node.id === p.n.id);
        const layers = stage ? { layers: [stage.start, stage.end] as const } : {};
        this.report({ event: 'node.lost', node: p.n.name, address: p.n.address, ...layers, error: p.error ?? '' });
      }
      // A survivor offers what it offered at start (its loaded layers are evicted for new ones),
      // and holds what it says it holds now.
      const survivors = probes.flatMap((p) =>
        p.info ? [{ ...p.n, holds: heldRanges(p.info, this.cluster.source.hash) }] : [],
      );
      this.candidates = survivors;
      this.report({ event: 'replan.start', lost: lostNames, survivors: survivors.length, cause: cause.message });
      if (survivors.length === 0) throw new PlanError('no node answers');
      // Groups as asked while enough nodes are left for one, else one node per stage; without
      // --tensor the planner chooses again.
      const o = this.cluster.o;
      const tensor = o.tensor === undefined ? undefined : survivors.length >= o.tensor ? o.tensor : 1;
      const room = Math.floor(survivors.length / (tensor ?? 1));
      const want = o.stages === undefined ? undefined : Math.min(o.stages, room);
      const plan = makePlan(survivors, this.cluster.shape, {
        ...planOptions({ sessions: o.sessions, tensor, sync: o.sync }, this.cluster.source),
        stages: want,
      });
      let timer: NodeJS.Timeout | undefined;
      const loads = await Promise.race([
        this.cluster.loadPlan(plan, limit),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new ClusterError('shard', `the new plan did not load in ${limit / 1000} s`)),
            limit,
          );
        }),
      ]).finally(() => clearTimeout(timer));
      if (this.cluster.closed) throw new ClusterError('pipeline', 'the coordinator closed');
      this.cluster.adopt(plan, loads, this.cluster.generation + 1);
      this.report({
        event: 'replan.done',
        ok: true,
        ms: Math.round(performance.now() - t0),
        plan: plan.stages.map(
          (s) => `${(s.members ?? [s]).map((m) => `${m.node.name}@${m.node.address}`).join('+')}[${s.start},${s.end})`,
        ),
        nodeIds: survivors.map((n) => n.id),
      });
    } catch (e) {
      const what =
        lostNames.length > 0
          ? `lost node ${lostNames.join(', ')} mid-generation`
          : `the pipeline failed (${cause.message})`;
      const why =
        e instanceof PlanError
          ? `the model no longer fits the nodes left: ${e.message}`
          : `re-planning failed: ${(e as Error).message}`;
      const err = new ClusterError(e instanceof PlanError ? 'plan' : 'pipeline', `${what}, and ${why}`);
      this.report({ event: 'replan.done', ok: false, error: err.message, ms: Math.round(performance.now() - t0) });
      throw err;
    }
  }
}

/** Whether a node still answers: its Info, or why it counts as lost (refused, reset, or silent for PROBE_TIMEOUT_MS). */
async function probe(address: string, key: ClusterKey | undefined): Promise<{ info?: NodeInfo; error?: string }> {
  try {
    return { info: await fetchInfo(address, PROBE_TIMEOUT_MS, key) };
  } catch (e) {
    return { error: describeCallError(e) };
  }
}
