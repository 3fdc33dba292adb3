/**
 * `dbpilot drill <scenario> --with-prometheus`: the alert reaches dbpilot through the real alert path
 * instead of being posted by the drill — Prometheus (Debian's `prometheus`) scraping the sandbox's
 * dbpilot as job "dbpilot" every 1 s and evaluating alerts/dbpilot.rules.yml unchanged (1 s
 * evaluation), and Alertmanager (`prometheus-alertmanager`) on alerts/alertmanager.example.yml with
 * only what must point at the sandbox replaced (dbpilot's webhook URL and token file, the PagerDuty
 * URL → the stand-in, the routing key files), as bench/failover.ts and test/e2e/alert-path.test.ts do.
 *
 * The two files are read from the package root (`../../` of this module: the checkout, or /app in the
 * image, which copies them). PROMETHEUS / ALERTMANAGER name the binaries (default: `prometheus` and
 * `prometheus-alertmanager` on PATH). When one does not run, the drill says so and posts the alert
 * itself; the trial's `alertPath` says which path ran.
 *
 * Both processes run under `setpriv --pdeathsig KILL` (they die with the drill even when no clean-up
 * runs), their data under the sandbox's temp dir, and are stopped through the drill's Cleanup.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMap, isScalar, isSeq, parseDocument, stringify } from 'yaml';
import type { Cleanup } from './cleanup.js';
import type { Sandbox, Say } from './build-sandbox.js';
import { freePort } from './sandbox/ports.js';

export const PACKAGE_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const RULES_FILE = 'alerts/dbpilot.rules.yml';
export const ALERTMANAGER_EXAMPLE = 'alerts/alertmanager.example.yml';
const TEAMS = ['lead-dba', 'em-dba', 'oncall-backend', 'devops'] as const;
/** 32 characters, as the PagerDuty stand-in (and PagerDuty) wants; the drill's own, never a real key. */
const ROUTING_KEY = 'DRILLALERTMANAGER000000000000000';

export interface AlertPathResult {
  /** Which path brought the alert to dbpilot's webhook. */
  via: 'prometheus' | 'drill';
  /** With --with-prometheus and the drill's own path: why (a binary missing). */
  fallback?: string;
  /** Prometheus path: the alert's activeAt (pending), as Prometheus' /api/v1/alerts reports it. */
  pendingAt?: string | null;
  /** Prometheus path: the alert's firing time (FiredAt, which Prometheus sends as startsAt); seen firing in /api/v1/alerts. */
  firingAt?: string | null;
  /** The webhook call that created the run arrived at dbpilot's HTTP server. */
  webhookAt?: string | null;
  /** The moment the break was done (what the times are measured from). */
  brokeAt?: string;
  prometheus?: string;
  alertmanager?: string;
}

export interface AlertPath {
  via: 'prometheus' | 'drill';
  result: AlertPathResult;
  ports: number[];
  /**
   * Prometheus path: polls Prometheus' alerts API while waiting; resolves once dbpilot has a run for
   * `alertname` (the caller's `find`), or throws after `timeoutMs`.
   */
  watch(alertname: string, brokeAt: number, found: () => { createdAt: string; startsAt: string } | undefined, timeoutMs: number): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function binary(env: string, fallback: string): { bin: string; version: string } | { missing: string } {
  const bin = process.env[env] || fallback;
  const r = spawnSync(bin, ['--version'], { encoding: 'utf8', timeout: 30_000 });
  if (r.error !== undefined || r.status !== 0) return { missing: `${bin} does not run (${r.error ? (r.error as NodeJS.ErrnoException).code ?? r.error.message : `exit ${r.status}`})` };
  return { bin, version: `${r.stdout}${r.stderr}`.split('\n')[0]!.trim() };
}

/**
 * The example with exactly what must point at the sandbox replaced; anything it does not know (another
 * receiver kind, an inline secret, a URL left pointing elsewhere) throws, as the e2e test's copy does.
 */
export function localiseAlertmanagerConfig(text: string, local: { webhookUrl: string; tokenFile: string; keyFile: (team: string) => string; pagerdutyUrl: string }): string {
  const doc = parseDocument(text, { uniqueKeys: true });
  const fail = (msg: string): never => {
    throw new Error(`${ALERTMANAGER_EXAMPLE}: ${msg} — the drill does not know how to point this at its sandbox`);
  };
  if (doc.errors.length > 0) fail(doc.errors[0]!.message);
  if (typeof doc.getIn(['global', 'pagerduty_url']) !== 'string') fail('global.pagerduty_url is missing');
  doc.setIn(['global', 'pagerduty_url'], local.pagerdutyUrl);
  const receivers = doc.get('receivers');
  if (!isSeq(receivers)) return fail('receivers is not a list');
  let webhooks = 0;
  for (const item of receivers.items) {
    if (!isMap(item)) return fail('a receiver is not a mapping');
    const name = String(item.get('name'));
    for (const pair of item.items) {
      const k = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
      if (!['name', 'webhook_configs', 'pagerduty_configs'].includes(k)) fail(`receiver ${name} has ${k}`);
    }
    const wcs = item.get('webhook_configs');
    if (wcs !== undefined) {
      if (name !== 'dbpilot' || !isSeq(wcs)) return fail(`receiver ${name} has webhook_configs`);
      for (const wc of wcs.items) {
        if (!isMap(wc) || !String(wc.get('url')).endsWith('/alertmanager/webhook')) return fail(`receiver ${name}: a webhook that is not dbpilot's`);
        if (wc.hasIn(['http_config', 'authorization', 'credentials']) || typeof wc.getIn(['http_config', 'authorization', 'credentials_file']) !== 'string') fail(`receiver ${name}: no credentials_file`);
        wc.set('url', local.webhookUrl);
        wc.setIn(['http_config', 'authorization', 'credentials_file'], local.tokenFile);
        webhooks++;
      }
    }
    const pcs = item.get('pagerduty_configs');
    if (pcs !== undefined) {
      const teams = (/^pagerduty-(.+)$/.exec(name)?.[1] ?? '').split('-and-');
      if (!isSeq(pcs) || pcs.items.length !== teams.length || !teams.every((t) => (TEAMS as readonly string[]).includes(t))) return fail(`receiver ${name}: one pagerduty_config per known team expected`);
      for (const [j, pc] of pcs.items.entries()) {
        if (!isMap(pc)) return fail(`receiver ${name}: a pagerduty_config is not a mapping`);
        for (const inline of ['routing_key', 'service_key', 'service_key_file', 'http_config']) if (pc.has(inline)) fail(`receiver ${name} has ${inline}`);
        if (path.basename(String(pc.get('routing_key_file'))) !== `pagerduty-${teams[j]}`) fail(`receiver ${name}: routing_key_file is not the pagerduty-${teams[j]} secret`);
        pc.set('routing_key_file', local.keyFile(teams[j]!));
        if (pc.has('url')) pc.set('url', local.pagerdutyUrl);
      }
    }
  }
  if (webhooks !== 1) fail(`expected exactly one dbpilot webhook, found ${webhooks}`);
  const files = new Set([local.tokenFile, ...TEAMS.map(local.keyFile)]);
  const left: string[] = [];
  const walk = (v: unknown, key: string): void => {
    if (Array.isArray(v)) v.forEach((x) => walk(x, key));
    else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) walk(x, k);
    else if (typeof v === 'string' && ((/(^|_)url$/.test(key) && !v.startsWith('http://127.0.0.1:')) || (/_file$/.test(key) && !files.has(v)))) left.push(`${key}: ${v}`);
  };
  walk(doc.toJS(), '');
  if (left.length > 0) fail(`still pointing elsewhere: ${left.join('; ')}`);
  return doc.toString();
}

/** Starts `bin` under setpriv --pdeathsig KILL; its stop (SIGTERM, SIGKILL after 5 s) goes into `cleanup`. */
function startProcess(cleanup: Cleanup, name: string, bin: string, args: string[], logFile: string): { exited(): string | null } {
  const fd = fs.openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    // TMPDIR passed on, so whoever started the drill can find what it started.
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, ...(process.env.TMPDIR ? { TMPDIR: process.env.TMPDIR } : {}) };
    child = spawn('setpriv', ['--pdeathsig=KILL', '--', bin, ...args], { stdio: ['ignore', fd, fd], env });
  } finally {
    fs.closeSync(fd);
  }
  let code: string | null = null;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (c, s) => ((code = `${name} exited (${s ?? c})`), resolve()));
    child.once('error', (e) => ((code = `${name}: ${e.message}`), resolve()));
  });
  cleanup.add(name, async () => {
    if (code !== null) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  });
  return { exited: () => (code === null ? null : `${code}: ${fs.readFileSync(logFile, 'utf8').slice(-1500)}`) };
}

async function getJson<T>(url: string): Promise<T> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`GET ${url}: ${res.status}`);
  return (await res.json()) as T;
}

async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined | false>, exited: () => string | null): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const dead = exited();
    if (dead) throw new Error(`waiting for ${what}: ${dead}`);
    const v = await fn().catch(() => undefined);
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs / 1000} s`);
    await sleep(100);
  }
}

/** The drill's own path: the drill posts the alert (caller does), nothing to start. */
export function drillPath(fallback?: string): AlertPath {
  return { via: 'drill', result: { via: 'drill', ...(fallback ? { fallback } : {}) }, ports: [], watch: async () => undefined };
}

/**
 * With `withPrometheus` and both binaries runnable: Alertmanager and Prometheus started, waiting until
 * Prometheus has stored pg_up 1 for the sandbox's primary and knows Alertmanager (so the break is seen
 * as a change). Otherwise the drill's own path, with why on stderr (`say`).
 */
export async function startAlertPath(sb: Sandbox, cleanup: Cleanup, say: Say, withPrometheus: boolean): Promise<AlertPath> {
  if (!withPrometheus) return drillPath();
  const prom = binary('PROMETHEUS', 'prometheus');
  const am = binary('ALERTMANAGER', 'prometheus-alertmanager');
  const missing = [prom, am].flatMap((b) => ('missing' in b ? [b.missing] : []));
  if (missing.length > 0 || 'missing' in prom || 'missing' in am) {
    const why = `${missing.join('; ')}: install Debian's prometheus and prometheus-alertmanager, or set PROMETHEUS / ALERTMANAGER to their paths`;
    say(`alert path: --with-prometheus, but ${why}; the drill posts the alert itself`);
    return drillPath(why);
  }
  const dir = path.join(sb.dir, 'alert-path');
  fs.mkdirSync(dir, { mode: 0o700 });
  const tokenFile = path.join(dir, 'dbpilot-webhook-token');
  fs.writeFileSync(tokenFile, sb.token, { mode: 0o600 });
  const keyFile = (team: string) => path.join(dir, `pagerduty-${team}`);
  for (const t of TEAMS) fs.writeFileSync(keyFile(t), ROUTING_KEY, { mode: 0o600 });
  const [amPort, promPort] = [await freePort(), await freePort()];
  const amUrl = `http://127.0.0.1:${amPort}`;
  const promUrl = `http://127.0.0.1:${promPort}`;
  fs.writeFileSync(
    path.join(dir, 'alertmanager.yml'),
    localiseAlertmanagerConfig(fs.readFileSync(path.join(PACKAGE_ROOT, ALERTMANAGER_EXAMPLE), 'utf8'), { webhookUrl: `${sb.url}/alertmanager/webhook`, tokenFile, keyFile, pagerdutyUrl: sb.pagerduty.url }),
  );
  fs.writeFileSync(
    path.join(dir, 'prometheus.yml'),
    stringify({
      global: { scrape_interval: '1s', evaluation_interval: '1s' },
      rule_files: [path.join(PACKAGE_ROOT, RULES_FILE)],
      alerting: { alertmanagers: [{ static_configs: [{ targets: [`127.0.0.1:${amPort}`] }] }] },
      scrape_configs: [{ job_name: 'dbpilot', static_configs: [{ targets: [new URL(sb.url).host] }] }],
    }),
  );
  say(`alert path: ${am.version} on 127.0.0.1:${amPort}, ${prom.version} on 127.0.0.1:${promPort} (scrape and evaluation every 1 s, ${RULES_FILE} unchanged)`);
  const a = startProcess(cleanup, 'Alertmanager', am.bin, [`--config.file=${path.join(dir, 'alertmanager.yml')}`, `--storage.path=${path.join(dir, 'alertmanager-data')}`, `--web.listen-address=127.0.0.1:${amPort}`, '--cluster.listen-address=', `--web.external-url=${amUrl}`], path.join(dir, 'alertmanager.log'));
  const p = startProcess(cleanup, 'Prometheus', prom.bin, [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'prometheus-data')}`, `--web.listen-address=127.0.0.1:${promPort}`, `--web.external-url=${promUrl}`], path.join(dir, 'prometheus.log'));
  const exited = () => a.exited() ?? p.exited();
  // The webhook calls as dbpilot's HTTP server receives them (a listener beside Fastify's; it reads no body).
  const arrivals: number[] = [];
  const onRequest = (req: { method?: string; url?: string }) => void (req.method === 'POST' && req.url === '/alertmanager/webhook' && arrivals.push(Date.now()));
  sb.service.fastify.server.on('request', onRequest);
  cleanup.add('webhook arrival listener', () => void sb.service.fastify.server.off('request', onRequest));

  await until('Alertmanager ready', 30_000, async () => (await fetch(`${amUrl}/-/ready`)).ok, exited);
  await until('Prometheus ready', 30_000, async () => (await fetch(`${promUrl}/-/ready`)).ok, exited);
  await until('Prometheus to know Alertmanager', 30_000, async () => (await getJson<{ data: { activeAlertmanagers: unknown[] } }>(`${promUrl}/api/v1/alertmanagers`)).data.activeAlertmanagers.length === 1, exited);
  const primary = `127.0.0.1:${sb.cluster.primary.port}`;
  await until(`Prometheus to store pg_up 1 for the primary ${primary}`, 30_000, async () => {
    const r = (await getJson<{ data: { result: { metric: Record<string, string>; value: [number, string] }[] } }>(`${promUrl}/api/v1/query?query=${encodeURIComponent('pg_up{job="dbpilot",role="primary"}')}`)).data.result;
    return r.some((x) => x.metric.server === primary && x.value[1] === '1');
  }, exited);
  const result: AlertPathResult = { via: 'prometheus', prometheus: prom.version, alertmanager: am.version, pendingAt: null, firingAt: null, webhookAt: null };
  return {
    via: 'prometheus',
    result,
    ports: [amPort, promPort],
    watch: async (alertname, brokeAt, found, timeoutMs) => {
      result.brokeAt = new Date(brokeAt).toISOString();
      say(`alert: waiting for ${alertname} to go through Prometheus and Alertmanager`);
      const run = await until(`${alertname} to reach dbpilot through Prometheus and Alertmanager`, timeoutMs, async () => {
        const alerts = (await getJson<{ data: { alerts: { labels: Record<string, string>; state: string; activeAt: string }[] } }>(`${promUrl}/api/v1/alerts`)).data.alerts;
        const mine = alerts.find((x) => x.labels.alertname === alertname && Date.parse(x.activeAt) >= brokeAt - 1000);
        if (mine) {
          if (result.pendingAt === null) say(`alert: ${alertname} pending in Prometheus (activeAt ${mine.activeAt})`);
          result.pendingAt ??= mine.activeAt;
          if (mine.state === 'firing' && result.firingAt === null) {
            result.firingAt = new Date().toISOString(); // refined below with the FiredAt Prometheus sent
            say(`alert: ${alertname} firing in Prometheus`);
          }
        }
        return found() ?? false;
      }, exited);
      // Prometheus sends the alert's FiredAt as startsAt: the run records it.
      result.firingAt = run.startsAt;
      const created = Date.parse(run.createdAt);
      const arrival = arrivals.filter((t) => t <= created).at(-1);
      result.webhookAt = arrival === undefined ? null : new Date(arrival).toISOString();
      say(`alert: ${alertname} fired at ${run.startsAt}, Alertmanager's webhook call arrived at ${result.webhookAt ?? '?'}`);
    },
  };
}
