/**
 * pg_stat_replication on the observed primary (runbook: "Check replication lag"): per standby, the bytes
 * between the primary's current WAL position and what the standby replayed, and the write / flush /
 * replay lag times. Same names and labels as postgres_exporter, plus sync_state, which it lacks.
 */
import { scrapeStatement } from '../integrations/postgres.js';
import type { Metrics } from '../metrics.js';
import { SampleSet, type Collector, type OnPrimary } from './collector.js';

// NULL lag times mean the standby has caught up and nothing new was sent: report 0, not absence.
const SQL = scrapeStatement(
  'pg_stat_replication',
  `
SELECT coalesce(application_name, '') AS application_name,
       coalesce(host(client_addr), 'local') AS client_addr,
       coalesce(state, '') AS state,
       coalesce(sync_state, '') AS sync_state,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END,
                       replay_lsn)::float8 AS lsn_diff,
       coalesce(EXTRACT(EPOCH FROM write_lag), 0)::float8 AS write_lag,
       coalesce(EXTRACT(EPOCH FROM flush_lag), 0)::float8 AS flush_lag,
       coalesce(EXTRACT(EPOCH FROM replay_lag), 0)::float8 AS replay_lag
FROM pg_stat_replication`,
);

export interface StandbyRow {
  application_name: string;
  client_addr: string;
  state: string;
  sync_state: string;
  lsn_diff: number | null;
  write_lag: number;
  flush_lag: number;
  replay_lag: number;
}

/**
 * `onPrimary` sends the statement while the scrape's topology observation runs, to the primary
 * observed before, and keeps the rows only if the observation confirms that server (else it reads
 * the confirmed one): see speculativePrimary.
 */
export function pgStatReplicationCollector(metrics: Metrics, onPrimary: OnPrimary): Collector & { lastRows(): StandbyRow[] } {
  const labels = ['server', 'application_name', 'client_addr', 'state', 'sync_state'] as const;
  const diff = metrics.gauge('pg_stat_replication_pg_wal_lsn_diff', 'Bytes between the primary\'s current WAL position and the standby\'s replay position.', labels);
  const write = metrics.gauge('pg_stat_replication_write_lag_seconds', 'Time until the standby wrote recent WAL (0 when caught up).', labels);
  const flush = metrics.gauge('pg_stat_replication_flush_lag_seconds', 'Time until the standby flushed recent WAL (0 when caught up).', labels);
  const replay = metrics.gauge('pg_stat_replication_replay_lag_seconds', 'Time until the standby replayed recent WAL (0 when caught up).', labels);
  let last: StandbyRow[] = [];
  return {
    name: 'pg_stat_replication',
    gauges: [diff, write, flush, replay],
    lastRows: () => last,
    async collect() {
      const set = new SampleSet();
      const read = await onPrimary((s) => s.query<StandbyRow & Record<string, unknown>>(SQL));
      const server = read.primary.server;
      const rows = read.value;
      set.statements = read.statements;
      for (const r of rows) {
        const l = { server, application_name: r.application_name, client_addr: r.client_addr, state: r.state, sync_state: r.sync_state };
        if (r.lsn_diff !== null) set.set(diff, l, r.lsn_diff);
        set.set(write, l, r.write_lag);
        set.set(flush, l, r.flush_lag);
        set.set(replay, l, r.replay_lag);
      }
      last = rows;
      return set;
    },
  };
}
