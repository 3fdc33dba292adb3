/**
 * pg_server: reachability, observed role and recovery state of every configured server (runbook:
 * "Verify Database Health" — pg_isready, "Check if replica is behind", Scenario 1 step 3
 * `pg_is_in_recovery()`). It reports the scrape's topology observation (src/topology.ts) and
 * sends no query of its own. A server that does not answer within the connect/query timeouts (or the
 * probe's bound) is pg_up 0 — the signal the failover alert waits for — and, since the collector
 * could not read that server, the collector reports failure too (dbpilot_collector_success 0, the
 * server and why in the log and `dbpilot status`), as every collector does that cannot read its
 * source. Its other values (the servers that answered, pg_up 0 for the one that did not) are still
 * exported.
 */
import type { Metrics } from '../metrics.js';
import { scrapeStatement, type PgServer } from '../integrations/postgres.js';
import type { MemberState, Topology } from '../topology.js';
import { SampleSet, type Collector } from './collector.js';

/** What one probe of one server found, before any role is decided (src/topology.ts decides). */
export interface ServerProbe {
  server: string;
  up: boolean;
  inRecovery: boolean | null;
  /** On a primary pg_current_wal_lsn(), on a replica pg_last_wal_receive_lsn(), as text (`0/3000148`). */
  lsn: string | null;
  /** On a replica pg_last_wal_replay_lsn(); null on a primary. */
  replayLsn: string | null;
  /** pg_stat_wal_receiver.status (streaming, waiting, …), null when there is no WAL receiver. */
  receiverStatus: string | null;
  /** sender_host:sender_port of the WAL receiver, null when there is none. */
  upstream: string | null;
  lagBytes: number | null;
  lagSeconds: number | null;
  error: string | null;
}

/**
 * One round trip per server: recovery state, WAL positions, the WAL receiver, and the lag.
 *
 * Replica delay that does not grow on an idle primary: when everything received has been replayed
 * the replica is not behind, however old the last replayed transaction is. Only when WAL is waiting
 * to be replayed does the age of the last replayed transaction measure the delay.
 *
 * pg_current_wal_lsn() raises an error during recovery, so it is only reached on a server that is
 * out of recovery (CASE evaluates the branch it takes; a server never goes back into recovery while
 * it runs). pg_stat_wal_receiver has no row when no WAL receiver runs (a primary, or a standby whose
 * receiver has stopped): the LEFT JOIN keeps the row and leaves its columns NULL. Its status and
 * sender are shown only to pg_read_all_stats (part of pg_monitor, which dbpilot needs anyway).
 */
export const PROBE_SQL = scrapeStatement(
  'probe',
  `
SELECT pg_is_in_recovery() AS in_recovery,
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END)::text AS lsn,
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() END)::text AS replay_lsn,
       w.status AS receiver_status,
       w.sender_host,
       w.sender_port,
       CASE WHEN pg_is_in_recovery() AND pg_last_wal_receive_lsn() IS NOT NULL
            THEN GREATEST(0, pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()))::float8 END AS lag_bytes,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            -- After a standby restart the receive position restarts at a segment start, behind replay: not lag.
            WHEN pg_last_wal_receive_lsn() IS NOT NULL
                 AND pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0::float8
            -- Nothing replayed since the standby started: the delay is unknown, so no sample rather than a false 0.
            WHEN pg_last_xact_replay_timestamp() IS NULL THEN NULL
            ELSE GREATEST(0, EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()))::float8 END AS lag_seconds
FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS w ON true`,
);

interface ProbeRow {
  in_recovery: boolean | null;
  lsn: string | null;
  replay_lsn: string | null;
  receiver_status: string | null;
  sender_host: string | null;
  sender_port: number | null;
  lag_bytes: number | null;
  lag_seconds: number | null;
}

/** host:port as the `server` label spells it: an IPv6 address in brackets. */
export function upstreamLabel(host: string | null, port: number | null): string | null {
  if (host === null || host === '') return null;
  const h = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  return port === null ? h : `${h}:${port}`;
}

/**
 * Probes one server with one statement. `budgetMs` bounds the whole probe (connect + query): a
 * server that has not answered by then is down, so one hung server can never make the collector
 * time out and take the other servers' pg_up series with it, nor delay their observation.
 */
export async function probeServer(s: PgServer, budgetMs?: number): Promise<ServerProbe> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const query = s.query<ProbeRow & Record<string, unknown>>(PROBE_SQL);
    const [row] = budgetMs === undefined
      ? await query
      : await Promise.race([
          query,
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error(`no answer within ${budgetMs} ms`)), budgetMs);
          }),
        ]);
    return {
      server: s.server,
      up: true,
      inRecovery: row!.in_recovery,
      lsn: row!.lsn,
      replayLsn: row!.replay_lsn,
      receiverStatus: row!.receiver_status,
      upstream: upstreamLabel(row!.sender_host, row!.sender_port),
      lagBytes: row!.lag_bytes,
      lagSeconds: row!.lag_seconds,
      error: null,
    };
  } catch (err) {
    return {
      server: s.server,
      up: false,
      inRecovery: null,
      lsn: null,
      replayLsn: null,
      receiverStatus: null,
      upstream: null,
      lagBytes: null,
      lagSeconds: null,
      error: (err as Error).message,
    };
  } finally {
    clearTimeout(timer);
  }
}

export function pgServerCollector(metrics: Metrics, topology: Topology): Collector & { lastProbes(): readonly MemberState[] } {
  const up = metrics.gauge(
    'pg_up',
    'Whether the PostgreSQL server answered a query within the connect and query timeouts (1) or not (0). role is observed, not configured: primary (out of recovery), replica (in recovery), fenced (fenced by a completed failover); a server that does not answer keeps the role it was last seen with.',
    ['server', 'role'],
  );
  const isReplica = metrics.gauge('pg_replication_is_replica', 'Whether the server is in recovery, i.e. a standby (1), or not (0).', ['server']);
  const lagSeconds = metrics.gauge(
    'pg_replication_lag_seconds',
    'On a replica: seconds since the last replayed transaction while received WAL waits to be replayed; 0 when everything received is replayed (an idle primary is not lag).',
    ['server'],
  );
  const lagBytes = metrics.gauge('pg_replication_lag_bytes', 'On a replica: bytes of WAL received but not yet replayed.', ['server']);
  const streaming = metrics.gauge(
    'pg_replication_wal_receiver_streaming',
    'On a replica: whether its WAL receiver is streaming from its upstream (1) or not (0: no receiver, or starting, waiting, restarting, stopping). Absent on a primary.',
    ['server'],
  );
  const primaries = metrics.gauge(
    'pg_topology_primaries',
    'Configured PostgreSQL servers that answered and are out of recovery (pg_is_in_recovery() = false), i.e. accept writes. 1 in a healthy cluster.',
  );
  const splitBrain = metrics.gauge('pg_topology_split_brain', 'Whether more than one configured PostgreSQL server is out of recovery at once (1: split brain) or not (0).');
  let last: readonly MemberState[] = [];
  return {
    name: 'pg_server',
    gauges: [up, isReplica, lagSeconds, lagBytes, streaming, primaries, splitBrain],
    lastProbes: () => last,
    async collect() {
      const set = new SampleSet();
      // A fresh observation for every scrape; the other collectors of the scrape share it.
      const snapshot = await topology.observe(0);
      set.statements = snapshot.members.length;
      for (const m of snapshot.members) {
        set.set(up, { server: m.server, role: m.role }, m.up ? 1 : 0);
        if (!m.up) {
          const why = m.error ?? 'no answer';
          set.fail(why.startsWith(`postgres ${m.server}`) ? why : `postgres ${m.server}: ${why}`);
        }
        if (!m.up || m.inRecovery === null) continue;
        set.set(isReplica, { server: m.server }, m.inRecovery ? 1 : 0);
        if (m.inRecovery) {
          if (m.lagSeconds !== null) set.set(lagSeconds, { server: m.server }, m.lagSeconds);
          if (m.lagBytes !== null) set.set(lagBytes, { server: m.server }, m.lagBytes);
          set.set(streaming, { server: m.server }, m.receiverStatus === 'streaming' ? 1 : 0);
        }
      }
      set.set(primaries, {}, snapshot.primaries.length);
      set.set(splitBrain, {}, snapshot.splitBrain ? 1 : 0);
      last = snapshot.members;
      return set;
    },
  };
}
