#!/usr/bin/env node
// Builds the prebuilt native kernels that go into the npm package (run by `npm pack`'s
// prepack step, or `npm run build:prebuilds`), so that installing herd on a Pi or a laptop needs no
// C compiler. One Node-API addon per CPU level, cross-compiled from binding.gyp by npm's own
// node-gyp with Debian's gcc cross compilers, into node-gyp-build's layout:
//
//   prebuilds/linux-x64/herd_native.{scalar,avx2,avx512,avx512fp16}.napi.glibc.node
//   prebuilds/linux-arm64/herd_native.{neon,neon-dotprod}.napi.glibc.node
//   prebuilds/linux-arm/herd_native.scalar.armv7.napi.glibc.node
//
// The first tag is the CPU level the file was compiled for (named after its best extension); the
// loader (src/kernels/native/addon.ts) picks the highest one this CPU has, because an addon
// built for a level the CPU lacks dies of SIGILL, which no JavaScript can catch. The kernels
// choose their paths at compile time (herd.h), so a level is a build, not a branch. N-API
// (`napi`) makes each file good for every Node ≥ 20 of that architecture.
//
//   node scripts/prebuild.mjs                                 (npm run build:prebuilds)
//   node scripts/prebuild.mjs --only linux-x64,linux-arm64
//
// Needs gcc-aarch64-linux-gnu and gcc-arm-linux-gnueabihf (Debian); .ci/run installs them.
// Fails (exit 1) when any variant cannot be built: a package missing one would quietly send
// that architecture to the wasm kernels.

import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readSync,
  closeSync,
  readdirSync,
  renameSync,
  rmSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = fileURLToPath(new URL('..', import.meta.url));
const nativeDir = join(root, 'src', 'kernels', 'native');

/**
 * Every prebuilt file: node-gyp's --arch, the cross compiler's prefix, -march level, extra
 * flags, the level's tag, node-gyp-build's tags, and the ELF machine number the result must carry.
 * -mtune=generic on x64: tuned for no CPU in particular, as the level is (and gcc 12's tuning
 * for Sapphire Rapids, which -march=native implies there, makes the Q4_K kernel 2.7× slower).
 */
const VARIANTS = [
  { dir: 'linux-x64', arch: 'x64', cc: '', march: 'x86-64', cflags: '-mtune=generic', level: 'scalar', machine: 0x3e },
  { dir: 'linux-x64', arch: 'x64', cc: '', march: 'x86-64-v3', cflags: '-mtune=generic', level: 'avx2', machine: 0x3e },
  // x86-64-v4 is AVX-512 F/BW/CD/DQ/VL; herd's AVX-512 path also wants VNNI and VBMI (herd.h).
  {
    dir: 'linux-x64',
    arch: 'x64',
    cc: '',
    march: 'x86-64-v4',
    cflags: '-mavx512vnni -mavx512vbmi -mtune=generic',
    level: 'avx512',
    machine: 0x3e,
  },
  // Sapphire Rapids on: the FP16 instructions convert the f16 block scales faster (Q8_0
  // matvec ~8% faster here than without them).
  {
    dir: 'linux-x64',
    arch: 'x64',
    cc: '',
    march: 'x86-64-v4',
    cflags: '-mavx512vnni -mavx512vbmi -mavx512fp16 -mtune=generic',
    level: 'avx512fp16',
    machine: 0x3e,
  },
  {
    dir: 'linux-arm64',
    arch: 'arm64',
    cc: 'aarch64-linux-gnu-',
    march: 'armv8-a',
    cflags: '',
    level: 'neon',
    machine: 0xb7,
  },
  {
    dir: 'linux-arm64',
    arch: 'arm64',
    cc: 'aarch64-linux-gnu-',
    march: 'armv8.2-a+dotprod',
    cflags: '',
    level: 'neon-dotprod',
    machine: 0xb7,
  },
  // 32-bit Raspberry Pi OS (Pi 2 and later): NEON and VFPv4, hard float. herd's NEON kernels
  // are AArch64-only, so this runs the scalar path (auto-vectorized where gcc can).
  {
    dir: 'linux-arm',
    arch: 'arm',
    cc: 'arm-linux-gnueabihf-',
    march: 'armv7-a',
    cflags: '-mfpu=neon-vfpv4 -mfloat-abi=hard',
    level: 'scalar',
    armv: '7',
    machine: 0x28,
  },
];

/** node-gyp-build's file name: name, then dot-separated tags; ours (the level) first. */
function prebuildName(v) {
  return ['herd_native', v.level, ...(v.armv ? [`armv${v.armv}`] : []), 'napi', 'glibc', 'node'].join('.');
}

const { values } = parseArgs({
  options: { only: { type: 'string' } },
});

/** node-gyp's entry script, bundled with npm. */
function findNodeGyp() {
  const prefix = dirname(dirname(process.execPath));
  const candidates = [
    process.env.npm_config_node_gyp,
    process.env.npm_execpath &&
      join(dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  return candidates.find((p) => p && existsSync(p));
}

/** The ELF e_machine field of a file (little-endian, offset 18). */
function elfMachine(path) {
  const buf = Buffer.alloc(20);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, buf, 0, 20, 0);
  } finally {
    closeSync(fd);
  }
  return buf.readUInt32BE(0) === 0x7f454c46 ? buf.readUInt16LE(18) : -1;
}

const nodeGyp = findNodeGyp();
if (!nodeGyp) {
  console.error('prebuild: node-gyp not found (it comes with npm)');
  process.exit(1);
}
// N-API headers are the same for every architecture: the running Node's own.
const nodedir = dirname(dirname(process.execPath));
if (!existsSync(join(nodedir, 'include', 'node', 'node_api.h'))) {
  console.error(`prebuild: no Node headers in ${nodedir}/include/node`);
  process.exit(1);
}

const only = values.only?.split(',');
const wanted = VARIANTS.filter((v) => !only || only.includes(v.dir));
const work = mkdtempSync(join(tmpdir(), 'herd-prebuild-'));
let failed = 0;
try {
  // node-gyp writes build/ next to binding.gyp: build from a copy, so the checkout's own
  // build/ (the -march=native addon) stays as it is.
  mkdirSync(join(work, 'src', 'kernels', 'native'), { recursive: true });
  copyFileSync(join(root, 'binding.gyp'), join(work, 'binding.gyp'));
  for (const f of readdirSync(nativeDir)) {
    if (/\.[ch]$/.test(f)) copyFileSync(join(nativeDir, f), join(work, 'src', 'kernels', 'native', f));
  }
  for (const v of wanted) {
    const outDir = join(root, 'prebuilds', v.dir);
    const out = join(outDir, prebuildName(v));
    const label = `${v.dir}/${prebuildName(v)}`;
    const started = Date.now();
    const env = { ...process.env };
    delete env.npm_config_nodedir;
    if (v.cc) Object.assign(env, { CC: `${v.cc}gcc`, CXX: `${v.cc}g++`, LINK: `${v.cc}gcc`, AR: `${v.cc}ar` });
    const args = [nodeGyp, 'rebuild', `--arch=${v.arch}`, `--nodedir=${nodedir}`, '--', `-Dherd_march=${v.march}`];
    if (v.cflags) args.push(`-Dherd_cflags=${v.cflags}`);
    const r = spawnSync(process.execPath, args, { cwd: work, env, encoding: 'utf8', timeout: 15 * 60_000 });
    const built = join(work, 'build', 'Release', 'herd_native.node');
    if (r.status !== 0 || !existsSync(built)) {
      failed++;
      const log = `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}`;
      console.error(`prebuild: not ok ${label} (-march=${v.march} with ${v.cc || 'the host '}gcc):`);
      console.error(log.split('\n').slice(-25).join('\n'));
      continue;
    }
    const machine = elfMachine(built);
    if (machine !== v.machine) {
      failed++;
      console.error(
        `prebuild: not ok ${label}: ELF machine 0x${machine.toString(16)}, expected 0x${v.machine.toString(16)}`,
      );
      continue;
    }
    mkdirSync(outDir, { recursive: true });
    // Copy then rename: a herd loading prebuilds/ meanwhile never sees half a file.
    copyFileSync(built, `${out}.tmp`);
    renameSync(`${out}.tmp`, out);
    console.log(
      `prebuild: ok ${label} (-march=${v.march}${v.cflags ? ` ${v.cflags}` : ''}) in ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
if (failed) {
  console.error(`prebuild: ${failed} of ${wanted.length} prebuilt addons failed`);
  process.exit(1);
}
