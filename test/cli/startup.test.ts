/**
 * A safe start-up, as a user meets it: `dbpilot serve` on a port that is taken must not act at all —
 * no Lease taken, no page sent, no run resumed from the shared store — and say so in one line with a
 * DBPILOT_ code; and `check-config` runs every check `serve` runs, so what it accepts, serve starts.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { Store } from '../../src/store/store.js';
import { K8sStandIn } from '../support/k8s-standin.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { TEAM_KEYS, TOKEN } from '../support/remediation.js';

const BIN = fileURLToPath(new URL('../../bin/dbpilot.js', import.meta.url));
let dir: string;
const pd = new PagerDutyStandin();
const k8s = new K8sStandIn({ namespaces: ['dbpilot-startup'] });

function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('DBPILOT_') || k.startsWith('VITEST') || k === 'NODE_OPTIONS' || k === 'KUBECONFIG' || k === 'POD_NAME') continue;
    env[k] = v;
  }
  return env;
}

function dbpilot(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: dir, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function config(name: string, doc: Record<string, unknown>): string {
  const file = path.join(dir, `${name}.yaml`);
  writeFileSync(file, stringify(doc));
  return file;
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-startup-'));
  await pd.start();
  await k8s.start();
});
afterAll(async () => {
  await pd.close();
  await k8s.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('serve on a port that is taken', () => {
  let taken: Server;
  let port = 0;
  beforeAll(async () => {
    taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    port = (taken.address() as { port: number }).port;
  });
  afterAll(() => new Promise<void>((r) => taken.close(() => r())));

  it('exits 2 with one line naming the address and DBPILOT_LISTEN_FAILED, having taken no Lease, sent no page and resumed no run', async () => {
    const storePath = path.join(dir, 'taken.sqlite');
    // What a previous process left in the shared store: a page to deliver and a run in flight.
    const store = new Store(storePath);
    const key = 'dbpilot/Left/behind';
    store.enqueue({ team: 'devops', dedupKey: key, action: 'trigger', event: { event_action: 'trigger', dedup_key: key, payload: { summary: 'left behind', source: 'x', severity: 'warning' } } });
    const run = store.createRun({
      handler: 'slow-queries',
      alertname: 'PostgresLongRunningQueries',
      fingerprint: 'abc123',
      startsAt: new Date().toISOString(),
      target: 'postgres/127.0.0.1:1/x',
      mode: 'auto',
      status: 'running',
      owner: 'dbpilot-0/4194000/deadbeef',
    })!;
    store.close();
    const kubeconfig = await k8s.writeKubeconfig(dir, { namespace: 'dbpilot-startup', fileName: 'kubeconfig' });
    k8s.clearRequests();
    const file = config('taken', {
      listen: `127.0.0.1:${port}`,
      mode: 'auto',
      postgres: { primary: { url: inject('pgPrimaryUrl') } },
      redis: { url: inject('redisUrl') },
      webhook: { token: TOKEN },
      kubernetes: { kubeconfig, namespace: 'dbpilot-startup', lease: { name: 'dbpilot-startup', durationSeconds: 2, renewDeadlineSeconds: 1, retryPeriodSeconds: 0.25 } },
      pagerduty: { url: pd.url, routes: { ...TEAM_KEYS } },
      store: { path: storePath },
    });
    const r = await dbpilot(['--config', file, 'serve']);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toBe(`dbpilot: cannot listen on 127.0.0.1:${port}: the address is already in use (another dbpilot, or another program, listens there) [DBPILOT_LISTEN_FAILED]\n`);
    expect(r.stdout).not.toMatch(/became leader|escalation delivered|resuming/);
    expect(k8s.requests.filter((q) => q.path.includes('/leases')), 'Lease requests').toEqual([]);
    expect(k8s.lease('dbpilot-startup', 'dbpilot-startup')).toBeUndefined();
    expect(pd.requests).toEqual([]);
    const after = new Store(storePath, { readonly: true });
    try {
      expect(after.getRun(run.id)?.status).toBe('running');
      expect(after.outbox().map((o) => [o.dedupKey, o.status, o.attempts])).toEqual([[key, 'pending', 0]]);
    } finally {
      after.close();
    }
  });
});

describe('check-config runs what serve runs', () => {
  it.each([
    [{ alerts: { PostgresDiskAlmostFull: 'restart-redis' } }, /^dbpilot: alerts\.PostgresDiskAlmostFull: "restart-redis" is not a handler of dbpilot \(primary-failover, rebuild-replica, slow-queries, disk-full, vacuum-full, prisma-migration, redis-failure, redis-flushall, replication-lag, data-corruption, or none\) \[DBPILOT_CONFIG_INVALID\]$/m],
    [{ kubernetes: { kubeconfig: '/nonexistent/kubeconfig' } }, /^dbpilot: kubernetes: cannot load configuration: .*\[DBPILOT_DEPENDENCY_FAILED\]$/m],
    // A parent that is a file: refused even for root, who may write anywhere else.
    [{ store: { path: '/etc/hostname/dbpilot/dbpilot.sqlite' } }, /^dbpilot: store\.path: \/etc\/hostname is not a directory \[DBPILOT_CONFIG_INVALID\]$/m],
  ])('refuses %j, as serve does', async (doc, message) => {
    const file = config(`bad-${Math.random().toString(36).slice(2)}`, { ...doc, postgres: { primary: { url: inject('pgPrimaryUrl') } }, redis: { url: inject('redisUrl') } });
    const check = await dbpilot(['--config', file, 'check-config']);
    expect(check.code, check.stdout).toBe(2);
    expect(check.stderr).toMatch(message);
    expect(check.stdout).toBe('');
    const serve = await dbpilot(['--config', file, 'serve']);
    expect(serve.code).toBe(2);
    expect(serve.stderr).toMatch(message);
  });
});
