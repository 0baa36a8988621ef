import test from 'ava';
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { herd } from './helpers/herd.ts';
import { fixtureModels } from './helpers/paths.ts';
import { mayShowHelp } from '../src/cli/yargs.ts';

interface RunJson {
  text: string;
  tokens: number[];
  prompt_tokens: number[];
  timings: Record<string, number>;
}

const referenceText = readFileSync(join(fixtureModels, 'stories260K.reference.txt'), 'utf8');
const reference = JSON.parse(readFileSync(join(fixtureModels, 'stories260K.reference.json'), 'utf8')) as {
  generated_tokens: number[];
  content: string;
};

/** The text between <<< and >>> after `marker` in the reference, without the echoed prompt. */
function referenceStdout(marker: string): string {
  const from = referenceText.indexOf(marker);
  const start = referenceText.indexOf('<<<\n', from) + 4;
  const end = referenceText.indexOf('\n>>>', start);
  return referenceText
    .slice(start, end)
    .replace(/^ Once upon a time/, '')
    .replace(/\n+$/, '');
}

function q4Ids(): number[] {
  const m = /q4_0 generated ids: \[([\d, ]+)\]/.exec(referenceText);
  if (!m) throw new Error('q4_0 ids missing from the reference');
  return m[1].split(',').map(Number);
}

const greedy = ['run', '--temp', '0', '-n', '64', '--json', 'Once upon a time'];

test("greedy run on the bundled model gives llama.cpp's 64 tokens and text", async (t) => {
  const r = await herd(greedy);
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as RunJson;
  t.deepEqual(out.prompt_tokens, [1, 403, 407, 261, 378]);
  t.deepEqual(out.tokens, reference.generated_tokens);
  t.is(out.text, reference.content);
  t.is(out.text, referenceStdout('1. Greedy generation'));
  for (const k of ['prompt_tokens', 'prompt_ms', 'prompt_tps', 'decode_tokens', 'decode_ms', 'decode_tps'])
    t.is(typeof out.timings[k], 'number', k);
  t.is(out.timings.decode_tokens, 64);
});

test('greedy run on the q8_0 file gives the same tokens as f32, as llama.cpp does', async (t) => {
  const r = await herd([...greedy, '--model', join(fixtureModels, 'stories260K-q8_0.gguf')]);
  t.is(r.code, 0, r.stderr);
  t.deepEqual((JSON.parse(r.stdout) as RunJson).tokens, reference.generated_tokens);
});

test("greedy run on the q4_0 file gives llama.cpp's q4_0 tokens and text", async (t) => {
  const r = await herd([...greedy, '--model', join(fixtureModels, 'stories260K-q4_0.gguf')]);
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as RunJson;
  t.deepEqual(out.tokens, q4Ids());
  t.is(out.text, referenceStdout('q4_0 stdout'));
});

test('without --json stdout is only the continuation, timings on stderr', async (t) => {
  const r = await herd(['run', '--temp', '0', '-n', '64', 'Once upon a time']);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, `${reference.content}\n`);
  t.regex(r.stderr, /decode 64 tokens/);
});

test('the same seed gives the same sampled text', async (t) => {
  const args = ['run', '--seed', '1234', '-n', '40', '--json', 'Once upon a time'];
  const [a, b] = await Promise.all([herd(args), herd(args)]);
  t.is(a.code, 0, a.stderr);
  t.is(a.stdout.replace(/"timings".*/, ''), b.stdout.replace(/"timings".*/, ''));
});

test('stop strings end the text before them', async (t) => {
  const r = await herd(['run', '--temp', '0', '-n', '64', '--json', '--stop', 'Lily', 'Once upon a time']);
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as RunJson & { stop_reason: string };
  t.is(out.text, ', there was a little girl named ');
  t.is(out.stop_reason, 'stop');
});

test('herd tokenize prints ids with BOS, without it under --no-bos, specials with --special', async (t) => {
  const ids = async (args: string[]) => JSON.parse((await herd(['tokenize', '--json', ...args])).stdout) as number[];
  t.deepEqual(await ids(['Hello world']), [1, 346, 306, 414, 263, 304, 341]);
  t.deepEqual(await ids(['Hello world', '--no-bos']), [346, 306, 414, 263, 304, 341]);
  t.deepEqual((await ids(['<s>', '--no-bos', '--special']))[0], 1);
  t.not((await ids(['<s>', '--no-bos']))[0], 1);
});

test('a prompt longer than the context is refused before any compute', async (t) => {
  const r = await herd(['run', '--ctx', '8', 'Once upon a time there was a little girl named Lily']);
  t.is(r.code, 2);
  t.regex(r.stderr, /^herd: error: the prompt is \d+ tokens but the context holds 8/);
  t.is(r.stdout, '');
});

test('errors print one clear line and exit non-zero', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'herd-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bad = join(dir, 'bad.gguf');
  writeFileSync(bad, Buffer.from('GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\x7f', 'latin1'));
  const cases: [string[], RegExp][] = [
    [['run', '--model', join(dir, 'missing.gguf'), 'x'], /model file not found/],
    [['run', '--model', bad, 'x'], /bad\.gguf: tensor count is \d+, more than/],
    [['run', '--temp', '-1', 'x'], /temperature must be >= 0/],
    [['run', '-n', '2.5', 'x'], /--max-tokens must be an integer >= 0/],
    [['run', '--top-p', 'abc', 'x'], /top-p must be in \(0, 1\]/],
    [['run', '--no-such-flag', 'x'], /Unknown argument/],
    [['plan', '--tensor', '0'], /--tensor must be an integer >= 1, got 0/],
  ];
  for (const [args, message] of cases) {
    const r = await herd(args);
    t.not(r.code, 0, args.join(' '));
    t.regex(r.stderr, message, args.join(' '));
    t.is(r.stderr.trim().split('\n').length, 1, `one line for ${args.join(' ')}: ${r.stderr}`);
  }
});

test('herd plan says why it chose its plan and what it predicts', async (t) => {
  const auto = await herd(['plan', '--nodes', 'local', '--json']);
  t.is(auto.code, 0, auto.stderr);
  const p = JSON.parse(auto.stdout) as {
    plan: { sync_ms: number | null }[];
    token_ms: number;
    reason: string;
    rejected: unknown;
  };
  t.is(p.reason, 'one node: no other node to form a group with');
  t.is(p.rejected, null);
  t.true(p.token_ms > 0);
  t.deepEqual(
    p.plan.map((s) => s.sync_ms),
    [null],
  );
  // Forced: the reason names the flag; the text output ends with the prediction and the reason.
  const forced = await herd(['plan', '--nodes', 'local', '--tensor', '1']);
  t.is(forced.code, 0, forced.stderr);
  t.regex(
    forced.stdout,
    /^predicted [\d.]+ ms\/token through all stages, slowest stage [\d.]+ ms \(from measured matvec throughput\)\nwhy: --tensor 1: one node, predicted [\d.]+ ms\/token\n$/m,
  );
});

// Every way yargs takes for help, as src/cli/yargs.ts must foresee them to load the renderer.
const helpForms = [['--help'], ['-h'], ['--h'], ['-th'], ['help'], ['--help=true'], ['-n', '5', '-h', 'x']];

test("every form of help yargs takes prints the command's help", async (t) => {
  const [first, ...rest] = await Promise.all(helpForms.map((f) => herd(['run', ...f])));
  t.is(first.code, 0, first.stderr);
  t.regex(first.stdout, /^herd run \[prompt\]\n\nGenerate a continuation/);
  t.regex(first.stdout, /--max-tokens +Most tokens to generate/);
  rest.forEach((r, i) => t.is(r.stdout, first.stdout, helpForms[i + 1].join(' ')));
});

test("only a line that can ask for help loads yargs' help renderer", (t) => {
  for (const f of helpForms) t.true(mayShowHelp(['run', ...f]), f.join(' '));
  t.false(
    mayShowHelp(['run', '--model', 'm.gguf', '-t', '2', '-n', '64', '--threads', '2', '--json', 'Once upon a time']),
  );
  t.false(mayShowHelp(['chat', '--no-help', '--hostname-like', 'x']));
});
