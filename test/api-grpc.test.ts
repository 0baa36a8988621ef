// `herd serve --grpc-port`: HerdCoordinator.Generate driven by a grpc-js client from the
// generated code, with the bundled stories260K model: greedy text equals the shared reference,
// a cancelled call frees its session, bad fields get INVALID_ARGUMENT, the cluster key is required.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import type {
  ChallengeReply,
  HerdCoordinatorClient,
  GenerateEvent,
  GenerateRequest,
  GenerateDone,
} from '../src/proto/herd.ts';
import { coordinatorClient, unary } from '../src/cluster/rpc.ts';
import { authMetadata } from '../src/cluster/auth.ts';
import { GREEDY_SAMPLING as GREEDY } from './helpers/greedy.ts';
import { fixtureModels } from './helpers/paths.ts';
import { eventually, HUNG_MS, startServe, type RunningServe } from './helpers/serve.ts';

const reference = JSON.parse(readFileSync(join(fixtureModels, 'stories260K.reference.json'), 'utf8')) as {
  content: string;
  generated_tokens: number[];
};

let serve: RunningServe;
let client: HerdCoordinatorClient;

async function grpcClient(s: RunningServe): Promise<HerdCoordinatorClient> {
  const e = await s.waitFor((l) => l.event === 'grpc.listening');
  return coordinatorClient(`127.0.0.1:${String(e.port)}`, undefined);
}

test.before(async () => {
  serve = await startServe(['--grpc-port', '0', '--ctx', '1024', '--parallel', '2']);
  client = await grpcClient(serve);
});

test.after.always(async () => {
  client?.close();
  await serve?.stop();
});

async function state(): Promise<{ sessions: { active: number } }> {
  return (await fetch(`${serve.url}/api/state`)).json() as Promise<{ sessions: { active: number } }>;
}

function collect(
  c: HerdCoordinatorClient,
  req: Partial<GenerateRequest>,
  md = new Metadata(),
): Promise<GenerateEvent[]> {
  return new Promise((resolve, reject) => {
    const events: GenerateEvent[] = [];
    const call = c.generate({ prompt: '', maxTokens: 0, stop: [], ...req }, md);
    call.on('data', (e: GenerateEvent) => events.push(e));
    call.on('error', reject);
    call.on('end', () => resolve(events));
  });
}

test.serial('a greedy Generate streams the reference text, then done with timings', async (t) => {
  const events = await collect(client, { prompt: 'Once upon a time', maxTokens: 64, sampling: GREEDY });
  const texts = events.flatMap((e) => (e.text ? [e.text] : []));
  t.true(texts.length > 5, `${texts.length} text events`);
  t.is(texts.map((x) => x.text).join(''), reference.content);
  t.deepEqual(
    texts.flatMap((x) => x.tokenIds),
    reference.generated_tokens,
  );
  const last = events[events.length - 1].done as GenerateDone;
  t.truthy(last, 'the last event is done');
  t.is(last.stopReason, 'length');
  t.is(last.promptTokens, 5);
  t.is(last.decodeTokens, 64);
  t.true(last.promptMs > 0 && last.decodeMs > 0);
  t.is(events.filter((e) => e.done).length, 1);
});

test.serial('a cancelled Generate frees its session, and the server keeps serving', async (t) => {
  const call = client.generate({
    prompt: 'Once upon a time',
    maxTokens: 0,
    sampling: { ...GREEDY, temperature: 1, seed: 7 },
    stop: [],
  });
  const ended = new Promise<ServiceError | undefined>((resolve) => {
    call.on('error', (e: ServiceError) => resolve(e));
    call.on('end', () => resolve(undefined));
  });
  let pieces = 0;
  await new Promise<void>((resolve) => {
    call.on('data', () => {
      if (++pieces === 3) resolve();
    });
  });
  t.is((await state()).sessions.active, 1, 'the call holds a session while it runs');
  call.cancel();
  const err = await ended;
  t.is(err?.code, status.CANCELLED);
  await eventually(async () => (await state()).sessions.active === 0, HUNG_MS, 'the session to be freed');
  const cancelled = await serve.waitFor((e) => e.event === 'request.cancelled', HUNG_MS);
  t.true(Number(cancelled.completionTokens ?? 0) < 1000);
  const metrics = await (await fetch(`${serve.url}/metrics`)).text();
  t.regex(metrics, /^herd_generations_total\{endpoint="grpc",outcome="cancelled"\} 1$/m);
  const again = await collect(client, { prompt: 'Once upon a time', maxTokens: 8, sampling: GREEDY });
  t.is(again[again.length - 1].done?.decodeTokens, 8);
});

test.serial('bad fields get INVALID_ARGUMENT', async (t) => {
  const cases: Partial<GenerateRequest>[] = [
    { prompt: '' },
    { prompt: 'Once', sampling: { ...GREEDY, temperature: -1 } },
    { prompt: 'Once', stop: ['a', 'b', 'c', 'd', 'e'] },
    { prompt: 'Once upon a time '.repeat(300) },
  ];
  for (const req of cases) {
    const e = await t.throwsAsync(collect(client, req));
    t.is((e as ServiceError).code, status.INVALID_ARGUMENT, e?.message);
  }
  t.is((await state()).sessions.active, 0);
});

test.serial('with a cluster key, Generate needs the proof', async (t) => {
  const key = 'grpc-test-key-0123456789abcdef01234';
  const keyed = await startServe(['--grpc-port', '0', '--cluster-key', key]);
  const c = await grpcClient(keyed);
  try {
    const e = await t.throwsAsync(collect(c, { prompt: 'Once upon a time', maxTokens: 4, sampling: GREEDY }));
    t.is((e as ServiceError).code, status.UNAUTHENTICATED);
    const wrong = await unary<object, ChallengeReply>(c, c.challenge as never, {}, HUNG_MS);
    const e2 = await t.throwsAsync(
      collect(
        c,
        { prompt: 'Once upon a time', maxTokens: 4, sampling: GREEDY },
        authMetadata(Buffer.from('not-the-key'), wrong.nonce, '/herd.v1.HerdCoordinator/Generate'),
      ),
    );
    t.is((e2 as ServiceError).code, status.UNAUTHENTICATED);
    const { nonce } = await unary<object, ChallengeReply>(c, c.challenge as never, {}, HUNG_MS);
    const events = await collect(
      c,
      { prompt: 'Once upon a time', maxTokens: 4, sampling: GREEDY },
      authMetadata(Buffer.from(key), nonce, '/herd.v1.HerdCoordinator/Generate'),
    );
    t.is(events[events.length - 1].done?.decodeTokens, 4);
  } finally {
    c.close();
    await keyed.stop();
  }
});
