/**
 * pg_database_size_bytes and pg_table_size_bytes on the shared primary: the N largest tables per
 * database, served from a cache that is refreshed at most every sizeRefreshSeconds.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
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
      expect(r.metrics.help.get(name), name).toMatch(/Refreshed at most every 60 s and served from cache in between\./);
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
