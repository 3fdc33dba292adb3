/**
 * The on-call commands as a user runs them — `node bin/dbpilot.js plan|remediate|audit|approve` in a
 * child process — against the shared harness servers (DBPILOT_PRIMARY_URL, …), a store file in a
 * temp dir (DBPILOT_STORE_PATH) and the PagerDuty stand-in (a YAML file named by DBPILOT_CONFIG).
 * For `approve`, the run waiting for approval is created by the engine in this process, in approve
 * mode, on the same store file; the child process then carries it out.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { Store } from '../../src/store/store.js';
import { pgQuery, withDatabase } from '../support/service.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { TEAM_KEYS, createSlowQueryDb, freshFingerprint, payload, startRemediation, until, type SlowQueryDb, type SlowSession } from '../support/remediation.js';

const BIN = fileURLToPath(new URL('../../bin/dbpilot.js', import.meta.url));
// maxAttempts high: every test acts on the same database, and the attempt limit is not what these tests are about.
const SLOW = { thresholdSeconds: 0.2, graceSeconds: 2, diagnosticTables: [], maxAttempts: 100 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

let dir = '';
let storePath = '';
let configPath = '';
let cwd = '';
const pd = new PagerDutyStandin();
let db: SlowQueryDb;
const sessions: SlowSession[] = [];

/** The parent's environment without what would change what dbpilot or node does here. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('DBPILOT_') || k.startsWith('VITEST') || k === 'NODE_OPTIONS' || k === 'KUBECONFIG' || k === 'POD_NAME') continue;
    env[k] = v;
  }
  return env;
}

/** One CLI process at a time: each costs seconds of CPU (tsx compiling src/) on a shared machine. */
let queue: Promise<unknown> = Promise.resolve();
function dbpilot(...args: string[]): Promise<Result> {
  const next = queue.then(
    () =>
      new Promise<Result>((resolve, reject) => {
        const started = Date.now();
        const child = spawn(process.execPath, [BIN, ...args], {
          cwd,
          env: {
            ...cleanEnv(),
            DBPILOT_CONFIG: configPath,
            DBPILOT_STORE_PATH: storePath,
            DBPILOT_PRIMARY_URL: inject('pgPrimaryUrl'),
            DBPILOT_REPLICA_URLS: inject('pgReplicaUrls').join(','),
            DBPILOT_REDIS_URL: inject('redisUrl'),
          },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        const timer = setTimeout(() => child.kill('SIGKILL'), 45_000);
        child.on('error', reject);
        child.on('close', (code) => {
          clearTimeout(timer);
          resolve({ code, stdout, stderr, ms: Date.now() - started });
        });
      }),
  );
  queue = next.catch(() => undefined);
  return next;
}

function readStore<T>(fn: (s: Store) => T): T {
  const s = new Store(storePath);
  try {
    return fn(s);
  } finally {
    s.close();
  }
}

async function slowQuery(): Promise<SlowSession> {
  const s = await db.start(120);
  sessions.push(s);
  await sleep(350);
  return s;
}

beforeAll(async () => {
  await pd.start();
  db = await createSlowQueryDb('cli');
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-cli-rem-'));
  cwd = path.join(dir, 'cwd');
  storePath = path.join(dir, 'store', 'dbpilot.sqlite');
  configPath = path.join(dir, 'dbpilot.yaml');
  mkdirSync(cwd);
  writeFileSync(
    configPath,
    stringify({
      mode: 'dry-run',
      handlers: { 'slow-queries': SLOW },
      pagerduty: { url: pd.url, routes: TEAM_KEYS, source: 'dbpilot-cli-test', timeoutMs: 2000, retry: { baseMs: 20, maxMs: 200 } },
    }),
  );
});

afterAll(async () => {
  await Promise.all(sessions.splice(0).map((s) => s.end()));
  await db?.drop();
  await pd.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const target = () => `postgres/${db.server}/${db.name}`;

describe('dbpilot plan', () => {
  /** The runs in the store: a plan must add none (other tests of this file record runs of their own). */
  const runIds = () => readStore((st) => st.listRuns().map((r) => r.id));
  it('shows the steps it would take against the live system, as the runbook commands, and records nothing', async () => {
    const before = runIds();
    const s = await slowQuery();
    const r = await dbpilot('plan', 'slow-queries', '--database', db.name);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`slow-queries on ${target()}: 1 query running for more than 0.2 s in ${db.name} on ${db.server} (pids ${s.pid})`);
    expect(r.stdout).toMatch(/^1\. cancelBackends$/m);
    expect(r.stdout).toMatch(/^2\. terminateBackends$/m);
    expect(r.stdout).toContain(`kubectl exec -it postgres-primary-0 -n lomash-wood -- psql -U postgres -c "SELECT pg_cancel_backend(${s.pid});"`);
    expect(await s.running()).toBe(true);

    const j = await dbpilot('plan', 'slow-queries', '--database', db.name, '--json');
    expect(j.code, j.stderr).toBe(0);
    const parsed = JSON.parse(j.stdout) as { target: string; plan: { data: { targets: { pid: number; user: string }[] } }; steps: { name: string; command: string }[] };
    expect(parsed.target).toBe(target());
    expect(parsed.plan.data.targets.map((t) => [t.pid, t.user])).toEqual([[s.pid, db.role]]);
    expect(parsed.steps.map((st) => st.name)).toEqual(['cancelBackends', 'terminateBackends']);
    expect(runIds()).toEqual(before);
    await s.end();
  });

  it('vacuum-full: -t names the one table; plan shows its size and the ACCESS EXCLUSIVE lock, remediate --yes rewrites it', async () => {
    const url = withDatabase(inject('pgPrimaryUrl'), db.name);
    await pgQuery(url, `CREATE TABLE reclaim (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = false)`);
    await pgQuery(url, `INSERT INTO reclaim SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g`);
    await pgQuery(url, `DELETE FROM reclaim WHERE id <= 4000`);
    const node = async () => (await pgQuery<{ n: string }>(url, `SELECT relfilenode::text AS n FROM pg_class WHERE relname = 'reclaim'`))[0]!.n;
    const before = await node();
    const runsBefore = runIds();
    const p = await dbpilot('plan', 'vacuum-full', '-d', db.name, '-t', 'public.reclaim');
    expect(p.code, p.stderr).toBe(0);
    expect(p.stdout).toMatch(new RegExp(`^vacuum-full on postgres/${db.server}/${db.name}: VACUUM FULL reclaim in ${db.name} on ${db.server}: .*it takes an ACCESS EXCLUSIVE lock on reclaim for the whole rewrite`, 'm'));
    expect(p.stdout).toMatch(/^1\. vacuumFull$/m);
    expect(p.stdout).toContain(`VACUUM FULL reclaim;`);
    expect(await node()).toBe(before);
    expect(runIds()).toEqual(runsBefore);
    const r = await dbpilot('remediate', 'vacuum-full', '-d', db.name, '-t', 'public.reclaim', '--yes');
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(r.stdout).toMatch(/\[done\] vacuumFull/);
    expect(await node()).not.toBe(before);
    await pgQuery(url, `DROP TABLE reclaim`);
  });

  it('says so when there is nothing to do', async () => {
    const r = await dbpilot('plan', 'slow-queries', '--database', db.name);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(`slow-queries on ${target()}: no query in ${db.name} has been running for more than 0.2 s any more`);
  });

  it('a diagnose-only handler (replication-lag) shows what it read and that it changes nothing; --json carries the numbers', async () => {
    const before = runIds();
    const replica = new URL(inject('pgReplicaUrls')[0]!);
    const server = `${replica.hostname}:${replica.port}`;
    const r = await dbpilot('plan', 'replication-lag', '--server', server);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^replication-lag on postgres/${server.replace(/\./g, '\\.')}: replica ${server.replace(/\./g, '\\.')}: \\d+ bytes received but not replayed`, 'm'));
    expect(r.stdout).toMatch(/^diagnose only: dbpilot changes nothing; its page carries what it read \(--json shows it\)$/m);
    const j = await dbpilot('plan', 'replication-lag', '--server', server, '--json');
    expect(j.code, j.stderr).toBe(0);
    const parsed = JSON.parse(j.stdout) as { plan: { diagnoseOnly: boolean; data: { replicas: { server: string; in_recovery: boolean; wal_receiver: { status: string } }[] } }; steps: unknown[] };
    expect(parsed.plan.diagnoseOnly).toBe(true);
    expect(parsed.steps).toEqual([]);
    expect(parsed.plan.data.replicas.find((x) => x.server === server)).toMatchObject({ in_recovery: true, wal_receiver: { status: 'streaming' } });
    expect(runIds()).toEqual(before);
  });

  it('redis-failure on the running Redis: it answers PING, so the plan restarts nothing (and needs no kubernetes: to say so); redis-flushall is refused where not allowed', async () => {
    const before = runIds();
    const r = await dbpilot('plan', 'redis-failure');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toMatch(/^redis-failure on redis: Redis answers PING on a new connection \(attempt 1 of 3\): not restarted \(used_memory /);
    const f = await dbpilot('plan', 'redis-flushall');
    expect(f.stdout).toBe('');
    expect(f.stderr).toMatch(/^dbpilot: FLUSHALL \(runbook scenario 5 step 3\) is refused: it deletes every key of every database, and handlers\.redis-flushall\.allow is not true in this configuration \(environment production\) \[DBPILOT_UNSAFE_TO_ACT\]$/m);
    expect(f.code).toBe(2);
    expect(runIds()).toEqual(before);
  });

  it('refuses an unknown handler with exit code 2 and the handlers it has', async () => {
    const r = await dbpilot('plan', 'restart-redis');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^dbpilot: no handler named restart-redis; available: slow-queries, primary-failover, rebuild-replica, prisma-migration, disk-full, vacuum-full, replication-lag, data-corruption, redis-failure, redis-flushall \[DBPILOT_REGISTRY_INVALID\]$/m);
    expect(r.stdout).toBe('');
  });
});

describe('dbpilot remediate', () => {
  it('without --yes runs a dry-run through the engine: recorded, nothing changed', async () => {
    const s = await slowQuery();
    const r = await dbpilot('remediate', 'slow-queries', '--database', db.name);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^run [0-9a-f-]{36}  slow-queries  dry_run  target ${target().replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'));
    expect(r.stdout).toContain('[planned] cancelBackends');
    expect(r.stdout).toContain(`SELECT pg_cancel_backend(${s.pid});`);
    expect(r.stdout).toContain('(dry-run: nothing was changed; add --yes to act)');
    expect(await s.running()).toBe(true);
    const [run] = readStore((st) => st.listRuns());
    expect(run).toMatchObject({ handler: 'slow-queries', mode: 'dry-run', status: 'dry_run', origin: 'cli', target: target() });
    expect(run!.owner).toMatch(new RegExp(`^cli:${userInfo().username}/\\d+/[0-9a-f]{8}$`));
    await s.end();
  });

  it('with --yes acts under the same policy: cancels the query, checks it, records every step; the service then honours the cooldown', async () => {
    const s = await slowQuery();
    const r = await dbpilot('remediate', 'slow-queries', '--database', db.name, '--yes');
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/  slow-queries  succeeded  target /);
    expect(r.stdout).toContain('[done] cancelBackends');
    expect(r.stdout).toContain('check: all 1 cancelled queries stopped');
    expect(r.stdout).toContain('[done] terminateBackends');
    expect(r.stdout).not.toContain('dry-run');
    expect(await s.done).toBe('cancelled');
    const [run] = readStore((st) => st.listRuns({ status: 'succeeded' }));
    expect(run).toMatchObject({ mode: 'manual', origin: 'cli' });
    expect(readStore((st) => st.lockHolder(target()))).toBeNull();

    // The service, on the same store, sees that a human just acted on this target.
    const again = await slowQuery();
    const h = await startRemediation({ mode: 'auto', storePath, pagerduty: pd, config: { handlers: { 'slow-queries': SLOW } } });
    try {
      const fp = freshFingerprint();
      await h.webhook(
        payload([{ labels: { alertname: 'PostgresLongRunningQueries', remediation: 'slow-queries', server: db.server, datname: db.name }, fingerprint: fp }]),
      );
      await h.engine.idle();
      const [skipped] = h.store.listRuns({ fingerprint: fp });
      expect(skipped).toMatchObject({ status: 'skipped' });
      expect(skipped!.reason).toMatch(new RegExp(`^cooldown: run ${run!.id} acted on`));
    } finally {
      await h.close();
    }
    expect(await again.running()).toBe(true);
    await again.end();
  });
});

describe('dbpilot audit', () => {
  // Its own runs, so it does not depend on what the other describes ran before it.
  beforeAll(async () => {
    const h = await startRemediation({ mode: 'auto', storePath, pagerduty: pd, config: { handlers: { 'slow-queries': { ...SLOW, cooldownSeconds: 0 } } } });
    try {
      const s = await slowQuery();
      expect((await h.engine.runManual('slow-queries', { datname: db.name }, 'manual'))?.status).toBe('succeeded');
      expect(await s.done).toBe('cancelled');
      const again = await slowQuery();
      expect((await h.engine.runManual('slow-queries', { datname: db.name }, 'dry-run'))?.status).toBe('dry_run');
      await again.end();
      expect((await h.engine.runManual('slow-queries', { datname: db.name }, 'dry-run'))?.status).toBe('dry_run');
    } finally {
      await h.close();
    }
  });

  it('lists runs newest first, as a table and as JSON with steps, outputs and checks', async () => {
    const runs = readStore((st) => st.listRuns());
    expect(runs.length).toBeGreaterThanOrEqual(3);
    const j = await dbpilot('audit', '--json');
    expect(j.code, j.stderr).toBe(0);
    const listed = JSON.parse(j.stdout) as Array<{ id: string; status: string; steps: Array<{ name: string; status: string; output: unknown; check: unknown }> }>;
    expect(listed.map((r) => r.id)).toEqual(runs.map((r) => r.id));
    const manual = listed.find((r) => r.status === 'succeeded' && r.steps.length > 0)!;
    expect(manual.steps[0]).toMatchObject({ name: 'cancelBackends', status: 'done', check: { ok: true, detail: 'all 1 cancelled queries stopped' } });
    expect((manual.steps[0]!.output as { cancelled: unknown[] }).cancelled).toHaveLength(1);

    const t = await dbpilot('audit');
    expect(t.code, t.stderr).toBe(0);
    for (const h of ['Created', 'Run', 'Handler', 'Alert', 'Target', 'Mode', 'Status', 'Reason']) expect(t.stdout).toContain(h);
    for (const r of runs) expect(t.stdout).toContain(r.id);
    expect(t.stdout.indexOf(runs[0]!.id)).toBeLessThan(t.stdout.indexOf(runs[runs.length - 1]!.id));
  });

  it('filters by status and alert name, limits, and shows one run by id', async () => {
    const filtered = await dbpilot('audit', '--json', '--status', 'dry_run', '--alertname', 'manual:slow-queries', '-n', '1');
    expect(filtered.code, filtered.stderr).toBe(0);
    expect((JSON.parse(filtered.stdout) as { status: string; alertname: string }[]).map((r) => [r.status, r.alertname])).toEqual([['dry_run', 'manual:slow-queries']]);

    const [run] = readStore((st) => st.listRuns({ status: 'succeeded' }));
    const shown = await dbpilot('audit', run!.id);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toMatch(new RegExp(`^run ${run!.id}  slow-queries  succeeded  target `));
    expect(shown.stdout).toContain('check: all 1 cancelled queries stopped');

    const missing = await dbpilot('audit', '00000000-0000-0000-0000-000000000000');
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('dbpilot: no remediation run 00000000-0000-0000-0000-000000000000 [DBPILOT_RUN_NOT_FOUND]');
  });
});

describe('dbpilot audit: output and side effects', () => {
  it('pages through the runs instead of silently stopping at 1,000, and refuses a limit above it', async () => {
    const total = readStore((st) => st.countRuns());
    expect(total).toBeGreaterThanOrEqual(3);
    const page = await dbpilot('audit', '-n', '2');
    expect(page.code, page.stderr).toBe(0);
    expect(page.stdout).toContain(`showing 1–2 of ${total} runs; next page: --offset 2`);
    const next = await dbpilot('audit', '--json', '-n', '2', '--offset', '2');
    const ids = (JSON.parse(next.stdout) as { id: string }[]).map((r) => r.id);
    expect(ids).toEqual(readStore((st) => st.listRuns({ limit: 2, offset: 2 })).map((r) => r.id));
    const tooMany = await dbpilot('audit', '-n', '100000');
    expect(tooMany.code).toBe(2);
    expect(tooMany.stderr).toContain('dbpilot: --limit must be a whole number from 0 to 1000 (got "100000"); page with --offset [DBPILOT_BAD_ARGUMENT]');
    expect(tooMany.stdout).toBe('');
  });

  it('shows control characters of label values escaped, never raw to the terminal', async () => {
    const evil = 'Evil\u001b[2J\u001b[1;1H\u0007\rcleared';
    const h = await startRemediation({ storePath, pagerduty: pd });
    try {
      expect((await h.webhook(payload([{ labels: { alertname: evil, remediation: 'not-a-handler' }, fingerprint: freshFingerprint() }]))).statusCode).toBe(202);
      await h.settle();
    } finally {
      await h.close();
    }
    const t = await dbpilot('audit', '-n', '1');
    expect(t.code, t.stderr).toBe(0);
    expect(t.stdout).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f]/);
    expect(t.stdout).toContain('Evil\\x1b[2J\\x1b[1;1H\\x07\\rcleared');
  });

  it('reads the store and nothing else: no outbox, no page sent, no paging warning', async () => {
    // A page waiting in the outbox, PagerDuty up: a dispatcher would send it at once.
    const key = `dbpilot/AuditReadsOnly/${freshFingerprint()}`;
    readStore((st) => st.enqueue({ team: 'devops', dedupKey: key, action: 'trigger', event: { event_action: 'trigger', dedup_key: key, payload: { summary: 'x', source: 'x', severity: 'info' } } }));
    try {
      // Routes configured and PagerDuty up: a dispatcher in these commands would send the page at once.
      const before = pd.requests.length;
      for (const args of [['audit'], ['audit', '--json'], ['plan', 'slow-queries', '--database', db.name]]) {
        const r = await dbpilot(...args);
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      }
      expect(pd.requests.length - before).toBe(0);
      expect(readStore((st) => st.outbox().find((o) => o.dedupKey === key))).toMatchObject({ status: 'pending', attempts: 0 });
      // No routes at all: the commands that page nothing say nothing about paging.
      writeFileSync(configPath, stringify({ mode: 'dry-run', handlers: { 'slow-queries': SLOW }, pagerduty: { url: pd.url } }));
      for (const args of [['audit'], ['plan', 'slow-queries', '--database', db.name]]) {
        const r = await dbpilot(...args);
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
        expect(r.stderr, args.join(' ')).toBe('');
      }
    } finally {
      writeFileSync(
        configPath,
        stringify({
          mode: 'dry-run',
          handlers: { 'slow-queries': SLOW },
          pagerduty: { url: pd.url, routes: TEAM_KEYS, source: 'dbpilot-cli-test', timeoutMs: 2000, retry: { baseMs: 20, maxMs: 200 } },
        }),
      );
      readStore((st) => st.outboxDead(st.outbox().find((o) => o.dedupKey === key)!.id, 'test row'));
    }
  });

  it('a dry-run that found nothing to do is recorded as a dry-run, not as succeeded', async () => {
    const r = await dbpilot('remediate', 'slow-queries', '--database', db.name);
    expect(r.code, r.stderr).toBe(0);
    const [run] = readStore((st) => st.listRuns({ limit: 1 }));
    expect(run).toMatchObject({ status: 'dry_run', mode: 'dry-run', origin: 'cli' });
    expect(run!.reason).toMatch(/^dry-run: nothing to do: no query in /);
  });
});

describe('dbpilot approve', () => {
  it('carries out a run the service left waiting in approve mode, and resolves its page', async () => {
    const s = await slowQuery();
    const fp = freshFingerprint();
    const dedupKey = `dbpilot/PostgresLongRunningQueries/${fp}`;
    // The service: approve mode, same store file; cooldown 0 so the manual run above does not block.
    const h = await startRemediation({ mode: 'approve', storePath, pagerduty: pd, config: { handlers: { 'slow-queries': { ...SLOW, cooldownSeconds: 0 } } } });
    let id: string;
    try {
      const res = await h.webhook(
        payload([{ labels: { alertname: 'PostgresLongRunningQueries', remediation: 'slow-queries', team: 'oncall-backend', server: db.server, datname: db.name }, fingerprint: fp }]),
      );
      expect(res.statusCode).toBe(202);
      await h.engine.idle();
      const [waiting] = h.store.listRuns({ fingerprint: fp });
      expect(waiting).toMatchObject({ status: 'awaiting_approval', mode: 'approve' });
      id = waiting!.id;
      await until(() => pd.acceptedCount(dedupKey, 'trigger') === 1, 'the approval page');
    } finally {
      await h.close();
    }
    expect(await s.running()).toBe(true);

    // The CLI's config has the default cooldown; make it match the service's for this run.
    writeFileSync(
      configPath,
      stringify({
        mode: 'dry-run',
        handlers: { 'slow-queries': { ...SLOW, cooldownSeconds: 0 } },
        pagerduty: { url: pd.url, routes: TEAM_KEYS, source: 'dbpilot-cli-test', timeoutMs: 2000, retry: { baseMs: 20, maxMs: 200 } },
      }),
    );
    const r = await dbpilot('approve', id);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^run ${id}  slow-queries  succeeded  target `));
    expect(r.stdout).toContain('[done] cancelBackends');
    expect(await s.done).toBe('cancelled');
    expect(readStore((st) => st.getRun(id))).toMatchObject({ status: 'succeeded', approvedBy: `cli:${userInfo().username}` });
    // The child's own outbox delivered the resolve before it exited.
    expect(pd.acceptedCount(dedupKey, 'resolve')).toBe(1);
    const resolve = pd.accepted.find((e) => e.dedupKey === dedupKey && e.action === 'resolve')!;
    expect(resolve.routingKey).toBe(TEAM_KEYS['oncall-backend']);

    const twice = await dbpilot('approve', id);
    expect(twice.code).toBe(2);
    expect(twice.stderr).toContain(`dbpilot: run ${id} is succeeded, not awaiting approval [DBPILOT_RUN_NOT_WAITING]`);
  });

  it('leaves the pages it queued to the running service on the same store: each is delivered once, by the service', async () => {
    const s = await slowQuery();
    const fp = freshFingerprint();
    const dedupKey = `dbpilot/PostgresLongRunningQueries/${fp}`;
    writeFileSync(
      configPath,
      stringify({
        mode: 'dry-run',
        handlers: { 'slow-queries': { ...SLOW, cooldownSeconds: 0 } },
        pagerduty: { url: pd.url, routes: TEAM_KEYS, source: 'dbpilot-cli-test', timeoutMs: 2000, retry: { baseMs: 20, maxMs: 200 } },
      }),
    );
    const h = await startRemediation({ mode: 'approve', storePath, pagerduty: pd, config: { handlers: { 'slow-queries': { ...SLOW, cooldownSeconds: 0 } } } });
    try {
      await h.webhook(payload([{ labels: { alertname: 'PostgresLongRunningQueries', remediation: 'slow-queries', team: 'oncall-backend', server: db.server, datname: db.name }, fingerprint: fp }]));
      await h.engine.idle();
      const [waiting] = h.store.listRuns({ fingerprint: fp });
      await until(() => pd.acceptedCount(dedupKey, 'trigger') === 1, 'the approval page');
      const r = await dbpilot('approve', waiting!.id);
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
      expect(await s.done).toBe('cancelled');
      expect(r.stderr).toMatch(/^dbpilot: 1 page\(s\) waiting in the outbox are delivered by the running service \(test\/\d+\/[0-9a-f]{8}\)$/m);
      await until(() => pd.acceptedCount(dedupKey, 'resolve') === 1, 'the service to deliver the resolve the CLI queued', 15_000);
      // The stand-in counts the event before its answer reaches the service: wait for the service to log it.
      await until(() => h.log.find('escalation delivered').some((e) => e.dedupKey === dedupKey && e.action === 'resolve'), 'the service to record the delivery');
      expect(h.log.find('escalation delivered').filter((e) => e.dedupKey === dedupKey && e.action === 'resolve')).toHaveLength(1);
    } finally {
      await h.close();
    }
    expect(pd.acceptedCount(dedupKey, 'resolve')).toBe(1);
  });
});
