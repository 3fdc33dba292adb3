/**
 * `dbpilot backup …` against the RDS stand-in: the validations of a restore and a point-in-time
 * recovery (target, snapshot, time), the plan with the equivalent `aws rds` command, refusal without
 * --yes when nobody can be asked, the typed confirmation on a terminal, and the commands as a user
 * runs them — `node bin/dbpilot.js backup …` in a child process whose AWS credentials come from the
 * SDK's default chain (the environment), on a real terminal (script(1)) for the confirmation.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { Store } from '../../src/store/store.js';
import { runList, runPitr, runRestore, type BackupIO } from '../../src/cli-backup.js';
import { createBackups, type AwsConfig, type RdsBackups } from '../../src/scheduler/backups.js';
import { captureLogger } from '../support/remediation.js';
import { RdsStandin, TEST_CREDENTIALS, awsConfigFor, standinEnv } from '../support/rds-standin.js';

const BIN = fileURLToPath(new URL('../../bin/dbpilot.js', import.meta.url));
const standin = new RdsStandin({ restoreDelayMs: 100 });
let dir = '';
let configPath = '';
let aws: AwsConfig;
let backups: RdsBackups;

function io(answers: string[] = [], interactive = false): BackupIO & { lines: string[]; asked: string[] } {
  const lines: string[] = [];
  const asked: string[] = [];
  return {
    lines,
    asked,
    interactive,
    out: (l) => void lines.push(...l.split('\n')),
    ask: async (q) => {
      asked.push(q);
      return answers.shift() ?? '';
    },
  };
}

function seed(): void {
  standin.instances.clear();
  standin.snapshots.clear();
  standin.requests.length = 0;
  standin.seedInstance({ id: 'lomash-wood-prod' });
  standin.seedSnapshot({ id: 'lomash-wood-manual-202602181430', instance: 'lomash-wood-prod', createdAt: new Date('2026-02-18T14:30:05Z'), tags: { 'dbpilot.io/managed-by': 'dbpilot', 'dbpilot.io/reason': 'scheduled', 'dbpilot.io/requested-by': 'dbpilot-0/7/a' } });
  standin.seedSnapshot({ id: 'before-upgrade', instance: 'lomash-wood-prod', createdAt: new Date('2026-02-10T09:00:00Z') });
  standin.seedSnapshot({ id: 'rds:lomash-wood-prod-2026-02-18-02-00', instance: 'lomash-wood-prod', type: 'automated', createdAt: new Date('2026-02-18T02:00:00Z') });
  standin.seedSnapshot({ id: 'lomash-wood-manual-202602190300', instance: 'lomash-wood-prod', status: 'creating', percent: 40, createdAt: new Date() });
}

beforeAll(async () => {
  await standin.start();
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-backup-cli-'));
  aws = parseConfig({ aws: awsConfigFor(standin) }, {}).aws!;
  const { logger } = captureLogger('warn');
  backups = await createBackups(aws, { store: null, logger, credentials: TEST_CREDENTIALS });
  configPath = path.join(dir, 'dbpilot.yaml');
  writeFileSync(configPath, stringify({ logLevel: 'warn', aws: awsConfigFor(standin), store: { path: path.join(dir, 'dbpilot.sqlite') } }));
});
afterAll(async () => {
  backups.close();
  await standin.close();
  rmSync(dir, { recursive: true, force: true });
});
beforeEach(seed);

describe('restore --snapshot ID --target NEW_ID', () => {
  it('shows the plan and the equivalent aws command, and without --yes and without a terminal does nothing', async () => {
    const o = io();
    expect(await runRestore(backups, aws, { snapshot: 'lomash-wood-manual-202602181430', target: 'lomash-wood-prod-restored' }, o)).toBe(false);
    const text = o.lines.join('\n');
    expect(text).toContain('plan (nothing has been changed yet)');
    expect(text).toContain('lomash-wood-manual-202602181430: 2026-02-18T14:30:05Z, 100 GiB, available, dbpilot: scheduled (dbpilot-0/7/a)');
    expect(text).toContain(
      [
        'aws rds restore-db-instance-from-db-snapshot \\',
        '  --region eu-west-2 \\',
        '  --db-instance-identifier lomash-wood-prod-restored \\',
        '  --db-snapshot-identifier lomash-wood-manual-202602181430 \\',
        '  --db-instance-class db.r6g.large \\',
        '  --db-subnet-group-name lomash-wood-db \\',
        '  --vpc-security-group-ids sg-0a1b2c3d4e5f60718 \\',
        '  --db-parameter-group-name lomash-wood-postgres15 \\',
        '  --multi-az \\',
        '  --tags Key=dbpilot.io/managed-by,Value=dbpilot Key=dbpilot.io/restored-from,Value=snapshot:lomash-wood-manual-202602181430',
      ].join('\n'),
    );
    expect(text).toMatch(/Not restoring: nothing was changed.*--yes/);
    expect(standin.calls('RestoreDBInstanceFromDBSnapshot')).toEqual([]);
  });

  it('on a terminal, restores only when the new instance’s name is typed', async () => {
    const no = io(['y'], true);
    expect(await runRestore(backups, aws, { snapshot: 'lomash-wood-manual-202602181430', target: 'lomash-wood-prod-restored' }, no)).toBe(false);
    expect(no.asked[0]).toMatch(/Type the new instance's name \(lomash-wood-prod-restored\)/);
    expect(standin.calls('RestoreDBInstanceFromDBSnapshot')).toEqual([]);
    const yes = io(['lomash-wood-prod-restored'], true);
    expect(await runRestore(backups, aws, { snapshot: 'lomash-wood-manual-202602181430', target: 'lomash-wood-prod-restored', wait: true }, yes)).toBe(true);
    const [call] = standin.calls('RestoreDBInstanceFromDBSnapshot');
    // What was sent is what the shown command says.
    expect(call!.params).toMatchObject({
      DBInstanceIdentifier: 'lomash-wood-prod-restored',
      DBSnapshotIdentifier: 'lomash-wood-manual-202602181430',
      DBInstanceClass: 'db.r6g.large',
      DBSubnetGroupName: 'lomash-wood-db',
      'VpcSecurityGroupIds.VpcSecurityGroupId.1': 'sg-0a1b2c3d4e5f60718',
      DBParameterGroupName: 'lomash-wood-postgres15',
      MultiAZ: 'true',
    });
    const restored = standin.instances.get('lomash-wood-prod-restored')!;
    expect(restored).toMatchObject({ status: 'available', subnetGroup: 'lomash-wood-db', restoredFrom: { snapshot: 'lomash-wood-manual-202602181430' } });
    expect(yes.lines.join('\n')).toMatch(/lomash-wood-prod-restored is available at lomash-wood-prod-restored\.cstandin\.eu-west-2\.rds\.amazonaws\.com:5432/);
    // The production instance was not touched.
    expect(standin.instances.get('lomash-wood-prod')!.status).toBe('available');
  });

  it.each([
    ['the production identifier', 'lomash-wood-prod', 'DBPILOT_RDS_TARGET_IS_PRODUCTION', /production instance.*NEW instance/],
    ['the production identifier in capitals', 'LOMASH-WOOD-PROD', 'DBPILOT_RDS_TARGET_IS_PRODUCTION', /production instance/],
    ['an invalid RDS identifier', 'restored--copy', 'DBPILOT_RDS_BAD_TARGET', /two consecutive hyphens/],
    ['one that starts with a digit', '1restore', 'DBPILOT_RDS_BAD_TARGET', /begin with a letter/],
    ['one longer than 63', `r${'x'.repeat(63)}`, 'DBPILOT_RDS_BAD_TARGET', /1 to 63/],
  ])('refuses %s as target before anything is shown', async (_what, target, code, message) => {
    const o = io();
    await expect(runRestore(backups, aws, { snapshot: 'lomash-wood-manual-202602181430', target, yes: true }, o)).rejects.toMatchObject({ code, message: expect.stringMatching(message) });
    expect(o.lines).toEqual([]);
    expect(standin.calls('RestoreDBInstanceFromDBSnapshot')).toEqual([]);
  });

  it('refuses an existing instance as target (dbpilot checks; the stand-in would refuse as RDS does)', async () => {
    standin.seedInstance({ id: 'lomash-wood-prod-restored' });
    await expect(runRestore(backups, aws, { snapshot: 'lomash-wood-manual-202602181430', target: 'lomash-wood-prod-restored', yes: true }, io())).rejects.toMatchObject({ code: 'DBPILOT_RDS_TARGET_EXISTS' });
    await expect(
      backups.client.restoreFromSnapshot('lomash-wood-prod', { snapshotId: 'lomash-wood-manual-202602181430', target: 'lomash-wood-prod-restored', tags: {} }),
    ).rejects.toMatchObject({ code: 'DBPILOT_RDS_TARGET_EXISTS', details: { awsCode: 'DBInstanceAlreadyExists' } });
  });

  it('refuses a snapshot that does not exist or is not available', async () => {
    await expect(runRestore(backups, aws, { snapshot: 'nope', target: 'restored', yes: true }, io())).rejects.toMatchObject({ code: 'DBPILOT_RDS_SNAPSHOT_NOT_FOUND' });
    await expect(runRestore(backups, aws, { snapshot: 'lomash-wood-manual-202602190300', target: 'restored', yes: true }, io())).rejects.toMatchObject({ code: 'DBPILOT_RDS_SNAPSHOT_STATE', message: expect.stringMatching(/is creating/) });
  });
});

describe('pitr --time ISO --target NEW_ID', () => {
  const now = () => new Date();
  const ago = (ms: number) => new Date(Date.now() - ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

  it.each([
    ['not RFC 3339', '2026-02-18 14:30', /not an RFC 3339 time/],
    ['without a zone', '2026-02-18T14:30:00', /not an RFC 3339 time with a zone/],
    ['not a real date', '2026-02-30T14:30:00Z', /not a real date/],
    ['in the future', new Date(Date.now() + 3600_000).toISOString(), /is in the future/],
    ['before the earliest restorable time', ago(8 * 86_400_000), /before the earliest restorable time/],
    ['after LatestRestorableTime', ago(60_000), /after the latest restorable time .* about five minutes/],
  ])('refuses a time %s', async (_what, time, message) => {
    await expect(runPitr(backups, aws, { time, target: 'lomash-wood-pitr', yes: true }, io(), now)).rejects.toMatchObject({ code: 'DBPILOT_RDS_BAD_TIME', message: expect.stringMatching(message) });
    expect(standin.calls('RestoreDBInstanceToPointInTime')).toEqual([]);
  });

  it('refuses when the instance has no automated backups', async () => {
    standin.instances.get('lomash-wood-prod')!.backupRetentionDays = 0;
    await expect(runPitr(backups, aws, { time: ago(3600_000), target: 'lomash-wood-pitr', yes: true }, io(), now)).rejects.toMatchObject({ code: 'DBPILOT_RDS_PITR_DISABLED' });
  });

  it('shows the window, the plan and the command; restores with --yes to the time asked', async () => {
    const time = ago(3600_000);
    const o = io();
    expect(await runPitr(backups, aws, { time, target: 'lomash-wood-pitr', yes: true }, o, now)).toBe(true);
    const text = o.lines.join('\n');
    expect(text).toMatch(/restorable {5}\d{4}-\d\d-\d\dT\S+Z to \S+Z/);
    expect(text).toContain(`aws rds restore-db-instance-to-point-in-time \\\n  --region eu-west-2 \\\n  --source-db-instance-identifier lomash-wood-prod \\\n  --target-db-instance-identifier lomash-wood-pitr \\\n  --restore-time ${time} \\`);
    const [call] = standin.calls('RestoreDBInstanceToPointInTime');
    expect(call!.params).toMatchObject({ SourceDBInstanceIdentifier: 'lomash-wood-prod', TargetDBInstanceIdentifier: 'lomash-wood-pitr', RestoreTime: time, DBSubnetGroupName: 'lomash-wood-db' });
    expect(standin.instances.get('lomash-wood-pitr')!.restoredFrom).toEqual({ source: 'lomash-wood-prod', time: time.replace('Z', '.000Z') });
  });

  it('the stand-in refuses a restore time outside the window as RDS does', async () => {
    await expect(backups.client.restoreToTime({ source: 'lomash-wood-prod', target: 'x-pitr', time: new Date(Date.now() - 30 * 86_400_000), tags: {} })).rejects.toMatchObject({
      code: 'DBPILOT_RDS_INVALID_REQUEST',
      message: expect.stringMatching(/outside the restorable window/),
    });
  });
});

describe('list', () => {
  it('shows time, size, state and who made it, newest first, and the point-in-time window', async () => {
    const o = io();
    await runList(backups, aws, {}, o);
    const text = o.lines.join('\n');
    const rows = o.lines.filter((l) => /lomash-wood|before-upgrade|rds:/.test(l) && l.includes('│'));
    expect(rows.map((r) => /(lomash-wood-manual-\d+|before-upgrade|rds:\S+)/.exec(r)![1])).toEqual([
      'lomash-wood-manual-202602190300',
      'lomash-wood-manual-202602181430',
      'rds:lomash-wood-prod-2026-02-18-02-00',
      'before-upgrade',
    ]);
    expect(rows[0]).toMatch(/creating 40 %/);
    expect(rows[1]).toMatch(/2026-02-18T14:30:05Z.*manual.*available.*100 GiB.*dbpilot: scheduled \(dbpilot-0\/7\/a\)/);
    expect(rows[2]).toMatch(/automated.*RDS automated backup/);
    expect(rows[3]).toMatch(/not dbpilot \(no dbpilot tag\)/);
    expect(text).toMatch(/Point-in-time recovery: any second from \S+Z to \S+Z/);
  });
});

// ---------------------------------------------------------------------------------------------------
// As a user runs it

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], extraEnv: Record<string, string> = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!/^(DBPILOT_|VITEST|AWS_)/.test(k) && k !== 'NODE_OPTIONS') env[k] = v;
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...env, ...standinEnv(), DBPILOT_CONFIG: configPath, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 45_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('the dbpilot command', () => {
  it('backup restore without --yes in a pipe: the plan, exit 1, nothing restored; with --yes it restores', async () => {
    const refused = await cli(['backup', 'restore', '--snapshot', 'lomash-wood-manual-202602181430', '--target', 'lomash-wood-prod-restored']);
    expect(refused.code, refused.stderr).toBe(1);
    expect(refused.stdout).toContain('aws rds restore-db-instance-from-db-snapshot');
    expect(refused.stdout).toContain('Not restoring: nothing was changed');
    expect(standin.calls('RestoreDBInstanceFromDBSnapshot')).toEqual([]);
    const done = await cli(['backup', 'restore', '--snapshot', 'lomash-wood-manual-202602181430', '--target', 'lomash-wood-prod-restored', '--yes']);
    expect(done.code, done.stderr).toBe(0);
    expect(done.stdout).toContain('Restore started: lomash-wood-prod-restored is creating.');
    expect(done.stdout).toContain('aws rds wait db-instance-available --region eu-west-2 --db-instance-identifier lomash-wood-prod-restored');
    // Signed with the credentials of the default chain (the environment), which appear nowhere.
    expect(standin.calls('RestoreDBInstanceFromDBSnapshot')[0]!.accessKeyId).toBe(TEST_CREDENTIALS.accessKeyId);
    for (const r of [refused, done]) expect(r.stdout + r.stderr).not.toContain(TEST_CREDENTIALS.secretAccessKey);
    // No Node-version warning of the SDK on the on-call's terminal.
    expect(done.stderr).not.toMatch(/NodeVersionSupportWarning/);
  });

  it('backup pitr refuses a bad time and the production target with the reason and exit 2', async () => {
    const bad = await cli(['backup', 'pitr', '--time', 'yesterday', '--target', 'lomash-wood-pitr', '--yes']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/dbpilot: --time "yesterday" is not an RFC 3339 time with a zone, e\.g\. 2026-02-18T14:30:00Z \[DBPILOT_RDS_BAD_TIME\]/);
    const prod = await cli(['backup', 'pitr', '--time', new Date(Date.now() - 3600_000).toISOString(), '--target', 'lomash-wood-prod', '--yes']);
    expect(prod.code).toBe(2);
    expect(prod.stderr).toMatch(/is the production instance .*\[DBPILOT_RDS_TARGET_IS_PRODUCTION\]/);
    expect(standin.calls('RestoreDBInstanceToPointInTime')).toEqual([]);
  });

  it('backup create takes a snapshot, waits for it and records it in the store; backup list shows it', async () => {
    standin.snapshots.delete('lomash-wood-manual-202602190300');
    const r = await cli(['backup', 'create', '--reason', 'before the orders migration']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/lomash-wood-manual-\d{12} is available \(/);
    const id = /(lomash-wood-manual-\d{12}) is available/.exec(r.stdout)![1]!;
    expect(standin.snapshots.get(id)!.tags).toMatchObject({ 'dbpilot.io/managed-by': 'dbpilot', 'dbpilot.io/reason': 'cli: before the orders migration' });
    const store = new Store(path.join(dir, 'dbpilot.sqlite'), { readonly: true });
    try {
      expect(store.listSnapshots('lomash-wood-prod')[0]).toMatchObject({ snapshotId: id, status: 'available', trigger: 'cli', reason: 'cli: before the orders migration', requestedBy: expect.stringMatching(/^cli:/) });
    } finally {
      store.close();
    }
    const list = await cli(['backup', 'list', '--json']);
    expect(list.code, list.stderr).toBe(0);
    const parsed = JSON.parse(list.stdout) as { snapshots: { id: string; madeBy: string }[]; restoreWindow: unknown };
    expect(parsed.snapshots[0]).toMatchObject({ id, madeBy: expect.stringMatching(/^dbpilot: cli: before the orders migration \(cli:/) });
    expect(parsed.restoreWindow).toMatchObject({ earliest: expect.any(String), latest: expect.any(String) });
  });

  it.skipIf(spawnSync('script', ['--version']).status !== 0)('on a real terminal it asks, and restores when the name is typed', async () => {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!/^(DBPILOT_|VITEST|AWS_)/.test(k) && k !== 'NODE_OPTIONS') env[k] = v;
    const cmd = `${process.execPath} ${BIN} backup restore --snapshot lomash-wood-manual-202602181430 --target lomash-wood-prod-tty`;
    const child = spawn('script', ['-qec', cmd, '/dev/null'], { env: { ...env, ...standinEnv(), DBPILOT_CONFIG: configPath }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes("Type the new instance's name") && !out.includes('(typed)')) {
        out += '(typed)';
        child.stdin.write('lomash-wood-prod-tty\r');
      }
    });
    const code = await new Promise<number | null>((resolve) => {
      const t = setTimeout(() => child.kill('SIGKILL'), 45_000);
      child.on('close', (c) => {
        clearTimeout(t);
        resolve(c);
      });
    });
    expect(code, out).toBe(0);
    expect(out).toContain('Restore started: lomash-wood-prod-tty is creating.');
    expect(standin.calls('RestoreDBInstanceFromDBSnapshot').map((c) => c.params.DBInstanceIdentifier)).toEqual(['lomash-wood-prod-tty']);
  });
});
