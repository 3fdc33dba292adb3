/**
 * What the kernel says about processes: CPU time and RSS from /proc, and the process tree of a
 * PostgreSQL server (its postmaster is found by the data directory on its command line; backends
 * rewrite their titles, so only the postmaster matches).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

let clkTck: number | undefined;
/** Clock ticks per second (USER_HZ), normally 100. */
export function ticksPerSecond(): number {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

export interface ProcStat {
  pid: number;
  ppid: number;
  /** utime + stime, in clock ticks. */
  self: number;
  /** cutime + cstime: CPU of children this process has waited for (exited backends, for a postmaster). */
  children: number;
}

/** /proc/<pid>/stat, or null when the process is gone. */
export function procStat(pid: number): ProcStat | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // pid (comm) state ppid …: comm may contain spaces and parentheses, so split after the last ')'.
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // f[0] is field 3 (state); utime is field 14 → f[11].
  const n = (i: number) => Number(f[i]);
  return { pid, ppid: n(1), self: n(11) + n(12), children: n(13) + n(14) };
}

/** CPU seconds (user + system) of one process, or null when it is gone. */
export function cpuSeconds(pid: number): number | null {
  const s = procStat(pid);
  return s ? s.self / ticksPerSecond() : null;
}

/** Resident set size in bytes (VmRSS), or null when the process is gone. */
export function rssBytes(pid: number): number | null {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

function allPids(): number[] {
  return fs
    .readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .map(Number);
}

/** The postmaster serving `dataDir` (its argv holds `-D <dataDir>`). */
export function findPostmaster(dataDir: string): number | null {
  for (const pid of allPids()) {
    try {
      const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      const i = argv.indexOf('-D');
      if (i >= 0 && argv[i + 1] === dataDir && /postgres$/.test(argv[0] ?? '')) return pid;
    } catch {
      // gone while we looked
    }
  }
  return null;
}

/**
 * CPU seconds used so far by PostgreSQL servers: each postmaster's own time, the time of the
 * children it has already reaped (cutime/cstime: backends that exited) and of its live children.
 */
export function serverCpuSeconds(postmasters: readonly number[]): number {
  const want = new Set(postmasters);
  let ticks = 0;
  for (const pid of allPids()) {
    const s = procStat(pid);
    if (!s) continue;
    if (want.has(pid)) ticks += s.self + s.children;
    else if (want.has(s.ppid)) ticks += s.self;
  }
  return ticks / ticksPerSecond();
}
