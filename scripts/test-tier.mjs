// Runs one tier of the ava suite, or `all` of them one after another (what `npm test` does).
//   unit     in-process only: no root, no network, no herd processes (a couple of minutes)
//   cluster  builds LANs of Linux network namespaces (needs root): every file that imports
//            test/helpers/netns.ts
//   e2e      everything else: herd processes, servers on loopback, the llama.cpp oracle, Chromium
// A new test file lands in e2e unless it is listed as unit or builds a LAN, so none is left out.
// Extra arguments go to ava (e.g. --tap, --match).

import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const UNIT = [
  'api-queue',
  'batching',
  'chat-template',
  'cluster-key',
  'cluster-planner',
  'gguf-malformed',
  'gguf-malformed-limits',
  'gguf-reader',
  'model',
  'proto',
  'quantize',
  'sampler',
  'self-contained',
  'slice',
  'tensor-split',
  'tokenizer',
];
const UNIT_PREFIXES = ['kernels-'];

const root = fileURLToPath(new URL('..', import.meta.url));
const [tier, ...avaArgs] = process.argv.slice(2);
const files = readdirSync(new URL('../test/', import.meta.url))
  .filter((f) => f.endsWith('.test.ts'))
  .sort();

function tierOf(file) {
  const name = file.slice(0, -'.test.ts'.length);
  if (UNIT.includes(name) || UNIT_PREFIXES.some((p) => name.startsWith(p))) return 'unit';
  if (readFileSync(new URL(`../test/${file}`, import.meta.url), 'utf8').includes("from './helpers/netns.ts'"))
    return 'cluster';
  return 'e2e';
}

const TIERS = ['unit', 'e2e', 'cluster'];
if (![...TIERS, 'all'].includes(tier)) {
  console.error('usage: node scripts/test-tier.mjs unit|e2e|cluster|all [ava options]');
  process.exit(2);
}
// Every tier runs, even after one fails, so a run reports every failure.
let status = 0;
for (const t of tier === 'all' ? TIERS : [tier]) {
  const chosen = files.filter((f) => tierOf(f) === t).map((f) => `test/${f}`);
  const r = spawnSync(process.execPath, ['node_modules/ava/entrypoints/cli.mjs', ...chosen, ...avaArgs], {
    cwd: root,
    stdio: 'inherit',
  });
  if (r.status !== 0) status = r.status ?? 1;
}
process.exit(status);
