#!/usr/bin/env node
// Builds herd's native kernels (src/kernels/native, binding.gyp) with node-gyp into
// build/Release/herd_native.node. Run by `npm install` (the package's install script) and
// by `npm run build:native`.
//
// The addon is compiled with -march=native, for the CPU it is built on: each machine
// builds its own. A machine without a compiler (or where the build fails) is still a
// working herd machine: by default this script then prints one line saying which kernels
// herd will use instead (the package's prebuilt ones, else wasm), keeps the compiler's
// output in build/native-build.log, and exits 0 so the install succeeds.
//
// The npm package carries prebuilt addons (prebuilds/, scripts/prebuild.mjs): where one is
// there for this platform, installing compiles nothing (a Pi needs no compiler) unless asked
// to with HERD_BUILD_NATIVE=1 or npm's --build-from-source (`npm rebuild -g herd
// --build-from-source`); herd then prefers this machine's own build. A git checkout always
// builds (`npm pack` makes prebuilds/ and removes it again).
//
//   node scripts/build-native.mjs              build; never fails the install
//   node scripts/build-native.mjs --strict     exit 1 when the build fails (CI, tests)
//   node scripts/build-native.mjs --march X    target X instead of the build machine's CPU
//
// HERD_SKIP_NATIVE=1 skips the build (herd then uses wasm). node-gyp comes from npm itself
// (npm bundles it), so nothing is downloaded: the Node headers are taken from the running
// Node's own include/node when npm has not been told a nodedir.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = fileURLToPath(new URL('..', import.meta.url));

/**
 * What the addon is tied to: architecture, CPU model and instruction-set flags. Written
 * next to the addon after a build; src/kernels/native/addon.ts computes the same string
 * (keep the two in step) and refuses an addon built for another CPU, which would otherwise
 * die of an illegal instruction (say a Pi 5's build on a Pi 4 sharing the checkout).
 */
function cpuFingerprint() {
  let flags = '';
  try {
    flags = /^(?:flags|Features)\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? '';
  } catch {
    // not Linux: the model name has to do
  }
  return `${process.arch} | ${cpus()[0]?.model ?? '?'} | ${flags}`;
}
const buildDir = join(root, 'build');
const logPath = join(buildDir, 'native-build.log');
const addonPath = join(buildDir, 'Release', 'herd_native.node');

const { values } = parseArgs({
  options: {
    strict: { type: 'boolean', default: false },
    march: { type: 'string' },
  },
});

/**
 * The package's prebuilt addons for this platform and architecture, if it has any. Only the
 * installed package counts (it has no TypeScript sources): a checkout builds its own.
 */
const prebuiltDir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const packaged = !existsSync(join(root, 'src', 'cli', 'main.ts'));
const prebuilt = packaged && existsSync(prebuiltDir) && readdirSync(prebuiltDir).some((f) => f.endsWith('.node'));

/** The one line a user sees when nothing was built, then exit. */
function giveUp(reason) {
  const instead = prebuilt ? `the prebuilt native kernels (prebuilds/${basename(prebuiltDir)})` : 'the wasm backend';
  console.log(`herd: native kernels not built (${reason}); herd will use ${instead}`);
  process.exit(values.strict ? 1 : 0);
}

if (process.env.HERD_SKIP_NATIVE === '1') giveUp('HERD_SKIP_NATIVE=1');
const fromSource = process.env.HERD_BUILD_NATIVE === '1' || process.env.npm_config_build_from_source === 'true';
if (prebuilt && !fromSource) {
  console.log(
    `herd: using the prebuilt native kernels (prebuilds/${basename(prebuiltDir)}); HERD_BUILD_NATIVE=1 or --build-from-source compiles them for this CPU`,
  );
  process.exit(0);
}

/** node-gyp's entry script: npm's own copy first (npm names it to install scripts). */
function findNodeGyp() {
  const candidates = [];
  const fromNpm = process.env.npm_config_node_gyp;
  if (fromNpm) candidates.push(fromNpm);
  const npmCli = process.env.npm_execpath;
  if (npmCli) candidates.push(join(dirname(npmCli), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  const prefix = dirname(dirname(process.execPath));
  candidates.push(join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  candidates.push(
    join(dirname(process.execPath), 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  );
  try {
    candidates.push(createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js'));
  } catch {
    // not installed as a package: fine
  }
  return candidates.find((p) => existsSync(p));
}

// node-gyp's own failure for a missing compiler is a long make log; say it in a word.
const cc = process.env.CC || 'cc';
const probe = spawnSync(cc, ['--version'], { encoding: 'utf8', shell: process.env.CC ? true : false });
if (probe.status !== 0) giveUp(`no working C compiler (${process.env.CC ? `CC=${cc}` : cc})`);

const nodeGyp = findNodeGyp();
if (!nodeGyp) giveUp('node-gyp not found');

const args = [nodeGyp, 'rebuild'];
// node-gyp would download headers for this Node version unless told where they are; the
// official Node builds (and Debian's) ship them in <prefix>/include/node.
if (!process.env.npm_config_nodedir) {
  const prefix = dirname(dirname(process.execPath));
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);
}
if (values.march) args.push('--', `-Dherd_march=${values.march}`);

mkdirSync(buildDir, { recursive: true });
const started = Date.now();
const result = spawnSync(process.execPath, args, { cwd: root, encoding: 'utf8', timeout: 15 * 60_000 });
// build/ is output only: keep it out of git whatever the repository's .gitignore says.
writeFileSync(join(buildDir, '.gitignore'), '*\n');
const output = `$ node ${args.join(' ')}\n${result.stdout ?? ''}${result.stderr ?? ''}${result.error ? String(result.error) : ''}\n`;
writeFileSync(logPath, output);

if (result.status !== 0 || !existsSync(addonPath)) {
  // The most telling line of the compiler's output, so the one line says why.
  const why = /(no acceptable C compiler|not found|command not found|No such file|error:[^\n]*|Error:[^\n]*)/.exec(
    output,
  )?.[0];
  giveUp(
    `${why ? why.trim().slice(0, 120) : `node-gyp exited ${result.status ?? result.signal}`}; see build/native-build.log`,
  );
}

// Load it once here, so a build that cannot load (wrong headers, missing symbols) is also
// reported now rather than at run time.
try {
  const addon = createRequire(import.meta.url)(addonPath);
  const { isas } = addon.info();
  writeFileSync(join(buildDir, 'Release', 'herd_native.cpu'), `${cpuFingerprint()}\n`);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  console.log(`herd: built the native kernels for this CPU (${isas.join(', ')}) in ${seconds} s`);
} catch (err) {
  giveUp(`the built addon does not load: ${err instanceof Error ? err.message : String(err)}`);
}
