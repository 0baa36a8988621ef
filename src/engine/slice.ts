// One runner for a model slice: the single place where a step goes through a layer range,
// whoever calls it — a session in this process (engine/local.ts, the whole model as one slice),
// a node's stage of a pipeline (cluster/node/stage.ts). Open SliceRunner.step() to see a step
// go through, in order.
//
// A step is a list of entries (sequence, tokens, start position): each sequence is one session
// on this slice, with its own KV cache, the tokens it holds and — on the slice with the head —
// its own sampler. The runner packs the entries' rows into chunks of at most the model's batch;
// each layer runs one matrix product per weight over all of a chunk's rows, attention per
// sequence over its own cache. Each chunk is filled, run and read without yielding, so sessions
// sharing the runner's workspace never see each other's rows; between chunks a caller may let
// the event loop turn (a node answers other calls during a long prefill).

import type { Segment } from '../model/transformer.ts';
import type { ModelConfig } from '../model/config.ts';
import type { KvCache } from '../model/kv-cache.ts';
import { TokenHistory, StepError } from './history.ts';
import { Sampler, type SamplingOptions, type TokenLogprobs } from './sampler.ts';

/** One session on one slice: its KV cache, the tokens at the positions it holds, its sampler (the slice with the head). */
export class Sequence {
  readonly history = new TokenHistory();

  constructor(
    readonly cache: KvCache,
    /** Positions the session may use (at most the cache's). */
    readonly ctx: number,
    private sampler: Sampler | undefined,
    private readonly vocabSize: number,
  ) {}

  /** The token at each position the session holds. */
  get tokens(): readonly number[] {
    return this.history.tokens;
  }

  /** Where the session ends: the positions its KV cache holds. */
  get position(): number {
    return this.history.length;
  }

  /** The log-probabilities of the last token sampled, when the sampling options ask for them. */
  get logprobs(): TokenLogprobs | undefined {
    return this.sampler?.logprobs;
  }

  /** Samples with these options from a fresh random state (the seed's), as a new session would. */
  resample(sampling: SamplingOptions): void {
    if (!this.sampler) throw new Error('only the slice with the head samples');
    this.sampler = new Sampler(sampling, this.vocabSize);
  }

  /** The next token after these logits, its penalties from the tokens held. */
  sample(logits: Float32Array): number {
    if (!this.sampler) throw new Error('only the slice with the head samples');
    return this.sampler.sample(logits, this.history.tokens);
  }
}

/** One session's share of a step: `tokens` at positions start, start+1, … of `seq`. */
export interface StepEntry {
  readonly seq: Sequence;
  readonly tokens: readonly number[];
  readonly start: number;
  /** A new generation: the slice with the head samples with these options from a fresh state. */
  readonly sampling?: SamplingOptions;
  /**
   * False: a piece of a prompt that goes on in a later step — the slice with the head neither
   * runs the head nor samples after it (the sampler's random state and penalties untouched).
   */
  readonly sample?: boolean;
  /** A slice without the embedding: writes the hidden states of tokens [from, from + m) into rows (m × dim). */
  readonly hiddenIn?: (rows: Float32Array, from: number) => void;
  /** A slice without the head: takes the hidden states of tokens [from, from + m) (rows, m × dim) for the next slice. */
  readonly hiddenOut?: (rows: Float32Array, from: number) => void;
}

export interface StepOutcome {
  /** The slice with the head: the token sampled after each entry's last, in entry order, -1 for an entry with `sample: false` (else empty). */
  readonly sampled: readonly number[];
  /** Compute time of the step, seconds (the pauses between chunks left out). */
  readonly seconds: number;
}

/** `m` rows of one entry, tokens [from, from + m), at rows [row, row + m) of a chunk. */
interface Piece {
  readonly entry: StepEntry;
  readonly from: number;
  readonly m: number;
  readonly row: number;
}

/**
 * What a runner steps through: a Transformer, or a tensor-parallel group's leader
 * (cluster/node/group.ts), whose forwardLayers awaits the group's syncs. The runner's batcher
 * runs one step at a time, so a step that awaits still has the workspace to itself.
 */
export interface SliceModel {
  readonly config: ModelConfig;
  readonly ctx: number;
  readonly batch: number;
  readonly isFirst: boolean;
  readonly isLast: boolean;
  newCache(): KvCache;
  embed(tokens: readonly number[], x: Float32Array): void;
  /** `turn`: see Transformer.forwardLayers (a group's leader yields at its syncs and needs none). */
  forwardLayers(
    x: Float32Array,
    segments: readonly Segment[],
    turn?: () => Promise<void> | undefined,
  ): void | Promise<void>;
  /**
   * Logits (n × vocabulary) of n rows of hidden state (n × dim); `at`: which row of the step's
   * hidden states each is (a group's leader names them to its members, which hold the same rows,
   * and awaits their parts).
   */
  head(x: Float32Array, n: number, at?: readonly number[]): Float32Array | Promise<Float32Array>;
}

export class SliceRunner {
  /** The hidden states of a chunk's rows: what the slice before hands in, what the next takes. */
  private readonly x: Float32Array;
  /** The last row of each entry that samples in a chunk, side by side for one head product. */
  private readonly last: Float32Array;

  /**
   * `turnSeconds`: a step gives the event loop a turn between blocks once it has computed this
   * long since the last one, so a node answers its peers' keepalive pings (cluster/rpc.ts)
   * whatever a step costs: a large slice on a slow node, or many sessions in one step.
   */
  constructor(
    readonly model: SliceModel,
    private readonly o: { turnSeconds?: number } = {},
  ) {
    this.x = new Float32Array(model.batch * model.config.dim);
    this.last = new Float32Array(model.batch * model.config.dim);
  }

  /** A new session on this slice, with its own KV cache (and, on the slice with the head, sampler). */
  open(ctx: number, sampling?: SamplingOptions): Sequence {
    const { vocabSize } = this.model.config;
    if (!(Number.isInteger(ctx) && ctx >= 1 && ctx <= this.model.ctx))
      throw new RangeError(`a session's context must be in 1..${this.model.ctx}, got ${ctx}`);
    if (this.model.isLast && !sampling) throw new Error('the slice with the head needs sampling options');
    const sampler = this.model.isLast && sampling ? new Sampler(sampling, vocabSize) : undefined;
    return new Sequence(this.model.newCache(), ctx, sampler, vocabSize);
  }

  /** Throws StepError unless every entry fits its session (nothing has run yet). */
  check(entries: readonly StepEntry[]): void {
    const { vocabSize } = this.model.config;
    const seen = new Set<Sequence>();
    for (const e of entries) {
      if (seen.has(e.seq)) throw new StepError('a session appears twice in one step');
      seen.add(e.seq);
      e.seq.history.check(e.start, e.tokens.length, e.seq.ctx);
      for (const t of e.tokens)
        if (!(Number.isInteger(t) && t >= 0 && t < vocabSize))
          throw new StepError(`token id ${t} is outside the vocabulary of ${vocabSize}`);
      if (!this.model.isFirst && !e.hiddenIn) throw new Error('a slice without the embedding takes hidden states');
      if (!this.model.isLast && !e.hiddenOut) throw new Error('a slice without the head hands its hidden states on');
    }
  }

  /**
   * One step through this slice's layers, for every entry: check, go back, then chunk by chunk
   * the rows in, the layers (Transformer.forwardLayers walks each layer as the paper does), the
   * rows out and, after an entry's last row, the head and the entry's sampler. `pause` runs
   * between chunks (not timed). Throws StepError, before anything ran, for an entry that does
   * not fit its session.
   */
  async step(entries: readonly StepEntry[], pause?: () => Promise<void>): Promise<StepOutcome> {
    const model = this.model;
    const { dim, vocabSize } = model.config;
    this.check(entries);
    let busyMs = 0;
    let t0 = performance.now();

    // Go back: each session forgets the positions from its start on (the step overwrites their
    // KV entries); a new generation restarts its sampler.
    for (const e of entries) {
      e.seq.history.rewind(e.start);
      if (e.sampling && model.isLast) e.seq.resample(e.sampling);
    }

    const sampled: number[] = [];
    let first = true;
    for (const chunk of chunks(entries, model.batch)) {
      if (!first && pause) {
        busyMs += performance.now() - t0;
        await pause();
        t0 = performance.now();
      }
      first = false;
      const rows = (p: Piece) => this.x.subarray(p.row * dim, (p.row + p.m) * dim);

      // the rows in: the tokens' embeddings (first slice), or the slice before's hidden states
      for (const p of chunk) {
        if (model.isFirst) model.embed(p.entry.tokens.slice(p.from, p.from + p.m), rows(p));
        else p.entry.hiddenIn?.(rows(p), p.from);
      }

      // the layers: each weight one matrix product over every row; attention per session,
      // over its own KV cache (which the step's keys and values are written into); on a node,
      // turns of the event loop between blocks (not compute: left out of the step's seconds)
      const turn = this.turns((ms) => (busyMs -= ms));
      const layers = model.forwardLayers(
        this.x,
        chunk.map((p) => ({ start: p.entry.start + p.from, n: p.m, cache: p.entry.seq.cache })),
        turn,
      );
      // Without turns a Transformer returns at once: awaited only for a group's step or a node's turns, so a local step never yields.
      if (layers) await layers;

      // entries whose last row is in this chunk, in order: each the head's row it samples from, or -1
      const ends: { p: Piece; row: number }[] = [];
      const at: number[] = [];
      let heads = 0;
      for (const p of chunk) {
        // the rows out: hidden states to the next slice; the tokens now held, to the history
        if (!model.isLast) p.entry.hiddenOut?.(rows(p), p.from);
        p.entry.seq.history.push(p.entry.tokens.slice(p.from, p.from + p.m));
        if (!model.isLast || p.from + p.m !== p.entry.tokens.length) continue;
        // an entry's last row goes to the head (unless its step only fills the cache)
        if (p.entry.sample === false) ends.push({ p, row: -1 });
        else {
          this.last.set(rows(p).subarray((p.m - 1) * dim), heads * dim);
          at.push(p.row + p.m - 1);
          ends.push({ p, row: heads++ });
        }
      }

      // the head of those rows, one product for all: final rmsnorm, classifier, then each
      // session's own sampler
      const head = heads > 0 ? model.head(this.last, heads, at) : undefined;
      const logits = head instanceof Promise ? await head : head;
      for (const { p, row } of ends)
        sampled.push(row < 0 ? -1 : p.entry.seq.sample(logits!.subarray(row * vocabSize, (row + 1) * vocabSize)));
    }
    return { sampled, seconds: (busyMs + performance.now() - t0) / 1000 };
  }

  /** What a chunk's layers call between blocks: a turn once turnSeconds passed since the last (each turn's ms to `took`). */
  private turns(took: (ms: number) => void): (() => Promise<void> | undefined) | undefined {
    if (this.o.turnSeconds === undefined) return undefined;
    const every = this.o.turnSeconds * 1000;
    let since = performance.now();
    return () => {
      const now = performance.now();
      if (now - since < every) return undefined;
      return new Promise<void>((resolve) =>
        setImmediate(() => {
          since = performance.now();
          took(since - now);
          resolve();
        }),
      );
    };
  }
}

/** The entries' rows in order, cut into chunks of at most `batch` rows. */
function* chunks(entries: readonly StepEntry[], batch: number): Generator<Piece[]> {
  let chunk: Piece[] = [];
  let rows = 0;
  for (const entry of entries) {
    for (let from = 0; from < entry.tokens.length;) {
      const m = Math.min(batch - rows, entry.tokens.length - from);
      chunk.push({ entry, from, m, row: rows });
      rows += m;
      from += m;
      if (rows === batch) {
        yield chunk;
        chunk = [];
        rows = 0;
      }
    }
  }
  if (chunk.length > 0) yield chunk;
}
