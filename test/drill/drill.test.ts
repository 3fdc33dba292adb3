/**
 * `dbpilot drill` through the real CLI (a spawned `node bin/dbpilot.js drill …`): each drill of this
 * build runs end to end on its own sandbox, recovery is asserted from the JSON the drill prints (which
 * it read from the world), and afterwards nothing of the sandbox is left: no process (every process
 * that carries the drill's TMPDIR in its environment, and every descendant seen while it ran), no
 * listening port, no temp dir. SIGINT in the middle of a drill cleans up as well.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { canConnect } from '../support/ports.js';

const BIN = fileURLToPath(new URL('../../bin/dbpilot.js', import.meta.url));
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Every descendant of the drill seen while it ran. */
  descendants: Set<number>;
  tmp: string;
}

const tmps: string[] = [];
afterEach(() => {
  for (const t of tmps.splice(0)) fs.rmSync(t, { recursive: true, force: true });
});

/** pid → ppid of every process now. */
function processTable(): Map<number, number> {
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

function descendantsOf(root: number): number[] {
  const table = processTable();
  const out: number[] = [];
  const walk = (p: number) => {
    for (const [pid, ppid] of table) if (ppid === p && !out.includes(pid)) (out.push(pid), walk(pid));
  };
  walk(root);
  return out;
}

/** Live processes (not zombies) whose environment carries TMPDIR=tmp: started by the drill or its children. */
function processesOf(tmp: string): number[] {
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

const alive = (pid: number) => {
  try {
    return fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
  } catch {
    return false;
  }
};

function drill(args: string[], opts: { interruptWhen?: RegExp; signal?: NodeJS.Signals } = {}): Promise<Ran> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dbpilot-drill-test-'));
  fs.chmodSync(tmp, 0o755); // the postgres OS user creates its data dirs below it
  tmps.push(tmp);
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, TMPDIR: tmp };
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
const leftovers = (tmp: string) => fs.readdirSync(tmp).filter((e) => !/^tsx-\d+$/.test(e));

/** Nothing of the sandbox is left: processes, ports, temp dirs. */
async function expectNothingLeft(r: Ran, ports: number[], dirs: string[] = []): Promise<void> {
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

interface Json {
  scenario: string;
  recovered: boolean;
  error: string | null;
  /** With --report: the pages written. */
  reports?: string[];
  trials: {
    runId: string;
    runStatus: string;
    recovered: boolean;
    detectionMs: number;
    recoveryMs: number;
    steps: { name: string; status: string; durationMs: number; checkOk: boolean | null; detail: string | null }[];
    checks: { name: string; ok: boolean; detail: string }[];
    pages: number;
    sandbox: { ports: number[]; dirs: string[] };
  }[];
}

async function jsonDrill(scenario: string, extra: string[] = []): Promise<{ r: Ran; j: Json; t: Json['trials'][number] }> {
  const r = await drill([scenario, '--json', ...extra]);
  expect(r.code, r.stderr).toBe(0);
  const j = JSON.parse(r.stdout) as Json;
  expect(j).toMatchObject({ scenario, recovered: true, error: null });
  expect(j.trials).toHaveLength(1);
  const t = j.trials[0]!;
  expect(t.runStatus).toBe('succeeded');
  expect(t.recovered).toBe(true);
  expect(t.detectionMs).toBeGreaterThanOrEqual(0);
  expect(t.recoveryMs).toBeGreaterThanOrEqual(t.detectionMs);
  for (const s of t.steps) expect(s.durationMs).toBeGreaterThanOrEqual(0);
  expect(t.checks.length).toBeGreaterThan(0);
  expect(t.checks.filter((c) => !c.ok)).toEqual([]);
  await expectNothingLeft(r, t.sandbox.ports, t.sandbox.dirs);
  return { r, j, t };
}

const portOf = (s: string) => Number(/127\.0\.0\.1:(\d+)/.exec(s)?.[1]);

describe('dbpilot drill (the real CLI on its own sandbox)', () => {
  it('primary-failure: the replica is promoted, accepts a write, the Secret names it; the run went through every failover step; nothing left behind', async () => {
    const { r, t } = await jsonDrill('primary-failure');
    expect(t.steps.map((s) => [s.name, s.status])).toEqual(
      ['recordIntent', 'fenceOldPrimary', 'promoteReplica', 'labelNewPrimary', 'repointSecrets', 'restartServices', 'waitForRollouts', 'verifyServices', 'completeIntent'].map((n) => [n, 'done']),
    );
    const write = t.checks.find((c) => c.name === 'promoted replica accepts a write')!;
    expect(write.detail).toMatch(/^127\.0\.0\.1:\d+: pg_is_in_recovery\(\) = false, wrote in transaction \d+$/);
    const secret = t.checks.find((c) => c.name === 'secret lomash-wood-secrets points at it')!;
    // The Secret names the promoted replica, which is not the primary the drill killed.
    expect(portOf(secret.detail)).toBe(portOf(write.detail));
    const primaryPort = Number(/PostgreSQL primary 127\.0\.0\.1:(\d+)/.exec(r.stderr)?.[1]);
    expect(primaryPort).toBeGreaterThan(0);
    expect(portOf(write.detail)).not.toBe(primaryPort);
    // lead-dba was told.
    expect(t.pages).toBeGreaterThanOrEqual(1);
  });

  it('slow-query: the application role’s pg_sleep is cancelled and gone; --report writes the run’s timeline page; nothing left behind', async () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'dbpilot-drill-report-'));
    tmps.push(out);
    const file = path.join(out, 'slow-query.html');
    const { r, j, t } = await jsonDrill('slow-query', ['--report', file]);
    expect(j.reports).toEqual([file]);
    expect(r.stderr).toContain(`report: ${file}`);
    const page = fs.readFileSync(file, 'utf8');
    // The timeline of the drill's own run: its id, and one bar per step it ran, with that step's status.
    expect(page).toContain(t.runId);
    expect([...page.matchAll(/<rect class="bar status-(\w+)[^"]*" data-step="(\d+)"/g)].map((m) => [Number(m[2]), m[1]])).toEqual(t.steps.map((s, i) => [i, s.status]));
    expect(t.steps.map((s) => s.name)).toEqual(['cancelBackends', 'terminateBackends']);
    expect(t.checks.find((c) => c.name === 'its client saw it stopped')!.detail).toMatch(/: (cancelled|terminated)$/);
    expect(t.checks.find((c) => c.name === 'the slow query is gone')!.detail).toMatch(/^backend \d+ no longer runs pg_sleep$/);
  });

  it('redis-failure: the StatefulSet restart is requested, Redis comes back and answers PING; nothing left behind', async () => {
    const { t } = await jsonDrill('redis-failure');
    expect(t.steps.map((s) => [s.name, s.status])).toEqual([
      ['restartRedis', 'done'],
      ['waitForRedisRollout', 'done'],
      ['verifyRedisStatus', 'done'],
    ]);
    expect(t.checks.find((c) => c.name === 'Redis answers PING')!.detail).toMatch(/answered PONG on a new connection$/);
    expect(t.checks.find((c) => c.name === 'statefulset/redis restart requested')!.detail).toMatch(/^restartedAt \d{4}-\d\d-\d\dT/);
  });

  it('--trials 2 prints the table with median and worst per row, each trial on a fresh sandbox', async () => {
    const r = await drill(['redis-failure', '--trials', '2']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^drill redis-failure: 2 trials, recovered\n/);
    expect(r.stdout).toMatch(/│\s+│ median\s+│ worst\s+│ passed │/);
    for (const row of ['detection \\(alert → run created\\)', 'step restartRedis', 'step waitForRedisRollout', 'step verifyRedisStatus', 'total time to recover', 'check: Redis answers PING', 'every check passed']) {
      expect(r.stdout).toMatch(new RegExp(`│ ${row}[^\\n]*│ 2/2\\s+│`));
    }
    expect(r.stderr.match(/^— trial \d of 2$/gm)).toEqual(['— trial 1 of 2', '— trial 2 of 2']);
    // Two sandboxes: two different Redis ports, both closed now.
    const ports = [...r.stderr.matchAll(/Redis 127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]));
    expect(ports).toHaveLength(2);
    await expectNothingLeft(r, ports);
  });

  it('SIGINT in the middle of a failover drill stops everything and removes the temp dirs (exit 130)', async () => {
    const r = await drill(['primary-failure'], { interruptWhen: /^step promoteReplica/m });
    expect(r.code).toBe(130);
    expect(r.stderr).toContain('SIGINT: stopping the sandbox');
    const ports = [...r.stderr.matchAll(/(?:primary|replica|Redis) 127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]));
    expect(ports).toHaveLength(3);
    await expectNothingLeft(r, ports);
  });

  it('SIGTERM while Redis is down in a redis-failure drill stops everything too (exit 143)', async () => {
    const r = await drill(['redis-failure'], { interruptWhen: /^step waitForRedisRollout/m, signal: 'SIGTERM' });
    expect(r.code).toBe(143);
    expect(r.stderr).toContain('SIGTERM: stopping the sandbox');
    const ports = [...r.stderr.matchAll(/(?:primary|replica|Redis) 127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]));
    expect(ports).toHaveLength(3);
    await expectNothingLeft(r, ports);
  });

  it('refuses what this build does not drill: unknown and later scenarios, and --target-config, with exit 2 and nothing started', async () => {
    const later = await drill(['replication-lag']);
    expect(later.code).toBe(2);
    expect(later.stderr).toBe('dbpilot drill: unknown scenario "replication-lag" (replication-lag comes in a later build); drills in this build: primary-failure, slow-query, redis-failure\n');
    const unknown = await drill(['datacenter-fire', '--json']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('drills in this build: primary-failure, slow-query, redis-failure');
    expect(unknown.stdout).toBe('');
    const target = await drill(['primary-failure', '--target-config', 'staging.yaml']);
    expect(target.code).toBe(2);
    expect(target.stderr).toMatch(/--target-config: staging targets are not supported yet/);
    for (const r of [later, unknown, target]) expect(leftovers(r.tmp)).toEqual([]);
    const help = await drill(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout.replace(/\s+/g, ' ')).toContain('Drills in this build: primary-failure, slow-query, redis-failure; prisma-migration, replication-lag, disk-pressure come later');
  });
});
