/**
 * The engine's admission of a group commit and its resume, on the defects a review found:
 * - one alert whose admission throws costs only itself, not every webhook of its batch;
 * - the age limit for resuming counts from the last recorded progress, not from the run's start;
 * - a run paused because the Lease was lost resumes when this process wins the Lease back.
 *
 * A scripted handler (under the runbook name `redis-failure`) stands in where timing must be exact;
 * the Lease lives in the strict Kubernetes stand-in.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { K8sStandIn } from '../support/k8s-standin.js';
import { Engine } from '../../src/remediation/engine.js';
import { HandlerRegistry } from '../../src/remediation/registry.js';
import { Metrics } from '../../src/metrics.js';
import { createLogger } from '../../src/logger.js';
import type { Handler } from '../../src/remediation/handler.js';
import { z } from 'zod';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { freshFingerprint, gate, groupPageKey, payload, scriptedHandler, startRemediation, until, type RemediationHarness } from '../support/remediation.js';

const pd = new PagerDutyStandin();
const k8s = new K8sStandIn({ namespaces: ['dbpilot-admission'] });
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-admission-'));
  await pd.start();
  await k8s.start();
});
afterAll(async () => {
  await pd.close();
  await k8s.close();
  rmSync(dir, { recursive: true, force: true });
});

const harnesses: RemediationHarness[] = [];
afterEach(async () => {
  await Promise.all(harnesses.splice(0).map((h) => h.close()));
  k8s.clearFaults();
  pd.reset();
});

async function harness(opts: Parameters<typeof startRemediation>[0] = {}): Promise<RemediationHarness> {
  const h = await startRemediation({ pagerduty: pd, ...opts });
  harnesses.push(h);
  return h;
}

const AUTO = { handlers: { 'redis-failure': { mode: 'auto', cooldownSeconds: 0 } } };
const redisAlert = (instance: string, fingerprint = freshFingerprint()) => ({
  labels: { alertname: 'RedisDown', remediation: 'redis-failure', team: 'devops', severity: 'critical', instance },
  fingerprint,
});

describe('admission of a group commit', () => {
  it('an alert whose admission throws is refused and paged with the reason; the rest of its webhook and of its batch are admitted', async () => {
    const h = await harness({ config: AUTO });
    const handler = scriptedHandler('redis-failure');
    const target = handler.target;
    handler.target = (alert, ctx) => {
      if (alert.labels.instance === 'bad') throw new Error('cannot name the target of this alert');
      return target(alert, ctx);
    };
    h.remediation.handlers.register(handler);
    const [good1, bad, good2, other] = [redisAlert('r1'), redisAlert('bad'), redisAlert('r2'), redisAlert('r3')];
    // Two webhooks in flight together: both land in one group commit.
    const withBad = payload([good1, bad, good2]);
    const [res1, res2] = await Promise.all([h.webhook(withBad), h.webhook(payload([other]))]);
    expect([res1.statusCode, res2.statusCode], `${res1.body} ${res2.body}`).toEqual([202, 202]);
    await h.settle();

    for (const a of [good1, good2, other]) {
      const [run] = h.store.listRuns({ fingerprint: a.fingerprint });
      expect(run?.status, a.labels.instance).toBe('succeeded');
    }
    const [refused, ...more] = h.store.listRuns({ fingerprint: bad.fingerprint });
    expect(more).toEqual([]);
    expect(refused).toMatchObject({ status: 'escalated', handler: 'redis-failure', target: '-', reason: 'refused: cannot name the target of this alert' });
    expect(handler.executed.filter((e) => e.startsWith(bad.fingerprint))).toEqual([]);
    // Refused alerts are paged in their Alertmanager group's page, which lists the alert and why.
    const key = groupPageKey(withBad, 'devops');
    await until(() => pd.acceptedCount(key, 'trigger') === 1, 'the refusal to be paged');
    const page = pd.accepted.find((e) => e.dedupKey === key)!;
    const listed = (page.event.payload as { custom_details: { alerts: { fingerprint: string; reason: string; run: string }[] } }).custom_details.alerts;
    expect(listed).toEqual([expect.objectContaining({ fingerprint: bad.fingerprint, run: refused!.id, reason: 'refused: cannot name the target of this alert' })]);
    expect(await h.metric('dbpilot_remediations_total', { handler: 'redis-failure', outcome: 'escalated' })).toBe(1);

    // Alertmanager re-sends the same notification: the refusal is not recorded (nor paged) twice.
    expect((await h.webhook(withBad)).statusCode).toBe(202);
    await h.settle();
    expect(h.store.listRuns({ fingerprint: bad.fingerprint })).toHaveLength(1);
    expect(pd.acceptedCount(key, 'trigger')).toBe(1);
  });
});

describe('savepoints and occurrences', () => {
  it('an alert whose admission fails after its run row was written leaves no trace but its refusal', async () => {
    const h = await harness({ config: { handlers: { 'redis-failure': { mode: 'off' } } } });
    const handler = scriptedHandler('redis-failure');
    // The team is read after the mode-off run row is written: throwing there rolls back that row.
    let poison = '';
    Object.defineProperty(handler, 'team', {
      get() {
        if (poison) {
          const f = poison;
          poison = '';
          throw new Error(`no team for ${f}`);
        }
        return 'devops';
      },
    });
    h.remediation.handlers.register(handler);
    // No team label: the team comes from the handler.
    const noTeam = (instance: string) => ({ labels: { alertname: 'RedisDown', remediation: 'redis-failure', instance }, fingerprint: freshFingerprint() });
    const bad = noTeam('bad');
    const good = noTeam('good');
    poison = bad.fingerprint;
    const body = payload([bad, good], { groupKey: '{}:{alertname="RedisDown"}' });
    expect((await h.webhook(body)).statusCode).toBe(202);
    await h.settle();
    // The row the savepoint rolled back is gone: the one left is the refusal, with its reason.
    expect(h.store.listRuns({ fingerprint: bad.fingerprint }).map((r) => [r.status, r.reason])).toEqual([['escalated', `refused: no team for ${bad.fingerprint}`]]);
    expect(h.store.listRuns({ fingerprint: good.fingerprint }).map((r) => r.status)).toEqual(['skipped']);
    // The grouped page lists each alert once, the refused one with its reason (nothing the rolled-back part queued).
    const key = groupPageKey(body, 'devops');
    await until(() => pd.acceptedCount(key, 'trigger') === 1, 'the group page');
    const alerts = (pd.accepted.find((e) => e.dedupKey === key)!.event.payload as { custom_details: { alerts: { fingerprint: string; reason: string }[] } }).custom_details.alerts;
    expect(alerts.map((x) => [x.fingerprint, x.reason]).sort()).toEqual(
      [
        [bad.fingerprint, `refused: no team for ${bad.fingerprint}`],
        [good.fingerprint, 'handler redis-failure is off'],
      ].sort(),
    );
  });

  it('a late resolve of an earlier occurrence does not resolve the group page of the occurrence firing now', async () => {
    const h = await harness();
    const groupKey = '{}:{alertname="Recurring"}';
    const fp = freshFingerprint();
    const labels = { alertname: 'Recurring', remediation: 'restart-it', team: 'devops' };
    const first = { labels, fingerprint: fp, startsAt: '2026-11-27T10:00:00.000Z' };
    const second = { labels, fingerprint: fp, startsAt: '2026-11-27T11:00:00.000Z' };
    const key = groupPageKey(payload([first], { groupKey }), 'devops');
    await h.webhook(payload([first], { groupKey }));
    await h.settle();
    await h.webhook(payload([{ ...first, status: 'resolved' }], { groupKey }));
    await h.settle();
    await until(() => pd.acceptedCount(key, 'resolve') === 1, 'the first occurrence resolved');
    await h.webhook(payload([second], { groupKey }));
    await h.settle();
    await until(() => pd.acceptedCount(key, 'trigger') === 2, 'the second occurrence paged');
    // A second Alertmanager sends the first occurrence's resolve again, late.
    await h.webhook(payload([{ ...first, status: 'resolved' }], { groupKey }));
    await h.settle();
    expect(pd.acceptedCount(key, 'resolve')).toBe(1);
    expect(h.store.openPageMembers(key).map((m) => m.startsAt)).toEqual([second.startsAt]);
  });
});

describe('a storm stays readable', () => {
  it('one webhook of 5,000 alerts dbpilot only escalates: 5,000 runs, one page per team listing them, resolved with the group', async () => {
    const h = await harness({ config: { webhook: { bodyLimitBytes: 16 * 1024 * 1024 } } });
    const teams = ['devops', 'oncall-backend'] as const;
    const alerts = Array.from({ length: 5000 }, (_, i) => ({
      labels: { alertname: `StormAlert${i % 7}`, remediation: 'restart-it', team: teams[i % 2]!, severity: i === 4998 ? 'critical' : 'warning', instance: `i${i}` },
      fingerprint: freshFingerprint(),
    }));
    const body = payload(alerts, { groupKey: '{}/{remediation!="none"}:{job="storm"}' });
    expect((await h.webhook(body)).statusCode).toBe(202);
    await h.settle();
    expect(h.store.countRuns()).toBe(5000);
    expect(h.store.countRuns({ status: 'escalated' })).toBe(5000);
    const keys = teams.map((t) => groupPageKey(body, t));
    await until(() => keys.every((k) => pd.acceptedCount(k, 'trigger') === 1), 'one page per team');
    expect(pd.accepted.map((e) => e.action)).toEqual(['trigger', 'trigger']);
    const page = pd.accepted.find((e) => e.dedupKey === keys[0])!.event.payload as { summary: string; severity: string; custom_details: { alerts: unknown[]; not_listed: number } };
    expect(page.summary).toMatch(/^\[dbpilot\] 2500 alerts need a human: StormAlert/);
    expect(page.custom_details.alerts).toHaveLength(50);
    expect(page.custom_details.not_listed).toBe(2450);
    expect(page.severity).toBe('critical'); // the worst of its alerts (i = 4998 pages devops)

    // The group resolves: each page is resolved once, after its trigger.
    const resolved = payload(alerts.map((a) => ({ ...a, status: 'resolved' as const })), { groupKey: body.groupKey });
    expect((await h.webhook(resolved)).statusCode).toBe(202);
    await h.settle();
    await until(() => keys.every((k) => pd.acceptedCount(k, 'resolve') === 1), 'each page resolved');
    for (const k of keys) expect(pd.accepted.filter((e) => e.dedupKey === k).map((e) => e.action)).toEqual(['trigger', 'resolve']);
  });

  it('a page still open grows with the alerts that join its group, and resolves only with the last of them', async () => {
    const h = await harness();
    const groupKey = '{}:{alertname="Unhandled"}';
    const first = { labels: { alertname: 'Unhandled', remediation: 'restart-it', team: 'devops' }, fingerprint: freshFingerprint() };
    const second = { labels: { alertname: 'Unhandled', remediation: 'restart-it', team: 'devops', instance: 'b' }, fingerprint: freshFingerprint() };
    const b1 = payload([first], { groupKey });
    const key = groupPageKey(b1, 'devops');
    await h.webhook(b1);
    await h.settle();
    await until(() => pd.acceptedCount(key, 'trigger') === 1, 'the first page');
    await h.webhook(payload([first, second], { groupKey }));
    await h.settle();
    await until(() => pd.acceptedCount(key, 'trigger') === 2, 'the page updated with the second alert');
    const latest = pd.accepted.filter((e) => e.dedupKey === key).at(-1)!.event.payload as { custom_details: { alerts: { fingerprint: string }[] } };
    expect(latest.custom_details.alerts.map((a) => a.fingerprint)).toEqual([first.fingerprint, second.fingerprint]);
    await h.webhook(payload([{ ...first, status: 'resolved' }], { groupKey }));
    await h.settle();
    expect(pd.acceptedCount(key, 'resolve')).toBe(0);
    await h.webhook(payload([{ ...second, status: 'resolved' }], { groupKey }));
    await h.settle();
    await until(() => pd.acceptedCount(key, 'resolve') === 1, 'the page resolved with the last alert');
  });
});

describe('scoped locks', () => {
  it('a run on a wider target waits for a narrower one acting, keeps new narrower ones out meanwhile, then acts', async () => {
    const h = await harness({ config: { handlers: { 'redis-failure': { mode: 'auto', cooldownSeconds: 0 }, 'disk-full': { mode: 'auto', cooldownSeconds: 0, lockWaitSeconds: 30 } } } });
    const gateB = gate();
    const narrow = scriptedHandler('redis-failure', { duringStep: (step) => (step === 'restartThing' ? gateB.wait() : undefined) });
    const wide = scriptedHandler('disk-full');
    wide.target = () => 'fake'; // the whole of `fake`: wider than fake/<instance>
    h.remediation.handlers.register(narrow).register(wide);
    const b = { labels: { alertname: 'Narrow', remediation: 'redis-failure', instance: 'one' }, fingerprint: freshFingerprint() };
    expect((await h.webhook(payload([b]))).statusCode).toBe(202);
    await gateB.reached;
    const a = { labels: { alertname: 'Wide', remediation: 'disk-full' }, fingerprint: freshFingerprint() };
    expect((await h.webhook(payload([a]))).statusCode).toBe(202);
    await until(() => h.store.lockConflicts('fake', 'x').some((l) => l.target === 'fake' && l.state === 'waiting'), 'the wide run to wait');
    // A new narrow run meanwhile is kept out by the waiting wide one.
    const c = { labels: { alertname: 'Narrow2', remediation: 'redis-failure', instance: 'two' }, fingerprint: freshFingerprint() };
    expect((await h.webhook(payload([c]))).statusCode).toBe(202);
    await until(() => h.store.listRuns({ fingerprint: c.fingerprint })[0]?.status === 'skipped', 'the new narrow run to be skipped');
    expect(h.store.listRuns({ fingerprint: c.fingerprint })[0]!.reason).toMatch(/^target fake\/two is locked by run [0-9a-f-]+ on fake$/);
    expect(wide.executed).toEqual([]);
    gateB.open();
    await h.settle();
    expect(h.store.listRuns({ fingerprint: b.fingerprint })[0]?.status).toBe('succeeded');
    expect(h.store.listRuns({ fingerprint: a.fingerprint })[0]?.status).toBe('succeeded');
    expect(wide.executed).toEqual([`${a.fingerprint}:restartThing`, `${a.fingerprint}:verifyThing`]);
    expect(h.store.lockConflicts('fake', 'x')).toEqual([]);
  });

  it('a wider run that waited its lockWaitSeconds in vain gives up, acts on nothing, and pages', async () => {
    const h = await harness({ config: { handlers: { 'redis-failure': { mode: 'auto', cooldownSeconds: 0 }, 'disk-full': { mode: 'auto', cooldownSeconds: 0, lockWaitSeconds: 1 } } } });
    const gateB = gate();
    const narrow = scriptedHandler('redis-failure', { duringStep: (step) => (step === 'restartThing' ? gateB.wait() : undefined) });
    const wide = scriptedHandler('disk-full');
    wide.target = () => 'fake';
    h.remediation.handlers.register(narrow).register(wide);
    expect((await h.webhook(payload([{ labels: { alertname: 'Narrow', remediation: 'redis-failure', instance: 'one' }, fingerprint: freshFingerprint() }]))).statusCode).toBe(202);
    await gateB.reached;
    const a = { labels: { alertname: 'Wide', remediation: 'disk-full', team: 'devops' }, fingerprint: freshFingerprint() };
    await h.webhook(payload([a]));
    await until(() => h.store.listRuns({ fingerprint: a.fingerprint })[0]?.status === 'skipped', 'the wide run to give up', 10_000);
    expect(h.store.listRuns({ fingerprint: a.fingerprint })[0]!.reason).toMatch(/^waited 1 s for run [0-9a-f-]+ on fake\/one to end; nothing was done$/);
    expect(wide.executed).toEqual([]);
    await until(() => pd.acceptedCount(`dbpilot/Wide/${a.fingerprint}`, 'trigger') === 1, 'the page');
    gateB.open();
    await h.settle();
  });
});

describe('plans and steps', () => {
  it('a step stops within itself when the Lease is lost (its signal aborts), and the run is resumed later', async () => {
    const h = await harness({ config: AUTO, start: false });
    let leading = true;
    const started = gate();
    const checked: string[] = [];
    const handler: Handler<{ n: number }> = {
      name: 'redis-failure',
      team: 'devops',
      target: () => 'fake/abort',
      plan: async () => ({ summary: 'wait until told to stop', data: { n: 1 } }),
      steps: () => [
        {
          name: 'longWait',
          command: 'sleep forever',
          idempotent: true,
          run: (_prior, ctx) =>
            new Promise((_, reject) => {
              void started.wait();
              ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason), { once: true });
            }),
          check: async () => {
            checked.push('longWait');
            return { ok: true, detail: 'verified on the live system' };
          },
        },
      ],
    };
    const engine = new Engine({
      config: h.config,
      store: h.store,
      handlers: new HandlerRegistry().register(handler as Handler),
      ctx: { config: h.config, cluster: h.runtime.cluster, topology: h.runtime.topology, redis: h.runtime.redis, kube: null, intents: { where: 'x', read: async () => ({ intent: null, version: null }), write: async () => '' }, logger: createLogger('silent') },
      outbox: h.outbox,
      metrics: new Metrics({ processMetrics: false }),
      logger: createLogger('silent'),
      isLeader: () => leading,
      requireLease: true,
      instance: `abort/${process.pid}/0abc0def`,
    });
    try {
      const running = engine.onFiring({ alertname: 'RedisDown', labels: { alertname: 'RedisDown', remediation: 'redis-failure' }, annotations: {}, fingerprint: freshFingerprint(), startsAt: new Date().toISOString() });
      await started.reached;
      leading = false;
      engine.stopActing('this replica lost the leader Lease');
      const paused = await running;
      expect(paused?.status).toBe('running');
      expect(h.store.steps(paused!.id).map((s) => [s.name, s.status, s.attempts])).toEqual([['longWait', 'running', 1]]);
      leading = true;
      await until(() => h.store.getRun(paused!.id)?.status === 'succeeded', 'the run resumed and verified', 10_000);
      expect(checked).toEqual(['longWait']);
      expect((h.store.steps(paused!.id)[0]!.check as { detail: string }).detail).toBe('verified on the live system (verified after restart)');
    } finally {
      await engine.close();
    }
  });

  it('a plan this build cannot carry on (its schema refuses it) is escalated on resume, never executed', async () => {
    const h = await harness({ config: AUTO, start: false });
    const handler = scriptedHandler('redis-failure');
    (handler as { planSchema?: unknown }).planSchema = z.strictObject({ fingerprint: z.string(), steps: z.array(z.string()), version: z.literal(2) });
    h.remediation.handlers.register(handler);
    const run = leftInFlight(h, freshFingerprint());
    await h.engine.resume();
    await h.engine.idle();
    const after = h.store.getRun(run.id)!;
    expect(after.status).toBe('escalated');
    expect(after.reason).toMatch(/^the recorded plan is not one this build of redis-failure can carry on \(version: /);
    expect(handler.executed).toEqual([]);
  });

  it('an approval after the plan waited longer than approveMaxAgeSeconds is refused and the run escalated', async () => {
    const h = await harness({ config: { handlers: { 'redis-failure': { mode: 'approve', approveMaxAgeSeconds: 10 } } } });
    const handler = scriptedHandler('redis-failure');
    h.remediation.handlers.register(handler);
    const a = redisAlert('stale');
    await h.webhook(payload([a]));
    await h.settle();
    const [run] = h.store.listRuns({ fingerprint: a.fingerprint });
    expect(run?.status).toBe('awaiting_approval');
    backdate(h.storePath, run!.id, { runAgoMs: 60_000 });
    await expect(h.engine.approve(run!.id, 'alice')).rejects.toThrow(/cannot be approved: its plan waited 6\d s for approval \(at most 10 s\)/);
    expect(h.store.getRun(run!.id)).toMatchObject({ status: 'escalated', approvedBy: 'alice' });
    expect(handler.executed).toEqual([]);
  });
});

/** Rewrites a run's and its steps' timestamps in the store file, as if they had been written `agoMs` earlier. */
function backdate(storePath: string, runId: string, fields: { runAgoMs: number; stepStartedAgoMs?: number }): void {
  const db = new Database(storePath);
  try {
    const at = (ago: number) => new Date(Date.now() - ago).toISOString();
    db.prepare('UPDATE runs SET created_at = ?, updated_at = ? WHERE id = ?').run(at(fields.runAgoMs), at(fields.runAgoMs), runId);
    const stepAt = at(fields.stepStartedAgoMs ?? fields.runAgoMs);
    db.prepare('UPDATE steps SET started_at = ? WHERE run_id = ? AND started_at IS NOT NULL').run(stepAt, runId);
  } finally {
    db.close();
  }
}

/** A run left `running` by a dead process, its first step started and its output recorded. */
function leftInFlight(h: RemediationHarness, fingerprint: string) {
  const run = h.store.createRun({
    handler: 'redis-failure',
    alertname: 'RedisDown',
    fingerprint,
    startsAt: new Date().toISOString(),
    target: 'fake/crashed',
    mode: 'auto',
    status: 'running',
    plan: { summary: 'scripted', data: { fingerprint, steps: ['restartThing', 'verifyThing'] }, escalateAfter: null },
    labels: { alertname: 'RedisDown', remediation: 'redis-failure', instance: 'crashed' },
    // pid 4194000 is above any pid this machine hands out: the owner is dead.
    owner: 'dbpilot-0/4194000/deadbeef',
  })!;
  h.store.putSteps(run.id, [
    { name: 'restartThing', command: 'kubectl do restartThing' },
    { name: 'verifyThing', command: 'kubectl do verifyThing' },
  ]);
  h.store.stepStarted(run.id, 0);
  h.store.stepOutput(run.id, 0, { did: 'restartThing' });
  expect(h.store.acquireLock(run.target, run.id, 'dbpilot-0/4194000/deadbeef', () => false)).toBe('acquired');
  return run;
}

describe('resume', () => {
  it('a run started 11 minutes ago that crashed 2 seconds ago is resumed, not escalated as stale', async () => {
    const h = await harness({ config: AUTO, start: false });
    const handler = scriptedHandler('redis-failure');
    h.remediation.handlers.register(handler);
    const fp = freshFingerprint();
    const run = leftInFlight(h, fp);
    backdate(h.storePath, run.id, { runAgoMs: 11 * 60_000, stepStartedAgoMs: 2_000 });

    await h.engine.resume();
    await h.engine.idle();
    const after = h.store.getRun(run.id)!;
    expect(after.status, String(after.reason)).toBe('succeeded');
    const steps = h.store.steps(run.id);
    expect(steps.map((s) => [s.name, s.status, s.attempts])).toEqual([
      ['restartThing', 'done', 1],
      ['verifyThing', 'done', 1],
    ]);
    expect((steps[0]!.check as { detail: string }).detail).toMatch(/verified after restart/);
    // The in-flight step was verified, not repeated.
    expect(handler.executed).toEqual([`${fp}:verifyThing`]);
  });

  it('a run whose last recorded progress is 11 minutes old is escalated instead of resumed', async () => {
    const h = await harness({ config: AUTO, start: false });
    const handler = scriptedHandler('redis-failure');
    h.remediation.handlers.register(handler);
    const run = leftInFlight(h, freshFingerprint());
    backdate(h.storePath, run.id, { runAgoMs: 11 * 60_000 });

    await h.engine.resume();
    await h.engine.idle();
    const after = h.store.getRun(run.id)!;
    expect(after.status).toBe('escalated');
    expect(after.reason).toMatch(/^left in flight 6\d\d s ago; too old to resume safely$/);
    expect(handler.executed).toEqual([]);
    expect(h.store.lockHolder(run.target)).toBeNull();
  });

  it('a run paused for the Lease resumes once this replica may act again, even when no change of leadership is announced', async () => {
    const h = await harness({ config: AUTO, start: false });
    let leading = true;
    const stepGate = gate();
    const handler = scriptedHandler('redis-failure', { duringStep: (step) => (step === 'restartThing' ? stepGate.wait() : undefined) });
    const registry = new HandlerRegistry().register(handler);
    // An engine of its own on the harness's store, whose leadership the test decides — and never announces.
    const engine = new Engine({
      config: h.config,
      store: h.store,
      handlers: registry,
      ctx: { config: h.config, cluster: h.runtime.cluster, topology: h.runtime.topology, redis: h.runtime.redis, kube: null, intents: { where: 'x', read: async () => ({ intent: null, version: null }), write: async () => '' }, logger: createLogger('silent') },
      outbox: h.outbox,
      metrics: new Metrics({ processMetrics: false }),
      logger: createLogger('silent'),
      isLeader: () => leading,
      requireLease: true,
      instance: `unannounced/${process.pid}/0badc0de`,
    });
    try {
      const a = redisAlert('unannounced');
      const info = { alertname: 'RedisDown', labels: a.labels, annotations: {}, fingerprint: a.fingerprint, startsAt: new Date().toISOString() };
      const running = engine.onFiring(info);
      await stepGate.reached;
      leading = false;
      stepGate.open();
      const paused = await running;
      expect(paused?.status).toBe('running');
      expect(h.store.steps(paused!.id).map((s) => s.status)).toEqual(['done', 'planned']);
      leading = true; // the Lease is renewed again; nobody calls resume()
      await until(() => h.store.getRun(paused!.id)?.status === 'succeeded', 'the paused run to resume by itself', 10_000);
    } finally {
      await engine.close();
    }
  });

  it('a run paused because the Lease was lost resumes when this process wins the Lease back, and releases its target', async () => {
    const kubeconfig = await k8s.writeKubeconfig(dir, { namespace: 'dbpilot-admission', fileName: 'kubeconfig-resume' });
    const lease = { name: 'dbpilot-admission-leader', durationSeconds: 2, renewDeadlineSeconds: 1, retryPeriodSeconds: 0.25 };
    const h = await harness({ config: { ...AUTO, kubernetes: { kubeconfig, namespace: 'dbpilot-admission', lease } } });
    const stepGate = gate();
    const handler = scriptedHandler('redis-failure', { duringStep: (step) => (step === 'restartThing' ? stepGate.wait() : undefined) });
    h.remediation.handlers.register(handler);
    await until(() => h.remediation.leader.isLeader(), 'leadership');

    const a = redisAlert('leased');
    expect((await h.webhook(payload([a]))).statusCode).toBe(202);
    await stepGate.reached;
    const [run] = h.store.listRuns({ fingerprint: a.fingerprint });
    // The API server stops answering the Lease: this replica steps down while restartThing runs.
    k8s.failNext(1_000_000, 503, { path: '/leases/' });
    await until(() => !h.remediation.leader.isLeader(), 'stepping down');
    stepGate.open();
    await h.engine.idle();
    expect(h.store.getRun(run!.id)?.status).toBe('running');
    expect(h.store.steps(run!.id).map((s) => [s.name, s.status, s.attempts])).toEqual([
      ['restartThing', 'done', 1],
      ['verifyThing', 'planned', 0],
    ]);
    expect(h.store.lockHolder(run!.target)).toBe(run!.id);

    // The API server answers again: the Lease is won back, and the paused run continues from its next step.
    k8s.clearFaults();
    await until(() => h.store.getRun(run!.id)?.status === 'succeeded', 'the paused run to be resumed and to succeed');
    expect(handler.executed).toEqual([`${a.fingerprint}:restartThing`, `${a.fingerprint}:verifyThing`]);
    expect(h.store.lockHolder(run!.target)).toBeNull();

    // The target is free again: the next occurrence on it acts.
    const next = redisAlert('leased');
    expect((await h.webhook(payload([next]))).statusCode).toBe(202);
    await h.engine.idle();
    expect(h.store.listRuns({ fingerprint: next.fingerprint })[0]?.status).toBe('succeeded');
  });
});
