/**
 * The scheduled snapshot (node-cron, every second here) against the RDS stand-in: it runs only on
 * the leader and asks again at every tick, never overlaps (a tick while a snapshot is still being
 * made is skipped), pages DevOps through the outbox when it fails and resolves the page when it next
 * succeeds, and runs retention only after a snapshot succeeded. Then the wiring as the service has
 * it: two dbpilot instances electing a leader on the Kubernetes stand-in, credentials from the SDK's
 * default chain, only the leader snapshotting until it stops and the other takes over, and both
 * exporting dbpilot_rds_last_snapshot_timestamp_seconds on /metrics.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { Store } from '../../src/store/store.js';
import type { EscalationRequest } from '../../src/remediation/outbox.js';
import { createBackups, type RdsBackups } from '../../src/scheduler/backups.js';
import { SnapshotScheduler, type Pager } from '../../src/scheduler/snapshots.js';
import { K8sStandIn } from '../support/k8s-standin.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { captureLogger, harnessDocument, merge, until } from '../support/remediation.js';
import { Runtime } from '../../src/runtime.js';
import { createRemediation, type Remediation } from '../../src/remediation/index.js';
import { RdsStandin, TEST_CREDENTIALS, awsConfigFor, standinEnv } from '../support/rds-standin.js';

const standin = new RdsStandin({ snapshotDelayMs: 100 });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const EVERY_SECOND = '* * * * * *';

class RecordingPager implements Pager {
  readonly triggered: EscalationRequest[] = [];
  readonly resolved: string[] = [];
  trigger(req: EscalationRequest): number {
    this.triggered.push(req);
    return this.triggered.length;
  }
  resolve(dedupKey: string): boolean {
    this.resolved.push(dedupKey);
    return true;
  }
}

beforeAll(async () => {
  await standin.start();
});
afterAll(async () => {
  await standin.close();
});
function reset(): void {
  standin.instances.clear();
  standin.snapshots.clear();
  standin.requests.length = 0;
  standin.seedInstance({ id: 'lomash-wood-prod' });
}

describe('SnapshotScheduler', () => {
  let dir = '';
  let store: Store;
  let backups: RdsBackups;
  let pager: RecordingPager;
  let leading = true;
  let scheduler: SnapshotScheduler;
  const cap = captureLogger('debug');

  beforeEach(async () => {
    reset();
    dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-sched-'));
    store = new Store(path.join(dir, 'dbpilot.sqlite'));
    const aws = parseConfig({ aws: awsConfigFor(standin, { snapshotSchedule: EVERY_SECOND }) }, {}).aws!;
    backups = await createBackups(aws, { store, logger: cap.logger, owner: 'dbpilot-0/1/unit', credentials: TEST_CREDENTIALS });
    pager = new RecordingPager();
    leading = true;
    scheduler = new SnapshotScheduler({ backups, pager, schedule: EVERY_SECOND, timezone: 'Etc/UTC', logger: cap.logger, canAct: () => leading });
  });
  afterEach(async () => {
    await scheduler.close();
    backups.close();
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('takes the snapshot at the tick, then runs retention; a tick while not leading does nothing', async () => {
    const old = new Date(Date.now() - 30 * 86_400_000);
    standin.seedSnapshot({ id: 'lomash-wood-manual-202601010300', instance: 'lomash-wood-prod', createdAt: old, tags: { 'dbpilot.io/managed-by': 'dbpilot' } });
    standin.seedSnapshot({ id: 'lomash-wood-manual-202601010301', instance: 'lomash-wood-prod', createdAt: old });
    expect(scheduler.scheduled).toBe(false);
    scheduler.start();
    expect(scheduler.scheduled).toBe(true);
    await until(() => store.listSnapshots('lomash-wood-prod').some((r) => r.status === 'available'), 'the scheduled snapshot', 5000);
    const [row] = store.listSnapshots('lomash-wood-prod');
    expect(row).toMatchObject({ trigger: 'schedule', reason: 'scheduled', requestedBy: 'dbpilot-0/1/unit' });
    await until(() => !standin.snapshots.has('lomash-wood-manual-202601010300'), 'retention of the old dbpilot snapshot', 5000);
    // Not dbpilot's (no tag): kept whatever its age.
    expect(standin.snapshots.has('lomash-wood-manual-202601010301')).toBe(true);
    expect(pager.resolved).toContain('dbpilot/rds-snapshot/lomash-wood-prod');

    // Leadership lapses without an announced change: the tick asks, and writes nothing.
    leading = false;
    await sleep(100);
    const writes = () => standin.requests.filter((r) => ['CreateDBSnapshot', 'DeleteDBSnapshot'].includes(r.action)).length;
    const before = writes();
    await sleep(2200);
    expect(writes()).toBe(before);
    expect(cap.log.find('not the leader: the scheduled snapshot is left to the leader').length).toBeGreaterThan(0);
    await scheduler.stop();
    expect(scheduler.scheduled).toBe(false);
  });

  it('never two at once: ticks while a snapshot is still being made are skipped, and so is a manual run', async () => {
    const release = standin.hold();
    scheduler.start();
    await until(() => standin.calls('CreateDBSnapshot').length === 1, 'the first snapshot request', 5000);
    await sleep(2500); // two or three more ticks
    expect(standin.calls('CreateDBSnapshot')).toHaveLength(1);
    expect(scheduler.busy).toBe(true);
    expect(await scheduler.runOnce('manual')).toEqual({ outcome: 'skipped', why: 'a snapshot job is still running' });
    release();
    await until(() => !scheduler.busy, 'the job to end', 5000);
    expect(store.listSnapshots('lomash-wood-prod').filter((r) => !r.joined)).toHaveLength(1);
  });

  it('a failure pages DevOps once per incident, with the reason; the next success resolves it', async () => {
    standin.deny('CreateDBSnapshot');
    const failed = await scheduler.runOnce('manual');
    expect(failed).toMatchObject({ outcome: 'failed', error: { code: 'DBPILOT_RDS_ACCESS_DENIED' } });
    expect(pager.triggered).toHaveLength(1);
    const page = pager.triggered[0]!;
    expect(page).toMatchObject({ team: 'devops', dedupKey: 'dbpilot/rds-snapshot/lomash-wood-prod', severity: 'error', component: 'rds' });
    expect(page.summary).toMatch(/^\[dbpilot\] scheduled RDS snapshot of lomash-wood-prod failed: RDS CreateDBSnapshot: dbpilot's IAM role may not do this/);
    expect(page.details).toMatchObject({ code: 'DBPILOT_RDS_ACCESS_DENIED', aws_error: 'AccessDenied', instance: 'lomash-wood-prod', region: 'eu-west-2', tried: expect.stringContaining('aws rds create-db-snapshot') });
    standin.allow('CreateDBSnapshot');
    expect(pager.resolved).toEqual([]);
    const ok = await scheduler.runOnce('manual');
    expect(ok.outcome).toBe('succeeded');
    expect(pager.resolved).toEqual(['dbpilot/rds-snapshot/lomash-wood-prod', 'dbpilot/rds-retention/lomash-wood-prod']);
  });

  it('retention runs only after a snapshot succeeded, and its failures page on their own key', async () => {
    const old = new Date(Date.now() - 30 * 86_400_000);
    standin.seedSnapshot({ id: 'lomash-wood-manual-202601010300', instance: 'lomash-wood-prod', createdAt: old, tags: { 'dbpilot.io/managed-by': 'dbpilot' } });
    standin.seedSnapshot({ id: 'lomash-wood-manual-202601020300', instance: 'lomash-wood-prod', createdAt: old, tags: { 'dbpilot.io/managed-by': 'dbpilot' } });
    standin.instances.get('lomash-wood-prod')!.status = 'modifying';
    expect((await scheduler.runOnce('manual')).outcome).toBe('failed');
    expect(standin.calls('DeleteDBSnapshot')).toEqual([]);
    expect(pager.triggered[0]!.summary).toMatch(/not in a state/);
    standin.instances.get('lomash-wood-prod')!.status = 'available';
    standin.failNext('DeleteDBSnapshot', 'InvalidDBSnapshotState', { message: 'being shared' });
    const r = await scheduler.runOnce('manual');
    expect(r.outcome).toBe('failed');
    expect(r.retention!.deleted).toHaveLength(1);
    expect(pager.triggered.at(-1)).toMatchObject({ dedupKey: 'dbpilot/rds-retention/lomash-wood-prod', severity: 'warning', summary: expect.stringMatching(/1 snapshot\(s\) could not be deleted/) });
  });
});

describe('as the service wires it: leader only, credentials from the default chain', () => {
  const NS = 'dbpilot-rds-sched';
  const k8s = new K8sStandIn({ namespaces: [NS] });
  const pd = new PagerDutyStandin();
  let dir = '';
  const replicas: Replica[] = [];
  const savedEnv: Record<string, string | undefined> = {};

  interface Replica {
    runtime: Runtime;
    remediation: Remediation;
    closed: boolean;
    close(): Promise<void>;
    leading(): boolean;
  }

  /** A dbpilot replica as createRemediation builds it for `serve`, under a pod name of its own (the Lease identity). */
  async function replica(pod: string, over: Record<string, unknown>): Promise<Replica> {
    const doc = merge(harnessDocument({ pagerdutyUrl: pd.url, storePath: path.join(dir, `${pod}.sqlite`) }), over);
    const config = parseConfig(doc, {});
    const runtime = new Runtime(config, captureLogger('info').logger, { processMetrics: false });
    const remediation = await createRemediation(runtime, { label: pod });
    await remediation.start();
    const r: Replica = {
      runtime,
      remediation,
      closed: false,
      leading: () => remediation.leader.isLeader(),
      close: async () => {
        if (r.closed) return;
        r.closed = true;
        await remediation.close();
        await runtime.close();
      },
    };
    return r;
  }

  beforeAll(async () => {
    reset();
    await Promise.all([k8s.start(), pd.start()]);
    dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-sched-wired-'));
    // The SDK's default chain reads the environment first: the same path IRSA's variables take.
    for (const [k, v] of Object.entries(standinEnv())) {
      savedEnv[k] = process.env[k];
      process.env[k] = v;
    }
  });
  afterAll(async () => {
    for (const r of replicas) await r.close();
    await Promise.all([k8s.close(), pd.close()]);
    for (const [k, v] of Object.entries(savedEnv)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('only the leader snapshots; the other takes over when it stops; both export the last snapshot time', async () => {
    const kubeconfig = await k8s.writeKubeconfig(dir, { namespace: NS });
    const over = {
      kubernetes: { kubeconfig, namespace: NS, lease: { name: 'dbpilot-rds', durationSeconds: 6, renewDeadlineSeconds: 4, retryPeriodSeconds: 0.5 } },
      aws: awsConfigFor(standin, { snapshotSchedule: EVERY_SECOND, metricRefreshSeconds: 1 }),
    };
    for (const pod of ['dbpilot-0', 'dbpilot-1']) replicas.push(await replica(pod, over));
    await until(() => replicas.filter((r) => r.leading()).length === 1, 'one leader', 10_000);
    const leader = replicas.find((r) => r.leading())!;
    const follower = replicas.find((r) => !r.leading())!;
    expect(leader.remediation.scheduler!.scheduled).toBe(true);
    expect(follower.remediation.scheduler!.scheduled).toBe(false);
    await until(() => leader.remediation.store.listSnapshots('lomash-wood-prod').some((r) => r.status === 'available'), 'the leader’s snapshot', 10_000);
    await sleep(1500);
    // Every snapshot request came from the leader (signed with the environment's key), none from the follower.
    const requestedBy = [...standin.snapshots.values()].map((s) => s.tags['dbpilot.io/requested-by']);
    expect(new Set(requestedBy)).toEqual(new Set([leader.remediation.instance]));
    expect(follower.remediation.store.listSnapshots('lomash-wood-prod')).toEqual([]);
    expect(standin.calls('CreateDBSnapshot').every((c) => c.accessKeyId === TEST_CREDENTIALS.accessKeyId)).toBe(true);

    // Both replicas export it (read from RDS), so RdsSnapshotStale sees it whichever is scraped.
    for (const r of [leader, follower]) {
      await until(
        async () => {
          const text = await r.runtime.metrics.prometheus.metrics();
          const m = /^dbpilot_rds_last_snapshot_timestamp_seconds (\d+)$/m.exec(text);
          return m !== null && Math.abs(Number(m[1]) - Date.now() / 1000) < 120;
        },
        'a recent dbpilot_rds_last_snapshot_timestamp_seconds',
        10_000,
      );
    }

    // The leader stops (releases the Lease): the other takes over the schedule.
    await leader.close();
    await until(() => follower.remediation.scheduler!.scheduled, 'the follower to take over the schedule', 10_000);
    await until(() => follower.remediation.store.listSnapshots('lomash-wood-prod').length > 0, 'a snapshot by the new leader', 10_000);
    expect(leader.remediation.scheduler!.scheduled).toBe(false);
  });
});
