/**
 * pg_database_size_bytes and pg_table_size_bytes on the shared primary: the N largest tables per
 * database, served from a cache that is refreshed at most every sizeRefreshSeconds. And on a private
 * cluster that the test freezes: a failed refresh is retried within seconds, not after a whole
 * sizeRefreshSeconds, while the last good sizes stay served with their time.
 */
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startPgCluster, type PgCluster } from '../support/pg-cluster.js';
import { find, scrape, value } from '../support/scrape.js';
import { createTempDatabase, makeConfig, pgQuery, serverOf, startTestService, type TempDatabase, type TestService } from '../support/service.js';

const TABLE_SIZES = `SELECT c.relname, pg_total_relation_size(c.oid)::float8 AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname = 'public' ORDER BY 2 DESC`;

describe('database and table sizes', () => {
  let db: TempDatabase;
  let svc: TestService;
  let P = '';
  let expected: { relname: string; bytes: number }[] = [];

  beforeAll(async () => {
    db = await createTempDatabase('sizes');
    P = serverOf(inject('pgPrimaryUrl'));
    // Fifteen tables, table i holding i × 500 rows of ~100 bytes: every size differs by several pages.
    const ddl = Array.from({ length: 15 }, (_, k) => {
      const i = k + 1;
      const t = `t${String(i).padStart(2, '0')}`;
      return `CREATE TABLE ${t} (id int PRIMARY KEY, pad text); INSERT INTO ${t} SELECT g, repeat('x', 100) FROM generate_series(1, ${i * 500}) g;`;
    }).join('\n');
    await pgQuery(db.url, ddl);
    // VACUUM now creates the visibility map and free-space map, so autovacuum cannot change the sizes mid-test.
    await pgQuery(db.url, 'VACUUM');
    expected = await pgQuery<{ relname: string; bytes: number }>(db.url, TABLE_SIZES);
    svc = await startTestService(makeConfig({ postgres: { databases: [db.name, 'postgres'], tableSizeTopN: 10, sizeRefreshSeconds: 60 } }));
  });

  afterAll(async () => {
    await svc?.close();
    await db?.drop();
  });

  it('exports exactly the 10 largest tables of the database, with their sizes', async () => {
    expect(expected).toHaveLength(15);
    expect(new Set(expected.map((t) => t.bytes)).size).toBe(15);
    const top10 = expected.slice(0, 10);
    expect(top10.map((t) => t.relname).sort()).toEqual(['t06', 't07', 't08', 't09', 't10', 't11', 't12', 't13', 't14', 't15']);

    const r = await scrape(svc.url);
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'pg_sizes' })).toBe(1);
    const series = find(r.metrics, 'pg_table_size_bytes', { datname: db.name });
    expect(series).toHaveLength(10);
    expect(
      series.map((s) => ({ ...s.labels, bytes: s.value })).sort((a, b) => b.bytes - a.bytes),
    ).toEqual(top10.map((t) => ({ server: P, datname: db.name, schemaname: 'public', relname: t.relname, bytes: t.bytes })));
  });

  it('exports pg_database_size_bytes for exactly the configured databases', async () => {
    const r = await scrape(svc.url);
    const dbs = find(r.metrics, 'pg_database_size_bytes');
    expect(dbs.map((s) => s.labels.datname).sort()).toEqual([db.name, 'postgres'].sort());
    const [{ bytes }] = (await pgQuery<{ bytes: number }>(db.url, 'SELECT pg_database_size(current_database())::float8 AS bytes')) as [{ bytes: number }];
    const exported = value(r.metrics, 'pg_database_size_bytes', { server: P, datname: db.name });
    // 15 tables of up to 7500 rows: well over a megabyte, and what pg_database_size says give or take catalog churn.
    expect(exported).toBeGreaterThan(1_000_000);
    expect(Math.abs(exported - bytes) / bytes).toBeLessThan(0.05);
    expect(value(r.metrics, 'pg_database_size_bytes', { server: P, datname: 'postgres' })).toBeGreaterThan(1_000_000);
  });

  it('says in HELP that sizes are cached, and serves them from the cache', async () => {
    const r = await scrape(svc.url);
    for (const name of ['pg_table_size_bytes', 'pg_database_size_bytes']) {
      expect(r.metrics.help.get(name), name).toMatch(/Refreshed at most every 60 s and served from cache in between; after a failed refresh the last good values stay served/);
    }
    expect(r.metrics.help.get('pg_table_size_bytes')).toMatch(/\b10 largest tables per database\b/);

    // A new table larger than all others is not seen until the next refresh (60 s away).
    await pgQuery(db.url, "CREATE TABLE t16 (id int PRIMARY KEY, pad text); INSERT INTO t16 SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g");
    const again = await scrape(svc.url);
    expect(find(again.metrics, 'pg_table_size_bytes', { datname: db.name, relname: 't16' })).toEqual([]);
    expect(find(again.metrics, 'pg_table_size_bytes', { datname: db.name })).toHaveLength(10);
  });

  it('refreshes after sizeRefreshSeconds', async () => {
    const quick = await startTestService(makeConfig({ postgres: { databases: [db.name], tableSizeTopN: 10, sizeRefreshSeconds: 1 } }));
    try {
      await scrape(quick.url);
      await pgQuery(db.url, "CREATE TABLE t17 (id int PRIMARY KEY, pad text); INSERT INTO t17 SELECT g, repeat('x', 100) FROM generate_series(1, 30000) g");
      await sleep(1100);
      await expect
        .poll(async () => find((await scrape(quick.url)).metrics, 'pg_table_size_bytes', { datname: db.name, relname: 't17' }).length, { timeout: 5000, interval: 100 })
        .toBe(1);
      const r = await scrape(quick.url);
      expect(find(r.metrics, 'pg_table_size_bytes', { datname: db.name })).toHaveLength(10);
      expect(r.metrics.help.get('pg_table_size_bytes')).toMatch(/Refreshed at most every 1 s/);
    } finally {
      await quick.close();
    }
  });
});

/** SIGSTOP the postmaster and every backend of a data directory; returns the function that resumes them. */
function freeze(dataDir: string): () => void {
  const postmaster = Number(fs.readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const pids = [postmaster];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === postmaster) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  for (const pid of pids) process.kill(pid, 'SIGSTOP');
  return () => {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // gone
      }
    }
  };
}

describe('a size refresh that fails while PostgreSQL hangs (private cluster)', () => {
  // Long enough beside the 5 s retry that a retry that fails once more still recovers well inside it.
  const REFRESH_S = 20;
  let cluster: PgCluster;
  let svc: TestService;
  let P = '';

  beforeAll(async () => {
    cluster = await startPgCluster({ replicas: 0 });
    P = `127.0.0.1:${cluster.primary.port}`;
    svc = await startTestService(
      makeConfig({
        postgres: { primary: { url: cluster.primary.url() }, replicas: [], databases: ['postgres'], sizeRefreshSeconds: REFRESH_S },
        collectors: { timeoutMs: 800 },
      }),
    );
  });
  afterAll(async () => {
    await svc?.close();
    await cluster?.stop();
  });

  it('serves the last good sizes with their time, reports the failure, and is back to 1 within seconds of PostgreSQL', async () => {
    const first = await scrape(svc.url);
    expect(value(first.metrics, 'dbpilot_collector_success', { collector: 'pg_sizes' })).toBe(1);
    const goodSize = value(first.metrics, 'pg_database_size_bytes', { server: P, datname: 'postgres' });
    const goodAt = value(first.metrics, 'dbpilot_pg_sizes_last_success_timestamp_seconds');
    expect(Math.abs(goodAt * 1000 - Date.now())).toBeLessThan(REFRESH_S * 1000);

    // Hang the server once the next refresh is due: that refresh fails.
    await sleep(Math.max(0, goodAt * 1000 + REFRESH_S * 1000 - Date.now()));
    let failedSeenAt = 0;
    const thaw = freeze(cluster.primary.dataDir);
    try {
      await expect
        .poll(async () => value((await scrape(svc.url)).metrics, 'dbpilot_collector_success', { collector: 'pg_sizes' }), { timeout: 10_000, interval: 100 })
        .toBe(0);
      failedSeenAt = Date.now();
      const during = await scrape(svc.url);
      expect(value(during.metrics, 'dbpilot_collector_success', { collector: 'pg_sizes' })).toBe(0);
      // The reason is PostgreSQL's (a timeout), not the collector budget's.
      const why = svc.runtime.exporter.registry.last.get('pg_sizes')!.errors;
      expect(why).toHaveLength(1);
      expect(why[0]).toMatch(/timeout|timed out/i);
      // The last good sizes are still served, with the time they were read: their age shows.
      expect(value(during.metrics, 'pg_database_size_bytes', { server: P, datname: 'postgres' })).toBe(goodSize);
      expect(value(during.metrics, 'dbpilot_pg_sizes_last_success_timestamp_seconds')).toBe(goodAt);
      expect(during.metrics.help.get('dbpilot_pg_sizes_last_success_timestamp_seconds')).toMatch(/age is time\(\) minus this/);
    } finally {
      thaw();
    }

    // PostgreSQL is back: the failed refresh is retried at a scrape within seconds, and that scrape
    // reports success with fresh sizes — well before a whole sizeRefreshSeconds after the failure.
    await expect
      .poll(async () => value((await scrape(svc.url)).metrics, 'dbpilot_collector_success', { collector: 'pg_sizes' }), { timeout: 20_000, interval: 100 })
      .toBe(1);
    const backAt = Date.now();
    expect(backAt - failedSeenAt).toBeLessThan(REFRESH_S * 1000);
    const after = await scrape(svc.url);
    expect(value(after.metrics, 'pg_up', { server: P, role: 'primary' })).toBe(1);
    const freshAt = value(after.metrics, 'dbpilot_pg_sizes_last_success_timestamp_seconds');
    expect(freshAt * 1000).toBeGreaterThan(failedSeenAt);
    expect(freshAt * 1000).toBeLessThanOrEqual(backAt);
    expect(find(after.metrics, 'pg_database_size_bytes', { server: P, datname: 'postgres' })).toHaveLength(1);
  });
});
