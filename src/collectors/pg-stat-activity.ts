/**
 * pg_stat_activity on every server (runbook scenario 2, step 1 "Identify long-running queries"):
 * sessions per database and state, the oldest open transaction, and — with the runbook's own
 * predicate, non-idle and started more than `longRunningQuerySeconds` ago — how many queries are
 * long-running and how old the oldest is. Only client backends count: a walsender is "active" for
 * as long as the standby is connected and is not a slow query.
 */
import type { Metrics } from '../metrics.js';
import { scrapeStatement, type PgCluster, type PgServer } from '../integrations/postgres.js';
import { SampleSet, type Collector } from './collector.js';
import type { DatabaseList } from './databases.js';

export const STATES = ['active', 'idle', 'idle in transaction', 'idle in transaction (aborted)', 'fastpath function call', 'disabled'] as const;

const SQL = scrapeStatement(
  'pg_stat_activity',
  `
SELECT datname,
       coalesce(state, 'unknown') AS state,
       count(*)::int AS count,
       coalesce(max(EXTRACT(EPOCH FROM now() - xact_start)), 0)::float8 AS max_tx,
       count(*) FILTER (WHERE state <> 'idle' AND query_start < now() - make_interval(secs => $1) AND application_name <> 'dbpilot')::int AS long_running,
       coalesce(max(EXTRACT(EPOCH FROM now() - query_start))
                  FILTER (WHERE state <> 'idle' AND query_start < now() - make_interval(secs => $1) AND application_name <> 'dbpilot'), 0)::float8 AS oldest
FROM pg_stat_activity
WHERE datname IS NOT NULL AND backend_type = 'client backend' AND pid <> pg_backend_pid()
GROUP BY datname, state`,
);

interface Row {
  datname: string;
  state: string;
  count: number;
  max_tx: number;
  long_running: number;
  oldest: number;
}

export function pgStatActivityCollector(metrics: Metrics, cluster: PgCluster, databases: DatabaseList, longRunningSeconds: number): Collector {
  const count = metrics.gauge('pg_stat_activity_count', 'Client sessions per database and state.', ['server', 'datname', 'state']);
  const maxTx = metrics.gauge('pg_stat_activity_max_tx_duration', 'Age in seconds of the oldest open transaction per database and state.', ['server', 'datname', 'state']);
  const longRunning = metrics.gauge(
    'pg_long_running_queries',
    `Queries not idle and started more than ${longRunningSeconds} s ago (runbook scenario 2, step 1).`,
    ['server', 'datname'],
  );
  const oldest = metrics.gauge('pg_long_running_queries_oldest_seconds', 'Age in seconds of the oldest long-running query (0 when none).', ['server', 'datname']);

  async function one(s: PgServer, dbs: string[], set: SampleSet): Promise<void> {
    const rows = await s.query<Row & Record<string, unknown>>(SQL, [longRunningSeconds]);
    set.statements++;
    const wanted = new Set(dbs);
    const lr = new Map<string, { n: number; oldest: number }>();
    const seen = new Set<string>();
    for (const r of rows) {
      if (databases.isConfigured && !wanted.has(r.datname)) continue;
      set.set(count, { server: s.server, datname: r.datname, state: r.state }, r.count);
      set.set(maxTx, { server: s.server, datname: r.datname, state: r.state }, r.max_tx);
      seen.add(`${r.datname}\0${r.state}`);
      const cur = lr.get(r.datname) ?? { n: 0, oldest: 0 };
      lr.set(r.datname, { n: cur.n + r.long_running, oldest: Math.max(cur.oldest, r.oldest) });
    }
    // Zero series for quiet databases keep dashboards and `> 0` rules from seeing gaps.
    for (const d of dbs) {
      for (const st of STATES) {
        if (!seen.has(`${d}\0${st}`)) {
          set.set(count, { server: s.server, datname: d, state: st }, 0);
          set.set(maxTx, { server: s.server, datname: d, state: st }, 0);
        }
      }
      if (!lr.has(d)) lr.set(d, { n: 0, oldest: 0 });
    }
    for (const [d, v] of lr) {
      set.set(longRunning, { server: s.server, datname: d }, v.n);
      set.set(oldest, { server: s.server, datname: d }, v.oldest);
    }
  }

  return {
    name: 'pg_stat_activity',
    gauges: [count, maxTx, longRunning, oldest],
    async collect() {
      const set = new SampleSet();
      let dbs: string[] = [];
      try {
        dbs = await databases.get();
      } catch (err) {
        set.fail(err);
      }
      // Each server into a set of its own, merged in configuration order: the series come in the same
      // order every scrape, whichever server answers first (CollectorRegistry then only rewrites values).
      const perServer = cluster.all.map(() => new SampleSet());
      const results = await Promise.allSettled(cluster.all.map((s, i) => one(s, dbs, perServer[i]!)));
      results.forEach((r, i) => {
        set.merge(perServer[i]!);
        if (r.status === 'rejected') set.fail(r.reason);
      });
      return set;
    },
  };
}
