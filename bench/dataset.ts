/**
 * The benchmark's own servers and data, shaped like the runbook's production: a PostgreSQL 15
 * primary with one streaming replica, the eight service databases with 150 tables each (one of them
 * Prisma's `_prisma_migrations`), rows spread over a long tail of table sizes, a few idle sessions
 * per database as the services' pools would hold, and a Redis with about 20,000 keys.
 *
 * Built fresh on every run (the harness puts the cluster in a temp dir); that takes well under a
 * minute here, and the time is printed. After loading, everything is VACUUM ANALYZEd and autovacuum is
 * turned off so no background worker adds CPU to the measurements.
 */
import pg from 'pg';
import { Redis } from 'ioredis';
import { startPgCluster, type PgCluster } from '../test/support/pg-cluster.js';
import { startRedis, type RedisNode } from '../test/support/redis-server.js';
import { onCleanup } from './cleanup.js';
import { findPostmaster } from './procs.js';

export const DATABASES = [
  'lomash_auth',
  'lomash_products',
  'lomash_orders',
  'lomash_appointments',
  'lomash_content',
  'lomash_customers',
  'lomash_notifications',
  'lomash_analytics',
] as const;

/**
 * A database nobody benchmarked uses: the meter's own pg_stat_database reads run here, so they never
 * show in the per-scrape statement counts (it is excluded from postgres_exporter's auto-discovery too).
 */
export const METER_DB = 'bench_meter';

export const TABLES_PER_DATABASE = 150;
export const REDIS_KEYS = 20_000;

/** Relative data volume per service (orders and analytics are the big ones). */
const SCALE: Record<(typeof DATABASES)[number], number> = {
  lomash_auth: 0.6,
  lomash_products: 1,
  lomash_orders: 1.5,
  lomash_appointments: 0.5,
  lomash_content: 0.8,
  lomash_customers: 1,
  lomash_notifications: 1.2,
  lomash_analytics: 2,
};

const NAMED_TABLES: Record<(typeof DATABASES)[number], string[]> = {
  lomash_auth: ['users', 'sessions', 'refresh_tokens', 'password_resets', 'roles', 'user_roles', 'audit_events'],
  lomash_products: ['products', 'product_variants', 'categories', 'product_images', 'prices', 'inventory', 'reviews'],
  lomash_orders: ['orders', 'order_items', 'payments', 'invoices', 'refunds', 'shipments', 'carts', 'cart_items'],
  lomash_appointments: ['appointments', 'showrooms', 'consultants', 'availability_slots', 'bookings'],
  lomash_content: ['pages', 'blog_posts', 'media', 'menus', 'banners', 'faqs'],
  lomash_customers: ['customers', 'addresses', 'wishlists', 'wishlist_items', 'loyalty_points', 'support_tickets'],
  lomash_notifications: ['notifications', 'email_templates', 'email_log', 'sms_log', 'push_tokens', 'preferences'],
  lomash_analytics: ['page_views', 'events', 'conversions', 'funnels', 'daily_aggregates', 'attribution'],
};

export interface Dataset {
  cluster: PgCluster;
  redis: RedisNode;
  databases: readonly string[];
  /** postmaster PIDs of the primary and the replica, for the CPU figures. */
  postmasters: { primary: number; replica: number };
  /** Seconds each build step took. */
  timings: Record<string, number>;
  totals: { tables: number; rows: number; databaseBytes: number; redisKeys: number };
}

const ROWS_BASE = 40_000;

/** Rows of the i-th table (0-based) of a database: a long tail from ~40k×scale down to ~60×scale; every 25th table empty. */
function rowsFor(i: number, scale: number): number {
  if (i % 25 === 24) return 0;
  return Math.round((scale * ROWS_BASE) / (i + 1) ** 1.3);
}

function quoteIdent(s: string): string {
  return `"${s.replaceAll('"', '""')}"`;
}

function tableNames(db: (typeof DATABASES)[number]): string[] {
  const named = NAMED_TABLES[db];
  const prefix = db.replace(/^lomash_/, '');
  const out = [...named];
  for (let i = out.length; out.length < TABLES_PER_DATABASE - 1; i++) out.push(`${prefix}_entity_${String(i).padStart(3, '0')}`);
  return out;
}

/** The DDL and DML of one database, as one multi-statement script. */
function databaseScript(db: (typeof DATABASES)[number]): { sql: string; tables: number; rows: number } {
  const parts: string[] = [];
  let rows = 0;
  tableNames(db).forEach((name, i) => {
    const t = quoteIdent(name);
    const n = rowsFor(i, SCALE[db]);
    rows += n;
    parts.push(
      `CREATE TABLE ${t} (id bigserial PRIMARY KEY, ref_id bigint, status text NOT NULL, amount numeric(12,2), note text, created_at timestamptz NOT NULL DEFAULT now());`,
    );
    if (i % 3 === 0) parts.push(`CREATE INDEX ON ${t} (ref_id);`);
    if (n > 0) {
      parts.push(
        `INSERT INTO ${t} (ref_id, status, amount, note, created_at) ` +
          `SELECT g % 997, (ARRAY['new','pending','paid','shipped','cancelled'])[1 + g % 5], (g % 100000) / 100.0, ` +
          `repeat(md5(g::text), 1 + g % 3), now() - make_interval(mins => g % 100000) FROM generate_series(1, ${n}) g;`,
      );
    }
  });
  // Prisma's own table, with finished migrations only (prisma_migrations_failed stays 0).
  parts.push(`CREATE TABLE "_prisma_migrations" (
    "id" VARCHAR(36) PRIMARY KEY NOT NULL, "checksum" VARCHAR(64) NOT NULL, "finished_at" TIMESTAMPTZ,
    "migration_name" VARCHAR(255) NOT NULL, "logs" TEXT, "rolled_back_at" TIMESTAMPTZ,
    "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(), "applied_steps_count" INTEGER NOT NULL DEFAULT 0);`);
  parts.push(
    `INSERT INTO "_prisma_migrations" (id, checksum, finished_at, migration_name, applied_steps_count) ` +
      `SELECT gen_random_uuid()::text, md5(g::text) || md5((g + 1)::text), now() - make_interval(days => 40 - g), ` +
      `to_char(now() - make_interval(days => 40 - g), 'YYYYMMDDHH24MISS') || '_migration_' || g, 1 FROM generate_series(1, 24) g;`,
  );
  return { sql: parts.join('\n'), tables: TABLES_PER_DATABASE, rows: rows + 24 };
}

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  c.on('error', () => undefined);
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

/** Runs fn over items with at most `limit` at once. */
async function pool<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

async function loadRedis(url: string): Promise<number> {
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  r.on('error', () => undefined);
  await r.connect();
  try {
    const day = 86_400;
    const batch = 1000;
    for (let start = 0; start < REDIS_KEYS; start += batch) {
      const p = r.pipeline();
      for (let i = start; i < Math.min(start + batch, REDIS_KEYS); i++) {
        const kind = i % 20;
        if (kind < 12) p.set(`session:${i.toString(16).padStart(8, '0')}`, JSON.stringify({ userId: i, roles: ['customer'], exp: Date.now() + day * 1000 }), 'EX', day);
        else if (kind < 16) p.hset(`cache:product:${i}`, { name: `Kitchen unit ${i}`, price: String((i % 5000) / 10), stock: String(i % 40), colour: 'oak', updated: String(Date.now()) });
        else if (kind < 18) p.set(`ratelimit:10.0.${(i >> 8) & 255}.${i & 255}`, String(i % 100), 'EX', 60 * 60);
        else if (kind < 19) p.rpush(`queue:notifications:${i}`, 'email', 'sms', 'push');
        else p.sadd(`cart:${i}`, `sku-${i}`, `sku-${i + 1}`, `sku-${i + 2}`);
      }
      await p.exec();
    }
    return await r.dbsize();
  } finally {
    r.disconnect();
  }
}

/** Waits until the replica has replayed everything the primary has written so far. */
async function waitForReplica(primaryUrl: string, replicaUrl: string, timeoutMs = 120_000): Promise<void> {
  const target = await withClient(primaryUrl, async (c) => (await c.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn')).rows[0]!.lsn);
  const deadline = Date.now() + timeoutMs;
  await withClient(replicaUrl, async (c) => {
    for (;;) {
      const { rows } = await c.query<{ behind: boolean }>('SELECT pg_last_wal_replay_lsn() < $1::pg_lsn AS behind', [target]);
      if (!rows[0]!.behind) return;
      if (Date.now() > deadline) throw new Error('replica did not catch up with the primary in time');
      await new Promise((r) => setTimeout(r, 100));
    }
  });
}

export async function buildDataset(log: (msg: string) => void): Promise<Dataset> {
  const timings: Record<string, number> = {};
  const t0 = performance.now();
  const step = (name: string, since: number) => (timings[name] = (performance.now() - since) / 1000);

  let t = performance.now();
  const [pgRes, redisRes] = await Promise.allSettled([startPgCluster({ replicas: 1 }), startRedis()]);
  if (pgRes.status === 'fulfilled') {
    const c = pgRes.value;
    // The data is thrown away: an immediate shutdown skips the shutdown checkpoint of a fast one.
    onCleanup('PostgreSQL cluster', async () => {
      await Promise.allSettled(c.replicas.map((r) => r.stop('immediate')));
      await c.primary.stop('immediate').catch(() => undefined);
      await c.stop();
    });
  }
  if (redisRes.status === 'fulfilled') onCleanup('Redis', () => redisRes.value.stop());
  if (pgRes.status === 'rejected') throw pgRes.reason;
  if (redisRes.status === 'rejected') throw redisRes.reason;
  const cluster = pgRes.value;
  const redis = redisRes.value;
  const replica = cluster.replicas[0]!;
  step('servers', t);
  log(`PostgreSQL primary :${cluster.primary.port}, replica :${replica.port}, Redis :${redis.port} (${timings.servers!.toFixed(1)} s)`);

  t = performance.now();
  const redisKeys = loadRedis(redis.url).then((n) => {
    step('redis', t);
    return n;
  });

  await withClient(cluster.primary.url(), async (c) => {
    for (const db of [...DATABASES, METER_DB]) await c.query(`CREATE DATABASE ${quoteIdent(db)}`);
  });
  let rows = 0;
  let tables = 0;
  await pool(DATABASES, 3, async (db) => {
    const script = databaseScript(db);
    await withClient(cluster.primary.url(db), (c) => c.query(script.sql));
    rows += script.rows;
    tables += script.tables;
  });
  step('load', t);
  log(`loaded ${DATABASES.length} databases × ${TABLES_PER_DATABASE} tables, ${rows.toLocaleString('en')} rows (${timings.load!.toFixed(1)} s)`);

  t = performance.now();
  await pool(DATABASES, 2, (db) => withClient(cluster.primary.url(db), async (c) => void (await c.query('VACUUM ANALYZE'))));
  const databaseBytes = await withClient(cluster.primary.url(), async (c) => {
    await c.query('ALTER SYSTEM SET autovacuum = off');
    await c.query('SELECT pg_reload_conf()');
    await c.query('CHECKPOINT');
    const { rows: r } = await c.query<{ bytes: string }>('SELECT sum(pg_database_size(datname))::text AS bytes FROM pg_database WHERE datname = ANY($1)', [
      [...DATABASES],
    ]);
    return Number(r[0]!.bytes);
  });
  await waitForReplica(cluster.primary.url(), replica.url());
  step('vacuum_and_replica_catch_up', t);

  const keys = await redisKeys;

  // Idle sessions as the services' connection pools would hold: two per database.
  const idle: pg.Client[] = [];
  onCleanup('idle service sessions', () => Promise.allSettled(idle.map((c) => c.end())).then(() => undefined));
  for (const db of DATABASES) {
    for (let i = 0; i < 2; i++) {
      const c = new pg.Client({ connectionString: cluster.primary.url(db), application_name: `${db.replace(/^lomash_/, '')}-service` });
      c.on('error', () => undefined);
      await c.connect();
      // Forces this session's stats out now, so its one transaction never lands inside a measurement.
      await c.query('SELECT pg_stat_force_next_flush()');
      idle.push(c);
    }
  }

  const primaryPm = findPostmaster(cluster.primary.dataDir);
  const replicaPm = findPostmaster(replica.dataDir);
  if (primaryPm === null || replicaPm === null) throw new Error('could not find the postmaster processes of the bench cluster in /proc');

  timings.total = (performance.now() - t0) / 1000;
  log(
    `dataset ready in ${timings.total.toFixed(1)} s: ${(databaseBytes / 1024 / 1024).toFixed(0)} MiB in the 8 databases, ` +
      `${keys.toLocaleString('en')} Redis keys (Redis load ${timings.redis!.toFixed(1)} s, in parallel)`,
  );
  return {
    cluster,
    redis,
    databases: DATABASES,
    postmasters: { primary: primaryPm, replica: replicaPm },
    timings,
    totals: { tables, rows, databaseBytes, redisKeys: keys },
  };
}
