/**
 * Assembles the collectors the configuration asks for, in one registry. An unknown or duplicate
 * collector name fails here, at start, never at scrape time.
 */
import type { Config } from './config.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';
import type { PgCluster } from './integrations/postgres.js';
import type { RedisClient } from './integrations/redis.js';
import { CollectorRegistry, cachedCollector } from './collectors/index.js';
import { DatabaseList } from './collectors/databases.js';
import { pgServerCollector } from './collectors/pg-server.js';
import { pgStatReplicationCollector } from './collectors/pg-stat-replication.js';
import { pgStatActivityCollector } from './collectors/pg-stat-activity.js';
import { pgStatDatabaseCollector } from './collectors/pg-stat-database.js';
import { pgSizesCollector } from './collectors/pg-sizes.js';
import { prismaMigrationsCollector } from './collectors/prisma-migrations.js';
import { diskCollector } from './collectors/disk.js';
import { redisCollector } from './collectors/redis.js';

export interface Exporter {
  registry: CollectorRegistry;
  databases: DatabaseList;
  pgServer: ReturnType<typeof pgServerCollector>;
  pgStatReplication: ReturnType<typeof pgStatReplicationCollector>;
  redis: ReturnType<typeof redisCollector>;
}

export function createExporter(config: Config, metrics: Metrics, cluster: PgCluster, redis: RedisClient, logger: Logger): Exporter {
  const registry = new CollectorRegistry(metrics, { timeoutMs: config.collectors.timeoutMs, logger });
  const databases = new DatabaseList(cluster.primary, config.postgres.databases);
  // Inside the collector budget, so pg_up 0 is reported rather than the whole collector timing out.
  const pgServer = pgServerCollector(metrics, cluster, Math.floor(config.collectors.timeoutMs * 0.8));
  const pgStatReplication = pgStatReplicationCollector(metrics, cluster);
  const redisC = redisCollector(metrics, redis);
  registry.register(pgServer);
  registry.register(pgStatReplication);
  registry.register(pgStatActivityCollector(metrics, cluster, databases, config.postgres.longRunningQuerySeconds));
  registry.register(pgStatDatabaseCollector(metrics, cluster, databases));
  registry.register(
    cachedCollector(
      pgSizesCollector(metrics, cluster, databases, config.postgres.tableSizeTopN, config.postgres.sizeRefreshSeconds),
      config.postgres.sizeRefreshSeconds * 1000,
    ),
  );
  registry.register(prismaMigrationsCollector(metrics, cluster, databases));
  if (config.postgres.dataDirectory) registry.register(diskCollector(metrics, cluster.primary.server, config.postgres.dataDirectory));
  registry.register(redisC);
  return { registry, databases, pgServer, pgStatReplication, redis: redisC };
}
