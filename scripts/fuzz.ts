// `npm run fuzz`: the long fuzzing run. The GGUF fuzzer mutates real and malformed model files
// and loads each (scripts/fuzz/gguf-*.ts); the gRPC fuzzer sends mutated, oversized and replayed
// calls to every method of a live `herd node` (scripts/fuzz/grpc-*.ts). Prints figures and every
// finding with its seed and case index; exits 1 when there is a finding.
//
//   npm run fuzz -- [--seed S] [--gguf-cases N] [--grpc-calls N] [--time SECONDS] [--only gguf|grpc]
//                   [--out DIR] [--gguf-case I] [--open] [--verbose]
//
// --gguf-case I re-runs one GGUF case of the seed and prints it; --open runs the node without a
// cluster key (plaintext); --verbose prints every gRPC call and its status.

import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fuzzGguf, type GgufFuzzReport } from './fuzz/gguf-driver.ts';
import { replayGgufCase } from './fuzz/gguf-replay.ts';
import { fuzzGrpc, type GrpcFuzzReport } from './fuzz/grpc-driver.ts';

const { values } = parseArgs({
  options: {
    seed: { type: 'string' },
    'gguf-cases': { type: 'string', default: '10000' },
    'grpc-calls': { type: 'string', default: '2000' },
    time: { type: 'string' },
    only: { type: 'string' },
    open: { type: 'boolean' },
    verbose: { type: 'boolean' },
    out: { type: 'string' },
    'gguf-case': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});

if (values.help) {
  process.stdout.write(
    readFileSync(new URL(import.meta.url), 'utf8')
      .split('\n\n')[0]
      .replace(/^\/\/ ?/gm, '') + '\n',
  );
  process.exit(0);
}

function int(name: string, v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) {
    process.stderr.write(`fuzz: --${name} must be a non-negative integer, got ${v}\n`);
    process.exit(2);
  }
  return n;
}

const seed = int('seed', values.seed, Math.floor(Math.random() * 2 ** 31));
const outDir = values.out ?? join(tmpdir(), `herd-fuzz-findings-${seed}`);
const timeLimitMs = values.time === undefined ? undefined : int('time', values.time, 0) * 1000;
const only = values.only;
if (only !== undefined && only !== 'gguf' && only !== 'grpc') {
  process.stderr.write(`fuzz: --only takes gguf or grpc, got ${only}\n`);
  process.exit(2);
}
const say = (line: string) => process.stdout.write(`${line}\n`);

if (values['gguf-case'] !== undefined) {
  say(JSON.stringify(replayGgufCase(seed, int('gguf-case', values['gguf-case'], 0), outDir), null, 2));
  process.exit(0);
}

say(`fuzz: seed ${seed}; failing inputs go to ${outDir}`);
let findings = 0;
// With --time, each fuzzer gets its share: GGUF first, then gRPC.
const share = (n: number) => (timeLimitMs === undefined ? undefined : timeLimitMs / n);

if (only !== 'grpc') {
  const r = await fuzzGguf({
    seed,
    cases: int('gguf-cases', values['gguf-cases'], 10_000),
    outDir,
    timeLimitMs: share(only === 'gguf' ? 1 : 2),
    onProgress: (done, total) => {
      if (done % 1000 === 0) say(`gguf: ${done}/${total}`);
    },
  });
  printGguf(r);
  findings += r.findings.length;
}
if (only !== 'gguf') {
  const r = await fuzzGrpc({
    seed,
    calls: int('grpc-calls', values['grpc-calls'], 2000),
    outDir,
    open: values.open,
    timeLimitMs: share(1),
    onProgress: (done, total) => {
      if (done % 250 === 0) say(`grpc: ${done}/${total}`);
    },
    onCall: values.verbose
      ? (c, code, details) => say(`  call ${c.index} ${c.method} ${c.strategy} (${c.what}): ${code} ${details}`)
      : undefined,
  });
  printGrpc(r);
  findings += r.findings.length;
}
say(findings === 0 ? 'fuzz: no findings' : `fuzz: ${findings} findings`);
process.exit(findings === 0 ? 0 : 1);

function printGguf(r: GgufFuzzReport): void {
  say(
    `gguf: ${r.casesRun} cases in ${r.seconds.toFixed(1)} s (${r.casesPerSecond.toFixed(0)} cases/s), ` +
      `${r.findings.length} findings, ${r.childRestarts} child restarts`,
  );
  for (const [k, n] of Object.entries(r.outcomes).sort((a, b) => b[1] - a[1])) say(`  ${k}: ${n}`);
  for (const f of r.findings)
    say(
      `  FINDING ${f.kind} seed ${r.seed} case ${f.index} (${f.seedFile}; ${f.ops.join('; ')}): ${f.detail}\n    ${f.file}`,
    );
}

function printGrpc(r: GrpcFuzzReport): void {
  say(
    `grpc: ${r.calls} calls in ${r.seconds.toFixed(1)} s (${r.callsPerSecond.toFixed(0)} calls/s), ` +
      `${r.keyed ? 'mutual TLS with a cluster key' : 'open mode'}, node RSS ${r.rssIdleMiB} MiB idle, ` +
      `${r.rssPeakMiB} MiB peak; ${r.findings.length} findings`,
  );
  for (const [k, n] of Object.entries(r.statuses).sort((a, b) => b[1] - a[1])) say(`  ${k}: ${n}`);
  for (const f of r.findings) say(`  FINDING seed ${r.seed} call ${f.index} (${f.what}): ${f.detail}`);
}
