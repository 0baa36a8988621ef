// What a load reports as it goes (weights read in-process, a node's shard transfer and
// loading) as one kind of event, for whoever shows it: the CLI's renderer, serve's logs.

/** One step of a stage's progress: `bytes` of `total` done. */
export interface ProgressEvent {
  /** What is happening: `load` (reading weights) or `fetch` (shard transfer). */
  readonly phase: 'load' | 'fetch';
  /** Who and what, e.g. `node-0 layers [0,11)`. */
  readonly stage: string;
  readonly bytes: number;
  readonly total: number;
}

export type ProgressSink = (e: ProgressEvent) => void;

/** What a node streams while it makes a shard resident (the fields of proto LoadProgress used here). */
interface NodeLoadProgress {
  readonly phase: string;
  readonly bytesDone: number;
  readonly bytesTotal: number;
}

/**
 * Turns the LoadProgress each node streams into events for `sink`: `fetching` is the shard
 * transfer, `loading` reading the weights; `done` alone (the shard was already resident)
 * counts as a finished load.
 */
export function nodeProgress(
  sink: ProgressSink,
): (node: string, layers: [number, number], p: NodeLoadProgress) => void {
  const loading = new Set<string>();
  return (node, [start, end], p) => {
    const stage = `${node} layers [${start},${end})`;
    if (p.phase === 'fetching') sink({ phase: 'fetch', stage, bytes: p.bytesDone, total: p.bytesTotal });
    else if (p.phase === 'loading' && p.bytesTotal > 0) {
      loading.add(stage);
      sink({ phase: 'load', stage, bytes: p.bytesDone, total: p.bytesTotal });
    } else if (p.phase === 'done') {
      if (!loading.delete(stage)) sink({ phase: 'load', stage, bytes: p.bytesTotal, total: p.bytesTotal });
    }
  };
}
