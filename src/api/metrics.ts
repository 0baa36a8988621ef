// What `GET /metrics` shows, in Prometheus text format (prom-client, one registry per server
// so tests and several servers in one process do not share counters).

import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { RecoveryEvent } from '../cluster/coordinator/herd-model.ts';
import type { StepTiming } from './session-pool.ts';

/** Seconds of recent tokens the tokens-per-second gauge averages over. */
const RATE_WINDOW_S = 10;
/** Weight of the newest step in a stage's recent time per token (the dashboard's). */
const RECENT_WEIGHT = 0.2;
const STEP_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** A stage's recent compute per token, ms, by phase. */
export interface RecentStageTime {
  prefill?: number;
  decode?: number;
}

export type Outcome = 'stop' | 'length' | 'cancelled' | 'error';

export class ApiMetrics {
  readonly registry = new Registry();
  readonly httpRequests: Counter<'route' | 'status'>;
  readonly generations: Counter<'endpoint' | 'outcome'>;
  readonly promptTokens: Counter;
  readonly promptTokensReused: Counter;
  readonly generatedTokens: Counter;
  readonly ttft: Histogram;
  readonly latency: Histogram<'endpoint'>;
  readonly step: Histogram<'phase'>;
  readonly stageStep: Histogram<'node' | 'node_id' | 'phase'>;
  readonly nodesLost: Counter;
  readonly replans: Counter<'outcome'>;
  readonly resumed: Counter;
  private readonly recent: { t: number; n: number }[] = [];
  /** By stage address. */
  private readonly recentStages = new Map<string, RecentStageTime>();

  constructor(sample: {
    queueDepth: () => number;
    sessionsActive: () => number;
    sessionsIdle: () => number;
    slots: number;
    ready: () => boolean;
  }) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'herd_' });
    const counter = <L extends string>(name: string, help: string, labelNames: readonly L[] = []) =>
      new Counter<L>({ name, help, labelNames, registers });
    const histogram = <L extends string>(
      name: string,
      help: string,
      buckets: number[],
      labelNames: readonly L[] = [],
    ) => new Histogram<L>({ name, help, labelNames, buckets, registers });
    this.httpRequests = counter('herd_http_requests_total', 'HTTP requests answered, by route and status', [
      'route',
      'status',
    ]);
    this.generations = counter(
      'herd_generations_total',
      'Generations finished, by endpoint and outcome (stop, length, cancelled by the client, error)',
      ['endpoint', 'outcome'],
    );
    this.promptTokens = counter('herd_prompt_tokens_total', 'Prompt tokens of the requests (reused ones included)');
    this.promptTokensReused = counter(
      'herd_prompt_tokens_reused_total',
      'Prompt tokens a kept session already held (a common prefix with an earlier request): not computed again',
    );
    this.generatedTokens = counter('herd_generated_tokens_total', 'Tokens generated');
    this.ttft = histogram(
      'herd_time_to_first_token_seconds',
      'From the request arriving (queue wait included) to its first generated token',
      [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    );
    this.latency = histogram(
      'herd_request_duration_seconds',
      'From the request arriving to its last token, by endpoint',
      [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
      ['endpoint'],
    );
    this.step = histogram(
      'herd_step_seconds',
      'Time of one step as the coordinator waits for it (over the herd: the whole ring, hops included), by phase',
      STEP_BUCKETS,
      ['phase'],
    );
    this.stageStep = histogram(
      'herd_stage_step_seconds',
      'Compute time of one step on one stage, as the node reports it, by node name, node id (local: in-process) and phase',
      STEP_BUCKETS,
      ['node', 'node_id', 'phase'],
    );
    this.nodesLost = counter('herd_nodes_lost_total', 'Nodes found gone after a pipeline broke mid-generation');
    this.replans = counter(
      'herd_replans_total',
      'Re-plans over the nodes left after a node was lost, by outcome (done; failed: the model no longer fits or the new plan did not load)',
      ['outcome'],
    );
    this.resumed = counter(
      'herd_requests_resumed_total',
      'Requests whose session replayed its tokens on a new plan and carried on after a node was lost',
    );
    const gauge = (name: string, help: string, value: () => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(value());
        },
      });
    gauge(
      'herd_tokens_per_second',
      `Tokens generated per second over the last ${RATE_WINDOW_S} s, all requests together`,
      () => this.tokensPerSecond(),
    );
    gauge('herd_queue_depth', 'Requests waiting for a session slot', sample.queueDepth);
    gauge('herd_sessions_active', 'Sessions (KV caches) in use by requests', sample.sessionsActive);
    gauge(
      'herd_sessions_idle',
      'Sessions kept open after their request for prompt reuse (each holds a slot until a request waits for one)',
      sample.sessionsIdle,
    );
    gauge('herd_session_slots', 'Sessions that may run at once', () => sample.slots);
    gauge('herd_ready', '1 when the model or herd is ready to serve', () => (sample.ready() ? 1 : 0));
  }

  /** One step: the whole step, each stage's share, and the stages' recent time per token. */
  observeStep(s: StepTiming): void {
    this.step.observe({ phase: s.phase }, s.seconds);
    for (const st of s.stages) {
      this.stageStep.observe({ node: st.node, node_id: st.nodeId, phase: s.phase }, st.seconds);
      const ms = (1000 * st.seconds) / s.tokens;
      const r = this.recentStages.get(st.address) ?? {};
      const before = r[s.phase];
      r[s.phase] = before === undefined ? ms : before + RECENT_WEIGHT * (ms - before);
      this.recentStages.set(st.address, r);
    }
  }

  /** A lost node, a re-plan or a resumed request. */
  observeRecovery(e: RecoveryEvent): void {
    if (e.event === 'node.lost') this.nodesLost.inc();
    else if (e.event === 'replan.done') this.replans.inc({ outcome: e.ok ? 'done' : 'failed' });
    else if (e.event === 'request.resumed') this.resumed.inc();
  }

  /** The stage at this address: its recent compute per token, ms (empty before its first step). */
  recentStage(address: string): RecentStageTime {
    return { ...this.recentStages.get(address) };
  }

  /** Counts generated tokens for the rate gauge and the counter. */
  addTokens(n: number): void {
    if (n <= 0) return;
    this.generatedTokens.inc(n);
    const t = performance.now();
    const last = this.recent[this.recent.length - 1];
    // One bucket per 100 ms keeps the window small however fast tokens come.
    if (last && t - last.t < 100) last.n += n;
    else this.recent.push({ t, n });
    this.trim(t);
  }

  tokensPerSecond(): number {
    const t = performance.now();
    this.trim(t);
    const n = this.recent.reduce((s, r) => s + r.n, 0);
    return Math.round((n / RATE_WINDOW_S) * 100) / 100;
  }

  private trim(t: number): void {
    while (this.recent.length > 0 && t - this.recent[0].t > RATE_WINDOW_S * 1000) this.recent.shift();
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
