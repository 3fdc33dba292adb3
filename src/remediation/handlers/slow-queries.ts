/**
 * Runbook scenario 2 — Slow Queries / High Latency (alert PostgresLongRunningQueries).
 *
 * Step 1 (identify) is the plan: non-idle client sessions whose query started more than the
 * threshold ago. Protected sessions are never touched: dbpilot's own, superusers, replication
 * roles, and configured roles / application names (autovacuum and walsenders are not client
 * backends and never appear). Step 2: pg_cancel_backend, wait the grace period, then
 * pg_terminate_backend only for the sessions still running the same query, and check they are
 * gone. Step 3's missing-index diagnostics go with any escalation. Step 4: VACUUM ANALYZE of the
 * configured tables, when configured.
 *
 * Every action names its session by pid AND backend_start AND query_start, so a pid reused by a
 * new connection, or a session that moved on to another query, is never cancelled by mistake —
 * which also makes every step safe to repeat after a crash.
 */
import { z } from 'zod';
import { UnsafeToActError, safeMessage } from '../../errors.js';
import { APPLICATION_NAME } from '../../integrations/postgres.js';
import { serverForAlert, type AlertInfo, type Handler, type HandlerContext, type PriorStep, type Step } from '../handler.js';
import { psqlCommand } from '../runbook.js';
import { databaseName, handlerOptions, identifier } from './options.js';
import { QUERY_TEXT_MAX, redactQuery } from '../query-text.js';

export { redactQuery };

/** handlers.slow-queries: what this handler takes, with its defaults (merged into the configuration schema). */
export const slowQueriesOptions = handlerOptions({
  /** Queries non-idle for longer than this are acted on; defaults to postgres.longRunningQuerySeconds. */
  thresholdSeconds: z.number().positive().optional(),
  /** Seconds between pg_cancel_backend and pg_terminate_backend for sessions that survived the cancel. */
  graceSeconds: z.number().min(0).default(10),
  /** At most this many sessions are cancelled per run; the rest are escalated. */
  maxPerRun: z.number().int().min(1).default(20),
  /** Roles whose sessions are never cancelled or terminated (superusers are always spared). */
  protectedRoles: z.array(z.string().min(1)).default([]),
  /** application_name values whose sessions are never touched. */
  protectedApplications: z.array(z.string().min(1)).default([]),
  /** Runbook step 4: tables to VACUUM ANALYZE after the queries are gone. */
  vacuumAnalyze: z.array(z.strictObject({ database: databaseName, table: identifier, schema: identifier.default('public') })).default([]),
  /** Runbook step 3: tables whose pg_stats are attached to an escalation as missing-index diagnostics. */
  diagnosticTables: z
    .array(z.strictObject({ database: databaseName, tables: z.array(identifier).min(1) }))
    .default([{ database: 'lomash_orders', tables: ['orders', 'payments', 'invoices'] }]),
});
export type SlowQueriesConfig = z.output<typeof slowQueriesOptions>;

export interface Session {
  pid: number;
  backendStart: string;
  queryStart: string;
  user: string;
  application: string;
  database: string;
  state: string;
  seconds: number;
  /** Truncated, with literals after PASSWORD removed. */
  query: string;
}

export interface SparedSession extends Session {
  reason: string;
}

export interface SlowQueriesPlan {
  server: string;
  database: string;
  thresholdSeconds: number;
  graceSeconds: number;
  targets: Session[];
  spared: SparedSession[];
  overCap: Session[];
  vacuum: { database: string; schema: string; table: string }[];
}

const VACUUM_TIMEOUT_MS = 30 * 60_000;
const VACUUM_LOCK_TIMEOUT = '5s';
/** Sessions listed in a page; the rest are counted (PagerDuty refuses events over 512 KB). */
const SESSIONS_IN_PAGE = 20;

/**
 * Session timestamps leave PostgreSQL as ISO 8601 in UTC with microseconds, whatever the session's
 * TimeZone and DateStyle, and go back in as timestamptz: a plan made on one connection identifies its
 * sessions exactly on another (a pool connection opened later, under other settings).
 */
const ISO_UTC = `'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'`;
const iso = (col: string) => `to_char(${col} AT TIME ZONE 'UTC', ${ISO_UTC})`;

const LIST_SQL = `
SELECT a.pid, ${iso('a.backend_start')} AS backend_start, ${iso('a.query_start')} AS query_start,
       coalesce(a.usename, '') AS usename, coalesce(a.application_name, '') AS application_name,
       a.datname, a.state, EXTRACT(EPOCH FROM now() - a.query_start)::float8 AS seconds,
       left(a.query, ${QUERY_TEXT_MAX * 2}) AS query,
       coalesce(r.rolsuper, false) AS superuser, coalesce(r.rolreplication, false) AS replication
FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.backend_type = 'client backend' AND a.state <> 'idle'
  AND a.query_start < now() - make_interval(secs => $1)
  AND a.pid <> pg_backend_pid()
  AND ($2::text IS NULL OR a.datname = $2)
ORDER BY a.query_start`;

/**
 * Which of these sessions still run the same query (same pid, same connection, same query start).
 * `idle in transaction (aborted)` is a query that was cancelled inside a transaction: it stopped.
 */
const STILL_RUNNING_SQL = `
SELECT s.pid FROM pg_stat_activity s
JOIN unnest($1::int[], $2::timestamptz[], $3::timestamptz[]) AS t(pid, backend_start, query_start)
  ON s.pid = t.pid AND s.backend_start = t.backend_start AND s.query_start = t.query_start
WHERE s.state NOT IN ('idle', 'idle in transaction (aborted)')`;

/** Which of these connections still exist at all (after pg_terminate_backend). */
const STILL_CONNECTED_SQL = `
SELECT s.pid FROM pg_stat_activity s
JOIN unnest($1::int[], $2::timestamptz[]) AS t(pid, backend_start) ON s.pid = t.pid AND s.backend_start = t.backend_start`;

const SIGNAL_SQL = (fn: 'pg_cancel_backend' | 'pg_terminate_backend') => `
SELECT t.pid, coalesce(bool_or(${fn}(s.pid)), false) AS signalled
FROM unnest($1::int[], $2::timestamptz[], $3::timestamptz[]) AS t(pid, backend_start, query_start)
LEFT JOIN pg_stat_activity s ON s.pid = t.pid AND s.backend_start = t.backend_start
     AND s.query_start = t.query_start AND s.state NOT IN ('idle', 'idle in transaction (aborted)')
GROUP BY t.pid`;

const DIAGNOSTICS_SQL = `
SELECT schemaname, tablename, attname, n_distinct::float8 AS n_distinct, correlation::float8 AS correlation
FROM pg_stats WHERE tablename = ANY($1::text[]) ORDER BY n_distinct LIMIT 100`;

/** Pure: who is spared and why, who is acted on (oldest first, up to the cap), who is over the cap. */
export function classifySessions(
  rows: (Session & { superuser: boolean; replication: boolean })[],
  cfg: Pick<SlowQueriesConfig, 'protectedRoles' | 'protectedApplications' | 'maxPerRun'>,
): { targets: Session[]; spared: SparedSession[]; overCap: Session[] } {
  const spared: SparedSession[] = [];
  const eligible: Session[] = [];
  for (const { superuser, replication, ...s } of rows) {
    let reason: string | null = null;
    if (s.application === APPLICATION_NAME) reason = "dbpilot's own session";
    else if (superuser) reason = `superuser ${s.user}`;
    else if (replication) reason = `replication role ${s.user}`;
    else if (cfg.protectedRoles.includes(s.user)) reason = `protected role ${s.user}`;
    else if (cfg.protectedApplications.includes(s.application)) reason = `protected application ${s.application}`;
    if (reason) spared.push({ ...s, reason });
    else eligible.push(s);
  }
  eligible.sort((a, b) => b.seconds - a.seconds);
  return { targets: eligible.slice(0, cfg.maxPerRun), spared, overCap: eligible.slice(cfg.maxPerRun) };
}


const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function poll<T>(fn: () => Promise<T[]>, untilEmptyMs: number): Promise<T[]> {
  const deadline = Date.now() + untilEmptyMs;
  for (;;) {
    const left = await fn();
    if (left.length === 0 || Date.now() >= deadline) return left;
    await sleep(Math.min(250, Math.max(0, deadline - Date.now())));
  }
}

const ident = (s: string) => `"${s.replace(/"/g, '""')}"`;

export function slowQueriesHandler(): Handler<SlowQueriesPlan> {
  const settings = (ctx: HandlerContext) => ctx.config.handlers['slow-queries'];

  return {
    name: 'slow-queries',
    team: 'oncall-backend',

    target(alert: AlertInfo, ctx: HandlerContext) {
      return `postgres/${serverForAlert(ctx, alert.labels.server).server}/${alert.labels.datname ?? '*'}`;
    },

    async plan(alert, ctx) {
      const cfg = settings(ctx);
      const server = serverForAlert(ctx, alert.labels.server);
      const database = alert.labels.datname ?? '*';
      const thresholdSeconds = cfg.thresholdSeconds ?? ctx.config.postgres.longRunningQuerySeconds;
      const rows = await server.act<Record<string, unknown>>(LIST_SQL, [thresholdSeconds, database === '*' ? null : database]);
      const sessions = rows.map((r) => ({
        pid: r.pid as number,
        backendStart: r.backend_start as string,
        queryStart: r.query_start as string,
        user: r.usename as string,
        application: r.application_name as string,
        database: r.datname as string,
        state: r.state as string,
        seconds: Math.round((r.seconds as number) * 10) / 10,
        query: redactQuery(r.query as string),
        superuser: r.superuser as boolean,
        replication: r.replication as boolean,
      }));
      const { targets, spared, overCap } = classifySessions(sessions, cfg);
      const vacuum = cfg.vacuumAnalyze.filter((v) => database === '*' || v.database === database);
      const data: SlowQueriesPlan = { server: server.server, database, thresholdSeconds, graceSeconds: cfg.graceSeconds, targets, spared, overCap, vacuum };
      if (targets.length === 0 && spared.length > 0) {
        throw new UnsafeToActError(
          `${spared.length} long-running quer${spared.length === 1 ? 'y belongs' : 'ies belong'} to protected sessions (${[...new Set(spared.map((s) => s.reason))].join('; ')}); dbpilot does not touch them`,
        );
      }
      const left: string[] = [];
      if (spared.length) left.push(`${spared.length} protected session(s) left alone`);
      if (overCap.length) left.push(`${overCap.length} more session(s) over the per-run cap of ${cfg.maxPerRun}`);
      return {
        summary:
          targets.length === 0
            ? `no query in ${database === '*' ? 'any database' : database} has been running for more than ${thresholdSeconds} s any more`
            : `${targets.length} quer${targets.length === 1 ? 'y' : 'ies'} running for more than ${thresholdSeconds} s in ${database} on ${server.server} (pids ${targets.map((t) => t.pid).join(', ')})`,
        data,
        nothingToDo: targets.length === 0,
        ...(left.length ? { escalateAfter: left.join('; ') } : {}),
      };
    },

    steps(plan, ctx) {
      const server = serverForAlert(ctx, plan.server);
      const cmd = (sql: string, database?: string) => psqlCommand(ctx.config, sql, { server: plan.server, ...(database ? { database } : {}) });
      const ids = (list: Session[]) => [list.map((s) => s.pid), list.map((s) => s.backendStart), list.map((s) => s.queryStart)];

      const stillRunning = async (list: Session[]) => {
        if (list.length === 0) return [];
        const rows = await server.act<{ pid: number }>(STILL_RUNNING_SQL, ids(list));
        const alive = new Set(rows.map((r) => r.pid));
        return list.filter((s) => alive.has(s.pid));
      };
      const stillConnected = async (list: Session[]) => {
        if (list.length === 0) return [];
        const rows = await server.act<{ pid: number }>(STILL_CONNECTED_SQL, [list.map((s) => s.pid), list.map((s) => s.backendStart)]);
        const alive = new Set(rows.map((r) => r.pid));
        return list.filter((s) => alive.has(s.pid));
      };
      // Only a session still running the very query of the plan is signalled: never a connection that moved on.
      const signal = async (fn: 'pg_cancel_backend' | 'pg_terminate_backend', list: Session[]) => {
        if (list.length === 0) return [];
        return server.act<{ pid: number; signalled: boolean }>(SIGNAL_SQL(fn), ids(list));
      };

      const steps: Step[] = [
        {
          name: 'cancelBackends',
          command: plan.targets.map((t) => cmd(`SELECT pg_cancel_backend(${t.pid});`)).join('\n'),
          idempotent: true,
          run: async () => ({ cancelled: await signal('pg_cancel_backend', plan.targets) }),
          check: async () => {
            // The runbook's "force terminate if cancel does not work": give cancel the grace period first.
            const survivors = await poll(() => stillRunning(plan.targets), plan.graceSeconds * 1000);
            const stopped = plan.targets.length - survivors.length;
            return {
              ok: true,
              detail:
                survivors.length === 0
                  ? `all ${plan.targets.length} cancelled queries stopped`
                  : `${stopped} of ${plan.targets.length} stopped; ${survivors.length} still running after ${plan.graceSeconds} s (pids ${survivors.map((s) => s.pid).join(', ')}): terminating`,
              data: { survivors },
            };
          },
        },
        {
          name: 'terminateBackends',
          command: plan.targets.map((t) => cmd(`SELECT pg_terminate_backend(${t.pid});`)).join('\n') + (plan.targets.length ? '\n# only for the pids still running after the grace period' : ''),
          idempotent: true,
          run: async (prior: ReadonlyMap<string, PriorStep>) => {
            const survivors = ((prior.get('cancelBackends')?.check?.data as { survivors?: Session[] } | undefined)?.survivors ?? []) as Session[];
            return { survivors, terminated: await signal('pg_terminate_backend', survivors) };
          },
          check: async (output) => {
            const { survivors, terminated } = output as { survivors: Session[]; terminated?: { pid: number; signalled: boolean }[] };
            if (survivors.length === 0) return { ok: true, detail: 'nothing to terminate: every query stopped on cancel' };
            // A session signalled must be gone. One that was not (its query ended on its own between the
            // grace period and the terminate, so SIGNAL_SQL left the connection alone) only must not be
            // running the planned query any more: its idle connection is the service's, not a failure.
            // Output without `terminated` (recorded before it was kept) counts every survivor as signalled.
            const signalled = new Set((terminated ?? survivors.map((s) => ({ pid: s.pid, signalled: true }))).filter((t) => t.signalled).map((t) => t.pid));
            const killed = survivors.filter((s) => signalled.has(s.pid));
            const finished = survivors.filter((s) => !signalled.has(s.pid));
            const left = await poll(async () => [...(await stillConnected(killed)), ...(await stillRunning(finished))], 5000);
            if (left.length > 0) {
              return { ok: false, detail: `${left.length} session(s) still connected after pg_terminate_backend (pids ${left.map((s) => s.pid).join(', ')})` };
            }
            const ended = finished.length > 0 ? `; ${finished.length} had finished on their own (pids ${finished.map((s) => s.pid).join(', ')})` : '';
            return { ok: true, detail: `terminated ${killed.length} session(s)${killed.length ? ` (pids ${killed.map((s) => s.pid).join(', ')})` : ''}${ended}` };
          },
        },
      ];

      for (const byDb of groupBy(plan.vacuum, (v) => v.database)) {
        const database = byDb[0]!.database;
        steps.push({
          name: `vacuumAnalyze(${database})`,
          command: cmd(byDb.map((v) => `VACUUM ANALYZE ${v.schema === 'public' ? v.table : `${v.schema}.${v.table}`};`).join(' '), database),
          idempotent: true,
          run: async () => {
            const startedAt = (await server.act<{ now: string }>(`SELECT ${iso('now()')} AS now`, [], database))[0]!.now;
            // VACUUM cannot run inside a transaction block nor under the collectors' statement timeout; a lock
            // it cannot get quickly (a long transaction on the table) fails the step instead of hanging the run.
            const client = await server.connect(database, { statementTimeoutMs: VACUUM_TIMEOUT_MS });
            try {
              await client.query(`SET lock_timeout = '${VACUUM_LOCK_TIMEOUT}'`);
              for (const v of byDb) await client.query(`VACUUM ANALYZE ${ident(v.schema)}.${ident(v.table)}`);
            } finally {
              await client.end();
            }
            return { startedAt, tables: byDb.map((v) => `${v.schema}.${v.table}`) };
          },
          check: async (output) => {
            const { startedAt } = output as { startedAt: string };
            const rows = await server.act<{ relname: string; ok: boolean }>(
              `SELECT relname, (greatest(last_vacuum, last_autovacuum) >= $1::timestamptz AND greatest(last_analyze, last_autoanalyze) >= $1::timestamptz) AS ok
               FROM pg_stat_user_tables WHERE (schemaname, relname) IN (SELECT * FROM unnest($2::text[], $3::text[]))`,
              [startedAt, byDb.map((v) => v.schema), byDb.map((v) => v.table)],
              database,
            );
            const done = rows.filter((r) => r.ok).map((r) => r.relname);
            const missing = byDb.map((v) => v.table).filter((t) => !done.includes(t));
            return missing.length === 0
              ? { ok: true, detail: `vacuumed and analyzed ${done.join(', ')} in ${database}` }
              : { ok: false, detail: `no vacuum/analyze recorded for ${missing.join(', ')} in ${database}` };
          },
        });
      }
      return steps;
    },

    async diagnostics(plan, alert, ctx) {
      const cfg = settings(ctx);
      const server = serverForAlert(ctx, plan?.server ?? alert.labels.server);
      const database = plan?.database ?? alert.labels.datname ?? '*';
      const out: Record<string, unknown> = {};
      if (plan) {
        const cap = <T>(list: T[]) => (list.length > SESSIONS_IN_PAGE ? [...list.slice(0, SESSIONS_IN_PAGE), `… and ${list.length - SESSIONS_IN_PAGE} more`] : list);
        out.sessions = { acted_on: cap(plan.targets), spared: cap(plan.spared), over_cap: cap(plan.overCap) };
      }
      // Runbook step 3, "Check for missing indexes", for the tables configured for this database.
      for (const d of cfg.diagnosticTables.filter((t) => database === '*' || t.database === database)) {
        try {
          out[`pg_stats ${d.database}`] = await server.act(DIAGNOSTICS_SQL, [d.tables], d.database);
        } catch (err) {
          out[`pg_stats ${d.database}`] = `not available: ${(err as Error).message}`;
        }
        out[`pg_stats ${d.database} command`] = psqlCommand(
          ctx.config,
          `SELECT schemaname, tablename, attname, n_distinct, correlation FROM pg_stats WHERE tablename IN (${d.tables.map((t) => `'${t}'`).join(', ')}) ORDER BY n_distinct;`,
          { database: d.database },
        );
      }
      return out;
    },
  };
}

function groupBy<T>(items: T[], key: (t: T) => string): T[][] {
  const m = new Map<string, T[]>();
  for (const i of items) {
    const k = key(i);
    m.set(k, [...(m.get(k) ?? []), i]);
  }
  return [...m.values()];
}
