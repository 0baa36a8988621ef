// The wire layer: the one module that imports the generated protocol (src/proto, from
// proto/herd.proto) and turns its messages into the domain's values and back. Proto types
// whose names the domain already uses go by a `Wire` name here (WireActivation is a message,
// kernels' Activation a buffer; WireKvType an enum, model's KvType a string).

import type { KvType } from '../model/kv-cache.ts';
import { SamplingError, validateSampling, type SamplingOptions, type TokenLogprobs } from '../engine/sampler.ts';
import type { StageTime } from '../engine/session.ts';
import {
  CutAxis,
  DType,
  HerdCoordinatorService,
  HerdNodeService,
  KvType as WireKvType,
  type NodeInfo,
  type Sampling,
  type ShardStatus,
  type SliceManifest as WireManifest,
  type TensorCut as WireCut,
  type TensorPart as WireTensorPart,
  type TokenLogprobs as WireLogprobs,
} from '../proto/herd.ts';
import type { TensorCut } from '../model/share-cut.ts';
import type { TensorShare } from '../model/tensor-share.ts';
import type { NodeCapabilities } from './caps.ts';
import { invalid } from './errors.ts';
import type { SliceManifest } from './shard/manifest.ts';

export {
  DType,
  FetchTensorsReply,
  HerdCoordinatorClient,
  HerdCoordinatorService,
  HerdNodeClient,
  HerdNodeService,
  KvType as WireKvType,
} from '../proto/herd.ts';
export type {
  Activation as WireActivation,
  ChallengeReply,
  DeliverReply,
  Delivery,
  DropSessionReply,
  DropSessionRequest,
  FetchTensorsRequest,
  ForwardReply,
  ForwardRequest,
  GenerateEvent,
  GenerateRequest,
  Hop,
  ListedNode,
  ListNodesReply,
  LoadProgress as WireLoadProgress,
  LoadShardRequest,
  NodeInfo,
  Sampling,
  SessionOpen,
  ShardStatus,
  SliceHeader,
  SliceManifest as WireManifest,
  StageTiming,
  TensorGroup as WireTensorGroup,
  TokenLogprobs as WireLogprobs,
} from '../proto/herd.ts';

/** The gRPC method paths a cluster key proof names, from the generated service definitions. */
export const METHOD = {
  loadShard: HerdNodeService.loadShard.path,
  forward: HerdNodeService.forward.path,
  dropSession: HerdNodeService.dropSession.path,
  fetchTensors: HerdCoordinatorService.fetchTensors.path,
  deliver: HerdCoordinatorService.deliver.path,
  generate: HerdCoordinatorService.generate.path,
} as const;

// --- element types -------------------------------------------------------------------------

/** A share's heads and rows as a TensorGroup carries them (no head rows: both 0). */
export function shareToWire(
  s: TensorShare,
): Record<'kvStart' | 'kvEnd' | 'ffnStart' | 'ffnEnd' | 'vocabStart' | 'vocabEnd', number> {
  return {
    kvStart: s.kvHeads[0],
    kvEnd: s.kvHeads[1],
    ffnStart: s.ffnRows[0],
    ffnEnd: s.ffnRows[1],
    vocabStart: s.vocabRows?.[0] ?? 0,
    vocabEnd: s.vocabRows?.[1] ?? 0,
  };
}

export function kvTypeToWire(k: KvType): WireKvType {
  return k === 'f16' ? WireKvType.KV_TYPE_F16 : WireKvType.KV_TYPE_F32;
}

/** Undefined for a value that is neither f32 nor f16. */
export function kvTypeFromWire(k: WireKvType): KvType | undefined {
  return k === WireKvType.KV_TYPE_F32 ? 'f32' : k === WireKvType.KV_TYPE_F16 ? 'f16' : undefined;
}

export function dtypeToWire(d: 'f32' | 'f16'): DType {
  return d === 'f16' ? DType.DTYPE_F16 : DType.DTYPE_F32;
}

export function dtypeBytes(d: DType): number {
  return d === DType.DTYPE_F16 ? 2 : 4;
}

// --- sampling and log-probabilities --------------------------------------------------------

/** The sampling fields, which the message and the options share name for name. */
function samplingFields(s: Sampling | SamplingOptions): SamplingOptions {
  return {
    temperature: s.temperature,
    topK: s.topK,
    topP: s.topP,
    minP: s.minP,
    repeatPenalty: s.repeatPenalty,
    frequencyPenalty: s.frequencyPenalty,
    presencePenalty: s.presencePenalty,
    penaltyLastN: s.penaltyLastN,
    seed: s.seed,
    logprobs: s.logprobs,
  };
}

/** A stage's sampling from a coordinator, checked: a bad value is INVALID_ARGUMENT. */
export function samplingFromWire(s: Sampling): SamplingOptions {
  try {
    return validateSampling(samplingFields(s));
  } catch (e) {
    if (e instanceof SamplingError) throw invalid(`sampling: ${e.message}`);
    throw e;
  }
}

/**
 * A Generate request's sampling, checked (throws SamplingError): absent fields are proto3's
 * zeros, so top_p 0 and repeat_penalty 0 mean off.
 */
export function samplingFromRequest(s: Sampling): SamplingOptions {
  const f = samplingFields(s);
  return validateSampling({
    ...f,
    topP: f.topP === 0 ? 1 : f.topP,
    repeatPenalty: f.repeatPenalty === 0 ? 1 : f.repeatPenalty,
  });
}

export function samplingToWire(s: SamplingOptions): Sampling {
  return samplingFields(s);
}

export function logprobsToWire(l: TokenLogprobs): WireLogprobs {
  return { logprob: l.logprob, top: l.top.map((t) => ({ tokenId: t.token, logprob: t.logprob })) };
}

/**
 * A delivery's log-probabilities of `token`, checked: `n` top entries (fewer only for a smaller
 * vocabulary), ids in the vocabulary, log-probabilities <= 0, most likely first.
 */
export function logprobsFromWire(l: WireLogprobs, token: number, n: number, vocabSize?: number): TokenLogprobs {
  const want = vocabSize === undefined ? n : Math.min(n, vocabSize);
  if (l.top.length !== want) throw invalid(`${l.top.length} top log-probabilities, expected ${want}`);
  if (!(l.logprob <= 0)) throw invalid(`log-probability ${l.logprob} is not <= 0`);
  let prev = 0;
  for (const t of l.top) {
    if (!(t.logprob <= prev)) throw invalid('top log-probabilities must be <= 0 and in descending order');
    if (vocabSize !== undefined && !(t.tokenId < vocabSize)) {
      throw invalid(`top token id ${t.tokenId} is outside the vocabulary of ${vocabSize}`);
    }
    prev = t.logprob;
  }
  return { token, logprob: l.logprob, top: l.top.map((t) => ({ token: t.tokenId, logprob: t.logprob })) };
}

// --- nodes ---------------------------------------------------------------------------------

export function capsFromInfo(info: NodeInfo): NodeCapabilities {
  return {
    protocolVersion: info.protocolVersion,
    nodeId: info.nodeId,
    name: info.name,
    arch: info.arch,
    backend: info.backend,
    memTotal: info.memTotal,
    memAvailable: info.memAvailable,
    cores: info.cores,
    throughput: info.throughput,
  };
}

/** A slice a node holds: loaded (with its KV type and sessions) or only in its cache. */
export interface HeldSlice {
  readonly modelHash: string;
  readonly start: number;
  readonly end: number;
  readonly bytes: number;
  readonly loaded?: {
    readonly nLayers: number;
    readonly ctx: number;
    readonly kvType: KvType;
    readonly sessions: number;
    readonly source: string;
  };
}

export function shardStatus(s: HeldSlice): ShardStatus {
  const { modelHash, start, end, bytes, loaded } = s;
  if (!loaded)
    return {
      modelHash,
      start,
      end,
      bytes,
      nLayers: 0,
      ctx: 0,
      kvType: WireKvType.KV_TYPE_UNSPECIFIED,
      sessions: 0,
      source: 'cache',
    };
  return { modelHash, start, end, bytes, ...loaded, kvType: kvTypeToWire(loaded.kvType) };
}

/** The layer ranges of this model a node holds in memory or in its cache. */
export function heldRanges(info: NodeInfo, modelHash: string): [number, number][] {
  return [...info.shards, ...info.cached].filter((s) => s.modelHash === modelHash).map((s) => [s.start, s.end]);
}

/** Stage timings as the domain's StageTime, given who ran each stage. */
export function stageTime(
  t: { readonly start: number; readonly end: number; readonly seconds: number },
  node: { readonly name: string; readonly id: string; readonly address: string },
): StageTime {
  return { node: node.name, nodeId: node.id, address: node.address, layers: [t.start, t.end], seconds: t.seconds };
}

// --- tensor manifests ----------------------------------------------------------------------

function cutToWire(c: TensorCut | undefined): WireCut | undefined {
  return (
    c && { axis: c.axis === 'rows' ? CutAxis.CUT_AXIS_ROWS : CutAxis.CUT_AXIS_COLUMNS, start: c.start, end: c.end }
  );
}

/** A tensor's cut in the domain's terms; INVALID_ARGUMENT for an axis that is neither rows nor columns. */
function cutFromWire(c: WireCut | undefined, name: string): TensorCut | undefined {
  if (!c) return undefined;
  const axis = c.axis === CutAxis.CUT_AXIS_ROWS ? 'rows' : c.axis === CutAxis.CUT_AXIS_COLUMNS ? 'cols' : undefined;
  if (!axis) throw invalid(`tensor ${name.slice(0, 64)}: cut along neither rows nor columns`);
  return { axis, start: c.start, end: c.end };
}

export function manifestToWire(m: SliceManifest): WireManifest {
  return {
    metadataSha256: Buffer.from(m.metadataSha256, 'hex'),
    tensors: m.tensors.map((t) => ({
      name: t.name,
      dims: [...t.dims],
      ggmlType: t.ggmlType,
      nBytes: t.nBytes,
      sha256: Buffer.from(t.sha256, 'hex'),
      cut: cutToWire(t.cut),
    })),
  };
}

/** A LoadShard's manifest in the domain's terms (checkManifest then validates it); absent is INVALID_ARGUMENT. */
export function manifestFromWire(m: WireManifest | undefined): SliceManifest {
  if (!m) throw invalid('LoadShard carries no tensor manifest (a coordinator older than this node?)');
  return {
    metadataSha256: Buffer.from(m.metadataSha256).toString('hex'),
    tensors: m.tensors.map((t) => ({
      name: t.name,
      dims: t.dims,
      ggmlType: t.ggmlType,
      nBytes: t.nBytes,
      sha256: Buffer.from(t.sha256).toString('hex'),
      ...(t.cut && { cut: cutFromWire(t.cut, t.name) }),
    })),
  };
}

/** A tensor of a FetchTensors request: whole, or the part its cut names. */
export interface TensorPart {
  readonly name: string;
  readonly cut?: TensorCut;
}

export function partsToWire(parts: readonly TensorPart[]): WireTensorPart[] {
  return parts.map((p) => ({ name: p.name, cut: cutToWire(p.cut) }));
}

/** A FetchTensors request's tensors; INVALID_ARGUMENT for a cut along no axis. */
export function partsFromWire(parts: readonly WireTensorPart[]): TensorPart[] {
  return parts.map((p) => ({ name: p.name, ...(p.cut && { cut: cutFromWire(p.cut, p.name) }) }));
}
