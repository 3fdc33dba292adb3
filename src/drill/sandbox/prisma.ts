/**
 * The service's side of runbook scenario 4, for tests and the prisma-migration drill, where no service runs: `prisma migrate deploy`
 * statement for statement as Prisma's schema engine runs it against PostgreSQL (prisma-engines
 * schema-engine/core/src/commands/apply_migrations.rs and sql-schema-connector's
 * sql_migration_persistence.rs / flavour/postgres.rs), written independently of dbpilot's code:
 *
 *   SET search_path to the datasource's schema; SELECT pg_advisory_lock(72707369) (given up after 10 s);
 *   CREATE TABLE _prisma_migrations (…) if it is missing (P3005 when the schema has other tables);
 *   refuse with P3009 while a row has finished_at and rolled_back_at NULL;
 *   for each migration without a row that is not rolled back: INSERT (uuid v4, sha256 of the script,
 *   started_at, name); the script as one simple query; then applied_steps_count + 1 and finished_at —
 *   or, on an error, the P3018 text in logs, and stop.
 *
 * `holdLock` lets a test keep the lock (a migration "in progress") until it says so.
 */
import { createHash, randomUUID } from 'node:crypto';
import pg from 'pg';

export interface Migration {
  /** The migration directory's name, e.g. 20240301000000_add_payments. */
  name: string;
  /** Its migration.sql. */
  sql: string;
}

export class PrismaCliError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(`${code}: ${message}`);
  }
}

/** Prisma's checksum of a migration script: lowercase hex SHA-256. */
export const checksumOf = (sql: string): string => createHash('sha256').update(sql).digest('hex');

/** Prisma's DDL of _prisma_migrations on PostgreSQL (sql_migration_persistence.rs). */
export const DDL = `CREATE TABLE _prisma_migrations (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
)`;

/** P3018's text, as the schema engine writes it into logs (user_facing_errors ApplyMigrationError). */
function applyMigrationError(name: string, err: { code?: string; message: string }): string {
  return `A migration failed to apply. New migrations cannot be applied before the error is recovered from. Read more about how to resolve migration issues in a production database: https://pris.ly/d/migrate-resolve

Migration name: ${name}

Database error code: ${err.code ?? 'none'}

Database error:
ERROR: ${err.message}

DbError { severity: "ERROR", code: SqlState(E${err.code ?? ''}), message: ${JSON.stringify(err.message)} }`;
}

export interface DeployResult {
  applied: string[];
}

/**
 * `npx prisma migrate deploy` for a datasource URL and schema. Throws PrismaCliError P3009 (failed
 * migrations found), P3018 (a migration failed; its row keeps the logs), P1002 (lock timeout).
 */
export async function prismaMigrateDeploy(url: string, schema: string, migrations: Migration[], opts: { holdLock?: Promise<void>; applicationName?: string } = {}): Promise<DeployResult> {
  const client = new pg.Client({ connectionString: url, application_name: opts.applicationName ?? 'prisma-migrate', connectionTimeoutMillis: 5000 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    await client.query(`SET search_path = "${schema.replace(/"/g, '""')}"`);
    await client.query('SET lock_timeout = 10000');
    try {
      await client.query('SELECT pg_advisory_lock(72707369)');
    } catch (err) {
      if ((err as { code?: string }).code === '55P03') throw new PrismaCliError('P1002', 'Timed out trying to acquire a postgres advisory lock (SELECT pg_advisory_lock(72707369)). Timeout: 10000ms.');
      throw err;
    }
    await client.query('SET lock_timeout = DEFAULT');
    if (opts.holdLock) await opts.holdLock;
    const tables = (await client.query<{ t: string }>(`SELECT tbl.relname AS t FROM pg_class tbl JOIN pg_namespace n ON n.oid = tbl.relnamespace WHERE tbl.relkind = 'r' AND n.nspname = $1`, [schema])).rows.map((r) => r.t);
    if (!tables.includes('_prisma_migrations')) {
      if (tables.length > 0) throw new PrismaCliError('P3005', 'The database schema is not empty.');
      await client.query(DDL);
    }
    const rows = (
      await client.query<{ id: string; migration_name: string; finished_at: Date | null; rolled_back_at: Date | null; started_at: Date; logs: string | null }>(
        'SELECT id, migration_name, finished_at, rolled_back_at, started_at, logs FROM _prisma_migrations ORDER BY started_at',
      )
    ).rows;
    const failed = rows.filter((r) => r.finished_at === null && r.rolled_back_at === null);
    if (failed.length > 0) {
      const details = failed.map((r) => `The \`${r.migration_name}\` migration started at ${r.started_at.toISOString()} failed${r.logs?.trim() ? ` with the following logs:\n${r.logs.trim()}` : ''}`).join('\n');
      throw new PrismaCliError('P3009', `migrate found failed migrations in the target database, new migrations will not be applied. Read more about how to resolve migration issues in a production database: https://pris.ly/d/migrate-resolve\n${details}`);
    }
    const applied: string[] = [];
    for (const m of migrations) {
      if (rows.some((r) => r.migration_name === m.name && r.rolled_back_at === null)) continue;
      const id = randomUUID();
      await client.query('INSERT INTO _prisma_migrations (id, checksum, started_at, migration_name) VALUES ($1, $2, $3, $4)', [id, checksumOf(m.sql), new Date(), m.name]);
      try {
        await client.query(m.sql); // no parameters: one simple query, which PostgreSQL runs as one implicit transaction
      } catch (err) {
        const e = err as { code?: string; message: string };
        await client.query('UPDATE _prisma_migrations SET logs = $1 WHERE id = $2', [applyMigrationError(m.name, e), id]);
        throw new PrismaCliError('P3018', `A migration failed to apply: ${m.name}: ${e.message}`);
      }
      await client.query('UPDATE _prisma_migrations SET applied_steps_count = applied_steps_count + 1 WHERE id = $1', [id]);
      await client.query('UPDATE _prisma_migrations SET finished_at = $1 WHERE id = $2', [new Date(), id]);
      applied.push(m.name);
    }
    return { applied };
  } finally {
    await client.end().catch(() => undefined);
  }
}
