// The standing coordinator behind `herd serve` (and `herd chat` without --server): the model's
// file, vocabulary and chat template, read once; the model kept loaded by a ModelRunner (in this
// process or over the herd: load, back-off, rediscovery, retirement); the sessions requests
// lease from a SessionPool (fair slots, kept sessions for prompt reuse, idle expiry). Observers
// (the metrics) come in as options: onStep hears every step, onRecovery every lost node,
// re-plan and resumed request.

import { freemem } from 'node:os';
import { basename } from 'node:path';
import type { Logger } from 'pino';
import { GgufFile } from '../gguf/reader.ts';
import { Tokenizer } from '../tokenizer/index.ts';
import { ChatTemplate } from '../tokenizer/chat-template.ts';
import type { KvType } from '../model/kv-cache.ts';
import { readConfig, type ModelConfig } from '../model/config.ts';
import type { SamplingOptions } from '../engine/sampler.ts';
import type { PlanEntry } from '../engine/session.ts';
import { unavailable } from './errors.ts';
import { ModelRunner, type HostStatus, type NodeView } from './model-runner.ts';
import type { ModelOptions } from './open.ts';
import type { FairQueue } from './queue.ts';
import { SessionPool, type Lease, type StepObserver } from './session-pool.ts';

export type { HostStatus, Lease, NodeView };

export interface HostOptions extends ModelOptions {
  readonly modelPath: string;
  readonly ctx?: number;
  /** Sessions (KV caches) at once; default: 4, fewer if their caches would not fit in memory. */
  readonly parallel?: number;
  /** A fallback name, `model`, or a Jinja file (see ChatTemplate.forModel). */
  readonly chatTemplate?: string;
  readonly log: Logger;
  /** Seconds between attempts to bring up a herd that is not ready (default 2, doubling to 30). */
  readonly retrySeconds?: number;
  /**
   * With `nodes: auto`, browse again this often while idle and re-plan when the set of nodes
   * changed (a Pi that booted late joins; default 30; 0: never).
   */
  readonly rediscoverSeconds?: number;
  /**
   * Seconds a kept session may stay idle before it is closed and its KV caches (on every node)
   * freed (default 0: kept until a request needs its slot).
   */
  readonly idleSeconds?: number;
  /** Requests that may wait for a session; more are refused with a 429 (default: unbounded). */
  readonly queue?: number;
  /** Hears every step of every session (the metrics). */
  readonly onStep?: StepObserver;
}

export class ModelHost {
  readonly file: GgufFile;
  readonly tokenizer: Tokenizer;
  readonly template: ChatTemplate;
  readonly config: ModelConfig;
  /** The id clients name in `model` (the file name without .gguf). */
  readonly modelId: string;
  readonly ctx: number;
  readonly created = Math.floor(Date.now() / 1000);
  private readonly runner: ModelRunner;
  private readonly pool: SessionPool;

  private constructor(readonly o: HostOptions) {
    this.file = GgufFile.open(o.modelPath);
    this.tokenizer = Tokenizer.fromGguf(this.file);
    this.template = ChatTemplate.forModel(this.file, this.tokenizer, o.chatTemplate);
    this.config = readConfig(this.file);
    this.modelId = basename(o.modelPath).replace(/\.gguf$/i, '');
    this.ctx = o.ctx ?? Math.min(this.config.ctxTrain, 4096);
    const size = o.parallel ?? defaultParallel(this.config, this.ctx, o.kvType, o.nodes);
    // Each needs the other: the runner asks the pool whether it is busy and to drop kept
    // sessions; the pool opens sessions on the runner's model.
    this.runner = new ModelRunner(
      { ...o, file: this.file, ctx: this.ctx, modelId: this.modelId, slots: size },
      () => this.pool,
    );
    this.pool = new SessionPool(this.runner, {
      size,
      idleSeconds: o.idleSeconds,
      log: o.log,
      onStep: o.onStep,
      maxWaiting: o.queue,
    });
  }

  /** Reads the model's header and vocabulary (a bad file fails here); start() loads the weights. */
  static open(o: HostOptions): ModelHost {
    return new ModelHost(o);
  }

  get slots(): FairQueue {
    return this.pool.slots;
  }

  get status(): HostStatus {
    return this.runner.status;
  }

  get error(): string | undefined {
    return this.runner.error;
  }

  get mode(): 'local' | 'cluster' | undefined {
    return this.runner.mode;
  }

  get plan(): PlanEntry[] {
    return this.runner.plan;
  }

  get planReason(): string | undefined {
    return this.runner.planReason;
  }

  /** Loads the model (in-process or over the herd); on failure the host retries with backoff. */
  start(): Promise<void> {
    return this.runner.start();
  }

  /** Sessions kept open, idle, for prompt reuse (each holds a slot). */
  get idleSessions(): number {
    return this.pool.idleSessions;
  }

  /** Sessions lent to requests now. */
  get activeSessions(): number {
    return this.pool.activeSessions;
  }

  /** See SessionPool.lease. */
  lease(sampling: SamplingOptions, signal?: AbortSignal, prompt?: readonly number[], owner?: string): Promise<Lease> {
    return this.pool.lease(sampling, signal, prompt, owner);
  }

  /** Closes idle sessions: `/reset` in herd chat. */
  dropIdle(): Promise<void> {
    return this.pool.dropIdle();
  }

  /** A cluster error during a request: the herd is reloaded in the background; 503 to the client. */
  clusterFailure(e: unknown): unknown {
    return this.runner.clusterFailure(e);
  }

  nodes(): Promise<NodeView[]> {
    return this.runner.nodes();
  }

  async close(): Promise<void> {
    this.runner.stop();
    this.pool.slots.drain(unavailable('the server is shutting down', 'shutting_down'));
    await this.pool.dropIdle();
    await this.runner.close();
  }
}

/** 4 sessions, fewer if that many in-process KV caches would take over half the free memory. */
function defaultParallel(c: ModelConfig, ctx: number, kvType: KvType, nodes: string): number {
  if (nodes.trim() !== 'local') return 4;
  const kvBytes = 2 * c.nLayers * ctx * c.nKvHeads * c.headDim * (kvType === 'f32' ? 4 : 2);
  return Math.max(1, Math.min(4, Math.floor((0.5 * freemem()) / kvBytes)));
}
