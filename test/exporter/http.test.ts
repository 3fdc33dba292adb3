/**
 * The exporter's HTTP surface and its collector registry, on the shared harness servers: formats,
 * health routes, a hung or failing collector, and concurrent scrapes sharing one collection.
 */
import { afterAll, beforeAll, describe, expect, it, vi, type MockInstance } from 'vitest';
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
  /** The signal of every collection of the hung collector, in order. */
  const hungSignals: AbortSignal[] = [];
  beforeAll(async () => {
    svc = await startTestService(makeConfig({ postgres: { databases: ['postgres'] }, collectors: { timeoutMs: TIMEOUT_MS } }));
    const hung: Collector = {
      name: 'hung_test',
      gauges: [],
      collect: (signal) => {
        hungSignals.push(signal);
        return new Promise<SampleSet>(() => {});
      },
    };
    const failing: Collector = {
      name: 'failing_test',
      gauges: [],
      collect: async () => {
        throw new Error('failing_test exploded on purpose');
      },
    };
    svc.runtime.exporter.registry.register(hung);
    svc.runtime.exporter.registry.register(failing);
    // Warm the pools and the size cache, so the built-in collectors are judged on their queries, not on first connects.
    await scrape(svc.url);
  });
  afterAll(async () => {
    await svc?.close();
  });

  it('reports the hung collector 0 because its budget ran out, and every other collector still 1', async () => {
    for (let i = 0; i < 2; i++) {
      const seen = hungSignals.length;
      // The hung collector never settles: the scrape answering at all is the budget at work.
      const r = await scrape(svc.url);
      expect(r.status).toBe(200);
      expect(hungSignals).toHaveLength(seen + 1);
      // Its budget ran out and aborted it: the timeout decided, not the collector.
      expect(hungSignals.at(-1)!.aborted).toBe(true);
      expect(svc.runtime.exporter.registry.last.get('hung_test')).toMatchObject({
        success: false,
        errors: [`collector hung_test did not finish within ${TIMEOUT_MS} ms`],
      });
      expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'hung_test' })).toBe(0);
      // The duration it reports is at least the budget that ended it (the timer never fires early).
      expect(value(r.metrics, 'dbpilot_collector_duration_seconds', { collector: 'hung_test' })).toBeGreaterThanOrEqual(TIMEOUT_MS / 1000 - 0.005);
      expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'failing_test' })).toBe(0);
      expect(svc.runtime.exporter.registry.last.get('failing_test')?.errors).toEqual(['failing_test exploded on purpose']);
      for (const c of BUILTIN_COLLECTORS) expect(value(r.metrics, 'dbpilot_collector_success', { collector: c }), c).toBe(1);
      expect(value(r.metrics, 'pg_up', { role: 'primary' })).toBe(1);
    }
  });

  it('logs why, once per outage rather than on every scrape', async () => {
    await scrape(svc.url);
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
  /** While set, each collection of the counting collector waits until the test opens it. */
  let hold: { reached: Promise<void>; open(): void; wait(): Promise<void> } | null = null;
  /** GET /metrics asking the registry for a collection. */
  let collect: MockInstance;

  function gate(): NonNullable<typeof hold> {
    let open!: () => void;
    let reached!: () => void;
    const opened = new Promise<void>((r) => (open = r));
    return {
      reached: new Promise<void>((r) => (reached = r)),
      open: () => open(),
      wait: () => {
        reached();
        return opened;
      },
    };
  }

  beforeAll(async () => {
    // A budget far beyond the test, so a collection held at the gate is never ended by the timeout.
    svc = await startTestService(makeConfig({ postgres: { databases: ['postgres'] }, collectors: { timeoutMs: 60_000 } }));
    const gauge = svc.runtime.metrics.gauge('dbpilot_test_collect_calls', 'How often the counting collector ran.');
    const counting: Collector = {
      name: 'counting_test',
      gauges: [gauge],
      async collect() {
        calls++;
        const n = calls;
        await hold?.wait();
        return new SampleSet().set(gauge, {}, n);
      },
    };
    svc.runtime.exporter.registry.register(counting);
    collect = vi.spyOn(svc.runtime.exporter.registry, 'collect');
  });
  afterAll(async () => {
    hold?.open();
    collect?.mockRestore();
    await svc?.close();
  });

  it('ten parallel GET /metrics share one collection', async () => {
    const g = gate();
    hold = g;
    collect.mockClear();
    const before = calls;
    const pending = Promise.all(Array.from({ length: 10 }, () => scrape(svc.url)));
    try {
      // The collection has started and is held; every one of the ten requests asks for a collection
      // while it is still running.
      await g.reached;
      await expect.poll(() => collect.mock.calls.length, { timeout: 20_000, interval: 5 }).toBe(10);
      expect(calls).toBe(before + 1);
    } finally {
      hold = null;
      g.open();
    }
    const results = await pending;
    expect(calls).toBe(before + 1);
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(value(r.metrics, 'dbpilot_test_collect_calls')).toBe(before + 1);
      expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'counting_test' })).toBe(1);
      expect(value(r.metrics, 'pg_up', { role: 'primary' })).toBe(1);
    }
    // One collection means one duration, the same in every answer.
    const durations = new Set(results.map((r) => value(r.metrics, 'dbpilot_collector_duration_seconds', { collector: 'pg_server' })));
    expect(durations.size).toBe(1);
  });

  it('a scrape after a collection has finished collects afresh', async () => {
    const first = await scrape(svc.url);
    const n = value(first.metrics, 'dbpilot_test_collect_calls');
    expect(n).toBe(calls);
    const second = await scrape(svc.url);
    expect(calls).toBe(n + 1);
    expect(value(second.metrics, 'dbpilot_test_collect_calls')).toBe(n + 1);
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
