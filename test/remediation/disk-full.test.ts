/**
 * Runbook scenario 3 on a real PostgreSQL: a database of each test's own on the suite's primary (the
 * tables whose dead tuples VACUUM removes, the table VACUUM FULL rewrites), and a real file system the
 * test controls as the data directory: a tmpfs mounted for the test, filled to the percentage a test
 * needs, and grown by remount when the stand-in reports the PVC's new capacity — what the kubelet's
 * online resize does to the real volume. The strict Kubernetes stand-in holds the PVC and its
 * StorageClass (its admission refuses what kube-apiserver refuses); the RDS stand-in the instance;
 * the PagerDuty stand-in receives every page.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { formatQuantity, nextRdsGiB, nextSize, parseQuantity } from '../../src/remediation/handlers/disk-full.js';
import type { Mode } from '../../src/modes.js';
import { K8sStandIn } from '../support/k8s-standin.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { RdsStandin, awsConfigFor, standinEnv } from '../support/rds-standin.js';
import { TEAM_KEYS, freshFingerprint, startRemediation, until, type RemediationHarness } from '../support/remediation.js';
import { createTempDatabase, pgQuery, serverOf, type TempDatabase } from '../support/service.js';

const NS = 'lomash-wood';
const POD = 'postgres-primary-0';
const PVC = `postgres-data-${POD}`;
const MI = 1024 * 1024;
/** A password in dbpilot's own URL: it must never reach a page, the audit or a log line. */
const PASSWORD = 'pw-never-shown-9d2e';

/** Mounting a tmpfs needs root (CAP_SYS_ADMIN); where that is not allowed the file-system tests cannot run. */
const canMount = (() => {
  const dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-mount-probe-'));
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir]);
  if (r.status === 0) spawnSync('umount', [dir]);
  rmSync(dir, { recursive: true, force: true });
  return r.status === 0;
})();

describe('quantities and steps (pure)', () => {
  it.each([
    ['100Gi', 100n * 2n ** 30n],
    ['1Ti', 2n ** 40n],
    ['107374182400', 107374182400n],
    ['1.5Gi', 3n * 2n ** 29n],
    ['120G', 120_000_000_000n],
    ['1e3', 1000n],
    ['0.5', 1n],
    [64 * MI, 64n * 2n ** 20n],
  ])('parseQuantity(%j) = %s bytes', (q, bytes) => {
    expect(parseQuantity(q)).toBe(bytes);
  });

  it.each(['100gi', '100m', '10 Gi', '-1Gi', 'Gi', '', '1.2.3Gi', 1.5])('parseQuantity(%j) is not a storage quantity', (q) => {
    expect(parseQuantity(q)).toBeNull();
  });

  it('formats the shortest exact quantity; 100Gi in any spelling is the same size', () => {
    expect(formatQuantity(parseQuantity('107374182400')!)).toBe('100Gi');
    expect(formatQuantity(parseQuantity('102400Mi')!)).toBe('100Gi');
    expect(formatQuantity(96n * 2n ** 20n)).toBe('96Mi');
    expect(formatQuantity(1000n)).toBe('1000');
  });

  it.each([
    ['100Gi', { percent: 20 }, '1Ti', '120Gi'],
    ['107374182400', { gi: 10 }, '1Ti', '110Gi'],
    ['100Gi', { percent: 50 }, '130Gi', '130Gi'],
    ['64Mi', { percent: 50 }, '128Mi', '96Mi'],
    ['1000', { percent: 10 }, '1Gi', '1Mi'],
  ] as const)('nextSize(%s, %j, max %s) = %s: one step, never past the ceiling', (from, step, max, to) => {
    expect(formatQuantity(nextSize(parseQuantity(from)!, step, parseQuantity(max)!)!)).toBe(to);
  });

  it('nextSize never answers the same size or a smaller one', () => {
    expect(nextSize(parseQuantity('100Gi')!, { percent: 20 }, parseQuantity('100Gi')!)).toBeNull();
    expect(nextSize(parseQuantity('100Gi')!, { percent: 20 }, parseQuantity('50Gi')!)).toBeNull();
    expect(nextSize(parseQuantity('1Ti')!, { gi: 1 }, parseQuantity('1024Gi')!)).toBeNull();
  });

  it('RDS: at least 10 % (RDS\'s minimum), never past the ceiling', () => {
    expect(nextRdsGiB(100, { percent: 20 }, 1000)).toBe(120);
    expect(nextRdsGiB(100, { gi: 5 }, 1000)).toBe(110);
    expect(nextRdsGiB(100, { percent: 20 }, 105)).toBe(105);
    expect(nextRdsGiB(100, { percent: 20 }, 100)).toBeNull();
  });
});

describe('configuration errors name the field', () => {
  const doc = (handlers: Record<string, unknown>) => ({ handlers });
  it.each([
    [{ 'disk-full': { maxSize: '100 gigs' } }, 'handlers.disk-full.maxSize', /not a storage quantity/],
    [{ 'disk-full': { maxSize: '500m' } }, 'handlers.disk-full.maxSize', /sub-byte/],
    [{ 'disk-full': { stepPercent: 10, stepGi: 20 } }, 'handlers.disk-full.stepGi', /not both/],
    [{ 'disk-full': { pvcs: { [POD]: 'Bad_Name' } } }, `handlers.disk-full.pvcs.${POD}`, /Kubernetes object name/],
    [{ 'disk-full': { lockTimeoutSeconds: 0 } }, 'handlers.disk-full.lockTimeoutSeconds', /.+/],
    [{ 'vacuum-full': { mode: 'auto' } }, 'handlers.vacuum-full.mode', /never automatic/],
  ])('%j → %s', (handlers, field, message) => {
    let err: unknown;
    try {
      parseConfig(doc(handlers), {});
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).message).toMatch(new RegExp(`^${field.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: `));
    expect((err as ConfigError).message).toMatch(message);
  });

  it('the defaults: a 90 % paging limit, no ceiling (no expansion), no vacuum', () => {
    const c = parseConfig({}, {});
    expect(c.handlers['disk-full']).toMatchObject({ pageAbovePercent: 90, volumeClaimTemplate: 'postgres-data', vacuum: false, lockTimeoutSeconds: 5 });
    expect(c.handlers['disk-full'].maxSize).toBeUndefined();
  });
});

// ---------------------------------------------------------------------------------------------------
// On the live system

const pd = new PagerDutyStandin();
const k8s = new K8sStandIn({ namespaces: [NS], defaultNamespace: NS });
const rds = new RdsStandin({ modifyDelayMs: 50 });
const savedEnv: Record<string, string | undefined> = {};
let dir = '';
let kubeconfig = '';
let P = '';

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-disk-full-'));
  await Promise.all([pd.start(), k8s.start(), rds.start()]);
  kubeconfig = await k8s.writeKubeconfig(dir, { namespace: NS });
  P = serverOf(inject('pgPrimaryUrl'));
  for (const [k, v] of Object.entries(standinEnv())) {
    savedEnv[k] = process.env[k];
    process.env[k] = v;
  }
});
afterAll(async () => {
  await Promise.all([pd.close(), k8s.close(), rds.close()]);
  for (const [k, v] of Object.entries(savedEnv)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  rmSync(dir, { recursive: true, force: true });
});

/** A tmpfs standing in for the data volume: its size, how full, and the kubelet's online resize. */
interface Volume {
  path: string;
  grow(bytes: number): void;
  unmount(): void;
}

function mountVolume(sizeMi: number, fillPercent: number): Volume {
  const p = mkdtempSync(path.join(dir, 'data-'));
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMi}m`, 'tmpfs', p]);
  if (r.status !== 0) throw new Error(`mount tmpfs: ${r.stderr.toString()}`);
  writeFileSync(path.join(p, 'base.1'), Buffer.alloc(Math.round((sizeMi * MI * fillPercent) / 100)));
  let mounted = true;
  return {
    path: p,
    grow(bytes) {
      const g = spawnSync('mount', ['-o', `remount,size=${Math.round(bytes / 1024)}k`, p]);
      if (g.status !== 0) throw new Error(`remount: ${g.stderr.toString()}`);
    },
    unmount() {
      if (!mounted) return;
      mounted = false;
      spawnSync('umount', [p]);
      rmSync(p, { recursive: true, force: true });
    },
  };
}

/** What the kubelet does once the volume is bigger: the file system follows status.capacity. Stops with stop(). */
function kubeletResizes(vol: Volume, pvc: string): { stop(): void } {
  let last = '';
  const t = setInterval(() => {
    const cap = ((k8s.pvc(pvc, NS)?.status as { capacity?: { storage?: string } } | undefined)?.capacity?.storage) ?? '';
    if (cap && cap !== last) {
      last = cap;
      vol.grow(Number(parseQuantity(cap)));
    }
  }, 10);
  return { stop: () => clearInterval(t) };
}

let seq = 0;
let h: RemediationHarness | null = null;
let db: TempDatabase | null = null;
let vol: Volume | null = null;
let kubelet: { stop(): void } | null = null;
afterEach(async () => {
  kubelet?.stop();
  kubelet = null;
  await h?.close();
  h = null;
  await db?.drop();
  db = null;
  vol?.unmount();
  vol = null;
  k8s.setRolloutDelay(50);
  rds.instances.clear();
  rds.requests.length = 0;
  k8s.clearRequests();
  pd.reset();
});

/** A table with dead tuples autovacuum leaves alone (the test's own database, autovacuum off for it). */
async function tableWithDeadTuples(d: TempDatabase, name: string, rows: number, deleted: number): Promise<void> {
  await pgQuery(d.url, `CREATE TABLE ${name} (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = false)`);
  await pgQuery(d.url, `INSERT INTO ${name} SELECT g, repeat('x', 200) FROM generate_series(1, ${rows}) g`);
  await pgQuery(d.url, `DELETE FROM ${name} WHERE id <= ${deleted}`);
  // The statistics of a session reach pg_stat_user_tables once it ends: wait for them.
  for (let i = 0; i < 200; i++) {
    const r = await pgQuery<{ dead: string }>(d.url, `SELECT n_dead_tup::text AS dead FROM pg_stat_user_tables WHERE relname = $1`, [name]);
    if (Number(r[0]?.dead ?? 0) >= deleted) return;
    await new Promise((res) => setTimeout(res, 25));
  }
  throw new Error(`dead tuples of ${name} never showed`);
}

async function deadTuples(d: TempDatabase, name: string): Promise<{ dead: number; lastVacuum: string | null }> {
  const r = await pgQuery<{ dead: string; last_vacuum: string | null }>(d.url, `SELECT n_dead_tup::text AS dead, last_vacuum::text FROM pg_stat_user_tables WHERE relname = $1`, [name]);
  return { dead: Number(r[0]!.dead), lastVacuum: r[0]!.last_vacuum };
}

interface SetUp {
  mode: Mode;
  handler?: Record<string, unknown>;
  /** Omit the data directory (dbpilot does not have the volume mounted). */
  noDataDirectory?: boolean;
  aws?: boolean;
  vacuumFull?: Record<string, unknown>;
}

async function setUp(o: SetUp): Promise<RemediationHarness> {
  seq += 1;
  db ??= await createTempDatabase(`disk${seq}`);
  h = await startRemediation({
    mode: o.mode,
    pagerduty: pd,
    config: {
      postgres: { primary: { url: primaryWithPassword(), pod: POD }, databases: [db.name], ...(o.noDataDirectory || !vol ? {} : { dataDirectory: vol.path }) },
      kubernetes: { kubeconfig, namespace: NS, lease: { name: `dbpilot-disk-${seq}`, durationSeconds: 15, renewDeadlineSeconds: 10, retryPeriodSeconds: 0.5 } },
      ...(o.aws ? { aws: awsConfigFor(rds) } : {}),
      handlers: { 'disk-full': { cooldownSeconds: 0, expandTimeoutSeconds: 5, ...(o.handler ?? {}) }, ...(o.vacuumFull ? { 'vacuum-full': o.vacuumFull } : {}) },
    },
  });
  // With kubernetes: configured only the holder of the Lease acts.
  await until(() => h!.remediation.leader.isLeader(), 'leadership');
  return h;
}

/** dbpilot's primary URL with a password (the suite's server trusts local connections: carried, not checked). */
function primaryWithPassword(): string {
  const u = new URL(inject('pgPrimaryUrl'));
  u.password = PASSWORD;
  return u.toString();
}

/** Nothing dbpilot wrote may carry the password of its own URL. */
function expectNoSecret(): void {
  const audit = JSON.stringify(h!.store.listRuns({ limit: 100 }).map((r) => ({ ...r, steps: h!.store.steps(r.id) })));
  expect(audit).not.toContain(PASSWORD);
  expect(JSON.stringify(pd.accepted)).not.toContain(PASSWORD);
  expect(h!.log.text()).not.toContain(PASSWORD);
}

function diskAlert(fingerprint = freshFingerprint()) {
  return {
    alertname: 'PostgresDiskAlmostFull',
    labels: { alertname: 'PostgresDiskAlmostFull', remediation: 'disk-full', team: 'devops', severity: 'critical', server: P, path: vol?.path ?? '/var/lib/postgresql/data' },
    annotations: { summary: `Data disk of ${P} is 95% full` },
    fingerprint,
    startsAt: new Date().toISOString(),
  };
}

type Details = Record<string, unknown> & { diagnostics?: Record<string, unknown>; plan?: string[]; left_to_do?: string[]; verified?: unknown };
function pageOf(alertname: string, fingerprint: string): { routingKey: string; severity: string; summary: string; details: Details } | undefined {
  const e = [...pd.accepted].reverse().find((x) => x.dedupKey === `dbpilot/${alertname}/${fingerprint}` && (x.event as { event_action: string }).event_action === 'trigger');
  if (!e) return undefined;
  const p = (e.event as { payload?: { severity: string; summary: string; custom_details: Details } }).payload;
  return { routingKey: e.routingKey, severity: p?.severity ?? '', summary: p?.summary ?? '', details: p?.custom_details ?? {} };
}

const pvcPatches = () => k8s.requests.filter((r) => r.method === 'PATCH' && r.path === `/api/v1/namespaces/${NS}/persistentvolumeclaims/${PVC}`);
const stepsOf = (runId: string) => h!.store.steps(runId).map((s) => ({ name: s.name, status: s.status, check: (s.check as { detail?: string } | null)?.detail ?? null, command: s.command }));

/** Runbook steps 1–3 in a page: the file system, the database sizes, the largest tables with dead tuples. */
function expectDiagnostics(d: Record<string, unknown> | undefined, table?: { name: string; minDead: number }): void {
  expect(d, 'the page carries diagnostics').toBeDefined();
  const fsd = d!.filesystem as { path: string; used_percent: number; size_bytes: number };
  expect(fsd.path).toBe(vol!.path);
  expect(fsd.size_bytes).toBeGreaterThan(0);
  expect(d!.filesystem_command).toBe(`kubectl exec -it ${POD} -n ${NS} -- df -h ${vol!.path}`);
  const sizes = d!.database_sizes as { datname: string; bytes: number }[];
  expect(sizes.find((s) => s.datname === db!.name)?.bytes).toBeGreaterThan(0);
  expect(d!.database_sizes_command).toContain('pg_database_size(datname)');
  if (table) {
    const tables = (d!.largest_tables as Record<string, { table: string; dead_tuples: number; live_tuples: number }[]>)[db!.name]!;
    const t = tables.find((x) => x.table === table.name);
    expect(t, JSON.stringify(tables)).toBeDefined();
    expect(t!.dead_tuples).toBeGreaterThanOrEqual(table.minDead);
  }
}

describe.skipIf(!canMount)('disk-full (runbook scenario 3) on a real PostgreSQL and a real file system', () => {
  it('auto: expands the PVC by one step, checks status.capacity and the file system, vacuums the dead tuples; devops is told with the diagnostics', async () => {
    vol = mountVolume(64, 95);
    k8s.seedPvc({ name: PVC, namespace: NS, storage: '64Mi', storageClassName: 'gp3-expand', allowVolumeExpansion: true });
    db = await createTempDatabase(`disk${seq + 1}`);
    await tableWithDeadTuples(db, 'events', 20_000, 15_000);
    const before = await deadTuples(db, 'events');
    await setUp({ mode: 'auto', handler: { maxSize: '128Mi', stepPercent: 50, vacuum: true, vacuumMinDeadTuples: 1000 } });
    kubelet = kubeletResizes(vol, PVC);
    const a = diskAlert();
    const run = await h!.engine.onFiring(a);
    const steps = stepsOf(run!.id);
    expect(run?.status, `${run?.reason}\n${JSON.stringify(steps)}`).toBe('succeeded');
    // Exactly the runbook's patch, with the new size: 64Mi + 50 % = 96Mi.
    expect(pvcPatches().map((r) => [r.contentType, r.body, r.status])).toEqual([['application/merge-patch+json', { spec: { resources: { requests: { storage: '96Mi' } } } }, 200]]);
    expect(k8s.requests.some((r) => r.method === 'GET' && r.path === '/apis/storage.k8s.io/v1/storageclasses/gp3-expand')).toBe(true);
    expect(steps.map((s) => [s.name, s.status])).toEqual([
      ['expandPvc', 'done'],
      [`vacuumDeadTuples(${db.name})`, 'done'],
    ]);
    expect(steps[0]!.command).toBe(`kubectl patch pvc ${PVC} -n ${NS} \\\n  -p '{"spec":{"resources":{"requests":{"storage":"96Mi"}}}}'`);
    expect(steps[0]!.check).toMatch(new RegExp(`PVC ${PVC} has 96Mi \\(status.capacity\\).*the file system of .* grew from 64.0 MiB to 96.0 MiB`));
    expect(steps[1]!.command).toContain(`psql -U`);
    expect(steps[1]!.command).toContain(`-d ${db.name} -c "SET lock_timeout = '5000ms'; SET statement_timeout = '1800000ms'; VACUUM events;"`);
    expect(steps[1]!.check).toMatch(/events: 15000 → 0 dead tuples/);
    // The live system agrees.
    const after = await deadTuples(db, 'events');
    expect(after.dead).toBeLessThan(before.dead);
    expect(after.lastVacuum).not.toBeNull();
    expect((k8s.pvc(PVC, NS)!.spec as { resources: { requests: { storage: string } } }).resources.requests.storage).toBe('96Mi');
    // Above 90 %, devops is paged even though every step succeeded: the success note, with steps 1–3.
    await h!.settle();
    const page = pageOf('PostgresDiskAlmostFull', a.fingerprint)!;
    expect(page.routingKey).toBe(TEAM_KEYS.devops);
    expect(page.severity).toBe('warning');
    expect(page.summary).toContain('done:');
    expect(page.details.left_to_do!.join('\n')).toMatch(/about 6\d\.\d+ % used after the expansion/);
    expect(page.details.left_to_do!.join('\n')).toContain(`dbpilot plan vacuum-full -d ${db.name} -t public.events`);
    expectDiagnostics(page.details.diagnostics, { name: 'events', minDead: 0 });
    expect((page.details.diagnostics!.pvc as { requested: string; capacity: string }).capacity).toBe('96Mi');
    // The audit has every action with its check.
    for (const s of h!.store.steps(run!.id)) expect((s.check as { ok: boolean }).ok, s.name).toBe(true);
    expectNoSecret();
  });

  it('approve: pages devops with the plan and the diagnostics and patches nothing until approved; approved, it expands and checks', async () => {
    vol = mountVolume(64, 95);
    k8s.seedPvc({ name: PVC, namespace: NS, storage: '64Mi', storageClassName: 'gp3-expand', allowVolumeExpansion: true });
    await setUp({ mode: 'approve', handler: { maxSize: '128Mi', stepGi: 0.0625 } });
    kubelet = kubeletResizes(vol, PVC);
    const a = diskAlert();
    const run = await h!.engine.onFiring(a);
    expect(run?.status).toBe('awaiting_approval');
    expect(pvcPatches()).toEqual([]);
    await h!.settle();
    const asked = pageOf('PostgresDiskAlmostFull', a.fingerprint)!;
    expect(asked.routingKey).toBe(TEAM_KEYS.devops);
    expect(asked.summary).toMatch(/waiting for approval: .* is 9\d(\.\d+)? % used .*: expand PVC postgres-data-postgres-primary-0 from 64Mi to 128Mi \(ceiling 128Mi, StorageClass gp3-expand allows expansion\)/);
    expectDiagnostics(asked.details.diagnostics);
    const done = await h!.engine.approve(run!.id, 'devops-on-call');
    expect(done.status, `${done.reason} ${JSON.stringify(stepsOf(run!.id))}`).toBe('succeeded');
    expect(pvcPatches()).toHaveLength(1);
    expect(stepsOf(run!.id)[0]!.check).toMatch(/grew from 64.0 MiB to 128.0 MiB/);
    expectNoSecret();
  });

  it('dry-run: shows the exact kubectl patch and changes nothing; the page carries the diagnostics', async () => {
    vol = mountVolume(64, 95);
    k8s.seedPvc({ name: PVC, namespace: NS, storage: '64Mi', storageClassName: 'gp3-expand', allowVolumeExpansion: true });
    await setUp({ mode: 'dry-run', handler: { maxSize: '1Gi', stepGi: 0.25 } });
    const a = diskAlert();
    const run = await h!.engine.onFiring(a);
    expect(run?.status).toBe('dry_run');
    expect(pvcPatches()).toEqual([]);
    await h!.settle();
    const page = pageOf('PostgresDiskAlmostFull', a.fingerprint)!;
    expect(page.details.plan).toEqual([`kubectl patch pvc ${PVC} -n ${NS} \\\n  -p '{"spec":{"resources":{"requests":{"storage":"320Mi"}}}}'`]);
    expectDiagnostics(page.details.diagnostics);
    expect((page.details.diagnostics!.filesystem as { used_percent: number }).used_percent).toBeGreaterThan(90);
  });

  it('a StorageClass without allowVolumeExpansion: the PVC is never patched; devops is paged with why and the diagnostics', async () => {
    vol = mountVolume(64, 95);
    k8s.seedPvc({ name: PVC, namespace: NS, storage: '64Mi', storageClassName: 'gp2-fixed', allowVolumeExpansion: false });
    await setUp({ mode: 'auto', handler: { maxSize: '1Gi' } });
    const a = diskAlert();
    const run = await h!.engine.onFiring(a);
    expect(run?.status).toBe('escalated');
    expect(run?.reason).toMatch(/StorageClass gp2-fixed of PVC postgres-data-postgres-primary-0 does not allow volume expansion/);
    expect(pvcPatches()).toEqual([]);
    await h!.settle();
    const page = pageOf('PostgresDiskAlmostFull', a.fingerprint)!;
    expect(page.routingKey).toBe(TEAM_KEYS.devops);
    expect(page.severity).toBe('critical');
    expectDiagnostics(page.details.diagnostics);
  });

  it('a PVC dbpilot cannot read (not there, or RBAC refusing) is not expanded; the VACUUM still runs and devops is paged why', async () => {
    vol = mountVolume(64, 95);
    db = await createTempDatabase(`disk${seq + 1}`);
    await tableWithDeadTuples(db, 'events', 5000, 3000);
    await setUp({ mode: 'auto', handler: { maxSize: '1Gi', vacuum: true, vacuumMinDeadTuples: 1000, pvcs: { [POD]: 'no-such-claim' } } });
    const a = diskAlert();
    const run = await h!.engine.onFiring(a);
    expect(run?.status, run?.reason ?? '').toBe('escalated');
    expect(run?.reason).toMatch(/storage was not expanded: could not read what an expansion needs: .*persistentvolumeclaims "no-such-claim" not found/);
    expect(stepsOf(run!.id).map((x) => [x.name, x.status])).toEqual([[`vacuumDeadTuples(${db.name})`, 'done']]);
    expect(k8s.requests.filter((r) => r.method === 'PATCH')).toEqual([]);
    await h!.settle();
    const page = pageOf('PostgresDiskAlmostFull', a.fingerprint)!;
    expect(page.routingKey).toBe(TEAM_KEYS.devops);
    expect(page.details.diagnostics!.not_expanded).toMatch(/no-such-claim/);
    expectDiagnostics(page.details.diagnostics, { name: 'events', minDead: 0 });
  });

  it('never past the ceiling: one step is cut at maxSize; at the ceiling, or above it, nothing is patched (never smaller)', async () => {
    vol = mountVolume(64, 95);
    k8s.seedPvc({ name: PVC, namespace: NS, storage: '64Mi', storageClassName: 'gp3-expand', allowVolumeExpansion: true });
    await setUp({ mode: 'auto', handler: { maxSize: '80Mi', stepPercent: 50 } });
    kubelet = kubeletResizes(vol, PVC);
    const first = await h!.engine.onFiring(diskAlert());
    // One 50 % step would be 96Mi: the ceiling cuts it at 80Mi (the disk then about 76 % used).
    expect(pvcPatches().map((r) => (r.body as { spec: { resources: { requests: { storage: string } } } }).spec.resources.requests.storage)).toEqual(['80Mi']);
    expect(first?.status, first?.reason ?? '').toBe('succeeded');
    // Refill the grown disk above 90 %: at the ceiling now, no second patch.
    writeFileSync(path.join(vol.path, 'base.2'), Buffer.alloc(14 * MI));
    k8s.clearRequests();
    const second = await h!.engine.onFiring(diskAlert());
    expect(second?.status).toBe('escalated');
    expect(second?.reason).toMatch(/PVC postgres-data-postgres-primary-0 has 80Mi, at the ceiling of 80Mi/);
    expect(pvcPatches()).toEqual([]);
    await h!.close();
    // A ceiling below the volume's size: dbpilot never asks for less.
    await setUp({ mode: 'auto', handler: { maxSize: '32Mi', stepPercent: 50 } });
    const third = await h!.engine.onFiring(diskAlert());
    expect(third?.status).toBe('escalated');
    expect(pvcPatches()).toEqual([]);
  });

  it('a capacity that does not grow within the timeout fails the check and escalates; so does a file system that does not follow', async () => {
    vol = mountVolume(64, 95);
    k8s.seedPvc({ name: PVC, namespace: NS, storage: '64Mi', storageClassName: 'gp3-expand', allowVolumeExpansion: true });
    k8s.setRolloutDelay(null); // the resizer never reports the new capacity
    await setUp({ mode: 'auto', handler: { maxSize: '128Mi', stepPercent: 50, expandTimeoutSeconds: 1 } });
    const a = diskAlert();
    const run = await h!.engine.onFiring(a);
    expect(run?.status).toBe('failed');
    expect(run?.reason).toMatch(/check after expandPvc failed: status.capacity of PVC postgres-data-postgres-primary-0 is still 64Mi after 1 s, requested 96Mi/);
    expect(stepsOf(run!.id).map((s) => [s.name, s.status])).toEqual([['expandPvc', 'check_failed']]);
    await h!.settle();
    const page = pageOf('PostgresDiskAlmostFull', a.fingerprint)!;
    expect(page.routingKey).toBe(TEAM_KEYS.devops);
    expectDiagnostics(page.details.diagnostics);
    await h!.close();

    // The capacity grows, but nothing resizes the file system (a generous timeout: the capacity must be seen first).
    k8s.setRolloutDelay(20);
    k8s.seedPvc({ name: PVC, namespace: NS, storage: '64Mi', storageClassName: 'gp3-expand', allowVolumeExpansion: true });
    await setUp({ mode: 'auto', handler: { maxSize: '128Mi', stepPercent: 50, expandTimeoutSeconds: 3 } });
    const b = diskAlert();
    const again = await h!.engine.onFiring(b);
    expect(again?.status).toBe('failed');
    expect(again?.reason).toMatch(/PVC postgres-data-postgres-primary-0 has 96Mi .*but the file system of .* is still 64.0 MiB \(was 64.0 MiB\): the volume grew, the file system did not follow/);
  });

  it('under the limit when planned: nothing to do, nothing patched, nobody paged', async () => {
    vol = mountVolume(64, 50);
    k8s.seedPvc({ name: PVC, namespace: NS, storage: '64Mi', storageClassName: 'gp3-expand', allowVolumeExpansion: true });
    await setUp({ mode: 'auto', handler: { maxSize: '128Mi' } });
    const a = diskAlert();
    const run = await h!.engine.onFiring(a);
    expect(run?.status).toBe('succeeded');
    expect(run?.reason).toMatch(/nothing to do: .* is 50(\.\d+)? % used, not above 90 %/);
    expect(pvcPatches()).toEqual([]);
    await h!.settle();
    expect(pageOf('PostgresDiskAlmostFull', a.fingerprint)).toBeUndefined();
  });

  it('vacuum-full: never automatic — in auto mode it waits for approval with the table size and the lock shown; approved, it rewrites that one table', async () => {
    vol = mountVolume(64, 50);
    db = await createTempDatabase(`diskvf${seq + 1}`);
    await tableWithDeadTuples(db, 'audit_log', 20_000, 18_000);
    await tableWithDeadTuples(db, 'other', 2000, 1000);
    const node = async (t: string) => Number((await pgQuery<{ n: string }>(db!.url, `SELECT relfilenode::text AS n FROM pg_class WHERE relname = $1`, [t]))[0]!.n);
    const size = async (t: string) => Number((await pgQuery<{ n: string }>(db!.url, `SELECT pg_total_relation_size($1::regclass)::text AS n`, [t]))[0]!.n);
    const [auditNode, otherNode, auditSize] = [await node('audit_log'), await node('other'), await size('audit_log')];
    await setUp({ mode: 'auto' });
    const a = {
      alertname: 'DiskSpaceReclaim',
      labels: { alertname: 'DiskSpaceReclaim', remediation: 'vacuum-full', team: 'devops', severity: 'warning', server: P, datname: db.name, relname: 'public.audit_log' },
      annotations: {},
      fingerprint: freshFingerprint(),
      startsAt: new Date().toISOString(),
    };
    const run = await h!.engine.onFiring(a);
    expect(run?.status).toBe('awaiting_approval');
    expect(run?.mode).toBe('approve');
    expect(await node('audit_log')).toBe(auditNode);
    await h!.settle();
    const asked = pageOf('DiskSpaceReclaim', a.fingerprint)!;
    expect(asked.summary).toMatch(/waiting for approval: VACUUM FULL audit_log in .*: \d+\.\d MiB with 18000 dead and 2000 live tuples; it takes an ACCESS EXCLUSIVE lock on audit_log for the whole rewrite/);
    expect(asked.details.plan![0]).toContain(`VACUUM FULL audit_log;`);
    expect(asked.details.plan![0]).toContain('# takes an ACCESS EXCLUSIVE lock on audit_log');
    expect((asked.details.diagnostics!.table as { lock: string }).lock).toMatch(/ACCESS EXCLUSIVE/);
    expectDiagnostics(asked.details.diagnostics);

    const done = await h!.engine.approve(run!.id, 'dba-on-call');
    expect(done.status, `${done.reason} ${JSON.stringify(stepsOf(run!.id))}`).toBe('succeeded');
    expect(stepsOf(run!.id).map((s) => [s.name, s.status])).toEqual([['vacuumFull', 'done']]);
    expect(stepsOf(run!.id)[0]!.check).toMatch(/audit_log rewritten \(relfilenode \d+ → \d+\)/);
    expect(await node('audit_log')).not.toBe(auditNode);
    expect(await size('audit_log')).toBeLessThan(auditSize);
    // One table at a time: the other is untouched.
    expect(await node('other')).toBe(otherNode);
  });

  it('vacuum-full: refused without one table, and when the file system has less free space than the table', async () => {
    vol = mountVolume(64, 99.5);
    db = await createTempDatabase(`diskvf${seq + 1}`);
    await tableWithDeadTuples(db, 'big', 20_000, 1000);
    await setUp({ mode: 'approve' });
    const base = { alertname: 'DiskSpaceReclaim', annotations: {}, startsAt: new Date().toISOString() };
    const none = await h!.engine.onFiring({ ...base, labels: { alertname: 'DiskSpaceReclaim', remediation: 'vacuum-full', server: P, datname: db.name }, fingerprint: freshFingerprint() });
    expect(none?.status).toBe('escalated');
    expect(none?.reason).toMatch(/VACUUM FULL needs one table/);
    const full = await h!.engine.onFiring({ ...base, labels: { alertname: 'DiskSpaceReclaim', remediation: 'vacuum-full', server: P, datname: db.name, relname: 'big' }, fingerprint: freshFingerprint() });
    expect(full?.status).toBe('escalated');
    expect(full?.reason).toMatch(/VACUUM FULL of public.big writes a new copy of up to .* before it frees the old one; only .* is free/);
  });

  it('vacuum-full: the disk filling up between the plan and the approval stops it before it acts', async () => {
    vol = mountVolume(64, 50);
    db = await createTempDatabase(`diskvf${seq + 1}`);
    await tableWithDeadTuples(db, 'big', 20_000, 1000);
    const node = async () => (await pgQuery<{ n: string }>(db!.url, `SELECT relfilenode::text AS n FROM pg_class WHERE relname = 'big'`))[0]!.n;
    const before = await node();
    await setUp({ mode: 'approve' });
    const run = await h!.engine.onFiring({
      alertname: 'DiskSpaceReclaim',
      labels: { alertname: 'DiskSpaceReclaim', remediation: 'vacuum-full', server: P, datname: db.name, relname: 'public.big' },
      annotations: {},
      fingerprint: freshFingerprint(),
      startsAt: new Date().toISOString(),
    });
    expect(run?.status).toBe('awaiting_approval');
    writeFileSync(path.join(vol.path, 'base.2'), Buffer.alloc(31 * MI));
    const done = await h!.engine.approve(run!.id, 'dba-on-call');
    expect(done.status).toBe('escalated');
    expect(done.reason).toMatch(/stopped before vacuumFull: big is .* now and only .* is free on .*: the rewrite could fill the disk/);
    expect(await node()).toBe(before);
  });
});

describe('disk-full where aws: is configured (RDS stand-in)', () => {
  it('grows the RDS allocation through ModifyDBInstance by one step, checked applied; no PVC is touched; devops is told', async () => {
    rds.seedInstance({ id: 'lomash-wood-prod', allocatedGiB: 100 });
    k8s.seedPvc({ name: PVC, namespace: NS, storage: '64Mi', storageClassName: 'gp3-expand', allowVolumeExpansion: true });
    k8s.clearRequests();
    await setUp({ mode: 'auto', aws: true, handler: { maxSize: '150Gi', stepPercent: 20 } });
    const a = diskAlert();
    const run = await h!.engine.onFiring(a);
    const steps = stepsOf(run!.id);
    expect(run?.status, `${run?.reason} ${JSON.stringify(steps)}`).toBe('succeeded');
    const modify = rds.calls('ModifyDBInstance');
    expect(modify).toHaveLength(1);
    expect(modify[0]!.params).toMatchObject({ DBInstanceIdentifier: 'lomash-wood-prod', AllocatedStorage: '120', ApplyImmediately: 'true' });
    expect(rds.instances.get('lomash-wood-prod')!.allocatedGiB).toBe(120);
    expect(steps.map((s) => [s.name, s.status])).toEqual([['growRdsStorage', 'done']]);
    expect(steps[0]!.command).toContain('aws rds modify-db-instance');
    expect(steps[0]!.command).toContain('--allocated-storage 120');
    expect(pvcPatches()).toEqual([]);
    await h!.settle();
    const page = pageOf('PostgresDiskAlmostFull', a.fingerprint)!;
    expect(page.routingKey).toBe(TEAM_KEYS.devops);
    const d = page.details.diagnostics!;
    expect(d.rds).toMatchObject({ instance: 'lomash-wood-prod', allocated_gib: 120, ceiling_gib: 150 });
    expect(d.filesystem).toMatch(/postgres.dataDirectory is not configured/);
    expect((d.database_sizes as { datname: string }[]).some((x) => x.datname === db!.name)).toBe(true);
  });

  it('RDS\'s own rules first: a ceiling under RDS\'s 10 % minimum asks nothing of RDS and pages why', async () => {
    rds.seedInstance({ id: 'lomash-wood-prod', allocatedGiB: 100 });
    await setUp({ mode: 'auto', aws: true, handler: { maxSize: '105Gi', stepPercent: 20 } });
    const a = diskAlert();
    const run = await h!.engine.onFiring(a);
    expect(run?.status).toBe('escalated');
    expect(run?.reason).toMatch(/RDS storage cannot grow now: RDS grows storage by at least 10 %/);
    expect(rds.calls('ModifyDBInstance')).toEqual([]);
    await h!.settle();
    expect(pageOf('PostgresDiskAlmostFull', a.fingerprint)?.routingKey).toBe(TEAM_KEYS.devops);
  });
});
