/**
 * Safety rails of resuming a run a dead process left in flight that no other test pinned down (found
 * by mutation testing, `npm run mutate`): a step that was started is checked first; a step that cannot
 * be verified is repeated only when it is idempotent, otherwise the run stops and pages; a check that
 * throws is retried before it counts as unverifiable; steps already done are not run again.
 *
 * The run rows are written as a dead process leaves them (its owner a pid no process has), on the
 * harness's real store; the handler's steps are scripted so what ran can be counted exactly.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CheckResult, Handler, Step } from '../../src/remediation/handler.js';
import type { RunRow } from '../../src/store/store.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { freshFingerprint, standIn, startRemediation, type RemediationHarness } from '../support/remediation.js';

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

/** pid 4194000 is above any pid this machine hands out: the process that left the run is dead. */
const DEAD_OWNER = 'dbpilot-0/4194000/deadbeef';

interface StepSpec {
  name: string;
  idempotent: boolean;
  /** What its check answers; 'throw' rejects; 'fail-until-run' fails until its action has run here. Default ok. */
  check?: 'ok' | 'fail' | 'throw' | 'fail-until-run';
}

/** A handler whose steps are the plan's, each counting its actions and its checks. */
function countingHandler(specs: StepSpec[]): Handler<{ steps: string[] }> & { ran: string[]; checked: string[]; seen: string[] } {
  const ran: string[] = [];
  const checked: string[] = [];
  /** What each step's action was handed of the steps before it (their checks). */
  const seen: string[] = [];
  const byName = new Map(specs.map((s) => [s.name, s]));
  // In the harness it stands in for the built redis-failure handler.
  return standIn({
    name: 'redis-failure',
    team: 'devops',
    ran,
    checked,
    seen,
    target: () => 'fake/resumed',
    plan: async () => ({ summary: 'counting plan', data: { steps: specs.map((s) => s.name) } }),
    steps: (data) =>
      data.steps.map(
        (name): Step => ({
          name,
          command: `kubectl do ${name}`,
          idempotent: byName.get(name)!.idempotent,
          run: async (prior) => {
            ran.push(name);
            seen.push(`${name} saw ${[...prior.entries()].map(([k, v]) => `${k}:${v.check?.detail ?? 'no check'}`).join(',') || 'nothing'}`);
            return { did: name };
          },
          check: async (): Promise<CheckResult> => {
            checked.push(name);
            const how = byName.get(name)!.check ?? 'ok';
            if (how === 'throw') throw new Error(`${name}: the server is still recovering`);
            return how === 'ok' || (how === 'fail-until-run' && ran.includes(name)) ? { ok: true, detail: `${name} verified` } : { ok: false, detail: `${name} did not take effect` };
          },
        }),
      ),
  });
}

async function harness(): Promise<RemediationHarness> {
  const h = await startRemediation({ pagerduty: pd, start: false, config: { handlers: { 'redis-failure': { mode: 'auto', cooldownSeconds: 0 } } } });
  harnesses.push(h);
  return h;
}

/**
 * A run left `running` by a dead process: steps before `inFlight` done and checked, step `inFlight`
 * started (with its output recorded when `output` is given), the target locked by the dead process.
 */
function leftInFlight(h: RemediationHarness, specs: StepSpec[], inFlight: number, output?: unknown, status?: 'error' | 'check_failed'): RunRow {
  const fingerprint = freshFingerprint();
  const run = h.store.createRun({
    handler: 'redis-failure',
    alertname: 'RedisDown',
    fingerprint,
    startsAt: new Date().toISOString(),
    target: 'fake/resumed',
    mode: 'auto',
    status: 'running',
    plan: { summary: 'counting plan', data: { steps: specs.map((s) => s.name) }, escalateAfter: null },
    labels: { alertname: 'RedisDown', remediation: 'redis-failure', team: 'devops' },
    owner: DEAD_OWNER,
  })!;
  h.store.putSteps(
    run.id,
    specs.map((s) => ({ name: s.name, command: `kubectl do ${s.name}` })),
  );
  for (let i = 0; i < inFlight; i++) {
    h.store.stepStarted(run.id, i);
    h.store.stepFinished(run.id, i, 'done', { output: { did: specs[i]!.name }, check: { ok: true, detail: `${specs[i]!.name} verified` } });
  }
  h.store.stepStarted(run.id, inFlight);
  if (output !== undefined) h.store.stepOutput(run.id, inFlight, output);
  // A crash after the step's failure was recorded and before the run was closed.
  if (status === 'error') h.store.stepFinished(run.id, inFlight, 'error', { error: 'connection reset' });
  if (status === 'check_failed') h.store.stepFinished(run.id, inFlight, 'check_failed', { output, check: { ok: false, detail: 'not yet' } });
  expect(h.store.acquireLock(run.target, run.id, DEAD_OWNER, () => false)).toBe('acquired');
  return run;
}

async function resume(h: RemediationHarness, handler: Handler<{ steps: string[] }>): Promise<void> {
  h.remediation.handlers.register(handler as Handler<unknown> as never);
  await h.engine.resume();
  await h.engine.idle();
}

describe('resuming a step that was in flight', () => {
  it('a step that recorded no output is checked on the live system first; unverified and not idempotent, it is not repeated: the run fails and pages why', async () => {
    const h = await harness();
    const specs: StepSpec[] = [
      { name: 'drainThing', idempotent: true },
      { name: 'promoteThing', idempotent: false, check: 'fail' },
      { name: 'verifyThing', idempotent: true },
    ];
    const handler = countingHandler(specs);
    const run = leftInFlight(h, specs, 1);
    await resume(h, handler);

    const after = h.store.getRun(run.id)!;
    expect(after.status).toBe('failed');
    const reason = 'step promoteThing was in flight when dbpilot stopped and cannot be verified (promoteThing did not take effect); not repeating it';
    expect(after.reason).toBe(reason);
    expect(handler.ran).toEqual([]);
    expect(handler.checked).toEqual(['promoteThing']);
    expect(h.store.steps(run.id).map((s) => [s.name, s.status])).toEqual([
      ['drainThing', 'done'],
      ['promoteThing', 'check_failed'],
      ['verifyThing', 'planned'],
    ]);
    expect(h.store.steps(run.id)[1]!.check).toEqual({ ok: false, detail: reason });
    expect(h.store.lockHolder(run.target)).toBeNull();
    h.outbox.start();
    await h.settle();
    expect(pd.acceptedCount(`dbpilot/RedisDown/${run.fingerprint}`, 'trigger')).toBe(1);
  });

  it('a step that recorded no output but whose live check verifies it is not repeated, and the run carries on', async () => {
    const h = await harness();
    const specs: StepSpec[] = [
      { name: 'drainThing', idempotent: true },
      { name: 'promoteThing', idempotent: false },
      { name: 'verifyThing', idempotent: true },
    ];
    const handler = countingHandler(specs);
    const run = leftInFlight(h, specs, 1);
    await resume(h, handler);
    expect(h.store.getRun(run.id)?.status).toBe('succeeded');
    expect(handler.ran).toEqual(['verifyThing']);
    expect(handler.checked).toEqual(['promoteThing', 'verifyThing']);
    expect(h.store.steps(run.id)[1]!.check).toEqual({ ok: true, detail: 'promoteThing verified (verified after restart)' });
  });

  it('a step that recorded no output and is unverified but idempotent is repeated, and the run carries on', async () => {
    const h = await harness();
    const specs: StepSpec[] = [
      { name: 'drainThing', idempotent: true },
      { name: 'restartThing', idempotent: true, check: 'fail-until-run' },
    ];
    const handler = countingHandler(specs);
    const run = leftInFlight(h, specs, 1);
    await resume(h, handler);
    expect(h.store.getRun(run.id)?.status).toBe('succeeded');
    // drainThing was done and checked before the crash: neither run nor checked again.
    expect(handler.ran).toEqual(['restartThing']);
    // Its check on resume (not yet taken effect), then the check after the repeat.
    expect(handler.checked).toEqual(['restartThing', 'restartThing']);
    expect(h.store.steps(run.id).map((s) => [s.name, s.status, s.attempts])).toEqual([
      ['drainThing', 'done', 1],
      ['restartThing', 'done', 2],
    ]);
  });

  it('a recorded output is checked first; a failed check of a step that is not idempotent stops the run with that check', async () => {
    const h = await harness();
    const specs: StepSpec[] = [{ name: 'promoteThing', idempotent: false, check: 'fail' }];
    const handler = countingHandler(specs);
    const run = leftInFlight(h, specs, 0, { did: 'promoteThing' });
    await resume(h, handler);
    const after = h.store.getRun(run.id)!;
    expect(after.status).toBe('failed');
    expect(after.reason).toBe('step promoteThing was in flight when dbpilot stopped and cannot be verified (promoteThing did not take effect); not repeating it');
    expect(handler.checked).toEqual(['promoteThing']);
    expect(handler.ran).toEqual([]);
  });

  it('a check that throws is tried three times before the step counts as unverified; an idempotent step is then repeated', async () => {
    const h = await harness();
    const specs: StepSpec[] = [{ name: 'restartThing', idempotent: true, check: 'throw' }];
    const handler = countingHandler(specs);
    const run = leftInFlight(h, specs, 0, { did: 'restartThing' });
    await resume(h, handler);
    // Three tries of the resumed step's check, then the repeat of the step and its own check.
    expect(handler.checked).toEqual(['restartThing', 'restartThing', 'restartThing', 'restartThing']);
    expect(handler.ran).toEqual(['restartThing']);
    const after = h.store.getRun(run.id)!;
    expect(after.status).toBe('failed');
    expect(after.reason).toBe('check after restartThing failed: check could not run: restartThing: the server is still recovering');
    expect(h.log.find('could not verify the resumed step').map((e) => e.attempt)).toEqual([1, 2, 3]);
  });

  it('a verified step is recorded as verified after restart and not repeated', async () => {
    const h = await harness();
    const specs: StepSpec[] = [
      { name: 'restartThing', idempotent: false },
      { name: 'verifyThing', idempotent: true },
    ];
    const handler = countingHandler(specs);
    const run = leftInFlight(h, specs, 0, { did: 'restartThing' });
    await resume(h, handler);
    expect(h.store.getRun(run.id)?.status).toBe('succeeded');
    expect(handler.ran).toEqual(['verifyThing']);
    expect(h.store.steps(run.id)[0]!.check).toEqual({ ok: true, detail: 'restartThing verified (verified after restart)' });
  });
  it('a step whose failure was recorded (error, or a failed check) is not repeated when it is not idempotent', async () => {
    for (const status of ['error', 'check_failed'] as const) {
      const h = await harness();
      const specs: StepSpec[] = [{ name: 'promoteThing', idempotent: false, check: 'fail' }];
      const handler = countingHandler(specs);
      const run = leftInFlight(h, specs, 0, status === 'error' ? undefined : { did: 'promoteThing' }, status);
      await resume(h, handler);
      expect(h.store.getRun(run.id)?.status, status).toBe('failed');
      expect(h.store.getRun(run.id)?.reason, status).toMatch(/^step promoteThing was in flight when dbpilot stopped and cannot be verified \(.+\); not repeating it$/);
      expect(handler.ran, status).toEqual([]);
    }
  });

  it('the steps after the resumed one run as usual (a step not yet started is never treated as in flight), each handed the checks of those before it', async () => {
    const h = await harness();
    const specs: StepSpec[] = [
      { name: 'drainThing', idempotent: true },
      { name: 'restartThing', idempotent: true, check: 'fail-until-run' },
      { name: 'promoteThing', idempotent: false },
    ];
    const handler = countingHandler(specs);
    const run = leftInFlight(h, specs, 1);
    await resume(h, handler);
    expect(h.store.getRun(run.id)?.status, String(h.store.getRun(run.id)?.reason)).toBe('succeeded');
    expect(handler.ran).toEqual(['restartThing', 'promoteThing']);
    expect(handler.seen).toEqual(['restartThing saw drainThing:drainThing verified', 'promoteThing saw drainThing:drainThing verified,restartThing:restartThing verified']);
  });
});
