/**
 * The static alert path: Prometheus rules (alerts/dbpilot.rules.yml) and their promtool unit tests,
 * the Alertmanager example (routing, inhibition), the Grafana dashboard, and the operator guide the
 * alerts link to. Runs the real promtool and amtool (Debian: prometheus, prometheus-alertmanager);
 * when they are missing the tests fail, because CI installs them and a skip would hide a broken
 * rule file. PROMTOOL / AMTOOL override the binaries.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import {
  DASHBOARD_FILE,
  PROMETHEUS_GENERATED_SERIES,
  REPO_ROOT,
  RULES_FILE,
  allPanels,
  dashboardAndRuleExpressions,
  metricNamesIn,
  readDashboard,
  readRuleFile,
  substituteGrafanaVariables,
  variableQueryExpression,
} from './promql.js';

const ALERTMANAGER_FILE = 'alerts/alertmanager.example.yml';
const RULE_TESTS_DIR = 'alerts/tests';
const GUIDE_FILE = 'docs/operator-guide.md';
const RUNBOOK_URL_PREFIX = 'https://github.com/lomash-wood/dbpilot/blob/main/docs/operator-guide.md#';

/**
 * DESIGN.md's alert table (plus DbpilotCollectorFailing and the two alerts on dbpilot's own paging): the contract the rules keep, and the
 * Alertmanager receiver each alert must reach (dbpilot when it has a handler, else the team's pager).
 */
const EXPECTED_ALERTS: Record<string, { team: string; remediation: string; severity: string; receiver: string }> = {
  PostgresPrimaryDown: { team: 'lead-dba', remediation: 'primary-failover', severity: 'critical', receiver: 'dbpilot' },
  // Issue 9 §1: two primaries page the Engineering Manager + DBA and the Lead DBA, never dbpilot.
  PostgresSplitBrain: { team: 'em-dba', remediation: 'none', severity: 'critical', receiver: 'pagerduty-em-dba-and-lead-dba' },
  PostgresPrimaryDownUnresolved: { team: 'lead-dba', remediation: 'none', severity: 'critical', receiver: 'pagerduty-lead-dba' },
  PostgresReplicationLagHigh: { team: 'oncall-backend', remediation: 'replication-lag', severity: 'warning', receiver: 'dbpilot' },
  PostgresLongRunningQueries: { team: 'oncall-backend', remediation: 'slow-queries', severity: 'warning', receiver: 'dbpilot' },
  PostgresDiskAlmostFull: { team: 'devops', remediation: 'disk-full', severity: 'critical', receiver: 'dbpilot' },
  PrismaMigrationFailed: { team: 'oncall-backend', remediation: 'prisma-migration', severity: 'warning', receiver: 'dbpilot' },
  // Issue 10 §5: dbpilot pages em-dba and lead-dba with the checksum failures (and an RDS snapshot first).
  PostgresDataCorruption: { team: 'em-dba', remediation: 'data-corruption', severity: 'critical', receiver: 'dbpilot' },
  // Issue 8: the runbook's first symptom as a signal; the services point at the wrong server.
  ServicesDatabaseUnhealthy: { team: 'lead-dba', remediation: 'none', severity: 'critical', receiver: 'pagerduty-lead-dba' },
  RedisDown: { team: 'devops', remediation: 'redis-failure', severity: 'critical', receiver: 'dbpilot' },
  RedisRejectedConnections: { team: 'devops', remediation: 'redis-failure', severity: 'warning', receiver: 'dbpilot' },
  RdsSnapshotStale: { team: 'devops', remediation: 'none', severity: 'warning', receiver: 'pagerduty-devops' },
  DbpilotDown: { team: 'devops', remediation: 'none', severity: 'critical', receiver: 'pagerduty-devops' },
  DbpilotCollectorFailing: { team: 'devops', remediation: 'none', severity: 'warning', receiver: 'pagerduty-devops' },
  DbpilotPagesUndeliverable: { team: 'devops', remediation: 'none', severity: 'critical', receiver: 'pagerduty-devops' },
  DbpilotPagesDelayed: { team: 'devops', remediation: 'none', severity: 'warning', receiver: 'pagerduty-devops' },
};
const TEAMS = ['lead-dba', 'em-dba', 'oncall-backend', 'devops'];
const HANDLERS = ['primary-failover', 'slow-queries', 'disk-full', 'prisma-migration', 'redis-failure', 'replication-lag', 'data-corruption'];

/** Every metric family dbpilot exports (DESIGN.md "Metrics"): the dashboard shows each one. */
const DBPILOT_METRICS = [
  'pg_up',
  'pg_replication_is_replica',
  'pg_replication_lag_seconds',
  'pg_replication_lag_bytes',
  'pg_replication_wal_receiver_streaming',
  'pg_topology_primaries',
  'pg_topology_split_brain',
  'pg_stat_replication_pg_wal_lsn_diff',
  'pg_stat_replication_write_lag_seconds',
  'pg_stat_replication_flush_lag_seconds',
  'pg_stat_replication_replay_lag_seconds',
  'pg_stat_activity_count',
  'pg_stat_activity_max_tx_duration',
  'pg_long_running_queries',
  'pg_long_running_queries_oldest_seconds',
  'pg_database_size_bytes',
  'pg_table_size_bytes',
  'pg_filesystem_size_bytes',
  'pg_filesystem_avail_bytes',
  'pg_stat_database_checksum_failures',
  'pg_settings_data_checksums',
  'dbpilot_pg_sizes_last_success_timestamp_seconds',
  'service_health_up',
  'service_health_http_status_code',
  'service_health_database',
  'service_health_duration_seconds',
  'prisma_migrations_failed',
  'redis_up',
  'redis_memory_used_bytes',
  'redis_memory_max_bytes',
  'redis_rejected_connections_total',
  'redis_connected_clients',
  'dbpilot_collector_success',
  'dbpilot_collector_duration_seconds',
  'dbpilot_remediations_total',
  'dbpilot_escalations_total',
  'dbpilot_escalation_outbox_pending',
  'dbpilot_leader',
  'dbpilot_rds_last_snapshot_timestamp_seconds',
  'dbpilot_build_info',
];

// ── tools ────────────────────────────────────────────────────────────────────────────────

const TOOLS = {
  promtool: { env: 'PROMTOOL', install: 'apt-get install -y prometheus' },
  amtool: { env: 'AMTOOL', install: 'apt-get install -y prometheus-alertmanager' },
} as const;

interface Run {
  status: number | null;
  output: string;
}

/** Runs promtool/amtool from the repository root; a missing binary is a failure with the fix in it. */
function run(tool: keyof typeof TOOLS, args: string[]): Run {
  const bin = process.env[TOOLS[tool].env] ?? tool;
  const result = spawnSync(bin, args, { cwd: REPO_ROOT, encoding: 'utf8', timeout: 60_000 });
  if (result.error !== undefined) {
    if ((result.error as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error(
        `${tool} not found (looked for "${bin}"): these tests need the real ${tool}. ` +
          `Install it (Debian: ${TOOLS[tool].install}) or set ${TOOLS[tool].env} to its path. CI installs it; the test does not skip.`,
      );
    }
    throw result.error;
  }
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

function expectSuccess(r: Run): void {
  // The tool's own output is the useful failure message.
  expect(r.status, r.output).toBe(0);
}

const tempDirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'dbpilot-alerts-'));
  tempDirs.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

// ── files ────────────────────────────────────────────────────────────────────────────────

interface AlertRule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

function alertRules(): AlertRule[] {
  return readRuleFile().groups.flatMap((g) => g.rules.filter((r): r is AlertRule => r.alert !== undefined));
}

function ruleTestFiles(): string[] {
  return readdirSync(join(REPO_ROOT, RULE_TESTS_DIR))
    .filter((f) => f.endsWith('.yml') || f.endsWith('.yaml'))
    .sort()
    .map((f) => `${RULE_TESTS_DIR}/${f}`);
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered. */
function guideAnchors(): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  let inFence = false;
  for (const line of readFileSync(join(REPO_ROOT, GUIDE_FILE), 'utf8').split('\n')) {
    if (line.startsWith('```')) inFence = !inFence;
    const heading = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (inFence || !heading) continue;
    const base = heading[1]!
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/\s/g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

// ── rules ────────────────────────────────────────────────────────────────────────────────

describe(`alert rules (${RULES_FILE})`, () => {
  it('pass promtool check rules', () => {
    const r = run('promtool', ['check', 'rules', RULES_FILE]);
    expectSuccess(r);
    expect(r.output).toContain(`SUCCESS: ${alertRules().length} rules found`);
  });

  it(`pass every promtool unit test in ${RULE_TESTS_DIR}/`, () => {
    const files = ruleTestFiles();
    expect(files.length).toBeGreaterThan(0);
    const r = run('promtool', ['test', 'rules', ...files]);
    expectSuccess(r);
    expect(r.output).not.toContain('FAILED');
  });

  it('have, for every alert, a unit test where it fires and one where it stays quiet', () => {
    const fires = new Set<string>();
    const quiet = new Set<string>();
    for (const file of ruleTestFiles()) {
      const doc = parseYaml(readFileSync(join(REPO_ROOT, file), 'utf8')) as {
        tests: { alert_rule_test?: { alertname: string; exp_alerts?: { exp_labels?: object; exp_annotations?: Record<string, string> }[] }[] }[];
      };
      for (const test of doc.tests) {
        for (const t of test.alert_rule_test ?? []) {
          const expected = t.exp_alerts ?? [];
          if (expected.length === 0) quiet.add(t.alertname);
          for (const e of expected) {
            // Exact labels and annotations, or the test proves little about what is paged.
            expect(e.exp_labels, `${file} ${t.alertname}`).toBeDefined();
            expect(Object.keys(e.exp_annotations ?? {}).sort(), `${file} ${t.alertname}`).toEqual(['description', 'runbook_url', 'summary']);
            fires.add(t.alertname);
          }
        }
      }
    }
    const names = alertRules().map((r) => r.alert);
    expect([...fires].sort()).toEqual([...names].sort());
    expect([...quiet].sort()).toEqual([...names].sort());
  });

  it("define exactly DESIGN.md's alerts with its teams and remediations", () => {
    const actual = Object.fromEntries(
      alertRules().map((r) => [r.alert, { team: r.labels?.team, remediation: r.labels?.remediation, severity: r.labels?.severity }]),
    );
    const expected = Object.fromEntries(Object.entries(EXPECTED_ALERTS).map(([name, { receiver: _, ...labels }]) => [name, labels]));
    expect(actual).toEqual(expected);
    // One rule per alert name: routing and the promtool tests assume it.
    expect(alertRules().length).toBe(Object.keys(EXPECTED_ALERTS).length);
  });

  it.each(Object.keys(EXPECTED_ALERTS))('%s has the labels and annotations the receivers rely on', (name) => {
    const rule = alertRules().find((r) => r.alert === name)!;
    expect(rule, name).toBeDefined();
    expect(['critical', 'warning']).toContain(rule.labels?.severity);
    expect(TEAMS).toContain(rule.labels?.team);
    expect([...HANDLERS, 'none']).toContain(rule.labels?.remediation);
    expect(rule.for, `${name} needs an explicit for:`).toMatch(/^\d+[smh]$/);
    expect(rule.annotations?.summary?.trim()).toBeTruthy();
    // The live value, so the page says how bad it is.
    expect(rule.annotations?.description).toMatch(/\$value/);
    expect(rule.annotations?.runbook_url?.startsWith(RUNBOOK_URL_PREFIX), rule.annotations?.runbook_url).toBe(true);
  });

  it(`link every runbook_url to a heading of ${GUIDE_FILE}`, () => {
    const anchors = guideAnchors();
    for (const rule of alertRules()) {
      const anchor = rule.annotations!.runbook_url!.slice(RUNBOOK_URL_PREFIX.length);
      expect(anchors.has(anchor), `${rule.alert}: #${anchor} is not a heading of ${GUIDE_FILE}`).toBe(true);
    }
  });

  it(`are listed in ${GUIDE_FILE}'s alert table with the for, severity, team and remediation they have`, () => {
    // | [Alert](#anchor) | fires when | for | severity | team | remediation |
    const rows = readFileSync(join(REPO_ROOT, GUIDE_FILE), 'utf8')
      .split('\n')
      .map((line) => /^\|\s*\[(\w+)\]\(#[\w-]+\)\s*\|.*\|\s*(\w+)\s*\|\s*(\w+)\s*\|\s*([\w-]+)\s*\|\s*([\w-]+)\s*\|\s*$/.exec(line))
      .filter((m) => m !== null)
      .map((m) => ({ alert: m[1], for: m[2], severity: m[3], team: m[4], remediation: m[5] }));
    const rules = alertRules().map((r) => ({ alert: r.alert, for: r.for, severity: r.labels?.severity, team: r.labels?.team, remediation: r.labels?.remediation }));
    expect(rows).toEqual(rules);
  });
});

// ── Alertmanager ─────────────────────────────────────────────────────────────────────────

function routesTest(labels: Record<string, string>): string[] {
  const r = run('amtool', ['config', 'routes', 'test', `--config.file=${ALERTMANAGER_FILE}`, ...Object.entries(labels).map(([k, v]) => `${k}=${v}`)]);
  expectSuccess(r);
  // amtool prints the receivers on one line, comma-separated, after any warnings.
  const line = r.output.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('Warning:')).at(-1) ?? '';
  return line.split(',').map((s) => s.trim());
}

describe(`Alertmanager example (${ALERTMANAGER_FILE})`, () => {
  it('passes amtool check-config', () => {
    // The secret files under /etc/alertmanager/secrets/ need not exist: amtool check-config (0.25)
    // validates routing_key_file / credentials_file as paths and does not open them.
    const r = run('amtool', ['check-config', ALERTMANAGER_FILE]);
    expectSuccess(r);
    expect(r.output).toContain('SUCCESS');
  });

  it('keeps every secret in a file, never inline', () => {
    const text = readFileSync(join(REPO_ROOT, ALERTMANAGER_FILE), 'utf8');
    expect(text).not.toMatch(/^\s*(routing_key|service_key|credentials|bearer_token|password):/m);
    const config = parseYaml(text) as {
      receivers: { name: string; pagerduty_configs?: Record<string, unknown>[]; webhook_configs?: Record<string, unknown>[] }[];
    };
    const webhook = config.receivers.find((r) => r.name === 'dbpilot')?.webhook_configs?.[0] as
      | { url: string; send_resolved: boolean; http_config: { authorization: { credentials_file: string } } }
      | undefined;
    expect(webhook?.url).toBe('http://dbpilot:9630/alertmanager/webhook');
    expect(webhook?.send_resolved).toBe(true);
    expect(webhook?.http_config.authorization.credentials_file).toMatch(/^\/etc\/alertmanager\/secrets\//);
    for (const team of TEAMS) {
      const pd = config.receivers.find((r) => r.name === `pagerduty-${team}`)?.pagerduty_configs?.[0];
      expect(pd?.routing_key_file, team).toBe(`/etc/alertmanager/secrets/pagerduty-${team}`);
      expect(pd?.send_resolved, team).toBe(true);
    }
  });

  it('pages both em-dba and lead-dba for a split brain: one receiver, one PagerDuty config per team', () => {
    const config = parseYaml(readFileSync(join(REPO_ROOT, ALERTMANAGER_FILE), 'utf8')) as {
      receivers: { name: string; pagerduty_configs?: Record<string, unknown>[]; webhook_configs?: unknown[] }[];
    };
    const receiver = config.receivers.find((r) => r.name === EXPECTED_ALERTS.PostgresSplitBrain!.receiver);
    expect(receiver?.webhook_configs).toBeUndefined();
    expect(receiver?.pagerduty_configs?.map((c) => c.routing_key_file)).toEqual([
      '/etc/alertmanager/secrets/pagerduty-em-dba',
      '/etc/alertmanager/secrets/pagerduty-lead-dba',
    ]);
    for (const c of receiver!.pagerduty_configs!) expect(c.send_resolved).toBe(true);
    // Whatever else it carries, the alert name alone takes it there (not to em-dba's service only).
    expect(routesTest({ alertname: 'PostgresSplitBrain', team: 'em-dba', severity: 'warning' })).toEqual(['pagerduty-em-dba-and-lead-dba']);
    expect(routesTest({ alertname: 'PostgresSplitBrain' })).toEqual(['pagerduty-em-dba-and-lead-dba']);
  });

  it.each(Object.entries(EXPECTED_ALERTS).map(([alertname, { receiver }]) => ({ alertname, receiver })))(
    'routes $alertname, with the labels its rule sets, to $receiver',
    ({ alertname, receiver }) => {
      const rule = alertRules().find((r) => r.alert === alertname);
      expect(rule, alertname).toBeDefined();
      expect(routesTest({ alertname, ...rule!.labels, server: 'postgres-primary:5432' })).toEqual([receiver]);
    },
  );

  it.each<{ case: string; labels: Record<string, string>; want: string }>([
    { case: 'an alert of another rule file with a team and no remediation pages that team', labels: { alertname: 'SomethingElse', team: 'oncall-backend', severity: 'warning' }, want: 'pagerduty-oncall-backend' },
    { case: 'an alert with neither team nor remediation still pages DevOps', labels: { alertname: 'SomethingElse', severity: 'critical' }, want: 'pagerduty-devops' },
    { case: 'an empty remediation is not a handler', labels: { alertname: 'SomethingElse', team: 'lead-dba', remediation: '' }, want: 'pagerduty-lead-dba' },
    { case: 'a handler wins over the team', labels: { alertname: 'SomethingElse', team: 'em-dba', remediation: 'slow-queries' }, want: 'dbpilot' },
  ])('$case', ({ labels, want }) => {
    expect(routesTest(labels)).toEqual([want]);
  });

  it('inhibits only with alert names the rules define, and never the backstops', () => {
    const config = parseYaml(readFileSync(join(REPO_ROOT, ALERTMANAGER_FILE), 'utf8')) as {
      inhibit_rules: { source_matchers: string[]; target_matchers: string[]; equal?: string[] }[];
    };
    const names = alertRules().map((r) => r.alert);
    const matching = (matchers: string[]): string[] => {
      const m = matchers.map((s) => /^alertname\s*(=~|=)\s*"(.*)"$/.exec(s)).find((x) => x !== null);
      expect(m, `an inhibit rule needs an alertname matcher: ${matchers.join(', ')}`).toBeDefined();
      const re = new RegExp(m![1] === '=~' ? `^(?:${m![2]})$` : `^${m![2]!.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
      return names.filter((n) => re.test(n));
    };
    expect(config.inhibit_rules.length).toBeGreaterThan(0);
    const inhibited = new Set<string>();
    for (const rule of config.inhibit_rules) {
      expect(matching(rule.source_matchers).length, rule.source_matchers.join(', ')).toBeGreaterThan(0);
      const targets = matching(rule.target_matchers);
      expect(targets.length, rule.target_matchers.join(', ')).toBeGreaterThan(0);
      for (const t of targets) inhibited.add(t);
    }
    // A down primary silences its consequences …
    for (const consequence of ['PostgresReplicationLagHigh', 'PostgresLongRunningQueries', 'PrismaMigrationFailed']) {
      expect(inhibited.has(consequence), consequence).toBe(true);
    }
    // … but nothing silences the alerts that exist to page when everything else has failed.
    for (const backstop of ['PostgresPrimaryDown', 'PostgresPrimaryDownUnresolved', 'PostgresDataCorruption', 'PostgresSplitBrain', 'DbpilotDown']) {
      expect(inhibited.has(backstop), backstop).toBe(false);
    }
  });
});

// ── PromQL ───────────────────────────────────────────────────────────────────────────────

describe('PromQL of the rules and the dashboard', () => {
  it('is valid PromQL, every expression (promtool check rules on generated recording rules)', () => {
    const expressions = dashboardAndRuleExpressions();
    expect(expressions.length).toBeGreaterThan(alertRules().length);
    const dir = tempDir();
    const file = join(dir, 'expressions.rules.yml');
    const rules = expressions.map((e, i) => ({ record: `dbpilot_promql_check:expr_${i}`, expr: e.expr }));
    writeFileSync(file, stringifyYaml({ groups: [{ name: 'promql-check', rules }] }));
    const r = run('promtool', ['check', 'rules', file]);
    // Name the source of a bad expression, not just its index.
    const bad = /expr_(\d+)/.exec(r.output);
    expect(r.status, bad ? `${expressions[Number(bad[1])]!.source}: ${expressions[Number(bad[1])]!.expr}\n${r.output}` : r.output).toBe(0);
    expect(r.output).toContain(`SUCCESS: ${expressions.length} rules found`);
  });

  it('reads only metrics dbpilot exports or Prometheus generates', () => {
    const known = new Set([...DBPILOT_METRICS, ...PROMETHEUS_GENERATED_SERIES]);
    for (const { source, expr } of dashboardAndRuleExpressions()) {
      const names = metricNamesIn(expr);
      expect(names.length, `${source}: no series selector in ${expr}`).toBeGreaterThan(0);
      for (const name of names) expect(known.has(name), `${source}: unknown metric ${name}`).toBe(true);
    }
  });

  it('selects job="dbpilot" in every dbpilot series selector, so other exporters\' pg_up/redis_up are not read', () => {
    for (const { source, expr } of dashboardAndRuleExpressions()) {
      for (const name of metricNamesIn(expr)) {
        if (name === 'ALERTS') continue;
        const selectors = expr.match(new RegExp(`(?<![A-Za-z0-9_:])${name}\\s*(\\{[^}]*\\})?`, 'g')) ?? [];
        for (const s of selectors) expect(s, `${source}`).toMatch(/job="dbpilot"/);
      }
    }
  });
});

// ── Grafana ──────────────────────────────────────────────────────────────────────────────

describe(`Grafana dashboard (${DASHBOARD_FILE})`, () => {
  const dashboard = readDashboard() as ReturnType<typeof readDashboard> & Record<string, unknown>;
  type Panel = ReturnType<typeof allPanels>[number] & {
    gridPos?: { x: number; y: number; w: number; h: number };
    datasource?: { type?: string; uid?: string };
    targets?: { expr?: string; refId?: string; datasource?: { uid?: string } }[];
  };
  const panels = allPanels(dashboard) as Panel[];
  const variables = (dashboard.templating?.list ?? []) as { name: string; type: string; query?: unknown; definition?: string; multi?: boolean; includeAll?: boolean; allValue?: string; datasource?: { uid?: string } }[];

  it('is the runbook\'s database-dashboard', () => {
    expect(dashboard.uid).toBe('database-dashboard');
    expect(String(dashboard.title)).toMatch(/database-dashboard/);
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dashboard.id ?? null).toBeNull();
  });

  it('has a Prometheus data source variable and server / database variables from label_values', () => {
    const ds = variables.find((v) => v.name === 'datasource');
    expect(ds).toMatchObject({ type: 'datasource', query: 'prometheus' });
    for (const [name, label] of [['server', 'server'], ['database', 'datname']] as const) {
      const v = variables.find((x) => x.name === name);
      expect(v, name).toMatchObject({ type: 'query', multi: true, includeAll: true, allValue: '.*' });
      expect(v!.datasource?.uid).toBe('${datasource}');
      const query = typeof v!.query === 'string' ? v!.query : (v!.query as { query: string }).query;
      expect(query).toMatch(new RegExp(`^label_values\\(.*,\\s*${label}\\)$`));
      expect(variableQueryExpression(query)).toBeDefined();
    }
  });

  it('gives every panel a unique id and a gridPos inside the 24 columns, without overlaps', () => {
    const ids = panels.map((p) => p.id);
    expect(ids.every((id) => Number.isInteger(id))).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
    const occupied = new Map<string, number>();
    for (const p of panels) {
      const g = p.gridPos!;
      expect(g, `panel ${p.id}`).toBeDefined();
      expect(g.x >= 0 && g.w > 0 && g.h > 0 && g.x + g.w <= 24 && g.y >= 0, `panel ${p.id} ${JSON.stringify(g)}`).toBe(true);
      for (let x = g.x; x < g.x + g.w; x++) {
        for (let y = g.y; y < g.y + g.h; y++) {
          const other = occupied.get(`${x},${y}`);
          expect(other, `panel ${p.id} overlaps panel ${other}`).toBeUndefined();
          occupied.set(`${x},${y}`, p.id!);
        }
      }
    }
  });

  it('queries the selected Prometheus data source from every panel', () => {
    for (const p of panels.filter((x) => x.type !== 'row')) {
      expect(p.datasource, `panel ${p.id}`).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(p.targets?.length, `panel ${p.id}`).toBeGreaterThan(0);
      for (const t of p.targets!) expect(t.expr?.trim(), `panel ${p.id} ${t.refId}`).toBeTruthy();
    }
  });

  it('titles every panel after the runbook step or the dbpilot signal it shows', () => {
    for (const p of panels) expect(p.title, `panel ${p.id}`).toMatch(/\(runbook: .+\)|dbpilot|Collector|Remediations|Escalation|Leader/);
  });

  it('shows every metric family dbpilot exports', () => {
    const shown = new Set(
      panels.flatMap((p) => (p.targets ?? []).flatMap((t) => (t.expr ? metricNamesIn(substituteGrafanaVariables(t.expr)) : []))),
    );
    expect(DBPILOT_METRICS.filter((m) => !shown.has(m))).toEqual([]);
  });

  it('uses the multi-value variables only in regex matchers (=~), where "a|b" and ".*" work', () => {
    const raw = [
      ...panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr ?? '')),
      ...variables.map((v) => (typeof v.query === 'string' ? v.query : ((v.query as { query?: string } | undefined)?.query ?? ''))),
    ];
    for (const expr of raw) expect(expr, expr).not.toMatch(/(?<![=!])[=!]\s*"\$\{?(server|database)\b/);
  });
});

// ── metricNamesIn ────────────────────────────────────────────────────────────────────────

describe('metricNamesIn', () => {
  it.each([
    ['pg_up', ['pg_up']],
    ['max by (server) (pg_up{job="dbpilot", role="primary"}) == 0', ['pg_up']],
    ['sum(rate(foo_total{a="b"}[5m])) by (instance) / on(instance) group_left(version) bar_info', ['foo_total', 'bar_info']],
    ['1 - a_bytes{x="{not a name}"} / b_bytes', ['a_bytes', 'b_bytes']],
    ['increase(c[1h]) > 0 and d offset 5m unless on () (max(up{job="x"}) == 1)', ['c', 'd', 'up']],
    ['time() - max(ts_seconds) > 26 * 3600', ['ts_seconds']],
    ['topk(10, max without (pod) (t{d=~"$database"}))', ['t']],
    ['rate(x[$__rate_interval]) or vector(0)', ['x']],
    ['{__name__="by_name", job="j"}', ['by_name']],
    ['count_values("version", info) > bool 1e-3', ['info']],
    ['label_replace(m, "dst", "$1", "src", "(.*)")', ['m']],
    ['sum without (le) (h_bucket) AND BY_upper # comment mentions fake_metric', ['h_bucket', 'BY_upper']],
    ['ns:recorded:rate5m', ['ns:recorded:rate5m']],
    ['m @ 1609746000 + n @ start()', ['m', 'n']],
    ['ALERTS{alertstate="firing"}', ['ALERTS']],
    ['x + x', ['x']],
  ])('%s → %j', (expr, want) => {
    expect(metricNamesIn(expr)).toEqual(want);
  });
});

describe('substituteGrafanaVariables', () => {
  it('puts durations for interval built-ins and .* for other variables', () => {
    expect(substituteGrafanaVariables('rate(x{s=~"$server", d=~"${database}", e=~"${env:regex}", f=~"[[old]]"}[$__rate_interval])')).toBe(
      'rate(x{s=~".*", d=~".*", e=~".*", f=~".*"}[5m])',
    );
    expect(substituteGrafanaVariables('increase(x[$__range]) / $__range_s')).toBe('increase(x[1h]) / 3600');
    expect(() => substituteGrafanaVariables('x[$__unknown]')).toThrow(/unknown Grafana built-in/);
  });
});
