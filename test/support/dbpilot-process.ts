/**
 * dbpilot as a real child process for process-level tests: `node bin/dbpilot.js --config FILE serve`
 * (tsx in a checkout), with a YAML configuration written into a temp dir, stdout log lines collected,
 * readiness judged by `GET /-/ready`, and the two ways a process ends in production: SIGTERM (graceful,
 * close-with-grace) and SIGKILL (nothing runs, only what is on disk survives).
 *
 * The child gets a clean environment: no DBPILOT_* override, KUBECONFIG or PD_* variable of the shell
 * running the tests can change what is tested. It runs under `setpriv --pdeathsig KILL` (which execs,
 * so the PID is node itself), so it dies with the test process even when no JS clean-up runs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { parse as parseYaml, stringify } from 'yaml';
import { onExitCleanup, waitForPortClosed } from './ports.js';
import { parseExposition, find, type Exposition, type Labels } from './scrape.js';
import { refuseSharedServers } from './no-shared-servers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = path.join(ROOT, 'bin', 'dbpilot.js');
const SETPRIV = '/usr/bin/setpriv';

export type LogEntry = Record<string, unknown> & { msg?: string; level?: number; time?: string };

export interface StartOptions {
  /** A tag for error messages, and the POD_NAME of the child (so the Lease identity says which one). */
  name: string;
  /** Path of the YAML configuration (see writeConfig). */
  configFile: string;
  /** Extra environment for the child. */
  env?: Record<string, string>;
  /** How long to wait for GET /-/ready to answer 200. Default 60 s (tsx compiles on first start). */
  readyTimeoutMs?: number;
}

export interface HttpResult<T = unknown> {
  status: number;
  body: T;
  headers: Headers;
}

/** Writes a configuration document as YAML into `dir` and returns its path. */
export async function writeConfig(dir: string, name: string, doc: Record<string, unknown>): Promise<string> {
  refuseSharedServers(doc, `writeConfig(${name})`);
  const file = path.join(dir, `${name}.yaml`);
  await writeFile(file, `# dbpilot process test: ${name}\n${stringify(doc)}`, { mode: 0o600 });
  return file;
}

/** `listen` of a configuration document: host:port. */
function listenOf(doc: Record<string, unknown>): string {
  const listen = doc.listen;
  if (typeof listen !== 'string' || listen.endsWith(':0')) throw new Error('the configuration must name a fixed listen host:port');
  return listen;
}

/** The inherited environment minus everything that would reconfigure dbpilot behind the test's back. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(DBPILOT_|PD_KEY|KUBECONFIG$|POD_NAME$|NODE_OPTIONS$|VITEST)/.test(k)) continue;
    env[k] = v;
  }
  return { ...env, ...extra };
}

export class DbpilotProcess {
  /** Every stdout line (pino JSON), in order. */
  readonly lines: string[] = [];
  /** Every stderr line. */
  readonly stderr: string[] = [];
  readonly url: string;
  readonly port: number;
  readonly pid: number;
  /** Milliseconds from spawn to the first 200 from GET /-/ready. */
  readyMs = 0;
  /** Settles when the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly unregister: () => void;

  private constructor(
    readonly name: string,
    readonly token: string | undefined,
    private readonly child: ChildProcess,
    listen: string,
  ) {
    this.port = Number(listen.slice(listen.lastIndexOf(':') + 1));
    this.url = `http://${listen}`;
    this.pid = child.pid!;
    let outBuf = '';
    let errBuf = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      outBuf += chunk;
      const parts = outBuf.split('\n');
      outBuf = parts.pop() ?? '';
      for (const l of parts) if (l.trim()) this.lines.push(l);
    });
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      errBuf += chunk;
      const parts = errBuf.split('\n');
      errBuf = parts.pop() ?? '';
      for (const l of parts) if (l.trim()) this.stderr.push(l);
    });
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        if (outBuf.trim()) this.lines.push(outBuf);
        if (errBuf.trim()) this.stderr.push(errBuf);
        outBuf = errBuf = '';
        this.exitInfo = { code, signal };
        this.unregister();
        resolve(this.exitInfo);
      });
    });
    this.unregister = onExitCleanup(() => {
      if (this.exitInfo === null) child.kill('SIGKILL');
    });
  }

  /** Spawns `dbpilot serve` and resolves once GET /-/ready answers 200; rejects (with its output) if it exits first. */
  static async start(opts: StartOptions): Promise<DbpilotProcess> {
    const doc = parseYaml(await readFile(opts.configFile, 'utf8')) as Record<string, unknown>;
    const listen = listenOf(doc);
    const token = (doc.webhook as { token?: string } | undefined)?.token;
    const env = cleanEnv({ POD_NAME: opts.name, ...(opts.env ?? {}) });
    const args = [BIN, '--config', opts.configFile, 'serve'];
    const child = existsSync(SETPRIV)
      ? spawn(SETPRIV, ['--pdeathsig=KILL', '--', process.execPath, ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let spawnError: Error | undefined;
    child.on('error', (err) => (spawnError = err)); // an 'error' event without a listener would throw here
    if (child.pid === undefined) {
      await sleep(0);
      throw new Error(`${opts.name}: could not spawn dbpilot: ${spawnError?.message ?? 'no pid'}`);
    }
    const spawnedAt = performance.now();
    const proc = new DbpilotProcess(opts.name, token, child, listen);
    await proc.waitReady(opts.readyTimeoutMs ?? 60_000);
    proc.readyMs = Math.round(performance.now() - spawnedAt);
    return proc;
  }

  get running(): boolean {
    return this.exitInfo === null;
  }

  /** Parsed stdout lines (lines that are not JSON are skipped). */
  entries(): LogEntry[] {
    const out: LogEntry[] = [];
    for (const l of this.lines) {
      try {
        out.push(JSON.parse(l) as LogEntry);
      } catch {
        // not a log line
      }
    }
    return out;
  }

  /** The last lines of output for assertion messages, without Fastify's per-request lines. */
  tail(n = 40): string {
    const lines = this.lines.filter((l) => !/"msg":"(incoming request|request completed)"/.test(l));
    return [...lines.slice(-n), ...this.stderr.slice(-n).map((l) => `[stderr] ${l}`)].join('\n');
  }

  private async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.running) {
        throw new Error(`${this.name}: dbpilot exited before it was ready (${JSON.stringify(this.exitInfo)}):\n${this.tail()}`);
      }
      try {
        const res = await fetch(`${this.url}/-/ready`, { signal: AbortSignal.timeout(1000) });
        await res.text();
        if (res.status === 200) return;
      } catch {
        // not listening yet
      }
      if (Date.now() >= deadline) {
        await this.kill9();
        throw new Error(`${this.name}: dbpilot not ready after ${timeoutMs} ms:\n${this.tail()}`);
      }
      await sleep(50);
    }
  }

  /** Resolves with the first log entry matching `pred` (also one logged before the call). */
  async waitForLog(pred: (e: LogEntry) => boolean, timeoutMs: number, what = 'log line'): Promise<LogEntry> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.entries().find(pred);
      if (hit) return hit;
      if (Date.now() >= deadline) throw new Error(`${this.name}: no ${what} within ${timeoutMs} ms:\n${this.tail()}`);
      if (!this.running) throw new Error(`${this.name}: exited (${JSON.stringify(this.exitInfo)}) without ${what}:\n${this.tail()}`);
      await sleep(50);
    }
  }

  /** SIGKILL: nothing of dbpilot runs any more. Resolves once it has exited and its port is closed. */
  async kill9(): Promise<void> {
    if (this.running) this.child.kill('SIGKILL');
    await this.exited;
    await waitForPortClosed(this.port, 5000);
  }

  /** SIGTERM and wait for the graceful exit (SIGKILL after timeoutMs). Returns how it exited. */
  async stop(timeoutMs = 20_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.running) return this.exitInfo!;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(t);
    }
  }

  /** An HTTP request to the process; JSON bodies in and out; the webhook token unless `auth: false`. */
  async request<T = unknown>(method: string, route: string, body?: unknown, opts: { auth?: boolean } = {}): Promise<HttpResult<T>> {
    const headers: Record<string, string> = {};
    if (opts.auth !== false && this.token) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(`${this.url}${route}`, {
      method,
      headers,
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      signal: AbortSignal.timeout(10_000),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // keep the text
    }
    return { status: res.status, body: parsed as T, headers: res.headers };
  }

  postWebhook(payload: unknown): Promise<HttpResult<{ status?: string; code?: string; error?: string }>> {
    return this.request('POST', '/alertmanager/webhook', payload);
  }

  async metrics(): Promise<Exposition> {
    const res = await fetch(`${this.url}/metrics`, { signal: AbortSignal.timeout(10_000) });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`${this.name}: /metrics answered ${res.status}: ${text.slice(0, 300)}`);
    return parseExposition(text);
  }

  /** The value of the one series of `name` matching `labels` on /metrics. */
  async metric(name: string, labels: Labels = {}): Promise<number> {
    const e = await this.metrics();
    const found = find(e, name, labels);
    if (found.length !== 1) throw new Error(`${this.name}: expected one ${name}${JSON.stringify(labels)} on /metrics, found ${found.length}`);
    return found[0]!.value;
  }
}

// ---------------------------------------------------------------------------------------------------
// Alertmanager webhook payloads (version 4), shaped like shared/fixtures/alertmanager/*.json

export interface TestAlert {
  labels: Record<string, string>;
  annotations?: Record<string, string>;
  /** 16 hex digits, like Alertmanager's; random when absent. */
  fingerprint?: string;
  startsAt?: string;
}

export function fingerprint(): string {
  return randomBytes(8).toString('hex');
}

/** A webhook payload for `alerts`, all with the same status, as Alertmanager sends it (one group: `groupKey`). */
export function webhookPayload(status: 'firing' | 'resolved', alerts: TestAlert[], groupKey?: string): Record<string, unknown> {
  const full = alerts.map((a) => {
    const startsAt = a.startsAt ?? new Date().toISOString();
    return {
      status,
      labels: a.labels,
      annotations: a.annotations ?? { summary: `${a.labels.alertname} (process test)`, description: 'posted by test/remediation/process' },
      startsAt,
      endsAt: status === 'firing' ? '0001-01-01T00:00:00Z' : new Date().toISOString(),
      generatorURL: 'http://127.0.0.1:9090/graph?g0.expr=up&g0.tab=1',
      fingerprint: a.fingerprint ?? fingerprint(),
    };
  });
  const common = (key: 'labels' | 'annotations'): Record<string, string> => {
    const first = full[0]?.[key] ?? {};
    return Object.fromEntries(Object.entries(first).filter(([k, v]) => full.every((a) => a[key][k] === v)));
  };
  const alertname = full[0]?.labels.alertname ?? '';
  return {
    receiver: 'dbpilot',
    status,
    alerts: full,
    groupLabels: { alertname },
    commonLabels: common('labels'),
    commonAnnotations: common('annotations'),
    externalURL: 'http://127.0.0.1:9093',
    version: '4',
    groupKey: groupKey ?? `{}:{alertname="${alertname}"}`,
    truncatedAlerts: 0,
  };
}

/** Polls `fn` until it returns a value other than undefined; throws `what` after timeoutMs. */
export async function until<T>(fn: () => Promise<T | undefined> | T | undefined, timeoutMs: number, what: string, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (last error: ${String(lastErr)})` : ''}`);
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------------------------------------------
// The configuration the process tests share

export const TEST_WEBHOOK_TOKEN = 'process-test-webhook-token-0123456789';
export const TEST_TEAMS = ['lead-dba', 'em-dba', 'oncall-backend', 'devops'] as const;
export type TestTeam = (typeof TEST_TEAMS)[number];
/** A distinct 32-character integration key per team, so the routing can be checked on the wire. */
export const TEST_ROUTES: Readonly<Record<TestTeam, string>> = {
  'lead-dba': 'L'.repeat(32),
  'em-dba': 'E'.repeat(32),
  'oncall-backend': 'O'.repeat(32),
  devops: 'D'.repeat(32),
};

type Doc = Record<string, unknown>;
const isDoc = (v: unknown): v is Doc => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Objects merge key by key; arrays and scalars in `over` replace. */
export function mergeDoc(base: Doc, over: Doc): Doc {
  const out: Doc = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const cur = out[k];
    out[k] = isDoc(cur) && isDoc(v) ? mergeDoc(cur, v) : v;
  }
  return out;
}

/**
 * A configuration on the shared harness servers: listen on `port`, the store at `store`, the webhook
 * token, PagerDuty at `pagerdutyUrl` with routes for all four teams and a fast outbox backoff, and
 * slow-queries in auto mode (threshold 1 s, grace 5 s, no cooldown). `over` is merged in.
 */
export function processConfig(opts: { port: number; store: string; pagerdutyUrl: string; pgPrimaryUrl: string; redisUrl: string }, over: Doc = {}): Doc {
  const doc = mergeDoc(
    {
      listen: `127.0.0.1:${opts.port}`,
      mode: 'dry-run',
      logLevel: 'info',
      postgres: {
        primary: { url: opts.pgPrimaryUrl },
        // Only what these tests use: scrapes must not walk every database other test files create.
        databases: ['postgres'],
        // The defaults (300 ms connect, 500 ms query) are tuned for scrapes and, on a loaded test machine,
        // fail the first connection of a freshly started process now and then — which makes the engine
        // treat a resumed step as unverifiable. These tests are about the engine, not about that.
        connectTimeoutMs: 5000,
        queryTimeoutMs: 5000,
      },
      redis: { url: opts.redisUrl },
      webhook: { token: TEST_WEBHOOK_TOKEN },
      handlers: {
        'slow-queries': { mode: 'auto', thresholdSeconds: 1, graceSeconds: 5, cooldownSeconds: 0, diagnosticTables: [] },
      },
      pagerduty: {
        url: opts.pagerdutyUrl,
        routes: { ...TEST_ROUTES },
        source: 'dbpilot-process-test',
        timeoutMs: 2000,
        // Full jitter in [0, min(200, 20 · 2^n)] ms: retries against a dead PagerDuty stay cheap and a
        // recovered one is reached within a fraction of a second, not after the default minutes.
        retry: { baseMs: 20, maxMs: 200 },
      },
      store: { path: opts.store },
    },
    over,
  );
  refuseSharedServers(doc, 'processConfig');
  return doc;
}

// ---------------------------------------------------------------------------------------------------
// A query that ignores pg_cancel_backend (only pg_terminate_backend stops it)

/** Creates public.stubborn_report(seconds) in the database of `dbUrl`: it catches query_canceled and keeps sleeping. */
export async function createStubbornFunction(dbUrl: string): Promise<void> {
  const client = new pg.Client({ connectionString: dbUrl, connectionTimeoutMillis: 5000 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    await client.query(`CREATE OR REPLACE FUNCTION public.stubborn_report(total float8) RETURNS void LANGUAGE plpgsql AS $$
      DECLARE deadline timestamptz := clock_timestamp() + make_interval(secs => total);
      BEGIN
        WHILE clock_timestamp() < deadline LOOP
          BEGIN
            PERFORM pg_sleep(0.05);
          EXCEPTION WHEN query_canceled THEN
            RAISE NOTICE 'cancel ignored';
          END;
        END LOOP;
      END $$`);
  } finally {
    await client.end().catch(() => undefined);
  }
}

export interface StubbornQuery {
  pid: number;
  client: pg.Client;
  /** How the statement ended: ok, or the SQLSTATE (57P01 = terminated by pg_terminate_backend). */
  outcome: Promise<{ ok: true } | { ok: false; code: string | undefined; message: string }>;
}

/** Runs stubborn_report(seconds) in a new session of `user` on `dbUrl`; resolves once it is running. */
export async function startStubbornQuery(dbUrl: string, user: string, seconds = 120): Promise<StubbornQuery> {
  const u = new URL(dbUrl);
  u.username = user;
  const client = new pg.Client({ connectionString: u.toString(), application_name: 'stubborn-report', connectionTimeoutMillis: 5000 });
  client.on('error', () => undefined);
  await client.connect();
  const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  const outcome = client.query('SELECT public.stubborn_report($1)', [seconds]).then(
    () => ({ ok: true as const }),
    (err: { code?: string; message: string }) => ({ ok: false as const, code: err.code, message: err.message }),
  );
  return { pid, client, outcome };
}

/** Backend `pid` on the server of `url` as pg_stat_activity shows it (state, seconds in its query), or null when it is gone. */
export async function backend(url: string, pid: number): Promise<{ state: string; seconds: number } | null> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    const r = await client.query<{ state: string; seconds: number }>(
      `SELECT state, EXTRACT(EPOCH FROM now() - query_start)::float8 AS seconds FROM pg_stat_activity WHERE pid = $1`,
      [pid],
    );
    return r.rows[0] ?? null;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** A run as GET /api/remediations/:id returns it. */
export interface StepJson {
  idx: number;
  name: string;
  status: string;
  attempts: number;
  output: unknown;
  check: { ok: boolean; detail: string; data?: unknown } | null;
}
export interface RunJson {
  id: string;
  status: string;
  reason: string | null;
  handler: string;
  fingerprint: string;
  owner: string | null;
  steps: StepJson[];
}
