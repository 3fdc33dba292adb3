/**
 * Runbook scenario 4 on a real PostgreSQL: a database of each test's own on the suite's primary, whose
 * `_prisma_migrations` is written the way Prisma writes it (test/support/prisma.ts plays the service's
 * `prisma migrate deploy`: a migration that fails leaves its started row with the logs); the real engine
 * and store; the strict Kubernetes stand-in (the owning service's deployment, or the suspended CronJob
 * whose Job runs migrate deploy); the strict PagerDuty stand-in. When the stand-in records the restart
 * or the Job, the test does what the service would: runs migrate deploy with the fixed migration (or
 * the still broken one), and drives the Job to Complete or Failed.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { MIGRATE_RESET, deployVerdict, jobNameFor, prismaMigrateResetProcedure } from '../../src/remediation/handlers/prisma-migration.js';
import { defaultHandlers } from '../../src/remediation/index.js';
import { MigrateLockBusyError, PrismaMigrateError, clientQuery, markRolledBack, withMigrateLock, type MigrationRow } from '../../src/integrations/prisma.js';
import { K8sStandIn } from '../support/k8s-standin.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { PrismaCliError, checksumOf, prismaMigrateDeploy, type Migration } from '../support/prisma.js';
import { TEAM_KEYS, freshFingerprint, payload, startRemediation, until, type RemediationHarness } from '../support/remediation.js';
import { createTempDatabase, pgQuery, serverOf, type TempDatabase } from '../support/service.js';
import type { Mode } from '../../src/modes.js';

const NS = 'lomash-wood';
/** A password in dbpilot's own URL: it must never reach a page, the audit or a log line. */
const PASSWORD = 'pw-never-shown-4f1c';

const INIT: Migration = { name: '20240101000000_init', sql: 'CREATE TABLE orders (id int PRIMARY KEY, total numeric NOT NULL);' };
/** Broken as first shipped: the foreign key names a table that does not exist. */
const PAYMENTS_BROKEN: Migration = { name: '20240301000000_add_payments', sql: 'CREATE TABLE payments (id int PRIMARY KEY, order_id int NOT NULL REFERENCES "order"(id));' };
/** The same migration, fixed in the service's next image. */
const PAYMENTS_FIXED: Migration = { name: '20240301000000_add_payments', sql: 'CREATE TABLE payments (id int PRIMARY KEY, order_id int NOT NULL REFERENCES orders(id));' };
/** Still broken in another way: what a re-run that fails again leaves. */
const PAYMENTS_STILL_BROKEN: Migration = { name: '20240301000000_add_payments', sql: 'CREATE TABLE payments (id int PRIMARY KEY, order_id int NOT NULL REFERENCES orders(order_no));' };

let dir: string;
const pd = new PagerDutyStandin();
const k8s = new K8sStandIn({ namespaces: [NS], defaultNamespace: NS });
let kubeconfig = '';
let P = '';

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-prisma-'));
  await pd.start();
  await k8s.start();
  kubeconfig = await k8s.writeKubeconfig(dir, { namespace: NS });
  P = serverOf(inject('pgPrimaryUrl'));
});
afterAll(async () => {
  await pd.close();
  await k8s.close();
  rmSync(dir, { recursive: true, force: true });
});

let seq = 0;
let h: RemediationHarness | null = null;
let db: TempDatabase | null = null;
const open: pg.Client[] = [];
afterEach(async () => {
  await h?.close();
  h = null;
  for (const c of open.splice(0)) await c.end().catch(() => undefined);
  await db?.drop();
  db = null;
  pd.reset();
});

/** dbpilot's primary URL with a password (the suite's server trusts local connections, so it is not checked, only carried). */
function primaryWithPassword(): string {
  const u = new URL(inject('pgPrimaryUrl'));
  u.password = PASSWORD;
  return u.toString();
}

interface Setup {
  h: RemediationHarness;
  db: TempDatabase;
  /** The service's DATABASE_URL. */
  url: string;
  schema: string;
  service: string;
  deployment: string;
  cronJob: string;
}

async function setUp(o: { mode: Mode; migrateDeploy?: 'restart' | 'job' | null; schema?: string; owned?: boolean; handler?: Record<string, unknown> }): Promise<Setup> {
  seq += 1;
  const schema = o.schema ?? 'public';
  db = await createTempDatabase(`pm${seq}`);
  if (schema !== 'public') await pgQuery(db.url, `CREATE SCHEMA "${schema}"`);
  const service = `order-payment-service-${seq}`;
  const deployment = service;
  const cronJob = `${service}-migrate`;
  k8s.seedDeployment({ name: deployment, namespace: NS, replicas: 2 });
  k8s.seedCronJob({ name: cronJob, namespace: NS });
  k8s.seedSecret({ name: `${service}-secrets`, namespace: NS, data: { DATABASE_URL: `postgresql://orders:${PASSWORD}@postgres-primary:5432/${db.name}?schema=${schema}` } });
  const migrateDeploy = o.migrateDeploy === undefined ? 'restart' : o.migrateDeploy;
  const prisma = { database: db.name, schema, ...(migrateDeploy ? { migrateDeploy } : {}), ...(migrateDeploy === 'job' ? { cronJob } : {}) };
  h = await startRemediation({
    mode: o.mode,
    pagerduty: pd,
    config: {
      postgres: { primary: { url: primaryWithPassword(), pod: 'postgres-primary-0' } },
      kubernetes: { kubeconfig, namespace: NS, deployments: [deployment], lease: { name: `dbpilot-prisma-${seq}`, durationSeconds: 15, renewDeadlineSeconds: 10, retryPeriodSeconds: 0.5 } },
      services: o.owned === false ? [] : [{ name: service, healthUrl: 'http://127.0.0.1:9/health', deployment, prisma }],
      handlers: { 'prisma-migration': { deployTimeoutSeconds: 20, lockTimeoutSeconds: 1, ...(o.handler ?? {}) } },
    },
  });
  await until(() => h!.remediation.leader.isLeader(), 'leadership');
  return { h, db, url: db.url, schema, service, deployment, cronJob };
}

/** What the service's first deploy left: init applied, add_payments failed with its logs. */
async function failedDeploy(s: Setup): Promise<void> {
  await expect(prismaMigrateDeploy(s.url, s.schema, [INIT, PAYMENTS_BROKEN])).rejects.toMatchObject({ code: 'P3018' });
}

async function rows(s: Setup): Promise<MigrationRow[]> {
  const r = await pgQuery<Record<string, unknown>>(s.url, `SELECT id, migration_name, checksum, started_at::text, finished_at::text, rolled_back_at::text, logs, applied_steps_count FROM "${s.schema}"._prisma_migrations ORDER BY started_at`);
  return r.map((x) => ({
    id: String(x.id),
    migrationName: String(x.migration_name),
    checksum: String(x.checksum),
    startedAt: String(x.started_at),
    finishedAt: (x.finished_at as string | null) ?? null,
    rolledBackAt: (x.rolled_back_at as string | null) ?? null,
    logs: (x.logs as string | null) ?? null,
    appliedStepsCount: Number(x.applied_steps_count),
  }));
}

function alert(s: Setup, fingerprint = freshFingerprint()) {
  return {
    alertname: 'PrismaMigrationFailed',
    labels: { alertname: 'PrismaMigrationFailed', remediation: 'prisma-migration', team: 'oncall-backend', severity: 'warning', server: P, datname: s.db.name },
    annotations: { summary: `1 failed Prisma migration(s) in ${s.db.name}` },
    fingerprint,
    startsAt: new Date().toISOString(),
  };
}

type Details = Record<string, unknown> & { diagnostics?: Record<string, unknown>; tried?: unknown; verified?: unknown; plan?: string[]; left_to_do?: string[] };
function pageOf(fingerprint: string, action: 'trigger' | 'resolve' = 'trigger'): { routingKey: string; severity: string; details: Details } | undefined {
  const e = [...pd.accepted].reverse().find((x) => x.dedupKey === `dbpilot/PrismaMigrationFailed/${fingerprint}` && (x.event as { event_action: string }).event_action === action);
  if (!e) return undefined;
  const p = (e.event as { payload?: { severity: string; custom_details: Details } }).payload;
  return { routingKey: e.routingKey, severity: p?.severity ?? '', details: p?.custom_details ?? {} };
}

const restartedAt = (d: string) => ((k8s.deployment(d, NS)?.spec as { template: { metadata?: { annotations?: Record<string, string> } } }).template.metadata?.annotations ?? {})['kubectl.kubernetes.io/restartedAt'];

/** The service: when its deployment is restarted, its new pods run migrate deploy with `migrations`. */
async function serviceOnRestart(s: Setup, migrations: Migration[]): Promise<unknown> {
  await until(() => restartedAt(s.deployment) !== undefined, `the restart of deployment/${s.deployment}`, 30_000);
  return prismaMigrateDeploy(s.url, s.schema, migrations, { applicationName: `${s.service}-init` }).catch((err: unknown) => err);
}

/** The service's migrate Job: when it is created, it runs migrate deploy with `migrations` and completes or fails. */
async function serviceOnJob(s: Setup, migrations: Migration[]): Promise<{ job: string; result: unknown }> {
  let job = '';
  await until(() => {
    job = String((k8s.jobs(NS).find((j) => ((j.metadata as { ownerReferences?: { name: string }[] }).ownerReferences ?? [])[0]?.name === s.cronJob)?.metadata as { name?: string } | undefined)?.name ?? '');
    return job !== '';
  }, `a job from cronjob/${s.cronJob}`, 30_000);
  const result = await prismaMigrateDeploy(s.url, s.schema, migrations, { applicationName: job }).catch((err: unknown) => err);
  k8s.setJobOutcome(job, result instanceof Error ? 'failed' : 'complete', NS);
  return { job, result };
}

/** Nothing dbpilot wrote may carry the password of its own URL or the service's DATABASE_URL. */
function expectNoSecret(s: Setup): void {
  const audit = JSON.stringify(s.h.store.listRuns({ limit: 100 }).map((r) => ({ ...r, steps: s.h.store.steps(r.id) })));
  expect(audit).not.toContain(PASSWORD);
  expect(JSON.stringify(pd.accepted)).not.toContain(PASSWORD);
  expect(s.h.log.text()).not.toContain(PASSWORD);
}

describe('prisma-migration (runbook scenario 4) on a real PostgreSQL', () => {
  it('approve: pages on-call backend with the failed rows and the owning service, changes nothing until approved; then resolves as Prisma does, restarts the deployment, and the re-applied migration finishes', async () => {
    const s = await setUp({ mode: 'approve' });
    await failedDeploy(s);
    const before = await rows(s);
    const failed = before.find((r) => r.migrationName === PAYMENTS_BROKEN.name)!;
    expect(failed).toMatchObject({ finishedAt: null, rolledBackAt: null, appliedStepsCount: 0, checksum: checksumOf(PAYMENTS_BROKEN.sql) });
    expect(failed.logs).toContain('Database error code: 42P01');
    // The service's own deploy is blocked, as in the runbook's symptom.
    await expect(prismaMigrateDeploy(s.url, s.schema, [INIT, PAYMENTS_FIXED])).rejects.toMatchObject({ code: 'P3009' });

    const a = alert(s);
    const run = await s.h.engine.onFiring(a);
    expect(run?.status, run?.reason ?? '').toBe('awaiting_approval');
    expect(await rows(s)).toEqual(before);
    expect(restartedAt(s.deployment)).toBeUndefined();
    await s.h.settle();
    const asked = pageOf(a.fingerprint)!;
    expect(asked.routingKey).toBe(TEAM_KEYS['oncall-backend']);
    expect(asked.details.plan![0]).toContain(`kubectl exec -it deploy/${s.deployment} -n ${NS} -- npx prisma migrate resolve --rolled-back ${PAYMENTS_BROKEN.name}`);
    expect(asked.details.plan![0]).toContain(`UPDATE \\"public\\".\\"_prisma_migrations\\" SET rolled_back_at = now() WHERE migration_name = '${PAYMENTS_BROKEN.name}' AND finished_at IS NULL AND rolled_back_at IS NULL`);
    expect(asked.details.plan![1]).toContain(`kubectl rollout restart deployment/${s.deployment} -n ${NS}`);
    const d = asked.details.diagnostics!;
    expect(d.owning_service).toEqual([{ name: s.service, schema: 'public', deployment: s.deployment, migrate_deploy: 'restart', cron_job: null }]);
    const listed = d.failed_migrations as { migration_name: string; started_at: string; logs: string }[];
    expect(listed).toHaveLength(1);
    expect(listed[0]!.migration_name).toBe(PAYMENTS_BROKEN.name);
    expect(Date.parse(listed[0]!.started_at)).toBe(Date.parse(failed.startedAt));
    expect(listed[0]!.logs).toContain('relation "order" does not exist');

    // Approved: the service re-applies the fixed migration when its pods restart.
    const service = serviceOnRestart(s, [INIT, PAYMENTS_FIXED]);
    const done = await s.h.engine.approve(run!.id, 'alice');
    expect(await service).toEqual({ applied: [PAYMENTS_FIXED.name] });
    expect(done.status, `${done.reason}\n${JSON.stringify(s.h.store.steps(run!.id).map((x) => [x.name, x.status, x.check, x.error]))}`).toBe('succeeded');
    expect(s.h.store.steps(run!.id).map((x) => [x.name, x.status])).toEqual([
      ['resolveRolledBack', 'done'],
      ['rerunMigrateDeploy', 'done'],
      ['verifyMigrateDeploy', 'done'],
    ]);
    const after = await rows(s);
    // Exactly what resolve --rolled-back does to the failed row: rolled_back_at, nothing else.
    const old = after.find((r) => r.id === failed.id)!;
    expect(old.rolledBackAt).not.toBeNull();
    expect({ ...old, rolledBackAt: null }).toEqual(failed);
    // And migrate deploy's new row, finished; nothing else is failed.
    const again = after.filter((r) => r.migrationName === PAYMENTS_FIXED.name && r.id !== failed.id);
    expect(again).toHaveLength(1);
    expect(again[0]).toMatchObject({ finishedAt: expect.any(String), rolledBackAt: null, appliedStepsCount: 1, checksum: checksumOf(PAYMENTS_FIXED.sql) });
    expect(after.filter((r) => r.finishedAt === null && r.rolledBackAt === null)).toEqual([]);
    expect((await pgQuery(s.url, `SELECT to_regclass('public.payments')::text AS t`))[0]).toEqual({ t: 'payments' });
    expect((s.h.store.steps(run!.id)[2]!.check as { detail: string }).detail).toMatch(/20240301000000_add_payments re-applied, finished .*; no failed migration/);
    // On-call backend is told at low urgency what was done and what is left, with the original logs.
    await s.h.settle();
    const told = pageOf(a.fingerprint)!;
    expect(told.severity).toBe('info');
    expect(told.details.left_to_do![0]).toContain(`find out why ${PAYMENTS_BROKEN.name} failed`);
    expect(told.details.left_to_do![0]).toContain('relation "order" does not exist');
    expect(told.details.diagnostics).toMatchObject({ failed_migrations: [] });
    expect(s.h.store.getRun(run!.id)!.approvedBy).toBe('alice');
    expectNoSecret(s);
  });

  it('auto, job: a non-public schema, the Job created from the CronJob as kubectl would, the re-applied migration finishes', async () => {
    const s = await setUp({ mode: 'auto', migrateDeploy: 'job', schema: 'orders' });
    await failedDeploy(s);
    const failed = (await rows(s)).find((r) => r.finishedAt === null)!;
    const a = alert(s);
    const [run, service] = await Promise.all([s.h.engine.onFiring(a), serviceOnJob(s, [INIT, PAYMENTS_FIXED])]);
    expect(run?.status, `${run?.reason}\n${JSON.stringify(s.h.store.steps(run!.id).map((x) => [x.name, x.status, x.check, x.error]))}`).toBe('succeeded');
    expect(service.result).toEqual({ applied: [PAYMENTS_FIXED.name] });
    // The Job is the CronJob's jobTemplate, as kubectl create job --from=cronjob/… makes it.
    const job = k8s.get('jobs', service.job, NS)!;
    const cron = k8s.get('cronjobs', s.cronJob, NS)!;
    expect(service.job).toMatch(new RegExp(`^${s.cronJob}-[0-9a-z]+$`));
    expect((job.metadata as { annotations: Record<string, string> }).annotations).toMatchObject({ 'cronjob.kubernetes.io/instantiate': 'manual', 'dbpilot.io/run': run!.id });
    expect((job.metadata as { ownerReferences: unknown[] }).ownerReferences).toEqual([{ apiVersion: 'batch/v1', kind: 'CronJob', name: s.cronJob, uid: (cron.metadata as { uid: string }).uid }]);
    expect((((job.spec as { template: { spec: { containers: { command: string[] }[] } } }).template.spec.containers[0]!).command)).toEqual(['npx', 'prisma', 'migrate', 'deploy']);
    const plan = s.h.store.steps(run!.id);
    expect(plan[1]!.command).toContain(`kubectl create job ${service.job} --from=cronjob/${s.cronJob} -n ${NS}`);
    expect(plan[0]!.command).toContain('UPDATE \\"orders\\".\\"_prisma_migrations\\"');
    const after = await rows(s);
    expect(after.find((r) => r.id === failed.id)!.rolledBackAt).not.toBeNull();
    expect(after.filter((r) => r.migrationName === PAYMENTS_FIXED.name && r.finishedAt !== null && r.rolledBackAt === null)).toHaveLength(1);
    expect((plan[2]!.check as { detail: string }).detail).toContain(`job "${service.job}" complete`);
    // Nothing was written to the public schema.
    expect((await pgQuery(s.url, `SELECT to_regclass('public._prisma_migrations')::text AS t`))[0]).toEqual({ t: null });
    expectNoSecret(s);
  });

  it('the re-run fails again: the run fails at its check and pages on-call backend with the new logs', async () => {
    const s = await setUp({ mode: 'auto', migrateDeploy: 'job' });
    await failedDeploy(s);
    const first = (await rows(s)).find((r) => r.finishedAt === null)!;
    const a = alert(s);
    const [run, service] = await Promise.all([s.h.engine.onFiring(a), serviceOnJob(s, [INIT, PAYMENTS_STILL_BROKEN])]);
    expect(service.result).toBeInstanceOf(PrismaCliError);
    expect(run?.status).toBe('failed');
    expect(run!.reason).toMatch(/^check after verifyMigrateDeploy failed: .*failed again: 20240301000000_add_payments \(started .*\): ERROR: column "order_no" referenced in foreign key constraint does not exist/);
    const after = await rows(s);
    expect(after.find((r) => r.id === first.id)!.rolledBackAt).not.toBeNull();
    const second = after.filter((r) => r.finishedAt === null && r.rolledBackAt === null);
    expect(second).toHaveLength(1);
    expect(second[0]!.id).not.toBe(first.id);
    await s.h.settle();
    const page = pageOf(a.fingerprint)!;
    expect(page.routingKey).toBe(TEAM_KEYS['oncall-backend']);
    expect(String(page.details.verified)).toContain('column "order_no" referenced in foreign key constraint does not exist');
    const listed = page.details.diagnostics!.failed_migrations as { migration_name: string; logs: string }[];
    expect(listed).toHaveLength(1);
    expect(listed[0]!.logs).toContain('column "order_no" referenced in foreign key constraint does not exist');
    expect(listed[0]!.logs).not.toContain('relation "order" does not exist');
  });

  it('an interrupted migration (its migrate deploy killed mid-script: no logs, the lock gone with it) is resolved and re-applied too', async () => {
    const s = await setUp({ mode: 'auto' });
    await prismaMigrateDeploy(s.url, s.schema, [INIT]);
    // What migrate deploy had done when its pod was killed: the lock, the started row, the script running.
    const deploy = new pg.Client({ connectionString: s.url, application_name: 'prisma-migrate' });
    await deploy.connect();
    open.push(deploy);
    deploy.on('error', () => undefined);
    await deploy.query('SELECT pg_advisory_lock(72707369)');
    await deploy.query('INSERT INTO _prisma_migrations (id, checksum, started_at, migration_name) VALUES (gen_random_uuid()::text, $1, now(), $2)', [checksumOf(PAYMENTS_FIXED.sql), PAYMENTS_FIXED.name]);
    const pid = ((await deploy.query('SELECT pg_backend_pid() AS pid')).rows[0] as { pid: number }).pid;
    const script = deploy.query('SELECT pg_sleep(60)').catch(() => undefined);
    await until(async () => (await pgQuery(s.url, `SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'`, [pid])).length === 1, 'the script running');
    await pgQuery(s.url, 'SELECT pg_terminate_backend($1)', [pid]);
    await script;
    await until(async () => (await pgQuery(s.url, `SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 72707369`)).length === 0, 'the lock to go with the backend');
    const interrupted = (await rows(s)).find((r) => r.finishedAt === null)!;
    expect(interrupted).toMatchObject({ migrationName: PAYMENTS_FIXED.name, logs: null, rolledBackAt: null });

    const [run, service] = await Promise.all([s.h.engine.onFiring(alert(s)), serviceOnRestart(s, [INIT, PAYMENTS_FIXED])]);
    expect(service).toEqual({ applied: [PAYMENTS_FIXED.name] });
    expect(run?.status, run?.reason ?? '').toBe('succeeded');
    expect((s.h.store.getRun(run!.id)!.plan as { notifyOnSuccess: { leftToDo: string[] } }).notifyOnSuccess.leftToDo[0]).toContain('no logs (the migration was interrupted');
    const after = await rows(s);
    expect(after.find((r) => r.id === interrupted.id)!.rolledBackAt).not.toBeNull();
    expect(after.filter((r) => r.finishedAt === null && r.rolledBackAt === null)).toEqual([]);
  });

  it('dry-run and off change nothing; dry-run pages the runbook commands', async () => {
    const s = await setUp({ mode: 'dry-run' });
    await failedDeploy(s);
    const before = await rows(s);
    const a = alert(s);
    const run = await s.h.engine.onFiring(a);
    expect(run?.status).toBe('dry_run');
    expect(await rows(s)).toEqual(before);
    expect(restartedAt(s.deployment)).toBeUndefined();
    await s.h.settle();
    const page = pageOf(a.fingerprint)!;
    expect(page.details.plan).toEqual([
      expect.stringContaining(`npx prisma migrate resolve --rolled-back ${PAYMENTS_BROKEN.name}`),
      expect.stringContaining(`kubectl rollout restart deployment/${s.deployment} -n ${NS}`),
      expect.stringContaining('npx prisma migrate status'),
    ]);
    expect((page.details.diagnostics!.failed_migrations as unknown[]).length).toBe(1);
    await s.h.close();
    h = null;

    const off = await setUp({ mode: 'off' });
    await failedDeploy(off);
    const offBefore = await rows(off);
    const offRun = await off.h.engine.onFiring(alert(off));
    expect(offRun?.status).toBe('skipped');
    expect(await rows(off)).toEqual(offBefore);
  });

  it('never acts while a prisma migrate command holds the advisory lock (a migration still running): escalated, naming it', async () => {
    const s = await setUp({ mode: 'auto' });
    await failedDeploy(s);
    const before = await rows(s);
    const holder = new pg.Client({ connectionString: s.url, application_name: 'prisma-migrate-in-progress' });
    await holder.connect();
    open.push(holder);
    await holder.query('SELECT pg_advisory_lock(72707369)');
    const pid = ((await holder.query('SELECT pg_backend_pid() AS pid')).rows[0] as { pid: number }).pid;
    const run = await s.h.engine.onFiring(alert(s));
    expect(run?.status).toBe('escalated');
    expect(run!.reason).toContain(`holds Prisma's advisory lock there (pid ${pid}, prisma-migrate-in-progress`);
    expect(await rows(s)).toEqual(before);
    expect(restartedAt(s.deployment)).toBeUndefined();
  });

  it('a failed row that changed between the plan and the approval is not resolved: the precondition stops the run', async () => {
    const s = await setUp({ mode: 'approve' });
    await failedDeploy(s);
    const run = await s.h.engine.onFiring(alert(s));
    expect(run?.status).toBe('awaiting_approval');
    // Meanwhile somebody resolves by hand and deploys again, which fails again: a new failed row nobody approved.
    await pgQuery(s.url, `UPDATE _prisma_migrations SET rolled_back_at = now() WHERE finished_at IS NULL AND rolled_back_at IS NULL`);
    await expect(prismaMigrateDeploy(s.url, s.schema, [INIT, PAYMENTS_STILL_BROKEN])).rejects.toMatchObject({ code: 'P3018' });
    const before = await rows(s);
    const done = await s.h.engine.approve(run!.id, 'alice');
    expect(done.status).toBe('escalated');
    expect(done.reason).toMatch(/^stopped before resolveRolledBack: the failed rows of 20240301000000_add_payments are not the ones planned/);
    expect(await rows(s)).toEqual(before);
    expect(restartedAt(s.deployment)).toBeUndefined();
  });

  it('reports, and never resolves, a failed migration whose service does not say how it runs migrate deploy (or that no service owns)', async () => {
    for (const o of [{ migrateDeploy: null }, { owned: false }] as const) {
      const s = await setUp({ mode: 'auto', ...o });
      await failedDeploy(s);
      const before = await rows(s);
      const a = alert(s);
      const run = await s.h.engine.onFiring(a);
      expect(run?.status).toBe('escalated');
      expect(run!.reason).toMatch('owned' in o ? /no service in services\[\] has prisma\.database/ : /services\[\]\.prisma\.migrateDeploy is not set/);
      expect(await rows(s)).toEqual(before);
      await s.h.settle();
      const d = pageOf(a.fingerprint)!.details.diagnostics!;
      expect((d.failed_migrations as { migration_name: string }[])[0]!.migration_name).toBe(PAYMENTS_BROKEN.name);
      await s.h.close();
      h = null;
      await s.db.drop();
      db = null;
    }
  });

  it('nothing failed any more: nothing to do', async () => {
    const s = await setUp({ mode: 'auto' });
    await prismaMigrateDeploy(s.url, s.schema, [INIT, PAYMENTS_FIXED]);
    const run = await s.h.engine.onFiring(alert(s));
    expect(run).toMatchObject({ status: 'succeeded' });
    expect(run!.reason).toMatch(/^nothing to do: no failed migration in /);
    expect(s.h.store.steps(run!.id)).toEqual([]);
  });
});

describe('migrate resolve --rolled-back as Prisma does it, and Prisma’s lock', () => {
  it('P3011 for a migration never applied, P3012 for one that finished, marks only the failed rows, and repeating it changes nothing', async () => {
    db = await createTempDatabase('pmresolve');
    await expect(prismaMigrateDeploy(db.url, 'public', [INIT, PAYMENTS_BROKEN])).rejects.toMatchObject({ code: 'P3018' });
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    open.push(c);
    const q = clientQuery(c);
    await expect(markRolledBack(q, 'public', '20990101000000_nope')).rejects.toMatchObject({ prismaCode: 'P3011' });
    await expect(markRolledBack(q, 'public', INIT.name)).rejects.toBeInstanceOf(PrismaMigrateError);
    await expect(markRolledBack(q, 'public', INIT.name)).rejects.toMatchObject({ prismaCode: 'P3012', message: `P3012: Migration \`${INIT.name}\` cannot be rolled back because it is not in a failed state.` });
    const marked = await markRolledBack(q, 'public', PAYMENTS_BROKEN.name);
    expect(marked).toHaveLength(1);
    const r1 = await pgQuery<{ id: string; rolled_back_at: string | null; finished_at: string | null }>(db.url, `SELECT id, rolled_back_at::text, finished_at::text FROM _prisma_migrations WHERE migration_name = $1`, [PAYMENTS_BROKEN.name]);
    expect(r1).toEqual([{ id: marked[0], rolled_back_at: expect.any(String), finished_at: null }]);
    expect(await markRolledBack(q, 'public', PAYMENTS_BROKEN.name)).toEqual([]);
    expect(await pgQuery(db.url, `SELECT rolled_back_at::text FROM _prisma_migrations WHERE migration_name = $1`, [PAYMENTS_BROKEN.name])).toEqual([{ rolled_back_at: r1[0]!.rolled_back_at }]);
    // And migrate deploy now re-applies it as a new row.
    expect(await prismaMigrateDeploy(db.url, 'public', [INIT, PAYMENTS_FIXED])).toEqual({ applied: [PAYMENTS_FIXED.name] });
  });

  it('waits for Prisma’s advisory lock at most its timeout, names the holder, and releases the lock it took', async () => {
    db = await createTempDatabase('pmlock');
    const holder = new pg.Client({ connectionString: db.url, application_name: 'prisma-migrate-deploy' });
    await holder.connect();
    open.push(holder);
    await holder.query('SELECT pg_advisory_lock(72707369)');
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    open.push(c);
    const err = await withMigrateLock(c, db.name, 200, async () => 'ran').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MigrateLockBusyError);
    expect((err as MigrateLockBusyError).holder).toMatchObject({ application: 'prisma-migrate-deploy' });
    await holder.query('SELECT pg_advisory_unlock(72707369)');
    expect(await withMigrateLock(c, db.name, 200, async () => 'ran')).toBe('ran');
    // Released: a migrate deploy gets it at once.
    expect((await holder.query('SELECT pg_try_advisory_lock(72707369) AS got')).rows[0]).toEqual({ got: true });
  });
});

describe('the verdict on a re-run (pure)', () => {
  const row = (over: Partial<MigrationRow>): MigrationRow => ({ id: 'x', migrationName: 'm', checksum: 'c', startedAt: '2026-11-27T16:00:00.000000Z', finishedAt: null, rolledBackAt: null, logs: null, appliedStepsCount: 0, ...over });
  const oldRow = row({ id: 'old', rolledBackAt: '2026-11-27T16:01:00.000000Z', logs: 'Database error:\nERROR: boom' });
  const expectM = { names: ['m'], oldIds: ['old'] };
  it.each([
    ['waiting while a migrate command runs, even with an unfinished row', { rows: [oldRow, row({ id: 'new' })], holder: { pid: 7, application: 'migrate', user: 'u', state: 'active', since: '', seconds: 1 } }, 'waiting'],
    ['failed: a new unfinished row with the lock free', { rows: [oldRow, row({ id: 'new', logs: 'Database error:\nERROR: again' })], holder: null }, 'failed'],
    ['ok: re-applied as a new finished row', { rows: [oldRow, row({ id: 'new', finishedAt: '2026-11-27T16:02:00.000000Z', appliedStepsCount: 1 })], holder: null }, 'ok'],
    ['waiting: not re-applied yet, the service not started', { rows: [oldRow], holder: null }, 'waiting'],
    ['failed: the Job failed without re-applying', { rows: [oldRow], holder: null, job: { failed: { reason: 'BackoffLimitExceeded', message: '' }, complete: false, message: 'job "j" failed: BackoffLimitExceeded' } }, 'failed'],
    ['failed: the Job completed without re-applying (the migration left the image)', { rows: [oldRow], holder: null, job: { failed: null, complete: true, message: 'job "j" complete' } }, 'failed'],
    ['failed: the restart cannot roll out', { rows: [oldRow], holder: null, rolloutFailed: 'deployment "d" exceeded its progress deadline' }, 'failed'],
    ['the old row finishing does not count (only a new one)', { rows: [row({ id: 'old', finishedAt: '2026-11-27T16:02:00.000000Z' })], holder: null }, 'waiting'],
  ])('%s', (_name, input, state) => {
    expect(deployVerdict({ expect: expectM, ...(input as object) } as Parameters<typeof deployVerdict>[0]).state).toBe(state);
  });
  it('after a reset: ok only when the table has rows and none is failed', () => {
    expect(deployVerdict({ rows: [], holder: null, expect: 'all' }).state).toBe('waiting');
    expect(deployVerdict({ rows: [row({ finishedAt: '2026-11-27T16:02:00.000000Z' })], holder: null, expect: 'all' }).state).toBe('ok');
    expect(deployVerdict({ rows: [row({})], holder: null, expect: 'all' }).state).toBe('failed');
  });
  it('names Jobs within the 63 characters of their pod label', () => {
    expect(jobNameFor('order-payment-service-migrate', new Date(0))).toBe('order-payment-service-migrate-0');
    const long = jobNameFor('c'.repeat(52), new Date('2026-11-27T16:00:43.799Z'));
    expect(long.length).toBeLessThanOrEqual(63);
    expect(long).toMatch(/^c{52}-[0-9a-z]{8}$/);
  });
});

describe('configuration of services[].prisma and the reset', () => {
  const base = (services: unknown[], extra: Record<string, unknown> = {}) => ({ kubernetes: { namespace: NS, deployments: ['orders'] }, services, ...extra });
  const svc = (over: Record<string, unknown> = {}, prisma: Record<string, unknown> = {}) => ({ name: 'orders', healthUrl: 'http://orders/health', deployment: 'orders', ...over, prisma: { database: 'lomash_orders', ...prisma } });
  const configError = (doc: unknown): ConfigError => {
    try {
      parseConfig(doc, {});
    } catch (err) {
      if (err instanceof ConfigError) return err;
      throw err;
    }
    throw new Error('expected a ConfigError');
  };
  it('accepts the two ways of re-running migrate deploy, defaults the schema and the environment', () => {
    const c = parseConfig(base([svc({}, { migrateDeploy: 'restart' }), svc({ name: 'auth', deployment: undefined }, { database: 'lomash_auth', migrateDeploy: 'job', cronJob: 'auth-migrate' })]), {});
    expect(c.services[0]!.prisma).toEqual({ database: 'lomash_orders', schema: 'public', migrateDeploy: 'restart' });
    expect(c.services[1]!.prisma).toEqual({ database: 'lomash_auth', schema: 'public', migrateDeploy: 'job', cronJob: 'auth-migrate' });
    expect(c.environment).toBe('production');
    expect(c.handlers['prisma-migration']).toMatchObject({ deployTimeoutSeconds: 600, lockTimeoutSeconds: 10, cooldownSeconds: 3600 });
  });
  it.each([
    ['job without cronJob', base([svc({}, { migrateDeploy: 'job' })]), 'services[0].prisma.cronJob'],
    ['cronJob without job', base([svc({}, { migrateDeploy: 'restart', cronJob: 'x' })]), 'services[0].prisma.cronJob'],
    ['restart without deployment', base([svc({ deployment: undefined }, { migrateDeploy: 'restart' })]), 'services[0].deployment'],
    ['restart of a deployment dbpilot may not restart', base([svc({ deployment: 'other' }, { migrateDeploy: 'restart' })]), 'services[0].deployment'],
    ['re-running without kubernetes', { services: [svc({}, { migrateDeploy: 'restart' })] }, 'services[0].prisma.migrateDeploy'],
    ['two owners of one database and schema', base([svc(), svc({ name: 'orders-2' })]), 'services[1].prisma.database'],
    ['a schema that is no identifier', base([svc({}, { schema: 'a;b' })]), 'services[0].prisma.schema'],
    ['an unknown environment', base([], { environment: 'prod' }), 'environment'],
    ['an unknown option', base([], { handlers: { 'prisma-migration': { resetAllowed: true } } }), 'handlers.prisma-migration.resetAllowed'],
  ])('refuses %s, naming the field', (_what, doc, field) => {
    expect(configError(doc).path).toBe(field);
  });
});

describe('migrate reset is never reachable from an alert', () => {
  it('is in no registry (the registry refuses its name) and an alert naming it is only escalated', async () => {
    expect(defaultHandlers().has(MIGRATE_RESET)).toBe(false);
    expect(() => defaultHandlers().register(prismaMigrateResetProcedure() as never)).toThrow(/not a runbook handler/);
    const s = await setUp({ mode: 'auto' });
    await prismaMigrateDeploy(s.url, s.schema, [INIT]);
    const fp = freshFingerprint();
    const res = await s.h.webhook(payload([{ labels: { alertname: 'PrismaMigrationFailed', remediation: MIGRATE_RESET, team: 'oncall-backend', severity: 'warning', server: P, datname: s.db.name }, fingerprint: fp }]));
    expect(res.statusCode).toBe(202);
    await s.h.settle();
    const runs = s.h.store.listRuns({ fingerprint: fp, limit: 10 });
    expect(runs.map((r) => [r.handler, r.status, r.reason])).toEqual([[MIGRATE_RESET, 'escalated', `no handler named ${MIGRATE_RESET} is available`]]);
    expect((await pgQuery(s.url, `SELECT to_regclass('public.orders')::text AS t`))[0]).toEqual({ t: 'orders' });
  });
});
