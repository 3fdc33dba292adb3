/**
 * Replication and reachability on a private cluster (primary + replica1), because these tests pause
 * replay, stop the replica and kill the primary.
 */
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPgCluster, type PgCluster } from '../support/pg-cluster.js';
import { find, scrape, value } from '../support/scrape.js';
import { getJson, makeConfig, startTestService, type TestService } from '../support/service.js';

async function q<T extends pg.QueryResultRow = Record<string, unknown>>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end().catch(() => {});
  }
}

async function one<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T> {
  const [row] = await q<T>(url, sql);
  if (!row) throw new Error(`no row from ${sql}`);
  return row;
}

const TIMEOUT_MS = 800;
/** Why a probe of a server that is not running fails: refused, or its pooled connection reset or closed under it — never a timeout. */
const GONE = /ECONNREFUSED|ECONNRESET|EPIPE|Connection terminated|terminating connection/;
/** pg_server bounds each probe by this share of the collector budget (src/exporter.ts). */
const PROBE_BUDGET_MS = Math.floor(TIMEOUT_MS * 0.8);

/**
 * A hung server: SIGSTOP the postmaster and every backend (a stopped postmaster alone would still let
 * pooled connections answer). TCP connects still succeed (the kernel's backlog), nothing answers.
 * Returns a function that resumes them.
 */
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

describe('replication and reachability (private cluster)', () => {
  let cluster: PgCluster;
  let svc: TestService;
  let primaryUrl = '';
  let replicaUrl = '';
  let P = '';
  let R = '';
  const standby = () => ({ server: P, application_name: 'replica1', client_addr: '127.0.0.1', state: 'streaming', sync_state: 'async' });

  /** Seconds since the replica replayed its last transaction, by the replica's own clock. */
  async function replayAge(): Promise<number> {
    return (await one<{ s: number }>(replicaUrl, 'SELECT EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8 AS s')).s;
  }

  /** What pg_server's last probe of `server` found. */
  function probe(s: TestService, server: string) {
    const found = s.runtime.exporter.pgServer.lastProbes().find((p) => p.server === server);
    if (!found) throw new Error(`pg_server has no probe of ${server}`);
    return found;
  }

  /** Collectors that ran out of their budget on the last scrape (a collector that does is cut off with this reason). */
  function outOfBudget(s: TestService): string[] {
    return [...s.runtime.exporter.registry.last].filter(([, r]) => r.errors.some((e) => e.includes('did not finish within'))).map(([name]) => name);
  }

  /** Why a collector failed on the last scrape (empty when it succeeded). */
  function failures(s: TestService, collector: string): string[] {
    return s.runtime.exporter.registry.last.get(collector)?.errors ?? [];
  }

  /** The replica has replayed everything the primary has written so far. */
  async function waitCaughtUp(): Promise<void> {
    const { lsn } = await one<{ lsn: string }>(primaryUrl, 'SELECT pg_current_wal_lsn()::text AS lsn');
    await expect
      .poll(
        async () =>
          (await one<{ behind: boolean }>(replicaUrl, `SELECT pg_last_wal_replay_lsn() < '${lsn}'::pg_lsn AS behind`)).behind,
        { timeout: 20_000, interval: 50 },
      )
      .toBe(false);
  }

  beforeAll(async () => {
    cluster = await startPgCluster({ replicas: 1 });
    const replica = cluster.replicas[0]!;
    primaryUrl = cluster.primary.url();
    replicaUrl = replica.url();
    P = `127.0.0.1:${cluster.primary.port}`;
    R = `127.0.0.1:${replica.port}`;
    // The standby reports its replay position every second instead of every 10 s, so
    // pg_stat_replication on the primary follows replay closely enough to poll for.
    await q(replicaUrl, 'ALTER SYSTEM SET wal_receiver_status_interval = 1');
    await q(replicaUrl, 'SELECT pg_reload_conf()');
    await q(primaryUrl, 'CREATE TABLE ticks (id serial PRIMARY KEY, pad text)');
    svc = await startTestService(
      makeConfig({
        postgres: { primary: { url: primaryUrl }, replicas: [{ url: replicaUrl }], databases: ['postgres'] },
        collectors: { timeoutMs: TIMEOUT_MS },
      }),
    );
  });

  afterAll(async () => {
    await svc?.close();
    await cluster?.stop();
  });

  it('paused replay: WAL waiting on the replica shows as lag on both sides', async () => {
    await q(primaryUrl, "INSERT INTO ticks (pad) VALUES ('before pause')");
    await waitCaughtUp();
    // Once the last replayed transaction is over a second old, lag_seconds must measure from it.
    await expect.poll(replayAge, { timeout: 10_000, interval: 50 }).toBeGreaterThan(1);
    await q(replicaUrl, 'SELECT pg_wal_replay_pause()');
    try {
      await pausedReplayShowsAsLag();
    } finally {
      await q(replicaUrl, 'SELECT pg_wal_replay_resume()');
    }
  });

  async function pausedReplayShowsAsLag(): Promise<void> {
    await expect.poll(async () => (await one<{ s: string }>(replicaUrl, 'SELECT pg_get_wal_replay_pause_state() AS s')).s, { timeout: 10_000 }).toBe('paused');

    await q(primaryUrl, "INSERT INTO ticks (pad) SELECT repeat('x', 200) FROM generate_series(1, 2000)");
    const { lsn } = await one<{ lsn: string }>(primaryUrl, 'SELECT pg_current_wal_lsn()::text AS lsn');
    // Received (streaming keeps going) but not replayed.
    await expect
      .poll(async () => (await one<{ ok: boolean }>(replicaUrl, `SELECT pg_last_wal_receive_lsn() >= '${lsn}'::pg_lsn AS ok`)).ok, { timeout: 20_000, interval: 50 })
      .toBe(true);

    const replicaDiff = `SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8 AS d`;
    const primaryDiff = `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 AS d FROM pg_stat_replication WHERE application_name = 'replica1'`;
    const before = { r: (await one<{ d: number }>(replicaUrl, replicaDiff)).d, p: (await one<{ d: number }>(primaryUrl, primaryDiff)).d, age: await replayAge() };
    const r = await scrape(svc.url);
    const after = { r: (await one<{ d: number }>(replicaUrl, replicaDiff)).d, p: (await one<{ d: number }>(primaryUrl, primaryDiff)).d, age: await replayAge() };
    expect(r.status).toBe(200);
    expect(before.r).toBeGreaterThan(100_000); // 2000 rows of 200 bytes
    expect(before.p).toBeGreaterThan(100_000);

    const lagBytes = value(r.metrics, 'pg_replication_lag_bytes', { server: R });
    expect(lagBytes).toBeGreaterThanOrEqual(before.r);
    expect(lagBytes).toBeLessThanOrEqual(after.r);
    const lsnDiff = value(r.metrics, 'pg_stat_replication_pg_wal_lsn_diff', standby());
    expect(lsnDiff).toBeGreaterThanOrEqual(before.p);
    expect(lsnDiff).toBeLessThanOrEqual(after.p);
    // With WAL waiting, the age of the last replayed transaction is the delay: in seconds, as the
    // replica itself computes it just before and just after the scrape (it only grows while paused).
    const lagSeconds = value(r.metrics, 'pg_replication_lag_seconds', { server: R });
    expect(before.age).toBeGreaterThan(1);
    expect(lagSeconds).toBeGreaterThanOrEqual(before.age);
    expect(lagSeconds).toBeLessThanOrEqual(after.age);
    expect(value(r.metrics, 'pg_replication_is_replica', { server: R })).toBe(1);

    await perStandbyLagWhilePaused();
  }

  /**
   * pg_stat_replication's write / flush / replay lag of the paused standby, as the primary computes
   * them (seconds since it flushed WAL the standby has not written / flushed / replayed yet). With
   * replay paused, replay lag keeps growing with every status report of the standby while write and
   * flush lag stay what they were when the standby wrote the WAL: replay lag exceeds write lag.
   * Each exported value is compared with the primary's own figures read just before and just after
   * the scrape, so a value in milliseconds, or one column exported as another, cannot pass.
   */
  async function perStandbyLagWhilePaused(): Promise<void> {
    const LAGS = `SELECT EXTRACT(EPOCH FROM write_lag)::float8 AS write, EXTRACT(EPOCH FROM flush_lag)::float8 AS flush,
                         EXTRACT(EPOCH FROM replay_lag)::float8 AS replay
                  FROM pg_stat_replication WHERE application_name = 'replica1'`;
    type Lags = { write: number | null; flush: number | null; replay: number | null };
    const lags = () => one<Lags>(primaryUrl, LAGS);
    // The standby has reported replay as behind since the pause, for longer than it took to write and
    // flush the WAL: by the primary's own figures, replay lag now exceeds write and flush lag.
    await expect
      .poll(
        async () => {
          const l = await lags();
          return (l.replay ?? 0) > Math.max(l.write ?? 0, l.flush ?? 0);
        },
        { timeout: 15_000, interval: 50 },
      )
      .toBe(true);
    const exported = (m: Awaited<ReturnType<typeof scrape>>['metrics'], kind: string) => value(m, `pg_stat_replication_${kind}_lag_seconds`, standby());

    const b1 = await lags();
    const s1 = await scrape(svc.url);
    const a1 = await lags();
    const replay1 = exported(s1.metrics, 'replay');
    expect(replay1).toBeGreaterThanOrEqual(b1.replay!);
    expect(replay1).toBeLessThanOrEqual(a1.replay!);
    // Write and flush lag: what the primary said before or after (a status report may fall in between).
    expect([b1.write ?? 0, a1.write ?? 0]).toContain(exported(s1.metrics, 'write'));
    expect([b1.flush ?? 0, a1.flush ?? 0]).toContain(exported(s1.metrics, 'flush'));

    // Time passes while replay stays paused: the primary's replay lag grows past what was exported.
    await expect.poll(async () => (await lags()).replay!, { timeout: 15_000, interval: 100 }).toBeGreaterThan(a1.replay!);
    const b2 = await lags();
    const s2 = await scrape(svc.url);
    const a2 = await lags();
    const replay2 = exported(s2.metrics, 'replay');
    expect(replay2).toBeGreaterThanOrEqual(b2.replay!);
    expect(replay2).toBeLessThanOrEqual(a2.replay!);
    expect(replay2).toBeGreaterThan(replay1);
    // Seconds, against another clock too: the WAL waiting to be replayed was all written after the
    // last transaction the replica replayed, so the primary's replay lag cannot exceed that
    // transaction's age as the replica computes it.
    expect(replay2).toBeLessThanOrEqual(await replayAge());
    // Replay lag exceeds write lag (and flush lag), in the same scrape and on the primary's own figures.
    expect(b2.replay!).toBeGreaterThan(b2.write ?? 0);
    expect(replay2).toBeGreaterThan(exported(s2.metrics, 'write'));
    expect(replay2).toBeGreaterThan(exported(s2.metrics, 'flush'));
    for (const kind of ['write', 'flush']) expect(exported(s2.metrics, kind), kind).toBeGreaterThanOrEqual(0);
  }

  it('after resume and catch-up, an idle primary shows exactly 0 lag, however long it stays idle', async () => {
    await q(replicaUrl, 'SELECT pg_wal_replay_resume()');
    await waitCaughtUp();

    const r1 = await scrape(svc.url);
    expect(value(r1.metrics, 'pg_replication_lag_seconds', { server: R })).toBe(0);
    expect(value(r1.metrics, 'pg_replication_lag_bytes', { server: R })).toBe(0);
    expect(value(r1.metrics, 'pg_replication_is_replica', { server: R })).toBe(1);
    expect(value(r1.metrics, 'pg_replication_is_replica', { server: P })).toBe(0);
    // Lag is a replica's measurement: the primary has none.
    expect(find(r1.metrics, 'pg_replication_lag_seconds', { server: P })).toHaveLength(0);
    expect(find(r1.metrics, 'pg_replication_lag_bytes', { server: P })).toHaveLength(0);
    expect(value(r1.metrics, 'pg_up', { server: P, role: 'primary' })).toBe(1);
    expect(value(r1.metrics, 'pg_up', { server: R, role: 'replica' })).toBe(1);

    // The last replayed commit keeps getting older; nothing is behind, so lag stays 0.
    const ageBefore = await replayAge();
    await expect.poll(replayAge, { timeout: 15_000, interval: 100 }).toBeGreaterThan(ageBefore + 3);
    const r2 = await scrape(svc.url);
    expect(value(r2.metrics, 'pg_replication_lag_seconds', { server: R })).toBe(0);
    expect(value(r2.metrics, 'pg_replication_lag_bytes', { server: R })).toBe(0);

    // pg_stat_replication on the primary: one standby, streaming, async, and (once it has reported
    // its replay position) nothing between the primary's WAL position and the replica's replay.
    await expect
      .poll(async () => value((await scrape(svc.url)).metrics, 'pg_stat_replication_pg_wal_lsn_diff', standby()), { timeout: 15_000, interval: 200 })
      .toBe(0);
    const r3 = await scrape(svc.url);
    expect(find(r3.metrics, 'pg_stat_replication_pg_wal_lsn_diff')).toEqual([{ name: 'pg_stat_replication_pg_wal_lsn_diff', labels: standby(), value: 0 }]);
    for (const m of ['write', 'flush', 'replay']) {
      const lag = value(r3.metrics, `pg_stat_replication_${m}_lag_seconds`, standby());
      expect(lag, m).toBeGreaterThanOrEqual(0);
      expect(lag, m).toBeLessThan(5);
    }
  });

  it('a stopped replica is pg_up 0 while /metrics answers and the primary stays pg_up 1', async () => {
    const replica = cluster.replicas[0]!;
    await replica.stop();
    const r = await scrape(svc.url);
    expect(r.status).toBe(200);
    expect(value(r.metrics, 'pg_up', { server: R, role: 'replica' })).toBe(0);
    expect(value(r.metrics, 'pg_up', { server: P, role: 'primary' })).toBe(1);
    // pg_server could not read the replica: it says so, naming it and why (the refused connection),
    // and still exports what it measured. Nothing waited out a budget for a server that is not there.
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'pg_server' })).toBe(0);
    expect(failures(svc, 'pg_server')).toEqual([expect.stringMatching(new RegExp(`^postgres ${R}: .*(${GONE.source})`))]);
    expect(probe(svc, R)).toMatchObject({ up: false, error: expect.stringMatching(GONE) });
    expect(outOfBudget(svc)).toEqual([]);
    // Nothing is claimed about a server that did not answer.
    expect(find(r.metrics, 'pg_replication_is_replica', { server: R })).toHaveLength(0);
    expect(find(r.metrics, 'pg_replication_lag_seconds', { server: R })).toHaveLength(0);
    expect(value(r.metrics, 'pg_replication_is_replica', { server: P })).toBe(0);
    // The standby's row leaves pg_stat_replication, and its series leave /metrics.
    await expect.poll(async () => find((await scrape(svc.url)).metrics, 'pg_stat_replication_pg_wal_lsn_diff').length, { timeout: 10_000 }).toBe(0);

    await replica.start();
    await expect.poll(async () => value((await scrape(svc.url)).metrics, 'pg_up', { server: R, role: 'replica' }), { timeout: 10_000 }).toBe(1);
  });

  it('a replica restarted and stuck before replaying any transaction does not report 0 s of lag', async () => {
    // A restartpoint at shutdown covering everything, so after the restart no commit is replayed and
    // pg_last_xact_replay_timestamp() is NULL (as for a standby pod rescheduled while replay is blocked).
    await q(primaryUrl, 'CHECKPOINT');
    await waitCaughtUp();
    const replica = cluster.replicas[0]!;
    await replica.stop();
    await replica.start();
    await q(replicaUrl, 'SELECT pg_wal_replay_pause()');
    try {
      await expect.poll(async () => (await one<{ s: string }>(replicaUrl, 'SELECT pg_get_wal_replay_pause_state() AS s')).s, { timeout: 10_000 }).toBe('paused');
      expect((await one<{ ts: Date | null }>(replicaUrl, 'SELECT pg_last_xact_replay_timestamp() AS ts')).ts).toBeNull();
      await q(primaryUrl, "INSERT INTO ticks (pad) SELECT repeat('y', 200) FROM generate_series(1, 2000)");
      const { lsn } = await one<{ lsn: string }>(primaryUrl, 'SELECT pg_current_wal_lsn()::text AS lsn');
      await expect
        .poll(async () => (await one<{ ok: boolean }>(replicaUrl, `SELECT pg_last_wal_receive_lsn() >= '${lsn}'::pg_lsn AS ok`)).ok, { timeout: 20_000, interval: 50 })
        .toBe(true);

      const r = await scrape(svc.url);
      expect(value(r.metrics, 'pg_replication_lag_bytes', { server: R })).toBeGreaterThan(100_000);
      // Hundreds of kB wait to be replayed: "0 s behind" would keep PostgresReplicationLagHigh silent
      // for as long as replay stays stuck. Unknown (no sample) or a positive delay are both honest.
      const lagSeconds = find(r.metrics, 'pg_replication_lag_seconds', { server: R });
      expect(lagSeconds.filter((s) => s.value === 0), 'pg_replication_lag_seconds is 0 while WAL waits to be replayed').toEqual([]);
    } finally {
      await q(replicaUrl, 'SELECT pg_wal_replay_resume()');
      await waitCaughtUp();
    }
  });

  it('a hung primary (every process stopped) is pg_up 0 within one collector budget', async () => {
    // Warm the pools, so the hung server is met both on pooled connections and on new ones.
    await scrape(svc.url);
    const thaw = freeze(cluster.primary.dataDir);
    try {
      const r = await scrape(svc.url);
      expect(r.status).toBe(200);
      expect(value(r.metrics, 'pg_up', { server: P, role: 'primary' })).toBe(0);
      expect(value(r.metrics, 'pg_up', { server: R, role: 'replica' })).toBe(1);
      // pg_server answered inside its budget (else it would be cut off with "did not finish within")
      // because the probe of the hung primary was given up on a timeout: the pool's connect or query
      // timeout, or the probe's own bound, whichever came first. It reports the primary it could not
      // read as its failure.
      expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'pg_server' })).toBe(0);
      expect(outOfBudget(svc)).not.toContain('pg_server');
      expect(failures(svc, 'pg_server')).toEqual([expect.stringMatching(new RegExp(`^postgres ${P}: .*(timeout|no answer within \\d+ ms)`, 'i'))]);
      expect(probe(svc, P)).toMatchObject({ up: false, error: expect.stringMatching(/timeout|no answer within \d+ ms/i) });
      expect(probe(svc, R)).toMatchObject({ up: true, error: null });
    } finally {
      thaw();
    }
    await expect.poll(async () => value((await scrape(svc.url)).metrics, 'pg_up', { server: P, role: 'primary' }), { timeout: 10_000 }).toBe(1);
  });

  it('pg_up stays exported when the configured connect/query timeouts exceed the collector budget', async () => {
    // The schema accepts these. A hung primary must still read pg_up 0 (and the healthy replica 1):
    // a missing pg_up is no sample for `pg_up == 0`, so PostgresPrimaryDown would never fire.
    const slow = await startTestService(
      makeConfig({
        postgres: { primary: { url: primaryUrl }, replicas: [{ url: replicaUrl }], databases: ['postgres'], connectTimeoutMs: 3000, queryTimeoutMs: 3000 },
        collectors: { timeoutMs: TIMEOUT_MS },
      }),
    );
    try {
      await scrape(slow.url);
      const thaw = freeze(cluster.primary.dataDir);
      try {
        const r = await scrape(slow.url);
        expect(r.status).toBe(200);
        // The 3 s timeouts would outlast the collector budget: the probe's own bound ended it, inside
        // the budget, so pg_server still reports (a collector past its budget reports nothing).
        expect(probe(slow, P)).toEqual(expect.objectContaining({ up: false, error: `no answer within ${PROBE_BUDGET_MS} ms` }));
        expect(outOfBudget(slow)).not.toContain('pg_server');
        expect(failures(slow, 'pg_server')).toEqual([`postgres ${P}: no answer within ${PROBE_BUDGET_MS} ms`]);
        expect(find(r.metrics, 'pg_up'), 'pg_up series while the primary hangs').toEqual([
          { name: 'pg_up', labels: { server: P, role: 'primary' }, value: 0 },
          { name: 'pg_up', labels: { server: R, role: 'replica' }, value: 1 },
        ]);
      } finally {
        thaw();
      }
    } finally {
      await slow.close();
    }
  });

  it('a killed primary is pg_up 0 within one collector budget; the replica stays pg_up 1', async () => {
    await cluster.primary.kill();
    try {
      await killedPrimaryIsDown();
    } finally {
      // Leave the cluster as the other tests expect it, whatever order they run in.
      await cluster.primary.start();
      await expect.poll(async () => value((await scrape(svc.url)).metrics, 'pg_up', { server: P, role: 'primary' }), { timeout: 20_000 }).toBe(1);
    }
  });

  async function killedPrimaryIsDown(): Promise<void> {
    for (let i = 0; i < 2; i++) {
      const r = await scrape(svc.url);
      expect(r.status).toBe(200);
      // Prometheus must get pg_up 0 inside its scrape timeout: the refused connection is the answer,
      // and no collector waited out its budget for it.
      expect(probe(svc, P)).toMatchObject({ up: false, error: expect.stringMatching(GONE) });
      expect(outOfBudget(svc)).toEqual([]);
      expect(value(r.metrics, 'pg_up', { server: P, role: 'primary' })).toBe(0);
      expect(value(r.metrics, 'pg_up', { server: R, role: 'replica' })).toBe(1);
      expect(value(r.metrics, 'pg_replication_is_replica', { server: R })).toBe(1);
      expect(find(r.metrics, 'pg_replication_is_replica', { server: P })).toHaveLength(0);
      expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'pg_server' })).toBe(0);
      expect(failures(svc, 'pg_server')).toEqual([expect.stringMatching(new RegExp(`^postgres ${P}: `))]);
      // Collectors that need the primary fail, and say so, without failing the scrape.
      expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'pg_stat_replication' })).toBe(0);
      expect(value(r.metrics, 'redis_up')).toBe(1);
    }
    const h = await getJson(`${svc.url}/health`);
    expect(h.status).toBe(503);
    expect(h.body).toEqual({ database: 'unhealthy', redis: 'healthy' });
    const failed = svc.log.entries().filter((e) => e.msg === 'collector failed' && e.collector === 'pg_stat_replication');
    expect(failed.length).toBeGreaterThanOrEqual(1);
    expect(JSON.stringify(failed.at(-1))).toContain(P);
  }
});
