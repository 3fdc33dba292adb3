/**
 * The whole alert path with the real binaries, end to end:
 *
 *   private PostgreSQL primary + replica, private Redis
 *     → dbpilot (startService with the remediation side, dry-run, webhook token, PagerDuty stand-in)
 *     → Prometheus 2.42 scraping it every second and evaluating the project's own
 *       alerts/dbpilot.rules.yml, unchanged
 *     → Alertmanager 0.25 with alerts/alertmanager.example.yml, changed only where it must point
 *       at this machine (dbpilot's webhook URL, the secret files, the PagerDuty URL)
 *     → dbpilot's webhook → its audit API and the PagerDuty stand-in.
 *
 * Three failures are caused for real and followed to dbpilot: Redis stopped (RedisDown, which
 * holds for a minute: the test waits for it), Redis back (the resolved notification, and the one
 * PagerDuty resolve dbpilot sends for it), and the primary SIGKILLed (PostgresPrimaryDown — the
 * regression of a rule that never fires because the exporter's failing scrape outlasts the scrape
 * timeout). The measured delays are printed.
 *
 * prometheus and prometheus-alertmanager must be installed (Debian packages of those names; CI
 * installs them); PROMETHEUS / ALERTMANAGER override the binaries. Missing, the test fails: a skip
 * would hide a broken alert path.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isMap, isScalar, isSeq, parseDocument, stringify, type Document, type YAMLMap } from 'yaml';
import pg from 'pg';
import { parseConfig } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import type { RunRow } from '../../src/store/store.js';
import { startService, type Service } from '../../src/server.js';
import { prepareService } from '../../src/service.js';
import { REPO_ROOT, RULES_FILE } from '../alerts/promql.js';
import { PagerDutyStandin, type AcceptedEvent } from '../support/pagerduty-standin.js';
import { startPgCluster, type PgCluster } from '../support/pg-cluster.js';
import { freePort, onExitCleanup, waitForPort } from '../support/ports.js';
import { startRedis, type RedisNode } from '../support/redis-server.js';
import { serverOf } from '../support/service.js';

const ALERTMANAGER_EXAMPLE = 'alerts/alertmanager.example.yml';
const TOKEN = 'e2e-alert-path-webhook-token-0123456789';
/** A distinct 32-character routing key per team (the stand-in checks the length), so a page names its team. */
const TEAM_KEYS = {
  'lead-dba': 'E2ELEADDBA0000000000000000000001',
  'em-dba': 'E2EEMDBA000000000000000000000002',
  'oncall-backend': 'E2EONCALL00000000000000000000003',
  devops: 'E2EDEVOPS00000000000000000000004',
} as const;
type Team = keyof typeof TEAM_KEYS;
for (const [team, key] of Object.entries(TEAM_KEYS)) if (key.length !== 32) throw new Error(`test routing key of ${team} is not 32 characters`);
const isTeam = (s: string): s is Team => Object.hasOwn(TEAM_KEYS, s);

const BINARIES = {
  prometheus: { env: 'PROMETHEUS', bin: 'prometheus', install: 'apt-get install -y prometheus' },
  alertmanager: { env: 'ALERTMANAGER', bin: 'prometheus-alertmanager', install: 'apt-get install -y prometheus-alertmanager' },
} as const;

/** The binary to run, after checking it runs at all; throws (never skips) when it is missing. */
function binary(which: keyof typeof BINARIES): string {
  const b = BINARIES[which];
  const bin = process.env[b.env] ?? b.bin;
  const r = spawnSync(bin, ['--version'], { encoding: 'utf8', timeout: 30_000 });
  if (r.error !== undefined) {
    if ((r.error as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error(
        `${which} not found (looked for "${bin}"): the end-to-end alert path needs the real ${which}. ` +
          `Install it (Debian: ${b.install}) or set ${b.env} to its path. CI installs it; this test does not skip.`,
      );
    }
    throw r.error;
  }
  if (r.status !== 0) throw new Error(`"${bin} --version" exited with ${r.status}: ${r.stdout}${r.stderr}`);
  return bin;
}

// ---------------------------------------------------------------------------------------------------
// Child processes (Prometheus, Alertmanager)

interface Proc {
  readonly name: string;
  exited(): boolean;
  /** The end of its log (stdout + stderr), for failure messages. */
  logTail(chars?: number): string;
  /** SIGTERM, then SIGKILL after 10 s; resolves when it has exited. */
  stop(): Promise<void>;
}

/**
 * Runs `bin args` under `setpriv --pdeathsig KILL` (which execs, so the PID is the program), so it
 * dies with this test process even when no JS clean-up runs; output goes to `logFile`.
 */
function startProcess(name: string, bin: string, args: string[], logFile: string): Proc {
  const fd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn('setpriv', ['--pdeathsig=KILL', '--', bin, ...args], { stdio: ['ignore', fd, fd], detached: true });
  } finally {
    closeSync(fd);
  }
  let hasExited = false;
  const exited = new Promise<void>((resolve) => {
    const gone = () => {
      hasExited = true;
      resolve();
    };
    child.once('exit', gone);
    child.once('error', gone);
  });
  const unregister = onExitCleanup(() => {
    if (!hasExited) child.kill('SIGKILL');
  });
  return {
    name,
    exited: () => hasExited,
    logTail: (chars = 3000) => {
      try {
        const text = readFileSync(logFile, 'utf8');
        return text.length > chars ? `…${text.slice(-chars)}` : text;
      } catch {
        return '(no log)';
      }
    },
    stop: async () => {
      if (!hasExited) {
        child.kill('SIGTERM');
        const timeout = sleep(10_000, 'timeout' as const, { ref: false });
        if ((await Promise.race([exited.then(() => 'exited' as const), timeout])) === 'timeout') {
          child.kill('SIGKILL');
          await exited;
        }
      }
      unregister();
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Alertmanager configuration: the example, pointed at this machine

interface Localised {
  yaml: string;
  /** What was replaced, for the record. */
  replaced: string[];
}

/**
 * alerts/alertmanager.example.yml with exactly what must point locally replaced, on the parsed
 * document. Every field replaced must exist where the example has it; a receiver kind, a secret
 * field or a URL this function does not know makes it throw, so a change to the example that this
 * test does not understand fails loudly instead of being tested half.
 */
function localiseAlertmanagerConfig(
  text: string,
  local: { webhookUrl: string; tokenFile: string; keyFile: (team: Team) => string; pagerdutyUrl: string },
): Localised {
  const doc: Document = parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length > 0) throw new Error(`${ALERTMANAGER_EXAMPLE}: ${doc.errors[0]!.message}`);
  const replaced: string[] = [];
  const fail = (msg: string): never => {
    throw new Error(`${ALERTMANAGER_EXAMPLE}: ${msg} — the end-to-end test does not know how to point this at the test's servers; update test/e2e/alert-path.test.ts`);
  };

  // PagerDuty Events v2 URL. In Alertmanager 0.25 each pagerduty_config has `url`, defaulting to
  // global.pagerduty_url; the example sets only the global one.
  const globalUrl = doc.getIn(['global', 'pagerduty_url']);
  if (typeof globalUrl !== 'string') fail('global.pagerduty_url is missing');
  if (!/^https:\/\/events\.pagerduty\.com\/v2\/enqueue$/.test(globalUrl as string)) fail(`global.pagerduty_url is ${String(globalUrl)}, not the Events API v2 URL`);
  doc.setIn(['global', 'pagerduty_url'], local.pagerdutyUrl);
  replaced.push('global.pagerduty_url');

  const receivers = doc.get('receivers');
  if (!isSeq(receivers)) return fail('receivers is not a list');
  let webhooks = 0;
  const pagedTeams = new Set<Team>();
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
      if (name !== 'dbpilot' || !isSeq(webhookConfigs)) return fail(`receiver ${name} has webhook_configs the test does not know`);
      for (const [j, wc] of webhookConfigs.items.entries()) {
        if (!isMap(wc)) return fail(`receiver ${name} webhook_configs[${j}] is not a mapping`);
        const at = `receivers[${i}] (${name}).webhook_configs[${j}]`;
        const url = wc.get('url');
        if (typeof url !== 'string' || !url.endsWith('/alertmanager/webhook')) fail(`${at}.url is ${String(url)}, not dbpilot's /alertmanager/webhook`);
        wc.set('url', local.webhookUrl);
        replaced.push(`${at}.url`);
        if (wc.getIn(['http_config', 'authorization', 'type']) !== 'Bearer') fail(`${at}.http_config.authorization.type is not Bearer`);
        if (wc.hasIn(['http_config', 'authorization', 'credentials'])) fail(`${at} has inline credentials`);
        if (typeof wc.getIn(['http_config', 'authorization', 'credentials_file']) !== 'string') fail(`${at}.http_config.authorization.credentials_file is missing`);
        wc.setIn(['http_config', 'authorization', 'credentials_file'], local.tokenFile);
        replaced.push(`${at}.http_config.authorization.credentials_file`);
        webhooks++;
      }
    }
    const pagerdutyConfigs = receiver.get('pagerduty_configs');
    if (pagerdutyConfigs !== undefined) {
      // pagerduty-<team>, or pagerduty-<team>-and-<team> for a receiver that pages several teams at once.
      const teams = (/^pagerduty-(.+)$/.exec(name)?.[1] ?? '').split('-and-');
      if (!teams.every((t) => isTeam(t))) return fail(`receiver ${name} pages no known team`);
      if (!isSeq(pagerdutyConfigs)) return fail(`receiver ${name} pagerduty_configs is not a list`);
      if (pagerdutyConfigs.items.length !== teams.length) fail(`receiver ${name} has ${pagerdutyConfigs.items.length} pagerduty_configs for ${teams.length} team(s)`);
      for (const [j, pc] of pagerdutyConfigs.items.entries()) {
        if (!isMap(pc)) return fail(`receiver ${name} pagerduty_configs[${j}] is not a mapping`);
        const at = `receivers[${i}] (${name}).pagerduty_configs[${j}]`;
        for (const inline of ['routing_key', 'service_key', 'service_key_file']) if (pc.has(inline)) fail(`${at} has ${inline}`);
        const file = pc.get('routing_key_file');
        const team = teams[j] as Team;
        if (typeof file !== 'string' || path.basename(file) !== `pagerduty-${team}`) fail(`${at}.routing_key_file is ${String(file)}, not the pagerduty-${team} secret`);
        pc.set('routing_key_file', local.keyFile(team));
        replaced.push(`${at}.routing_key_file`);
        if (pc.has('url')) {
          // A per-receiver URL overrides global.pagerduty_url: point it at the stand-in too.
          pc.set('url', local.pagerdutyUrl);
          replaced.push(`${at}.url`);
        }
        if (pc.has('http_config')) fail(`${at} has an http_config`);
        pagedTeams.add(team);
      }
    }
  }
  if (webhooks !== 1) fail(`expected exactly one dbpilot webhook, found ${webhooks}`);
  for (const team of Object.keys(TEAM_KEYS) as Team[]) if (!pagedTeams.has(team)) fail(`no pagerduty-${team} receiver`);

  // Nothing may still point away from this machine: every URL and file named in the result is local.
  const leftovers: string[] = [];
  const walk = (v: unknown, at: string): void => {
    if (Array.isArray(v)) v.forEach((x, k) => walk(x, `${at}[${k}]`));
    else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) walk(x, at ? `${at}.${k}` : k);
    else if (typeof v === 'string') {
      const key = at.split('.').pop() ?? '';
      const isUrlField = /(^|_)url$/.test(key.replace(/\[\d+\]$/, ''));
      const isFileField = /_file$/.test(key);
      if (isUrlField && !v.startsWith('http://127.0.0.1:')) leftovers.push(`${at}: ${v}`);
      if (isFileField && !(v === local.tokenFile || (Object.keys(TEAM_KEYS) as Team[]).some((t) => local.keyFile(t) === v))) leftovers.push(`${at}: ${v}`);
    }
  };
  walk(doc.toJS(), '');
  if (leftovers.length > 0) fail(`fields still pointing elsewhere:\n  ${leftovers.join('\n  ')}`);
  return { yaml: doc.toString(), replaced };
}

// ---------------------------------------------------------------------------------------------------
// The test

interface WebhookArrival {
  at: number;
  status: string;
  groupKey: string;
  alerts: { status: string; labels: Record<string, string>; fingerprint: string }[];
}

async function getJson<T>(url: string, headers: Record<string, string> = {}): Promise<T> {
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  if (!res.ok) throw new Error(`GET ${url}: ${res.status} ${text.slice(0, 500)}`);
  return JSON.parse(text) as T;
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

describe('the Alertmanager example, pointed at this machine', () => {
  const example = () => readFileSync(path.join(REPO_ROOT, ALERTMANAGER_EXAMPLE), 'utf8');
  const local = {
    webhookUrl: 'http://127.0.0.1:1/alertmanager/webhook',
    tokenFile: '/tmp/x/dbpilot-webhook-token',
    keyFile: (team: Team) => `/tmp/x/pagerduty-${team}`,
    pagerdutyUrl: 'http://127.0.0.1:2/v2/enqueue',
  };
  const edit = (f: (doc: Document) => void) => {
    const doc = parseDocument(example());
    f(doc);
    return doc.toString();
  };

  it('replaces exactly the webhook URL, the secret files and the PagerDuty URL', () => {
    const { yaml, replaced } = localiseAlertmanagerConfig(example(), local);
    // The PagerDuty URL; the webhook URL and its token file; one routing key file per team, and two for the receiver that pages em-dba and lead-dba at once.
    expect(replaced).toHaveLength(1 + 2 + 4 + 2);
    expect(replaced).toContain('global.pagerduty_url');
    // Routing, inhibition and receiver settings are the example's own.
    const before = parseDocument(example()).toJS() as Record<string, unknown>;
    const after = parseDocument(yaml).toJS() as Record<string, unknown>;
    expect(after.route).toEqual(before.route);
    expect(after.inhibit_rules).toEqual(before.inhibit_rules);
  });

  it('fails loudly on what it does not understand', () => {
    const cases: [string, (doc: Document) => void][] = [
      ['an inline routing key', (d) => d.setIn(['receivers', 1, 'pagerduty_configs', 0, 'routing_key'], 'x'.repeat(32))],
      ['a new receiver kind', (d) => d.setIn(['receivers', 1, 'slack_configs'], [{ api_url: 'https://hooks.slack.com/x' }])],
      ['no global.pagerduty_url', (d) => d.deleteIn(['global', 'pagerduty_url'])],
      ['a webhook that is not dbpilot\'s', (d) => d.setIn(['receivers', 0, 'webhook_configs', 0, 'url'], 'http://example.com/hook')],
      ['a further secret file', (d) => d.setIn(['receivers', 0, 'webhook_configs', 0, 'http_config', 'tls_config'], { ca_file: '/etc/ca.pem' })],
    ];
    for (const [what, f] of cases) expect(() => localiseAlertmanagerConfig(edit(f), local), what).toThrow(/alertmanager\.example\.yml/);
    // A per-receiver PagerDuty URL (which overrides the global one) is pointed at the stand-in too.
    const perReceiver = localiseAlertmanagerConfig(
      edit((d) => d.setIn(['receivers', 1, 'pagerduty_configs', 0, 'url'], 'https://events.pagerduty.com/v2/enqueue')),
      local,
    );
    expect(perReceiver.replaced).toContain('receivers[1] (pagerduty-lead-dba).pagerduty_configs[0].url');
  });
});

describe('alert path: dbpilot → Prometheus → Alertmanager → dbpilot webhook → PagerDuty', () => {
  let cluster: PgCluster | undefined;
  let redis: RedisNode | undefined;
  let service: Service | undefined;
  let prometheus: Proc | undefined;
  let alertmanager: Proc | undefined;
  const pd = new PagerDutyStandin();
  const dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-e2e-alert-path-'));
  const unregisterDir = onExitCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const arrivals: WebhookArrival[] = [];
  let dbpilotUrl = '';
  let promUrl = '';
  let amUrl = '';
  let primaryServer = '';
  const delays: string[] = [];

  const auth = { authorization: `Bearer ${TOKEN}` };

  async function promQuery(q: string): Promise<{ metric: Record<string, string>; value: [number, string] }[]> {
    const body = await getJson<{ data: { result: { metric: Record<string, string>; value: [number, string] }[] } }>(
      `${promUrl}/api/v1/query?query=${encodeURIComponent(q)}`,
    );
    return body.data.result;
  }

  /** What Prometheus, Alertmanager, dbpilot and the stand-in hold right now, for a failure message. */
  async function diagnostics(): Promise<string> {
    const part = async (title: string, f: () => Promise<unknown>) => {
      try {
        return `--- ${title}\n${JSON.stringify(await f(), null, 1).slice(0, 4000)}`;
      } catch (err) {
        return `--- ${title}\n(failed: ${(err as Error).message})`;
      }
    };
    const parts = await Promise.all([
      part('Prometheus /api/v1/alerts', async () => (await getJson<{ data: unknown }>(`${promUrl}/api/v1/alerts`)).data),
      part('Alertmanager /api/v2/alerts', async () =>
        (await getJson<{ labels: Record<string, string>; status: unknown; startsAt: string }[]>(`${amUrl}/api/v2/alerts`)).map((a) => ({
          labels: a.labels,
          status: a.status,
          startsAt: a.startsAt,
        })),
      ),
      part('Prometheus target', async () =>
        (await getJson<{ data: { activeTargets: unknown[] } }>(`${promUrl}/api/v1/targets`)).data.activeTargets.map((t) => {
          const { health, lastError, lastScrape, lastScrapeDuration, scrapeUrl } = t as Record<string, unknown>;
          return { scrapeUrl, health, lastError, lastScrape, lastScrapeDuration };
        }),
      ),
      part('redis_up / pg_up / scrape_duration_seconds', async () =>
        (await promQuery('redis_up{job="dbpilot"} or pg_up{job="dbpilot"} or scrape_duration_seconds{job="dbpilot"}')).map(
          (r) => `${r.metric.__name__}${JSON.stringify({ ...r.metric, __name__: undefined })} ${r.value[1]}`,
        ),
      ),
      part('dbpilot webhook arrivals', async () =>
        arrivals.map((a) => ({ at: new Date(a.at).toISOString(), status: a.status, alerts: a.alerts.map((x) => `${x.labels.alertname} ${x.status} ${x.fingerprint}`) })),
      ),
      part('PagerDuty stand-in: requests', async () =>
        pd.requests.map((r) => ({ status: r.status, errors: r.errors, action: (r.json as { event_action?: string } | undefined)?.event_action, dedupKey: (r.json as { dedup_key?: string } | undefined)?.dedup_key, at: new Date(r.at).toISOString() })),
      ),
      part('dbpilot log (warnings, errors, remediation and escalation lines)', async () =>
        readFileSync(path.join(dir, 'dbpilot.log'), 'utf8')
          .split('\n')
          .filter((l) => /"level":(40|50|60)|remediation run|escalation|resolve/.test(l))
          .slice(-30),
      ),
    ]);
    return `${parts.join('\n')}\n--- Alertmanager log\n${alertmanager?.logTail() ?? ''}\n--- Prometheus log\n${prometheus?.logTail(1500) ?? ''}`;
  }

  /** Polls `cond` every 100 ms; on timeout fails with `what` and the diagnostics. */
  async function until<T>(cond: () => Promise<T | undefined | false> | T | undefined | false, what: string, timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const p of [prometheus, alertmanager]) if (p?.exited()) throw new Error(`${p.name} exited while waiting for ${what}:\n${p.logTail()}`);
      const v = await cond();
      if (v !== undefined && v !== false) return v;
      if (Date.now() > deadline) throw new Error(`timed out after ${seconds(timeoutMs)} waiting for ${what}\n${await diagnostics()}`);
      await sleep(100);
    }
  }

  /** The first webhook arrival after `since` that carries an alert named `alertname` with `status`. */
  function arrival(alertname: string, status: 'firing' | 'resolved', since: number): { at: number; groupKey: string; alert: WebhookArrival['alerts'][number] } | undefined {
    for (const a of arrivals) {
      if (a.at < since) continue;
      const alert = a.alerts.find((x) => x.labels.alertname === alertname && x.status === status);
      if (alert) return { at: a.at, groupKey: a.groupKey, alert };
    }
    return undefined;
  }

  async function runs(alertname: string): Promise<RunRow[]> {
    return (await getJson<{ runs: RunRow[] }>(`${dbpilotUrl}/api/remediations?alertname=${alertname}`, auth)).runs;
  }

  beforeAll(async () => {
    const prometheusBin = binary('prometheus');
    const alertmanagerBin = binary('alertmanager');

    const [c, r] = await Promise.allSettled([startPgCluster({ replicas: 1 }), startRedis()]);
    cluster = c.status === 'fulfilled' ? c.value : undefined;
    redis = r.status === 'fulfilled' ? r.value : undefined;
    if (c.status === 'rejected') throw c.reason;
    if (r.status === 'rejected') throw r.reason;
    await pd.start();
    primaryServer = serverOf(cluster!.primary.url());

    // dbpilot as `serve` runs it, plus a hook that notes when each authenticated webhook call
    // arrives and what it carries (it observes only; the route and the engine are the real ones).
    const config = parseConfig(
      {
        listen: '127.0.0.1:0',
        mode: 'dry-run',
        logLevel: 'info',
        postgres: { primary: { url: cluster!.primary.url() }, replicas: cluster!.replicas.map((n) => ({ url: n.url() })) },
        redis: { url: redis!.url },
        webhook: { token: TOKEN },
        pagerduty: { url: pd.url, routes: { ...TEAM_KEYS }, source: 'dbpilot-e2e', timeoutMs: 2000 },
        store: { path: path.join(dir, 'dbpilot.sqlite') },
        // The failover acts (no Kubernetes here: it promotes, and records its intent in the store).
        handlers: { 'primary-failover': { mode: 'auto' } },
        failover: { confirmProbes: 3, confirmIntervalMs: 300 },
      },
      {},
    );
    const logger = createLogger('info', { write: (s: string) => void writeFileSync(path.join(dir, 'dbpilot.log'), s, { flag: 'a' }) });
    service = await startService(config, logger, async (runtime) => {
      const prepared = await prepareService(runtime);
      const { options } = prepared;
      return {
        start: prepared.start,
        options: {
          ...options,
          extraRoutes: async (app: FastifyInstance) => {
            app.addHook('preHandler', async (req) => {
              if (req.method !== 'POST' || req.url !== '/alertmanager/webhook') return;
              const body = req.body as Partial<WebhookArrival> | undefined;
              arrivals.push({ at: Date.now(), status: String(body?.status), groupKey: String(body?.groupKey ?? ''), alerts: Array.isArray(body?.alerts) ? body.alerts : [] });
            });
            await options.extraRoutes?.(app);
          },
        },
      };
    });
    dbpilotUrl = `http://127.0.0.1:${service.address.port}`;

    // Alertmanager with the example configuration, pointed here.
    const [amPort, promPort] = await Promise.all([freePort(), freePort()]);
    amUrl = `http://127.0.0.1:${amPort}`;
    promUrl = `http://127.0.0.1:${promPort}`;
    const tokenFile = path.join(dir, 'dbpilot-webhook-token');
    writeFileSync(tokenFile, TOKEN, { mode: 0o600 });
    const keyFile = (team: Team) => path.join(dir, `pagerduty-${team}`);
    for (const team of Object.keys(TEAM_KEYS) as Team[]) writeFileSync(keyFile(team), TEAM_KEYS[team], { mode: 0o600 });
    const am = localiseAlertmanagerConfig(readFileSync(path.join(REPO_ROOT, ALERTMANAGER_EXAMPLE), 'utf8'), {
      webhookUrl: `${dbpilotUrl}/alertmanager/webhook`,
      tokenFile,
      keyFile,
      pagerdutyUrl: pd.url,
    });
    const amConfigFile = path.join(dir, 'alertmanager.yml');
    writeFileSync(amConfigFile, am.yaml);
    alertmanager = startProcess(
      'alertmanager',
      alertmanagerBin,
      [
        `--config.file=${amConfigFile}`,
        `--storage.path=${path.join(dir, 'alertmanager-data')}`,
        `--web.listen-address=127.0.0.1:${amPort}`,
        '--cluster.listen-address=',
        `--web.external-url=${amUrl}`,
      ],
      path.join(dir, 'alertmanager.log'),
    );

    // Prometheus on the project's rule file as it is.
    const rulesFile = path.join(REPO_ROOT, RULES_FILE);
    expect(existsSync(rulesFile)).toBe(true);
    const promConfigFile = path.join(dir, 'prometheus.yml');
    writeFileSync(
      promConfigFile,
      stringify({
        global: { scrape_interval: '1s', evaluation_interval: '1s' },
        rule_files: [rulesFile],
        alerting: { alertmanagers: [{ static_configs: [{ targets: [`127.0.0.1:${amPort}`] }] }] },
        scrape_configs: [{ job_name: 'dbpilot', static_configs: [{ targets: [`127.0.0.1:${service.address.port}`] }] }],
      }),
    );
    prometheus = startProcess(
      'prometheus',
      prometheusBin,
      [
        `--config.file=${promConfigFile}`,
        `--storage.tsdb.path=${path.join(dir, 'prometheus-data')}`,
        `--web.listen-address=127.0.0.1:${promPort}`,
        `--web.external-url=${promUrl}`,
      ],
      path.join(dir, 'prometheus.log'),
    );

    await Promise.all([waitForPort(amPort, 30_000), waitForPort(promPort, 30_000)]).catch(async (err: Error) => {
      throw new Error(`${err.message}\n--- Alertmanager log\n${alertmanager?.logTail()}\n--- Prometheus log\n${prometheus?.logTail()}`);
    });
    await until(async () => (await fetch(`${amUrl}/-/ready`).catch(() => null))?.ok, 'Alertmanager ready', 30_000);
    await until(async () => (await fetch(`${promUrl}/-/ready`).catch(() => null))?.ok, 'Prometheus ready', 30_000);

    // Alertmanager loaded the URL where 0.25 reads it: every pagerduty_config resolves to the stand-in.
    const status = await getJson<{ config: { original: string } }>(`${amUrl}/api/v2/status`);
    expect(status.config.original).not.toContain('events.pagerduty.com');
    expect(status.config.original).toContain(pd.url);

    // Scraped, with the rules loaded, and both servers seen up: the baseline every phase starts from.
    await until(
      async () => {
        const [up, redisUp, pgUp] = await Promise.all([
          promQuery('up{job="dbpilot"}'),
          promQuery('redis_up{job="dbpilot"}'),
          promQuery(`pg_up{job="dbpilot", role="primary", server="${primaryServer}"}`),
        ]);
        return up[0]?.value[1] === '1' && redisUp[0]?.value[1] === '1' && pgUp[0]?.value[1] === '1';
      },
      'Prometheus to scrape dbpilot with redis_up 1 and pg_up{role="primary"} 1',
      30_000,
    );
    const rules = await getJson<{ data: { groups: { rules: { name: string }[] }[] } }>(`${promUrl}/api/v1/rules`);
    const loaded = rules.data.groups.flatMap((g) => g.rules.map((rule) => rule.name));
    expect(loaded).toEqual(expect.arrayContaining(['RedisDown', 'PostgresPrimaryDown']));
    expect(arrivals).toEqual([]);
  }, 120_000);

  afterAll(async () => {
    if (delays.length > 0) console.log(`[alert-path] measured delays:\n  ${delays.join('\n  ')}`);
    await Promise.allSettled([prometheus?.stop(), alertmanager?.stop()]);
    await service?.close().catch(() => undefined);
    await Promise.allSettled([cluster?.stop(), redis?.stop(), pd.close()]);
    rmSync(dir, { recursive: true, force: true });
    unregisterDir();
  }, 60_000);

  /** Prometheus' view of one alert: its state and since when it has been active (pending, then firing). */
  async function promAlert(alertname: string): Promise<{ state: string; activeAt: number } | undefined> {
    const alerts = (await getJson<{ data: { alerts: { labels: Record<string, string>; state: string; activeAt: string }[] } }>(`${promUrl}/api/v1/alerts`)).data.alerts;
    const a = alerts.find((x) => x.labels.alertname === alertname);
    return a ? { state: a.state, activeAt: Date.parse(a.activeAt) } : undefined;
  }

  /** The `for` of an alerting rule as Prometheus loaded it, in ms. */
  async function forMs(alertname: string): Promise<number> {
    const rules = await getJson<{ data: { groups: { rules: { name: string; type: string; duration: number }[] }[] } }>(`${promUrl}/api/v1/rules`);
    const rule = rules.data.groups.flatMap((g) => g.rules).find((r) => r.type === 'alerting' && r.name === alertname);
    if (!rule) throw new Error(`Prometheus has no alerting rule ${alertname}`);
    return rule.duration * 1000;
  }

  // One incident from start to end: the resolve needs the firing (and its page) before it, and the
  // firing alone costs the rule's minute, so the two halves are one test rather than two that must run in order.
  it('Redis stopped and back: RedisDown reaches dbpilot after its `for: 1m`, pages devops, and is resolved exactly once', { timeout: 215_000 }, async () => {
    const holdFor = await forMs('RedisDown');
    expect(holdFor).toBe(60_000);
    // Not active before the failure: what follows is caused by it.
    expect(await promAlert('RedisDown')).toBeUndefined();
    await redis!.stop();
    const stoppedAt = Date.now();

    const got = await until(() => arrival('RedisDown', 'firing', stoppedAt), 'RedisDown (firing) at dbpilot\'s webhook', 90_000);
    const active = await promAlert('RedisDown');
    const line = `RedisDown: Redis stopped → webhook at dbpilot after ${seconds(got.at - stoppedAt)} (pending after ${seconds((active?.activeAt ?? Number.NaN) - stoppedAt)}, for: 1m)`;
    delays.push(line);
    console.log(`[alert-path] ${line}`);

    expect(got.alert.labels).toMatchObject({ alertname: 'RedisDown', team: 'devops', remediation: 'redis-failure', severity: 'critical' });
    // `for: 1m` holds: Prometheus fired it only once it had been pending for the whole minute, and the
    // notification reached dbpilot after that.
    expect(active?.state).toBe('firing');
    expect(got.at).toBeGreaterThanOrEqual(active!.activeAt + holdFor);
    const redisFingerprint = got.alert.fingerprint;
    // The redis-failure handler plans: Redis does not answer PING, and with no kubernetes: here there is
    // nothing to restart it with, so the run is escalated and devops paged under the alert's own key.
    const redisDedupKey = `dbpilot/RedisDown/${redisFingerprint}`;

    // Through dbpilot: one run, escalated with the reason.
    const run = await until(
      async () => (await runs('RedisDown')).find((x) => x.fingerprint === redisFingerprint && !['planning', 'running'].includes(x.status)),
      'the RedisDown run to end in /api/remediations',
      20_000,
    );
    expect(await runs('RedisDown')).toHaveLength(1);
    expect(run).toMatchObject({ alertname: 'RedisDown', handler: 'redis-failure', status: 'escalated', origin: 'alertmanager' });
    expect(run.reason).toMatch(/^unsafe to act: Redis does not answer PING on a new connection \(3 attempt\(s\), 1000 ms apart; last: .*\); restarting it \(kubectl rollout restart statefulset\/redis\) needs the kubernetes: block$/);
    expect(run.labels).toMatchObject({ alertname: 'RedisDown', team: 'devops', remediation: 'redis-failure', severity: 'critical' });

    // dbpilot's page: the devops routing key, a trigger under the alert's dedup key, with the diagnostics.
    const page = await until(
      () => pd.accepted.find((e) => e.dedupKey === redisDedupKey && e.action === 'trigger'),
      `the devops page ${redisDedupKey} at the PagerDuty stand-in`,
      15_000,
    );
    expect(page.routingKey).toBe(TEAM_KEYS.devops);
    const payload = page.event.payload as { severity?: string; custom_details?: Record<string, unknown> };
    expect(payload).toMatchObject({ severity: 'critical' });
    expect(payload.custom_details).toMatchObject({
      run: run.id,
      run_status: 'escalated',
      diagnostics: expect.objectContaining({ runbook: 'Scenario 5 — Redis Cache Failure', ping_now: expect.stringMatching(/^no answer on a new connection: /) }),
    });
    expect(pd.accepted.filter((e: AcceptedEvent) => e.dedupKey === redisDedupKey)).toHaveLength(1);

    // Redis back: the resolved notification arrives and dbpilot resolves the page exactly once.
    await redis!.start();
    const startedAt = Date.now();
    const resolved = await until(() => arrival('RedisDown', 'resolved', startedAt), 'RedisDown (resolved) at dbpilot\'s webhook', 60_000);
    const resolvedLine = `RedisDown resolved: Redis started → webhook at dbpilot after ${seconds(resolved.at - startedAt)} (group_interval 30s after the firing notification)`;
    delays.push(resolvedLine);
    console.log(`[alert-path] ${resolvedLine}`);
    expect(resolved.alert.fingerprint).toBe(redisFingerprint);
    expect(resolved.alert.labels).toMatchObject({ alertname: 'RedisDown', team: 'devops', remediation: 'redis-failure', severity: 'critical' });

    const resolve = await until(
      () => pd.accepted.find((e) => e.dedupKey === redisDedupKey && e.action === 'resolve'),
      `the resolve of ${redisDedupKey} at the PagerDuty stand-in`,
      15_000,
    );
    expect(resolve.routingKey).toBe(TEAM_KEYS.devops);
    expect(resolve.at).toBeGreaterThanOrEqual(resolved.at);
    // A few seconds more: no second resolve (Prometheus keeps sending the resolved alert to Alertmanager).
    await sleep(3000);
    expect(pd.acceptedCount(redisDedupKey, 'resolve')).toBe(1);
    expect(pd.acceptedCount(redisDedupKey, 'trigger')).toBe(1);
    // Still the one run: a resolved notification starts nothing.
    expect(await runs('RedisDown')).toHaveLength(1);
  });

  it('primary SIGKILLed: PostgresPrimaryDown reaches dbpilot after its `for: 1s`, dbpilot fails over, the alert resolves, and so does the page', { timeout: 120_000 }, async () => {
    const holdFor = await forMs('PostgresPrimaryDown');
    expect(holdFor).toBe(1_000);
    expect(await promAlert('PostgresPrimaryDown')).toBeUndefined();
    /** Resolves of the page of an earlier RedisDown incident (none when there was none): an unrelated incident must not add one. */
    const redisIncident = arrival('RedisDown', 'firing', Number.NEGATIVE_INFINITY);
    const redisPage = redisIncident ? `dbpilot/RedisDown/${redisIncident.alert.fingerprint}` : undefined;
    const redisResolves = () => pd.accepted.filter((e) => e.action === 'resolve' && e.dedupKey === redisPage).length;
    const redisResolvesBefore = redisResolves();
    await cluster!.primary.kill();
    const killedAt = Date.now();

    const got = await until(() => arrival('PostgresPrimaryDown', 'firing', killedAt), 'PostgresPrimaryDown (firing) at dbpilot\'s webhook', 30_000);
    const active = await promAlert('PostgresPrimaryDown');
    const line = `PostgresPrimaryDown: primary killed → webhook at dbpilot after ${seconds(got.at - killedAt)} (pending after ${seconds((active?.activeAt ?? Number.NaN) - killedAt)}, for: 1s)`;
    delays.push(line);
    console.log(`[alert-path] ${line}`);
    expect(got.alert.labels).toMatchObject({
      alertname: 'PostgresPrimaryDown',
      team: 'lead-dba',
      remediation: 'primary-failover',
      severity: 'critical',
      server: primaryServer,
    });
    expect(active?.state).toBe('firing');
    expect(got.at).toBeGreaterThanOrEqual(active!.activeAt + holdFor);

    // Every scrape since the kill succeeded, i.e. finished inside Prometheus' scrape timeout (one that
    // does not is up 0 and stores no pg_up at all), and what it stored for the primary is pg_up 0.
    const window = `${Math.ceil((Date.now() - killedAt) / 1000) + 1}s`;
    const upSince = await promQuery(`min_over_time(up{job="dbpilot"}[${window}])`);
    expect(upSince.map((r) => r.value[1])).toEqual(['1']);
    // (min over the window: once the failover is done the old primary's series carries role="fenced".)
    const pgUp = await promQuery(`min_over_time(pg_up{job="dbpilot", role="primary", server="${primaryServer}"}[${window}])`);
    expect(pgUp.map((r) => r.value[1])).toEqual(['0']);

    // dbpilot fails over: the replica is promoted and accepts writes.
    const run = await until(
      async () => (await runs('PostgresPrimaryDown')).find((x) => x.fingerprint === got.alert.fingerprint && !['planning', 'running'].includes(x.status)),
      'the PostgresPrimaryDown run to end',
      30_000,
    );
    expect(run, run.reason ?? '').toMatchObject({ handler: 'primary-failover', status: 'succeeded' });
    const promoted = new pg.Client({ connectionString: cluster!.replicas[0]!.url() });
    await promoted.connect();
    expect((await promoted.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0]!.r).toBe(false);
    await promoted.end();
    const dedupKey = `dbpilot/PostgresPrimaryDown/${got.alert.fingerprint}`;
    const page = await until(() => pd.accepted.find((e) => e.dedupKey === dedupKey && e.action === 'trigger'), `the lead-dba note ${dedupKey}`, 15_000);
    expect(page.routingKey).toBe(TEAM_KEYS['lead-dba']);
    expect((page.event.payload as { severity: string }).severity).toBe('info');
    // The new topology makes Prometheus resolve the alert; Alertmanager's resolved notification resolves the page, once.
    const resolvedAt = await until(() => arrival('PostgresPrimaryDown', 'resolved', killedAt), 'PostgresPrimaryDown (resolved) at dbpilot\'s webhook', 60_000);
    delays.push(`PostgresPrimaryDown resolved: primary killed → resolved notification at dbpilot after ${seconds(resolvedAt.at - killedAt)}`);
    await until(() => (pd.acceptedCount(dedupKey, 'resolve') === 1 ? true : undefined), 'the page resolved', 15_000);
    expect(pd.accepted.filter((e) => e.dedupKey === dedupKey).map((e) => e.action)).toEqual(['trigger', 'resolve']);

    // An earlier Redis incident stays resolved exactly once: this one resolved nothing of it.
    expect(redisResolves()).toBe(redisResolvesBefore);
  });
});
