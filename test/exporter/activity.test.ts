/**
 * pg_stat_activity on the shared cluster: a real pg_sleep(60) from another client is a long-running
 * query; idle sessions and queries younger than the threshold are not.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { scrape, value } from '../support/scrape.js';
import { createTempDatabase, makeConfig, pgQuery, serverOf, startTestService, type TempDatabase, type TestService } from '../support/service.js';

describe('long-running queries (pg_stat_activity)', () => {
  let db: TempDatabase;
  let svc: TestService;
  const clients: pg.Client[] = [];
  const running: Promise<unknown>[] = [];
  let P = '';
  let R = '';

  async function client(url: string): Promise<pg.Client> {
    const c = new pg.Client({ connectionString: url, application_name: 'activity-test' });
    c.on('error', () => {});
    await c.connect();
    clients.push(c);
    return c;
  }

  /** Starts `SELECT pg_sleep(60)` on its own connection; resolves with the backend pid once it is active. */
  async function startSleeper(): Promise<number> {
    const c = await client(db.url);
    const [{ pid }] = (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows as [{ pid: number }];
    running.push(c.query('SELECT pg_sleep(60)').catch((err: unknown) => err));
    await expect
      .poll(async () => (await pgQuery<{ state: string }>(inject('pgPrimaryUrl'), 'SELECT state FROM pg_stat_activity WHERE pid = $1', [pid]))[0]?.state, {
        timeout: 5000,
        interval: 20,
      })
      .toBe('active');
    return pid;
  }

  async function cancelAll(): Promise<void> {
    await pgQuery(inject('pgPrimaryUrl'), "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'activity-test' AND datname = $1", [db.name]);
    await Promise.all(running);
  }

  beforeAll(async () => {
    db = await createTempDatabase('activity');
    P = serverOf(inject('pgPrimaryUrl'));
    R = serverOf(inject('pgReplicaUrls')[0]!);
    svc = await startTestService(makeConfig({ postgres: { databases: [db.name], longRunningQuerySeconds: 1 } }));
  });

  afterAll(async () => {
    if (db) await cancelAll().catch(() => {});
    await Promise.allSettled(clients.map((c) => c.end()));
    await svc?.close();
    await db?.drop();
  });

  it('counts a pg_sleep(60) running for over a second; idle sessions and young queries are not counted', async () => {
    // Idle sessions, idle for longer than the threshold by the time of the scrape.
    const idle = await client(db.url);
    await idle.query('SELECT 1');
    await client(db.url);
    const pid = await startSleeper();
    await sleep(1300);
    // Active, but younger than longRunningQuerySeconds.
    await startSleeper();

    const r = await scrape(svc.url);
    expect(r.status).toBe(200);
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'pg_stat_activity' })).toBe(1);
    expect(value(r.metrics, 'pg_long_running_queries', { server: P, datname: db.name })).toBe(1);
    const oldest = value(r.metrics, 'pg_long_running_queries_oldest_seconds', { server: P, datname: db.name });
    expect(oldest).toBeGreaterThanOrEqual(1.3);
    expect(oldest).toBeLessThan(30);
    expect(value(r.metrics, 'pg_stat_activity_count', { server: P, datname: db.name, state: 'active' })).toBeGreaterThanOrEqual(2);
    expect(value(r.metrics, 'pg_stat_activity_count', { server: P, datname: db.name, state: 'idle' })).toBeGreaterThanOrEqual(2);
    expect(value(r.metrics, 'pg_stat_activity_max_tx_duration', { server: P, datname: db.name, state: 'active' })).toBeGreaterThanOrEqual(1.3);
    // The replica runs nothing in this database: a zero series, not a gap.
    expect(value(r.metrics, 'pg_long_running_queries', { server: R, datname: db.name })).toBe(0);
    expect(value(r.metrics, 'pg_long_running_queries_oldest_seconds', { server: R, datname: db.name })).toBe(0);
    expect(pid).toBeGreaterThan(0);
  });

  it('goes back to 0 once the queries are cancelled', async () => {
    await cancelAll();
    for (const err of await Promise.all(running)) expect((err as { code?: string }).code).toBe('57014');
    const r = await scrape(svc.url);
    expect(value(r.metrics, 'pg_long_running_queries', { server: P, datname: db.name })).toBe(0);
    expect(value(r.metrics, 'pg_long_running_queries_oldest_seconds', { server: P, datname: db.name })).toBe(0);
  });
});
