// Limits a herd gRPC server applies to every call before it reads a request body: no
// compressed requests (grpc-js would inflate a small gzip bomb into a large buffer before any
// handler ran), at most MAX_UNARY_BYTES per message except on the methods named as the step
// path, and a bound on concurrent streams per connection. Who may call at all is settled
// earlier still, by the TLS handshake (tls.ts): without the cluster key a peer never gets to
// send headers.
//
// grpc-js applies one message limit to a whole server and decodes any grpc-encoding its
// client names. The per-call limit and the encoding are fields of grpc-js's first call object
// (BaseServerInterceptingCall: `decoder.maxReadMessageLength`, `incomingEncoding`); the first
// interceptor sees that object before a byte of the body is read, and sets or checks them.
// grpc-js is pinned (package.json) and test/transport-security.test.ts fails if they move; if
// they are missing, every call is refused rather than served without limits.

import {
  Server,
  ServerInterceptingCall,
  status,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
  type ServerOptions,
} from '@grpc/grpc-js';
import { channelOptions } from './rpc.ts';

/** The most a request message may hold on a method not named as the step path. */
export const MAX_UNARY_BYTES = 4 * 1024 * 1024;
/**
 * A step message: a whole prefill's hidden states travel as one Activation today (tokens × dim ×
 * 4 bytes), so the Forward stream keeps the old limit until activations are chunked.
 */
export const MAX_STEP_BYTES = 256 * 1024 * 1024;
/** Streams at once on one connection: a node holds at most 256 sessions, one Forward stream each. */
export const MAX_CONCURRENT_STREAMS = 300;

/** A call refused before its body was read, for the server's log. */
export interface Refused {
  readonly method: string;
  readonly peer: string;
  readonly reason: string;
}

export interface GuardOptions {
  /** Method paths that may carry messages of up to MAX_STEP_BYTES. */
  readonly stepMethods?: readonly string[];
  readonly onRefused?: (r: Refused) => void;
}

/** The grpc-js internals the guard sets; see the file comment. */
interface BaseCallFields {
  incomingEncoding: string;
  decoder: { maxReadMessageLength: number };
}

function baseFields(call: ServerInterceptingCallInterface): BaseCallFields | undefined {
  const c = call as unknown as Partial<BaseCallFields>;
  if (typeof c.incomingEncoding !== 'string' || typeof c.decoder?.maxReadMessageLength !== 'number') return undefined;
  return c as BaseCallFields;
}

function limits(o: GuardOptions): ServerInterceptor {
  const step = new Set(o.stepMethods ?? []);
  return (method, call) => {
    const fields = baseFields(call);
    let reason: string | undefined;
    let code = status.INVALID_ARGUMENT;
    if (!fields) {
      reason = 'the server cannot apply its message limits (grpc-js internals changed)';
      code = status.INTERNAL;
    } else if (fields.incomingEncoding !== 'identity') {
      reason = `compressed requests (grpc-encoding ${fields.incomingEncoding}) are not accepted`;
      code = status.UNIMPLEMENTED;
    } else {
      fields.decoder.maxReadMessageLength = step.has(method.path) ? MAX_STEP_BYTES : MAX_UNARY_BYTES;
    }
    if (reason === undefined) return new ServerInterceptingCall(call);
    const refusal = { method: method.path, peer: call.getPeer(), reason };
    return new ServerInterceptingCall(call, {
      // Not passing the listener on: the handler never runs and nothing reads the body.
      start: () => {
        o.onRefused?.(refusal);
        call.sendStatus({ code, details: reason });
      },
    });
  };
}

/** The server options of every herd server: channelOptions, the guard, the stream bound. */
function guardedServerOptions(o: GuardOptions = {}): ServerOptions {
  return {
    ...channelOptions,
    // The largest any method allows; the guard lowers it per call.
    'grpc.max_receive_message_length': (o.stepMethods?.length ?? 0) > 0 ? MAX_STEP_BYTES : MAX_UNARY_BYTES,
    'grpc.max_concurrent_streams': MAX_CONCURRENT_STREAMS,
    interceptors: [limits(o)],
  };
}

export function guardedServer(o: GuardOptions = {}): Server {
  return new Server(guardedServerOptions(o));
}
