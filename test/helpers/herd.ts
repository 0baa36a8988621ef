// Runs the real `herd` command in a child process, as a user would.

import { spawn } from 'node:child_process';
import { herdBin } from './paths.ts';

export interface HerdResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function herd(
  args: readonly string[],
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<HerdResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [herdBin, ...args], {
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`herd ${args.join(' ')} timed out; stderr: ${stderr}`));
    }, opts.timeoutMs ?? 180_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
