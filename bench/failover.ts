/**
 * Section "failover" (issue 9 §5): how long a real failover takes, alert path included, on this
 * machine — against Patroni's figures measured here before.
 *
 * Per trial, everything fresh: a PostgreSQL 15 primary + one streaming replica (test/support/pg-cluster),
 * a Redis, the strict Kubernetes stand-in (pods postgres-primary-0 / postgres-replica-0 with role
 * labels, the Secret lomash-wood-secrets with DATABASE_URL, the runbook's eight deployments whose
 * rollouts complete after a short delay), the PagerDuty stand-in, and as child processes:
 *
 *   dbpilot `serve` (the compiled build, as the image ships it; --dbpilot-runtime tsx for bin/dbpilot.js),
 *     primary-failover in auto, failover { confirmProbes: 3, confirmIntervalMs: 300 }
 *   → Prometheus (Debian's `prometheus`) scraping it as job "dbpilot" every 1 s, evaluating
 *     alerts/dbpilot.rules.yml every 1 s, unchanged
 *   → Alertmanager (`prometheus-alertmanager`) on alerts/alertmanager.example.yml, changed only where it
 *     must point at this machine, as test/e2e/alert-path.test.ts localises it (so the group_wait of
 *     PostgresPrimaryDown is the example's own)
 *   → dbpilot's webhook.
 *
 * Then, at a random phase of the scrape second, the primary's postmaster is SIGKILLed and, from that
 * instant, measured: the first scrape Prometheus stored with pg_up 0, the alert's activeAt (pending) and
 * firing time (the startsAt Prometheus sends), when Alertmanager received it (its updatedAt), when the
 * webhook reached dbpilot (the run's createdAt, written at receipt), dbpilot's confirmation probes (its
 * log line at the failover decision), every step's startedAt / finishedAt from the audit API, the first
 * write the promoted replica accepts (SELECT txid_current() polled every 10 ms from the kill on), the
 * Secret repointed and every deployment's restartedAt annotation (the stand-in polled every 5 ms).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Table from 'cli-table3';
import pg from 'pg';
import { isMap, isScalar, isSeq, parse as parseYaml, parseDocument, stringify, type Document, type YAMLMap } from 'yaml';
import { K8sStandIn } from '../test/support/k8s-standin.js';
import { PagerDutyStandin } from '../test/support/pagerduty-standin.js';
import { startPgCluster, type PgCluster } from '../test/support/pg-cluster.js';
import { freePort } from '../test/support/ports.js';
import { startRedis, type RedisNode } from '../test/support/redis-server.js';
import { onCleanup } from './cleanup.js';
import { binaryVersion, cleanEnv, startChild, type RunningChild } from './children.js';
import { dbpilotCommand, type DbpilotRuntime } from './dbpilot-build.js';
import { findPostmaster, procStat } from './procs.js';
import { intOption, UsageError, type Section, type SectionContext, type SectionResult, type TargetCheck } from './section.js';
import { fmt, quantile, round } from './stats.js';

// ---------------------------------------------------------------------------------------------------
// Targets and references

/** Issue 9 §5: median seconds from the kill to the first write the promoted replica accepts… */
const TARGET_FIRST_WRITE_S = 3;
/** …and at most this much more to every secret patched and every rollout restart requested. */
const TARGET_AFTER_WRITE_S = 1;
/** Patroni on this machine (issue 9): median kill → first write with its defaults, and at its documented floor. */
const PATRONI_DEFAULTS_S = 24.85;
const PATRONI_FLOOR_S = 20.16;

const NS = 'lomash-wood';
const SECRETS = [{ name: 'lomash-wood-secrets', key: 'DATABASE_URL' }];
/** The runbook's eight deployments (scenario 1, step 4). */
const DEPLOYMENTS = ['auth-service', 'product-service', 'order-payment-service', 'appointment-service', 'content-service', 'customer-service', 'notification-service', 'analytics-service'];
const FAILOVER = { confirmProbes: 3, confirmIntervalMs: 300 };
const SCRAPE_INTERVAL_S = 1;
const EVALUATION_INTERVAL_S = 1;
const ALERT = 'PostgresPrimaryDown';
const TOKEN = 'bench-failover-webhook-token-0123456789';
const TEAM_KEYS = {
  'lead-dba': 'BENCHLEADDBA00000000000000000001',
  'em-dba': 'BENCHEMDBA0000000000000000000002',
  'oncall-backend': 'BENCHONCALL000000000000000000003',
  devops: 'BENCHDEVOPS000000000000000000004',
} as const;
type Team = keyof typeof TEAM_KEYS;
const isTeam = (s: string): s is Team => Object.hasOwn(TEAM_KEYS, s);
const ALERTMANAGER_EXAMPLE = 'alerts/alertmanager.example.yml';
const RULES_FILE = 'alerts/dbpilot.rules.yml';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------------
// Alertmanager configuration: the example, pointed at this machine (as test/e2e/alert-path.test.ts does)

/**
 * alerts/alertmanager.example.yml with exactly what must point locally replaced: global.pagerduty_url,
 * the dbpilot webhook's URL and credentials_file, each pagerduty_config's routing_key_file (and url, if
 * one overrides the global). Routing, group_wait and inhibition stay the example's. Anything this does
 * not know (another receiver kind, an inline secret, a URL left pointing elsewhere) throws.
 */
function localiseAlertmanagerConfig(text: string, local: { webhookUrl: string; tokenFile: string; keyFile: (team: Team) => string; pagerdutyUrl: string }): string {
  const doc: Document = parseDocument(text, { uniqueKeys: true });
  const fail = (msg: string): never => {
    throw new Error(`${ALERTMANAGER_EXAMPLE}: ${msg} — bench/failover.ts does not know how to point this at the benchmark's servers`);
  };
  if (doc.errors.length > 0) fail(doc.errors[0]!.message);
  const globalUrl = doc.getIn(['global', 'pagerduty_url']);
  if (typeof globalUrl !== 'string' || !/^https:\/\/events\.pagerduty\.com\/v2\/enqueue$/.test(globalUrl)) fail(`global.pagerduty_url is ${String(globalUrl)}`);
  doc.setIn(['global', 'pagerduty_url'], local.pagerdutyUrl);
  const receivers = doc.get('receivers');
  if (!isSeq(receivers)) return fail('receivers is not a list');
  let webhooks = 0;
  for (const [i, item] of receivers.items.entries()) {
    if (!isMap(item)) return fail(`receivers[${i}] is not a mapping`);
    const receiver = item as YAMLMap;
    const name = receiver.get('name');
    if (typeof name !== 'string') return fail(`receivers[${i}] has no name`);
    for (const pair of receiver.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
      if (key !== 'name' && key !== 'webhook_configs' && key !== 'pagerduty_configs') fail(`receiver ${name} has ${key}`);
    }
    const webhookConfigs = receiver.get('webhook_configs');
    if (webhookConfigs !== undefined) {
      if (name !== 'dbpilot' || !isSeq(webhookConfigs)) return fail(`receiver ${name} has webhook_configs`);
      for (const wc of webhookConfigs.items) {
        if (!isMap(wc)) return fail(`receiver ${name}: a webhook_config is not a mapping`);
        const url = wc.get('url');
        if (typeof url !== 'string' || !url.endsWith('/alertmanager/webhook')) fail(`receiver ${name}: url ${String(url)} is not dbpilot's /alertmanager/webhook`);
        wc.set('url', local.webhookUrl);
        if (wc.getIn(['http_config', 'authorization', 'type']) !== 'Bearer') fail(`receiver ${name}: authorization is not Bearer`);
        if (wc.hasIn(['http_config', 'authorization', 'credentials'])) fail(`receiver ${name} has inline credentials`);
        if (typeof wc.getIn(['http_config', 'authorization', 'credentials_file']) !== 'string') fail(`receiver ${name} has no credentials_file`);
        wc.setIn(['http_config', 'authorization', 'credentials_file'], local.tokenFile);
        webhooks++;
      }
    }
    const pagerdutyConfigs = receiver.get('pagerduty_configs');
    if (pagerdutyConfigs !== undefined) {
      const teams = (/^pagerduty-(.+)$/.exec(name)?.[1] ?? '').split('-and-');
      if (!teams.every((t) => isTeam(t))) return fail(`receiver ${name} pages no known team`);
      if (!isSeq(pagerdutyConfigs) || pagerdutyConfigs.items.length !== teams.length) return fail(`receiver ${name}: one pagerduty_config per team expected`);
      for (const [j, pc] of pagerdutyConfigs.items.entries()) {
        if (!isMap(pc)) return fail(`receiver ${name}: a pagerduty_config is not a mapping`);
        for (const inline of ['routing_key', 'service_key', 'service_key_file', 'http_config']) if (pc.has(inline)) fail(`receiver ${name} has ${inline}`);
        const team = teams[j] as Team;
        const file = pc.get('routing_key_file');
        if (typeof file !== 'string' || path.basename(file) !== `pagerduty-${team}`) fail(`receiver ${name}: routing_key_file ${String(file)} is not the pagerduty-${team} secret`);
        pc.set('routing_key_file', local.keyFile(team));
        if (pc.has('url')) pc.set('url', local.pagerdutyUrl);
      }
    }
  }
  if (webhooks !== 1) fail(`expected exactly one dbpilot webhook, found ${webhooks}`);
  const leftovers: string[] = [];
  const walk = (v: unknown, at: string): void => {
    if (Array.isArray(v)) v.forEach((x, k) => walk(x, `${at}[${k}]`));
    else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) walk(x, at ? `${at}.${k}` : k);
    else if (typeof v === 'string') {
      const key = (at.split('.').pop() ?? '').replace(/\[\d+\]$/, '');
      if (/(^|_)url$/.test(key) && !v.startsWith('http://127.0.0.1:')) leftovers.push(`${at}: ${v}`);
      if (/_file$/.test(key) && v !== local.tokenFile && !(Object.keys(TEAM_KEYS) as Team[]).some((t) => local.keyFile(t) === v)) leftovers.push(`${at}: ${v}`);
    }
  };
  walk(doc.toJS(), '');
  if (leftovers.length > 0) fail(`fields still pointing elsewhere: ${leftovers.join('; ')}`);
  return doc.toString();
}

/** A Go duration ("0s", "5s", "1m30s", "250ms") in milliseconds. */
function goDurationMs(s: string): number {
  const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };
  let total = 0;
  let rest = s.trim();
  if (rest === '0') return 0;
  while (rest.length > 0) {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/.exec(rest);
    if (!m) throw new Error(`not a duration: ${s}`);
    total += Number(m[1]) * units[m[2]!]!;
    rest = rest.slice(m[0].length);
  }
  return total;
}

interface AmRoute {
  receiver?: string;
  matchers?: string[];
  group_wait?: string;
  continue?: boolean;
  routes?: AmRoute[];
  match?: unknown;
  match_re?: unknown;
}

function matcherHolds(m: string, labels: Record<string, string>): boolean {
  const p = /^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$/.exec(m);
  if (!p) throw new Error(`${ALERTMANAGER_EXAMPLE}: matcher ${m} not understood`);
  const [, name, op, raw] = p as unknown as [string, string, string, string];
  const value = raw.startsWith('"') ? (JSON.parse(raw) as string) : raw;
  const have = labels[name] ?? '';
  switch (op) {
    case '=':
      return have === value;
    case '!=':
      return have !== value;
    case '=~':
      return new RegExp(`^(?:${value})$`).test(have);
    default:
      return !new RegExp(`^(?:${value})$`).test(have);
  }
}

/** Alertmanager's routing for one label set: the first matching child, recursively; group_wait inherited (default 30s). */
function routeFor(route: AmRoute, labels: Record<string, string>, inherited = { receiver: '', groupWait: '30s' }, trail: string[] = []): { receiver: string; groupWait: string; trail: string[] } {
  if (route.match !== undefined || route.match_re !== undefined) throw new Error(`${ALERTMANAGER_EXAMPLE}: match / match_re are not understood here, only matchers`);
  const here = { receiver: route.receiver ?? inherited.receiver, groupWait: route.group_wait ?? inherited.groupWait };
  for (const child of route.routes ?? []) {
    if ((child.matchers ?? []).every((m) => matcherHolds(m, labels))) return routeFor(child, labels, here, [...trail, (child.matchers ?? []).join(', ')]);
  }
  return { ...here, trail };
}

// ---------------------------------------------------------------------------------------------------
// Small HTTP helpers

async function getJson<T>(url: string, headers: Record<string, string> = {}, timeoutMs = 5000): Promise<T> {
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  if (!res.ok) throw new Error(`GET ${url}: ${res.status} ${text.slice(0, 300)}`);
  return JSON.parse(text) as T;
}

async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined | false> | T | undefined | false, everyMs = 100, alive?: () => string | null): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    const dead = alive?.();
    if (dead) throw new Error(`${dead} while waiting for ${what}`);
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (last error: ${(lastErr as Error).message})` : ''}`);
    await sleep(everyMs);
  }
}

function logTail(file: string, chars = 2500): string {
  try {
    const t = fs.readFileSync(file, 'utf8');
    return t.length > chars ? `…${t.slice(-chars)}` : t;
  } catch {
    return '(no log)';
  }
}

// ---------------------------------------------------------------------------------------------------
// Figures

interface StepFigure {
  name: string;
  status: string;
  /** Seconds after the kill. */
  startedS: number | null;
  finishedS: number | null;
  ms: number | null;
}

interface TrialFigures {
  trial: number;
  error: string | null;
  /** Where in the second the kill fell, and the phases of scrape and evaluation (ms past the whole second). */
  phase: { killMs: number; scrapeMs: number | null; evaluationMs: number | null };
  /** Seconds after the kill (null: not seen). */
  at: {
    firstDownSample: number | null;
    pending: number | null;
    firing: number | null;
    alertmanager: number | null;
    webhook: number | null;
    probesDone: number | null;
    firstStep: number | null;
    firstWrite: number | null;
    secretsPatched: number | null;
    restartsRequested: number | null;
    runFinished: number | null;
  };
  /** Each deployment's restartedAt first seen, seconds after the kill. */
  restarts: Record<string, number | null>;
  steps: StepFigure[];
  probes: string[];
  runStatus: string | null;
  runReason: string | null;
  /** Prometheus: scrape durations of dbpilot around the kill (s), the rule group's last evaluation time (s). */
  prometheus: { scrapeDurationsS: number[]; firstDownScrapeS: number | null; ruleGroupEvaluationS: number | null; lastUpSampleBeforeKillS: number | null };
  txidPolls: number;
  /** Set in blip mode instead of the kill figures. */
  blip?: BlipFigures;
}

interface BlipFigures {
  ms: number;
  /** pg_up 0 samples Prometheus stored for the primary. */
  downSamples: number;
  pendingSeen: boolean;
  firingSeen: boolean;
  run: { status: string; reason: string | null; probes: string[] } | null;
  /** After everything settled: the replica out of recovery, the Secret changed, deployments restarted, the old primary writable. */
  promoted: boolean;
  secretChanged: boolean;
  restarted: number;
  primaryWritable: boolean;
}

// ---------------------------------------------------------------------------------------------------
// Pollers running from the kill on

/** SELECT txid_current() on the replica every ~10 ms: resolves with the time of the first one it accepted. */
function pollFirstWrite(url: string, deadline: number): { result: Promise<number | null>; polls: () => number; ready: Promise<void> } {
  let polls = 0;
  const conn: { client: pg.Client | null } = { client: null };
  const connect = async () => {
    const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000, query_timeout: 1000, application_name: 'bench-first-write' });
    c.on('error', () => undefined);
    await c.connect();
    conn.client = c;
  };
  const ready = connect();
  const result = (async () => {
    await ready;
    try {
      while (Date.now() < deadline) {
        const t = Date.now();
        polls++;
        try {
          if (!conn.client) await connect();
          await conn.client!.query('SELECT txid_current()');
          return Date.now();
        } catch (err) {
          if ((err as { code?: string }).code !== '25006') {
            // not "read-only transaction": the connection is gone; make a new one
            await conn.client?.end().catch(() => undefined);
            conn.client = null;
          }
        }
        const wait = t + 10 - Date.now();
        if (wait > 0) await sleep(wait);
      }
      return null;
    } finally {
      await conn.client?.end().catch(() => undefined);
    }
  })();
  return { result, polls: () => polls, ready };
}

/** The stand-in polled every 5 ms: when each Secret points elsewhere, and when each deployment got a restartedAt. */
function pollKubernetes(k8s: K8sStandIn, oldHost: string, deadline: number): Promise<{ secrets: Record<string, number | null>; restarts: Record<string, number | null> }> {
  const restartedAt = (d: string) => ((k8s.deployment(d, NS)?.spec as { template?: { metadata?: { annotations?: Record<string, string> } } } | undefined)?.template?.metadata?.annotations ?? {})['kubectl.kubernetes.io/restartedAt'];
  const secrets: Record<string, number | null> = Object.fromEntries(SECRETS.map((s) => [`${s.name}/${s.key}`, null]));
  const restarts: Record<string, number | null> = Object.fromEntries(DEPLOYMENTS.map((d) => [d, null]));
  return (async () => {
    while (Date.now() < deadline) {
      const now = Date.now();
      for (const s of SECRETS) {
        const k = `${s.name}/${s.key}`;
        if (secrets[k] === null) {
          const v = k8s.secretValue(s.name, s.key, NS);
          if (v !== undefined && !v.includes(`@${oldHost}/`)) secrets[k] = now;
        }
      }
      for (const d of DEPLOYMENTS) if (restarts[d] === null && restartedAt(d) !== undefined) restarts[d] = now;
      if (Object.values(secrets).every((v) => v !== null) && Object.values(restarts).every((v) => v !== null)) break;
      await sleep(5);
    }
    return { secrets, restarts };
  })();
}

// ---------------------------------------------------------------------------------------------------
// One trial

interface TrialSetup {
  ctx: SectionContext;
  trial: number;
  dbp: { cmd: string; args: string[] };
  prometheusBin: string;
  alertmanagerBin: string;
  rolloutDelayMs: number;
  /** The rule file Prometheus loads: the repository's, or a what-if copy (--what-if-for). */
  rulesFile: string;
  /** --blip-ms: stop the primary (SIGSTOP) this long and let it go on (SIGCONT), instead of the kill. */
  blipMs: number | null;
}

interface RunJson {
  id: string;
  status: string;
  reason: string | null;
  createdAt: string;
  startsAt: string;
  finishedAt: string | null;
  plan: { data?: { probes?: string[] } } | null;
  steps: { name: string; status: string; startedAt: string | null; finishedAt: string | null }[];
}

async function runTrial(s: TrialSetup): Promise<TrialFigures> {
  const { ctx, trial } = s;
  const dir = path.join(ctx.workDir, 'failover', `trial-${trial}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const logDir = path.join(ctx.workDir, 'logs');
  const stops: (() => Promise<void>)[] = [];
  const keep = (stop: () => Promise<void>) => (stops.push(stop), stop);
  const fig: TrialFigures = {
    trial,
    error: null,
    phase: { killMs: 0, scrapeMs: null, evaluationMs: null },
    at: { firstDownSample: null, pending: null, firing: null, alertmanager: null, webhook: null, probesDone: null, firstStep: null, firstWrite: null, secretsPatched: null, restartsRequested: null, runFinished: null },
    restarts: {},
    steps: [],
    probes: [],
    runStatus: null,
    runReason: null,
    prometheus: { scrapeDurationsS: [], firstDownScrapeS: null, ruleGroupEvaluationS: null, lastUpSampleBeforeKillS: null },
    txidPolls: 0,
  };
  let dbpilot: RunningChild | undefined;
  let prometheus: RunningChild | undefined;
  let alertmanager: RunningChild | undefined;
  try {
    // --- servers
    const [c, r] = await Promise.allSettled([startPgCluster({ replicas: 1 }), startRedis()]);
    const cluster: PgCluster | undefined = c.status === 'fulfilled' ? c.value : undefined;
    const redis: RedisNode | undefined = r.status === 'fulfilled' ? r.value : undefined;
    if (cluster) keep(onCleanup(`failover trial ${trial}: PostgreSQL`, () => cluster.stop()));
    if (redis) keep(onCleanup(`failover trial ${trial}: Redis`, () => redis.stop()));
    if (c.status === 'rejected') throw c.reason;
    if (r.status === 'rejected') throw r.reason;
    const primary = cluster!.primary;
    const replica = cluster!.replicas[0]!;
    const oldHost = `127.0.0.1:${primary.port}`;

    const pd = new PagerDutyStandin();
    await pd.start();
    keep(onCleanup(`failover trial ${trial}: PagerDuty stand-in`, () => pd.close()));
    const k8s = new K8sStandIn({ namespaces: [NS], rolloutDelayMs: s.rolloutDelayMs });
    await k8s.start();
    keep(onCleanup(`failover trial ${trial}: Kubernetes stand-in`, () => k8s.close()));
    const kubeconfig = await k8s.writeKubeconfig(dir, { namespace: NS });
    k8s.seedPod({ name: 'postgres-primary-0', namespace: NS, labels: { app: 'postgres', role: 'primary' }, podIP: '10.0.0.5' });
    k8s.seedPod({ name: 'postgres-replica-0', namespace: NS, labels: { app: 'postgres', role: 'replica' }, podIP: '10.0.0.6' });
    for (const sec of SECRETS) k8s.seedSecret({ name: sec.name, namespace: NS, data: { [sec.key]: `postgresql://app:pw@${oldHost}/postgres?schema=public` } });
    for (const d of DEPLOYMENTS) k8s.seedDeployment({ name: d, namespace: NS, replicas: 2 });

    // --- dbpilot serve
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const auth = { authorization: `Bearer ${TOKEN}` };
    const configFile = path.join(dir, 'dbpilot.yaml');
    fs.writeFileSync(
      configFile,
      stringify({
        listen: `127.0.0.1:${port}`,
        mode: 'dry-run',
        logLevel: 'info',
        postgres: {
          primary: { url: primary.url(), pod: 'postgres-primary-0' },
          replicas: [{ url: replica.url(), pod: 'postgres-replica-0' }],
          databases: ['postgres'],
        },
        redis: { url: redis!.url },
        kubernetes: { kubeconfig, namespace: NS, secrets: SECRETS, deployments: DEPLOYMENTS, lease: { name: `dbpilot-bench-${trial}` } },
        webhook: { token: TOKEN },
        failover: FAILOVER,
        handlers: { 'primary-failover': { mode: 'auto' } },
        pagerduty: { url: pd.url, routes: { ...TEAM_KEYS }, source: 'dbpilot-bench', timeoutMs: 2000 },
        store: { path: path.join(dir, 'dbpilot.sqlite') },
      }),
      { mode: 0o600 },
    );
    dbpilot = await startChild(
      { name: `failover-${trial}-dbpilot`, cmd: s.dbp.cmd, args: [...s.dbp.args.slice(0, -1), '--config', configFile, 'serve'], env: cleanEnv({ POD_NAME: 'dbpilot-bench-0' }), port, cwd: ctx.root },
      logDir,
      60_000,
    );
    keep(dbpilot.stop);
    const dbpilotLog = dbpilot.logFile;

    // --- Alertmanager on the example, pointed here
    const [amPort, promPort] = [await freePort(), await freePort()];
    const amUrl = `http://127.0.0.1:${amPort}`;
    const promUrl = `http://127.0.0.1:${promPort}`;
    const tokenFile = path.join(dir, 'dbpilot-webhook-token');
    fs.writeFileSync(tokenFile, TOKEN, { mode: 0o600 });
    const keyFile = (team: Team) => path.join(dir, `pagerduty-${team}`);
    for (const team of Object.keys(TEAM_KEYS) as Team[]) fs.writeFileSync(keyFile(team), TEAM_KEYS[team], { mode: 0o600 });
    const amConfig = path.join(dir, 'alertmanager.yml');
    fs.writeFileSync(
      amConfig,
      localiseAlertmanagerConfig(fs.readFileSync(path.join(ctx.root, ALERTMANAGER_EXAMPLE), 'utf8'), { webhookUrl: `${base}/alertmanager/webhook`, tokenFile, keyFile, pagerdutyUrl: pd.url }),
    );
    alertmanager = await startChild(
      {
        name: `failover-${trial}-alertmanager`,
        cmd: s.alertmanagerBin,
        args: [`--config.file=${amConfig}`, `--storage.path=${path.join(dir, 'alertmanager-data')}`, `--web.listen-address=127.0.0.1:${amPort}`, '--cluster.listen-address=', `--web.external-url=${amUrl}`],
        env: cleanEnv({}),
        port: amPort,
      },
      logDir,
    );
    keep(alertmanager.stop);

    // --- Prometheus on the project's rules, as they are
    const promConfig = path.join(dir, 'prometheus.yml');
    fs.writeFileSync(
      promConfig,
      stringify({
        global: { scrape_interval: `${SCRAPE_INTERVAL_S}s`, evaluation_interval: `${EVALUATION_INTERVAL_S}s` },
        rule_files: [s.rulesFile],
        alerting: { alertmanagers: [{ static_configs: [{ targets: [`127.0.0.1:${amPort}`] }] }] },
        scrape_configs: [{ job_name: 'dbpilot', static_configs: [{ targets: [`127.0.0.1:${port}`] }] }],
      }),
    );
    prometheus = await startChild(
      {
        name: `failover-${trial}-prometheus`,
        cmd: s.prometheusBin,
        args: [`--config.file=${promConfig}`, `--storage.tsdb.path=${path.join(dir, 'prometheus-data')}`, `--web.listen-address=127.0.0.1:${promPort}`, `--web.external-url=${promUrl}`],
        env: cleanEnv({}),
        port: promPort,
      },
      logDir,
    );
    keep(prometheus.stop);

    const procs = [dbpilot, prometheus, alertmanager];
    const exited = () => {
      for (const p of procs) {
        try {
          process.kill(p.pid, 0);
        } catch {
          return `${p.name} exited:\n${logTail(p.logFile)}`;
        }
      }
      return null;
    };
    const promQuery = async (q: string) =>
      (await getJson<{ data: { result: { metric: Record<string, string>; value?: [number, string]; values?: [number, string][] }[] } }>(`${promUrl}/api/v1/query?query=${encodeURIComponent(q)}`)).data.result;

    // --- the baseline: dbpilot leads, Prometheus scrapes it with the rules loaded, both servers up, Alertmanager known
    await until('dbpilot to lead (dbpilot_leader 1)', 30_000, async () => /^dbpilot_leader 1$/m.test(await (await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(5000) })).text()), 200, exited);
    await until('Alertmanager ready', 30_000, async () => (await fetch(`${amUrl}/-/ready`).catch(() => null))?.ok, 100, exited);
    await until('Prometheus ready', 30_000, async () => (await fetch(`${promUrl}/-/ready`).catch(() => null))?.ok, 100, exited);
    await until('Prometheus to know Alertmanager', 30_000, async () => (await getJson<{ data: { activeAlertmanagers: unknown[] } }>(`${promUrl}/api/v1/alertmanagers`)).data.activeAlertmanagers.length === 1, 200, exited);
    await until(
      `Prometheus to store pg_up 1 for the primary ${oldHost} and the replica`,
      30_000,
      async () => {
        const up = await promQuery('pg_up{job="dbpilot"}');
        const v = (role: string, server: string) => up.find((x) => x.metric.role === role && x.metric.server === server)?.value?.[1];
        return v('primary', oldHost) === '1' && v('replica', `127.0.0.1:${replica.port}`) === '1';
      },
      200,
      exited,
    );
    const rules = await getJson<{ data: { groups: { name: string; rules: { name: string; type: string; duration: number }[] }[] } }>(`${promUrl}/api/v1/rules`);
    const rule = rules.data.groups.flatMap((g) => g.rules).find((x) => x.type === 'alerting' && x.name === ALERT);
    if (!rule) throw new Error(`Prometheus did not load the ${ALERT} rule from ${s.rulesFile}`);
    // A few scrapes of a healthy cluster, then the kill at a random point of the scrape second.
    await sleep(2000 + Math.random() * 1000);
    const firing = await promQuery(`ALERTS{alertname="${ALERT}"}`);
    if (firing.length > 0) throw new Error(`${ALERT} is already ${firing[0]!.metric.alertstate} before the kill`);

    if (s.blipMs !== null) {
      fig.blip = await blip(s.blipMs, { primary, replicaUrl: replica.url(), oldHost, k8s, base, auth, promUrl, promQuery, exited });
      return fig;
    }

    // --- the kill, and everything timed from it
    const deadline = Date.now() + 60_000;
    const writes = pollFirstWrite(replica.url(), deadline);
    await writes.ready;
    const promAlerts: { activeAt: number | null; sawFiring: boolean } = { activeAt: null, sawFiring: false };
    const amSeen: { updatedAt: number | null; startsAt: number | null } = { updatedAt: null, startsAt: null };
    let watching = true;
    const watchAlerts = (async () => {
      while (watching && Date.now() < deadline) {
        try {
          const a = (await getJson<{ data: { alerts: { labels: Record<string, string>; state: string; activeAt: string }[] } }>(`${promUrl}/api/v1/alerts`)).data.alerts.find((x) => x.labels.alertname === ALERT);
          if (a) {
            promAlerts.activeAt ??= Date.parse(a.activeAt);
            if (a.state === 'firing') promAlerts.sawFiring = true;
          }
          if (amSeen.updatedAt === null) {
            const am = (await getJson<{ labels: Record<string, string>; updatedAt: string; startsAt: string }[]>(`${amUrl}/api/v2/alerts?filter=${encodeURIComponent(`alertname="${ALERT}"`)}`)).find((x) => x.labels.alertname === ALERT);
            if (am) {
              amSeen.updatedAt = Date.parse(am.updatedAt);
              amSeen.startsAt = Date.parse(am.startsAt);
            }
          }
        } catch {
          // next round
        }
        await sleep(200);
      }
    })();
    const killedAt = Date.now();
    const k8sSeen = pollKubernetes(k8s, oldHost, deadline);
    await primary.kill();
    fig.phase.killMs = killedAt % 1000;
    const rel = (t: number | null | undefined) => (t === null || t === undefined || !Number.isFinite(t) ? null : (t - killedAt) / 1000);

    // The run: until it has ended (or the minute is over).
    let run: RunJson | null = null;
    try {
      const id = await until(
        `${ALERT} to reach dbpilot's webhook (a run in its audit)`,
        30_000,
        async () => (await getJson<{ runs: { id: string; alertname: string }[] }>(`${base}/api/remediations?alertname=${ALERT}`, auth)).runs[0]?.id,
        50,
        exited,
      );
      run = await until(
        'the failover run to end',
        45_000,
        async () => {
          const r = await getJson<RunJson>(`${base}/api/remediations/${id}`, auth);
          return ['planning', 'running'].includes(r.status) ? undefined : r;
        },
        100,
        exited,
      );
    } catch (err) {
      fig.error = (err as Error).message;
    }
    const firstWrite = await Promise.race([writes.result, sleep(Math.max(0, Math.min(15_000, deadline - Date.now()))).then(() => null)]);
    const k8sFig = await k8sSeen;
    watching = false;
    await watchAlerts;
    fig.txidPolls = writes.polls();

    // --- what Prometheus stored
    const window = `${Math.ceil((Date.now() - killedAt) / 1000) + 10}s`;
    const samples = (await promQuery(`pg_up{job="dbpilot", server="${oldHost}"}[${window}]`)).flatMap((x) => x.values ?? []).sort((a, b) => a[0] - b[0]);
    const firstDown = samples.find(([t, v]) => v === '0' && t * 1000 >= killedAt - 1000);
    const lastUp = [...samples].reverse().find(([t, v]) => v === '1' && t * 1000 <= (firstDown ? firstDown[0] * 1000 : killedAt));
    fig.at.firstDownSample = firstDown ? rel(firstDown[0] * 1000) : null;
    fig.prometheus.lastUpSampleBeforeKillS = lastUp ? rel(lastUp[0] * 1000) : null;
    if (firstDown) fig.phase.scrapeMs = Math.round(firstDown[0] * 1000) % 1000;
    const durations = (await promQuery(`scrape_duration_seconds{job="dbpilot"}[${window}]`)).flatMap((x) => x.values ?? []);
    const downDuration = firstDown ? durations.find(([t]) => t === firstDown[0]) : undefined;
    fig.prometheus.firstDownScrapeS = downDuration ? round(Number(downDuration[1]), 4) : null;
    fig.prometheus.scrapeDurationsS = durations.filter(([t]) => t * 1000 >= killedAt - 2000 && t * 1000 <= killedAt + 6000).map(([, v]) => round(Number(v), 4));
    const groups = await getJson<{ data: { groups: { rules: { name: string }[]; evaluationTime: number; lastEvaluation: string }[] } }>(`${promUrl}/api/v1/rules`);
    const group = groups.data.groups.find((g) => g.rules.some((x) => x.name === ALERT));
    fig.prometheus.ruleGroupEvaluationS = group ? round(group.evaluationTime, 5) : null;
    if (group) fig.phase.evaluationMs = Date.parse(group.lastEvaluation) % 1000;
    fig.at.pending = rel(promAlerts.activeAt);
    if (promAlerts.activeAt !== null) fig.phase.evaluationMs = promAlerts.activeAt % 1000;
    fig.at.alertmanager = rel(amSeen.updatedAt);

    // --- what dbpilot recorded
    if (run) {
      fig.runStatus = run.status;
      fig.runReason = run.reason;
      fig.at.firing = rel(Date.parse(run.startsAt)); // Prometheus sends the alert's FiredAt as startsAt
      fig.at.webhook = rel(Date.parse(run.createdAt));
      fig.at.runFinished = run.finishedAt ? rel(Date.parse(run.finishedAt)) : null;
      fig.probes = run.plan?.data?.probes ?? [];
      fig.steps = run.steps.map((st) => {
        const a = st.startedAt ? Date.parse(st.startedAt) : null;
        const b = st.finishedAt ? Date.parse(st.finishedAt) : null;
        return { name: st.name, status: st.status, startedS: rel(a), finishedS: rel(b), ms: a !== null && b !== null ? b - a : null };
      });
      fig.at.firstStep = fig.steps[0]?.startedS ?? null;
    }
    if (fig.at.firing === null && amSeen.startsAt !== null) fig.at.firing = rel(amSeen.startsAt);
    // dbpilot's log line at the failover decision: after the confirmation probes (and the pod read).
    for (const line of fs.readFileSync(dbpilotLog, 'utf8').split('\n')) {
      if (!line.includes('primary pod status at the failover decision')) continue;
      try {
        fig.at.probesDone = rel(Date.parse((JSON.parse(line) as { time: string }).time));
      } catch {
        // not JSON
      }
    }
    fig.at.firstWrite = rel(firstWrite);
    const secretTimes = Object.values(k8sFig.secrets);
    const restartTimes = Object.values(k8sFig.restarts);
    fig.at.secretsPatched = secretTimes.every((t) => t !== null) ? rel(Math.max(...(secretTimes as number[]))) : null;
    fig.at.restartsRequested = restartTimes.every((t) => t !== null) ? rel(Math.max(...(restartTimes as number[]))) : null;
    fig.restarts = Object.fromEntries(Object.entries(k8sFig.restarts).map(([d, t]) => [d, rel(t)]));
    if (!fig.error && run?.status !== 'succeeded') fig.error = `the run ended ${run?.status}: ${run?.reason ?? ''}`;
    if (!fig.error && fig.at.firstWrite === null) fig.error = 'the replica accepted no write within the minute';
    if (fig.error) fig.error += `\n--- end of ${dbpilotLog} ---\n${logTail(dbpilotLog)}`;
  } catch (err) {
    fig.error = `${(err as Error).message}${dbpilot ? `\n--- end of ${dbpilot.logFile} ---\n${logTail(dbpilot.logFile)}` : ''}`;
  } finally {
    // Everything of this trial, newest first; the data dirs go, the logs stay in .bench/logs.
    for (const stop of stops.reverse()) await stop().catch((err: unknown) => ctx.log(`trial ${trial}: clean-up failed: ${(err as Error).message}`));
    for (const sub of ['prometheus-data', 'alertmanager-data']) fs.rmSync(path.join(dir, sub), { recursive: true, force: true });
  }
  return fig;
}

// ---------------------------------------------------------------------------------------------------
// A blip instead of the kill (--blip-ms): is anything promoted?

/** The postmaster of `dataDir` and its children (backends, walsender, background workers). */
function serverPids(dataDir: string): number[] {
  const pm = findPostmaster(dataDir);
  if (pm === null) throw new Error(`no postmaster found for ${dataDir}`);
  const kids = fs
    .readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .map(Number)
    .filter((pid) => procStat(pid)?.ppid === pm);
  return [pm, ...kids];
}

async function blip(
  blipMs: number,
  w: {
    primary: PgCluster['primary'];
    replicaUrl: string;
    oldHost: string;
    k8s: K8sStandIn;
    base: string;
    auth: Record<string, string>;
    promUrl: string;
    promQuery: (q: string) => Promise<{ metric: Record<string, string>; values?: [number, string][] }[]>;
    exited: () => string | null;
  },
): Promise<BlipFigures> {
  const seen = { pending: false, firing: false };
  let watching = true;
  const watch = (async () => {
    while (watching) {
      try {
        const a = (await getJson<{ data: { alerts: { labels: Record<string, string>; state: string }[] } }>(`${w.promUrl}/api/v1/alerts`)).data.alerts.find((x) => x.labels.alertname === ALERT);
        if (a?.state === 'pending') seen.pending = true;
        if (a?.state === 'firing') seen.firing = true;
      } catch {
        // next round
      }
      await sleep(100);
    }
  })();
  const pids = serverPids(w.primary.dataDir);
  const signal = (sig: NodeJS.Signals) => {
    for (const pid of pids) {
      try {
        process.kill(pid, sig);
      } catch {
        // gone
      }
    }
  };
  const stoppedAt = Date.now();
  const resume = onCleanup('failover blip: SIGCONT the primary', () => signal('SIGCONT'));
  signal('SIGSTOP');
  try {
    await sleep(blipMs);
  } finally {
    await resume();
  }
  // Long enough for any alert the blip caused to fire and reach dbpilot, and for its run to end.
  const settle = Date.now() + 10_000;
  let run: RunJson | null = null;
  while (Date.now() < settle || (run !== null && ['planning', 'running'].includes(run.status))) {
    const dead = w.exited();
    if (dead) throw new Error(dead);
    const id = (await getJson<{ runs: { id: string }[] }>(`${w.base}/api/remediations?alertname=${ALERT}`, w.auth)).runs[0]?.id;
    if (id) run = await getJson<RunJson>(`${w.base}/api/remediations/${id}`, w.auth);
    if (Date.now() > settle + 45_000) break;
    await sleep(200);
  }
  watching = false;
  await watch;
  const ask = async (url: string, sql: string) => {
    const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000, query_timeout: 2000 });
    c.on('error', () => undefined);
    try {
      await c.connect();
      return (await c.query<{ r: unknown }>(sql)).rows[0]?.r;
    } catch {
      return undefined;
    } finally {
      await c.end().catch(() => undefined);
    }
  };
  const window = `${Math.ceil((Date.now() - stoppedAt) / 1000) + 5}s`;
  const samples = (await w.promQuery(`pg_up{job="dbpilot", server="${w.oldHost}"}[${window}]`)).flatMap((x) => x.values ?? []);
  const restartedAt = (d: string) => ((w.k8s.deployment(d, NS)?.spec as { template?: { metadata?: { annotations?: Record<string, string> } } } | undefined)?.template?.metadata?.annotations ?? {})['kubectl.kubernetes.io/restartedAt'];
  return {
    ms: blipMs,
    downSamples: samples.filter(([t, v]) => v === '0' && t * 1000 >= stoppedAt - 1000).length,
    pendingSeen: seen.pending || seen.firing,
    firingSeen: seen.firing,
    run: run ? { status: run.status, reason: run.reason, probes: run.plan?.data?.probes ?? [] } : null,
    promoted: (await ask(w.replicaUrl, 'SELECT pg_is_in_recovery() AS r')) === false,
    secretChanged: SECRETS.some((x) => !(w.k8s.secretValue(x.name, x.key, NS) ?? '').includes(`@${w.oldHost}/`)),
    restarted: DEPLOYMENTS.filter((d) => restartedAt(d) !== undefined).length,
    primaryWritable: (await ask(w.primary.url(), 'SELECT txid_current()::text AS r')) !== undefined,
  };
}

// ---------------------------------------------------------------------------------------------------
// Report

const s3 = (v: number | null) => (v === null ? '–' : `${v.toFixed(3)} s`);
const ms = (v: number | null) => (v === null ? '–' : `${Math.round(v * 1000)} ms`);
const diff = (a: number | null, b: number | null) => (a === null || b === null ? null : a - b);

/** The milestones of one trial in order, each with the interval since the one before. */
function milestones(f: TrialFigures, forText: string): [string, number | null, number | null, string][] {
  const a = f.at;
  const promote = f.steps.find((x) => x.name === 'promoteReplica');
  const rows: [string, number | null, string][] = [
    ['primary SIGKILLed', 0, `at .${String(f.phase.killMs).padStart(3, '0')} s of the second`],
    ['first scrape with pg_up 0 (sample time)', a.firstDownSample, f.phase.scrapeMs === null ? '' : `scrapes at .${String(f.phase.scrapeMs).padStart(3, '0')}, this one took ${ms(f.prometheus.firstDownScrapeS)}`],
    [`${ALERT} pending (activeAt)`, a.pending, f.phase.evaluationMs === null ? '' : `evaluations at .${String(f.phase.evaluationMs).padStart(3, '0')}, group takes ${ms(f.prometheus.ruleGroupEvaluationS)}`],
    [`${ALERT} firing (startsAt sent)`, a.firing, `for: ${forText}`],
    ['received by Alertmanager (updatedAt)', a.alertmanager, ''],
    ["webhook at dbpilot (run createdAt)", a.webhook, 'group_wait'],
    [`confirmed down (${f.probes.length} probes)`, a.probesDone, f.probes.map((p) => p.replace(/^probe (\d+): .*\((\d+) ms\)$/, '#$1 $2 ms')).join(', ')],
    ...f.steps.map((st): [string, number | null, string] => [`step ${st.name} done`, st.finishedS, `${st.status}, started ${s3(st.startedS)}, ${st.ms ?? '–'} ms`]),
    ['first write accepted (txid_current)', a.firstWrite, promote ? `promoteReplica started ${s3(promote.startedS)}` : ''],
    ['every secret patched', a.secretsPatched, `${ms(diff(a.secretsPatched, a.firstWrite))} after the write`],
    ['every rollout restart requested', a.restartsRequested, `${ms(diff(a.restartsRequested, a.firstWrite))} after the write`],
  ];
  // in time order (steps interleave with the polled milestones), interval from the previous row
  const sorted = rows.map((r, i) => ({ r, i })).sort((x, y) => (x.r[1] ?? Number.POSITIVE_INFINITY) - (y.r[1] ?? Number.POSITIVE_INFINITY) || x.i - y.i);
  let prev: number | null = 0;
  return sorted.map(({ r }) => {
    const d = r[1] !== null && prev !== null ? r[1] - prev : null;
    if (r[1] !== null) prev = r[1];
    return [r[0], r[1], d, r[2]];
  });
}

function printTrial(f: TrialFigures, forText: string): void {
  const t = new Table({ style: { head: [], border: [] }, head: ['milestone', 'after kill', 'since previous', 'note'] });
  for (const [name, at, d, note] of milestones(f, forText)) t.push([name, s3(at), ms(d), note]);
  process.stdout.write(`\nTrial ${f.trial}${f.error ? ` — FAILED: ${f.error.split('\n')[0]}` : ''}\n${t.toString()}\n`);
  if (f.error) process.stdout.write(`${f.error}\n`);
}

interface Stage {
  name: string;
  of: (f: TrialFigures) => number | null;
}

const STAGES: Stage[] = [
  { name: 'kill → first scrape with pg_up 0', of: (f) => f.at.firstDownSample },
  { name: 'that scrape → pending (next evaluation)', of: (f) => diff(f.at.pending, f.at.firstDownSample) },
  { name: 'pending → firing (the rule\'s for)', of: (f) => diff(f.at.firing, f.at.pending) },
  { name: 'firing → Alertmanager', of: (f) => diff(f.at.alertmanager, f.at.firing) },
  { name: 'Alertmanager → dbpilot webhook (group_wait + POST)', of: (f) => diff(f.at.webhook, f.at.alertmanager) },
  { name: 'webhook → confirmed down (plan: probes)', of: (f) => diff(f.at.probesDone, f.at.webhook) },
  { name: 'confirmed → first step started (plan: replica choice)', of: (f) => diff(f.at.firstStep, f.at.probesDone) },
  { name: 'first step → first write accepted', of: (f) => diff(f.at.firstWrite, f.at.firstStep) },
  { name: 'first write → every secret patched', of: (f) => diff(f.at.secretsPatched, f.at.firstWrite) },
  { name: 'first write → every restart requested', of: (f) => diff(f.at.restartsRequested, f.at.firstWrite) },
];

const HEADLINE: Stage[] = [
  { name: 'kill → alert at dbpilot webhook', of: (f) => f.at.webhook },
  { name: 'kill → first write accepted', of: (f) => f.at.firstWrite },
  { name: 'kill → every secret patched', of: (f) => f.at.secretsPatched },
  { name: 'kill → every restart requested', of: (f) => f.at.restartsRequested },
  { name: 'kill → run finished (rollouts waited for)', of: (f) => f.at.runFinished },
];

function stats(values: (number | null)[]): { median: number | null; worst: number | null; missing: number } {
  const v = values.filter((x): x is number => x !== null);
  return { median: v.length ? quantile(v, 0.5) : null, worst: v.length ? Math.max(...v) : null, missing: values.length - v.length };
}

function blipReport(figures: TrialFigures[], blipMs: number, forText: string, whatIfFor: string | undefined, load0: number[], load1: number[]): SectionResult {
  const t = new Table({ style: { head: [], border: [] }, head: ['blip', 'pg_up 0 samples', 'alert', 'dbpilot run', 'promoted', 'secret changed', 'restarts', 'old primary writable'] });
  for (const f of figures) {
    const b = f.blip;
    if (!b) {
      t.push([`#${f.trial}`, { colSpan: 7, content: `FAILED: ${(f.error ?? '').split('\n')[0]}` }]);
      continue;
    }
    t.push([`#${f.trial}`, String(b.downSamples), b.firingSeen ? 'firing' : b.pendingSeen ? 'pending only' : 'none', b.run ? `${b.run.status}: ${(b.run.reason ?? '').slice(0, 70)}` : 'none', b.promoted ? 'YES' : 'no', b.secretChanged ? 'YES' : 'no', String(b.restarted), b.primaryWritable ? 'yes' : 'NO']);
  }
  const safe = figures.every((f) => f.blip && !f.blip.promoted && !f.blip.secretChanged && f.blip.restarted === 0 && f.blip.primaryWritable);
  process.stdout.write(
    [
      '',
      `${whatIfFor ? `WHAT-IF for: ${whatIfFor} — ` : ''}Blips (issue 9 §5, safety): the primary stopped (SIGSTOP of the postmaster and its children) for ${blipMs} ms, then let go on (SIGCONT); ${ALERT} for: ${forText}, ${FAILOVER.confirmProbes} probes ${FAILOVER.confirmIntervalMs} ms apart; load average ${load0.map((x) => x.toFixed(2)).join(' ')} → ${load1.map((x) => x.toFixed(2)).join(' ')}`,
      t.toString(),
      '',
    ].join('\n'),
  );
  return {
    figures: { mode: 'blip', blipMs, whatIfFor: whatIfFor ?? null, forText, trials: figures.map((f) => ({ trial: f.trial, error: f.error?.split('\n')[0] ?? null, blip: f.blip ?? null })), loadAverage: { start: load0, end: load1 } },
    targets: [{ name: `a ${blipMs} ms blip promotes nothing${whatIfFor ? ` [what-if for: ${whatIfFor}]` : ''}`, measured: `${figures.filter((f) => f.blip?.promoted).length} of ${figures.length} promoted`, target: 'none', pass: safe }],
  };
}

// ---------------------------------------------------------------------------------------------------
// The section

export const failoverSection: Section = {
  name: 'failover',
  summary: 'kill -9 of the primary → Prometheus → Alertmanager → dbpilot promotes, repoints, restarts (issue 9 §5)',
  options: {
    trials: { type: 'string', default: '5' },
    'rollout-delay-ms': { type: 'string', default: '200' },
    'what-if-for': { type: 'string' },
    'blip-ms': { type: 'string' },
  },
  help: [
    '--trials N              failover trials, each on fresh servers (default 5)',
    '--rollout-delay-ms N    how long each restarted deployment takes to roll out in the stand-in (default 200)',
    `--what-if-for D         run on a copy of ${RULES_FILE} with ${ALERT}'s for: set to D (e.g. 1s); labelled a what-if`,
    '--blip-ms N             instead of the kill, stop the primary (SIGSTOP) for N ms and let it go on: is anything promoted?',
  ],
  async run(ctx: SectionContext): Promise<SectionResult> {
    const trials = intOption(ctx.values, 'trials', 1);
    const rolloutDelayMs = intOption(ctx.values, 'rollout-delay-ms', 0);
    const blipMs = ctx.values['blip-ms'] === undefined ? null : intOption(ctx.values, 'blip-ms', 1);
    const runtime = ((ctx.values['dbpilot-runtime'] as string | undefined) ?? 'dist') as DbpilotRuntime;
    if (runtime !== 'dist' && runtime !== 'tsx') throw new UsageError(`--dbpilot-runtime must be dist or tsx (got ${runtime})`);
    const prometheusBin = process.env.PROMETHEUS ?? 'prometheus';
    const alertmanagerBin = process.env.ALERTMANAGER ?? 'prometheus-alertmanager';
    const versions = { prometheus: binaryVersion(prometheusBin), alertmanager: binaryVersion(alertmanagerBin) };
    if (versions.prometheus === null) throw new Error(`${prometheusBin} not found: the failover section needs the real Prometheus (Debian: apt-get install -y prometheus; or set PROMETHEUS)`);
    if (versions.alertmanager === null) throw new Error(`${alertmanagerBin} not found: the failover section needs the real Alertmanager (Debian: apt-get install -y prometheus-alertmanager; or set ALERTMANAGER)`);

    // The alert-driven floor, from the files as they are: the rule's `for`, the group_wait Alertmanager's
    // example gives PostgresPrimaryDown, and the handler's confirmation probes.
    const rulesDoc = parseYaml(fs.readFileSync(path.join(ctx.root, RULES_FILE), 'utf8')) as { groups: { rules: { alert?: string; for?: string; labels?: Record<string, string> }[] }[] };
    const ruleDef = rulesDoc.groups.flatMap((g) => g.rules).find((x) => x.alert === ALERT);
    if (!ruleDef) throw new Error(`${RULES_FILE} has no ${ALERT} rule`);
    const whatIfFor = ctx.values['what-if-for'] as string | undefined;
    if (whatIfFor !== undefined && !/^\d+(ms|s|m)$/.test(whatIfFor)) throw new UsageError(`--what-if-for must be a duration like 1s or 500ms (got ${whatIfFor})`);
    const forText = whatIfFor ?? ruleDef.for ?? '0s';
    const forMs = goDurationMs(forText);
    let rulesFile = path.join(ctx.root, RULES_FILE);
    if (whatIfFor !== undefined) {
      // The repository's rules with only this rule's `for` changed, edited on the parsed document.
      const doc = parseDocument(fs.readFileSync(rulesFile, 'utf8'));
      const groups = doc.get('groups');
      let edited = 0;
      if (isSeq(groups)) {
        for (const g of groups.items) {
          const rulesSeq = isMap(g) ? g.get('rules') : undefined;
          if (!isSeq(rulesSeq)) continue;
          for (const r of rulesSeq.items) {
            if (!isMap(r) || r.get('alert') !== ALERT) continue;
            r.set('for', whatIfFor);
            edited++;
          }
        }
      }
      if (edited !== 1) throw new Error(`${RULES_FILE}: found ${edited} ${ALERT} rules to edit`);
      fs.mkdirSync(path.join(ctx.workDir, 'failover'), { recursive: true });
      rulesFile = path.join(ctx.workDir, 'failover', `dbpilot.rules.what-if-for-${whatIfFor}.yml`);
      fs.writeFileSync(rulesFile, doc.toString());
    }
    const amDoc = parseYaml(fs.readFileSync(path.join(ctx.root, ALERTMANAGER_EXAMPLE), 'utf8')) as { route: AmRoute };
    const alertLabels = { alertname: ALERT, server: '127.0.0.1:5432', ...(ruleDef.labels ?? {}) };
    const route = routeFor(amDoc.route, alertLabels);
    const groupWaitMs = goDurationMs(route.groupWait);
    const amtool = amtoolReceiver(path.join(ctx.root, ALERTMANAGER_EXAMPLE), alertLabels);
    if (amtool !== null && amtool !== route.receiver) throw new Error(`routing ${ALERT}: amtool says ${amtool}, bench/failover.ts says ${route.receiver}; fix routeFor`);
    const probesMs = (FAILOVER.confirmProbes - 1) * FAILOVER.confirmIntervalMs;
    const floorS = (forMs + groupWaitMs + probesMs) / 1000;
    const worstDetectS = SCRAPE_INTERVAL_S + EVALUATION_INTERVAL_S;

    const dbp = dbpilotCommand(ctx.root, ctx.workDir, runtime, ctx.log);
    if (dbp.note) ctx.log(dbp.note);
    ctx.log(`failover: ${trials} trial(s); dbpilot ${dbp.runtime}; ${versions.prometheus}; ${versions.alertmanager}`);
    ctx.log(`failover: ${ALERT} routes to ${route.receiver} with group_wait ${route.groupWait} (${route.trail.join(' → ') || 'root'}); the rule's for: ${ruleDef.for}${whatIfFor ? `, WHAT-IF for: ${whatIfFor}` : ''}`);
    const load0 = os.loadavg();
    const figures: TrialFigures[] = [];
    for (let i = 1; i <= trials; i++) {
      ctx.log(`failover trial ${i}/${trials}: fresh primary + replica, stand-ins, dbpilot, Alertmanager, Prometheus…`);
      const f = await runTrial({ ctx, trial: i, dbp, prometheusBin, alertmanagerBin, rolloutDelayMs, rulesFile, blipMs });
      figures.push(f);
      if (blipMs !== null) {
        const b = f.blip;
        ctx.log(`failover blip ${i}: ${f.error ? `FAILED (${f.error.split('\n')[0]})` : `${b!.downSamples} pg_up 0 sample(s), ${b!.firingSeen ? 'fired' : b!.pendingSeen ? 'pending only' : 'no alert'}, run ${b!.run ? `${b!.run.status}: ${b!.run.reason}` : 'none'}, ${b!.promoted ? 'PROMOTED' : 'nothing promoted'}`}`);
        if (f.error) process.stdout.write(`\nBlip ${i} — FAILED\n${f.error}\n`);
        continue;
      }
      printTrial(f, forText);
      ctx.log(`failover trial ${i}: ${f.error ? `FAILED (${f.error.split('\n')[0]})` : `first write ${s3(f.at.firstWrite)}, secrets ${s3(f.at.secretsPatched)}, restarts ${s3(f.at.restartsRequested)} after the kill`}`);
    }
    const load1 = os.loadavg();
    if (blipMs !== null) return blipReport(figures, blipMs, forText, whatIfFor, load0, load1);

    // --- summary
    const sum = new Table({ style: { head: [], border: [] }, head: ['', ...figures.map((f) => `#${f.trial}`), 'median', 'worst'] });
    const line = (st: Stage, fmtv: (v: number | null) => string) => {
      const vs = figures.map((f) => st.of(f));
      const { median, worst } = stats(vs);
      sum.push([st.name, ...vs.map(fmtv), fmtv(median), fmtv(worst)]);
    };
    for (const st of HEADLINE) line(st, s3);
    sum.push([{ colSpan: figures.length + 3, content: 'where the time goes' }]);
    for (const st of STAGES) line(st, ms);
    const stepNames = [...new Set(figures.flatMap((f) => f.steps.map((x) => x.name)))];
    for (const n of stepNames) line({ name: `step ${n}`, of: (f) => { const x = f.steps.find((y) => y.name === n); return x?.ms == null ? null : x.ms / 1000; } }, ms);

    const writeS = stats(figures.map((f) => f.at.firstWrite));
    const secretsAfter = stats(figures.map((f) => diff(f.at.secretsPatched, f.at.firstWrite)));
    const restartsAfter = stats(figures.map((f) => diff(f.at.restartsRequested, f.at.firstWrite)));
    const failed = figures.filter((f) => f.error !== null).length;
    const detect = stats(figures.map((f) => diff(f.at.pending, 0)));
    process.stdout.write(
      [
        '',
        whatIfFor ? `WHAT-IF: ${ALERT} with for: ${whatIfFor} instead of the repository's ${ruleDef.for} (a copy of ${RULES_FILE}); not the repository's figures.` : '',
        `Failover (issue 9 §5): ${trials} trial(s), dbpilot ${dbp.runtime}, ${versions.prometheus?.replace(/\s*\(.*$/, '')}, ${versions.alertmanager?.replace(/\s*\(.*$/, '')}; scrape and evaluation every 1 s; load average ${load0.map((x) => x.toFixed(2)).join(' ')} → ${load1.map((x) => x.toFixed(2)).join(' ')}`,
        sum.toString(),
        `  Reference, Patroni on this machine: ${PATRONI_DEFAULTS_S} s median kill → first write with its defaults, ${PATRONI_FLOOR_S} s at its documented floor.`,
        `  Alert-driven floor: for ${forText} (at 1 s evaluation) + group_wait ${route.groupWait} (Alertmanager example, route ${route.receiver}) + ${FAILOVER.confirmProbes} probes ${FAILOVER.confirmIntervalMs} ms apart (${probesMs} ms) = ${floorS.toFixed(1)} s,`,
        `    plus 0–${worstDetectS} s for the next scrape and the next evaluation to see the kill (median here ${fmt(detect.median, 2)} s to pending): ${floorS.toFixed(1)}–${(floorS + worstDetectS).toFixed(1)} s before the first step can start.`,
        failed ? `  ${failed} trial(s) failed; their missing figures count as misses.` : '',
        '',
      ].join('\n'),
    );

    const missing = (x: { missing: number }) => x.missing > 0;
    const tag = whatIfFor ? ` [what-if for: ${whatIfFor}]` : '';
    const targets: TargetCheck[] = [
      { name: `kill → first write accepted (median)${tag}`, measured: `${s3(writeS.median)} (worst ${s3(writeS.worst)})`, target: `≤ ${TARGET_FIRST_WRITE_S} s (Patroni ${PATRONI_DEFAULTS_S} s)`, pass: !missing(writeS) && writeS.median !== null && writeS.median <= TARGET_FIRST_WRITE_S },
      { name: `first write → every secret patched (median)${tag}`, measured: `${ms(secretsAfter.median)} (worst ${ms(secretsAfter.worst)})`, target: `≤ ${TARGET_AFTER_WRITE_S} s more`, pass: !missing(secretsAfter) && secretsAfter.median !== null && secretsAfter.median <= TARGET_AFTER_WRITE_S },
      { name: `first write → every restart requested (median)${tag}`, measured: `${ms(restartsAfter.median)} (worst ${ms(restartsAfter.worst)})`, target: `≤ ${TARGET_AFTER_WRITE_S} s more`, pass: !missing(restartsAfter) && restartsAfter.median !== null && restartsAfter.median <= TARGET_AFTER_WRITE_S },
    ];
    return {
      figures: {
        trials: figures.map((f) => ({ ...f, error: f.error?.split('\n')[0] ?? null })),
        runtime: dbp.runtime,
        versions,
        rolloutDelayMs,
        whatIfFor: whatIfFor ?? null,
        floor: { forMs, groupWaitMs, groupWait: route.groupWait, receiver: route.receiver, probesMs, floorS, worstDetectS },
        reference: { patroniDefaultsS: PATRONI_DEFAULTS_S, patroniFloorS: PATRONI_FLOOR_S },
        summary: Object.fromEntries([...HEADLINE, ...STAGES].map((st) => [st.name, stats(figures.map((f) => st.of(f)))])),
        loadAverage: { start: load0, end: load1 },
      },
      targets,
    };
  },
};

/** The receiver `amtool config routes test` picks for `labels`, or null when amtool is not installed or fails. */
function amtoolReceiver(configFile: string, labels: Record<string, string>): string | null {
  const r = spawnSync('amtool', ['config', 'routes', 'test', `--config.file=${configFile}`, ...Object.entries(labels).map(([k, v]) => `${k}=${v}`)], { encoding: 'utf8', timeout: 10_000 });
  return r.status === 0 && !r.error ? r.stdout.trim() : null;
}
