// The short CI run of the gRPC fuzzer (scripts/fuzz/grpc-*.ts; `npm run fuzz` is the long one):
// a live `herd node` with a cluster key takes a few hundred hostile calls over every method of
// its service — mutated protobuf, random bytes, huge declared lengths, activations of the wrong
// size, oversized messages, gzip bombs, replayed proof headers — and must answer each with a
// clear status in time, stay up with its RSS bounded, and generate the same tokens afterwards.

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fuzzGrpc } from '../scripts/fuzz/grpc-driver.ts';

const outDir = mkdtempSync(join(tmpdir(), 'herd-fuzz-grpc-test-'));
test.after.always(() => rmSync(outDir, { recursive: true, force: true }));

// A fixed seed, so a CI failure is reproducible: `npm run fuzz -- --only grpc --seed S`.
const SEED = Number(process.env.HERD_FUZZ_SEED ?? 20261203);
const CALLS = 250;
// Growth over 250 varied calls (sessions, loads, refusals) was 45–59 MiB here: V8's heap and the
// allocator settle differently per machine, so the bound leaves room; one inflated gzip bomb
// alone would be 256 MiB (the bombs' own 64 MiB check is in transport-security).
const RSS_BUDGET_MIB = 128;

test(`a keyed node answers ${CALLS} hostile calls clearly, keeps its memory and still generates`, async (t) => {
  const r = await fuzzGrpc({ seed: SEED, calls: CALLS, outDir, rssBudgetMiB: RSS_BUDGET_MIB });
  t.log(
    `seed ${SEED}: ${r.calls} calls in ${r.seconds.toFixed(1)} s (${r.callsPerSecond.toFixed(1)}/s); ` +
      `node RSS ${r.rssIdleMiB} MiB idle, ${r.rssPeakMiB} MiB peak`,
  );
  t.true(r.keyed);
  t.deepEqual(
    r.findings.map((f) => `call ${f.index} (${f.what}): ${f.detail}`),
    [],
  );
  t.is(r.calls, CALLS);
  t.true(r.rssPeakMiB - r.rssIdleMiB <= RSS_BUDGET_MIB, `${r.rssPeakMiB} MiB peak, ${r.rssIdleMiB} MiB idle`);
  // Every method and every strategy was exercised, and the node refused what it should.
  const seen = (re: RegExp) => Object.keys(r.statuses).some((k) => re.test(k));
  for (const m of ['Info', 'Health', 'LoadShard', 'Forward', 'DropSession']) t.true(seen(new RegExp(`^${m} `)), m);
  for (const s of ['mutated', 'random', 'huge-length', 'wrong-size', 'oversize', 'gzip-bomb', 'replay'])
    t.true(seen(new RegExp(` ${s} `)), s);
  t.false(seen(/ gzip-bomb OK$/), 'a gzip-compressed request was accepted');
  // Forward, the step path, takes a prefill's hidden states in one message (guard.ts): not it.
  t.false(seen(/^(?!Forward )\w+ oversize OK$/), 'a unary message over the limit was accepted');
  t.true(seen(/^Forward wrong-size INVALID_ARGUMENT$/));
});
