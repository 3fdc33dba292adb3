/**
 * Safety rails of the engine's policy that no other test pinned down (found by mutation testing,
 * `npm run mutate`): a dry-run from Alertmanager pages its plan (a human must see it) while a human's
 * own CLI dry-run pages nobody; a dry-run that found nothing is a dry-run, never a success; a run still
 * acting on a target blocks the next one before it is even planned, whatever the cooldown.
 * Through the webhook and the engine of the harness, with a scripted handler and the PagerDuty stand-in.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { freshFingerprint, gate, payload, scriptedHandler, startRemediation, until, type RemediationHarness } from '../support/remediation.js';

const pd = new PagerDutyStandin();
beforeAll(async () => {
  await pd.start();
});
afterAll(async () => {
  await pd.close();
});
const harnesses: RemediationHarness[] = [];
afterEach(async () => {
  await Promise.all(harnesses.splice(0).map((h) => h.close()));
  pd.reset();
});

async function harness(mode: 'dry-run' | 'auto'): Promise<RemediationHarness> {
  const h = await startRemediation({ pagerduty: pd, config: { handlers: { 'redis-failure': { mode, cooldownSeconds: 0 } } } });
  harnesses.push(h);
  return h;
}

const redisAlert = (fingerprint: string, instance = 'policy') => ({
  labels: { alertname: 'RedisDown', remediation: 'redis-failure', team: 'devops', severity: 'critical', instance },
  fingerprint,
});

async function fire(h: RemediationHarness, alerts: ReturnType<typeof redisAlert>[]): Promise<void> {
  const res = await h.webhook(payload(alerts));
  expect(res.statusCode, res.body).toBe(202);
}

describe('dry-run', () => {
  it("pages the plan of a dry-run Alertmanager started; a human's CLI dry-run pages nobody", async () => {
    const h = await harness('dry-run');
    h.remediation.handlers.register(scriptedHandler('redis-failure'));
    const fp = freshFingerprint();
    await fire(h, [redisAlert(fp)]);
    await h.settle();
    const [run] = h.store.listRuns({ fingerprint: fp });
    expect(run?.status).toBe('dry_run');
    const page = pd.accepted.find((e) => e.dedupKey === `dbpilot/RedisDown/${fp}` && e.action === 'trigger');
    expect(page, 'the dry-run is paged').toBeDefined();
    const details = (page!.event as { payload: { custom_details: Record<string, unknown> } }).payload.custom_details;
    expect(details.tried).toBe('nothing: dry-run mode; these are the runbook commands it would run');
    expect(details.plan).toEqual([`kubectl do restartThing # ${fp}`, `kubectl do verifyThing # ${fp}`]);

    const manual = await h.engine.runManual('redis-failure', { instance: 'by-hand' }, 'dry-run');
    await h.settle();
    expect(manual?.status).toBe('dry_run');
    expect(pd.accepted.filter((e) => e.dedupKey.endsWith(`/${manual!.fingerprint}`)), 'nobody is paged for a CLI dry-run').toEqual([]);
  });

  it('a dry-run that finds nothing to do is recorded as a dry-run, not as a success', async () => {
    const h = await harness('dry-run');
    const handler = scriptedHandler('redis-failure', { nothingToDo: true });
    h.remediation.handlers.register(handler);
    const fp = freshFingerprint();
    await fire(h, [redisAlert(fp)]);
    await h.settle();
    const [run] = h.store.listRuns({ fingerprint: fp });
    expect(run?.status).toBe('dry_run');
    expect(run?.reason).toMatch(/^dry-run: nothing to do: scripted plan for RedisDown/);
    expect(handler.executed).toEqual([]);
    expect(await h.metric('dbpilot_remediations_total', { handler: 'redis-failure', outcome: 'succeeded' })).toBe(0);
  });
});

describe('one run acting per target', () => {
  it('a run still acting on the target blocks the next alert on it before it is planned, even with no cooldown', async () => {
    const h = await harness('auto');
    const stepGate = gate();
    const handler = scriptedHandler('redis-failure', { duringStep: (step) => (step === 'restartThing' ? stepGate.wait() : undefined) });
    h.remediation.handlers.register(handler);
    const [first, second] = [freshFingerprint(), freshFingerprint()];
    await fire(h, [redisAlert(first)]);
    await stepGate.reached;
    const [acting] = h.store.listRuns({ fingerprint: first });
    expect(acting?.status).toBe('running');

    await fire(h, [redisAlert(second)]);
    // Not idle(): the first run waits at its gate.
    await until(() => h.store.listRuns({ fingerprint: second })[0]?.status === 'skipped', 'the second run to be skipped');
    const [blocked] = h.store.listRuns({ fingerprint: second });
    expect(blocked?.reason).toBe(`run ${acting!.id} is still acting on fake/policy`);
    expect(handler.planCalls).toBe(1);

    stepGate.open();
    await h.engine.idle();
    expect(h.store.getRun(acting!.id)?.status).toBe('succeeded');
    expect(handler.executed).toEqual([`${first}:restartThing`, `${first}:verifyThing`]);
  });
});
