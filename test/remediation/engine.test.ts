/**
 * The engine's policy, end to end through the webhook: modes (global and per handler), dedupe,
 * cooldown and attempt limit, resolved alerts, escalation to the strict PagerDuty stand-in, resolve
 * on success, and the per-target lock.
 *
 * The slow-queries handler acts on real `pg_sleep` queries of a non-superuser role in a database of
 * this file's own on the shared primary (every alert names that database, so nothing else is
 * touched). Where timing must be exact, a scripted handler under a name this build does not
 * implement yet (`redis-failure`) stands in for a handler, with gates in its plan and steps.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { webhookSchema } from '../../src/remediation/alertmanager.js';
import { PagerDutyStandin, type AcceptedEvent } from '../support/pagerduty-standin.js';
import {
  TEAM_KEYS,
  createSlowQueryDb,
  fixture,
  fixtureText,
  freshFingerprint,
  gate,
  groupPageKey,
  payload,
  scriptedHandler,
  startRemediation,
  teamOfKey,
  until,
  type RemediationHarness,
  type SlowQueryDb,
  type SlowSession,
} from '../support/remediation.js';

const FIRING = 'alertmanager_webhook_firing.json';
const RESOLVED = 'alertmanager_webhook_resolved.json';
/** The fixture's alert has no handler (remediation=restart-redis): it is paged in its Alertmanager group's page. */
const FIXTURE_DEDUP_KEY = groupPageKey(fixtureText(FIRING), 'devops');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const pd = new PagerDutyStandin();
let db: SlowQueryDb;
const sessions: SlowSession[] = [];

beforeAll(async () => {
  await pd.start();
  db = await createSlowQueryDb('engine');
});
afterAll(async () => {
  await pd.close();
  await db?.drop();
});

const harnesses: RemediationHarness[] = [];
/** Slow-queries settings that make a 0.3 s old pg_sleep a target, and no diagnostics tables. */
const SLOW = { thresholdSeconds: 0.2, graceSeconds: 2, diagnosticTables: [] };

/** An approver's own credential: the webhook's cannot approve. */
const APPROVER = { name: 'bob', token: 'bob-approver-token-0123456789ab' };
const approverAuth = { authorization: `Bearer ${APPROVER.token}` };

async function harness(opts: Parameters<typeof startRemediation>[0] = {}): Promise<RemediationHarness> {
  const config = { approvers: [APPROVER], ...(opts.config ?? {}) } as Record<string, any>;
  config.handlers = { ...(config.handlers ?? {}), 'slow-queries': { ...SLOW, ...(config.handlers?.['slow-queries'] ?? {}) } };
  const h = await startRemediation({ pagerduty: pd, ...opts, config });
  harnesses.push(h);
  return h;
}
afterEach(async () => {
  await Promise.all(harnesses.splice(0).map((h) => h.close()));
  await Promise.all(sessions.splice(0).map((s) => s.end()));
  pd.reset();
});

/** A pg_sleep that the handler will see as long-running. */
async function slowQuery(): Promise<SlowSession> {
  const s = await db.start(60);
  sessions.push(s);
  await sleep(350); // older than thresholdSeconds
  return s;
}

function slowAlert(fp: string, opts: { status?: 'firing' | 'resolved'; startsAt?: string; labels?: Record<string, string> } = {}) {
  return payload([
    {
      status: opts.status ?? 'firing',
      labels: { alertname: 'PostgresLongRunningQueries', remediation: 'slow-queries', severity: 'warning', team: 'oncall-backend', server: db.server, datname: db.name, ...opts.labels },
      fingerprint: fp,
      ...(opts.startsAt ? { startsAt: opts.startsAt } : {}),
    },
  ]);
}

const slowTarget = () => `postgres/${db.server}/${db.name}`;

async function fire(h: RemediationHarness, body: unknown): Promise<void> {
  const res = await h.webhook(body);
  expect(res.statusCode, res.body).toBe(202);
  await h.engine.idle();
}

function onlyRun(h: RemediationHarness, fp: string) {
  const runs = h.store.listRuns({ fingerprint: fp });
  expect(runs).toHaveLength(1);
  return runs[0]!;
}

function pages(dedupKey: string, action?: 'trigger' | 'resolve'): AcceptedEvent[] {
  return pd.accepted.filter((e) => e.dedupKey === dedupKey && (action === undefined || e.action === action));
}

async function waitForPage(dedupKey: string, action: 'trigger' | 'resolve' = 'trigger', n = 1, timeoutMs = 10_000): Promise<AcceptedEvent> {
  await until(() => pd.acceptedCount(dedupKey, action) >= n, `${n} ${action} event(s) for ${dedupKey} at the PagerDuty stand-in`, timeoutMs);
  return pages(dedupKey, action)[n - 1]!;
}

// ---------------------------------------------------------------------------------------------------

describe('modes', () => {
  it('off: records the run as skipped and touches nothing', async () => {
    const h = await harness({ mode: 'off' });
    const s = await slowQuery();
    const fp = freshFingerprint();
    await fire(h, slowAlert(fp));
    const run = onlyRun(h, fp);
    expect(run).toMatchObject({ handler: 'slow-queries', mode: 'off', status: 'skipped', target: slowTarget() });
    expect(run.reason).toMatch(/slow-queries is off/);
    expect(h.store.steps(run.id)).toEqual([]);
    expect(await s.running()).toBe(true);
  });

  it('dry-run: plans the exact runbook commands and changes nothing', async () => {
    const h = await harness({ mode: 'dry-run' });
    const s = await slowQuery();
    const fp = freshFingerprint();
    await fire(h, slowAlert(fp));
    const run = onlyRun(h, fp);
    expect(run).toMatchObject({ mode: 'dry-run', status: 'dry_run' });
    const steps = h.store.steps(run.id);
    expect(steps.map((st) => [st.name, st.status])).toEqual([
      ['cancelBackends', 'planned'],
      ['terminateBackends', 'planned'],
    ]);
    expect(steps[0]!.command).toContain(`kubectl exec -it postgres-primary-0 -n lomash-wood -- psql -U postgres -c "SELECT pg_cancel_backend(${s.pid});"`);
    expect(steps[1]!.command).toContain(`SELECT pg_terminate_backend(${s.pid});`);
    expect((run.plan as { data: { targets: { pid: number }[] } }).data.targets.map((t) => t.pid)).toEqual([s.pid]);
    await sleep(200);
    expect(await s.running()).toBe(true);
  });

  it('auto: cancels the query, checks it stopped, and records every step with its output and check', async () => {
    const h = await harness({ mode: 'auto' });
    const s = await slowQuery();
    const fp = freshFingerprint();
    await fire(h, slowAlert(fp));
    const run = onlyRun(h, fp);
    expect(run).toMatchObject({ mode: 'auto', status: 'succeeded', reason: 'every step done and checked' });
    expect(await s.done).toBe('cancelled');
    const res = await h.request({ method: 'GET', url: `/api/remediations/${run.id}`, headers: h.auth });
    const body = JSON.parse(res.body) as { steps: Array<{ name: string; status: string; output: any; check: any; attempts: number }> };
    expect(body.steps.map((st) => [st.name, st.status, st.attempts])).toEqual([
      ['cancelBackends', 'done', 1],
      ['terminateBackends', 'done', 1],
    ]);
    expect(body.steps[0]!.output.cancelled).toEqual([{ pid: s.pid, signalled: true }]);
    expect(body.steps[0]!.check).toMatchObject({ ok: true, detail: 'all 1 cancelled queries stopped' });
    expect(body.steps[1]!.check).toMatchObject({ ok: true, detail: 'nothing to terminate: every query stopped on cancel' });
    expect(await h.metric('dbpilot_remediations_total', { handler: 'slow-queries', outcome: 'succeeded' })).toBe(1);
    expect(h.store.lockHolder(slowTarget())).toBeNull();
  });

  it('approve: waits with its plan and pages; the approval executes it and the succeeded run resolves the page', async () => {
    const h = await harness({ mode: 'approve' });
    const s = await slowQuery();
    const fp = freshFingerprint();
    const dedupKey = `dbpilot/PostgresLongRunningQueries/${fp}`;
    await fire(h, slowAlert(fp));
    const run = onlyRun(h, fp);
    expect(run).toMatchObject({ mode: 'approve', status: 'awaiting_approval' });
    expect((run.plan as { summary: string }).summary).toContain(`pids ${s.pid}`);
    expect(h.store.steps(run.id).map((st) => st.status)).toEqual(['planned', 'planned']);

    const page = await waitForPage(dedupKey);
    expect(teamOfKey(page.routingKey)).toBe('oncall-backend');
    const payloadOf = page.event.payload as { severity: string; summary: string; custom_details: Record<string, unknown> };
    expect(payloadOf.severity).toBe('warning');
    expect(String(payloadOf.custom_details.tried)).toContain(`dbpilot approve ${run.id}`);
    expect(payloadOf.custom_details.plan).toEqual(h.store.steps(run.id).map((st) => st.command));
    await sleep(300);
    expect(await s.running()).toBe(true); // waiting means waiting

    const res = await h.request({ method: 'POST', url: `/api/remediations/${run.id}/approve`, headers: approverAuth });
    expect(res.statusCode).toBe(202);
    await h.engine.idle();
    expect(h.store.getRun(run.id)).toMatchObject({ status: 'succeeded', approvedBy: 'bob' });
    expect(await s.done).toBe('cancelled');
    const resolve = await waitForPage(dedupKey, 'resolve');
    expect(resolve.routingKey).toBe(TEAM_KEYS['oncall-backend']);
    expect(pages(dedupKey).map((e) => e.action)).toEqual(['trigger', 'resolve']);
  });

  it('a per-handler mode overrides the global one, both ways', async () => {
    const lenient = await harness({ mode: 'off', config: { handlers: { 'slow-queries': { mode: 'dry-run' } } } });
    const s = await slowQuery();
    const fp1 = freshFingerprint();
    await fire(lenient, slowAlert(fp1));
    expect(onlyRun(lenient, fp1)).toMatchObject({ mode: 'dry-run', status: 'dry_run' });
    await lenient.close();

    const strict = await harness({ mode: 'auto', config: { handlers: { 'slow-queries': { mode: 'off' } } } });
    const fp2 = freshFingerprint();
    await fire(strict, slowAlert(fp2));
    expect(onlyRun(strict, fp2)).toMatchObject({ mode: 'off', status: 'skipped' });
    expect(await s.running()).toBe(true);
  });
});

describe('dedupe (fingerprint + startsAt)', () => {
  it('100 concurrent copies of one firing alert in auto mode → exactly one run, one cancellation', async () => {
    const h = await harness({ mode: 'auto' });
    const s = await slowQuery();
    const fp = freshFingerprint();
    const body = JSON.stringify(slowAlert(fp));
    const answers = await Promise.all(Array.from({ length: 100 }, () => h.webhook(body).then((r) => r.statusCode)));
    expect(answers).toEqual(Array(100).fill(202));
    await h.engine.idle();
    const run = onlyRun(h, fp);
    expect(run.status).toBe('succeeded');
    expect(h.store.steps(run.id)[0]!.attempts).toBe(1);
    expect(await s.done).toBe('cancelled');
    expect(await h.metric('dbpilot_remediations_total', { handler: 'slow-queries', outcome: 'deduplicated' })).toBe(99);
    expect(await h.metric('dbpilot_remediations_total', { handler: 'slow-queries', outcome: 'succeeded' })).toBe(1);
  });

  it('100 copies handed to the engine in one tick (several alerts per payload) → one run', async () => {
    const h = await harness({ mode: 'dry-run' });
    await slowQuery();
    const fp = freshFingerprint();
    const parsed = webhookSchema.parse(slowAlert(fp));
    const quadruple = webhookSchema.parse({ ...slowAlert(fp), alerts: Array(4).fill((slowAlert(fp).alerts as unknown[])[0]) });
    for (let i = 0; i < 96; i++) h.engine.receive(parsed);
    h.engine.receive(quadruple);
    await h.engine.idle();
    expect(onlyRun(h, fp).status).toBe('dry_run');
  });

  it('a repeat after the run finished starts nothing, even though the problem is back', async () => {
    const h = await harness({ mode: 'auto', config: { handlers: { 'slow-queries': { cooldownSeconds: 0 } } } });
    const first = await slowQuery();
    const fp = freshFingerprint();
    await fire(h, slowAlert(fp));
    expect(await first.done).toBe('cancelled');
    const second = await slowQuery();
    await fire(h, slowAlert(fp)); // Alertmanager's repeat_interval re-send of the same occurrence
    expect(h.store.listRuns()).toHaveLength(1);
    expect(await second.running()).toBe(true);
    // A new occurrence of the same alert (it resolved and fired again) is a new run.
    await fire(h, slowAlert(fp, { status: 'resolved' }));
    await fire(h, slowAlert(fp, { startsAt: new Date().toISOString() }));
    expect(h.store.listRuns()).toHaveLength(2);
    expect(await second.done).toBe('cancelled');
  });
});

describe('cooldown and attempt limit', () => {
  it('a second alert on the same target within the cooldown is skipped and leaves the query alone', async () => {
    const h = await harness({ mode: 'auto' }); // cooldownSeconds defaults to 300
    const first = await slowQuery();
    const fp1 = freshFingerprint();
    await fire(h, slowAlert(fp1));
    expect(await first.done).toBe('cancelled');
    const second = await slowQuery();
    const fp2 = freshFingerprint();
    await fire(h, slowAlert(fp2));
    const run = onlyRun(h, fp2);
    expect(run.status).toBe('skipped');
    expect(run.reason).toMatch(/^cooldown: run .+ acted on postgres\/.+ \d+ s ago \(cooldown 300 s\)/);
    expect(await second.running()).toBe(true);
  });

  it('stops after maxAttempts runs per target within the window; another target is not counted', async () => {
    const h = await harness({ mode: 'auto', config: { handlers: { 'redis-failure': { cooldownSeconds: 0, maxAttempts: 2, attemptWindowSeconds: 3600 } } } });
    const handler = scriptedHandler('redis-failure');
    h.remediation.handlers.register(handler);
    const alert = (fp: string, instance: string) => payload([{ labels: { alertname: 'RedisDown', remediation: 'redis-failure', instance }, fingerprint: fp }]);
    const fps = [freshFingerprint(), freshFingerprint(), freshFingerprint(), freshFingerprint()];
    await fire(h, alert(fps[0]!, 'a'));
    await fire(h, alert(fps[1]!, 'a'));
    await fire(h, alert(fps[2]!, 'a'));
    await fire(h, alert(fps[3]!, 'b'));
    expect(fps.map((fp) => onlyRun(h, fp).status)).toEqual(['succeeded', 'succeeded', 'skipped', 'succeeded']);
    expect(onlyRun(h, fps[2]!).reason).toMatch(/^attempt limit: 2 runs on fake\/a in the last 3600 s \(max 2\)/);
    expect(handler.executed.filter((e) => e.startsWith(fps[2]!))).toEqual([]);
  });

  it('a run waiting for approval is blocked at approval time when another run acted within the cooldown', async () => {
    const h = await harness({ config: { handlers: { 'redis-failure': { mode: 'approve', cooldownSeconds: 3600 } } } });
    const handler = scriptedHandler('redis-failure');
    h.remediation.handlers.register(handler);
    const [fa, fb] = [freshFingerprint(), freshFingerprint()];
    await fire(h, payload([{ labels: { alertname: 'RedisDown', remediation: 'redis-failure' }, fingerprint: fa }]));
    await fire(h, payload([{ labels: { alertname: 'RedisRejectedConnections', remediation: 'redis-failure' }, fingerprint: fb }]));
    const [a, b] = [onlyRun(h, fa), onlyRun(h, fb)];
    expect([a.status, b.status]).toEqual(['awaiting_approval', 'awaiting_approval']);
    expect((await h.request({ method: 'POST', url: `/api/remediations/${a.id}/approve`, headers: approverAuth })).statusCode).toBe(202);
    await h.engine.idle();
    const blocked = await h.request({ method: 'POST', url: `/api/remediations/${b.id}/approve`, headers: approverAuth });
    expect(blocked.statusCode).toBe(409);
    expect(JSON.parse(blocked.body)).toMatchObject({ code: 'DBPILOT_RUN_BLOCKED' });
    expect(JSON.parse(blocked.body).error).toMatch(/^cooldown/);
    expect(h.store.getRun(b.id)?.status).toBe('awaiting_approval');
    expect(handler.executed.some((e) => e.startsWith(fb))).toBe(false);
  });
});

describe('resolved alerts', () => {
  it('a resolved alert cancels the run waiting for approval, and resolves its page', async () => {
    const h = await harness({ mode: 'approve' });
    const s = await slowQuery();
    const fp = freshFingerprint();
    const dedupKey = `dbpilot/PostgresLongRunningQueries/${fp}`;
    await fire(h, slowAlert(fp));
    const run = onlyRun(h, fp);
    expect(run.status).toBe('awaiting_approval');
    await waitForPage(dedupKey);
    await fire(h, slowAlert(fp, { status: 'resolved' }));
    expect(h.store.getRun(run.id)).toMatchObject({ status: 'cancelled', reason: 'the alert resolved before the run was approved' });
    await waitForPage(dedupKey, 'resolve');
    const late = await h.request({ method: 'POST', url: `/api/remediations/${run.id}/approve`, headers: approverAuth });
    expect(late.statusCode).toBe(409);
    expect(await s.running()).toBe(true);
    expect(await h.metric('dbpilot_remediations_total', { handler: 'slow-queries', outcome: 'cancelled' })).toBe(1);
  });

  it('an alert that resolves while its approve-mode run is still planning leaves no run waiting for approval', async () => {
    const h = await harness({ config: { handlers: { 'redis-failure': { mode: 'approve' } } } });
    const planGate = gate();
    const handler = scriptedHandler('redis-failure', { beforePlan: () => planGate.wait() });
    h.remediation.handlers.register(handler);
    const fp = freshFingerprint();
    const labels = { alertname: 'RedisDown', remediation: 'redis-failure' };
    expect((await h.webhook(payload([{ labels, fingerprint: fp }]))).statusCode).toBe(202);
    await planGate.reached;
    expect((await h.webhook(payload([{ labels, fingerprint: fp, status: 'resolved' }]))).statusCode).toBe(202);
    planGate.open();
    await h.engine.idle();
    await h.outbox.flush();
    const run = onlyRun(h, fp);
    // The alert is gone: nobody must be asked to approve a fix for it, nor stay paged about it.
    expect(run.status).toBe('cancelled');
    expect(h.store.openIncident(`dbpilot/RedisDown/${fp}`)).toBeNull();
  });

  it('a resolved alert does not interrupt a run that is already acting: it finishes and verifies', async () => {
    const h = await harness({ config: { handlers: { 'redis-failure': { mode: 'auto' } } } });
    const stepGate = gate();
    const handler = scriptedHandler('redis-failure', { duringStep: (s) => (s === 'restartThing' ? stepGate.wait() : undefined) });
    h.remediation.handlers.register(handler);
    const fp = freshFingerprint();
    const labels = { alertname: 'RedisDown', remediation: 'redis-failure' };
    expect((await h.webhook(payload([{ labels, fingerprint: fp }]))).statusCode).toBe(202);
    await stepGate.reached;
    expect(onlyRun(h, fp).status).toBe('running');
    await h.webhook(payload([{ labels, fingerprint: fp, status: 'resolved' }]));
    stepGate.open();
    await h.engine.idle();
    expect(onlyRun(h, fp).status).toBe('succeeded');
    expect(handler.executed).toEqual([`${fp}:restartThing`, `${fp}:verifyThing`]);
  });
});

describe('escalation', () => {
  it('an alert with no handler (the fixture: remediation=restart-redis) is recorded and paged to its team with a stable dedup key', async () => {
    const h = await harness();
    const res = await h.webhook(fixtureText(FIRING));
    expect(res.statusCode).toBe(202);
    await h.engine.idle();
    const run = onlyRun(h, '2e9b05394dada12d');
    expect(run).toMatchObject({
      handler: 'restart-redis',
      alertname: 'RedisDown',
      startsAt: '2026-11-27T16:00:43.799Z',
      status: 'escalated',
      reason: 'no handler named restart-redis is available',
      target: '-',
      labels: (fixture(FIRING).alerts as Array<{ labels: unknown }>)[0]!.labels,
    });
    const page = await waitForPage(FIXTURE_DEDUP_KEY);
    expect(page.routingKey).toBe(TEAM_KEYS.devops);
    const p = page.event.payload as { summary: string; severity: string; source: string; group: string; custom_details: Record<string, unknown> };
    expect(p.severity).toBe('critical');
    expect(p.group).toBe('devops');
    expect(p.source).toBe('dbpilot-test');
    expect(p.summary).toContain('RedisDown');
    expect(p.custom_details).toMatchObject({ team: 'devops', escalate_to: 'DevOps engineer', tried: 'nothing: dbpilot does not act on these alerts' });
    expect(p.custom_details.alerts).toEqual([expect.objectContaining({ alertname: 'RedisDown', fingerprint: '2e9b05394dada12d', run: run.id, reason: 'no handler named restart-redis is available' })]);
    expect(await h.metric('dbpilot_remediations_total', { handler: 'unknown', outcome: 'escalated' })).toBe(1);
    await until(async () => (await h.metric('dbpilot_escalations_total', { team: 'devops', outcome: 'delivered' })) === 1, 'the delivery to be counted');

    // The resolved fixture resolves the same PagerDuty alert, after the trigger.
    expect((await h.webhook(fixtureText(RESOLVED))).statusCode).toBe(202);
    const resolve = await waitForPage(FIXTURE_DEDUP_KEY, 'resolve');
    expect(resolve.routingKey).toBe(TEAM_KEYS.devops);
    expect(pages(FIXTURE_DEDUP_KEY).map((e) => e.action)).toEqual(['trigger', 'resolve']);
    expect(h.store.listRuns()).toHaveLength(1);
  });

  it('the alert team label decides who is paged; an alert nobody knows goes to on-call backend', async () => {
    const h = await harness();
    const [f1, f2, f3] = [freshFingerprint(), freshFingerprint(), freshFingerprint()];
    const b1 = payload([{ labels: { alertname: 'PostgresDataCorruption', team: 'em-dba', severity: 'critical' }, fingerprint: f1 }]);
    const b2 = payload([{ labels: { alertname: 'SomethingNew', remediation: 'fix-it' }, fingerprint: f2 }]);
    const b3 = payload([{ labels: { alertname: 'PostgresPrimaryDownUnresolved', team: 'not-a-team' }, fingerprint: f3 }]);
    for (const b of [b1, b2, b3]) await fire(h, b);
    expect(teamOfKey((await waitForPage(groupPageKey(b1, 'em-dba'))).routingKey)).toBe('em-dba');
    const unknown = await waitForPage(groupPageKey(b2, 'oncall-backend'));
    expect(teamOfKey(unknown.routingKey)).toBe('oncall-backend');
    expect((unknown.event.payload as { severity: string }).severity).toBe('error');
    expect(onlyRun(h, f2).reason).toBe('no handler named fix-it is available');
    // An invalid team label falls back to the escalation table.
    expect(teamOfKey((await waitForPage(groupPageKey(b3, 'lead-dba'))).routingKey)).toBe('lead-dba');
  });

  it('remediation="none" is left to Alertmanager: nothing recorded, nobody paged twice', async () => {
    const h = await harness();
    const fp = freshFingerprint();
    await fire(h, payload([{ labels: { alertname: 'PostgresPrimaryDownUnresolved', remediation: 'none', team: 'lead-dba' }, fingerprint: fp }]));
    await h.outbox.flush();
    expect(h.store.listRuns()).toEqual([]);
    expect(pd.requests).toEqual([]);
  });

  it('the configured alert mapping picks the handler when the alert has no remediation label', async () => {
    const h = await harness({ mode: 'dry-run', config: { alerts: { PostgresLongRunningQueries: 'slow-queries', RedisDown: 'none' } } });
    await slowQuery();
    const [f1, f2] = [freshFingerprint(), freshFingerprint()];
    const unlabelled = slowAlert(f1) as { alerts: Array<{ labels: Record<string, string> }> };
    delete unlabelled.alerts[0]!.labels.remediation;
    await fire(h, unlabelled);
    expect(onlyRun(h, f1)).toMatchObject({ handler: 'slow-queries', status: 'dry_run' });
    await fire(h, payload([{ labels: { alertname: 'RedisDown' }, fingerprint: f2 }]));
    expect(h.store.listRuns({ fingerprint: f2 })).toEqual([]);
  });

  it('a failed run pages what it saw, tried and verified; a later successful occurrence resolves the page', async () => {
    const h = await harness({ config: { handlers: { 'redis-failure': { mode: 'auto', cooldownSeconds: 0 } } } });
    const handler = scriptedHandler('redis-failure', { failChecks: ['verifyThing'] });
    h.remediation.handlers.register(handler);
    const fp = freshFingerprint();
    const dedupKey = `dbpilot/RedisDown/${fp}`;
    const labels = { alertname: 'RedisDown', remediation: 'redis-failure', severity: 'critical' };
    await fire(h, payload([{ labels, fingerprint: fp, startsAt: '2026-11-27T10:00:00Z' }]));
    const failed = onlyRun(h, fp);
    expect(failed).toMatchObject({ status: 'failed', reason: 'check after verifyThing failed: verifyThing did not take effect' });
    expect(h.store.steps(failed.id).map((s) => s.status)).toEqual(['done', 'check_failed']);
    const page = await waitForPage(dedupKey);
    expect(page.routingKey).toBe(TEAM_KEYS.devops);
    expect((page.event.payload as { custom_details: Record<string, unknown> }).custom_details).toMatchObject({
      run: failed.id,
      run_status: 'failed',
      verified: 'check after verifyThing failed: verifyThing did not take effect',
      tried: [`restartThing (done): kubectl do restartThing # ${fp}`, `verifyThing (check_failed): kubectl do verifyThing # ${fp}`],
      diagnostics: { scripted: true },
    });
    expect(h.store.lockHolder('fake/default')).toBeNull();

    handler.behaviour.failChecks = [];
    await fire(h, payload([{ labels, fingerprint: fp, startsAt: '2026-11-27T11:00:00Z' }]));
    expect(h.store.listRuns({ fingerprint: fp }).map((r) => r.status)).toEqual(['succeeded', 'failed']);
    await waitForPage(dedupKey, 'resolve');
    expect(pages(dedupKey).map((e) => e.action)).toEqual(['trigger', 'resolve']);
  });

  it('when the engine is idle, the page of every finished run is already in the durable outbox', async () => {
    // engine.idle() is what shutdown (and the CLI) wait for before closing the store.
    const h = await harness({ start: false, config: { handlers: { 'redis-failure': { mode: 'auto' } } } });
    h.remediation.handlers.register(scriptedHandler('redis-failure', { failChecks: ['restartThing'], diagnosticsDelayMs: 150 }));
    const fp = freshFingerprint();
    await fire(h, payload([{ labels: { alertname: 'RedisDown', remediation: 'redis-failure' }, fingerprint: fp }]));
    expect(onlyRun(h, fp).status).toBe('failed');
    const queued = h.store.outbox().filter((o) => o.dedupKey === `dbpilot/RedisDown/${fp}`);
    await sleep(300); // let a late escalation land before the harness closes the store
    expect(queued.map((o) => o.action)).toEqual(['trigger']);
  });

  it('while a trigger waits to be retried, the resolve queued behind it does not make the outbox spin', async () => {
    const h = await harness();
    pd.respondWith(503, 1, { retryAfter: 3 }); // the trigger's first attempt: retry in 3 s
    expect((await h.webhook(fixtureText(FIRING))).statusCode).toBe(202);
    await h.engine.idle();
    await until(() => pd.requests.length === 1 && h.store.outbox()[0]?.attempts === 1, 'the first delivery attempt');
    expect((await h.webhook(fixtureText(RESOLVED))).statusCode).toBe(202);
    await h.engine.idle();
    expect(h.store.outbox().map((o) => [o.action, o.status])).toEqual([
      ['trigger', 'pending'],
      ['resolve', 'pending'],
    ]);
    // Count the dispatcher's passes over one second of waiting: it has nothing it may send.
    let passes = 0;
    const dueTeams = h.store.dueTeams.bind(h.store);
    h.store.dueTeams = (nowMs) => {
      passes += 1;
      return dueTeams(nowMs);
    };
    await sleep(1000);
    expect(passes, 'dispatcher passes in 1 s while nothing is due').toBeLessThan(20);
    // And when the time comes, both go out, in order.
    await waitForPage(FIXTURE_DEDUP_KEY, 'resolve', 1, 10_000);
    expect(pages(FIXTURE_DEDUP_KEY).map((e) => e.action)).toEqual(['trigger', 'resolve']);
  });

  it('alerts named like Object.prototype members are recorded and paged like any other', async () => {
    const h = await harness();
    for (const alertname of ['constructor', 'toString', 'hasOwnProperty']) {
      const fp = freshFingerprint();
      const body = payload([{ labels: { alertname, remediation: 'restart-it' }, fingerprint: fp }]);
      await fire(h, body);
      expect(h.log.find('remediation failed unexpectedly').map((e) => e.err), alertname).toEqual([]);
      expect(h.store.listRuns({ fingerprint: fp }).map((r) => [r.alertname, r.status]), alertname).toEqual([[alertname, 'escalated']]);
      await waitForPage(groupPageKey(body, 'oncall-backend'));
    }
  });

  it('a severity label that is not a PagerDuty severity still gives a deliverable page (severity error)', async () => {
    const h = await harness();
    for (const severity of ['page', 'bogus', 'constructor', '__proto__', 'toString']) {
      const fp = freshFingerprint();
      // Each in an Alertmanager group of its own, so each is a page of its own.
      const body = payload([{ labels: { alertname: 'RedisDown', remediation: 'restart-redis', severity }, fingerprint: fp }], { groupKey: `{}:{alertname="RedisDown", severity=${JSON.stringify(severity)}}` });
      await fire(h, body);
      const page = await waitForPage(groupPageKey(body, 'devops'), 'trigger', 1, 3000).catch(() => {
        throw new Error(`severity label ${JSON.stringify(severity)}: no page reached PagerDuty (${JSON.stringify(h.store.outbox().map((o) => [o.status, o.lastError]))})`);
      });
      expect((page.event.payload as { severity: string }).severity, severity).toBe(severity === 'page' ? 'critical' : 'error');
    }
    expect(h.store.outbox({ status: 'dead' })).toEqual([]);
  });

  it('an accepted alert whose name is only blanks is not recorded as escalated without a page', async () => {
    const h = await harness();
    const fp = freshFingerprint();
    const res = await h.webhook(payload([{ labels: { alertname: '   ', remediation: 'restart-redis' }, fingerprint: fp }]));
    expect([202, 400]).toContain(res.statusCode);
    if (res.statusCode === 202) {
      await h.engine.idle();
      expect(h.log.find('remediation failed unexpectedly').map((e) => e.err)).toEqual([]);
      const runs = h.store.listRuns({ fingerprint: fp });
      for (const run of runs.filter((r) => r.status === 'escalated')) {
        const listed = (e: (typeof pd.accepted)[number]) =>
          ((e.event.payload as { custom_details?: { alerts?: { run?: string }[]; run?: string } } | undefined)?.custom_details?.alerts ?? []).some((x) => x.run === run.id);
        await until(() => pd.accepted.some((e) => listed(e) || (e.event.payload as { custom_details?: { run?: string } } | undefined)?.custom_details?.run === run.id), `a page for run ${run.id}`, 3000);
      }
    } else {
      expect(h.store.listRuns()).toEqual([]);
    }
  });
});

describe('the per-target lock', () => {
  it('a run whose target is locked by another run is skipped and executes nothing; once released, the next one acts', async () => {
    const h = await harness({ mode: 'auto' });
    const s = await slowQuery();
    expect(h.store.acquireLock(slowTarget(), 'run-held-by-someone-else', 'another-host/1/x', () => true)).toBe('acquired');
    const fp = freshFingerprint();
    await fire(h, slowAlert(fp));
    const run = onlyRun(h, fp);
    expect(run).toMatchObject({ status: 'skipped', reason: `target ${slowTarget()} is locked by run run-held-by-someone-else` });
    expect(h.store.steps(run.id).every((st) => st.status === 'planned' && st.attempts === 0)).toBe(true);
    expect(await s.running()).toBe(true);
    expect(h.store.lockHolder(slowTarget())).toBe('run-held-by-someone-else');

    h.store.releaseLock(slowTarget(), 'run-held-by-someone-else');
    const fp2 = freshFingerprint();
    await fire(h, slowAlert(fp2));
    expect(onlyRun(h, fp2).status).toBe('succeeded');
    expect(await s.done).toBe('cancelled');
  });

  it('of two runs racing for one target, one acts and the other is skipped; another target is not held up', async () => {
    const h = await harness({ config: { handlers: { 'redis-failure': { mode: 'auto', cooldownSeconds: 0 } } } });
    const planGate = gate();
    const stepGate = gate();
    const handler = scriptedHandler('redis-failure', {
      beforePlan: () => planGate.wait(),
      duringStep: (s, data) => ((data as { fingerprint: string }).fingerprint !== fOther && s === 'restartThing' ? stepGate.wait() : undefined),
    });
    h.remediation.handlers.register(handler);
    const [f1, f2] = [freshFingerprint(), freshFingerprint()];
    const fOther = freshFingerprint();
    const labels = (alertname: string, instance = 'shared') => ({ alertname, remediation: 'redis-failure', instance });
    await h.webhook(payload([{ labels: labels('RedisDown'), fingerprint: f1 }]));
    await h.webhook(payload([{ labels: labels('RedisRejectedConnections'), fingerprint: f2 }]));
    await until(() => handler.planCalls === 2, 'both runs planning');
    planGate.open();
    await stepGate.reached;
    await until(() => h.store.listRuns({ status: 'skipped' }).length === 1, 'the loser to be skipped');
    const winner = h.store.listRuns({ status: 'running' });
    expect(winner).toHaveLength(1);
    const loser = h.store.listRuns({ status: 'skipped' })[0]!;
    expect(loser.reason).toBe(`target fake/shared is locked by run ${winner[0]!.id}`);
    expect(h.store.lockHolder('fake/shared')).toBe(winner[0]!.id);

    // Meanwhile a run on another target goes ahead.
    // (not fire(): engine.idle() would wait for the winner, which waits for us)
    expect((await h.webhook(payload([{ labels: labels('RedisDown', 'elsewhere'), fingerprint: fOther }]))).statusCode).toBe(202);
    await until(() => h.store.listRuns({ fingerprint: fOther })[0]?.status === 'succeeded', 'the run on the other target to succeed');
    expect(h.store.getRun(winner[0]!.id)?.status).toBe('running');

    stepGate.open();
    await h.engine.idle();
    expect(h.store.getRun(winner[0]!.id)?.status).toBe('succeeded');
    expect(h.store.lockHolder('fake/shared')).toBeNull();
    const winnerFp = winner[0]!.fingerprint;
    const loserFp = loser.fingerprint;
    expect(handler.executed.filter((e) => e.startsWith(loserFp))).toEqual([]);
    expect(handler.executed.filter((e) => e.startsWith(winnerFp))).toEqual([`${winnerFp}:restartThing`, `${winnerFp}:verifyThing`]);
  });
});
