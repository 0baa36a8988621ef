// One sequence being generated: feed tokens at positions, get the next token back. The
// sampler lives with the model's last layers, so a pipeline of nodes returns a token id,
// not a vocabulary of logits; a single process is the same thing with one stage.
//
// A session can go back: a step that starts before the session's end first forgets the
// positions from there on (their KV entries are overwritten by the step), so a session kept
// after one request continues the next from the prompt prefix they share (prompt reuse).
//
// A served model opens a session per request: the whole model in this process (local.ts), or
// a pipeline over the herd (cluster/coordinator/herd-model.ts). Either tells what its session
// holds and how long each stage computed, for whoever keeps sessions and times them (api/).

import type { SamplingOptions, TokenLogprobs } from './sampler.ts';
import type { ShareJson } from '../model/tensor-share.ts';

export interface InferenceSession {
  /** Positions the session's KV caches hold. */
  readonly ctx: number;
  /**
   * Runs `tokens` at positions start, start+1, … and returns the token sampled after the
   * last of them. `start` is at most where the previous step ended; before it, the session
   * is first truncated to `start` positions (and the penalties' token history with it).
   */
  step(tokens: readonly number[], start: number): Promise<number>;
  /**
   * The log-probabilities of the token the last step returned, when the sampling options ask
   * for them (SamplingOptions.logprobs); undefined otherwise.
   */
  readonly logprobs?: TokenLogprobs;
  /**
   * From the next step on, samples with these options from a fresh random state (the seed's),
   * as a new session would: a kept session then answers a new request exactly as a fresh one.
   */
  resample(sampling: SamplingOptions): void;
  /** Frees the session's KV caches. */
  close(): Promise<void>;
}

/** Length of the longest common prefix of two token lists. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/** One stage's compute time on a step (in this process: the whole model's). */
export interface StageTime {
  /** The node's name, as the plan shows it. */
  readonly node: string;
  readonly nodeId: string;
  readonly address: string;
  readonly layers: readonly [number, number];
  readonly seconds: number;
}

/** A session a server can keep and time: the tokens it holds, each stage's time on its last step. */
export interface StagedSession extends InferenceSession {
  /** The token at each position the session's KV caches hold (what a kept session offers for reuse). */
  readonly tokens: readonly number[];
  /** One entry per stage, in pipeline order; empty before the first step. */
  readonly lastStages: readonly StageTime[];
  /** True once the session can no longer step (a stage failed or the stream broke). */
  readonly failed?: boolean;
}

/** Where a stage of a served model runs. */
export interface PlanEntry {
  readonly node: string;
  readonly address: string;
  readonly layers: [number, number];
  /** Over a herd: the stage's nodes — one, or a tensor-parallel group's members with their shares. */
  readonly nodes?: readonly PlanMember[];
}

/** One node of a stage; a group member's share of each layer (KV heads, FFN rows, head rows), null for a whole stage. */
export interface PlanMember {
  readonly name: string;
  readonly address: string;
  readonly share: ShareJson | null;
}

/** A model loaded once, serving a session per request. */
export interface ServedModel {
  /** local: the whole model in this process; cluster: a pipeline over the herd. */
  readonly mode: 'local' | 'cluster';
  /** Where the layers run now (over the herd, after a lost node, the plan over the survivors). */
  readonly plan: PlanEntry[];
  /** A new session with its own KV caches. */
  open(sampling: SamplingOptions): Promise<StagedSession>;
  close(): Promise<void>;
}
