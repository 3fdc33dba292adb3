/**
 * Runbook scenario 1 on real servers: a PostgreSQL primary with a real streaming replica of this
 * file's own (never the suite's shared cluster), the strict Kubernetes stand-in (pods with role labels,
 * the services' secrets, eight deployments whose rollouts complete), the strict PagerDuty stand-in, and
 * a small service that reads its DATABASE_URL from the stand-in's Secret and answers its health URL
 * by querying that database — so "the services point at the new primary" is checked for real.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { chooseReplica, repointUrl, urlHostPort } from '../../src/remediation/handlers/primary-failover.js';
import { K8sStandIn } from '../support/k8s-standin.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { startPgCluster, type PgCluster } from '../support/pg-cluster.js';
import { TEAM_KEYS, freshFingerprint, startRemediation, until, type RemediationHarness } from '../support/remediation.js';
import { parseExposition, find } from '../support/scrape.js';

const NS = 'lomash-wood';
const DEPLOYMENTS = ['auth-service', 'product-service', 'order-payment-service', 'appointment-service', 'content-service', 'customer-service', 'notification-service', 'analytics-service'];

let dir: string;
const pd = new PagerDutyStandin();
let k8s: K8sStandIn;
let kubeconfig: string;
let cluster: PgCluster | null = null;
let h: RemediationHarness | null = null;
let service: http.Server;
let serviceUrl: string;

/** A service: its health URL queries the database its Secret's DATABASE_URL names, as a Prisma service would. */
function startService(): Promise<void> {
  service = http.createServer((_req, res) => {
    void (async () => {
      const url = k8s.secretValue('lomash-wood-secrets', 'DATABASE_URL', NS);
      const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000, query_timeout: 1000 });
      c.on('error', () => undefined);
      try {
        await c.connect();
        await c.query('CREATE TABLE IF NOT EXISTS service_writes (at timestamptz DEFAULT now()); INSERT INTO service_writes DEFAULT VALUES');
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ database: 'healthy' }));
      } catch {
        res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ database: 'unhealthy' }));
      } finally {
        await c.end().catch(() => undefined);
      }
    })();
  });
  return new Promise((r) => service.listen(0, '127.0.0.1', () => r()));
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-failover-'));
  await pd.start();
  await startService();
  serviceUrl = `http://127.0.0.1:${(service.address() as AddressInfo).port}/health`;
});
afterAll(async () => {
  await pd.close();
  await new Promise((r) => service.close(r));
  rmSync(dir, { recursive: true, force: true });
});

let seq = 0;
/** A fresh cluster, stand-in and dbpilot for each test: a failover cannot be undone. */
async function setUp(over: { config?: Record<string, unknown>; services?: boolean } = {}): Promise<{ cluster: PgCluster; h: RemediationHarness; primary: string; replica: string }> {
  seq += 1;
  cluster = await startPgCluster({ replicas: 1 });
  k8s = new K8sStandIn({ namespaces: [NS] });
  await k8s.start();
  kubeconfig = await k8s.writeKubeconfig(dir, { namespace: NS, fileName: `kubeconfig-${seq}` });
  const primary = `127.0.0.1:${cluster.primary.port}`;
  const replica = `127.0.0.1:${cluster.replicas[0]!.port}`;
  k8s.seedPod({ name: 'postgres-primary-0', namespace: NS, labels: { app: 'postgres', role: 'primary' }, podIP: '10.0.0.5' });
  k8s.seedPod({ name: 'postgres-replica-0', namespace: NS, labels: { app: 'postgres', role: 'replica' }, podIP: '10.0.0.6' });
  k8s.seedSecret({
    name: 'lomash-wood-secrets',
    namespace: NS,
    data: { DATABASE_URL: `postgresql://postgres@${primary}/postgres?schema=public&connection_limit=5`, JWT_SECRET: 'not-touched' },
  });
  k8s.seedSecret({ name: 'orders-secrets', namespace: NS, data: { ORDERS_DATABASE_URL: `postgres://orders:s3cr%40t@${primary}/lomash_orders?sslmode=disable` } });
  for (const d of DEPLOYMENTS) k8s.seedDeployment({ name: d, namespace: NS, replicas: 2 });
  h = await startRemediation({
    pagerduty: pd,
    config: {
      postgres: { primary: { url: cluster.primary.url(), pod: 'postgres-primary-0' }, replicas: [{ url: cluster.replicas[0]!.url(), pod: 'postgres-replica-0' }] },
      kubernetes: {
        kubeconfig,
        namespace: NS,
        secrets: [
          { name: 'lomash-wood-secrets', key: 'DATABASE_URL' },
          { name: 'orders-secrets', key: 'ORDERS_DATABASE_URL' },
        ],
        deployments: DEPLOYMENTS,
        lease: { name: `dbpilot-failover-${seq}`, durationSeconds: 15, renewDeadlineSeconds: 10, retryPeriodSeconds: 0.5 },
      },
      failover: { confirmProbes: 3, confirmIntervalMs: 100, rolloutTimeoutSeconds: 30, healthTimeoutSeconds: 30 },
      services: over.services === false ? [] : [{ name: 'auth-service', healthUrl: serviceUrl }],
      handlers: { 'primary-failover': { mode: 'auto' } },
      ...(over.config ?? {}),
    },
  });
  await until(() => h!.remediation.leader.isLeader(), 'leadership');
  return { cluster, h, primary, replica };
}

afterEach(async () => {
  await h?.close();
  h = null;
  await cluster?.stop();
  cluster = null;
  await k8s?.close();
  pd.reset();
});

function primaryDown(server: string, fingerprint = freshFingerprint()) {
  return {
    alertname: 'PostgresPrimaryDown',
    labels: { alertname: 'PostgresPrimaryDown', remediation: 'primary-failover', team: 'lead-dba', severity: 'critical', server },
    annotations: { summary: `primary ${server} down` },
    fingerprint,
    startsAt: new Date().toISOString(),
  };
}

async function inRecovery(url: string): Promise<boolean> {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
  await c.connect();
  try {
    return (await c.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0]!.r;
  } finally {
    await c.end();
  }
}

const label = (pod: string) => ((k8s.pod(pod, NS)?.metadata as { labels?: Record<string, string> }).labels ?? {}).role;
const restartedAt = (d: string) => ((k8s.deployment(d, NS)?.spec as { template: { metadata?: { annotations?: Record<string, string> } } }).template.metadata?.annotations ?? {})['kubectl.kubernetes.io/restartedAt'];

describe('primary-failover (runbook scenario 1) on a real primary and streaming replica', () => {
  it('promotes the replica, fences and labels, repoints only host:port of every DATABASE_URL, restarts the eight services, verifies them, and tells lead-dba', async () => {
    const { cluster: c, h, primary, replica } = await setUp();
    await c.primary.kill();
    const a = primaryDown(primary);
    const run = await h.engine.onFiring(a);
    expect(run?.status, `${run?.reason}\n${JSON.stringify(h.store.steps(run!.id).map((s) => [s.name, s.status, s.check, s.error]))}`).toBe('succeeded');
    expect(h.store.steps(run!.id).map((s) => [s.name, s.status])).toEqual([
      ['recordIntent', 'done'],
      ['fenceOldPrimary', 'done'],
      ['promoteReplica', 'done'],
      ['labelNewPrimary', 'done'],
      ['repointSecrets', 'done'],
      ['restartServices', 'done'],
      ['waitForRollouts', 'done'],
      ['verifyServices', 'done'],
      ['completeIntent', 'done'],
    ]);
    // The replica accepts writes.
    expect(await inRecovery(c.replicas[0]!.url())).toBe(false);
    const w = new pg.Client({ connectionString: c.replicas[0]!.url() });
    await w.connect();
    await w.query('CREATE TABLE after_failover (x int); INSERT INTO after_failover VALUES (1)');
    await w.end();
    // Both labels.
    expect(label('postgres-primary-0')).toBe('replica');
    expect(label('postgres-replica-0')).toBe('primary');
    // Only host:port changed; every other part of the URLs, and every other key, untouched.
    expect(k8s.secretValue('lomash-wood-secrets', 'DATABASE_URL', NS)).toBe(`postgresql://postgres@${replica}/postgres?schema=public&connection_limit=5`);
    expect(k8s.secretValue('orders-secrets', 'ORDERS_DATABASE_URL', NS)).toBe(`postgres://orders:s3cr%40t@${replica}/lomash_orders?sslmode=disable`);
    expect(k8s.secretValue('lomash-wood-secrets', 'JWT_SECRET', NS)).toBe('not-touched');
    // Eight restarts, one restartedAt, all rolled out.
    const stamps = new Set(DEPLOYMENTS.map(restartedAt));
    expect(stamps.size).toBe(1);
    expect([...stamps][0]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    const rollouts = (h.store.steps(run!.id).find((s) => s.name === 'waitForRollouts')!.check as { data: { rollouts: { done: boolean }[] } }).data.rollouts;
    expect(rollouts.map((r) => r.done)).toEqual(DEPLOYMENTS.map(() => true));
    // The intent is done, in the ConfigMap beside the Lease.
    const cm = k8s.configMap(`dbpilot-failover-${seq}-failover`, NS) as { data: { intent: string } } | undefined;
    expect(JSON.parse(cm!.data.intent)).toMatchObject({ kind: 'failover', oldPrimary: primary, targetPrimary: replica, phase: 'done', run: run!.id });
    // lead-dba is told, at low urgency, with the steps' times and what is left to do.
    await h.settle();
    const page = pd.accepted.find((e) => e.dedupKey === `dbpilot/PostgresPrimaryDown/${a.fingerprint}`)!;
    expect(page.routingKey).toBe(TEAM_KEYS['lead-dba']);
    const p = page.event.payload as { severity: string; custom_details: { tried: string[]; left_to_do: string[] } };
    expect(p.severity).toBe('info');
    expect(p.custom_details.tried.find((t) => t.startsWith('promoteReplica'))).toMatch(/^promoteReplica: done in \d+ ms/);
    expect(p.custom_details.left_to_do[0]).toContain('dbpilot plan rebuild-replica');
    // The exporter shows the new topology: the promoted replica is the primary, the old one fenced.
    const exp = parseExposition((await h.request({ method: 'GET', url: '/metrics' })).body);
    expect(find(exp, 'pg_up', { server: replica })).toMatchObject([{ labels: expect.objectContaining({ role: 'primary' }), value: 1 }]);
    expect(find(exp, 'pg_up', { server: primary })).toMatchObject([{ labels: expect.objectContaining({ role: 'fenced' }), value: 0 }]);
  });

  it('a false alarm changes nothing: the primary answers one of the probes', async () => {
    const { h, primary } = await setUp();
    const run = await h.engine.onFiring(primaryDown(primary));
    expect(run).toMatchObject({ status: 'succeeded' });
    expect(run!.reason).toMatch(/^nothing to do: false alarm: 127\.0\.0\.1:\d+ answers and accepts writes$/);
    expect(h.store.steps(run!.id)).toEqual([]);
    expect(label('postgres-primary-0')).toBe('primary');
    expect(urlHostPort(k8s.secretValue('lomash-wood-secrets', 'DATABASE_URL', NS)!)).toBe(primary);
    expect(k8s.requests.filter((r) => r.method !== 'GET' && !r.path.includes('/leases'))).toEqual([]);
  });

  it('never promotes a replica beyond the lag bound: replay paused, writes on the primary before it dies → no promotion, lead-dba paged with the numbers', async () => {
    const { cluster: c, h, primary } = await setUp({ config: { failover: { maxLagBytes: 64 * 1024, confirmIntervalMs: 100 } } });
    const r = new pg.Client({ connectionString: c.replicas[0]!.url() });
    await r.connect();
    await r.query('SELECT pg_wal_replay_pause()');
    await r.end();
    const p = new pg.Client({ connectionString: c.primary.url() });
    await p.connect();
    await p.query('CREATE TABLE lagging AS SELECT g, repeat(md5(g::text), 10) AS pad FROM generate_series(1, 20000) g');
    await p.end();
    // dbpilot saw the primary's position before it died (the exporter's scrape).
    await h.runtime.topology.observe(0);
    await c.primary.kill();
    const a = primaryDown(primary);
    const run = await h.engine.onFiring(a);
    expect(run?.status).toBe('escalated');
    expect(run!.reason).toMatch(/^unsafe to act: no replica may be promoted \(bound 65536 bytes behind [0-9A-F]+\/[0-9A-F]+\): 127\.0\.0\.1:\d+ \d+ bytes behind \(bound 65536\)$/);
    expect(await inRecovery(c.replicas[0]!.url())).toBe(true);
    expect(label('postgres-primary-0')).toBe('primary');
    await h.settle();
    const page = pd.accepted.find((e) => e.dedupKey === `dbpilot/PostgresPrimaryDown/${a.fingerprint}`)!;
    expect(page.routingKey).toBe(TEAM_KEYS['lead-dba']);
    expect(JSON.stringify(page.event)).toMatch(/bytes behind \(bound 65536\)/);
  });

  it('the same alert twice, and concurrently, promotes once', async () => {
    const { cluster: c, h, primary } = await setUp({ services: false });
    await c.primary.kill();
    const a = primaryDown(primary);
    const b = primaryDown(primary); // another alert occurrence at the same time (another Prometheus, say)
    const [r1, r2, r3] = await Promise.all([h.engine.onFiring(a), h.engine.onFiring(a), h.engine.onFiring(b)]);
    const runs = [r1, r2, r3].filter((x) => x !== null);
    expect(runs.filter((x) => x!.status === 'succeeded')).toHaveLength(1);
    const promotions = h.store.listRuns({ handler: 'primary-failover' }).flatMap((r) => h.store.steps(r.id).filter((s) => s.name === 'promoteReplica' && s.attempts > 0));
    expect(promotions).toHaveLength(1);
    // A late repeat after the failover sees the new topology and promotes nothing.
    const late = await h.engine.onFiring(primaryDown(primary));
    expect(late?.status).toBe('succeeded');
    expect(late!.reason).toMatch(/^nothing to do: 127\.0\.0\.1:\d+ is primary since the failover from 127\.0\.0\.1:\d+/);
    expect(h.store.steps(late!.id)).toEqual([]);
  });

  it('a secret edited while dbpilot repoints it is not overwritten: the JSON-patch test fails and dbpilot escalates', async () => {
    const { cluster: c, h, primary } = await setUp({ services: false });
    const held = k8s.delayNext(1, 30_000, { method: 'PATCH', resource: 'secrets', name: 'lomash-wood-secrets' });
    await c.primary.kill();
    const a = primaryDown(primary);
    const running = h.engine.onFiring(a);
    await held.arrived;
    const edited = `postgresql://postgres@edited-by-a-human:5432/postgres`;
    k8s.seedSecret({ name: 'lomash-wood-secrets', namespace: NS, data: { DATABASE_URL: edited, JWT_SECRET: 'not-touched' } });
    held.release();
    const run = await running;
    expect(run?.status).toBe('failed');
    expect(run!.reason).toContain('secret lomash-wood-secrets key DATABASE_URL changed while dbpilot repointed it: not overwritten');
    expect(k8s.secretValue('lomash-wood-secrets', 'DATABASE_URL', NS)).toBe(edited);
    await h.settle();
    expect(pd.accepted.some((e) => e.dedupKey === `dbpilot/PostgresPrimaryDown/${a.fingerprint}` && e.routingKey === TEAM_KEYS['lead-dba'])).toBe(true);
  });

  it('the old primary back before the promotion: the run stops, takes the fence label back, aborts its intent, and escalates', async () => {
    const { cluster: c, h, primary } = await setUp({ services: false });
    const held = k8s.delayNext(1, 30_000, { method: 'PATCH', resource: 'pods', name: 'postgres-primary-0' });
    await c.primary.kill();
    const running = h.engine.onFiring(primaryDown(primary));
    await held.arrived; // fencing: the primary comes back meanwhile
    await c.primary.start();
    held.release();
    const run = await running;
    expect(run?.status).toBe('escalated');
    expect(run!.reason).toMatch(/^stopped before promoteReplica: the old primary 127\.0\.0\.1:\d+ answered again \(read-write\); not promoting; undone: fenceOldPrimary, recordIntent$/);
    expect(label('postgres-primary-0')).toBe('primary');
    expect(await inRecovery(c.replicas[0]!.url())).toBe(true);
    const cm = k8s.configMap(`dbpilot-failover-${seq}-failover`, NS) as { data: { intent: string } };
    expect(JSON.parse(cm.data.intent)).toMatchObject({ phase: 'aborted' });
    expect(h.store.steps(run!.id).map((s) => [s.name, s.status])).toEqual([
      ['recordIntent', 'done'],
      ['fenceOldPrimary', 'done'],
      ['promoteReplica', 'check_failed'],
      ['labelNewPrimary', 'planned'],
      ['repointSecrets', 'planned'],
      ['restartServices', 'planned'],
      ['waitForRollouts', 'planned'],
      ['completeIntent', 'planned'],
      ['undo:fenceOldPrimary', 'done'],
      ['undo:recordIntent', 'done'],
    ]);
  });
});

describe('primary-failover pure parts', () => {
  it('rewrites only host and port of a URL', () => {
    expect(repointUrl('postgresql://u:p%40ss@old:5432/db?schema=public&x=1', 'new.host:6543')).toBe('postgresql://u:p%40ss@new.host:6543/db?schema=public&x=1');
    expect(repointUrl('postgres://u@[fd00::1]:5432/db', '[fd00::2]:5433')).toBe('postgres://u@[fd00::2]:5433/db');
    expect(urlHostPort('postgresql://u:secret@h:5433/db')).toBe('h:5433');
    expect(urlHostPort('postgresql://u@h/db')).toBe('h:5432');
    expect(urlHostPort('mysql://u@h/db')).toBeNull();
  });

  it('chooses the most advanced replica within the bound; none when all are behind or down', () => {
    const m = (server: string, replay: string | null, extra: Record<string, unknown> = {}) => ({ server, up: true, inRecovery: true, lsn: replay, replayLsn: replay, receiverStatus: 'streaming', ...extra });
    const members = [m('old', null, { up: false, inRecovery: null }), m('a', '0/3000000'), m('b', '0/3000100'), m('c', '0/1000000')];
    const r = chooseReplica(members, 'old', 0x3000100n, 1024);
    expect(r.chosen).toBe('b');
    expect(r.candidates.map((c) => [c.server, c.eligible])).toEqual([
      ['a', true],
      ['b', true],
      ['c', false],
    ]);
    expect(chooseReplica(members, 'old', 0x9000000n, 1024).chosen).toBeNull();
    expect(chooseReplica([m('old', null, { up: false }), m('a', '0/3000000', { up: false })], 'old', 0x3000000n, 1024).candidates[0]!.why).toBe('not reachable');
  });
});
