/**
 * Helpers of the drill tests (test/drill/*.test.ts): run `node bin/dbpilot.js drill …` as a child with
 * its own TMPDIR, watch its descendants, and check afterwards that nothing of the sandbox is left: no
 * process (every process that carries the drill's TMPDIR in its environment, and every descendant
 * seen while it ran), no listening port, no temp dir.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, expect } from 'vitest';
import { canConnect } from '../support/ports.js';

export const BIN = fileURLToPath(new URL('../../bin/dbpilot.js', import.meta.url));
export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Every descendant of the drill seen while it ran. */
  descendants: Set<number>;
  tmp: string;
}

export const tmps: string[] = [];
/** Removes the temp dirs the tests made (also after each test of every file that imports this one). */
export const removeTmps = () => {
  for (const t of tmps.splice(0)) fs.rmSync(t, { recursive: true, force: true });
};
afterEach(removeTmps);

/** pid → ppid of every process now. */
export function processTable(): Map<number, number> {
  const m = new Map<number, number>();
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      m.set(Number(e), ppid);
    } catch {
      // gone meanwhile
    }
  }
  return m;
}

export function descendantsOf(root: number): number[] {
  const table = processTable();
  const out: number[] = [];
  const walk = (p: number) => {
    for (const [pid, ppid] of table) if (ppid === p && !out.includes(pid)) (out.push(pid), walk(pid));
  };
  walk(root);
  return out;
}

/** Live processes (not zombies) whose environment carries TMPDIR=tmp: started by the drill or its children. */
export function processesOf(tmp: string): number[] {
  const hits: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const state = fs.readFileSync(`/proc/${e}/stat`, 'utf8').split(') ')[1]?.[0];
      if (state === 'Z') continue;
      if (fs.readFileSync(`/proc/${e}/environ`, 'latin1').split('\0').includes(`TMPDIR=${tmp}`)) hits.push(Number(e));
    } catch {
      // gone or not readable
    }
  }
  return hits;
}

export const alive = (pid: number) => {
  try {
    return fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
  } catch {
    return false;
  }
};

export function drill(
  args: string[],
  opts: { interruptWhen?: RegExp; signal?: NodeJS.Signals; env?: NodeJS.ProcessEnv; /** Called with all of stderr so far, on every chunk, and the drill's process (to signal it). */ onStderr?: (stderr: string, child: ChildProcess) => void } = {},
): Promise<Ran> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dbpilot-drill-test-'));
  fs.chmodSync(tmp, 0o755); // the postgres OS user creates its data dirs below it
  tmps.push(tmp);
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, TMPDIR: tmp, ...opts.env };
  const child = spawn(process.execPath, [BIN, 'drill', ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let interrupted = false;
  const descendants = new Set<number>();
  const watch = setInterval(() => {
    for (const p of descendantsOf(child.pid!)) descendants.add(p);
  }, 100);
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    opts.onStderr?.(stderr, child);
    if (opts.interruptWhen && !interrupted && opts.interruptWhen.test(stderr)) {
      interrupted = true;
      for (const p of descendantsOf(child.pid!)) descendants.add(p);
      child.kill(opts.signal ?? 'SIGINT');
    }
  });
  return new Promise((resolve) =>
    child.on('close', (code, signal) => {
      clearInterval(watch);
      resolve({ code, signal, stdout, stderr, descendants, tmp });
    }),
  );
}

/**
 * What is left in the drill's TMPDIR, except tsx's transpile cache (tsx-<uid>): bin/dbpilot.js runs the
 * checkout's TypeScript through tsx, which caches there; the shipped build (dist/) has no such cache.
 */
export const leftovers = (tmp: string) => fs.readdirSync(tmp).filter((e) => !/^tsx-\d+$/.test(e));

/** Nothing of the sandbox is left: processes, ports, temp dirs. */
export async function expectNothingLeft(r: Ran, ports: number[], dirs: string[] = []): Promise<void> {
  expect(r.descendants.size, 'the drill started servers of its own').toBeGreaterThan(0);
  // An orphan killed at the drill's exit may take PID 1 a moment to reap.
  const deadline = Date.now() + 5000;
  while ((processesOf(r.tmp).length > 0 || [...r.descendants].some(alive)) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 100));
  expect(processesOf(r.tmp), 'processes started by the drill').toEqual([]);
  expect([...r.descendants].filter(alive), 'descendants of the drill still alive').toEqual([]);
  expect(ports.length).toBeGreaterThan(0);
  for (const p of ports) expect(await canConnect(p), `port ${p} still open`).toBe(false);
  for (const d of dirs) expect(fs.existsSync(d), `${d} left behind`).toBe(false);
  expect(leftovers(r.tmp), 'temp dirs left behind').toEqual([]);
}

export interface Json {
  scenario: string;
  recovered: boolean;
  error: string | null;
  /** With --report: the pages written. */
  reports?: string[];
  trials: {
    runId: string;
    runStatus: string;
    expectedRunStatus: string;
    measured: { name: string; ms: number | null; ok: boolean }[];
    recovered: boolean;
    detectionMs: number;
    recoveryMs: number;
    steps: { name: string; status: string; durationMs: number; checkOk: boolean | null; detail: string | null }[];
    checks: { name: string; ok: boolean; detail: string }[];
    pages: number;
    alertPath: { via: 'prometheus' | 'drill'; fallback?: string; pendingAt?: string | null; firingAt?: string | null; webhookAt?: string | null; brokeAt?: string; prometheus?: string; alertmanager?: string };
    sandbox: { ports: number[]; dirs: string[] };
  }[];
}

/**
 * A drill that must recover. `runStatus`: what the handler promises ('escalated' for a diagnose-only
 * one); `env`: added to the child's environment.
 */
export async function jsonDrill(
  scenario: string,
  extra: string[] = [],
  opts: { runStatus?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<{ r: Ran; j: Json; t: Json['trials'][number] }> {
  const runStatus = opts.runStatus ?? 'succeeded';
  const r = await drill([scenario, '--json', ...extra], { env: opts.env ?? {} });
  expect(r.code, r.stderr).toBe(0);
  const j = JSON.parse(r.stdout) as Json;
  expect(j).toMatchObject({ scenario, recovered: true, error: null });
  expect(j.trials).toHaveLength(1);
  const t = j.trials[0]!;
  expect(t.runStatus).toBe(runStatus);
  expect(t.recovered).toBe(true);
  expect(t.detectionMs).toBeGreaterThanOrEqual(0);
  expect(t.recoveryMs).toBeGreaterThanOrEqual(t.detectionMs);
  for (const s of t.steps) expect(s.durationMs).toBeGreaterThanOrEqual(0);
  expect(t.checks.length).toBeGreaterThan(0);
  expect(t.checks.filter((c) => !c.ok)).toEqual([]);
  await expectNothingLeft(r, t.sandbox.ports, t.sandbox.dirs);
  return { r, j, t };
}

export const portOf = (s: string) => Number(/127\.0\.0\.1:(\d+)/.exec(s)?.[1]);
