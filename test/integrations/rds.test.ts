/**
 * dbpilot's RDS side against the strict stand-in over real HTTP, through the real
 * @aws-sdk/client-rds: SigV4, names and tags, waiting for `available`, joining instead of
 * duplicating, what RDS refuses (quota, instance state, duplicates, identifiers), the SDK's retries
 * of throttling, the mapping of AWS's errors, retention that deletes only dbpilot's own old snapshots,
 * storage growth with RDS's rules, the store records and the exported gauge.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { Metrics } from '../../src/metrics.js';
import { Store } from '../../src/store/store.js';
import { MANAGED_BY_TAG, REASON_TAG, REQUESTED_BY_TAG, RdsClient, RdsError, snapshotName } from '../../src/integrations/rds.js';
import { createBackups, RdsBackups, type AwsConfig } from '../../src/scheduler/backups.js';
import { captureLogger } from '../support/remediation.js';
import { RdsStandin, TEST_CREDENTIALS, awsConfigFor } from '../support/rds-standin.js';

const DAY = 86_400_000;
const standin = new RdsStandin();
let dir = '';
let store: Store;
let backups: RdsBackups;
let cap: ReturnType<typeof captureLogger>;

function aws(over: Record<string, unknown> = {}): AwsConfig {
  return parseConfig({ aws: awsConfigFor(standin, over) }, {}).aws!;
}

async function make(over: Record<string, unknown> = {}, credentials = TEST_CREDENTIALS): Promise<RdsBackups> {
  return createBackups(aws(over), { store, logger: cap.logger, owner: 'dbpilot-0/42/test', credentials });
}

beforeAll(async () => {
  await standin.start();
});
afterAll(async () => {
  await standin.close();
});
beforeEach(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-rds-'));
  store = new Store(path.join(dir, 'dbpilot.sqlite'));
  cap = captureLogger('debug');
  standin.instances.clear();
  standin.snapshots.clear();
  standin.requests.length = 0;
  standin.snapshotDelayMs = 150;
  standin.manualSnapshotQuota = 100;
  standin.seedInstance({ id: 'lomash-wood-prod' });
  backups = await make();
});
afterEach(() => {
  backups.close();
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('the stand-in speaks RDS to the real SDK', () => {
  it('accepts only correctly signed requests, as AWS answers otherwise', async () => {
    const bad = await make({}, { accessKeyId: TEST_CREDENTIALS.accessKeyId, secretAccessKey: 'not-the-secret' });
    await expect(bad.describeInstance()).rejects.toMatchObject({ code: 'DBPILOT_RDS_CREDENTIALS', details: { awsCode: 'SignatureDoesNotMatch', httpStatus: 403 } });
    const unknown = await make({}, { accessKeyId: 'AKIAUNKNOWN000000000', secretAccessKey: 'x' });
    await expect(unknown.describeInstance()).rejects.toMatchObject({ code: 'DBPILOT_RDS_CREDENTIALS', details: { awsCode: 'InvalidClientTokenId' } });
    const res = await fetch(standin.url, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'Action=DescribeDBInstances&Version=2014-10-31' });
    expect(res.status).toBe(403);
    expect(await res.text()).toContain('<Code>MissingAuthenticationToken</Code>');
    bad.close();
    unknown.close();
    const ok = await backups.describeInstance();
    expect(ok).toMatchObject({ id: 'lomash-wood-prod', status: 'available', allocatedGiB: 100, subnetGroup: 'lomash-wood-db', securityGroupIds: ['sg-0a1b2c3d4e5f60718'], parameterGroup: 'lomash-wood-postgres15', multiAZ: true, backupRetentionDays: 7 });
    expect(ok.latestRestorableTime).toBeInstanceOf(Date);
    const signed = standin.calls('DescribeDBInstances').find((r) => r.status === 200)!;
    expect(signed.authorization).toMatch(/^AWS4-HMAC-SHA256 Credential=AKIASTANDIN000000001\/\d{8}\/eu-west-2\/rds\/aws4_request, SignedHeaders=[a-z0-9;-]*host[a-z0-9;-]*, Signature=[0-9a-f]{64}$/);
  });
});

describe('snapshot(reason)', () => {
  it('takes <prefix>-manual-YYYYMMDDHHMM (UTC), tagged as dbpilot’s, waits until available, records it', async () => {
    const before = new Date();
    const r = await backups.snapshot('scheduled', { trigger: 'schedule' });
    expect(r.snapshotId).toMatch(/^lomash-wood-manual-\d{12}$/);
    // The runbook's name: `lomash-wood-manual-$(date +%Y%m%d%H%M)` (the minute of the request, in UTC).
    expect([snapshotName('lomash-wood', before), snapshotName('lomash-wood', new Date())]).toContain(r.snapshotId);
    expect(r).toMatchObject({ instance: 'lomash-wood-prod', status: 'available', joined: false, sizeGiB: 100, reason: 'scheduled' });
    expect(r.waitedMs).toBeGreaterThanOrEqual(100);
    const create = standin.calls('CreateDBSnapshot')[0]!;
    expect(create.params).toMatchObject({ DBInstanceIdentifier: 'lomash-wood-prod', DBSnapshotIdentifier: r.snapshotId });
    expect(standin.snapshots.get(r.snapshotId)!.tags).toEqual({ [MANAGED_BY_TAG]: 'dbpilot', [REASON_TAG]: 'scheduled', [REQUESTED_BY_TAG]: 'dbpilot-0/42/test' });
    // It was polled while creating (the stand-in moves it to available after 150 ms).
    expect(standin.calls('DescribeDBSnapshots').filter((c) => c.params.DBSnapshotIdentifier === r.snapshotId).length).toBeGreaterThan(1);
    const [row] = store.listSnapshots('lomash-wood-prod');
    expect(row).toMatchObject({ snapshotId: r.snapshotId, status: 'available', trigger: 'schedule', reason: 'scheduled', requestedBy: 'dbpilot-0/42/test', joined: false, sizeGiB: 100 });
    expect(row!.snapshotTime).toBe(r.snapshotTime);
  });

  it('names snapshots of another instance after it, and honours aws.snapshotPrefix', async () => {
    standin.seedInstance({ id: 'lomash-wood-staging' });
    const staging = await make({ dbInstanceIdentifier: 'lomash-wood-staging' });
    expect((await staging.snapshot('t')).snapshotId).toMatch(/^lomash-wood-staging-manual-\d{12}$/);
    staging.close();
    standin.seedInstance({ id: 'orders' });
    const custom = await make({ dbInstanceIdentifier: 'orders', snapshotPrefix: 'orders-eu' });
    expect((await custom.snapshot('t')).snapshotId).toMatch(/^orders-eu-manual-\d{12}$/);
    custom.close();
  });

  it('never two at once: a second request joins the snapshot being made (in this process and in another)', async () => {
    const release = standin.hold();
    const first = backups.snapshot('scheduled', { trigger: 'schedule' });
    await until(() => standin.calls('CreateDBSnapshot').length === 1);
    const second = backups.snapshot('before step markRolledBack', { trigger: 'risky-step', runId: 'run-1' });
    // Another process (an on-call's CLI) sharing nothing with this one but RDS.
    const other = await make();
    const third = other.snapshot('cli: before the migration');
    await until(() => standin.calls('DescribeDBSnapshots').filter((c) => c.params.SnapshotType === 'manual').length >= 2);
    release();
    const [a, b, c] = await Promise.all([first, second, third]);
    other.close();
    expect(standin.calls('CreateDBSnapshot')).toHaveLength(1);
    expect(b.snapshotId).toBe(a.snapshotId);
    expect(c.snapshotId).toBe(a.snapshotId);
    expect([a.joined, b.joined, c.joined]).toEqual([false, true, true]);
    const rows = store.listSnapshots('lomash-wood-prod');
    expect(rows.map((r) => [r.reason, r.joined, r.status]).sort()).toEqual([
      ['before step markRolledBack', true, 'available'],
      ['cli: before the migration', true, 'available'],
      ['scheduled', false, 'available'],
    ]);
  });

  it('uses a snapshot of this instance that already has this minute’s name (the runbook’s own command)', async () => {
    const name = snapshotName('lomash-wood', new Date());
    standin.seedSnapshot({ id: name, instance: 'lomash-wood-prod', status: 'available' });
    // Seeded in the same minute as the request below, unless the minute just turned.
    const r = await backups.snapshot('t');
    if (r.snapshotId === name) expect(r.joined).toBe(true);
    expect(r.status).toBe('available');
  });

  it.each([
    ['the manual-snapshot quota', () => (standin.manualSnapshotQuota = 0), 'DBPILOT_RDS_SNAPSHOT_QUOTA', 'SnapshotQuotaExceeded', /quota of manual DB snapshots.*Service Quotas/],
    ['an instance that is not available', () => (standin.instances.get('lomash-wood-prod')!.status = 'modifying'), 'DBPILOT_RDS_INSTANCE_STATE', 'InvalidDBInstanceState', /not in a state.*backing up.*available/],
    ['missing permissions', () => standin.deny('CreateDBSnapshot'), 'DBPILOT_RDS_ACCESS_DENIED', 'AccessDenied', /not authorized to perform: rds:CreateDBSnapshot.*IAM policy/],
  ])('refuses clearly when RDS refuses: %s', async (_what, arrange, code, awsCode, message) => {
    arrange();
    try {
      const err = await backups.snapshot('t').then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(RdsError);
      expect(err).toMatchObject({ code, details: { awsCode, attempts: 1 } });
      expect((err as Error).message).toMatch(message);
      const [row] = store.listSnapshots('lomash-wood-prod');
      expect(row).toMatchObject({ status: 'failed', errorCode: code });
    } finally {
      standin.allow('CreateDBSnapshot');
    }
  });

  it('a snapshot that ends failed, or takes too long, is a failure with its reason', async () => {
    standin.nextSnapshotEnds('failed');
    await expect(backups.snapshot('t')).rejects.toMatchObject({ code: 'DBPILOT_RDS_SNAPSHOT_FAILED', message: expect.stringMatching(/ended failed instead of available/) });
    // The failed snapshot keeps its name (this minute's): RDS refuses a second one by that name.
    await expect(backups.snapshot('again')).rejects.toMatchObject({ code: 'DBPILOT_RDS_SNAPSHOT_EXISTS', message: expect.stringMatching(/try again in a minute/) });
    standin.snapshots.clear();
    const slow = await make({ snapshotTimeoutMinutes: 0.005 });
    standin.snapshotDelayMs = 5000;
    standin.instances.get('lomash-wood-prod')!.status = 'available';
    await expect(slow.snapshot('t2')).rejects.toMatchObject({ code: 'DBPILOT_RDS_SNAPSHOT_TIMEOUT', message: expect.stringMatching(/still creating .* after 0.005 min.*aws rds wait db-snapshot-available/) });
    slow.close();
  });

  it('retries throttling the SDK’s way and succeeds; gives up after aws.maxAttempts with a clear message', async () => {
    standin.failNext('CreateDBSnapshot', 'Throttling', { count: 2 });
    const r = await backups.snapshot('t');
    expect(r.status).toBe('available');
    expect(standin.calls('CreateDBSnapshot').map((c) => c.code ?? 'ok')).toEqual(['Throttling', 'Throttling', 'ok']);
    standin.instances.get('lomash-wood-prod')!.status = 'available';
    standin.failNext('DescribeDBInstances', 'Throttling', { count: 3 });
    await expect(backups.describeInstance()).rejects.toMatchObject({ code: 'DBPILOT_RDS_THROTTLED', details: { attempts: 3 }, message: expect.stringMatching(/throttled the request \(after 3 attempts\)/) });
    standin.failNext('DescribeDBInstances', 'InternalFailure', { count: 1, status: 500 });
    expect((await backups.describeInstance()).status).toBe('available');
  });

  it('never logs a credential', async () => {
    await backups.snapshot('t');
    const bad = await make({}, { accessKeyId: TEST_CREDENTIALS.accessKeyId, secretAccessKey: 'not-the-secret-value' });
    await bad.snapshot('t').catch(() => undefined);
    bad.close();
    const text = cap.log.text();
    expect(text).toContain('RDS snapshot available');
    for (const secret of [TEST_CREDENTIALS.secretAccessKey, 'not-the-secret-value']) expect(text).not.toContain(secret);
  });
});

describe('retention', () => {
  const old = (days: number) => new Date(Date.now() - days * DAY);
  const dbpilot = { [MANAGED_BY_TAG]: 'dbpilot' };

  it('deletes only dbpilot’s own available manual snapshots of the instance older than the retention, never the newest, never anyone else’s', async () => {
    standin.seedInstance({ id: 'lomash-wood-prod-restored' });
    const seed = (id: string, days: number, extra: Partial<Parameters<RdsStandin['seedSnapshot']>[0]> = {}) =>
      standin.seedSnapshot({ id, instance: 'lomash-wood-prod', createdAt: old(days), tags: dbpilot, ...extra });
    seed('lomash-wood-manual-202601010300', 40);
    seed('lomash-wood-manual-202601020300', 20);
    seed('lomash-wood-manual-202601030300', 3);
    // Kept: a human's snapshot with dbpilot's name but no tag (the runbook's command typed by hand).
    seed('lomash-wood-manual-202512010300', 60, { tags: {} });
    // Kept: tagged by dbpilot but not a name dbpilot makes (a copy someone made with CopyTags).
    seed('lomash-wood-before-upgrade', 60);
    // Kept: tagged, dbpilot's name, but another instance's.
    standin.seedSnapshot({ id: 'lomash-wood-manual-202512020300', instance: 'lomash-wood-prod-restored', createdAt: old(50), tags: dbpilot });
    // Kept: an automated snapshot.
    standin.seedSnapshot({ id: 'rds:lomash-wood-prod-2026-01-01-02-00', instance: 'lomash-wood-prod', type: 'automated', createdAt: old(30) });
    const r = await backups.retention({ canAct: () => true });
    expect(r.deleted.sort()).toEqual(['lomash-wood-manual-202601010300', 'lomash-wood-manual-202601020300']);
    expect(r.failed).toEqual([]);
    expect(r.othersUntouched).toBe(2);
    expect([...standin.snapshots.keys()].sort()).toEqual([
      'lomash-wood-before-upgrade',
      'lomash-wood-manual-202512010300',
      'lomash-wood-manual-202512020300',
      'lomash-wood-manual-202601030300',
      'rds:lomash-wood-prod-2026-01-01-02-00',
    ]);
  });

  it('keeps the newest even when it is past the retention, and asks canAct before every deletion', async () => {
    standin.seedSnapshot({ id: 'lomash-wood-manual-202601010300', instance: 'lomash-wood-prod', createdAt: old(40), tags: dbpilot });
    standin.seedSnapshot({ id: 'lomash-wood-manual-202601020300', instance: 'lomash-wood-prod', createdAt: old(30), tags: dbpilot });
    standin.seedSnapshot({ id: 'lomash-wood-manual-202601030300', instance: 'lomash-wood-prod', createdAt: old(20), tags: dbpilot });
    let asked = 0;
    const r = await backups.retention({ canAct: () => ++asked === 1 });
    expect(r.deleted).toEqual(['lomash-wood-manual-202601010300']);
    expect(r.deferred).toBe(1);
    const r2 = await backups.retention({ canAct: () => true });
    expect(r2.deleted).toEqual(['lomash-wood-manual-202601020300']);
    expect([...standin.snapshots.keys()]).toEqual(['lomash-wood-manual-202601030300']);
  });

  it('never deletes a snapshot that is not available (RDS would refuse), and reports what RDS refused', async () => {
    standin.seedSnapshot({ id: 'lomash-wood-manual-202601010300', instance: 'lomash-wood-prod', createdAt: old(40), tags: dbpilot, status: 'creating' });
    standin.seedSnapshot({ id: 'lomash-wood-manual-202601020300', instance: 'lomash-wood-prod', createdAt: old(30), tags: dbpilot });
    standin.seedSnapshot({ id: 'lomash-wood-manual-202601030300', instance: 'lomash-wood-prod', createdAt: old(1), tags: dbpilot });
    standin.failNext('DeleteDBSnapshot', 'InvalidDBSnapshotState', { message: 'Snapshot is being copied' });
    const r = await backups.retention({ canAct: () => true });
    expect(r.deleted).toEqual([]);
    expect(r.failed).toEqual([{ snapshotId: 'lomash-wood-manual-202601020300', code: 'DBPILOT_RDS_SNAPSHOT_STATE', error: expect.stringContaining('Snapshot is being copied') }]);
    expect(standin.calls('DeleteDBSnapshot').map((c) => c.params.DBSnapshotIdentifier)).toEqual(['lomash-wood-manual-202601020300']);
  });

  it('the stand-in refuses deleting what RDS refuses: a snapshot being made, an automated one', async () => {
    const client = backups.client;
    standin.seedSnapshot({ id: 'creating-one', instance: 'lomash-wood-prod', status: 'creating' });
    standin.seedSnapshot({ id: 'rds:auto', instance: 'lomash-wood-prod', type: 'automated' });
    await expect(client.deleteSnapshot('lomash-wood-prod', 'creating-one')).rejects.toMatchObject({ code: 'DBPILOT_RDS_SNAPSHOT_STATE' });
    await expect(client.deleteSnapshot('lomash-wood-prod', 'rds:auto')).rejects.toMatchObject({ code: 'DBPILOT_RDS_SNAPSHOT_STATE', message: expect.stringMatching(/Only manual snapshots/) });
    await expect(client.deleteSnapshot('lomash-wood-prod', 'nope')).rejects.toMatchObject({ code: 'DBPILOT_RDS_SNAPSHOT_NOT_FOUND' });
  });

  it('reads every page of a long list (MaxRecords 100, Marker)', async () => {
    for (let i = 0; i < 130; i++) standin.seedSnapshot({ id: `someone-else-${i}`, instance: 'lomash-wood-prod', createdAt: old(100) });
    const all = await backups.client.listSnapshots('lomash-wood-prod', { type: 'manual' });
    expect(all).toHaveLength(130);
    expect(standin.calls('DescribeDBSnapshots').map((c) => c.params.Marker !== undefined)).toEqual([false, true]);
  });
});

describe('identifiers RDS refuses are refused by the stand-in too', () => {
  it.each(['1starts-with-digit', 'has--double', 'ends-with-', 'under_score', 'x'.repeat(256)])('CreateDBSnapshot %s', async (id) => {
    await expect(backups.client.createSnapshot('lomash-wood-prod', id, {})).rejects.toMatchObject({ code: 'DBPILOT_RDS_INVALID_REQUEST', message: expect.stringMatching(/not a valid identifier|must/) });
  });

  it('a duplicate snapshot name', async () => {
    standin.seedSnapshot({ id: 'taken', instance: 'lomash-wood-prod' });
    await expect(backups.client.createSnapshot('lomash-wood-prod', 'taken', {})).rejects.toMatchObject({ code: 'DBPILOT_RDS_SNAPSHOT_EXISTS' });
  });
});

describe('growStorage(toGiB) and its checks', () => {
  it('grows by at least 10 %, applies immediately, and the check follows it to the new size', async () => {
    expect(await backups.checkStorageGrowth(105)).toMatchObject({ ok: false, detail: expect.stringMatching(/at least 10 %.*at least 110 GiB/) });
    expect(await backups.checkStorageGrowth(90)).toMatchObject({ ok: false, detail: expect.stringMatching(/only grow/) });
    expect(await backups.checkStorageGrowth(150)).toMatchObject({ ok: true });
    expect(backups.growStorageCommand(150)).toBe(
      'aws rds modify-db-instance \\\n  --region eu-west-2 \\\n  --db-instance-identifier lomash-wood-prod \\\n  --allocated-storage 150 \\\n  --apply-immediately',
    );
    const change = await backups.growStorage(150);
    expect(change).toEqual({ instance: 'lomash-wood-prod', fromGiB: 100, toGiB: 150, status: 'modifying' });
    expect(standin.calls('ModifyDBInstance')[0]!.params).toMatchObject({ DBInstanceIdentifier: 'lomash-wood-prod', AllocatedStorage: '150', ApplyImmediately: 'true' });
    expect(await backups.checkStorage(150)).toMatchObject({ ok: true, detail: expect.stringMatching(/accepted .* 150 GiB; it is being applied/) });
    expect(await backups.checkStorage(150, { requireApplied: true })).toMatchObject({ ok: false });
    // A second change while the first is pending or optimising is refused before RDS is asked.
    await expect(backups.growStorage(200)).rejects.toMatchObject({ code: 'DBPILOT_RDS_STORAGE_REFUSED', message: expect.stringMatching(/already pending/) });
    await until(async () => (await backups.describeInstance()).status === 'storage-optimization');
    expect(await backups.checkStorage(150, { requireApplied: true })).toMatchObject({ ok: true, detail: expect.stringMatching(/has 150 GiB/) });
    await expect(backups.growStorage(200)).rejects.toMatchObject({ code: 'DBPILOT_RDS_STORAGE_REFUSED', message: expect.stringMatching(/storage-optimization/) });
    expect(standin.calls('ModifyDBInstance')).toHaveLength(1);
  });

  it('refuses above the autoscaling ceiling', async () => {
    standin.instances.get('lomash-wood-prod')!.maxAllocatedGiB = 120;
    await expect(backups.growStorage(150)).rejects.toMatchObject({ code: 'DBPILOT_RDS_STORAGE_REFUSED', message: expect.stringMatching(/MaxAllocatedStorage 120 GiB/) });
  });
});

describe('dbpilot_rds_last_snapshot_timestamp_seconds', () => {
  async function gauge(metrics: Metrics): Promise<number | undefined> {
    const text = await metrics.prometheus.metrics();
    const m = /^dbpilot_rds_last_snapshot_timestamp_seconds (\S+)$/m.exec(text);
    return m ? Number(m[1]) : undefined;
  }

  it('is the newest available snapshot dbpilot made (not someone else’s), re-read after metricRefreshSeconds, 0 when there is none', async () => {
    const b = await make({ metricRefreshSeconds: 1 });
    const metrics = new Metrics({ processMetrics: false });
    b.registerMetric(metrics, 2000);
    expect(await gauge(metrics)).toBe(0);
    const t = new Date(Date.now() - 3 * 3600_000);
    standin.seedSnapshot({ id: 'lomash-wood-manual-202601010300', instance: 'lomash-wood-prod', createdAt: t, tags: { [MANAGED_BY_TAG]: 'dbpilot' } });
    // Not counted: a newer one by hand (no tag), one still being made.
    standin.seedSnapshot({ id: 'someones-backup', instance: 'lomash-wood-prod', createdAt: new Date(Date.now() - 60_000) });
    standin.seedSnapshot({ id: 'lomash-wood-manual-202601010400', instance: 'lomash-wood-prod', status: 'creating', createdAt: new Date(), tags: { [MANAGED_BY_TAG]: 'dbpilot' } });
    // Cached between reads: a 1 s scrape is not an RDS API call.
    const reads = standin.calls('DescribeDBSnapshots').length;
    expect(await gauge(metrics)).toBe(0);
    expect(standin.calls('DescribeDBSnapshots').length).toBe(reads);
    await new Promise((r) => setTimeout(r, 1100));
    await gauge(metrics);
    await until(async () => (await gauge(metrics)) === Math.floor(t.getTime() / 1000));
    // A snapshot dbpilot takes shows at once (the one still creating would be joined: out of the way).
    standin.snapshots.delete('lomash-wood-manual-202601010400');
    const s = await b.snapshot('t');
    expect(await gauge(metrics)).toBe(Math.floor(Date.parse(s.snapshotTime!) / 1000));
    b.close();
  });
});

async function until(cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

void RdsClient;
