/**
 * Thin typed access to the PostgreSQL servers of the cluster. One persistent, small pool per
 * (server, database): a scrape reuses connections instead of paying a TCP + auth handshake per
 * query, and the bound keeps dbpilot from competing with the services for max_connections.
 */
import pg from 'pg';
import { DependencyError, safeMessage } from '../errors.js';
import type { Logger } from '../logger.js';

export type Role = 'primary' | 'replica';

/** dbpilot's own sessions carry this application_name, so the slow-queries handler can spare them. */
export const APPLICATION_NAME = 'dbpilot';

export interface PgServerOptions {
  url: string;
  role: Role;
  pod?: string | undefined;
  connectTimeoutMs: number;
  queryTimeoutMs: number;
  poolMax: number;
  /** Remediation statements and checks: longer than the scrape timeouts, a busy server must not fail a check. */
  actionTimeoutMs: number;
  logger: Logger;
}

/** Statement text → its prepared-statement name (see scrapeStatement). */
const PREPARED = new Map<string, string>();

/**
 * Marks `sql` as one of the statements every scrape sends (the topology probe, pg_stat_activity,
 * pg_stat_database, pg_stat_replication): on the scrape pools' connections it is then a named
 * prepared statement, parsed and planned once per connection and only executed after, instead of
 * parsed and planned by PostgreSQL on every scrape (measured on the bench's data, one connection,
 * per execution: the probe 0.47 → 0.24 ms, pg_stat_activity's 0.87 → 0.23 ms). For constant texts
 * only — each is one prepared statement per connection, for the connection's life — and only on
 * dbpilot's direct connections to each server (a transaction-mode pooler in between would not keep
 * them; dbpilot must reach each server itself anyway to observe its role). Returns `sql`.
 */
export function scrapeStatement(name: string, sql: string): string {
  const named = `dbpilot_${name}`;
  const had = PREPARED.get(sql);
  if (had !== undefined && had !== named) throw new Error(`statement already prepared as ${had}`);
  if ([...PREPARED.values()].includes(named) && had === undefined) throw new Error(`prepared statement name ${named} is taken`);
  PREPARED.set(sql, named);
  return sql;
}

/** host:port of a postgres URL: the `server` label. Never contains credentials. */
export function serverLabel(url: string): string {
  const u = new URL(url);
  return `${u.hostname}:${u.port || '5432'}`;
}

export class PgQueryError extends DependencyError {
  /** SQLSTATE when the server answered with an error, e.g. 57014 (query_canceled). */
  readonly sqlState: string | undefined;
  constructor(server: string, err: unknown) {
    super(`postgres ${server}`, safeMessage(err));
    const code = (err as { code?: unknown } | null)?.code;
    this.sqlState = typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
  }
}

export class PgServer {
  readonly server: string;
  readonly role: Role;
  readonly pod: string | undefined;
  /** The database named in the URL; server-wide queries run there. */
  readonly defaultDatabase: string;
  private readonly pools = new Map<string, pg.Pool>();
  private closed = false;

  constructor(private readonly opts: PgServerOptions) {
    this.server = serverLabel(opts.url);
    this.role = opts.role;
    this.pod = opts.pod;
    this.defaultDatabase = decodeURIComponent(new URL(opts.url).pathname.slice(1)) || 'postgres';
  }

  private pool(database: string, purpose: 'scrape' | 'action'): pg.Pool {
    const key = `${purpose}:${database}`;
    let pool = this.pools.get(key);
    if (pool) return pool;
    const u = new URL(this.opts.url);
    u.pathname = `/${encodeURIComponent(database)}`;
    const scrape = purpose === 'scrape';
    pool = new pg.Pool({
      connectionString: u.toString(),
      max: this.opts.poolMax,
      connectionTimeoutMillis: scrape ? this.opts.connectTimeoutMs : Math.min(this.opts.actionTimeoutMs, 5000),
      // Both: the server-side bound frees the backend, the client-side one frees us when the server is hung.
      statement_timeout: scrape ? this.opts.queryTimeoutMs : this.opts.actionTimeoutMs,
      query_timeout: (scrape ? this.opts.queryTimeoutMs : this.opts.actionTimeoutMs) + 100,
      idleTimeoutMillis: 300_000,
      keepAlive: true,
      application_name: APPLICATION_NAME,
    });
    // An idle client whose server went away emits here; without a listener it would crash the process.
    pool.on('error', (err) => {
      this.opts.logger.warn({ server: this.server, database, err: safeMessage(err) }, 'idle PostgreSQL connection lost');
    });
    this.pools.set(key, pool);
    return pool;
  }

  /** Runs one statement with the scrape timeouts; errors are PgQueryError with the server named and no credentials. */
  async query<T extends Record<string, unknown> = Record<string, unknown>>(
    sql: string,
    params: unknown[] = [],
    database: string = this.defaultDatabase,
  ): Promise<T[]> {
    return this.run<T>('scrape', sql, params, database);
  }

  /** Runs one remediation statement or check, with `actionTimeoutMs` instead of the scrape timeouts. */
  async act<T extends Record<string, unknown> = Record<string, unknown>>(
    sql: string,
    params: unknown[] = [],
    database: string = this.defaultDatabase,
  ): Promise<T[]> {
    return this.run<T>('action', sql, params, database);
  }

  private async run<T>(purpose: 'scrape' | 'action', sql: string, params: unknown[], database: string): Promise<T[]> {
    if (this.closed) throw new PgQueryError(this.server, new Error('connection pool closed'));
    try {
      const name = purpose === 'scrape' ? PREPARED.get(sql) : undefined;
      const pool = this.pool(database, purpose);
      const res = name ? await pool.query({ name, text: sql, values: params }) : await pool.query(sql, params);
      return res.rows as T[];
    } catch (err) {
      throw new PgQueryError(this.server, err);
    }
  }

  /** A dedicated client for multi-statement work (e.g. a remediation step); release it when done. */
  async connect(database: string = this.defaultDatabase, timeouts?: { statementTimeoutMs?: number }): Promise<pg.Client> {
    const u = new URL(this.opts.url);
    u.pathname = `/${encodeURIComponent(database)}`;
    const statementTimeoutMs = timeouts?.statementTimeoutMs ?? this.opts.actionTimeoutMs;
    const client = new pg.Client({
      connectionString: u.toString(),
      connectionTimeoutMillis: Math.min(this.opts.actionTimeoutMs, 5000),
      application_name: APPLICATION_NAME,
      statement_timeout: statementTimeoutMs,
      query_timeout: statementTimeoutMs + 5000,
      keepAlive: true,
    });
    client.on('error', () => undefined);
    try {
      await client.connect();
    } catch (err) {
      throw new PgQueryError(this.server, err);
    }
    return client;
  }

  /**
   * One probe on a fresh connection (never a pooled one, which may hide or outlive a dead server):
   * connect and read the recovery state, all within `timeoutMs`. Never throws.
   */
  async probe(timeoutMs: number): Promise<{ ok: true; inRecovery: boolean; ms: number } | { ok: false; error: string; ms: number }> {
    const started = Date.now();
    const client = new pg.Client({
      connectionString: this.opts.url,
      connectionTimeoutMillis: timeoutMs,
      query_timeout: timeoutMs,
      statement_timeout: timeoutMs,
      application_name: APPLICATION_NAME,
    });
    client.on('error', () => undefined);
    let timer: NodeJS.Timeout | undefined;
    try {
      const answer = (async () => {
        await client.connect();
        return (await client.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0]!.r;
      })();
      const inRecovery = await Promise.race([
        answer,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
      return { ok: true, inRecovery, ms: Date.now() - started };
    } catch (err) {
      return { ok: false, error: safeMessage(err), ms: Date.now() - started };
    } finally {
      clearTimeout(timer);
      void client.end().catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.pools.values()].map((p) => p.end()));
    this.pools.clear();
  }
}

/** The cluster as configured: the primary first, then the replicas. */
export class PgCluster {
  readonly primary: PgServer;
  readonly replicas: PgServer[];
  constructor(primary: PgServer, replicas: PgServer[]) {
    this.primary = primary;
    this.replicas = replicas;
  }
  get all(): PgServer[] {
    return [this.primary, ...this.replicas];
  }
  async close(): Promise<void> {
    await Promise.allSettled(this.all.map((s) => s.close()));
  }
}

export function createPgCluster(
  cfg: {
    primary: { url: string; pod?: string | undefined };
    replicas: readonly { url: string; pod?: string | undefined }[];
    connectTimeoutMs: number;
    queryTimeoutMs: number;
    actionTimeoutMs: number;
    poolMax: number;
  },
  logger: Logger,
): PgCluster {
  const mk = (s: { url: string; pod?: string | undefined }, role: Role) =>
    new PgServer({
      url: s.url,
      pod: s.pod,
      role,
      connectTimeoutMs: cfg.connectTimeoutMs,
      queryTimeoutMs: cfg.queryTimeoutMs,
      actionTimeoutMs: cfg.actionTimeoutMs,
      poolMax: cfg.poolMax,
      logger,
    });
  return new PgCluster(mk(cfg.primary, 'primary'), cfg.replicas.map((r) => mk(r, 'replica')));
}
