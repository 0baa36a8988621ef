// gRPC plumbing shared by node and coordinator: channel options, clients, promisified calls,
// authenticated call metadata, and the one place errors become statuses.

import { credentials, Metadata, status, type ChannelOptions, type ServiceError, type ServerErrorResponse, type Client } from '@grpc/grpc-js';
import { HerdCoordinatorClient, HerdNodeClient, type ChallengeReply } from '../proto/herd.ts';
import { authMetadata, type ClusterKey } from './auth.ts';
import { ClusterError } from './errors.ts';

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
export function unary<Req, Res>(client: Client, fn: UnaryFn<Req, Res>, req: Req, timeoutMs: number, md = new Metadata()): Promise<Res> {
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
  const reply = await unary<object, ChallengeReply>(client, client.challenge as UnaryFn<object, ChallengeReply>, {}, timeoutMs);
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

/** An error of ours becomes the gRPC status the caller sees. */
export function toStatus(e: unknown): ServerErrorResponse {
  if (e instanceof ClusterError) {
    const code =
      e.code === 'invalid' ? status.INVALID_ARGUMENT
      : e.code === 'auth' ? status.UNAUTHENTICATED
      : e.code === 'plan' || e.code === 'shard' ? status.FAILED_PRECONDITION
      : status.UNAVAILABLE;
    return { name: 'ClusterError', message: e.message, code, details: e.message };
  }
  if (isServiceError(e)) return { name: e.name, message: e.message, code: e.code, details: e.details };
  const msg = e instanceof Error ? e.message : String(e);
  return { name: 'Error', message: msg, code: status.INTERNAL, details: msg };
}
