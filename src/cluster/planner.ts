// The planner: a pure function from node capabilities and a model's shape to contiguous layer
// ranges. Every slice must fit its node's available memory with the KV caches and activation
// buffers of `sessions` sessions at once (`herd serve --parallel N`) and its overhead; among
// the plans that fit, the one whose slowest stage is fastest wins (stage time = bytes of weights
// streamed per token ÷ measured matvec throughput + one hop). A node that cannot make the
// bottleneck better is left out, unless `stages` asks for exactly that many.
//
// Measured throughputs are noisy, so plans whose bottleneck is within `tolerance` of the best
// count as equally fast; among those the planner prefers, in order: stages a node already holds
// (loaded or cached: a standing herd answers at once, a restarted one transfers nothing), fewer
// stages (fewer hops), then the faster bottleneck.
//
// Tensor groups (`tensor`: groups of N for every stage): the nodes, fastest first, make groups
// of N consecutive ones; each group is planned as one node with the members' summed throughput,
// each member checked against its own memory for its share (the leader also holds the embedding
// and head), and its stage time gains two syncs per layer. One
// sync is one link round trip (the slowest member's measured `rttSeconds`) plus the bytes each
// member sends its N−1 peers over a gigabit link (bandwidth is not measured). Each member takes
// a share of every layer in proportion to its throughput (`shares`, model/tensor-share.ts); a
// shape the group cannot split is refused with the reason.
//
// Without `tensor` the planner chooses: one node per stage, or groups of every size that divides
// the model's KV heads and the nodes allow, each predicted as a whole. Groups must beat the
// pipeline by GROUP_MARGIN on single-stream time per token (`tokenSeconds`) — with `sessions` > 1
// on time per token at full load, where a pipeline's stages work on different sessions at once —
// since the prediction leaves out what groups suffer most from: members sharing cores, a busy
// link. Links never measured (the in-process node, a failed ping) rule groups out. The plan says
// why in `reason`, with the alternative it weighed.

import { formatBytes } from './caps.ts';
import { ClusterError } from './errors.ts';
import { TensorShareError, type TensorShare } from '../model/tensor-share.ts';
import { DEFAULT_SYNC, gatherFormat, payloadBytes, type SyncFormat } from './sync/format.ts';

export interface PlanNode {
  readonly id: string;
  readonly name: string;
  readonly address: string;
  readonly memAvailable: number;
  /** Weight bytes per second its matvec streams. */
  readonly throughput: number;
  /** Layer ranges of this model the node holds in memory or in its cache. */
  readonly holds?: readonly (readonly [number, number])[];
  /** Measured round trip of a small call to the node, seconds (undefined: not measured). */
  readonly rttSeconds?: number;
}

export interface ModelShape {
  readonly nLayers: number;
  /** Weight bytes of each layer. */
  readonly layerBytes: readonly number[];
  /** The token embedding matrix (held by the first stage). */
  readonly embedBytes: number;
  /** Output norm + head (held and run by the last stage); with a tied head, the embedding. */
  readonly headBytes: number;
  /** The head is the embedding matrix: a last stage that is also first holds it once. */
  readonly tiedHead: boolean;
  /** Tensors every stage holds (rope_freqs). */
  readonly sharedBytes: number;
  /** KV cache bytes per layer for one session at the planned context. */
  readonly kvBytesPerLayer: number;
  /** Activation buffers of a stage (logits, ffn scratch, attention scores). */
  readonly bufferBytes: number;
  /** Hidden size: the values a group's members sum at each sync. */
  readonly dim: number;
  /** KV heads of a layer: a group size chosen without --tensor divides them. */
  readonly kvHeads: number;
  /** Rows of the head: a group sharing an untied head gathers its members' logits of them. */
  readonly vocabSize: number;
}

export interface PlanOptions {
  /** Exactly this many stages. */
  readonly stages?: number;
  /** Fixed per-process cost of a stage (runtime, gRPC, caches): default 64 MiB. */
  readonly overheadBytes?: number;
  /** Cost of one hop between stages, seconds: default 0.5 ms. */
  readonly hopSeconds?: number;
  /** Sessions whose KV caches and activation buffers must fit at once on every stage: default 1. */
  readonly sessions?: number;
  /** Bottlenecks within this fraction of the best count as equal: default 0.2. */
  readonly tolerance?: number;
  /** Every stage a tensor-parallel group of this many nodes; 1: one node per stage; unset: the planner chooses. */
  readonly tensor?: number;
  /** What a group's members send at each sync (`--sync`): default DEFAULT_SYNC. */
  readonly sync?: SyncFormat;
  /** Each member's share of layers [start, end) for members of these weights (throughputs); throws TensorShareError. */
  readonly shares?: (start: number, end: number, weights: readonly number[]) => TensorShare[];
}

/** One node of a tensor-parallel stage, and its share of each layer. */
export interface PlannedMember {
  readonly node: PlanNode;
  readonly share: TensorShare;
}

export interface PlannedStage {
  /** The node the route names: a group's leader (member 0). */
  readonly node: PlanNode;
  /** A tensor-parallel stage's members, the leader first (undefined: one node). */
  readonly members?: readonly PlannedMember[];
  readonly start: number;
  readonly end: number;
  readonly weightBytes: number;
  /** KV caches of every session counted (PlanOptions.sessions) for the stage's layers. */
  readonly kvBytes: number;
  /** Activation buffers of every session counted. */
  readonly bufferBytes: number;
  /** Everything the stage needs in memory. */
  readonly memBytes: number;
  /** Estimated seconds per token on this stage. */
  readonly seconds: number;
  /** A group: the predicted seconds of one sync between its members. */
  readonly syncSeconds?: number;
}

/** A plan's predicted times, and what kind of plan it is in words ("2 stages", "a 2-node group"). */
export interface PlanSummary {
  readonly kind: string;
  /** The slowest stage's seconds per token: the pipeline's throughput limit. */
  readonly bottleneckSeconds: number;
  /** Seconds for one token through every stage (single-sequence decode latency). */
  readonly tokenSeconds: number;
}

export interface Plan extends PlanSummary {
  readonly stages: readonly PlannedStage[];
  /** Why this plan, in one line for the user (herd plan, herd run --json, the coordinator's log). */
  readonly reason: string;
  /** The best plan of the other kind that the choice weighed and rejected. */
  readonly rejected?: PlanSummary;
}

export class PlanError extends ClusterError {
  constructor(message: string) {
    super('plan', message);
    this.name = 'PlanError';
  }
}

const DEFAULT_OVERHEAD = 64 * 1024 * 1024;
const DEFAULT_HOP = 0.0005;
/** Larger herds are searched by throughput-ordered prefixes instead of every subset. */
const EXHAUSTIVE_MAX = 8;
/** Up to this many nodes, every order of a subset is tried (a node's held range fixes its place). */
const PERMUTE_MAX = 5;
const DEFAULT_TOLERANCE = 0.2;
/** A sync round trip assumed for a forced group whose links were never measured (an idle loopback). */
const ASSUMED_RTT = 0.0001;
/** Link bandwidth, bytes per second: gigabit Ethernet, assumed since it is not measured. */
const LINK_BYTES_PER_SECOND = 125e6;
/** How much faster groups must be predicted than one node per stage to be chosen. */
const GROUP_MARGIN = 0.15;

/** A group of nodes planned as one: what the members sum to. */
interface GroupNode extends PlanNode {
  readonly members: readonly PlanNode[];
  /** Each member's weight in the shares (shareWeights), and their sum. */
  readonly shareWeights: readonly number[];
  readonly shareTotal: number;
  /** Seconds of one sync between the members. */
  readonly syncSeconds: number;
  /** Seconds for the leader to gather the others' logits of a shared head. */
  readonly gatherSeconds: number;
}

function isGroup(n: PlanNode): n is GroupNode {
  return 'members' in n;
}

/** What one node of a stage must hold for layers [a, b), against what it has. */
interface Need {
  readonly node: PlanNode;
  readonly need: number;
}

interface Costs {
  mem(a: number, b: number): number;
  /** Each node's need for layers [a, b) on `node`: the node itself, or every member of a group. */
  needs(node: PlanNode, a: number, b: number): Need[];
  /** The largest of needs' shortfalls (≤ 0: every node fits), computed without allocating: the searches ask it for every split. */
  short(node: PlanNode, a: number, b: number): number;
  weights(a: number, b: number): number;
  seconds(node: PlanNode, a: number, b: number): number;
  kv(a: number, b: number): number;
  buffers: number;
}

function costs(m: ModelShape, o: PlanOptions): Costs {
  const prefix = [0];
  for (const b of m.layerBytes) prefix.push(prefix[prefix.length - 1] + b);
  const layers = (a: number, b: number) => prefix[b] - prefix[a];
  const L = m.nLayers;
  const overhead = o.overheadBytes ?? DEFAULT_OVERHEAD;
  const hop = o.hopSeconds ?? DEFAULT_HOP;
  const sessions = o.sessions ?? 1;
  const weights = (a: number, b: number) => {
    let w = layers(a, b) + m.sharedBytes;
    if (a === 0) w += m.embedBytes;
    if (b === L && !(m.tiedHead && a === 0)) w += m.headBytes;
    return w;
  };
  if (!(Number.isInteger(sessions) && sessions >= 1))
    throw new PlanError(`sessions must be an integer >= 1, got ${sessions}`);
  const kv = (a: number, b: number) => (b - a) * m.kvBytesPerLayer * sessions;
  // Each session of a batched step has its own rows of every activation buffer (logits included).
  const buffers = m.bufferBytes * sessions;
  // A group shares the head's rows when it is the model's own (model/tensor-share.ts); a tied
  // head stays whole on the leader, beside the embedding it is.
  const sharedHead = (b: number) => (b === L && !m.tiedHead ? m.headBytes : 0);
  // A member holds its share of the layers, of the KV cache and of a shared head (in proportion
  // to its throughput, as the shares are cut), the replicated tensors and its own buffers; the
  // leader alone also the embedding and a head that is not shared.
  const memberNeed = (g: GroupNode, i: number, a: number, b: number) =>
    (g.shareWeights[i] / g.shareTotal) * (layers(a, b) + kv(a, b) + sharedHead(b)) +
    m.sharedBytes +
    (i === 0 ? weights(a, b) - layers(a, b) - m.sharedBytes - sharedHead(b) : 0) +
    buffers +
    overhead;
  return {
    weights,
    kv,
    buffers,
    mem: (a, b) => weights(a, b) + kv(a, b) + buffers + overhead,
    needs: (node, a, b) =>
      isGroup(node)
        ? node.members.map((n, i) => ({ node: n, need: memberNeed(node, i, a, b) }))
        : [{ node, need: weights(a, b) + kv(a, b) + buffers + overhead }],
    short: (node, a, b) => {
      if (!isGroup(node)) return weights(a, b) + kv(a, b) + buffers + overhead - node.memAvailable;
      let worst = -Infinity;
      for (let i = 0; i < node.members.length; i++)
        worst = Math.max(worst, memberNeed(node, i, a, b) - node.members[i].memAvailable);
      return worst;
    },
    // Per token a stage streams its layers' weights, and the last one the head too.
    // A group: the layers (and an untied head) shared by its members, a tied head on the leader
    // alone, two syncs per layer and the gather of a shared head's logits.
    seconds: (node, a, b) =>
      isGroup(node)
        ? (layers(a, b) + sharedHead(b)) / Math.max(node.throughput, 1) +
          (b === L && m.tiedHead ? m.headBytes / Math.max(node.members[0].throughput, 1) : 0) +
          2 * (b - a) * node.syncSeconds +
          (sharedHead(b) > 0 ? node.gatherSeconds : 0) +
          hop
        : (layers(a, b) + (b === L ? m.headBytes : 0)) / Math.max(node.throughput, 1) + hop,
  };
}

/** Best split of layers over `order` (every node gets ≥ 1 layer), or undefined if none fits. */
function split(
  order: readonly PlanNode[],
  m: ModelShape,
  c: Costs,
): { bottleneck: number; cuts: number[] } | undefined {
  const k = order.length;
  const L = m.nLayers;
  if (k > L) return undefined;
  // best[j][b]: min bottleneck placing layers [0, b) on the first j nodes; from[j][b]: the cut.
  const best: number[][] = Array.from({ length: k + 1 }, () => new Array<number>(L + 1).fill(Infinity));
  const from: number[][] = Array.from({ length: k + 1 }, () => new Array<number>(L + 1).fill(-1));
  best[0][0] = 0;
  for (let j = 1; j <= k; j++) {
    const node = order[j - 1];
    for (let b = j; b <= L - (k - j); b++) {
      for (let a = j - 1; a < b; a++) {
        if (best[j - 1][a] === Infinity) continue;
        if (c.short(node, a, b) > 0) continue;
        const t = Math.max(best[j - 1][a], c.seconds(node, a, b));
        if (t < best[j][b]) {
          best[j][b] = t;
          from[j][b] = a;
        }
      }
    }
  }
  if (best[k][L] === Infinity) return undefined;
  const cuts = [L];
  for (let j = k, b = L; j > 0; j--) {
    b = from[j][b];
    cuts.unshift(b);
  }
  return { bottleneck: best[k][L], cuts };
}

/** The split over `order` that minimises the largest memory shortfall: who is short, by how much. */
function shortest(
  order: readonly PlanNode[],
  m: ModelShape,
  c: Costs,
): { node: PlanNode; start: number; end: number; need: number; short: number } {
  const k = order.length;
  const L = m.nLayers;
  const worst: number[][] = Array.from({ length: k + 1 }, () => new Array<number>(L + 1).fill(Infinity));
  const from: number[][] = Array.from({ length: k + 1 }, () => new Array<number>(L + 1).fill(-1));
  worst[0][0] = -Infinity;
  for (let j = 1; j <= k; j++) {
    for (let b = j; b <= L - (k - j); b++) {
      for (let a = j - 1; a < b; a++) {
        if (worst[j - 1][a] === Infinity) continue;
        const s = Math.max(worst[j - 1][a], c.short(order[j - 1], a, b));
        if (s < worst[j][b]) {
          worst[j][b] = s;
          from[j][b] = a;
        }
      }
    }
  }
  let pick = { node: order[0], start: 0, end: L, need: c.mem(0, L), short: -Infinity };
  for (let j = k, b = L; j > 0; j--) {
    const a = from[j][b];
    const worstNeed = shortOf(c.needs(order[j - 1], a, b));
    if (worstNeed.short > pick.short) pick = { ...worstNeed, start: a, end: b };
    b = a;
  }
  return pick;
}

/** The node (of a stage's nodes) furthest over its available memory, and by how much (≤ 0: it fits). */
function shortOf(needs: readonly Need[]): Need & { short: number } {
  let worst = { ...needs[0], short: needs[0].need - needs[0].node.memAvailable };
  for (const n of needs)
    if (n.need - n.node.memAvailable > worst.short) worst = { ...n, short: n.need - n.node.memAvailable };
  return worst;
}

function byThroughput(a: PlanNode, b: PlanNode): number {
  return b.throughput - a.throughput || b.memAvailable - a.memAvailable || byName(a, b);
}

function byName(a: PlanNode, b: PlanNode): number {
  return a.name.localeCompare(b.name) || a.address.localeCompare(b.address);
}

function* subsets(nodes: readonly PlanNode[], size?: number): Generator<PlanNode[]> {
  const n = nodes.length;
  if (n <= EXHAUSTIVE_MAX) {
    for (let mask = 1; mask < 1 << n; mask++) {
      const s = nodes.filter((_, i) => mask & (1 << i));
      if (size === undefined || s.length === size) yield s;
    }
  } else {
    for (let k = 1; k <= n; k++) if (size === undefined || k === size) yield nodes.slice(0, k);
  }
}

function* permutations<T>(items: readonly T[]): Generator<T[]> {
  if (items.length <= 1) {
    yield [...items];
    return;
  }
  for (let i = 0; i < items.length; i++) {
    const rest = [...items.slice(0, i), ...items.slice(i + 1)];
    for (const p of permutations(rest)) yield [items[i], ...p];
  }
}

/** Every node order worth planning over. */
function* orders(nodes: readonly PlanNode[], size?: number): Generator<PlanNode[]> {
  const permute = nodes.length <= PERMUTE_MAX;
  for (const s of subsets(nodes, size)) {
    if (permute) yield* permutations([...s].sort(byName));
    else yield s;
  }
}

function holds(node: PlanNode, a: number, b: number, nLayers: number): boolean {
  // A held range that covers [a, b) has every tensor needed (with the head only if it ends the model).
  return (node.holds ?? []).some(([x, y]) => x <= a && b <= y && (b < nLayers || y === nLayers));
}

/**
 * Among splits of `order` whose every stage fits and takes at most `cap` seconds, the one with
 * the fewest stages not already held, then the fastest bottleneck.
 */
function preferredSplit(order: readonly PlanNode[], m: ModelShape, c: Costs, cap: number) {
  const k = order.length;
  const L = m.nLayers;
  if (k > L) return undefined;
  type Cost = [missing: number, bottleneck: number];
  const less = (x: Cost, y: Cost) => x[0] < y[0] || (x[0] === y[0] && x[1] < y[1]);
  const best: (Cost | undefined)[][] = Array.from({ length: k + 1 }, () =>
    new Array<Cost | undefined>(L + 1).fill(undefined),
  );
  const from: number[][] = Array.from({ length: k + 1 }, () => new Array<number>(L + 1).fill(-1));
  best[0][0] = [0, 0];
  for (let j = 1; j <= k; j++) {
    const node = order[j - 1];
    for (let b = j; b <= L - (k - j); b++) {
      for (let a = j - 1; a < b; a++) {
        const prev = best[j - 1][a];
        if (!prev) continue;
        const t = c.seconds(node, a, b);
        if (t > cap || c.short(node, a, b) > 0) continue;
        const cost: Cost = [prev[0] + (holds(node, a, b, L) ? 0 : 1), Math.max(prev[1], t)];
        const cur = best[j][b];
        if (!cur || less(cost, cur)) {
          best[j][b] = cost;
          from[j][b] = a;
        }
      }
    }
  }
  const end = best[k][L];
  if (!end) return undefined;
  const cuts = [L];
  for (let j = k, b = L; j > 0; j--) {
    b = from[j][b];
    cuts.unshift(b);
  }
  return { missing: end[0], bottleneck: end[1], cuts };
}

export function plan(nodesIn: readonly PlanNode[], m: ModelShape, o: PlanOptions = {}): Plan {
  if (m.layerBytes.length !== m.nLayers || m.nLayers < 1)
    throw new PlanError(`model shape lists ${m.layerBytes.length} layer sizes for ${m.nLayers} layers`);
  if (nodesIn.length === 0) throw new PlanError('no nodes to plan over');
  const tensor = o.tensor;
  if (tensor === undefined) return choose(nodesIn, m, o);
  if (!(Number.isInteger(tensor) && tensor >= 1))
    throw new PlanError(`--tensor must be a positive integer, got ${tensor}`);
  const p = summarise(tensor > 1 ? groupPlan(nodesIn, m, o, tensor) : pipelinePlan(nodesIn, m, o));
  return { ...p, reason: `--tensor ${tensor}: ${p.kind}, predicted ${ms(p.tokenSeconds)} ms/token${syncNote(p)}` };
}

/** Stages and their predicted times: a plan before it is named and chosen. */
type Staged = Pick<Plan, 'stages' | 'bottleneckSeconds' | 'tokenSeconds'>;
type Summarised = Staged & PlanSummary;

function summarise(p: Staged): Summarised {
  const k = p.stages.length;
  const groups = p.stages.filter((s) => s.members);
  const n = groups[0]?.members?.length;
  if (n === undefined) return { ...p, kind: k === 1 ? 'one node' : `${k} stages` };
  if (groups.length < k) return { ...p, kind: `${k} stages, ${groups.length} of them ${n}-node groups` };
  return { ...p, kind: k === 1 ? `a ${n}-node group` : `${k} stages of ${n}-node groups` };
}

/** The times and kind of a plan the choice rejected (its stages are not kept). */
function summary(p: Summarised): PlanSummary {
  return { kind: p.kind, tokenSeconds: p.tokenSeconds, bottleneckSeconds: p.bottleneckSeconds };
}

const ms = (seconds: number) => (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1);

/** A group plan's sync as the reason states it: measured, or assumed for links never measured. */
function syncNote(p: Staged): string {
  const groups = p.stages.filter((s) => s.members);
  if (groups.length === 0) return '';
  const sync = Math.max(...groups.map((s) => s.syncSeconds ?? 0));
  const measured = groups.every((s) => s.members!.every((x) => x.node.rttSeconds !== undefined));
  return ` (sync ${ms(sync)} ms, ${measured ? 'measured' : 'assumed'} latency)`;
}

/**
 * What a plan is judged on: one stream's time per token; with more sessions at once, the time
 * per token at full load, where a pipeline's stages each work on another session.
 */
function score(p: Staged, sessions: number): number {
  if (sessions <= 1) return p.tokenSeconds;
  return Math.max(p.bottleneckSeconds, p.tokenSeconds / Math.min(sessions, p.stages.length));
}

/** Without --tensor: one node per stage, unless groups are predicted faster by GROUP_MARGIN. */
function choose(nodes: readonly PlanNode[], m: ModelShape, o: PlanOptions): Plan {
  const sessions = o.sessions ?? 1;
  const unit = sessions === 1 ? 'ms/token' : `ms/token at ${sessions} sessions`;
  let pipe: Summarised | undefined;
  let unfit: PlanError | undefined;
  try {
    pipe = summarise(pipelinePlan(nodes, m, o));
  } catch (e) {
    if (!(e instanceof PlanError)) throw e;
    unfit = e;
  }
  const groups = groupCandidates(nodes, m, o);
  const best = groups.plans
    .map(summarise)
    .reduce<Summarised | undefined>((x, y) => (x && score(x, sessions) <= score(y, sessions) ? x : y), undefined);
  if (!pipe) {
    if (!best) throw unfit!;
    return {
      ...best,
      reason: `${best.kind}: predicted ${ms(score(best, sessions))} ${unit}; one node per stage does not fit${syncNote(best)}`,
    };
  }
  if (!best) return { ...pipe, reason: `${pipe.kind}: ${groups.why}` };
  const [g, p] = [score(best, sessions), score(pipe, sessions)];
  if (g <= p * (1 - GROUP_MARGIN))
    return {
      ...best,
      reason: `${best.kind}: predicted ${ms(g)} ${unit} vs ${ms(p)} ms as ${pipe.kind}${syncNote(best)}`,
      rejected: summary(pipe),
    };
  const short = g < p ? `, not the ${GROUP_MARGIN * 100}% faster groups must be` : '';
  return {
    ...pipe,
    reason: `${pipe.kind}: predicted ${ms(p)} ${unit} vs ${ms(g)} ms as ${best.kind}${short}${syncNote(best)}`,
    rejected: summary(best),
  };
}

/** The group plans worth weighing against one node per stage, or why there are none. */
function groupCandidates(nodes: readonly PlanNode[], m: ModelShape, o: PlanOptions): { plans: Staged[]; why: string } {
  if (nodes.length < 2) return { plans: [], why: 'no other node to form a group with' };
  if (!o.shares) return { plans: [], why: "the model's layers cannot be shared" };
  if (nodes.some((n) => n.rttSeconds === undefined))
    return { plans: [], why: 'no groups, since not every link to the nodes was measured' };
  const stages = o.stages ?? 1;
  const most = Math.floor(nodes.length / stages);
  if (most < 2) return { plans: [], why: `${nodes.length} nodes make no groups for ${stages} stages` };
  const sizes: number[] = [];
  for (let n = 2; n <= most; n++) if (m.kvHeads % n === 0) sizes.push(n);
  if (sizes.length === 0)
    return { plans: [], why: `no group size from 2 to ${most} divides the model's ${m.kvHeads} KV heads` };
  const plans: Staged[] = [];
  const refused: string[] = [];
  for (const n of sizes) {
    // the nodes left over after forming groups of n may be stages of their own (mixed)
    for (const mixed of nodes.length % n === 0 ? [false] : [false, true]) {
      try {
        plans.push(groupPlan(nodes, m, o, n, mixed));
      } catch (e) {
        if (!(e instanceof PlanError)) throw e;
        refused.push(`${n}-node groups${mixed ? ' beside single nodes' : ''}: ${e.message}`);
      }
    }
  }
  return { plans, why: `no group fits (${refused.join('; ')})` };
}

/**
 * The members' weights in their shares: their measured speeds in quarters of the fastest's. A
 * herd re-measured after a restart, its speeds some percent off, cuts the same shares, so each
 * member finds its share's slice in its cache instead of pulling it again.
 */
function shareWeights(members: readonly PlanNode[]): number[] {
  const top = Math.max(1, ...members.map((n) => n.throughput));
  return members.map((n) => Math.max(1, Math.round((4 * n.throughput) / top)));
}

/**
 * Groups of `tensor` nodes (fastest first) planned as nodes, then each group's members given
 * their shares; `mixed`: the nodes left over may be stages of one node beside them.
 */
function groupPlan(nodesIn: readonly PlanNode[], m: ModelShape, o: PlanOptions, tensor: number, mixed = false): Staged {
  const sorted = [...nodesIn].sort(byThroughput);
  if (sorted.length < tensor)
    throw new PlanError(`--tensor ${tensor} needs at least ${tensor} nodes, ${sorted.length} available`);
  if (!o.shares) throw new PlanError('internal: a tensor plan needs the model to share its layers');
  // Each member sends its partial sums to every other member at each sync.
  const sync = o.sync ?? DEFAULT_SYNC;
  const syncBytes = (tensor - 1) * payloadBytes(sync, m.dim);
  const groups: GroupNode[] = [];
  for (let i = 0; i + tensor <= sorted.length; i += tensor) {
    const members = sorted.slice(i, i + tensor);
    const rtt = Math.max(...members.map((n) => n.rttSeconds ?? ASSUMED_RTT));
    const weights = shareWeights(members);
    const shareTotal = weights.reduce((a, b) => a + b, 0);
    groups.push({
      id: members.map((n) => n.id).join('+'),
      name: members.map((n) => n.name).join('+'),
      address: members[0].address,
      // What the members offer together (each is checked on its own: Costs.needs).
      memAvailable: members.reduce((sum, n) => sum + n.memAvailable, 0),
      throughput: members.reduce((sum, n) => sum + n.throughput, 0),
      members,
      shareWeights: weights,
      shareTotal,
      syncSeconds: rtt + syncBytes / LINK_BYTES_PER_SECOND,
      // the others' logits of a shared head, in proportion to their shares, into the leader's link
      gatherSeconds:
        rtt + (payloadBytes(gatherFormat(sync), m.vocabSize) * (1 - weights[0] / shareTotal)) / LINK_BYTES_PER_SECOND,
    });
  }
  const singles = mixed ? sorted.slice(groups.length * tensor) : [];
  if (o.stages !== undefined && o.stages > groups.length + singles.length)
    throw new PlanError(
      `--stages ${o.stages} with --tensor ${tensor} needs ${o.stages * tensor} nodes, ${sorted.length} available`,
    );
  const p = pipelinePlan([...groups, ...singles], m, o);
  const stages = p.stages.map((st): PlannedStage => {
    if (!isGroup(st.node)) return st;
    const g = st.node;
    let shares: TensorShare[];
    try {
      shares = o.shares!(st.start, st.end, g.shareWeights);
    } catch (e) {
      if (e instanceof TensorShareError) throw new PlanError(`layers [${st.start}, ${st.end}): ${e.message}`);
      throw e;
    }
    return {
      ...st,
      node: g.members[0],
      members: g.members.map((node, i) => ({ node, share: shares[i] })),
      syncSeconds: g.syncSeconds,
    };
  });
  return { ...p, stages };
}

function pipelinePlan(nodesIn: readonly PlanNode[], m: ModelShape, o: PlanOptions): Staged {
  const nodes = [...nodesIn].sort(byThroughput);
  const want = o.stages;
  if (want !== undefined) {
    if (!(Number.isInteger(want) && want >= 1)) throw new PlanError(`--stages must be a positive integer, got ${want}`);
    if (want > m.nLayers)
      throw new PlanError(`--stages ${want} asks for more stages than the model's ${m.nLayers} layers`);
    if (want > nodes.length)
      throw new PlanError(`--stages ${want} asks for more stages than the ${nodes.length} node(s) available`);
  }
  const c = costs(m, o);

  // Pass 1: the best bottleneck any plan reaches.
  let fastest = Infinity;
  for (const order of orders(nodes, want)) {
    const s = split(order, m, c);
    if (s && s.bottleneck < fastest) fastest = s.bottleneck;
  }

  if (fastest === Infinity) {
    const pool = want === undefined ? nodes.slice(0, Math.min(nodes.length, m.nLayers)) : nodes.slice(0, want);
    const s = shortest(pool, m, c);
    const total = c.weights(0, m.nLayers) + c.kv(0, m.nLayers);
    const avail = pool.reduce((sum, n) => sum + n.memAvailable, 0);
    throw new PlanError(
      `the model does not fit: node ${s.node.name} (${s.node.address}) would need ${formatBytes(s.need)} for layers [${s.start}, ${s.end})` +
        ` with ${sessionsNote(o.sessions ?? 1)} and overhead but has ${formatBytes(s.node.memAvailable)} available: short by ${formatBytes(s.short)}` +
        ` (weights and KV cache total ${formatBytes(total)}; ${pool.length} node(s) have ${formatBytes(avail)} available)`,
    );
  }

  // Pass 2: among plans as fast as that (within tolerance), reuse first, then fewer stages.
  const cap = fastest * (1 + (o.tolerance ?? DEFAULT_TOLERANCE));
  let best: { order: PlanNode[]; missing: number; bottleneck: number; cuts: number[] } | undefined;
  for (const order of orders(nodes, want)) {
    const s = preferredSplit(order, m, c, cap);
    if (!s) continue;
    const better =
      !best ||
      s.missing < best.missing ||
      (s.missing === best.missing &&
        (order.length < best.order.length || (order.length === best.order.length && s.bottleneck < best.bottleneck)));
    if (better) best = { order, ...s };
  }
  if (!best) throw new PlanError('internal: no plan within tolerance of the fastest');
  const chosen = best;

  const stages = chosen.order.map((node, j): PlannedStage => {
    const start = chosen.cuts[j];
    const end = chosen.cuts[j + 1];
    return {
      node,
      start,
      end,
      weightBytes: c.weights(start, end),
      kvBytes: c.kv(start, end),
      bufferBytes: c.buffers,
      memBytes: c.mem(start, end),
      seconds: c.seconds(node, start, end),
    };
  });
  return { stages, bottleneckSeconds: chosen.bottleneck, tokenSeconds: stages.reduce((s, st) => s + st.seconds, 0) };
}

function sessionsNote(n: number): string {
  return n === 1 ? 'its KV cache' : `the KV caches and buffers of ${n} sessions`;
}
