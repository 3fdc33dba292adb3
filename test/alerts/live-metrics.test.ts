/**
 * The names the alert rules and the Grafana dashboard query, checked against what a live dbpilot
 * actually exposes. rules.test.ts checks the names against a list; this test scrapes the real
 * service (startService with the remediation side, as `dbpilot serve` runs it) on a private
 * PostgreSQL primary + streaming replica and a private Redis, so a renamed or never-registered
 * metric — a rule that can never fire, a panel that is always empty — fails here.
 *
 * Nothing is allow-listed that dbpilot could show: counters that exist only after an event get
 * that event first (a webhook for an alert without a handler, escalated to the PagerDuty
 * stand-in), the filesystem gauges get `postgres.dataDirectory`, prisma_migrations_failed a
 * database with a `_prisma_migrations` table, the service_health gauges a service whose health
 * URL (a small HTTP server of the test's own) answers, and the RDS snapshot gauge an `aws:` block
 * pointing at the RDS stand-in.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { startService, type Service } from '../../src/server.js';
import { prepareService } from '../../src/service.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { RdsStandin, awsConfigFor, standinEnv } from '../support/rds-standin.js';
import { startPgCluster, type PgCluster } from '../support/pg-cluster.js';
import { startRedis, type RedisNode } from '../support/redis-server.js';
import { find, scrape, type Exposition } from '../support/scrape.js';
import { PRISMA_DDL, pgQuery, serverOf, withDatabase } from '../support/service.js';
import { PROMETHEUS_GENERATED_SERIES, dashboardAndRuleExpressions, metricNamesIn } from './promql.js';

const TOKEN = 'live-metrics-webhook-token-0123456789';
/** A 32-character routing key per team (the stand-in checks the length). */
const TEAM_KEYS = {
  'lead-dba': 'LIVELEADDBA000000000000000000001',
  'em-dba': 'LIVEEMDBA00000000000000000000002',
  'oncall-backend': 'LIVEONCALL0000000000000000000003',
  devops: 'LIVEDEVOPS0000000000000000000004',
} as const;

/**
 * Names that appear in the expressions but that no dbpilot scrape can contain, each with the reason.
 * Everything else must be in the live scrape with at least one sample.
 */
const EXTERNAL: { test: (name: string) => boolean; why: string }[] = [
  {
    test: (n) => PROMETHEUS_GENERATED_SERIES.includes(n),
    why: 'written by Prometheus itself (per target or by rule evaluation), never scraped',
  },
  {
    test: (n) => n.startsWith('kubelet_volume_stats_'),
    why: "the kubelet's PVC metrics, scraped from the kubelet, not from dbpilot",
  },

];

const DB = 'lomash_orders';

async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('every metric the rules and the dashboard query is exposed by a live dbpilot', () => {
  let cluster: PgCluster | undefined;
  let redis: RedisNode | undefined;
  let service: Service | undefined;
  const pd = new PagerDutyStandin();
  const rds = new RdsStandin();
  /** The AWS variables this test sets for the SDK's default chain, and what they were before. */
  const savedEnv = new Map<string, string | undefined>();
  const dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-live-metrics-'));
  const logLines: string[] = [];
  let base = '';
  // A service whose health endpoint answers the runbook's shape, so the service_health gauges exist.
  const health = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ database: 'healthy', redis: 'healthy' }));
  });

  beforeAll(async () => {
    await new Promise<void>((resolve) => health.listen(0, '127.0.0.1', resolve));
    const [c, r] = await Promise.allSettled([startPgCluster({ replicas: 1 }), startRedis()]);
    cluster = c.status === 'fulfilled' ? c.value : undefined;
    redis = r.status === 'fulfilled' ? r.value : undefined;
    if (c.status === 'rejected') throw c.reason;
    if (r.status === 'rejected') throw r.reason;
    await Promise.all([pd.start(), rds.start()]);
    for (const [k, v] of Object.entries(standinEnv())) {
      savedEnv.set(k, process.env[k]);
      process.env[k] = v;
    }

    const primary = cluster!.primary;
    await pgQuery(primary.url(), `CREATE DATABASE "${DB}"`);
    await pgQuery(withDatabase(primary.url(), DB), PRISMA_DDL);
    await pgQuery(
      withDatabase(primary.url(), DB),
      `INSERT INTO _prisma_migrations (id, checksum, finished_at, migration_name, started_at, applied_steps_count)
       VALUES (gen_random_uuid()::text, $1, now(), '20240101000000_init', now(), 1)`,
      ['a'.repeat(64)],
    );

    const config = parseConfig(
      {
        listen: '127.0.0.1:0',
        mode: 'dry-run',
        logLevel: 'info',
        postgres: {
          primary: { url: primary.url() },
          replicas: cluster!.replicas.map((n) => ({ url: n.url() })),
          databases: [DB, 'postgres'],
          dataDirectory: primary.dataDir,
        },
        redis: { url: redis!.url },
        services: [{ name: 'auth-service', healthUrl: `http://127.0.0.1:${(health.address() as AddressInfo).port}/health`, deployment: 'auth-service' }],
        webhook: { token: TOKEN },
        aws: awsConfigFor(rds, { metricRefreshSeconds: 1 }),
        pagerduty: { url: pd.url, routes: { ...TEAM_KEYS }, source: 'dbpilot-live-metrics', timeoutMs: 2000 },
        store: { path: path.join(dir, 'dbpilot.sqlite') },
      },
      {},
    );
    const logger = createLogger('info', { write: (s: string) => void logLines.push(s) });
    service = await startService(config, logger, (runtime) => prepareService(runtime));
    base = `http://127.0.0.1:${service.address.port}`;
  });

  afterAll(async () => {
    await service?.close().catch(() => undefined);
    await Promise.allSettled([cluster?.stop(), redis?.stop(), pd.close(), rds.close(), new Promise((resolve) => health.close(resolve))]);
    for (const [k, v] of savedEnv) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('escalates an alert without a handler to the PagerDuty stand-in (so the event counters exist)', async () => {
    // remediation=redis-sentinel-failover: no runbook handler has that name, so the run is recorded
    // as escalated (counted under handler="unknown", the bounded label for names outside the runbook)
    // and the devops team is paged — the ordinary path that increments both counters.
    const fingerprint = 'feed0000000000a1';
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
        groupKey: '{}:{alertname="RedisDown"}',
        truncatedAlerts: 0,
      }),
    });
    expect(res.status, await res.text()).toBe(202);
    // An alert dbpilot only escalates is paged in its Alertmanager group's page for the team
    // (dbpilot/group/<team>/<hash of groupKey>), not under a key of its own.
    const isGroupPage = (e: { dedupKey: string }) => e.dedupKey.startsWith('dbpilot/group/devops/');
    await until(() => pd.accepted.some(isGroupPage), "the escalation at the PagerDuty stand-in (devops' group page)");
    const event = pd.accepted.find(isGroupPage)!;
    expect(event.action).toBe('trigger');
    expect(event.routingKey).toBe(TEAM_KEYS.devops);
  });

  it('exposes, with samples, every name used by every rule and dashboard expression', async () => {
    const expressions = dashboardAndRuleExpressions();
    expect(expressions.length).toBeGreaterThan(10);
    const usedBy = new Map<string, string[]>();
    for (const e of expressions) for (const n of metricNamesIn(e.expr)) usedBy.set(n, [...(usedBy.get(n) ?? []), e.source]);

    // The delivered escalation is counted once its HTTP answer is in; scrape until it shows.
    let metrics: Exposition | undefined;
    await until(async () => {
      const r = await scrape(base);
      expect(r.status).toBe(200);
      metrics = r.metrics;
      return find(metrics, 'dbpilot_escalations_total', { team: 'devops', outcome: 'delivered' }).length === 1;
    }, 'dbpilot_escalations_total{team="devops",outcome="delivered"} in the scrape');
    const live = metrics!;
    const exposed = new Set(live.samples.map((s) => s.name));

    const missing: string[] = [];
    for (const [name, sources] of [...usedBy].sort(([a], [b]) => a.localeCompare(b))) {
      if (exposed.has(name)) continue;
      if (EXTERNAL.some((x) => x.test(name))) continue;
      missing.push(`${name} (used by ${sources.join('; ')})`);
    }
    expect(missing, `names in rules/dashboard that the live scrape does not expose:\n${missing.join('\n')}`).toEqual([]);

    // The allow-list must not hide what dbpilot does export (a name moving from external to ours).
    const externalButExposed = [...usedBy.keys()].filter((n) => exposed.has(n) && EXTERNAL.some((x) => x.test(n)));
    expect(externalButExposed).toEqual([]);

    // The samples come from the servers this test started, not from somewhere else.
    const P = serverOf(cluster!.primary.url());
    const R = serverOf(cluster!.replicas[0]!.url());
    expect(find(live, 'pg_up', { server: P, role: 'primary' })[0]?.value).toBe(1);
    expect(find(live, 'pg_up', { server: R, role: 'replica' })[0]?.value).toBe(1);
    expect(find(live, 'redis_up')[0]?.value).toBe(1);
    expect(find(live, 'pg_filesystem_size_bytes', { server: P, path: cluster!.primary.dataDir })[0]?.value).toBeGreaterThan(0);
    expect(find(live, 'prisma_migrations_failed', { server: P, datname: DB })[0]?.value).toBe(0);
    expect(find(live, 'dbpilot_remediations_total', { handler: 'unknown', outcome: 'escalated' })[0]?.value).toBe(1);
    expect(find(live, 'service_health_database', { service: 'auth-service', state: 'healthy' })[0]?.value).toBe(1);
    expect(find(live, 'pg_settings_data_checksums', { server: P })[0]?.value).toBe(1);
    expect(logLines.filter((l) => /"msg":"collector failed"/.test(l))).toEqual([]);
  });
});
