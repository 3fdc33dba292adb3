/**
 * A failover is crash-safe: dbpilot killed with SIGKILL (by a failpoint, as a power cut or an OOM kill
 * would) at every step boundary and in the middle of the steps that act — and on restart it finishes
 * the same failover and never promotes a second server. And across dbpilot replicas: the leader
 * killed mid-failover, the other replica — with an empty store of its own — finishes it from the
 * intent in the Kubernetes API.
 *
 * Real processes (`dbpilot serve`), a real primary with two streaming replicas of this file's own,
 * the strict Kubernetes and PagerDuty stand-ins.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { Store } from '../../src/store/store.js';
import { DbpilotProcess, processConfig, until, webhookPayload, writeConfig } from '../support/dbpilot-process.js';
import { K8sStandIn } from '../support/k8s-standin.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { startPgCluster, type PgCluster } from '../support/pg-cluster.js';
import { freePort } from '../support/ports.js';

const NS = 'lomash-wood';
const DEPLOYMENTS = ['auth-service', 'order-payment-service', 'analytics-service'];
let dir: string;
const pd = new PagerDutyStandin();
let cluster: PgCluster | null = null;
let k8s: K8sStandIn | null = null;
const procs: DbpilotProcess[] = [];

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-failover-crash-'));
  await pd.start();
});
afterAll(async () => {
  await pd.close();
  rmSync(dir, { recursive: true, force: true });
});
afterEach(async () => {
  for (const p of procs.splice(0)) await p.stop().catch(() => undefined);
  await cluster?.stop();
  cluster = null;
  await k8s?.close();
  k8s = null;
  pd.reset();
});

let seq = 0;
async function world() {
  seq += 1;
  cluster = await startPgCluster({ replicas: 2 });
  k8s = new K8sStandIn({ namespaces: [NS] });
  await k8s.start();
  const kubeconfig = await k8s.writeKubeconfig(dir, { namespace: NS, fileName: `kubeconfig-${seq}` });
  const server = (url: string) => `127.0.0.1:${new URL(url).port}`;
  const primary = server(cluster.primary.url());
  k8s.seedPod({ name: 'postgres-primary-0', namespace: NS, labels: { role: 'primary' }, podIP: '10.0.0.5' });
  k8s.seedPod({ name: 'postgres-replica-0', namespace: NS, labels: { role: 'replica' }, podIP: '10.0.0.6' });
  k8s.seedPod({ name: 'postgres-replica-1', namespace: NS, labels: { role: 'replica' }, podIP: '10.0.0.7' });
  k8s.seedSecret({ name: 'lomash-wood-secrets', namespace: NS, data: { DATABASE_URL: `postgresql://app:pw@${primary}/postgres?schema=public` } });
  for (const d of DEPLOYMENTS) k8s.seedDeployment({ name: d, namespace: NS, replicas: 1 });
  const doc = (port: number, store: string) =>
    processConfig(
      { port, store, pagerdutyUrl: pd.url, pgPrimaryUrl: cluster!.primary.url(), redisUrl: inject('redisUrl') },
      {
        postgres: {
          primary: { url: cluster!.primary.url(), pod: 'postgres-primary-0' },
          replicas: [
            { url: cluster!.replicas[0]!.url(), pod: 'postgres-replica-0' },
            { url: cluster!.replicas[1]!.url(), pod: 'postgres-replica-1' },
          ],
        },
        kubernetes: {
          kubeconfig,
          namespace: NS,
          secrets: [{ name: 'lomash-wood-secrets', key: 'DATABASE_URL' }],
          deployments: DEPLOYMENTS,
          lease: { name: `dbpilot-crash-${seq}`, durationSeconds: 2, renewDeadlineSeconds: 1, retryPeriodSeconds: 0.25 },
        },
        failover: { confirmProbes: 2, confirmIntervalMs: 100 },
        handlers: { 'primary-failover': { mode: 'auto' } },
      },
    );
  return { primary, doc, intentName: `dbpilot-crash-${seq}-failover` };
}

async function start(name: string, file: string, env: Record<string, string> = {}): Promise<DbpilotProcess> {
  const p = await DbpilotProcess.start({ name, configFile: file, env });
  procs.push(p);
  return p;
}

/** Which configured servers accept writes now. */
async function writable(): Promise<string[]> {
  const out: string[] = [];
  for (const node of [cluster!.primary, ...cluster!.replicas]) {
    const c = new pg.Client({ connectionString: node.url(), connectionTimeoutMillis: 1000 });
    c.on('error', () => undefined);
    try {
      await c.connect();
      if (!(await c.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0]!.r) out.push(`127.0.0.1:${node.port}`);
    } catch {
      // down
    } finally {
      await c.end().catch(() => undefined);
    }
  }
  return out;
}

const alert = (server: string) => ({ labels: { alertname: 'PostgresPrimaryDown', remediation: 'primary-failover', team: 'lead-dba', severity: 'critical', server }, startsAt: new Date().toISOString() });

function assertFinished(primary: string, intentName: string): { target: string } {
  const intent = JSON.parse((k8s!.configMap(intentName, NS) as { data: { intent: string } }).data.intent) as { phase: string; targetPrimary: string; oldPrimary: string; restartedAt?: string };
  expect(intent).toMatchObject({ phase: 'done', oldPrimary: primary });
  const labels = (pod: string) => ((k8s!.pod(pod, NS)?.metadata as { labels?: Record<string, string> }).labels ?? {}).role;
  expect(labels('postgres-primary-0')).toBe('replica');
  const targetPod = intent.targetPrimary.endsWith(`:${cluster!.replicas[0]!.port}`) ? 'postgres-replica-0' : 'postgres-replica-1';
  expect(labels(targetPod)).toBe('primary');
  expect(k8s!.secretValue('lomash-wood-secrets', 'DATABASE_URL', NS)).toBe(`postgresql://app:pw@${intent.targetPrimary}/postgres?schema=public`);
  // One restart request per deployment: the same restartedAt everywhere, the one the intent recorded.
  const stamps = DEPLOYMENTS.map((d) => ((k8s!.deployment(d, NS)?.spec as { template: { metadata?: { annotations?: Record<string, string> } } }).template.metadata?.annotations ?? {})['kubectl.kubernetes.io/restartedAt']);
  expect(new Set(stamps)).toEqual(new Set([intent.restartedAt]));
  return { target: intent.targetPrimary };
}

describe('a failover killed with SIGKILL and restarted on the same store', () => {
  it.each([
    'recordIntent:after-check',
    'fenceOldPrimary:after-run',
    'fenceOldPrimary:after-check',
    'promoteReplica:before-run',
    'promoteReplica:after-run',
    'promoteReplica:after-check',
    'labelNewPrimary:after-check',
    'repointSecrets:after-run',
    'repointSecrets:after-check',
    'restartServices:after-run',
    'restartServices:after-check',
    'waitForRollouts:after-check',
  ])('killed at %s: the restarted process finishes the same failover and promotes no second server', async (point) => {
    const { primary, doc, intentName } = await world();
    const port = await freePort();
    const store = path.join(dir, `crash-${seq}.sqlite`);
    const file = await writeConfig(dir, `crash-${seq}`, doc(port, store));
    const first = await start(`dbpilot-crash-${seq}`, file, { DBPILOT_FAILPOINTS: point });
    await until(async () => ((await first.metric('dbpilot_leader')) === 1 ? true : undefined), 15_000, 'leadership');
    await cluster!.primary.kill();
    expect((await first.postWebhook(webhookPayload('firing', [alert(primary)]))).status).toBe(202);
    const exit = await first.exited;
    expect(exit.signal, `the failpoint ${point} fired: ${first.stderr.join('\n')}`).toBe('SIGKILL');

    const second = await start(`dbpilot-crash-${seq}-again`, file);
    const s = new Store(store, { readonly: true });
    let runId = '';
    try {
      await until(
        () => {
          const [run] = s.listRuns({ handler: 'primary-failover' });
          runId = run?.id ?? '';
          return run && !['planning', 'running'].includes(run.status) ? true : undefined;
        },
        60_000,
        'the failover to end after the restart',
      );
      const run = s.getRun(runId)!;
      expect(run.status, `${run.reason}\n${second.tail()}`).toBe('succeeded');
      expect(s.listRuns({ handler: 'primary-failover' })).toHaveLength(1);
    } finally {
      s.close();
    }
    const { target } = assertFinished(primary, intentName);
    // Exactly one server accepts writes: the intent's target. The other replica is still a replica.
    expect(await writable()).toEqual([target]);
  });
});

describe('two dbpilot processes on one Lease', () => {
  it('the leader killed mid-failover: the other finishes the same failover from the intent in the Kubernetes API, with an empty store of its own', async () => {
    const { primary, doc, intentName } = await world();
    const [portA, portB] = [await freePort(), await freePort()];
    const fileA = await writeConfig(dir, `leader-${seq}`, doc(portA, path.join(dir, `leader-${seq}.sqlite`)));
    const storeB = path.join(dir, `other-${seq}.sqlite`);
    const fileB = await writeConfig(dir, `other-${seq}`, doc(portB, storeB));
    const a = await start(`dbpilot-a-${seq}`, fileA, { DBPILOT_FAILPOINTS: 'restartServices:before-run' });
    await until(async () => ((await a.metric('dbpilot_leader')) === 1 ? true : undefined), 15_000, 'A leads');
    const b = await start(`dbpilot-b-${seq}`, fileB);
    expect(await b.metric('dbpilot_leader')).toBe(0);
    await cluster!.primary.kill();
    expect((await a.postWebhook(webhookPayload('firing', [alert(primary)]))).status).toBe(202);
    expect((await a.exited).signal).toBe('SIGKILL');
    // A promoted before it died; B has never seen the alert, and its store is empty.
    const promoted = await writable();
    expect(promoted).toHaveLength(1);
    await b.waitForLog((e) => e.msg === 'carrying on work another dbpilot instance recorded', 30_000, 'B to carry on the failover');
    const s = new Store(storeB, { readonly: true });
    try {
      await until(() => (s.listRuns({ handler: 'primary-failover' }).some((r) => r.status === 'succeeded') ? true : undefined), 60_000, "B's run to succeed");
      const runs = s.listRuns({ handler: 'primary-failover' });
      expect(runs.map((r) => [r.origin, r.status])).toEqual([['intent', 'succeeded']]);
      expect(runs[0]!.reason).toBe('every step done and checked');
    } finally {
      s.close();
    }
    const { target } = assertFinished(primary, intentName);
    expect(target).toBe(promoted[0]);
    expect(await writable()).toEqual(promoted);
  });
});
