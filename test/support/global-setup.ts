/**
 * vitest globalSetup: one shared PostgreSQL cluster (primary + 1 streaming replica) and one Redis for
 * the non-destructive tests. Tests read the addresses with `inject('pgPrimaryUrl')` etc.
 *
 * Tests that stop, kill or promote servers must start their own with startPgCluster() / startRedis()
 * and never touch these shared ones (nor the machine's PostgreSQL on 5432 / Redis on 6379).
 */
import type { TestProject } from 'vitest/node';
import { startPgCluster, type PgCluster } from './pg-cluster.js';
import { startRedis, type RedisNode } from './redis-server.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** postgresql://postgres@127.0.0.1:PORT/postgres */
    pgPrimaryUrl: string;
    pgReplicaUrls: string[];
    pgPrimaryPort: number;
    pgReplicaPorts: number[];
    /** redis://127.0.0.1:PORT */
    redisUrl: string;
    redisPort: number;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started = Date.now();
  // Start both at once; if one fails, still stop the other before giving up.
  const [pgResult, redisResult] = await Promise.allSettled([startPgCluster({ replicas: 1 }), startRedis()]);
  const cluster: PgCluster | undefined = pgResult.status === 'fulfilled' ? pgResult.value : undefined;
  const redis: RedisNode | undefined = redisResult.status === 'fulfilled' ? redisResult.value : undefined;
  const teardown = async (): Promise<void> => {
    await Promise.allSettled([cluster?.stop(), redis?.stop()]);
  };
  if (cluster === undefined || redis === undefined) {
    await teardown();
    throw pgResult.status === 'rejected' ? pgResult.reason : redisResult.status === 'rejected' ? redisResult.reason : new Error('unreachable');
  }

  project.provide('pgPrimaryUrl', cluster.primary.url());
  project.provide('pgReplicaUrls', cluster.replicas.map((r) => r.url()));
  project.provide('pgPrimaryPort', cluster.primary.port);
  project.provide('pgReplicaPorts', cluster.replicas.map((r) => r.port));
  project.provide('redisUrl', redis.url);
  project.provide('redisPort', redis.port);
  if (process.env.DBPILOT_TEST_VERBOSE) {
    console.log(`[global-setup] pg primary :${cluster.primary.port}, replica :${cluster.replicas[0]?.port}, redis :${redis.port} (${Date.now() - started} ms)`);
  }
  return teardown;
}
