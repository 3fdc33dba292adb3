/**
 * Safety rails of the slow-queries handler that no other test pinned down (found by mutation testing,
 * `npm run mutate`): the grace period is given before anyone is terminated; the sessions over the
 * per-run cap are escalated, not silently left; the checks after terminate and after VACUUM can fail;
 * a VACUUM that cannot get its lock fails instead of hanging; the runbook command names the schema;
 * the page lists the sessions and only the alert's database; and no secret survives redaction.
 *
 * Real PostgreSQL: a database and a non-superuser role of this file's own on the shared primary
 * (test/support/remediation.ts), every alert naming that database.
 */
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import type { AlertInfo, HandlerContext, PriorStep, StepContext } from '../../src/remediation/handler.js';
import { createLogger } from '../../src/logger.js';
import { redactQuery, slowQueriesHandler, type Session, type SlowQueriesPlan } from '../../src/remediation/handlers/slow-queries.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { createSlowQueryDb, freshFingerprint, startRemediation, teamOfKey, until, type RemediationHarness, type SlowQueryDb } from '../support/remediation.js';

const pd = new PagerDutyStandin();
let db: SlowQueryDb;
const clients: pg.Client[] = [];
const harnesses: RemediationHarness[] = [];

function dbUrl(user?: string): string {
  const u = new URL(inject('pgPrimaryUrl'));
  u.pathname = `/${db.name}`;
  if (user) u.username = user;
  return u.toString();
}

/** One statement as the superuser in this file's database. */
async function admin<T extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: dbUrl(), connectionTimeoutMillis: 5000 });
  c.on('error', () => undefined);
  await c.connect();
  try {
    return (await c.query<T>(sql, params)).rows;
  } finally {
    await c.end().catch(() => undefined);
  }
}

interface Started {
  pid: number;
  client: pg.Client;
  /** 'finished', 'cancelled' (57014) or 'terminated' (57P01 / connection lost). */
  done: Promise<string>;
}

/** A session of the file's role (application `application`), running `sql`; resolves once it runs. */
async function startAs(sql: string, application = 'orders-service'): Promise<Started> {
  const client = new pg.Client({ connectionString: dbUrl(db.role), application_name: application, connectionTimeoutMillis: 5000 });
  client.on('error', () => undefined);
  await client.connect();
  clients.push(client);
  const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  const done = client.query(sql).then(
    () => 'finished',
    (err: { code?: string; message?: string }) =>
      err.code === '57014' ? 'cancelled' : err.code === '57P01' || /terminat/i.test(err.message ?? '') ? 'terminated' : (err.code ?? String(err.message)),
  );
  await until(async () => (await admin(`SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'`, [pid])).length === 1, `session ${pid} to run its query`);
  return { pid, client, done };
}

/** Waits on the server's clock until every one of these sessions' queries is older than `seconds`. */
async function olderThan(pids: number[], seconds: number): Promise<void> {
  await until(
    async () =>
      (await admin<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ANY($1) AND state <> 'idle' AND query_start < now() - make_interval(secs => $2)`, [pids, seconds]))[0]!.n ===
      pids.length,
    `sessions ${pids.join(', ')} to be long-running`,
  );
}

async function running(pid: number): Promise<boolean> {
  return (await admin(`SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'`, [pid])).length === 1;
}

async function harness(mode: 'auto' | 'dry-run', slowQueries: Record<string, unknown> = {}): Promise<RemediationHarness> {
  const h = await startRemediation({
    mode,
    pagerduty: pd,
    config: { handlers: { 'slow-queries': { thresholdSeconds: 0.2, graceSeconds: 5, cooldownSeconds: 0, diagnosticTables: [], ...slowQueries } } },
  });
  harnesses.push(h);
  return h;
}

function alert(labels: Record<string, string | undefined> = {}): AlertInfo {
  const all: Record<string, string | undefined> = {
    alertname: 'PostgresLongRunningQueries',
    remediation: 'slow-queries',
    severity: 'warning',
    team: 'oncall-backend',
    server: db.server,
    datname: db.name,
    ...labels,
  };
  const defined = Object.fromEntries(Object.entries(all).filter((e): e is [string, string] => e[1] !== undefined));
  return { alertname: 'PostgresLongRunningQueries', labels: defined, annotations: { summary: 'long-running queries' }, fingerprint: freshFingerprint(), startsAt: new Date().toISOString() };
}

/** The context the engine gives its handlers, on the harness's own connections. */
function ctxOf(h: RemediationHarness): HandlerContext {
  return {
    config: h.config,
    cluster: h.runtime.cluster,
    topology: h.runtime.topology,
    redis: h.runtime.redis,
    kube: null,
    intents: { where: 'nowhere', read: async () => ({ intent: null, version: null }), write: async () => '' },
    logger: h.runtime.logger,
  };
}

/** What the engine gives a step: an abort signal that never fires here, and no Lease to lose. */
function stepCtx(): StepContext {
  return { runId: 'rails-run', owner: 'test/1/00000000', signal: new AbortController().signal, deadline: Date.now() + 60_000, assertCanAct: () => undefined, logger: createLogger('silent') };
}

/** A session as a plan names it: by pid, connection start and query start (ISO UTC, as the plan records them). */
async function asPlanned(pid: number): Promise<Session> {
  const [row] = await admin<{ backend_start: string; query_start: string; usename: string; application_name: string; state: string; query: string }>(
    `SELECT to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS backend_start,
            to_char(query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS query_start, usename, application_name, state, query
     FROM pg_stat_activity WHERE pid = $1`,
    [pid],
  );
  return { pid, backendStart: row!.backend_start, queryStart: row!.query_start, user: row!.usename, application: row!.application_name, database: db.name, state: row!.state, seconds: 60, query: row!.query };
}

function planOf(targets: Session[], vacuum: SlowQueriesPlan['vacuum'] = []): SlowQueriesPlan {
  return { server: db.server, database: db.name, thresholdSeconds: 0.2, graceSeconds: 0, targets, spared: [], overCap: [], vacuum };
}

beforeAll(async () => {
  await pd.start();
  db = await createSlowQueryDb('rails');
  // Stops on cancel, but only half a second later: well inside the grace period.
  await admin(`
    CREATE FUNCTION slow_to_stop() RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
      BEGIN
        PERFORM pg_sleep(60);
      EXCEPTION WHEN query_canceled THEN
        PERFORM pg_sleep(0.5);
      END;
    END $$`);
  await admin(`CREATE TABLE rails_orders (id int PRIMARY KEY); INSERT INTO rails_orders SELECT generate_series(1, 100)`);
  await admin(`CREATE SCHEMA sales; CREATE TABLE sales.rails_ledger (id int PRIMARY KEY); INSERT INTO sales.rails_ledger SELECT generate_series(1, 100)`);
  await admin(`CREATE TABLE rails_locked (id int PRIMARY KEY)`);
});
afterAll(async () => {
  await pd.close();
  await db?.drop();
});
afterEach(async () => {
  await Promise.all(harnesses.splice(0).map((h) => h.close()));
  // Every session of this file's database ends with its test (blockers included).
  await admin('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()');
  await Promise.allSettled(clients.splice(0).map((c) => c.end()));
  pd.reset();
});

describe('slow-queries rails on a real PostgreSQL', () => {
  it('gives cancel the grace period: a query that stops half a second after its cancel is never terminated', async () => {
    const h = await harness('auto', { graceSeconds: 5 });
    const s = await startAs('SELECT slow_to_stop()');
    await olderThan([s.pid], 0.2);
    const run = await h.engine.onFiring(alert());
    expect(run?.status, String(run?.reason)).toBe('succeeded');
    // The query ended by itself after the cancel (the function caught it), and its connection lives on.
    expect(await s.done).toBe('finished');
    expect((await s.client.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    const steps = h.store.steps(run!.id);
    expect(steps[0]!.check).toMatchObject({ ok: true, detail: 'all 1 cancelled queries stopped', data: { survivors: [] } });
    expect(steps[1]!.output).toMatchObject({ survivors: [], terminated: [] });
    expect(steps[1]!.check).toMatchObject({ ok: true, detail: 'nothing to terminate: every query stopped on cancel' });
  });

  it('acts on the oldest up to maxPerRun, leaves the others running, and escalates them instead of succeeding', async () => {
    const h = await harness('auto', { maxPerRun: 1 });
    const oldest = await startAs('SELECT pg_sleep(60)');
    const younger = await startAs('SELECT pg_sleep(60)');
    await olderThan([oldest.pid, younger.pid], 0.2);
    const a = alert();
    const run = await h.engine.onFiring(a);
    expect(run?.status).toBe('escalated');
    expect(run?.reason).toBe('completed, but 1 more session(s) over the per-run cap of 1');
    expect(await oldest.done).toBe('cancelled');
    expect(await running(younger.pid)).toBe(true);
    await h.settle();
    const page = pd.accepted.find((e) => e.dedupKey === `dbpilot/PostgresLongRunningQueries/${a.fingerprint}` && e.action === 'trigger');
    expect(page, 'the sessions left over the cap are paged').toBeDefined();
    const sessions = (page!.event as { payload: { custom_details: { diagnostics: { sessions: { acted_on: Session[]; over_cap: Session[] } } } } }).payload.custom_details.diagnostics.sessions;
    expect(sessions.acted_on.map((x) => x.pid)).toEqual([oldest.pid]);
    expect(sessions.over_cap.map((x) => x.pid)).toEqual([younger.pid]);
  });

  it("pages the sessions it acted on and spared, the alert's database's diagnostics only, to on-call backend when the alert names no team", async () => {
    const h = await harness('auto', {
      protectedApplications: ['rails-protected'],
      diagnosticTables: [
        { database: db.name, tables: ['rails_orders'] },
        { database: 'postgres', tables: ['rails_elsewhere'] },
      ],
      vacuumAnalyze: [
        { database: db.name, table: 'rails_orders' },
        { database: 'postgres', table: 'rails_elsewhere' },
      ],
    });
    const acted = await startAs('SELECT pg_sleep(60)');
    const spared = await startAs('SELECT pg_sleep(60)', 'rails-protected');
    await olderThan([acted.pid, spared.pid], 0.2);
    const a = alert({ team: undefined });
    const run = await h.engine.onFiring(a);
    expect(run?.status).toBe('escalated');
    expect(run?.reason).toBe('completed, but 1 protected session(s) left alone');
    expect(await acted.done).toBe('cancelled');
    expect(await running(spared.pid)).toBe(true);
    // VACUUM only in the database the alert names.
    expect(h.store.steps(run!.id).map((st) => [st.name, st.status])).toEqual([
      ['cancelBackends', 'done'],
      ['terminateBackends', 'done'],
      [`vacuumAnalyze(${db.name})`, 'done'],
    ]);

    await h.settle();
    const page = pd.accepted.find((e) => e.dedupKey === `dbpilot/PostgresLongRunningQueries/${a.fingerprint}` && e.action === 'trigger');
    expect(page, 'the escalation reached PagerDuty').toBeDefined();
    expect(teamOfKey(page!.routingKey)).toBe('oncall-backend');
    const diagnostics = (page!.event as { payload: { custom_details: { diagnostics: Record<string, unknown> } } }).payload.custom_details.diagnostics;
    const sessions = diagnostics.sessions as { acted_on: Session[]; spared: (Session & { reason: string })[]; over_cap: Session[] };
    expect(sessions.acted_on.map((x) => x.pid)).toEqual([acted.pid]);
    expect(sessions.spared.map((x) => [x.pid, x.reason])).toEqual([[spared.pid, 'protected application rails-protected']]);
    expect(sessions.over_cap).toEqual([]);
    expect(Object.keys(diagnostics).sort()).toEqual([`pg_stats ${db.name}`, `pg_stats ${db.name} command`, 'sessions']);
    expect(String(diagnostics[`pg_stats ${db.name} command`])).toContain(` -d ${db.name} -c "SELECT schemaname, tablename, attname, n_distinct, correlation FROM pg_stats WHERE tablename IN ('rails_orders')`);
  });

  it('fails the VACUUM step when its lock cannot be had (lock_timeout), instead of waiting on the transaction that holds it', async () => {
    const h = await harness('auto', { vacuumAnalyze: [{ database: db.name, table: 'rails_locked' }] });
    const blocker = new pg.Client({ connectionString: dbUrl() });
    blocker.on('error', () => undefined);
    await blocker.connect();
    clients.push(blocker);
    await blocker.query('BEGIN');
    await blocker.query('LOCK TABLE rails_locked IN SHARE UPDATE EXCLUSIVE MODE');
    const s = await startAs('SELECT pg_sleep(60)');
    await olderThan([s.pid], 0.2);
    const run = await h.engine.onFiring(alert());
    expect(run?.status).toBe('failed');
    expect(run?.reason).toMatch(/^step vacuumAnalyze\(.+\) failed: .*lock timeout/);
    const steps = h.store.steps(run!.id);
    expect(steps.map((st) => [st.name, st.status])).toEqual([
      ['cancelBackends', 'done'],
      ['terminateBackends', 'done'],
      [`vacuumAnalyze(${db.name})`, 'error'],
    ]);
    await blocker.query('ROLLBACK');
  });
});

describe('slow-queries checks and commands (the handler on a real PostgreSQL)', () => {
  it('the check after terminate fails while a session it signalled is still connected', async () => {
    const h = await harness('auto');
    const s = await startAs('SELECT pg_sleep(60)');
    const session = await asPlanned(s.pid);
    const [, terminate] = slowQueriesHandler().steps(planOf([session]), ctxOf(h));
    const prior = new Map<string, PriorStep>([['cancelBackends', { output: {}, check: { ok: true, detail: 'x', data: { survivors: [session] } } }]]);
    // A backend that cannot act on the signal yet (stopped by the OS): pg_terminate_backend is sent, the session stays.
    process.kill(s.pid, 'SIGSTOP');
    let out: unknown;
    try {
      out = await terminate!.run(prior, stepCtx());
      expect(out).toMatchObject({ terminated: [{ pid: s.pid, signalled: true }] });
      expect(await terminate!.check(out, prior, stepCtx())).toEqual({ ok: false, detail: `1 session(s) still connected after pg_terminate_backend (pids ${s.pid})` });
    } finally {
      process.kill(s.pid, 'SIGCONT');
    }
    // Once it has acted on the signal, the same check passes.
    expect(await s.done).toBe('terminated');
    expect(await terminate!.check(out, prior, stepCtx())).toMatchObject({ ok: true, detail: `terminated 1 session(s) (pids ${s.pid})` });
  });

  it('the check after terminate passes for a survivor whose query ended on its own before the terminate (its idle connection is left alone)', async () => {
    const h = await harness('auto');
    const s = await startAs('SELECT pg_sleep(0.5)');
    const session = await asPlanned(s.pid);
    const [, terminate] = slowQueriesHandler().steps(planOf([session]), ctxOf(h));
    const prior = new Map<string, PriorStep>([['cancelBackends', { output: {}, check: { ok: true, detail: 'x', data: { survivors: [session] } } }]]);
    expect(await s.done).toBe('finished');
    const out = await terminate!.run(prior, stepCtx());
    // Not signalled: the connection moved on from the planned query.
    expect(out).toMatchObject({ terminated: [{ pid: s.pid, signalled: false }] });
    expect(await terminate!.check(out, prior, stepCtx())).toEqual({ ok: true, detail: `terminated 0 session(s); 1 had finished on their own (pids ${s.pid})` });
    // The service's connection is still there and usable.
    expect((await s.client.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one).toBe(1);
  });

  it('VACUUM ANALYZE names the schema in the runbook command, runs in every schema, and its check fails when no vacuum is recorded since the step began', async () => {
    const h = await harness('auto');
    const vacuum = [
      { database: db.name, schema: 'public', table: 'rails_orders' },
      { database: db.name, schema: 'sales', table: 'rails_ledger' },
    ];
    const steps = slowQueriesHandler().steps(planOf([], vacuum), ctxOf(h));
    // Every step may be repeated after a crash: the engine repeats an unverified step only when it is idempotent.
    expect(steps.map((st) => [st.name, st.idempotent])).toEqual([
      ['cancelBackends', true],
      ['terminateBackends', true],
      [`vacuumAnalyze(${db.name})`, true],
    ]);
    const step = steps[2]!;
    expect(step.command).toContain(` -d ${db.name} -c "VACUUM ANALYZE rails_orders; VACUUM ANALYZE sales.rails_ledger;"`);
    const out = await step.run(new Map(), stepCtx());
    expect(out).toMatchObject({ tables: ['public.rails_orders', 'sales.rails_ledger'] });
    const check = await step.check(out, new Map(), stepCtx());
    expect(check.ok).toBe(true);
    expect(check.detail).toMatch(new RegExp(`^vacuumed and analyzed (rails_orders, rails_ledger|rails_ledger, rails_orders) in ${db.name}$`));
    // Nothing vacuumed after this instant: the check must say so.
    expect(await step.check({ ...(out as object), startedAt: '2999-01-01T00:00:00.000000Z' }, new Map(), stepCtx())).toEqual({
      ok: false,
      detail: `no vacuum/analyze recorded for rails_orders, rails_ledger in ${db.name}`,
    });
  });
});

describe('redaction of query text (pure)', () => {
  it.each([
    ['ALTER ROLE app PASSWORD $$correct horse battery$$', "ALTER ROLE app PASSWORD '?'"],
    ['ALTER ROLE app PASSWORD $pw$correct horse battery$pw$ VALID UNTIL NULL', "ALTER ROLE app PASSWORD '?' VALID UNTIL NULL"],
    // Query text is cut at 400 characters: a literal may be cut off before it closes.
    ['ALTER ROLE app PASSWORD $pw$hunter2-cut-off', "ALTER ROLE app PASSWORD '?'"],
    ["ALTER ROLE app PASSWORD 'hunter2-cut-off", "ALTER ROLE app PASSWORD '?'"],
    ["ALTER ROLE app PASSWORD E'hunter2\\'s-cut-off", "ALTER ROLE app PASSWORD '?'"],
  ])('leaves no secret in %j', (query, expected) => {
    const redacted = redactQuery(query);
    expect(redacted).toBe(expected);
    expect(redacted).not.toMatch(/horse|hunter2/);
  });

  it('keeps 200 characters whole and cuts longer text to 200 with an ellipsis', () => {
    expect(redactQuery('x'.repeat(200))).toBe('x'.repeat(200));
    expect(redactQuery('x'.repeat(201))).toBe(`${'x'.repeat(199)}…`);
  });
});
