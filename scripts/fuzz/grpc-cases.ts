// The gRPC fuzz cases: one call to a method of the node service, made from the run's seed and
// the call's index. Payloads are raw protobuf bytes (sent with identity serializers, so nothing
// on the client side tidies them): valid messages mutated byte by byte, random bytes, fields
// claiming huge lengths, activations of the wrong size, messages over the size limit, gzip
// bombs, and proof headers replayed from another call.
//
// Every payload that still decodes is made to name only loopback addresses before it is sent:
// a node dials the coordinator, next stage and Deliver addresses a request names, and a fuzzer
// must not make it send traffic off this machine.

// The generated codecs themselves (src/cluster/wire.ts re-exports only their types and clients).
import {
  DropSessionRequest,
  ForwardRequest,
  HealthRequest,
  InfoRequest,
  LoadShardRequest,
  type Activation,
  type DType,
  type SessionOpen,
} from '../../src/proto/herd.ts';
import { defaultSampling } from '../../src/engine/sampler.ts';
import { Rng } from './rng.ts';

export type NodeMethod = 'Info' | 'Health' | 'LoadShard' | 'Forward' | 'DropSession' | 'Unknown';
export const NODE_METHODS: readonly NodeMethod[] = ['Info', 'Health', 'LoadShard', 'Forward', 'DropSession'];

/** What the fuzzer knows of the node under test, from its Info once a real generation ran. */
export interface Target {
  readonly modelHash: string;
  readonly modelSize: number;
  readonly modelName: string;
  readonly nLayers: number;
  readonly start: number;
  readonly end: number;
  readonly ctx: number;
  readonly dim: number;
  readonly vocab: number;
  /** The node's own host:port (a route's hop must name it). */
  readonly self: string;
  /** A loopback host:port that answers Deliver (the fuzzer's sink). */
  readonly sink: string;
}

export type Strategy = 'mutated' | 'random' | 'huge-length' | 'wrong-size' | 'oversize' | 'gzip-bomb' | 'replay';

export interface CallCase {
  readonly index: number;
  readonly method: NodeMethod;
  readonly strategy: Strategy;
  /** The request messages (one for a unary or server-streaming call, a sequence for Forward). */
  readonly messages: readonly Buffer[];
  /** Sent gzip-compressed (grpc-encoding: gzip). */
  readonly compress: boolean;
  /** Extra call metadata. */
  readonly metadata: Readonly<Record<string, string>>;
  readonly what: string;
}

export const PATH: Record<NodeMethod, string> = {
  Info: '/herd.v1.HerdNode/Info',
  Health: '/herd.v1.HerdNode/Health',
  LoadShard: '/herd.v1.HerdNode/LoadShard',
  Forward: '/herd.v1.HerdNode/Forward',
  DropSession: '/herd.v1.HerdNode/DropSession',
  Unknown: '/herd.v1.HerdNode/NoSuchMethod',
};

/** Over the 4 MiB a node accepts on a unary call (and over grpc-js's default). */
const OVERSIZE = 5 * 1024 * 1024;
/** Inflates to this many bytes; gzip-compressed, it is about 32 KiB. */
const BOMB = 32 * 1024 * 1024;

function sessionId(rng: Rng): string {
  return `fuzz-${rng.u32().toString(36)}-${rng.u32().toString(36)}`;
}

function validOpen(t: Target, rng: Rng, id: string): SessionOpen {
  return {
    sessionId: id,
    modelHash: t.modelHash,
    route: [{ address: t.self, start: t.start, end: t.end }],
    hop: 0,
    ctx: Math.min(t.ctx, 32),
    wire: 1,
    sampling: {
      ...defaultSampling,
      temperature: rng.chance(0.5) ? 0 : defaultSampling.temperature,
      seed: rng.u32(),
    },
    deliverTo: t.sink,
  };
}

function validActivation(t: Target, id: string, position: number, n: number, rng: Rng): Activation {
  return {
    sessionId: id,
    position,
    tokenIds: Array.from({ length: n }, () => rng.int(t.vocab)),
    hidden: Buffer.alloc(0),
    dtype: 1,
    dim: t.dim,
    timings: [],
  };
}

const enc = {
  open: (o: SessionOpen) => Buffer.from(ForwardRequest.encode(ForwardRequest.fromPartial({ open: o })).finish()),
  act: (a: Activation) => Buffer.from(ForwardRequest.encode(ForwardRequest.fromPartial({ activation: a })).finish()),
};

/** A valid request (or stream of requests) for the method. */
function validMessages(method: NodeMethod, t: Target, rng: Rng): Buffer[] {
  switch (method) {
    case 'Info':
    case 'Unknown':
      return [Buffer.from(InfoRequest.encode({}).finish())];
    case 'Health':
      return [Buffer.from(HealthRequest.encode({}).finish())];
    case 'DropSession':
      return [Buffer.from(DropSessionRequest.encode({ sessionId: sessionId(rng) }).finish())];
    case 'LoadShard':
      return [
        Buffer.from(
          LoadShardRequest.encode(
            LoadShardRequest.fromPartial({
              modelHash: t.modelHash,
              modelSize: t.modelSize,
              modelName: t.modelName,
              start: t.start,
              end: t.end,
              nLayers: t.nLayers,
              ctx: t.ctx,
              kvType: 1,
              coordinator: t.sink,
            }),
          ).finish(),
        ),
      ];
    case 'Forward': {
      const id = sessionId(rng);
      const out = [enc.open(validOpen(t, rng, id))];
      let pos = 0;
      for (let i = rng.int(3); i > 0; i--) {
        const n = rng.range(1, 4);
        out.push(enc.act(validActivation(t, id, pos, n, rng)));
        pos += n;
      }
      return out;
    }
  }
}

/** Byte-level mutations of one message. */
function mutateBytes(b: Buffer, rng: Rng): { bytes: Buffer; op: string } {
  const out = Buffer.from(b);
  switch (rng.int(5)) {
    case 0: {
      const n = rng.range(1, 6);
      for (let i = 0; i < n && out.length > 0; i++) out[rng.int(out.length)] = rng.int(256);
      return { bytes: out, op: `${n} random bytes` };
    }
    case 1: {
      const cut = rng.int(out.length + 1);
      return { bytes: out.subarray(0, cut), op: `cut to ${cut}` };
    }
    case 2: {
      const extra = Buffer.from(rng.bytes(rng.range(1, 32)));
      return { bytes: Buffer.concat([out, extra]), op: `${extra.length} garbage bytes appended` };
    }
    case 3: {
      // A varint somewhere made as long and as large as a varint gets.
      const at = rng.int(out.length + 1);
      const big = Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
      return { bytes: Buffer.concat([out.subarray(0, at), big, out.subarray(at)]), op: `max varint at ${at}` };
    }
    default: {
      // A field number and wire type no message has (or a group, which proto3 dropped).
      const tag = rng.pick([0x0b, 0x0c, 0x07, 0xfa, 0x7fffffff & rng.u32()]);
      const t = varint(BigInt(tag));
      return { bytes: Buffer.concat([out, t, Buffer.from(rng.bytes(rng.int(8)))]), op: `tag ${tag} appended` };
    }
  }
}

function varint(v: bigint): Buffer {
  const out: number[] = [];
  let x = BigInt.asUintN(64, v);
  do {
    let b = Number(x & 0x7fn);
    x >>= 7n;
    if (x > 0n) b |= 0x80;
    out.push(b);
  } while (x > 0n);
  return Buffer.from(out);
}

/** A length-delimited field claiming `claim` bytes, followed by only a few. */
function hugeLengthField(field: number, claim: bigint, rng: Rng): Buffer {
  return Buffer.concat([varint(BigInt((field << 3) | 2)), varint(claim), Buffer.from(rng.bytes(rng.int(16)))]);
}

/** Forward streams whose activations are of the wrong size or shape for the loaded model. */
function wrongSize(t: Target, rng: Rng): { messages: Buffer[]; op: string } {
  const id = sessionId(rng);
  const open = validOpen(t, rng, id);
  const a = validActivation(t, id, 0, rng.range(1, 3), rng);
  const n = a.tokenIds.length;
  const ops: [string, () => void][] = [
    ['hidden of the wrong length', () => (a.hidden = Buffer.alloc(rng.range(1, 3) * t.dim * 4 + rng.range(1, 7)))],
    ['hidden rows for a non-first stage', () => (a.hidden = Buffer.alloc(n * t.dim * 4))],
    ['hidden not a multiple of 4 bytes', () => (a.hidden = Buffer.alloc(n * t.dim * 4 - 1))],
    ['dim wrong', () => (a.dim = rng.pick([0, 1, t.dim - 1, t.dim + 1, 0xffffffff]))],
    ['dtype unknown', () => (a.dtype = rng.pick([0, 3, 99, -1]) as DType)],
    ['no tokens', () => (a.tokenIds = [])],
    ['10k tokens in one activation', () => (a.tokenIds = Array.from({ length: 10_000 }, () => 1))],
    ['token id past the vocabulary', () => (a.tokenIds = [rng.pick([t.vocab, 0xffffffff, 2 ** 31])])],
    ['position past the context', () => (a.position = rng.pick([open.ctx, open.ctx - 1, 0xffffffff, 2 ** 31]))],
    ['position ahead of the session', () => (a.position = rng.range(1, 5))],
    ['another session id', () => (a.sessionId = sessionId(rng))],
    ['NaN hidden values', () => (a.hidden = Buffer.from(new Float32Array(n * t.dim).fill(NaN).buffer))],
    ['timings for stages that do not exist', () => (a.timings = [{ nodeId: 'x', start: 0, end: 1, seconds: -1 }])],
    [
      'sampling of NaNs',
      () => (a.sampling = { ...open.sampling!, temperature: NaN, topP: Infinity, topK: 0xffffffff }),
    ],
    ['open ctx past the shard', () => (open.ctx = rng.pick([t.ctx + 1, 0xffffffff, 0]))],
    [
      'open route of 1000 hops',
      () => (open.route = Array.from({ length: 1000 }, (_, i) => ({ address: t.self, start: i, end: i + 1 }))),
    ],
    ['open hop past the route', () => (open.hop = rng.pick([1, 0xffffffff]))],
    ['open wire dtype unknown', () => (open.wire = 77 as DType)],
    [
      'open sampling penalties absurd',
      () => (open.sampling = { ...open.sampling!, penaltyLastN: 0xffffffff, repeatPenalty: -1 }),
    ],
    ['open logprobs 2^32-1', () => (open.sampling = { ...open.sampling!, logprobs: 0xffffffff })],
  ];
  const [op, apply] = rng.pick(ops);
  apply();
  const messages = [enc.open(open), enc.act(a)];
  if (rng.chance(0.3)) messages.push(enc.open(open)); // a second open on the stream
  return { messages, op };
}

function loopbackOnly(method: NodeMethod, b: Buffer, t: Target): Buffer {
  const safe = (a: string) => (/^127\.0\.0\.1:\d{1,5}$/.test(a) || a === '' ? a : t.sink);
  try {
    if (method === 'LoadShard') {
      const m = LoadShardRequest.decode(b);
      if (safe(m.coordinator) === m.coordinator) return b;
      return Buffer.from(LoadShardRequest.encode({ ...m, coordinator: t.sink }).finish());
    }
    if (method === 'Forward') {
      const m = ForwardRequest.decode(b);
      if (!m.open) return b;
      const o = m.open;
      const clean = {
        ...o,
        deliverTo: safe(o.deliverTo),
        route: o.route.map((h) => ({ ...h, address: safe(h.address) })),
      };
      if (clean.deliverTo === o.deliverTo && clean.route.every((h, i) => h.address === o.route[i].address)) return b;
      return Buffer.from(ForwardRequest.encode({ open: clean }).finish());
    }
  } catch {
    // Undecodable: the node refuses it before dialing anything.
  }
  return b;
}

export function makeCallCase(
  t: Target,
  runSeed: number,
  index: number,
  replayable: () => Record<string, string>,
): CallCase {
  const rng = Rng.forCase(runSeed, index);
  const strategy = rng.pick<Strategy>([
    'mutated',
    'mutated',
    'mutated',
    'random',
    'huge-length',
    'wrong-size',
    'wrong-size',
    'oversize',
    'gzip-bomb',
    'replay',
  ]);
  let method: NodeMethod = rng.chance(0.05) ? 'Unknown' : rng.pick(NODE_METHODS);
  if (strategy === 'wrong-size') method = 'Forward';
  let messages = validMessages(method, t, rng);
  let what: string;
  let compress = false;
  let metadata: Record<string, string> = {};
  switch (strategy) {
    case 'mutated': {
      const i = rng.int(messages.length);
      const m = mutateBytes(messages[i], rng);
      messages = messages.map((b, j) => (j === i ? m.bytes : b));
      what = `message ${i} of ${messages.length}: ${m.op}`;
      break;
    }
    case 'random': {
      const n = rng.pick([0, 1, 2, 7, 64, 512]);
      messages = [Buffer.from(rng.bytes(n)), ...(method === 'Forward' && rng.chance(0.5) ? messages.slice(1) : [])];
      what = `${n} random bytes`;
      break;
    }
    case 'huge-length': {
      const claim = rng.pick([2n ** 31n - 1n, 2n ** 32n, 2n ** 62n, 2n ** 64n - 1n, 4n * 1024n * 1024n]);
      const field = rng.range(1, 10);
      const i = rng.int(messages.length);
      messages = messages.map((b, j) => (j === i ? Buffer.concat([b, hugeLengthField(field, claim, rng)]) : b));
      what = `field ${field} claims ${claim} bytes in message ${i}`;
      break;
    }
    case 'wrong-size': {
      const w = wrongSize(t, rng);
      messages = w.messages;
      what = w.op;
      break;
    }
    case 'oversize': {
      // A valid message padded with an unknown field to past the unary limit.
      const pad = Buffer.concat([varint(BigInt((15 << 3) | 2)), varint(BigInt(OVERSIZE)), Buffer.alloc(OVERSIZE)]);
      messages = [Buffer.concat([messages[0], pad]), ...messages.slice(1)];
      what = `${OVERSIZE} bytes`;
      break;
    }
    case 'gzip-bomb': {
      // BOMB zeros in an unknown bytes field: ~32 KiB on the wire, 32 MiB inflated.
      const bomb = Buffer.concat([varint(BigInt((15 << 3) | 2)), varint(BigInt(BOMB)), Buffer.alloc(BOMB)]);
      messages = [Buffer.concat([messages[0], bomb]), ...messages.slice(1)];
      compress = true;
      what = `gzip bomb: ${BOMB} bytes of zeros, compressed`;
      break;
    }
    case 'replay': {
      metadata = rng.chance(0.5)
        ? replayable()
        : {
            'herd-nonce': Buffer.from(rng.bytes(32)).toString('hex'),
            'herd-proof': Buffer.from(rng.bytes(32)).toString('hex'),
          };
      what = 'proof headers replayed from another call';
      break;
    }
  }
  messages = messages.map((b) => loopbackOnly(method, b, t));
  return { index, method, strategy, messages, compress, metadata, what };
}
