// A node refused a session for want of memory (RESOURCE_EXHAUSTED: node/budget.ts). Not a
// failure of the herd: the session may open once another one ends, so the API makes the
// request wait rather than re-plan or fail (api/session-pool.ts).

import { status } from '@grpc/grpc-js';
import { ClusterError } from './errors.ts';
import { isServiceError } from './rpc.ts';

export class CapacityError extends ClusterError {
  constructor(message: string) {
    super('plan', message);
    this.name = 'CapacityError';
  }
}

/** Whether a failed call is a node's refusal for want of memory or session room. */
export function isCapacityRefusal(e: unknown): boolean {
  return isServiceError(e) && e.code === status.RESOURCE_EXHAUSTED;
}
