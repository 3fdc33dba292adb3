/**
 * The real service for tests: a Config built through parseConfig (so every default and check
 * applies), pointed at the harness servers, with a pino logger whose lines are captured, listening on
 * 127.0.0.1 port 0. Tests talk to it over real HTTP.
 */
import pg from 'pg';
import { inject } from 'vitest';
import { parseConfig, type Config } from '../../src/config.js';
import { createLogger, type Logger } from '../../src/logger.js';
import { startService, type Service } from '../../src/server.js';
import type { Runtime } from '../../src/runtime.js';
import { refuseSharedServers } from './no-shared-servers.js';

type Plain = Record<string, unknown>;

const isPlain = (v: unknown): v is Plain => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Objects merge key by key; arrays and scalars in `over` replace. */
function merge(base: Plain, over: Plain): Plain {
  const out: Plain = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const cur = out[k];
    out[k] = isPlain(cur) && isPlain(v) ? merge(cur, v) : v;
  }
  return out;
}

/** The shared harness servers (global-setup) as a configuration document. */
export function harnessDocument(): Plain {
  return {
    listen: '127.0.0.1:0',
    logLevel: 'debug',
    postgres: {
      primary: { url: inject('pgPrimaryUrl') },
      replicas: inject('pgReplicaUrls').map((url) => ({ url })),
    },
    redis: { url: inject('redisUrl') },
  };
}

/**
 * A validated Config on the harness servers with `overrides` merged in. The environment is not
 * consulted, so DBPILOT_* variables of the shell running the tests cannot change what is tested.
 */
export function makeConfig(overrides: Plain = {}): Config {
  const doc = merge(harnessDocument(), overrides);
  refuseSharedServers(doc, 'makeConfig');
  return parseConfig(doc, {});
}

export interface CapturedLog {
  /** Every line exactly as pino wrote it (JSON text). */
  readonly lines: string[];
  /** The lines parsed. */
  entries(): Plain[];
  /** All lines joined, for "does any line contain X". */
  text(): string;
}

export function captureLogger(level: string): { logger: Logger; log: CapturedLog } {
  const lines: string[] = [];
  const logger = createLogger(level, { write: (s: string) => void lines.push(s) });
  return {
    logger,
    log: {
      lines,
      entries: () => lines.map((l) => JSON.parse(l) as Plain),
      text: () => lines.join(''),
    },
  };
}

export interface TestService {
  /** http://127.0.0.1:PORT */
  url: string;
  service: Service;
  runtime: Runtime;
  config: Config;
  log: CapturedLog;
  close(): Promise<void>;
}

/** startService on 127.0.0.1:0 (whatever `listen` says) with a capturing logger at the config's level. */
export async function startTestService(config: Config): Promise<TestService> {
  refuseSharedServers(config, 'startTestService');
  const cfg: Config = config.listen === '127.0.0.1:0' ? config : parseConfig({ ...structuredClone(config), listen: '127.0.0.1:0' }, {});
  const { logger, log } = captureLogger(cfg.logLevel);
  const service = await startService(cfg, logger);
  const { port } = service.address;
  return {
    url: `http://127.0.0.1:${port}`,
    service,
    runtime: service.runtime,
    config: cfg,
    log,
    close: () => service.close(),
  };
}

/** GET a JSON route; returns the status and the parsed body. */
export async function getJson(url: string): Promise<{ status: number; body: unknown; contentType: string }> {
  const res = await fetch(url);
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // keep the text
  }
  return { status: res.status, body, contentType: res.headers.get('content-type') ?? '' };
}

// ---------------------------------------------------------------------------------------------------
// Direct PostgreSQL access for arranging a test (never through dbpilot's own code).

/** One statement on a fresh connection. */
export async function pgQuery<T extends pg.QueryResultRow = Record<string, unknown>>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end().catch(() => {});
  }
}

/** `url` with its database replaced. */
export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

export interface TempDatabase {
  name: string;
  /** URL of the new database on the same server. */
  url: string;
  /** DROP DATABASE … WITH (FORCE); safe to call more than once. */
  drop(): Promise<void>;
}

let tempCounter = 0;

/** A new, uniquely named database on the server of `serverUrl` (the shared primary by default). */
export async function createTempDatabase(tag: string, serverUrl: string = inject('pgPrimaryUrl')): Promise<TempDatabase> {
  const name = `dbpilot_t_${tag}_${process.pid}_${++tempCounter}`;
  await pgQuery(serverUrl, `CREATE DATABASE "${name}"`);
  let dropped = false;
  return {
    name,
    url: withDatabase(serverUrl, name),
    drop: async () => {
      if (dropped) return;
      dropped = true;
      await pgQuery(serverUrl, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    },
  };
}

/** host:port of a URL: dbpilot's `server` label. */
/** `_prisma_migrations` as `prisma migrate` creates it (prisma-engines, migration-engine postgres connector). */
export const PRISMA_DDL = `CREATE TABLE "_prisma_migrations" (
    "id"                    VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum"              VARCHAR(64) NOT NULL,
    "finished_at"           TIMESTAMPTZ,
    "migration_name"        VARCHAR(255) NOT NULL,
    "logs"                  TEXT,
    "rolled_back_at"        TIMESTAMPTZ,
    "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count"   INTEGER NOT NULL DEFAULT 0
)`;

export function serverOf(url: string): string {
  const u = new URL(url);
  return `${u.hostname}:${u.port || '5432'}`;
}
