/**
 * Redis INFO against a private Redis that the test stops, kills and starts again (the shared
 * PostgreSQL cluster is only read).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type RedisNode } from '../support/redis-server.js';
import { find, scrape, value, type ScrapeResult } from '../support/scrape.js';
import { getJson, makeConfig, startTestService, type TestService } from '../support/service.js';

const TIMEOUT_MS = 800;

/** Every redis_* series but redis_up. */
const otherRedisSeries = (r: ScrapeResult) => r.metrics.samples.filter((s) => s.name.startsWith('redis_') && s.name !== 'redis_up');

describe('Redis up and down (private Redis)', () => {
  let redis: RedisNode;
  let svc: TestService;

  beforeAll(async () => {
    redis = await startRedis();
    svc = await startTestService(makeConfig({ postgres: { databases: ['postgres'] }, redis: { url: redis.url }, collectors: { timeoutMs: TIMEOUT_MS } }));
  });
  afterAll(async () => {
    await svc?.close();
    await redis?.stop();
  });

  function expectRedisUp(r: ScrapeResult): void {
    expect(value(r.metrics, 'redis_up')).toBe(1);
    expect(value(r.metrics, 'redis_memory_used_bytes')).toBeGreaterThan(100_000);
    expect(value(r.metrics, 'redis_memory_max_bytes')).toBe(0); // no maxmemory configured
    expect(value(r.metrics, 'redis_rejected_connections_total')).toBe(0);
    expect(value(r.metrics, 'redis_connected_clients')).toBeGreaterThanOrEqual(1);
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'redis' })).toBe(1);
  }

  function expectRedisDown(r: ScrapeResult): void {
    expect(r.status).toBe(200);
    expect(r.ms).toBeLessThan(TIMEOUT_MS + 300);
    expect(value(r.metrics, 'redis_up')).toBe(0);
    // No values are claimed for a Redis that did not answer (a 0 for redis_rejected_connections_total
    // would also look like a counter reset, and increase() would fire on recovery). Soft, so the rest
    // of the outage behaviour is still checked.
    expect.soft(otherRedisSeries(r), 'redis_* series other than redis_up while Redis is down').toEqual([]);
    // "Down" is a measurement, not a collector failure.
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'redis' })).toBe(1);
    expect(value(r.metrics, 'pg_up', { role: 'primary' })).toBe(1);
  }

  it('reports INFO values while Redis runs', async () => {
    const r = await scrape(svc.url);
    expectRedisUp(r);
    expect(r.metrics.type.get('redis_up')).toBe('gauge');
    expect(find(r.metrics, 'redis_up')[0]!.labels).toEqual({});
  });

  it('a stopped Redis is redis_up 0 with no other redis_* series, and /health 503', async () => {
    await redis.stop();
    for (let i = 0; i < 2; i++) expectRedisDown(await scrape(svc.url));
    const h = await getJson(`${svc.url}/health`);
    expect(h.status).toBe(503);
    expect(h.body).toEqual({ database: 'healthy', redis: 'unhealthy' });
    // Why is logged by the connection's first failed reconnect.
    await expect
      .poll(() => svc.log.entries().find((e) => e.msg === 'Redis connection error')?.err, { timeout: 5000, interval: 50 })
      .toMatch(/ECONNREFUSED/);
  });

  it('back up: redis_up 1 with memory again, /health 200', async () => {
    await redis.start();
    await expect.poll(async () => value((await scrape(svc.url)).metrics, 'redis_up'), { timeout: 10_000, interval: 100 }).toBe(1);
    expectRedisUp(await scrape(svc.url));
    const h = await getJson(`${svc.url}/health`);
    expect(h.status).toBe(200);
    expect(h.body).toEqual({ database: 'healthy', redis: 'healthy' });
    expect(svc.log.entries().some((e) => e.msg === 'Redis connection restored')).toBe(true);
  });

  it('a killed Redis is redis_up 0 too, and comes back', async () => {
    await redis.kill();
    expectRedisDown(await scrape(svc.url));
    await redis.start();
    await expect.poll(async () => value((await scrape(svc.url)).metrics, 'redis_up'), { timeout: 10_000, interval: 100 }).toBe(1);
    expectRedisUp(await scrape(svc.url));
  });
});
