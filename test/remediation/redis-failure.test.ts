/**
 * Runbook scenario 5 on a real Redis: each test's own redis-server on a free port (stopped, started
 * again, filled with keys, held at maxclients by the test), the real engine and store, the strict
 * Kubernetes stand-in (the Redis StatefulSet and its pod) and the strict PagerDuty stand-in. When the
 * stand-in records the restart, the test does what the StatefulSet controller would: it starts Redis
 * again (or, for the failing case, does not). Whether FLUSHALL ran is read from Redis's own INFO
 * commandstats, never from dbpilot.
 */
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { commandCalls, judgeService, keyspace, redisFacts } from '../../src/remediation/handlers/redis-failure.js';
import { parseRedisInfo } from '../../src/collectors/redis-info.js';
import type { Mode } from '../../src/modes.js';
import { K8sStandIn } from '../support/k8s-standin.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { freePort } from '../support/ports.js';
import { startRedis, type RedisNode } from '../support/redis-server.js';
import { TEAM_KEYS, freshFingerprint, startRemediation, until, type RemediationHarness } from '../support/remediation.js';

const NS = 'lomash-wood';
const STS = 'redis';
const POD = 'redis-0';
/** A password in dbpilot's Redis URL: it must never reach a page, the audit or a log line. */
const PASSWORD = 'redis-pw-never-shown-9c2e';
/** pid 4194000 is above any pid this machine hands out: the process that left a run is dead. */
const DEAD_OWNER = 'dbpilot-0/4194000/deadbeef';

let dir: string;
const pd = new PagerDutyStandin();
const k8s = new K8sStandIn({ namespaces: [NS], defaultNamespace: NS });
let kubeconfig = '';
/** Health endpoints of two services: one that falls back to the database while Redis is away, one that does not. */
let healthy: http.Server;
let broken: http.Server;
let healthyUrl = '';
let brokenUrl = '';

function listen(handler: http.RequestListener): Promise<[http.Server, string]> {
  const s = http.createServer(handler);
  return new Promise((resolve) => s.listen(0, '127.0.0.1', () => resolve([s, `http://127.0.0.1:${(s.address() as AddressInfo).port}/health`])));
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-redis-failure-'));
  await pd.start();
  await k8s.start();
  kubeconfig = await k8s.writeKubeconfig(dir, { namespace: NS });
  [healthy, healthyUrl] = await listen((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ database: 'healthy', redis: 'unhealthy' })));
  [broken, brokenUrl] = await listen((_req, res) => res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'Redis connection refused' })));
});
afterAll(async () => {
  await pd.close();
  await k8s.close();
  await new Promise((r) => healthy.close(r));
  await new Promise((r) => broken.close(r));
  rmSync(dir, { recursive: true, force: true });
});

let seq = 0;
let h: RemediationHarness | null = null;
let node: RedisNode | null = null;
afterEach(async () => {
  await h?.close();
  h = null;
  await node?.stop();
  node = null;
  pd.reset();
  k8s.clearRequests();
});

/** dbpilot's Redis URL, with a password Redis does not check (it has none), only carried. */
function urlWithPassword(n: RedisNode): string {
  return `redis://:${PASSWORD}@127.0.0.1:${n.port}`;
}

/** One command on a connection of the test's own (closed after), as redis-cli would send it. */
async function redisCmd(n: RedisNode, ...args: (string | number)[]): Promise<unknown> {
  const r = new Redis({ host: '127.0.0.1', port: n.port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  r.on('error', () => undefined);
  try {
    await r.connect();
    return await r.call(String(args[0]), ...args.slice(1).map(String));
  } finally {
    r.disconnect();
  }
}

/** How many FLUSHALLs Redis itself says it ran (INFO commandstats; the line is absent until the first). */
async function flushallCalls(n: RedisNode): Promise<{ present: boolean; calls: number }> {
  const stats = String(await redisCmd(n, 'INFO', 'commandstats'));
  return { present: /^cmdstat_flushall:/m.test(stats), calls: commandCalls(stats, 'flushall') };
}

interface Setup {
  h: RemediationHarness;
  node: RedisNode;
}

async function setUp(o: { mode: Mode; handler?: Record<string, unknown>; flushall?: Record<string, unknown>; services?: { name: string; healthUrl: string }[]; kubernetes?: boolean }): Promise<Setup> {
  seq += 1;
  node = await startRedis();
  k8s.seedStatefulSet({ name: STS, namespace: NS, replicas: 1 });
  k8s.seedPod({
    name: POD,
    namespace: NS,
    labels: { app: STS },
    phase: 'Running',
    ready: false,
    containerStatuses: [{ name: 'redis', ready: false, restartCount: 4, state: { waiting: { reason: 'CrashLoopBackOff' } }, lastState: { terminated: { exitCode: 137, reason: 'OOMKilled' } } }],
  });
  h = await startRemediation({
    mode: o.mode,
    pagerduty: pd,
    config: {
      redis: { url: urlWithPassword(node) },
      ...(o.kubernetes === false ? {} : { kubernetes: { kubeconfig, namespace: NS, redisStatefulSet: STS, lease: { name: `dbpilot-redis-${seq}`, durationSeconds: 15, renewDeadlineSeconds: 10, retryPeriodSeconds: 0.5 } } }),
      services: o.services ?? [{ name: 'order-payment-service', healthUrl: healthyUrl }],
      handlers: {
        'redis-failure': { pingAttempts: 3, pingIntervalMs: 100, connectTimeoutMs: 300, rolloutTimeoutSeconds: 20, pingTimeoutSeconds: 20, serviceTimeoutMs: 1000, ...(o.handler ?? {}) },
        ...(o.flushall ? { 'redis-flushall': o.flushall } : {}),
      },
    },
  });
  await until(() => h!.remediation.leader.isLeader(), 'leadership');
  return { h, node };
}

function alert(alertname: 'RedisDown' | 'RedisRejectedConnections' | 'RedisCacheCorrupted', remediation = 'redis-failure', fingerprint = freshFingerprint()) {
  return {
    alertname,
    labels: { alertname, remediation, team: 'devops', severity: alertname === 'RedisDown' ? 'critical' : 'warning' },
    annotations: { summary: `${alertname} (test)` },
    fingerprint,
    startsAt: new Date().toISOString(),
  };
}

type Details = Record<string, unknown> & { diagnostics?: Record<string, unknown>; tried?: unknown; verified?: unknown; plan?: string[]; left_to_do?: string[]; seen?: string };
function pageOf(alertname: string, fingerprint: string): { routingKey: string; severity: string; details: Details } | undefined {
  const e = [...pd.accepted].reverse().find((x) => x.dedupKey === `dbpilot/${alertname}/${fingerprint}` && (x.event as { event_action: string }).event_action === 'trigger');
  if (!e) return undefined;
  const p = (e.event as { payload?: { severity: string; custom_details: Details } }).payload;
  return { routingKey: e.routingKey, severity: p?.severity ?? '', details: p?.custom_details ?? {} };
}

const restartedAt = () => ((k8s.statefulSet(STS, NS)?.spec as { template: { metadata?: { annotations?: Record<string, string> } } }).template.metadata?.annotations ?? {})['kubectl.kubernetes.io/restartedAt'];
const statefulSetPatches = () => k8s.requests.filter((r) => r.method === 'PATCH' && r.path.includes('/statefulsets/'));

/** The StatefulSet controller's part: once the restart is requested, Redis runs again. */
async function controllerBringsRedisBack(n: RedisNode): Promise<string> {
  await until(() => restartedAt() !== undefined, `the restart of statefulset/${STS}`, 30_000);
  const at = restartedAt()!;
  await n.start();
  return at;
}

/** Every page of scenario 5 carries the diagnostics of runbook steps 1–2, read live. */
function expectDiagnostics(d: Record<string, unknown> | undefined): Record<string, unknown> {
  expect(d, 'the page carries diagnostics').toBeDefined();
  expect(d).toMatchObject({ runbook: 'Scenario 5 — Redis Cache Failure', redis: expect.stringContaining('127.0.0.1:'), ping_now: expect.any(String), commands: expect.any(Array) });
  expect(d!.commands).toContain(`kubectl exec -it ${POD} -n ${NS} -- redis-cli ping`);
  expect(d!.commands).toContain(`kubectl rollout restart statefulset/${STS} -n ${NS}`);
  expect('info_now' in d!).toBe(true);
  return d!;
}

function expectNoSecret(s: Setup): void {
  const audit = JSON.stringify(s.h.store.listRuns({ limit: 100 }).map((r) => ({ ...r, steps: s.h.store.steps(r.id) })));
  expect(audit).not.toContain(PASSWORD);
  expect(JSON.stringify(pd.accepted)).not.toContain(PASSWORD);
  expect(s.h.log.text()).not.toContain(PASSWORD);
}

const steps = (s: Setup, id: string) => s.h.store.steps(id).map((x) => [x.name, x.status]);
const why = (s: Setup, id: string) => JSON.stringify(s.h.store.steps(id).map((x) => [x.name, x.status, x.check, x.error]));

describe('redis-failure (runbook scenario 5) on a real Redis', () => {
  it('RedisDown, auto: PING fails on every retry, the StatefulSet restart is requested (restartedAt), Redis comes back, PING answers: succeeded, devops told with the diagnostics', async () => {
    const s = await setUp({ mode: 'auto' });
    await s.node.stop();
    const a = alert('RedisDown');
    const [run, at] = await Promise.all([s.h.engine.onFiring(a), controllerBringsRedisBack(s.node)]);
    expect(run?.status, `${run?.reason}\n${why(s, run!.id)}`).toBe('succeeded');
    expect(steps(s, run!.id)).toEqual([
      ['restartRedis', 'done'],
      ['waitForRedisRollout', 'done'],
      ['verifyRedisStatus', 'done'],
    ]);
    const rows = s.h.store.steps(run!.id);
    // Exactly what kubectl rollout restart sends: one strategic merge patch of the template annotation.
    expect((rows[0]!.output as { restartedAt: string }).restartedAt).toBe(at);
    expect(at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    const patches = statefulSetPatches();
    expect(patches).toHaveLength(1);
    expect(patches[0]).toMatchObject({ path: `/apis/apps/v1/namespaces/${NS}/statefulsets/${STS}`, contentType: 'application/strategic-merge-patch+json', status: 200 });
    expect(patches[0]!.body).toEqual({ spec: { template: { metadata: { annotations: { 'kubectl.kubernetes.io/restartedAt': at } } } } });
    expect(rows[0]!.command).toBe(`kubectl rollout restart statefulset/${STS} -n ${NS}`);
    expect(rows[2]!.command).toBe(`kubectl exec -it ${POD} -n ${NS} -- redis-cli ping   # expected: PONG`);
    // The precondition saw PING still failing just before the restart.
    const plan = s.h.store.getRun(run!.id)!.plan as { data: { ping: { ok: boolean; error: string | null }[] } };
    expect(plan.data.ping).toHaveLength(3);
    expect(plan.data.ping.every((p) => !p.ok && /connect ECONNREFUSED 127\.0\.0\.1:\d+$/.test(p.error ?? ''))).toBe(true);
    expect((rows[2]!.check as { detail: string }).detail).toMatch(/^Redis answers PING \(PONG\) on a new connection: used_memory /);
    // Redis answers the test too: the check read the live system.
    expect(await redisCmd(s.node, 'PING')).toBe('PONG');
    // Devops is told at low urgency what was done, with the diagnostics (the pod's last termination among them).
    await s.h.settle();
    const told = pageOf('RedisDown', a.fingerprint)!;
    expect(told.routingKey).toBe(TEAM_KEYS.devops);
    expect(told.severity).toBe('info');
    expect(told.details.left_to_do![0]).toContain(`kubectl logs ${POD} -n ${NS} --previous`);
    const d = expectDiagnostics(told.details.diagnostics);
    expect(d.ping_now).toBe('PONG on a new connection');
    expect(d.pod).toMatchObject({ name: POD, containers: { redis: { state: 'waiting', reason: 'CrashLoopBackOff', lastTerminated: { reason: 'OOMKilled', exitCode: 137 } } } });
    expect(d.statefulset).toMatchObject({ statefulset: STS, restarted_at: at });
    expect((d.ping_at_plan as unknown[]).length).toBe(3);
    expect(d.services).toEqual([{ service: 'order-payment-service', ok: true, answered: true, status: 200, database: 'healthy', error: null }]);
    expectNoSecret(s);
  });

  it('Redis not brought back: the check fails and the run escalates to devops with the diagnostics', async () => {
    const s = await setUp({ mode: 'auto', handler: { pingTimeoutSeconds: 1 } });
    await s.node.stop();
    const a = alert('RedisDown');
    const run = await s.h.engine.onFiring(a);
    expect(run?.status, why(s, run!.id)).toBe('failed');
    expect(run!.reason).toMatch(/^check after verifyRedisStatus failed: Redis does not answer PING on a new connection 1 s after the rollout: /);
    expect(restartedAt()).toBeDefined();
    expect(steps(s, run!.id)).toEqual([
      ['restartRedis', 'done'],
      ['waitForRedisRollout', 'done'],
      ['verifyRedisStatus', 'check_failed'],
    ]);
    await s.h.settle();
    const page = pageOf('RedisDown', a.fingerprint)!;
    expect(page.routingKey).toBe(TEAM_KEYS.devops);
    expect(page.severity).toBe('critical');
    expect(String(page.details.verified)).toContain('Redis does not answer PING');
    const d = expectDiagnostics(page.details.diagnostics);
    expect(d.ping_now).toMatch(/^no answer on a new connection: /);
    expect(d.info_now).toMatch(/^not available: /);
    expect(d.pod).toMatchObject({ name: POD, ready: false, restart_count: 4 });
    expectNoSecret(s);
  });

  it('a Redis that answers PING is not restarted, and FLUSHALL is never part of it', async () => {
    const s = await setUp({ mode: 'auto' });
    await redisCmd(s.node, 'SET', 'cache:product:1', 'x');
    const run = await s.h.engine.onFiring(alert('RedisDown'));
    expect(run).toMatchObject({ status: 'succeeded' });
    expect(run!.reason).toMatch(/^nothing to do: Redis answers PING on a new connection \(attempt 1 of 3\): not restarted \(used_memory .* 1 key\(s\)/);
    expect(s.h.store.steps(run!.id)).toEqual([]);
    expect(statefulSetPatches()).toEqual([]);
    expect(restartedAt()).toBeUndefined();
    expect(await flushallCalls(s.node)).toEqual({ present: false, calls: 0 });
    expect(await redisCmd(s.node, 'DBSIZE')).toBe(1);
  });

  it('a Redis that answers while a service fails its health URL is not restarted either: paged with the service named', async () => {
    const s = await setUp({ mode: 'auto', services: [{ name: 'order-payment-service', healthUrl: healthyUrl }, { name: 'product-service', healthUrl: brokenUrl }] });
    const a = alert('RedisDown');
    const run = await s.h.engine.onFiring(a);
    expect(run?.status).toBe('escalated');
    expect(run!.reason).toBe('unsafe to act: Redis answers PING on a new connection (attempt 1 of 3), so it is not restarted, but fallback to database mode is not working for 1 of 2 service(s): product-service (HTTP 500)');
    expect(statefulSetPatches()).toEqual([]);
    await s.h.settle();
    const d = expectDiagnostics(pageOf('RedisDown', a.fingerprint)!.details.diagnostics);
    expect(d.ping_now).toBe('PONG on a new connection');
    expect((d.services as { service: string; error: string | null }[]).map((x) => [x.service, x.error])).toEqual([
      ['order-payment-service', null],
      ['product-service', 'HTTP 500'],
    ]);
  });

  it('resumed after a crash: a restart the dead process recorded is verified on the StatefulSet and not repeated; one it did not record is repeated only because PING still fails', async () => {
    for (const recorded of [true, false]) {
      const s = await setUp({ mode: 'auto' });
      await s.node.stop();
      // What a dbpilot killed inside restartRedis leaves: the run running, the step started, the patch sent.
      const plan = { alertname: 'RedisDown', statefulSet: STS, pod: POD, ping: [{ attempt: 1, ok: false, reply: null, error: 'connect ECONNREFUSED' }], facts: null, services: [], rolloutTimeoutSeconds: 20, pingTimeoutSeconds: 20 };
      const run = s.h.store.createRun({
        handler: 'redis-failure',
        alertname: 'RedisDown',
        fingerprint: freshFingerprint(),
        startsAt: new Date().toISOString(),
        target: 'redis',
        mode: 'auto',
        status: 'running',
        plan: { summary: 'restart statefulset/redis', data: plan, escalateAfter: null },
        labels: { alertname: 'RedisDown', remediation: 'redis-failure', team: 'devops' },
        owner: DEAD_OWNER,
      })!;
      s.h.store.putSteps(run.id, [
        { name: 'restartRedis', command: `kubectl rollout restart statefulset/${STS} -n ${NS}` },
        { name: 'waitForRedisRollout', command: `kubectl rollout status statefulset/${STS} -n ${NS} --timeout=20s` },
        { name: 'verifyRedisStatus', command: `kubectl exec -it ${POD} -n ${NS} -- redis-cli ping   # expected: PONG` },
      ]);
      s.h.store.stepStarted(run.id, 0);
      const sent = await s.h.remediation.kube!.rolloutRestart('statefulset', STS, new Date(Math.floor(Date.now() / 1000) * 1000 - 5000));
      if (recorded) s.h.store.stepOutput(run.id, 0, sent);
      expect(s.h.store.acquireLock('redis', run.id, DEAD_OWNER, () => false)).toBe('acquired');
      // The controller brings Redis back after the restart the resumed run is left with.
      const back = (async () => {
        await until(() => statefulSetPatches().length === (recorded ? 1 : 2), 'the restart(s)', 30_000);
        await s.node.start();
      })();
      await s.h.engine.resume();
      await s.h.engine.idle();
      await back;
      const done = s.h.store.getRun(run.id)!;
      expect(done.status, why(s, run.id)).toBe('succeeded');
      expect(steps(s, run.id)).toEqual([
        ['restartRedis', 'done'],
        ['waitForRedisRollout', 'done'],
        ['verifyRedisStatus', 'done'],
      ]);
      const check = (s.h.store.steps(run.id)[0]!.check as { detail: string }).detail;
      if (recorded) {
        expect(statefulSetPatches()).toHaveLength(1);
        expect(check.startsWith(`statefulset/${STS} has restartedAt ${sent.restartedAt}: `)).toBe(true);
        expect(check).toMatch(/\(verified after restart\)$/);
      } else {
        // Nothing recorded to verify: repeated, its precondition (PING still failing) checked again.
        expect(statefulSetPatches()).toHaveLength(2);
        expect(restartedAt()).not.toBe(sent.restartedAt);
      }
      await s.h.close();
      h = null;
      await s.node.stop();
      node = null;
      k8s.clearRequests();
      pd.reset();
    }
  });

  it('approve: the plan waits with the diagnostics; Redis answering again before the approval stops the restart at its precondition', async () => {
    const s = await setUp({ mode: 'approve' });
    await s.node.stop();
    const a = alert('RedisDown');
    const run = await s.h.engine.onFiring(a);
    expect(run?.status, run?.reason ?? '').toBe('awaiting_approval');
    expect(statefulSetPatches()).toEqual([]);
    await s.h.settle();
    const asked = pageOf('RedisDown', a.fingerprint)!;
    expect(asked.routingKey).toBe(TEAM_KEYS.devops);
    expect(asked.details.plan).toEqual([`kubectl rollout restart statefulset/${STS} -n ${NS}`, `kubectl rollout status statefulset/${STS} -n ${NS} --timeout=20s`, `kubectl exec -it ${POD} -n ${NS} -- redis-cli ping   # expected: PONG`]);
    const d = expectDiagnostics(asked.details.diagnostics);
    expect((d.ping_at_plan as { ok: boolean }[]).map((p) => p.ok)).toEqual([false, false, false]);

    await s.node.start();
    const done = await s.h.engine.approve(run!.id, 'alice');
    expect(done.status).toBe('escalated');
    expect(done.reason).toMatch(/^stopped before restartRedis: Redis answers PING again \(attempt 1\): not restarting it/);
    expect(statefulSetPatches()).toEqual([]);
    expect(restartedAt()).toBeUndefined();
  });

  it('dry-run pages the runbook commands and restarts nothing', async () => {
    const s = await setUp({ mode: 'dry-run' });
    await s.node.stop();
    const a = alert('RedisDown');
    const run = await s.h.engine.onFiring(a);
    expect(run?.status).toBe('dry_run');
    expect(statefulSetPatches()).toEqual([]);
    await s.h.settle();
    const page = pageOf('RedisDown', a.fingerprint)!;
    expect(page.details.plan![0]).toBe(`kubectl rollout restart statefulset/${STS} -n ${NS}`);
    expectDiagnostics(page.details.diagnostics);
  });

  it('a service whose health URL fails while Redis is down is in the page: the restart is done, and the run escalates for it', async () => {
    const nobody = await freePort();
    const s = await setUp({ mode: 'auto', services: [{ name: 'order-payment-service', healthUrl: healthyUrl }, { name: 'product-service', healthUrl: brokenUrl }, { name: 'content-service', healthUrl: `http://127.0.0.1:${nobody}/health` }] });
    await s.node.stop();
    const a = alert('RedisDown');
    const [run] = await Promise.all([s.h.engine.onFiring(a), controllerBringsRedisBack(s.node)]);
    expect(run?.status, why(s, run!.id)).toBe('escalated');
    expect(run!.reason).toMatch(/^completed, but fallback to database mode is not working while Redis is down: product-service \(HTTP 500\), content-service \(service content-service \(127\.0\.0\.1:\d+\): ECONNREFUSED\)$/);
    expect(restartedAt()).toBeDefined();
    await s.h.settle();
    const page = pageOf('RedisDown', a.fingerprint)!;
    const services = expectDiagnostics(page.details.diagnostics).services as { service: string; ok: boolean }[];
    expect(services.map((x) => [x.service, x.ok])).toEqual([
      ['order-payment-service', true],
      ['product-service', false],
      ['content-service', false],
    ]);
  });

  it('no kubernetes: configured: nothing to restart with, escalated with the diagnostics', async () => {
    const s = await setUp({ mode: 'auto', kubernetes: false });
    await s.node.stop();
    const a = alert('RedisDown');
    const run = await s.h.engine.onFiring(a);
    expect(run?.status).toBe('escalated');
    expect(run!.reason).toMatch(/^unsafe to act: Redis does not answer PING on a new connection \(3 attempt\(s\), 100 ms apart; last: .*\); restarting it \(kubectl rollout restart statefulset\/redis\) needs the kubernetes: block$/);
    await s.h.settle();
    const d = expectDiagnostics(pageOf('RedisDown', a.fingerprint)!.details.diagnostics);
    expect(d.pod).toBe('kubernetes: is not configured');
  });

  it('RedisRejectedConnections: Redis at maxclients refuses new connections; dbpilot diagnoses and pages, and restarts only where configured', async () => {
    for (const restartOnRejectedConnections of [false, true]) {
      const s = await setUp({ mode: 'auto', handler: { restartOnRejectedConnections } });
      // dbpilot's own long-lived connection and the test's: both kept; every new connection is refused.
      await s.h.runtime.redis.info();
      const admin = new Redis({ host: '127.0.0.1', port: s.node.port, maxRetriesPerRequest: 0, retryStrategy: () => null });
      admin.on('error', () => undefined);
      await admin.ping();
      let clients = 0;
      // A connection of the test's that is still closing counts for a moment: set it again until a new connection is refused.
      await until(async () => {
        clients = Number(/connected_clients:(\d+)/.exec(await admin.info('clients'))![1]);
        await admin.config('SET', 'maxclients', String(clients));
        return redisCmd(s.node, 'PING').then(() => false, () => true);
      }, 'Redis refusing new connections');
      const a = alert('RedisRejectedConnections');
      const restarted = restartOnRejectedConnections
        ? (async () => {
            await until(() => restartedAt() !== undefined, 'the restart', 30_000);
            // The restarted Redis starts with its configured maxclients.
            await admin.config('SET', 'maxclients', '10000');
          })()
        : Promise.resolve();
      const [run] = await Promise.all([s.h.engine.onFiring(a), restarted]);
      const rejected = Number(/rejected_connections:(\d+)/.exec(await admin.info('stats'))![1]);
      admin.disconnect();
      expect(rejected).toBeGreaterThanOrEqual(3);
      const plan = s.h.store.getRun(run!.id)!.plan as { data: { ping: { ok: boolean; error: string }[]; facts: { maxclients: number; rejected_connections: number } } } | null;
      if (!restartOnRejectedConnections) {
        expect(run?.status).toBe('escalated');
        expect(run!.reason).toMatch(new RegExp(`^unsafe to act: Redis rejects connections: used_memory .*connected_clients ${clients} of maxclients ${clients}, rejected_connections \\d+.*; Redis does not answer PING on a new connection \\(3 attempt\\(s\\), 100 ms apart; last: .*\\); connected_clients ${clients} has reached maxclients ${clients}, so Redis refuses new connections\\. dbpilot diagnoses and pages \\(handlers\\.redis-failure\\.restartOnRejectedConnections is false\\)$`));
        expect(statefulSetPatches()).toEqual([]);
        await s.h.settle();
        const page = pageOf('RedisRejectedConnections', a.fingerprint)!;
        expect(page.routingKey).toBe(TEAM_KEYS.devops);
        // Read on dbpilot's own connection: Redis at maxclients still answers the connections it has.
        const info = expectDiagnostics(page.details.diagnostics).info_now as { maxclients: number; rejected_connections: number; connected_clients: number };
        expect(info.maxclients).toBe(clients);
        expect(info.rejected_connections).toBeGreaterThanOrEqual(3);
        expect(info.rejected_connections).toBeLessThanOrEqual(rejected);
      } else {
        expect(run?.status, why(s, run!.id)).toBe('succeeded');
        expect(plan!.data.ping.map((p) => p.ok)).toEqual([false, false, false]);
        expect(plan!.data.facts).toMatchObject({ maxclients: clients });
        expect(statefulSetPatches()).toHaveLength(1);
      }
      await s.h.close();
      h = null;
      await s.node.stop();
      node = null;
      k8s.clearRequests();
      pd.reset();
    }
  });
});

describe('redis-flushall (runbook scenario 5 step 3): never without approval, only where allowed', () => {
  async function fill(n: RedisNode): Promise<void> {
    for (const k of ['a', 'b', 'c']) await redisCmd(n, 'SET', `cache:${k}`, 'v');
    // A second database, on a connection of its own (SELECT is per connection).
    const r = new Redis({ host: '127.0.0.1', port: n.port, db: 1, maxRetriesPerRequest: 0, retryStrategy: () => null });
    r.on('error', () => undefined);
    await r.set('session:1', 'v');
    await r.set('session:2', 'v');
    r.disconnect();
  }

  it('allowed, global mode auto: waits for approval with the memory and key counts (no FLUSHALL in commandstats); approved, Redis runs it once', async () => {
    const s = await setUp({ mode: 'auto', flushall: { allow: true } });
    await fill(s.node);
    const a = alert('RedisCacheCorrupted', 'redis-flushall');
    const run = await s.h.engine.onFiring(a);
    expect(run?.status, run?.reason ?? '').toBe('awaiting_approval');
    expect(run!.mode).toBe('approve');
    expect(await flushallCalls(s.node)).toEqual({ present: false, calls: 0 });
    expect(await redisCmd(s.node, 'DBSIZE')).toBe(3);
    await s.h.settle();
    const asked = pageOf('RedisCacheCorrupted', a.fingerprint)!;
    expect(asked.routingKey).toBe(TEAM_KEYS.devops);
    expect(asked.details.seen).toMatch(/^FLUSHALL on redis:\/\/:\*\*\*@127\.0\.0\.1:\d+\/?: deletes 5 key\(s\) \(db0 3, db1 2\) using \S+ of no maxmemory \(policy noeviction\)/);
    expect(asked.details.plan).toEqual([`kubectl exec -it ${POD} -n ${NS} -- redis-cli FLUSHALL   # deletes 5 key(s)`]);
    const d = expectDiagnostics(asked.details.diagnostics);
    expect(d.info_at_plan).toMatchObject({ keys: { db0: 3, db1: 2 }, total_keys: 5, used_memory: expect.any(Number), maxmemory: 0 });

    const done = await s.h.engine.approve(run!.id, 'alice');
    expect(done.status, why(s, run!.id)).toBe('succeeded');
    expect(await flushallCalls(s.node)).toEqual({ present: true, calls: 1 });
    expect(await redisCmd(s.node, 'DBSIZE')).toBe(0);
    expect((s.h.store.steps(run!.id)[0]!.check as { detail: string }).detail).toBe('FLUSHALL answered OK; Redis counts 1 FLUSHALL call(s) (0 before); 0 key(s) now');
    expect(s.h.store.getRun(run!.id)!.approvedBy).toBe('alice');
    expectNoSecret(s);
  });

  it('allowed, from the CLI: `remediate redis-flushall` without --yes changes nothing; with --yes (a person at the terminal is the approval) Redis runs it', async () => {
    const s = await setUp({ mode: 'auto', flushall: { allow: true } });
    await fill(s.node);
    const dry = await s.h.engine.runManual('redis-flushall', {}, 'dry-run');
    expect(dry?.status).toBe('dry_run');
    expect(await flushallCalls(s.node)).toEqual({ present: false, calls: 0 });
    const run = await s.h.engine.runManual('redis-flushall', {}, 'manual');
    expect(run?.status, why(s, run!.id)).toBe('succeeded');
    expect(await flushallCalls(s.node)).toEqual({ present: true, calls: 1 });
    expect(await redisCmd(s.node, 'DBSIZE')).toBe(0);
  });

  it('dry-run: the plan is paged, FLUSHALL is not issued', async () => {
    const s = await setUp({ mode: 'dry-run', flushall: { allow: true } });
    await fill(s.node);
    const run = await s.h.engine.onFiring(alert('RedisCacheCorrupted', 'redis-flushall'));
    expect(run?.status).toBe('dry_run');
    expect(await flushallCalls(s.node)).toEqual({ present: false, calls: 0 });
    expect(await redisCmd(s.node, 'DBSIZE')).toBe(3);
  });

  it('not allowed (the default): refused in approve mode and from the CLI with --yes, whatever the approval; FLUSHALL never issued', async () => {
    const s = await setUp({ mode: 'approve' });
    await fill(s.node);
    const a = alert('RedisCacheCorrupted', 'redis-flushall');
    const run = await s.h.engine.onFiring(a);
    expect(run?.status).toBe('escalated');
    expect(run!.reason).toBe('unsafe to act: FLUSHALL (runbook scenario 5 step 3) is refused: it deletes every key of every database, and handlers.redis-flushall.allow is not true in this configuration (environment production)');
    await s.h.settle();
    expectDiagnostics(pageOf('RedisCacheCorrupted', a.fingerprint)!.details.diagnostics);
    // A person at the CLI (`dbpilot remediate redis-flushall --yes`) is refused the same way.
    const manual = await s.h.engine.runManual('redis-flushall', {}, 'manual');
    expect(manual?.status).toBe('escalated');
    expect(manual!.reason).toContain('handlers.redis-flushall.allow is not true');
    expect(await flushallCalls(s.node)).toEqual({ present: false, calls: 0 });
    expect(await redisCmd(s.node, 'DBSIZE')).toBe(3);
  });
});

describe('configuration of scenario 5', () => {
  const configError = (handlers: unknown): ConfigError => {
    try {
      parseConfig({ handlers }, {});
    } catch (err) {
      if (err instanceof ConfigError) return err;
      throw err;
    }
    throw new Error('expected a ConfigError');
  };
  it('defaults: three PINGs, no restart on rejected connections, FLUSHALL not allowed', () => {
    const c = parseConfig({}, {});
    expect(c.handlers['redis-failure']).toMatchObject({ pingAttempts: 3, pingIntervalMs: 1000, connectTimeoutMs: 500, restartOnRejectedConnections: false, checkServices: true, rolloutTimeoutSeconds: 300, pingTimeoutSeconds: 60 });
    expect(c.handlers['redis-flushall']).toMatchObject({ allow: false });
    expect(parseConfig({ handlers: { 'redis-flushall': { mode: 'approve', allow: true } } }, {}).handlers['redis-flushall']).toMatchObject({ mode: 'approve', allow: true });
  });
  it.each([
    ['FLUSHALL in auto mode', { 'redis-flushall': { mode: 'auto', allow: true } }, 'handlers.redis-flushall.mode'],
    ['allow that is not a boolean', { 'redis-flushall': { allow: 'yes' } }, 'handlers.redis-flushall.allow'],
    ['no PING at all', { 'redis-failure': { pingAttempts: 0 } }, 'handlers.redis-failure.pingAttempts'],
    ['a pod name Kubernetes refuses', { 'redis-failure': { pod: 'Redis_0' } }, 'handlers.redis-failure.pod'],
    ['an unknown option', { 'redis-failure': { flushAll: true } }, 'handlers.redis-failure.flushAll'],
    ['restartOnRejectedConnections that is not a boolean', { 'redis-failure': { restartOnRejectedConnections: 'true' } }, 'handlers.redis-failure.restartOnRejectedConnections'],
  ])('refuses %s, naming the field', (_what, handlers, field) => {
    expect(configError(handlers).path).toBe(field);
  });
});

describe("scenario 5's readings (pure)", () => {
  // As Redis 7 writes them (INFO memory, stats, clients, keyspace, commandstats), trimmed.
  const INFO = [
    '# Server', 'redis_version:7.0.15', 'uptime_in_seconds:42', '',
    '# Clients', 'connected_clients:2', 'maxclients:2', 'blocked_clients:1', '',
    '# Memory', 'used_memory:1048576', 'used_memory_human:1.00M', 'maxmemory:2097152', 'maxmemory_human:2.00M', 'maxmemory_policy:allkeys-lru', '',
    '# Stats', 'rejected_connections:7', 'evicted_keys:12', '',
    '# Replication', 'role:master', '',
    '# Keyspace', 'db0:keys=3,expires=1,avg_ttl=0', 'db2:keys=10,expires=0,avg_ttl=0', '',
  ].join('\r\n');
  it('reads the runbook’s fields', () => {
    expect(redisFacts(INFO)).toEqual({
      used_memory: 1048576, used_memory_human: '1.00M', maxmemory: 2097152, maxmemory_human: '2.00M', maxmemory_policy: 'allkeys-lru',
      rejected_connections: 7, connected_clients: 2, maxclients: 2, blocked_clients: 1, evicted_keys: 12,
      keys: { db0: 3, db2: 10 }, total_keys: 13, redis_version: '7.0.15', uptime_in_seconds: 42, role: 'master',
    });
    expect(keyspace(parseRedisInfo('# Keyspace\r\n'))).toEqual({});
    expect(redisFacts('').total_keys).toBe(0);
  });
  it('counts a command in commandstats', () => {
    const stats = '# Commandstats\r\ncmdstat_ping:calls=4,usec=3,usec_per_call=0.75,rejected_calls=0,failed_calls=0\r\ncmdstat_flushall:calls=2,usec=80,usec_per_call=40.00,rejected_calls=0,failed_calls=0\r\n';
    expect(commandCalls(stats, 'flushall')).toBe(2);
    expect(commandCalls(stats, 'FLUSHALL')).toBe(2);
    expect(commandCalls('# Commandstats\r\ncmdstat_ping:calls=4,usec=3\r\n', 'flushall')).toBe(0);
  });
  it.each([
    [{ answered: true, status: 200, database: 'healthy' as const, error: null }, null],
    [{ answered: true, status: 200, database: 'other' as const, error: null }, null],
    [{ answered: true, status: 503, database: 'healthy' as const, error: null }, 'HTTP 503'],
    [{ answered: true, status: 200, database: 'unhealthy' as const, error: null }, 'says its database is unhealthy'],
    [{ answered: false, status: null, database: null, error: 'service s (h:1): ECONNREFUSED' }, 'service s (h:1): ECONNREFUSED'],
  ])('a service answering %j falls back to the database: %s', (probe, problem) => {
    const j = judgeService({ service: 's', seconds: 0, ...probe });
    expect(j.error).toBe(problem);
    expect(j.ok).toBe(problem === null);
  });
});
