/**
 * pg_stat_database.checksum_failures on every server (runbook escalation: "Data corruption
 * suspected → Engineering Manager + DBA immediately"). NULL when data checksums are off: then no
 * series is exported rather than a reassuring 0 — and, so that this silence is not mistaken for
 * "no corruption", whether checksums are on is exported per server as pg_settings_data_checksums
 * (`SHOW data_checksums`; postgres_exporter's name and labels for the same setting), in the same
 * statement.
 */
import type { Metrics } from '../metrics.js';
import { scrapeStatement, type PgCluster } from '../integrations/postgres.js';
import { SampleSet, type Collector } from './collector.js';
import type { DatabaseList } from './databases.js';

// One row per database with a count, or one row of NULLs when there is none (checksums off): the
// setting comes along either way.
const SQL = scrapeStatement(
  'pg_stat_database',
  `SELECT current_setting('data_checksums') AS data_checksums, d.datname, d.checksum_failures::float8 AS checksum_failures
FROM (SELECT 1) AS one
LEFT JOIN pg_stat_database AS d ON d.datname IS NOT NULL AND d.checksum_failures IS NOT NULL`,
);

export function pgStatDatabaseCollector(metrics: Metrics, cluster: PgCluster, databases: DatabaseList): Collector {
  const failures = metrics.gauge(
    'pg_stat_database_checksum_failures',
    'Data page checksum failures detected in the database since statistics were reset (a cumulative count; any increase means corruption).',
    ['server', 'datname'],
  );
  const checksums = metrics.gauge(
    'pg_settings_data_checksums',
    'Whether data page checksums are on for the server (SHOW data_checksums: 1 on, 0 off). Off means pg_stat_database_checksum_failures is absent and corruption goes undetected (enable with initdb --data-checksums or pg_checksums --enable).',
    ['server'],
  );
  return {
    name: 'pg_stat_database',
    gauges: [failures, checksums],
    async collect() {
      const set = new SampleSet();
      // Each server into a set of its own, merged in configuration order (see pg_stat_activity).
      const perServer = cluster.all.map(() => new SampleSet());
      const results = await Promise.allSettled(
        cluster.all.map(async (s, i) => {
          const own = perServer[i]!;
          const rows = await s.query<{ data_checksums: string; datname: string | null; checksum_failures: number | null }>(SQL);
          own.statements++;
          if (rows[0]) own.set(checksums, { server: s.server }, rows[0].data_checksums === 'on' ? 1 : 0);
          const wanted = databases.isConfigured ? new Set(await databases.get()) : null;
          for (const r of rows) {
            if (r.datname === null || r.checksum_failures === null) continue;
            if (!wanted || wanted.has(r.datname)) own.set(failures, { server: s.server, datname: r.datname }, r.checksum_failures);
          }
        }),
      );
      results.forEach((r, i) => {
        set.merge(perServer[i]!);
        if (r.status === 'rejected') set.fail(r.reason);
      });
      return set;
    },
  };
}
