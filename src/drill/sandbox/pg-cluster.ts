/**
 * Throw-away PostgreSQL 15 clusters (a primary plus streaming replicas) for tests.
 *
 * Every node lives in one temp dir per cluster, listens on 127.0.0.1 on a free port and never touches
 * the machine's own PostgreSQL on 5432.
 *
 * How processes are run, and why:
 * - initdb / pg_basebackup / postgres refuse root (or would leave root-owned files), so as root they
 *   run as the `postgres` OS user. We use `setpriv` (util-linux, like `runuser`) rather than `runuser`
 *   because setpriv *execs* the command: the PID we spawn is the postmaster itself, Node reaps it at
 *   once, and signals go straight to it (runuser stays as a parent that swallows and re-sends them).
 * - `--pdeathsig KILL` makes the kernel SIGKILL a server whenever the test process dies, even in ways
 *   that run no JS (SIGKILL of a vitest worker, a crash); onExitCleanup() also removes the temp dirs.
 * - Port, socket dir and cluster_name are given on the postgres command line, not in postgresql.conf,
 *   so a replica's copied config (and anything a test writes with ALTER SYSTEM) cannot move its port.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { freePort, onExitCleanup, waitForPortClosed } from './ports.js';

const PG_BIN = process.env.DBPILOT_TEST_PG_BIN ?? '/usr/lib/postgresql/15/bin';
const IS_ROOT = process.getuid?.() === 0;
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 30_000;

export interface PgNode {
  /** 'primary', 'replica1', 'replica2', … — also the replica's application_name and cluster_name. */
  readonly name: string;
  readonly host: '127.0.0.1';
  readonly port: number;
  readonly dataDir: string;
  /** The server's log (stderr of the postmaster). */
  readonly logFile: string;
  /** postgresql://user@127.0.0.1:port/db (trust auth, no password). */
  url(db?: string, user?: string): string;
  /** Clean shutdown: 'fast' (default, SIGINT) or 'immediate' (SIGQUIT, crash recovery on next start). */
  stop(mode?: 'fast' | 'immediate'): Promise<void>;
  /** SIGKILL the postmaster (and its child processes); resolves once the port refuses connections. */
  kill(): Promise<void>;
  /** Start again on the same port and data dir; resolves when it accepts connections. No-op if running. */
  start(): Promise<void>;
}

export interface PgCluster {
  readonly primary: PgNode;
  readonly replicas: PgNode[];
  /** Stops every node and removes the cluster's temp dir. Safe to call more than once. */
  stop(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------
// Running PostgreSQL programs (as `postgres` when we are root).

let pgIds: { uid: number; gid: number } | undefined;
function postgresIds(): { uid: number; gid: number } {
  pgIds ??= {
    uid: Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim()),
    gid: Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim()),
  };
  return pgIds;
}

/** Gives a dir (not recursively) to the postgres user when we run as root. */
function ownByPostgres(p: string): void {
  if (!IS_ROOT) return;
  const { uid, gid } = postgresIds();
  fs.chownSync(p, uid, gid);
}

/** [command, args] that runs a PostgreSQL binary as the right user, killed if we die. */
function pgCommand(bin: string, args: string[]): [string, string[]] {
  const user = IS_ROOT ? ['--reuid=postgres', '--regid=postgres', '--init-groups'] : [];
  return ['setpriv', [...user, '--pdeathsig=KILL', '--', path.join(PG_BIN, bin), ...args]];
}

/** Runs a short-lived PostgreSQL program; rejects with its output on failure. */
function runPg(bin: string, args: string[], timeoutMs = 120_000): Promise<void> {
  const [cmd, argv] = pgCommand(bin, args);
  return new Promise((resolve, reject) => {
    execFile(cmd, argv, { timeout: timeoutMs, cwd: os.tmpdir() }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${bin} ${args.join(' ')} failed: ${err.message}\n${stdout}${stderr}`));
      else resolve();
    });
  });
}

/** PIDs whose parent is `pid` (postgres backends call setsid(), so a process-group kill misses them). */
function childPids(pid: number): number[] {
  const result: number[] = [];
  let entries: string[];
  try {
    entries = fs.readdirSync('/proc');
  } catch {
    return result;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Format: pid (comm) state ppid … — comm may contain spaces/parens, so split after the last ')'.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) result.push(Number(entry));
    } catch {
      // the process went away while we looked
    }
  }
  return result;
}

function trySignal(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------------------------------------------
// One server

/** Settings shared by every node; a replica inherits them through pg_basebackup. */
const POSTGRESQL_CONF = `
# --- dbpilot test harness ---
listen_addresses = '127.0.0.1'
max_connections = 100
shared_buffers = '32MB'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
# A replica that was stopped for a while can catch up without a slot.
wal_keep_size = '256MB'
hot_standby = on
# Reconnect a standby to its primary quickly after the primary restarts (default 5s).
wal_retrieve_retry_interval = '500ms'
# Speed over durability: the data is thrown away. A killed *process* loses nothing with fsync off (the
# OS still has the pages); only a machine crash would. full_page_writes stays on (the default) because
# pg_rewind refuses to run without it. synchronous_commit also stays on: with it off, a commit can still
# sit in shared memory when a test SIGKILLs the server, and committed rows vanish (seen here); with
# fsync off, "on" costs only a write() per commit.
fsync = off
log_line_prefix = '%m [%p] %q%a '
`;

const PG_HBA_CONF = `
# --- dbpilot test harness: trust everything local ---
local all all trust
local replication all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
`;

class PgServer implements PgNode {
  readonly host = '127.0.0.1' as const;
  readonly dataDir: string;
  /** Holds the data dir, the unix socket and the log file. */
  readonly nodeDir: string;
  readonly logFile: string;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(
    readonly name: string,
    public port: number,
    nodeDir: string,
  ) {
    this.nodeDir = nodeDir;
    this.dataDir = path.join(nodeDir, 'data');
    this.logFile = path.join(nodeDir, 'postgres.log');
  }

  url(db = 'postgres', user = 'postgres'): string {
    return `postgresql://${encodeURIComponent(user)}@${this.host}:${this.port}/${encodeURIComponent(db)}`;
  }

  get running(): boolean {
    return this.child !== undefined;
  }

  async start(): Promise<void> {
    if (this.running) return;
    // Right after a kill, the old lock file or shared memory may briefly still look in use; retry.
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      try {
        await this.startOnce(deadline);
        return;
      } catch (err) {
        if (Date.now() >= deadline || !/lock file|shared memory block/.test(errorMessage(err))) throw err;
        await sleep(200);
      }
    }
  }

  /** First start of a new node: on a port clash (another process took our "free" port) pick another. */
  async startFresh(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.startOnce(Date.now() + START_TIMEOUT_MS);
        return;
      } catch (err) {
        if (attempt >= 3 || !/could not bind|could not create any TCP\/IP sockets/.test(errorMessage(err))) throw err;
        this.port = await freePort();
      }
    }
  }

  private async startOnce(deadline: number): Promise<void> {
    const logOffset = fs.existsSync(this.logFile) ? fs.statSync(this.logFile).size : 0;
    const logFd = fs.openSync(this.logFile, 'a');
    let child: ChildProcess;
    try {
      const [cmd, argv] = pgCommand('postgres', [
        '-D', this.dataDir,
        '-p', String(this.port),
        '-k', this.nodeDir,
        '-c', `cluster_name=${this.name}`,
      ]);
      // detached: not in our process group, so a Ctrl-C in the terminal reaches vitest, which then
      // shuts servers down in order (or pdeathsig does it) instead of every postmaster at once.
      child = spawn(cmd, argv, { stdio: ['ignore', logFd, logFd], detached: true });
    } finally {
      fs.closeSync(logFd);
    }
    child.unref(); // a running server must not keep a test process alive
    let hasExited = false;
    this.exited = new Promise<void>((resolve) => {
      const onGone = (): void => {
        hasExited = true;
        if (this.child === child) this.child = undefined;
        resolve();
      };
      child.once('exit', onGone);
      // spawn failures (e.g. setpriv missing) come as 'error', possibly without 'exit'
      child.once('error', onGone);
    });
    this.child = child;

    // Ready = a real query succeeds (a standby accepts connections once it is consistent).
    for (;;) {
      if (hasExited) {
        throw new Error(`${this.name}: postgres exited during start (port ${this.port}):\n${this.readLog(logOffset)}`);
      }
      if (await this.acceptsQueries()) return;
      if (Date.now() >= deadline) {
        this.killSync();
        throw new Error(`${this.name}: postgres not ready on port ${this.port} in time:\n${this.readLog(logOffset)}`);
      }
      await sleep(50);
    }
  }

  private async acceptsQueries(): Promise<boolean> {
    const client = new pg.Client({ connectionString: this.url(), connectionTimeoutMillis: 1000, query_timeout: 2000 });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query('SELECT 1');
      return true;
    } catch {
      return false;
    } finally {
      await client.end().catch(() => {});
    }
  }

  async stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    const child = this.child;
    if (child?.pid === undefined) return;
    // The child is unref'd while it runs; hold the event loop open until it has exited. The timeout
    // timer is unref'd instead, so a quick stop leaves no 30 s timer behind to delay process exit.
    child.ref();
    // The postmaster's own shutdown signals: SIGINT = fast, SIGQUIT = immediate.
    trySignal(child.pid, mode === 'fast' ? 'SIGINT' : 'SIGQUIT');
    const timeout = sleep(STOP_TIMEOUT_MS, undefined, { ref: false }).then(() => false);
    const stopped = await Promise.race([this.exited.then(() => true), timeout]);
    if (!stopped) {
      this.killSync();
      await this.exited;
    }
    await waitForPortClosed(this.port, 10_000);
  }

  async kill(): Promise<void> {
    if (this.child === undefined) return;
    this.child.ref(); // see stop()
    this.killSync();
    await waitForPortClosed(this.port, 10_000);
    // The postmaster is our direct child, so Node reaps it right away: no zombie holds postmaster.pid.
    await Promise.race([this.exited, sleep(5_000, undefined, { ref: false })]);
  }

  /**
   * SIGKILL the postmaster and its children. The children would die on their own once they notice the
   * postmaster is gone, but killing them too means nothing still holds the shared memory or answers on
   * an open connection, so start() right after is reliable. Synchronous: also used at process exit.
   */
  killSync(): void {
    const pid = this.child?.pid;
    if (pid === undefined) return;
    const children = childPids(pid);
    trySignal(pid, 'SIGKILL');
    for (const c of children) trySignal(c, 'SIGKILL');
  }

  /** The log written since byte `from` (the tail, if long) — for error messages. */
  readLog(from = 0): string {
    try {
      const text = fs.readFileSync(this.logFile, 'utf8').slice(from);
      return text.length > 4000 ? `…${text.slice(-4000)}` : text;
    } catch {
      return '(no log)';
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Cluster

async function waitForStreaming(primary: PgServer, names: string[], timeoutMs: number): Promise<void> {
  if (names.length === 0) return;
  const deadline = Date.now() + timeoutMs;
  let seen: string[] = [];
  for (;;) {
    const client = new pg.Client({ connectionString: primary.url(), connectionTimeoutMillis: 1000, query_timeout: 2000 });
    client.on('error', () => {});
    try {
      await client.connect();
      const { rows } = await client.query<{ application_name: string; state: string }>(
        'SELECT application_name, state FROM pg_stat_replication',
      );
      seen = rows.map((r) => `${r.application_name}=${r.state}`);
      const streaming = new Set(rows.filter((r) => r.state === 'streaming').map((r) => r.application_name));
      if (names.every((n) => streaming.has(n))) return;
    } catch {
      // not ready yet
    } finally {
      await client.end().catch(() => {});
    }
    if (Date.now() >= deadline) {
      throw new Error(`replicas ${names.join(', ')} not streaming after ${timeoutMs} ms (pg_stat_replication: ${seen.join(', ') || 'empty'})`);
    }
    await sleep(50);
  }
}

/** Clones the primary into a new replica's data dir (not started yet). */
async function createReplica(primary: PgServer, name: string, baseDir: string): Promise<PgServer> {
  const nodeDir = path.join(baseDir, name);
  fs.mkdirSync(nodeDir);
  ownByPostgres(nodeDir);
  const node = new PgServer(name, await freePort(), nodeDir);
  // -c fast: without it pg_basebackup waits for a spread checkpoint (~90 s instead of ~1 s).
  await runPg('pg_basebackup', [
    '-h', primary.host, '-p', String(primary.port), '-U', 'postgres',
    '-D', node.dataDir, '-R', '-X', 'stream', '-c', 'fast', '--no-sync',
  ]);
  // -R wrote standby.signal and a primary_conninfo into postgresql.auto.conf; a later line in the same
  // file wins, so this sets the application_name that pg_stat_replication shows.
  fs.appendFileSync(
    path.join(node.dataDir, 'postgresql.auto.conf'),
    `primary_conninfo = 'host=${primary.host} port=${primary.port} user=postgres application_name=${name}'\n`,
  );
  return node;
}

/**
 * Starts a primary and `replicas` (default 1) streaming replicas named replica1, replica2, …
 * Resolves once every replica shows as `streaming` in the primary's pg_stat_replication.
 * `dataChecksums` (default true) is initdb's --data-checksums; replicas inherit it.
 */
export async function startPgCluster(opts: { replicas?: number; dataChecksums?: boolean } = {}): Promise<PgCluster> {
  const replicaCount = opts.replicas ?? 1;
  // On by default (pg_rewind needs it, see below); `false` for a cluster like one initialised without -k.
  const dataChecksums = opts.dataChecksums ?? true;
  const baseDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dbpilot-pg-'));
  ownByPostgres(baseDir);

  const nodes: PgServer[] = [];
  const unregisterCleanup = onExitCleanup(() => {
    for (const n of nodes) n.killSync();
    fs.rmSync(baseDir, { recursive: true, force: true, maxRetries: 3 });
  });
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    // Replicas first, so they do not log a burst of reconnect errors against a stopping primary.
    const [primaryNode, ...replicaNodes] = nodes;
    await Promise.allSettled(replicaNodes.map((n) => n.stop('fast')));
    if (primaryNode) await primaryNode.stop('fast').catch(() => {});
    for (const n of nodes) n.killSync(); // anything a failed stop left behind
    fs.rmSync(baseDir, { recursive: true, force: true, maxRetries: 3 });
    unregisterCleanup();
  };

  try {
    const primaryDir = path.join(baseDir, 'primary');
    fs.mkdirSync(primaryDir);
    ownByPostgres(primaryDir);
    const primary = new PgServer('primary', await freePort(), primaryDir);
    nodes.push(primary);
    // --data-checksums also makes hint-bit changes WAL-logged, which pg_rewind needs.
    await runPg('initdb', [
      '-D', primary.dataDir, ...(dataChecksums ? ['--data-checksums'] : []), '-A', 'trust', '-U', 'postgres',
      '-E', 'UTF8', '--locale=C', '--no-sync', '--no-instructions',
    ]);
    fs.appendFileSync(path.join(primary.dataDir, 'postgresql.conf'), POSTGRESQL_CONF);
    fs.writeFileSync(path.join(primary.dataDir, 'pg_hba.conf'), PG_HBA_CONF);
    await primary.startFresh();

    const names = Array.from({ length: replicaCount }, (_, i) => `replica${i + 1}`);
    // allSettled, not all: on a failure, stop() must not run while another replica is still starting.
    const results = await Promise.allSettled(
      names.map(async (name) => {
        const replica = await createReplica(primary, name, baseDir);
        nodes.push(replica); // before start, so stop() and the exit clean-up see it
        await replica.startFresh();
        return replica;
      }),
    );
    const replicas: PgServer[] = [];
    for (const result of results) {
      if (result.status === 'rejected') throw result.reason;
      replicas.push(result.value);
    }
    await waitForStreaming(primary, names, START_TIMEOUT_MS);
    return { primary, replicas, stop };
  } catch (err) {
    await stop().catch(() => {});
    throw err;
  }
}
