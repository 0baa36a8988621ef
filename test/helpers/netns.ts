// A test LAN of Linux network namespaces (needs root and iproute2), as TOOLCHAIN.md describes:
// one bridge namespace holding a bridge with multicast snooping off, and N host namespaces each
// joined to it by a veth pair (eth0 inside, 10.77.0.(10+i)/24, multicast on, a 224.0.0.0/4
// route). Nothing touches the root namespace, so no packet of a test can leave the machine.
// Names are unique per LAN, so parallel test files never collide; close() kills every process
// started in the LAN and deletes every namespace, and is safe to call twice.

import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';

export interface LanHost {
  /** Network namespace name. */
  readonly ns: string;
  /** IPv4 address of eth0 inside it. */
  readonly ip: string;
  /** Host name its processes see (each runs in its own UTS namespace). */
  readonly hostname: string;
}

export interface TestLan {
  readonly hosts: readonly LanHost[];
  /** Starts a process inside a host's namespace with its own host name. */
  spawn(host: LanHost, command: string, args: readonly string[], opts?: SpawnOptions): ChildProcess;
  /** Runs a command inside a host's namespace and returns its stdout. */
  exec(host: LanHost, command: string, args: readonly string[]): string;
  /** Pulls a host's cable (false: its bridge port goes down, its packets vanish without a reset) or plugs it back in. */
  plug(host: LanHost, on: boolean): void;
  close(): Promise<void>;
}

/** Fails (does not skip) when the test cannot build a LAN: these tests are meant to run. */
export function requireRoot(): void {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    throw new Error('this test builds a LAN of network namespaces and must run as root (CI does); run it with sudo');
  }
  try {
    execFileSync('ip', ['-V'], { stdio: 'pipe' });
  } catch {
    throw new Error('this test needs iproute2 (`ip`): apt-get install iproute2');
  }
}

function ip(args: readonly string[]): string {
  try {
    return execFileSync('ip', args, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')}: ${(err.stderr ?? err.message).trim()}`, { cause: e });
  }
}

export async function createLan(n: number, label = 'lan'): Promise<TestLan> {
  requireRoot();
  const tag = `herd-${label}-${process.pid}-${randomBytes(3).toString('hex')}`;
  const bridgeNs = `${tag}-br`;
  const made: string[] = [];
  const children = new Set<ChildProcess>();
  const hosts: LanHost[] = [];

  const close = async (): Promise<void> => {
    await Promise.all([...children].map((c) => stopProcess(c, 3000)));
    children.clear();
    for (const ns of made.splice(0).reverse()) {
      try {
        ip(['netns', 'del', ns]);
      } catch {
        // already gone
      }
    }
  };

  try {
    ip(['netns', 'add', bridgeNs]);
    made.push(bridgeNs);
    ip(['-n', bridgeNs, 'link', 'add', 'br0', 'type', 'bridge', 'mcast_snooping', '0']);
    ip(['-n', bridgeNs, 'link', 'set', 'br0', 'up']);
    ip(['-n', bridgeNs, 'link', 'set', 'lo', 'up']);
    for (let i = 0; i < n; i++) {
      const ns = `${tag}-h${i}`;
      ip(['netns', 'add', ns]);
      made.push(ns);
      const port = `v${i}`;
      // Both ends are created inside namespaces of ours: the root namespace never sees them.
      ip(['-n', bridgeNs, 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      ip(['-n', bridgeNs, 'link', 'set', port, 'master', 'br0']);
      ip(['-n', bridgeNs, 'link', 'set', port, 'up']);
      const addr = `10.77.0.${10 + i}`;
      ip(['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0']);
      ip(['-n', ns, 'link', 'set', 'eth0', 'up', 'multicast', 'on']);
      ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      ip(['-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', 'eth0']);
      hosts.push({ ns, ip: addr, hostname: `herd-h${i}` });
    }
  } catch (e) {
    await close();
    throw e;
  }

  return {
    hosts,
    spawn(host, command, args, opts = {}) {
      // ip netns exec → unshare -u (own host name) → sh sets it → exec the command: one pid.
      const child = spawn(
        'ip',
        [
          'netns',
          'exec',
          host.ns,
          'unshare',
          '-u',
          'sh',
          '-c',
          'hostname "$0" && exec "$@"',
          host.hostname,
          command,
          ...args,
        ],
        { stdio: ['ignore', 'pipe', 'pipe'], ...opts },
      );
      children.add(child);
      child.once('exit', () => children.delete(child));
      return child;
    },
    exec(host, command, args) {
      return execFileSync('ip', ['netns', 'exec', host.ns, command, ...args], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    },
    plug(host, on) {
      ip(['-n', bridgeNs, 'link', 'set', `v${hosts.indexOf(host)}`, on ? 'up' : 'down']);
    },
    close,
  };
}

/** SIGTERM, then SIGKILL if the process is still there after `graceMs`. */
export function stopProcess(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}
