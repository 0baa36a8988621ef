// The fair queue behind the API's session slots.

import test from 'ava';
import { AbortedError, FairQueue } from '../src/api/queue.ts';

test('slots go to waiters in arrival order, and a released slot passes straight on', async (t) => {
  const q = new FairQueue(2);
  const a = await q.acquire();
  const b = await q.acquire();
  const order: string[] = [];
  const waiters = ['c', 'd', 'e'].map((name) => q.acquire().then((release) => (order.push(name), release)));
  t.is(q.active, 2);
  t.is(q.waiting, 3);
  a();
  a(); // releasing twice frees one slot only
  const c = await waiters[0];
  t.is(q.active, 2);
  t.is(q.waiting, 2);
  b();
  c();
  const [d, e] = await Promise.all(waiters.slice(1));
  t.deepEqual(order, ['c', 'd', 'e']);
  d();
  e();
  t.is(q.active, 0);
});

test('a waiter whose signal aborts leaves the line; the others keep their places', async (t) => {
  const q = new FairQueue(1);
  const first = await q.acquire();
  const ac = new AbortController();
  const gone = q.acquire(ac.signal);
  const next = q.acquire();
  t.is(q.waiting, 2);
  ac.abort();
  await t.throwsAsync(gone, { instanceOf: AbortedError });
  t.is(q.waiting, 1);
  first();
  const r = await next;
  t.is(q.active, 1);
  r();
  await t.throwsAsync(q.acquire(ac.signal), { instanceOf: AbortedError });
  t.is(q.active, 0);
});

test('drain refuses everyone waiting', async (t) => {
  const q = new FairQueue(1);
  await q.acquire();
  const w = q.acquire();
  q.drain(new Error('closing'));
  await t.throwsAsync(w, { message: 'closing' });
  t.is(q.waiting, 0);
});
