// What `GET /metrics` shows, in Prometheus text format (prom-client, one registry per server
// so tests and several servers in one process do not share counters).

import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/** Seconds of recent tokens the tokens-per-second gauge averages over. */
const RATE_WINDOW_S = 10;

export type Outcome = 'stop' | 'length' | 'cancelled' | 'error';

export class ApiMetrics {
  readonly registry = new Registry();
  readonly httpRequests: Counter<'route' | 'status'>;
  readonly generations: Counter<'endpoint' | 'outcome'>;
  readonly promptTokens: Counter;
  readonly generatedTokens: Counter;
  readonly ttft: Histogram;
  readonly latency: Histogram<'endpoint'>;
  readonly step: Histogram<'node' | 'phase'>;
  private readonly recent: { t: number; n: number }[] = [];

  constructor(sample: { queueDepth: () => number; sessionsActive: () => number; slots: number; ready: () => boolean }) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'herd_' });
    this.httpRequests = new Counter({ name: 'herd_http_requests_total', help: 'HTTP requests answered, by route and status', labelNames: ['route', 'status'], registers });
    this.generations = new Counter({
      name: 'herd_generations_total',
      help: 'Generations finished, by endpoint and outcome (stop, length, cancelled by the client, error)',
      labelNames: ['endpoint', 'outcome'],
      registers,
    });
    this.promptTokens = new Counter({ name: 'herd_prompt_tokens_total', help: 'Prompt tokens processed', registers });
    this.generatedTokens = new Counter({ name: 'herd_generated_tokens_total', help: 'Tokens generated', registers });
    this.ttft = new Histogram({
      name: 'herd_time_to_first_token_seconds',
      help: 'From the request arriving (queue wait included) to its first generated token',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.latency = new Histogram({
      name: 'herd_request_duration_seconds',
      help: 'From the request arriving to its last token, by endpoint',
      labelNames: ['endpoint'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
      registers,
    });
    this.step = new Histogram({
      name: 'herd_stage_step_seconds',
      help: 'Time of one forward step, by node (in-process: this host; over the herd: the whole pipeline) and phase',
      labelNames: ['node', 'phase'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    const gauge = (name: string, help: string, value: () => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(value());
        },
      });
    gauge('herd_tokens_per_second', `Tokens generated per second over the last ${RATE_WINDOW_S} s, all requests together`, () => this.tokensPerSecond());
    gauge('herd_queue_depth', 'Requests waiting for a session slot', sample.queueDepth);
    gauge('herd_sessions_active', 'Sessions (KV caches) in use', sample.sessionsActive);
    gauge('herd_session_slots', 'Sessions that may run at once', () => sample.slots);
    gauge('herd_ready', '1 when the model or herd is ready to serve', () => (sample.ready() ? 1 : 0));
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
