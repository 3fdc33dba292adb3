/**
 * The remediation engine at process level: real `node bin/dbpilot.js serve` children, each with a
 * YAML configuration in a temp dir, driven over HTTP the way Alertmanager drives them, and ended the
 * way processes end in production — SIGTERM (graceful) and SIGKILL (only the store survives).
 *
 * 1. PagerDuty down the whole time, then back: every page and every resolve delivered exactly once,
 *    also across a dbpilot restart (the escalation outbox is durable).
 * 2. kill -9 in the middle of a slow-queries run: the restarted process resumes it, repeats no step,
 *    and verifies the in-flight step instead of re-running it.
 * 3. Two processes on one Lease (Kubernetes stand-in): only the leader acts; the other answers 503
 *    DBPILOT_NOT_LEADER and takes over when the leader stops.
 */
import { groupDedupKey } from '../../src/remediation/pages.js';
import type { Team } from '../../src/remediation/escalation.js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import {
  DbpilotProcess,
  TEST_ROUTES,
  TEST_TEAMS,
  TEST_WEBHOOK_TOKEN,
  backend,
  createStubbornFunction,
  fingerprint,
  processConfig,
  startStubbornQuery,
  until,
  webhookPayload,
  writeConfig,
  type RunJson,
  type StubbornQuery,
} from '../support/dbpilot-process.js';
import { K8sStandIn, type RecordedRequest } from '../support/k8s-standin.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { freePort } from '../support/ports.js';
import { createTempDatabase, pgQuery, serverOf, type TempDatabase } from '../support/service.js';


let dir: string;
let pd: PagerDutyStandin;
const procs: DbpilotProcess[] = [];
/** Spawn-to-ready time of every process, printed once at the end. */
const startTimes: string[] = [];

async function start(name: string, configFile: string): Promise<DbpilotProcess> {
  const p = await DbpilotProcess.start({ name, configFile });
  procs.push(p);
  startTimes.push(`${name} ${p.readyMs} ms`);
  return p;
}

function configDoc(port: number, store: string, over: Record<string, unknown> = {}): Record<string, unknown> {
  return processConfig({ port, store, pagerdutyUrl: pd.url, pgPrimaryUrl: inject('pgPrimaryUrl'), redisUrl: inject('redisUrl') }, over);
}

async function runsOf(p: DbpilotProcess, query = ''): Promise<RunJson[]> {
  const res = await p.request<{ runs: RunJson[] }>('GET', `/api/remediations${query}`);
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  return res.body.runs;
}

async function runOf(p: DbpilotProcess, id: string): Promise<RunJson> {
  const res = await p.request<RunJson>('GET', `/api/remediations/${id}`);
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  return res.body;
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'dbpilot-process-'));
  pd = new PagerDutyStandin();
  await pd.start();
});

afterEach(async () => {
  // Whatever a failed test left running: a process of one test must not serve the next one.
  await Promise.all(procs.splice(0).map((p) => p.kill9().catch(() => undefined)));
  await pd.up();
  pd.reset();
});

afterAll(async () => {
  console.info(`[process.test] dbpilot spawn to ready: ${startTimes.join(', ')}`);
  await pd?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('dbpilot serve as a process', () => {
  it('PagerDuty down the whole time and then back: every page and every resolve is delivered exactly once, across a restart', async () => {
    const N = 5;
    await pd.down({ mode: 'refuse' });
    const port = await freePort();
    const configFile = await writeConfig(dir, 'outbox', configDoc(port, path.join(dir, 'outbox.sqlite')));
    const first = await start('dbpilot-outbox-1', configFile);

    // N distinct alerts no handler can act on (remediation names a handler this build does not have),
    // so each one is an escalation; one per team and a second for devops.
    const alerts = Array.from({ length: N }, (_, i) => ({
      labels: {
        alertname: 'RedisDown',
        remediation: 'restart-redis',
        severity: 'critical',
        team: TEST_TEAMS[i % TEST_TEAMS.length]!,
        instance: `redis-${i}.test:6379`,
      },
      fingerprint: fingerprint(),
      startsAt: new Date(Date.now() - 60_000).toISOString(),
    }));
    // Each alert in an Alertmanager group of its own (grouped by instance): each is a page of its own.
    const groupOf = (a: (typeof alerts)[number]) => `{}:{alertname="RedisDown", instance="${a.labels.instance}"}`;
    const keys = alerts.map((a) => groupDedupKey(a.labels.team as Team, groupOf(a)));
    for (const a of alerts) {
      const res = await first.postWebhook(webhookPayload('firing', [a], groupOf(a)));
      expect(res.status, JSON.stringify(res.body)).toBe(202);
    }

    // Every alert became an escalated run and a page waiting in the outbox; delivery is being retried.
    await until(async () => ((await runsOf(first, '?status=escalated')).length === N ? true : undefined), 15_000, `${N} escalated runs`);
    await until(async () => ((await first.metric('dbpilot_escalation_outbox_pending')) === N ? true : undefined), 10_000, `${N} pending pages`);
    await until(
      async () => {
        const e = await first.metrics();
        const retried = e.samples.filter((s) => s.name === 'dbpilot_escalations_total' && s.labels.outcome === 'retried');
        return retried.reduce((n, s) => n + s.value, 0) >= N ? true : undefined;
      },
      10_000,
      'delivery attempts against the dead PagerDuty',
    );
    expect(pd.requests).toHaveLength(0);

    // SIGTERM: a graceful stop leaves the undelivered pages in the store.
    const exit = await first.stop();
    expect(exit, first.tail()).toEqual({ code: 0, signal: null });
    expect(first.entries().some((e) => e.msg === 'escalation delivered')).toBe(false);

    // A new process on the same store still has them, while PagerDuty is still down.
    const second = await start('dbpilot-outbox-2', configFile);
    expect(await second.metric('dbpilot_escalation_outbox_pending')).toBe(N);

    await pd.up();
    await until(async () => ((await second.metric('dbpilot_escalation_outbox_pending')) === 0 ? true : undefined), 10_000, 'the outbox to drain');
    for (const [i, key] of keys.entries()) {
      expect(pd.acceptedCount(key, 'trigger'), key).toBe(1);
      const ev = pd.accepted.find((e) => e.dedupKey === key)!;
      expect(ev.routingKey).toBe(TEST_ROUTES[alerts[i]!.labels.team]);
    }
    expect(pd.accepted).toHaveLength(N);

    // The alerts resolve: exactly one resolve each, after its trigger.
    for (const a of alerts) {
      const res = await second.postWebhook(webhookPayload('resolved', [a], groupOf(a)));
      expect(res.status, JSON.stringify(res.body)).toBe(202);
    }
    await until(() => (keys.every((k) => pd.acceptedCount(k, 'resolve') >= 1) ? true : undefined), 10_000, 'a resolve for every page');
    await until(async () => ((await second.metric('dbpilot_escalation_outbox_pending')) === 0 ? true : undefined), 10_000, 'the outbox to drain');
    // The outbox is drained, so nothing is left to send: a duplicate would already be an extra request.
    expect(pd.requests).toHaveLength(2 * N);
    for (const key of keys) {
      expect(pd.acceptedCount(key, 'trigger'), key).toBe(1);
      expect(pd.acceptedCount(key, 'resolve'), key).toBe(1);
      const seq = pd.accepted.filter((e) => e.dedupKey === key).map((e) => e.action);
      expect(seq).toEqual(['trigger', 'resolve']);
    }
    expect(pd.accepted).toHaveLength(2 * N);
    const delivered = second.entries().filter((e) => e.msg === 'escalation delivered');
    expect(delivered).toHaveLength(2 * N);
    expect(await second.stop()).toEqual({ code: 0, signal: null });
  });

  describe('kill -9 in the middle of a slow-queries run', () => {
    let db: TempDatabase | undefined;
    const role = `dbpilot_t_stubborn_${process.pid}`;
    let query: StubbornQuery | undefined;

    afterAll(async () => {
      await query?.client.end().catch(() => undefined);
      await db?.drop();
      await pgQuery(inject('pgPrimaryUrl'), `DROP ROLE IF EXISTS "${role}"`).catch(() => undefined);
    });

    it('resumes the run after a restart, verifies the in-flight step instead of repeating it, and terminates the query after the grace', async () => {
      const primary = inject('pgPrimaryUrl');
      db = await createTempDatabase('proc');
      await pgQuery(primary, `DROP ROLE IF EXISTS "${role}"`);
      await pgQuery(primary, `CREATE ROLE "${role}" LOGIN NOSUPERUSER NOREPLICATION`);
      // A report that shrugs off pg_cancel_backend: only pg_terminate_backend after the grace stops it.
      await createStubbornFunction(db.url);

      const port = await freePort();
      const store = path.join(dir, 'crash.sqlite');
      const configFile = await writeConfig(dir, 'crash', configDoc(port, store, { postgres: { databases: [db.name] } }));
      const first = await start('dbpilot-crash-1', configFile);

      query = await startStubbornQuery(db.url, role);
      const { pid } = query;
      const stillThere = async () => (await backend(primary, pid))?.state === 'active';
      // Long-running for dbpilot means older than thresholdSeconds (1 s).
      await until(async () => (((await backend(primary, pid))?.seconds ?? 0) > 1.2 ? true : undefined), 10_000, 'the report to be long-running');

      const alert = {
        labels: {
          alertname: 'PostgresLongRunningQueries',
          remediation: 'slow-queries',
          team: 'oncall-backend',
          severity: 'warning',
          server: serverOf(primary),
          datname: db.name,
        },
        fingerprint: fingerprint(),
      };
      const res = await first.postWebhook(webhookPayload('firing', [alert]));
      expect(res.status, JSON.stringify(res.body)).toBe(202);

      // Step 0 (cancelBackends) has sent its cancel and is waiting out the grace period.
      const runId = await until(async () => (await runsOf(first, `?fingerprint=${alert.fingerprint}`))[0]?.id, 10_000, 'the run');
      const inGrace = await until(
        async () => {
          const run = await runOf(first, runId);
          const s0 = run.steps[0];
          return run.status === 'running' && s0?.status === 'running' && s0.output !== null ? run : undefined;
        },
        10_000,
        'step 0 cancelBackends to be started',
        50,
      );
      expect(inGrace.steps.map((s) => s.name)).toEqual(['cancelBackends', 'terminateBackends']);
      expect(inGrace.steps[0]!.output).toEqual({ cancelled: [{ pid, signalled: true }] });
      expect(await stillThere()).toBe(true); // the cancel did not stop it

      await first.kill9();

      // What the killed process left on disk: the run running, step 0 started once and unfinished.
      const sq = new Database(store, { readonly: true, fileMustExist: true });
      try {
        const row = sq.prepare('SELECT status FROM runs WHERE id = ?').get(runId) as { status: string };
        expect(row.status).toBe('running');
        const steps = sq.prepare('SELECT idx, status, attempts FROM steps WHERE run_id = ? ORDER BY idx').all(runId);
        expect(steps).toEqual([
          { idx: 0, status: 'running', attempts: 1 },
          { idx: 1, status: 'planned', attempts: 0 },
        ]);
      } finally {
        sq.close();
      }
      expect(await stillThere()).toBe(true);

      const second = await start('dbpilot-crash-2', configFile);
      const done = await until(
        async () => {
          const run = await runOf(second, runId);
          return ['running', 'planning'].includes(run.status) ? undefined : run;
        },
        25_000,
        'the resumed run to finish',
        200,
      );
      expect(done.status, `${done.reason}\n${second.tail()}`).toBe('succeeded');
      // No step's action ran twice; the in-flight one was checked, not repeated.
      expect(done.steps.map((s) => [s.name, s.status, s.attempts]), `${JSON.stringify(done.steps)}\n${second.tail(30)}`).toEqual([
        ['cancelBackends', 'done', 1],
        ['terminateBackends', 'done', 1],
      ]);
      expect(done.steps[0]!.check?.detail).toMatch(/verified after restart/);
      expect(done.steps[0]!.check?.detail).toMatch(new RegExp(`still running after 5 s \\(pids ${pid}\\)`));
      expect(done.steps[1]!.check?.detail).toBe(`terminated 1 session(s) (pids ${pid})`);
      expect(done.owner).toMatch(/^dbpilot-crash-2\//);

      const startedBy = (p: DbpilotProcess) => p.entries().filter((e) => e.msg === 'step started').map((e) => e.step);
      expect(startedBy(first)).toEqual(['cancelBackends']);
      expect(startedBy(second)).toEqual(['terminateBackends']);
      expect(second.entries().some((e) => e.msg === 'resuming a run left in flight by a previous dbpilot process' && e.run === runId)).toBe(true);

      // In PostgreSQL: the session is gone, ended by the terminate (57P01), not by the cancel.
      expect(await backend(primary, pid)).toBeNull();
      const outcome = await query.outcome;
      expect(outcome.ok).toBe(false);
      expect(outcome).toMatchObject({ code: '57P01' });
      // Nothing to page: the run succeeded and no page was ever opened for it.
      expect(pd.accepted.filter((e) => e.dedupKey.includes(alert.fingerprint))).toHaveLength(0);
      expect(await second.stop()).toEqual({ code: 0, signal: null });
    });
  });

  describe('two processes on one Lease', () => {
    let k8s: K8sStandIn;
    const namespace = 'dbpilot-process';
    const leaseName = 'dbpilot-process-leader';
    // Production-like durations: a 1 s stall of a loaded child process must not look like a lost leader.
    // The handover below is by release, at the follower's next retry, so the test is no slower for it.
    const lease = { name: leaseName, durationSeconds: 15, renewDeadlineSeconds: 10, retryPeriodSeconds: 0.5 };

    beforeAll(async () => {
      k8s = new K8sStandIn({ namespaces: [namespace] });
      await k8s.start();
    });
    afterAll(async () => {
      await k8s?.close();
    });

    it('only the leader acts; a webhook sent to the other reaches the leader in that one delivery; the other takes over when the leader stops', async () => {
      const kubeconfig = await k8s.writeKubeconfig(dir, { namespace });
      const kube = { kubeconfig, namespace, lease };
      // Nothing has run for an hour on the shared primary: a run plans, finds nothing to do, succeeds.
      const over = { kubernetes: kube, handlers: { 'slow-queries': { mode: 'auto', thresholdSeconds: 3600, cooldownSeconds: 0, diagnosticTables: [] } } };
      const [portA, portB] = [await freePort(), await freePort()];
      // Each advertises where it listens; the leader's address is on the Lease for the other to forward to.
      const advertise = (port: number) => ({ ...over, webhook: { advertiseUrl: `http://127.0.0.1:${port}` } });
      const fileA = await writeConfig(dir, 'lease-a', configDoc(portA, path.join(dir, 'lease-a.sqlite'), advertise(portA)));
      const fileB = await writeConfig(dir, 'lease-b', configDoc(portB, path.join(dir, 'lease-b.sqlite'), advertise(portB)));
      // Their pods, as the API server knows them: a follower forwards only to the leader pod's own IP.
      for (const name of ['dbpilot-lease-a', 'dbpilot-lease-b']) k8s.seedPod({ name, namespace, podIP: '127.0.0.1' });
      const both = await Promise.all([start('dbpilot-lease-a', fileA), start('dbpilot-lease-b', fileB)]);

      const leaderValues = async () => Promise.all(both.map((p) => p.metric('dbpilot_leader')));
      const settled = await until(
        async () => {
          const v = await leaderValues();
          return v[0]! + v[1]! === 1 ? v : undefined;
        },
        10_000,
        'exactly one leader',
      );
      const leader = both[settled.indexOf(1)]!;
      const follower = both[settled.indexOf(0)]!;
      const holder = () => (k8s.lease(leaseName, namespace)?.spec as { holderIdentity?: string; leaseTransitions?: number } | undefined) ?? {};
      expect(holder().holderIdentity).toMatch(new RegExp(`^${leader.name}-${leader.pid}-[0-9a-f]{8}$`));
      // And it stays so over several renewals: no flapping, no write by the follower as holder.
      const leaderId = holder().holderIdentity!;
      const t0 = holder().leaseTransitions ?? 0;
      const leasePuts = () => k8s.requests.filter((r) => r.method === 'PUT' && r.path.endsWith(`/leases/${leaseName}`) && r.status === 200);
      const specOf = (r: RecordedRequest) => (r.body as { spec?: { holderIdentity?: string } }).spec?.holderIdentity;
      const renewals = () => leasePuts().filter((r) => specOf(r) === leaderId).length;
      const before = renewals();
      await until(() => (renewals() >= before + 4 ? true : undefined), 20_000, 'four more renewals by the leader');
      expect(await leaderValues()).toEqual(settled);
      expect(holder()).toMatchObject({ holderIdentity: leaderId, leaseTransitions: t0 });
      // Both start at once and both try to create the Lease: the one that loses that race gets 409
      // AlreadyExists and wrote nothing. Any other write naming the follower as holder is a defect.
      const lostCreate = (r: RecordedRequest) => r.method === 'POST' && r.status === 409;
      expect(k8s.requests.filter((r) => r.method !== 'GET' && !lostCreate(r) && specOf(r)?.startsWith(`${follower.name}-`))).toEqual([]);

      const alert = (datname: string) => ({
        labels: {
          alertname: 'PostgresLongRunningQueries',
          remediation: 'slow-queries',
          team: 'oncall-backend',
          severity: 'warning',
          server: serverOf(inject('pgPrimaryUrl')),
          datname,
        },
        fingerprint: fingerprint(),
      });

      expect((k8s.lease(leaseName, namespace)?.metadata as { annotations?: Record<string, string> }).annotations).toMatchObject({
        'dbpilot.io/leader-url': `http://127.0.0.1:${leader.port}`,
      });
      // The follower forwards to the leader: Alertmanager's one delivery is the leader's 202.
      const first = alert('postgres');
      const accepted = await follower.postWebhook(webhookPayload('firing', [first]));
      expect(accepted.status, JSON.stringify(accepted.body)).toBe(202);
      expect(accepted.headers.get('x-dbpilot-leader')).toBe(`127.0.0.1:${leader.port}`);
      expect(await follower.metric('dbpilot_webhook_forwarded_total', { outcome: 'forwarded' })).toBe(1);
      // A request that was forwarded already is not forwarded again: the follower answers 503 itself.
      const hop = await fetch(`${follower.url}/alertmanager/webhook`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TEST_WEBHOOK_TOKEN}`, 'content-type': 'application/json', 'x-dbpilot-forwarded': '1' },
        body: JSON.stringify(webhookPayload('firing', [alert('postgres')])),
      });
      expect(hop.status).toBe(503);
      expect(((await hop.json()) as { code: string }).code).toBe('DBPILOT_NOT_LEADER');
      const run = await until(
        async () => (await runsOf(leader, `?fingerprint=${first.fingerprint}`)).find((r) => !['planning', 'running'].includes(r.status)),
        10_000,
        'the leader to finish its run',
      );
      expect(run.status, run.reason ?? '').toBe('succeeded');
      expect(run.owner).toMatch(new RegExp(`^${leader.name}/`));
      expect(await runsOf(follower)).toEqual([]);
      expect(await follower.metric('dbpilot_remediations_total', { handler: 'slow-queries', outcome: 'succeeded' }).catch(() => 0)).toBe(0);

      // The leader stops (SIGTERM): it releases the Lease, the follower takes over within a lease duration.
      const transitions = holder().leaseTransitions ?? 0;
      const stoppedAt = Date.now();
      const exit = await leader.stop();
      expect(exit, leader.tail()).toEqual({ code: 0, signal: null });
      expect(leader.entries().some((e) => e.msg === 'lease released')).toBe(true);
      // Released, not left to expire: the follower takes the released Lease (a takeover of an expired one would say so).
      // The message is the assertion; the timeout only bounds the wait.
      const took = await follower.waitForLog((e) => e.msg === 'became leader: acquired the released lease', 30_000, 'leadership');
      expect(took.msg).toBe('became leader: acquired the released lease');
      const puts = leasePuts();
      const released = puts.findIndex((r) => specOf(r) === '');
      expect(released).toBeGreaterThanOrEqual(0);
      expect(puts.findIndex((r) => specOf(r)?.startsWith(`${follower.name}-`))).toBeGreaterThan(released);
      const takeoverMs = Date.now() - stoppedAt;
      expect(await follower.metric('dbpilot_leader')).toBe(1);
      expect(holder().holderIdentity).toMatch(new RegExp(`^${follower.name}-${follower.pid}-[0-9a-f]{8}$`));
      expect(holder().leaseTransitions).toBe(transitions + 1);

      // …and now accepts and acts.
      const second = alert('postgres');
      const now = await follower.postWebhook(webhookPayload('firing', [second]));
      expect(now.status, JSON.stringify(now.body)).toBe(202);
      const run2 = await until(
        async () => (await runsOf(follower, `?fingerprint=${second.fingerprint}`)).find((r) => !['planning', 'running'].includes(r.status)),
        10_000,
        'the new leader to finish its run',
      );
      expect(run2.status, run2.reason ?? '').toBe('succeeded');
      expect(run2.owner).toMatch(new RegExp(`^${follower.name}/`));
      console.info(`[process.test] lease takeover after SIGTERM of the leader: ${takeoverMs} ms`);
      expect(await follower.stop()).toEqual({ code: 0, signal: null });
    });
  });
});
