/**
 * What a scrape costs the servers.
 *
 * SQL per scrape: the sum of xact_commit + xact_rollback in pg_stat_database over every database
 * but the meter's own, on the primary and the replica (every exporter statement is its own
 * transaction). PostgreSQL 15 backends flush these counters lazily (at most once a second, and an idle
 * backend up to 10 s later), so the reading after a run is taken once the exporter has stopped and
 * its backends have exited — an exiting backend flushes everything — and the figure is divided by
 * every scrape the exporter served, warm-up included.
 *
 * CPU: user + system time of the server processes (/proc), including backends that exited
 * (the postmaster's cutime/cstime), minus what the idle servers use in the same time.
 */
import pg from 'pg';
import type { Dataset } from './dataset.js';
import { METER_DB } from './dataset.js';
import { serverCpuSeconds, cpuSeconds } from './procs.js';
import fs from 'node:fs';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface ServerCpu {
  primary: number;
  replica: number;
  redis: number;
}

export class Meter {
  private readonly primary: pg.Client;
  private readonly replica: pg.Client;
  /** CPU seconds per wall second of the idle servers, subtracted from every reading. */
  idleRate: ServerCpu = { primary: 0, replica: 0, redis: 0 };

  private constructor(
    private readonly ds: Dataset,
    primary: pg.Client,
    replica: pg.Client,
    private readonly redisPid: number | null,
  ) {
    this.primary = primary;
    this.replica = replica;
  }

  static async open(ds: Dataset): Promise<Meter> {
    const mk = async (url: string) => {
      const c = new pg.Client({ connectionString: url, application_name: 'bench_meter' });
      c.on('error', () => undefined);
      await c.connect();
      return c;
    };
    const primary = await mk(ds.cluster.primary.url(METER_DB));
    const replica = await mk(ds.cluster.replicas[0]!.url(METER_DB));
    return new Meter(ds, primary, replica, findRedisPid(ds.redis.port));
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.primary.end(), this.replica.end()]);
  }

  /** Transactions so far on both servers, in every database but the meter's. */
  async transactions(): Promise<number> {
    const q = `SELECT coalesce(sum(xact_commit + xact_rollback), 0)::text AS n FROM pg_stat_database WHERE datname IS DISTINCT FROM $1`;
    const [a, b] = await Promise.all([this.primary.query<{ n: string }>(q, [METER_DB]), this.replica.query<{ n: string }>(q, [METER_DB])]);
    return Number(a.rows[0]!.n) + Number(b.rows[0]!.n);
  }

  /** Client backends (other than ours and the idle service sessions) still connected, on both servers. */
  async foreignBackends(): Promise<number> {
    const q = `SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
        AND application_name <> 'bench_meter' AND application_name NOT LIKE '%-service'`;
    const [a, b] = await Promise.all([this.primary.query<{ n: number }>(q), this.replica.query<{ n: number }>(q)]);
    return a.rows[0]!.n + b.rows[0]!.n;
  }

  /** Client backends with this application_name, on both servers. */
  async connections(applicationName: string): Promise<number> {
    const q = `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1`;
    const [a, b] = await Promise.all([this.primary.query<{ n: number }>(q, [applicationName]), this.replica.query<{ n: number }>(q, [applicationName])]);
    return a.rows[0]!.n + b.rows[0]!.n;
  }

  /**
   * Waits until no exporter backend is connected and the counters have stopped moving, then returns
   * the transaction count. Throws if that does not happen in time (something else is using the servers).
   */
  async settledTransactions(timeoutMs = 20_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while ((await this.foreignBackends()) > 0) {
      if (Date.now() > deadline) throw new Error('exporter backends did not disconnect from PostgreSQL in time');
      await sleep(50);
    }
    let prev = await this.transactions();
    for (;;) {
      await sleep(300);
      const cur = await this.transactions();
      if (cur === prev) return cur;
      if (Date.now() > deadline) throw new Error('pg_stat_database kept changing with no exporter connected');
      prev = cur;
    }
  }

  /** CPU seconds used so far by the primary, the replica and Redis (raw, not idle-corrected). */
  serverCpu(): ServerCpu {
    return {
      primary: serverCpuSeconds([this.ds.postmasters.primary]),
      replica: serverCpuSeconds([this.ds.postmasters.replica]),
      redis: this.redisPid === null ? Number.NaN : (cpuSeconds(this.redisPid) ?? Number.NaN),
    };
  }

  /** Measures the idle servers' CPU over `ms`, to subtract from every later reading. */
  async calibrateIdle(ms = 3000): Promise<ServerCpu> {
    const a = this.serverCpu();
    const t = performance.now();
    await sleep(ms);
    const b = this.serverCpu();
    const s = (performance.now() - t) / 1000;
    this.idleRate = { primary: (b.primary - a.primary) / s, replica: (b.replica - a.replica) / s, redis: (b.redis - a.redis) / s };
    return this.idleRate;
  }

  /** CPU seconds the servers spent between two readings `seconds` apart, idle use subtracted. */
  netCpu(a: ServerCpu, b: ServerCpu, seconds: number): ServerCpu {
    const net = (k: keyof ServerCpu) => Math.max(0, b[k] - a[k] - this.idleRate[k] * seconds);
    return { primary: net('primary'), replica: net('replica'), redis: net('redis') };
  }
}

/** redis-server sets its process title to `redis-server 127.0.0.1:<port>`. */
function findRedisPid(port: number): number | null {
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (/redis-server/.test(cmd) && (cmd.includes(`:${port}`) || cmd.includes(`--port ${port} `))) return Number(e);
    } catch {
      // gone
    }
  }
  return null;
}
