/**
 * The remediation side for tests: a Runtime on the shared harness servers, createRemediation() on a
 * store in a temp dir, and a Fastify app (built by the service's own buildFastify, so the body limit
 * and error handler are the real ones) with the remediation routes. Drive it with `inject()` or, with
 * `listen: true`, over real HTTP on 127.0.0.1 port 0. Log lines are captured.
 *
 * PagerDuty is whatever URL is given (normally the strict stand-in); every team has a 32-character
 * routing key (TEAM_KEYS), so escalations are deliverable unless a test says otherwise.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import pg from 'pg';
import { inject } from 'vitest';
import { parseConfig, type Config, type HandlerName, type Mode } from '../../src/config.js';
import { createLogger, type Logger } from '../../src/logger.js';
import { Runtime } from '../../src/runtime.js';
import { buildFastify } from '../../src/server.js';
import { createRemediation, type Remediation } from '../../src/remediation/index.js';
import { remediationRoutes } from '../../src/remediation/routes.js';
import type { Engine } from '../../src/remediation/engine.js';
import type { Outbox } from '../../src/remediation/outbox.js';
import type { Team } from '../../src/remediation/escalation.js';
import { groupDedupKey } from '../../src/remediation/pages.js';
import type { AlertInfo, Handler, Step } from '../../src/remediation/handler.js';
import type { Store } from '../../src/store/store.js';
import type { PagerDutyStandin } from './pagerduty-standin.js';
import { refuseSharedServers } from './no-shared-servers.js';

type Plain = Record<string, unknown>;

/** The webhook token every harness is configured with (unless a test passes another). */
export const TOKEN = 'test-webhook-token-0123456789abcdef';

/** A 32-character routing key per team, distinct, so a test can tell which team was paged. */
export const TEAM_KEYS: Readonly<Record<Team, string>> = {
  'lead-dba': 'LEADDBA0000000000000000000000001',
  'em-dba': 'EMDBA000000000000000000000000002',
  'oncall-backend': 'ONCALL00000000000000000000000003',
  devops: 'DEVOPS00000000000000000000000004',
};

/** The team whose key this is. */
export function teamOfKey(routingKey: string): Team | undefined {
  return (Object.entries(TEAM_KEYS) as [Team, string][]).find(([, k]) => k === routingKey)?.[0];
}

const isPlain = (v: unknown): v is Plain => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Objects merge key by key; arrays and scalars in `over` replace; `undefined` deletes. */
export function merge(base: Plain, over: Plain): Plain {
  const out: Plain = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) {
      delete out[k];
      continue;
    }
    const cur = out[k];
    out[k] = isPlain(cur) && isPlain(v) ? merge(cur, v) : v;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Fixtures

/** test/fixtures/alertmanager/<name>: webhooks captured from a real Alertmanager, stored as they came. */
export function fixtureUrl(name: string): URL {
  return new URL(`../fixtures/alertmanager/${name}`, import.meta.url);
}

/** The raw bytes of a fixture, exactly as stored. */
export function fixtureText(name: 'alertmanager_webhook_firing.json' | 'alertmanager_webhook_resolved.json'): string {
  return readFileSync(fixtureUrl(name), 'utf8');
}

/** A fresh parsed copy of a fixture (mutating it does not touch the next copy). */
export function fixture(name: 'alertmanager_webhook_firing.json' | 'alertmanager_webhook_resolved.json'): Plain {
  return JSON.parse(fixtureText(name)) as Plain;
}

export interface AlertSpec {
  status?: 'firing' | 'resolved';
  labels: Record<string, string>;
  annotations?: Record<string, string>;
  fingerprint: string;
  startsAt?: string;
}

/** A version-4 payload shaped like the fixtures (built from the firing fixture) carrying these alerts. */
export function payload(alerts: AlertSpec[], extra: Plain = {}): Plain {
  const base = fixture('alertmanager_webhook_firing.json');
  const status = alerts.every((a) => (a.status ?? 'firing') === 'resolved') ? 'resolved' : 'firing';
  const first = alerts[0]!;
  return {
    ...base,
    status,
    alerts: alerts.map((a) => ({
      status: a.status ?? 'firing',
      labels: a.labels,
      annotations: a.annotations ?? { summary: `${a.labels.alertname} (test)` },
      startsAt: a.startsAt ?? '2026-11-27T16:00:43.799Z',
      endsAt: (a.status ?? 'firing') === 'resolved' ? new Date().toISOString() : '0001-01-01T00:00:00Z',
      generatorURL: 'http://127.0.0.1:9090/graph?g0.expr=up&g0.tab=1',
      fingerprint: a.fingerprint,
    })),
    groupLabels: { alertname: first.labels.alertname },
    commonLabels: first.labels,
    commonAnnotations: {},
    groupKey: `{}:{alertname="${first.labels.alertname}"}`,
    ...extra,
  };
}

let fingerprintCounter = 0;
/** A fresh hexadecimal fingerprint, unique within this process. */
export function freshFingerprint(): string {
  fingerprintCounter += 1;
  return `${process.pid.toString(16)}${Date.now().toString(16)}${fingerprintCounter.toString(16).padStart(4, '0')}`.slice(-16);
}

// ---------------------------------------------------------------------------------------------------
// Logs

export interface CapturedLog {
  readonly lines: string[];
  entries(): Plain[];
  text(): string;
  /** Entries whose msg matches. */
  find(msg: string | RegExp): Plain[];
}

export function captureLogger(level: string): { logger: Logger; log: CapturedLog } {
  const lines: string[] = [];
  const logger = createLogger(level, { write: (s: string) => void lines.push(s) });
  const entries = () => lines.map((l) => JSON.parse(l) as Plain);
  return {
    logger,
    log: {
      lines,
      entries,
      text: () => lines.join(''),
      find: (msg) => entries().filter((e) => (typeof msg === 'string' ? e.msg === msg : msg.test(String(e.msg)))),
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// The harness

export interface RemediationHarnessOptions {
  /** Merged into the configuration document (after the harness defaults). */
  config?: Plain;
  /** Global mode (default dry-run, the product default). */
  mode?: Mode;
  /** Webhook bearer token; null configures none (default TOKEN). */
  token?: string | null;
  /** The PagerDuty stand-in (or any enqueue URL); default: a URL where nothing listens. */
  pagerduty?: PagerDutyStandin | string;
  /** Store file; default `<temp dir>/dbpilot.sqlite` (the temp dir is removed on close). */
  storePath?: string;
  /** Also listen on 127.0.0.1:0 for real HTTP (default false: inject() only). */
  listen?: boolean;
  /** Start the outbox dispatcher and leader election (default true). */
  start?: boolean;
  /** Log level of the captured logger (default info). */
  logLevel?: string;
  /** Replaces the leader check the routes use (default: the remediation's elector). */
  isLeader?: () => boolean;
}

export interface RemediationHarness {
  config: Config;
  runtime: Runtime;
  remediation: Remediation;
  engine: Engine;
  store: Store;
  outbox: Outbox;
  app: FastifyInstance;
  log: CapturedLog;
  /** The store file. */
  storePath: string;
  /** http://127.0.0.1:PORT when listening. */
  url: string | undefined;
  /** `{ authorization: 'Bearer <TOKEN>' }`. */
  auth: Record<string, string>;
  /** POSTs a JSON body (an object is serialised; a string or Buffer is sent as is) to the webhook with the token. */
  webhook(body: unknown, headers?: Record<string, string>): Promise<LightMyRequestResponse>;
  request(opts: InjectOptions): Promise<LightMyRequestResponse>;
  /** Sum of the samples of a metric whose labels include `labels` (0 when absent). */
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  /** Waits for the engine's runs and then for the outbox to deliver what is due. */
  settle(): Promise<void>;
  close(): Promise<void>;
}

/** The configuration document on the shared harness servers. */
export function harnessDocument(opts: { mode?: Mode; token?: string | null; pagerdutyUrl: string; storePath: string }): Plain {
  return {
    listen: '127.0.0.1:0',
    mode: opts.mode ?? 'dry-run',
    logLevel: 'info',
    postgres: {
      primary: { url: inject('pgPrimaryUrl') },
      replicas: inject('pgReplicaUrls').map((url) => ({ url })),
    },
    redis: { url: inject('redisUrl') },
    webhook: opts.token === null ? {} : { token: opts.token ?? TOKEN },
    pagerduty: { url: opts.pagerdutyUrl, routes: { ...TEAM_KEYS }, source: 'dbpilot-test', timeoutMs: 2000, retry: { baseMs: 20, maxMs: 200 } },
    store: { path: opts.storePath },
  };
}

/** Where nothing listens (a closed port on 127.0.0.1 refuses at once). */
const NOWHERE = 'http://127.0.0.1:9/v2/enqueue';

export async function startRemediation(opts: RemediationHarnessOptions = {}): Promise<RemediationHarness> {
  const ownDir = opts.storePath ? null : mkdtempSync(path.join(tmpdir(), 'dbpilot-remediation-'));
  const storePath = opts.storePath ?? path.join(ownDir!, 'dbpilot.sqlite');
  const pagerdutyUrl = opts.pagerduty === undefined ? NOWHERE : typeof opts.pagerduty === 'string' ? opts.pagerduty : opts.pagerduty.url;
  const doc = merge(harnessDocument({ mode: opts.mode, token: opts.token, pagerdutyUrl, storePath }), opts.config ?? {});
  refuseSharedServers(doc, 'startRemediation');
  // The environment is not consulted: DBPILOT_* of the shell running the tests cannot change what is tested.
  const config = parseConfig(doc, {});
  const { logger, log } = captureLogger(opts.logLevel ?? 'info');
  const runtime = new Runtime(config, logger, { processMetrics: false });
  let remediation: Remediation;
  try {
    remediation = await createRemediation(runtime, { label: 'test' });
  } catch (err) {
    await runtime.close();
    if (ownDir) rmSync(ownDir, { recursive: true, force: true });
    throw err;
  }
  scriptedReplaceBuilt(remediation);
  const leadership = opts.isLeader ? { isLeader: opts.isLeader, leaderUrl: () => null } : remediation.leadership;
  const app = await buildFastify(config, logger, runtime, {
    ready: () => true,
    extraRoutes: remediationRoutes(remediation.engine, config, runtime.metrics, leadership),
  });
  await app.ready();
  if (opts.start !== false) await remediation.start();
  let url: string | undefined;
  if (opts.listen) {
    await app.listen({ host: '127.0.0.1', port: 0 });
    const addr = app.server.address();
    if (addr === null || typeof addr === 'string') throw new Error('no TCP address');
    url = `http://127.0.0.1:${addr.port}`;
  }
  const auth = { authorization: `Bearer ${opts.token ?? TOKEN}` };
  let closed = false;
  const h: RemediationHarness = {
    config,
    runtime,
    remediation,
    engine: remediation.engine,
    store: remediation.store,
    outbox: remediation.outbox,
    app,
    log,
    storePath,
    url,
    auth,
    webhook: (body, headers = {}) =>
      app.inject({
        method: 'POST',
        url: '/alertmanager/webhook',
        headers: { 'content-type': 'application/json', ...auth, ...headers },
        payload: typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body),
      }),
    request: (o) => app.inject(o),
    metric: async (name, labels = {}) => {
      const m = runtime.metrics.prometheus.getSingleMetric(name);
      if (!m) return 0;
      const data = await m.get();
      // The sum over every sample whose labels include `labels`.
      return data.values
        .filter((s) => Object.entries(labels).every(([k, x]) => String((s.labels as Record<string, unknown>)[k]) === x))
        .reduce((sum, s) => sum + s.value, 0);
    },
    settle: async () => {
      await remediation.engine.idle();
      await remediation.outbox.flush();
    },
    close: async () => {
      if (closed) return;
      closed = true;
      await app.close();
      await remediation.close();
      await runtime.close();
      if (ownDir) rmSync(ownDir, { recursive: true, force: true });
    },
  };
  return h;
}

// ---------------------------------------------------------------------------------------------------
// Long-running queries on the shared primary, from a role that is not a superuser

export interface SlowSession {
  pid: number;
  /** Settles when the query ends: 'cancelled' (57014), 'terminated' (57P01 / connection lost) or 'finished'. */
  done: Promise<'cancelled' | 'terminated' | 'finished' | string>;
  /** Whether the backend still runs the query. */
  running(): Promise<boolean>;
  end(): Promise<void>;
}

export interface SlowQueryDb {
  /** The database (the alert label datname). */
  name: string;
  role: string;
  /** host:port of the primary (the alert label server). */
  server: string;
  /** Starts `SELECT pg_sleep(seconds)` as the role in the database; resolves once it runs. */
  start(seconds?: number): Promise<SlowSession>;
  /** Ends every session still open, drops the database and the role. */
  drop(): Promise<void>;
}

async function adminQuery(url: string, sql: string, params: unknown[] = []): Promise<pg.QueryResultRow[]> {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  c.on('error', () => undefined);
  await c.connect();
  try {
    return (await c.query(sql, params)).rows;
  } finally {
    await c.end().catch(() => undefined);
  }
}

/**
 * A database of its own on the shared primary plus a LOGIN role without superuser or replication,
 * so the slow-queries handler may act on its sessions, and — because every alert names this
 * database — on nothing that other test files run.
 */
export async function createSlowQueryDb(tag: string): Promise<SlowQueryDb> {
  const primaryUrl = inject('pgPrimaryUrl');
  const name = `dbpilot_rem_${tag}_${process.pid}`;
  const role = `dbpilot_rem_${tag}_${process.pid}_app`;
  await adminQuery(primaryUrl, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  await adminQuery(primaryUrl, `CREATE DATABASE "${name}"`);
  await adminQuery(
    primaryUrl,
    `DO $$ BEGIN
       IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${role}') THEN CREATE ROLE "${role}" LOGIN NOSUPERUSER NOREPLICATION; END IF;
     EXCEPTION WHEN duplicate_object THEN NULL; END $$`,
  );
  await adminQuery(primaryUrl, `GRANT CONNECT ON DATABASE "${name}" TO "${role}"`);
  const u = new URL(primaryUrl);
  const server = `${u.hostname}:${u.port || '5432'}`;
  u.pathname = `/${name}`;
  u.username = role;
  const roleUrl = u.toString();
  const adminUrl = (() => {
    const a = new URL(primaryUrl);
    a.pathname = `/${name}`;
    return a.toString();
  })();
  const sessions = new Set<pg.Client>();

  return {
    name,
    role,
    server,
    async start(seconds = 60) {
      const client = new pg.Client({ connectionString: roleUrl, application_name: 'orders-service', connectionTimeoutMillis: 5000 });
      client.on('error', () => undefined);
      await client.connect();
      sessions.add(client);
      const pid = ((await client.query('SELECT pg_backend_pid() AS pid')).rows[0] as { pid: number }).pid;
      const done = client.query('SELECT pg_sleep($1)', [seconds]).then(
        () => 'finished',
        (err: { code?: string; message?: string }) =>
          err.code === '57014' ? 'cancelled' : err.code === '57P01' || /terminat|Connection terminated/i.test(err.message ?? '') ? 'terminated' : (err.code ?? err.message ?? 'error'),
      );
      const running = async () =>
        (await adminQuery(adminUrl, `SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE 'SELECT pg_sleep%'`, [pid])).length > 0;
      // Wait until the backend shows the query as active.
      const deadline = Date.now() + 5000;
      while (!(await running())) {
        if (Date.now() > deadline) throw new Error(`pg_sleep session ${pid} did not show up as active`);
        await new Promise((r) => setTimeout(r, 20));
      }
      return {
        pid,
        done,
        running,
        end: async () => {
          sessions.delete(client);
          // A backend inside pg_sleep does not notice its client leaving: end it on the server.
          await adminQuery(adminUrl, 'SELECT pg_terminate_backend($1)', [pid]).catch(() => undefined);
          await client.end().catch(() => undefined);
          await done;
        },
      };
    },
    async drop() {
      await adminQuery(adminUrl, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()').catch(() => undefined);
      await Promise.allSettled([...sessions].map((c) => c.end()));
      sessions.clear();
      await adminQuery(primaryUrl, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      await adminQuery(primaryUrl, `DROP ROLE IF EXISTS "${role}"`);
    },
  };
}

/** Polls `cond` until it is true; throws naming `what` after timeoutMs. */
export async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// ---------------------------------------------------------------------------------------------------
// A scripted handler, for the engine's policy where timing must be exact

export interface Gate {
  /** Resolves once somebody waits at the gate. */
  reached: Promise<void>;
  open(): void;
  wait(): Promise<void>;
}

/** A gate: `wait()` blocks until `open()`; `reached` tells that something is waiting. */
export function gate(): Gate {
  let open!: () => void;
  let reachedResolve!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  const reached = new Promise<void>((r) => (reachedResolve = r));
  return {
    reached,
    open: () => open(),
    wait: () => {
      reachedResolve();
      return opened;
    },
  };
}

export interface ScriptedBehaviour {
  /** Awaited at the start of plan() (per call). */
  beforePlan?: (alert: AlertInfo) => Promise<void> | void;
  /** Awaited inside each step's run(). */
  duringStep?: (step: string, alert: unknown) => Promise<void> | void;
  /** Step names whose check fails. */
  failChecks?: string[];
  /** Plan says nothing is left to do. */
  nothingToDo?: boolean;
  /** Delay of diagnostics() in ms (it runs on every escalation of a run). */
  diagnosticsDelayMs?: number;
  steps?: string[];
}

export interface ScriptedHandler extends Handler<{ fingerprint: string; steps: string[] }> {
  behaviour: ScriptedBehaviour;
  /** `<fingerprint>:<step>` for every step action that ran, in order. */
  readonly executed: string[];
  planCalls: number;
}

/**
 * A handler under a runbook name (default `redis-failure`), whose plan and steps the test controls.
 * Target: `fake/<labels.instance or "default">`. Register it with
 * `harness.remediation.handlers.register(h)`: the engine reads the same registry, and in a harness a
 * scripted handler takes the place of the built handler of the same name.
 */
const SCRIPTED = Symbol('scripted handler');

/**
 * In a harness, registering a scripted handler replaces the built handler of that name (the engine's
 * policy tests stand a scripted handler in for a runbook name); anything else registers as in
 * production, where a duplicate name fails.
 */
function scriptedReplaceBuilt(remediation: Remediation): void {
  const registry = remediation.handlers;
  const register = registry.register.bind(registry);
  registry.register = (handler: Handler) => {
    if ((handler as { [SCRIPTED]?: boolean })[SCRIPTED] && registry.has(handler.name)) {
      // The registry's map is private to production code; only this test support reaches into it.
      (registry as unknown as { handlers: Map<string, Handler> }).handlers.delete(handler.name);
    }
    return register(handler);
  };
}

/**
 * Marks a handler written in a test as standing in for the built handler of its name (as a scripted
 * handler does): registered in a harness, it takes that handler's place.
 */
export function standIn<H extends { name: HandlerName }>(handler: H): H {
  return Object.assign(handler, { [SCRIPTED]: true });
}

export function scriptedHandler(name: HandlerName = 'redis-failure', behaviour: ScriptedBehaviour = {}): ScriptedHandler {
  const executed: string[] = [];
  const h: ScriptedHandler & { [SCRIPTED]: true } = {
    [SCRIPTED]: true,
    name,
    team: 'devops',
    behaviour,
    executed,
    planCalls: 0,
    target: (alert) => `fake/${alert.labels.instance ?? 'default'}`,
    async plan(alert) {
      h.planCalls += 1;
      await h.behaviour.beforePlan?.(alert);
      const steps = h.behaviour.steps ?? ['restartThing', 'verifyThing'];
      return {
        summary: `scripted plan for ${alert.alertname} (${steps.join(', ')})`,
        data: { fingerprint: alert.fingerprint, steps },
        ...(h.behaviour.nothingToDo ? { nothingToDo: true } : {}),
      };
    },
    steps(data) {
      return data.steps.map(
        (s): Step => ({
          name: s,
          command: `kubectl do ${s} # ${data.fingerprint}`,
          idempotent: true,
          run: async () => {
            executed.push(`${data.fingerprint}:${s}`);
            await h.behaviour.duringStep?.(s, data);
            return { did: s };
          },
          check: async () =>
            h.behaviour.failChecks?.includes(s) ? { ok: false, detail: `${s} did not take effect` } : { ok: true, detail: `${s} verified` },
        }),
      );
    },
    async diagnostics() {
      if (h.behaviour.diagnosticsDelayMs) await new Promise((r) => setTimeout(r, h.behaviour.diagnosticsDelayMs));
      return { scripted: true };
    },
  };
  return h;
}

/**
 * The dedup key of the grouped page for alerts dbpilot only escalates (no handler, handler off,
 * refused): one per Alertmanager group (the notification's groupKey) and team.
 */
export function groupPageKey(body: string | Plain, team: Team): string {
  const doc = typeof body === 'string' ? (JSON.parse(body) as Plain) : body;
  return groupDedupKey(team, String(doc.groupKey ?? ''));
}
