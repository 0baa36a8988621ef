// Errors of the cluster layer, and the one table that says what any error of herd's means on
// each surface: the CLI's exit code, the HTTP status and the gRPC status. Errors of layers above
// this one (the API's, the CLI's) carry their kind; the rest are known here by their class.

import { GgufError } from '../gguf/reader.ts';
import { ModelError } from '../model/config.ts';
import { KernelError } from '../kernels/matvec.ts';
import { ContextError } from '../engine/generate.ts';
import { SamplingError } from '../engine/sampler.ts';
import { TokenizerError } from '../tokenizer/errors.ts';

export type ClusterErrorCode =
  | 'usage' // a flag or address the user gave is wrong
  | 'discovery' // no node found, or a peer did not answer
  | 'plan' // the model does not fit, or --stages cannot be met
  | 'auth' // the cluster key was refused
  | 'shard' // a shard could not be loaded or transferred
  | 'pipeline' // a stage failed or timed out during generation
  | 'invalid'; // a message from the network failed validation

export class ClusterError extends Error {
  constructor(
    readonly code: ClusterErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'ClusterError';
  }
}

/** A message from the network that failed validation: becomes INVALID_ARGUMENT. */
export function invalid(message: string): ClusterError {
  return new ClusterError('invalid', message);
}

/** What went wrong, in the terms every surface answers in. */
export type ErrorKind =
  | 'usage' // the command line is wrong
  | 'invalid' // a request or message is wrong: the caller's to fix
  | 'auth' // a key was refused
  | 'precondition' // the model does not fit, a shard could not load
  | 'unavailable' // the herd or a node cannot serve now
  | 'file' // a model file, tokenizer or kernel refused: the message says why
  | 'internal'; // a bug: the stack helps

/** gRPC codes as numbers (grpc-js `status`): the CLI imports this table without loading gRPC. */
const GRPC = {
  INVALID_ARGUMENT: 3,
  FAILED_PRECONDITION: 9,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

export interface Surfaces {
  /** The CLI's exit status. */
  readonly exit: number;
  readonly http: number;
  readonly grpc: number;
}

const SURFACES: Record<ErrorKind, Surfaces> = {
  usage: { exit: 2, http: 400, grpc: GRPC.INVALID_ARGUMENT },
  invalid: { exit: 1, http: 400, grpc: GRPC.INVALID_ARGUMENT },
  // Over HTTP a refused cluster key is the herd's failure, not the client's.
  auth: { exit: 1, http: 503, grpc: GRPC.UNAUTHENTICATED },
  precondition: { exit: 1, http: 503, grpc: GRPC.FAILED_PRECONDITION },
  unavailable: { exit: 1, http: 503, grpc: GRPC.UNAVAILABLE },
  file: { exit: 1, http: 500, grpc: GRPC.INTERNAL },
  internal: { exit: 1, http: 500, grpc: GRPC.INTERNAL },
};

/** An error that says its own kind (the API's and the CLI's errors). */
export interface KindedError extends Error {
  readonly kind: ErrorKind;
}

const CLUSTER_KINDS: Record<ClusterErrorCode, ErrorKind> = {
  invalid: 'invalid',
  auth: 'auth',
  plan: 'precondition',
  shard: 'precondition',
  usage: 'unavailable',
  discovery: 'unavailable',
  pipeline: 'unavailable',
};

export function errorKind(e: unknown): ErrorKind {
  if (!(e instanceof Error)) return 'internal';
  if (typeof (e as Partial<KindedError>).kind === 'string') return (e as KindedError).kind;
  if (e instanceof ClusterError) return CLUSTER_KINDS[e.code];
  // A StepError is a RangeError: a step that does not fit its session. (ChatTemplateError by
  // name: its module loads a template engine that nodes do not need.)
  if (
    e instanceof ContextError ||
    e instanceof SamplingError ||
    e instanceof RangeError ||
    e.name === 'ChatTemplateError'
  ) {
    return 'invalid';
  }
  if (e instanceof GgufError || e instanceof ModelError || e instanceof KernelError || e instanceof TokenizerError)
    return 'file';
  return 'internal';
}

export function surfacesOf(e: unknown): Surfaces {
  return SURFACES[errorKind(e)];
}
