/**
 * Runbook scenario 4 — Prisma Migration Failure (alert PrismaMigrationFailed).
 *
 * Step 1 (check migration status) is the plan: the failed rows of `_prisma_migrations` in the
 * datasource's schema — started, neither finished nor rolled back, what makes `prisma migrate deploy`
 * refuse with P3009 — with their names, start times and logs, and the service that owns the database
 * (`services[].prisma`). They go with every page (diagnostics(), read live, so a page after a failed
 * re-run carries the new logs). A migration still running is told apart by Prisma's advisory lock: a
 * `prisma migrate` command holds it for as long as it runs, and dbpilot never acts while it is held.
 *
 * Only in approve mode (once approved) or auto, and only for a service whose way of running `migrate
 * deploy` is configured, the steps:
 *
 *   resolveRolledBack    step 2, `prisma migrate resolve --rolled-back <name>` exactly as Prisma does it
 *                        (src/integrations/prisma.ts), holding Prisma's own advisory lock, and only
 *                        for the very rows the plan showed (a row that changed since is a new failure
 *                        nobody has seen: the run stops)
 *   rerunMigrateDeploy   step 3, `prisma migrate deploy` the way the service runs it: `kubectl rollout
 *                        restart` of its deployment (it migrates at start-up), or `kubectl create job
 *                        --from=cronjob/<template>` (a suspended CronJob the service ships)
 *   verifyMigrateDeploy  step 1 again (`prisma migrate status`): the migration has a new row that
 *                        finished, nothing else is failed, no migrate command is still running; a new
 *                        failure (or the Job failing) ends the wait at once and escalates with its logs
 *
 * `prisma migrate reset` (step 4) is no part of this handler and no alert can reach it: it is the CLI's
 * `dbpilot migrate-reset`, refused unless `environment` is not production (prismaMigrateResetProcedure).
 *
 * dbpilot writes `_prisma_migrations` itself instead of running the Prisma CLI: no setting of Prisma
 * 7.10.1 puts `prisma migrate` on its WebAssembly engine (README "Prisma migrations").
 */
import { z } from 'zod';
import { ConfigError, DbpilotError, UnsafeToActError, safeMessage } from '../../errors.js';
import type { PgServer } from '../../integrations/postgres.js';
import {
  PRISMA_MIGRATE_LOCK_KEY,
  cleanLogs,
  clientQuery,
  isFailed,
  logsHeadline,
  markRolledBack,
  migrateLockHolder,
  readMigrations,
  resetSchema,
  resetSql,
  rolledBackSql,
  schemaState,
  withMigrateLock,
  type LockHolder,
  type MigrationRow,
  type Query,
} from '../../integrations/prisma.js';
import type { KubernetesClient, JobSummary } from '../../integrations/kubernetes.js';
import type { AlertInfo, CheckResult, Handler, HandlerContext, Plan, Step, StepContext } from '../handler.js';
import { fail, ok, serverForAlert, sleep } from '../handler.js';
import { namespaceOf, psqlCommand } from '../runbook.js';
import { databaseName, handlerOptions, identifier } from './options.js';

// ---------------------------------------------------------------------------------------------------
// Configuration

const k8sName = z.string().regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'not a Kubernetes object name (lowercase letters, digits and -)');

/**
 * services[].prisma: the database a service's Prisma datasource migrates, and how the service runs
 * `prisma migrate deploy` — declared beside the handler, merged into `services[]` by config.ts.
 */
export const prismaServiceSettings = z
  .strictObject({
    /** The database of its DATABASE_URL. */
    database: databaseName,
    /** The datasource's `?schema=` (where `_prisma_migrations` lives). */
    schema: identifier.default('public'),
    /**
     * How the service runs `prisma migrate deploy`: `restart` (at start-up — an init container or its
     * entrypoint — so `kubectl rollout restart` of its deployment re-runs it) or `job` (a Job created
     * from `cronJob`). Absent: dbpilot reports the failed migration and never resolves it.
     */
    migrateDeploy: z.enum(['restart', 'job']).optional(),
    /** With `migrateDeploy: job`: the suspended CronJob whose jobTemplate runs `npx prisma migrate deploy` (at most 52 characters, as CronJob names are). */
    cronJob: k8sName.max(52).optional(),
  })
  .superRefine((p, c) => {
    if (p.migrateDeploy === 'job' && !p.cronJob) c.addIssue({ code: 'custom', path: ['cronJob'], message: 'required with migrateDeploy: job (the suspended CronJob whose jobTemplate runs prisma migrate deploy)' });
    if (p.migrateDeploy !== 'job' && p.cronJob) c.addIssue({ code: 'custom', path: ['cronJob'], message: 'only used with migrateDeploy: job' });
  });

/** handlers.prisma-migration: what this handler takes, with its defaults. */
export const prismaMigrationOptions = handlerOptions(
  {
    /** How long the re-run of `migrate deploy` (the restarted pods, or the Job) may take to finish the migration. */
    deployTimeoutSeconds: z.number().int().min(10).max(7200).default(600),
    /** How long to wait for Prisma's advisory lock before giving up (Prisma itself waits 10 s). */
    lockTimeoutSeconds: z.number().min(0.1).max(60).default(10),
    /** Characters of each migration's logs kept in the plan and put in a page. */
    logsMaxChars: z.number().int().min(200).max(100_000).default(4000),
  },
  // A migration that failed again after dbpilot re-ran it is for a human: no second automatic try within the hour.
  { cooldownSeconds: 3600 },
);
export type PrismaMigrationConfig = z.output<typeof prismaMigrationOptions>;

export type DeployEnvironment = 'production' | 'staging' | 'development';

interface ServiceLike {
  name: string;
  deployment?: string | undefined;
  prisma?: z.output<typeof prismaServiceSettings> | undefined;
}

/**
 * The checks across fields that a schema cannot make, run by parseConfig: a database (and schema) has
 * one owning service; `restart` needs the service's deployment, and that deployment among
 * kubernetes.deployments (the Role allows patching those only); either way of re-running needs
 * `kubernetes:`.
 */
export function checkPrismaServices(cfg: { services: readonly ServiceLike[]; kubernetes?: { deployments: readonly string[] } | undefined }): void {
  const seen = new Map<string, number>();
  cfg.services.forEach((s, i) => {
    const p = s.prisma;
    if (!p) return;
    const key = `${p.database}\0${p.schema}`;
    const first = seen.get(key);
    if (first !== undefined) throw new ConfigError(`services[${i}].prisma.database`, `${p.database} (schema ${p.schema}) is already migrated by services[${first}] (${cfg.services[first]!.name}): one owning service per database and schema`);
    seen.set(key, i);
    if (!p.migrateDeploy) return;
    if (!cfg.kubernetes) throw new ConfigError(`services[${i}].prisma.migrateDeploy`, 're-running prisma migrate deploy needs the kubernetes: block');
    if (p.migrateDeploy === 'restart') {
      if (!s.deployment) throw new ConfigError(`services[${i}].deployment`, 'required with prisma.migrateDeploy: restart (the deployment whose restart runs prisma migrate deploy)');
      if (!cfg.kubernetes.deployments.includes(s.deployment)) {
        throw new ConfigError(`services[${i}].deployment`, `${s.deployment} is not in kubernetes.deployments (dbpilot may restart only those; the chart's Role allows no other)`);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Plan data

const failedRow = z.strictObject({
  id: z.string(),
  name: z.string(),
  startedAt: z.string(),
  checksum: z.string(),
  appliedStepsCount: z.number(),
  logs: z.string().nullable(),
});
type FailedRow = z.output<typeof failedRow>;

const service = z.strictObject({
  name: z.string(),
  deployment: z.string().nullable(),
  migrateDeploy: z.enum(['restart', 'job']),
  cronJob: z.string().nullable(),
});
type OwningService = z.output<typeof service>;

const planSchema = z.strictObject({
  server: z.string(),
  database: z.string(),
  schema: z.string(),
  /** Null when there is nothing to do. */
  service: service.nullable(),
  failed: z.array(failedRow),
  /** The distinct migration names to resolve, oldest first (none: nothing to do). */
  names: z.array(z.string()),
  /** The Job the re-run creates (migrateDeploy: job), named at plan time so the dry-run shows it and a resumed run finds it. */
  job: z.string().nullable(),
  deployTimeoutSeconds: z.number(),
  lockTimeoutMs: z.number(),
});
export type PrismaMigrationPlan = z.output<typeof planSchema>;

const resetPlanSchema = z.strictObject({
  server: z.string(),
  database: z.string(),
  schema: z.string(),
  environment: z.enum(['staging', 'development']),
  service: service.nullable(),
  job: z.string().nullable(),
  owner: z.string().nullable(),
  relations: z.number(),
  defaultPrivileges: z.number(),
  deployTimeoutSeconds: z.number(),
  lockTimeoutMs: z.number(),
});
export type PrismaResetPlan = z.output<typeof resetPlanSchema>;

// ---------------------------------------------------------------------------------------------------
// Pure helpers (table-tested)

/**
 * The Job a re-run creates: `<cronJob>-<base36 time>`, at most 52 + 9 characters, so its job-name
 * pod label stays within 63.
 */
export function jobNameFor(cronJob: string, at: Date): string {
  return `${cronJob}-${at.getTime().toString(36)}`.slice(0, 63).replace(/-+$/, '');
}

/** The failed rows of the plan, as they go into plan data: logs cleaned and cut. */
export function failedRowsOf(rows: MigrationRow[], logsMaxChars: number): FailedRow[] {
  return rows.filter(isFailed).map((r) => ({ id: r.id, name: r.migrationName, startedAt: r.startedAt, checksum: r.checksum, appliedStepsCount: r.appliedStepsCount, logs: cleanLogs(r.logs, logsMaxChars) }));
}

export type DeployVerdict =
  | { state: 'ok'; detail: string }
  | { state: 'failed'; detail: string }
  | { state: 'waiting'; detail: string };

/**
 * Pure: has `migrate deploy` re-applied the resolved migrations? `ok` when no migrate command holds the
 * lock, nothing is failed and each name has a finished row other than the plan's (or, after a reset,
 * the table has rows and all of them finished); `failed` as soon as a failed row appears with the lock
 * free, or the Job failed, or the Job completed without re-applying; else `waiting`.
 */
export function deployVerdict(input: {
  rows: MigrationRow[];
  holder: LockHolder | null;
  /** The migrations that must have been re-applied, and the rows that do not count (the plan's). */
  expect: { names: string[]; oldIds: string[] } | 'all';
  job?: JobSummary | null;
  rolloutFailed?: string | null;
}): DeployVerdict {
  const { rows, holder, job } = input;
  if (holder) return { state: 'waiting', detail: `a prisma migrate command is running (pid ${holder.pid}, ${holder.application || 'no application_name'})` };
  const failed = rows.filter(isFailed);
  if (failed.length > 0) {
    return { state: 'failed', detail: `failed again: ${failed.map((r) => `${r.migrationName} (started ${r.startedAt}): ${logsHeadline(r.logs)}`).join('; ')}` };
  }
  let missing: string[];
  let done: string;
  if (input.expect === 'all') {
    missing = rows.length === 0 ? ['every migration (no _prisma_migrations row yet)'] : [];
    done = `${rows.length} migration(s) applied, none failed`;
  } else {
    const old = new Set(input.expect.oldIds);
    const again = input.expect.names.map((n) => ({ n, row: rows.find((r) => r.migrationName === n && !old.has(r.id) && r.finishedAt !== null && r.rolledBackAt === null) }));
    missing = again.filter((x) => !x.row).map((x) => x.n);
    done = again
      .filter((x) => x.row)
      .map((x) => `${x.n} re-applied, finished ${x.row!.finishedAt}`)
      .join('; ');
    done = `${done}; no failed migration`;
  }
  if (missing.length === 0) return { state: 'ok', detail: done };
  if (job?.failed) return { state: 'failed', detail: `${job.message}; not re-applied: ${missing.join(', ')}` };
  if (job?.complete) return { state: 'failed', detail: `${job.message}, but not re-applied: ${missing.join(', ')} (is the migration still in the image's prisma/migrations?)` };
  if (input.rolloutFailed) return { state: 'failed', detail: `${input.rolloutFailed}; not re-applied: ${missing.join(', ')}` };
  return { state: 'waiting', detail: `not re-applied yet: ${missing.join(', ')}` };
}

// ---------------------------------------------------------------------------------------------------
// Shared parts of the handler and the reset procedure


function serverOf(ctx: HandlerContext, label: string): PgServer {
  const s = ctx.cluster.all.find((x) => x.server === label);
  if (!s) throw new UnsafeToActError(`server ${label} is no longer configured`);
  return s;
}

/** The services that migrate this database (one per schema), from services[].prisma. */
function ownersOf(ctx: HandlerContext, database: string): { service: ServiceLike; schema: string }[] {
  return (ctx.config.services as readonly ServiceLike[]).filter((s) => s.prisma?.database === database).map((s) => ({ service: s, schema: s.prisma!.schema }));
}

function owningService(s: ServiceLike): OwningService | null {
  if (!s.prisma?.migrateDeploy) return null;
  return { name: s.name, deployment: s.deployment ?? null, migrateDeploy: s.prisma.migrateDeploy, cronJob: s.prisma.cronJob ?? null };
}

/** Runs `fn` on a dedicated connection to the database (Prisma's lock is a session lock). */
async function onConnection<T>(server: PgServer, database: string, fn: (client: Awaited<ReturnType<PgServer['connect']>>, q: Query) => Promise<T>): Promise<T> {
  const client = await server.connect(database);
  try {
    return await fn(client, clientQuery(client));
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** `server.act` as a Query on one database. */
const actQuery = (server: PgServer, database: string): Query => (sql, params = []) => server.act(sql, params, database);

/** The runbook's `kubectl exec -it <service-pod> … npx prisma …` with this cluster's names. */
function prismaCli(ctx: HandlerContext, svc: { name: string; deployment: string | null } | null, args: string): string {
  const target = svc?.deployment ? `deploy/${svc.deployment}` : `<pod of ${svc?.name ?? 'the service'}>`;
  return `kubectl exec -it ${target} -n ${namespaceOf(ctx.config)} -- npx prisma ${args}`;
}

function rerunCommand(ctx: HandlerContext, svc: OwningService, job: string | null): string {
  const ns = namespaceOf(ctx.config);
  return svc.migrateDeploy === 'restart'
    ? `kubectl rollout restart deployment/${svc.deployment} -n ${ns}   # ${svc.name} runs prisma migrate deploy at start-up`
    : `kubectl create job ${job} --from=cronjob/${svc.cronJob} -n ${ns}   # its jobTemplate runs prisma migrate deploy`;
}

const RUN_ANNOTATION = 'dbpilot.io/run';

/** rerunMigrateDeploy: the service's own `prisma migrate deploy`, as it runs it. */
function rerunStep(ctx: HandlerContext, kube: KubernetesClient, svc: OwningService, job: string | null, server: PgServer, database: string, schema: string): Step {
  return {
    name: 'rerunMigrateDeploy',
    command: `${prismaCli(ctx, svc, 'migrate deploy')}\n# dbpilot runs it the way ${svc.name} does:\n${rerunCommand(ctx, svc, job)}`,
    idempotent: true,
    async precondition() {
      // migrate deploy refuses with P3009 while any migration is failed: re-running it then would prove nothing.
      const failed = (await readMigrations(actQuery(server, database), schema)).filter(isFailed);
      return failed.length === 0
        ? ok(`no failed migration in ${database} (${schema}): migrate deploy can run`)
        : fail(`${failed.map((r) => r.migrationName).join(', ')} still failed in ${database} (${schema}): migrate deploy would refuse with P3009`);
    },
    async run(_prior, sc) {
      sc.assertCanAct();
      if (svc.migrateDeploy === 'restart') {
        // Whole seconds, as kubectl writes restartedAt.
        const { restartedAt } = await kube.rolloutRestart('deployment', svc.deployment!, new Date(Math.floor(Date.now() / 1000) * 1000));
        return { restartedAt };
      }
      try {
        const created = await kube.createJobFromCronJob(svc.cronJob!, job!, { annotations: { [RUN_ANNOTATION]: sc.runId } });
        return { job: created.name, uid: created.uid };
      } catch (err) {
        if ((err as { status?: number; reason?: string }).status !== 409) throw err;
        // Created before a restart of dbpilot: ours if it carries this run.
        const existing = await kube.readJob(job!);
        if (existing.annotations[RUN_ANNOTATION] !== sc.runId) throw new Error(`a job ${job} exists that this run did not create: not touching it`);
        return { job: existing.name, uid: existing.uid, again: true };
      }
    },
    async check(output) {
      if (svc.migrateDeploy === 'restart') {
        const want = (output as { restartedAt?: string } | null)?.restartedAt;
        const st = await kube.readRolloutStatus('deployment', svc.deployment!);
        return want && st.restartedAt === want ? ok(`deployment/${svc.deployment} restarted at ${want}: ${st.message}`) : fail(`deployment/${svc.deployment} has restartedAt ${st.restartedAt ?? 'unset'}, not ${want ?? '?'}`);
      }
      const j = await kube.readJob(job!);
      return j.ownerCronJob === svc.cronJob ? ok(`job ${j.name} created from cronjob/${svc.cronJob}: ${j.message}`) : fail(`job ${j.name} is not owned by cronjob/${svc.cronJob}`);
    },
  };
}

/** verifyMigrateDeploy: `prisma migrate status` after the re-run, by reading the table and the lock. */
function verifyStep(
  ctx: HandlerContext,
  kube: KubernetesClient | null,
  opts: { svc: OwningService | null; job: string | null; server: PgServer; database: string; schema: string; timeoutSeconds: number; expect: { names: string[]; oldIds: string[] } | 'all' },
): Step {
  const { svc, job, server, database, schema } = opts;
  const ns = namespaceOf(ctx.config);
  const observe = async (): Promise<{ verdict: DeployVerdict; rows: MigrationRow[]; job: JobSummary | null; rollout: string | null }> => {
    const q = actQuery(server, database);
    const [rows, holder] = await Promise.all([readMigrations(q, schema), migrateLockHolder(q)]);
    let jobState: JobSummary | null = null;
    let rollout: string | null = null;
    let rolloutFailed: string | null = null;
    if (kube && svc?.migrateDeploy === 'job' && job) jobState = await kube.readJob(job);
    if (kube && svc?.migrateDeploy === 'restart' && svc.deployment) {
      const st = await kube.readRolloutStatus('deployment', svc.deployment);
      rollout = st.message;
      if (st.failed) rolloutFailed = st.message;
    }
    return { verdict: deployVerdict({ rows, holder, expect: opts.expect, job: jobState, rolloutFailed }), rows, job: jobState, rollout };
  };
  const extra = svc?.migrateDeploy === 'job' && job ? `\nkubectl wait --for=condition=complete job/${job} -n ${ns} --timeout=${opts.timeoutSeconds}s` : svc?.migrateDeploy === 'restart' ? `\nkubectl rollout status deployment/${svc.deployment} -n ${ns} --timeout=${opts.timeoutSeconds}s` : '';
  return {
    name: 'verifyMigrateDeploy',
    command: `${prismaCli(ctx, svc, 'migrate status')}   # expected: Database schema is up to date!${extra}`,
    idempotent: true,
    timeoutMs: opts.timeoutSeconds * 1000 + 15_000,
    async run(_prior, sc: StepContext) {
      const until = Date.now() + opts.timeoutSeconds * 1000;
      for (;;) {
        const o = await observe();
        if (o.verdict.state !== 'waiting' || Date.now() >= until) return { verdict: o.verdict, job: o.job?.message ?? null, rollout: o.rollout };
        await sleep(1000, sc.signal);
      }
    },
    async check() {
      const o = await observe();
      const where = `${database} (${schema})`;
      const extraState = [o.job?.message, o.rollout].filter(Boolean).join('; ');
      if (o.verdict.state === 'ok') return ok(`${where}: ${o.verdict.detail}${extraState ? ` (${extraState})` : ''}`);
      const failed = o.rows.filter(isFailed).map((r) => ({ migration_name: r.migrationName, started_at: r.startedAt, logs: cleanLogs(r.logs, 4000) }));
      return fail(`${where}: ${o.verdict.state === 'waiting' ? `not done within ${opts.timeoutSeconds} s: ${o.verdict.detail}` : o.verdict.detail}${extraState ? ` (${extraState})` : ''}`, failed.length ? { failed } : undefined);
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// The handler

export function prismaMigrationHandler(): Handler<PrismaMigrationPlan> {
  const settings = (ctx: HandlerContext): PrismaMigrationConfig => ctx.config.handlers['prisma-migration'];

  const handler: Handler<PrismaMigrationPlan> = {
    name: 'prisma-migration',
    team: 'oncall-backend',
    planSchema,

    target(alert, ctx) {
      return `postgres/${serverForAlert(ctx, alert.labels.server).server}/${alert.labels.datname ?? '*'}`;
    },

    async plan(alert: AlertInfo, ctx: HandlerContext): Promise<Plan<PrismaMigrationPlan>> {
      const cfg = settings(ctx);
      const server = serverForAlert(ctx, alert.labels.server);
      const database = alert.labels.datname;
      if (!database) throw new UnsafeToActError('the alert has no datname label: which database failed its migration is unknown');
      const owners = ownersOf(ctx, database);
      const candidates = owners.length > 0 ? owners : [{ service: null, schema: 'public' }];
      const found: { service: ServiceLike | null; schema: string; failed: FailedRow[] }[] = [];
      for (const c of candidates) {
        const rows = await readMigrations(actQuery(server, database), c.schema);
        const failed = failedRowsOf(rows, cfg.logsMaxChars);
        if (failed.length) found.push({ ...c, failed });
      }
      const first = found[0];
      if (!first) {
        return {
          summary: `no failed migration in ${database} (${candidates.map((c) => c.schema).join(', ')}) any more`,
          data: { server: server.server, database, schema: candidates[0]!.schema, service: null, failed: [], names: [], job: null, deployTimeoutSeconds: cfg.deployTimeoutSeconds, lockTimeoutMs: cfg.lockTimeoutSeconds * 1000 },
          nothingToDo: true,
        };
      }
      const names = [...new Set(first.failed.map((f) => f.name))];
      const what = first.failed.map((f) => `${f.name} (started ${f.startedAt}: ${logsHeadline(f.logs)})`).join('; ');
      const holder = await migrateLockHolder(actQuery(server, database));
      if (holder) {
        throw new UnsafeToActError(
          `${what} in ${database} (${first.schema}) looks failed, but a prisma migrate command holds Prisma's advisory lock there (pid ${holder.pid}, ${holder.application || 'no application_name'}, user ${holder.user}, ${holder.state}, connected ${holder.seconds} s): it may still be running; dbpilot does not touch a migration in progress`,
        );
      }
      if (!first.service) {
        throw new UnsafeToActError(`${what} failed in ${database}, and no service in services[] has prisma.database ${database}: who runs its migrations is unknown, so dbpilot only reports it`);
      }
      const svc = owningService(first.service);
      if (!svc) {
        throw new UnsafeToActError(`${what} failed in ${database} (${first.schema}), owned by ${first.service.name}; services[].prisma.migrateDeploy is not set for it, so dbpilot only reports it`);
      }
      const job = svc.migrateDeploy === 'job' ? jobNameFor(svc.cronJob!, new Date()) : null;
      const others = found.slice(1).map((f) => `${f.failed.map((r) => r.name).join(', ')} failed in schema ${f.schema} (${f.service?.name ?? 'no owning service'}) too: not handled by this run`);
      return {
        summary: `${names.join(', ')} failed in ${database} (${first.schema}) of ${svc.name}: mark ${names.length === 1 ? 'it' : 'them'} rolled back (prisma migrate resolve --rolled-back) and re-run migrate deploy (${svc.migrateDeploy === 'restart' ? `rollout restart deployment/${svc.deployment}` : `job from cronjob/${svc.cronJob}`})`,
        data: { server: server.server, database, schema: first.schema, service: svc, failed: first.failed, names, job, deployTimeoutSeconds: cfg.deployTimeoutSeconds, lockTimeoutMs: cfg.lockTimeoutSeconds * 1000 },
        ...(others.length ? { escalateAfter: others.join('; ') } : {}),
        notifyOnSuccess: {
          severity: 'info',
          leftToDo: first.failed.map((f) => `find out why ${f.name} failed at ${f.startedAt} (${logsHeadline(f.logs)}): dbpilot marked it rolled back and ${svc.name} re-applied it; its logs are in this page's diagnostics`),
        },
      };
    },

    steps(plan, ctx) {
      const svc = plan.service;
      if (plan.names.length === 0 || !svc) return [];
      const server = serverOf(ctx, plan.server);
      const kube = ctx.kube;
      if (!kube) throw new UnsafeToActError('re-running prisma migrate deploy needs the kubernetes: block');
      const { database, schema } = plan;
      const ids = plan.failed.map((f) => f.id);
      const steps: Step[] = [
        {
          name: 'resolveRolledBack',
          command: [
            ...plan.names.map((n) => prismaCli(ctx, svc, `migrate resolve --rolled-back ${n}`)),
            `# dbpilot does what it does, holding Prisma's advisory lock (SELECT pg_advisory_lock(${PRISMA_MIGRATE_LOCK_KEY})):`,
            ...plan.names.map((n) => psqlCommand(ctx.config, `${rolledBackSql(schema, n)};`, { server: plan.server, database })),
          ].join('\n'),
          idempotent: true,
          async precondition() {
            // Exactly the rows the plan showed (and a human may have approved): a row that changed since is a failure nobody has seen.
            const q = actQuery(server, database);
            const [rows, holder] = await Promise.all([readMigrations(q, schema), migrateLockHolder(q)]);
            if (holder) return fail(`a prisma migrate command holds Prisma's advisory lock in ${database} (pid ${holder.pid}, ${holder.application || 'no application_name'}): not resolving under it`);
            const failedNow = rows.filter((r) => plan.names.includes(r.migrationName) && isFailed(r)).map((r) => r.id).sort();
            const planned = [...ids].sort();
            const ours = rows.filter((r) => ids.includes(r.id));
            if (failedNow.length === 0 && ours.length === ids.length && ours.every((r) => r.rolledBackAt !== null)) return ok('already marked rolled back (a resumed run)');
            if (JSON.stringify(failedNow) !== JSON.stringify(planned)) {
              return fail(`the failed rows of ${plan.names.join(', ')} are not the ones planned (now ${failedNow.join(', ') || 'none'}, planned ${planned.join(', ')}): plan again`);
            }
            return ok(`${ids.length} failed row(s) of ${plan.names.join(', ')} as planned, no migrate command running`);
          },
          async run(_prior, sc) {
            return onConnection(server, database, (client) =>
              withMigrateLock(client, database, plan.lockTimeoutMs, async (q) => {
                // Under the lock nothing else can change the rows: check them once more, then write.
                const rows = await readMigrations(q, schema);
                const stray = rows.filter((r) => plan.names.includes(r.migrationName) && isFailed(r) && !ids.includes(r.id));
                if (stray.length) throw new Error(`new failed row(s) of ${stray.map((r) => r.migrationName).join(', ')} appeared since the plan: not resolving`);
                sc.assertCanAct();
                await q('BEGIN');
                try {
                  const marked: { name: string; ids: string[] }[] = [];
                  for (const n of plan.names) marked.push({ name: n, ids: await markRolledBack(q, schema, n) });
                  await q('COMMIT');
                  return { marked };
                } catch (err) {
                  await q('ROLLBACK').catch(() => undefined);
                  throw err;
                }
              }),
            );
          },
          async check() {
            const rows = await readMigrations(actQuery(server, database), schema);
            const ours = rows.filter((r) => ids.includes(r.id));
            const notYet = ours.filter((r) => r.rolledBackAt === null);
            if (ours.length !== ids.length) return fail(`${ids.length - ours.length} of the planned rows are gone from ${schema}._prisma_migrations`);
            if (notYet.length) return fail(`${notYet.map((r) => r.migrationName).join(', ')} not marked rolled back`);
            return ok(`${plan.names.join(', ')} marked rolled back in ${database} (${schema}) at ${ours.map((r) => r.rolledBackAt).join(', ')}`);
          },
        },
        rerunStep(ctx, kube, svc, plan.job, server, database, schema),
        verifyStep(ctx, kube, { svc, job: plan.job, server, database, schema, timeoutSeconds: plan.deployTimeoutSeconds, expect: { names: plan.names, oldIds: ids } }),
      ];
      return steps;
    },

    async diagnostics(plan, alert, ctx) {
      return diagnosticsFor(ctx, plan?.server ?? alert.labels.server, plan?.database ?? alert.labels.datname, plan ?? null);
    },
  };
  return handler;
}

/** What every page of scenario 4 carries, read live (a page after a failed re-run shows the new logs). */
async function diagnosticsFor(ctx: HandlerContext, serverLabel: string | undefined, database: string | undefined, plan: PrismaMigrationPlan | PrismaResetPlan | null): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = { runbook: 'Scenario 4 — Prisma Migration Failure' };
  if (!database) return { ...out, error: 'no database named (datname)' };
  let server: PgServer;
  try {
    server = serverForAlert(ctx, serverLabel);
  } catch (err) {
    return { ...out, error: safeMessage(err) };
  }
  const cfg = ctx.config.handlers['prisma-migration'];
  const owners = ownersOf(ctx, database);
  const schemas = plan ? [plan.schema] : owners.length ? owners.map((o) => o.schema) : ['public'];
  out.database = database;
  out.server = server.server;
  out.owning_service = owners.length
    ? owners.map((o) => ({ name: o.service.name, schema: o.schema, deployment: o.service.deployment ?? null, migrate_deploy: o.service.prisma?.migrateDeploy ?? 'not configured (dbpilot only reports)', cron_job: o.service.prisma?.cronJob ?? null }))
    : `none: no service in services[] has prisma.database ${database}`;
  const q = actQuery(server, database);
  for (const schema of schemas) {
    const key = schemas.length > 1 ? ` (${schema})` : '';
    try {
      const rows = await readMigrations(q, schema);
      out[`failed_migrations${key}`] = rows.filter(isFailed).map((r) => ({ migration_name: r.migrationName, started_at: r.startedAt, applied_steps_count: r.appliedStepsCount, checksum: r.checksum, logs: cleanLogs(r.logs, cfg.logsMaxChars) }));
      out[`recent_migrations${key}`] = rows.slice(-5).map((r) => ({ migration_name: r.migrationName, started_at: r.startedAt, finished_at: r.finishedAt, rolled_back_at: r.rolledBackAt }));
    } catch (err) {
      out[`failed_migrations${key}`] = `not available: ${safeMessage(err)}`;
    }
  }
  try {
    out.migrate_lock_holder = await migrateLockHolder(q);
  } catch (err) {
    out.migrate_lock_holder = `not available: ${safeMessage(err)}`;
  }
  const svc = plan?.service ?? null;
  const name = (plan && 'names' in plan ? plan.names[0] : undefined) ?? '<migration-name>';
  out.commands = [prismaCli(ctx, svc, 'migrate status'), prismaCli(ctx, svc, `migrate resolve --rolled-back ${name}`), prismaCli(ctx, svc, 'migrate deploy')];
  return out;
}

// ---------------------------------------------------------------------------------------------------
// `prisma migrate reset` (runbook step 4): CLI only, never production

/** The procedure's name in the audit; not a runbook handler name, so the registry refuses it and no alert can reach it. */
export const MIGRATE_RESET = 'prisma-migrate-reset';

/** migrate reset was asked for where the configuration says production. */
export class RefusedInProductionError extends DbpilotError {
  constructor(what: string) {
    super('DBPILOT_REFUSED_IN_PRODUCTION', `${what} is refused: this dbpilot's environment is production (the configuration's \`environment\`, default production). It is allowed only where environment is staging or development`);
  }
}

/**
 * `dbpilot migrate-reset <database>`: what `prisma migrate reset --force` does to the database, with
 * what an SRE can check at every step — the datasource's schema dropped and recreated (its owner and
 * grants kept), holding Prisma's lock, then `prisma migrate deploy` run the way the service runs it
 * and every migration checked finished. Seeding is not run (the service's `prisma db seed` is its
 * own). Refused unless environment is staging or development, in plan() and again just before it acts.
 */
export function prismaMigrateResetProcedure(): Handler<PrismaResetPlan> {
  const environmentOf = (ctx: HandlerContext): DeployEnvironment => ctx.config.environment;
  return {
    name: MIGRATE_RESET as Handler['name'],
    team: 'oncall-backend',
    planSchema: resetPlanSchema,

    target(alert, ctx) {
      return `postgres/${serverForAlert(ctx, alert.labels.server).server}/${alert.labels.datname ?? '*'}`;
    },

    async plan(alert, ctx) {
      const env = environmentOf(ctx);
      const database = alert.labels.datname;
      if (!database) throw new DbpilotError('DBPILOT_BAD_ARGUMENT', 'migrate reset needs the database');
      if (env === 'production') throw new RefusedInProductionError(`prisma migrate reset of ${database}`);
      const cfg = ctx.config.handlers['prisma-migration'];
      const server = serverForAlert(ctx, alert.labels.server);
      const owners = ownersOf(ctx, database);
      const schema = alert.labels.schema ?? owners[0]?.schema ?? 'public';
      const owner = owners.find((o) => o.schema === schema)?.service ?? null;
      const state = await schemaState(actQuery(server, database), schema);
      if (!state.exists) throw new UnsafeToActError(`schema ${schema} does not exist in ${database}: nothing to reset`);
      const svc = owner ? owningService(owner) : null;
      const job = svc?.migrateDeploy === 'job' ? jobNameFor(svc.cronJob!, new Date()) : null;
      const lost = state.defaultPrivileges ? `; its ${state.defaultPrivileges} ALTER DEFAULT PRIVILEGES entr${state.defaultPrivileges === 1 ? 'y goes' : 'ies go'} with it (as with Prisma's reset)` : '';
      return {
        summary: `${env}: drop and recreate schema ${schema} of ${database} (${state.relations} relation(s); owner ${state.owner} and grants kept${lost}), then ${svc ? `re-run migrate deploy as ${svc.name} runs it (${svc.migrateDeploy === 'restart' ? `rollout restart deployment/${svc.deployment}` : `job from cronjob/${svc.cronJob}`})` : `run prisma migrate deploy yourself: no service with prisma.migrateDeploy owns ${database}`}; seed data is not loaded`,
        data: { server: server.server, database, schema, environment: env, service: svc, job, owner: state.owner, relations: state.relations, defaultPrivileges: state.defaultPrivileges, deployTimeoutSeconds: cfg.deployTimeoutSeconds, lockTimeoutMs: cfg.lockTimeoutSeconds * 1000 },
      };
    },

    steps(plan, ctx) {
      const server = serverOf(ctx, plan.server);
      const { database, schema } = plan;
      const steps: Step[] = [
        {
          name: 'resetSchema',
          command: [
            prismaCli(ctx, plan.service, 'migrate reset --force'),
            `# dbpilot does its reset of the schema, holding Prisma's advisory lock (SELECT pg_advisory_lock(${PRISMA_MIGRATE_LOCK_KEY})), owner and grants kept:`,
            psqlCommand(ctx.config, resetSql(schema, plan.owner), { server: plan.server, database }),
          ].join('\n'),
          idempotent: false,
          risky: true,
          async precondition() {
            const env = environmentOf(ctx);
            if (env === 'production') return fail(new RefusedInProductionError(`prisma migrate reset of ${database}`).message);
            const holder = await migrateLockHolder(actQuery(server, database));
            if (holder) return fail(`a prisma migrate command holds Prisma's advisory lock in ${database} (pid ${holder.pid}): not resetting under it`);
            return ok(`environment ${env}; no migrate command running in ${database}`);
          },
          async run(_prior, sc) {
            return onConnection(server, database, (client) =>
              withMigrateLock(client, database, plan.lockTimeoutMs, async (q) => {
                sc.assertCanAct();
                const at = (await q<{ now: string }>(`SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS now`))[0]!.now;
                const { before, after } = await resetSchema(q, schema);
                return { at, before, after };
              }),
            );
          },
          async check(output) {
            const o = output as { at?: string; before?: { owner: string | null; acl: string | null } } | null;
            const q = actQuery(server, database);
            const now = await schemaState(q, schema);
            if (!now.exists) return fail(`schema ${schema} is missing from ${database}`);
            const problems: string[] = [];
            if (o?.before && now.owner !== o.before.owner) problems.push(`owner is ${now.owner}, was ${o.before.owner}`);
            if (o?.before && now.acl !== o.before.acl) problems.push(`grants are ${now.acl ?? 'the defaults'}, were ${o.before.acl ?? 'the defaults'}`);
            // A migrate deploy may already be filling it again: what must be gone is every migration recorded before the reset.
            const older = o?.at ? (await readMigrations(q, schema)).filter((r) => r.startedAt < o.at!) : [];
            if (older.length) problems.push(`${older.length} migration row(s) from before the reset are still there`);
            if (!o?.at) problems.push('the reset recorded no time');
            if (problems.length) return fail(`schema ${schema} of ${database}: ${problems.join('; ')}`);
            return ok(`schema ${schema} of ${database} dropped and recreated, owner ${now.owner}${now.acl ? `, grants ${now.acl}` : ''}`);
          },
        },
      ];
      if (plan.service && ctx.kube) {
        steps.push(rerunStep(ctx, ctx.kube, plan.service, plan.job, server, database, schema));
        steps.push(verifyStep(ctx, ctx.kube, { svc: plan.service, job: plan.job, server, database, schema, timeoutSeconds: plan.deployTimeoutSeconds, expect: 'all' }));
      }
      return steps;
    },

    async diagnostics(plan, alert, ctx) {
      return diagnosticsFor(ctx, plan?.server ?? alert.labels.server, plan?.database ?? alert.labels.datname, plan ?? null);
    },
  };
}
