/**
 * Database and table sizes on the observed primary (runbook scenario 3, steps 2 and 3). These are the
 * expensive queries — pg_database_size walks every file of the database — so the registry serves
 * them from cache and refreshes them at most every `sizeRefreshSeconds`; a failed refresh is retried
 * after a few seconds while the last good sizes stay served (see cachedCollector).
 */
import type { Metrics } from '../metrics.js';
import { SampleSet, type Collector, type ObservedPrimary } from './collector.js';
import type { DatabaseList } from './databases.js';

const DB_SQL = `SELECT datname, pg_database_size(datname)::float8 AS bytes FROM pg_database WHERE datname = ANY($1::text[])`;

// Total relation size (heap + indexes + TOAST), like the runbook's pg_total_relation_size; every schema
// but the system ones, so a service that keeps its tables outside `public` is still seen.
const TABLE_SQL = `
SELECT n.nspname AS schemaname, c.relname, pg_total_relation_size(c.oid)::float8 AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 3 DESC
LIMIT $1`;

export function pgSizesCollector(metrics: Metrics, observedPrimary: ObservedPrimary, databases: DatabaseList, topN: number, refreshSeconds: number): Collector {
  const note = `Refreshed at most every ${refreshSeconds} s and served from cache in between; after a failed refresh the last good values stay served (their time: dbpilot_pg_sizes_last_success_timestamp_seconds) and the refresh is retried within seconds.`;
  const dbSize = metrics.gauge('pg_database_size_bytes', `Disk space used by the database. ${note}`, ['server', 'datname']);
  const tableSize = metrics.gauge(
    'pg_table_size_bytes',
    `Total size (heap, indexes, TOAST) of the ${topN} largest tables per database. ${note}`,
    ['server', 'datname', 'schemaname', 'relname'],
  );
  return {
    name: 'pg_sizes',
    gauges: [dbSize, tableSize],
    async collect() {
      const set = new SampleSet();
      const primary = await observedPrimary();
      const dbs = await databases.get();
      const rows = await primary.query<{ datname: string; bytes: number }>(DB_SQL, [dbs]);
      set.statements++;
      for (const r of rows) set.set(dbSize, { server: primary.server, datname: r.datname }, r.bytes);
      const results = await Promise.allSettled(
        dbs.map(async (d) => {
          const tables = await primary.query<{ schemaname: string; relname: string; bytes: number }>(TABLE_SQL, [topN], d);
          set.statements++;
          for (const t of tables) set.set(tableSize, { server: primary.server, datname: d, schemaname: t.schemaname, relname: t.relname }, t.bytes);
        }),
      );
      for (const r of results) if (r.status === 'rejected') set.fail(r.reason);
      return set;
    },
  };
}
