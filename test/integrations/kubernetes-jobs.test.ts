/**
 * KubernetesClient's Job calls against the strict stand-in over real HTTP and the real client-node:
 * createJobFromCronJob sends exactly the Job `kubectl create job NAME --from=cronjob/CRONJOB` sends,
 * readJob reports what `kubectl get job` / `kubectl wait --for=condition=…` would, and the rollout
 * status carries the restartedAt annotation a `kubectl rollout restart` set.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { INSTANTIATE_ANNOTATION, KubernetesApiError, KubernetesClient, isAlreadyExists, isNotFound } from '../../src/integrations/kubernetes.js';
import { K8sStandIn, type JsonObject } from '../support/k8s-standin.js';

const NS = 'lomash-wood';

async function rejection(p: Promise<unknown>): Promise<KubernetesApiError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(KubernetesApiError);
    return err as KubernetesApiError;
  }
  throw new Error('expected the call to fail');
}

describe('KubernetesClient: Jobs from a CronJob', () => {
  const k8s = new K8sStandIn({ defaultNamespace: NS, rolloutDelayMs: 20 });
  let dir = '';
  let client: KubernetesClient;

  beforeAll(async () => {
    await k8s.start();
    dir = await mkdtemp(path.join(tmpdir(), 'dbpilot-k8s-jobs-client-'));
    client = new KubernetesClient({ namespace: NS, kubeconfigPath: await k8s.writeKubeconfig(dir), requestTimeoutMs: 2_000 });
    k8s.seedCronJob({
      name: 'order-payment-service-migrate',
      jobTemplate: {
        metadata: { labels: { app: 'order-payment-service', role: 'migrate' }, annotations: { 'team.example/owner': 'orders' } },
        spec: {
          backoffLimit: 0,
          activeDeadlineSeconds: 600,
          template: {
            metadata: { labels: { app: 'order-payment-service', role: 'migrate' } },
            spec: {
              restartPolicy: 'Never',
              containers: [
                {
                  name: 'migrate',
                  image: 'registry.example/order-payment-service:2026.11.27',
                  command: ['npx', 'prisma', 'migrate', 'deploy'],
                  env: [{ name: 'DATABASE_URL', valueFrom: { secretKeyRef: { name: 'lomash-wood-secrets', key: 'DATABASE_URL' } } }],
                },
              ],
            },
          },
        },
      },
    });
  });
  afterAll(async () => {
    await k8s.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('creates the Job kubectl create job --from=cronjob/… would: template labels and spec, instantiate=manual, the CronJob as owner', async () => {
    k8s.clearRequests();
    const created = await client.createJobFromCronJob('order-payment-service-migrate', 'order-payment-service-migrate-1a2b3c4d', { annotations: { 'dbpilot.io/run': 'run-1' } });
    const cronJob = k8s.get('cronjobs', 'order-payment-service-migrate')!;
    const reqs = k8s.requests;
    expect(reqs.map((r) => [r.method, r.path, r.status])).toEqual([
      ['GET', `/apis/batch/v1/namespaces/${NS}/cronjobs/order-payment-service-migrate`, 200],
      ['POST', `/apis/batch/v1/namespaces/${NS}/jobs`, 201],
    ]);
    const body = reqs[1]!.body as JsonObject;
    const tmpl = (cronJob.spec as JsonObject).jobTemplate as JsonObject;
    expect(body).toEqual({
      apiVersion: 'batch/v1',
      kind: 'Job',
      metadata: {
        name: 'order-payment-service-migrate-1a2b3c4d',
        labels: { app: 'order-payment-service', role: 'migrate' },
        annotations: { [INSTANTIATE_ANNOTATION]: 'manual', 'team.example/owner': 'orders', 'dbpilot.io/run': 'run-1' },
        ownerReferences: [{ apiVersion: 'batch/v1', kind: 'CronJob', name: 'order-payment-service-migrate', uid: (cronJob.metadata as JsonObject).uid }],
      },
      spec: tmpl.spec,
    });
    expect(created).toMatchObject({ name: 'order-payment-service-migrate-1a2b3c4d', complete: false, failed: null, ownerCronJob: 'order-payment-service-migrate' });
    expect(created.annotations['dbpilot.io/run']).toBe('run-1');
    expect(created.message).toBe('job "order-payment-service-migrate-1a2b3c4d" pending');
  });

  it('reads a Job through running, Complete and Failed', async () => {
    await client.createJobFromCronJob('order-payment-service-migrate', 'orders-migrate-ok');
    await client.createJobFromCronJob('order-payment-service-migrate', 'orders-migrate-ko');
    const deadline = Date.now() + 5000;
    let running = await client.readJob('orders-migrate-ok');
    while (running.active === 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 5));
      running = await client.readJob('orders-migrate-ok');
    }
    expect(running).toMatchObject({ active: 1, complete: false, failed: null, message: 'job "orders-migrate-ok" running (1 active, 0 failed)' });
    expect(running.startTime).toBeInstanceOf(Date);
    k8s.setJobOutcome('orders-migrate-ok', 'complete');
    k8s.setJobOutcome('orders-migrate-ko', 'failed');
    expect(await client.readJob('orders-migrate-ok')).toMatchObject({ complete: true, failed: null, succeeded: 1, message: 'job "orders-migrate-ok" complete (1 succeeded)' });
    expect(await client.readJob('orders-migrate-ko')).toMatchObject({
      complete: false,
      failed: { reason: 'BackoffLimitExceeded', message: 'Job has reached the specified backoff limit' },
      failedPods: 1,
      message: 'job "orders-migrate-ko" failed: BackoffLimitExceeded (Job has reached the specified backoff limit)',
    });
  });

  it('turns a taken name into 409 AlreadyExists, and a missing CronJob or Job into 404', async () => {
    await client.createJobFromCronJob('order-payment-service-migrate', 'orders-migrate-taken');
    const taken = await rejection(client.createJobFromCronJob('order-payment-service-migrate', 'orders-migrate-taken'));
    expect(isAlreadyExists(taken)).toBe(true);
    expect(taken.message).toContain('create job lomash-wood/orders-migrate-taken --from=cronjob/order-payment-service-migrate');
    const noCron = await rejection(client.createJobFromCronJob('no-such-cronjob', 'orders-migrate-x'));
    expect(isNotFound(noCron)).toBe(true);
    expect(noCron.message).toContain('read cronjob lomash-wood/no-such-cronjob');
    expect(k8s.get('jobs', 'orders-migrate-x')).toBeUndefined();
    expect(isNotFound(await rejection(client.readJob('no-such-job')))).toBe(true);
  });

  it("reports the deployment's restartedAt annotation with its rollout status", async () => {
    k8s.seedDeployment({ name: 'order-payment-service' });
    expect((await client.readRolloutStatus('deployment', 'order-payment-service')).restartedAt).toBeUndefined();
    const { restartedAt } = await client.rolloutRestart('deployment', 'order-payment-service', new Date('2026-11-27T16:00:43.799Z'));
    expect(restartedAt).toBe('2026-11-27T16:00:43Z');
    expect((await client.readRolloutStatus('deployment', 'order-payment-service')).restartedAt).toBe('2026-11-27T16:00:43Z');
  });
});
