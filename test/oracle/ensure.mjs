#!/usr/bin/env node
// Installs the llama.cpp oracle (node-llama-cpp, pinned in test/oracle/package.json and
// package-lock.json) into test/oracle/node_modules when it is not there yet. The root
// `npm test` runs this before ava; the oracle tests fail, naming this script, without it.
//
// Why not a plain `npm ci` here, and why not in the root install:
// - node-llama-cpp lists every platform's prebuilt llama.cpp as an optional dependency; on
//   linux-x64 a plain install also pulls the CUDA (~540 MB) and Vulkan (~80 MB) builds.
// - `npm ci --omit=optional` drops those, but also the CPU build (@node-llama-cpp/linux-x64
//   is optional too), and then node-llama-cpp's postinstall compiles llama.cpp from source
//   (about 8 minutes on 2 cores, ~260 MB).
// So: `npm ci --omit=optional --ignore-scripts` (no GPU packages, no source build), then the
// one prebuilt CPU package for this platform, at the same version, without touching
// package.json or the lockfile. About 10 s and ~85 MB on linux-x64 with a warm npm cache.
// The postinstall is not needed: getLlama({gpu: false, build: 'never'}) finds the prebuilt.
//
// Usage: node test/oracle/ensure.mjs [--force]   (--force reinstalls)

import { existsSync, readFileSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const dir = fileURLToPath(new URL('.', import.meta.url));
const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
const version = pkg.dependencies['node-llama-cpp'];

/** The @node-llama-cpp/* package holding the CPU build for this platform. */
function prebuiltPackage() {
  const { platform, arch } = process;
  const names = {
    'linux-x64': 'linux-x64',
    'linux-arm64': 'linux-arm64',
    'linux-arm': 'linux-armv7l',
    'darwin-arm64': 'mac-arm64-metal',
    'darwin-x64': 'mac-x64',
    'win32-x64': 'win-x64',
    'win32-arm64': 'win-arm64',
  };
  const name = names[`${platform}-${arch}`];
  if (!name) {
    console.error(`ensure-oracle: node-llama-cpp ${version} ships no prebuilt llama.cpp for ${platform}-${arch}`);
    process.exit(1);
  }
  return `@node-llama-cpp/${name}`;
}

function installedVersion(name) {
  const file = join(dir, 'node_modules', ...name.split('/'), 'package.json');
  if (!existsSync(file)) return undefined;
  try {
    return JSON.parse(readFileSync(file, 'utf8')).version;
  } catch {
    return undefined;
  }
}

function npm(args) {
  const started = Date.now();
  console.log(`ensure-oracle: npm ${args.join(' ')}`);
  const r = spawnSync('npm', args, { cwd: dir, stdio: 'inherit', shell: process.platform === 'win32' });
  if (r.status !== 0) {
    console.error(`ensure-oracle: npm ${args[0]} failed (${r.error?.message ?? `exit ${r.status}`})`);
    process.exit(1);
  }
  console.log(`ensure-oracle: done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

const prebuilt = prebuiltPackage();
const force = process.argv.includes('--force');
if (!force && installedVersion('node-llama-cpp') === version && installedVersion(prebuilt) === version) {
  console.log(`ensure-oracle: node-llama-cpp ${version} with ${prebuilt} is installed`);
  process.exit(0);
}

if (force) rmSync(join(dir, 'node_modules'), { recursive: true, force: true });
const quiet = ['--no-audit', '--no-fund'];
npm(['ci', '--omit=optional', '--ignore-scripts', ...quiet]);
npm(['install', '--no-save', '--omit=optional', '--ignore-scripts', ...quiet, `${prebuilt}@${version}`]);

if (installedVersion('node-llama-cpp') !== version || installedVersion(prebuilt) !== version) {
  console.error(`ensure-oracle: after install, node-llama-cpp or ${prebuilt} is still not at ${version}`);
  process.exit(1);
}
console.log(`ensure-oracle: node-llama-cpp ${version} with ${prebuilt} installed in ${dir}`);
