/**
 * The service_health collector against small HTTP servers this test starts on 127.0.0.1 port 0: what
 * each answer becomes (answered, status, what it said about the database, how long it took), that the
 * services are asked all at once, that a service that hangs is given up inside the budget with the
 * reason, and that a service never has two probes in flight. Then once through a real service's
 * /metrics (the shared harness servers for PostgreSQL and Redis).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseState, serviceHealthCollector } from '../../src/collectors/service-health.js';
import { Metrics } from '../../src/metrics.js';
import { find, scrape, value } from '../support/scrape.js';
import { makeConfig, startTestService } from '../support/service.js';

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

interface TestServer {
  url: string;
  /** Requests received, and the most that were open at once (an open request ends when its socket closes or it is answered). */
  received: number;
  maxOpen: number;
  close(): Promise<void>;
}

const servers: TestServer[] = [];

async function serve(handler: Handler): Promise<TestServer> {
  const sockets = new Set<import('node:net').Socket>();
  let open = 0;
  const state: TestServer = { url: '', received: 0, maxOpen: 0, close: async () => {} };
  const server = http.createServer((req, res) => {
    state.received++;
    open++;
    state.maxOpen = Math.max(state.maxOpen, open);
    let done = false;
    const end = () => {
      if (!done) open--;
      done = true;
    };
    res.on('finish', end);
    res.on('close', end);
    handler(req, res);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/health`;
  state.close = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  servers.push(state);
  return state;
}

const json = (status: number, body: unknown): Handler => (_req, res) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

afterAll(async () => {
  await Promise.allSettled(servers.map((s) => s.close()));
});

function collectorFor(targets: { name: string; healthUrl: string }[], budgetMs: number) {
  const metrics = new Metrics({ processMetrics: false });
  const c = serviceHealthCollector(metrics, targets, budgetMs);
  return {
    c,
    async collect() {
      const set = await c.collect(new AbortController().signal);
      const get = (name: string, labels: Record<string, string>) =>
        [...set.values].filter(([g]) => (g as unknown as { name: string }).name === name).flatMap(([, s]) => s).filter((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v));
      return { set, get };
    },
  };
}

describe('databaseState', () => {
  it.each([
    ['{"database":"healthy"}', 'healthy'],
    ['{"database":"unhealthy","redis":"healthy"}', 'unhealthy'],
    ['{"database":"degraded"}', 'other'],
    ['{"status":"ok"}', 'other'],
    ['["healthy"]', 'other'],
    ['<html>Bad Gateway</html>', 'other'],
    ['', 'other'],
  ])('%s → %s', (body, state) => {
    expect(databaseState(body)).toBe(state);
  });
});

describe('service_health collector', () => {
  it('reports, per service, the answer, its status, what it said about the database, and how long it took', async () => {
    const healthy = await serve(json(200, { database: 'healthy', redis: 'healthy' }));
    const unhealthy = await serve(json(503, { database: 'unhealthy' }));
    const broken = await serve((_req, res) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('Internal Server Error');
    });
    const t = collectorFor(
      [
        { name: 'auth-service', healthUrl: healthy.url },
        { name: 'order-payment-service', healthUrl: unhealthy.url },
        { name: 'content-service', healthUrl: broken.url },
      ],
      2000,
    );
    const before = performance.now();
    const { set, get } = await t.collect();
    const elapsed = (performance.now() - before) / 1000;
    expect(set.errors).toEqual([]);
    for (const [service, status, state] of [
      ['auth-service', 200, 'healthy'],
      ['order-payment-service', 503, 'unhealthy'],
      ['content-service', 500, 'other'],
    ] as const) {
      expect(get('service_health_up', { service }).map((s) => s.value), service).toEqual([1]);
      expect(get('service_health_http_status_code', { service }).map((s) => s.value), service).toEqual([status]);
      const states = Object.fromEntries(get('service_health_database', { service }).map((s) => [s.labels.state, s.value]));
      expect(states, service).toEqual({ healthy: 0, unhealthy: 0, other: 0, [state]: 1 });
      const [d] = get('service_health_duration_seconds', { service });
      expect(d!.value, service).toBeGreaterThan(0);
      expect(d!.value, service).toBeLessThanOrEqual(elapsed);
    }
  });

  it('asks every service at once: they answer only when all of them have been asked', async () => {
    const waiting: http.ServerResponse[] = [];
    const N = 4;
    const gate: Handler = (_req, res) => {
      waiting.push(res);
      if (waiting.length === N) for (const r of waiting) json(200, { database: 'healthy' })(_req, r);
    };
    const targets = await Promise.all(Array.from({ length: N }, async (_, i) => ({ name: `svc-${i}`, healthUrl: (await serve(gate)).url })));
    const { set, get } = await collectorFor(targets, 5000).collect();
    expect(set.errors).toEqual([]);
    for (const t of targets) expect(get('service_health_up', { service: t.name }).map((s) => s.value)).toEqual([1]);
  });

  it('a service that hangs is given up at the budget, with the reason, without holding up the others', async () => {
    const BUDGET_MS = 300;
    const hang = await serve(() => {});
    const fine = await serve(json(200, { database: 'healthy' }));
    const t = collectorFor(
      [
        { name: 'hung-service', healthUrl: hang.url },
        { name: 'fine-service', healthUrl: fine.url },
      ],
      BUDGET_MS,
    );
    const before = performance.now();
    const { set, get } = await t.collect();
    const elapsed = (performance.now() - before) / 1000;
    expect(set.errors).toEqual([`service hung-service (${new URL(hang.url).host}): no answer within ${BUDGET_MS} ms`]);
    expect(get('service_health_up', { service: 'hung-service' }).map((s) => s.value)).toEqual([0]);
    // Nothing is claimed about what a service that did not answer thinks.
    expect(get('service_health_http_status_code', { service: 'hung-service' })).toEqual([]);
    expect(get('service_health_database', { service: 'hung-service' })).toEqual([]);
    const [d] = get('service_health_duration_seconds', { service: 'hung-service' });
    expect(d!.value).toBeGreaterThanOrEqual(BUDGET_MS / 1000 - 0.005);
    expect(d!.value).toBeLessThanOrEqual(elapsed);
    expect(get('service_health_up', { service: 'fine-service' }).map((s) => s.value)).toEqual([1]);
    expect(get('service_health_duration_seconds', { service: 'fine-service' })[0]!.value).toBeLessThan(d!.value);
  });

  it('never has two probes of one service in flight: collections that overlap share the running probe', async () => {
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const slow = await serve((req, res) => void released.then(() => json(200, { database: 'healthy' })(req, res)));
    const t = collectorFor([{ name: 'slow-service', healthUrl: slow.url }], 5000);
    const a = t.collect();
    const b = t.collect();
    await expect.poll(() => slow.received, { timeout: 5000, interval: 5 }).toBe(1);
    const c = t.collect();
    release();
    const results = await Promise.all([a, b, c]);
    expect(slow.received).toBe(1);
    expect(slow.maxOpen).toBe(1);
    for (const r of results) expect(r.get('service_health_up', { service: 'slow-service' }).map((s) => s.value)).toEqual([1]);
    // Once it has ended, the next collection asks again.
    await t.collect();
    expect(slow.received).toBe(2);
  });

  it('credentials in the URL are sent as Basic authorization', async () => {
    let seen: string | undefined;
    const guarded = await serve((req, res) => {
      seen = req.headers.authorization;
      json(200, { database: 'healthy' })(req, res);
    });
    const u = new URL(guarded.url);
    u.username = 'probe';
    u.password = 'p%40ss';
    const { set, get } = await collectorFor([{ name: 'guarded-service', healthUrl: u.toString() }], 1000).collect();
    expect(set.errors).toEqual([]);
    expect(seen).toBe(`Basic ${Buffer.from('probe:p@ss').toString('base64')}`);
    expect(get('service_health_database', { service: 'guarded-service', state: 'healthy' }).map((s) => s.value)).toEqual([1]);
  });

  it('a refused connection is the reason, and no credential of the URL reaches it', async () => {
    const gone = await serve(json(200, {}));
    await gone.close();
    const u = new URL(gone.url);
    u.username = 'probe';
    u.password = 's3cret-in-url';
    const { set } = await collectorFor([{ name: 'gone-service', healthUrl: u.toString() }], 1000).collect();
    expect(set.errors).toHaveLength(1);
    expect(set.errors[0]).toMatch(/^service gone-service \(127\.0\.0\.1:\d+\): ECONNREFUSED$/);
    expect(set.errors.join()).not.toContain('s3cret');
  });
});

describe('service_health in /metrics', () => {
  let healthyUrl = '';
  let unhealthyUrl = '';
  beforeAll(async () => {
    healthyUrl = (await serve(json(200, { database: 'healthy' }))).url;
    unhealthyUrl = (await serve(json(503, { database: 'unhealthy' }))).url;
  });

  it('exports the four families per configured service; the collector fails, naming the service, while one does not answer', async () => {
    const hung = await serve(() => {});
    const svc = await startTestService(
      makeConfig({
        postgres: { databases: ['postgres'] },
        collectors: { timeoutMs: 800 },
        services: [
          { name: 'auth-service', healthUrl: healthyUrl, deployment: 'auth-service' },
          { name: 'order-payment-service', healthUrl: unhealthyUrl },
          { name: 'analytics-service', healthUrl: hung.url },
        ],
      }),
    );
    try {
      const r = await scrape(svc.url);
      expect(r.status).toBe(200);
      expect(value(r.metrics, 'service_health_up', { service: 'auth-service' })).toBe(1);
      expect(value(r.metrics, 'service_health_http_status_code', { service: 'order-payment-service' })).toBe(503);
      expect(value(r.metrics, 'service_health_database', { service: 'order-payment-service', state: 'unhealthy' })).toBe(1);
      expect(value(r.metrics, 'service_health_database', { service: 'auth-service', state: 'healthy' })).toBe(1);
      expect(value(r.metrics, 'service_health_up', { service: 'analytics-service' })).toBe(0);
      expect(find(r.metrics, 'service_health_database', { service: 'analytics-service' })).toEqual([]);
      expect(r.metrics.type.get('service_health_duration_seconds')).toBe('gauge');
      expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'service_health' })).toBe(0);
      const last = svc.runtime.exporter.registry.last.get('service_health')!;
      // Given up by its own bound (80 % of the collector budget), not cut off by the budget.
      expect(last.errors).toEqual([`service analytics-service (${new URL(hung.url).host}): no answer within 640 ms`]);
      // Every other collector is unaffected.
      expect(find(r.metrics, 'dbpilot_collector_success').filter((s) => s.value !== 1).map((s) => s.labels.collector)).toEqual(['service_health']);
    } finally {
      await svc.close();
    }
  });
});
