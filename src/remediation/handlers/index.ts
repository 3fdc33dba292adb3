/**
 * The handler registry: every runbook handler this build has, with the options it owns. The
 * configuration schema's `handlers:` block is built from this list, so adding a handler touches its
 * own file and this one.
 */
import { z } from 'zod';
import { slowQueriesHandler, slowQueriesOptions } from './slow-queries.js';
import { primaryFailoverHandler, primaryFailoverOptions } from './primary-failover.js';
import { rebuildReplicaHandler, rebuildReplicaOptions } from './rebuild-replica.js';
import { prismaMigrationHandler, prismaMigrationOptions } from './prisma-migration.js';
import { replicationLagHandler, replicationLagOptions } from './replication-lag.js';
import { dataCorruptionHandler, dataCorruptionOptions } from './data-corruption.js';
import { redisFailureHandler, redisFailureOptions, redisFlushallHandler, redisFlushallOptions } from './redis-failure.js';
import { diskFullHandler, diskFullOptions, vacuumFullHandler, vacuumFullOptions } from './disk-full.js';
import type { Handler } from '../handler.js';

export const handlersSchema = z.strictObject({
  'primary-failover': primaryFailoverOptions.prefault({}),
  'rebuild-replica': rebuildReplicaOptions.prefault({}),
  'slow-queries': slowQueriesOptions.prefault({}),
  'disk-full': diskFullOptions.prefault({}),
  'vacuum-full': vacuumFullOptions.prefault({}),
  'prisma-migration': prismaMigrationOptions.prefault({}),
  'redis-failure': redisFailureOptions.prefault({}),
  'redis-flushall': redisFlushallOptions.prefault({}),
  'replication-lag': replicationLagOptions.prefault({}),
  'data-corruption': dataCorruptionOptions.prefault({}),
});

/** The runbook's top-level `failover:` block belongs to the primary-failover handler. */
export { failoverSettings } from './primary-failover.js';
/** services[].prisma and its checks across fields belong to the prisma-migration handler. */
export { checkPrismaServices, prismaServiceSettings } from './prisma-migration.js';

/** A fresh instance of every handler of this build. */
export function builtHandlers(): Handler[] {
  return [
    slowQueriesHandler() as Handler,
    primaryFailoverHandler() as Handler,
    rebuildReplicaHandler() as Handler,
    prismaMigrationHandler() as Handler,
    diskFullHandler() as Handler,
    vacuumFullHandler() as Handler,
    replicationLagHandler() as Handler,
    dataCorruptionHandler() as Handler,
    redisFailureHandler() as Handler,
    redisFlushallHandler() as Handler,
  ];
}
