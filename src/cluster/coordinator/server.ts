// The coordinator's gRPC server (HerdCoordinator): serves its model's tensors to nodes that
// lack them (FetchTensors), receives the last stage's tokens (Deliver), lists its nodes. With a
// cluster key, only holders of the key reach it (mutual TLS, tls.ts); the guard (guard.ts)
// bounds every call before its body is read.

import {
  type Server,
  type ServerReadableStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
} from '@grpc/grpc-js';
import type { ClusterKey } from '../key.ts';
import { guardedServer } from '../guard.ts';
import { invalid } from '../errors.ts';
import type { Logger } from '../log.ts';
import { bind, shutdown, toStatus } from '../rpc.ts';
import type { ModelSource } from '../shard/source.ts';
import { encodeFetchReply } from '../shard/fetch-reply.ts';
import {
  HerdCoordinatorService,
  type DeliverReply,
  type Delivery,
  type FetchTensorsReply,
  type FetchTensorsRequest,
  type ListedNode,
  type ListNodesReply,
} from '../wire.ts';

/** Where a session's delivered tokens go. */
export interface DeliverySink {
  /** Throws a ClusterError('invalid') for a delivery it refuses (the stage gets INVALID_ARGUMENT). */
  deliver(d: Delivery): void;
  /** The last stage's Deliver stream failed or ended early. */
  fail(reason: string): void;
}

export class CoordinatorServer {
  private readonly server: Server;
  readonly sinks = new Map<string, DeliverySink>();
  nodes: ListedNode[] = [];
  bytesServed = 0;
  port = 0;

  constructor(
    private readonly source: ModelSource,
    private readonly key: ClusterKey | undefined,
    private readonly log: Logger,
  ) {
    this.server = guardedServer({ onRefused: (r) => this.log.log('warn', 'request.refused', { ...r }) });
    // Shard chunks take the one-copy encoder; the bytes are what ts-proto would write.
    const fetchTensors = { ...HerdCoordinatorService.fetchTensors, responseSerialize: encodeFetchReply };
    this.server.addService(
      { ...HerdCoordinatorService, fetchTensors },
      {
        fetchTensors: this.fetchTensors,
        deliver: this.deliver,
        listNodes: (_call: ServerUnaryCall<unknown, ListNodesReply>, cb: sendUnaryData<ListNodesReply>) => {
          cb(null, { nodes: this.nodes });
        },
      },
    );
  }

  async start(host: string): Promise<number> {
    this.port = await bind(this.server, host, 0, this.key);
    return this.port;
  }

  stop(): Promise<void> {
    return shutdown(this.server, 2000);
  }

  private readonly fetchTensors = (call: ServerWritableStream<FetchTensorsRequest, FetchTensorsReply>): void => {
    const t0 = performance.now();
    let bytes = 0;
    this.source
      .serve(call, (n) => {
        bytes += n;
        this.bytesServed += n;
      })
      .then(() => {
        const { start, end } = call.request;
        this.log.log('debug', 'tensors.served', {
          peer: call.getPeer(),
          start,
          end,
          bytes,
          ms: Math.round(performance.now() - t0),
        });
      })
      .catch((e: unknown) => call.emit('error', toStatus(e)));
  };

  private readonly deliver = (
    call: ServerReadableStream<Delivery, DeliverReply>,
    cb: sendUnaryData<DeliverReply>,
  ): void => {
    let sink: DeliverySink | undefined;
    let sessionId: string | undefined;
    let answered = false;
    const answer = (err: ReturnType<typeof toStatus> | null) => {
      if (answered) return;
      answered = true;
      cb(err, err ? undefined : {});
    };
    call.on('data', (d: Delivery) => {
      if (answered) return;
      const s = this.sinks.get(d.sessionId);
      if (!s || (sessionId !== undefined && d.sessionId !== sessionId)) {
        answer(toStatus(invalid(`delivery for unknown session "${d.sessionId}"`)));
        return;
      }
      sessionId = d.sessionId;
      sink = s;
      try {
        s.deliver(d);
      } catch (e) {
        answer(toStatus(e));
      }
    });
    call.on('end', () => answer(null));
    call.on('error', (e) => {
      sink?.fail(`the last stage's token stream failed: ${e.message}`);
      answer(null);
    });
  };
}
