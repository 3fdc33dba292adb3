/**
 * Data corruption suspected (alert PostgresDataCorruption; runbook escalation "Data corruption
 * suspected → Engineering Manager + DBA immediately").
 *
 * Nothing on the database is automatic: whether to restore, to fail over, to dump what can still be
 * read or to zero damaged pages is a decision that loses data one way or another, and it is the
 * Engineering Manager's and the DBA's. So the page is the work: checksum failures per database and
 * the time of the last one (pg_stat_database.checksum_failures, checksum_last_failure) on every
 * configured server, and whether data checksums are on there at all (`data_checksums`: off means
 * PostgreSQL cannot see corruption on that server). It pages em-dba (the Engineering Manager + DBA
 * service) and lead-dba (the DBA) — Handler.alsoPage.
 *
 * Where RDS is configured (`aws:`), one step first: the runbook's "Trigger a Manual Backup" (`aws rds
 * create-db-snapshot`), checked as requested (creating or available) on RDS — not waited for until
 * available, which can take many minutes, because the page must go out now. The page then says which
 * snapshot holds the data as it was when dbpilot saw the failures. Without RDS the plan is
 * diagnose-only: paged at once in every mode but off.
 */
import { z } from 'zod';
import { safeMessage } from '../../errors.js';
import type { PgServer } from '../../integrations/postgres.js';
import { serverForAlert, type AlertInfo, type Handler, type HandlerContext, type Step } from '../handler.js';
import { psqlCommand } from '../runbook.js';
import { handlerOptions } from './options.js';

/** handlers.data-corruption: what this handler takes, with its defaults. */
export const dataCorruptionOptions = handlerOptions({
  /** Where RDS is configured: request an RDS snapshot before the page (false: page only). */
  snapshotFirst: z.boolean().default(true),
});
export type DataCorruptionConfig = z.output<typeof dataCorruptionOptions>;

const ISO = `'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'`;

/** One row per database with a count (none when checksums are off: the counts are NULL then), plus the setting. */
const CHECKSUMS_SQL = `
SELECT current_setting('data_checksums') AS data_checksums,
       coalesce(d.datname::text, '(shared objects)') AS datname, d.checksum_failures::float8 AS checksum_failures,
       to_char(d.checksum_last_failure AT TIME ZONE 'UTC', ${ISO}) AS checksum_last_failure
FROM (SELECT 1) AS one LEFT JOIN pg_stat_database AS d ON d.checksum_failures IS NOT NULL
ORDER BY d.checksum_failures DESC NULLS LAST, d.datname`;

export interface DatabaseFailures {
  datname: string;
  checksum_failures: number;
  /** ISO 8601 UTC; null when there never was one. */
  checksum_last_failure: string | null;
}

export interface ServerChecksums {
  server: string;
  /** What the alert is about (its `server` label). */
  alerted: boolean;
  error?: string;
  /** `on` / `off` (SHOW data_checksums). */
  data_checksums?: string;
  /** Databases with at least one failure, most first. */
  failures?: DatabaseFailures[];
  /** Databases whose count is 0. */
  databases_without_failures?: number;
}

export interface DataCorruptionPlan {
  /** The server the alert names. */
  server: string;
  /** The database the alert names ('' when none). */
  database: string;
  servers: ServerChecksums[];
  /** The most recent checksum failure anywhere, ISO 8601 UTC. */
  lastFailure: string | null;
  totalFailures: number;
  /** Request an RDS snapshot first (aws: configured and handlers.data-corruption.snapshotFirst). */
  snapshot: boolean;
  commands: string[];
}

const DATABASES_IN_PAGE = 50;

async function readServer(server: PgServer, alerted: boolean): Promise<ServerChecksums> {
  try {
    const rows = await server.query<{ data_checksums: string; datname: string | null; checksum_failures: number | null; checksum_last_failure: string | null }>(CHECKSUMS_SQL);
    const counted = rows.filter((r) => r.checksum_failures !== null);
    const failures = counted.filter((r) => r.checksum_failures! > 0).map((r) => ({ datname: r.datname!, checksum_failures: r.checksum_failures!, checksum_last_failure: r.checksum_last_failure }));
    return {
      server: server.server,
      alerted,
      data_checksums: rows[0]?.data_checksums ?? 'unknown',
      failures: failures.slice(0, DATABASES_IN_PAGE),
      databases_without_failures: counted.length - failures.length,
    };
  } catch (err) {
    return { server: server.server, alerted, error: safeMessage(err) };
  }
}

/** Reads checksum failures on every configured server, the alerted one first. Never throws for a server that does not answer. */
export async function readChecksums(ctx: HandlerContext, alert: AlertInfo): Promise<DataCorruptionPlan> {
  const alerted = serverForAlert(ctx, alert.labels.server);
  const servers = [alerted, ...ctx.cluster.all.filter((s) => s !== alerted)];
  const read = await Promise.all(servers.map((s) => readServer(s, s === alerted)));
  const all = read.flatMap((s) => s.failures ?? []);
  const lastFailure = all.map((f) => f.checksum_last_failure).filter((t): t is string => t !== null).sort().at(-1) ?? null;
  const database = alert.labels.datname ?? '';
  return {
    server: alerted.server,
    database,
    servers: read,
    lastFailure,
    totalFailures: all.reduce((n, f) => n + f.checksum_failures, 0),
    snapshot: Boolean(ctx.rds && ctx.config.aws && ctx.config.handlers['data-corruption'].snapshotFirst),
    commands: [
      psqlCommand(ctx.config, 'SELECT datname, checksum_failures, checksum_last_failure FROM pg_stat_database WHERE checksum_failures > 0;', { server: alerted.server }),
      psqlCommand(ctx.config, 'SHOW data_checksums;', { server: alerted.server }),
    ],
  };
}

/** Pure: the page's one line. */
export function corruptionSummary(plan: Pick<DataCorruptionPlan, 'servers' | 'lastFailure' | 'totalFailures'>): string {
  const parts: string[] = [];
  for (const s of plan.servers) {
    if (s.error) parts.push(`${s.server} could not be read (${s.error})`);
    else if (s.data_checksums !== 'on') parts.push(`${s.server} has data_checksums ${s.data_checksums}: corruption there is not detected`);
    else if (s.failures?.length) parts.push(`${s.server}: ${s.failures.map((f) => `${f.datname} ${f.checksum_failures}`).join(', ')}`);
  }
  const head = plan.totalFailures > 0 ? `${plan.totalFailures} checksum failure(s), the last at ${plan.lastFailure ?? 'an unknown time'}` : 'no checksum failure counted now (statistics reset since the alert?)';
  return `data corruption suspected: ${head}${parts.length ? ` — ${parts.join('; ')}` : ''}`;
}

/** Used only once every step is done: with RDS, the snapshot was requested (its id is in the page's `tried`). */
const LEFT_TO_HUMANS =
  'an RDS snapshot was requested first (named in tried); data corruption is suspected and nothing else is automatic: the Engineering Manager and the DBA decide what to do (find the damaged relation in the server log, check with amcheck, restore or fail over)';

export function dataCorruptionHandler(): Handler<DataCorruptionPlan> {
  return {
    name: 'data-corruption',
    team: 'em-dba',
    // The runbook's "Engineering Manager + DBA immediately": em-dba's service, and the DBA's own.
    alsoPage: ['lead-dba'],

    target(alert: AlertInfo, ctx: HandlerContext) {
      return `postgres/${serverForAlert(ctx, alert.labels.server).server}`;
    },

    async plan(alert, ctx) {
      const data = await readChecksums(ctx, alert);
      const summary = corruptionSummary(data);
      if (!data.snapshot) return { summary, data, diagnoseOnly: true };
      return { summary: `${summary}; an RDS snapshot is requested first`, data, escalateAfter: LEFT_TO_HUMANS };
    },

    steps(plan, ctx) {
      const rds = ctx.rds;
      if (!plan.snapshot || !rds) return [];
      const step: Step = {
        // Runbook "Backup and Restore": Trigger a Manual Backup (AWS RDS).
        name: 'createSnapshot',
        command: rds.snapshotCommand(),
        // A repeat joins the snapshot under way (or takes another): never harmful.
        idempotent: true,
        run: async (_prior, sctx) => {
          // Kept to what an RDS tag value may hold (letters, digits, spaces and _ . : / = + - @).
          const reason = `data corruption suspected on ${plan.server}${plan.database ? ` in ${plan.database}` : ''}: run ${sctx.runId}`;
          return rds.requestSnapshot(reason, { signal: sctx.signal, assertCanAct: sctx.assertCanAct, runId: sctx.runId, trigger: 'handler', requestedBy: sctx.owner });
        },
        check: async (output, _prior, sctx) => {
          const id = (output as { snapshotId?: unknown } | null)?.snapshotId;
          if (typeof id !== 'string') return { ok: false, detail: 'no snapshot was requested (no snapshot id recorded)' };
          const s = await rds.describeSnapshot(id, sctx.signal);
          if (!s) return { ok: false, detail: `RDS has no snapshot ${id} of ${rds.instance}` };
          if (s.status !== 'creating' && s.status !== 'available') return { ok: false, detail: `RDS snapshot ${id} of ${rds.instance} is ${s.status}, not creating or available` };
          return {
            ok: true,
            detail: `RDS snapshot ${id} of ${rds.instance} is ${s.status}${s.status === 'creating' ? ` (${s.percentProgress ?? 0} %)` : ''}: requested before this page`,
            data: { snapshotId: id, status: s.status },
          };
        },
      };
      return [step];
    },

    async diagnostics(plan, alert, ctx) {
      const d = plan ?? (await readChecksums(ctx, alert));
      return { checksum_failures: d.servers, total_failures: d.totalFailures, last_failure: d.lastFailure, runbook_commands: d.commands };
    },
  };
}
