/**
 * Log lines people and pipelines can trust: one line per request at a level that keeps scrapes and
 * accepted webhooks out of an info log, never a query string, and never a key twice in one line
 * (some pipelines drop such lines) — over a whole remediation: webhook, engine, outbox, Lease.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { K8sStandIn } from '../support/k8s-standin.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { freshFingerprint, payload, scriptedHandler, startRemediation, until, type RemediationHarness } from '../support/remediation.js';

/** The keys that occur more than once at the top level of one JSON object text (JSON.parse keeps only the last). */
export function duplicateTopLevelKeys(line: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  let i = 0;
  let expectKey = false;
  while (i < line.length) {
    const c = line[i]!;
    if (c === '"') {
      let j = i + 1;
      while (j < line.length && line[j] !== '"') j += line[j] === '\\' ? 2 : 1;
      const text = line.slice(i + 1, j);
      if (depth === 1 && expectKey) keys.push(text);
      expectKey = false;
      i = j + 1;
      continue;
    }
    if (c === '{' || c === '[') depth += 1;
    else if (c === '}' || c === ']') depth -= 1;
    if ((c === '{' && depth === 1) || (c === ',' && depth === 1)) expectKey = true;
    i += 1;
  }
  return keys.filter((k, n) => keys.indexOf(k) !== n);
}

const pd = new PagerDutyStandin();
const k8s = new K8sStandIn({ namespaces: ['dbpilot-logging'] });
let dir: string;
let h: RemediationHarness;

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-logging-'));
  await pd.start();
  await k8s.start();
  const kubeconfig = await k8s.writeKubeconfig(dir, { namespace: 'dbpilot-logging', fileName: 'kubeconfig' });
  h = await startRemediation({
    pagerduty: pd,
    config: {
      kubernetes: { kubeconfig, namespace: 'dbpilot-logging', lease: { name: 'dbpilot-logging', durationSeconds: 2, renewDeadlineSeconds: 1, retryPeriodSeconds: 0.25 } },
      handlers: { 'redis-failure': { mode: 'auto' } },
    },
  });
  h.remediation.handlers.register(scriptedHandler('redis-failure', { failChecks: ['verifyThing'] }));
  await until(() => h.remediation.leader.isLeader(), 'leadership');
});
afterAll(async () => {
  await h?.close();
  await pd.close();
  await k8s.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('request lines', () => {
  it('a scrape, a health check and an accepted webhook write nothing at info; a 4xx writes one line; no query string is ever logged', async () => {
    const before = h.log.lines.length;
    expect((await h.request({ method: 'GET', url: '/metrics?secret=hunter2' })).statusCode).toBe(200);
    expect((await h.request({ method: 'GET', url: '/-/healthy' })).statusCode).toBe(200);
    expect((await h.webhook(payload([{ labels: { alertname: 'Quiet', remediation: 'none' }, fingerprint: freshFingerprint() }]))).statusCode).toBe(202);
    await h.settle();
    expect(h.log.lines.slice(before), 'info lines for successful requests').toEqual([]);

    const bad = await h.request({ method: 'POST', url: '/alertmanager/webhook?token=hunter2', headers: { ...h.auth, 'content-type': 'application/json' }, payload: '{}' });
    expect(bad.statusCode).toBe(400);
    const missing = await h.request({ method: 'GET', url: '/nope?password=hunter2' });
    expect(missing.statusCode).toBe(404);
    const lines = h.log.lines.slice(before);
    expect(lines.join('')).not.toContain('hunter2');
    const answered = h.log.entries().slice(before).filter((e) => e.msg === 'request answered');
    expect(answered.map((e) => [e.method, e.path, e.status, e.level])).toEqual([
      ['POST', '/alertmanager/webhook', 400, 30],
      ['GET', '/nope', 404, 30],
    ]);
  });

  it('a successful request is one debug line with its route and duration', async () => {
    const d = await startRemediation({ pagerduty: pd, start: false, logLevel: 'debug' });
    try {
      expect((await d.request({ method: 'GET', url: '/metrics?x=1' })).statusCode).toBe(200);
      const lines = d.log.find('request answered');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({ level: 20, method: 'GET', path: '/metrics', status: 200 });
      expect(typeof lines[0]!.ms).toBe('number');
    } finally {
      await d.close();
    }
  });
});

describe('one key, one value', () => {
  it('no line of a whole remediation (webhook, engine, failed check, page, Lease) carries a key twice', async () => {
    const fp = freshFingerprint();
    expect((await h.webhook(payload([{ labels: { alertname: 'RedisDown', remediation: 'redis-failure', instance: 'r1' }, fingerprint: fp }]))).statusCode).toBe(202);
    await h.settle();
    await until(() => pd.accepted.some((e) => e.dedupKey === `dbpilot/RedisDown/${fp}`), 'the page of the failed run');
    await until(() => h.log.find('escalation delivered').length > 0, 'the delivery logged');
    const components = new Set(h.log.entries().map((e) => e.component));
    // The parts that once wrote `component` twice are all in this log.
    for (const c of ['remediation', 'outbox', 'leader-election']) expect(components, c).toContain(c);
    const bad = h.log.lines.map((l) => ({ l, dup: duplicateTopLevelKeys(l) })).filter((x) => x.dup.length > 0);
    expect(bad.map((x) => `${x.dup.join(',')}: ${x.l.slice(0, 200)}`)).toEqual([]);
  });

  it('the duplicate-key check finds a duplicate (it can fail)', () => {
    expect(duplicateTopLevelKeys('{"component":"remediation","component":"outbox","a":{"component":1}}')).toEqual(['component']);
    expect(duplicateTopLevelKeys('{"a":"x\\"component\\"","b":[{"a":1}],"c":"a"}')).toEqual([]);
  });
});
