// yargs without its help renderer, unless the command line can ask for help: yargs' own entry
// points load cliui and string-width and lay out help for every command (which our .fail()
// never prints), memory a Pi needs for its model slice. This builds the same yargs from its
// YargsFactory and a copy of its shim, with a stub renderer on lines that cannot show help.

import { notStrictEqual, strictEqual } from 'node:assert';
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, extname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { inspect } from 'node:util';
import type { Argv } from 'yargs';

/**
 * Whether yargs can show help for this line: `--help`, `--h`, `-h` alone or among short flags,
 * or the word `help` (yargs takes a trailing `help` for --help). Errs towards yes: a wrong
 * yes costs the renderer's memory, a wrong no would fail to print the help.
 */
export function mayShowHelp(args: readonly string[]): boolean {
  return args.some((a) => a === 'help' || /^--h(elp)?([=.]|$)/.test(a) || /^-[^-=]*h/.test(a));
}

/** What yargs lays the help out with on a line that cannot show it: nothing, at no cost. */
const noRenderer = {
  cliui: () => ({ div() {}, span() {}, toString: () => 'herd: no help on this line; run herd --help' }),
  stringWidth: (s: string) => s.length,
};

/** yargs(args), with cliui and string-width loaded only when `mayShowHelp(args)`. */
export async function createYargs(args: string[]): Promise<Argv> {
  // `yargs` resolves to its index.mjs; its own dependencies are resolved from there, as its shim would.
  const entry = createRequire(import.meta.url).resolve('yargs');
  const yargsDir = dirname(entry);
  const fromYargs = createRequire(entry);
  const load = async (spec: string) =>
    (await import(pathToFileURL(fromYargs.resolve(spec)).href)) as { default: unknown };
  const internal = (path: string) => import(pathToFileURL(join(yargsDir, path)).href);

  const [factory, argvBin, parser, y18n, findUp, getCallerFile] = await Promise.all([
    internal('build/lib/yargs-factory.js') as Promise<{ YargsFactory: (shim: object) => Argv }>,
    internal('build/lib/utils/process-argv.js') as Promise<{ getProcessArgvBin: () => string }>,
    load('yargs-parser'),
    load('y18n'),
    load('escalade/sync'),
    load('get-caller-file'),
  ]);
  const renderer = mayShowHelp(args)
    ? await Promise.all([load('cliui'), load('string-width')]).then(([cliui, width]) => ({
        cliui: cliui.default,
        stringWidth: width.default,
      }))
    : noRenderer;

  // The members of yargs' lib/platform-shims/esm.mjs, the renderer's as loaded above.
  const mainFilename = entry.substring(0, entry.lastIndexOf('node_modules'));
  const shim = {
    assert: { notStrictEqual, strictEqual },
    cliui: renderer.cliui,
    findUp: findUp.default,
    getEnv: (key: string) => process.env[key],
    inspect,
    getProcessArgvBin: argvBin.getProcessArgvBin,
    mainFilename: mainFilename || process.cwd(),
    Parser: parser.default,
    path: { basename, dirname, extname, relative, resolve, join },
    process: {
      argv: () => process.argv,
      cwd: process.cwd,
      emitWarning: (warning: string, type: string) => process.emitWarning(warning, type),
      execPath: () => process.execPath,
      exit: (code: number) => process.exit(code),
      nextTick: process.nextTick,
      stdColumns: typeof process.stdout.columns !== 'undefined' ? process.stdout.columns : null,
    },
    readFileSync,
    readdirSync,
    require: fromYargs,
    getCallerFile: () => {
      const callerFile = (getCallerFile.default as (position: number) => string)(3);
      return callerFile.startsWith('file://') ? fileURLToPath(callerFile) : callerFile;
    },
    stringWidth: renderer.stringWidth,
    y18n: (y18n.default as (opts: object) => unknown)({ directory: join(yargsDir, 'locales'), updateFiles: false }),
  };
  return (factory.YargsFactory(shim) as unknown as (args: string[]) => Argv)(args);
}

/** The arguments a command's builder declares, as yargs infers them from its options. */
export type ArgsOf<B extends (y: Argv) => Argv<object>> = ReturnType<B> extends Argv<infer T> ? T : never;
