// One member of a data plane group in its own process (test/dataplane.test.ts): prints its
// endpoint, reads every member's endpoints (one JSON line on stdin), runs 10 q8_0 all-reduces
// of partial(member, round, 2048), prints the sum of all results' values, and closes its links
// at the next line on stdin.
// Usage: dataplane-member.ts MEMBER SIZE TOKEN_HEX

import { createInterface } from 'node:readline';
import { SyncGroup, type Endpoint } from '../../src/cluster/dataplane/group.ts';
import { partial } from './partials.ts';
import { HUNG_MS } from './serve.ts';

const [member, size] = process.argv.slice(2, 4).map(Number);
const token = Buffer.from(process.argv[4], 'hex');
const group = await SyncGroup.listen(
  { member, size, token, format: 'q8_0', maxValues: 2048, timeoutMs: HUNG_MS },
  { host: '127.0.0.1', port: 0 },
);
process.stdout.write(`${JSON.stringify(group.endpoint)}\n`);
const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise<string>((r) => lines.once('line', r));
await group.connect(JSON.parse(await nextLine()) as Endpoint[]);
let sum = 0;
for (let r = 0; r < 10; r++) {
  const buf = partial(member, r, 2048);
  await group.allReduce(buf);
  sum += buf.reduce((a, b) => a + b, 0);
}
process.stdout.write(`${sum}\n`);
// Closed only when every member has its sum: a member that closes while another still waits for
// a third's frame of the last round would make that one see a lost link.
await nextLine();
lines.close();
group.close();
