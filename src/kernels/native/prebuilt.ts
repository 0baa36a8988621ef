// Which prebuilt addon this machine runs: the files scripts/prebuild.mjs puts into the npm
// package, in node-gyp-build's layout (prebuilds/<platform>-<arch>/<name>.<tags>.node). Its
// tags are node-gyp-build's (napi, armv7, glibc) plus, first, the CPU level the file was
// compiled for, named after its best instruction-set extension (avx512, neon-dotprod …).
// node-gyp-build itself knows no CPU levels and would load the first match: an AVX-512
// build on an AVX2-only CPU dies of SIGILL, which no JavaScript can catch. So this picks
// the highest level this CPU has, by the kernel's own word: /proc/cpuinfo's flags on x86-64
// (there CPUID is authoritative and not emulated), the auxiliary vector's HWCAP on Arm (what
// the kernel, or qemu-user under test, says the CPU runs).

import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

/** Each x86-64 level after the baseline, with the /proc/cpuinfo flags it needs (on top of the one before). */
const X64_LEVELS: readonly { level: string; flags: readonly string[] }[] = [
  // gcc's x86-64-v3 (AVX2, FMA, F16C, BMI1/2, LZCNT = abm, MOVBE); Linux lists avx* only when it saves their state.
  { level: 'avx2', flags: ['avx', 'avx2', 'fma', 'f16c', 'bmi1', 'bmi2', 'abm', 'movbe', 'xsave'] },
  // x86-64-v4 (AVX-512 F/BW/CD/DQ/VL) plus the VNNI and VBMI that herd.h's AVX-512 path wants.
  {
    level: 'avx512',
    flags: ['avx512f', 'avx512bw', 'avx512cd', 'avx512dq', 'avx512vl', 'avx512_vnni', 'avx512vbmi'],
  },
  // The same with the FP16 instructions (Sapphire Rapids on), which convert f16 scales faster.
  { level: 'avx512fp16', flags: ['avx512_fp16'] },
];

// HWCAP bits (Linux uapi asm/hwcap.h).
const AT_HWCAP = 16;
const ARM64_HWCAP_ASIMD = 1 << 1;
const ARM64_HWCAP_ASIMDDP = 1 << 20;
const ARM_HWCAP_NEON = 1 << 12;
const ARM_HWCAP_VFPV4 = 1 << 16;

/** AT_HWCAP from /proc/self/auxv (pairs of native words), or undefined when unreadable. */
function hwcap(): number | undefined {
  let auxv: Buffer;
  try {
    auxv = readFileSync('/proc/self/auxv');
  } catch {
    return undefined;
  }
  const word = process.arch === 'arm' || process.arch === 'ia32' ? 4 : 8;
  const read = (at: number) => (word === 4 ? auxv.readUInt32LE(at) : Number(auxv.readBigUInt64LE(at) & 0xffffffffn));
  for (let at = 0; at + 2 * word <= auxv.length; at += 2 * word) {
    const type = read(at);
    if (type === 0) break;
    if (type === AT_HWCAP) return read(at + word);
  }
  return undefined;
}

/** The CPU levels this machine runs, plainest first; empty when it can run none of the prebuilt ones. */
export function cpuLevels(arch: string = process.arch): string[] {
  if (arch === 'x64') {
    let flags: Set<string>;
    try {
      const line = /^flags\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '';
      flags = new Set(line.trim().split(/\s+/));
    } catch {
      return ['scalar'];
    }
    const levels = ['scalar'];
    for (const { level, flags: needs } of X64_LEVELS) {
      if (!needs.every((f) => flags.has(f))) break;
      levels.push(level);
    }
    return levels;
  }
  const caps = hwcap();
  if (caps === undefined) return [];
  if (arch === 'arm64') {
    if (!(caps & ARM64_HWCAP_ASIMD)) return [];
    return caps & ARM64_HWCAP_ASIMDDP ? ['neon', 'neon-dotprod'] : ['neon'];
  }
  // 32-bit Arm: the build is armv7-a with NEON and VFPv4 (Pi 2 and later).
  if (arch === 'arm') return caps & ARM_HWCAP_NEON && caps & ARM_HWCAP_VFPV4 ? ['scalar'] : [];
  return [];
}

function libc(): 'glibc' | 'musl' {
  const report = process.report.getReport() as { header?: { glibcVersionRuntime?: string } };
  return report.header?.glibcVersionRuntime ? 'glibc' : 'musl';
}

/** The ARM architecture version this Node was built for ('7' on 32-bit Raspberry Pi OS), as node-gyp-build reads it. */
function armVersion(): string | undefined {
  if (process.arch === 'arm64') return '8';
  const v = (process.config.variables as Record<string, unknown>).arm_version;
  return typeof v === 'string' || typeof v === 'number' ? String(v) : undefined;
}

export type PrebuiltChoice = { path: string; level: string } | { path?: undefined; why: string };

/**
 * The prebuilt addon in prebuildsDir for this platform, architecture, libc and the highest
 * CPU level this machine runs; or why there is none. A file with a tag this code does not
 * know is passed over rather than guessed at.
 */
export function choosePrebuilt(prebuildsDir: string): PrebuiltChoice {
  const tuple = `${process.platform}-${process.arch}`;
  const dir = join(prebuildsDir, tuple);
  if (!existsSync(dir)) return { why: `no prebuilt addon for ${tuple}` };
  const levels = cpuLevels();
  if (levels.length === 0) return { why: `this CPU lacks what the prebuilt ${tuple} addons need` };
  const here = { libc: libc(), armv: armVersion() };
  let best: { path: string; level: string; rank: number } | undefined;
  for (const file of readdirSync(dir)) {
    const [name, level, ...tags] = file.split('.');
    if (name !== 'herd_native' || tags.pop() !== 'node' || level === undefined) continue;
    const rank = levels.indexOf(level);
    if (rank < 0 || !tags.includes('napi')) continue;
    const fits = tags.every(
      (tag) => tag === 'napi' || tag === here.libc || (tag.startsWith('armv') && tag.slice(4) === here.armv),
    );
    if (fits && (!best || rank > best.rank)) best = { path: join(dir, file), level, rank };
  }
  if (!best)
    return { why: `no prebuilt ${tuple} addon fits this machine (CPU levels ${levels.join(', ')}, ${here.libc})` };
  return { path: best.path, level: best.level };
}
