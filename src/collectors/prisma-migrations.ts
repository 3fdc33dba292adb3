/**
 * _prisma_migrations on the observed primary, per database (runbook scenario 4: "P3009 migrate found failed
 * migrations"). A migration Prisma started but neither finished nor rolled back is what blocks
 * `prisma migrate deploy`. Counted in `public` and in each schema a configured service migrates there;
 * a database without the table (not managed by Prisma) counts 0.
 */
import type { Metrics } from '../metrics.js';
import { SampleSet, type Collector, type ObservedPrimary } from './collector.js';
import type { DatabaseList } from './databases.js';

// One round trip per database that works whether or not a schema has the table: each schema's count runs
// through query_to_xml only when to_regclass found the table there, so a database without Prisma never
// logs "relation does not exist". The schema names are a parameter, quoted by format('%I').
const SQL = `
SELECT coalesce(sum(
         CASE WHEN to_regclass(format('%I._prisma_migrations', s)) IS NULL THEN 0
              ELSE (xpath('/row/n/text()', query_to_xml(
                      format('SELECT count(*) AS n FROM %I._prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL', s),
                      false, true, '')))[1]::text::int
         END), 0)::int AS failed
  FROM unnest($1::text[]) AS s`;

/**
 * The schemas whose `_prisma_migrations` count for a database: `public` (Prisma's default) and every
 * `services[].prisma.schema` configured for that database, so a service on `?schema=orders` raises
 * PrismaMigrationFailed too.
 */
export function prismaSchemasByDatabase(services: readonly { prisma?: { database: string; schema: string } | undefined }[]): (database: string) => string[] {
  const byDb = new Map<string, Set<string>>();
  for (const s of services) {
    if (!s.prisma) continue;
    const set = byDb.get(s.prisma.database) ?? new Set(['public']);
    set.add(s.prisma.schema);
    byDb.set(s.prisma.database, set);
  }
  return (database) => [...(byDb.get(database) ?? ['public'])];
}

export function prismaMigrationsCollector(metrics: Metrics, observedPrimary: ObservedPrimary, databases: DatabaseList, schemasOf: (database: string) => string[] = () => ['public']): Collector {
  const failed = metrics.gauge(
    'prisma_migrations_failed',
    'Rows of _prisma_migrations with finished_at IS NULL AND rolled_back_at IS NULL (in public and the schemas services[].prisma names for the database): failed or interrupted migrations that block `prisma migrate deploy`.',
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
          const [row] = await primary.query<{ failed: number }>(SQL, [schemasOf(d)], d);
          set.statements++;
          set.set(failed, { server: primary.server, datname: d }, row!.failed);
        }),
      );
      for (const r of results) if (r.status === 'rejected') set.fail(r.reason);
      return set;
    },
  };
}
