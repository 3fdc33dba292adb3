/**
 * The stand-in's batch/v1 Jobs and CronJobs must refuse what kube-apiserver refuses and report what the
 * job controller reports, or the prisma-migration tests that create a Job prove nothing. Driven only
 * through the real @kubernetes/client-node, as dbpilot drives it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiException, BatchV1Api, KubeConfig, type V1Job } from '@kubernetes/client-node';
import { K8sStandIn } from './k8s-standin.js';

const NS = 'lomash-wood';

interface Failure {
  code: number;
  status: { reason?: string; message?: string; details?: { causes?: { field?: string; message?: string; reason?: string }[] } };
}

async function failure(p: Promise<unknown>): Promise<Failure> {
  try {
    await p;
  } catch (err) {
    if (!(err instanceof ApiException)) throw err;
    const raw: unknown = err.body;
    return { code: err.code, status: typeof raw === 'string' && raw.length > 0 ? (JSON.parse(raw) as Failure['status']) : {} };
  }
  throw new Error('expected the call to fail');
}

async function until<T>(read: () => Promise<T | undefined> | T | undefined, what: string): Promise<T> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const v = await read();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function job(name: string, over: { restartPolicy?: string | null; containers?: unknown[]; selector?: unknown; labels?: Record<string, string> } = {}): V1Job {
  const podSpec: Record<string, unknown> = { containers: over.containers ?? [{ name: 'migrate', image: 'registry.example/orders:1', command: ['npx', 'prisma', 'migrate', 'deploy'] }] };
  if (over.restartPolicy !== null) podSpec.restartPolicy = over.restartPolicy ?? 'Never';
  const spec: Record<string, unknown> = { backoffLimit: 0, template: { metadata: { labels: over.labels ?? { app: 'orders-migrate' } }, spec: podSpec } };
  if (over.selector) spec.selector = over.selector;
  return { apiVersion: 'batch/v1', kind: 'Job', metadata: { name }, spec } as unknown as V1Job;
}

describe('Kubernetes stand-in: batch/v1 Jobs and CronJobs', () => {
  const k8s = new K8sStandIn({ defaultNamespace: NS });
  let dir = '';
  let batch: BatchV1Api;

  beforeAll(async () => {
    await k8s.start();
    dir = await mkdtemp(path.join(tmpdir(), 'dbpilot-k8s-jobs-'));
    const kc = new KubeConfig();
    kc.loadFromFile(await k8s.writeKubeconfig(dir));
    batch = kc.makeApiClient(BatchV1Api);
  });
  afterAll(async () => {
    await k8s.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('creates a Job with the API server defaults and the generated selector and labels, then the controller starts it', async () => {
    const created = await batch.createNamespacedJob({ namespace: NS, body: job('orders-migrate-1') });
    const uid = created.metadata!.uid!;
    expect(uid).toMatch(/^[0-9a-f-]{36}$/);
    expect(created.spec).toMatchObject({ parallelism: 1, completions: 1, backoffLimit: 0, completionMode: 'NonIndexed', suspend: false });
    expect(created.spec!.selector!.matchLabels).toEqual({ 'batch.kubernetes.io/controller-uid': uid });
    expect(created.spec!.template.metadata!.labels).toEqual({
      app: 'orders-migrate',
      'controller-uid': uid,
      'batch.kubernetes.io/controller-uid': uid,
      'job-name': 'orders-migrate-1',
      'batch.kubernetes.io/job-name': 'orders-migrate-1',
    });
    // Nothing has happened yet at create; the controller then starts the pod.
    expect(created.status?.startTime).toBeUndefined();
    const started = await until(async () => {
      const j = await batch.readNamespacedJob({ name: 'orders-migrate-1', namespace: NS });
      return j.status?.active === 1 ? j : undefined;
    }, 'the job to start');
    expect(started.status!.startTime).toBeInstanceOf(Date);
    expect(started.status!.conditions).toBeUndefined();
  });

  it('answers a second create of the same name with 409 AlreadyExists', async () => {
    await batch.createNamespacedJob({ namespace: NS, body: job('orders-migrate-twice') });
    const f = await failure(batch.createNamespacedJob({ namespace: NS, body: job('orders-migrate-twice') }));
    expect(f.code).toBe(409);
    expect(f.status).toMatchObject({ reason: 'AlreadyExists', message: 'jobs.batch "orders-migrate-twice" already exists' });
  });

  it('refuses what ValidateJob refuses with 422 Invalid naming the field', async () => {
    const always = await failure(batch.createNamespacedJob({ namespace: NS, body: job('bad-restart', { restartPolicy: 'Always' }) }));
    expect(always.code).toBe(422);
    expect(always.status.reason).toBe('Invalid');
    expect(always.status.message).toBe('Job "bad-restart" is invalid: spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never"');
    const unset = await failure(batch.createNamespacedJob({ namespace: NS, body: job('no-restart', { restartPolicy: null }) }));
    expect(unset.status.details!.causes!.map((c) => c.field)).toEqual(['spec.template.spec.restartPolicy']);
    const odd = await failure(batch.createNamespacedJob({ namespace: NS, body: job('odd-restart', { restartPolicy: 'Sometimes' }) }));
    expect(odd.status.details!.causes![0]).toMatchObject({ reason: 'FieldValueNotSupported', field: 'spec.template.spec.restartPolicy' });
    const empty = await failure(batch.createNamespacedJob({ namespace: NS, body: job('no-containers', { containers: [] }) }));
    expect(empty.status.details!.causes!.map((c) => c.field)).toEqual(['spec.template.spec.containers']);
    // A selector of one's own without manualSelector is not the generated one.
    const sel = await failure(batch.createNamespacedJob({ namespace: NS, body: job('own-selector', { selector: { matchLabels: { app: 'orders-migrate' } } }) }));
    expect(sel.code).toBe(422);
    expect(sel.status.details!.causes!.some((c) => c.field === 'spec.selector' && /`selector` not auto-generated/.test(c.message ?? ''))).toBe(true);
    // The name becomes the job-name label of the pods: more than 63 characters cannot be a label value.
    const long = `orders-migrate-${'x'.repeat(49)}`;
    expect(long.length).toBe(64);
    const tooLong = await failure(batch.createNamespacedJob({ namespace: NS, body: job(long) }));
    expect(tooLong.code).toBe(422);
    expect(tooLong.status.details!.causes!.some((c) => c.field === 'spec.template.labels' && /must be no more than 63 characters/.test(c.message ?? ''))).toBe(true);
    const sixtyThree = long.slice(0, 63);
    await batch.createNamespacedJob({ namespace: NS, body: job(sixtyThree) });
    // None of the refused ones exists.
    for (const n of ['bad-restart', 'no-restart', 'odd-restart', 'no-containers', 'own-selector', long]) expect(k8s.get('jobs', n)).toBeUndefined();
  });

  it('keeps the pod template immutable', async () => {
    await batch.createNamespacedJob({ namespace: NS, body: job('orders-migrate-immutable') });
    // Read it once the controller has started it (its status write changes the resourceVersion, as upstream).
    const created = await until(async () => {
      const j = await batch.readNamespacedJob({ name: 'orders-migrate-immutable', namespace: NS });
      return j.status?.active === 1 ? j : undefined;
    }, 'the job to start');
    const changed = { ...created, spec: { ...created.spec!, template: { ...created.spec!.template, spec: { ...created.spec!.template.spec!, containers: [{ name: 'migrate', image: 'registry.example/orders:2' }] } } } } as V1Job;
    const f = await failure(batch.replaceNamespacedJob({ name: 'orders-migrate-immutable', namespace: NS, body: changed }));
    expect(f.code).toBe(422);
    expect(f.status.details!.causes!.map((c) => c.field)).toContain('spec.template');
  });

  it('lets the test drive a Job to Complete or Failed with the conditions the job controller writes', async () => {
    await batch.createNamespacedJob({ namespace: NS, body: job('orders-migrate-ok') });
    await batch.createNamespacedJob({ namespace: NS, body: job('orders-migrate-ko') });
    k8s.setJobOutcome('orders-migrate-ok', 'complete');
    k8s.setJobOutcome('orders-migrate-ko', 'failed');
    const ok = await batch.readNamespacedJob({ name: 'orders-migrate-ok', namespace: NS });
    expect(ok.status!.conditions!.map((c) => [c.type, c.status, c.reason])).toEqual([
      ['SuccessCriteriaMet', 'True', 'CompletionsReached'],
      ['Complete', 'True', 'CompletionsReached'],
    ]);
    expect(ok.status).toMatchObject({ succeeded: 1 });
    expect(ok.status!.completionTime).toBeInstanceOf(Date);
    const ko = await batch.readNamespacedJob({ name: 'orders-migrate-ko', namespace: NS });
    expect(ko.status!.conditions!.map((c) => [c.type, c.status, c.reason])).toEqual([
      ['FailureTarget', 'True', 'BackoffLimitExceeded'],
      ['Failed', 'True', 'BackoffLimitExceeded'],
    ]);
    expect(ko.status).toMatchObject({ failed: 1 }); // backoffLimit 0: one pod failed
    expect(ko.status!.completionTime).toBeUndefined();
    // A finished Job stays finished; an unknown one cannot be driven.
    expect(() => k8s.setJobOutcome('orders-migrate-ok', 'failed')).toThrow(/already complete/);
    expect(() => k8s.setJobOutcome('no-such-job', 'complete')).toThrow(/no job/);
    // The controller's start does not overwrite an outcome set first.
    await batch.createNamespacedJob({ namespace: NS, body: job('orders-migrate-fast') });
    k8s.setJobOutcome('orders-migrate-fast', 'complete');
    await new Promise((r) => setTimeout(r, 20));
    expect((await batch.readNamespacedJob({ name: 'orders-migrate-fast', namespace: NS })).status!.succeeded).toBe(1);
  });

  it('404s a Job or CronJob that does not exist, with the API server’s NotFound', async () => {
    const j = await failure(batch.readNamespacedJob({ name: 'nope', namespace: NS }));
    expect(j).toMatchObject({ code: 404, status: { reason: 'NotFound', message: 'jobs.batch "nope" not found' } });
    const c = await failure(batch.readNamespacedCronJob({ name: 'nope', namespace: NS }));
    expect(c).toMatchObject({ code: 404, status: { reason: 'NotFound', message: 'cronjobs.batch "nope" not found' } });
  });

  it('serves a seeded CronJob, and validates CronJobs as the API server does', async () => {
    k8s.seedCronJob({ name: 'orders-migrate', namespace: NS });
    const cj = await batch.readNamespacedCronJob({ name: 'orders-migrate', namespace: NS });
    expect(cj.spec!.suspend).toBe(true);
    expect(cj.spec!.jobTemplate.spec!.template.spec!.containers[0]!.command).toEqual(['npx', 'prisma', 'migrate', 'deploy']);
    expect(cj.metadata!.uid).toMatch(/^[0-9a-f-]{36}$/);
    const base = { apiVersion: 'batch/v1', kind: 'CronJob', spec: { schedule: '0 3 * * *', jobTemplate: { spec: job('x').spec } } };
    const long = await failure(batch.createNamespacedCronJob({ namespace: NS, body: { ...base, metadata: { name: 'c'.repeat(53) } } as never }));
    expect(long.code).toBe(422);
    expect(long.status.details!.causes!.some((x) => x.field === 'metadata.name' && /no more than 52 characters/.test(x.message ?? ''))).toBe(true);
    const noSchedule = await failure(batch.createNamespacedCronJob({ namespace: NS, body: { ...base, metadata: { name: 'no-schedule' }, spec: { jobTemplate: base.spec.jobTemplate } } as never }));
    expect(noSchedule.status.details!.causes!.map((x) => x.field)).toEqual(['spec.schedule']);
    expect(() => k8s.seedCronJob({ name: 'bad', jobTemplate: { spec: { template: { spec: { restartPolicy: 'Always', containers: [{ name: 'm', image: 'i' }] } } } } })).toThrow(/restartPolicy/);
  });
});
