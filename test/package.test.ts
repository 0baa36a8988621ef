// The npm package as a user gets it: `npm pack` (its prepack step compiles dist/ and
// cross-builds the prebuilt kernels), then `npm i -g herd-*.tgz --prefix T` with no C
// compiler, make or shell on PATH, then the installed `herd run`, `herd node` and
// `herd serve`. Packs from a copy of the checkout, so the checkout's dist/ and build/ are
// left alone. Needs Debian's gcc cross compilers (.ci/run installs them) and the npm cache
// that `npm ci` warmed: dependencies come from it (--prefer-offline: npm ci caches the
// tarballs but not the registry's version lists, which npm then asks for).

import test from 'ava';
import { spawn, type SpawnOptions } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fixtureModels, repoRoot } from './helpers/paths.ts';
import { HUNG_MS } from './helpers/serve.ts';

const reference = JSON.parse(readFileSync(join(fixtureModels, 'stories260K.reference.json'), 'utf8')) as {
  generated_tokens: number[];
  content: string;
};
const npmCli = join(dirname(dirname(process.execPath)), 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js');
const KEY = '0123456789abcdef0123456789abcdef';
/** Not copied into the staging tree: installed or generated, and not part of any package. */
const SKIP = new Set(['node_modules', '.git', '.cache', 'build', 'dist', 'prebuilds', 'dist.next', 'dist.old']);

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], opts: SpawnOptions & { timeoutMs: number }): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')} timed out; stderr: ${stderr.slice(-3000)}`));
    }, opts.timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Starts a long-running installed herd command; resolves with the first match of `ready` in its stdout or stderr. */
function startDaemon(bin: string, args: string[], env: NodeJS.ProcessEnv, ready: RegExp) {
  const child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const match = new Promise<RegExpExecArray>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${args[0]}: not ready in ${HUNG_MS} ms; output: ${out}`)),
      HUNG_MS,
    );
    const onData = (d: string) => {
      out += d;
      const m = ready.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    };
    child.stdout.setEncoding('utf8').on('data', onData);
    child.stderr.setEncoding('utf8').on('data', onData);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${args[0]} exited (${code}); output: ${out}`));
    });
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), HUNG_MS);
    await exited;
    clearTimeout(timer);
  };
  return { match, stop };
}

test.serial(
  'npm pack → npm i -g with no compiler → the installed herd runs on the prebuilt native kernels',
  async (t) => {
    const tmp = mkdtempSync(join(tmpdir(), 'herd-package-'));
    const stopAll: (() => Promise<void>)[] = [];
    try {
      // A copy of the checkout to pack from (sources, tests, fixtures: what `npm pack` sees).
      const stage = join(tmp, 'stage');
      mkdirSync(stage);
      for (const e of readdirSync(repoRoot)) {
        if (!SKIP.has(e))
          cpSync(join(repoRoot, e), join(stage, e), {
            recursive: true,
            filter: (src) => !src.includes(`${join('test', 'oracle', 'node_modules')}`),
          });
      }
      symlinkSync(join(repoRoot, 'node_modules'), join(stage, 'node_modules'));

      const pack = await run(process.execPath, [npmCli, 'pack', '--json', '--pack-destination', tmp], {
        cwd: stage,
        timeoutMs: 10 * 60_000,
      });
      t.is(pack.code, 0, pack.stderr);
      const [info] = JSON.parse(pack.stdout.slice(pack.stdout.indexOf('['))) as {
        filename: string;
        size: number;
        unpackedSize: number;
        files: { path: string }[];
      }[];
      const files = info.files.map((f) => f.path);
      t.log(
        `${info.filename}: ${files.length} files, ${(info.size / 1e6).toFixed(2)} MB packed, ${(info.unpackedSize / 1e6).toFixed(2)} MB unpacked`,
      );
      const prebuilt = files.filter((f) => f.startsWith('prebuilds/')).sort();
      t.deepEqual(prebuilt, [
        'prebuilds/linux-arm/herd_native.scalar.armv7.napi.glibc.node',
        'prebuilds/linux-arm64/herd_native.neon-dotprod.napi.glibc.node',
        'prebuilds/linux-arm64/herd_native.neon.napi.glibc.node',
        'prebuilds/linux-x64/herd_native.avx2.napi.glibc.node',
        'prebuilds/linux-x64/herd_native.avx512.napi.glibc.node',
        'prebuilds/linux-x64/herd_native.avx512fp16.napi.glibc.node',
        'prebuilds/linux-x64/herd_native.scalar.napi.glibc.node',
      ]);
      for (const f of ['bin/herd.js', 'dist/cli/main.js', 'dist/kernels/wasm/kernels.wasm', 'models/stories260K.gguf'])
        t.true(files.includes(f), `${f} is in the package`);
      t.deepEqual(
        files.filter(
          (f) => f.startsWith('test/') || (f.startsWith('src/') && !/^src\/kernels\/native\/[^/]+\.[ch]$/.test(f)),
        ),
        [],
        'no tests, fixtures or TypeScript sources',
      );
      t.true(info.unpackedSize < 8e6, `unpacked size ${info.unpackedSize} bytes`);
      t.false(existsSync(join(stage, 'prebuilds')), 'postpack removes prebuilds/ from the tree it packed');

      // A PATH holding node and nothing else: no cc, gcc, make or python for node-gyp; npm
      // runs the install script with an explicit shell.
      const nodeOnly = join(tmp, 'node-only');
      mkdirSync(nodeOnly);
      symlinkSync(process.execPath, join(nodeOnly, 'node'));
      const env: NodeJS.ProcessEnv = { ...process.env, PATH: nodeOnly, HERD_CACHE_DIR: join(tmp, 'cache') };
      delete env.CC;
      const prefix = join(tmp, 'T');
      const install = await run(
        process.execPath,
        [
          npmCli,
          'i',
          '-g',
          join(tmp, info.filename),
          '--prefix',
          prefix,
          '--prefer-offline',
          '--script-shell',
          '/bin/sh',
        ],
        {
          cwd: tmp,
          env: { ...env, npm_config_foreground_scripts: 'true', npm_config_audit: 'false', npm_config_fund: 'false' },
          timeoutMs: 10 * 60_000,
        },
      );
      t.is(install.code, 0, install.stderr);
      t.regex(install.stdout, /herd: using the prebuilt native kernels \(prebuilds\/linux-x64\)/);
      const installed = join(prefix, 'lib', 'node_modules', 'herd');
      t.false(existsSync(join(installed, 'build')), 'nothing was compiled at install');
      const bin = join(prefix, 'bin', 'herd');

      const greedy = ['run', '--temp', '0', '-n', '64', '--json', 'Once upon a time'];
      const local = await run(bin, greedy, { env, timeoutMs: HUNG_MS });
      t.is(local.code, 0, local.stderr);
      const out = JSON.parse(local.stdout) as { tokens: number[]; text: string; backend: string; isa: string };
      t.is(out.backend, 'native');
      t.not(out.isa, 'scalar', 'the prebuilt addon for this CPU level, not the baseline');
      t.deepEqual(out.tokens, reference.generated_tokens);
      t.is(out.text, reference.content);

      // `herd node` from the package, driven by the package's `herd run` over gRPC on loopback.
      const node = startDaemon(
        bin,
        ['node', '--host', '127.0.0.1', '--port', '0', '--no-mdns', '--cluster-key', KEY],
        env,
        /^\{.*"event":"node\.ready".*\}$/m,
      );
      stopAll.push(node.stop);
      const ready = JSON.parse((await node.match)[0]) as { port: number; backend: string };
      t.is(ready.backend, 'native');
      const port = ready.port;
      const remote = await run(bin, [...greedy, '--nodes', `127.0.0.1:${port}`, '--cluster-key', KEY], {
        env,
        timeoutMs: HUNG_MS,
      });
      t.is(remote.code, 0, remote.stderr);
      t.deepEqual((JSON.parse(remote.stdout) as { tokens: number[] }).tokens, reference.generated_tokens);

      // `herd serve` from the package answers /health on loopback.
      const serve = startDaemon(
        bin,
        ['serve', '--host', '127.0.0.1', '--port', '0', '--no-mdns'],
        env,
        /serving \S+ on (http:\/\/\S+)/,
      );
      stopAll.push(serve.stop);
      const url = (await serve.match)[1];
      const health = await fetch(new URL('/health', url), { signal: AbortSignal.timeout(HUNG_MS) });
      t.is(health.status, 200);
    } finally {
      for (const stop of stopAll) await stop();
      rmSync(tmp, { recursive: true, force: true });
    }
  },
);
