/**
 * `dbpilot backup create | list | restore | pitr`: the runbook's "Backup and Restore" section.
 *
 * - `create` takes a snapshot now, the way the schedule does (named, tagged, waited for, recorded in
 *   the store), and joins one already being made instead of starting a second.
 * - `list` shows what a person needs to pick a snapshot: when, size, state, who made it and why, and
 *   the window a point-in-time restore can use.
 * - `restore` and `pitr` are never automatic and always create a NEW instance: they validate
 *   everything first (the target is a valid RDS identifier, not the production instance, not an
 *   existing one; the snapshot exists and is available; the time is RFC 3339, not in the future and
 *   inside [earliest restorable time, LatestRestorableTime]), show the plan and the equivalent
 *   `aws rds …` command, and act only with --yes or when the person at the terminal types the new
 *   instance's name. Without a terminal and without --yes nothing is done (exit 1).
 *
 * The new instance gets the production instance's class, subnet group, security groups, parameter
 * group and Multi-AZ setting, so it lands in the same network with the same settings (RDS would
 * otherwise put it in the default VPC with default parameters).
 */
import { processIO, type CliIO } from './cli-io.js';
import { userInfo } from 'node:os';
import type { Command } from 'commander';
import Table from 'cli-table3';
import { loadConfig, type Config } from './config.js';
import { DbpilotError } from './errors.js';
import { createCliLogger, escapeControl, type Logger } from './logger.js';
import { Store } from './store/store.js';
import {
  MANAGED_BY_TAG,
  MANAGED_BY_VALUE,
  REASON_TAG,
  REQUESTED_BY_TAG,
  RESTORED_FROM_TAG,
  RdsError,
  instanceIdentifierProblem,
  parseRestoreTime,
  restoreFromSnapshotCommand,
  restoreTimeProblem,
  restoreToTimeCommand,
  tagValue,
  type InstanceInfo,
  type RestoreShape,
  type SnapshotInfo,
} from './integrations/rds.js';
import { createBackups, type AwsConfig, type RdsBackups } from './scheduler/backups.js';

/** What the commands print to and ask on (src/cli-io.ts). */
export type BackupIO = CliIO;

const show = (v: unknown) => escapeControl(String(v ?? ''));
const isoZ = (d: Date | null | undefined) => (d ? d.toISOString().replace('.000Z', 'Z') : '');

/** Who made a snapshot, in words, from its type and dbpilot's tags. */
export function madeBy(s: SnapshotInfo): string {
  if (s.type === 'automated') return 'RDS automated backup';
  if (s.type === 'awsbackup') return 'AWS Backup';
  if (!s.dbpilot) return 'not dbpilot (no dbpilot tag)';
  const who = s.tags[REQUESTED_BY_TAG];
  const why = s.tags[REASON_TAG];
  return `dbpilot${why ? `: ${why}` : ''}${who ? ` (${who})` : ''}`;
}

function requireAws(config: Config): AwsConfig {
  if (!config.aws) throw new DbpilotError('DBPILOT_RDS_NOT_CONFIGURED', 'no `aws:` block in the configuration: dbpilot backup works on the RDS instance named by aws.dbInstanceIdentifier');
  return config.aws;
}

/** The target of a restore: a valid RDS identifier, never the production instance, not an instance that exists. */
export async function checkTarget(backups: RdsBackups, target: string): Promise<string> {
  const problem = instanceIdentifierProblem(target);
  if (problem) throw new RdsError('DBPILOT_RDS_BAD_TARGET', `--target ${JSON.stringify(target)}: ${problem}`);
  const id = target.toLowerCase();
  if (id === backups.instance) {
    throw new RdsError('DBPILOT_RDS_TARGET_IS_PRODUCTION', `--target ${target} is the production instance (aws.dbInstanceIdentifier): a restore always creates a NEW instance; name it e.g. ${backups.instance}-restored`);
  }
  const existing = await backups.client.describeInstance(id);
  if (existing) throw new RdsError('DBPILOT_RDS_TARGET_EXISTS', `--target ${id} already exists (status ${existing.status}): a restore never overwrites an instance; pick a new name`);
  return id;
}

function shapeOf(prod: InstanceInfo, instanceClass: string | undefined): RestoreShape {
  return {
    instanceClass: instanceClass ?? prod.instanceClass ?? undefined,
    subnetGroup: prod.subnetGroup ?? undefined,
    securityGroupIds: prod.securityGroupIds,
    // default.* groups are what RDS uses anyway; a custom one must be named or the restore gets the default.
    parameterGroup: prod.parameterGroup && !prod.parameterGroup.startsWith('default.') ? prod.parameterGroup : undefined,
    multiAZ: prod.multiAZ,
  };
}

function shapeLines(prod: InstanceInfo, shape: RestoreShape): string[] {
  return [
    `  settings from ${prod.id}: class ${shape.instanceClass ?? '(the snapshot’s)'}, subnet group ${shape.subnetGroup ?? '(default VPC!)'}, security groups ${shape.securityGroupIds?.join(' ') || '(default)'},`,
    `                 parameter group ${shape.parameterGroup ?? '(default)'}, Multi-AZ ${shape.multiAZ ? 'yes' : 'no'}`,
  ];
}

/** --yes, or the person at the terminal types the new instance's name; else nothing is done. */
async function confirmed(io: BackupIO, yes: boolean | undefined, target: string, what: string): Promise<boolean> {
  if (yes) return true;
  if (!io.interactive) {
    io.out(`\nNot ${what}: nothing was changed. There is no terminal to confirm on; run again with --yes to go ahead.`);
    return false;
  }
  const answer = (await io.ask(`\nType the new instance's name (${target}) to start, anything else cancels: `)).trim();
  if (answer.toLowerCase() === target) return true;
  io.out(`Cancelled: nothing was changed.`);
  return false;
}

function nextSteps(io: BackupIO, target: string, region: string): void {
  io.out('');
  io.out(`Next (docs/disaster-recovery/restore.md): wait until it is available —`);
  io.out(`  aws rds wait db-instance-available --region ${region} --db-instance-identifier ${target}`);
  io.out(`then check it ("Check the restored instance") before repointing any service ("Repoint the services").`);
}

async function waitAvailable(backups: RdsBackups, id: string, minutes: number, pollMs: number, io: BackupIO): Promise<InstanceInfo> {
  const deadline = Date.now() + minutes * 60_000;
  let last = '';
  for (;;) {
    const i = await backups.client.describeInstance(id);
    if (i && i.status !== last) io.out(`  ${new Date().toISOString()}  ${id}: ${i.status}`);
    last = i?.status ?? '';
    if (i?.status === 'available') return i;
    if (i && ['failed', 'incompatible-restore', 'incompatible-parameters', 'incompatible-network'].includes(i.status)) throw new RdsError('DBPILOT_RDS_RESTORE_FAILED', `${id} ended ${i.status}: see its RDS events`);
    if (Date.now() > deadline) throw new RdsError('DBPILOT_RDS_RESTORE_TIMEOUT', `${id} is still ${last || 'not visible'} after ${minutes} min; it may still finish: aws rds wait db-instance-available --db-instance-identifier ${id}`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

export interface RestoreOptions {
  snapshot: string;
  target: string;
  yes?: boolean;
  instanceClass?: string;
  wait?: boolean;
  waitMinutes?: number;
}

/** `backup restore`: validate, show the plan and the aws command, confirm, restore. Returns whether it started a restore. */
export async function runRestore(backups: RdsBackups, aws: AwsConfig, o: RestoreOptions, io: BackupIO): Promise<boolean> {
  const target = await checkTarget(backups, o.target);
  const snap = await backups.client.describeSnapshot(backups.instance, o.snapshot);
  if (!snap) throw new RdsError('DBPILOT_RDS_SNAPSHOT_NOT_FOUND', `there is no snapshot ${o.snapshot} in ${aws.region} (\`dbpilot backup list\` shows the ones there are)`);
  if (snap.status !== 'available') throw new RdsError('DBPILOT_RDS_SNAPSHOT_STATE', `snapshot ${snap.id} is ${snap.status}, not available: RDS restores only an available snapshot`);
  const prod = await backups.describeInstance();
  const shape = shapeOf(prod, o.instanceClass);
  const input = { snapshotId: snap.id, target, ...shape, tags: { [MANAGED_BY_TAG]: MANAGED_BY_VALUE, [RESTORED_FROM_TAG]: tagValue(`snapshot:${snap.id}`) } };
  io.out('Restore from a snapshot — plan (nothing has been changed yet)');
  io.out(`  snapshot       ${show(snap.id)}: ${isoZ(snap.createdAt)}, ${snap.allocatedGiB ?? '?'} GiB, ${show(snap.status)}, ${show(madeBy(snap))}`);
  if (snap.instance.toLowerCase() !== backups.instance) io.out(`  NOTE           this is a snapshot of ${show(snap.instance)}, not of ${backups.instance}`);
  io.out(`  new instance   ${target} (a NEW instance; ${backups.instance} is not touched)`);
  for (const l of shapeLines(prod, shape)) io.out(l);
  io.out('\nThe same with the AWS CLI:');
  io.out(restoreFromSnapshotCommand(input, aws.region));
  if (!(await confirmed(io, o.yes, target, 'restoring'))) return false;
  const started = await backups.client.restoreFromSnapshot(backups.instance, input);
  io.out(`\nRestore started: ${started.id} is ${started.status}.`);
  if (o.wait) {
    const done = await waitAvailable(backups, target, o.waitMinutes ?? 120, aws.snapshotPollSeconds * 1000, io);
    io.out(`${done.id} is available at ${done.endpoint ?? '(no endpoint yet)'}.`);
  } else nextSteps(io, target, aws.region);
  return true;
}

export interface PitrOptions {
  time: string;
  target: string;
  yes?: boolean;
  instanceClass?: string;
  wait?: boolean;
  waitMinutes?: number;
}

/** `backup pitr`: the time validated against the restorable window, then as restore. */
export async function runPitr(backups: RdsBackups, aws: AwsConfig, o: PitrOptions, io: BackupIO, now: () => Date = () => new Date()): Promise<boolean> {
  const time = parseRestoreTime(o.time);
  if (time.getTime() > now().getTime()) throw new RdsError('DBPILOT_RDS_BAD_TIME', `--time ${isoZ(time)} is in the future (now is ${isoZ(now())})`);
  const target = await checkTarget(backups, o.target);
  const { window, info: prod } = await backups.client.restoreWindow(backups.instance);
  if (!window) throw new RdsError('DBPILOT_RDS_PITR_DISABLED', `point-in-time recovery is not available for ${backups.instance} (backup retention ${prod.backupRetentionDays} days, no automated backups): restore from a snapshot instead`);
  const problem = restoreTimeProblem(time, window, now());
  if (problem) throw new RdsError('DBPILOT_RDS_BAD_TIME', `--time ${problem}`);
  const shape = shapeOf(prod, o.instanceClass);
  const input = { source: backups.instance, target, time, ...shape, tags: { [MANAGED_BY_TAG]: MANAGED_BY_VALUE, [RESTORED_FROM_TAG]: tagValue(`${backups.instance}@${isoZ(time)}`) } };
  io.out('Point-in-time recovery — plan (nothing has been changed yet)');
  io.out(`  source         ${backups.instance} as it was at ${isoZ(time)}`);
  io.out(`  restorable     ${isoZ(window.earliest)} to ${isoZ(window.latest)}`);
  io.out(`  new instance   ${target} (a NEW instance; ${backups.instance} is not touched)`);
  for (const l of shapeLines(prod, shape)) io.out(l);
  io.out('\nThe same with the AWS CLI:');
  io.out(restoreToTimeCommand(input, aws.region));
  if (!(await confirmed(io, o.yes, target, 'restoring'))) return false;
  const started = await backups.client.restoreToTime(input);
  io.out(`\nPoint-in-time recovery started: ${started.id} is ${started.status}.`);
  if (o.wait) {
    const done = await waitAvailable(backups, target, o.waitMinutes ?? 120, aws.snapshotPollSeconds * 1000, io);
    io.out(`${done.id} is available at ${done.endpoint ?? '(no endpoint yet)'}.`);
  } else nextSteps(io, target, aws.region);
  return true;
}

/** `backup list`: the instance's snapshots, newest first, and the point-in-time window. */
export async function runList(backups: RdsBackups, aws: AwsConfig, o: { json?: boolean; limit?: number }, io: BackupIO): Promise<void> {
  const snaps = (await backups.client.listSnapshots(backups.instance)).slice(0, o.limit ?? 50);
  const { window } = await backups.client.restoreWindow(backups.instance).catch(() => ({ window: null }));
  if (o.json) {
    io.out(
      JSON.stringify(
        { instance: backups.instance, region: aws.region, restoreWindow: window && { earliest: isoZ(window.earliest), latest: isoZ(window.latest) }, snapshots: snaps.map((s) => ({ ...s, createdAt: isoZ(s.createdAt), madeBy: madeBy(s) })) },
        null,
        2,
      ).replace(/[\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`),
    );
    return;
  }
  const t = new Table({ style: { head: [], border: [] }, head: ['Created (UTC)', 'Snapshot', 'Type', 'State', 'Size', 'Made by'] });
  for (const s of snaps) {
    const state = s.status === 'creating' && s.percentProgress !== null ? `creating ${s.percentProgress} %` : s.status;
    t.push([isoZ(s.createdAt), s.id, s.type, state, s.allocatedGiB === null ? '' : `${s.allocatedGiB} GiB`, madeBy(s)].map(show));
  }
  io.out(`Snapshots of ${backups.instance} (${aws.region}), newest first:`);
  io.out(t.toString());
  io.out(
    window
      ? `Point-in-time recovery: any second from ${isoZ(window.earliest)} to ${isoZ(window.latest)} (dbpilot backup pitr --time … --target NEW_ID)`
      : 'Point-in-time recovery: not available (no automated backups)',
  );
}

export function registerBackupCommands(program: Command): void {
  const configOf = (): Config => loadConfig({ file: program.opts<{ config?: string }>().config }).config;
  const user = `cli:${userInfo().username}`;
  async function withBackups<T>(opts: { store: boolean }, fn: (b: RdsBackups, aws: AwsConfig, log: Logger) => Promise<T>): Promise<T> {
    const config = configOf();
    const aws = requireAws(config);
    const logger = createCliLogger(config.logLevel);
    const store = opts.store ? new Store(config.store.path) : null;
    const backups = await createBackups(aws, { store, logger, owner: user });
    try {
      return await fn(backups, aws, logger);
    } finally {
      backups.close();
      store?.close();
    }
  }
  const positive = (name: string) => (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new DbpilotError('DBPILOT_BAD_ARGUMENT', `${name} must be a positive number (got ${JSON.stringify(v)})`);
    return n;
  };

  const backup = program.command('backup').description('RDS snapshots of aws.dbInstanceIdentifier: create, list, restore from a snapshot, point-in-time recovery');

  backup
    .command('create')
    .description('take a manual snapshot now (named, tagged, waited for until available, recorded), as the schedule does')
    .option('--reason <text>', 'why (stored in the dbpilot.io/reason tag)', 'manual')
    .option('--json', 'print JSON')
    .action(async (o: { reason: string; json?: boolean }) => {
      await withBackups({ store: true }, async (b) => {
        const io = processIO();
        if (!o.json) io.out(`Taking a snapshot of ${b.instance} and waiting until it is available …`);
        const r = await b.snapshot(`cli: ${o.reason}`, { trigger: 'cli', requestedBy: user });
        if (o.json) io.out(JSON.stringify(r, null, 2));
        else io.out(`${r.snapshotId} is available (${r.snapshotTime ?? '?'}, ${r.sizeGiB ?? '?'} GiB) after ${Math.round(r.waitedMs / 1000)} s${r.joined ? ' — a snapshot already being made was used' : ''}.`);
      });
    });

  backup
    .command('list')
    .description('the instance’s snapshots, newest first: time, size, state, who made it; and the point-in-time window')
    .option('--json', 'print JSON')
    .option('-n, --limit <n>', 'at most this many', '50')
    .action(async (o: { json?: boolean; limit: string }) => {
      await withBackups({ store: false }, (b, aws) => runList(b, aws, { json: Boolean(o.json), limit: positive('--limit')(o.limit) }, processIO()));
    });

  backup
    .command('restore')
    .description('restore a snapshot to a NEW instance (never automatic: shows the plan and the aws command, acts with --yes or a typed confirmation)')
    .requiredOption('--snapshot <id>', 'the snapshot (dbpilot backup list)')
    .requiredOption('--target <new-id>', 'the new instance’s identifier (never the production one)')
    .option('--instance-class <class>', 'another class than production’s')
    .option('-y, --yes', 'restore without asking')
    .option('--wait', 'wait until the new instance is available')
    .option('--wait-minutes <n>', 'how long --wait waits', '120')
    .action(async (o: { snapshot: string; target: string; instanceClass?: string; yes?: boolean; wait?: boolean; waitMinutes: string }) => {
      await withBackups({ store: false }, async (b, aws) => {
        const ok = await runRestore(b, aws, { ...o, waitMinutes: positive('--wait-minutes')(o.waitMinutes) }, processIO());
        if (!ok) process.exitCode = 1;
      });
    });

  backup
    .command('pitr')
    .description('point-in-time recovery to a NEW instance (never automatic: validates the time, shows the plan and the aws command, acts with --yes or a typed confirmation)')
    .requiredOption('--time <iso>', 'RFC 3339 time with a zone, e.g. 2026-02-18T14:30:00Z')
    .requiredOption('--target <new-id>', 'the new instance’s identifier (never the production one)')
    .option('--instance-class <class>', 'another class than production’s')
    .option('-y, --yes', 'restore without asking')
    .option('--wait', 'wait until the new instance is available')
    .option('--wait-minutes <n>', 'how long --wait waits', '120')
    .action(async (o: { time: string; target: string; instanceClass?: string; yes?: boolean; wait?: boolean; waitMinutes: string }) => {
      await withBackups({ store: false }, async (b, aws) => {
        const ok = await runPitr(b, aws, { ...o, waitMinutes: positive('--wait-minutes')(o.waitMinutes) }, processIO());
        if (!ok) process.exitCode = 1;
      });
    });
}
