// gRPC plumbing shared by the node, the coordinator and the API's gRPC server: channel
// options, clients (mutual TLS with the cluster key, tls.ts), promisified calls, binding and
// stopping a server, and the one place errors become statuses.

import {
  credentials,
  Metadata,
  ServerCredentials,
  type ChannelCredentials,
  status,
  type ChannelOptions,
  type Client,
  type Server,
  type ServerErrorResponse,
  type ServiceError,
} from '@grpc/grpc-js';
import { HerdCoordinatorClient, HerdNodeClient } from './wire.ts';
import type { ClusterKey } from './key.ts';
import { herdTls, tlsChannelOptions } from './tls.ts';
import { surfacesOf } from './errors.ts';

/** Large enough for a prefill's hidden states and a shard chunk; grpc-js defaults to 4 MiB. */
export const MAX_MESSAGE_BYTES = 256 * 1024 * 1024;

/**
 * The control path (Info, LoadShard, FetchTensors) and the servers: HTTP/2 keepalive pings
 * every 10 s, a peer silent for 20 s more counts as gone. Relaxed because a node may be busy
 * for seconds loading a big slice, when its event loop answers no ping.
 */
export const channelOptions: ChannelOptions = {
  'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
  'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  // A client's HTTP/2 receive window (default 64 KiB): shard chunks of 1 MiB stream at several
  // times the rate with a window that holds a few of them.
  'grpc-node.flow_control_window': 16 * 1024 * 1024,
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 20_000,
  'grpc.keepalive_permit_without_calls': 1,
};

/**
 * The step path (Forward streams between stages, Deliver to the coordinator): a ping every
 * second while a stream is open, and a peer that does not answer within 1.5 s counts as gone, so
 * a cut link breaks the pipeline within 2.5 s and the coordinator re-plans (a dead process
 * resets its connections at once). A stage answers in time because it computes in steps of
 * about STEP_TARGET_SECONDS (engine/batcher.ts) and its event loop turns between them.
 */
const stepChannelOptions: ChannelOptions = {
  ...channelOptions,
  'grpc.keepalive_time_ms': 1000,
  'grpc.keepalive_timeout_ms': 1500,
  'grpc.keepalive_permit_without_calls': 0,
};

/** Which path a client serves: its channel's keepalive (each gets its own connection). */
export type ChannelPath = 'control' | 'step';

const optionsFor = (path: ChannelPath) => (path === 'step' ? stepChannelOptions : channelOptions);

/** With a key: mutual TLS, this process's herd leaf against the herd CA; without: plaintext (open mode). */
function clientTransport(key: ClusterKey | undefined, path: ChannelPath): [ChannelCredentials, ChannelOptions] {
  if (!key) return [credentials.createInsecure(), optionsFor(path)];
  return [herdTls(key).client, { ...optionsFor(path), ...tlsChannelOptions }];
}

/** A client constructor of one herd service, as ts-proto generates them. */
type ServiceClient<C> = new (address: string, credentials: ChannelCredentials, options: ChannelOptions) => C;

/** Makes clients of one service: `path` picks the keepalive, `key` the transport. */
function clientOf<C>(Service: ServiceClient<C>) {
  return (address: string, key: ClusterKey | undefined, path: ChannelPath = 'control'): C =>
    new Service(address, ...clientTransport(key, path));
}

export const nodeClient = clientOf(HerdNodeClient);
export const coordinatorClient = clientOf(HerdCoordinatorClient);

export function deadline(ms: number): Date {
  return new Date(Date.now() + ms);
}

type UnaryFn<Req, Res> = (
  req: Req,
  md: Metadata,
  opts: { deadline: Date },
  cb: (err: ServiceError | null, res: Res) => void,
) => unknown;

/** Calls a unary method of a generated client as a promise. */
export function unary<Req, Res>(
  client: Client,
  fn: UnaryFn<Req, Res>,
  req: Req,
  timeoutMs: number,
  md = new Metadata(),
): Promise<Res> {
  return new Promise((resolve, reject) => {
    fn.call(client, req, md, { deadline: deadline(timeoutMs) }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

export function isServiceError(e: unknown): e is ServiceError {
  return e instanceof Error && typeof (e as Partial<ServiceError>).code === 'number';
}

/** One line for a failed call: the status name and its details. */
export function describeCallError(e: unknown): string {
  if (isServiceError(e)) return `${status[e.code] ?? e.code}: ${e.details || e.message}`;
  return e instanceof Error ? e.message : String(e);
}

/** Any error becomes the gRPC status the caller sees; a failed call's status passes through. */
export function toStatus(e: unknown): ServerErrorResponse {
  if (isServiceError(e)) return { name: e.name, message: e.message, code: e.code, details: e.details };
  const msg = e instanceof Error ? e.message : String(e);
  return { name: e instanceof Error ? e.name : 'Error', message: msg, code: surfacesOf(e).grpc, details: msg };
}

/** Binds host:port (0: any free port; an IPv6 host in brackets) and returns the port. */
export function bind(server: Server, host: string, port: number, key?: ClusterKey): Promise<number> {
  const addr = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  // With a key, only a client presenting a leaf of the herd CA completes the TLS handshake.
  const creds = key ? herdTls(key).server : ServerCredentials.createInsecure();
  return new Promise<number>((resolve, reject) => {
    server.bindAsync(addr, creds, (err, p) => (err ? reject(err) : resolve(p)));
  });
}

/** Lets in-flight calls finish for up to graceMs, then cuts them (after `onForce`). */
export function shutdown(server: Server, graceMs: number, onForce?: () => void): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      onForce?.();
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
