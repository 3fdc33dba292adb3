/**
 * Section "webhook" (issue "Remediation engine", benchmark): how fast dbpilot acknowledges
 * Alertmanager, and how soon a handler's first step starts after an alert arrives.
 *
 * dbpilot runs as a child process (`serve`, the compiled build) with its SQLite store on disk and
 * PagerDuty pointed at the strict local stand-in.
 * A. New alerts: every request carries one alert with a new fingerprint and no handler in this
 *    build (the fixture's RedisDown / restart-redis), so each one is a run row written durably
 *    before the 202 plus an escalation through the outbox — the most work an acknowledgement does.
 * B. Repeats: the same firing alert re-sent (what Alertmanager does every repeat_interval), the
 *    dedupe path.
 * C. Receipt → first step: a real long-running query on the bench cluster, a PostgresLongRunningQueries
 *    alert for it, slow-queries in auto mode; the run's created_at (written at receipt) against the
 *    started_at of its first step, read back from the audit API.
 */
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { freePort } from '../test/support/ports.js';
import { PagerDutyStandin } from '../test/support/pagerduty-standin.js';
import { onCleanup } from './cleanup.js';
import { cleanEnv, startChild } from './children.js';
import { dbpilotCommand, type DbpilotRuntime } from './dbpilot-build.js';
import { intOption, type Section, type SectionContext, type SectionResult } from './section.js';
import { fmt, summarize } from './stats.js';

const require = createRequire(import.meta.url);

interface AutocannonResult {
  requests: { average: number; total: number };
  latency: { p50: number; p90: number; p99: number; max: number };
  non2xx: number;
  errors: number;
  timeouts: number;
  duration: number;
  statusCodeStats?: Record<string, { count: number }>;
}
type Autocannon = (opts: Record<string, unknown>) => Promise<AutocannonResult>;
const autocannon = require('autocannon') as Autocannon;

const TOKEN = 'bench-webhook-token-0123456789abcdef';
const KEY = 'b'.repeat(32);
const TARGET_RATE = 2000;
const TARGET_P99_MS = 20;
const TARGET_FIRST_STEP_MS = 50;

function alertBody(labels: Record<string, string>, fingerprint: string, startsAt: string): string {
  return JSON.stringify({
    receiver: 'dbpilot',
    status: 'firing',
    alerts: [
      {
        status: 'firing',
        labels,
        annotations: { summary: `${labels.alertname} (bench)` },
        startsAt,
        endsAt: '0001-01-01T00:00:00Z',
        generatorURL: 'http://127.0.0.1:9090/graph',
        fingerprint,
      },
    ],
    groupLabels: { alertname: labels.alertname },
    commonLabels: labels,
    commonAnnotations: {},
    externalURL: 'http://127.0.0.1:9093',
    version: '4',
    groupKey: `{}:{alertname="${labels.alertname}"}`,
    truncatedAlerts: 0,
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export const webhookSection: Section = {
  name: 'webhook',
  summary: 'Alertmanager webhook: alerts/s and acknowledgement latency, receipt → first handler step',
  options: {
    'webhook-seconds': { type: 'string', default: '10' },
    'webhook-connections': { type: 'string', default: '10' },
    'first-step-samples': { type: 'string', default: '10' },
  },
  help: [
    '--webhook-seconds N      how long each load phase runs (default 10)',
    '--webhook-connections N  concurrent connections (default 10)',
    '--first-step-samples N   alerts timed from receipt to first step (default 10)',
  ],
  async run(ctx: SectionContext): Promise<SectionResult> {
    const seconds = intOption(ctx.values, 'webhook-seconds', 1);
    const connections = intOption(ctx.values, 'webhook-connections', 1);
    const samples = intOption(ctx.values, 'first-step-samples', 1);
    const ds = await ctx.dataset();
    const primaryUrl = ds.cluster.primary.url();
    const server = new URL(primaryUrl);
    const serverLabel = `${server.hostname}:${server.port}`;

    const pd = new PagerDutyStandin();
    await pd.start();
    onCleanup('pagerduty stand-in', () => pd.close());

    // A role of its own, so the slow-queries handler may act on its sessions (superusers are spared).
    const admin = new pg.Client({ connectionString: primaryUrl });
    await admin.connect();
    await admin.query(`DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_app') THEN CREATE ROLE bench_app LOGIN; END IF; END$$`);

    const dir = path.join(ctx.workDir, 'webhook');
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    const port = await freePort();
    const configFile = path.join(dir, 'dbpilot.yaml');
    fs.writeFileSync(
      configFile,
      JSON.stringify({
        listen: `127.0.0.1:${port}`,
        mode: 'dry-run',
        logLevel: 'warn',
        postgres: { primary: { url: primaryUrl }, databases: [...ds.databases], longRunningQuerySeconds: 1 },
        redis: { url: ds.redis.url },
        webhook: { token: TOKEN },
        handlers: { 'slow-queries': { mode: 'auto', graceSeconds: 1, cooldownSeconds: 0, maxAttempts: 1000 } },
        pagerduty: { url: pd.url, routes: { 'lead-dba': KEY, 'em-dba': KEY, 'oncall-backend': KEY, devops: KEY } },
        store: { path: path.join(dir, 'dbpilot.sqlite') },
      }),
    );
    const dbp = dbpilotCommand(ctx.root, ctx.workDir, (ctx.values['dbpilot-runtime'] as DbpilotRuntime | undefined) ?? 'dist', ctx.log);
    if (dbp.note) ctx.log(dbp.note);
    const child = await startChild(
      { name: 'dbpilot-webhook', cmd: dbp.cmd, args: [...dbp.args.slice(0, -1), '--config', configFile, 'serve'], env: cleanEnv({}), port, cwd: ctx.root },
      path.join(ctx.workDir, 'logs'),
    );
    const base = `http://127.0.0.1:${port}`;
    const headers = { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` };

    try {
      // A. new alerts, each a durable run + an escalation
      let n = 0;
      const startsAt = new Date().toISOString();
      const redisLabels = { alertname: 'RedisDown', remediation: 'restart-redis', severity: 'critical', service: 'redis', job: 'redis', env: 'bench', instance: '127.0.0.1:9121' };
      ctx.log(`webhook A: ${seconds} s of new alerts over ${connections} connections…`);
      const fresh = await autocannon({
        url: `${base}/alertmanager/webhook`,
        connections,
        duration: seconds,
        requests: [
          {
            method: 'POST',
            path: '/alertmanager/webhook',
            headers,
            setupRequest: (req: Record<string, unknown>) => ({ ...req, body: alertBody(redisLabels, (++n).toString(16).padStart(16, '0'), startsAt) }),
          },
        ],
      });
      // B. repeats of one alert: the dedupe path
      ctx.log(`webhook B: ${seconds} s of repeats of one firing alert…`);
      const repeatBody = alertBody(redisLabels, 'ffffffffffffffff', startsAt);
      const repeats = await autocannon({ url: `${base}/alertmanager/webhook`, connections, duration: seconds, method: 'POST', headers, body: repeatBody });

      // Let the outbox drain so phase C is not measured behind thousands of pages.
      const drainDeadline = Date.now() + 120_000;
      while (Date.now() < drainDeadline) {
        const m = await (await fetch(`${base}/metrics`)).text();
        const pending = Number(/^dbpilot_escalation_outbox_pending (\S+)/m.exec(m)?.[1] ?? 'NaN');
        if (pending === 0) break;
        await sleep(200);
      }

      // C. receipt → first step, on a real long-running query
      ctx.log(`webhook C: ${samples} slow-queries alerts timed from receipt to first step…`);
      const firstStepMs: number[] = [];
      const ackMs: number[] = [];
      const db = ds.databases[0]!;
      for (let i = 0; i < samples; i++) {
        const u = new URL(ds.cluster.primary.url(db));
        u.username = 'bench_app';
        const client = new pg.Client({ connectionString: u.toString() });
        client.on('error', () => undefined);
        await client.connect();
        const done = client.query('SELECT pg_sleep(30)').catch(() => undefined);
        await sleep(1200);
        const fingerprint = `c${Date.now().toString(16)}${i}`;
        const t0 = performance.now();
        const res = await fetch(`${base}/alertmanager/webhook`, {
          method: 'POST',
          headers,
          body: alertBody({ alertname: 'PostgresLongRunningQueries', remediation: 'slow-queries', team: 'oncall-backend', severity: 'warning', server: serverLabel, datname: db }, fingerprint, new Date().toISOString()),
        });
        ackMs.push(performance.now() - t0);
        if (res.status !== 202) throw new Error(`webhook answered ${res.status}: ${await res.text()}`);
        let measured: number | null = null;
        const deadline = Date.now() + 15_000;
        while (measured === null && Date.now() < deadline) {
          const list = (await (await fetch(`${base}/api/remediations?fingerprint=${fingerprint}`, { headers })).json()) as { runs: { id: string }[] };
          const id = list.runs[0]?.id;
          if (id) {
            const run = (await (await fetch(`${base}/api/remediations/${id}`, { headers })).json()) as { createdAt: string; steps: { startedAt: string | null }[] };
            const started = run.steps[0]?.startedAt;
            if (started) measured = Date.parse(started) - Date.parse(run.createdAt);
          }
          if (measured === null) await sleep(20);
        }
        await done;
        await client.end().catch(() => undefined);
        if (measured === null) throw new Error(`run for ${fingerprint} did not start its first step`);
        firstStepMs.push(measured);
      }

      const first = summarize(firstStepMs);
      const ack = summarize(ackMs);
      const rate = fresh.requests.average;
      process.stdout.write(
        [
          '',
          `Webhook (dbpilot ${dbp.runtime}, ${connections} connections, ${seconds} s per phase, SQLite store on disk, synchronous=FULL):`,
          `  A new alerts:  ${fmt(rate, 0)} alerts/s, latency p50 ${fmt(fresh.latency.p50, 1)} ms, p90 ${fmt(fresh.latency.p90, 1)} ms, p99 ${fmt(fresh.latency.p99, 1)} ms, max ${fmt(fresh.latency.max, 1)} ms; non-2xx ${fresh.non2xx}, errors ${fresh.errors}`,
          `  B repeats:     ${fmt(repeats.requests.average, 0)} alerts/s, latency p50 ${fmt(repeats.latency.p50, 1)} ms, p99 ${fmt(repeats.latency.p99, 1)} ms; non-2xx ${repeats.non2xx}, errors ${repeats.errors}`,
          `  C receipt → first step (slow-queries, auto): p50 ${fmt(first.p50, 1)} ms, max ${fmt(first.max, 1)} ms over ${samples}; acknowledgement p50 ${fmt(ack.p50, 1)} ms`,
          `  PagerDuty stand-in accepted ${pd.accepted.length} events`,
          '',
        ].join('\n'),
      );
      return {
        figures: { fresh, repeats, firstStepMs: first, ackMs: ack, pagesAccepted: pd.accepted.length },
        targets: [
          { name: 'new alerts / s', measured: fmt(rate, 0), target: `≥ ${TARGET_RATE}`, pass: rate >= TARGET_RATE && fresh.non2xx === 0 && fresh.errors === 0 },
          { name: 'ack latency p99 (new alerts)', measured: `${fmt(fresh.latency.p99, 1)} ms`, target: `≤ ${TARGET_P99_MS} ms`, pass: fresh.latency.p99 <= TARGET_P99_MS },
          { name: 'receipt → first step (max)', measured: `${fmt(first.max, 1)} ms`, target: `≤ ${TARGET_FIRST_STEP_MS} ms`, pass: first.max <= TARGET_FIRST_STEP_MS },
        ],
      };
    } finally {
      await child.stop();
      await admin.end();
    }
  },
};
