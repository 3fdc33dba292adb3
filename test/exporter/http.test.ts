/**
 * The exporter's HTTP surface and its collector registry, on the shared harness servers: formats,
 * health routes, a hung or failing collector, and concurrent scrapes sharing one collection.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SampleSet, type Collector } from '../../src/collectors/collector.js';
import { find, parseExposition, scrape, value } from '../support/scrape.js';
import { getJson, makeConfig, startTestService, type TestService } from '../support/service.js';

const BUILTIN_COLLECTORS = ['pg_server', 'pg_stat_replication', 'pg_stat_activity', 'pg_stat_database', 'pg_sizes', 'prisma_migrations', 'redis'];

describe('formats and health routes', () => {
  let svc: TestService;
  beforeAll(async () => {
    svc = await startTestService(makeConfig({ postgres: { databases: ['postgres'] } }));
  });
  afterAll(async () => {
    await svc?.close();
  });

  it('answers Prometheus text 0.0.4 by default, with every built-in collector succeeding', async () => {
    const r = await scrape(svc.url);
    expect(r.status).toBe(200);
    expect(r.contentType).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(r.metrics.eof).toBe(false);
    for (const c of BUILTIN_COLLECTORS) {
      expect(value(r.metrics, 'dbpilot_collector_success', { collector: c }), c).toBe(1);
      expect(value(r.metrics, 'dbpilot_collector_duration_seconds', { collector: c }), c).toBeGreaterThan(0);
    }
    // Collectors added later must succeed here too.
    expect(find(r.metrics, 'dbpilot_collector_success').filter((s) => s.value !== 1)).toEqual([]);
    expect(r.metrics.type.get('pg_up')).toBe('gauge');
    expect(value(r.metrics, 'pg_up', { role: 'primary' })).toBe(1);
    expect(value(r.metrics, 'pg_up', { role: 'replica' })).toBe(1);
    expect(value(r.metrics, 'redis_up')).toBe(1);
    expect(value(r.metrics, 'dbpilot_build_info', { version: '0.1.0' })).toBe(1);
  });

  it('answers OpenMetrics when asked, ending with # EOF', async () => {
    const r = await scrape(svc.url, { accept: 'application/openmetrics-text; version=1.0.0' });
    expect(r.status).toBe(200);
    expect(r.contentType).toMatch(/^application\/openmetrics-text; version=1\.0\.0; charset=utf-8$/);
    expect(r.body.endsWith('# EOF\n')).toBe(true);
    expect(r.metrics.eof).toBe(true);
    expect(value(r.metrics, 'pg_up', { role: 'primary' })).toBe(1);
    expect(value(r.metrics, 'redis_up')).toBe(1);
  });

  it('GET /health is 200 with the runbook shape when PostgreSQL and Redis answer', async () => {
    const h = await getJson(`${svc.url}/health`);
    expect(h.status).toBe(200);
    expect(h.contentType).toMatch(/^application\/json/);
    expect(h.body).toEqual({ database: 'healthy', redis: 'healthy' });
  });

  it('GET /-/healthy and /-/ready are 200', async () => {
    const live = await getJson(`${svc.url}/-/healthy`);
    expect(live.status).toBe(200);
    expect(live.body).toEqual({ status: 'ok' });
    const ready = await getJson(`${svc.url}/-/ready`);
    expect(ready.status).toBe(200);
    expect(ready.body).toEqual({ status: 'ready' });
  });
});

describe('a collector that hangs or fails', () => {
  const TIMEOUT_MS = 300;
  let svc: TestService;
  beforeAll(async () => {
    svc = await startTestService(makeConfig({ postgres: { databases: ['postgres'] }, collectors: { timeoutMs: TIMEOUT_MS } }));
    const hung: Collector = { name: 'hung_test', gauges: [], collect: () => new Promise<SampleSet>(() => {}) };
    const failing: Collector = {
      name: 'failing_test',
      gauges: [],
      collect: async () => {
        throw new Error('failing_test exploded on purpose');
      },
    };
    svc.runtime.exporter.registry.register(hung);
    svc.runtime.exporter.registry.register(failing);
    // Warm the pools and the size cache, so the timed scrapes below measure the budget, not first connects.
    await scrape(svc.url);
  });
  afterAll(async () => {
    await svc?.close();
  });

  it('reports the hung collector 0 within its budget, and every other collector still 1', async () => {
    for (let i = 0; i < 2; i++) {
      const r = await scrape(svc.url);
      expect(r.status).toBe(200);
      expect(r.ms).toBeLessThan(TIMEOUT_MS + 400);
      expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'hung_test' })).toBe(0);
      expect(value(r.metrics, 'dbpilot_collector_duration_seconds', { collector: 'hung_test' })).toBeGreaterThanOrEqual(TIMEOUT_MS / 1000 - 0.005);
      expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'failing_test' })).toBe(0);
      for (const c of BUILTIN_COLLECTORS) expect(value(r.metrics, 'dbpilot_collector_success', { collector: c }), c).toBe(1);
      expect(value(r.metrics, 'pg_up', { role: 'primary' })).toBe(1);
    }
  });

  it('logs why, once per outage rather than on every scrape', async () => {
    await scrape(svc.url);
    const failed = svc.log.entries().filter((e) => e.msg === 'collector failed');
    const hung = failed.filter((e) => e.collector === 'hung_test');
    expect(hung).toHaveLength(1);
    expect(JSON.stringify(hung[0]!.errors)).toContain(`did not finish within ${TIMEOUT_MS} ms`);
    expect(hung[0]!.level).toBe(40);
    const failing = failed.filter((e) => e.collector === 'failing_test');
    expect(failing).toHaveLength(1);
    expect(JSON.stringify(failing[0]!.errors)).toContain('failing_test exploded on purpose');
  });
});

describe('concurrent scrapes', () => {
  let svc: TestService;
  let calls = 0;
  beforeAll(async () => {
    svc = await startTestService(makeConfig({ postgres: { databases: ['postgres'] } }));
    const gauge = svc.runtime.metrics.gauge('dbpilot_test_collect_calls', 'How often the counting collector ran.');
    const counting: Collector = {
      name: 'counting_test',
      gauges: [gauge],
      async collect() {
        calls++;
        // Long enough that every request of the burst arrives while this collection runs.
        await sleep(300);
        return new SampleSet().set(gauge, {}, calls);
      },
    };
    svc.runtime.exporter.registry.register(counting);
  });
  afterAll(async () => {
    await svc?.close();
  });

  it('ten parallel GET /metrics share one collection', async () => {
    const results = await Promise.all(Array.from({ length: 10 }, () => scrape(svc.url)));
    expect(calls).toBe(1);
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(value(r.metrics, 'dbpilot_test_collect_calls')).toBe(1);
      expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'counting_test' })).toBe(1);
      expect(value(r.metrics, 'pg_up', { role: 'primary' })).toBe(1);
    }
    // One collection means one duration, the same in every answer.
    const durations = new Set(results.map((r) => value(r.metrics, 'dbpilot_collector_duration_seconds', { collector: 'pg_server' })));
    expect(durations.size).toBe(1);
  });

  it('a scrape after the burst collects afresh', async () => {
    const r = await scrape(svc.url);
    expect(calls).toBe(2);
    expect(value(r.metrics, 'dbpilot_test_collect_calls')).toBe(2);
  });
});

describe('parseExposition (test helper)', () => {
  it('reads escaped label values, HELP text and special values', () => {
    const e = parseExposition(
      [
        '# HELP x_total A \\\\ help\\nline',
        '# TYPE x_total counter',
        'x_total{a="q\\"uote",b="back\\\\slash",c="new\\nline"} 3',
        'y NaN',
        'z{} +Inf',
        '',
      ].join('\n'),
    );
    expect(e.help.get('x_total')).toBe('A \\ help\nline');
    expect(e.type.get('x_total')).toBe('counter');
    expect(value(e, 'x_total')).toBe(3);
    expect(find(e, 'x_total')[0]!.labels).toEqual({ a: 'q"uote', b: 'back\\slash', c: 'new\nline' });
    expect(value(e, 'y')).toBeNaN();
    expect(value(e, 'z')).toBe(Number.POSITIVE_INFINITY);
  });
});
