/**
 * pg_stat_database.checksum_failures on every server (runbook escalation: "Data corruption
 * suspected → Engineering Manager + DBA immediately"). NULL when data checksums are off: then no
 * series is exported rather than a reassuring 0.
 */
import type { Metrics } from '../metrics.js';
import type { PgCluster } from '../integrations/postgres.js';
import { SampleSet, type Collector } from './collector.js';
import type { DatabaseList } from './databases.js';

const SQL = `SELECT datname, checksum_failures::float8 AS checksum_failures
FROM pg_stat_database WHERE datname IS NOT NULL AND checksum_failures IS NOT NULL`;

export function pgStatDatabaseCollector(metrics: Metrics, cluster: PgCluster, databases: DatabaseList): Collector {
  const failures = metrics.gauge(
    'pg_stat_database_checksum_failures',
    'Data page checksum failures detected in the database since statistics were reset (a cumulative count; any increase means corruption).',
    ['server', 'datname'],
  );
  return {
    name: 'pg_stat_database',
    gauges: [failures],
    async collect() {
      const set = new SampleSet();
      const results = await Promise.allSettled(
        cluster.all.map(async (s) => {
          const rows = await s.query<{ datname: string; checksum_failures: number }>(SQL);
          set.statements++;
          const wanted = databases.isConfigured ? new Set(await databases.get()) : null;
          for (const r of rows) if (!wanted || wanted.has(r.datname)) set.set(failures, { server: s.server, datname: r.datname }, r.checksum_failures);
        }),
      );
      for (const r of results) if (r.status === 'rejected') set.fail(r.reason);
      return set;
    },
  };
}
