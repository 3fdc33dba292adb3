/**
 * One typed, validated configuration: a YAML file (with `${ENV}` expansion) plus the `DBPILOT_*`
 * environment overrides, checked once against one schema. Everything else in dbpilot takes a
 * `Config` and never re-validates. Unknown keys are refused so a typo cannot silently disable a
 * safety bound; a bad value stops start-up with the path of the field and the reason.
 */
import { existsSync, readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';
import { ConfigError, redactUrl, safeMessage } from './errors.js';
import { TEAMS } from './remediation/escalation.js';
import { MODES, type Mode } from './modes.js';
import { HANDLER_NAMES, databaseName, type HandlerName } from './remediation/handlers/options.js';
import { checkPrismaServices, failoverSettings, handlersSchema, prismaServiceSettings } from './remediation/handlers/index.js';
import { validate as validateCron } from 'node-cron';
import { instanceIdentifierProblem, snapshotIdentifierProblem } from './integrations/rds.js';

export { MODES, type Mode } from './modes.js';
export { HANDLER_NAMES, type HandlerName } from './remediation/handlers/options.js';

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'expected host:port, e.g. 127.0.0.1:9630')
  .refine((s) => {
    const port = Number(s.slice(s.lastIndexOf(':') + 1));
    return port >= 0 && port <= 65535;
  }, 'port must be 0..65535');

const postgresUrl = z.string().refine((s) => {
  try {
    const u = new URL(s);
    return (u.protocol === 'postgres:' || u.protocol === 'postgresql:') && u.hostname !== '';
  } catch {
    return false;
  }
}, 'expected a postgres://user@host:port/database URL');

const redisUrl = z.string().refine((s) => {
  try {
    const u = new URL(s);
    return (u.protocol === 'redis:' || u.protocol === 'rediss:') && u.hostname !== '';
  } catch {
    return false;
  }
}, 'expected a redis://host:port URL');

const pgServer = z.strictObject({
  url: postgresUrl,
  /** The Kubernetes pod the runbook's kubectl lines name (e.g. postgres-primary-0). */
  pod: z.string().min(1).optional(),
  /**
   * host:port the services reach this server at (what a failover writes into their DATABASE_URL when
   * this server becomes primary); default: the host:port of `url`.
   */
  serviceHost: hostPort.optional(),
});

/** What this dbpilot watches: `prisma migrate reset` (dbpilot migrate-reset) is refused in production. */
export const ENVIRONMENTS = ['production', 'staging', 'development'] as const;

const configSchema = z.strictObject({
  listen: hostPort.default('127.0.0.1:9630'),
  mode: z.enum(MODES).default('dry-run'),
  /** production unless said otherwise: what is refused in production stays refused by default. */
  environment: z.enum(ENVIRONMENTS).default('production'),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  postgres: z
    .strictObject({
      primary: pgServer.default({ url: 'postgres://postgres@127.0.0.1:5432/postgres' }),
      replicas: z.array(pgServer).default([]),
      /** Databases whose sizes, activity and Prisma migrations are exported; empty = every connectable database. */
      databases: z.array(databaseName).default([]),
      longRunningQuerySeconds: z.number().positive().default(30),
      dataDirectory: z.string().min(1).optional(),
      /** Kept short so a dead server shows as pg_up 0 within one scrape (see DEPENDENCIES: a 1 s failure is no signal at a 1 s interval). */
      connectTimeoutMs: z.number().int().min(10).max(60_000).default(300),
      queryTimeoutMs: z.number().int().min(10).max(300_000).default(500),
      /** Remediation statements and their checks (pg_cancel_backend, VACUUM's bookkeeping, …): not bound by the scrape budget. */
      actionTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
      /** Persistent connections per (server, database) pool; the server-wide collectors run side by side on the default database, so 4 keeps them from queueing. */
      poolMax: z.number().int().min(1).max(20).default(4),
      tableSizeTopN: z.number().int().min(1).max(1000).default(10),
      /** pg_database_size / pg_total_relation_size are expensive: refreshed at most this often, served from cache in between. */
      sizeRefreshSeconds: z.number().int().min(1).default(60),
      /** _prisma_migrations is read per database (a connection each): at most this often, served from cache in between; 0 reads it on every scrape. */
      prismaRefreshSeconds: z.number().int().min(0).default(30),
    })
    .prefault({}),
  redis: z
    .strictObject({
      url: redisUrl.default('redis://127.0.0.1:6379'),
      connectTimeoutMs: z.number().int().min(10).max(60_000).default(300),
      commandTimeoutMs: z.number().int().min(10).max(60_000).default(500),
    })
    .prefault({}),
  collectors: z
    .strictObject({
      /** Each collector's budget; a scrape never waits longer than this for one collector. */
      timeoutMs: z.number().int().min(10).max(60_000).default(800),
    })
    .prefault({}),
  kubernetes: z
    .strictObject({
      /** Path to a kubeconfig; else KUBECONFIG, else the in-cluster service account. */
      kubeconfig: z.string().min(1).optional(),
      namespace: z.string().min(1).default('lomash-wood'),
      secrets: z.array(z.strictObject({ name: z.string().min(1), key: z.string().min(1) })).default([]),
      deployments: z.array(z.string().min(1)).default([]),
      redisStatefulSet: z.string().min(1).default('redis'),
      lease: z
        .strictObject({
          name: z.string().min(1).default('dbpilot-leader'),
          durationSeconds: z.number().int().min(2).default(15),
          renewDeadlineSeconds: z.number().positive().default(10),
          retryPeriodSeconds: z.number().positive().default(2),
        })
        .prefault({}),
    })
    .optional(),
  webhook: z
    .strictObject({
      token: z.string().min(16, 'the webhook token must be at least 16 characters').optional(),
      basicAuth: z.strictObject({ username: z.string().min(1), password: z.string().min(8) }).optional(),
      bodyLimitBytes: z.number().int().min(1024).max(50 * 1024 * 1024).default(1024 * 1024),
      /**
       * Where the other replicas reach this one's webhook, advertised on the Lease while it leads, so a
       * webhook delivered to a replica that is not the leader is forwarded to it. Default:
       * http://$POD_IP:<listen port> when POD_IP is set (the chart sets it), else none (no forwarding).
       */
      advertiseUrl: z.string().url().optional(),
      forwardTimeoutMs: z.number().int().min(100).max(60_000).default(5000),
    })
    .prefault({}),
  /**
   * People who may approve runs waiting in approve mode, each with a bearer token of their own; the
   * audit records the name. The webhook's credential cannot approve.
   */
  approvers: z
    .array(
      z.strictObject({
        name: z.string().regex(/^[A-Za-z0-9._@-]{1,64}$/, 'a name of letters, digits and . _ @ - (at most 64)'),
        token: z.string().min(16, 'an approver token must be at least 16 characters'),
      }),
    )
    .default([]),
  /** The primary-failover handler's settings (declared beside the handler). */
  failover: failoverSettings.prefault({}),
  /**
   * The services of the runbook, with the health URL each answers `{ "database": "healthy" }` on:
   * probed by the exporter and checked by a failover after the restarts.
   */
  services: z
    .array(
      z.strictObject({
        name: z.string().min(1),
        healthUrl: z.string().url(),
        /** The Deployment that runs it, when it is one of kubernetes.deployments. */
        deployment: z.string().min(1).optional(),
        /** The database its Prisma datasource migrates, and how it runs `prisma migrate deploy` (the prisma-migration handler's). */
        prisma: prismaServiceSettings.optional(),
      }),
    )
    .default([]),
  /** Per handler: its mode, the engine's policy bounds and its own options, as each handler declares them. */
  handlers: handlersSchema.prefault({}),
  /** Alert names mapped to a handler, for alerts whose `remediation` label is absent or names no handler. */
  alerts: z
    .record(
      z.string().min(1),
      z.enum([...HANDLER_NAMES, 'none'], { error: (iss) => `${JSON.stringify(iss.input)} is not a handler of dbpilot (${HANDLER_NAMES.join(', ')}, or none)` }),
    )
    .default({}),
  pagerduty: z
    .strictObject({
      routes: z.partialRecord(z.enum(TEAMS), z.string().regex(/^\S{32}$/, 'a PagerDuty Events v2 routing key has 32 characters')).default({}),
      url: z.string().url().default('https://events.pagerduty.com/v2/enqueue'),
      /** Shown as the event's source; defaults to the host name. */
      source: z.string().min(1).optional(),
      dashboardUrl: z.string().url().optional(),
      operatorGuideUrl: z
        .string()
        .url()
        .default('https://github.com/lomash-wood/dbpilot/blob/main/docs/operator-guide.md'),
      timeoutMs: z.number().int().min(100).default(10_000),
      /**
       * Backoff per routing key after a 429 / 5xx / network error: full jitter between 0 and
       * min(maxMs, baseMs · 2^failures), then one probe at a time; the first success sends the rest.
       * maxMs bounds how late pages go out after PagerDuty is back. summarySeconds: how often a
       * continuing outage is summarised in the log.
       */
      retry: z
        .strictObject({
          baseMs: z.number().int().min(10).default(1000),
          maxMs: z.number().int().min(100).default(30_000),
          summarySeconds: z.number().min(1).default(60),
        })
        .prefault({}),
      /** PagerDuty accepts about 120 events a minute per routing key and answers 429 beyond: stay under it. */
      rateLimit: z
        .strictObject({ perMinute: z.number().positive().max(100_000).default(100), burst: z.number().int().min(1).default(10) })
        .prefault({}),
      /** Requests to PagerDuty in flight at once, over all teams. */
      concurrency: z.number().int().min(1).max(64).default(8),
    })
    .prefault({}),
  /** AWS RDS (src/integrations/rds.ts, src/scheduler/): snapshots, retention, the snapshot before a risky step, restores. */
  aws: z
    .strictObject({
      region: z.string().regex(/^[a-z]{2}(-[a-z]+)+-\d+$/, 'expected an AWS region such as eu-west-2'),
      /** The production instance: what dbpilot snapshots, and what a restore never targets. */
      dbInstanceIdentifier: z.string().superRefine((v, c) => {
        const p = instanceIdentifierProblem(v);
        if (p) c.addIssue({ code: 'custom', message: p });
      }),
      /** node-cron expression (5 fields, or 6 with seconds) for the scheduled snapshot; absent = no schedule. */
      snapshotSchedule: z
        .string()
        .min(1)
        .refine((v) => validateCron(v), 'not a valid cron expression (e.g. "0 3 * * *")')
        .optional(),
      /** The time zone the schedule is read in (snapshot names are UTC whatever this says). */
      snapshotTimezone: z
        .string()
        .refine((tz) => {
          try {
            new Intl.DateTimeFormat('en', { timeZone: tz });
            return true;
          } catch {
            return false;
          }
        }, 'not an IANA time zone')
        .default('Etc/UTC'),
      /** dbpilot's own manual snapshots older than this are deleted after each scheduled snapshot (never the newest). */
      snapshotRetentionDays: z.number().int().min(1).default(14),
      /** The name prefix, `<prefix>-manual-YYYYMMDDHHMM`; default: the instance identifier without `-prod` (lomash-wood-prod → lomash-wood). */
      snapshotPrefix: z
        .string()
        .superRefine((v, c) => {
          const p = snapshotIdentifierProblem(`${v}-manual-000000000000`);
          if (p) c.addIssue({ code: 'custom', message: `${v}-manual-YYYYMMDDHHMM is not a valid snapshot name: ${p}` });
        })
        .optional(),
      /** How long a snapshot may take to become available before dbpilot gives up waiting (and pages). */
      snapshotTimeoutMinutes: z.number().positive().max(24 * 60).default(60),
      /** How often a snapshot being made is polled. */
      snapshotPollSeconds: z.number().positive().max(300).default(15),
      /** Take (and wait for) a snapshot before every step a handler marks risky. */
      snapshotBeforeRiskySteps: z.boolean().default(true),
      /** How often the exported dbpilot_rds_last_snapshot_timestamp_seconds is re-read from RDS. */
      metricRefreshSeconds: z.number().int().min(1).max(86_400).default(300),
      /** Attempts per RDS request (the SDK's standard retry strategy: throttling, 5xx, timeouts, network errors). */
      maxAttempts: z.number().int().min(1).max(20).default(5),
      requestTimeoutMs: z.number().int().min(100).max(300_000).default(15_000),
      /** Another RDS endpoint (a VPC interface endpoint); default AWS's regional one. */
      endpoint: z.string().url().optional(),
    })
    .optional(),
  store: z.strictObject({ path: z.string().min(1).default('./data/dbpilot.sqlite') }).prefault({}),
});

export type Config = Readonly<z.output<typeof configSchema>>;

/** `a.b[0].c` from zod's path array. */
function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out ? `.${String(p)}` : String(p);
  }
  return out;
}

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/** Expands `${VAR}` and `${VAR:-default}` inside every string of the parsed document (never in keys, never re-parsed as YAML). */
function expandEnv(value: unknown, env: NodeJS.ProcessEnv, path: PropertyKey[]): unknown {
  if (typeof value === 'string') {
    return value.replace(ENV_REF, (_m, name: string, fallback: string | undefined) => {
      const v = env[name];
      if (v !== undefined && v !== '') return v;
      if (fallback !== undefined) return fallback;
      throw new ConfigError(formatPath(path), `environment variable ${name} is not set`);
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => expandEnv(v, env, [...path, i]));
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = expandEnv(v, env, [...path, k]);
    return out;
  }
  return value;
}

function obj(parent: Record<string, unknown>, key: string): Record<string, unknown> {
  const cur = parent[key];
  if (cur === undefined || cur === null) {
    const fresh: Record<string, unknown> = {};
    parent[key] = fresh;
    return fresh;
  }
  if (typeof cur !== 'object' || Array.isArray(cur)) throw new ConfigError(key, 'expected a mapping');
  return cur as Record<string, unknown>;
}

const list = (s: string) =>
  s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);

/** The documented DBPILOT_* overrides, applied on top of the file; remembered so errors name the variable. */
function applyEnvOverrides(raw: Record<string, unknown>, env: NodeJS.ProcessEnv): Map<string, string> {
  const origin = new Map<string, string>();
  const set = (path: string, envName: string, apply: (v: string) => void) => {
    const v = env[envName];
    if (v === undefined || v === '') return;
    apply(v);
    origin.set(path, envName);
  };
  set('listen', 'DBPILOT_LISTEN', (v) => (raw.listen = v));
  set('mode', 'DBPILOT_MODE', (v) => (raw.mode = v));
  set('webhook.token', 'DBPILOT_WEBHOOK_TOKEN', (v) => (obj(raw, 'webhook').token = v));
  set('postgres.primary.url', 'DBPILOT_PRIMARY_URL', (v) => {
    const pg = obj(raw, 'postgres');
    pg.primary = { ...(typeof pg.primary === 'object' && pg.primary ? pg.primary : {}), url: v };
  });
  set('postgres.replicas', 'DBPILOT_REPLICA_URLS', (v) => (obj(raw, 'postgres').replicas = list(v).map((url) => ({ url }))));
  set('redis.url', 'DBPILOT_REDIS_URL', (v) => (obj(raw, 'redis').url = v));
  set('postgres.databases', 'DBPILOT_DATABASES', (v) => (obj(raw, 'postgres').databases = list(v)));
  set('logLevel', 'DBPILOT_LOG_LEVEL', (v) => (raw.logLevel = v));
  set('store.path', 'DBPILOT_STORE_PATH', (v) => (obj(raw, 'store').path = v));
  return origin;
}

export interface LoadOptions {
  /** Explicit file (from --config); else DBPILOT_CONFIG; else ./dbpilot.yaml when present; else defaults only. */
  file?: string | undefined;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface LoadedConfig {
  config: Config;
  /** The file that was read, or null when running on defaults. */
  source: string | null;
}

/** Parses and validates an already-read document. Throws ConfigError naming the bad field. */
export function parseConfig(document: unknown, env: NodeJS.ProcessEnv = process.env): Config {
  if (document !== undefined && document !== null && (typeof document !== 'object' || Array.isArray(document))) {
    throw new ConfigError('', 'the configuration must be a YAML mapping');
  }
  const expanded = expandEnv(document ?? {}, env, []) as Record<string, unknown>;
  const origin = applyEnvOverrides(expanded, env);
  const result = configSchema.safeParse(expanded);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    let path = formatPath(issue.path);
    // An unknown key is reported at its parent; name the key itself so the user can find it.
    if (issue.code === 'unrecognized_keys') {
      const keys = issue.keys.map((k) => (path ? `${path}.${k}` : k));
      throw new ConfigError(keys[0]!, `unknown key${keys.length > 1 ? ` (also: ${keys.slice(1).join(', ')})` : ''}`);
    }
    for (const [p, envName] of origin) {
      if (path === p || path.startsWith(`${p}.`) || path.startsWith(`${p}[`)) path = `${path} (from ${envName})`;
    }
    throw new ConfigError(path, safeMessage(issue.message));
  }
  const cfg = result.data;
  const lease = cfg.kubernetes?.lease;
  if (lease && lease.renewDeadlineSeconds >= lease.durationSeconds) {
    throw new ConfigError('kubernetes.lease.renewDeadlineSeconds', 'must be less than kubernetes.lease.durationSeconds');
  }
  // client-go's rule: retries jitter up to 1.2 × the period and must fit inside the renew deadline.
  if (lease && lease.retryPeriodSeconds * 1.2 >= lease.renewDeadlineSeconds) {
    throw new ConfigError('kubernetes.lease.retryPeriodSeconds', 'must be less than kubernetes.lease.renewDeadlineSeconds / 1.2');
  }
  const names = new Set<string>();
  const tokens = new Set<string>(cfg.webhook.token ? [cfg.webhook.token] : []);
  cfg.approvers.forEach((a, i) => {
    if (names.has(a.name)) throw new ConfigError(`approvers[${i}].name`, `${a.name} is listed twice`);
    if (tokens.has(a.token)) throw new ConfigError(`approvers[${i}].token`, 'must differ from the webhook token and from every other approver token');
    names.add(a.name);
    tokens.add(a.token);
  });
  checkPrismaServices(cfg);
  // Some teams routed and others not is a typo or an unset variable: that team's pages would be dead letters.
  const routed = TEAMS.filter((t) => cfg.pagerduty.routes[t] !== undefined);
  if (routed.length > 0 && routed.length < TEAMS.length) {
    const missing = TEAMS.filter((t) => !routed.includes(t));
    throw new ConfigError(`pagerduty.routes.${missing[0]}`, `missing: every team needs a routing key once one has (missing: ${missing.join(', ')})`);
  }
  return deepFreeze(cfg);
}

/** Reads the configuration the way the CLI and the service do. */
export function loadConfig(opts: LoadOptions = {}): LoadedConfig {
  const env = opts.env ?? process.env;
  const cwd = opts.cwd ?? process.cwd();
  let file = opts.file ?? env.DBPILOT_CONFIG;
  if (!file && existsSync(`${cwd}/dbpilot.yaml`)) file = `${cwd}/dbpilot.yaml`;
  if (!file) return { config: parseConfig({}, env), source: null };
  return { config: parseConfig(readConfigDocument(file), env), source: file };
}

/** A configuration file's YAML document, not yet expanded or validated. Throws ConfigError naming the file (and the line of a YAML error). */
export function readConfigDocument(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError('', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  try {
    return parseYaml(text, { uniqueKeys: true, prettyErrors: true });
  } catch (err) {
    if (err instanceof YAMLParseError) {
      const pos = err.linePos?.[0];
      throw new ConfigError('', `${file}${pos ? `:${pos.line}:${pos.col}` : ''}: invalid YAML: ${err.message.split('\n')[0]}`);
    }
    throw err;
  }
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

/** A copy safe to print: passwords in URLs, tokens and routing keys replaced. */
export function redactConfig(cfg: Config): unknown {
  const walk = (v: unknown, key: string): unknown => {
    if (typeof v === 'string') {
      if (/token|password|secret|routingkey/i.test(key)) return '[REDACTED]';
      if (/^[a-z][a-z0-9+.-]*:\/\//i.test(v)) return redactUrl(v);
      return v;
    }
    if (Array.isArray(v)) return v.map((x) => walk(x, key));
    if (v && typeof v === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) out[k] = key === 'routes' ? '[REDACTED]' : walk(x, k);
      return out;
    }
    return v;
  };
  return walk(cfg, '');
}

/** The mode a handler runs in: its own override, else the global one. */
export function modeFor(cfg: Config, handler: HandlerName): Mode {
  return cfg.handlers[handler]?.mode ?? cfg.mode;
}
