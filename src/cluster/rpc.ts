// gRPC plumbing shared by the node, the coordinator and the API's gRPC server: channel
// options, clients, promisified calls, authenticated call metadata, binding and stopping a
// server, and the one place errors become statuses.

import {
  credentials,
  Metadata,
  ServerCredentials,
  status,
  type ChannelOptions,
  type Client,
  type Server,
  type ServerErrorResponse,
  type ServiceError,
} from '@grpc/grpc-js';
import { HerdCoordinatorClient, HerdNodeClient, type ChallengeReply } from './wire.ts';
import { authMetadata, type ClusterKey } from './auth.ts';
import { surfacesOf } from './errors.ts';

/** Large enough for a prefill's hidden states and a shard chunk; grpc-js defaults to 4 MiB. */
export const MAX_MESSAGE_BYTES = 256 * 1024 * 1024;

/**
 * No HTTP/2 keepalive pings: a stage's event loop is busy for the whole of a forward step
 * (seconds for a big prefill on a Pi), so an unanswered ping says nothing about a dead peer.
 * A node process that dies resets its connections at once; a silent one trips the step timeout.
 */
export const channelOptions: ChannelOptions = {
  'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
  'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  // A client's HTTP/2 receive window (default 64 KiB): shard chunks of 1 MiB stream at several
  // times the rate with a window that holds a few of them.
  'grpc-node.flow_control_window': 16 * 1024 * 1024,
};

export function nodeClient(address: string): HerdNodeClient {
  return new HerdNodeClient(address, credentials.createInsecure(), channelOptions);
}

export function coordinatorClient(address: string): HerdCoordinatorClient {
  return new HerdCoordinatorClient(address, credentials.createInsecure(), channelOptions);
}

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

/** Fetches a nonce from the server and returns metadata proving the key for `method`. */
export async function authenticate(
  client: HerdNodeClient | HerdCoordinatorClient,
  key: ClusterKey | undefined,
  method: string,
  timeoutMs = 10_000,
): Promise<Metadata> {
  if (!key) return new Metadata();
  const challenge = client.challenge as UnaryFn<object, ChallengeReply>;
  const reply = await unary(client, challenge, {}, timeoutMs);
  return authMetadata(key, reply.nonce, method);
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
export function bind(server: Server, host: string, port: number): Promise<number> {
  const addr = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  return new Promise<number>((resolve, reject) => {
    server.bindAsync(addr, ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
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
