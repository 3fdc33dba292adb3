/**
 * Runbook scenario 3 — Disk Space Full (alert PostgresDiskAlmostFull), and its step 4 as the
 * approval-only `vacuum-full` handler.
 *
 * disk-full. Steps 1–3 are read on every plan and go with every page (diagnostics(), read live): the
 * data directory's file system as the disk collector reads it (statfs of postgres.dataDirectory, the
 * pg_filesystem_* metrics: used = 1 − avail / size, as `df` and the alert count it), the database
 * sizes, and per database the largest tables with their live and dead tuples (pg_stat_user_tables).
 * Then, in approve (once approved) or auto mode:
 *
 *   expandPvc            step 5, `kubectl patch pvc …`: only if the PVC's StorageClass says
 *                        allowVolumeExpansion: true, by the configured step (stepPercent or stepGi) up
 *                        to maxSize and never past it, never smaller; checked by status.capacity
 *                        reaching the new size within expandTimeoutSeconds and the file system's size
 *                        following (where dbpilot has the data directory mounted)
 *   growRdsStorage       the same on RDS, where `aws:` is configured: ModifyDBInstance AllocatedStorage
 *                        with RDS's rules checked first (src/integrations/rds.ts), checked by the new
 *                        allocation being applied
 *   vacuumDeadTuples(db) plain VACUUM (never FULL) of the tables with the most dead tuples, when
 *                        `vacuum: true`; each session bounded by lock_timeout and statement_timeout;
 *                        checked by last_vacuum moving and the dead tuples falling
 *
 * Above pageAbovePercent (the runbook's 90 %) the DevOps engineer is paged whatever dbpilot did:
 * after an expansion expected to bring the disk under the limit, with the success note
 * (notifyOnSuccess); otherwise the run ends escalated (escalateAfter). With nothing dbpilot may do
 * (no ceiling configured, a StorageClass that cannot expand, the ceiling reached, no vacuum), the
 * plan is refused as unsafe and the page says why.
 *
 * vacuum-full (step 4, `VACUUM FULL`). Never automatic: approvalOnly (auto becomes approve, and
 * `mode: auto` in its configuration is refused), one table at a time (labels datname and relname,
 * `dbpilot plan vacuum-full -d DB -t schema.table`), with the table's size and the ACCESS EXCLUSIVE
 * lock it takes in the plan, refused when the file system has less free space than the table (the
 * rewrite writes a whole new copy first); checked by the table's relfilenode changing.
 */
import { statfs } from 'node:fs/promises';
import { z } from 'zod';
import { UnsafeToActError, safeMessage } from '../../errors.js';
import type { PgServer } from '../../integrations/postgres.js';
import { storageGrowthProblem } from '../../integrations/rds.js';
import { fail, ok, serverForAlert, showLabel, sleep, type AlertInfo, type CheckResult, type Handler, type HandlerContext, type Plan, type Step, type StepContext } from '../handler.js';
import { namespaceOf, psqlCommand } from '../runbook.js';
import { handlerOptions, identifier } from './options.js';

// ---------------------------------------------------------------------------------------------------
// Kubernetes quantities (pure, table-tested)

const KI = 1024n;
const MI = KI * KI;
const GI = MI * KI;
const BINARY: Record<string, bigint> = { Ki: KI, Mi: MI, Gi: GI, Ti: GI * KI, Pi: GI * MI, Ei: GI * GI };
const DECIMAL: Record<string, bigint> = { k: 10n ** 3n, M: 10n ** 6n, G: 10n ** 9n, T: 10n ** 12n, P: 10n ** 15n, E: 10n ** 18n };
const QUANTITY_RE = /^(\d+(?:\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|[eE][+-]?\d+)?$/;

/**
 * A Kubernetes resource.Quantity of storage as exact bytes, rounded up as Quantity.Value() does
 * (`100Gi`, `1Ti`, `107374182400`, `1.5Gi`, `120G`, `1e11`). Null for what is not a quantity, and for
 * the sub-byte suffixes (m, u, n): `100m` of storage is a tenth of a byte, always a typo.
 */
export function parseQuantity(q: string | number): bigint | null {
  const s = typeof q === 'number' ? (Number.isSafeInteger(q) && q >= 0 ? String(q) : '') : q.trim();
  const m = QUANTITY_RE.exec(s);
  if (!m) return null;
  const [int, frac = ''] = m[1]!.split('.');
  const digits = BigInt(`${int || '0'}${frac}`);
  let num = digits;
  let den = 10n ** BigInt(frac.length);
  const suffix = m[2] ?? '';
  if (BINARY[suffix]) num *= BINARY[suffix];
  else if (DECIMAL[suffix]) num *= DECIMAL[suffix];
  else if (suffix) {
    const exp = Number(suffix.slice(1));
    if (!Number.isInteger(exp) || Math.abs(exp) > 30) return null;
    if (exp >= 0) num *= 10n ** BigInt(exp);
    else den *= 10n ** BigInt(-exp);
  }
  return (num + den - 1n) / den;
}

/** Bytes as the shortest exact quantity: `120Gi`, `96Mi`, else the plain number of bytes. */
export function formatQuantity(bytes: bigint): string {
  if (bytes > 0n && bytes % GI === 0n) return `${bytes / GI}Gi`;
  if (bytes > 0n && bytes % MI === 0n) return `${bytes / MI}Mi`;
  return String(bytes);
}

/** For people: `93.1 GiB`. */
export function humanBytes(n: number | bigint): string {
  let v = Number(n);
  for (const unit of ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']) {
    if (Math.abs(v) < 1024 || unit === 'PiB') return unit === 'B' ? `${v} B` : `${v.toFixed(1)} ${unit}`;
    v /= 1024;
  }
  return `${v} B`;
}

export type ExpandStep = { percent: number } | { gi: number };

/**
 * Pure: the size to expand a volume of `current` bytes to — one step (percent of the current size, or
 * a fixed number of GiB), rounded up to whole MiB, never past `max`. Null when that does not grow it
 * (the volume is at or above the ceiling): dbpilot never asks for the same size or a smaller one.
 */
export function nextSize(current: bigint, step: ExpandStep, max: bigint): bigint | null {
  const by = 'percent' in step ? (current * BigInt(Math.round(step.percent * 1000)) + 99_999n) / 100_000n : BigInt(Math.round(step.gi * 1024)) * MI;
  let to = current + (by > 0n ? by : 1n);
  to = ((to + MI - 1n) / MI) * MI;
  if (to > max) to = max;
  return to > current ? to : null;
}

/** Pure, RDS's counterpart in whole GiB: one step, at least RDS's 10 %, never past maxGiB; null when it would not grow. */
export function nextRdsGiB(current: number, step: ExpandStep, maxGiB: number): number | null {
  const stepped = 'percent' in step ? Math.ceil(current * (1 + step.percent / 100)) : current + Math.ceil(step.gi);
  // In integers: 100 × 1.1 is 110.00000000000001 in floating point.
  const to = Math.min(Math.max(stepped, Math.ceil((current * 11) / 10)), maxGiB);
  return to > current ? to : null;
}

// ---------------------------------------------------------------------------------------------------
// Configuration

const k8sName = z.string().regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/, 'not a Kubernetes object name (lowercase letters, digits, - and .)').max(253);

const storageSize = z.union([z.string(), z.number()]).superRefine((v, c) => {
  const b = parseQuantity(v);
  if (b === null) c.addIssue({ code: 'custom', message: 'not a storage quantity (e.g. 500Gi, 1Ti or a number of bytes; sub-byte suffixes such as m are refused)' });
  else if (b < MI) c.addIssue({ code: 'custom', message: 'must be at least 1Mi' });
});

/** handlers.disk-full: what this handler takes, with its defaults (merged into the configuration schema). */
export const diskFullOptions = handlerOptions(
  {
    /** Above this share of the file system used, the DevOps engineer is paged whatever dbpilot did (the runbook's 90 %). */
    pageAbovePercent: z.number().gt(0).max(100).default(90),
    /** Expand by this percentage of the current size (default 25 when neither this nor stepGi is set). */
    stepPercent: z.number().gt(0).max(1000).optional(),
    /** Or by this many GiB. */
    stepGi: z.number().gt(0).max(65_536).optional(),
    /** The ceiling: the volume (or RDS allocation) is never expanded past it. Absent: dbpilot never expands, it pages. */
    maxSize: storageSize.optional(),
    /** How long status.capacity (and the file system) may take to show the new size; RDS: the new allocation applied. */
    expandTimeoutSeconds: z.number().min(1).max(7200).default(600),
    /** The data volume's claim template: the PVC of pod P is `<volumeClaimTemplate>-<P>` (the runbook's postgres-data-postgres-primary-0). */
    volumeClaimTemplate: k8sName.default('postgres-data'),
    /** Per server, by its pod (postgres.primary.pod, postgres.replicas[].pod): the data PVC, where it is not `<volumeClaimTemplate>-<pod>`. */
    pvcs: z.record(k8sName, k8sName).default({}),
    /** Plain VACUUM (never FULL) of the tables with the most dead tuples. */
    vacuum: z.boolean().default(false),
    /** At most this many tables are vacuumed per run. */
    vacuumMaxTables: z.number().int().min(1).max(100).default(5),
    /** Tables with fewer dead tuples are left alone. */
    vacuumMinDeadTuples: z.number().int().min(0).default(10_000),
    /** lock_timeout of the VACUUM sessions: a lock not granted quickly fails the step instead of queueing behind the table's users. */
    lockTimeoutSeconds: z.number().min(0.1).max(600).default(5),
    /** statement_timeout of each VACUUM. */
    statementTimeoutSeconds: z.number().min(1).max(86_400).default(1800),
    /** Tables per database in the diagnostics (the runbook's LIMIT 10). */
    largestTables: z.number().int().min(1).max(100).default(10),
  },
  // An expansion is not undone, and a disk that fills again within half an hour is for a human.
  { cooldownSeconds: 1800 },
).superRefine((o, c) => {
  if (o.stepPercent !== undefined && o.stepGi !== undefined) c.addIssue({ code: 'custom', path: ['stepGi'], message: 'set stepPercent or stepGi, not both' });
});
export type DiskFullConfig = z.output<typeof diskFullOptions>;

/** handlers.vacuum-full: runbook step 4, approval only. */
export const vacuumFullOptions = handlerOptions({
  /** lock_timeout while VACUUM FULL waits for its ACCESS EXCLUSIVE lock (the wait itself blocks every later user of the table). */
  lockTimeoutSeconds: z.number().min(0.1).max(600).default(5),
  /** statement_timeout of the VACUUM FULL. */
  statementTimeoutSeconds: z.number().min(1).max(86_400).default(3600),
}).superRefine((o, c) => {
  if (o.mode === 'auto') c.addIssue({ code: 'custom', path: ['mode'], message: 'VACUUM FULL is never automatic: use approve, dry-run or off' });
});

function stepOf(cfg: DiskFullConfig): ExpandStep {
  if (cfg.stepGi !== undefined) return { gi: cfg.stepGi };
  return { percent: cfg.stepPercent ?? 25 };
}

// ---------------------------------------------------------------------------------------------------
// Plan data

const filesystem = z.strictObject({ path: z.string(), sizeBytes: z.number(), availBytes: z.number(), usedPercent: z.number() });
export type FileSystemUsage = z.output<typeof filesystem>;

const expandPvc = z.strictObject({
  kind: z.literal('pvc'),
  pvc: z.string(),
  storageClass: z.string(),
  /** spec.resources.requests.storage as read, and status.capacity.storage. */
  fromRequest: z.string(),
  fromCapacity: z.string().nullable(),
  toSize: z.string(),
  maxSize: z.string(),
  timeoutSeconds: z.number(),
});
const growRds = z.strictObject({ kind: z.literal('rds'), instance: z.string(), fromGiB: z.number(), toGiB: z.number(), maxGiB: z.number(), timeoutSeconds: z.number() });

const vacuumTable = z.strictObject({ database: z.string(), schema: z.string(), table: z.string(), deadTuples: z.number(), liveTuples: z.number(), totalBytes: z.number() });
type VacuumTable = z.output<typeof vacuumTable>;

const planSchema = z.strictObject({
  server: z.string(),
  pageAbovePercent: z.number(),
  /** The data directory's file system when planned; null when postgres.dataDirectory is not configured. */
  filesystem: filesystem.nullable(),
  expand: z.discriminatedUnion('kind', [expandPvc, growRds]).nullable(),
  /** Why storage is not expanded (when expand is null). */
  notExpanded: z.string().nullable(),
  vacuum: z.strictObject({ lockTimeoutMs: z.number(), statementTimeoutMs: z.number(), tables: z.array(vacuumTable) }).nullable(),
});
export type DiskFullPlan = z.output<typeof planSchema>;

// ---------------------------------------------------------------------------------------------------
// Live reads shared by the plan, the checks and the diagnostics

/** Runbook step 1 (`df` of the data directory), as the disk collector reads it. */
export async function readFileSystem(path: string): Promise<FileSystemUsage> {
  const st = await statfs(path);
  const sizeBytes = st.blocks * st.bsize;
  const availBytes = st.bavail * st.bsize;
  return { path, sizeBytes, availBytes, usedPercent: sizeBytes > 0 ? Math.round((1 - availBytes / sizeBytes) * 10_000) / 100 : 0 };
}

/** The databases to look into: postgres.databases, else every database that accepts connections. */
async function databasesOf(ctx: HandlerContext, server: PgServer): Promise<string[]> {
  if (ctx.config.postgres.databases.length > 0) return [...ctx.config.postgres.databases];
  const rows = await server.act<{ datname: string }>(`SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname`);
  return rows.map((r) => r.datname);
}

// pg_database_size(oid) answers NULL for a database dropped meanwhile, where the name variant would fail.
const DB_SIZES_SQL = `SELECT datname, pg_database_size(oid)::float8 AS bytes FROM pg_database WHERE datallowconn ORDER BY 2 DESC NULLS LAST LIMIT 100`;

const TABLES_SQL = (order: 'size' | 'dead') => `
SELECT s.schemaname, s.relname, pg_total_relation_size(s.relid)::float8 AS total_bytes,
       s.n_live_tup::float8 AS live, s.n_dead_tup::float8 AS dead,
       to_char(s.last_vacuum AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS last_vacuum,
       to_char(s.last_autovacuum AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS last_autovacuum
FROM pg_stat_user_tables s
${order === 'dead' ? 'WHERE s.n_dead_tup >= $2' : ''}
ORDER BY ${order === 'dead' ? 's.n_dead_tup DESC' : 'pg_total_relation_size(s.relid) DESC'}
LIMIT $1`;

interface TableRow {
  schemaname: string;
  relname: string;
  total_bytes: number;
  live: number;
  dead: number;
  last_vacuum: string | null;
  last_autovacuum: string | null;
}

const qualified = (schema: string, table: string) => (schema === 'public' ? table : `${schema}.${table}`);
const ident = (s: string) => `"${s.replace(/"/g, '""')}"`;

/** Runbook steps 1–3 for a page: each part read on its own, so one that fails leaves the others. */
async function diskDiagnostics(ctx: HandlerContext, server: PgServer, largest: number): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const dir = ctx.config.postgres.dataDirectory;
  const pod = server.pod ?? 'postgres-primary-0';
  const ns = namespaceOf(ctx.config);
  const fsPart = async () => {
    out.filesystem_command = `kubectl exec -it ${pod} -n ${ns} -- df -h ${dir ?? '/var/lib/postgresql/data'}`;
    if (!dir) {
      out.filesystem = 'not read: postgres.dataDirectory is not configured (dbpilot reads the file system only where the data directory is mounted)';
      return;
    }
    try {
      const f = await readFileSystem(dir);
      out.filesystem = { path: f.path, size: humanBytes(f.sizeBytes), avail: humanBytes(f.availBytes), used_percent: f.usedPercent, size_bytes: f.sizeBytes, avail_bytes: f.availBytes };
    } catch (err) {
      out.filesystem = `not available: ${safeMessage(err)}`;
    }
  };
  const sizesPart = async () => {
    out.database_sizes_command = psqlCommand(ctx.config, 'SELECT datname, pg_size_pretty(pg_database_size(datname)) FROM pg_database ORDER BY pg_database_size(datname) DESC;', { server: server.server });
    try {
      const rows = await server.act<{ datname: string; bytes: number | null }>(DB_SIZES_SQL);
      out.database_sizes = rows.map((r) => ({ datname: r.datname, size: r.bytes === null ? 'unknown' : humanBytes(r.bytes), bytes: r.bytes }));
    } catch (err) {
      out.database_sizes = `not available: ${safeMessage(err)}`;
    }
  };
  const tablesPart = async () => {
    const tables: Record<string, unknown> = {};
    out.largest_tables = tables;
    out.largest_tables_command = psqlCommand(
      ctx.config,
      `SELECT relname, pg_size_pretty(pg_total_relation_size(relid)), n_live_tup, n_dead_tup, last_vacuum, last_autovacuum FROM pg_stat_user_tables ORDER BY pg_total_relation_size(relid) DESC LIMIT ${largest};`,
      { server: server.server, database: '<database>' },
    );
    let dbs: string[];
    try {
      dbs = await databasesOf(ctx, server);
    } catch (err) {
      out.largest_tables = `not available: ${safeMessage(err)}`;
      return;
    }
    // A page stays small (PagerDuty refuses events over 512 KB): at most 20 databases.
    await Promise.all(
      dbs.slice(0, 20).map(async (db) => {
        try {
          const rows = await server.act<TableRow & Record<string, unknown>>(TABLES_SQL('size'), [largest], db);
          tables[db] = rows.map((r) => ({
            table: qualified(r.schemaname, r.relname),
            size: humanBytes(r.total_bytes),
            total_bytes: r.total_bytes,
            live_tuples: r.live,
            dead_tuples: r.dead,
            last_vacuum: r.last_vacuum,
            last_autovacuum: r.last_autovacuum,
          }));
        } catch (err) {
          tables[db] = `not available: ${safeMessage(err)}`;
        }
      }),
    );
    if (dbs.length > 20) tables['…'] = `and ${dbs.length - 20} more databases`;
  };
  await Promise.all([fsPart(), sizesPart(), tablesPart()]);
  return out;
}


const POLL_MS = 500;
/** The file system "follows" the volume when it grew by at least half of what the volume grew (file-system overhead, reserved blocks). */
const FS_FOLLOW_FRACTION = 0.5;

/** Polls `probe` until it returns a CheckResult that is ok, or until `untilMs` (epoch), and returns the last one. */
async function pollCheck(probe: () => Promise<CheckResult>, untilMs: number, signal: AbortSignal): Promise<CheckResult> {
  for (;;) {
    let r: CheckResult;
    try {
      r = await probe();
    } catch (err) {
      r = fail(safeMessage(err));
    }
    if (r.ok || Date.now() >= untilMs) return r;
    await sleep(Math.min(POLL_MS, Math.max(0, untilMs - Date.now())), signal);
  }
}

// ---------------------------------------------------------------------------------------------------
// disk-full

export function diskFullHandler(): Handler<DiskFullPlan> {
  const settings = (ctx: HandlerContext) => ctx.config.handlers['disk-full'];

  /** The expansion the live system allows now, or why there is none. */
  async function planExpansion(ctx: HandlerContext, server: PgServer, cfg: DiskFullConfig): Promise<{ expand: DiskFullPlan['expand']; why: string | null }> {
    const max = cfg.maxSize === undefined ? null : parseQuantity(cfg.maxSize);
    if (max === null) return { expand: null, why: 'no ceiling is configured (handlers.disk-full.maxSize): dbpilot never expands storage without one' };
    const step = stepOf(cfg);
    if (ctx.rds) {
      const inst = await ctx.rds.describeInstance();
      const maxGiB = Number(max / GI);
      const to = nextRdsGiB(inst.allocatedGiB, step, maxGiB);
      if (to === null) return { expand: null, why: `${inst.id} already has ${inst.allocatedGiB} GiB, at the ceiling of ${maxGiB} GiB (handlers.disk-full.maxSize)` };
      const problem = storageGrowthProblem(inst, to);
      if (problem) return { expand: null, why: `RDS storage cannot grow now: ${problem}` };
      return { expand: { kind: 'rds', instance: inst.id, fromGiB: inst.allocatedGiB, toGiB: to, maxGiB, timeoutSeconds: cfg.expandTimeoutSeconds }, why: null };
    }
    const kube = ctx.kube;
    if (!kube) return { expand: null, why: 'neither kubernetes: nor aws: is configured: dbpilot cannot expand the data volume' };
    if (!server.pod) return { expand: null, why: `no pod is configured for ${server.server} (postgres.primary.pod / postgres.replicas[].pod), so its data PVC is unknown` };
    const pvcName = cfg.pvcs[server.pod] ?? `${cfg.volumeClaimTemplate}-${server.pod}`;
    const pvc = await kube.readPvc(pvcName);
    const requested = pvc.requestedStorage === undefined ? null : parseQuantity(pvc.requestedStorage);
    const capacity = pvc.capacityStorage === undefined ? null : parseQuantity(pvc.capacityStorage);
    if (pvc.phase !== 'Bound' || requested === null) return { expand: null, why: `PVC ${pvcName} is ${pvc.phase ?? 'in no phase'}${requested === null ? ' with no storage request' : ''}: only a bound claim can be expanded` };
    if (!pvc.storageClassName) return { expand: null, why: `PVC ${pvcName} has no StorageClass: only dynamically provisioned claims can be expanded` };
    const sc = await kube.readStorageClass(pvc.storageClassName);
    if (!sc.allowVolumeExpansion) {
      return { expand: null, why: `StorageClass ${sc.name} of PVC ${pvcName} does not allow volume expansion (allowVolumeExpansion is not true): Kubernetes refuses the resize; a cluster admin must allow it, or the data moved to a bigger volume by hand` };
    }
    if (capacity !== null && capacity < requested) {
      return { expand: null, why: `PVC ${pvcName} is already being resized to ${pvc.requestedStorage} (capacity still ${pvc.capacityStorage}): see kubectl describe pvc ${pvcName}` };
    }
    const base = capacity !== null && capacity > requested ? capacity : requested;
    const to = nextSize(base, step, max);
    if (to === null || to <= requested) return { expand: null, why: `PVC ${pvcName} has ${formatQuantity(base)}, at the ceiling of ${formatQuantity(max)} (handlers.disk-full.maxSize)` };
    return {
      expand: { kind: 'pvc', pvc: pvcName, storageClass: sc.name, fromRequest: pvc.requestedStorage!, fromCapacity: pvc.capacityStorage ?? null, toSize: formatQuantity(to), maxSize: formatQuantity(max), timeoutSeconds: cfg.expandTimeoutSeconds },
      why: null,
    };
  }

  async function planVacuum(ctx: HandlerContext, server: PgServer, cfg: DiskFullConfig): Promise<VacuumTable[]> {
    const found: VacuumTable[] = [];
    for (const db of await databasesOf(ctx, server)) {
      try {
        const rows = await server.act<TableRow & Record<string, unknown>>(TABLES_SQL('dead'), [cfg.vacuumMaxTables, cfg.vacuumMinDeadTuples], db);
        for (const r of rows) found.push({ database: db, schema: r.schemaname, table: r.relname, deadTuples: r.dead, liveTuples: r.live, totalBytes: r.total_bytes });
      } catch (err) {
        ctx.logger.warn({ database: db, err: safeMessage(err) }, 'disk-full: dead tuples not read');
      }
    }
    return found.sort((a, b) => b.deadTuples - a.deadTuples).slice(0, cfg.vacuumMaxTables);
  }

  return {
    name: 'disk-full',
    team: 'devops',
    planSchema,

    // The volume of one server: excluded by a failover (`postgres`), beside per-database runs on it.
    target: (alert, ctx) => `postgres/${serverForAlert(ctx, alert.labels.server).server}/:disk`,

    async plan(alert, ctx): Promise<Plan<DiskFullPlan>> {
      const cfg = settings(ctx);
      const server = serverForAlert(ctx, alert.labels.server);
      const dir = ctx.config.postgres.dataDirectory;
      const fsNow = dir ? await readFileSystem(dir) : null;
      const base = { server: server.server, pageAbovePercent: cfg.pageAbovePercent, filesystem: fsNow };
      if (fsNow && fsNow.usedPercent <= cfg.pageAbovePercent) {
        return {
          summary: `${fsNow.path} on ${server.server} is ${fsNow.usedPercent} % used, not above ${cfg.pageAbovePercent} % any more`,
          data: { ...base, expand: null, notExpanded: null, vacuum: null },
          nothingToDo: true,
        };
      }
      // An unreadable PVC, StorageClass or RDS instance is a reason not to expand, not to skip the rest:
      // the VACUUM can still run, and the page says what could not be read.
      const { expand, why } = await planExpansion(ctx, server, cfg).catch((err: unknown) => ({
        expand: null,
        why: `could not read what an expansion needs: ${safeMessage(err)}`,
      }));
      const tables = cfg.vacuum ? await planVacuum(ctx, server, cfg) : [];
      const vacuum = tables.length ? { lockTimeoutMs: Math.round(cfg.lockTimeoutSeconds * 1000), statementTimeoutMs: Math.round(cfg.statementTimeoutSeconds * 1000), tables } : null;
      const data: DiskFullPlan = { ...base, expand, notExpanded: why, vacuum };
      const usage = fsNow ? `${fsNow.path} on ${server.server} is ${fsNow.usedPercent} % used (${humanBytes(fsNow.availBytes)} of ${humanBytes(fsNow.sizeBytes)} free)` : `the data disk of ${server.server} is above ${cfg.pageAbovePercent} % (alert; postgres.dataDirectory is not configured, so dbpilot cannot read it)`;
      if (!expand && !vacuum) {
        const noVacuum = cfg.vacuum ? `no table has ${cfg.vacuumMinDeadTuples} dead tuples or more` : 'vacuum is off (handlers.disk-full.vacuum)';
        throw new UnsafeToActError(`${usage}; nothing dbpilot may do: ${why}; ${noVacuum}`);
      }
      const actions: string[] = [];
      if (expand?.kind === 'pvc') actions.push(`expand PVC ${expand.pvc} from ${expand.fromRequest} to ${expand.toSize} (ceiling ${expand.maxSize}, StorageClass ${expand.storageClass} allows expansion)`);
      if (expand?.kind === 'rds') actions.push(`grow RDS ${expand.instance} from ${expand.fromGiB} GiB to ${expand.toGiB} GiB (ceiling ${expand.maxGiB} GiB)`);
      if (vacuum) actions.push(`VACUUM ${vacuum.tables.length} table(s) with the most dead tuples (${vacuum.tables.map((t) => `${t.database}.${qualified(t.schema, t.table)}: ${t.deadTuples}`).join(', ')})`);
      const top = vacuum?.tables[0];
      const leftToDo = [
        'find what filled the disk: the database sizes and largest tables are in the diagnostics',
        ...(top ? [`space inside ${top.database}.${qualified(top.schema, top.table)} goes back to the disk only with VACUUM FULL, which locks the table: \`dbpilot plan vacuum-full -d ${top.database} -t ${top.schema}.${top.table}\`, then approve`] : []),
        ...(expand ? [`a volume is never shrunk back: the new size (${expand.kind === 'pvc' ? expand.toSize : `${expand.toGiB} GiB`}) stays`] : []),
        ...(why ? [`storage was not expanded: ${why}`] : []),
      ];
      // Above the limit the DevOps engineer is paged whatever dbpilot does: after an expansion that should
      // bring it under the limit, by the note of a success; otherwise the run ends escalated.
      let expected: number | null = null;
      if (fsNow && expand) {
        const grownBy = expand.kind === 'pvc' ? Number(parseQuantity(expand.toSize)! - parseQuantity(expand.fromCapacity ?? expand.fromRequest)!) : (expand.toGiB - expand.fromGiB) * 2 ** 30;
        expected = Math.round(((fsNow.sizeBytes - fsNow.availBytes) / (fsNow.sizeBytes + Math.max(0, grownBy))) * 10_000) / 100;
      }
      const relieved = expand !== null && (expected === null || expected <= cfg.pageAbovePercent);
      return {
        summary: `${usage}: ${actions.join('; ')}`,
        data,
        ...(relieved
          ? { notifyOnSuccess: { severity: 'warning' as const, leftToDo: [expected === null ? 'check the disk usage after the expansion' : `about ${expected} % used after the expansion`, ...leftToDo] } }
          : { escalateAfter: `the data disk stays above ${cfg.pageAbovePercent} %${expected !== null ? ` (about ${expected} % after the expansion)` : ''}: ${leftToDo.join('; ')}` }),
      };
    },

    steps(plan, ctx): Step[] {
      const steps: Step[] = [];
      const server = serverForAlert(ctx, plan.server);
      const ns = namespaceOf(ctx.config);
      const e = plan.expand;
      if (e?.kind === 'pvc') {
        const toBytes = parseQuantity(e.toSize)!;
        const maxBytes = parseQuantity(e.maxSize)!;
        const fromBytes = parseQuantity(e.fromCapacity ?? e.fromRequest)!;
        const kube = () => {
          if (!ctx.kube) throw new UnsafeToActError('kubernetes: is no longer configured');
          return ctx.kube;
        };
        steps.push({
          name: 'expandPvc',
          command: `kubectl patch pvc ${e.pvc} -n ${ns} \\\n  -p '{"spec":{"resources":{"requests":{"storage":"${e.toSize}"}}}}'`,
          // Patching to the same absolute size again changes nothing.
          idempotent: true,
          timeoutMs: e.timeoutSeconds * 1000 + 30_000,
          async precondition() {
            if (toBytes > maxBytes) return fail(`${e.toSize} is above the ceiling ${e.maxSize}`);
            const pvc = await kube().readPvc(e.pvc);
            const req = pvc.requestedStorage === undefined ? null : parseQuantity(pvc.requestedStorage);
            if (req === null) return fail(`PVC ${e.pvc} has no storage request`);
            if (req > toBytes) return fail(`PVC ${e.pvc} already requests ${pvc.requestedStorage}, more than ${e.toSize}: dbpilot never asks for less`);
            if (req !== toBytes && req !== parseQuantity(e.fromRequest)) return fail(`PVC ${e.pvc} requests ${pvc.requestedStorage} now, not the ${e.fromRequest} planned: somebody resized it meanwhile`);
            if (pvc.storageClassName !== e.storageClass) return fail(`PVC ${e.pvc} has StorageClass ${pvc.storageClassName ?? '(none)'} now, not ${e.storageClass}`);
            const sc = await kube().readStorageClass(e.storageClass);
            if (!sc.allowVolumeExpansion) return fail(`StorageClass ${sc.name} no longer allows volume expansion`);
            return ok(`PVC ${e.pvc} requests ${pvc.requestedStorage}; StorageClass ${sc.name} allows expansion`);
          },
          async run(_prior, sc: StepContext) {
            sc.assertCanAct();
            const pvc = await kube().resizePvc(e.pvc, e.toSize, { timeoutMs: 10_000 });
            return { requested: pvc.requestedStorage, capacity: pvc.capacityStorage };
          },
          async check(_output, _prior, sc: StepContext) {
            const until = Math.min(sc.deadline - 5_000, Date.now() + e.timeoutSeconds * 1000);
            const cap = await pollCheck(async () => {
              const pvc = await kube().readPvc(e.pvc);
              const c = pvc.capacityStorage === undefined ? null : parseQuantity(pvc.capacityStorage);
              return c !== null && c >= toBytes
                ? ok(`PVC ${e.pvc} has ${pvc.capacityStorage} (status.capacity), requested ${pvc.requestedStorage}`)
                : fail(`status.capacity of PVC ${e.pvc} is still ${pvc.capacityStorage ?? '(none)'} after ${e.timeoutSeconds} s, requested ${pvc.requestedStorage}: the resize has not completed (kubectl describe pvc ${e.pvc} -n ${ns} shows the resizer's events)`);
            }, until, sc.signal);
            if (!cap.ok) return cap;
            const dir = ctx.config.postgres.dataDirectory;
            if (!dir || !plan.filesystem) return ok(`${cap.detail}; the file system was not checked (postgres.dataDirectory is not configured)`);
            const before = plan.filesystem.sizeBytes;
            const need = before + Number(toBytes - fromBytes) * FS_FOLLOW_FRACTION;
            const fsCheck = await pollCheck(async () => {
              const f = await readFileSystem(dir);
              return f.sizeBytes >= need
                ? ok(`${cap.detail}; the file system of ${dir} grew from ${humanBytes(before)} to ${humanBytes(f.sizeBytes)}, now ${f.usedPercent} % used`, { filesystem: f })
                : fail(`${cap.detail}, but the file system of ${dir} is still ${humanBytes(f.sizeBytes)} (was ${humanBytes(before)}): the volume grew, the file system did not follow (the kubelet resizes it online; some drivers need the pod restarted)`, { filesystem: f });
            }, Math.max(until, Date.now() + 1000), sc.signal);
            return fsCheck;
          },
        });
      }
      if (e?.kind === 'rds') {
        const rds = () => {
          if (!ctx.rds) throw new UnsafeToActError('aws: is no longer configured');
          return ctx.rds;
        };
        steps.push({
          name: 'growRdsStorage',
          command: ctx.rds ? ctx.rds.growStorageCommand(e.toGiB) : `aws rds modify-db-instance --db-instance-identifier ${e.instance} --allocated-storage ${e.toGiB} --apply-immediately`,
          idempotent: true,
          timeoutMs: e.timeoutSeconds * 1000 + 30_000,
          async precondition(_prior, sc) {
            if (e.toGiB > e.maxGiB) return fail(`${e.toGiB} GiB is above the ceiling ${e.maxGiB} GiB`);
            const inst = await rds().describeInstance(sc.signal);
            if (inst.allocatedGiB >= e.toGiB || inst.pendingAllocatedGiB === e.toGiB) return ok(`${inst.id} already has (or is getting) ${e.toGiB} GiB`);
            if (inst.allocatedGiB !== e.fromGiB) return fail(`${inst.id} has ${inst.allocatedGiB} GiB now, not the ${e.fromGiB} GiB planned: somebody changed it meanwhile`);
            return rds().checkStorageGrowth(e.toGiB, sc.signal);
          },
          async run(_prior, sc) {
            const inst = await rds().describeInstance(sc.signal);
            if (inst.allocatedGiB >= e.toGiB || inst.pendingAllocatedGiB === e.toGiB) return { already: true, allocatedGiB: inst.allocatedGiB };
            return rds().growStorage(e.toGiB, { signal: sc.signal, assertCanAct: sc.assertCanAct });
          },
          async check(_output, _prior, sc) {
            const until = Math.min(sc.deadline - 5_000, Date.now() + e.timeoutSeconds * 1000);
            const r = await pollCheck(async () => {
              const c = await rds().checkStorage(e.toGiB, { requireApplied: true, signal: sc.signal });
              return c.ok ? c : fail(`${c.detail} (after ${e.timeoutSeconds} s)`);
            }, until, sc.signal);
            return r;
          },
        });
      }
      for (const byDb of groupBy(plan.vacuum?.tables ?? [], (t) => t.database)) {
        const v = plan.vacuum!;
        const database = byDb[0]!.database;
        const lock = `${v.lockTimeoutMs}ms`;
        const stmt = `${v.statementTimeoutMs}ms`;
        steps.push({
          name: `vacuumDeadTuples(${database})`,
          command: psqlCommand(ctx.config, `SET lock_timeout = '${lock}'; SET statement_timeout = '${stmt}'; ${byDb.map((t) => `VACUUM ${qualified(t.schema, t.table)};`).join(' ')}`, { server: plan.server, database }),
          idempotent: true,
          timeoutMs: v.statementTimeoutMs * byDb.length + 30_000,
          async run(_prior, sc) {
            const startedAt = (await server.act<{ now: string }>(`SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS now`, [], database))[0]!.now;
            // VACUUM cannot run in a transaction block: a session of its own, bounded by both timeouts, so a
            // lock it cannot get (a long transaction on the table) fails the step instead of queueing.
            const client = await server.connect(database, { statementTimeoutMs: v.statementTimeoutMs });
            try {
              await client.query(`SET lock_timeout = '${lock}'`);
              await client.query(`SET statement_timeout = '${stmt}'`);
              for (const t of byDb) {
                sc.assertCanAct();
                await client.query(`VACUUM ${ident(t.schema)}.${ident(t.table)}`);
              }
            } finally {
              await client.end().catch(() => undefined);
            }
            return { startedAt, tables: byDb.map((t) => `${t.schema}.${t.table}`) };
          },
          async check(output) {
            const { startedAt } = (output ?? {}) as { startedAt?: string };
            if (!startedAt) return fail('the VACUUM recorded no start time');
            const rows = await server.act<{ schemaname: string; relname: string; vacuumed: boolean; dead: number }>(
              `SELECT schemaname, relname, coalesce(greatest(last_vacuum, last_autovacuum) >= $1::timestamptz, false) AS vacuumed, n_dead_tup::float8 AS dead
               FROM pg_stat_user_tables WHERE (schemaname, relname) IN (SELECT * FROM unnest($2::text[], $3::text[]))`,
              [startedAt, byDb.map((t) => t.schema), byDb.map((t) => t.table)],
              database,
            );
            const lines: string[] = [];
            const problems: string[] = [];
            for (const t of byDb) {
              const r = rows.find((x) => x.schemaname === t.schema && x.relname === t.table);
              const name = qualified(t.schema, t.table);
              if (!r) problems.push(`${name} is gone`);
              else if (!r.vacuumed) problems.push(`no vacuum of ${name} recorded since ${startedAt}`);
              else if (r.dead >= t.deadTuples && t.deadTuples > 0) problems.push(`${name} was vacuumed but still has ${r.dead} dead tuples (${t.deadTuples} before): an old transaction or a replication slot holds back what VACUUM may remove`);
              else lines.push(`${name}: ${t.deadTuples} → ${r.dead} dead tuples`);
            }
            return problems.length === 0 ? ok(`vacuumed in ${database}: ${lines.join('; ')}`) : fail(`${problems.join('; ')}${lines.length ? `; done: ${lines.join('; ')}` : ''}`);
          },
        });
      }
      return steps;
    },

    async diagnostics(plan, alert, ctx) {
      const cfg = settings(ctx);
      let server: PgServer;
      try {
        server = serverForAlert(ctx, plan?.server ?? alert.labels.server);
      } catch (err) {
        return { error: safeMessage(err) };
      }
      const out = await diskDiagnostics(ctx, server, cfg.largestTables);
      if (plan?.expand?.kind === 'pvc' && ctx.kube) {
        try {
          const pvc = await ctx.kube.readPvc(plan.expand.pvc);
          out.pvc = { name: pvc.name, requested: pvc.requestedStorage, capacity: pvc.capacityStorage, storage_class: pvc.storageClassName, phase: pvc.phase, ceiling: plan.expand.maxSize };
        } catch (err) {
          out.pvc = `not available: ${safeMessage(err)}`;
        }
      }
      if (plan?.expand?.kind === 'rds' && ctx.rds) {
        try {
          const i = await ctx.rds.describeInstance();
          out.rds = { instance: i.id, status: i.status, allocated_gib: i.allocatedGiB, pending_allocated_gib: i.pendingAllocatedGiB, max_allocated_gib: i.maxAllocatedGiB, storage_type: i.storageType, ceiling_gib: plan.expand.maxGiB };
        } catch (err) {
          out.rds = `not available: ${safeMessage(err)}`;
        }
      }
      if (plan?.notExpanded) out.not_expanded = plan.notExpanded;
      if (plan?.vacuum) out.vacuum_candidates = plan.vacuum.tables.map((t) => ({ database: t.database, table: qualified(t.schema, t.table), dead_tuples: t.deadTuples, live_tuples: t.liveTuples, size: humanBytes(t.totalBytes) }));
      return out;
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// vacuum-full (runbook step 4): approval only, one table at a time

const vacuumFullPlan = z.strictObject({
  server: z.string(),
  database: z.string(),
  schema: z.string(),
  table: z.string(),
  oid: z.number(),
  relfilenode: z.number(),
  totalBytes: z.number(),
  deadTuples: z.number(),
  liveTuples: z.number(),
  availBytes: z.number().nullable(),
  lockTimeoutMs: z.number(),
  statementTimeoutMs: z.number(),
});
export type VacuumFullPlan = z.output<typeof vacuumFullPlan>;

const TABLE_SQL = `
SELECT c.oid::int8::float8 AS oid, c.relfilenode::int8::float8 AS relfilenode, pg_total_relation_size(c.oid)::float8 AS total_bytes,
       coalesce(s.n_dead_tup, 0)::float8 AS dead, coalesce(s.n_live_tup, 0)::float8 AS live
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'm')`;

/** `schema.table` or `table` (schema public), from the alert's relname / schemaname labels. */
function tableOf(alert: AlertInfo): { schema: string; table: string } {
  const rel = alert.labels.relname ?? '';
  const dot = rel.indexOf('.');
  const schema = dot >= 0 ? rel.slice(0, dot) : (alert.labels.schemaname ?? 'public');
  const table = dot >= 0 ? rel.slice(dot + 1) : rel;
  if (!identifier.safeParse(schema).success || !identifier.safeParse(table).success) {
    throw new UnsafeToActError(`VACUUM FULL needs one table: label relname ${showLabel(rel)} (schemaname ${showLabel(schema)}) is not a plain table name (dbpilot plan vacuum-full -d <database> -t <schema.table>)`);
  }
  return { schema, table };
}

export function vacuumFullHandler(): Handler<VacuumFullPlan> {
  const settings = (ctx: HandlerContext) => ctx.config.handlers['vacuum-full'];
  const lockLine = (p: { schema: string; table: string }) =>
    `takes an ACCESS EXCLUSIVE lock on ${qualified(p.schema, p.table)} for the whole rewrite: every read and write of the table waits until it ends`;

  return {
    name: 'vacuum-full',
    team: 'devops',
    planSchema: vacuumFullPlan,
    approvalOnly: true,
    target: (alert, ctx) => `postgres/${serverForAlert(ctx, alert.labels.server).server}/${alert.labels.datname ?? '*'}`,

    async plan(alert, ctx): Promise<Plan<VacuumFullPlan>> {
      const cfg = settings(ctx);
      const server = serverForAlert(ctx, alert.labels.server);
      const database = alert.labels.datname;
      if (!database || database === '*') throw new UnsafeToActError('VACUUM FULL needs one database (label datname; dbpilot plan vacuum-full -d <database> -t <schema.table>)');
      const { schema, table } = tableOf(alert);
      const rows = await server.act<{ oid: number; relfilenode: number; total_bytes: number; dead: number; live: number }>(TABLE_SQL, [schema, table], database);
      const r = rows[0];
      if (!r) throw new UnsafeToActError(`no table ${schema}.${table} in ${database} on ${server.server}`);
      const dir = ctx.config.postgres.dataDirectory;
      const f = dir ? await readFileSystem(dir) : null;
      // The rewrite writes the whole new copy (table and indexes) before it drops the old one.
      if (f && f.availBytes < r.total_bytes) {
        throw new UnsafeToActError(`VACUUM FULL of ${schema}.${table} writes a new copy of up to ${humanBytes(r.total_bytes)} before it frees the old one; only ${humanBytes(f.availBytes)} is free on ${f.path}: expand the volume first`);
      }
      const data: VacuumFullPlan = {
        server: server.server,
        database,
        schema,
        table,
        oid: r.oid,
        relfilenode: r.relfilenode,
        totalBytes: r.total_bytes,
        deadTuples: r.dead,
        liveTuples: r.live,
        availBytes: f?.availBytes ?? null,
        lockTimeoutMs: Math.round(cfg.lockTimeoutSeconds * 1000),
        statementTimeoutMs: Math.round(cfg.statementTimeoutSeconds * 1000),
      };
      return {
        summary: `VACUUM FULL ${qualified(schema, table)} in ${database} on ${server.server}: ${humanBytes(r.total_bytes)} with ${r.dead} dead and ${r.live} live tuples; it ${lockLine(data)}, and needs up to ${humanBytes(r.total_bytes)} free${f ? ` (${humanBytes(f.availBytes)} free)` : ''}`,
        data,
      };
    },

    steps(plan, ctx): Step[] {
      const server = serverForAlert(ctx, plan.server);
      const name = qualified(plan.schema, plan.table);
      return [
        {
          name: 'vacuumFull',
          command: `${psqlCommand(ctx.config, `SET lock_timeout = '${plan.lockTimeoutMs}ms'; SET statement_timeout = '${plan.statementTimeoutMs}ms'; VACUUM FULL ${name};`, { server: plan.server, database: plan.database })}\n# ${lockLine(plan)}`,
          // A second VACUUM FULL of the same table is safe (only costly).
          idempotent: true,
          timeoutMs: plan.statementTimeoutMs + 60_000,
          async precondition() {
            const rows = await server.act<{ oid: number; total_bytes: number }>(TABLE_SQL, [plan.schema, plan.table], plan.database);
            const r = rows[0];
            if (r?.oid !== plan.oid) return fail(`${name} in ${plan.database} is not the table planned any more (dropped or recreated)`);
            // The approval may come much later than the plan: the free space is looked at again.
            const dir = ctx.config.postgres.dataDirectory;
            const f = dir ? await readFileSystem(dir) : null;
            if (f && f.availBytes < r.total_bytes) return fail(`${name} is ${humanBytes(r.total_bytes)} now and only ${humanBytes(f.availBytes)} is free on ${f.path}: the rewrite could fill the disk`);
            return ok(`${name} is the table planned (${humanBytes(r.total_bytes)})${f ? `; ${humanBytes(f.availBytes)} free` : ''}`);
          },
          async run(_prior, sc) {
            const client = await server.connect(plan.database, { statementTimeoutMs: plan.statementTimeoutMs });
            try {
              await client.query(`SET lock_timeout = '${plan.lockTimeoutMs}ms'`);
              await client.query(`SET statement_timeout = '${plan.statementTimeoutMs}ms'`);
              sc.assertCanAct();
              await client.query(`VACUUM FULL ${ident(plan.schema)}.${ident(plan.table)}`);
            } finally {
              await client.end().catch(() => undefined);
            }
            return { table: `${plan.schema}.${plan.table}` };
          },
          // VACUUM FULL writes the table to a new file: a new relfilenode is the proof it ran to the end.
          async check() {
            const rows = await server.act<{ relfilenode: number; total_bytes: number }>(TABLE_SQL, [plan.schema, plan.table], plan.database);
            const r = rows[0];
            if (!r) return fail(`${name} is gone`);
            if (r.relfilenode === plan.relfilenode) return fail(`${name} still has relfilenode ${plan.relfilenode}: it was not rewritten`);
            return ok(`${name} rewritten (relfilenode ${plan.relfilenode} → ${r.relfilenode}): ${humanBytes(plan.totalBytes)} → ${humanBytes(r.total_bytes)}, ${humanBytes(Math.max(0, plan.totalBytes - r.total_bytes))} given back to the file system`);
          },
        },
      ];
    },

    async diagnostics(plan, alert, ctx) {
      let server: PgServer;
      try {
        server = serverForAlert(ctx, plan?.server ?? alert.labels.server);
      } catch (err) {
        return { error: safeMessage(err) };
      }
      const out = await diskDiagnostics(ctx, server, ctx.config.handlers['disk-full'].largestTables);
      if (plan) out.table = { database: plan.database, table: qualified(plan.schema, plan.table), size: humanBytes(plan.totalBytes), dead_tuples: plan.deadTuples, live_tuples: plan.liveTuples, lock: 'ACCESS EXCLUSIVE (blocks every read and write of the table)' };
      return out;
    },
  };
}

function groupBy<T>(items: T[], key: (t: T) => string): T[][] {
  const m = new Map<string, T[]>();
  for (const i of items) m.set(key(i), [...(m.get(key(i)) ?? []), i]);
  return [...m.values()];
}
