/**
 * Game-day drills (issue 12): break the drill's own sandbox (or, for slow-query and replication-lag, a
 * staging target: src/drill/staging.ts) the way a runbook scenario
 * says, post the alert Alertmanager would send to dbpilot's webhook, wait for the run to finish, and
 * check recovery by reading the world — never what dbpilot says about it. With --with-prometheus the
 * alert comes through real Prometheus and Alertmanager instead (src/drill/alert-path.ts).
 *
 * - primary-failure (runbook scenario 1): kill -9 of the primary's postmaster → PostgresPrimaryDown.
 *   Recovered: the replica is out of recovery and accepts a write, the Secret's DATABASE_URL names it.
 * - slow-query (scenario 2): `SELECT pg_sleep(threshold + 30 s)` by a login role of the drill's own in a database of
 *   its own (both dropped at the teardown; the alert's datname keeps dbpilot to that database) →
 *   PostgresLongRunningQueries. Recovered: the query is gone from pg_stat_activity and its client saw it
 *   cancelled or terminated.
 * - redis-failure (scenario 5): Redis stopped → RedisDown. The drill plays the StatefulSet controller:
 *   once the stand-in's StatefulSet has its restartedAt annotation, it starts Redis again.
 *   Recovered: Redis answers PING on a new connection.
 * - replication-lag (runbook "Check replication lag"): pg_wal_replay_pause() on the replica (resumed at
 *   the teardown whatever happened), then writes on the primary, in a database of the drill's own, until the replica has received WAL it has not replayed → PostgresReplicationLagHigh
 *   with the replica's server label. The handler only diagnoses: the run is to end escalated with
 *   on-call backend paged. Recovered: that page arrived, its lag numbers lie within what the drill
 *   read from the replica itself before and after the run, and once the drill resumes replay the
 *   replica replays up to the primary's position.
 * - prisma-migration (scenario 4): the sandbox has a service with services[].prisma (migrateDeploy:
 *   restart); the drill runs its `prisma migrate deploy` (test/support's player, now in sandbox/) with a
 *   migration that fails, which leaves Prisma's _prisma_migrations with a failed row →
 *   PrismaMigrationFailed. The drill plays the Deployment: once the stand-in's Deployment has its
 *   restartedAt annotation, it runs migrate deploy again with the fixed migration, as the service's
 *   next start would. Recovered (read from the database): the migration has a finished row, none is failed.
 * - disk-pressure (scenario 3, at a low threshold): the disk-full handler in auto with vacuum: true and
 *   no maxSize, pageAbovePercent below what the data disk uses; a table (autovacuum off) with 40,000
 *   dead tuples → PostgresDiskAlmostFull. The handler vacuums and, the disk staying above the
 *   threshold, ends escalated with DevOps paged. Recovered: the dead tuples fell (pg_stat_user_tables,
 *   a manual VACUUM recorded) and DevOps paged.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { RunRow, StepRow } from '../store/store.js';
import { FINAL_STATUSES } from '../store/store.js';
import type { Config } from '../config.js';
import { drillPath, startAlertPath, type AlertPath, type AlertPathResult } from './alert-path.js';
import { Cleanup } from './cleanup.js';
import { prismaMigrateDeploy, PrismaCliError, type Migration } from './sandbox/prisma.js';
import { buildSandbox, DISK_PAGE_ABOVE_PERCENT, NS, PRISMA_SERVICE, REDIS_STATEFULSET, ROUTING_KEYS, SECRET, type Sandbox, type Say } from './build-sandbox.js';
import type { DrillName } from './names.js';
import { buildStagingWorld, isStagingDrill } from './staging.js';
import type { DrillWorld } from './world.js';

export { DRILLS, LATER_DRILLS, isDrill, type DrillName } from './names.js';

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

/** A time the drill measured itself, beyond the run's own (e.g. time to page). */
export interface Measured {
  name: string;
  ms: number | null;
  ok: boolean;
}

export interface StepResult {
  name: string;
  status: string;
  durationMs: number | null;
  checkOk: boolean | null;
  detail: string | null;
}

export interface TrialResult {
  trial: number;
  scenario: DrillName;
  alertname: string;
  handler: string;
  runId: string | null;
  runStatus: string | null;
  reason: string | null;
  /** The alert posted to the webhook → the run created (dbpilot's receipt and plan admission). */
  detectionMs: number | null;
  /** The run created → its first step started: the handler's plan (for a failover, its confirmation probes). */
  planMs: number | null;
  /** The break → the run finished. */
  recoveryMs: number | null;
  /** The run status the handler promises for this alert: 'succeeded', or 'escalated' for a diagnose-only handler. */
  expectedRunStatus: string;
  /** Times the drill measured itself (time to page, catch-up, …). */
  measured: Measured[];
  steps: StepResult[];
  /** Read from the world after the run. */
  checks: Check[];
  /** PagerDuty events the stand-in accepted during the trial. */
  pages: number;
  recovered: boolean;
  /** What was drilled: the drill's own sandbox, or a staging target (--target-config). */
  target: 'sandbox' | 'staging';
  /** How the alert reached dbpilot: posted by the drill, or through Prometheus and Alertmanager (--with-prometheus). */
  alertPath: AlertPathResult;
  /** What the teardown could not undo (label: error); a trial with any is not recovered. */
  cleanupFailures?: string[];
  /** What the drill used on this machine (on staging: its dbpilot and stand-in), so a caller can check that it is all gone. */
  sandbox: { ports: number[]; dirs: string[] };
  /** The run's timeline page (src/report/timeline.ts), rendered before the sandbox's store is removed; not in --json. */
  reportHtml?: string;
}

interface Broken {
  alertname: string;
  labels: Record<string, string>;
  /** The run status the handler promises (default 'succeeded'). */
  expectedRunStatus?: string;
  /** Filled by verify(): times the drill measured itself. */
  measured?: Measured[];
  /** Reads the world after the run. */
  verify(ctx: { brokeAt: number; postedAt: number; fingerprint: string }): Promise<Check[]>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function query<T extends pg.QueryResultRow>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  // The server's statement_timeout, not only the client's: a client that gives up closes its socket and
  // sends no cancel, and a CREATE DATABASE still running would commit with nothing left to undo it.
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000, statement_timeout: 20_000, query_timeout: 30_000 });
  c.on('error', () => undefined);
  await c.connect();
  try {
    return (await c.query<T>(sql, params)).rows;
  } finally {
    await c.end().catch(() => undefined);
  }
}

const attempt = async (name: string, fn: () => Promise<Check>): Promise<Check> => {
  try {
    return await fn();
  } catch (err) {
    return { name, ok: false, detail: (err as Error).message };
  }
};

const hostPortOf = (url: string | undefined): string | null => {
  if (!url) return null;
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || '5432'}`;
  } catch {
    return null;
  }
};

async function breakPrimary(sb: Sandbox): Promise<Broken> {
  const primary = `127.0.0.1:${sb.cluster.primary.port}`;
  const replica = sb.cluster.replicas[0]!;
  await sb.cluster.primary.kill();
  return {
    alertname: 'PostgresPrimaryDown',
    labels: { alertname: 'PostgresPrimaryDown', remediation: 'primary-failover', team: 'lead-dba', severity: 'critical', server: primary },
    verify: async () => [
      await attempt('promoted replica accepts a write', async () => {
        await query(replica.url(), 'CREATE TABLE IF NOT EXISTS drill_after_failover (at timestamptz DEFAULT now())');
        const last = (await query<{ r: boolean; x: string }>(replica.url(), 'INSERT INTO drill_after_failover DEFAULT VALUES RETURNING pg_is_in_recovery() AS r, txid_current()::text AS x'))[0]!;
        return { name: 'promoted replica accepts a write', ok: last.r === false, detail: `127.0.0.1:${replica.port}: pg_is_in_recovery() = ${last.r}, wrote in transaction ${last.x}` };
      }),
      await attempt(`secret ${SECRET.name} points at it`, async () => {
        const at = hostPortOf(sb.k8s.secretValue(SECRET.name, SECRET.key, NS));
        const want = `127.0.0.1:${replica.port}`;
        return { name: `secret ${SECRET.name} points at it`, ok: at === want, detail: `${SECRET.key} names ${at ?? 'nothing'} (promoted replica ${want})` };
      }),
    ],
  };
}

/** PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802, RFC 7677), which CREATE ROLE … PASSWORD takes as is. */
export function scramVerifier(password: string, salt = randomBytes(16), iterations = 4096): string {
  const salted = pbkdf2Sync(password, salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

/** A name of the drill's own for what it makes on the target (a database, a role), unique per trial. */
const ownName = () => `dbpilot_drill_${randomBytes(4).toString('hex')}`;

/**
 * A database of the drill's own on the primary, dropped at the teardown (its sessions ended first):
 * on a staging target the drill leaves nothing of its own behind and touches nothing of the target's.
 */
async function ownDatabase(world: DrillWorld, cleanup: Cleanup, say: Say): Promise<string> {
  const db = ownName();
  const admin = world.primary.url();
  // Its undoing first: whatever happens from here on (an error, a timeout, a signal), the teardown drops it.
  cleanup.add(`database ${db} on ${world.primary.server}`, () => query(admin, `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).then(() => undefined));
  if (world.kind === 'staging') say(`undo by hand if the drill is killed: DROP DATABASE IF EXISTS ${db} WITH (FORCE); -- on ${world.primary.server}`);
  cleanup.assertOpen(`CREATE DATABASE ${db}`);
  try {
    await query(admin, `CREATE DATABASE ${db}`);
  } catch (err) {
    throw new Error(`the drill makes a database of its own on ${world.primary.server} and could not: ${(err as Error).message} (the configured user needs CREATEDB)`);
  }
  return db;
}

async function breakWithSlowQuery(world: DrillWorld, cleanup: Cleanup, say: Say): Promise<Broken> {
  const admin = world.primary.url();
  // An application's role of the drill's own: dbpilot spares superusers and the target's protected roles.
  const login = { user: ownName(), password: randomBytes(18).toString('base64url') };
  // Its undoing first (see ownDatabase), registered before the database's so that it runs after it
  // (newest first): the role's CONNECT grant and its session go with the database.
  cleanup.add(`role ${login.user} on ${world.primary.server}`, async () => {
    await query(admin, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [login.user]);
    await query(admin, `DROP ROLE IF EXISTS ${login.user}`);
  });
  if (world.kind === 'staging') say(`undo by hand if the drill is killed: DROP ROLE IF EXISTS ${login.user}; -- on ${world.primary.server}, after the database below`);
  cleanup.assertOpen(`CREATE ROLE ${login.user}`);
  try {
    // The password goes as its SCRAM verifier: a server that logs DDL never logs the password itself.
    await query(admin, `CREATE ROLE ${login.user} LOGIN NOSUPERUSER NOREPLICATION NOCREATEDB NOCREATEROLE PASSWORD '${scramVerifier(login.password)}' CONNECTION LIMIT 2`);
  } catch (err) {
    throw new Error(`the drill makes a login role of its own on ${world.primary.server} and could not: ${(err as Error).message} (the configured user needs CREATEROLE)`);
  }
  const db = await ownDatabase(world, cleanup, say);
  cleanup.assertOpen(`GRANT CONNECT ON DATABASE ${db}`);
  await query(admin, `GRANT CONNECT ON DATABASE ${db} TO ${login.user}`);
  const client = new pg.Client({ connectionString: world.primary.url(db, login), application_name: 'dbpilot-drill-app', connectionTimeoutMillis: 5000 });
  client.on('error', () => undefined);
  await client.connect();
  cleanup.add('the slow query’s client', () => client.end().catch(() => undefined));
  const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  let outcome = 'running';
  // The threshold dbpilot plans with (the handler's own, else postgres.longRunningQuerySeconds: the target's on staging, 1 s in the sandbox).
  const threshold = world.config.handlers['slow-queries']?.thresholdSeconds ?? world.config.postgres.longRunningQuerySeconds;
  // Long enough for the drill, short enough that a drill killed with SIGKILL leaves no query running for long
  // (PostgreSQL does not notice a dead client during pg_sleep).
  const sleepSeconds = Math.ceil(threshold) + 30;
  cleanup.assertOpen('the slow query');
  const done = client.query(`SELECT pg_sleep(${sleepSeconds})`).then(
    () => (outcome = 'finished'),
    (err: { code?: string }) => (outcome = err.code === '57014' ? 'cancelled' : err.code === '57P01' ? 'terminated' : `ended (${err.code ?? 'connection lost'})`),
  );
  // The alert fires once the query has run past the threshold.
  const deadline = Date.now() + 15_000 + threshold * 1000;
  for (;;) {
    const rows = await query<{ n: number }>(admin, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query_start < now() - make_interval(secs => $2)`, [pid, threshold + 0.2]);
    if (rows[0]!.n === 1) break;
    if (Date.now() > deadline) throw new Error(`the slow query (pid ${pid}) did not show up as running longer than ${threshold} s`);
    await sleep(100);
  }
  return {
    alertname: 'PostgresLongRunningQueries',
    labels: { alertname: 'PostgresLongRunningQueries', remediation: 'slow-queries', team: 'oncall-backend', severity: 'warning', server: world.primary.server, datname: db },
    verify: async () => {
      await Promise.race([done, sleep(2000)]);
      await client.end().catch(() => undefined);
      return [
        await attempt('the slow query is gone', async () => {
          const rows = await query<{ n: number }>(admin, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND state <> 'idle'`, [pid]);
          return { name: 'the slow query is gone', ok: rows[0]!.n === 0, detail: rows[0]!.n === 0 ? `backend ${pid} no longer runs pg_sleep` : `backend ${pid} still runs pg_sleep` };
        }),
        { name: "its client saw it stopped", ok: outcome === 'cancelled' || outcome === 'terminated', detail: `the application's query: ${outcome}` },
      ];
    },
  };
}

async function breakRedis(sb: Sandbox, cleanup: Cleanup): Promise<Broken> {
  await sb.redis.stop();
  // The StatefulSet controller's part: once the restart is requested, Redis runs again.
  let stopped = false;
  const restartedAt = () =>
    ((sb.k8s.statefulSet(REDIS_STATEFULSET, NS)?.spec as { template?: { metadata?: { annotations?: Record<string, string> } } } | undefined)?.template?.metadata?.annotations ?? {})['kubectl.kubernetes.io/restartedAt'];
  const controller = (async () => {
    while (!stopped && restartedAt() === undefined) await sleep(20);
    if (!stopped) await sb.redis.start();
  })();
  const stop = cleanup.add('the StatefulSet controller', async () => {
    stopped = true;
    await controller.catch(() => undefined);
  });
  return {
    alertname: 'RedisDown',
    labels: { alertname: 'RedisDown', remediation: 'redis-failure', team: 'devops', severity: 'critical', service: 'redis' },
    verify: async () => {
      await stop();
      return [
        await attempt('Redis answers PING', async () => {
          const r = new Redis({ host: '127.0.0.1', port: sb.redis.port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 2000 });
          r.on('error', () => undefined);
          try {
            await r.connect();
            const pong = await r.ping();
            return { name: 'Redis answers PING', ok: pong === 'PONG', detail: `127.0.0.1:${sb.redis.port} answered ${pong} on a new connection` };
          } finally {
            r.disconnect();
          }
        }),
        { name: `statefulset/${REDIS_STATEFULSET} restart requested`, ok: restartedAt() !== undefined, detail: `restartedAt ${restartedAt() ?? 'absent'}` },
      ];
    },
  };
}

interface LagReading {
  /** Received but not replayed, as the exporter and dbpilot compute it. */
  bytes: number;
  /** now() - pg_last_xact_replay_timestamp(). */
  seconds: number | null;
  paused: boolean;
  receive: string;
  replay: string;
}

const readLag = async (url: string): Promise<LagReading> =>
  (
    await query<LagReading>(
      url,
      `SELECT GREATEST(0, pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()))::float8 AS bytes,
              EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8 AS seconds,
              pg_is_wal_replay_paused() AS paused, pg_last_wal_receive_lsn()::text AS receive, pg_last_wal_replay_lsn()::text AS replay`,
    )
  )[0]!;

interface LagFacts {
  server: string;
  alerted?: boolean;
  replay_paused?: boolean | null;
  replay_lag_bytes?: number | null;
  replay_lag_seconds?: number | null;
}

async function breakReplicationLag(world: DrillWorld, cleanup: Cleanup, say: Say): Promise<Broken> {
  if (!world.replica) throw new Error('replication-lag needs a replica');
  const replica = world.replica;
  const server = replica.server;
  // A paused synchronous standby holds the primary's commits that wait for it (synchronous_commit = remote_apply).
  const [sync] = await query<{ names: string }>(world.primary.url(), "SELECT current_setting('synchronous_standby_names') AS names");
  if (sync!.names.trim() !== '') {
    throw new Error(`${world.primary.server} has synchronous_standby_names = '${sync!.names}': pausing replay on a synchronous standby can hold the primary's commits (synchronous_commit = remote_apply), so the drill does not pause replay there`);
  }
  const db = await ownDatabase(world, cleanup, say);
  const admin = world.primary.url(db);
  const deadline = Date.now() + 15_000;
  // A transaction the replica replays first, so its last replayed transaction has a time (the lag in seconds).
  await query(admin, 'CREATE TABLE drill_lag_writes (id int, pad text)');
  const created = (await query<{ lsn: string }>(admin, 'SELECT pg_current_wal_lsn()::text AS lsn'))[0]!.lsn;
  while (!(await query<{ ok: boolean }>(replica.url(), 'SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS ok', [created]))[0]!.ok) {
    if (Date.now() > deadline) throw new Error(`${server} did not replay the primary's WAL up to ${created}`);
    await sleep(50);
  }
  // Never leave a replica paused: its undoing is registered first, and runs at the teardown whatever
  // happened (verify() resumes it before, to measure the catch-up).
  cleanup.add(`replay on ${server} resumed`, async () => {
    await query(replica.url(), 'SELECT pg_wal_replay_resume() WHERE pg_is_wal_replay_paused()');
  });
  if (world.kind === 'staging') say(`undo by hand if the drill is killed: SELECT pg_wal_replay_resume(); -- on ${server}`);
  cleanup.assertOpen(`pg_wal_replay_pause() on ${server}`);
  try {
    await query(replica.url(), 'SELECT pg_wal_replay_pause()');
  } catch (err) {
    throw new Error(`the drill pauses replay on ${server} and could not: ${(err as Error).message} (pg_wal_replay_pause() needs a superuser or EXECUTE granted on it)`);
  }
  while ((await query<{ s: string }>(replica.url(), 'SELECT pg_get_wal_replay_pause_state() AS s'))[0]!.s !== 'paused') {
    if (Date.now() > deadline) throw new Error(`replay on ${server} did not pause`);
    await sleep(50);
  }
  // Writes the replica receives but does not replay: ~1 MB of WAL, in the drill's own database.
  await query(admin, `INSERT INTO drill_lag_writes SELECT g, repeat('x', 100) FROM generate_series(1, 5000) AS g`);
  const written = (await query<{ lsn: string }>(admin, 'SELECT pg_current_wal_lsn()::text AS lsn'))[0]!.lsn;
  for (;;) {
    const [r] = await query<{ got: boolean }>(replica.url(), 'SELECT pg_last_wal_receive_lsn() >= $1::pg_lsn AS got', [written]);
    if (r!.got) break;
    if (Date.now() > deadline) throw new Error(`${server} did not receive the primary's WAL up to ${written}`);
    await sleep(50);
  }
  const before = await readLag(replica.url());
  if (!(before.bytes > 0) || !before.paused || before.seconds === null) throw new Error(`${server} is not measurably behind: ${before.bytes} bytes received but not replayed, paused ${before.paused}`);
  const measured: Measured[] = [];
  return {
    alertname: 'PostgresReplicationLagHigh',
    labels: { alertname: 'PostgresReplicationLagHigh', remediation: 'replication-lag', team: 'oncall-backend', severity: 'warning', server },
    expectedRunStatus: 'escalated',
    measured,
    verify: async ({ brokeAt, fingerprint }) => {
      const after = await readLag(replica.url());
      const dedupKey = `dbpilot/PostgresReplicationLagHigh/${fingerprint}`;
      const pages = () => world.pagerduty.accepted.filter((e) => e.dedupKey === dedupKey && e.action === 'trigger');
      const pageDeadline = Date.now() + 10_000;
      while (pages().length === 0 && Date.now() < pageDeadline) {
        await world.remediation.outbox.flush().catch(() => undefined);
        await sleep(50);
      }
      const page = pages()[0];
      measured.push({ name: 'time to page (break → on-call backend paged)', ms: page ? page.at - brokeAt : null, ok: page?.routingKey === ROUTING_KEYS['oncall-backend'] });
      const others = pages().filter((e) => e.routingKey !== ROUTING_KEYS['oncall-backend']).length;
      const details = (page?.event as { payload?: { custom_details?: { run_status?: string; diagnostics?: { replicas?: LagFacts[] } } } } | undefined)?.payload?.custom_details;
      const facts = details?.diagnostics?.replicas?.find((x) => x.server === server);
      const checks: Check[] = [
        {
          name: 'on-call backend paged',
          ok: page?.routingKey === ROUTING_KEYS['oncall-backend'] && others === 0 && details?.run_status === 'escalated',
          detail: page
            ? `${pages().length} trigger(s): ${page.routingKey === ROUTING_KEYS['oncall-backend'] ? "on-call backend's routing key" : `routing key ${page.routingKey}`}${others ? `, ${others} to other keys` : ''}; run_status ${details?.run_status ?? 'absent'}`
            : 'no page reached the PagerDuty stand-in within 10 s of the run',
        },
      ];
      const bytes = facts?.replay_lag_bytes ?? null;
      const secs = facts?.replay_lag_seconds ?? null;
      const bytesOk = bytes !== null && bytes >= Math.min(before.bytes, after.bytes) && bytes <= Math.max(before.bytes, after.bytes);
      // dbpilot rounds seconds to 0.1 s.
      const secsOk = secs !== null && after.seconds !== null && secs >= Math.floor(before.seconds! * 10) / 10 && secs <= Math.ceil(after.seconds * 10) / 10;
      checks.push({
        name: "the page's lag matches the replica",
        ok: facts?.alerted === true && facts.replay_paused === true && bytesOk && secsOk,
        detail: facts
          ? `page: ${bytes ?? 'no'} bytes received but not replayed, ${secs ?? 'no'} s, paused ${facts.replay_paused}; read from ${server}: ${before.bytes}…${after.bytes} bytes, ${before.seconds?.toFixed(1)}…${after.seconds?.toFixed(1) ?? 'no'} s`
          : `the page carries no diagnostics for ${server}`,
      });
      checks.push(
        await attempt('the replica catches up after pg_wal_replay_resume()', async () => {
          const target = (await query<{ lsn: string }>(admin, 'SELECT pg_current_wal_lsn()::text AS lsn'))[0]!.lsn;
          const t0 = Date.now();
          await query(replica.url(), 'SELECT pg_wal_replay_resume()');
          const until = Date.now() + 30_000;
          for (;;) {
            const [r] = await query<{ done: boolean; replay: string }>(replica.url(), 'SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS done, pg_last_wal_replay_lsn()::text AS replay', [target]);
            if (r!.done) {
              const took = Date.now() - t0;
              measured.push({ name: 'catch-up (replay resumed → replayed up to the primary)', ms: took, ok: true });
              return { name: 'the replica catches up after pg_wal_replay_resume()', ok: true, detail: `${server} replayed up to ${r!.replay} (primary at ${target}) ${took} ms after the resume` };
            }
            if (Date.now() > until) {
              measured.push({ name: 'catch-up (replay resumed → replayed up to the primary)', ms: null, ok: false });
              return { name: 'the replica catches up after pg_wal_replay_resume()', ok: false, detail: `${server} replayed only up to ${r!.replay} of ${target} within 30 s` };
            }
            await sleep(50);
          }
        }),
      );
      return checks;
    },
  };
}

const PRISMA_INIT: Migration = { name: '20240101000000_init', sql: 'CREATE TABLE orders (id int PRIMARY KEY, total numeric NOT NULL);' };
/** As first shipped: the foreign key names a table that does not exist. */
const PRISMA_BROKEN: Migration = { name: '20240301000000_add_payments', sql: 'CREATE TABLE payments (id int PRIMARY KEY, order_id int NOT NULL REFERENCES "order"(id));' };
/** The same migration, fixed in the image the restarted pods run. */
const PRISMA_FIXED: Migration = { name: PRISMA_BROKEN.name, sql: 'CREATE TABLE payments (id int PRIMARY KEY, order_id int NOT NULL REFERENCES orders(id));' };

async function breakPrismaMigration(sb: Sandbox, cleanup: Cleanup): Promise<Broken> {
  const db = PRISMA_SERVICE.database;
  await query(sb.cluster.primary.url(), `CREATE DATABASE ${db}`);
  const url = sb.cluster.primary.url(db);
  const deploy = (migrations: Migration[]) => prismaMigrateDeploy(url, 'public', migrations, { applicationName: `${PRISMA_SERVICE.name}-init` });
  await deploy([PRISMA_INIT]);
  const first = await deploy([PRISMA_INIT, PRISMA_BROKEN]).then(
    () => null,
    (err: unknown) => err,
  );
  if (!(first instanceof PrismaCliError) || first.code !== 'P3018') throw new Error(`the broken migration did not fail as planned: ${String(first)}`);
  // The Deployment's part: once the restart is requested, the new pods run migrate deploy with the fixed migration.
  let stopped = false;
  let outcome = 'the deployment was not restarted';
  const restartedAt = () =>
    ((sb.k8s.deployment(PRISMA_SERVICE.deployment, NS)?.spec as { template?: { metadata?: { annotations?: Record<string, string> } } } | undefined)?.template?.metadata?.annotations ?? {})['kubectl.kubernetes.io/restartedAt'];
  const controller = (async () => {
    while (!stopped && restartedAt() === undefined) await sleep(20);
    if (stopped) return;
    outcome = await deploy([PRISMA_INIT, PRISMA_FIXED]).then(
      (r) => `migrate deploy applied ${r.applied.join(', ') || 'nothing'}`,
      (err: unknown) => `migrate deploy failed: ${(err as Error).message.split('\n')[0]}`,
    );
  })();
  const stop = cleanup.add(`the ${PRISMA_SERVICE.deployment} Deployment`, async () => {
    stopped = true;
    await controller.catch(() => undefined);
  });
  return {
    alertname: 'PrismaMigrationFailed',
    labels: { alertname: 'PrismaMigrationFailed', remediation: 'prisma-migration', team: 'oncall-backend', severity: 'warning', server: `127.0.0.1:${sb.cluster.primary.port}`, datname: db },
    verify: async () => {
      await stop();
      return [
        await attempt(`${PRISMA_FIXED.name} finished, nothing failed`, async () => {
          const rows = await query<{ migration_name: string; finished: boolean; rolled_back: boolean }>(
            url,
            'SELECT migration_name, finished_at IS NOT NULL AS finished, rolled_back_at IS NOT NULL AS rolled_back FROM _prisma_migrations ORDER BY started_at',
          );
          const finished = rows.filter((r) => r.migration_name === PRISMA_FIXED.name && r.finished && !r.rolled_back).length;
          const failed = rows.filter((r) => !r.finished && !r.rolled_back).map((r) => r.migration_name);
          return {
            name: `${PRISMA_FIXED.name} finished, nothing failed`,
            ok: finished === 1 && failed.length === 0,
            detail: `_prisma_migrations in ${db}: ${rows.length} rows, ${finished} finished ${PRISMA_FIXED.name}, ${failed.length ? `failed: ${failed.join(', ')}` : 'none failed'}, ${rows.filter((r) => r.rolled_back).length} rolled back`,
          };
        }),
        { name: `deployment/${PRISMA_SERVICE.deployment} restarted and migrated`, ok: outcome.startsWith('migrate deploy applied') && restartedAt() !== undefined, detail: `restartedAt ${restartedAt() ?? 'absent'}; ${outcome}` },
      ];
    },
  };
}

const DISK_DB = 'drill_disk';
const DISK_TABLE = 'order_events';

async function breakDiskPressure(sb: Sandbox): Promise<Broken> {
  const admin = sb.cluster.primary.url();
  await query(admin, `CREATE DATABASE ${DISK_DB}`);
  const url = sb.cluster.primary.url(DISK_DB);
  // Autovacuum off for this table: only dbpilot's VACUUM can make its dead tuples fall.
  await query(url, `CREATE TABLE ${DISK_TABLE} (id int, payload text) WITH (autovacuum_enabled = false)`);
  await query(url, `INSERT INTO ${DISK_TABLE} SELECT g, repeat('x', 200) FROM generate_series(1, 50000) AS g`);
  await query(url, `DELETE FROM ${DISK_TABLE} WHERE id > 10000`);
  const dead = async () =>
    (
      await query<{ dead: number; vacuums: number; autovacuums: number; at: number | null }>(
        url,
        `SELECT n_dead_tup::int AS dead, vacuum_count::int AS vacuums, autovacuum_count::int AS autovacuums, (EXTRACT(EPOCH FROM last_vacuum) * 1000)::float8 AS at FROM pg_stat_user_tables WHERE relname = $1`,
        [DISK_TABLE],
      )
    )[0]!;
  // The statistics reach pg_stat_user_tables a moment after the DELETE commits.
  const deadline = Date.now() + 15_000;
  let before = await dead();
  while (before.dead < 40_000) {
    if (Date.now() > deadline) throw new Error(`${DISK_DB}.${DISK_TABLE} shows ${before.dead} dead tuples, not the 40000 deleted`);
    await sleep(100);
    before = await dead();
  }
  const measured: Measured[] = [];
  return {
    alertname: 'PostgresDiskAlmostFull',
    labels: { alertname: 'PostgresDiskAlmostFull', remediation: 'disk-full', team: 'devops', severity: 'critical', server: `127.0.0.1:${sb.cluster.primary.port}` },
    expectedRunStatus: 'escalated',
    measured,
    verify: async ({ brokeAt, postedAt, fingerprint }) => {
      const dedupKey = `dbpilot/PostgresDiskAlmostFull/${fingerprint}`;
      const pages = () => sb.pagerduty.accepted.filter((e) => e.dedupKey === dedupKey && e.action === 'trigger');
      const pageDeadline = Date.now() + 10_000;
      while (pages().length === 0 && Date.now() < pageDeadline) {
        await sb.remediation.outbox.flush().catch(() => undefined);
        await sleep(50);
      }
      const page = pages()[0];
      measured.push({ name: 'time to page (break → DevOps paged)', ms: page ? page.at - brokeAt : null, ok: page?.routingKey === ROUTING_KEYS.devops });
      const others = pages().filter((e) => e.routingKey !== ROUTING_KEYS.devops).length;
      const runStatus = (page?.event as { payload?: { custom_details?: { run_status?: string } } } | undefined)?.payload?.custom_details?.run_status;
      return [
        await attempt('the dead tuples fell', async () => {
          const after = await dead();
          // Vacuumed after the alert was posted: by dbpilot, the only one acting in the sandbox then (autovacuum is off for the table).
          const afterAlert = after.at !== null && after.at >= postedAt;
          return {
            name: 'the dead tuples fell',
            ok: after.dead < before.dead && after.vacuums > before.vacuums && after.autovacuums === 0 && afterAlert,
            detail: `${DISK_DB}.${DISK_TABLE} (pg_stat_user_tables): n_dead_tup ${before.dead} → ${after.dead}, vacuum_count ${before.vacuums} → ${after.vacuums}, autovacuum_count ${after.autovacuums}, last_vacuum ${after.at === null ? 'never' : afterAlert ? 'after the alert' : 'BEFORE the alert'}`,
          };
        }),
        {
          name: 'DevOps paged',
          ok: page?.routingKey === ROUTING_KEYS.devops && others === 0 && runStatus === 'escalated',
          detail: page
            ? `${pages().length} trigger(s): ${page.routingKey === ROUTING_KEYS.devops ? "DevOps's routing key" : `routing key ${page.routingKey}`}${others ? `, ${others} to other keys` : ''}; run_status ${runStatus ?? 'absent'} (threshold ${DISK_PAGE_ABOVE_PERCENT} %, no maxSize)`
            : 'no page reached the PagerDuty stand-in within 10 s of the run',
        },
      ];
    },
  };
}

/** An Alertmanager webhook (version 4), shaped like the ones captured in test/fixtures/alertmanager. */
export function alertmanagerPayload(labels: Record<string, string>, fingerprint: string, startsAt: string): Record<string, unknown> {
  const alertname = labels.alertname!;
  return {
    receiver: 'dbpilot',
    status: 'firing',
    alerts: [
      {
        status: 'firing',
        labels,
        annotations: { summary: `${alertname} (dbpilot drill)` },
        startsAt,
        endsAt: '0001-01-01T00:00:00Z',
        generatorURL: 'http://127.0.0.1:9090/graph?g0.expr=dbpilot_drill&g0.tab=1',
        fingerprint,
      },
    ],
    groupLabels: { alertname },
    commonLabels: labels,
    commonAnnotations: {},
    externalURL: 'http://127.0.0.1:9093',
    version: '4',
    groupKey: `{}:{alertname="${alertname}"}`,
    truncatedAlerts: 0,
  };
}

const ms = (a: string | null, b: string | null): number | null => (a && b ? Date.parse(b) - Date.parse(a) : null);

function stepResult(s: StepRow): StepResult {
  const check = s.check as { ok?: boolean; detail?: string } | null;
  return {
    name: s.name,
    status: s.status,
    durationMs: ms(s.startedAt, s.finishedAt),
    checkOk: typeof check?.ok === 'boolean' ? check.ok : null,
    detail: check?.detail ?? s.error ?? null,
  };
}

export interface Progress {
  say: Say;
  /** A step's state changed (for the live step list). */
  step(s: StepResult): void;
}

export interface TrialHooks {
  /** Runs after the break, before the alert is posted (tests: a world that does not recover as planned). */
  afterBreak?: (sb: Sandbox) => Promise<void>;
  /** --with-prometheus: the alert goes through real Prometheus and Alertmanager when installed (src/drill/alert-path.ts). */
  withPrometheus?: boolean;
  /** --target-config: the staging target (checked by loadStagingTarget) instead of the sandbox. */
  staging?: Config;
}

const BREAKS: Record<DrillName, string> = {
  'primary-failure': 'kill -9 of the primary postmaster',
  'slow-query': 'SELECT pg_sleep(threshold + 30 s) by a login role of the drill’s own, in a database of its own',
  'redis-failure': 'Redis stopped',
  'replication-lag': "SELECT pg_wal_replay_pause() on the replica, then ~1 MB of writes on the primary (in a database of the drill’s own)",
  'prisma-migration': `prisma migrate deploy of ${PRISMA_BROKEN.name} fails (P3018) in ${PRISMA_SERVICE.database}`,
  'disk-pressure': `40000 dead tuples in ${DISK_DB}.${DISK_TABLE} (autovacuum off), disk-full's threshold at ${DISK_PAGE_ABOVE_PERCENT} %`,
};

/** One trial: a fresh sandbox (or the drill's dbpilot on the staging target), the break, the alert, the run, the checks, the teardown. */
export async function runTrial(scenario: DrillName, trial: number, progress: Progress, cleanup = new Cleanup(), hooks: TrialHooks = {}): Promise<TrialResult> {
  const say = progress.say;
  const failuresBefore = cleanup.failures.length;
  let sb: Sandbox | null = null;
  let world: DrillWorld;
  let alertPath: AlertPath;
  let dirs: string[];
  if (hooks.staging) {
    if (!isStagingDrill(scenario)) throw new Error(`${scenario} does not run on a staging target`);
    world = await buildStagingWorld(cleanup, say, scenario, hooks.staging);
    say(`staging: PostgreSQL primary ${world.primary.server}${world.replica ? `, replica ${world.replica.server}` : ''}, dbpilot ${world.url}`);
    alertPath = drillPath();
    dirs = [world.dir];
  } else {
    sb = await buildSandbox(cleanup, say, { prismaService: scenario === 'prisma-migration', diskPressure: scenario === 'disk-pressure' });
    world = sb;
    say(`sandbox: PostgreSQL primary 127.0.0.1:${sb.cluster.primary.port}, replica 127.0.0.1:${sb.cluster.replicas[0]!.port}, Redis 127.0.0.1:${sb.redis.port}, dbpilot ${sb.url}`);
    alertPath = await startAlertPath(sb, cleanup, say, hooks.withPrometheus === true);
    dirs = [sb.dir, ...sb.cluster.replicas.map((r) => r.dataDir), sb.cluster.primary.dataDir];
  }
  let result: TrialResult;
  try {
    say(`break: ${BREAKS[scenario]}`);
    const brokeAt = Date.now();
    const onSandbox = (): Sandbox => {
      if (!sb) throw new Error(`${scenario} runs only on the sandbox`);
      return sb;
    };
    const broken =
      scenario === 'primary-failure'
        ? await breakPrimary(onSandbox())
        : scenario === 'slow-query'
          ? await breakWithSlowQuery(world, cleanup, say)
          : scenario === 'replication-lag'
            ? await breakReplicationLag(world, cleanup, say)
            : scenario === 'prisma-migration'
              ? await breakPrismaMigration(onSandbox(), cleanup)
              : scenario === 'disk-pressure'
                ? await breakDiskPressure(onSandbox())
                : await breakRedis(onSandbox(), cleanup);
    if (sb) await hooks.afterBreak?.(sb);
    const fingerprint = `${Date.now().toString(16)}${trial.toString(16).padStart(4, '0')}`.slice(-16);
    const postedAt = Date.now();
    const store = world.remediation.store;
    if (alertPath.via === 'prometheus') await alertPath.watch(broken.alertname, postedAt, () => store.listRuns({ alertname: broken.alertname })[0], 120_000);
    else {
      say(`alert: ${broken.alertname} posted to ${world.url}/alertmanager/webhook`);
      const res = await fetch(`${world.url}/alertmanager/webhook`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${world.token}` },
        body: JSON.stringify(alertmanagerPayload(broken.labels, fingerprint, new Date(brokeAt).toISOString())),
      });
      if (res.status !== 202) throw new Error(`dbpilot's webhook answered ${res.status}: ${await res.text()}`);
    }
    let run: RunRow | undefined;
    const seen = new Map<string, string>();
    const deadline = Date.now() + 90_000;
    for (;;) {
      run ??= store.listRuns(alertPath.via === 'prometheus' ? { alertname: broken.alertname } : { fingerprint })[0];
      if (run) {
        run = store.getRun(run.id) ?? run;
        for (const s of store.steps(run.id)) {
          const key = `${s.status}:${s.finishedAt ?? ''}`;
          if (seen.get(s.name) !== key && s.status !== 'planned') {
            seen.set(s.name, key);
            progress.step(stepResult(s));
          }
        }
        if (FINAL_STATUSES.includes(run.status)) break;
      }
      if (Date.now() > deadline) throw new Error(`the run did not finish within 90 s${run ? ` (status ${run.status})` : ' (no run created)'}`);
      await sleep(25);
    }
    const finishedAt = run.finishedAt ?? run.updatedAt;
    say(`run ${run.id}: ${run.status}${run.reason ? ` (${run.reason})` : ''}`);
    const checks = await broken.verify({ brokeAt, postedAt, fingerprint });
    for (const c of checks) say(`check: ${c.ok ? 'ok' : 'FAILED'} ${c.name}: ${c.detail}`);
    await world.remediation.outbox.flush().catch(() => undefined);
    const rows = store.steps(run.id);
    const steps = rows.map(stepResult);
    const expected = broken.expectedRunStatus ?? 'succeeded';
    // The sandbox's store goes with the teardown: the page for --report is rendered now.
    const { renderTimeline } = await import('../report/timeline.js');
    const reportHtml = renderTimeline(store.getRun(run.id) ?? run, rows);
    result = {
      reportHtml,
      trial,
      scenario,
      alertname: broken.alertname,
      handler: run.handler,
      runId: run.id,
      runStatus: run.status,
      reason: run.reason,
      detectionMs: Date.parse(run.createdAt) - postedAt,
      planMs: rows[0]?.startedAt ? Date.parse(rows[0].startedAt) - Date.parse(run.createdAt) : null,
      recoveryMs: Date.parse(finishedAt) - brokeAt,
      expectedRunStatus: expected,
      measured: broken.measured ?? [],
      steps,
      checks,
      pages: world.pagerduty.accepted.length,
      recovered: run.status === expected && (broken.measured ?? []).every((m) => m.ok) && steps.every((s) => s.status === 'done' && s.checkOk !== false) && checks.every((c) => c.ok),
      target: world.kind,
      alertPath: alertPath.result,
      sandbox: { ports: [...world.ports(), ...alertPath.ports], dirs },
    };
  } finally {
    say(`teardown: ${sb ? 'stopping the sandbox' : 'removing what the drill made on the staging target, stopping its dbpilot'}`);
    await cleanup.all();
  }
  // Something the drill made and could not undo (on a staging target: still there) is a failed drill.
  const failures = cleanup.failures.slice(failuresBefore);
  if (failures.length > 0) {
    result.cleanupFailures = failures;
    result.recovered = false;
  }
  return result;
}
