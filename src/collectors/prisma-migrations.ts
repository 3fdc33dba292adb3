/**
 * _prisma_migrations on the observed primary, per database (runbook scenario 4: "P3009 migrate found failed
 * migrations"). A migration Prisma started but neither finished nor rolled back is what blocks
 * `prisma migrate deploy`. A database without the table (not managed by Prisma) counts 0.
 */
import type { Metrics } from '../metrics.js';
import { SampleSet, type Collector, type ObservedPrimary } from './collector.js';
import type { DatabaseList } from './databases.js';

// One round trip that works whether or not the table exists: the count runs through query_to_xml only
// when to_regclass found the table, so a database without Prisma never logs "relation does not exist".
const SQL = `
SELECT CASE WHEN to_regclass('public._prisma_migrations') IS NULL THEN 0
            ELSE (xpath('/row/n/text()', query_to_xml(
                    'SELECT count(*) AS n FROM public._prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL',
                    false, true, '')))[1]::text::int
       END AS failed`;

export function prismaMigrationsCollector(metrics: Metrics, observedPrimary: ObservedPrimary, databases: DatabaseList): Collector {
  const failed = metrics.gauge(
    'prisma_migrations_failed',
    'Rows of _prisma_migrations with finished_at IS NULL AND rolled_back_at IS NULL: failed or interrupted migrations that block `prisma migrate deploy`.',
    ['server', 'datname'],
  );
  return {
    name: 'prisma_migrations',
    gauges: [failed],
    async collect() {
      const set = new SampleSet();
      const primary = await observedPrimary();
      const dbs = await databases.get();
      const results = await Promise.allSettled(
        dbs.map(async (d) => {
          const [row] = await primary.query<{ failed: number }>(SQL, [], d);
          set.statements++;
          set.set(failed, { server: primary.server, datname: d }, row!.failed);
        }),
      );
      for (const r of results) if (r.status === 'rejected') set.fail(r.reason);
      return set;
    },
  };
}
