/**
 * PostgresReplicationLagHigh on a real primary with a real streaming replica of this file's own (never
 * the suite's shared cluster): replay paused on the replica (pg_wal_replay_pause()) while the primary
 * writes, an inactive physical slot holding WAL, a long query on the replica. dbpilot diagnoses and
 * pages on-call backend; the test reads the same numbers back from the servers itself and checks the
 * page carries them, and checks dbpilot changed nothing: replay is still paused, the slot still there,
 * the query still running, and every statement dbpilot sent (the servers log them all) was a read.
 */
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { findingsOf, showBytes, type ReplicaFacts, type ReplicationLagPlan } from '../../src/remediation/handlers/replication-lag.js';
import type { Mode } from '../../src/modes.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { startPgCluster, type PgCluster, type PgNode } from '../support/pg-cluster.js';
import { TEAM_KEYS, freshFingerprint, startRemediation, until, type RemediationHarness } from '../support/remediation.js';
import { pgQuery } from '../support/service.js';

const pd = new PagerDutyStandin();
let cluster: PgCluster;
let h: RemediationHarness | null = null;
let P = '';
let R = '';
const SLOT = 'lagging_consumer';
let longQuery: pg.Client | null = null;
let longQueryPid = 0;

/** One statement on a connection of its own. */
const q = pgQuery;

const logFile = (n: PgNode) => path.join(path.dirname(n.dataDir), 'postgres.log');

/** Every statement dbpilot (application_name dbpilot) sent the server since byte `from` of its log (log_statement = all). */
function dbpilotStatements(n: PgNode, from: number): string[] {
  const text = fs.readFileSync(logFile(n), 'utf8').slice(from);
  const entries = text.split(/\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[\d+\] )/);
  const out: string[] = [];
  for (const e of entries) {
    const m = /^\S+ \S+ \S+ \[\d+\] dbpilot LOG: {2}(?:statement|execute [^:]*): ([\s\S]*)$/.exec(e);
    if (m) out.push(m[1]!.trim());
  }
  return out;
}

function expectOnlyReads(statements: string[]): void {
  expect(statements.length).toBeGreaterThan(0);
  for (const s of statements) {
    expect(s, s).toMatch(/^(SELECT|WITH|SHOW)\b/i);
    expect(s, s).not.toMatch(/pg_wal_replay_resume|pg_cancel_backend|pg_terminate_backend|pg_drop_replication_slot|pg_promote|pg_reload_conf/i);
  }
}

beforeAll(async () => {
  await pd.start();
  cluster = await startPgCluster({ replicas: 1 });
  P = `127.0.0.1:${cluster.primary.port}`;
  R = `127.0.0.1:${cluster.replicas[0]!.port}`;
  // Every statement is logged, with the application name in the prefix: what dbpilot sent is on record.
  for (const n of [cluster.primary, cluster.replicas[0]!]) {
    fs.appendFileSync(path.join(n.dataDir, 'postgresql.conf'), "log_statement = 'all'\n");
    await q(n.url(), 'SELECT pg_reload_conf()');
  }
  const primary = cluster.primary.url();
  const replica = cluster.replicas[0]!.url();
  await q(primary, 'CREATE TABLE orders (id int, note text)');
  await q(primary, "INSERT INTO orders SELECT g, 'before the pause' FROM generate_series(1, 10) g");
  await until(async () => (await q<{ n: number }>(replica, 'SELECT count(*)::int AS n FROM orders'))[0]!.n === 10, 'the replica replaying the first rows', 30_000);
  // A consumer that went away and left its slot: it holds WAL on the primary.
  await q(primary, `SELECT pg_create_physical_replication_slot('${SLOT}', true)`);
  // Replay paused, then the primary writes: WAL arrives and waits.
  await q(replica, 'SELECT pg_wal_replay_pause()');
  await until(async () => (await q<{ p: boolean }>(replica, 'SELECT pg_is_wal_replay_paused() AS p'))[0]!.p, 'replay paused', 10_000);
  await q(primary, "INSERT INTO orders SELECT g, repeat('x', 200) FROM generate_series(11, 5000) g");
  const [{ lsn }] = (await q<{ lsn: string }>(primary, 'SELECT pg_current_wal_lsn()::text AS lsn')) as [{ lsn: string }];
  await until(async () => (await q<{ ok: boolean }>(replica, 'SELECT pg_last_wal_receive_lsn() >= $1::pg_lsn AS ok', [lsn]))[0]!.ok, 'the replica receiving the new WAL', 30_000);
  // A report query on the replica, running for longer than the handler's threshold (1 s below).
  longQuery = new pg.Client({ connectionString: replica, application_name: 'analytics-report' });
  longQuery.on('error', () => undefined);
  await longQuery.connect();
  longQueryPid = ((await longQuery.query('SELECT pg_backend_pid() AS pid')).rows[0] as { pid: number }).pid;
  void longQuery.query('SELECT pg_sleep(600)').catch(() => undefined);
  await until(async () => (await q<{ n: number }>(replica, "SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND now() - query_start > interval '1.2 s'", [longQueryPid]))[0]!.n === 1, 'the report query running for over a second', 10_000);
});

afterAll(async () => {
  if (longQuery) await q(cluster.replicas[0]!.url(), 'SELECT pg_terminate_backend($1)', [longQueryPid]).catch(() => undefined);
  await longQuery?.end().catch(() => undefined);
  await cluster?.stop();
  await pd.close();
});

afterEach(async () => {
  await h?.close();
  h = null;
  pd.reset();
});

async function setUp(mode: Mode): Promise<RemediationHarness> {
  h = await startRemediation({
    mode,
    pagerduty: pd,
    config: {
      postgres: { primary: { url: cluster.primary.url(), pod: 'postgres-primary-0' }, replicas: [{ url: cluster.replicas[0]!.url(), pod: 'postgres-replica-0' }] },
      handlers: { 'replication-lag': { replicaQuerySeconds: 1 } },
    },
  });
  return h;
}

function lagAlert(fingerprint = freshFingerprint()) {
  return {
    alertname: 'PostgresReplicationLagHigh',
    labels: { alertname: 'PostgresReplicationLagHigh', remediation: 'replication-lag', team: 'oncall-backend', severity: 'warning', server: R },
    annotations: { summary: `Replica ${R} is 6m behind` },
    fingerprint,
    startsAt: new Date().toISOString(),
  };
}

type Details = Record<string, unknown> & { diagnostics?: { findings: string[]; replicas: ReplicaFacts[]; primary: ReplicationLagPlan['primary']; runbook_commands: string[] }; tried?: unknown };
const triggers = (fingerprint: string) => pd.accepted.filter((e) => e.dedupKey === `dbpilot/PostgresReplicationLagHigh/${fingerprint}` && e.action === 'trigger');
const detailsOf = (e: { event: Record<string, unknown> }) => (e.event as { payload: { custom_details: Details } }).payload.custom_details;

/** The numbers the page must carry, read from the servers by the test itself. */
async function measure() {
  const [r] = await q<{ lag: number; seconds: number; paused: boolean; replay: string }>(
    cluster.replicas[0]!.url(),
    `SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8 AS lag,
            EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8 AS seconds,
            pg_is_wal_replay_paused() AS paused, pg_last_wal_replay_lsn()::text AS replay`,
  );
  const [p] = await q<{ behind: number; retained: number; restart: string }>(
    cluster.primary.url(),
    `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8 AS behind,
            pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 AS retained, restart_lsn::text AS restart
     FROM pg_replication_slots WHERE slot_name = $2`,
    [r!.replay, SLOT],
  );
  return { ...r!, ...p! };
}

describe('replication-lag: diagnose and page on-call backend, change nothing', () => {
  it('auto mode: the page carries the lag in bytes and seconds, the paused replay, the WAL receiver, the slot and the query holding replay back', async () => {
    const h = await setUp('auto');
    const offsets = [cluster.primary, cluster.replicas[0]!].map((n) => fs.statSync(logFile(n)).size);
    const before = await measure();
    expect(before.lag).toBeGreaterThan(500_000); // 5,000 rows of WAL are waiting
    const a = lagAlert();
    const run = await h.engine.onFiring(a);
    const after = await measure();
    expect(run?.status, run?.reason ?? '').toBe('escalated');
    expect(run!.reason).toMatch(/^diagnosed: replica 127\.0\.0\.1:\d+: .* received but not replayed/);
    expect(h.store.steps(run!.id)).toEqual([]);
    await h.settle();

    const pages = triggers(a.fingerprint);
    expect(pages.map((p) => p.routingKey)).toEqual([TEAM_KEYS['oncall-backend']]);
    expect(pd.accepted.filter((e) => e.routingKey !== TEAM_KEYS['oncall-backend'])).toEqual([]);
    const d = detailsOf(pages[0]!);
    expect(d.run_status).toBe('escalated');
    expect(d.also_paged).toBeUndefined();
    expect(d.tried).toMatch(/^nothing: replication-lag only diagnoses/);
    const diag = d.diagnostics!;
    const replica = diag.replicas.find((x) => x.server === R)!;
    expect(replica.alerted).toBe(true);
    expect(replica.in_recovery).toBe(true);
    expect(replica.replay_paused).toBe(true);
    // Received but not replayed: nothing moves while replay is paused and the primary is idle.
    expect(replica.replay_lag_bytes).toBe(before.lag);
    expect(replica.replay_lag_bytes).toBe(after.lag);
    expect(replica.replay_lag_seconds!).toBeGreaterThanOrEqual(Math.floor(before.seconds * 10) / 10);
    expect(replica.replay_lag_seconds!).toBeLessThanOrEqual(Math.ceil(after.seconds * 10) / 10);
    expect(replica.behind_primary_bytes!).toBeGreaterThanOrEqual(before.behind);
    expect(replica.behind_primary_bytes!).toBeLessThanOrEqual(after.behind);
    expect(replica.wal_receiver).toMatchObject({ status: 'streaming', sender_host: '127.0.0.1', sender_port: cluster.primary.port });
    expect(JSON.stringify(replica.wal_receiver)).not.toMatch(/conninfo|password/i);
    expect(replica.settings).toEqual({ hot_standby_feedback: 'off', max_standby_streaming_delay: '30s', max_standby_archive_delay: '30s', recovery_min_apply_delay: '0', primary_slot_name: '' });
    expect(replica.long_queries!.map((x) => [x.pid, x.application_name, x.query])).toEqual([[longQueryPid, 'analytics-report', 'SELECT pg_sleep(600)']]);
    expect(replica.long_queries_total).toBe(1);

    expect(diag.primary.server).toBe(P);
    const standby = diag.primary.standbys!.find((s) => s.application_name === 'replica1')!;
    expect(standby).toMatchObject({ state: 'streaming', sync_state: 'async', replay_lsn: before.replay });
    expect(standby.replay_lag_bytes!).toBeGreaterThanOrEqual(before.behind);
    expect(standby.replay_lag_bytes!).toBeLessThanOrEqual(after.behind);
    const slot = diag.primary.slots!.find((s) => s.slot_name === SLOT)!;
    expect(slot).toMatchObject({ slot_type: 'physical', active: false, restart_lsn: before.restart, wal_status: 'reserved' });
    expect(slot.retained_bytes!).toBeGreaterThanOrEqual(before.retained);
    expect(slot.retained_bytes!).toBeLessThanOrEqual(after.retained);
    expect(diag.primary.settings).toMatchObject({ wal_keep_size: '256MB', max_slot_wal_keep_size: '-1' });

    expect(diag.findings[0]).toMatch(new RegExp(`^replay on ${R.replace(/\./g, '\\.')} is paused`));
    expect(diag.findings.some((f) => f.startsWith(`1 query on ${R} older than 1 s (oldest: pid ${longQueryPid}`))).toBe(true);
    expect(diag.findings.some((f) => f.startsWith(`slot ${SLOT} is inactive and retains ${showBytes(slot.retained_bytes!)}`))).toBe(true);
    expect(diag.runbook_commands).toEqual([
      'kubectl exec -it postgres-primary-0 -n lomash-wood -- psql -U postgres -c "SELECT client_addr, state, sent_lsn, write_lsn, replay_lsn, sync_state FROM pg_stat_replication;"',
      'kubectl exec -it postgres-replica-0 -n lomash-wood -- psql -U postgres -c "SELECT now() - pg_last_xact_replay_timestamp() AS replication_delay;"',
    ]);

    // Nothing was changed: still paused, the slot where it was, the report query still running, only reads sent.
    expect(after.paused).toBe(true);
    expect(after.restart).toBe(before.restart);
    expect((await q(cluster.replicas[0]!.url(), "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", [longQueryPid])).length).toBe(1);
    expectOnlyReads([cluster.primary, cluster.replicas[0]!].flatMap((n, i) => dbpilotStatements(n, offsets[i]!)));
  });

  it('dry-run and approve page at once with the same diagnostics (nothing to approve or to dry-run); off pages that it is off', async () => {
    for (const mode of ['dry-run', 'approve'] as const) {
      const h = await setUp(mode);
      const a = lagAlert();
      const run = await h.engine.onFiring(a);
      expect(run?.status, mode).toBe('escalated');
      await h.settle();
      const pages = triggers(a.fingerprint);
      expect(pages.map((p) => p.routingKey), mode).toEqual([TEAM_KEYS['oncall-backend']]);
      const diag = detailsOf(pages[0]!).diagnostics!;
      expect(diag.replicas.find((x) => x.server === R)!.replay_paused, mode).toBe(true);
      expect(detailsOf(pages[0]!).mode).toBe(mode);
      await h.close();
      pd.reset();
    }
    const off = await setUp('off');
    const a = lagAlert();
    const run = await off.engine.onFiring(a);
    expect(run?.status).toBe('skipped');
    await off.settle();
    const pages = triggers(a.fingerprint);
    expect(pages.map((p) => p.routingKey)).toEqual([TEAM_KEYS['oncall-backend']]);
    expect(detailsOf(pages[0]!).tried).toBe('nothing: mode is off for replication-lag');
    expect(detailsOf(pages[0]!).diagnostics).toBeUndefined();
  });

  it('a dry-run from the CLI pages nobody (the person running it sees the plan)', async () => {
    const h = await setUp('dry-run');
    const run = await h.engine.runManual('replication-lag', { server: R }, 'dry-run');
    await h.settle();
    expect(run?.status).toBe('dry_run');
    expect((h.store.getRun(run!.id)!.plan as { data: ReplicationLagPlan }).data.replicas[0]!.replay_paused).toBe(true);
    expect(pd.accepted).toEqual([]);
  });

  it('the resolve of the alert resolves the page', async () => {
    const h = await setUp('auto');
    const a = lagAlert();
    await h.engine.onFiring(a);
    await h.settle();
    await h.engine.onResolved(a);
    await h.settle();
    expect(pd.acceptedCount(`dbpilot/PostgresReplicationLagHigh/${a.fingerprint}`, 'resolve')).toBe(1);
  });
});

describe('findingsOf (pure)', () => {
  const primary = { server: 'p:5432', lsn: '0/5000000', standbys: [], slots: [], settings: {} };
  const replica = (over: Partial<ReplicaFacts>): ReplicaFacts => ({
    server: 'r:5432',
    alerted: true,
    in_recovery: true,
    replay_lag_bytes: 0,
    replay_lag_seconds: 0,
    replay_paused: false,
    behind_primary_bytes: 0,
    wal_receiver: { status: 'streaming', receive_start_lsn: null, written_lsn: null, flushed_lsn: null, latest_end_lsn: null, latest_end_time: null, last_msg_receipt_time: null, slot_name: '', sender_host: 'p', sender_port: 5432 },
    settings: { hot_standby_feedback: 'off', max_standby_streaming_delay: '30s', recovery_min_apply_delay: '0' },
    long_queries: [],
    conflicts: [],
    ...over,
  });
  const f = (r: ReplicaFacts, p: Partial<typeof primary> = {}) => findingsOf({ replicas: [r], primary: { ...primary, ...p }, replicaQuerySeconds: 30 });

  it.each([
    ['a paused replay', replica({ replay_paused: true, replay_lag_bytes: 2048 }), /^replay on r:5432 is paused .*\(2\.0 KiB waiting\)/],
    ['no WAL receiver', replica({ wal_receiver: null }), /^no WAL receiver runs on r:5432/],
    ['a receiver not streaming', replica({ wal_receiver: { ...replica({}).wal_receiver!, status: 'waiting' } }), /^the WAL receiver on r:5432 is waiting, not streaming$/],
    ['a receiver dbpilot may not see', replica({ wal_receiver: { ...replica({}).wal_receiver!, status: null } }), /^the WAL receiver's state on r:5432 is hidden from dbpilot: its role needs pg_monitor/],
    ['a delay on purpose', replica({ settings: { recovery_min_apply_delay: '10min' } }), /^r:5432 delays replay on purpose: recovery_min_apply_delay = 10min$/],
    ['WAL waiting for replay', replica({ replay_lag_bytes: 3 * 1024 * 1024, replay_lag_seconds: 400 }), /^r:5432 has 3\.0 MiB received but not replayed; its last replayed transaction is 7 min old$/],
    ['WAL not arriving', replica({ behind_primary_bytes: 1024 }), /^r:5432 replayed everything it received but is 1\.0 KiB behind the primary/],
    [
      'a query replay waits for, indefinitely',
      replica({ settings: { max_standby_streaming_delay: '-1', hot_standby_feedback: 'on' }, long_queries: [{ pid: 7, usename: 'report', application_name: '', datname: 'd', state: 'active', seconds: 900, wait_event_type: '', wait_event: '', backend_xmin: null, query: 'SELECT 1' }], long_queries_total: 1 }),
      /^1 query on r:5432 older than 30 s \(oldest: pid 7, report, 15 min\): replay waits for conflicting queries indefinitely \(max_standby_streaming_delay = -1\); hot_standby_feedback is on/,
    ],
    ['conflicts', replica({ conflicts: [{ datname: 'lomash_orders', tablespace: 0, lock: 2, snapshot: 5, bufferpin: 0, deadlock: 0 }] }), /^r:5432 has cancelled queries so replay could go on \(pg_stat_database_conflicts: snapshot 5, lock 2; in lomash_orders\)$/],
    ['an unreachable replica', { server: 'r:5432', alerted: true, error: 'connection refused' }, /^replica r:5432 could not be read: connection refused$/],
    ['a promoted replica', replica({ in_recovery: false }), /^r:5432 is not in recovery/],
  ])('%s', (_name, r, expected) => {
    expect(f(r as ReplicaFacts)[0]).toMatch(expected);
  });

  it('slots: lost, inactive with retained WAL, unreserved', () => {
    const slot = (o: Record<string, unknown>) => ({ slot_name: 's', slot_type: 'physical', database: '', active: false, active_pid: null, wal_status: 'reserved', safe_wal_size_bytes: null, restart_lsn: '0/1', retained_bytes: 0, xmin: null, catalog_xmin: null, ...o });
    expect(f(replica({}), { slots: [slot({ wal_status: 'lost' })] as never })).toEqual([expect.stringMatching(/^slot s has lost WAL/)]);
    expect(f(replica({}), { slots: [slot({ retained_bytes: 5 * 1024 ** 3, wal_status: 'extended', safe_wal_size_bytes: 1024 })] as never })).toEqual([
      'slot s is inactive and retains 5.0 GiB of WAL on the primary (wal_status extended, 1.0 KiB left before it is invalidated)',
    ]);
    expect(f(replica({}), { slots: [slot({ active: true, retained_bytes: 10, wal_status: 'unreserved' })] as never })).toEqual([expect.stringMatching(/^slot s retains 10 bytes, more than max_slot_wal_keep_size/)]);
  });

  it('nothing found is said as such', () => {
    expect(f(replica({}))).toEqual(["nothing in the views dbpilot reads explains the lag: see the replica's log and its I/O"]);
  });
});
