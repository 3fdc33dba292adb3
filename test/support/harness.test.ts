/** Proves the real-server harness: shared servers from global-setup, and own servers that can be killed. */
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { canConnect } from './ports.js';
import { startPgCluster, type PgCluster } from './pg-cluster.js';
import { startRedis, type RedisNode } from './redis-server.js';

async function query<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

async function redisPing(url: string): Promise<string> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  redis.on('error', () => {});
  try {
    await redis.connect();
    return await redis.ping();
  } finally {
    redis.disconnect();
  }
}

describe('shared servers from global-setup', () => {
  it('has a streaming replica that is in recovery', async () => {
    const primaryUrl = inject('pgPrimaryUrl');
    const [replicaUrl] = inject('pgReplicaUrls');
    expect(replicaUrl).toBeDefined();
    expect(inject('pgPrimaryPort')).not.toBe(5432);

    const replication = await query<{ application_name: string; state: string }>(
      primaryUrl,
      'SELECT application_name, state FROM pg_stat_replication',
    );
    expect(replication).toContainEqual({ application_name: 'replica1', state: 'streaming' });

    const [row] = await query<{ in_recovery: boolean }>(replicaUrl!, 'SELECT pg_is_in_recovery() AS in_recovery');
    expect(row?.in_recovery).toBe(true);
    const [primaryRow] = await query<{ in_recovery: boolean }>(primaryUrl, 'SELECT pg_is_in_recovery() AS in_recovery');
    expect(primaryRow?.in_recovery).toBe(false);
  });

  it('has a Redis that answers PING', async () => {
    expect(inject('redisPort')).not.toBe(6379);
    expect(await redisPing(inject('redisUrl'))).toBe('PONG');
  });
});

describe('own servers', () => {
  let cluster: PgCluster | undefined;
  let redis: RedisNode | undefined;
  afterAll(async () => {
    await Promise.allSettled([cluster?.stop(), redis?.stop()]);
  });

  it('kill() takes the primary down; start() brings it back and the replica streams again', async () => {
    cluster = await startPgCluster();
    const { primary, replicas } = cluster;
    const replica = replicas[0]!;
    await query(primary.url(), 'CREATE TABLE t (v int); INSERT INTO t VALUES (1)');

    await primary.kill();
    expect(await canConnect(primary.port)).toBe(false);
    await expect(query(primary.url(), 'SELECT 1')).rejects.toThrow();
    // The replica stays up, read-only, while its primary is gone.
    expect(await query(replica.url(), 'SELECT 1 AS one')).toEqual([{ one: 1 }]);

    await primary.start();
    expect(await query(primary.url(), 'SELECT v FROM t')).toEqual([{ v: 1 }]);
    await expect
      .poll(async () => query<{ state: string }>(primary.url(), "SELECT state FROM pg_stat_replication WHERE application_name = 'replica1'"), {
        timeout: 20_000,
        interval: 100,
      })
      .toEqual([{ state: 'streaming' }]);
  });

  it('Redis kill() and start() on the same port', async () => {
    redis = await startRedis();
    const { port } = redis;
    await redis.kill();
    expect(await canConnect(port)).toBe(false);
    await redis.start();
    expect(redis.port).toBe(port);
    expect(await redisPing(redis.url)).toBe('PONG');
  });
});
