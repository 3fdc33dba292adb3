/**
 * `prisma migrate reset` (runbook scenario 4 step 4) as dbpilot does it, in-process through the real
 * engine: refused in production (and by default), else the datasource's schema dropped and recreated
 * with its owner and grants, under Prisma's lock, then migrate deploy re-run the way the service runs
 * it (the test plays the restarted service) and every migration checked finished. The confirmation is
 * tested here with a scripted terminal; test/cli/migrate-reset.test.ts runs the command as a user does.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { confirmReset, type PrismaIO } from '../../src/cli-prisma.js';
import { MIGRATE_RESET, prismaMigrateResetProcedure } from '../../src/remediation/handlers/prisma-migration.js';
import { K8sStandIn } from '../support/k8s-standin.js';
import { prismaMigrateDeploy, type Migration } from '../support/prisma.js';
import { startRemediation, until, type RemediationHarness } from '../support/remediation.js';
import { createTempDatabase, pgQuery, serverOf, type TempDatabase } from '../support/service.js';

const NS = 'lomash-wood';
const INIT: Migration = { name: '20240101000000_init', sql: 'CREATE TABLE orders (id int PRIMARY KEY);' };
const PAYMENTS: Migration = { name: '20240301000000_add_payments', sql: 'CREATE TABLE payments (id int PRIMARY KEY, order_id int REFERENCES orders(id));' };
const tag = `${process.pid}`;
const OWNER = `pm_reset_owner_${tag}`;
const READER = `pm_reset_reader_${tag}`;

let dir: string;
const k8s = new K8sStandIn({ namespaces: [NS], defaultNamespace: NS });
let kubeconfig = '';
let h: RemediationHarness | null = null;
let db: TempDatabase | null = null;
let seq = 0;

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-reset-'));
  await k8s.start();
  kubeconfig = await k8s.writeKubeconfig(dir, { namespace: NS });
  const admin = inject('pgPrimaryUrl');
  await pgQuery(admin, `DROP ROLE IF EXISTS "${OWNER}"`).catch(() => undefined);
  await pgQuery(admin, `DROP ROLE IF EXISTS "${READER}"`).catch(() => undefined);
  await pgQuery(admin, `CREATE ROLE "${OWNER}" LOGIN`);
  await pgQuery(admin, `CREATE ROLE "${READER}" LOGIN`);
});
afterEach(async () => {
  await h?.close();
  h = null;
  await db?.drop();
  db = null;
});
afterAll(async () => {
  await k8s.close();
  const admin = inject('pgPrimaryUrl');
  await pgQuery(admin, `DROP ROLE IF EXISTS "${OWNER}"`).catch(() => undefined);
  await pgQuery(admin, `DROP ROLE IF EXISTS "${READER}"`).catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
});

/** A database whose schema `orders` belongs to the service's role, readable by another, migrated by the service. */
async function setUp(environment: string | undefined, withService = true): Promise<{ h: RemediationHarness; db: TempDatabase; deployment: string; url: string }> {
  seq += 1;
  db = await createTempDatabase(`pmreset${seq}`);
  await pgQuery(db.url, `CREATE SCHEMA orders AUTHORIZATION "${OWNER}"`);
  await pgQuery(db.url, `GRANT USAGE ON SCHEMA orders TO "${READER}"`);
  const u = new URL(db.url);
  u.username = OWNER;
  const url = u.toString();
  await prismaMigrateDeploy(url, 'orders', [INIT, PAYMENTS]);
  const deployment = `orders-svc-${seq}`;
  k8s.seedDeployment({ name: deployment, namespace: NS });
  h = await startRemediation({
    mode: 'auto',
    config: {
      ...(environment ? { environment } : {}),
      kubernetes: { kubeconfig, namespace: NS, deployments: [deployment], lease: { name: `dbpilot-reset-${seq}`, durationSeconds: 15, renewDeadlineSeconds: 10, retryPeriodSeconds: 0.5 } },
      services: withService ? [{ name: deployment, healthUrl: 'http://127.0.0.1:9/health', deployment, prisma: { database: db.name, schema: 'orders', migrateDeploy: 'restart' } }] : [],
      handlers: { 'prisma-migration': { deployTimeoutSeconds: 20 } },
    },
  });
  await until(() => h!.remediation.leader.isLeader(), 'leadership');
  return { h, db, deployment, url };
}

const tables = async (url: string) => (await pgQuery<{ t: string }>(url, `SELECT relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'orders' AND relkind = 'r' ORDER BY 1`)).map((r) => r.t);
const schemaRow = async (url: string) => (await pgQuery<{ owner: string; acl: string }>(url, `SELECT pg_get_userbyid(nspowner) AS owner, nspacl::text AS acl FROM pg_namespace WHERE nspname = 'orders'`))[0];
const restartedAt = (d: string) => ((k8s.deployment(d, NS)?.spec as { template: { metadata?: { annotations?: Record<string, string> } } }).template.metadata?.annotations ?? {})['kubectl.kubernetes.io/restartedAt'];
const labels = (database: string) => ({ datname: database, server: serverOf(inject('pgPrimaryUrl')) });

describe('dbpilot migrate-reset (runbook scenario 4 step 4)', () => {
  it('is refused in production, which is the default: nothing is dropped', async () => {
    for (const env of [undefined, 'production']) {
      const s = await setUp(env);
      expect(s.h.config.environment).toBe('production');
      const before = await tables(s.url);
      const run = await s.h.engine.runCliOnly(prismaMigrateResetProcedure(), labels(s.db.name));
      expect(run?.status).toBe('failed');
      expect(run!.reason).toMatch(/^planning failed: prisma migrate reset of .* is refused: this dbpilot's environment is production/);
      expect(s.h.store.steps(run!.id)).toEqual([]);
      expect(await tables(s.url)).toEqual(before);
      expect(before).toEqual(['_prisma_migrations', 'orders', 'payments']);
      await s.h.close();
      h = null;
      await s.db.drop();
      db = null;
    }
  });

  it('staging: drops and recreates the schema with its owner and grants, re-runs migrate deploy as the service does, checks every migration finished', async () => {
    const s = await setUp('staging');
    const before = await schemaRow(s.url);
    expect(before!.owner).toBe(OWNER);
    await pgQuery(s.url, 'INSERT INTO orders.orders VALUES (1), (2)');
    const oldRows = await pgQuery<{ id: string }>(s.url, 'SELECT id FROM orders._prisma_migrations');
    // The service: restarted, its pods run migrate deploy against the empty schema.
    const service = (async () => {
      await until(() => restartedAt(s.deployment) !== undefined, 'the restart', 30_000);
      return prismaMigrateDeploy(s.url, 'orders', [INIT, PAYMENTS]);
    })();
    const run = await s.h.engine.runCliOnly(prismaMigrateResetProcedure(), labels(s.db.name));
    expect(await service).toEqual({ applied: [INIT.name, PAYMENTS.name] });
    expect(run?.status, `${run?.reason}\n${JSON.stringify(s.h.store.steps(run!.id).map((x) => [x.name, x.status, x.check, x.error]))}`).toBe('succeeded');
    expect(run!.handler).toBe(MIGRATE_RESET);
    const steps = s.h.store.steps(run!.id);
    expect(steps.map((x) => [x.name, x.status])).toEqual([
      ['resetSchema', 'done'],
      ['rerunMigrateDeploy', 'done'],
      ['verifyMigrateDeploy', 'done'],
    ]);
    expect(steps[0]!.command).toContain(`kubectl exec -it deploy/${s.deployment} -n ${NS} -- npx prisma migrate reset --force`);
    expect(steps[0]!.command).toContain(`DROP SCHEMA \\"orders\\" CASCADE; CREATE SCHEMA \\"orders\\" AUTHORIZATION \\"${OWNER}\\";`);
    // Same owner and grants; the data is gone, the migrations are back, each as a new row.
    expect(await schemaRow(s.url)).toEqual(before);
    expect((await pgQuery(s.url, 'SELECT count(*)::int AS n FROM orders.orders'))[0]).toEqual({ n: 0 });
    const rows = await pgQuery<{ id: string; migration_name: string; finished: boolean }>(s.url, 'SELECT id, migration_name, finished_at IS NOT NULL AS finished FROM orders._prisma_migrations ORDER BY started_at');
    expect(rows.map((r) => [r.migration_name, r.finished])).toEqual([
      [INIT.name, true],
      [PAYMENTS.name, true],
    ]);
    expect(rows.some((r) => oldRows.some((o) => o.id === r.id))).toBe(false);
    expect((steps[2]!.check as { detail: string }).detail).toContain('2 migration(s) applied, none failed');
  });

  it('development without a service that re-runs migrate deploy: only the reset, and the plan says what is left', async () => {
    const s = await setUp('development', false);
    const run = await s.h.engine.runCliOnly(prismaMigrateResetProcedure(), { ...labels(s.db.name), schema: 'orders' });
    expect(run?.status, run?.reason ?? '').toBe('succeeded');
    expect((run!.plan as { summary: string }).summary).toContain('run prisma migrate deploy yourself');
    expect(s.h.store.steps(run!.id).map((x) => x.name)).toEqual(['resetSchema']);
    expect(await tables(s.url)).toEqual([]);
    expect((await schemaRow(s.url))!.owner).toBe(OWNER);
    expect(restartedAt(s.deployment)).toBeUndefined();
  });

  it('gives PostgreSQL 15’s public schema back as initdb made it: owner pg_database_owner, USAGE for PUBLIC', async () => {
    const s = await setUp('development', false);
    await pgQuery(s.db.url, 'CREATE TABLE public.leftover (x int)');
    const pub = async () => (await pgQuery<{ owner: string; acl: string }>(s.db.url, `SELECT pg_get_userbyid(nspowner) AS owner, nspacl::text AS acl FROM pg_namespace WHERE nspname = 'public'`))[0];
    const before = await pub();
    expect(before!.owner).toBe('pg_database_owner');
    const run = await s.h.engine.runCliOnly(prismaMigrateResetProcedure(), labels(s.db.name));
    expect(run?.status, run?.reason ?? '').toBe('succeeded');
    expect(await pub()).toEqual(before);
    expect((await pgQuery(s.db.url, `SELECT to_regclass('public.leftover')::text AS t`))[0]).toEqual({ t: null });
    // The other schema is untouched.
    expect(await tables(s.url)).toEqual(['_prisma_migrations', 'orders', 'payments']);
  });

  it('never resets under a running migrate command', async () => {
    const s = await setUp('staging');
    const holder = new pg.Client({ connectionString: s.url, application_name: 'prisma-migrate' });
    await holder.connect();
    try {
      await holder.query('SELECT pg_advisory_lock(72707369)');
      const run = await s.h.engine.runCliOnly(prismaMigrateResetProcedure(), labels(s.db.name));
      expect(run?.status).toBe('escalated');
      expect(run!.reason).toMatch(/^stopped before resetSchema: a prisma migrate command holds Prisma's advisory lock/);
      expect(await tables(s.url)).toEqual(['_prisma_migrations', 'orders', 'payments']);
    } finally {
      await holder.end();
    }
  });
});

describe('the confirmation', () => {
  const io = (interactive: boolean, answer = ''): PrismaIO & { lines: string[]; asked: string[] } => {
    const lines: string[] = [];
    const asked: string[] = [];
    return { lines, asked, interactive, out: (l) => void lines.push(l), ask: async (q) => (asked.push(q), answer) };
  };
  it('--confirm must name the database; without it, only a person at a terminal typing the name confirms', async () => {
    expect(await confirmReset(io(false), 'lomash_orders', 'lomash_orders')).toBe(true);
    await expect(confirmReset(io(false), 'lomash_orders', 'lomash_order')).rejects.toMatchObject({ code: 'DBPILOT_NOT_CONFIRMED' });
    await expect(confirmReset(io(false), 'lomash_orders', undefined)).rejects.toThrow(/no terminal to confirm on: run again with --confirm lomash_orders/);
    const typed = io(true, ' lomash_orders \n');
    expect(await confirmReset(typed, 'lomash_orders', undefined)).toBe(true);
    expect(typed.asked[0]).toContain("Type the database's name (lomash_orders)");
    const wrong = io(true, 'yes');
    expect(await confirmReset(wrong, 'lomash_orders', undefined)).toBe(false);
    expect(wrong.lines).toEqual(['Cancelled: nothing was changed.']);
  });
});
