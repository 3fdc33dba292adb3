/**
 * No password from a connection URL ever reaches a log line, /metrics or /health — neither while the
 * servers refuse connections (error paths) nor while a password-bearing URL works (trust auth on the
 * shared replica ignores the password, so the success paths run with it too).
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { freePort } from '../support/ports.js';
import { scrape, value } from '../support/scrape.js';
import { getJson, makeConfig, startTestService, type TestService } from '../support/service.js';

const SECRET = 'S3cretPassw0rd';

describe('no secret in logs or metrics', () => {
  let svc: TestService;
  let deadPg = 0;
  let deadRedis = 0;
  let replicaPort = 0;
  const bodies: string[] = [];

  beforeAll(async () => {
    [deadPg, deadRedis] = await Promise.all([freePort(), freePort()]);
    replicaPort = inject('pgReplicaPorts')[0]!;
    svc = await startTestService(
      makeConfig({
        // trace: every line any part of dbpilot would ever write is captured and checked.
        logLevel: 'trace',
        postgres: {
          primary: { url: `postgres://postgres:${SECRET}@127.0.0.1:${deadPg}/postgres` },
          replicas: [{ url: `postgresql://postgres:${SECRET}@127.0.0.1:${replicaPort}/postgres?sslmode=disable` }],
          databases: ['postgres'],
        },
        redis: { url: `redis://default:${SECRET}@127.0.0.1:${deadRedis}/0` },
        collectors: { timeoutMs: 500 },
      }),
    );
    for (let i = 0; i < 3; i++) {
      bodies.push((await scrape(svc.url)).body);
      bodies.push((await scrape(svc.url, { accept: 'application/openmetrics-text; version=1.0.0' })).body);
      bodies.push(JSON.stringify((await getJson(`${svc.url}/health`)).body));
    }
  });

  afterAll(async () => {
    await svc?.close();
    bodies.length = 0;
  });

  it('the servers were really down (primary, Redis) and up (replica with a password in its URL)', async () => {
    const r = await scrape(svc.url);
    expect(value(r.metrics, 'pg_up', { server: `127.0.0.1:${deadPg}`, role: 'primary' })).toBe(0);
    expect(value(r.metrics, 'pg_up', { server: `127.0.0.1:${replicaPort}`, role: 'replica' })).toBe(1);
    expect(value(r.metrics, 'redis_up')).toBe(0);
    const h = await getJson(`${svc.url}/health`);
    expect(h.status).toBe(503);
    expect(h.body).toEqual({ database: 'unhealthy', redis: 'unhealthy' });
  });

  it('logged the failures, naming the servers, without the password', async () => {
    // Give the Redis client's background reconnects time to log too.
    await expect.poll(() => svc.log.entries().some((e) => e.msg === 'Redis connection error'), { timeout: 5000 }).toBe(true);
    const entries = svc.log.entries();
    const failed = entries.filter((e) => e.msg === 'collector failed');
    expect(failed.length).toBeGreaterThan(0);
    expect(JSON.stringify(failed)).toContain(`127.0.0.1:${deadPg}`);
    expect(JSON.stringify(entries.filter((e) => e.msg === 'Redis connection error'))).toContain(`127.0.0.1:${deadRedis}`);
    expect(svc.log.lines.length).toBeGreaterThanOrEqual(5);
    if (process.env.DBPILOT_TEST_VERBOSE) console.log(svc.log.text());
    expect(svc.log.text()).not.toContain(SECRET);
    expect(svc.log.text()).not.toContain(encodeURIComponent(SECRET));
  });

  it('/metrics and /health never show it', () => {
    expect(bodies).toHaveLength(9);
    for (const b of bodies) expect(b).not.toContain(SECRET);
  });

  it('the `server` label is host:port only', async () => {
    const r = await scrape(svc.url);
    const servers = new Set(r.metrics.samples.map((s) => s.labels.server).filter((s): s is string => s !== undefined));
    expect([...servers].sort()).toEqual([`127.0.0.1:${deadPg}`, `127.0.0.1:${replicaPort}`].sort());
  });
});
