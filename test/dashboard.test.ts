// The dashboard at GET / of herd serve, loaded in headless Chromium (Debian's chromium package,
// driven by playwright-core): it lists the herd's nodes, draws their layer ranges against the
// model, says why the planner chose the plan and shows live tokens/s. A stage that is a
// tensor-parallel group is drawn from this herd's own state, rewritten into a group on its way
// to the page (a second herd of grouped nodes would double the test's processes).

import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { startNode, type RunningNode, loopbackNodeArgs } from './helpers/herd-proc.ts';
import { HUNG_MS, startServe, type RunningServe } from './helpers/serve.ts';

const CHROMIUM = process.env.HERD_CHROMIUM ?? '/usr/bin/chromium';

/** Debian's chromium, installed here when missing and running as root (as CI does). */
function ensureChromium(): string {
  if (existsSync(CHROMIUM)) return CHROMIUM;
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    throw new Error(
      `the dashboard test needs Chromium at ${CHROMIUM}: run "apt-get install -y chromium" as root (or set HERD_CHROMIUM)`,
    );
  }
  execFileSync('sh', ['-c', 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium'], {
    stdio: ['ignore', 'ignore', 'inherit'],
    timeout: 900_000,
  });
  if (!existsSync(CHROMIUM)) throw new Error(`apt-get installed chromium, but ${CHROMIUM} is still missing`);
  return CHROMIUM;
}

/** What /api/state says of the herd (the fields these tests read). */
interface StateNode {
  node: string;
  address: string;
  layers: [number, number];
  nodes: { name: string; address: string; share: { kv_heads: number[]; ffn_rows: number[] } | null }[];
}
interface State {
  nodes: StateNode[];
  model: { layers: number };
  plan_reason: string | null;
}

const dir = mkdtempSync(join(tmpdir(), 'herd-dashboard-'));
const nodes: RunningNode[] = [];
let serve: RunningServe;
let browser: Browser;

test.before(async () => {
  const executablePath = ensureChromium();
  for (const name of ['pi-one', 'pi-two']) {
    nodes.push(await startNode([...loopbackNodeArgs(join(dir, name)), '--name', name]));
  }
  serve = await startServe(
    ['--nodes', nodes.map((n) => `127.0.0.1:${n.port}`).join(','), '--stages', '2', '--ctx', '1024'],
    {
      env: { ...process.env, HERD_CACHE_DIR: join(dir, 'serve') },
    },
  );
  browser = await chromium.launch({
    executablePath,
    headless: true,
    // As the environment notes say: no sandbox as root, and no background traffic off the machine.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

test.after.always(async () => {
  await browser?.close();
  await serve?.stop();
  for (const n of nodes) {
    n.child.kill('SIGTERM');
    await n.exited();
  }
  rmSync(dir, { recursive: true, force: true });
});

test('the dashboard lists the nodes, their layer ranges against the model, and live tokens/s', async (t) => {
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(serve.url);
  await page.waitForSelector('body[data-loaded="true"]', { timeout: HUNG_MS });

  const state = (await (await fetch(`${serve.url}/api/state`)).json()) as State;
  const listed = await page.$$eval('#nodes li.node', (lis) =>
    lis.map((li) => ({ name: li.getAttribute('data-node'), text: li.textContent ?? '' })),
  );
  t.deepEqual(
    listed.map((n) => n.name),
    state.nodes.map((n) => n.node),
  );
  t.deepEqual([...listed.map((n) => n.name)].sort(), ['pi-one', 'pi-two']);
  for (const [i, n] of state.nodes.entries()) {
    // Each stage names its nodes: one here, with no share of a group.
    t.deepEqual(n.nodes, [{ name: n.node, address: n.address, share: null }]);
    t.true(listed[i].text.includes(n.address), listed[i].text);
    t.true(listed[i].text.includes(`layers ${n.layers[0]}–${n.layers[1] - 1}`), listed[i].text);
    t.regex(listed[i].text, /memory [\d.]+ [KMGT]?B \/ [\d.]+ [KMGT]?B/);
  }

  // The ranges tile the model's layers: widths add up to the whole bar.
  const ranges = await page.$$eval('#layers .range', (els) =>
    els.map((e) => ({
      node: e.getAttribute('data-node'),
      left: parseFloat((e as HTMLElement).style.left),
      width: parseFloat((e as HTMLElement).style.width),
    })),
  );
  t.is(ranges.length, 2);
  t.is(Math.round(ranges.reduce((s, r) => s + r.width, 0)), 100);
  t.is(ranges[0].left, 0);
  t.is(await page.textContent('#status'), 'ready (cluster)');
  // Two nodes as two stages (--stages 2) leave no node for a group, and the page says so.
  t.is(state.plan_reason, '2 stages: 2 nodes make no groups for 2 stages');
  t.is(await page.textContent('#plan-reason'), `plan: ${state.plan_reason}`);
  t.true(await page.isHidden('#nodes .members'));

  // Generate, and the page shows tokens/s above zero at its next poll (once a second). The rate
  // covers the last 10 s only: a browser too busy to poll within them sees it back at zero, so
  // generate again until the page shows it, rather than bet on how soon it polls.
  const deadline = Date.now() + HUNG_MS;
  for (;;) {
    const r = await fetch(`${serve.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 200, temperature: 0 }),
    });
    t.is(r.status, 200);
    const shown = await page
      .waitForFunction(() => Number(document.getElementById('tps')?.textContent) > 0, undefined, { timeout: 5000 })
      .then(
        () => true,
        () => false,
      );
    if (shown) break;
    if (Date.now() > deadline) {
      t.fail('the page never showed tokens/s above zero');
      return;
    }
  }
  t.true(Number(await page.textContent('#generated')) > 0);
  // Each node shows its own compute per token.
  await page.waitForFunction(
    () =>
      [...document.querySelectorAll('#nodes .stage-time')].every((e) =>
        /^decode [\d.]+ · prefill [\d.]+ ms\/token$/.test(e.textContent ?? ''),
      ),
    undefined,
    { timeout: HUNG_MS },
  );
  t.is((await page.$$('#nodes .stage-time')).length, 2);
  await page.screenshot({ path: join(tmpdir(), 'herd-dashboard.png'), fullPage: true });
  t.deepEqual(errors, []);
});

test('a stage that is a tensor-parallel group shows its members and their shares', async (t) => {
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  // This herd's state with its two stages made one group over all the layers, as a herd run
  // with --tensor 2 reports it (herd-model.ts: the leader names the stage, every member its share).
  await page.route('**/api/state', async (route) => {
    const real = await route.fetch();
    const s = (await real.json()) as State;
    const [one, two] = s.nodes;
    const group: StateNode = {
      ...one,
      layers: [0, s.model.layers],
      nodes: [
        { name: one.node, address: one.address, share: { kv_heads: [0, 2], ffn_rows: [0, 86] } },
        { name: two.node, address: two.address, share: { kv_heads: [2, 4], ffn_rows: [86, 172] } },
      ],
    };
    await route.fulfill({ response: real, json: { ...s, nodes: [group], plan_reason: '--tensor 2: a 2-node group' } });
  });
  await page.goto(serve.url);
  await page.waitForSelector('body[data-loaded="true"]', { timeout: HUNG_MS });

  const cards = await page.$$eval('#nodes li.node', (lis) =>
    lis.map((li) => ({
      name: li.querySelector('.name')?.textContent ?? '',
      memory: li.querySelector('.mem-text')?.textContent ?? '',
      members: [...li.querySelectorAll('.members li.member')].map((m) => ({
        node: m.getAttribute('data-node'),
        text: m.textContent ?? '',
      })),
    })),
  );
  t.is(cards.length, 1);
  const [leader, other] = cards[0].members;
  t.regex(cards[0].name, /^group of 2, led by pi-(one|two)$/);
  // The memory shown is the leader's: the state asks the stage's address alone.
  t.regex(cards[0].memory, /^leader's memory [\d.]+ [KMGT]?B \/ [\d.]+ [KMGT]?B/);
  t.deepEqual([leader.node, other.node].sort(), ['pi-one', 'pi-two']);
  t.regex(leader.text, /^pi-\w+ · 127\.0\.0\.1:\d+ · KV heads 0–1 · FFN rows 0–85$/);
  t.regex(other.text, /^pi-\w+ · 127\.0\.0\.1:\d+ · KV heads 2–3 · FFN rows 86–171$/);
  // One range over the whole bar, named by every member.
  const ranges = await page.$$eval('#layers .range', (els) => els.map((e) => e.textContent ?? ''));
  t.deepEqual(ranges, [`${leader.node} + ${other.node} [0, 5)`]);
  t.is(await page.textContent('#plan-reason'), 'plan: --tensor 2: a 2-node group');
  t.deepEqual(errors, []);
  // the page polls /api/state: let a rewrite under way finish before the page goes
  await page.unrouteAll({ behavior: 'wait' });
  await page.close();
});

test('with an API key, the page takes it from its #key= fragment, or asks for it', async (t) => {
  const key = 'dashboard-test-key-0123456789abcdef';
  const keyed = await startServe(['--api-key', key, '--no-mdns']);
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    // No key: the page asks, and shows the herd once given the right one.
    await page.goto(keyed.url);
    await page.waitForSelector('#auth:not([hidden])', { timeout: HUNG_MS });
    t.is(await page.textContent('#status'), 'API key needed');
    await page.fill('#auth-key', key);
    await page.click('#auth button');
    await page.waitForSelector('body[data-loaded="true"]', { timeout: HUNG_MS });
    t.is(await page.textContent('#status'), 'ready (local)');

    // From the fragment: used, and gone from the address bar (the server never saw it).
    const fresh = await context.newPage();
    await fresh.goto(`${keyed.url}/#key=${encodeURIComponent(key)}`);
    await fresh.waitForSelector('body[data-loaded="true"]', { timeout: HUNG_MS });
    t.is(new URL(fresh.url()).hash, '');
    t.true(await fresh.isHidden('#auth'));
    t.deepEqual(errors, []);
  } finally {
    await context.close();
    await keyed.stop();
  }
});
