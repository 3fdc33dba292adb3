/**
 * pg_server: reachability and recovery state of every configured server (runbook: "Verify Database
 * Health" — pg_isready, "Check if replica is behind"). It never fails as a whole: a server that
 * does not answer within the connect/query timeouts is pg_up 0, which is the signal the failover
 * alert waits for.
 */
import type { Metrics } from '../metrics.js';
import type { PgCluster, PgServer } from '../integrations/postgres.js';
import { SampleSet, type Collector } from './collector.js';

export interface ServerProbe {
  server: string;
  role: 'primary' | 'replica';
  up: boolean;
  inRecovery: boolean | null;
  lagBytes: number | null;
  lagSeconds: number | null;
  error: string | null;
}

/**
 * Replica delay that does not grow on an idle primary: when everything received has been replayed
 * the replica is not behind, however old the last replayed transaction is. Only when WAL is waiting
 * to be replayed does the age of the last replayed transaction measure the delay.
 */
export const PROBE_SQL = `
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN pg_is_in_recovery() AND pg_last_wal_receive_lsn() IS NOT NULL
            THEN GREATEST(0, pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()))::float8 END AS lag_bytes,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            -- After a standby restart the receive position restarts at a segment start, behind replay: not lag.
            WHEN pg_last_wal_receive_lsn() IS NOT NULL
                 AND pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0::float8
            -- Nothing replayed since the standby started: the delay is unknown, so no sample rather than a false 0.
            WHEN pg_last_xact_replay_timestamp() IS NULL THEN NULL
            ELSE GREATEST(0, EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()))::float8 END AS lag_seconds`;

/**
 * Probes one server. `budgetMs` bounds the whole probe (connect + query): a server that has not
 * answered by then is down, so one hung server can never make the collector time out and take the
 * other servers' pg_up series with it.
 */
export async function probeServer(s: PgServer, budgetMs?: number): Promise<ServerProbe> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const query = s.query<{ in_recovery: boolean; lag_bytes: number | null; lag_seconds: number | null }>(PROBE_SQL);
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
      role: s.role,
      up: true,
      inRecovery: row!.in_recovery,
      lagBytes: row!.lag_bytes,
      lagSeconds: row!.lag_seconds,
      error: null,
    };
  } catch (err) {
    return { server: s.server, role: s.role, up: false, inRecovery: null, lagBytes: null, lagSeconds: null, error: (err as Error).message };
  } finally {
    clearTimeout(timer);
  }
}

export function pgServerCollector(metrics: Metrics, cluster: PgCluster, budgetMs: number): Collector & { lastProbes(): ServerProbe[] } {
  const up = metrics.gauge('pg_up', 'Whether the PostgreSQL server answered a query within the connect and query timeouts (1) or not (0).', ['server', 'role']);
  const isReplica = metrics.gauge('pg_replication_is_replica', 'Whether the server is in recovery, i.e. a standby (1), or not (0).', ['server']);
  const lagSeconds = metrics.gauge(
    'pg_replication_lag_seconds',
    'On a replica: seconds since the last replayed transaction while received WAL waits to be replayed; 0 when everything received is replayed (an idle primary is not lag).',
    ['server'],
  );
  const lagBytes = metrics.gauge('pg_replication_lag_bytes', 'On a replica: bytes of WAL received but not yet replayed.', ['server']);
  let last: ServerProbe[] = [];
  return {
    name: 'pg_server',
    gauges: [up, isReplica, lagSeconds, lagBytes],
    lastProbes: () => last,
    async collect() {
      const set = new SampleSet();
      const probes = await Promise.all(cluster.all.map((s) => probeServer(s, budgetMs)));
      set.statements = probes.length;
      for (const p of probes) {
        set.set(up, { server: p.server, role: p.role }, p.up ? 1 : 0);
        if (!p.up) continue;
        set.set(isReplica, { server: p.server }, p.inRecovery ? 1 : 0);
        if (p.inRecovery) {
          if (p.lagSeconds !== null) set.set(lagSeconds, { server: p.server }, p.lagSeconds);
          if (p.lagBytes !== null) set.set(lagBytes, { server: p.server }, p.lagBytes);
        }
      }
      last = probes;
      return set;
    },
  };
}
