/**
 * pg_stat_activity on the shared cluster: a real pg_sleep(60) from another client is a long-running
 * query; idle sessions and queries younger than the threshold are not.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { scrape, value, type ScrapeResult } from '../support/scrape.js';
import { createTempDatabase, makeConfig, pgQuery, serverOf, startTestService, type TempDatabase, type TestService } from '../support/service.js';

/** longRunningQuerySeconds of the service under test. */
const THRESHOLD_S = 1;

describe('long-running queries (pg_stat_activity)', () => {
  let db: TempDatabase;
  let svc: TestService;
  const clients: pg.Client[] = [];
  let P = '';
  let R = '';

  interface Sleeper {
    pid: number;
    /** Settles when the query ends: with its error (57014 when cancelled). */
    done: Promise<unknown>;
  }

  async function client(url: string): Promise<pg.Client> {
    const c = new pg.Client({ connectionString: url, application_name: 'activity-test' });
    c.on('error', () => {});
    await c.connect();
    clients.push(c);
    return c;
  }

  /** Seconds the query of backend `pid` has been running, by the server's clock. */
  async function queryAge(pid: number): Promise<number> {
    const [row] = await pgQuery<{ s: number | null }>(inject('pgPrimaryUrl'), 'SELECT EXTRACT(EPOCH FROM now() - query_start)::float8 AS s FROM pg_stat_activity WHERE pid = $1', [pid]);
    if (row?.s == null) throw new Error(`backend ${pid} runs no query`);
    return row.s;
  }

  /** Starts `SELECT pg_sleep(60)` on its own connection; resolves once the backend shows it active. */
  async function startSleeper(): Promise<Sleeper> {
    const c = await client(db.url);
    const [{ pid }] = (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows as [{ pid: number }];
    const done = c.query('SELECT pg_sleep(60)').catch((err: unknown) => err);
    await expect
      .poll(async () => (await pgQuery<{ state: string }>(inject('pgPrimaryUrl'), 'SELECT state FROM pg_stat_activity WHERE pid = $1', [pid]))[0]?.state, {
        timeout: 5000,
        interval: 20,
      })
      .toBe('active');
    return { pid, done };
  }

  async function cancel(...sleepers: Sleeper[]): Promise<unknown[]> {
    await pgQuery(inject('pgPrimaryUrl'), 'SELECT pg_cancel_backend(pid) FROM unnest($1::int[]) AS pid', [sleepers.map((x) => x.pid)]);
    return Promise.all(sleepers.map((x) => x.done));
  }

  /** Waits until the query of `s` is older than the threshold (and `margin` more), by the server's clock. */
  async function untilLongRunning(s: Sleeper, margin = 0.3): Promise<void> {
    await expect.poll(() => queryAge(s.pid), { timeout: 10_000, interval: 50 }).toBeGreaterThan(THRESHOLD_S + margin);
  }

  beforeAll(async () => {
    db = await createTempDatabase('activity');
    P = serverOf(inject('pgPrimaryUrl'));
    R = serverOf(inject('pgReplicaUrls')[0]!);
    svc = await startTestService(makeConfig({ postgres: { databases: [db.name], longRunningQuerySeconds: THRESHOLD_S } }));
  });

  afterAll(async () => {
    if (db) {
      await pgQuery(inject('pgPrimaryUrl'), "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'activity-test' AND datname = $1", [db.name]).catch(() => {});
    }
    await Promise.allSettled(clients.map((c) => c.end()));
    await svc?.close();
    await db?.drop();
  });

  it('counts a pg_sleep(60) running for over a second; idle sessions and young queries are not counted', async () => {
    // Idle sessions, idle for longer than the threshold by the time of the scrape (they went idle
    // before the old query started).
    const idle = await client(db.url);
    await idle.query('SELECT 1');
    await client(db.url);
    const old = await startSleeper();
    const sleepers = [old];
    try {
      await untilLongRunning(old);
      // A query younger than the threshold when the collector reads pg_stat_activity: the collector
      // compares with its own statement's now(), which lies between the two reads of the server clock
      // around the scrape. Checked after the scrape; on a machine so starved that a second passed in
      // between, the young query is replaced and the scrape repeated.
      let r: ScrapeResult | undefined;
      let oldBefore = 0;
      let oldAfter = 0;
      for (let attempt = 1; r === undefined; attempt++) {
        const young = await startSleeper();
        sleepers.push(young);
        oldBefore = await queryAge(old.pid);
        const scraped = await scrape(svc.url);
        const youngAfter = await queryAge(young.pid);
        oldAfter = await queryAge(old.pid);
        if (youngAfter < THRESHOLD_S) r = scraped;
        else if (attempt === 5) throw new Error(`the young query was ${youngAfter} s old after the scrape, ${attempt} times: the machine is too slow for this test`);
        else await cancel(young);
      }

      expect(r.status).toBe(200);
      expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'pg_stat_activity' })).toBe(1);
      expect(value(r.metrics, 'pg_long_running_queries', { server: P, datname: db.name })).toBe(1);
      // The old query's age as the collector saw it, bracketed by the server's clock before and after.
      const oldest = value(r.metrics, 'pg_long_running_queries_oldest_seconds', { server: P, datname: db.name });
      expect(oldest).toBeGreaterThanOrEqual(oldBefore);
      expect(oldest).toBeLessThanOrEqual(oldAfter);
      expect(value(r.metrics, 'pg_stat_activity_count', { server: P, datname: db.name, state: 'active' })).toBeGreaterThanOrEqual(2);
      expect(value(r.metrics, 'pg_stat_activity_count', { server: P, datname: db.name, state: 'idle' })).toBeGreaterThanOrEqual(2);
      // Its transaction is the oldest open one (a single statement: it started with the query).
      const maxTx = value(r.metrics, 'pg_stat_activity_max_tx_duration', { server: P, datname: db.name, state: 'active' });
      expect(maxTx).toBeGreaterThanOrEqual(oldBefore);
      expect(maxTx).toBeLessThanOrEqual(oldAfter);
      // The replica runs nothing in this database: a zero series, not a gap.
      expect(value(r.metrics, 'pg_long_running_queries', { server: R, datname: db.name })).toBe(0);
      expect(value(r.metrics, 'pg_long_running_queries_oldest_seconds', { server: R, datname: db.name })).toBe(0);
    } finally {
      await cancel(...sleepers);
    }
  });

  it('goes back to 0 once the queries are cancelled', async () => {
    const s = await startSleeper();
    await untilLongRunning(s, 0);
    const before = await scrape(svc.url);
    expect(value(before.metrics, 'pg_long_running_queries', { server: P, datname: db.name })).toBe(1);

    const [err] = await cancel(s);
    expect((err as { code?: string }).code).toBe('57014');
    const r = await scrape(svc.url);
    expect(value(r.metrics, 'pg_long_running_queries', { server: P, datname: db.name })).toBe(0);
    expect(value(r.metrics, 'pg_long_running_queries_oldest_seconds', { server: P, datname: db.name })).toBe(0);
  });
});
