/**
 * Assembles the collectors the configuration asks for, in one registry. An unknown or duplicate
 * collector name fails here, at start, never at scrape time.
 *
 * "The primary" of every collector that reads one (pg_stat_replication, pg_sizes,
 * prisma_migrations, the database list, the filesystem's server label) is the observed primary of
 * the scrape's topology observation (src/topology.ts), so the scrape right after a promotion reads
 * the promoted server. pg_server starts that observation (registered first, so its collect() is
 * called first) and the others share it.
 */
import type { Config } from './config.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';
import type { PgCluster } from './integrations/postgres.js';
import type { RedisClient } from './integrations/redis.js';
import type { Topology } from './topology.js';
import { CollectorRegistry, cachedCollector } from './collectors/index.js';
import { speculativePrimary, type ObservedPrimary } from './collectors/collector.js';
import { DatabaseList } from './collectors/databases.js';
import { pgServerCollector } from './collectors/pg-server.js';
import { pgStatReplicationCollector } from './collectors/pg-stat-replication.js';
import { pgStatActivityCollector } from './collectors/pg-stat-activity.js';
import { pgStatDatabaseCollector } from './collectors/pg-stat-database.js';
import { pgSizesCollector } from './collectors/pg-sizes.js';
import { prismaMigrationsCollector, prismaSchemasByDatabase } from './collectors/prisma-migrations.js';
import { diskCollector } from './collectors/disk.js';
import { redisCollector } from './collectors/redis.js';
import { serviceHealthCollector } from './collectors/service-health.js';

/** How soon a failed size refresh is tried again (at most sizeRefreshSeconds). */
const SIZE_RETRY_MS = 5000;

export interface Exporter {
  registry: CollectorRegistry;
  databases: DatabaseList;
  pgServer: ReturnType<typeof pgServerCollector>;
  pgStatReplication: ReturnType<typeof pgStatReplicationCollector>;
  redis: ReturnType<typeof redisCollector>;
}

export function createExporter(config: Config, metrics: Metrics, cluster: PgCluster, topology: Topology, redis: RedisClient, logger: Logger): Exporter {
  const registry = new CollectorRegistry(metrics, { timeoutMs: config.collectors.timeoutMs, logger });
  // Joins the observation in flight (pg_server's, started at the same tick of the scrape); outside a
  // scrape (the cached sizes refreshing in the background) a snapshot younger than one collector
  // budget is as good as a new one.
  const observedPrimary: ObservedPrimary = async () => {
    await topology.observe(config.collectors.timeoutMs);
    return topology.primaryServer();
  };
  const databases = new DatabaseList(observedPrimary, config.postgres.databases);
  // Cached values read on the primary belong to it: after a failover they are refreshed at once.
  const primaryScope = async () => (await observedPrimary()).server;
  const pgServer = pgServerCollector(metrics, topology);
  // Sent while the observation runs, to the primary observed before; kept only when the observation
  // confirms it (else read again on the confirmed one): the observation's round trip and this one
  // overlap instead of following each other.
  const pgStatReplication = pgStatReplicationCollector(metrics, speculativePrimary(() => topology.primaryServer(), observedPrimary));
  // The same share of the collector budget as each PostgreSQL probe (src/runtime.ts), so a frozen Redis
  // is redis_up 0 inside the budget whatever redis.commandTimeoutMs says.
  const redisC = redisCollector(metrics, redis, Math.floor(config.collectors.timeoutMs * 0.8));
  registry.register(pgServer);
  registry.register(pgStatReplication);
  registry.register(pgStatActivityCollector(metrics, cluster, databases, config.postgres.longRunningQuerySeconds));
  registry.register(pgStatDatabaseCollector(metrics, cluster, databases));
  const sizeRefreshMs = config.postgres.sizeRefreshSeconds * 1000;
  registry.register(
    cachedCollector(pgSizesCollector(metrics, observedPrimary, databases, config.postgres.tableSizeTopN, config.postgres.sizeRefreshSeconds), {
      refreshMs: sizeRefreshMs,
      // A failed refresh is retried after 5 s (or sizeRefreshSeconds, if shorter): the collector is back
      // to 1 within seconds of PostgreSQL, and a server that is down sees one size query every 5 s.
      retryMs: Math.min(SIZE_RETRY_MS, sizeRefreshMs),
      waitMs: Math.floor(config.collectors.timeoutMs * 0.8),
      scope: primaryScope,
      lastSuccess: metrics.gauge(
        'dbpilot_pg_sizes_last_success_timestamp_seconds',
        'Unix time of the size refresh whose pg_database_size_bytes / pg_table_size_bytes are served; their age is time() minus this. Older than sizeRefreshSeconds while refreshes fail (dbpilot_collector_success{collector="pg_sizes"} 0): the last good sizes stay served meanwhile.',
      ),
    }),
  );
  // _prisma_migrations changes when a deploy runs, and PrismaMigrationFailed waits 10 minutes: one
  // statement per database on every scrape (half of a scrape's SQL on the runbook's eight databases)
  // bought nothing. Cached like the sizes, a failed refresh retried after 5 s.
  const prisma = prismaMigrationsCollector(metrics, observedPrimary, databases, prismaSchemasByDatabase(config.services));
  const prismaRefreshMs = config.postgres.prismaRefreshSeconds * 1000;
  registry.register(
    prismaRefreshMs === 0
      ? prisma
      : cachedCollector(prisma, { refreshMs: prismaRefreshMs, retryMs: Math.min(SIZE_RETRY_MS, prismaRefreshMs), waitMs: Math.floor(config.collectors.timeoutMs * 0.8), scope: primaryScope }),
  );
  if (config.postgres.dataDirectory) registry.register(diskCollector(metrics, observedPrimary, config.postgres.dataDirectory));
  registry.register(redisC);
  // The services of the runbook (the list the failover checks after its restarts), each probed within
  // the same share of the collector budget as a PostgreSQL server.
  if (config.services.length > 0) registry.register(serviceHealthCollector(metrics, config.services, Math.floor(config.collectors.timeoutMs * 0.8)));
  return { registry, databases, pgServer, pgStatReplication, redis: redisC };
}
