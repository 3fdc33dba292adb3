/**
 * Redis INFO against a private Redis that the test stops, kills, freezes and starts again (the shared
 * PostgreSQL cluster is only read).
 *
 * What the two signals mean when Redis does not answer: `redis_up 0` is the measurement (RedisDown
 * fires on it); the redis collector could not read its source, so it reports failure too
 * (`dbpilot_collector_success{collector="redis"} 0`) with the reason, and no other redis_* value is
 * claimed. Neither waits out the collector budget.
 */
import net from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseRedisInfo } from '../../src/collectors/redis-info.js';
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

  function expectRedisUp(r: ScrapeResult, s: TestService = svc): void {
    expect(value(r.metrics, 'redis_up')).toBe(1);
    expect(value(r.metrics, 'redis_memory_used_bytes')).toBeGreaterThan(100_000);
    expect(value(r.metrics, 'redis_memory_max_bytes')).toBe(0); // no maxmemory configured
    expect(value(r.metrics, 'redis_rejected_connections_total')).toBe(0);
    expect(value(r.metrics, 'redis_connected_clients')).toBeGreaterThanOrEqual(1);
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'redis' })).toBe(1);
    expect(s.runtime.exporter.registry.last.get('redis')).toMatchObject({ success: true, errors: [] });
  }

  /** Redis did not answer: redis_up 0, the collector failed with `why`, inside its budget; nothing else failed. */
  function expectRedisDown(r: ScrapeResult, s: TestService = svc, why: RegExp = /ECONNREFUSED|ECONNRESET|Connection is closed|Stream isn't writeable/i): void {
    expect(r.status).toBe(200);
    expect(value(r.metrics, 'redis_up')).toBe(0);
    // No values are claimed for a Redis that did not answer (a 0 for redis_rejected_connections_total
    // would also look like a counter reset, and increase() would fire on recovery). Soft, so the rest
    // of the outage behaviour is still checked.
    expect.soft(otherRedisSeries(r), 'redis_* series other than redis_up while Redis is down').toEqual([]);
    // The collector could not read Redis: it says so, and why. Its reason is Redis', not the collector
    // budget's (a collector that runs out of it is cut off with "did not finish within"): redis_up 0
    // came from the collector itself, so the dead Redis did not hold the scrape up.
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'redis' })).toBe(0);
    const last = s.runtime.exporter.registry.last.get('redis')!;
    expect(last.success).toBe(false);
    expect(last.errors).toHaveLength(1);
    expect(last.errors[0]).toMatch(why);
    expect(last.errors[0]).not.toMatch(/did not finish within/);
    expect(find(r.metrics, 'dbpilot_collector_success').filter((x) => x.value !== 1 && x.labels.collector !== 'redis')).toEqual([]);
    expect(value(r.metrics, 'pg_up', { role: 'primary' })).toBe(1);
  }

  /** SIGSTOP the Redis process (its pid from INFO server): connections stay open, nothing answers. */
  async function freeze(): Promise<() => void> {
    const client = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
    client.on('error', () => {});
    await client.connect();
    const info = await client.info('server');
    client.disconnect();
    const pid = Number(/^process_id:(\d+)/m.exec(info)?.[1]);
    expect(pid).toBeGreaterThan(0);
    process.kill(pid, 'SIGSTOP');
    return () => {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // gone
      }
    };
  }

  it('reports INFO values while Redis runs', async () => {
    const r = await scrape(svc.url);
    expectRedisUp(r);
    expect(r.metrics.type.get('redis_up')).toBe('gauge');
    expect(find(r.metrics, 'redis_up')[0]!.labels).toEqual({});
  });

  it('the values are what Redis itself says in INFO around the scrape: memory, maxmemory, clients, rejected connections', async () => {
    const client = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
    client.on('error', () => {});
    await client.connect();
    const info = async () => parseRedisInfo(await client.info());
    const num = (i: Map<string, string>, k: string) => Number(i.get(k));
    try {
      await client.config('SET', 'maxmemory', String(96 * 1024 * 1024));
      // A megabyte of data, so used_memory is well above what an empty Redis uses.
      await client.set('value-test', 'x'.repeat(1024 * 1024));
      // Connections refused for maxclients are what rejected_connections counts: three of them.
      const clients = num(await info(), 'connected_clients');
      const rejectedBefore = num(await info(), 'rejected_connections');
      await client.config('SET', 'maxclients', String(clients));
      try {
        for (let i = 0; i < 3; i++) {
          const answer = await new Promise<string>((resolve) => {
            const s = net.connect(redis.port, '127.0.0.1');
            let got = '';
            s.on('data', (d) => (got += d.toString()));
            s.on('close', () => resolve(got));
            s.on('error', () => resolve(got));
          });
          expect(answer).toMatch(/max number of clients reached/);
        }
      } finally {
        await client.config('SET', 'maxclients', '10000');
      }
      // Taken when INFO says the same before and after the scrape (the values hold still on an idle Redis).
      for (let attempt = 1; ; attempt++) {
        const before = await info();
        const r = await scrape(svc.url);
        const after = await info();
        const keys = ['used_memory', 'maxmemory', 'connected_clients', 'rejected_connections'];
        if (keys.some((k) => before.get(k) !== after.get(k))) {
          if (attempt === 20) throw new Error('INFO kept changing around every scrape');
          continue;
        }
        expect(value(r.metrics, 'redis_up')).toBe(1);
        expect(value(r.metrics, 'redis_memory_used_bytes')).toBe(num(before, 'used_memory'));
        expect(num(before, 'used_memory')).toBeGreaterThan(1024 * 1024);
        expect(value(r.metrics, 'redis_memory_max_bytes')).toBe(96 * 1024 * 1024);
        expect(num(before, 'maxmemory')).toBe(96 * 1024 * 1024);
        expect(value(r.metrics, 'redis_connected_clients')).toBe(num(before, 'connected_clients'));
        expect(value(r.metrics, 'redis_rejected_connections_total')).toBe(num(before, 'rejected_connections'));
        expect(num(before, 'rejected_connections')).toBe(rejectedBefore + 3);
        break;
      }
    } finally {
      await client.del('value-test').catch(() => {});
      await client.config('SET', 'maxmemory', '0').catch(() => {});
      client.disconnect();
    }
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

  it('a frozen Redis (SIGSTOP) is redis_up 0 and a failed redis collector, with the reason, inside the budget', async () => {
    const mark = svc.log.lines.length;
    const thaw = await freeze();
    try {
      for (let i = 0; i < 2; i++) expectRedisDown(await scrape(svc.url), svc, /timed out|no answer within/i);
      const h = await getJson(`${svc.url}/health`);
      expect(h.status).toBe(503);
      expect(h.body).toEqual({ database: 'healthy', redis: 'unhealthy' });
    } finally {
      thaw();
    }
    // Logged once, with the reason, on the transition (not on every scrape of the outage).
    const failed = logSince(mark).filter((e) => e.msg === 'collector failed' && e.collector === 'redis');
    expect(failed).toHaveLength(1);
    expect(JSON.stringify(failed[0]!.errors)).toMatch(/timed out|no answer within/i);
    await expect.poll(async () => value((await scrape(svc.url)).metrics, 'dbpilot_collector_success', { collector: 'redis' }), { timeout: 10_000, interval: 100 }).toBe(1);
    expectRedisUp(await scrape(svc.url));
    expect(logSince(mark).some((e) => e.msg === 'collector recovered' && e.collector === 'redis')).toBe(true);
  });

  it('a frozen Redis is redis_up 0 even when redis.commandTimeoutMs outlasts the collector budget', async () => {
    // The schema accepts it; redis_up must still be exported (a missing redis_up is no sample for
    // `redis_up == 0`, and RedisDown would never fire).
    const slow = await startTestService(
      makeConfig({ postgres: { databases: ['postgres'] }, redis: { url: redis.url, commandTimeoutMs: 5000 }, collectors: { timeoutMs: TIMEOUT_MS } }),
    );
    try {
      expectRedisUp(await scrape(slow.url), slow);
      const thaw = await freeze();
      try {
        expectRedisDown(await scrape(slow.url), slow, new RegExp(`no answer within ${Math.floor(TIMEOUT_MS * 0.8)} ms`));
      } finally {
        thaw();
      }
    } finally {
      await slow.close();
    }
  });

  it('a killed Redis is redis_up 0 too, and comes back', async () => {
    await redis.kill();
    expectRedisDown(await scrape(svc.url));
    await redis.start();
    await expect.poll(async () => value((await scrape(svc.url)).metrics, 'redis_up'), { timeout: 10_000, interval: 100 }).toBe(1);
    expectRedisUp(await scrape(svc.url));
  });
});
