/**
 * The audit store on real SQLite files in a temp dir: schema migrations (applied once, a newer
 * schema refused), the dedupe index, status transitions, ordering and filters, steps, per-target
 * locks (also between two processes' connections to one file) and the escalation outbox.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DbpilotError } from '../../src/errors.js';
import { FINAL_STATUSES, Store, type NewRun, type RunStatus } from '../../src/store/store.js';

/** The schema version this build migrates to (one migration per version). */
const LATEST = 7;
const ALL_VERSIONS = Array.from({ length: LATEST }, (_, i) => ({ version: i + 1 }));

const dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-store-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
const fresh = () => path.join(dir, `s${++n}`, 'dbpilot.sqlite');

const open: Store[] = [];
function store(p = fresh()): Store {
  const s = new Store(p);
  open.push(s);
  return s;
}
afterEach(() => {
  for (const s of open.splice(0)) s.close();
});

function raw(p: string): Database.Database {
  return new Database(p);
}

const run = (over: Partial<NewRun> = {}): NewRun => ({
  handler: 'slow-queries',
  alertname: 'PostgresLongRunningQueries',
  fingerprint: 'abc123',
  startsAt: '2026-11-27T16:00:43.799Z',
  target: 'postgres/10.0.0.5:5432/lomash_orders',
  mode: 'auto',
  status: 'planning',
  labels: { alertname: 'PostgresLongRunningQueries', datname: 'lomash_orders' },
  ...over,
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('schema migrations', () => {
  it('creates a new store (and its directory) at the latest schema version, in WAL mode', () => {
    const p = fresh();
    const s = store(p);
    expect(s.schemaVersion).toBe(LATEST);
    s.close();
    const db = raw(p);
    try {
      const tables = (db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`).all() as { name: string }[]).map((t) => t.name);
      expect(tables).toEqual(expect.arrayContaining(['runs', 'steps', 'locks', 'outbox', 'schema_migrations', 'intents', 'snapshots', 'page_summary']));
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
      expect(db.prepare('SELECT version FROM schema_migrations ORDER BY version').all()).toEqual(ALL_VERSIONS);
    } finally {
      db.close();
    }
  });

  it('re-opening an existing store does not re-run its migrations and keeps its data', async () => {
    const p = fresh();
    const first = new Store(p);
    const created = first.createRun(run())!;
    first.close();
    const db = raw(p);
    const appliedAt = (db.prepare('SELECT applied_at FROM schema_migrations WHERE version = 1').get() as { applied_at: string }).applied_at;
    db.close();
    await sleep(5);
    for (let i = 0; i < 3; i++) {
      const again = new Store(p);
      expect(again.schemaVersion).toBe(LATEST);
      expect(again.getRun(created.id)).toEqual(created);
      again.close();
    }
    const after = raw(p);
    try {
      expect(after.prepare('SELECT version, applied_at FROM schema_migrations WHERE version = 1').all()).toEqual([{ version: 1, applied_at: appliedAt }]);
      expect(after.prepare('SELECT count(*) AS n FROM schema_migrations').get()).toEqual({ n: LATEST });
    } finally {
      after.close();
    }
  });

  it('refuses a store written by a newer dbpilot (higher schema version) and leaves it untouched', () => {
    const p = fresh();
    const s = new Store(p);
    const created = s.createRun(run())!;
    s.close();
    const db = raw(p);
    db.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(LATEST + 1, new Date().toISOString());
    db.exec('CREATE TABLE from_the_future (x INTEGER)');
    db.close();

    let err: unknown;
    try {
      store(p);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DbpilotError);
    expect((err as DbpilotError).code).toBe('DBPILOT_STORE_TOO_NEW');
    expect((err as Error).message).toContain(p);
    expect((err as Error).message).toContain(`schema version ${LATEST + 1}; this dbpilot knows ${LATEST}`);

    const check = raw(p);
    try {
      expect(check.prepare('SELECT version FROM schema_migrations ORDER BY version').all()).toEqual([...ALL_VERSIONS, { version: LATEST + 1 }]);
      expect(check.prepare('SELECT id FROM runs').all()).toEqual([{ id: created.id }]);
    } finally {
      check.close();
    }
  });

  it('refuses a file that is not a store, or a path it cannot create, with DBPILOT_STORE_OPEN_FAILED naming the path', () => {
    const garbage = path.join(dir, 'garbage.sqlite');
    writeFileSync(garbage, 'this is not an SQLite database, it is a text file '.repeat(200));
    const blocker = path.join(dir, 'a-file');
    writeFileSync(blocker, 'x');
    for (const p of [garbage, path.join(blocker, 'dbpilot.sqlite')]) {
      let err: unknown;
      try {
        store(p);
      } catch (e) {
        err = e;
      }
      expect(err, p).toBeInstanceOf(DbpilotError);
      expect((err as DbpilotError).code).toBe('DBPILOT_STORE_OPEN_FAILED');
      expect((err as Error).message).toContain(p);
    }
  });
});

describe('runs', () => {
  it('one alert occurrence is one run: a repeat of (handler, fingerprint, startsAt) inserts nothing', () => {
    const s = store();
    const first = s.createRun(run());
    expect(first).not.toBeNull();
    expect(s.createRun(run({ status: 'escalated', mode: 'off' }))).toBeNull();
    expect(s.createRun(run({ startsAt: '2026-11-27T17:00:00Z' }))).not.toBeNull(); // the next occurrence
    expect(s.createRun(run({ fingerprint: 'abc124' }))).not.toBeNull();
    expect(s.createRun(run({ handler: 'disk-full' }))).not.toBeNull();
    // Runs started by a human are never deduplicated.
    expect(s.createRun(run({ origin: 'cli' }))).not.toBeNull();
    expect(s.createRun(run({ origin: 'cli' }))).not.toBeNull();
    expect(s.listRuns()).toHaveLength(6);
    expect(s.getRun(first!.id)).toMatchObject({ status: 'planning', origin: 'alertmanager', finishedAt: null });
  });

  it('the dedupe holds between two connections to one file (service and CLI)', () => {
    const p = fresh();
    const a = store(p);
    const b = store(p);
    const results = Array.from({ length: 50 }, (_, i) => (i % 2 === 0 ? a : b).createRun(run()));
    expect(results.filter((r) => r !== null)).toHaveLength(1);
    expect(a.listRuns()).toHaveLength(1);
  });

  it('round-trips labels, plan and reason, and stamps finished_at for final statuses only', () => {
    const s = store();
    const labels = { alertname: 'X', 'weird key': 'ünïcødé ✓', quote: `'"\\`, empty: '' };
    const r = s.createRun(run({ labels, plan: { summary: 's', data: { pids: [1, 2] } }, reason: 'why', status: 'escalated' }))!;
    expect(r).toMatchObject({ labels, plan: { summary: 's', data: { pids: [1, 2] } }, reason: 'why', status: 'escalated' });
    expect(r.finishedAt).toBe(r.createdAt);
    for (const status of ['planning', 'awaiting_approval', 'running'] as RunStatus[]) {
      const x = s.createRun(run({ fingerprint: `f${status.length}${status[0]}`, status }))!;
      expect(x.finishedAt).toBeNull();
    }
    expect([...FINAL_STATUSES].sort()).toEqual(['cancelled', 'dry_run', 'escalated', 'failed', 'skipped', 'succeeded']);
  });

  it('setRunStatus with `from` changes only a run in one of those statuses', () => {
    const s = store();
    const r = s.createRun(run())!;
    expect(s.setRunStatus(r.id, 'awaiting_approval', { from: ['planning'], reason: 'waiting', plan: { summary: 'p' } })).toBe(true);
    expect(s.getRun(r.id)).toMatchObject({ status: 'awaiting_approval', reason: 'waiting', plan: { summary: 'p' }, finishedAt: null });
    // Two approvers race: only one update wins.
    expect(s.setRunStatus(r.id, 'running', { from: ['awaiting_approval'], approvedBy: 'alice', owner: 'pod-a/1' })).toBe(true);
    expect(s.setRunStatus(r.id, 'running', { from: ['awaiting_approval'], approvedBy: 'bob', owner: 'pod-b/1' })).toBe(false);
    expect(s.getRun(r.id)).toMatchObject({ status: 'running', approvedBy: 'alice', owner: 'pod-a/1' });
    expect(s.setRunStatus(r.id, 'cancelled', { from: ['awaiting_approval', 'planning'] })).toBe(false);
    expect(s.setRunStatus(r.id, 'succeeded', { reason: 'done' })).toBe(true);
    const done = s.getRun(r.id)!;
    expect(done.status).toBe('succeeded');
    expect(done.finishedAt).not.toBeNull();
    expect(done.reason).toBe('done');
    expect(s.setRunStatus('no-such-id', 'failed')).toBe(false);
  });

  it('lists newest first, filtered, with the limit clamped to 1..1000', async () => {
    const s = store();
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) {
      ids.push(s.createRun(run({ fingerprint: `f${i}`, alertname: i % 2 ? 'RedisDown' : 'PostgresLongRunningQueries', handler: i % 3 ? 'slow-queries' : 'redis-failure', status: i < 3 ? 'succeeded' : 'failed' }))!.id);
      if (i === 2) await sleep(3);
    }
    expect(s.listRuns().map((r) => r.id)).toEqual([...ids].reverse());
    expect(s.listRuns({ alertname: 'RedisDown' }).map((r) => r.fingerprint)).toEqual(['f5', 'f3', 'f1']);
    expect(s.listRuns({ status: 'failed', handler: 'slow-queries' }).map((r) => r.fingerprint)).toEqual(['f5', 'f4']);
    expect(s.listRuns({ fingerprint: 'f2' }).map((r) => r.fingerprint)).toEqual(['f2']);
    expect(s.listRuns({ limit: 2 }).map((r) => r.fingerprint)).toEqual(['f5', 'f4']);
    expect(s.listRuns({ limit: 0 })).toHaveLength(1);
    expect(s.listRuns({ limit: 100_000 })).toHaveLength(6);
    // Filters are values, never SQL.
    expect(s.listRuns({ alertname: "x' OR '1'='1" })).toEqual([]);
  });

  it('finds open runs of a fingerprint, in-flight runs, and runs that acted on a target', () => {
    const s = store();
    const mk = (fingerprint: string, status: RunStatus, mode = 'auto', target = 't1') => s.createRun(run({ fingerprint, status, mode, target }))!;
    const waiting = mk('fa', 'awaiting_approval', 'approve');
    const planning = mk('fa2', 'planning');
    const running = mk('fr', 'running');
    mk('fd', 'dry_run', 'dry-run');
    mk('fs', 'skipped');
    const ok = mk('fo', 'succeeded', 'manual');
    const failed = mk('ff', 'failed', 'approve');
    mk('fe', 'escalated', 'off');
    mk('fx', 'succeeded', 'auto', 't2');
    const noStep = mk('fn', 'escalated', 'auto'); // e.g. unsafe to act: it started no step, so it did not act
    // A run acted when at least one of its steps started.
    for (const r of [running, ok, failed, noStep]) s.putSteps(r.id, [{ name: 'step', command: 'cmd' }]);
    for (const r of [running, ok, failed]) s.stepStarted(r.id, 0);
    expect(s.openRunsFor('fa').map((r) => r.id)).toEqual([waiting.id]);
    expect(s.openRunsFor('fo')).toEqual([]);
    expect(s.inFlightRuns().map((r) => r.id)).toEqual([planning.id, running.id]);
    const acted = s.actedRunsOnTarget('slow-queries', 't1', new Date(Date.now() - 60_000).toISOString()).map((r) => r.id);
    expect(acted.sort()).toEqual([running.id, ok.id, failed.id].sort());
    expect(s.actedRunsOnTarget('slow-queries', 't1', new Date(Date.now() + 60_000).toISOString())).toEqual([]);
    expect(s.actedRunsOnTarget('redis-failure', 't1', '1970-01-01T00:00:00Z')).toEqual([]);
  });
});

describe('steps', () => {
  it('records planned steps once, each start before the action, output, and the finish with its check', () => {
    const s = store();
    const r = s.createRun(run())!;
    s.putSteps(r.id, [
      { name: 'cancelBackends', command: 'psql -c "SELECT pg_cancel_backend(1)"' },
      { name: 'terminateBackends', command: 'psql -c "SELECT pg_terminate_backend(1)"' },
    ]);
    s.putSteps(r.id, [{ name: 'other', command: 'x' }]); // a resumed run re-plans: nothing changes
    expect(s.steps(r.id).map((st) => [st.idx, st.name, st.status, st.attempts])).toEqual([
      [0, 'cancelBackends', 'planned', 0],
      [1, 'terminateBackends', 'planned', 0],
    ]);
    s.stepStarted(r.id, 0);
    let st = s.steps(r.id)[0]!;
    expect(st.status).toBe('running');
    expect(st.startedAt).not.toBeNull();
    expect(st.attempts).toBe(1);
    s.stepOutput(r.id, 0, { cancelled: [{ pid: 1, signalled: true }] });
    s.stepFinished(r.id, 0, 'done', { check: { ok: true, detail: 'stopped' } });
    st = s.steps(r.id)[0]!;
    expect(st).toMatchObject({ status: 'done', output: { cancelled: [{ pid: 1, signalled: true }] }, check: { ok: true, detail: 'stopped' }, error: null });
    expect(st.finishedAt).not.toBeNull();
    s.stepStarted(r.id, 1);
    s.stepStarted(r.id, 1); // an idempotent step repeated after a restart
    s.stepFinished(r.id, 1, 'error', { error: 'connection refused' });
    expect(s.steps(r.id)[1]).toMatchObject({ status: 'error', error: 'connection refused', attempts: 2, output: null });
    expect(s.steps('other-run')).toEqual([]);
  });
});

describe('per-target locks', () => {
  // Owners are host/pid/token; `alive` says which are still running.
  const OWNER = 'host/100/aaaa';
  const LIVE_OTHER = 'host/200/bbbb';
  const DEAD = 'host/300/cccc';
  const alive = (o: string) => o !== DEAD;
  const take = (s: Store, target: string, runId: string, owner = OWNER) => s.acquireLock(target, runId, owner, alive) === 'acquired';

  it('one run per target; re-entrant for its holder; released only by its holder', () => {
    const s = store();
    expect(s.acquireLock('t1', 'run-a', OWNER, alive)).toBe('acquired');
    expect(s.acquireLock('t1', 'run-a', OWNER, alive)).toBe('acquired');
    expect(s.acquireLock('t1', 'run-b', OWNER, alive)).toBe('other-run');
    expect(take(s, 't2', 'run-b')).toBe(true);
    expect(s.lockHolder('t1')).toBe('run-a');
    s.releaseLock('t1', 'run-b');
    expect(s.lockHolder('t1')).toBe('run-a');
    s.releaseLock('t1', 'run-a');
    expect(s.lockHolder('t1')).toBeNull();
    expect(take(s, 't1', 'run-b')).toBe(true);
  });

  it('the same run held by another live process is not re-entered; held by a dead one, it is taken over', () => {
    const s = store();
    expect(s.acquireLock('t', 'run-a', LIVE_OTHER, alive)).toBe('acquired');
    expect(s.acquireLock('t', 'run-a', OWNER, alive)).toBe('same-run-elsewhere');
    expect(s.lockOwner('t')).toEqual({ runId: 'run-a', owner: LIVE_OTHER });
    const d = store();
    expect(d.acquireLock('t', 'run-a', DEAD, alive)).toBe('acquired');
    expect(d.acquireLock('t', 'run-a', OWNER, alive)).toBe('acquired');
    expect(d.lockOwner('t')).toEqual({ runId: 'run-a', owner: OWNER });
  });

  it('is shared by every connection to the store file, and survives a restart', () => {
    const p = fresh();
    const a = store(p);
    const b = store(p);
    expect(a.acquireLock('postgres/x/db', 'run-a', DEAD, alive)).toBe('acquired');
    expect(b.acquireLock('postgres/x/db', 'run-b', OWNER, alive)).toBe('other-run');
    expect(b.lockHolder('postgres/x/db')).toBe('run-a');
    a.close();
    const c = store(p);
    expect(c.lockHolder('postgres/x/db')).toBe('run-a');
    expect(c.acquireLock('postgres/x/db', 'run-a', OWNER, alive)).toBe('acquired'); // a resumed run takes over its own lock from the dead process
  });

  it('property: whatever the interleaving of acquire/release over two connections, a target has at most one holder', () => {
    const p = fresh();
    const conns = [store(p), store(p)];
    fc.assert(
      fc.property(
        fc.array(fc.record({ conn: fc.integer({ min: 0, max: 1 }), op: fc.constantFrom('acquire', 'release'), target: fc.constantFrom('t1', 't2'), runId: fc.constantFrom('r1', 'r2', 'r3') }), { maxLength: 40 }),
        (ops) => {
          const model = new Map<string, string>();
          for (const { target } of [{ target: 't1' }, { target: 't2' }]) for (const r of ['r1', 'r2', 'r3']) conns[0]!.releaseLock(target, r);
          for (const o of ops) {
            const s = conns[o.conn]!;
            if (o.op === 'acquire') {
              const holder = model.get(o.target);
              const got = take(s, o.target, o.runId);
              expect(got).toBe(holder === undefined || holder === o.runId);
              if (got) model.set(o.target, o.runId);
            } else {
              s.releaseLock(o.target, o.runId);
              if (model.get(o.target) === o.runId) model.delete(o.target);
            }
            for (const t of ['t1', 't2']) expect(conns[1 - o.conn]!.lockHolder(t)).toBe(model.get(t) ?? null);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('escalation outbox', () => {
  const trigger = (dedupKey: string, team = 'devops') => ({ team, dedupKey, action: 'trigger' as const, event: { event_action: 'trigger', dedup_key: dedupKey, payload: { summary: 's' } } });
  const resolve = (dedupKey: string, team = 'devops') => ({ team, dedupKey, action: 'resolve' as const, event: { event_action: 'resolve', dedup_key: dedupKey } });

  it('never stores a routing key', () => {
    const s = store();
    expect(() => s.enqueue({ team: 'devops', dedupKey: 'k', action: 'trigger', event: { routing_key: 'DEVOPS00000000000000000000000004' } })).toThrow(
      expect.objectContaining({ code: 'DBPILOT_STORE_SECRET' }),
    );
    expect(s.outbox()).toEqual([]);
  });

  it('hands out one event per dedup key, oldest first, so a resolve never overtakes its trigger', () => {
    const s = store();
    const t1 = s.enqueue(trigger('k1'));
    const r1 = s.enqueue(resolve('k1'));
    const t2 = s.enqueue(trigger('k2', 'lead-dba'));
    expect(s.outboxPending()).toBe(3);
    expect(s.dueOutbox(Date.now()).map((o) => o.id)).toEqual([t1, t2]);
    // t1 fails and is retried later: its resolve must still wait.
    s.outboxRetry(t1, Date.now() + 60_000, 'HTTP 503');
    expect(s.dueOutbox(Date.now()).map((o) => o.id)).toEqual([t2]);
    expect(s.nextOutboxDue()).toBeLessThanOrEqual(Date.now());
    s.outboxDelivered(t2);
    expect(s.dueOutbox(Date.now())).toEqual([]);
    expect(s.nextOutboxDue()).not.toBeNull();
    expect(s.dueOutbox(Date.now() + 61_000).map((o) => o.id)).toEqual([t1]);
    s.outboxDelivered(t1);
    expect(s.dueOutbox(Date.now()).map((o) => [o.id, o.action])).toEqual([[r1, 'resolve']]);
    const row = s.outbox().find((o) => o.id === t1)!;
    expect(row).toMatchObject({ status: 'delivered', attempts: 2, lastError: null, team: 'devops', dedupKey: 'k1', action: 'trigger' });
    expect(row.deliveredAt).not.toBeNull();
    s.outboxDead(r1, 'HTTP 400: invalid event');
    expect(s.outbox({ status: 'dead' }).map((o) => [o.id, o.lastError])).toEqual([[r1, 'HTTP 400: invalid event']]);
    expect(s.outboxPending()).toBe(0);
    expect(s.nextOutboxDue()).toBeNull();
  });

  it('knows whether an incident is open: triggered and not resolved; dead letters do not count', () => {
    const s = store();
    expect(s.openIncident('k')).toBeNull();
    s.enqueue(trigger('k', 'em-dba'));
    expect(s.openIncident('k')).toEqual({ team: 'em-dba' });
    s.enqueue(resolve('k', 'em-dba'));
    expect(s.openIncident('k')).toBeNull();
    const again = s.enqueue(trigger('k', 'em-dba'));
    expect(s.openIncident('k')).toEqual({ team: 'em-dba' });
    s.outboxDead(again, 'rejected');
    expect(s.openIncident('k')).toBeNull();
  });

  it('property: dueOutbox always returns the oldest pending event of each key, at most one per key', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.record({ op: fc.constant('enqueue' as const), key: fc.constantFrom('a', 'b', 'c'), action: fc.constantFrom('trigger' as const, 'resolve' as const) }),
            fc.record({ op: fc.constantFrom('deliver' as const, 'dead' as const, 'retry' as const), pick: fc.nat() }),
          ),
          { maxLength: 30 },
        ),
        (ops) => {
          const s = new Store(':memory:');
          try {
            const model: { id: number; key: string; status: 'pending' | 'delivered' | 'dead'; due: number }[] = [];
            const now = Date.now();
            for (const o of ops) {
              if (o.op === 'enqueue') {
                const id = s.enqueue(o.action === 'trigger' ? trigger(o.key) : resolve(o.key));
                model.push({ id, key: o.key, status: 'pending', due: 0 });
              } else {
                const due = s.dueOutbox(now + 10_000_000);
                const row = due[o.pick % Math.max(due.length, 1)];
                if (!row) continue;
                const m = model.find((x) => x.id === row.id)!;
                if (o.op === 'deliver') (s.outboxDelivered(row.id), (m.status = 'delivered'));
                else if (o.op === 'dead') (s.outboxDead(row.id, 'x'), (m.status = 'dead'));
                else (s.outboxRetry(row.id, now + 1_000_000, 'x'), (m.due = 1));
              }
              const due = s.dueOutbox(now + 10_000_000);
              const expected = [...new Set(model.filter((m) => m.status === 'pending').map((m) => m.key))]
                .map((k) => model.filter((m) => m.key === k && m.status === 'pending').sort((x, y) => x.id - y.id)[0]!.id)
                .sort((x, y) => x - y);
              expect(due.map((d) => d.id)).toEqual(expected);
              expect(s.outboxPending()).toBe(model.filter((m) => m.status === 'pending').length);
              // Retried events are not due before their time, and hold back their key.
              const dueNow = s.dueOutbox(now).map((d) => d.id);
              for (const id of dueNow) expect(model.find((m) => m.id === id)!.due).toBe(0);
            }
          } finally {
            s.close();
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('grouped page members', () => {
  /** What the summary must equal: the same figures computed in JS from every open member. */
  function fromMembers(s: Store, key: string, listed: number, reasons: number) {
    const members = s.openPageMembers(key);
    const counts = new Map<string, number>();
    for (const m of members) counts.set(m.alertname, (counts.get(m.alertname) ?? 0) + 1);
    return {
      total: members.length,
      byAlertname: [...counts].sort(),
      severities: [...new Set(members.map((m) => m.labels.severity ?? ''))].sort(),
      // Most frequent first, ties by text.
      reasons: [...members.reduce((c, m) => c.set(m.reason ?? 'no remediation', (c.get(m.reason ?? 'no remediation') ?? 0) + 1), new Map<string, number>())]
        .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
        .slice(0, reasons)
        .map(([r]) => r),
      listed: members.slice(0, listed),
    };
  }

  it('a store of schema 6 gets the summary of its open members when it migrates', () => {
    const p = fresh();
    const s = new Store(p);
    const key = 'dbpilot/group/devops/old';
    s.addPageMembers(key, [
      { fingerprint: 'a', startsAt: 't1', alertname: 'RedisDown', runId: null, reason: null, labels: { severity: 'critical' } },
      { fingerprint: 'b', startsAt: 't1', alertname: 'RedisDown', runId: null, reason: 'handler off', labels: {} },
      { fingerprint: 'c', startsAt: 't1', alertname: 'Other', runId: null, reason: 'handler off', labels: { severity: 'warning' } },
    ]);
    s.resolvePageMember('c', 't1');
    s.close();
    // As a dbpilot of schema 6 left it: no summary table, no triggers, no version 7.
    const db = raw(p);
    db.exec(`DROP TRIGGER page_members_opened; DROP TRIGGER page_members_changed; DROP TRIGGER page_members_removed;
             DROP TABLE page_summary; DROP INDEX page_members_open; DELETE FROM schema_migrations WHERE version = 7;`);
    db.close();
    const again = store(p);
    expect(again.schemaVersion).toBe(7);
    const got = again.openPageSummary(key, 50, 10);
    expect({ ...got, listed: got.listed.map((m) => m.fingerprint), byAlertname: got.byAlertname.sort() }).toEqual({
      total: 2,
      byAlertname: [['RedisDown', 2]],
      severities: expect.arrayContaining(['critical', '']),
      reasons: ['handler off', 'no remediation'],
      listed: ['a', 'b'],
    });
    expect(got.severities).toHaveLength(2);
    // And the triggers work on the migrated store.
    again.resolvePageMember('a', 't1');
    expect(again.openPageSummary(key, 50, 10).total).toBe(1);
  });

  it('property: the summary SQLite counts equals the one computed from every open member', () => {
    const member = fc.record({
      fingerprint: fc.constantFrom('a1', 'b2', 'c3', 'd4'),
      startsAt: fc.constantFrom('2026-12-01T00:00:00.000Z', '2026-12-01T00:05:00.000Z'),
      alertname: fc.constantFrom('RedisDown', 'PostgresDiskAlmostFull', 'Other'),
      reason: fc.option(fc.constantFrom('no remediation', 'handler off', 'refused: unknown server', 'r4'), { nil: null }),
      severity: fc.option(fc.constantFrom('critical', 'warning', 'info', ''), { nil: undefined }),
    });
    // Adds (re-adding a member re-opens it, possibly with another reason) and resolves, interleaved.
    const op = fc.oneof(fc.record({ add: fc.array(member, { maxLength: 6 }) }), fc.record({ resolve: fc.nat(12) }));
    fc.assert(
      fc.property(fc.array(op, { maxLength: 12 }), fc.integer({ min: 1, max: 8 }), (ops, listed) => {
        const s = store();
        const key = 'dbpilot/group/devops/k';
        const all: { fingerprint: string; startsAt: string }[] = [];
        for (const o of ops) {
          if ('add' in o) {
            s.addPageMembers(
              key,
              o.add.map((m) => ({
                fingerprint: m.fingerprint,
                startsAt: m.startsAt,
                alertname: m.alertname,
                runId: null,
                reason: m.reason,
                labels: (m.severity === undefined ? {} : { severity: m.severity }) as Record<string, string>,
              })),
            );
            all.push(...o.add);
          } else if (all[o.resolve]) {
            s.resolvePageMember(all[o.resolve]!.fingerprint, all[o.resolve]!.startsAt);
          }
        }
        const got = s.openPageSummary(key, listed, 3);
        const want = fromMembers(s, key, listed, 3);
        expect({ ...got, byAlertname: [...got.byAlertname].sort(), severities: [...got.severities].sort() }).toEqual(want);
        s.close();
        open.splice(open.indexOf(s), 1);
      }),
      { numRuns: 300 },
    );
  });
});
