/**
 * Exporters under test as child processes, so each one's CPU and RSS are its own. Each runs under
 * `setpriv --pdeathsig KILL` (setpriv execs: the PID we hold is the exporter itself) and in its own
 * process group, so it dies with the benchmark however that ends, and a Ctrl-C in the terminal reaches
 * only the benchmark, which then stops the children in order.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { onCleanup } from './cleanup.js';
import { Scraper } from './http.js';

export interface ChildSpec {
  /** Short id, also the log file's name. */
  name: string;
  cmd: string;
  args: string[];
  env: Record<string, string>;
  port: number;
  cwd?: string;
}

/** Re-throws a failed scrape with the end of the child's log, which usually says why. */
export function explain(child: RunningChild, err: unknown): Error {
  return new Error(`${child.name}: ${(err as Error).message}\n--- end of ${child.logFile} ---\n${tail(child.logFile, 2000)}`);
}

export interface RunningChild {
  readonly name: string;
  readonly pid: number;
  readonly url: string;
  readonly logFile: string;
  /** SIGTERM, then SIGKILL after 10 s; resolves when the process has exited. */
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function tail(file: string, bytes = 3000): string {
  try {
    const s = fs.readFileSync(file, 'utf8');
    return s.slice(-bytes);
  } catch {
    return '(no log)';
  }
}

/** The environment a child gets: PATH and HOME only, plus its own variables (no DBPILOT_* or PG* leaking in). */
export function cleanEnv(extra: Record<string, string>): Record<string, string> {
  const base: Record<string, string> = {};
  for (const k of ['PATH', 'HOME', 'LANG', 'TZ']) if (process.env[k] !== undefined) base[k] = process.env[k]!;
  return { ...base, ...extra };
}

export async function startChild(spec: ChildSpec, logDir: string, readyTimeoutMs = 30_000): Promise<RunningChild> {
  fs.mkdirSync(logDir, { recursive: true });
  const logFile = path.join(logDir, `${spec.name}.log`);
  const fd = fs.openSync(logFile, 'w');
  let child: ChildProcess;
  try {
    child = spawn('setpriv', ['--pdeathsig=KILL', '--', spec.cmd, ...spec.args], {
      env: spec.env,
      cwd: spec.cwd,
      stdio: ['ignore', fd, fd],
      detached: true,
    });
  } finally {
    fs.closeSync(fd);
  }
  let exited = false;
  const exitedP = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      resolve();
    });
    child.once('error', () => {
      exited = true;
      resolve();
    });
  });
  const pid = child.pid;
  const url = `http://127.0.0.1:${spec.port}/metrics`;
  const stop = onCleanup(`${spec.name} (pid ${pid ?? '?'})`, async () => {
    if (exited) return;
    child.kill('SIGTERM');
    const timer = sleep(10_000).then(() => false);
    if (!(await Promise.race([exitedP.then(() => true), timer]))) {
      child.kill('SIGKILL');
      await exitedP;
    }
  });
  if (pid === undefined) {
    await exitedP;
    throw new Error(`could not start ${spec.cmd}: ${tail(logFile)}`);
  }

  // Ready when /metrics answers 200.
  const deadline = Date.now() + readyTimeoutMs;
  const probe = new Scraper(url);
  try {
    for (;;) {
      if (exited) throw new Error(`${spec.name} exited during start:\n${tail(logFile)}`);
      try {
        const r = await probe.scrape({ timeoutMs: 5000 });
        if (r.status === 200) break;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`${spec.name} did not answer /metrics within ${readyTimeoutMs} ms:\n${tail(logFile)}`);
      await sleep(50);
    }
  } catch (err) {
    await stop();
    throw err;
  } finally {
    probe.close();
  }
  return { name: spec.name, pid, url, logFile, stop };
}

/** `<bin> --version` (first line), or null when the binary is not installed. */
export function binaryVersion(bin: string, flag = '--version'): string | null {
  const r = spawnSync(bin, [flag], { encoding: 'utf8', timeout: 5000 });
  if (r.error) return null;
  const text = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  return text.split('\n')[0] ?? '';
}

/** The absolute path of a command on PATH, or null. */
export function which(bin: string): string | null {
  const r = spawnSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' });
  const p = r.stdout.trim();
  return r.status === 0 && p ? p : null;
}
