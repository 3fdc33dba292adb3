/**
 * The drills issue 12 adds after the first three, through the real CLI (spawned, --json) like
 * drill.test.ts: recovery asserted from what the drill read from the world, and nothing of the
 * sandbox left afterwards. Plus, in process, a world that does not match the page: the drill says so.
 */
import { afterEach, describe, expect, it } from 'vitest';
import pg from 'pg';
import { summaryRows } from '../../src/cli-drill.js';
import { Cleanup } from '../../src/drill/cleanup.js';
import { runTrial } from '../../src/drill/drill.js';
import { drill, expectNothingLeft, jsonDrill, removeTmps } from './support.js';

afterEach(removeTmps);

describe('dbpilot drill replication-lag', () => {
  it('replay paused on the replica: the run escalates, on-call backend is paged with the lag the replica shows, the replica catches up after the resume; nothing left behind', async () => {
    const { r, t } = await jsonDrill('replication-lag', [], { runStatus: 'escalated' });
    expect(t.expectedRunStatus).toBe('escalated');
    // Diagnose only: no step ran.
    expect(t.steps).toEqual([]);
    const replica = Number(/replica 127\.0\.0\.1:(\d+)/.exec(r.stderr)?.[1]);
    expect(replica).toBeGreaterThan(0);
    expect(r.stderr).toMatch(new RegExp(`^run [0-9a-f-]+: escalated \\(diagnosed: replica 127\\.0\\.0\\.1:${replica}: [\\d.]+ KiB received but not replayed`, 'm'));
    const paged = t.checks.find((c) => c.name === 'on-call backend paged')!;
    expect(paged.detail).toBe("1 trigger(s): on-call backend's routing key; run_status escalated");
    const lag = t.checks.find((c) => c.name === "the page's lag matches the replica")!;
    const m = /^page: (\d+) bytes received but not replayed, ([\d.]+) s, paused true; read from 127\.0\.0\.1:(\d+): (\d+)…(\d+) bytes, /.exec(lag.detail);
    expect(m, lag.detail).not.toBeNull();
    expect(Number(m![3])).toBe(replica);
    // ~1 MB was written while replay was paused; the page's number lies within the drill's own readings.
    expect(Number(m![1])).toBeGreaterThan(500_000);
    expect(Number(m![1])).toBeGreaterThanOrEqual(Math.min(Number(m![4]), Number(m![5])));
    expect(Number(m![1])).toBeLessThanOrEqual(Math.max(Number(m![4]), Number(m![5])));
    expect(t.checks.find((c) => c.name === 'the replica catches up after pg_wal_replay_resume()')!.detail).toMatch(
      new RegExp(`^127\\.0\\.0\\.1:${replica} replayed up to ([0-9A-F]+/[0-9A-F]+) \\(primary at \\1\\) \\d+ ms after the resume$`),
    );
    expect(t.measured.map((x) => [x.name, x.ok])).toEqual([
      ['time to page (break → on-call backend paged)', true],
      ['catch-up (replay resumed → replayed up to the primary)', true],
    ]);
    // Paged after the break, and not before the run existed.
    expect(t.measured[0]!.ms!).toBeGreaterThanOrEqual(t.detectionMs);
    expect(t.measured[1]!.ms!).toBeGreaterThanOrEqual(0);
    expect(t.pages).toBe(1);
  });

  it('the table says what was measured: the escalation, the time to page and the catch-up', async () => {
    const r = await drill(['replication-lag']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^drill replication-lag: 1 trial, recovered\n/);
    for (const row of ['run escalated \\(break → run finished\\)', 'time to page \\(break → on-call backend paged\\)', 'catch-up \\(replay resumed → replayed up to the primary\\)', "check: the page's lag matches the replica", 'every check passed']) {
      expect(r.stdout).toMatch(new RegExp(`│ ${row}\\s+│ [^│]*│ yes\\s+│`));
    }
    expect(r.stdout).not.toMatch(/total time to recover/);
    const sandbox = /^sandbox: PostgreSQL primary 127\.0\.0\.1:(\d+), replica 127\.0\.0\.1:(\d+), Redis 127\.0\.0\.1:(\d+)/m.exec(r.stderr);
    expect(sandbox, r.stderr).not.toBeNull();
    const ports = sandbox!.slice(1).map(Number);
    await expectNothingLeft(r, ports);
  });

  it('replay resumed before the alert: the page shows a replica not paused, and the drill reports not recovered', async () => {
    const cleanup = new Cleanup();
    const t = await runTrial('replication-lag', 1, { say: () => undefined, step: () => undefined }, cleanup, {
      afterBreak: async (sb) => {
        const c = new pg.Client({ connectionString: sb.cluster.replicas[0]!.url() });
        await c.connect();
        try {
          await c.query('SELECT pg_wal_replay_resume()');
        } finally {
          await c.end();
        }
      },
    });
    expect(cleanup.size).toBe(0);
    // dbpilot still does what it promises (escalates, pages on-call backend) …
    expect(t.runStatus).toBe('escalated');
    expect(t.checks.find((c) => c.name === 'on-call backend paged')!.ok).toBe(true);
    // … but the world the page describes is not the one the drill broke.
    const lag = t.checks.find((c) => c.name === "the page's lag matches the replica")!;
    expect(lag.ok).toBe(false);
    expect(lag.detail).toMatch(/, paused false; /);
    expect(t.recovered).toBe(false);
    expect(summaryRows([t]).find((x) => x.what === 'every check passed')!.ok).toEqual([false]);
  });
});

describe('dbpilot drill prisma-migration', () => {
  it('a failed migration row: dbpilot resolves it rolled back and restarts the deployment, the drill’s deployment re-runs migrate deploy, the migration finishes; nothing left behind', async () => {
    const { r, t } = await jsonDrill('prisma-migration');
    expect(r.stderr).toMatch(/^break: prisma migrate deploy of 20240301000000_add_payments fails \(P3018\) in drill_orders$/m);
    expect(t.steps.map((s) => [s.name, s.status, s.checkOk])).toEqual([
      ['resolveRolledBack', 'done', true],
      ['rerunMigrateDeploy', 'done', true],
      ['verifyMigrateDeploy', 'done', true],
    ]);
    // Read from the database: the failed row is rolled back (what resolve does), the re-run's row finished, nothing else failed.
    expect(t.checks.find((c) => c.name === '20240301000000_add_payments finished, nothing failed')!.detail).toBe(
      '_prisma_migrations in drill_orders: 3 rows, 1 finished 20240301000000_add_payments, none failed, 1 rolled back',
    );
    expect(t.checks.find((c) => c.name === 'deployment/order-payment-service restarted and migrated')!.detail).toMatch(
      /^restartedAt \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ; migrate deploy applied 20240301000000_add_payments$/,
    );
  });

  it('the re-run fails again (its table was taken meanwhile): the run fails (and pages), and the drill reports not recovered, from the database', async () => {
    const cleanup = new Cleanup();
    const t = await runTrial('prisma-migration', 1, { say: () => undefined, step: () => undefined }, cleanup, {
      // The restarted pods' migrate deploy fails too: the migration's table is taken before they start.
      afterBreak: async (sb) => {
        const c = new pg.Client({ connectionString: sb.cluster.primary.url('drill_orders') });
        await c.connect();
        try {
          await c.query('CREATE TABLE payments (id int)');
        } finally {
          await c.end();
        }
      },
    });
    expect(cleanup.size).toBe(0);
    expect(t.runStatus).toBe('failed');
    expect(t.steps.find((s) => s.name === 'verifyMigrateDeploy')!.checkOk).toBe(false);
    expect(t.pages).toBeGreaterThanOrEqual(1);
    const row = t.checks.find((c) => c.name === '20240301000000_add_payments finished, nothing failed')!;
    expect(row.ok).toBe(false);
    expect(row.detail).toMatch(/, 0 finished 20240301000000_add_payments, failed: 20240301000000_add_payments, 1 rolled back$/);
    expect(t.checks.find((c) => c.name === 'deployment/order-payment-service restarted and migrated')!.detail).toMatch(/; migrate deploy failed: P3018: /);
    expect(t.recovered).toBe(false);
  });
});

describe('dbpilot drill disk-pressure', () => {
  it('above a low threshold with no maxSize: dbpilot vacuums the table with the dead tuples and pages DevOps; the dead tuples fell in pg_stat_user_tables; nothing left behind', async () => {
    const { t } = await jsonDrill('disk-pressure', [], { runStatus: 'escalated' });
    expect(t.steps.map((s) => [s.name, s.status, s.checkOk])).toEqual([['vacuumDeadTuples(drill_disk)', 'done', true]]);
    const fell = t.checks.find((c) => c.name === 'the dead tuples fell')!;
    const m = /^drill_disk\.order_events \(pg_stat_user_tables\): n_dead_tup (\d+) → (\d+), vacuum_count 0 → 1, autovacuum_count 0, last_vacuum after the alert$/.exec(fell.detail);
    expect(m, fell.detail).not.toBeNull();
    expect(Number(m![1])).toBe(40_000);
    expect(Number(m![2])).toBeLessThan(40_000);
    expect(t.checks.find((c) => c.name === 'DevOps paged')!.detail).toBe("1 trigger(s): DevOps's routing key; run_status escalated (threshold 0.01 %, no maxSize)");
    expect(t.measured.map((x) => [x.name, x.ok])).toEqual([['time to page (break → DevOps paged)', true]]);
    expect(t.measured[0]!.ms!).toBeGreaterThanOrEqual(t.detectionMs);
  });

  it('the table vacuumed before the alert (dead tuples already gone): the handler has nothing to vacuum, and the drill reports not recovered', async () => {
    const cleanup = new Cleanup();
    const t = await runTrial('disk-pressure', 1, { say: () => undefined, step: () => undefined }, cleanup, {
      afterBreak: async (sb) => {
        const c = new pg.Client({ connectionString: sb.cluster.primary.url('drill_disk') });
        await c.connect();
        try {
          await c.query('VACUUM order_events');
        } finally {
          await c.end();
        }
      },
    });
    expect(cleanup.size).toBe(0);
    expect(t.steps).toEqual([]);
    expect(t.recovered).toBe(false);
    // The dead tuples did fall, but not by dbpilot: the drill tells them apart by when the VACUUM ran.
    const fell = t.checks.find((c) => c.name === 'the dead tuples fell')!;
    expect(fell.ok).toBe(false);
    expect(fell.detail).toMatch(/: n_dead_tup 40000 → 0, vacuum_count 0 → 1, autovacuum_count 0, last_vacuum BEFORE the alert$/);
  });
});
