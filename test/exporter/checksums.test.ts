/**
 * Data checksums, on clusters of the test's own: one initialised with checksums (primary + replica),
 * one without. pg_settings_data_checksums{server} says which (compared with `SHOW data_checksums` on
 * each server), so an absent pg_stat_database_checksum_failures is never mistaken for "no corruption";
 * and a page corrupted on disk is counted exactly as PostgreSQL counts it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPgCluster, type PgCluster } from '../support/pg-cluster.js';
import { find, scrape, value } from '../support/scrape.js';
import { makeConfig, pgQuery, serverOf, startTestService, withDatabase, type TestService } from '../support/service.js';

const DB = 'checksum_test';

async function showChecksums(url: string): Promise<string> {
  const [row] = await pgQuery<{ data_checksums: string }>(url, 'SHOW data_checksums');
  return row!.data_checksums;
}

describe('data checksums (private clusters)', () => {
  let on: PgCluster;
  let off: PgCluster;
  let svcOn: TestService;
  let svcOff: TestService;

  beforeAll(async () => {
    const [a, b] = await Promise.allSettled([startPgCluster({ replicas: 1, dataChecksums: true }), startPgCluster({ replicas: 0, dataChecksums: false })]);
    if (a.status === 'fulfilled') on = a.value;
    if (b.status === 'fulfilled') off = b.value;
    if (a.status === 'rejected') throw a.reason;
    if (b.status === 'rejected') throw b.reason;
    await pgQuery(on.primary.url(), `CREATE DATABASE ${DB}`);
    svcOn = await startTestService(
      makeConfig({ postgres: { primary: { url: on.primary.url() }, replicas: [{ url: on.replicas[0]!.url() }], databases: ['postgres', DB] } }),
    );
    svcOff = await startTestService(makeConfig({ postgres: { primary: { url: off.primary.url() }, replicas: [], databases: ['postgres'] } }));
  });
  afterAll(async () => {
    await Promise.allSettled([svcOn?.close(), svcOff?.close()]);
    await Promise.allSettled([on?.stop(), off?.stop()]);
  });

  it('checksums on: 1 for every server, as SHOW data_checksums says, and the failure counts are there', async () => {
    const P = serverOf(on.primary.url());
    const R = serverOf(on.replicas[0]!.url());
    expect(await showChecksums(on.primary.url())).toBe('on');
    expect(await showChecksums(on.replicas[0]!.url())).toBe('on');
    const r = await scrape(svcOn.url);
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'pg_stat_database' })).toBe(1);
    expect(find(r.metrics, 'pg_settings_data_checksums').map((s) => `${s.labels.server} ${s.value}`).sort()).toEqual([`${P} 1`, `${R} 1`].sort());
    expect(r.metrics.type.get('pg_settings_data_checksums')).toBe('gauge');
    expect(value(r.metrics, 'pg_stat_database_checksum_failures', { server: P, datname: 'postgres' })).toBe(0);
    expect(value(r.metrics, 'pg_stat_database_checksum_failures', { server: R, datname: 'postgres' })).toBe(0);
  });

  it('checksums off: 0, as SHOW data_checksums says, and no failure count at all (absent, not 0)', async () => {
    const P = serverOf(off.primary.url());
    expect(await showChecksums(off.primary.url())).toBe('off');
    const [{ n }] = (await pgQuery<{ n: number }>(off.primary.url(), 'SELECT count(checksum_failures)::int AS n FROM pg_stat_database')) as [{ n: number }];
    expect(n).toBe(0);
    const r = await scrape(svcOff.url);
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'pg_stat_database' })).toBe(1);
    expect(find(r.metrics, 'pg_settings_data_checksums')).toEqual([{ name: 'pg_settings_data_checksums', labels: { server: P }, value: 0 }]);
    expect(find(r.metrics, 'pg_stat_database_checksum_failures')).toEqual([]);
    expect(r.metrics.help.get('pg_settings_data_checksums')).toMatch(/pg_checksums --enable/);
  });

  it('a page corrupted on disk is counted as PostgreSQL counts it (what PostgresDataCorruption reads)', async () => {
    const P = serverOf(on.primary.url());
    const dbUrl = withDatabase(on.primary.url(), DB);
    await pgQuery(dbUrl, "CREATE TABLE victim (id int, pad text); INSERT INTO victim SELECT g, repeat('v', 50) FROM generate_series(1, 100) g");
    await pgQuery(dbUrl, 'CHECKPOINT');
    const [{ file }] = (await pgQuery<{ file: string }>(dbUrl, "SELECT pg_relation_filepath('victim') AS file")) as [{ file: string }];
    // Stopped, so the page is read from disk (not shared buffers) afterwards; a few bytes of tuple data
    // in block 0 overwritten: the page header stays sane, its checksum no longer matches.
    await on.primary.stop();
    const fd = fs.openSync(path.join(on.primary.dataDir, file), 'r+');
    try {
      fs.writeSync(fd, Buffer.alloc(16, 0xa5), 0, 16, 8100);
    } finally {
      fs.closeSync(fd);
    }
    await on.primary.start();
    await expect(pgQuery(dbUrl, 'SELECT count(*) FROM victim')).rejects.toThrow(/invalid page in block 0/);
    const measured = async () =>
      (await pgQuery<{ f: number }>(on.primary.url(), 'SELECT checksum_failures::int AS f FROM pg_stat_database WHERE datname = $1', [DB]))[0]!.f;
    const before = await measured();
    expect(before).toBeGreaterThanOrEqual(1);
    // The pooled connections died with the restart: the first scrapes after it may fail.
    await expect.poll(async () => value((await scrape(svcOn.url)).metrics, 'dbpilot_collector_success', { collector: 'pg_stat_database' }), { timeout: 10_000, interval: 100 }).toBe(1);
    const r = await scrape(svcOn.url);
    const after = await measured();
    expect(after).toBe(before);
    expect(value(r.metrics, 'pg_stat_database_checksum_failures', { server: P, datname: DB })).toBe(before);
    expect(value(r.metrics, 'pg_settings_data_checksums', { server: P })).toBe(1);
  });
});
