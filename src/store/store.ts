/**
 * The audit store: every remediation run and each of its steps, the per-target locks, and the
 * escalation outbox. Embedded SQLite (WAL, synchronous=FULL) so that what was written before a
 * step executed is on disk when the process dies mid-step — that is what lets a restart resume or
 * escalate instead of repeating a step blindly. Synchronous by design (better-sqlite3): a
 * check-then-insert is atomic within the event loop, and across processes through SQLite's locks.
 *
 * Secrets never enter the store: outbox rows hold the team, never the routing key (it is looked up
 * from the configuration at send time).
 */
import { existsSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import { DbpilotError } from '../errors.js';

export type RunStatus =
  | 'planning'
  | 'awaiting_approval'
  | 'running'
  | 'succeeded'
  | 'failed'
  | 'escalated'
  | 'cancelled'
  | 'dry_run'
  | 'skipped';

export const FINAL_STATUSES: readonly RunStatus[] = ['succeeded', 'failed', 'escalated', 'cancelled', 'dry_run', 'skipped'];

export type StepStatus = 'planned' | 'running' | 'done' | 'check_failed' | 'error' | 'skipped';

export interface RunRow {
  id: string;
  handler: string;
  alertname: string;
  fingerprint: string;
  startsAt: string;
  target: string;
  mode: string;
  status: RunStatus;
  reason: string | null;
  plan: unknown;
  labels: Record<string, string>;
  origin: string;
  createdAt: string;
  updatedAt: string;
  finishedAt: string | null;
  approvedBy: string | null;
  owner: string | null;
  /** When Alertmanager said the alert resolved (a run may still be acting then). */
  alertResolvedAt: string | null;
}

export interface StepRow {
  runId: string;
  idx: number;
  name: string;
  command: string;
  status: StepStatus;
  startedAt: string | null;
  finishedAt: string | null;
  output: unknown;
  check: unknown;
  error: string | null;
  /** How many times the step's action was started: more than 1 only when a resume re-ran an idempotent step. */
  attempts: number;
}

export interface PageMember {
  dedupKey: string;
  fingerprint: string;
  startsAt: string;
  alertname: string;
  runId: string | null;
  reason: string | null;
  labels: Record<string, string>;
  addedAt: string;
  resolvedAt: string | null;
}

/** The open members of a grouped page, summarised (Store.openPageSummary). */
export interface PageSummary {
  total: number;
  /** [alertname, open members] per alert name, unordered. */
  byAlertname: [string, number][];
  /** Distinct values of the members' `severity` label ('' where absent). */
  severities: string[];
  /** Distinct reasons ('no remediation' where none), the most frequent first. */
  reasons: string[];
  /** The oldest open members, in full. */
  listed: PageMember[];
}

/** An RDS snapshot dbpilot asked for (see the snapshots migration). */
export interface SnapshotRow {
  id: number;
  snapshotId: string;
  instance: string;
  /** What started it: schedule, risky-step, cli, handler. */
  trigger: string;
  reason: string;
  runId: string | null;
  requestedBy: string;
  /** True when this request used a snapshot that was already being made. */
  joined: boolean;
  /** `creating`, `available`, `failed`, `deleted`. */
  status: string;
  requestedAt: string;
  finishedAt: string | null;
  /** SnapshotCreateTime as RDS reported it. */
  snapshotTime: string | null;
  sizeGiB: number | null;
  errorCode: string | null;
  error: string | null;
  deletedAt: string | null;
}

export interface OutboxRow {
  id: number;
  team: string;
  dedupKey: string;
  action: 'trigger' | 'resolve';
  event: Record<string, unknown>;
  status: 'pending' | 'delivered' | 'dead';
  attempts: number;
  nextAttemptAt: number;
  lastError: string | null;
  createdAt: string;
  deliveredAt: string | null;
  claimedBy: string | null;
}

const MIGRATIONS: string[] = [
  `CREATE TABLE runs (
     id TEXT PRIMARY KEY,
     handler TEXT NOT NULL,
     alertname TEXT NOT NULL,
     fingerprint TEXT NOT NULL,
     starts_at TEXT NOT NULL,
     target TEXT NOT NULL,
     mode TEXT NOT NULL,
     status TEXT NOT NULL,
     reason TEXT,
     plan TEXT,
     labels TEXT NOT NULL DEFAULT '{}',
     origin TEXT NOT NULL DEFAULT 'alertmanager',
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL,
     finished_at TEXT,
     approved_by TEXT,
     owner TEXT
   );
   -- Alertmanager re-sends a firing alert every repeat_interval: one alert occurrence is one run.
   CREATE UNIQUE INDEX runs_occurrence ON runs(handler, fingerprint, starts_at) WHERE origin = 'alertmanager';
   CREATE INDEX runs_target ON runs(target, created_at);
   CREATE INDEX runs_status ON runs(status);
   CREATE TABLE steps (
     run_id TEXT NOT NULL REFERENCES runs(id),
     idx INTEGER NOT NULL,
     name TEXT NOT NULL,
     command TEXT NOT NULL,
     status TEXT NOT NULL,
     started_at TEXT,
     finished_at TEXT,
     output TEXT,
     "check" TEXT,
     error TEXT,
     attempts INTEGER NOT NULL DEFAULT 0,
     PRIMARY KEY (run_id, idx)
   );
   CREATE TABLE locks (
     target TEXT PRIMARY KEY,
     run_id TEXT NOT NULL,
     acquired_at TEXT NOT NULL
   );
   CREATE TABLE outbox (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     team TEXT NOT NULL,
     dedup_key TEXT NOT NULL,
     action TEXT NOT NULL,
     event TEXT NOT NULL,
     status TEXT NOT NULL DEFAULT 'pending',
     attempts INTEGER NOT NULL DEFAULT 0,
     next_attempt_at INTEGER NOT NULL,
     last_error TEXT,
     created_at TEXT NOT NULL,
     delivered_at TEXT
   );
   CREATE INDEX outbox_due ON outbox(status, next_attempt_at);`,
  // Who holds a lock: a run id alone let a second process "re-enter" a run the first was still executing.
  `ALTER TABLE locks ADD COLUMN owner TEXT;`,
  // The outbox is read per dedup key (the head of each key's queue, the open incident of an alert) and
  // runs per fingerprint (a resolved alert): without these, every new alert scanned the whole history.
  `CREATE INDEX outbox_key ON outbox(dedup_key, status, id);
   CREATE INDEX runs_fingerprint ON runs(fingerprint, status);`,
  // Exactly one process delivers each row: a row is claimed (owner, until) before it is sent, and the
  // claim is cleared with its outcome. A claim left by a process that died expires, and the row is sent
  // by the next dispatcher. The dispatchers table tells the CLI whether a live service delivers pages.
  // Page members: the alerts one grouped page lists, so the page resolves when the last of them does.
  `ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
   ALTER TABLE outbox ADD COLUMN claim_until INTEGER;
   CREATE INDEX outbox_team ON outbox(team, status, next_attempt_at);
   CREATE TABLE dispatchers (owner TEXT PRIMARY KEY, heartbeat_at INTEGER NOT NULL);
   CREATE TABLE page_members (
     dedup_key TEXT NOT NULL,
     fingerprint TEXT NOT NULL,
     starts_at TEXT NOT NULL,
     alertname TEXT NOT NULL,
     run_id TEXT,
     reason TEXT,
     labels TEXT NOT NULL DEFAULT '{}',
     added_at TEXT NOT NULL,
     resolved_at TEXT,
     PRIMARY KEY (dedup_key, fingerprint, starts_at)
   );
   CREATE INDEX page_members_fingerprint ON page_members(fingerprint, resolved_at);`,
  // Scoped locks: a lock on a wider target waits ('waiting') for the narrower ones held, keeping new ones
  // out meanwhile. Intents: the local home of a multi-step run's intent when there is no Kubernetes API.
  `ALTER TABLE locks ADD COLUMN state TEXT NOT NULL DEFAULT 'held';
   ALTER TABLE runs ADD COLUMN alert_resolved_at TEXT;
   CREATE TABLE intents (name TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL, updated_at TEXT NOT NULL);`,
  // RDS snapshots dbpilot asked for: one row per request (a request that joined a snapshot already being
  // made has a row of its own naming the same snapshot), written before CreateDBSnapshot is sent.
  `CREATE TABLE snapshots (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     snapshot_id TEXT NOT NULL,
     instance TEXT NOT NULL,
     kind TEXT NOT NULL,
     reason TEXT NOT NULL,
     run_id TEXT,
     requested_by TEXT NOT NULL,
     joined INTEGER NOT NULL DEFAULT 0,
     status TEXT NOT NULL,
     requested_at TEXT NOT NULL,
     finished_at TEXT,
     snapshot_time TEXT,
     size_gib INTEGER,
     error_code TEXT,
     error TEXT,
     deleted_at TEXT
   );
   CREATE INDEX snapshots_instance ON snapshots(instance, status, requested_at);
   CREATE INDEX snapshots_snapshot ON snapshots(snapshot_id);`,
  // A grouped page's summary, kept by triggers as members are added, re-opened, changed and resolved:
  // open members per (alert name, severity label, reason). Rebuilding a storm's page on every batch
  // then reads a handful of summary rows and the 50 oldest members (the partial index), not every
  // member: admission stays linear in the size of the storm.
  `CREATE TABLE page_summary (
     dedup_key TEXT NOT NULL,
     alertname TEXT NOT NULL,
     severity TEXT NOT NULL,
     reason TEXT NOT NULL,
     open INTEGER NOT NULL,
     PRIMARY KEY (dedup_key, alertname, severity, reason)
   ) WITHOUT ROWID;
   CREATE INDEX page_members_open ON page_members(dedup_key, added_at) WHERE resolved_at IS NULL;
   INSERT INTO page_summary (dedup_key, alertname, severity, reason, open)
     SELECT dedup_key, alertname, coalesce(json_extract(labels, '$.severity'), ''), coalesce(reason, 'no remediation'), count(*)
       FROM page_members WHERE resolved_at IS NULL GROUP BY 1, 2, 3, 4;
   CREATE TRIGGER page_members_opened AFTER INSERT ON page_members WHEN NEW.resolved_at IS NULL BEGIN
     INSERT INTO page_summary (dedup_key, alertname, severity, reason, open)
       VALUES (NEW.dedup_key, NEW.alertname, coalesce(json_extract(NEW.labels, '$.severity'), ''), coalesce(NEW.reason, 'no remediation'), 1)
       ON CONFLICT DO UPDATE SET open = open + 1;
   END;
   CREATE TRIGGER page_members_changed AFTER UPDATE ON page_members BEGIN
     UPDATE page_summary SET open = open - 1
      WHERE OLD.resolved_at IS NULL AND dedup_key = OLD.dedup_key AND alertname = OLD.alertname
        AND severity = coalesce(json_extract(OLD.labels, '$.severity'), '') AND reason = coalesce(OLD.reason, 'no remediation');
     INSERT INTO page_summary (dedup_key, alertname, severity, reason, open)
       SELECT NEW.dedup_key, NEW.alertname, coalesce(json_extract(NEW.labels, '$.severity'), ''), coalesce(NEW.reason, 'no remediation'), 1
        WHERE NEW.resolved_at IS NULL
       ON CONFLICT DO UPDATE SET open = open + 1;
     DELETE FROM page_summary WHERE dedup_key = OLD.dedup_key AND open <= 0;
   END;
   CREATE TRIGGER page_members_removed AFTER DELETE ON page_members WHEN OLD.resolved_at IS NULL BEGIN
     UPDATE page_summary SET open = open - 1
      WHERE dedup_key = OLD.dedup_key AND alertname = OLD.alertname
        AND severity = coalesce(json_extract(OLD.labels, '$.severity'), '') AND reason = coalesce(OLD.reason, 'no remediation');
     DELETE FROM page_summary WHERE dedup_key = OLD.dedup_key AND open <= 0;
   END;`,
];

/** Lock keys are paths: `a` contains `a/b` and `a/b/c`. */
export function lockScopeContains(outer: string, inner: string): boolean {
  return inner.length > outer.length && inner.startsWith(outer) && inner[outer.length] === '/';
}

const now = () => new Date().toISOString();

function json(v: unknown): string | null {
  return v === undefined ? null : JSON.stringify(v);
}
function parse(v: unknown): unknown {
  return typeof v === 'string' ? JSON.parse(v) : null;
}

function toRun(r: Record<string, unknown>): RunRow {
  return {
    id: r.id as string,
    handler: r.handler as string,
    alertname: r.alertname as string,
    fingerprint: r.fingerprint as string,
    startsAt: r.starts_at as string,
    target: r.target as string,
    mode: r.mode as string,
    status: r.status as RunStatus,
    reason: (r.reason as string | null) ?? null,
    plan: parse(r.plan),
    labels: (parse(r.labels) as Record<string, string>) ?? {},
    origin: r.origin as string,
    createdAt: r.created_at as string,
    updatedAt: r.updated_at as string,
    finishedAt: (r.finished_at as string | null) ?? null,
    approvedBy: (r.approved_by as string | null) ?? null,
    owner: (r.owner as string | null) ?? null,
    alertResolvedAt: (r.alert_resolved_at as string | null) ?? null,
  };
}

function toStep(r: Record<string, unknown>): StepRow {
  return {
    runId: r.run_id as string,
    idx: r.idx as number,
    name: r.name as string,
    command: r.command as string,
    status: r.status as StepStatus,
    startedAt: (r.started_at as string | null) ?? null,
    finishedAt: (r.finished_at as string | null) ?? null,
    output: parse(r.output),
    check: parse(r.check),
    error: (r.error as string | null) ?? null,
    attempts: r.attempts as number,
  };
}

function toOutbox(r: Record<string, unknown>): OutboxRow {
  return {
    id: r.id as number,
    team: r.team as string,
    dedupKey: r.dedup_key as string,
    action: r.action as OutboxRow['action'],
    event: parse(r.event) as Record<string, unknown>,
    status: r.status as OutboxRow['status'],
    attempts: r.attempts as number,
    nextAttemptAt: r.next_attempt_at as number,
    lastError: (r.last_error as string | null) ?? null,
    createdAt: r.created_at as string,
    deliveredAt: (r.delivered_at as string | null) ?? null,
    claimedBy: (r.claimed_by as string | null) ?? null,
  };
}

function toSnapshot(r: Record<string, unknown>): SnapshotRow {
  return {
    id: r.id as number,
    snapshotId: r.snapshot_id as string,
    instance: r.instance as string,
    trigger: r.kind as string,
    reason: r.reason as string,
    runId: (r.run_id as string | null) ?? null,
    requestedBy: r.requested_by as string,
    joined: r.joined === 1,
    status: r.status as string,
    requestedAt: r.requested_at as string,
    finishedAt: (r.finished_at as string | null) ?? null,
    snapshotTime: (r.snapshot_time as string | null) ?? null,
    sizeGiB: (r.size_gib as number | null) ?? null,
    errorCode: (r.error_code as string | null) ?? null,
    error: (r.error as string | null) ?? null,
    deletedAt: (r.deleted_at as string | null) ?? null,
  };
}

function toMember(r: Record<string, unknown>): PageMember {
  return {
    dedupKey: r.dedup_key as string,
    fingerprint: r.fingerprint as string,
    startsAt: r.starts_at as string,
    alertname: r.alertname as string,
    runId: (r.run_id as string | null) ?? null,
    reason: (r.reason as string | null) ?? null,
    labels: (parse(r.labels) as Record<string, string>) ?? {},
    addedAt: r.added_at as string,
    resolvedAt: (r.resolved_at as string | null) ?? null,
  };
}

export interface RunFilter {
  alertname?: string;
  fingerprint?: string;
  status?: string;
  handler?: string;
}

function runWhere(filter: RunFilter): { where: string; params: Record<string, unknown> } {
  const where: string[] = [];
  const params: Record<string, unknown> = {};
  for (const k of ['alertname', 'fingerprint', 'status', 'handler'] as const) {
    if (filter[k] !== undefined) {
      where.push(`${k} = @${k}`);
      params[k] = filter[k];
    }
  }
  return { where: where.length ? `WHERE ${where.join(' AND ')}` : '', params };
}

export interface NewRun {
  handler: string;
  alertname: string;
  fingerprint: string;
  startsAt: string;
  target: string;
  mode: string;
  status: RunStatus;
  reason?: string | null;
  plan?: unknown;
  labels?: Record<string, string>;
  origin?: 'alertmanager' | 'cli' | 'intent';
  owner?: string;
}

/** Whether an error came from SQLite itself (disk full, locked, I/O, constraint): the store could not record. */
export function isStoreError(err: unknown): boolean {
  return err instanceof Database.SqliteError || (err instanceof DbpilotError && err.code.startsWith('DBPILOT_STORE'));
}

export class Store {
  private readonly db: Database.Database;

  /**
   * Opens (and creates or migrates) the store. `readonly`: for commands that only read (`dbpilot
   * audit`): the file must exist, nothing is created, migrated or written.
   */
  constructor(
    readonly path: string,
    opts: { readonly?: boolean } = {},
  ) {
    let db: Database.Database | undefined;
    try {
      if (opts.readonly) {
        if (path === ':memory:' || !existsSync(path)) {
          throw new DbpilotError('DBPILOT_STORE_NOT_FOUND', `no store at ${path}: nothing has been recorded there (store.path)`);
        }
        db = new Database(path, { readonly: true, fileMustExist: true });
        db.pragma('busy_timeout = 5000');
        this.db = db;
        const v = (db.prepare('SELECT max(version) AS v FROM schema_migrations').get() as { v: number | null }).v ?? 0;
        if (v > MIGRATIONS.length) throw new DbpilotError('DBPILOT_STORE_TOO_NEW', `the store at ${path} has schema version ${v}; this dbpilot knows ${MIGRATIONS.length}`);
        if (v < MIGRATIONS.length) throw new DbpilotError('DBPILOT_STORE_TOO_OLD', `the store at ${path} has schema version ${v}; start \`dbpilot serve\` once to migrate it`);
        return;
      }
      if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
      db = new Database(path);
      db.pragma('journal_mode = WAL');
      // FULL: a row written before a step runs must survive a power cut, not just a process crash.
      db.pragma('synchronous = FULL');
      db.pragma('busy_timeout = 5000');
      db.pragma('foreign_keys = ON');
      this.db = db;
      this.migrate();
    } catch (err) {
      db?.close();
      if (err instanceof DbpilotError) throw err;
      throw new DbpilotError('DBPILOT_STORE_OPEN_FAILED', `cannot open the store at ${path}: ${(err as Error).message}`);
    }
  }

  private readonly statements = new Map<string, Database.Statement>();

  /** Prepared once per SQL text: preparing on every call cost as much as the statements themselves. */
  private stmt(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) this.statements.set(sql, (st = this.db.prepare(sql)));
    return st;
  }

  /** Runs `fn` in one transaction (nested calls become savepoints): one commit, one fsync. */
  transaction<T>(fn: () => T): T {
    // One transaction function for all calls: better-sqlite3 prepares BEGIN/COMMIT per transaction() made.
    this.runInTransaction ??= this.db.transaction((f: () => unknown) => f());
    return this.runInTransaction(fn) as T;
  }

  private runInTransaction: ((f: () => unknown) => unknown) | undefined;

  private migrate(): void {
    this.db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)');
    const row = this.db.prepare('SELECT max(version) AS v FROM schema_migrations').get() as { v: number | null };
    const current = row.v ?? 0;
    if (current > MIGRATIONS.length) {
      throw new DbpilotError('DBPILOT_STORE_TOO_NEW', `the store at ${this.path} has schema version ${current}; this dbpilot knows ${MIGRATIONS.length}`);
    }
    for (let v = current + 1; v <= MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v - 1]!);
        this.db.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(v, now());
      })();
    }
  }

  get schemaVersion(): number {
    return (this.stmt('SELECT max(version) AS v FROM schema_migrations').get() as { v: number }).v;
  }

  // ---- runs ----

  /** Inserts a run unless this alert occurrence already has one; returns null for a repeat. */
  createRun(r: NewRun): RunRow | null {
    const id = randomUUID();
    const t = now();
    const final = FINAL_STATUSES.includes(r.status);
    const res = this.stmt(
        `INSERT OR IGNORE INTO runs (id, handler, alertname, fingerprint, starts_at, target, mode, status, reason, plan, labels, origin, created_at, updated_at, finished_at, owner)
         VALUES (@id, @handler, @alertname, @fingerprint, @startsAt, @target, @mode, @status, @reason, @plan, @labels, @origin, @t, @t, @finished, @owner)`,
      )
      .run({
        id,
        handler: r.handler,
        alertname: r.alertname,
        fingerprint: r.fingerprint,
        startsAt: r.startsAt,
        target: r.target,
        mode: r.mode,
        status: r.status,
        reason: r.reason ?? null,
        plan: json(r.plan),
        labels: JSON.stringify(r.labels ?? {}),
        origin: r.origin ?? 'alertmanager',
        t,
        finished: final ? t : null,
        owner: r.owner ?? null,
      });
    return res.changes === 1 ? this.getRun(id) : null;
  }

  getRun(id: string): RunRow | null {
    const r = this.stmt('SELECT * FROM runs WHERE id = ?').get(id) as Record<string, unknown> | undefined;
    return r ? toRun(r) : null;
  }

  /** Changes a run's status, optionally only from an expected status (returns false when it was not in it). */
  setRunStatus(id: string, status: RunStatus, opts: { reason?: string | null; from?: RunStatus[]; plan?: unknown; approvedBy?: string; owner?: string } = {}): boolean {
    const t = now();
    const sets = ['status = @status', 'updated_at = @t'];
    if (FINAL_STATUSES.includes(status)) sets.push('finished_at = @t');
    if (opts.reason !== undefined) sets.push('reason = @reason');
    if (opts.plan !== undefined) sets.push('plan = @plan');
    if (opts.approvedBy !== undefined) sets.push('approved_by = @approvedBy');
    if (opts.owner !== undefined) sets.push('owner = @owner');
    const where = opts.from ? ` AND status IN (${opts.from.map((_, i) => `@from${i}`).join(', ')})` : '';
    const params: Record<string, unknown> = {
      id,
      status,
      t,
      reason: opts.reason ?? null,
      plan: json(opts.plan),
      approvedBy: opts.approvedBy ?? null,
      owner: opts.owner ?? null,
    };
    opts.from?.forEach((s, i) => (params[`from${i}`] = s));
    return this.stmt(`UPDATE runs SET ${sets.join(', ')} WHERE id = @id${where}`).run(params).changes === 1;
  }

  /** The most runs one listing returns; more are read page by page (offset). */
  static readonly MAX_LIST = 1000;

  listRuns(filter: RunFilter & { limit?: number; offset?: number } = {}): RunRow[] {
    const { where, params } = runWhere(filter);
    params.limit = Math.min(Math.max(filter.limit ?? 100, 1), Store.MAX_LIST);
    params.offset = Math.max(filter.offset ?? 0, 0);
    const sql = `SELECT * FROM runs ${where} ORDER BY created_at DESC, rowid DESC LIMIT @limit OFFSET @offset`;
    return (this.stmt(sql).all(params) as Record<string, unknown>[]).map(toRun);
  }

  countRuns(filter: RunFilter = {}): number {
    const { where, params } = runWhere(filter);
    return (this.stmt(`SELECT count(*) AS n FROM runs ${where}`).get(params) as { n: number }).n;
  }

  /** Records that the alert of these runs resolved (a run still acting pages its outcome, then resolves it). */
  markAlertResolved(fingerprint: string): void {
    this.stmt(`UPDATE runs SET alert_resolved_at = ? WHERE fingerprint = ? AND alert_resolved_at IS NULL`).run(now(), fingerprint);
  }

  /** Runs of this alert occurrence still waiting or running (a resolved alert cancels those waiting). */
  openRunsFor(fingerprint: string): RunRow[] {
    return (
      this.stmt(`SELECT * FROM runs WHERE fingerprint = ? AND status IN ('planning', 'awaiting_approval', 'running')`).all(fingerprint) as Record<string, unknown>[]
    ).map(toRun);
  }

  /** Runs that were planning or executing when the process stopped. */
  inFlightRuns(): RunRow[] {
    return (this.stmt(`SELECT * FROM runs WHERE status IN ('planning', 'running') ORDER BY created_at`).all() as Record<string, unknown>[]).map(toRun);
  }

  /** The run (of any handler) executing on a target now, other than `exceptId`: the newest, or null. */
  runActingOn(target: string, exceptId: string): RunRow | null {
    const row = this.stmt(`SELECT * FROM runs WHERE target = ? AND status = 'running' AND id <> ? ORDER BY created_at DESC LIMIT 1`).get(target, exceptId) as
      | Record<string, unknown>
      | undefined;
    return row ? toRun(row) : null;
  }

  /** Runs that acted — started at least one step — on a target since a time: for cooldown and the attempt limit. */
  actedRunsOnTarget(handler: string, target: string, sinceIso: string): RunRow[] {
    return (
      this.stmt(
          `SELECT * FROM runs WHERE handler = ? AND target = ? AND created_at >= ?
             AND status IN ('running', 'succeeded', 'failed', 'escalated') AND mode IN ('auto', 'approve', 'manual')
             AND EXISTS (SELECT 1 FROM steps s WHERE s.run_id = runs.id AND s.attempts > 0)
           ORDER BY created_at DESC`,
        )
        .all(handler, target, sinceIso) as Record<string, unknown>[]
    ).map(toRun);
  }

  /** The newest recorded progress of a run: its own last update, or the last step started or finished. */
  lastProgress(runId: string): string | null {
    const r = this.stmt(
      `SELECT max(t) AS t FROM (
         SELECT updated_at AS t FROM runs WHERE id = @id
         UNION ALL SELECT max(started_at) FROM steps WHERE run_id = @id
         UNION ALL SELECT max(finished_at) FROM steps WHERE run_id = @id)`,
    ).get({ id: runId }) as { t: string | null };
    return r.t;
  }

  // ---- steps ----

  putSteps(runId: string, steps: { name: string; command: string }[]): void {
    const ins = this.stmt(`INSERT OR IGNORE INTO steps (run_id, idx, name, command, status) VALUES (?, ?, ?, ?, 'planned')`);
    this.db.transaction(() => steps.forEach((s, i) => ins.run(runId, i, s.name, s.command)))();
  }

  /** Adds steps after the run's last one (the undo of a stopped run). */
  appendSteps(runId: string, steps: { name: string; command: string }[]): void {
    const next = (this.stmt('SELECT coalesce(max(idx) + 1, 0) AS n FROM steps WHERE run_id = ?').get(runId) as { n: number }).n;
    const ins = this.stmt(`INSERT INTO steps (run_id, idx, name, command, status) VALUES (?, ?, ?, ?, 'planned')`);
    this.db.transaction(() => steps.forEach((s, i) => ins.run(runId, next + i, s.name, s.command)))();
  }

  steps(runId: string): StepRow[] {
    return (this.stmt('SELECT * FROM steps WHERE run_id = ? ORDER BY idx').all(runId) as Record<string, unknown>[]).map(toStep);
  }

  /** Written before the step's action runs: a crash after this line leaves the step visibly in flight. */
  stepStarted(runId: string, idx: number): void {
    this.stmt(`UPDATE steps SET status = 'running', started_at = ?, attempts = attempts + 1 WHERE run_id = ? AND idx = ?`).run(now(), runId, idx);
  }

  stepOutput(runId: string, idx: number, output: unknown): void {
    this.stmt(`UPDATE steps SET output = ? WHERE run_id = ? AND idx = ?`).run(json(output), runId, idx);
  }

  stepFinished(runId: string, idx: number, status: StepStatus, fields: { output?: unknown; check?: unknown; error?: string | null } = {}): void {
    const sets = ['status = @status', 'finished_at = @t'];
    if (fields.output !== undefined) sets.push('output = @output');
    if (fields.check !== undefined) sets.push('"check" = @check');
    if (fields.error !== undefined) sets.push('error = @error');
    this.stmt(`UPDATE steps SET ${sets.join(', ')} WHERE run_id = @runId AND idx = @idx`)
      .run({ status, t: now(), output: json(fields.output), check: json(fields.check), error: fields.error ?? null, runId, idx });
  }

  // ---- locks ----

  /**
   * Takes the lock on a target for a run. Targets are paths, and a lock excludes every other run on
   * the same target, on a wider one (a prefix) and on a narrower one (an extension): a failover on
   * `postgres` excludes slow-queries on `postgres/<server>/<db>`. Answers:
   * - `acquired`: this owner holds it (re-entrant, or taken over from a dead owner of the same run,
   *   which is how a restarted process resumes);
   * - `wait`: only narrower locks of other runs stand in the way; this run's lock is recorded as
   *   waiting, which keeps new narrower ones out, and the caller asks again until they are released;
   * - `same-run-elsewhere`: a live process is executing this run;
   * - `other-run`: another run holds this target or a wider one (or waits for it).
   */
  acquireLock(target: string, runId: string, owner: string, alive: (owner: string) => boolean): 'acquired' | 'wait' | 'same-run-elsewhere' | 'other-run' {
    return this.db.transaction(() => {
      const rows = this.lockRowsTouching(target);
      const own = rows.find((r) => r.target === target && r.runId === runId);
      const others = rows.filter((r) => r.runId !== runId);
      if (own && own.owner !== owner && own.owner !== null && alive(own.owner)) return 'same-run-elsewhere' as const;
      if (others.length === 0) {
        if (!own) this.stmt("INSERT INTO locks (target, run_id, acquired_at, owner, state) VALUES (?, ?, ?, ?, 'held')").run(target, runId, now(), owner);
        else this.stmt("UPDATE locks SET owner = ?, acquired_at = ?, state = 'held' WHERE target = ? AND run_id = ?").run(owner, now(), target, runId);
        return 'acquired' as const;
      }
      if (others.every((r) => lockScopeContains(target, r.target))) {
        if (!own) this.stmt("INSERT INTO locks (target, run_id, acquired_at, owner, state) VALUES (?, ?, ?, ?, 'waiting')").run(target, runId, now(), owner);
        else if (own.owner !== owner) this.stmt('UPDATE locks SET owner = ? WHERE target = ? AND run_id = ?').run(owner, target, runId);
        return 'wait' as const;
      }
      return 'other-run' as const;
    }).immediate();
  }

  private lockRowsTouching(target: string): { target: string; runId: string; owner: string | null; state: string }[] {
    // substr, not LIKE: names hold `_`, which LIKE reads as a wildcard.
    return (
      this.stmt(
        `SELECT target, run_id, owner, state FROM locks
         WHERE target = @t OR substr(target, 1, length(@t) + 1) = @t || '/' OR substr(@t, 1, length(target) + 1) = target || '/'`,
      ).all({ t: target }) as { target: string; run_id: string; owner: string | null; state: string }[]
    ).map((r) => ({ target: r.target, runId: r.run_id, owner: r.owner, state: r.state }));
  }

  /** The other runs whose locks stand in the way of `runId` on `target` (same, wider or narrower targets). */
  lockConflicts(target: string, runId: string): { target: string; runId: string; state: string }[] {
    return this.lockRowsTouching(target)
      .filter((r) => r.runId !== runId)
      .map(({ target: t, runId: id, state }) => ({ target: t, runId: id, state }));
  }

  lockOwner(target: string): { runId: string; owner: string | null } | null {
    const cur = this.stmt('SELECT run_id, owner FROM locks WHERE target = ?').get(target) as { run_id: string; owner: string | null } | undefined;
    return cur ? { runId: cur.run_id, owner: cur.owner } : null;
  }

  lockHolder(target: string): string | null {
    const cur = this.stmt('SELECT run_id FROM locks WHERE target = ?').get(target) as { run_id: string } | undefined;
    return cur?.run_id ?? null;
  }

  /** The intent recorded under `name`, with its version (the local IntentStore). */
  readIntent(name: string): { value: string; version: number } | null {
    return (this.stmt('SELECT value, version FROM intents WHERE name = ?').get(name) as { value: string; version: number } | undefined) ?? null;
  }

  /** Writes the intent if it is still at `expected` (null: none yet); the new version, or null when it changed meanwhile. */
  writeIntent(name: string, value: string, expected: number | null): number | null {
    return this.db.transaction(() => {
      const cur = this.readIntent(name);
      if ((cur?.version ?? null) !== expected) return null;
      const version = (cur?.version ?? 0) + 1;
      this.stmt('INSERT INTO intents (name, value, version, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value, version = excluded.version, updated_at = excluded.updated_at').run(
        name,
        value,
        version,
        now(),
      );
      return version;
    }).immediate();
  }

  releaseLock(target: string, runId: string): void {
    this.stmt('DELETE FROM locks WHERE target = ? AND run_id = ?').run(target, runId);
  }

  // ---- escalation outbox ----

  enqueue(e: { team: string; dedupKey: string; action: 'trigger' | 'resolve'; event: Record<string, unknown> }): number {
    if ('routing_key' in e.event) throw new DbpilotError('DBPILOT_STORE_SECRET', 'outbox events must not carry the routing key');
    const res = this.stmt(`INSERT INTO outbox (team, dedup_key, action, event, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?)`)
      .run(e.team, e.dedupKey, e.action, JSON.stringify(e.event), Date.now(), now());
    return Number(res.lastInsertRowid);
  }

  /**
   * A trigger that supersedes the trigger still waiting for the same dedup key (nobody is sending
   * it): the waiting row takes the new event instead of a second row being queued, so a storm of
   * updates to one incident reaches PagerDuty as its latest state, once. Returns the row id.
   */
  enqueueTrigger(e: { team: string; dedupKey: string; event: Record<string, unknown> }, nowMs: number = Date.now()): number {
    if ('routing_key' in e.event) throw new DbpilotError('DBPILOT_STORE_SECRET', 'outbox events must not carry the routing key');
    // One IMMEDIATE transaction, and the update conditional on the row still being unclaimed: a
    // dispatcher of another process that claims it meanwhile sends what it claimed, and this event
    // gets a row of its own instead of being lost in a row already on its way.
    return this.db.transaction(() => {
      const last = this.stmt(`SELECT id, action FROM outbox WHERE dedup_key = ? AND status = 'pending' ORDER BY id DESC LIMIT 1`).get(e.dedupKey) as
        | { id: number; action: string }
        | undefined;
      if (last && last.action === 'trigger') {
        const changed = this.stmt(`UPDATE outbox SET event = ?, team = ? WHERE id = ? AND status = 'pending' AND (claim_until IS NULL OR claim_until < ?)`).run(
          JSON.stringify(e.event),
          e.team,
          last.id,
          nowMs,
        ).changes;
        if (changed === 1) return last.id;
      }
      return this.enqueue({ ...e, action: 'trigger' });
    }).immediate();
  }

  /** Head-of-queue rows (the oldest pending row of each dedup key) that are due and not claimed by a live claim. */
  private static readonly CLAIMABLE = `o.status = 'pending' AND o.next_attempt_at <= @now
      AND (o.claim_until IS NULL OR o.claim_until < @now)
      AND o.id = (SELECT min(id) FROM outbox p WHERE p.dedup_key = o.dedup_key AND p.status = 'pending')`;

  /**
   * Pending events that are due, at most one per dedup key (the oldest), so a resolve is never
   * delivered before the trigger it resolves.
   */
  dueOutbox(nowMs: number, limit = 50): OutboxRow[] {
    return (this.stmt(`SELECT o.* FROM outbox o WHERE ${Store.CLAIMABLE} ORDER BY o.id LIMIT @limit`).all({ now: nowMs, limit }) as Record<string, unknown>[]).map(
      toOutbox,
    );
  }

  /**
   * Per team, over the head of each dedup key's queue (only heads can be sent): how many may be
   * claimed now, and when the next of the others becomes due or its claim expires. One pass over the
   * pending rows, so a dispatcher can sleep exactly until something can happen.
   */
  outboxHeads(nowMs: number): { team: string; due: number; nextAt: number | null }[] {
    return (
      this.stmt(
        `WITH heads AS (SELECT min(id) AS id FROM outbox WHERE status = 'pending' GROUP BY dedup_key)
         SELECT o.team AS team,
                sum(CASE WHEN o.next_attempt_at <= @now AND (o.claim_until IS NULL OR o.claim_until < @now) THEN 1 ELSE 0 END) AS due,
                min(CASE WHEN o.next_attempt_at > @now THEN max(o.next_attempt_at, coalesce(o.claim_until, 0))
                         WHEN o.claim_until >= @now THEN o.claim_until END) AS next_at
         FROM outbox o JOIN heads h ON h.id = o.id GROUP BY o.team ORDER BY min(o.id)`,
      ).all({ now: nowMs }) as { team: string; due: number; next_at: number | null }[]
    ).map((r) => ({ team: r.team, due: r.due, nextAt: r.next_at }));
  }

  /** Teams that have a due, unclaimed event. */
  dueTeams(nowMs: number): string[] {
    return this.outboxHeads(nowMs)
      .filter((h) => h.due > 0)
      .map((h) => h.team);
  }

  /**
   * Claims up to `limit` due events of one team for `owner` until `untilMs`, oldest first, in one
   * IMMEDIATE transaction: two processes can never claim the same row. The claim is what makes a
   * delivery exactly one process's job; it is cleared with the outcome.
   */
  claimOutbox(owner: string, team: string, nowMs: number, untilMs: number, limit: number): OutboxRow[] {
    if (limit <= 0) return [];
    return this.db.transaction(() => {
      const rows = (
        this.stmt(`SELECT o.* FROM outbox o WHERE o.team = @team AND ${Store.CLAIMABLE} ORDER BY o.id LIMIT @limit`).all({ team, now: nowMs, limit }) as Record<
          string,
          unknown
        >[]
      ).map(toOutbox);
      const claim = this.stmt(`UPDATE outbox SET claimed_by = ?, claim_until = ? WHERE id = ?`);
      for (const r of rows) {
        claim.run(owner, untilMs, r.id);
        r.claimedBy = owner;
      }
      return rows;
    }).immediate();
  }

  outboxDelivered(id: number): void {
    this.stmt(`UPDATE outbox SET status = 'delivered', attempts = attempts + 1, delivered_at = ?, last_error = NULL, claimed_by = NULL, claim_until = NULL WHERE id = ?`).run(
      now(),
      id,
    );
  }

  /** `owner`: only while that dispatcher still holds the claim (a stalled one must not clear another's live claim). Returns whether the row changed. */
  outboxRetry(id: number, nextAttemptAt: number, error: string, owner?: string): boolean {
    return (
      this.stmt(
        `UPDATE outbox SET attempts = attempts + 1, next_attempt_at = @next, last_error = @error, claimed_by = NULL, claim_until = NULL
         WHERE id = @id AND status = 'pending' AND (@owner IS NULL OR claimed_by = @owner)`,
      ).run({ next: nextAttemptAt, error, id, owner: owner ?? null }).changes === 1
    );
  }

  outboxDead(id: number, error: string, owner?: string): boolean {
    return (
      this.stmt(
        `UPDATE outbox SET status = 'dead', attempts = attempts + 1, last_error = @error, claimed_by = NULL, claim_until = NULL
         WHERE id = @id AND status = 'pending' AND (@owner IS NULL OR claimed_by = @owner)`,
      ).run({ error, id, owner: owner ?? null }).changes === 1
    );
  }

  /** Gives back one claimed row untouched (its request was cut off by this dispatcher stopping, not by PagerDuty). */
  releaseClaim(id: number, owner: string): void {
    this.stmt(`UPDATE outbox SET claimed_by = NULL, claim_until = NULL WHERE id = ? AND claimed_by = ? AND status = 'pending'`).run(id, owner);
  }

  /** Gives back the claims of `owner` (a dispatcher stopping with rows it did not send). */
  releaseClaims(owner: string): void {
    this.stmt(`UPDATE outbox SET claimed_by = NULL, claim_until = NULL WHERE claimed_by = ? AND status = 'pending'`).run(owner);
  }

  /** Once PagerDuty takes a team's events again, everything of that team waiting out a backoff is due now. */
  releaseBackoff(team: string, nowMs: number): number {
    return this.stmt(`UPDATE outbox SET next_attempt_at = ? WHERE team = ? AND status = 'pending' AND next_attempt_at > ?`).run(nowMs, team, nowMs).changes;
  }

  outboxPending(): number {
    return (this.stmt(`SELECT count(*) AS n FROM outbox WHERE status = 'pending'`).get() as { n: number }).n;
  }

  /** Pending events of one team, and when the oldest of them was queued. */
  pendingForTeam(team: string): { count: number; oldest: string | null } {
    const r = this.stmt(`SELECT count(*) AS n, min(created_at) AS oldest FROM outbox WHERE team = ? AND status = 'pending'`).get(team) as { n: number; oldest: string | null };
    return { count: r.n, oldest: r.oldest };
  }

  /** The earliest time a pending event is due, or null. */
  nextOutboxDue(): number | null {
    // Only the head of each dedup key's queue can be sent; a resolve waiting behind a trigger in backoff is not due.
    const r = this.stmt(
        `SELECT min(max(o.next_attempt_at, coalesce(o.claim_until, 0))) AS t FROM outbox o
         WHERE o.status = 'pending' AND o.id = (SELECT min(id) FROM outbox p WHERE p.dedup_key = o.dedup_key AND p.status = 'pending')`,
      )
      .get() as { t: number | null };
    return r.t;
  }

  outbox(filter: { status?: OutboxRow['status'] } = {}): OutboxRow[] {
    const rows = filter.status
      ? this.stmt('SELECT * FROM outbox WHERE status = ? ORDER BY id').all(filter.status)
      : this.stmt('SELECT * FROM outbox ORDER BY id').all();
    return (rows as Record<string, unknown>[]).map(toOutbox);
  }

  /** Whether an incident was paged (a trigger enqueued) and not yet resolved, by dedup key. */
  openIncident(dedupKey: string): { team: string } | null {
    const r = this.stmt(`SELECT team, action FROM outbox WHERE dedup_key = ? AND status <> 'dead' ORDER BY id DESC LIMIT 1`)
      .get(dedupKey) as { team: string; action: string } | undefined;
    return r && r.action === 'trigger' ? { team: r.team } : null;
  }

  // ---- dispatchers ----

  /** A dispatcher (the service's outbox) says it is alive and delivering. */
  heartbeat(owner: string, nowMs: number): void {
    this.stmt(`INSERT INTO dispatchers (owner, heartbeat_at) VALUES (?, ?) ON CONFLICT(owner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at`).run(owner, nowMs);
  }

  dispatcherGone(owner: string): void {
    this.stmt(`DELETE FROM dispatchers WHERE owner = ?`).run(owner);
  }

  /** Dispatchers that sent a heartbeat since `sinceMs`, newest first. */
  dispatchers(sinceMs: number): { owner: string; heartbeatAt: number }[] {
    return (this.stmt(`SELECT owner, heartbeat_at FROM dispatchers WHERE heartbeat_at >= ? ORDER BY heartbeat_at DESC`).all(sinceMs) as { owner: string; heartbeat_at: number }[]).map(
      (r) => ({ owner: r.owner, heartbeatAt: r.heartbeat_at }),
    );
  }

  // ---- grouped pages ----

  /** Adds alerts to the page `dedupKey` lists (a repeat of the same occurrence changes nothing). */
  addPageMembers(dedupKey: string, members: { fingerprint: string; startsAt: string; alertname: string; runId: string | null; reason: string | null; labels: Record<string, string> }[]): void {
    const ins = this.stmt(
      `INSERT INTO page_members (dedup_key, fingerprint, starts_at, alertname, run_id, reason, labels, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT(dedup_key, fingerprint, starts_at) DO UPDATE SET resolved_at = NULL, run_id = coalesce(excluded.run_id, run_id), reason = excluded.reason`,
    );
    const t = now();
    for (const m of members) ins.run(dedupKey, m.fingerprint, m.startsAt, m.alertname, m.runId, m.reason, JSON.stringify(m.labels), t);
  }

  /** The alerts a grouped page lists that have not resolved, oldest first. */
  openPageMembers(dedupKey: string): PageMember[] {
    return (this.stmt(`SELECT * FROM page_members WHERE dedup_key = ? AND resolved_at IS NULL ORDER BY added_at, rowid`).all(dedupKey) as Record<string, unknown>[]).map(toMember);
  }

  /**
   * What a grouped page says about its open members, from the summary the triggers keep (see the
   * page_summary migration) and the oldest `listed` members: a storm's page is rebuilt on every batch,
   * and reading every member each time made admission quadratic in the size of the storm. `reasons`:
   * the distinct reasons, most frequent first (ties by text), at most `reasons`.
   */
  openPageSummary(dedupKey: string, listed: number, reasons: number): PageSummary {
    const groups = this.stmt(`SELECT alertname, severity, reason, open FROM page_summary WHERE dedup_key = ?`).all(dedupKey) as {
      alertname: string;
      severity: string;
      reason: string;
      open: number;
    }[];
    const byAlertname = new Map<string, number>();
    const byReason = new Map<string, number>();
    const severities = new Set<string>();
    let total = 0;
    for (const g of groups) {
      total += g.open;
      byAlertname.set(g.alertname, (byAlertname.get(g.alertname) ?? 0) + g.open);
      byReason.set(g.reason, (byReason.get(g.reason) ?? 0) + g.open);
      severities.add(String(g.severity));
    }
    const rows = (
      this.stmt(`SELECT * FROM page_members INDEXED BY page_members_open WHERE dedup_key = ? AND resolved_at IS NULL ORDER BY added_at, rowid LIMIT ?`).all(dedupKey, listed) as Record<
        string,
        unknown
      >[]
    ).map(toMember);
    return {
      total,
      byAlertname: [...byAlertname],
      severities: [...severities],
      reasons: [...byReason]
        .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
        .slice(0, reasons)
        .map(([r]) => r),
      listed: rows,
    };
  }

  /**
   * Marks the alert resolved in every grouped page that lists it; returns the pages of which it was
   * the last open member (those pages can be resolved now).
   */
  resolvePageMember(fingerprint: string, startsAt: string): string[] {
    // By occurrence: a late resolve of an earlier occurrence does not close the page of the one firing now.
    const keys = (
      this.stmt(`UPDATE page_members SET resolved_at = ? WHERE fingerprint = ? AND starts_at = ? AND resolved_at IS NULL RETURNING dedup_key`).all(now(), fingerprint, startsAt) as {
        dedup_key: string;
      }[]
    ).map((r) => r.dedup_key);
    return [...new Set(keys)].filter(
      (k) => (this.stmt(`SELECT coalesce(sum(open), 0) AS n FROM page_summary WHERE dedup_key = ?`).get(k) as { n: number }).n === 0,
    );
  }

  // ---- RDS snapshots ----

  /** Records a snapshot request before it is sent to RDS (or as it joins one being made); returns the row id. */
  snapshotRequested(s: { snapshotId: string; instance: string; trigger: string; reason: string; runId?: string | null; requestedBy: string; joined?: boolean }): number {
    const res = this.stmt(
      `INSERT INTO snapshots (snapshot_id, instance, kind, reason, run_id, requested_by, joined, status, requested_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'creating', ?)`,
    ).run(s.snapshotId, s.instance, s.trigger, s.reason, s.runId ?? null, s.requestedBy, s.joined ? 1 : 0, now());
    return Number(res.lastInsertRowid);
  }

  /** The outcome of a snapshot request: `available` (with RDS's time and size) or `failed` (with the error). */
  snapshotFinished(id: number, f: { status: 'available' | 'failed'; snapshotTime?: string | null; sizeGiB?: number | null; errorCode?: string | null; error?: string | null; joined?: boolean }): void {
    this.stmt(
      `UPDATE snapshots SET status = @status, finished_at = @t, snapshot_time = coalesce(@snapshotTime, snapshot_time), size_gib = coalesce(@sizeGiB, size_gib),
         error_code = @errorCode, error = @error, joined = coalesce(@joined, joined) WHERE id = @id`,
    ).run({
      id,
      status: f.status,
      t: now(),
      snapshotTime: f.snapshotTime ?? null,
      sizeGiB: f.sizeGiB ?? null,
      errorCode: f.errorCode ?? null,
      error: f.error ?? null,
      joined: f.joined === undefined ? null : f.joined ? 1 : 0,
    });
  }

  /** Changes which snapshot a request row names (a request that turned out to join another one). */
  snapshotRenamed(id: number, snapshotId: string): void {
    this.stmt(`UPDATE snapshots SET snapshot_id = ?, joined = 1 WHERE id = ?`).run(snapshotId, id);
  }

  /** Marks every row of a snapshot deleted (retention deleted it in RDS). */
  snapshotDeleted(snapshotId: string): void {
    this.stmt(`UPDATE snapshots SET status = 'deleted', deleted_at = ? WHERE snapshot_id = ? AND deleted_at IS NULL`).run(now(), snapshotId);
  }

  /** Snapshot requests of an instance, newest first. */
  listSnapshots(instance: string, limit = 100): SnapshotRow[] {
    return (this.stmt(`SELECT * FROM snapshots WHERE instance = ? ORDER BY requested_at DESC, id DESC LIMIT ?`).all(instance, Math.min(Math.max(limit, 1), Store.MAX_LIST)) as Record<string, unknown>[]).map(toSnapshot);
  }

  /** The newest snapshot of the instance this store saw become available (and not deleted since). */
  lastAvailableSnapshot(instance: string): SnapshotRow | null {
    const r = this.stmt(`SELECT * FROM snapshots WHERE instance = ? AND status = 'available' ORDER BY coalesce(snapshot_time, finished_at) DESC, id DESC LIMIT 1`).get(instance) as
      | Record<string, unknown>
      | undefined;
    return r ? toSnapshot(r) : null;
  }

  /** Requests left `creating` (the process stopped while waiting): checked against RDS on start. */
  pendingSnapshots(instance: string): SnapshotRow[] {
    return (this.stmt(`SELECT * FROM snapshots WHERE instance = ? AND status = 'creating' ORDER BY id`).all(instance) as Record<string, unknown>[]).map(toSnapshot);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
