/**
 * PostgresDataCorruption on a real PostgreSQL of this file's own, initialised with data checksums
 * (initdb -k): a data page corrupted on disk (as test/exporter/checksums.test.ts does) and read, so
 * PostgreSQL itself counts a checksum failure. dbpilot pages the Engineering Manager + DBA (em-dba)
 * and the Lead DBA (lead-dba), once each, with the failure counts and the time of the last failure as
 * the test reads them back; nothing on the database changes (every statement dbpilot sent is logged,
 * and each is a read). Where RDS is configured (the RDS stand-in), a snapshot is requested first, and
 * the page — sent while the snapshot is still being made — says which.
 */
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { corruptionSummary, type ServerChecksums } from '../../src/remediation/handlers/data-corruption.js';
import type { Mode } from '../../src/modes.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { startPgCluster, type PgCluster, type PgNode } from '../support/pg-cluster.js';
import { RdsStandin, awsConfigFor, standinEnv } from '../support/rds-standin.js';
import { TEAM_KEYS, freshFingerprint, groupPageKey, payload, startRemediation, until, type RemediationHarness } from '../support/remediation.js';
import { pgQuery } from '../support/service.js';

const DB = 'lomash_orders';
const pd = new PagerDutyStandin();
const rds = new RdsStandin({ snapshotDelayMs: 200 });
const savedEnv: Record<string, string | undefined> = {};
let cluster: PgCluster;
let h: RemediationHarness | null = null;
let P = '';

/** One statement on a connection of its own. */
const q = pgQuery;
const dbUrl = () => {
  const u = new URL(cluster.primary.url());
  u.pathname = `/${DB}`;
  return u.toString();
};

const logFile = (n: PgNode) => path.join(path.dirname(n.dataDir), 'postgres.log');
function dbpilotStatements(n: PgNode, from: number): string[] {
  const text = fs.readFileSync(logFile(n), 'utf8').slice(from);
  const out: string[] = [];
  for (const e of text.split(/\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[\d+\] )/)) {
    const m = /^\S+ \S+ \S+ \[\d+\] dbpilot LOG: {2}(?:statement|execute [^:]*): ([\s\S]*)$/.exec(e);
    if (m) out.push(m[1]!.trim());
  }
  return out;
}

/** What PostgreSQL counts, read by the test: failures and the last failure's time (epoch seconds). */
async function measured(): Promise<{ failures: number; last: number }> {
  const [r] = await q<{ failures: number; last: number }>(
    cluster.primary.url(),
    'SELECT checksum_failures::int AS failures, EXTRACT(EPOCH FROM checksum_last_failure)::float8 AS last FROM pg_stat_database WHERE datname = $1',
    [DB],
  );
  return r!;
}

beforeAll(async () => {
  await Promise.all([pd.start(), rds.start()]);
  for (const [k, v] of Object.entries(standinEnv())) {
    savedEnv[k] = process.env[k];
    process.env[k] = v;
  }
  cluster = await startPgCluster({ replicas: 0, dataChecksums: true });
  P = `127.0.0.1:${cluster.primary.port}`;
  fs.appendFileSync(path.join(cluster.primary.dataDir, 'postgresql.conf'), "log_statement = 'all'\n");
  await q(cluster.primary.url(), `CREATE DATABASE ${DB}`);
  await q(dbUrl(), "CREATE TABLE orders (id int, note text); INSERT INTO orders SELECT g, repeat('o', 50) FROM generate_series(1, 100) g");
  await q(dbUrl(), 'CHECKPOINT');
  const [{ file }] = (await q<{ file: string }>(dbUrl(), "SELECT pg_relation_filepath('orders') AS file")) as [{ file: string }];
  // Stopped, so the page is read from disk afterwards: tuple bytes of block 0 overwritten, the header sane.
  await cluster.primary.stop();
  const fd = fs.openSync(path.join(cluster.primary.dataDir, file), 'r+');
  try {
    fs.writeSync(fd, Buffer.alloc(16, 0xa5), 0, 16, 8100);
  } finally {
    fs.closeSync(fd);
  }
  await cluster.primary.start();
  // Two reads, two failures counted by PostgreSQL.
  for (let i = 0; i < 2; i++) await expect(q(dbUrl(), 'SELECT count(*) FROM orders')).rejects.toThrow(/invalid page in block 0/);
  await until(async () => (await measured()).failures === 2, 'PostgreSQL counting the two checksum failures', 10_000);
});

afterAll(async () => {
  await cluster?.stop();
  await Promise.all([pd.close(), rds.close()]);
  for (const [k, v] of Object.entries(savedEnv)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

afterEach(async () => {
  await h?.close();
  h = null;
  pd.reset();
  rds.instances.clear();
  rds.snapshots.clear();
  rds.requests.length = 0;
});

async function setUp(mode: Mode, withRds = false): Promise<RemediationHarness> {
  if (withRds) rds.seedInstance({ id: 'lomash-wood-prod' });
  h = await startRemediation({
    mode,
    pagerduty: pd,
    config: {
      postgres: { primary: { url: cluster.primary.url(), pod: 'postgres-primary-0' }, replicas: [] },
      ...(withRds ? { aws: awsConfigFor(rds) } : {}),
    },
  });
  return h;
}

function corruptionAlert(fingerprint = freshFingerprint()) {
  return {
    alertname: 'PostgresDataCorruption',
    labels: { alertname: 'PostgresDataCorruption', remediation: 'data-corruption', team: 'em-dba', severity: 'critical', server: P, datname: DB },
    annotations: { summary: `Checksum failures in ${DB} on ${P}` },
    fingerprint,
    startsAt: new Date().toISOString(),
  };
}

type Details = Record<string, unknown> & { diagnostics?: { checksum_failures: ServerChecksums[]; total_failures: number; last_failure: string | null; runbook_commands: string[] }; tried?: unknown; plan?: string[] };
const triggersOf = (fingerprint: string) => pd.accepted.filter((e) => e.dedupKey.startsWith(`dbpilot/PostgresDataCorruption/${fingerprint}`) && e.action === 'trigger');
const detailsOf = (e: { event: Record<string, unknown> }) => (e.event as { payload: { custom_details: Details; severity: string } }).payload.custom_details;
const severityOf = (e: { event: Record<string, unknown> }) => (e.event as { payload: { severity: string } }).payload.severity;

/** One page per team, em-dba and lead-dba, each carrying what PostgreSQL counts. */
async function expectBothTeamsPagedWithTheCounts(fingerprint: string): Promise<Details[]> {
  const truth = await measured();
  const pages = triggersOf(fingerprint);
  expect(pages.map((p) => p.routingKey).sort()).toEqual([TEAM_KEYS['em-dba'], TEAM_KEYS['lead-dba']].sort());
  expect(new Set(pages.map((p) => p.dedupKey)).size).toBe(2);
  return pages.map((p) => {
    expect(severityOf(p)).toBe('critical');
    const d = detailsOf(p);
    const server = d.diagnostics!.checksum_failures.find((s) => s.server === P)!;
    expect(server).toMatchObject({ alerted: true, data_checksums: 'on' });
    expect(server.failures).toEqual([{ datname: DB, checksum_failures: truth.failures, checksum_last_failure: expect.any(String) }]);
    // To the millisecond (Date.parse drops the microseconds the page carries).
    expect(Math.abs(Date.parse(server.failures![0]!.checksum_last_failure!) / 1000 - truth.last)).toBeLessThan(0.001);
    expect(d.diagnostics!.total_failures).toBe(truth.failures);
    expect(d.diagnostics!.last_failure).toBe(server.failures![0]!.checksum_last_failure);
    expect(d.escalate_to).toBe(p.routingKey === TEAM_KEYS['em-dba'] ? 'Engineering Manager + DBA immediately' : 'Lead DBA / AWS Support');
    expect(d.also_paged).toEqual([p.routingKey === TEAM_KEYS['em-dba'] ? 'lead-dba' : 'em-dba']);
    return d;
  });
}

describe('data-corruption: page the Engineering Manager and the DBA at once, change nothing', () => {
  it('without RDS (auto mode): diagnose only — both teams paged once each with the failure counts and the last failure; only reads sent', async () => {
    const h = await setUp('auto');
    const offset = fs.statSync(logFile(cluster.primary)).size;
    const before = await measured();
    const a = corruptionAlert();
    const run = await h.engine.onFiring(a);
    expect(run?.status, run?.reason ?? '').toBe('escalated');
    expect(run!.reason).toBe(`diagnosed: data corruption suspected: 2 checksum failure(s), the last at ${(h.store.getRun(run!.id)!.plan as { data: { lastFailure: string } }).data.lastFailure} — ${P}: ${DB} 2`);
    expect(h.store.steps(run!.id)).toEqual([]);
    await h.settle();
    const [d] = await expectBothTeamsPagedWithTheCounts(a.fingerprint);
    expect(d!.tried).toMatch(/^nothing: data-corruption only diagnoses/);
    expect(d!.diagnostics!.runbook_commands[0]).toBe(
      'kubectl exec -it postgres-primary-0 -n lomash-wood -- psql -U postgres -c "SELECT datname, checksum_failures, checksum_last_failure FROM pg_stat_database WHERE checksum_failures > 0;"',
    );
    // Nothing changed: dbpilot never read the damaged table (the count did not move), and sent only reads.
    expect(await measured()).toEqual(before);
    const statements = dbpilotStatements(cluster.primary, offset);
    expect(statements.length).toBeGreaterThan(0);
    for (const s of statements) expect(s, s).toMatch(/^(SELECT|WITH|SHOW)\b/i);
    expect(statements.join('\n')).not.toMatch(/\borders\b|zero_damaged_pages|pg_checksums/i);

    // The resolve resolves both pages.
    await h.engine.onResolved(a);
    await h.settle();
    expect(pd.accepted.filter((e) => e.action === 'resolve').map((e) => e.routingKey).sort()).toEqual([TEAM_KEYS['em-dba'], TEAM_KEYS['lead-dba']].sort());
  });

  it('with RDS (auto mode): a snapshot is requested on RDS first, and the page — sent while it is still being made — says which', async () => {
    const h = await setUp('auto', true);
    const release = rds.hold(); // the snapshot stays `creating`: the page must not wait for it
    try {
      const a = corruptionAlert();
      const run = await h.engine.onFiring(a);
      expect(run?.status, run?.reason ?? '').toBe('escalated');
      await h.settle();
      const creates = rds.calls('CreateDBSnapshot');
      expect(creates).toHaveLength(1);
      const snapshotId = creates[0]!.params.DBSnapshotIdentifier!;
      expect(snapshotId).toMatch(/^lomash-wood-manual-\d{12}$/);
      expect(rds.snapshots.get(snapshotId)!.status).toBe('creating');
      expect(rds.snapshots.get(snapshotId)!.tags['dbpilot.io/reason']).toBe(`data corruption suspected on ${P} in ${DB}: run ${run!.id}`);
      const pages = triggersOf(a.fingerprint);
      expect(pages.length).toBe(2);
      for (const p of pages) expect(p.at).toBeGreaterThan(creates[0]!.at);
      const details = await expectBothTeamsPagedWithTheCounts(a.fingerprint);
      for (const d of details) {
        expect(d.tried).toEqual([expect.stringMatching(new RegExp(`^createSnapshot: done in \\d+ ms — RDS snapshot ${snapshotId} of lomash-wood-prod is creating \\(\\d+ %\\): requested before this page$`))]);
        expect(d.run_status).toBe('escalated');
      }
      expect(h.store.steps(run!.id).map((s) => [s.name, s.status])).toEqual([['createSnapshot', 'done']]);
      for (const p of pages) expect((p.event as { payload: { summary: string } }).payload.summary).toMatch(/: completed, but an RDS snapshot was requested first \(named in tried\); data corruption is suspected/);
      expect(h.store.listSnapshots('lomash-wood-prod')[0]).toMatchObject({ snapshotId, trigger: 'handler', runId: run!.id });
    } finally {
      release();
    }
    // The wait went on in the background: the record follows the snapshot to available.
    await until(() => h.store.listSnapshots('lomash-wood-prod')[0]?.status === 'available', 'the snapshot recorded available', 10_000);
  });

  it('with RDS, a snapshot RDS refuses still pages both teams, with why', async () => {
    const h = await setUp('auto', true);
    rds.deny('CreateDBSnapshot');
    try {
      const a = corruptionAlert();
      const run = await h.engine.onFiring(a);
      expect(run?.status).toBe('failed');
      expect(run!.reason).toMatch(/^step createSnapshot failed: RDS CreateDBSnapshot: dbpilot's IAM role may not do this/);
      await h.settle();
      await expectBothTeamsPagedWithTheCounts(a.fingerprint);
    } finally {
      rds.allow('CreateDBSnapshot');
    }
  });

  it('with RDS, a target locked by another run (a failover acting on the whole cluster): nothing is done, and both teams are still paged with the counts', async () => {
    const h = await setUp('auto', true);
    expect(h.store.acquireLock('postgres', 'a-failover-run', h.remediation.instance, () => true)).toBe('acquired');
    const a = corruptionAlert();
    const run = await h.engine.onFiring(a);
    expect(run?.status).toBe('skipped');
    expect(run!.reason).toBe('target postgres/' + P + ' is locked by run a-failover-run on postgres');
    await h.settle();
    const [d] = await expectBothTeamsPagedWithTheCounts(a.fingerprint);
    expect(d!.verified).toBe(run!.reason);
    expect(rds.calls('CreateDBSnapshot')).toEqual([]);
  });

  it('off, by webhook: the alert joins its group page, on both teams', async () => {
    const h = await setUp('off');
    const fingerprint = freshFingerprint();
    const body = payload([{ labels: corruptionAlert().labels, fingerprint }]);
    expect((await h.webhook(body)).statusCode).toBe(202);
    await h.settle();
    for (const team of ['em-dba', 'lead-dba'] as const) {
      const key = groupPageKey(body, team);
      const pages = pd.accepted.filter((e) => e.dedupKey === key && e.action === 'trigger');
      expect(pages.map((p) => p.routingKey), team).toEqual([TEAM_KEYS[team]]);
      expect(JSON.stringify(detailsOf(pages[0]!).alerts)).toContain(fingerprint);
    }
    expect(pd.accepted.filter((e) => e.action === 'trigger')).toHaveLength(2);
  });

  it('dry-run pages both teams at once with the counts and the snapshot command, and asks RDS nothing; approve pages at once and waits; off pages both that it is off', async () => {
    let h = await setUp('dry-run', true);
    let a = corruptionAlert();
    let run = await h.engine.onFiring(a);
    expect(run?.status).toBe('dry_run');
    await h.settle();
    const [d] = await expectBothTeamsPagedWithTheCounts(a.fingerprint);
    expect(d!.plan).toEqual([expect.stringMatching(/^aws rds create-db-snapshot \\\n {2}--region eu-west-2 \\\n {2}--db-instance-identifier lomash-wood-prod/)]);
    expect(rds.calls('CreateDBSnapshot')).toEqual([]);
    await h.close();
    pd.reset();

    h = await setUp('approve', true);
    a = corruptionAlert();
    run = await h.engine.onFiring(a);
    expect(run?.status).toBe('awaiting_approval');
    await h.settle();
    await expectBothTeamsPagedWithTheCounts(a.fingerprint);
    expect(rds.calls('CreateDBSnapshot')).toEqual([]);
    await h.close();
    pd.reset();

    h = await setUp('off', true);
    a = corruptionAlert();
    run = await h.engine.onFiring(a);
    expect(run?.status).toBe('skipped');
    await h.settle();
    const pages = triggersOf(a.fingerprint);
    expect(pages.map((p) => p.routingKey).sort()).toEqual([TEAM_KEYS['em-dba'], TEAM_KEYS['lead-dba']].sort());
    for (const p of pages) expect(detailsOf(p).tried).toBe('nothing: mode is off for data-corruption');
    expect(rds.calls('CreateDBSnapshot')).toEqual([]);
  });
});

describe('corruptionSummary (pure)', () => {
  it('names the failures, a server without checksums and one that did not answer', () => {
    expect(
      corruptionSummary({
        totalFailures: 3,
        lastFailure: '2026-12-02T01:00:00.000000Z',
        servers: [
          { server: 'p:5432', alerted: true, data_checksums: 'on', failures: [{ datname: 'a', checksum_failures: 2, checksum_last_failure: null }, { datname: 'b', checksum_failures: 1, checksum_last_failure: null }] },
          { server: 'r1:5432', alerted: false, data_checksums: 'off', failures: [] },
          { server: 'r2:5432', alerted: false, error: 'connection refused' },
        ],
      }),
    ).toBe('data corruption suspected: 3 checksum failure(s), the last at 2026-12-02T01:00:00.000000Z — p:5432: a 2, b 1; r1:5432 has data_checksums off: corruption there is not detected; r2:5432 could not be read (connection refused)');
    expect(corruptionSummary({ totalFailures: 0, lastFailure: null, servers: [{ server: 'p:5432', alerted: true, data_checksums: 'on', failures: [] }] })).toBe(
      'data corruption suspected: no checksum failure counted now (statistics reset since the alert?)',
    );
  });
});
