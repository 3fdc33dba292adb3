/**
 * `dbpilot drill primary-failure --with-prometheus` through the real CLI: the alert goes through the
 * machine's Prometheus and Alertmanager (Debian's prometheus and prometheus-alertmanager; CI installs
 * them, as for test/e2e/alert-path.test.ts), the drill posts nothing itself, the failover recovers,
 * Prometheus fired after the kill and before dbpilot created the run, and afterwards nothing is left:
 * no Prometheus / Alertmanager process, no port, no temp dir. With PROMETHEUS pointing at a binary that
 * does not exist the drill says so and posts the alert itself; SIGTERM while the alert is pending stops
 * Prometheus and Alertmanager too. Without spawning: the files it reads are the package's and ship in
 * the image, the localised Alertmanager example points only at the sandbox, and the table's rows.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseDocument } from 'yaml';
import { summaryRows } from '../../src/cli-drill.js';
import type { TrialResult } from '../../src/drill/drill.js';
import { ALERTMANAGER_EXAMPLE, localiseAlertmanagerConfig, PACKAGE_ROOT, RULES_FILE } from '../../src/drill/alert-path.js';
import { drill, expectNothingLeft, jsonDrill, ROOT, tmps } from './support.js';

/** Live processes whose command line names `dir` (Prometheus and Alertmanager get their config and data paths there). */
function processesNaming(dir: string): string[] {
  const hits: string[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (fs.readFileSync(`/proc/${e}/stat`, 'utf8').split(') ')[1]?.[0] === 'Z') continue;
      const cmd = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0').join(' ');
      if (cmd.includes(dir)) hits.push(`${e}: ${cmd}`);
    } catch {
      // gone
    }
  }
  return hits;
}

describe('dbpilot drill --with-prometheus (the real CLI, the real alert path)', () => {
  it('primary-failure: Prometheus fires after the kill, Alertmanager calls the webhook, dbpilot fails over; nothing left behind', async () => {
    const { r, t } = await jsonDrill('primary-failure', ['--with-prometheus']);
    expect(t.alertPath).toMatchObject({ via: 'prometheus' });
    expect(t.alertPath.fallback).toBeUndefined();
    expect(t.alertPath.prometheus).toMatch(/^prometheus, version \d/);
    expect(t.alertPath.alertmanager).toMatch(/^alertmanager, version \d/);
    // The drill posted nothing: the alert came through Prometheus and Alertmanager.
    expect(r.stderr).not.toMatch(/^alert: PostgresPrimaryDown posted to/m);
    expect(r.stderr).toMatch(/^alert: PostgresPrimaryDown pending in Prometheus/m);
    const broke = Date.parse(t.alertPath.brokeAt!);
    const pending = Date.parse(t.alertPath.pendingAt!);
    const firing = Date.parse(t.alertPath.firingAt!);
    const webhook = Date.parse(t.alertPath.webhookAt!);
    const created = broke + t.detectionMs;
    // kill → pending → firing (the rule's for) → webhook call → the run.
    expect(pending).toBeGreaterThan(broke);
    expect(firing).toBeGreaterThan(pending);
    expect(webhook).toBeGreaterThanOrEqual(firing);
    expect(created).toBeGreaterThanOrEqual(webhook);
    expect(t.steps.map((s) => s.name)).toContain('promoteReplica');
    // Prometheus' and Alertmanager's ports are in the sandbox's list (jsonDrill checked they are all closed) …
    const alertPorts = [...(/^alert path: .* on 127\.0\.0\.1:(\d+), .* on 127\.0\.0\.1:(\d+) /m.exec(r.stderr) ?? [])].slice(1).map(Number);
    expect(alertPorts).toHaveLength(2);
    for (const p of alertPorts) expect(t.sandbox.ports).toContain(p);
    // … and no process runs on the sandbox's files any more.
    expect(t.sandbox.dirs.length).toBeGreaterThan(0);
    for (const d of t.sandbox.dirs) expect(processesNaming(d)).toEqual([]);
  });

  it('SIGTERM while Prometheus has the alert pending stops Prometheus and Alertmanager with the rest (exit 143)', async () => {
    const r = await drill(['primary-failure', '--with-prometheus'], { interruptWhen: /^alert: PostgresPrimaryDown pending in Prometheus/m, signal: 'SIGTERM' });
    expect(r.code).toBe(143);
    expect(r.stderr).toContain('SIGTERM: stopping the sandbox');
    const servers = [...r.stderr.matchAll(/(?:primary|replica|Redis) 127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]));
    const alertPorts = [...(/^alert path: .* on 127\.0\.0\.1:(\d+), .* on 127\.0\.0\.1:(\d+) /m.exec(r.stderr) ?? [])].slice(1).map(Number);
    expect(servers).toHaveLength(3);
    expect(alertPorts).toHaveLength(2);
    // Prometheus and Alertmanager were among the drill's descendants; none is alive, no port open, no dir left.
    await expectNothingLeft(r, [...servers, ...alertPorts]);
  });

  it('without the binaries (PROMETHEUS names one that does not exist) it says so on stderr and posts the alert itself', async () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'dbpilot-drill-nobin-'));
    tmps.push(empty);
    const { r, t } = await jsonDrill('primary-failure', ['--with-prometheus'], { env: { PROMETHEUS: path.join(empty, 'prometheus') } });
    expect(t.alertPath.via).toBe('drill');
    expect(t.alertPath.fallback).toContain(`${path.join(empty, 'prometheus')} does not run (ENOENT)`);
    expect(r.stderr).toMatch(/^alert path: --with-prometheus, but .*prometheus does not run \(ENOENT\).*; the drill posts the alert itself$/m);
    expect(r.stderr).toMatch(/^alert: PostgresPrimaryDown posted to/m);
    expect(r.stderr).not.toMatch(/pending in Prometheus/);
  });

  it('reads only files of the package, and the image ships them', () => {
    // src/drill/ and dist/drill/ are both two levels below the package root.
    expect(path.resolve(PACKAGE_ROOT)).toBe(path.resolve(ROOT));
    for (const f of [RULES_FILE, ALERTMANAGER_EXAMPLE]) {
      expect(fs.existsSync(path.join(ROOT, f)), f).toBe(true);
      expect(fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8')).toMatch(new RegExp(`^COPY [^\\n]*\\b${f.replace(/\./g, '\\.')}\\b[^\\n]* \\./alerts/$`, 'm'));
      expect(fs.readFileSync(path.join(ROOT, '.dockerignore'), 'utf8').split('\n')).toContain(`!${f}`);
    }
  });

  it('points the Alertmanager example at the sandbox and nothing else, and refuses what it does not understand', () => {
    const example = fs.readFileSync(path.join(ROOT, ALERTMANAGER_EXAMPLE), 'utf8');
    const local = { webhookUrl: 'http://127.0.0.1:1/alertmanager/webhook', tokenFile: '/s/token', keyFile: (t: string) => `/s/pagerduty-${t}`, pagerdutyUrl: 'http://127.0.0.1:2/v2/enqueue' };
    const before = parseDocument(example).toJS() as { route: unknown; inhibit_rules: unknown; receivers: { name: string }[] };
    const after = parseDocument(localiseAlertmanagerConfig(example, local)).toJS() as typeof before & { global: { pagerduty_url: string } };
    expect(after.route).toEqual(before.route);
    expect(after.inhibit_rules).toEqual(before.inhibit_rules);
    expect(after.receivers.map((r) => r.name)).toEqual(before.receivers.map((r) => r.name));
    expect(after.global.pagerduty_url).toBe(local.pagerdutyUrl);
    const text = JSON.stringify(after);
    expect(text).toContain(local.webhookUrl);
    expect(text).toContain('"credentials_file":"/s/token"');
    expect(text).not.toMatch(/\/etc\/alertmanager|pagerduty\.com|dbpilot:9630/);
    const edit = (f: (d: ReturnType<typeof parseDocument>) => void) => {
      const d = parseDocument(example);
      f(d);
      return d.toString();
    };
    expect(() => localiseAlertmanagerConfig(edit((d) => d.setIn(['receivers', 1, 'pagerduty_configs', 0, 'routing_key'], 'x'.repeat(32))), local)).toThrow(/has routing_key/);
    expect(() => localiseAlertmanagerConfig(edit((d) => d.setIn(['receivers', 1, 'slack_configs'], [{ api_url: 'https://hooks.slack.com/x' }])), local)).toThrow(/has slack_configs/);
    expect(() => localiseAlertmanagerConfig(edit((d) => d.setIn(['receivers', 0, 'webhook_configs', 0, 'http_config', 'tls_config'], { ca_file: '/etc/ca.pem' })), local)).toThrow(/still pointing elsewhere: ca_file/);
  });

  it("the table's rows: firing and webhook arrival from the break, only when the alert came through Prometheus", () => {
    const trial = (alertPath: TrialResult['alertPath']): TrialResult => ({
      trial: 1, scenario: 'primary-failure', alertname: 'PostgresPrimaryDown', handler: 'primary-failover', runId: 'r', runStatus: 'succeeded', expectedRunStatus: 'succeeded', measured: [], reason: null,
      detectionMs: 2600, planMs: 600, recoveryMs: 4000, steps: [], checks: [], pages: 1, recovered: true, target: 'sandbox', alertPath, sandbox: { ports: [], dirs: [] },
    });
    const prom = summaryRows([trial({ via: 'prometheus', brokeAt: '2026-12-02T00:00:00.000Z', pendingAt: '2026-12-02T00:00:01.400Z', firingAt: '2026-12-02T00:00:02.400Z', webhookAt: '2026-12-02T00:00:02.450Z' })]);
    expect(prom.slice(0, 3).map((r) => [r.what, r.ms, r.ok])).toEqual([
      ['Prometheus: alert firing (break → FiredAt)', [2400], [true]],
      ["Alertmanager: webhook arrival (break → dbpilot's webhook)", [2450], [true]],
      ['detection (break → run created)', [2600], [true]],
    ]);
    const posted = summaryRows([trial({ via: 'drill', fallback: 'prometheus does not run (ENOENT)' })]);
    expect(posted[0]!.what).toBe('detection (alert → run created)');
    expect(posted.some((r) => /Prometheus|Alertmanager/.test(r.what))).toBe(false);
  });
});
