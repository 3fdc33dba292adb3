/**
 * A remediation run interrupted without a crash, at process level (real `dbpilot serve` children):
 *
 * - SIGTERM (a rolling update, a node drain) while a slow-queries run waits out its grace period:
 *   the stopping process lets the step in flight finish and check, starts no further step, and
 *   leaves the run in flight (its lock kept); the next process on the same store resumes it from
 *   its last verified step and finishes it — nothing repeated, nothing lost, nobody paged.
 * - The replica loses its Lease while a run waits out its grace period: from the moment it is no
 *   longer leader it must start no further step (another replica may take over and act on the same
 *   target after leaseDuration; that is what renewDeadline < leaseDuration is for).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import {
  DbpilotProcess,
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
import { K8sStandIn } from '../support/k8s-standin.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { freePort } from '../support/ports.js';
import { createTempDatabase, pgQuery, serverOf, type TempDatabase } from '../support/service.js';


const role = `dbpilot_t_stop_${process.pid}`;
let dir: string;
let pd: PagerDutyStandin;
let db: TempDatabase;
const procs: DbpilotProcess[] = [];
/** Spawn-to-ready time of every process, printed once at the end. */
const startTimes: string[] = [];
const queries: StubbornQuery[] = [];

async function start(name: string, configFile: string): Promise<DbpilotProcess> {
  const p = await DbpilotProcess.start({ name, configFile });
  procs.push(p);
  startTimes.push(`${name} ${p.readyMs} ms`);
  return p;
}

function configDoc(port: number, store: string, over: Record<string, unknown> = {}): Record<string, unknown> {
  return processConfig(
    { port, store, pagerdutyUrl: pd.url, pgPrimaryUrl: inject('pgPrimaryUrl'), redisUrl: inject('redisUrl') },
    {
      postgres: { databases: [db.name] },
      // As in production: the runbook's missing-index diagnostics go with every slow-queries page.
      handlers: { 'slow-queries': { diagnosticTables: [{ database: db.name, tables: ['orders'] }] } },
      ...over,
    },
  );
}

async function runOf(p: DbpilotProcess, id: string): Promise<RunJson> {
  const res = await p.request<RunJson>('GET', `/api/remediations/${id}`);
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  return res.body;
}

/** A stubborn report in the test database, long-running (> 1 s) for dbpilot, and the alert about it. */
async function slowQuery(): Promise<{ query: StubbornQuery; alert: { labels: Record<string, string>; fingerprint: string } }> {
  const query = await startStubbornQuery(db.url, role);
  queries.push(query);
  await until(async () => (((await backend(inject('pgPrimaryUrl'), query.pid))?.seconds ?? 0) > 1.2 ? true : undefined), 10_000, 'the report to be long-running');
  const alert = {
    labels: {
      alertname: 'PostgresLongRunningQueries',
      remediation: 'slow-queries',
      team: 'oncall-backend',
      severity: 'warning',
      server: serverOf(inject('pgPrimaryUrl')),
      datname: db.name,
    },
    fingerprint: fingerprint(),
  };
  return { query, alert };
}

/** Posts the alert and resolves with the run once step 0 (cancelBackends) has sent its cancel and waits out the grace. */
async function untilInGrace(p: DbpilotProcess, alert: { labels: Record<string, string>; fingerprint: string }): Promise<RunJson> {
  const res = await p.postWebhook(webhookPayload('firing', [alert]));
  expect(res.status, JSON.stringify(res.body)).toBe(202);
  const id = await until(
    async () => (await p.request<{ runs: RunJson[] }>('GET', `/api/remediations?fingerprint=${alert.fingerprint}`)).body.runs[0]?.id,
    10_000,
    'the run',
  );
  return until(
    async () => {
      const run = await runOf(p, id);
      const s0 = run.steps[0];
      return run.status === 'running' && s0?.status === 'running' && s0.output !== null ? run : undefined;
    },
    10_000,
    'step 0 cancelBackends to be in its grace period',
    50,
  );
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'dbpilot-process-stop-'));
  pd = new PagerDutyStandin();
  await pd.start();
  const primary = inject('pgPrimaryUrl');
  db = await createTempDatabase('stop');
  await pgQuery(primary, `DROP ROLE IF EXISTS "${role}"`);
  await pgQuery(primary, `CREATE ROLE "${role}" LOGIN NOSUPERUSER NOREPLICATION`);
  await createStubbornFunction(db.url);
  await pgQuery(db.url, 'CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint)');
});

afterEach(async () => {
  await Promise.all(procs.splice(0).map((p) => p.kill9().catch(() => undefined)));
  await Promise.all(queries.splice(0).map((q) => q.client.end().catch(() => undefined)));
  pd.reset();
});

afterAll(async () => {
  console.info(`[process-stop] dbpilot spawn to ready: ${startTimes.join(', ')}`);
  await pd?.close();
  await db?.drop();
  await pgQuery(inject('pgPrimaryUrl'), `DROP ROLE IF EXISTS "${role}"`).catch(() => undefined);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('a run interrupted without a crash', () => {
  it('SIGTERM during the grace period: the step in flight finishes, the run waits in flight, and the restarted process finishes it', async () => {
    const port = await freePort();
    const configFile = await writeConfig(dir, 'sigterm', configDoc(port, path.join(dir, 'sigterm.sqlite')));
    const first = await start('dbpilot-sigterm-1', configFile);
    const { query, alert } = await slowQuery();
    const run = await untilInGrace(first, alert);
    const dedupKey = `dbpilot/${alert.labels.alertname}/${alert.fingerprint}`;

    const exit = await first.stop();
    expect(exit, first.tail()).toEqual({ code: 0, signal: null });
    // Shutting down, it let cancelBackends finish its grace and its check, then stopped before the next step.
    const ofRun = (p: DbpilotProcess, msg: string) => p.entries().filter((e) => e.run === run.id && e.msg === msg);
    expect(ofRun(first, 'run paused between steps; it resumes from its last verified step').map((e) => [e.nextStep, e.why]), first.tail()).toEqual([
      ['terminateBackends', 'dbpilot is shutting down'],
    ]);
    expect(ofRun(first, 'step started').map((e) => e.step)).toEqual(['cancelBackends']);

    const second = await start('dbpilot-sigterm-2', configFile);
    const outcome = await until(
      async () => {
        const r = await runOf(second, run.id);
        return ['running', 'planning'].includes(r.status) ? undefined : r;
      },
      30_000,
      `run ${run.id} to be finished by the new process`,
      200,
    ).catch(async (err: Error) => {
      const r = await runOf(second, run.id);
      throw new Error(
        `${err.message}\nrun: ${r.status} (${r.reason}); steps ${JSON.stringify(r.steps.map((s) => [s.name, s.status, s.attempts]))}\n` +
          `--- first process (SIGTERM) ---\n${first.tail(15)}\n--- second process ---\n${second.tail(15)}`,
      );
    });
    expect({ status: outcome.status, reason: outcome.reason }, `${second.tail(20)}`).toEqual({ status: 'succeeded', reason: 'every step done and checked' });
    // Resumed from its last verified step: cancelBackends was not repeated, terminateBackends ran once, here.
    expect(outcome.steps.map((s) => [s.name, s.status, s.attempts])).toEqual([
      ['cancelBackends', 'done', 1],
      ['terminateBackends', 'done', 1],
    ]);
    expect(outcome.steps[0]!.check?.detail).toContain(`1 still running after 5 s (pids ${query.pid}): terminating`);
    expect(ofRun(second, 'resuming a run left in flight by a previous dbpilot process')).toHaveLength(1);
    expect(ofRun(second, 'step started').map((e) => e.step)).toEqual(['terminateBackends']);
    // The stubborn report was terminated, by the second process.
    expect(await query.outcome).toMatchObject({ ok: false, code: '57P01' });
    expect(await backend(inject('pgPrimaryUrl'), query.pid)).toBeNull();
    // Nobody was paged: a page is queued before a run's status becomes final, and this one ended succeeded.
    expect(pd.acceptedCount(dedupKey, 'trigger')).toBe(0);
    expect(await second.metric('dbpilot_escalation_outbox_pending')).toBe(0);
    console.info(`[process-stop] after SIGTERM mid-run: run ${outcome.status} (${outcome.reason}), finished by the restarted process`);
    expect(await second.stop()).toEqual({ code: 0, signal: null });
  });

  describe('on a Lease', () => {
    let k8s: K8sStandIn;
    const namespace = 'dbpilot-process-stop';
    const lease = { name: 'dbpilot-stop-leader', durationSeconds: 2, renewDeadlineSeconds: 1, retryPeriodSeconds: 0.25 };

    beforeAll(async () => {
      k8s = new K8sStandIn({ namespaces: [namespace] });
      await k8s.start();
    });
    afterAll(async () => {
      await k8s?.close();
    });

    it('a replica that loses its Lease during the grace period starts no further step', async () => {
      const kubeconfig = await k8s.writeKubeconfig(dir, { namespace, fileName: 'kubeconfig-stop' });
      const port = await freePort();
      const configFile = await writeConfig(
        dir,
        'lease-lost',
        configDoc(port, path.join(dir, 'lease-lost.sqlite'), { kubernetes: { kubeconfig, namespace, lease } }),
      );
      const p = await start('dbpilot-lease-lost', configFile);
      await until(async () => ((await p.metric('dbpilot_leader')) === 1 ? true : undefined), 10_000, 'leadership');
      const { query, alert } = await slowQuery();
      const run = await untilInGrace(p, alert);

      // The API server stops answering the Lease: the replica steps down by its renew deadline (1 s),
      // well inside the 5 s grace period of step 0.
      k8s.failNext(1_000_000, 503, { path: '/leases/' });
      await p.waitForLog((e) => e.msg === 'not leader: this replica only exports metrics', 5_000, 'stepping down');
      expect(await p.metric('dbpilot_leader')).toBe(0);
      const lastRun = await runOf(p, run.id);
      expect(lastRun.steps[1]?.attempts, 'step 1 started before the replica stepped down: the test did not hit the grace period').toBe(0);

      // The grace period ends, cancelBackends is checked, and at the next step the engine finds it is
      // not leader: it pauses the run there. Waited for as that decision, not as a span of time.
      const paused = await p.waitForLog(
        (e) => e.run === run.id && e.msg === 'run paused between steps; it resumes from its last verified step',
        20_000,
        'the run to pause before terminateBackends',
      );
      expect({ nextStep: paused.nextStep, why: paused.why }).toEqual({ nextStep: 'terminateBackends', why: 'this replica lost the leader Lease' });
      const after = await runOf(p, run.id);
      const started = p.entries().filter((e) => e.msg === 'step started' && e.run === run.id).map((e) => e.step);
      expect(
        {
          status: after.status,
          steps: after.steps.map((s) => [s.name, s.status, s.attempts]),
          stepsStarted: started,
          session: (await backend(inject('pgPrimaryUrl'), query.pid))?.state ?? 'gone',
        },
        `run ${after.status}: ${after.reason}`,
      ).toEqual({
        // Left in flight for whoever holds the Lease next, with step 1 never started.
        status: 'running',
        steps: [
          ['cancelBackends', 'done', 1],
          ['terminateBackends', 'planned', 0],
        ],
        stepsStarted: ['cancelBackends'],
        session: 'active',
      });
    });
  });
});
