// The short CI run of the GGUF fuzzer (scripts/fuzz; `npm run fuzz` is the long one): mutated
// model files, each parsed and loaded in a child process with a capped heap, must end in success
// or a clear loader error — no crash, hang, out-of-memory death, unbounded allocation, RangeError
// or other stray exception. And the harness must be able to fail: an injected crash, hang and
// out-of-memory death are each caught and blamed on their case.

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fuzzGguf, type GgufFuzzReport } from '../scripts/fuzz/gguf-driver.ts';

const outDir = mkdtempSync(join(tmpdir(), 'herd-fuzz-gguf-test-'));
test.after.always(() => rmSync(outDir, { recursive: true, force: true }));

// A fixed seed, so a CI failure is reproducible: `npm run fuzz -- --seed S --gguf-case I`.
const SEED = Number(process.env.HERD_FUZZ_SEED ?? 20261203);
const CASES = 1500;

function findings(r: GgufFuzzReport): string {
  return r.findings
    .map((f) => `${f.kind} at seed ${r.seed} case ${f.index} (${f.seedFile}; ${f.ops.join('; ')}): ${f.detail}`)
    .join('\n');
}

test(`${CASES} mutated GGUF files all load or fail with a clear loader error`, async (t) => {
  const r = await fuzzGguf({ seed: SEED, cases: CASES, outDir, hangMs: 60_000, slowMs: 10_000 });
  t.log(
    `seed ${SEED}: ${r.casesRun} cases in ${r.seconds.toFixed(1)} s (${r.casesPerSecond.toFixed(0)}/s): ` +
      Object.entries(r.outcomes)
        .map(([k, n]) => `${k} ${n}`)
        .join(', '),
  );
  t.is(r.findings.length, 0, findings(r));
  t.is(r.casesRun, CASES);
  t.is(r.childRestarts, 0);
  // The mutations reach every stage: some files still load, others fail in the reader, the
  // config and the weights.
  const count = (prefix: string) =>
    Object.entries(r.outcomes)
      .filter(([k]) => k.startsWith(prefix))
      .reduce((s, [, n]) => s + n, 0);
  t.true(count('loaded') > 0);
  t.true(count('rejected:parse') > 0);
  t.true(count('rejected:config') > 0);
  t.true(count('rejected:load') > 0);
});

for (const kind of ['crash', 'hang', 'oom'] as const) {
  test(`an injected ${kind} is caught, blamed on its case, and the run goes on`, async (t) => {
    const r = await fuzzGguf({ seed: SEED, cases: 8, outDir, heapMiB: 64, hangMs: 3_000, inject: `${kind}@3` });
    t.deepEqual(
      r.findings.map((f) => [f.index, f.kind]),
      [[3, kind]],
    );
    t.is(r.casesRun, 8);
    t.is(r.childRestarts, 1);
  });
}
