/**
 * The snapshot before a risky step, as the engine takes it: a scripted handler (under the
 * prisma-migration name, whose "mark the migration rolled back" step is risky) runs through the real
 * engine with RDS configured against the stand-in. The snapshot is taken and waited for until
 * available before the risky step acts (and only before it), recorded as a step row of its own; when
 * it cannot be taken, the risky step does not run and the run escalates to the handler's team with
 * the reason; without `aws:` the step runs as before.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Step } from '../../src/remediation/handler.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { TEAM_KEYS, scriptedHandler, startRemediation, until, type RemediationHarness, type ScriptedHandler } from '../support/remediation.js';
import { RdsStandin, awsConfigFor, standinEnv } from '../support/rds-standin.js';

const standin = new RdsStandin({ snapshotDelayMs: 300 });
const pd = new PagerDutyStandin();
const savedEnv: Record<string, string | undefined> = {};
let h: RemediationHarness | undefined;

/** gatherStatus, then markRolledBack — risky, as the prisma-migration handler will declare it. */
function handler(): ScriptedHandler & { seen: { step: string; snapshotStatus: string | undefined }[] } {
  const seen: { step: string; snapshotStatus: string | undefined }[] = [];
  const base = scriptedHandler('prisma-migration', {
    steps: ['gatherStatus', 'markRolledBack'],
    // What RDS holds at the moment each step acts.
    duringStep: (step) => void seen.push({ step, snapshotStatus: [...standin.snapshots.values()][0]?.status }),
  });
  const steps = base.steps.bind(base);
  base.steps = (data, ctx) => steps(data, ctx).map((s): Step => (s.name === 'markRolledBack' ? { ...s, risky: true } : s));
  return Object.assign(base, { seen });
}

async function harness(aws: boolean): Promise<{ h: RemediationHarness; s: ReturnType<typeof handler> }> {
  const s = handler();
  h = await startRemediation({ mode: 'auto', pagerduty: pd, config: aws ? { aws: awsConfigFor(standin) } : {} });
  h.remediation.handlers.register(s);
  return { h, s };
}

beforeAll(async () => {
  await Promise.all([standin.start(), pd.start()]);
  for (const [k, v] of Object.entries(standinEnv())) {
    savedEnv[k] = process.env[k];
    process.env[k] = v;
  }
});
afterAll(async () => {
  await Promise.all([standin.close(), pd.close()]);
  for (const [k, v] of Object.entries(savedEnv)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});
afterEach(async () => {
  await h?.close();
  h = undefined;
  standin.instances.clear();
  standin.snapshots.clear();
  standin.requests.length = 0;
  standin.allow('CreateDBSnapshot');
});

describe('a risky step', () => {
  it('waits for a snapshot that is available before it acts, recorded as a step of its own', async () => {
    standin.seedInstance({ id: 'lomash-wood-prod' });
    const { h, s } = await harness(true);
    const run = await h.engine.runManual('prisma-migration', { instance: 'orders' }, 'manual');
    await h.settle();
    const final = h.store.getRun(run!.id)!;
    expect(final.status, final.reason ?? '').toBe('succeeded');
    // The snapshot was taken after the step before it and before the risky step, and was available then.
    expect(s.seen).toEqual([
      { step: 'gatherStatus', snapshotStatus: undefined },
      { step: 'markRolledBack', snapshotStatus: 'available' },
    ]);
    expect(standin.calls('CreateDBSnapshot')).toHaveLength(1);
    const steps = h.store.steps(run!.id);
    expect(steps.map((st) => [st.name, st.status])).toEqual([
      ['gatherStatus', 'done'],
      ['markRolledBack', 'done'],
      ['snapshot:markRolledBack', 'done'],
    ]);
    const snapRow = steps[2]!;
    expect(snapRow.command).toMatch(/^aws rds create-db-snapshot \\\n {2}--region eu-west-2 \\\n {2}--db-instance-identifier lomash-wood-prod \\\n {2}--db-snapshot-identifier lomash-wood-manual-\$\(date -u \+%Y%m%d%H%M\)/);
    expect(snapRow.output).toMatchObject({ snapshotId: expect.stringMatching(/^lomash-wood-manual-\d{12}$/), status: 'available', joined: false });
    expect(Date.parse(snapRow.finishedAt!)).toBeLessThanOrEqual(Date.parse(steps[1]!.startedAt!));
    // Tagged with why, and recorded in the store with its run.
    const [snap] = [...standin.snapshots.values()];
    expect(snap!.tags['dbpilot.io/reason']).toBe(`before step markRolledBack of prisma-migration run ${run!.id}`);
    expect(h.store.listSnapshots('lomash-wood-prod')[0]).toMatchObject({ trigger: 'risky-step', runId: run!.id, status: 'available' });
  });

  it('does not run when no snapshot can be taken: the run escalates to its team with the reason', async () => {
    standin.seedInstance({ id: 'lomash-wood-prod' });
    standin.deny('CreateDBSnapshot');
    const { h, s } = await harness(true);
    const run = await h.engine.runManual('prisma-migration', { instance: 'orders' }, 'manual');
    await h.settle();
    const final = h.store.getRun(run!.id)!;
    expect(final.status).toBe('escalated');
    expect(final.reason).toMatch(/^stopped before markRolledBack: no RDS snapshot could be taken first, so the step did not run: RDS CreateDBSnapshot: dbpilot's IAM role may not do this/);
    expect(s.executed.map((e) => e.split(':')[1])).toEqual(['gatherStatus']);
    expect(h.store.steps(run!.id).map((st) => [st.name, st.status])).toEqual([
      ['gatherStatus', 'done'],
      ['markRolledBack', 'planned'],
      ['snapshot:markRolledBack', 'error'],
    ]);
    await until(() => pd.accepted.some((e) => e.routingKey === TEAM_KEYS.devops && JSON.stringify(e.event).includes('no RDS snapshot could be taken first')), 'the page to the handler’s team');
  });

  it('runs without a snapshot when RDS is not configured', async () => {
    const { h, s } = await harness(false);
    const run = await h.engine.runManual('prisma-migration', { instance: 'orders' }, 'manual');
    await h.settle();
    expect(h.store.getRun(run!.id)!.status).toBe('succeeded');
    expect(s.executed).toHaveLength(2);
    expect(h.store.steps(run!.id).map((st) => st.name)).toEqual(['gatherStatus', 'markRolledBack']);
    expect(standin.requests).toEqual([]);
  });
});
