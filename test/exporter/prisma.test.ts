/**
 * _prisma_migrations with Prisma's own DDL on the shared primary: failed migrations are counted per
 * database, and a database without the table counts 0 without any error.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { scrape, value } from '../support/scrape.js';
import { PRISMA_DDL, createTempDatabase, makeConfig, pgQuery, serverOf, startTestService, type TempDatabase, type TestService } from '../support/service.js';

const CHECKSUM = 'a'.repeat(64);

describe('prisma_migrations_failed', () => {
  let withTable: TempDatabase;
  let without: TempDatabase;
  let svc: TestService;
  let P = '';

  beforeAll(async () => {
    [withTable, without] = await Promise.all([createTempDatabase('prisma'), createTempDatabase('noprisma')]);
    P = serverOf(inject('pgPrimaryUrl'));
    await pgQuery(withTable.url, PRISMA_DDL);
    await pgQuery(
      withTable.url,
      `INSERT INTO _prisma_migrations (id, checksum, finished_at, migration_name, logs, rolled_back_at, started_at, applied_steps_count) VALUES
         (gen_random_uuid()::text, $1, now(), '20240101000000_init', NULL, NULL, now() - interval '2 days', 1),
         (gen_random_uuid()::text, $1, NULL, '20240201000000_add_orders', 'rolled back by hand', now() - interval '1 day', now() - interval '1 day', 0),
         (gen_random_uuid()::text, $1, NULL, '20240301000000_add_payments', 'Database error code: 42P07', NULL, now(), 0)`,
      [CHECKSUM],
    );
    // Read on every scrape here, so each scrape follows the table.
    svc = await startTestService(makeConfig({ postgres: { databases: [withTable.name, without.name], prismaRefreshSeconds: 0 } }));
  });

  afterAll(async () => {
    await svc?.close();
    await Promise.allSettled([withTable?.drop(), without?.drop()]);
  });

  /** The runbook's own count (Scenario 4: migrations started but neither finished nor rolled back), run by the test. */
  const serverCount = async () =>
    (await pgQuery<{ n: number }>(withTable.url, 'SELECT count(*)::int AS n FROM _prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL'))[0]!.n;

  it('counts the one failed migration, and 0 for a database without _prisma_migrations', async () => {
    const r = await scrape(svc.url);
    expect(r.status).toBe(200);
    expect(await serverCount()).toBe(1);
    expect(value(r.metrics, 'prisma_migrations_failed', { server: P, datname: withTable.name })).toBe(await serverCount());
    expect(value(r.metrics, 'prisma_migrations_failed', { server: P, datname: without.name })).toBe(0);
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'prisma_migrations' })).toBe(1);
    expect(svc.log.entries().filter((e) => e.msg === 'collector failed')).toEqual([]);
  });

  it('follows the table: another failure counts 2, resolving one as rolled back counts 1', async () => {
    await pgQuery(
      withTable.url,
      `INSERT INTO _prisma_migrations (id, checksum, migration_name) VALUES (gen_random_uuid()::text, $1, '20240401000000_interrupted')`,
      [CHECKSUM],
    );
    let r = await scrape(svc.url);
    expect(value(r.metrics, 'prisma_migrations_failed', { server: P, datname: withTable.name })).toBe(2);
    expect(await serverCount()).toBe(2);

    // What `prisma migrate resolve --rolled-back` does.
    await pgQuery(withTable.url, `UPDATE _prisma_migrations SET rolled_back_at = now() WHERE migration_name = '20240301000000_add_payments'`);
    r = await scrape(svc.url);
    expect(value(r.metrics, 'prisma_migrations_failed', { server: P, datname: withTable.name })).toBe(1);
    expect(await serverCount()).toBe(1);
    expect(value(r.metrics, 'prisma_migrations_failed', { server: P, datname: without.name })).toBe(0);
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'prisma_migrations' })).toBe(1);
  });

  it('by default is served from a cache refreshed every prismaRefreshSeconds, not read on every scrape', async () => {
    const cached = await startTestService(makeConfig({ postgres: { databases: [withTable.name], prismaRefreshSeconds: 2 } }));
    try {
      const before = await serverCount();
      expect(value((await scrape(cached.url)).metrics, 'prisma_migrations_failed', { server: P, datname: withTable.name })).toBe(before);
      await pgQuery(withTable.url, `INSERT INTO _prisma_migrations (id, checksum, migration_name) VALUES (gen_random_uuid()::text, $1, '20240501000000_cached')`, [CHECKSUM]);
      // Within the refresh interval the cached count is served.
      expect(value((await scrape(cached.url)).metrics, 'prisma_migrations_failed', { server: P, datname: withTable.name })).toBe(before);
      // After it, a scrape starts the refresh and a later one serves its count.
      await new Promise((r) => setTimeout(r, 2100));
      await scrape(cached.url);
      let seen = before;
      for (let i = 0; i < 20 && seen === before; i++) {
        seen = value((await scrape(cached.url)).metrics, 'prisma_migrations_failed', { server: P, datname: withTable.name });
        if (seen === before) await new Promise((r) => setTimeout(r, 50));
      }
      expect(seen).toBe(before + 1);
      expect(await serverCount()).toBe(before + 1);
    } finally {
      await pgQuery(withTable.url, `DELETE FROM _prisma_migrations WHERE migration_name = '20240501000000_cached'`);
      await cached.close();
    }
  });
});

describe('prisma_migrations_failed in a service schema other than public', () => {
  let db: TempDatabase;
  let P = '';
  const services: TestService[] = [];

  beforeAll(async () => {
    db = await createTempDatabase('prisma_schema');
    P = serverOf(inject('pgPrimaryUrl'));
    // A service whose datasource says ?schema=orders: Prisma creates its table there, and public has none.
    await pgQuery(db.url, `CREATE SCHEMA orders; SET search_path TO orders; ${PRISMA_DDL}`);
    await pgQuery(
      db.url,
      `INSERT INTO orders._prisma_migrations (id, checksum, finished_at, migration_name, logs, started_at, applied_steps_count) VALUES
         (gen_random_uuid()::text, $1, now(), '20240101000000_init', NULL, now() - interval '2 days', 1),
         (gen_random_uuid()::text, $1, NULL, '20240301000000_add_payments', 'Database error code: 42P07', now(), 0)`,
      [CHECKSUM],
    );
  });

  afterAll(async () => {
    await Promise.allSettled(services.map((s) => s.close()));
    await db?.drop();
  });

  const serverCount = async () =>
    (await pgQuery<{ n: number }>(db.url, 'SELECT count(*)::int AS n FROM orders._prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL'))[0]!.n;

  it('counts the failed row of the schema services[].prisma names for the database', async () => {
    const svc = await startTestService(
      makeConfig({
        postgres: { databases: [db.name] },
        services: [{ name: 'orders', healthUrl: 'http://127.0.0.1:9/health', deployment: 'orders', prisma: { database: db.name, schema: 'orders' } }],
      }),
    );
    services.push(svc);
    const r = await scrape(svc.url);
    expect(await serverCount()).toBe(1);
    expect(value(r.metrics, 'prisma_migrations_failed', { server: P, datname: db.name })).toBe(await serverCount());
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'prisma_migrations' })).toBe(1);
  });

  it('without that service configured, only public is read: the schema is not guessed', async () => {
    const svc = await startTestService(makeConfig({ postgres: { databases: [db.name] } }));
    services.push(svc);
    const r = await scrape(svc.url);
    expect(value(r.metrics, 'prisma_migrations_failed', { server: P, datname: db.name })).toBe(0);
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'prisma_migrations' })).toBe(1);
  });
});
