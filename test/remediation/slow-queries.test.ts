/**
 * Runbook scenario 2 on a real PostgreSQL: the slow-queries handler through the real engine and
 * store, with escalations going to the strict PagerDuty stand-in.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { Runtime } from '../../src/runtime.js';
import { createRemediation, type Remediation } from '../../src/remediation/index.js';
import type { AlertInfo } from '../../src/remediation/handler.js';
import { classifySessions, redactQuery, slowQueriesHandler } from '../../src/remediation/handlers/slow-queries.js';
import { createPgCluster } from '../../src/integrations/postgres.js';
import { Topology } from '../../src/topology.js';
import { until } from '../support/remediation.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';

const suffix = Math.random().toString(36).slice(2, 8);
const DB = `sq_test_${suffix}`;
const APP = `sq_app_${suffix}`;
const PROTECTED = `sq_protected_${suffix}`;
/** A superuser without the replication attribute, and a replication role that is no superuser: each rule must spare on its own. */
const SUPER_ONLY = `sq_super_${suffix}`;
const REPL_ONLY = `sq_repl_${suffix}`;
const KEY = 'k'.repeat(32);

let admin: pg.Client;
let pd: PagerDutyStandin;
let tmp: string;
let primaryServer: string;
const open: pg.Client[] = [];

function url(user: string, db = DB): string {
  const u = new URL(inject('pgPrimaryUrl'));
  u.username = user;
  u.pathname = `/${db}`;
  return u.toString();
}

/** Starts a statement in its own session and returns the session's pid and the promise of the statement. */
async function startQuery(user: string, sql: string): Promise<{ pid: number; done: Promise<unknown>; client: pg.Client }> {
  const client = new pg.Client({ connectionString: url(user), application_name: `test-${user}` });
  client.on('error', () => undefined);
  await client.connect();
  open.push(client);
  const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  const done = client.query(sql).then(
    () => ({ ok: true }),
    (err: { code?: string; message: string }) => ({ ok: false, code: err.code, message: err.message }),
  );
  return { pid, done, client };
}

async function isRunning(pid: number): Promise<boolean> {
  const r = await admin.query(`SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state <> 'idle'`, [pid]);
  return r.rowCount === 1;
}

async function waitLongRunning(pids: number[], seconds = 1): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const r = await admin.query(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ANY($1) AND state <> 'idle' AND query_start < now() - make_interval(secs => $2)`,
      [pids, seconds],
    );
    if (r.rows[0].n === pids.length) return;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error(`sessions ${pids.join(', ')} did not become long-running`);
}

async function makeRemediation(mode: 'auto' | 'dry-run' | 'approve', extra: Record<string, unknown> = {}): Promise<{ r: Remediation; runtime: Runtime; lines: string[] }> {
  const lines: string[] = [];
  const config = parseConfig(
    {
      mode,
      logLevel: 'debug',
      postgres: { primary: { url: inject('pgPrimaryUrl') }, databases: [DB], longRunningQuerySeconds: 1 },
      redis: { url: inject('redisUrl') },
      store: { path: join(tmp, `store-${Math.random().toString(36).slice(2)}.sqlite`) },
      pagerduty: { url: pd.url, routes: { 'lead-dba': KEY, 'em-dba': KEY, 'oncall-backend': KEY, devops: KEY } },
      handlers: {
        'slow-queries': {
          graceSeconds: 1,
          cooldownSeconds: 0,
          protectedRoles: [PROTECTED],
          diagnosticTables: [{ database: DB, tables: ['orders', 'payments'] }],
          ...extra,
        },
      },
    },
    {},
  );
  const logger = createLogger('debug', { write: (s: string) => void lines.push(s) } as never);
  const runtime = new Runtime(config, logger, { processMetrics: false });
  const r = await createRemediation(runtime, { label: 'test' });
  r.outbox.start();
  return { r, runtime, lines };
}

let seq = 0;
function alert(labels: Record<string, string> = {}): AlertInfo {
  seq++;
  return {
    alertname: 'PostgresLongRunningQueries',
    labels: { alertname: 'PostgresLongRunningQueries', remediation: 'slow-queries', team: 'oncall-backend', severity: 'warning', server: primaryServer, datname: DB, ...labels },
    annotations: { summary: 'long-running queries' },
    fingerprint: `${Date.now().toString(16)}${seq.toString(16).padStart(4, '0')}`,
    startsAt: new Date().toISOString(),
  };
}

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'dbpilot-sq-'));
  pd = new PagerDutyStandin();
  await pd.start();
  const u = new URL(inject('pgPrimaryUrl'));
  primaryServer = `${u.hostname}:${u.port}`;
  admin = new pg.Client({ connectionString: inject('pgPrimaryUrl') });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${DB}`);
  await admin.query(`CREATE ROLE ${APP} LOGIN`);
  await admin.query(`CREATE ROLE ${PROTECTED} LOGIN`);
  await admin.query(`CREATE ROLE ${SUPER_ONLY} LOGIN SUPERUSER NOREPLICATION`);
  await admin.query(`CREATE ROLE ${REPL_ONLY} LOGIN NOSUPERUSER REPLICATION`);
  await admin.query(`GRANT CONNECT ON DATABASE ${DB} TO ${REPL_ONLY}`);
  const db = new pg.Client({ connectionString: url('postgres') });
  await db.connect();
  await db.query(`GRANT ALL ON SCHEMA public TO ${APP}`);
  await db.query(`CREATE TABLE orders (id int PRIMARY KEY, status text); INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 1000) g; ANALYZE orders`);
  await db.query(`CREATE TABLE payments (id int PRIMARY KEY, amount numeric); INSERT INTO payments SELECT g, g FROM generate_series(1, 100) g`);
  // A query that survives pg_cancel_backend: it catches query_canceled and keeps sleeping.
  await db.query(`
    CREATE FUNCTION stubborn_sleep(total float8) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE deadline timestamptz := clock_timestamp() + make_interval(secs => total);
    BEGIN
      WHILE clock_timestamp() < deadline LOOP
        BEGIN
          PERFORM pg_sleep(0.1);
        EXCEPTION WHEN query_canceled THEN
          NULL;
        END;
      END LOOP;
    END $$`);
  await db.end();
});

// Each test starts from a database with no session of the previous one left running.
afterEach(async () => {
  await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, [DB]);
  for (const c of open.splice(0)) await c.end().catch(() => undefined);
});

afterAll(async () => {
  if (admin) {
    await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, [DB]).catch(() => undefined);
    await admin.query(`DROP DATABASE IF EXISTS ${DB}`).catch(() => undefined);
    await admin.query(`DROP ROLE IF EXISTS ${APP}`).catch(() => undefined);
    await admin.query(`DROP ROLE IF EXISTS ${PROTECTED}`).catch(() => undefined);
    await admin.query(`DROP ROLE IF EXISTS ${SUPER_ONLY}`).catch(() => undefined);
    await admin.query(`REVOKE CONNECT ON DATABASE ${DB} FROM ${REPL_ONLY}`).catch(() => undefined);
    await admin.query(`DROP ROLE IF EXISTS ${REPL_ONLY}`).catch(() => undefined);
    await admin.end();
  }
  await pd?.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('slow-queries (runbook scenario 2) on a real PostgreSQL', () => {
  it('cancels a non-protected long-running query and records every step', async () => {
    const { r, runtime } = await makeRemediation('auto');
    try {
      const q = await startQuery(APP, 'SELECT pg_sleep(60)');
      await waitLongRunning([q.pid]);
      const run = await r.engine.onFiring(alert());
      expect(run?.status).toBe('succeeded');
      expect(await q.done).toMatchObject({ ok: false, code: '57014' }); // query_canceled
      const steps = r.store.steps(run!.id);
      expect(steps.map((s) => [s.name, s.status, s.attempts])).toEqual([
        ['cancelBackends', 'done', 1],
        ['terminateBackends', 'done', 1],
      ]);
      expect(steps[0]!.command).toContain(`SELECT pg_cancel_backend(${q.pid});`);
      expect(steps[0]!.startedAt).not.toBeNull();
      expect(steps[0]!.finishedAt).not.toBeNull();
      expect(steps[0]!.check).toMatchObject({ ok: true, detail: 'all 1 cancelled queries stopped' });
      expect(steps[1]!.check).toMatchObject({ ok: true, detail: 'nothing to terminate: every query stopped on cancel' });
      const plan = r.store.getRun(run!.id)!.plan as { data: { targets: { pid: number; user: string; database: string; query: string; seconds: number; application: string }[] } };
      expect(plan.data.targets).toHaveLength(1);
      expect(plan.data.targets[0]).toMatchObject({ pid: q.pid, user: APP, database: DB, query: 'SELECT pg_sleep(60)', application: `test-${APP}` });
      expect(plan.data.targets[0]!.seconds).toBeGreaterThanOrEqual(1);
    } finally {
      await r.close();
      await runtime.close();
    }
  });

  it('terminates a query that survives cancel, after the grace period', async () => {
    const { r, runtime } = await makeRemediation('auto', { graceSeconds: 1.5 });
    try {
      const q = await startQuery(APP, 'SELECT stubborn_sleep(60)');
      await waitLongRunning([q.pid]);
      const started = Date.now();
      const run = await r.engine.onFiring(alert());
      expect(run?.status).toBe('succeeded');
      expect(Date.now() - started).toBeGreaterThanOrEqual(1500);
      const result = (await q.done) as { ok: boolean; code?: string; message: string };
      expect(result.ok).toBe(false);
      expect(result.code === '57P01' || /terminat/i.test(result.message)).toBe(true);
      expect(await isRunning(q.pid)).toBe(false);
      const steps = r.store.steps(run!.id);
      expect((steps[0]!.check as { data: { survivors: { pid: number }[] } }).data.survivors.map((s) => s.pid)).toEqual([q.pid]);
      expect(steps[1]!.check).toMatchObject({ ok: true });
      expect((steps[1]!.check as { detail: string }).detail).toContain(`terminated 1 session(s) (pids ${q.pid})`);
    } finally {
      await r.close();
      await runtime.close();
    }
  });

  it("spares a superuser's and a protected role's queries and escalates with the missing-index diagnostics", async () => {
    const { r, runtime } = await makeRemediation('auto');
    try {
      const su = await startQuery('postgres', 'SELECT pg_sleep(60)');
      const prot = await startQuery(PROTECTED, 'SELECT pg_sleep(60)');
      await waitLongRunning([su.pid, prot.pid]);
      const a = alert();
      const run = await r.engine.onFiring(a);
      expect(run?.status).toBe('escalated');
      expect(run?.reason).toMatch(/unsafe to act: 2 long-running queries belong to protected sessions/);
      expect(await isRunning(su.pid)).toBe(true);
      expect(await isRunning(prot.pid)).toBe(true);
      expect(r.store.steps(run!.id)).toEqual([]);

      await r.engine.idle();
      await r.outbox.flush();
      const dedupKey = `dbpilot/PostgresLongRunningQueries/${a.fingerprint}`;
      expect(pd.acceptedCount(dedupKey, 'trigger')).toBe(1);
      const event = pd.accepted.find((e) => e.dedupKey === dedupKey)!.event as { payload: { custom_details: Record<string, unknown>; severity: string } };
      expect(event.payload.severity).toBe('warning');
      const details = event.payload.custom_details as { team: string; diagnostics: Record<string, unknown> };
      expect(details.team).toBe('oncall-backend');
      const stats = details.diagnostics[`pg_stats ${DB}`] as { tablename: string; attname: string }[];
      expect(stats.some((s) => s.tablename === 'orders' && s.attname === 'status')).toBe(true);
      expect(String(details.diagnostics[`pg_stats ${DB} command`])).toContain("WHERE tablename IN ('orders', 'payments')");
    } finally {
      await r.close();
      await runtime.close();
    }
  });

  it('acts on the ordinary session next to a protected one, then escalates what it left alone', async () => {
    const { r, runtime } = await makeRemediation('auto');
    try {
      const app = await startQuery(APP, 'SELECT pg_sleep(60)');
      const prot = await startQuery(PROTECTED, 'SELECT pg_sleep(60)');
      await waitLongRunning([app.pid, prot.pid]);
      const run = await r.engine.onFiring(alert());
      expect(run?.status).toBe('escalated');
      expect(run?.reason).toContain('1 protected session(s) left alone');
      expect(await app.done).toMatchObject({ ok: false, code: '57014' });
      expect(await isRunning(prot.pid)).toBe(true);
    } finally {
      await r.close();
      await runtime.close();
    }
  });

  it('does not terminate a session whose query stopped on cancel inside a transaction', async () => {
    const { r, runtime } = await makeRemediation('auto');
    try {
      const client = new pg.Client({ connectionString: url(APP), application_name: `test-${APP}` });
      client.on('error', () => undefined);
      await client.connect();
      open.push(client);
      const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
      await client.query('BEGIN');
      const done = client.query('SELECT pg_sleep(60)').then(
        () => ({ ok: true }),
        (err: { code?: string }) => ({ ok: false, code: err.code }),
      );
      await waitLongRunning([pid]);
      const run = await r.engine.onFiring(alert());
      expect(run?.status).toBe('succeeded');
      expect(await done).toMatchObject({ ok: false, code: '57014' });
      // Cancelled inside a transaction the session is "idle in transaction (aborted)": stopped, not a survivor.
      expect(r.store.steps(run!.id)[1]!.check).toMatchObject({ ok: true, detail: 'nothing to terminate: every query stopped on cancel' });
      await client.query('ROLLBACK');
      expect((await client.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    } finally {
      await r.close();
      await runtime.close();
    }
  });

  it('dry-run shows the runbook commands with the real pids and changes nothing', async () => {
    const { r, runtime } = await makeRemediation('dry-run');
    try {
      const q = await startQuery(APP, 'SELECT pg_sleep(60)');
      await waitLongRunning([q.pid]);
      const run = await r.engine.onFiring(alert());
      expect(run?.status).toBe('dry_run');
      const steps = r.store.steps(run!.id);
      expect(steps.every((s) => s.status === 'planned' && s.attempts === 0)).toBe(true);
      expect(steps[0]!.command).toMatch(new RegExp(`kubectl exec -it postgres-primary-0 -n lomash-wood -- psql -U postgres -c "SELECT pg_cancel_backend\\(${q.pid}\\);"`));
      expect(steps[1]!.command).toContain(`SELECT pg_terminate_backend(${q.pid});`);
      await new Promise((res) => setTimeout(res, 1500));
      expect(await isRunning(q.pid)).toBe(true);
    } finally {
      await r.close();
      await runtime.close();
    }
  });

  it('approve mode waits with its plan, changes nothing, and acts once approved', async () => {
    const { r, runtime } = await makeRemediation('approve');
    try {
      const q = await startQuery(APP, 'SELECT pg_sleep(60)');
      await waitLongRunning([q.pid]);
      const run = await r.engine.onFiring(alert());
      expect(run?.status).toBe('awaiting_approval');
      await new Promise((res) => setTimeout(res, 1500));
      expect(await isRunning(q.pid)).toBe(true);
      const done = await r.engine.approve(run!.id, 'alice');
      expect(done.status).toBe('succeeded');
      expect(done.approvedBy).toBe('alice');
      expect(await q.done).toMatchObject({ ok: false, code: '57014' });
      await expect(r.engine.approve(run!.id, 'bob')).rejects.toThrow(/not awaiting approval/);
    } finally {
      await r.close();
      await runtime.close();
    }
  });

  it('runs VACUUM ANALYZE on the configured tables as the last step and checks it', async () => {
    const { r, runtime } = await makeRemediation('auto', { vacuumAnalyze: [{ database: DB, table: 'orders' }, { database: DB, table: 'payments' }] });
    try {
      const q = await startQuery(APP, 'SELECT pg_sleep(60)');
      await waitLongRunning([q.pid]);
      const run = await r.engine.onFiring(alert());
      expect(run?.status).toBe('succeeded');
      const steps = r.store.steps(run!.id);
      expect(steps[2]!.name).toBe(`vacuumAnalyze(${DB})`);
      expect(steps[2]!.command).toContain(`-d ${DB} -c "VACUUM ANALYZE orders; VACUUM ANALYZE payments;"`);
      expect(steps[2]!.check).toMatchObject({ ok: true });
      const stat = await new pg.Client({ connectionString: url('postgres') });
      await stat.connect();
      const rows = (await stat.query(`SELECT relname FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL AND last_analyze IS NOT NULL ORDER BY relname`)).rows;
      await stat.end();
      expect(rows.map((x) => x.relname)).toEqual(['orders', 'payments']);
    } finally {
      await r.close();
      await runtime.close();
    }
  });

  it('acts only in the database the alert names', async () => {
    const { r, runtime } = await makeRemediation('auto');
    try {
      const q = await startQuery(APP, 'SELECT pg_sleep(60)');
      await waitLongRunning([q.pid]);
      const run = await r.engine.onFiring(alert({ datname: 'postgres' }));
      expect(run?.status).toBe('succeeded');
      expect(run?.reason).toMatch(/nothing to do/);
      expect(await isRunning(q.pid)).toBe(true);
    } finally {
      await r.close();
      await runtime.close();
    }
  });
});

describe('slow-queries safety rails on a real PostgreSQL', () => {
  it('spares a superuser that has no replication attribute, and a replication role that is no superuser', async () => {
    const { r, runtime } = await makeRemediation('auto');
    try {
      const su = await startQuery(SUPER_ONLY, 'SELECT pg_sleep(60)');
      const repl = await startQuery(REPL_ONLY, 'SELECT pg_sleep(60)');
      await waitLongRunning([su.pid, repl.pid]);
      const run = await r.engine.onFiring(alert());
      expect(run?.status).toBe('escalated');
      const plan = r.store.getRun(run!.id)!.plan;
      expect(plan).toBeNull(); // refused before a plan was recorded: nothing was planned to act on
      expect(run?.reason).toContain(`superuser ${SUPER_ONLY}`);
      expect(run?.reason).toContain(`replication role ${REPL_ONLY}`);
      expect(await isRunning(su.pid)).toBe(true);
      expect(await isRunning(repl.pid)).toBe(true);
    } finally {
      await r.close();
      await runtime.close();
    }
  });

  it('refuses an alert whose server label names no configured server, instead of acting on the primary', async () => {
    const { r, runtime } = await makeRemediation('auto');
    try {
      const q = await startQuery(APP, 'SELECT pg_sleep(60)');
      await waitLongRunning([q.pid]);
      const a = alert({ server: '10.255.0.9:5432' });
      const run = await r.engine.onFiring(a);
      expect(run).toMatchObject({ status: 'escalated', target: '-', handler: 'slow-queries' });
      expect(run?.reason).toBe(`refused: server label "10.255.0.9:5432" names no configured PostgreSQL server (configured: ${primaryServer})`);
      expect(r.store.steps(run!.id)).toEqual([]);
      expect(await isRunning(q.pid)).toBe(true);
      await r.engine.idle();
      await r.outbox.flush();
      const event = pd.accepted.find((e) => e.dedupKey === `dbpilot/PostgresLongRunningQueries/${a.fingerprint}`);
      expect(event, 'the refusal is paged').toBeDefined();
      expect(JSON.stringify(event!.event)).toContain('names no configured PostgreSQL server');
    } finally {
      await r.close();
      await runtime.close();
    }
  });

  /** The handler itself, with a context of our own: plan on one connection, act on another. */
  function handlerContext(urlOptions: string, runtime: Runtime) {
    const u = new URL(inject('pgPrimaryUrl'));
    u.searchParams.set('options', urlOptions);
    const cluster = createPgCluster(
      { primary: { url: u.toString() }, replicas: [], connectTimeoutMs: 2000, queryTimeoutMs: 5000, actionTimeoutMs: 5000, poolMax: 2 },
      runtime.logger,
    );
    return {
      config: runtime.config,
      cluster,
      topology: new Topology(cluster, { probeBudgetMs: 2000 }),
      redis: runtime.redis,
      kube: null,
      intents: { where: 'nowhere', read: async () => ({ intent: null, version: null }), write: async () => '' },
      logger: runtime.logger,
    };
  }

  /** What the engine gives a step: an abort signal that never fires here, and no Lease to lose. */
  const step = () => ({ runId: 'test-run', owner: 'test/1/00000000', signal: new AbortController().signal, deadline: Date.now() + 60_000, assertCanAct: () => undefined, logger: createLogger('silent') });

  it('identifies its sessions across connections whose TimeZone and DateStyle differ', async () => {
    const { r, runtime } = await makeRemediation('auto');
    const planCtx = handlerContext('-c TimeZone=Pacific/Chatham -c DateStyle=SQL,DMY', runtime);
    const actCtx = handlerContext('-c TimeZone=America/Los_Angeles -c DateStyle=German', runtime);
    try {
      const q = await startQuery(APP, 'SELECT pg_sleep(60)');
      await waitLongRunning([q.pid]);
      const h = slowQueriesHandler();
      const plan = await h.plan(alert(), planCtx);
      expect(plan.data.targets.map((t) => t.pid)).toEqual([q.pid]);
      const [cancel] = h.steps(plan.data, actCtx);
      const out = (await cancel!.run(new Map(), step())) as { cancelled: { pid: number; signalled: boolean }[] };
      expect(out.cancelled).toEqual([{ pid: q.pid, signalled: true }]);
      expect(await q.done).toMatchObject({ ok: false, code: '57014' });
      expect(await cancel!.check(out, new Map(), step())).toMatchObject({ ok: true, detail: 'all 1 cancelled queries stopped' });
    } finally {
      await Promise.all([planCtx.cluster.close(), actCtx.cluster.close()]);
      await r.close();
      await runtime.close();
    }
  });

  it('never signals a session that moved on to another query, nor one whose pid or connection does not match the plan', async () => {
    const { r, runtime } = await makeRemediation('auto');
    const ctx = handlerContext('-c TimeZone=UTC', runtime);
    try {
      const client = new pg.Client({ connectionString: url(APP), application_name: `test-${APP}` });
      client.on('error', () => undefined);
      await client.connect();
      open.push(client);
      const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
      const first = client.query('SELECT pg_sleep(60)').catch((err: { code?: string }) => err.code);
      await waitLongRunning([pid]);
      const h = slowQueriesHandler();
      const plan = await h.plan(alert(), ctx);
      const [target] = plan.data.targets;
      expect(target?.pid).toBe(pid);

      // A plan whose connection or query start does not match the live session signals nothing.
      const shifted = (iso: string) => new Date(Date.parse(iso) - 1000).toISOString();
      for (const forged of [
        { ...target!, backendStart: shifted(target!.backendStart) },
        { ...target!, queryStart: shifted(target!.queryStart) },
        { ...target!, pid: pid + 100_000 },
      ]) {
        const [cancel] = h.steps({ ...plan.data, targets: [forged] }, ctx);
        const out = (await cancel!.run(new Map(), step())) as { cancelled: { pid: number; signalled: boolean }[] };
        expect(out.cancelled, JSON.stringify(forged)).toEqual([{ pid: forged.pid, signalled: false }]);
        expect(await isRunning(pid)).toBe(true);
      }

      // The planned query ends and the same connection starts another one: the plan no longer matches it.
      await admin.query('SELECT pg_cancel_backend($1)', [pid]);
      expect(await first).toBe('57014');
      const second = client.query('SELECT pg_sleep(60)').catch((err: { code?: string }) => err.code);
      await until(() => isRunning(pid), 'the second query to run');
      const [cancel, terminate] = h.steps(plan.data, ctx);
      const out = (await cancel!.run(new Map(), step())) as { cancelled: { pid: number; signalled: boolean }[] };
      expect(out.cancelled).toEqual([{ pid, signalled: false }]);
      const check = await cancel!.check(out, new Map(), step());
      expect(check).toMatchObject({ ok: true, data: { survivors: [] } });
      const prior = new Map([['cancelBackends', { output: out, check }]]);
      const t = (await terminate!.run(prior, step())) as { terminated: unknown[] };
      expect(t.terminated).toEqual([]);
      expect(await isRunning(pid)).toBe(true);
      await admin.query('SELECT pg_cancel_backend($1)', [pid]);
      expect(await second).toBe('57014');
    } finally {
      await ctx.cluster.close();
      await r.close();
      await runtime.close();
    }
  });
});

describe('slow-queries pure parts', () => {
  const base = { pid: 1, backendStart: 'b', queryStart: 'q', user: 'app', application: 'api', database: 'd', state: 'active', seconds: 40, query: 'x', superuser: false, replication: false };
  it.each([
    [{ application: 'dbpilot' }, "dbpilot's own session"],
    [{ superuser: true, user: 'admin' }, 'superuser admin'],
    [{ replication: true, user: 'repl' }, 'replication role repl'],
    [{ user: 'etl' }, 'protected role etl'],
    [{ application: 'pg_dump' }, 'protected application pg_dump'],
  ])('spares %j: %s', (over, reason) => {
    const res = classifySessions([{ ...base, ...over }], { protectedRoles: ['etl'], protectedApplications: ['pg_dump'], maxPerRun: 5 });
    expect(res.targets).toEqual([]);
    expect(res.spared[0]!.reason).toBe(reason);
  });

  it('acts on the oldest first up to the cap', () => {
    const rows = [10, 50, 30].map((seconds, i) => ({ ...base, pid: i + 1, seconds }));
    const res = classifySessions(rows, { protectedRoles: [], protectedApplications: [], maxPerRun: 2 });
    expect(res.targets.map((t) => t.pid)).toEqual([2, 3]);
    expect(res.overCap.map((t) => t.pid)).toEqual([1]);
  });

  it.each([
    ["ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD '?'"],
    ["CREATE USER x WITH PASSWORD 'it''s secret' LOGIN", "CREATE USER x WITH PASSWORD '?' LOGIN"],
    ["ALTER ROLE app PASSWORD E'correct horse battery'", "ALTER ROLE app PASSWORD '?'"],
    ['ALTER ROLE app PASSWORD $pw$hunter2$pw$', "ALTER ROLE app PASSWORD '?'"],
    ["SELECT dblink_connect('host=db password=hunter2 user=app')", "SELECT dblink_connect('?')"],
    ['SELECT * FROM dblink(\'postgresql://app:hunter2@db/x\', \'select 1\') AS t(i int)', "SELECT * FROM dblink('?', '?') AS t(i int)"],
    ['SELECT 1 -- postgres://app:hunter2@db/x', 'SELECT 1 -- postgres://app:***@db/x'],
    ['SELECT  1\n  FROM t', 'SELECT 1 FROM t'],
  ])('redacts %j', (q, expected) => {
    expect(redactQuery(q)).toBe(expected);
  });

  it('truncates long query text', () => {
    expect(redactQuery('x'.repeat(500))).toHaveLength(200);
  });
});
