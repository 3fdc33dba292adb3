/**
 * Redis INFO against a private Redis that the test stops, kills and starts again (the shared
 * PostgreSQL cluster is only read).
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
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
  // Every test starts from a running Redis that dbpilot sees up, whatever the test before it did.
  beforeEach(async () => {
    await redis.start();
    await expect.poll(async () => value((await scrape(svc.url)).metrics, 'redis_up'), { timeout: 10_000, interval: 100 }).toBe(1);
  });

  /** Log entries written since `mark` (a count of lines). */
  const logSince = (mark: number) => svc.log.entries().slice(mark);

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
    expect(value(r.metrics, 'redis_up')).toBe(0);
    // No values are claimed for a Redis that did not answer (a 0 for redis_rejected_connections_total
    // would also look like a counter reset, and increase() would fire on recovery). Soft, so the rest
    // of the outage behaviour is still checked.
    expect.soft(otherRedisSeries(r), 'redis_* series other than redis_up while Redis is down').toEqual([]);
    // "Down" is a measurement, not a collector failure: the Redis collector answered inside its
    // budget (a collector that runs out of it is marked failed with a timeout), and so did every
    // other one, so the dead Redis did not hold the scrape up.
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'redis' })).toBe(1);
    expect(svc.runtime.exporter.registry.last.get('redis')).toMatchObject({ success: true, errors: [] });
    expect(find(r.metrics, 'dbpilot_collector_success').filter((s) => s.value !== 1)).toEqual([]);
    expect(value(r.metrics, 'pg_up', { role: 'primary' })).toBe(1);
  }

  it('reports INFO values while Redis runs', async () => {
    const r = await scrape(svc.url);
    expectRedisUp(r);
    expect(r.metrics.type.get('redis_up')).toBe('gauge');
    expect(find(r.metrics, 'redis_up')[0]!.labels).toEqual({});
  });

  it('a stopped Redis is redis_up 0 with no other redis_* series, and /health 503', async () => {
    const mark = svc.log.lines.length;
    await redis.stop();
    for (let i = 0; i < 2; i++) expectRedisDown(await scrape(svc.url));
    const h = await getJson(`${svc.url}/health`);
    expect(h.status).toBe(503);
    expect(h.body).toEqual({ database: 'healthy', redis: 'unhealthy' });
    // Why is logged by the connection's first failed reconnect.
    await expect
      .poll(() => logSince(mark).find((e) => e.msg === 'Redis connection error')?.err, { timeout: 5000, interval: 50 })
      .toMatch(/ECONNREFUSED/);
  });

  it('back up: redis_up 1 with memory again, /health 200', async () => {
    const mark = svc.log.lines.length;
    await redis.stop();
    // Down, and dbpilot's connection has met the refusal: what a "restored" line follows.
    await expect.poll(async () => value((await scrape(svc.url)).metrics, 'redis_up'), { timeout: 10_000, interval: 100 }).toBe(0);
    await expect
      .poll(() => logSince(mark).find((e) => e.msg === 'Redis connection error')?.err, { timeout: 5000, interval: 50 })
      .toMatch(/ECONNREFUSED/);
    const down = svc.log.lines.length;
    await redis.start();
    await expect.poll(async () => value((await scrape(svc.url)).metrics, 'redis_up'), { timeout: 10_000, interval: 100 }).toBe(1);
    expectRedisUp(await scrape(svc.url));
    const h = await getJson(`${svc.url}/health`);
    expect(h.status).toBe(200);
    expect(h.body).toEqual({ database: 'healthy', redis: 'healthy' });
    expect(logSince(down).some((e) => e.msg === 'Redis connection restored')).toBe(true);
  });

  it('a killed Redis is redis_up 0 too, and comes back', async () => {
    await redis.kill();
    expectRedisDown(await scrape(svc.url));
    await redis.start();
    await expect.poll(async () => value((await scrape(svc.url)).metrics, 'redis_up'), { timeout: 10_000, interval: 100 }).toBe(1);
    expectRedisUp(await scrape(svc.url));
  });
});
