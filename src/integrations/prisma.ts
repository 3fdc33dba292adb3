/**
 * `_prisma_migrations` as Prisma's schema engine writes and reads it, for runbook scenario 4 — without
 * the Prisma CLI, which dbpilot cannot run (no Prisma 7 setting puts `prisma migrate` on the
 * WebAssembly engine; README "Prisma migrations"). Every statement here is what the schema engine
 * does, read from its source (prisma/prisma-engines):
 *
 * - The table (flavour/postgres.rs create_migrations_table), created unqualified on a connection whose
 *   search_path is the datasource's `?schema=`, so it lives in that schema:
 *     id VARCHAR(36) PRIMARY KEY, checksum VARCHAR(64) NOT NULL, finished_at TIMESTAMPTZ,
 *     migration_name VARCHAR(255) NOT NULL, logs TEXT, rolled_back_at TIMESTAMPTZ,
 *     started_at TIMESTAMPTZ NOT NULL DEFAULT now(), applied_steps_count INTEGER NOT NULL DEFAULT 0
 * - `migrate deploy` (core/commands/apply_migrations.rs): takes the advisory lock, refuses with P3009
 *   while any row has finished_at and rolled_back_at NULL, and applies each migration whose name has no
 *   row that is not rolled back: a NEW row (uuid v4 id, sha256 checksum of migration.sql, started_at),
 *   the script as one simple query, then applied_steps_count + 1 and finished_at — or, on error, the
 *   error text in logs and nothing else (sql_migration_persistence.rs).
 * - `migrate resolve --rolled-back NAME` (core/commands/mark_migration_rolled_back.rs): under the lock,
 *   the rows of NAME; none is P3011, all finished is P3012; every row of NAME with finished_at and
 *   rolled_back_at NULL gets rolled_back_at = now. Repeating it changes nothing.
 * - The lock (flavour/postgres.rs acquire_lock): `SELECT pg_advisory_lock(72707369)`, given up after
 *   10 s. dbpilot takes the same lock around everything it writes, so it never races a `migrate deploy`
 *   and one never races it.
 * - `migrate reset` (flavour/postgres.rs reset): DROP SCHEMA "<schema>" CASCADE; CREATE SCHEMA "<schema>".
 */
import type pg from 'pg';
import { DbpilotError, safeMessage } from '../errors.js';

/** The advisory lock key every Prisma migrate command takes ("a unique number we chose to identify Migrate"). */
export const PRISMA_MIGRATE_LOCK_KEY = 72707369;
/** How long Prisma itself waits for that lock before giving up. */
export const PRISMA_LOCK_TIMEOUT_MS = 10_000;

/** One row of `_prisma_migrations`; times are ISO 8601 UTC with microseconds. */
export interface MigrationRow {
  id: string;
  migrationName: string;
  checksum: string;
  startedAt: string;
  finishedAt: string | null;
  rolledBackAt: string | null;
  logs: string | null;
  appliedStepsCount: number;
}

/** Who holds Prisma's advisory lock in a database: a `prisma migrate` command running now. */
export interface LockHolder {
  pid: number;
  application: string;
  user: string;
  state: string;
  /** When its connection started (ISO UTC). */
  since: string;
  seconds: number;
}

/** A refusal in Prisma's own terms (P3011, P3012), with Prisma's message. */
export class PrismaMigrateError extends DbpilotError {
  readonly prismaCode: string;
  constructor(prismaCode: 'P3011' | 'P3012' | 'P3009', message: string) {
    super(`DBPILOT_PRISMA_${prismaCode}`, `${prismaCode}: ${message}`);
    this.prismaCode = prismaCode;
  }
}

/** Prisma's advisory lock is held by somebody else (a migrate command is running). */
export class MigrateLockBusyError extends DbpilotError {
  readonly holder: LockHolder | null;
  constructor(database: string, waitedMs: number, holder: LockHolder | null) {
    super(
      'DBPILOT_PRISMA_LOCK_BUSY',
      `Prisma's advisory lock (pg_advisory_lock(${PRISMA_MIGRATE_LOCK_KEY})) in ${database} is held${holder ? ` by pid ${holder.pid} (${holder.application || 'no application_name'}, user ${holder.user}, ${holder.state}, connected ${holder.seconds} s)` : ''}: a prisma migrate command is running; not waited longer than ${waitedMs} ms`,
    );
    this.holder = holder;
  }
}

export type Query = <T extends Record<string, unknown>>(sql: string, params?: unknown[]) => Promise<T[]>;

/** A query function over one pg.Client (a dedicated connection: the advisory lock is the session's). */
export function clientQuery(client: pg.Client): Query {
  return async <T extends Record<string, unknown>>(sql: string, params: unknown[] = []) => (await client.query(sql, params)).rows as T[];
}

export const quoteIdent = (s: string): string => `"${s.replace(/"/g, '""')}"`;

/** `"<schema>"."_prisma_migrations"`. */
export function migrationsTable(schema: string): string {
  return `${quoteIdent(schema)}."_prisma_migrations"`;
}

const ISO = (col: string) => `to_char(${col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`;

const ROW_COLUMNS = `id, migration_name, checksum, ${ISO('started_at')} AS started_at, ${ISO('finished_at')} AS finished_at,
  ${ISO('rolled_back_at')} AS rolled_back_at, logs, applied_steps_count`;

function toRow(r: Record<string, unknown>): MigrationRow {
  return {
    id: String(r.id),
    migrationName: String(r.migration_name),
    checksum: String(r.checksum),
    startedAt: String(r.started_at),
    finishedAt: (r.finished_at as string | null) ?? null,
    rolledBackAt: (r.rolled_back_at as string | null) ?? null,
    logs: (r.logs as string | null) ?? null,
    appliedStepsCount: Number(r.applied_steps_count),
  };
}

/** Whether `<schema>._prisma_migrations` exists (a database Prisma does not manage has none). */
export async function hasMigrationsTable(q: Query, schema: string): Promise<boolean> {
  const [row] = await q<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [migrationsTable(schema)]);
  return row?.t != null;
}

/** Every row, oldest first (as list_migrations reads them); [] when there is no table. */
export async function readMigrations(q: Query, schema: string): Promise<MigrationRow[]> {
  if (!(await hasMigrationsTable(q, schema))) return [];
  const rows = await q(`SELECT ${ROW_COLUMNS} FROM ${migrationsTable(schema)} ORDER BY started_at, id`);
  return rows.map(toRow);
}

/** A row `migrate deploy` counts as failed (P3009): started, neither finished nor rolled back. */
export const isFailed = (r: MigrationRow): boolean => r.finishedAt === null && r.rolledBackAt === null;

/** The session holding Prisma's lock in the current database, if any. */
export async function migrateLockHolder(q: Query): Promise<LockHolder | null> {
  // A bigint key is stored as classid (high 32 bits), objid (low 32 bits), objsubid 1.
  const [row] = await q<Record<string, unknown>>(
    `SELECT a.pid, coalesce(a.application_name, '') AS application, coalesce(a.usename, '') AS usename, coalesce(a.state, '') AS state,
            ${ISO('a.backend_start')} AS since, floor(EXTRACT(EPOCH FROM now() - a.backend_start))::int AS seconds
     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.classid = 0 AND l.objid = $1 AND l.objsubid = 1 AND l.pid <> pg_backend_pid()
     LIMIT 1`,
    [PRISMA_MIGRATE_LOCK_KEY],
  );
  if (!row) return null;
  return { pid: Number(row.pid), application: String(row.application), user: String(row.usename), state: String(row.state), since: String(row.since), seconds: Number(row.seconds) };
}

/**
 * Runs `fn` holding Prisma's advisory lock on this connection, waiting for it at most `timeoutMs`
 * (Prisma's own wait is 10 s), and releases it whatever happens. A lock held by somebody else for
 * longer is MigrateLockBusyError naming the holder.
 */
export async function withMigrateLock<T>(client: pg.Client, database: string, timeoutMs: number, fn: (q: Query) => Promise<T>): Promise<T> {
  const q = clientQuery(client);
  await client.query(`SET lock_timeout = ${Math.max(1, Math.round(timeoutMs))}`);
  try {
    await client.query('SELECT pg_advisory_lock($1)', [PRISMA_MIGRATE_LOCK_KEY]);
  } catch (err) {
    if ((err as { code?: string }).code === '55P03') throw new MigrateLockBusyError(database, timeoutMs, await migrateLockHolder(q).catch(() => null));
    throw err;
  } finally {
    await client.query('SET lock_timeout = DEFAULT').catch(() => undefined);
  }
  try {
    return await fn(q);
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [PRISMA_MIGRATE_LOCK_KEY]).catch(() => undefined);
  }
}

/**
 * `prisma migrate resolve --rolled-back <name>`, exactly: P3011 when the migration has no row, P3012
 * when every row of it finished, else rolled_back_at = now() on each row of it that neither finished
 * nor was rolled back (none, when repeated). Call it holding the lock (withMigrateLock). Returns the
 * ids it marked. (Prisma stamps its client's clock; the server's now() is the same instant without
 * the skew.)
 */
export async function markRolledBack(q: Query, schema: string, name: string): Promise<string[]> {
  if (!(await hasMigrationsTable(q, schema))) {
    throw new DbpilotError('DBPILOT_PRISMA_NO_TABLE', `there is no ${schema}._prisma_migrations: nothing to resolve`);
  }
  const rows = await q<{ id: string; finished: boolean }>(`SELECT id, finished_at IS NOT NULL AS finished FROM ${migrationsTable(schema)} WHERE migration_name = $1`, [name]);
  if (rows.length === 0) {
    throw new PrismaMigrateError(
      'P3011',
      `Migration \`${name}\` cannot be rolled back because it was never applied to the database. Hint: did you pass in the whole migration name? (example: "20201207184859_initial_migration")`,
    );
  }
  if (rows.every((r) => r.finished)) throw new PrismaMigrateError('P3012', `Migration \`${name}\` cannot be rolled back because it is not in a failed state.`);
  const updated = await q<{ id: string }>(
    `UPDATE ${migrationsTable(schema)} SET rolled_back_at = now() WHERE migration_name = $1 AND finished_at IS NULL AND rolled_back_at IS NULL RETURNING id`,
    [name],
  );
  return updated.map((r) => r.id);
}

/** The SQL markRolledBack runs, for the dry-run and the audit. */
export function rolledBackSql(schema: string, name: string): string {
  return `UPDATE ${migrationsTable(schema)} SET rolled_back_at = now() WHERE migration_name = '${name.replace(/'/g, "''")}' AND finished_at IS NULL AND rolled_back_at IS NULL`;
}

/** A schema as a reset must give it back: its owner and its grants. */
export interface SchemaState {
  exists: boolean;
  owner: string | null;
  /** pg_namespace.nspacl as text (null: the default privileges). */
  acl: string | null;
  /** Tables, views, sequences … in it. */
  relations: number;
  /** ALTER DEFAULT PRIVILEGES … IN SCHEMA entries (dropped with the schema, as Prisma's reset drops them). */
  defaultPrivileges: number;
}

export async function schemaState(q: Query, schema: string): Promise<SchemaState> {
  const [row] = await q<Record<string, unknown>>(
    `SELECT pg_get_userbyid(n.nspowner) AS owner, n.nspacl::text AS acl,
            (SELECT count(*)::int FROM pg_class c WHERE c.relnamespace = n.oid) AS relations,
            (SELECT count(*)::int FROM pg_default_acl d WHERE d.defaclnamespace = n.oid) AS default_privileges
     FROM pg_namespace n WHERE n.nspname = $1`,
    [schema],
  );
  if (!row) return { exists: false, owner: null, acl: null, relations: 0, defaultPrivileges: 0 };
  return { exists: true, owner: String(row.owner), acl: (row.acl as string | null) ?? null, relations: Number(row.relations), defaultPrivileges: Number(row.default_privileges) };
}

/** The statements resetSchema runs, for the dry-run and the audit. */
export function resetSql(schema: string, owner: string | null): string {
  return `DROP SCHEMA ${quoteIdent(schema)} CASCADE; CREATE SCHEMA ${quoteIdent(schema)}${owner ? ` AUTHORIZATION ${quoteIdent(owner)}` : ''};`;
}

/**
 * `prisma migrate reset`'s reset of the datasource's schema: DROP SCHEMA … CASCADE; CREATE SCHEMA …
 * — in one transaction, under the lock (withMigrateLock) — except that the schema comes back with its
 * previous owner and grants (Prisma's would belong to whoever ran it: here, dbpilot's role, and the
 * service could no longer create its tables in it). Migrations are not applied: that is `migrate
 * deploy`'s job, run the way the service runs it.
 */
export async function resetSchema(q: Query, schema: string): Promise<{ before: SchemaState; after: SchemaState }> {
  const before = await schemaState(q, schema);
  if (!before.exists) throw new DbpilotError('DBPILOT_PRISMA_NO_SCHEMA', `schema ${schema} does not exist: nothing to reset`);
  const grants = await q<{ grantee: string | null; privilege: string; grantable: boolean }>(
    `SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END AS grantee, a.privilege_type AS privilege, a.is_grantable AS grantable
     FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = $1 AND a.grantee <> n.nspowner ORDER BY 1, 2`,
    [schema],
  );
  await q('BEGIN');
  try {
    await q(resetSql(schema, before.owner));
    for (const g of grants) {
      await q(`GRANT ${g.privilege} ON SCHEMA ${quoteIdent(schema)} TO ${g.grantee === null ? 'PUBLIC' : quoteIdent(g.grantee)}${g.grantable ? ' WITH GRANT OPTION' : ''}`);
    }
    await q('COMMIT');
  } catch (err) {
    await q('ROLLBACK').catch(() => undefined);
    throw err;
  }
  return { before, after: await schemaState(q, schema) };
}

/** Logs as they may go into a page or the audit: terminal colour codes gone, URLs with credentials redacted, cut to `max`. */
export function cleanLogs(logs: string | null, max: number): string | null {
  if (logs === null) return null;
  // eslint-disable-next-line no-control-regex
  const plain = safeMessage(logs.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '')).trim();
  return plain.length > max ? `${plain.slice(0, max - 1)}… (${plain.length - max + 1} more characters)` : plain;
}

/** The first line of the logs that says what went wrong (Prisma's P3018 text puts it after "Database error:"). */
export function logsHeadline(logs: string | null): string {
  if (!logs) return 'no logs (the migration was interrupted: the process running it stopped)';
  const plain = cleanLogs(logs, 100_000) ?? '';
  const lines = plain.split('\n').map((l) => l.trim()).filter(Boolean);
  const i = lines.findIndex((l) => /^Database error:?$/i.test(l));
  const pick = (i >= 0 ? lines[i + 1] : undefined) ?? lines.find((l) => /^ERROR|error/i.test(l)) ?? lines[0] ?? '';
  return pick.length > 200 ? `${pick.slice(0, 199)}…` : pick;
}
