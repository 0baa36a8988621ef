import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { herd } from './helpers/herd.ts';
import { repoRoot, fixtureModels } from './helpers/paths.ts';
import { ProgressRenderer } from '../src/cli/progress.ts';
import { nodeProgress, type ProgressEvent } from '../src/cluster/coordinator/progress.ts';
import { GgufFile } from '../src/gguf/reader.ts';
import { Transformer } from '../src/model/transformer.ts';

const reference = JSON.parse(readFileSync(join(fixtureModels, 'stories260K.reference.json'), 'utf8')) as {
  content: string;
};
const PLAIN = /^herd: load \S+ layers \[0,5\): (\d+\.\d)\/(\d+\.\d) MiB \((\d+)%\), \d+(\.\d)? MB\/s$/;

function fakeStream(isTTY: boolean) {
  const chunks: string[] = [];
  return {
    isTTY,
    chunks,
    write: (c: string) => chunks.push(c),
    get text() {
      return chunks.join('');
    },
  };
}

test('herd run (not a TTY) prints plain load progress on stderr ending at 100%, stdout unchanged', async (t) => {
  const r = await herd(['run', '--temp', '0', '-n', '4', 'Once upon a time']);
  t.is(r.code, 0, r.stderr);
  const lines = r.stderr.split('\n').filter((l) => l.startsWith('herd: load ') && l.includes(' layers ['));
  t.true(lines.length >= 2 && lines.length <= 5, r.stderr);
  for (const l of lines) t.regex(l, PLAIN);
  const pcts = lines.map((l) => Number(PLAIN.exec(l)?.[3]));
  t.is(pcts[0], 0);
  t.is(pcts.at(-1), 100);
  t.deepEqual(
    [...pcts].sort((a, b) => a - b),
    pcts,
  );
  const last = PLAIN.exec(lines.at(-1)!)!;
  t.is(last[1], last[2]);
  t.false(r.stderr.includes('\r') || r.stderr.includes('\x1b'), 'no terminal escapes off a TTY');
  // stdout is the continuation alone: the greedy reference's start, then a newline.
  t.true(r.stdout.endsWith('\n'));
  t.true(r.stdout.length > 1 && reference.content.startsWith(r.stdout.slice(0, -1)), JSON.stringify(r.stdout));
  t.false(r.stdout.includes('herd:'));
});

test('Transformer.load reports each tensor, reaching the weight bytes', (t) => {
  const file = GgufFile.open(join(repoRoot, 'models', 'stories260K.gguf'));
  const seen: { stage: string; bytes: number; total: number }[] = [];
  const model = Transformer.load(file, { ctx: 16, layers: [1, 5], onProgress: (p) => seen.push(p) });
  t.true(seen.length > 4 * 9);
  t.deepEqual(seen[0], { stage: 'layers [1,5)', bytes: 0, total: model.weights.bytes });
  t.is(seen.at(-1)?.bytes, model.weights.bytes);
  for (let i = 1; i < seen.length; i++) t.true(seen[i].bytes >= seen[i - 1].bytes);
});

test('Transformer.loadAsync lets the event loop run between layers, with the same weights', async (t) => {
  const file = GgufFile.open(join(repoRoot, 'models', 'stories260K.gguf'));
  const events: string[] = [];
  let ticking = true;
  const tick = () => {
    events.push('tick');
    if (ticking) setImmediate(tick);
  };
  setImmediate(tick);
  const model = await Transformer.loadAsync(file, { ctx: 16, onProgress: () => events.push('progress') });
  ticking = false;
  const firstProgress = events.indexOf('progress');
  const lastProgress = events.lastIndexOf('progress');
  // A node's progress messages leave on its gRPC stream only in such turns of the loop.
  t.true(
    events.slice(firstProgress, lastProgress).filter((e) => e === 'tick').length >= model.config.nLayers - 1,
    events.join(' '),
  );
  const sync = Transformer.load(file, { ctx: 16 });
  t.deepEqual(model.weights.layers[3].wq.data, sync.weights.layers[3].wq.data);
  t.is(model.weights.bytes, sync.weights.bytes);
});

test('the plain renderer prints start, quarters and end, one line each', (t) => {
  let now = 0;
  const s = fakeStream(false);
  const r = new ProgressRenderer(s, { now: () => now });
  const total = 620 * 1024 * 1024;
  for (let i = 0; i <= 100; i++) {
    now = i * 73; // ms
    r.update({ phase: 'load', stage: 'node-0 layers [0,11)', bytes: (total * i) / 100, total });
  }
  r.update({ phase: 'load', stage: 'node-0 layers [0,11)', bytes: total, total }); // a repeat of 100%: nothing
  const lines = s.text.trimEnd().split('\n');
  t.deepEqual(
    lines.map((l) => /\((\d+)%\)/.exec(l)?.[1]),
    ['0', '25', '50', '75', '100'],
  );
  t.is(lines[2], 'herd: load node-0 layers [0,11): 310.0/620.0 MiB (50%), 89 MB/s');
  t.is(lines[4], 'herd: load node-0 layers [0,11): 620.0/620.0 MiB (100%), 89 MB/s');
  t.false(s.text.includes('\r'));
});

test('the TTY renderer redraws one line per node in place, throttled, always drawing the end', (t) => {
  let now = 0;
  const s = fakeStream(true);
  const r = new ProgressRenderer(s, { now: () => now, redrawMs: 100 });
  const ev = (stage: string, mib: number, phase: ProgressEvent['phase'] = 'load'): void =>
    r.update({ phase, stage, bytes: mib * 1024 * 1024, total: 100 * 1024 * 1024 });
  ev('a layers [0,2)', 0); // new stage: drawn
  ev('b layers [2,4)', 0, 'fetch'); // new stage: drawn
  now = 50;
  ev('a layers [0,2)', 10); // within 100 ms: not drawn
  now = 500;
  ev('a layers [0,2)', 50);
  now = 1000;
  ev('b layers [2,4)', 100, 'fetch'); // the end: drawn
  t.is(s.chunks.length, 4);
  t.is(s.chunks[0], '\rherd: load a layers [0,2) [........................] 0.0/100.0 MiB (0%), 0.0 MB/s\x1b[K\n');
  t.true(s.chunks[1].startsWith('\x1b[1A\r'));
  t.is(s.chunks[2].split('\n').length, 3, 'two lines, each redrawn');
  t.true(s.chunks[2].startsWith('\x1b[2A\r'));
  t.true(s.chunks[2].includes('load a layers [0,2) [############............] 50.0/100.0 MiB (50%), 105 MB/s\x1b[K\n'));
  t.true(
    s.chunks[3].endsWith('fetch b layers [2,4) [########################] 100.0/100.0 MiB (100%), 105 MB/s\x1b[K\n'),
  );
});

test('node LoadProgress maps to fetch and load events; done alone is a finished load', (t) => {
  const events: ProgressEvent[] = [];
  const on = nodeProgress((e) => events.push(e));
  const p = (phase: string, bytesDone = 0, bytesTotal = 0) => ({ phase, bytesDone, bytesTotal });
  on('n1', [0, 3], p('resolving'));
  on('n1', [0, 3], p('fetching', 0, 10));
  on('n1', [0, 3], p('fetching', 10, 10));
  on('n1', [0, 3], p('loading'));
  on('n1', [0, 3], p('loading', 5, 10));
  on('n1', [0, 3], p('loading', 10, 10));
  on('n1', [0, 3], p('done', 10, 10));
  on('n2', [3, 5], p('done', 7, 7));
  t.deepEqual(
    events.map((e) => `${e.phase} ${e.stage} ${e.bytes}/${e.total}`),
    [
      'fetch n1 layers [0,3) 0/10',
      'fetch n1 layers [0,3) 10/10',
      'load n1 layers [0,3) 5/10',
      'load n1 layers [0,3) 10/10',
      'load n2 layers [3,5) 7/7',
    ],
  );
});
