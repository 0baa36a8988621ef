// Errors of the cluster layer. Each carries a code; gRPC servers turn them into statuses in one
// place (node/status.ts), the CLI prints their message as one line.

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
