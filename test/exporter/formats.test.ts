/**
 * Counters keep their names in both exposition formats, whatever order they are asked for in.
 *
 * prom-client's OpenMetrics serialisation renames a counter object in place (`x_total` → `x`); a
 * counter object that also renders the Prometheus text format then lost `_total` there after the
 * first OpenMetrics scrape (issue 8). Each order is scraped on a fresh `serve` (the remediation side
 * too, which registers most counters), on the shared harness servers; every counter of the README's
 * metrics table is checked in every answer: its family (`# TYPE`) and every sample.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Counter } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startService, type Service } from '../../src/server.js';
import { prepareService } from '../../src/service.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { scrape, type ScrapeResult } from '../support/scrape.js';
import { captureLogger, makeConfig } from '../support/service.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TOKEN = 'formats-test-webhook-token-0123456789';
const TEAM_KEYS = {
  'lead-dba': 'FMTLEADDBA0000000000000000000001',
  'em-dba': 'FMTEMDBA000000000000000000000002',
  'oncall-backend': 'FMTONCALL00000000000000000000003',
  devops: 'FMTDEVOPS00000000000000000000004',
} as const;
const OPENMETRICS = 'application/openmetrics-text; version=1.0.0';

/** Every metric the README's "Metrics reference" table types as `counter`. */
function readmeCounters(): string[] {
  const text = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const section = text.slice(text.indexOf('## Metrics reference'));
  const table = section.slice(0, section.indexOf('\n## '));
  const names: string[] = [];
  for (const line of table.split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    if (cells.length < 4 || cells[2] !== 'counter') continue;
    names.push(...[...cells[1]!.matchAll(/`([a-z_:][a-z0-9_:]*)`/g)].map((m) => m[1]!));
  }
  return names;
}

/** The counter `name` (README spelling, `…_total`) as the answer shows it: family, TYPE and every sample's name. */
function expectCounter(r: ScrapeResult, name: string, format: 'text' | 'openmetrics'): void {
  const family = format === 'text' ? name : name.replace(/_total$/, '');
  expect(r.metrics.type.get(family), `${format}: # TYPE ${family} counter`).toBe('counter');
  // The text format names the family after its samples; a renamed one would show up as a second family.
  if (format === 'text') expect(r.metrics.type.has(name.replace(/_total$/, '')), `${format}: no family without _total`).toBe(false);
  const stem = name.replace(/_total$/, '');
  const samples = r.metrics.samples.filter((s) => s.name === stem || s.name.startsWith(`${stem}_`));
  expect(samples.length, `${format}: samples of ${name}`).toBeGreaterThan(0);
  for (const s of samples) expect(s.name, `${format}: sample ${JSON.stringify(s)}`).toBe(name);
}

async function startServe(pdUrl: string, dir: string): Promise<{ service: Service; base: string }> {
  const config = makeConfig({
    logLevel: 'warn',
    postgres: { databases: ['postgres'] },
    webhook: { token: TOKEN },
    pagerduty: { url: pdUrl, routes: { ...TEAM_KEYS }, source: 'dbpilot-formats-test', timeoutMs: 2000 },
    store: { path: path.join(dir, 'dbpilot.sqlite') },
  });
  const { logger } = captureLogger('warn');
  const service = await startService(config, logger, (runtime) => prepareService(runtime));
  return { service, base: `http://127.0.0.1:${service.address.port}` };
}

/**
 * Real events, so the labelled counters have samples: a webhook with an alert naming a remediation no
 * runbook handler has (requests, alerts, remediations; escalated to the PagerDuty stand-in: escalations) that
 * says Alertmanager truncated one alert.
 */
async function produceCounterSamples(service: Service, base: string, pd: PagerDutyStandin, fingerprint: string): Promise<void> {
  const res = await fetch(`${base}/alertmanager/webhook`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` },
    body: JSON.stringify({
      version: '4',
      receiver: 'dbpilot',
      status: 'firing',
      alerts: [
        {
          status: 'firing',
          labels: { alertname: 'RedisDown', severity: 'critical', team: 'devops', remediation: 'redis-sentinel-failover' },
          annotations: { summary: 'Redis is down' },
          startsAt: new Date().toISOString(),
          endsAt: '0001-01-01T00:00:00Z',
          generatorURL: 'http://127.0.0.1:9090/graph',
          fingerprint,
        },
      ],
      groupLabels: {},
      commonLabels: { alertname: 'RedisDown' },
      commonAnnotations: {},
      externalURL: 'http://127.0.0.1:9093',
      groupKey: `{}:{alertname="RedisDown",fp="${fingerprint}"}`,
      truncatedAlerts: 1,
    }),
  });
  expect(res.status, await res.text()).toBe(202);
  // Waited for on the counter objects, not on an answer: the answers are what the test judges.
  const values = async (name: string) => (await (service.runtime.metrics.prometheus.getSingleMetric(name) as Counter<string>).get()).values;
  const deadline = Date.now() + 15_000;
  for (;;) {
    const delivered = (await values('dbpilot_escalations_total')).some((v) => v.labels.outcome === 'delivered');
    if (delivered && (await values('dbpilot_remediations_total')).length > 0) break;
    if (Date.now() > deadline) throw new Error('the escalation was not delivered to the PagerDuty stand-in in time');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  expect(pd.accepted.length).toBeGreaterThan(0);
}

describe('counters keep their names in the Prometheus text format and in OpenMetrics', () => {
  const pd = new PagerDutyStandin();
  const dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-formats-'));
  const services: Service[] = [];

  beforeAll(async () => {
    await pd.start();
  });
  afterAll(async () => {
    await Promise.allSettled(services.map((s) => s.close()));
    await pd.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reads the counters of the README metrics table', () => {
    const counters = readmeCounters();
    expect(counters).toEqual(expect.arrayContaining(['dbpilot_remediations_total', 'dbpilot_escalations_total', 'dbpilot_webhook_truncated_alerts_total']));
    for (const c of counters) expect(c).toMatch(/_total$/);
  });

  it.each([
    ['text first', ['text', 'openmetrics', 'text', 'openmetrics']],
    ['OpenMetrics first', ['openmetrics', 'text', 'openmetrics', 'text']],
  ] as const)('%s, on a fresh service: every counter keeps its name in every answer', async (label, order) => {
    const { service, base } = await startServe(pd.url, mkdtempSync(path.join(dir, 'svc-')));
    services.push(service);
    const counters = readmeCounters();

    // The very first answer of the fresh service is in the first format of the order, before any event.
    const first = await scrape(base, order[0] === 'openmetrics' ? { accept: OPENMETRICS } : {});
    expect(first.status).toBe(200);
    for (const name of counters) {
      const family = order[0] === 'text' ? name : name.replace(/_total$/, '');
      expect(first.metrics.type.get(family), `${label}, first answer: # TYPE ${family}`).toBe('counter');
    }

    await produceCounterSamples(service, base, pd, label === 'text first' ? 'f0a7000000000001' : 'f0a7000000000002');
    // A replica that is not the leader counts forwarded webhooks; this single instance never forwards,
    // so that counter gets its sample here, through the same object the route increments.
    (service.runtime.metrics.prometheus.getSingleMetric('dbpilot_webhook_forwarded_total') as Counter<'outcome'>).inc({ outcome: 'forwarded' });

    for (const format of order) {
      const r = await scrape(base, format === 'openmetrics' ? { accept: OPENMETRICS } : {});
      expect(r.status).toBe(200);
      expect(r.metrics.eof).toBe(format === 'openmetrics');
      for (const name of counters) expectCounter(r, name, format);
      // prom-client's own process counter too.
      expectCounter(r, 'process_cpu_seconds_total', format);
    }
  });
});
