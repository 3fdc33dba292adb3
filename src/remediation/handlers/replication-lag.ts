/**
 * Replication lag > 5 min (alert PostgresReplicationLagHigh; runbook "Check replication lag", "Check
 * if replica is behind", escalation "Replication lag > 5 min → On-call backend engineer").
 *
 * Diagnose only: the runbook has no step to automate, and every way of "fixing" lag (resuming a
 * paused replay, cancelling the replica's queries, dropping a slot, rebuilding the replica) loses
 * something someone chose or needs. The plan reads what explains the lag and the page carries it:
 *
 * - the primary's pg_stat_replication (sent / write / flush / replay positions and lag per standby),
 * - each replica's pg_last_wal_receive_lsn / pg_last_wal_replay_lsn / pg_last_xact_replay_timestamp
 *   (lag in bytes and seconds, as the exporter computes it), whether replay is paused, and how far its
 *   replay is behind the primary's current position,
 * - the WAL receiver (pg_stat_wal_receiver; never its conninfo, which may hold a password),
 * - replication slots and the WAL each retains (pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn),
 *   wal_status, safe_wal_size),
 * - what holds replay back on the replica: long-running queries, pg_stat_database_conflicts, and the
 *   settings that decide who waits for whom (hot_standby_feedback, max_standby_streaming_delay,
 *   max_standby_archive_delay, recovery_min_apply_delay),
 *
 * and findingsOf() (pure, table-tested) says in sentences what those numbers point at. Every read is
 * a SELECT; nothing on any server is changed.
 */
import { z } from 'zod';
import { safeMessage } from '../../errors.js';
import type { PgServer } from '../../integrations/postgres.js';
import { serverForAlert, type AlertInfo, type Handler, type HandlerContext } from '../handler.js';
import { redactQuery } from '../query-text.js';
import { psqlCommand } from '../runbook.js';
import { handlerOptions } from './options.js';

/** handlers.replication-lag: what this handler takes, with its defaults. */
export const replicationLagOptions = handlerOptions({
  /** Queries on a replica whose transaction is older than this are listed as holding back replay; defaults to postgres.longRunningQuerySeconds. */
  replicaQuerySeconds: z.number().positive().optional(),
  /** Rows of each list (standbys, slots, queries, conflicts) put in a page; the rest are counted. */
  listMax: z.number().int().min(1).max(200).default(20),
});
export type ReplicationLagConfig = z.output<typeof replicationLagOptions>;

const ISO = `'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'`;
const iso = (col: string) => `to_char(${col} AT TIME ZONE 'UTC', ${ISO})`;

const PRIMARY_SQL = `SELECT pg_is_in_recovery() AS in_recovery,
  CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END AS lsn`;

const STAT_REPLICATION_SQL = `
SELECT coalesce(application_name, '') AS application_name, coalesce(host(client_addr), 'local') AS client_addr,
       coalesce(state, '') AS state, coalesce(sync_state, '') AS sync_state,
       sent_lsn::text AS sent_lsn, write_lsn::text AS write_lsn, flush_lsn::text AS flush_lsn, replay_lsn::text AS replay_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), sent_lsn)::float8 AS not_sent_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 AS replay_lag_bytes,
       EXTRACT(EPOCH FROM write_lag)::float8 AS write_lag_seconds,
       EXTRACT(EPOCH FROM flush_lag)::float8 AS flush_lag_seconds,
       EXTRACT(EPOCH FROM replay_lag)::float8 AS replay_lag_seconds,
       ${iso('reply_time')} AS reply_time
FROM pg_stat_replication ORDER BY application_name, client_addr`;

const SLOTS_SQL = `
SELECT slot_name::text AS slot_name, slot_type, coalesce(database::text, '') AS database, active, active_pid,
       coalesce(wal_status, '') AS wal_status, safe_wal_size::float8 AS safe_wal_size_bytes, restart_lsn::text AS restart_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 AS retained_bytes,
       xmin::text AS xmin, catalog_xmin::text AS catalog_xmin, count(*) OVER ()::int AS total
FROM pg_replication_slots ORDER BY pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) DESC NULLS LAST, slot_name LIMIT $1`;

const SETTINGS_SQL = `SELECT name, current_setting(name) AS value FROM unnest($1::text[]) AS name`;
const PRIMARY_SETTINGS = ['wal_keep_size', 'max_slot_wal_keep_size', 'synchronous_standby_names'];
const REPLICA_SETTINGS = ['hot_standby_feedback', 'max_standby_streaming_delay', 'max_standby_archive_delay', 'recovery_min_apply_delay', 'primary_slot_name'];

/** On a replica; $1 the primary's current WAL position (or NULL when it could not be read). */
const REPLICA_SQL = `
SELECT pg_is_in_recovery() AS in_recovery,
       pg_last_wal_receive_lsn()::text AS receive_lsn, pg_last_wal_replay_lsn()::text AS replay_lsn,
       ${iso('pg_last_xact_replay_timestamp()')} AS last_replayed_xact_at,
       CASE WHEN pg_is_in_recovery() AND pg_last_wal_receive_lsn() IS NOT NULL
            THEN GREATEST(0, pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()))::float8 END AS replay_lag_bytes,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() IS NOT NULL AND pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0::float8
            WHEN pg_last_xact_replay_timestamp() IS NULL THEN NULL
            ELSE GREATEST(0, EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()))::float8 END AS replay_lag_seconds,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS replay_paused,
       CASE WHEN pg_is_in_recovery() AND $1::text IS NOT NULL
            THEN GREATEST(0, pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn()))::float8 END AS behind_primary_bytes`;

/** pg_stat_wal_receiver without conninfo (it may carry a password). */
const WAL_RECEIVER_SQL = `
SELECT status, receive_start_lsn::text AS receive_start_lsn, written_lsn::text AS written_lsn, flushed_lsn::text AS flushed_lsn,
       latest_end_lsn::text AS latest_end_lsn, ${iso('latest_end_time')} AS latest_end_time,
       ${iso('last_msg_receipt_time')} AS last_msg_receipt_time, coalesce(slot_name, '') AS slot_name,
       coalesce(sender_host, '') AS sender_host, sender_port
FROM pg_stat_wal_receiver`;

const CONFLICTS_SQL = `
SELECT datname::text AS datname, confl_tablespace::float8 AS tablespace, confl_lock::float8 AS lock, confl_snapshot::float8 AS snapshot,
       confl_bufferpin::float8 AS bufferpin, confl_deadlock::float8 AS deadlock
FROM pg_stat_database_conflicts
WHERE confl_tablespace + confl_lock + confl_snapshot + confl_bufferpin + confl_deadlock > 0
ORDER BY confl_tablespace + confl_lock + confl_snapshot + confl_bufferpin + confl_deadlock DESC, datname`;

/** Client sessions on the replica whose transaction (or query) is older than $1 seconds: what replay may wait for. */
const REPLICA_QUERIES_SQL = `
SELECT pid, coalesce(usename, '') AS usename, coalesce(application_name, '') AS application_name, coalesce(datname::text, '') AS datname, state,
       EXTRACT(EPOCH FROM now() - coalesce(xact_start, query_start))::float8 AS seconds,
       coalesce(wait_event_type, '') AS wait_event_type, coalesce(wait_event, '') AS wait_event,
       backend_xmin::text AS backend_xmin, left(query, 400) AS query, count(*) OVER ()::int AS total
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND state <> 'idle' AND pid <> pg_backend_pid()
  AND coalesce(xact_start, query_start) < now() - make_interval(secs => $1)
ORDER BY coalesce(xact_start, query_start) LIMIT $2`;

export interface StandbyRow {
  application_name: string;
  client_addr: string;
  state: string;
  sync_state: string;
  sent_lsn: string | null;
  write_lsn: string | null;
  flush_lsn: string | null;
  replay_lsn: string | null;
  not_sent_bytes: number | null;
  replay_lag_bytes: number | null;
  write_lag_seconds: number | null;
  flush_lag_seconds: number | null;
  replay_lag_seconds: number | null;
  reply_time: string | null;
}

export interface SlotRow {
  slot_name: string;
  slot_type: string;
  database: string;
  active: boolean;
  active_pid: number | null;
  wal_status: string;
  safe_wal_size_bytes: number | null;
  restart_lsn: string | null;
  retained_bytes: number | null;
  xmin: string | null;
  catalog_xmin: string | null;
}

export interface WalReceiver {
  /** Null when dbpilot's role may not see it (no pg_read_all_stats). */
  status: string | null;
  receive_start_lsn: string | null;
  written_lsn: string | null;
  flushed_lsn: string | null;
  latest_end_lsn: string | null;
  latest_end_time: string | null;
  last_msg_receipt_time: string | null;
  slot_name: string;
  sender_host: string;
  sender_port: number | null;
}

export interface ReplicaQuery {
  pid: number;
  usename: string;
  application_name: string;
  datname: string;
  state: string;
  seconds: number;
  wait_event_type: string;
  wait_event: string;
  backend_xmin: string | null;
  query: string;
}

export interface ConflictRow {
  datname: string;
  tablespace: number;
  lock: number;
  snapshot: number;
  bufferpin: number;
  deadlock: number;
}

export interface ReplicaFacts {
  server: string;
  /** What the alert is about (its `server` label). */
  alerted: boolean;
  error?: string;
  in_recovery?: boolean;
  receive_lsn?: string | null;
  replay_lsn?: string | null;
  last_replayed_xact_at?: string | null;
  /** Received but not replayed (0 when everything received is replayed). */
  replay_lag_bytes?: number | null;
  /** As pg_replication_lag_seconds: age of the last replayed transaction while WAL waits, else 0. */
  replay_lag_seconds?: number | null;
  replay_paused?: boolean | null;
  /** The primary's current WAL position minus what this replica replayed. */
  behind_primary_bytes?: number | null;
  /** Null: no WAL receiver runs. */
  wal_receiver?: WalReceiver | null;
  settings?: Record<string, string>;
  long_queries?: ReplicaQuery[];
  long_queries_total?: number;
  conflicts?: ConflictRow[];
}

export interface PrimaryFacts {
  server: string;
  error?: string;
  lsn?: string | null;
  standbys?: StandbyRow[];
  slots?: SlotRow[];
  slots_total?: number;
  settings?: Record<string, string>;
}

export interface ReplicationLagPlan {
  /** The replica the alert names ('' when it names none: every replica is read). */
  server: string;
  replicaQuerySeconds: number;
  findings: string[];
  replicas: ReplicaFacts[];
  primary: PrimaryFacts;
  /** The runbook's own commands, for the human who takes it from here. */
  commands: string[];
}

/** 1536 → "1.5 KiB": bytes as a person reads them, in findings (the numbers themselves stay in the facts). */
export function showBytes(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${Math.round(v)} bytes` : `${v.toFixed(1)} ${units[i]}`;
}

const showSeconds = (s: number) => (s >= 120 ? `${Math.round(s / 60)} min` : `${Math.round(s)} s`);

/** A setting that means "no delay" / "off" (PostgreSQL shows 0 as `0`, durations with a unit). */
const isZero = (v: string | undefined) => v === undefined || /^0([a-z]+)?$/i.test(v.trim());

/** Pure: what the facts point at, one sentence each, most telling first. */
export function findingsOf(plan: Pick<ReplicationLagPlan, 'replicas' | 'primary' | 'replicaQuerySeconds'>): string[] {
  const out: string[] = [];
  const { primary } = plan;
  if (primary.error) out.push(`the primary ${primary.server} could not be read (${primary.error}): lag is measured from the replicas alone`);
  for (const r of plan.replicas) {
    const s = r.server;
    if (r.error) {
      out.push(`replica ${s} could not be read: ${r.error}`);
      continue;
    }
    if (r.in_recovery === false) {
      out.push(`${s} is not in recovery: it is a primary now and replays nothing (a promotion?)`);
      continue;
    }
    const lagBytes = r.replay_lag_bytes ?? 0;
    if (r.replay_paused) {
      out.push(`replay on ${s} is paused (pg_wal_replay_pause() was called): WAL is received but not applied${lagBytes > 0 ? ` (${showBytes(lagBytes)} waiting)` : ''}; find out who paused it and why, then SELECT pg_wal_replay_resume(); on ${s}`);
    }
    const delay = r.settings?.recovery_min_apply_delay;
    if (!isZero(delay)) out.push(`${s} delays replay on purpose: recovery_min_apply_delay = ${delay}`);
    if (r.wal_receiver === null) {
      out.push(`no WAL receiver runs on ${s}: it is not streaming from the primary (the connection fails or is refused; see its log)`);
    } else if (r.wal_receiver && r.wal_receiver.status === null) {
      out.push(`the WAL receiver's state on ${s} is hidden from dbpilot: its role needs pg_monitor (pg_read_all_stats) to see it`);
    } else if (r.wal_receiver && r.wal_receiver.status !== 'streaming') {
      out.push(`the WAL receiver on ${s} is ${r.wal_receiver.status}, not streaming`);
    }
    if (lagBytes > 0 && !r.replay_paused) {
      out.push(`${s} has ${showBytes(lagBytes)} received but not replayed${r.replay_lag_seconds ? `; its last replayed transaction is ${showSeconds(r.replay_lag_seconds)} old` : ''}`);
    }
    if (lagBytes === 0 && (r.behind_primary_bytes ?? 0) > 0) {
      out.push(`${s} replayed everything it received but is ${showBytes(r.behind_primary_bytes!)} behind the primary: WAL is not reaching it fast enough (network, the primary's WAL sender, or the receiver)`);
    }
    const queries = r.long_queries ?? [];
    if (queries.length > 0) {
      const oldest = queries[0]!;
      const streamingDelay = r.settings?.max_standby_streaming_delay;
      const waits = streamingDelay === '-1' ? 'replay waits for conflicting queries indefinitely (max_standby_streaming_delay = -1)' : `replay waits up to max_standby_streaming_delay = ${streamingDelay ?? 'unknown'} for a conflicting query`;
      out.push(
        `${r.long_queries_total ?? queries.length} quer${(r.long_queries_total ?? queries.length) === 1 ? 'y' : 'ies'} on ${s} older than ${plan.replicaQuerySeconds} s (oldest: pid ${oldest.pid}, ${oldest.usename || 'unknown user'}, ${showSeconds(oldest.seconds)}): ${waits}${r.settings?.hot_standby_feedback === 'on' ? '; hot_standby_feedback is on, so they also hold back vacuum on the primary' : ''}`,
      );
    }
    const conflicts = r.conflicts ?? [];
    if (conflicts.length > 0) {
      const sum = (k: keyof Omit<ConflictRow, 'datname'>) => conflicts.reduce((n, c) => n + c[k], 0);
      const kinds = (['snapshot', 'lock', 'bufferpin', 'tablespace', 'deadlock'] as const).filter((k) => sum(k) > 0).map((k) => `${k} ${sum(k)}`);
      out.push(`${s} has cancelled queries so replay could go on (pg_stat_database_conflicts: ${kinds.join(', ')}; in ${conflicts.map((c) => c.datname).join(', ')})`);
    }
  }
  for (const slot of primary.slots ?? []) {
    const retained = slot.retained_bytes ?? 0;
    if (slot.wal_status === 'lost') out.push(`slot ${slot.slot_name} has lost WAL it needed (wal_status lost): its consumer cannot catch up and must be rebuilt`);
    else if (!slot.active && retained > 0) {
      out.push(`slot ${slot.slot_name} is inactive and retains ${showBytes(retained)} of WAL on the primary (wal_status ${slot.wal_status || 'unknown'}${slot.safe_wal_size_bytes !== null ? `, ${showBytes(slot.safe_wal_size_bytes)} left before it is invalidated` : ''})`);
    } else if (slot.wal_status === 'unreserved') out.push(`slot ${slot.slot_name} retains ${showBytes(retained)}, more than max_slot_wal_keep_size: it will lose WAL at the next checkpoint`);
  }
  for (const st of primary.standbys ?? []) {
    if (st.state && st.state !== 'streaming') out.push(`standby ${st.application_name || st.client_addr} is ${st.state} in pg_stat_replication, not streaming`);
  }
  if (out.length === 0) out.push('nothing in the views dbpilot reads explains the lag: see the replica\'s log and its I/O');
  return out;
}

const cap = <T>(rows: T[], max: number) => rows.slice(0, max);

async function settingsOf(server: PgServer, names: string[]): Promise<Record<string, string>> {
  const rows = await server.query<{ name: string; value: string }>(SETTINGS_SQL, [names]);
  return Object.fromEntries(rows.map((r) => [r.name, r.value]));
}

async function readPrimary(server: PgServer, listMax: number): Promise<PrimaryFacts> {
  try {
    const [head] = await server.query<{ in_recovery: boolean; lsn: string | null }>(PRIMARY_SQL);
    if (head?.in_recovery) return { server: server.server, error: 'it is in recovery (not a primary)' };
    const [standbys, slots, settings] = await Promise.all([
      server.query<StandbyRow & Record<string, unknown>>(STAT_REPLICATION_SQL),
      server.query<SlotRow & { total: number } & Record<string, unknown>>(SLOTS_SQL, [listMax]),
      settingsOf(server, PRIMARY_SETTINGS),
    ]);
    return {
      server: server.server,
      lsn: head?.lsn ?? null,
      standbys: cap(standbys, listMax),
      slots: slots.map(({ total: _t, ...s }) => s),
      slots_total: slots[0]?.total ?? 0,
      settings,
    };
  } catch (err) {
    return { server: server.server, error: safeMessage(err) };
  }
}

async function readReplica(server: PgServer, alerted: boolean, primaryLsn: string | null, cfg: { seconds: number; listMax: number }): Promise<ReplicaFacts> {
  try {
    const [[row], receiver, settings, queries, conflicts] = await Promise.all([
      server.query<Omit<ReplicaFacts, 'server' | 'alerted'> & Record<string, unknown>>(REPLICA_SQL, [primaryLsn]),
      server.query<WalReceiver & Record<string, unknown>>(WAL_RECEIVER_SQL),
      settingsOf(server, REPLICA_SETTINGS),
      server.query<ReplicaQuery & { total: number } & Record<string, unknown>>(REPLICA_QUERIES_SQL, [cfg.seconds, cfg.listMax]),
      server.query<ConflictRow & Record<string, unknown>>(CONFLICTS_SQL),
    ]);
    return {
      server: server.server,
      alerted,
      in_recovery: row!.in_recovery,
      receive_lsn: row!.receive_lsn,
      replay_lsn: row!.replay_lsn,
      last_replayed_xact_at: row!.last_replayed_xact_at,
      replay_lag_bytes: row!.replay_lag_bytes,
      replay_lag_seconds: row!.replay_lag_seconds === null || row!.replay_lag_seconds === undefined ? null : Math.round(row!.replay_lag_seconds * 10) / 10,
      replay_paused: row!.replay_paused,
      behind_primary_bytes: row!.behind_primary_bytes,
      wal_receiver: receiver[0] ?? null,
      settings,
      long_queries: queries.map(({ total: _t, ...q }) => ({ ...q, seconds: Math.round(q.seconds * 10) / 10, query: redactQuery(q.query) })),
      long_queries_total: queries[0]?.total ?? 0,
      conflicts: cap(conflicts, cfg.listMax),
    };
  } catch (err) {
    return { server: server.server, alerted, error: safeMessage(err) };
  }
}

/** Reads everything the page carries. Never throws: a server that does not answer is a fact too. */
export async function readReplicationLag(ctx: HandlerContext, label: string | undefined): Promise<ReplicationLagPlan> {
  const cfg = ctx.config.handlers['replication-lag'];
  const seconds = cfg.replicaQuerySeconds ?? ctx.config.postgres.longRunningQuerySeconds;
  const alerted = label ? serverForAlert(ctx, label) : null;
  let primaryServer: PgServer;
  try {
    primaryServer = ctx.topology.primaryServer();
  } catch {
    primaryServer = ctx.cluster.primary;
  }
  const primary = await readPrimary(primaryServer, cfg.listMax);
  // Every other configured server is read as a replica: the one alerted first, so a page cut to fit keeps it.
  const others = ctx.cluster.all.filter((s) => s !== primaryServer);
  others.sort((a, b) => Number(b === alerted) - Number(a === alerted));
  const replicas = await Promise.all(others.map((s) => readReplica(s, s === alerted, primary.lsn ?? null, { seconds, listMax: cfg.listMax })));
  const base = { replicas, primary, replicaQuerySeconds: seconds };
  const replicaServer = alerted && alerted !== primaryServer ? alerted.server : (others[0]?.server ?? primaryServer.server);
  return {
    server: alerted?.server ?? '',
    ...base,
    findings: findingsOf(base),
    commands: [
      psqlCommand(ctx.config, 'SELECT client_addr, state, sent_lsn, write_lsn, replay_lsn, sync_state FROM pg_stat_replication;', { server: primaryServer.server }),
      psqlCommand(ctx.config, 'SELECT now() - pg_last_xact_replay_timestamp() AS replication_delay;', { server: replicaServer }),
    ],
  };
}

export function replicationLagHandler(): Handler<ReplicationLagPlan> {
  return {
    name: 'replication-lag',
    team: 'oncall-backend',

    target(alert: AlertInfo, ctx: HandlerContext) {
      const label = alert.labels.server;
      return label ? `postgres/${serverForAlert(ctx, label).server}` : 'postgres/replicas';
    },

    async plan(alert, ctx) {
      const data = await readReplicationLag(ctx, alert.labels.server);
      const r = data.replicas.find((x) => x.alerted) ?? data.replicas[0];
      const lag =
        r && !r.error && r.in_recovery
          ? `${showBytes(r.replay_lag_bytes ?? 0)} received but not replayed, ${showBytes(r.behind_primary_bytes ?? 0)} behind the primary, lag ${r.replay_lag_seconds ?? 'unknown'} s`
          : 'lag unknown';
      return {
        summary: `replica ${r?.server ?? data.server ?? 'unknown'}: ${lag}; ${data.findings[0]}`,
        data,
        diagnoseOnly: true,
      };
    },

    steps() {
      return [];
    },

    async diagnostics(plan, alert, ctx) {
      const d = plan ?? (await readReplicationLag(ctx, alert.labels.server));
      return { findings: d.findings, replicas: d.replicas, primary: d.primary, runbook_commands: d.commands };
    },
  };
}
