/**
 * `dbpilot drill <scenario> --target-config FILE --i-know-this-is-staging` through the real CLI.
 *
 * The "staging target" is a PostgreSQL 15 primary with a streaming replica that this file starts (not
 * the drill): password (SCRAM) authentication for every role but postgres, as a staging server would
 * ask, so the drill's own login role really logs in with its password. Beside it, what the target's
 * configuration names and the drill must never use: a PagerDuty stand-in (the target's paging), a
 * Kubernetes API (a listener counting connections: no Lease, no object), and the target's own
 * long-running query in a database of its own, which the slow-query drill must leave alone.
 *
 * Refusals are checked against a target whose every address is a listener that counts connections:
 * refused means nothing was contacted.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DrillName } from '../../src/drill/names.js';
import { PagerDutyStandin } from '../../src/drill/sandbox/pagerduty-standin.js';
import { DrillRefused, loadStagingTarget } from '../../src/drill/staging.js';
import { startPgCluster, type PgCluster } from '../support/pg-cluster.js';
import { drill, leftovers, type Json } from './support.js';
import { canConnect } from '../support/ports.js';

const KEYS = { 'lead-dba': 'L'.repeat(32), 'em-dba': 'E'.repeat(32), 'oncall-backend': 'O'.repeat(32), devops: 'D'.repeat(32) };

/** A TCP listener that counts the connections it is offered and answers none. */
async function countingListener(): Promise<{ port: number; connections: () => number; close: () => Promise<void> }> {
  let n = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    n++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    connections: () => n,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

/** Files of this test file: support.ts removes `tmps` after every test, these go with the file's afterAll. */
const ours: string[] = [];
afterAll(() => {
  for (const d of ours.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function writeFile(name: string, text: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dbpilot-staging-test-'));
  ours.push(dir);
  const file = path.join(dir, name);
  fs.writeFileSync(file, text);
  return file;
}

async function q<T extends pg.QueryResultRow>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(sql, params)).rows;
  } finally {
    await c.end();
  }
}

describe('dbpilot drill --target-config: refusals, before anything is contacted', () => {
  let trap: Awaited<ReturnType<typeof countingListener>>;
  let kubeconfig: string;
  beforeAll(async () => {
    trap = await countingListener();
    kubeconfig = writeFile(
      'kubeconfig',
      `apiVersion: v1\nkind: Config\nclusters: [{ name: c, cluster: { server: "http://127.0.0.1:${trap.port}" } }]\nusers: [{ name: u, user: { token: t } }]\ncontexts: [{ name: x, context: { cluster: c, user: u, namespace: lomash-wood } }]\ncurrent-context: x\n`,
    );
  });
  afterAll(() => trap.close());

  const target = (environment: string | null, extra = '') =>
    writeFile(
      'target.yaml',
      `${environment === null ? '' : `environment: ${environment}\n`}postgres:\n  primary: { url: "postgresql://postgres@127.0.0.1:${trap.port}/postgres" }\n  replicas: [{ url: "postgresql://postgres@127.0.0.1:${trap.port}/postgres" }]\nredis: { url: "redis://127.0.0.1:${trap.port}" }\nkubernetes: { kubeconfig: "${kubeconfig}", namespace: lomash-wood }\n${extra}`,
    );

  const cases: [string, string[], RegExp][] = [
    ['no --i-know-this-is-staging', ['slow-query', '--target-config', '{staging}'], /^dbpilot drill: --target-config \S+: a drill breaks its target on purpose; add --i-know-this-is-staging to confirm/],
    ['the flag without a target', ['slow-query', '--i-know-this-is-staging'], /^dbpilot drill: --i-know-this-is-staging confirms a --target-config, and none was given/],
    ['environment unset (production by default)', ['slow-query', '--target-config', '{unset}', '--i-know-this-is-staging'], /: it does not set environment \(production by default\); a drill runs only against a configuration that says environment: staging in the file itself\n$/],
    ['environment: production', ['replication-lag', '--target-config', '{production}', '--i-know-this-is-staging'], /: its environment is production; a drill runs only/],
    ['environment: development', ['slow-query', '--target-config', '{development}', '--i-know-this-is-staging'], /: its environment is development; a drill runs only/],
    ['environment: ${DEPLOY_ENV}, with DEPLOY_ENV=staging in the shell', ['slow-query', '--target-config', '{fromShell}', '--i-know-this-is-staging'], /: its environment is "\$\{DEPLOY_ENV\}", taken from the shell; a drill runs only/],
    ['an empty path', ['slow-query', '--target-config', '', '--i-know-this-is-staging'], /^dbpilot drill: --target-config needs the path of a dbpilot configuration file\n$/],
    ['a drill that needs the hosts', ['primary-failure', '--target-config', '{staging}', '--i-know-this-is-staging'], /^dbpilot drill: primary-failure runs only on the drill's own sandbox, not on a staging target: its break is a kill -9 of the primary postmaster, which needs a shell on the database host.*On a staging target: slow-query, replication-lag\n$/],
    ['redis-failure', ['redis-failure', '--target-config', '{staging}', '--i-know-this-is-staging'], /redis-failure runs only on the drill's own sandbox.*will not SHUTDOWN a Redis/],
    ['prisma-migration', ['prisma-migration', '--target-config', '{staging}', '--i-know-this-is-staging'], /prisma-migration runs only on the drill's own sandbox.*_prisma_migrations/],
    ['disk-pressure', ['disk-pressure', '--target-config', '{staging}', '--i-know-this-is-staging'], /disk-pressure runs only on the drill's own sandbox.*postgres\.dataDirectory/],
    ['--with-prometheus', ['slow-query', '--target-config', '{staging}', '--i-know-this-is-staging', '--with-prometheus'], /^dbpilot drill: --with-prometheus drills the alert path on the sandbox/],
    ['replication-lag without replicas', ['replication-lag', '--target-config', '{noReplicas}', '--i-know-this-is-staging'], /replication-lag pauses replay on a replica, and postgres\.replicas is empty\n$/],
    ['an invalid configuration', ['slow-query', '--target-config', '{invalid}', '--i-know-this-is-staging'], /--target-config \S+: .*postgres\.longRunningQuerySeconds/],
    ['a missing file', ['slow-query', '--target-config', '/nonexistent/target.yaml', '--i-know-this-is-staging'], /--target-config \/nonexistent\/target\.yaml: cannot read \/nonexistent\/target\.yaml: ENOENT\n$/],
  ];

  /** Refused by the CLI itself, or the ones that show its exit code and output: run as `dbpilot drill`. The others are loadStagingTarget's, called in process. */
  const THROUGH_CLI = ['no --i-know-this-is-staging', 'the flag without a target', 'environment unset (production by default)', 'a drill that needs the hosts', '--with-prometheus'];

  // The CLI ones all at once (each is a CLI start): none may contact anything, so the count stays 0 throughout.
  it(`${cases.length} refusals (${cases.map((c) => c[0]).join('; ')}): exit 2, the reason, nothing contacted, nothing left`, async () => {
    const files: Record<string, string> = {
      '{staging}': target('staging'),
      '{unset}': target(null),
      '{production}': target('production'),
      '{development}': target('development'),
      '{fromShell}': target('${DEPLOY_ENV}'),
      '{noReplicas}': writeFile('target.yaml', `environment: staging\npostgres:\n  primary: { url: "postgresql://postgres@127.0.0.1:${trap.port}/postgres" }\n`),
      '{invalid}': writeFile('target.yaml', `environment: staging\npostgres:\n  longRunningQuerySeconds: -1\n`),
    };
    const cli = cases.filter(([what]) => THROUGH_CLI.includes(what));
    expect(cli).toHaveLength(THROUGH_CLI.length);
    const ran = await Promise.all(cli.map(([, args]) => drill(args.map((a) => files[a] ?? a), { env: { DEPLOY_ENV: 'staging' } })));
    cli.forEach(([what, , why], i) => {
      const r = ran[i]!;
      expect(r.code, what).toBe(2);
      expect(r.stderr, what).toMatch(why);
      expect(r.stdout, what).toBe('');
      expect(leftovers(r.tmp), what).toEqual([]);
    });
    for (const [what, args, why] of cases.filter(([w]) => !THROUGH_CLI.includes(w))) {
      const a = args.map((x) => files[x] ?? x);
      const file = a[a.indexOf('--target-config') + 1]!;
      let message = '(not refused)';
      try {
        loadStagingTarget(a[0] as DrillName, file, a.includes('--i-know-this-is-staging'), { PATH: process.env.PATH, DEPLOY_ENV: 'staging' });
      } catch (err) {
        expect(err, what).toBeInstanceOf(DrillRefused);
        message = (err as Error).message;
      }
      // As the CLI prints it.
      expect(`dbpilot drill: ${message}\n`, what).toMatch(why);
    }
    expect(trap.connections(), 'connections to the target').toBe(0);
  });
});

describe('dbpilot drill --target-config on a staging target (a real primary + streaming replica, password authentication, a non-superuser dbpilot role)', () => {
  let cluster: PgCluster;
  let pagerduty: PagerDutyStandin;
  /** Counts connections: the target's Kubernetes API, and where DBPILOT_PRIMARY_URL / DBPILOT_REPLICA_URLS in the shell point. */
  let trap: Awaited<ReturnType<typeof countingListener>>;
  let file: string;
  /** The target's own long-running query: a batch job in its own database, by an unprotected role. */
  let batch: pg.Client;
  let batchPid: number;
  let batchOutcome = 'running';
  const ADMIN_PASSWORD = 'staging-admin-secret-7f3a';
  /** The shell of an operator: the admin password for ${STAGING_DB_PASSWORD}, and DBPILOT_* overrides that must not apply. */
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    cluster = await startPgCluster({ replicas: 1 });
    // Staging asks every role but the administrator for its password.
    for (const node of [cluster.primary, cluster.replicas[0]!]) {
      fs.writeFileSync(path.join(node.dataDir, 'pg_hba.conf'), 'local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n');
      await q(node.url(), 'SELECT pg_reload_conf()');
    }
    const admin = cluster.primary.url();
    // dbpilot's role as the README grants it, plus what the README's staging table says the drills need.
    await q(admin, `CREATE ROLE dbpilot LOGIN PASSWORD '${ADMIN_PASSWORD}' CREATEDB CREATEROLE`);
    await q(admin, 'GRANT pg_monitor, pg_signal_backend TO dbpilot');
    await q(admin, 'GRANT EXECUTE ON FUNCTION pg_wal_replay_pause() TO dbpilot');
    await q(admin, 'GRANT EXECUTE ON FUNCTION pg_wal_replay_resume() TO dbpilot');
    await q(admin, 'CREATE DATABASE orders');
    await q(admin, "CREATE ROLE orders_batch LOGIN PASSWORD 'batch-secret-1'");
    await q(admin, 'GRANT CONNECT ON DATABASE orders TO orders_batch');
    batch = new pg.Client({ connectionString: `postgresql://orders_batch:batch-secret-1@127.0.0.1:${cluster.primary.port}/orders`, application_name: 'orders-batch' });
    batch.on('error', () => undefined);
    await batch.connect();
    batchPid = (await batch.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    void batch.query('SELECT pg_sleep(600)').then(
      () => (batchOutcome = 'finished'),
      (e: { code?: string }) => (batchOutcome = `stopped (${e.code})`),
    );
    // From here on the server logs every DDL statement, as a staging server may.
    await q(admin, "ALTER SYSTEM SET log_statement = 'ddl'");
    await q(admin, 'SELECT pg_reload_conf()');
    pagerduty = new PagerDutyStandin();
    await pagerduty.start();
    trap = await countingListener();
    const kubeconfig = writeFile(
      'kubeconfig',
      `apiVersion: v1\nkind: Config\nclusters: [{ name: c, cluster: { server: "http://127.0.0.1:${trap.port}" } }]\nusers: [{ name: u, user: { token: t } }]\ncontexts: [{ name: x, context: { cluster: c, user: u, namespace: lomash-wood } }]\ncurrent-context: x\n`,
    );
    const url = (port: number) => `postgresql://dbpilot:\${STAGING_DB_PASSWORD}@127.0.0.1:${port}/postgres`;
    file = writeFile(
      'staging.yaml',
      [
        'environment: staging',
        'mode: auto',
        'postgres:',
        `  primary: { url: "${url(cluster.primary.port)}" }`,
        `  replicas: [{ url: "${url(cluster.replicas[0]!.port)}" }]`,
        '  longRunningQuerySeconds: 1',
        // Redis of the target is down: the drill's dbpilot shows it and goes on.
        'redis: { url: "redis://127.0.0.1:1" }',
        `pagerduty: { url: "${pagerduty.url}", routes: ${JSON.stringify(KEYS)} }`,
        `kubernetes: { kubeconfig: "${kubeconfig}", namespace: lomash-wood, secrets: [{ name: lomash-wood-secrets, key: DATABASE_URL }], deployments: [auth-service] }`,
        'handlers:',
        '  slow-queries: { graceSeconds: 1 }',
        '',
      ].join('\n'),
    );
    const elsewhere = `postgresql://postgres@127.0.0.1:${trap.port}/postgres`;
    env = { STAGING_DB_PASSWORD: ADMIN_PASSWORD, DBPILOT_PRIMARY_URL: elsewhere, DBPILOT_REPLICA_URLS: elsewhere, DBPILOT_REDIS_URL: `redis://127.0.0.1:${trap.port}`, DBPILOT_STORE_PATH: path.join(os.tmpdir(), 'must-not-exist.sqlite') };
    // The batch query is long-running before any drill starts.
    for (let i = 0; i < 100; i++) {
      const [r] = await q<{ n: number }>(admin, "SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query_start < now() - interval '1.5 seconds'", [batchPid]);
      if (r!.n === 1) break;
      await new Promise((res) => setTimeout(res, 100));
    }
  }, 120_000);

  afterAll(async () => {
    await batch?.end().catch(() => undefined);
    await pagerduty?.close();
    await trap?.close();
    await cluster?.stop();
  });

  const run = (args: string[], opts: Parameters<typeof drill>[1] = {}) => drill([...args, '--target-config', file, '--i-know-this-is-staging'], { ...opts, env });

  /** Nothing of the drill is left on the target or on this machine, and nothing of the target's was used. */
  async function expectTargetUntouched(j?: Json) {
    const admin = cluster.primary.url();
    expect(await q(admin, "SELECT datname FROM pg_database WHERE datname LIKE 'dbpilot_drill%'"), 'databases of the drill left').toEqual([]);
    expect(await q(admin, "SELECT rolname FROM pg_roles WHERE rolname LIKE 'dbpilot_drill%'"), 'roles of the drill left').toEqual([]);
    expect((await q<{ p: boolean }>(cluster.replicas[0]!.url(), 'SELECT pg_is_wal_replay_paused() AS p'))[0]!.p, 'replay paused on the replica').toBe(false);
    // The target's batch query still runs: the drill's dbpilot acted in the drill's database only.
    expect(batchOutcome).toBe('running');
    expect((await q<{ state: string }>(admin, 'SELECT state FROM pg_stat_activity WHERE pid = $1', [batchPid]))[0]?.state).toBe('active');
    expect(pagerduty.accepted, "pages through the target's PagerDuty").toEqual([]);
    expect(trap.connections(), "connections to the target's Kubernetes API or to the DBPILOT_* servers").toBe(0);
    expect(fs.existsSync(env.DBPILOT_STORE_PATH!), 'DBPILOT_STORE_PATH used').toBe(false);
    for (const t of j?.trials ?? []) {
      expect(t.sandbox.ports.length).toBeGreaterThan(0);
      for (const p of t.sandbox.ports) expect(await canConnect(p), `port ${p} still open`).toBe(false);
      for (const d of t.sandbox.dirs) expect(fs.existsSync(d), `${d} left behind`).toBe(false);
    }
  }

  it("slow-query: the drill's own role's pg_sleep, in the drill's own database, is cancelled; the target's batch query is left alone; the password never shows; nothing of the drill remains", async () => {
    const report = path.join(writeFile('.keep', ''), '..', 'slow-query.html');
    const logFrom = fs.statSync(cluster.primary.logFile).size;
    const r = await run(['slow-query', '--json', '--report', report]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as Json & { trials: { target: string }[]; leftBehind: string[] };
    expect(j).toMatchObject({ scenario: 'slow-query', recovered: true, error: null, leftBehind: [] });
    const t = j.trials[0]!;
    expect(t.target).toBe('staging');
    expect(t.runStatus).toBe('succeeded');
    expect(t.steps.map((s) => [s.name, s.status])).toEqual([
      ['cancelBackends', 'done'],
      ['terminateBackends', 'done'],
    ]);
    expect(t.checks.find((c) => c.name === 'its client saw it stopped')!.detail).toMatch(/: (cancelled|terminated)$/);
    // The servers are the file's, not the shell's DBPILOT_* ones, and are named before anything is contacted.
    expect(r.stderr).toMatch(new RegExp(`^staging: the target, from the file: PostgreSQL primary 127\\.0\\.0\\.1:${cluster.primary.port}, replicas 127\\.0\\.0\\.1:${cluster.replicas[0]!.port}$`, 'm'));
    expect(r.stderr).toContain('no Kubernetes, no Lease');
    expect(r.stderr).toMatch(/^undo by hand if the drill is killed: DROP ROLE IF EXISTS dbpilot_drill_[0-9a-f]{8};/m);
    expect(r.stderr).toMatch(/^undo by hand if the drill is killed: DROP DATABASE IF EXISTS dbpilot_drill_[0-9a-f]{8} WITH \(FORCE\);/m);
    // The server logged the drill role's creation with its SCRAM verifier, never a password in clear.
    const log = fs.readFileSync(cluster.primary.logFile, 'utf8').slice(logFrom);
    const created = [...log.matchAll(/CREATE ROLE (dbpilot_drill_[0-9a-f]{8}) .*PASSWORD '([^']*)'/g)];
    expect(created).toHaveLength(1);
    expect(created[0]![2]).toMatch(/^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$/);
    // The administrator's password (from ${STAGING_DB_PASSWORD}) is in no output.
    for (const [what, text] of [['stdout', r.stdout], ['stderr', r.stderr], ['report', fs.readFileSync(report, 'utf8')]] as const) {
      expect(text, what).not.toContain(ADMIN_PASSWORD);
      expect(text.length, what).toBeGreaterThan(0);
    }
    await expectTargetUntouched(j);
  });

  it('replication-lag: replay paused on the replica, on-call backend paged with its true lag (to the drill’s stand-in), replay resumed and caught up; nothing of the drill remains', async () => {
    const r = await run(['replication-lag', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as Json & { trials: { target: string }[] };
    const t = j.trials[0]!;
    expect(t.target).toBe('staging');
    expect(t.runStatus).toBe('escalated');
    expect(t.checks.map((c) => [c.name, c.ok])).toEqual([
      ['on-call backend paged', true],
      ["the page's lag matches the replica", true],
      ['the replica catches up after pg_wal_replay_resume()', true],
    ]);
    expect(t.measured.find((m) => m.name.startsWith('time to page'))!.ms).toBeGreaterThan(0);
    expect(r.stderr).toMatch(new RegExp(`^undo by hand if the drill is killed: SELECT pg_wal_replay_resume\\(\\); -- on 127\\.0\\.0\\.1:${cluster.replicas[0]!.port}$`, 'm'));
    await expectTargetUntouched(j);
  });

  it('SIGINT while replay is paused on the staging replica: the drill resumes it and drops its database before it exits (130)', async () => {
    let paused: Promise<boolean> | null = null;
    const r = await run(['replication-lag'], {
      onStderr: (e, child) => {
        // Once the alert is posted, read the replica itself: the break holds; then interrupt the drill.
        if (paused || !/^alert: PostgresReplicationLagHigh posted/m.test(e)) return;
        paused = q<{ p: boolean }>(cluster.replicas[0]!.url(), 'SELECT pg_is_wal_replay_paused() AS p').then((rows) => {
          child.kill('SIGINT');
          return rows[0]!.p;
        });
      },
    });
    // Paused when the signal came (the run, diagnose-only, does not resume it; only the drill's undo does).
    expect(await paused).toBe(true);
    expect(r.code).toBe(130);
    expect(r.stderr).toMatch(/^break: SELECT pg_wal_replay_pause\(\) on the replica/m);
    expect(r.stderr).toContain("SIGINT: undoing the drill's break on the staging target and stopping its dbpilot");
    await expectTargetUntouched();
    expect(leftovers(r.tmp)).toEqual([]);
  });

  it('SIGHUP (the terminal went away) during a slow-query drill: its query, role and database are gone before it exits (129)', async () => {
    const r = await run(['slow-query'], { interruptWhen: /^alert: PostgresLongRunningQueries posted/m, signal: 'SIGHUP' });
    expect(r.code).toBe(129);
    expect(r.stderr).toContain("SIGHUP: undoing the drill's break on the staging target");
    await expectTargetUntouched();
    expect(leftovers(r.tmp)).toEqual([]);
  });

  it('a teardown that cannot undo everything fails the drill (exit 1) and names what is left', async () => {
    // Someone grants the drill's role a privilege elsewhere while it runs: DROP ROLE then fails on the dependency.
    let role: string | null = null;
    let granted: Promise<unknown> | null = null;
    const r = await run(['slow-query', '--json'], {
      onStderr: (e) => {
        role ??= /DROP ROLE IF EXISTS (dbpilot_drill_[0-9a-f]{8})/.exec(e)?.[1] ?? null;
        if (role && !granted && /^alert: PostgresLongRunningQueries posted/m.test(e)) granted = q(cluster.primary.url(), `GRANT CONNECT ON DATABASE orders TO ${role}`);
      },
    });
    await granted;
    try {
      expect(r.code, r.stderr).toBe(1);
      const j = JSON.parse(r.stdout) as Json & { leftBehind: string[]; trials: { cleanupFailures?: string[] }[] };
      expect(j.recovered).toBe(false);
      expect(j.leftBehind).toEqual([expect.stringMatching(new RegExp(`^role ${role} on 127\\.0\\.0\\.1:${cluster.primary.port}: role "${role}" cannot be dropped because some objects depend on it$`))]);
      expect(j.trials[0]!.cleanupFailures).toEqual(j.leftBehind);
      // The run itself worked: only the teardown failed.
      expect(j.trials[0]!.runStatus).toBe('succeeded');
      expect((await q(cluster.primary.url(), 'SELECT 1 FROM pg_roles WHERE rolname = $1', [role])).length).toBe(1);
    } finally {
      await q(cluster.primary.url(), `REVOKE CONNECT ON DATABASE orders FROM ${role}`);
      await q(cluster.primary.url(), `DROP ROLE IF EXISTS ${role}`);
    }
    await expectTargetUntouched();
  });
});
