// deploy/: what can be checked honestly on this machine — the install script parses and runs in
// its dry-run mode against a temporary root, the systemd units pass `systemd-analyze verify`
// (where it exists) against that root, and every herd flag the units, the settings file and the
// compose file use is one `herd … --help` lists. And the attacks of issue 14 on deploy/: a
// symbolic link the herd user leaves where root writes is never followed; the units' sandbox
// scores at most EXPOSURE_TARGET in `systemd-analyze security`; an open API in compose stays on
// loopback.

import test from 'ava';
import { execFile, spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { herd } from './helpers/herd.ts';
import { herdBin, repoRoot } from './helpers/paths.ts';
import { HUNG_MS } from './helpers/serve.ts';

const deploy = join(repoRoot, 'deploy');
const install = join(deploy, 'install.sh');

function sh(args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('bash', args, { cwd: repoRoot, timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

function mode(path: string): string {
  return (statSync(path).mode & 0o777).toString(8).padStart(4, '0');
}

const root = mkdtempSync(join(tmpdir(), 'herd-deploy-root-'));
const work = mkdtempSync(join(tmpdir(), 'herd-deploy-in-'));
test.after.always(() => {
  rmSync(root, { recursive: true, force: true });
  rmSync(work, { recursive: true, force: true });
});

test('install.sh passes bash -n', (t) => {
  const r = spawnSync('bash', ['-n', install], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.is(statSync(install).mode & 0o111, 0o111, 'executable');
});

test.serial(
  'a dry run installs into a temporary root, changes nothing else, and keeps keys on a second run',
  async (t) => {
    const keyFile = join(work, 'cluster.key');
    writeFileSync(keyFile, 'the-herd-shared-secret\n');
    const r = await sh([
      install,
      '--dry-run',
      '--root',
      root,
      '--role',
      'both',
      '--key-file',
      keyFile,
      '--model',
      join(repoRoot, 'models/stories260K.gguf'),
    ]);
    t.is(r.code, 0, r.stderr + r.stdout);
    const at = (p: string) => join(root, p);

    // files, with the modes a real install gives them
    t.is(readFileSync(at('etc/herd/cluster.key'), 'utf8'), 'the-herd-shared-secret');
    t.is(mode(at('etc/herd/cluster.key')), '0400', 'the cluster key is readable by its owner only');
    t.is(mode(at('etc/herd/api.key')), '0400');
    t.true(readFileSync(at('etc/herd/api.key'), 'utf8').trim().length >= 32);
    t.regex(readFileSync(at('etc/herd/herd.env'), 'utf8'), /^HERD_SERVE_ARGS=--host 0\.0\.0\.0 /m);
    for (const u of ['herd-node', 'herd-serve']) {
      t.is(
        readFileSync(at(`etc/systemd/system/${u}.service`), 'utf8'),
        readFileSync(join(deploy, 'systemd', `${u}.service`), 'utf8'),
      );
    }
    const wrapper = readFileSync(at('usr/local/bin/herd'), 'utf8');
    t.regex(wrapper, /^exec \/\S*node \/opt\/herd\/bin\/herd\.js "\$@"$/m);
    t.is(mode(at('usr/local/bin/herd')), '0755');
    t.true(existsSync(at('opt/herd/bin/herd.js')));
    t.true(existsSync(at('opt/herd/src/cli/main.ts')));
    t.false(existsSync(at('opt/herd/node_modules')), 'packages are installed by npm ci, not copied');
    t.false(existsSync(at('opt/herd/test')));
    t.is(statSync(at('var/lib/herd/models/model.gguf')).size, statSync(join(repoRoot, 'models/stories260K.gguf')).size);
    t.is(mode(at('var/lib/herd')), '0750');

    // what it would do to the system, said, not done
    t.regex(r.stdout, /^would run: chown -h herd:herd \/etc\/herd\/cluster\.key$/m);
    t.regex(r.stdout, /^would run: chown -h root:herd \/var\/lib\/herd$/m);
    t.regex(r.stdout, /^would run: chown -h herd:herd \/var\/lib\/herd\/cache$/m);
    t.notRegex(r.stdout, /chown (-R|herd:herd \/var\/lib\/herd$)/m, 'herd owns its cache, nothing above it');
    t.regex(r.stdout, /^would run: \(cd \/opt\/herd && npm ci --omit=dev\)$/m);
    t.regex(r.stdout, /^would run: systemctl enable --now herd-node\.service$/m);
    t.regex(r.stdout, /^would run: systemctl enable --now herd-serve\.service$/m);
    if (spawnSync('id', ['herd']).status !== 0) {
      t.regex(r.stdout, /^would run: useradd --system .* herd$/m);
      t.is(spawnSync('id', ['herd']).status, 1, 'no herd user was made');
    }
    t.false(
      existsSync('/etc/herd/cluster.key') && readFileSync('/etc/herd/cluster.key', 'utf8') === 'the-herd-shared-secret',
    );

    // a second run keeps the keys and the settings
    writeFileSync(at('etc/herd/herd.env'), 'HERD_NODE_ARGS=--name pi-one\n');
    const apiKey = readFileSync(at('etc/herd/api.key'), 'utf8');
    const again = await sh([install, '--dry-run', '--root', root, '--role', 'serve', '--no-start']);
    t.is(again.code, 0, again.stderr);
    t.is(readFileSync(at('etc/herd/cluster.key'), 'utf8'), 'the-herd-shared-secret');
    t.is(readFileSync(at('etc/herd/api.key'), 'utf8'), apiKey);
    t.is(readFileSync(at('etc/herd/herd.env'), 'utf8'), 'HERD_NODE_ARGS=--name pi-one\n');
    t.regex(again.stdout, /^would run: systemctl enable herd-serve\.service$/m);
  },
);

test('install.sh refuses what it cannot do', async (t) => {
  const noDry = await sh([install, '--root', work]);
  t.not(noDry.code, 0);
  t.regex(noDry.stderr, /--root works only with --dry-run/);
  const role = await sh([install, '--dry-run', '--root', join(work, 'r2'), '--role', 'king']);
  t.not(role.code, 0);
  t.regex(role.stderr, /--role must be node, serve or both/);
  const key = await sh([install, '--dry-run', '--root', join(work, 'r3'), '--key-file', '/nonexistent/key']);
  t.regex(key.stderr, /cannot read the key file/);
});

test.serial('the units pass systemd-analyze verify against the installed root', (t) => {
  const probe = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
  if (probe.error) {
    t.log('systemd-analyze is not on this machine: unit check skipped');
    t.pass();
    return;
  }
  // verify resolves the units' dependencies (sysinit.target, network-online.target, …) in the
  // root: give the temporary root this system's stock targets and slices.
  const stock = ['/usr/lib/systemd/system', '/lib/systemd/system'].find((d) => existsSync(join(d, 'sysinit.target')));
  if (!stock) {
    t.log('no stock systemd targets here: unit check skipped');
    t.pass();
    return;
  }
  const dst = join(root, 'usr/lib/systemd/system');
  mkdirSync(dst, { recursive: true });
  for (const f of readdirSync(stock))
    if (/\.(target|slice)$/.test(f)) cpSync(join(stock, f), join(dst, f), { dereference: true });
  const r = spawnSync(
    'systemd-analyze',
    ['verify', `--root=${root}`, '/etc/systemd/system/herd-node.service', '/etc/systemd/system/herd-serve.service'],
    {
      encoding: 'utf8',
    },
  );
  t.is(r.status, 0, r.stderr);
  // verify only warns (exit 0) about a directive it cannot parse: there must be no warning at all.
  t.is(r.stderr.trim(), '');
  t.is(r.stdout.trim(), '');
});

/** Long flags of `herd CMD --help`. */
async function helpFlags(cmd: string): Promise<Set<string>> {
  const r = await herd([cmd, '--help']);
  return new Set([...r.stdout.matchAll(/--([a-z][a-z-]*)/g)].map((m) => `--${m[1]}`));
}

test('every herd flag in the units, herd.env and compose.yaml exists', async (t) => {
  const [nodeFlags, serveFlags] = await Promise.all([helpFlags('node'), helpFlags('serve')]);
  const flags = { node: nodeFlags, serve: serveFlags } as const;
  const check = (cmd: 'node' | 'serve', words: string[], where: string) => {
    t.is(words[0], cmd, where);
    for (const w of words) if (w.startsWith('--')) t.true(flags[cmd].has(w), `${where}: herd ${cmd} has no ${w}`);
  };
  for (const [u, cmd] of [
    ['herd-node', 'node'],
    ['herd-serve', 'serve'],
  ] as const) {
    const unit = readFileSync(join(deploy, 'systemd', `${u}.service`), 'utf8');
    const exec = /^ExecStart=\/usr\/local\/bin\/herd (.*)$/m.exec(unit);
    t.truthy(exec, `${u}: ExecStart runs /usr/local/bin/herd`);
    check(cmd, (exec as RegExpExecArray)[1].split(/\s+/), `${u}.service`);
    t.regex(unit, /^User=herd$/m);
  }
  // the defaults install.sh writes to /etc/herd/herd.env
  const env = /^HERD_SERVE_ARGS=(.*)$/m.exec(readFileSync(install, 'utf8'));
  check('serve', ['serve', ...(env as RegExpExecArray)[1].split(/\s+/)], 'herd.env');

  const compose = parse(readFileSync(join(deploy, 'compose.yaml'), 'utf8')) as {
    services: Record<
      string,
      { command: string[]; network_mode?: string; build?: { dockerfile: string; context: string } }
    >;
  };
  t.deepEqual(Object.keys(compose.services).sort(), ['node', 'serve']);
  for (const [name, s] of Object.entries(compose.services)) {
    check(name as 'node' | 'serve', s.command, `compose service ${name}`);
    t.is(s.network_mode, 'host', 'mDNS needs the host network');
  }
  // the Dockerfile copies files that exist
  const dockerfile = readFileSync(join(deploy, 'Dockerfile'), 'utf8');
  for (const m of dockerfile.matchAll(/^COPY (.+) \S+$/gm)) {
    for (const src of m[1].split(/\s+/)) t.true(existsSync(join(repoRoot, src)), `Dockerfile copies ${src}`);
  }
  t.is(compose.services.node.build?.dockerfile, 'deploy/Dockerfile');
});

/** A dry run of install.sh --role serve --model into a fresh root, after `plant` set it up. */
async function installInto(
  name: string,
  plant: (at: (p: string) => string) => void,
): Promise<{ code: number; stdout: string; stderr: string; at: (p: string) => string }> {
  const dst = join(work, name);
  const at = (p: string) => join(dst, p);
  mkdirSync(at('var/lib/herd/models'), { recursive: true });
  plant(at);
  const r = await sh([
    install,
    '--dry-run',
    '--root',
    dst,
    '--role',
    'serve',
    '--no-start',
    '--model',
    join(repoRoot, 'models/stories260K.gguf'),
  ]);
  return { ...r, at };
}

test('a symbolic link left where the model goes is replaced, never written through', async (t) => {
  // What the herd user could leave in a directory it owned: the model's name, pointing at a file
  // root would then overwrite, chmod and chown.
  const victim = join(work, 'victim-file');
  writeFileSync(victim, 'precious');
  chmodSync(victim, 0o600);
  const r = await installInto('r-model-link', (at) => symlinkSync(victim, at('var/lib/herd/models/model.gguf')));
  t.is(r.code, 0, r.stderr + r.stdout);
  t.is(readFileSync(victim, 'utf8'), 'precious');
  t.is(mode(victim), '0600');
  const model = lstatSync(r.at('var/lib/herd/models/model.gguf'));
  t.true(model.isFile(), 'the link was replaced by the model');
  t.is(model.size, statSync(join(repoRoot, 'models/stories260K.gguf')).size);
  t.is(mode(r.at('var/lib/herd/models/model.gguf')), '0640');
  t.regex(r.stdout, /^would run: chown -h root:herd \/var\/lib\/herd\/models\/model\.gguf$/m);
});

test('a directory the installer needs that is a symbolic link stops it', async (t) => {
  const victimDir = join(work, 'victim-dir');
  mkdirSync(victimDir);
  chmodSync(victimDir, 0o700);
  const r = await installInto('r-cache-link', (at) => symlinkSync(victimDir, at('var/lib/herd/cache')));
  t.not(r.code, 0);
  t.regex(r.stderr, /refusing to use \/var\/lib\/herd\/cache: it is a symbolic link/);
  t.is(mode(victimDir), '0700', 'not chmodded through the link');
  t.deepEqual(readdirSync(victimDir), []);
});

/** `systemd-analyze security` exposure (0 safest … 10) each unit must stay at or below. */
const EXPOSURE_TARGET = 2.0;

test('the units are sandboxed: systemd-analyze security scores them at most EXPOSURE_TARGET', (t) => {
  for (const u of ['herd-node', 'herd-serve']) {
    const unit = readFileSync(join(deploy, 'systemd', `${u}.service`), 'utf8');
    // The directives issue 14 names, whether or not this machine can score them.
    for (const d of [
      /^CapabilityBoundingSet=$/m,
      /^SystemCallFilter=@system-service$/m,
      /^RestrictNamespaces=yes$/m,
      /^UMask=0077$/m,
      /^MemoryMax=\S+$/m,
      /^ProtectSystem=strict$/m,
      /^PrivateTmp=yes$/m,
      /^NoNewPrivileges=yes$/m,
    ])
      t.regex(unit, d, u);
  }
  // Debian's systemd 252 here; --offline reads the unit files without a running systemd.
  const probe = spawnSync('systemd-analyze', ['security', '--help'], { encoding: 'utf8' });
  if (probe.error || !probe.stdout.includes('--offline')) {
    t.log('no systemd-analyze security --offline on this machine (apt-get install systemd): scoring skipped');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'herd-units-'));
  try {
    mkdirSync(join(dir, 'etc/systemd/system'), { recursive: true });
    for (const u of ['herd-node', 'herd-serve']) {
      cpSync(join(deploy, 'systemd', `${u}.service`), join(dir, `etc/systemd/system/${u}.service`));
      const r = spawnSync(
        'systemd-analyze',
        ['security', '--offline=true', `--root=${dir}`, '--no-pager', `/etc/systemd/system/${u}.service`],
        { encoding: 'utf8' },
      );
      const m = /Overall exposure level for \S+: ([\d.]+)/.exec(r.stdout);
      t.truthy(m, r.stdout + r.stderr);
      const score = Number((m as RegExpExecArray)[1]);
      t.log(`${u}: exposure ${score} (target <= ${EXPOSURE_TARGET})`);
      t.true(score <= EXPOSURE_TARGET, `${u}: exposure ${score}\n${r.stdout}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('compose: an open API stays on loopback; it takes the LAN only with a key', async (t) => {
  const compose = parse(readFileSync(join(deploy, 'compose.yaml'), 'utf8')) as {
    services: { serve: { command: string[] } };
  };
  const cmd = compose.services.serve.command;
  t.is(cmd[cmd.indexOf('--host') + 1], '${HERD_HOST:-auto}');
  // What `--host auto` binds without a key: loopback (started here, on loopback only).
  const child = spawn(process.execPath, [herdBin, 'serve', '--host', 'auto', '--port', '0', '--no-mdns'], {
    cwd: repoRoot,
    env: { ...process.env, HERD_API_KEY: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        const m = /serving \S+ on (http:\/\/\S+)/.exec(out);
        if (m) resolve(m[1]);
      });
      child.once('exit', (code) => reject(new Error(`herd serve exited (${code})`)));
      setTimeout(() => reject(new Error('herd serve did not start')), HUNG_MS);
    });
    t.is(new URL(url).hostname, '127.0.0.1');
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
  }
});
