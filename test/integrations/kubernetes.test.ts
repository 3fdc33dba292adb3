/**
 * KubernetesClient against the strict stand-in, over real HTTP and the real client-node: each method
 * must send exactly the request the runbook's kubectl line sends (path, content type, body), and
 * turn every refusal into a KubernetesApiError that carries the status and no secret.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { V1Deployment, V1StatefulSet } from '@kubernetes/client-node';
import { DependencyError } from '../../src/errors.js';
import {
  KubernetesApiError,
  KubernetesClient,
  RolloutNotCompleteError,
  formatMicroTime,
  isConflict,
  isNotFound,
  restartedAtValue,
  rolloutStatusOf,
} from '../../src/integrations/kubernetes.js';
import { K8sStandIn } from '../support/k8s-standin.js';

const NS = 'lomash-wood';
const SECRET = 'lomash-wood-secrets';

async function rejection(p: Promise<unknown>): Promise<KubernetesApiError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(KubernetesApiError);
    return err as KubernetesApiError;
  }
  throw new Error('expected the call to fail');
}

describe('KubernetesClient', () => {
  const k8s = new K8sStandIn({ defaultNamespace: NS, rolloutDelayMs: 150 });
  let dir = '';
  let kubeconfig = '';
  let client: KubernetesClient;

  beforeAll(async () => {
    await k8s.start();
    dir = await mkdtemp(path.join(tmpdir(), 'dbpilot-k8s-client-'));
    kubeconfig = await k8s.writeKubeconfig(dir);
    client = new KubernetesClient({ namespace: NS, kubeconfigPath: kubeconfig, rolloutPollMs: 20, requestTimeoutMs: 2_000 });
  });
  afterAll(async () => {
    await k8s.close();
    await rm(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    k8s.clearRequests();
    k8s.clearFaults();
    k8s.setRolloutDelay(150);
  });

  describe('secrets (scenario 1, step 4)', () => {
    it('readSecretKey decodes one key', async () => {
      k8s.seedSecret({ name: SECRET, data: { DATABASE_URL: 'postgresql://app:pw@postgres-primary:5432/lomash_auth' } });
      await expect(client.readSecretKey(SECRET, 'DATABASE_URL')).resolves.toBe('postgresql://app:pw@postgres-primary:5432/lomash_auth');
      expect(k8s.requests).toMatchObject([{ method: 'GET', path: `/api/v1/namespaces/${NS}/secrets/${SECRET}`, status: 200 }]);
    });

    it('readSecretKey fails clearly on a missing key or secret', async () => {
      k8s.seedSecret({ name: 'other-secrets', data: { A: 'x' } });
      const noKey = await rejection(client.readSecretKey('other-secrets', 'DATABASE_URL'));
      expect(noKey.reason).toBe('KeyNotFound');
      expect(noKey.message).toContain('secret has no key "DATABASE_URL"');
      const noSecret = await rejection(client.readSecretKey('absent-secrets', 'DATABASE_URL'));
      expect(noSecret.status).toBe(404);
      expect(isNotFound(noSecret)).toBe(true);
      expect(noSecret).toBeInstanceOf(DependencyError);
      expect(noSecret.code).toBe('DBPILOT_DEPENDENCY_FAILED');
      expect(noSecret.dependency).toBe('kubernetes');
    });

    it('replaceSecretKey sends the runbook JSON patch (replace /data/KEY, base64)', async () => {
      k8s.seedSecret({ name: SECRET, data: { DATABASE_URL: 'postgresql://app:pw@postgres-primary:5432/lomash_auth', OTHER: 'kept' } });
      const next = 'postgresql://app:pw@postgres-replica-0:5432/lomash_auth';
      await client.replaceSecretKey(SECRET, 'DATABASE_URL', next);
      expect(k8s.requests).toEqual([
        expect.objectContaining({
          method: 'PATCH',
          path: `/api/v1/namespaces/${NS}/secrets/${SECRET}`,
          contentType: 'application/json-patch+json',
          body: [{ op: 'replace', path: '/data/DATABASE_URL', value: Buffer.from(next).toString('base64') }],
          status: 200,
        }),
      ]);
      expect(k8s.secretValue(SECRET, 'DATABASE_URL')).toBe(next);
      expect(k8s.secretValue(SECRET, 'OTHER')).toBe('kept');
    });

    it('replaceSecretKey refuses a key that does not exist (422) and keeps the value out of the error', async () => {
      k8s.seedSecret({ name: 'partial-secrets', data: { OTHER: 'x' } });
      const value = 'postgresql://app:s3cr3t-password@new-primary:5432/db';
      const err = await rejection(client.replaceSecretKey('partial-secrets', 'DATABASE_URL', value));
      expect(err.status).toBe(422);
      expect(err.message).not.toContain('s3cr3t');
      expect(err.message).not.toContain(Buffer.from(value).toString('base64'));
      expect(k8s.secret('partial-secrets')?.data).toEqual({ OTHER: Buffer.from('x').toString('base64') });
    });

    it('never shows a Secret echoed back by the API server in the error', async () => {
      // The API server's 422 for a patch that does not decode echoes the whole patched object.
      k8s.seedSecret({ name: 'echo-secrets', data: { DATABASE_URL: 'postgresql://app:old-hunter2@p/db' } });
      k8s.failNext(1, 422, { method: 'PATCH' }, 'Secret "echo-secrets" is invalid: data: Invalid value: {"DATABASE_URL":"cG9zdGdyZXNxbDovL2FwcDpvbGQtaHVudGVyMkBwL2Ri"}');
      const err = await rejection(client.replaceSecretKey('echo-secrets', 'DATABASE_URL', 'postgresql://app:new-hunter3@p/db'));
      expect(err.status).toBe(422);
      expect(err.message).not.toContain('cG9zdGdyZXNxbDovL2FwcDpvbGQtaHVudGVyMkBwL2Ri');
      expect(err.message).not.toContain('hunter');
    });
  });

  describe('rollout restart (scenario 1 step 4, scenario 5 step 4)', () => {
    it('patches spec.template annotations restartedAt with a strategic merge patch, like kubectl', async () => {
      k8s.seedDeployment({ name: 'auth-service', replicas: 2 });
      const at = new Date('2026-11-27T17:00:00.789Z');
      const r = await client.rolloutRestart('deployment', 'auth-service', at);
      expect(r).toEqual({ restartedAt: '2026-11-27T17:00:00Z', generation: 2 });
      expect(k8s.requests).toEqual([
        expect.objectContaining({
          method: 'PATCH',
          path: `/apis/apps/v1/namespaces/${NS}/deployments/auth-service`,
          contentType: 'application/strategic-merge-patch+json',
          body: { spec: { template: { metadata: { annotations: { 'kubectl.kubernetes.io/restartedAt': '2026-11-27T17:00:00Z' } } } } },
          status: 200,
        }),
      ]);
    });

    it('restarts a StatefulSet the same way', async () => {
      k8s.seedStatefulSet({ name: 'redis', replicas: 1 });
      const r = await client.rolloutRestart('statefulset', 'redis', new Date('2026-11-27T17:01:00Z'));
      expect(r.generation).toBe(2);
      expect(k8s.requests[0]).toMatchObject({ path: `/apis/apps/v1/namespaces/${NS}/statefulsets/redis`, contentType: 'application/strategic-merge-patch+json' });
      const annotations = (k8s.statefulSet('redis')?.spec as { template: { metadata: { annotations: Record<string, string> } } }).template.metadata.annotations;
      expect(annotations['kubectl.kubernetes.io/restartedAt']).toBe('2026-11-27T17:01:00Z');
    });

    it('404s a workload that does not exist', async () => {
      const err = await rejection(client.rolloutRestart('deployment', 'no-such-service'));
      expect(err.status).toBe(404);
      expect(err.message).toContain('rollout restart deployment lomash-wood/no-such-service');
    });

    it('waitForRollout really waits for the controller, then reports done', async () => {
      const name = 'order-payment-service';
      k8s.seedDeployment({ name, replicas: 3 });
      // The controller observes the restart with the rollout half done (one old replica left) and
      // stays there until the test lets it finish.
      k8s.setRolloutDelay(null);
      await client.rolloutRestart('deployment', name, new Date('2026-11-27T17:00:00Z'));
      const immediately = await client.readRolloutStatus('deployment', name);
      expect(immediately.done).toBe(false);
      let settled = false;
      const waiting = client.waitForRollout('deployment', name, 30_000).finally(() => (settled = true));
      const observed = () => (k8s.deployment(name)?.status as { observedGeneration?: number } | undefined)?.observedGeneration;
      await expect.poll(observed, { timeout: 10_000, interval: 5 }).toBe(2);
      // It polls through the half-done phase without stopping there.
      const gets = () => k8s.requests.filter((r) => r.method === 'GET' && r.status === 200).length;
      const seenHalfDone = gets();
      await expect.poll(gets, { timeout: 10_000, interval: 5 }).toBeGreaterThanOrEqual(seenHalfDone + 2);
      expect(settled).toBe(false);

      // Let the controller finish: a further restart that it rolls out at once (generation 3).
      k8s.setRolloutDelay(1);
      await client.rolloutRestart('deployment', name, new Date('2026-11-27T17:00:01Z'));
      const s = await waiting;
      expect(s).toMatchObject({ done: true, generation: 3, observedGeneration: 3, desiredReplicas: 3, updatedReplicas: 3, readyReplicas: 3 });
    });

    it('waitForRollout waits for a StatefulSet too', async () => {
      k8s.seedStatefulSet({ name: 'redis-wait', replicas: 2 });
      await client.rolloutRestart('statefulset', 'redis-wait');
      const s = await client.waitForRollout('statefulset', 'redis-wait', 5_000);
      expect(s).toMatchObject({ done: true, readyReplicas: 2, updatedReplicas: 2 });
    });

    it('waitForRollout gives up after its timeout with RolloutNotCompleteError', async () => {
      k8s.seedDeployment({ name: 'stuck-service', replicas: 1 });
      k8s.setRolloutDelay(null);
      await client.rolloutRestart('deployment', 'stuck-service');
      const err = await client.waitForRollout('deployment', 'stuck-service', 300).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RolloutNotCompleteError);
      expect((err as RolloutNotCompleteError).code).toBe('DBPILOT_K8S_ROLLOUT_INCOMPLETE');
      expect((err as RolloutNotCompleteError).status?.done).toBe(false);
      // Given up because its own deadline passed (this reason is written only then), with the last status read.
      expect((err as RolloutNotCompleteError).message).toMatch(/^rollout of deployment\/stuck-service did not complete: not done after 300 ms: \S/);
    });

    it('waitForRollout retries transient API errors but not a missing workload', async () => {
      k8s.seedDeployment({ name: 'flaky-service', replicas: 1 });
      await client.rolloutRestart('deployment', 'flaky-service');
      k8s.failNext(2, 503, { method: 'GET' });
      await expect(client.waitForRollout('deployment', 'flaky-service', 5_000)).resolves.toMatchObject({ done: true });
      expect(k8s.requests.filter((r) => r.status === 503)).toHaveLength(2);
      const missing = await client.waitForRollout('deployment', 'ghost-service', 5_000).catch((e: unknown) => e);
      expect(missing).toBeInstanceOf(KubernetesApiError);
      expect((missing as KubernetesApiError).status).toBe(404);
    });
  });

  describe('pods (scenario 1, steps 1, 2, 5)', () => {
    it('listPods sends the label selector and summarises the pods', async () => {
      k8s.seedPod({ name: 'postgres-primary-0', labels: { app: 'postgres', role: 'primary' }, podIP: '10.0.0.5', ready: false, phase: 'Running' });
      k8s.seedPod({ name: 'postgres-replica-0', labels: { app: 'postgres', role: 'replica' }, podIP: '10.0.0.6' });
      const pods = await client.listPods('app=postgres,role=primary');
      expect(pods).toEqual([
        expect.objectContaining({ name: 'postgres-primary-0', labels: { app: 'postgres', role: 'primary' }, phase: 'Running', ready: false, podIP: '10.0.0.5' }),
      ]);
      expect(k8s.requests).toMatchObject([{ method: 'GET', path: `/api/v1/namespaces/${NS}/pods`, query: { labelSelector: 'app=postgres,role=primary' } }]);
      const bad = await rejection(client.listPods('role=(oops'));
      expect(bad.status).toBe(400);
    });

    it('labelPod merge-patches the labels (kubectl label --overwrite); null removes one', async () => {
      k8s.seedPod({ name: 'postgres-fence-0', labels: { app: 'postgres', role: 'primary', stale: 'yes' } });
      const p = await client.labelPod('postgres-fence-0', { role: 'replica', stale: null });
      expect(p.labels).toEqual({ app: 'postgres', role: 'replica' });
      expect(k8s.requests).toEqual([
        expect.objectContaining({
          method: 'PATCH',
          path: `/api/v1/namespaces/${NS}/pods/postgres-fence-0`,
          contentType: 'application/merge-patch+json',
          body: { metadata: { labels: { role: 'replica', stale: null } } },
          status: 200,
        }),
      ]);
      const bad = await rejection(client.labelPod('postgres-fence-0', { role: 'not valid!' }));
      expect(bad.status).toBe(422);
      expect(bad.reason).toBe('Invalid');
    });
  });

  describe('PVCs (scenario 3, step 5)', () => {
    it('readPvc and resizePvc (merge patch of spec.resources.requests.storage)', async () => {
      k8s.seedPvc({ name: 'postgres-data-postgres-primary-0', storage: '50Gi' });
      await expect(client.readPvc('postgres-data-postgres-primary-0')).resolves.toMatchObject({ requestedStorage: '50Gi', capacityStorage: '50Gi', phase: 'Bound', storageClassName: 'standard' });
      const resized = await client.resizePvc('postgres-data-postgres-primary-0', '100Gi');
      expect(resized).toMatchObject({ requestedStorage: '100Gi', capacityStorage: '50Gi' });
      expect(k8s.requests.at(-1)).toMatchObject({
        method: 'PATCH',
        path: `/api/v1/namespaces/${NS}/persistentvolumeclaims/postgres-data-postgres-primary-0`,
        contentType: 'application/merge-patch+json',
        body: { spec: { resources: { requests: { storage: '100Gi' } } } },
        status: 200,
      });
      // The resize is reported by the (simulated) controller later: wait for it, then read it through the client.
      await expect.poll(() => (k8s.pvc('postgres-data-postgres-primary-0')?.status as { capacity?: { storage?: string } }).capacity?.storage, { timeout: 10_000, interval: 10 }).toBe('100Gi');
      await expect(client.readPvc('postgres-data-postgres-primary-0')).resolves.toMatchObject({ requestedStorage: '100Gi', capacityStorage: '100Gi' });
    });

    it('surfaces a shrink as 422 and a non-expandable class as 403', async () => {
      k8s.seedPvc({ name: 'data-shrink', storage: '100Gi' });
      const shrink = await rejection(client.resizePvc('data-shrink', '50Gi'));
      expect(shrink.status).toBe(422);
      expect(shrink.message).toContain('field can not be less than previous value');
      k8s.seedPvc({ name: 'data-fixed', storage: '10Gi', storageClassName: 'gp2-fixed', allowVolumeExpansion: false });
      const fixed = await rejection(client.resizePvc('data-fixed', '20Gi'));
      expect(fixed.status).toBe(403);
      expect(fixed.reason).toBe('Forbidden');
    });
  });

  describe('leases', () => {
    const spec = (holder: string, at: Date, transitions = 0) => ({ holderIdentity: holder, leaseDurationSeconds: 15, acquireTime: at, renewTime: at, leaseTransitions: transitions });

    it('creates, reads, replaces and deletes a Lease with MicroTime (six digits) on the wire', async () => {
      expect(await client.readLease('dbpilot-leader')).toBeNull();
      const at = new Date('2026-11-27T17:00:00.123Z');
      const created = await client.createLease('dbpilot-leader', spec('pod-a', at));
      expect(created).toMatchObject({ name: 'dbpilot-leader', holderIdentity: 'pod-a', leaseDurationSeconds: 15, leaseTransitions: 0 });
      expect(created.renewTime?.toISOString()).toBe('2026-11-27T17:00:00.123Z');
      const post = k8s.requests.find((r) => r.method === 'POST');
      expect(post).toMatchObject({
        path: `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases`,
        contentType: 'application/json',
        body: { kind: 'Lease', metadata: { name: 'dbpilot-leader' }, spec: { holderIdentity: 'pod-a', renewTime: '2026-11-27T17:00:00.123000Z', acquireTime: '2026-11-27T17:00:00.123000Z' } },
      });

      const read = await client.readLease('dbpilot-leader');
      expect(read?.resourceVersion).toBe(created.resourceVersion);
      expect(read?.renewTime).toBeInstanceOf(Date);

      const later = new Date('2026-11-27T17:00:05.000Z');
      const replaced = await client.replaceLease(created, spec('pod-a', later));
      expect(replaced.renewTime?.toISOString()).toBe('2026-11-27T17:00:05.000Z');
      expect(k8s.requests.at(-1)).toMatchObject({ method: 'PUT', body: { metadata: { resourceVersion: created.resourceVersion }, spec: { renewTime: '2026-11-27T17:00:05.000000Z' } } });

      const stale = await rejection(client.replaceLease(created, spec('pod-b', later, 1)));
      expect(stale.status).toBe(409);
      expect(isConflict(stale)).toBe(true);

      const dup = await rejection(client.createLease('dbpilot-leader', spec('pod-b', later)));
      expect(dup.status).toBe(409);
      expect(dup.reason).toBe('AlreadyExists');

      const wrongVersion = await rejection(client.deleteLease('dbpilot-leader', { resourceVersion: created.resourceVersion }));
      expect(wrongVersion.status).toBe(409);
      await client.deleteLease('dbpilot-leader', { resourceVersion: replaced.resourceVersion });
      expect(await client.readLease('dbpilot-leader')).toBeNull();
      expect(formatMicroTime(new Date('2026-11-27T17:00:00Z'))).toBe('2026-11-27T17:00:00.000000Z');
    });

    it('refuses a fractional lease duration before sending anything', async () => {
      await expect(client.createLease('frac', { ...spec('a', new Date()), leaseDurationSeconds: 1.5 })).rejects.toBeInstanceOf(DependencyError);
      expect(k8s.requests).toHaveLength(0);
    });
  });

  describe('errors', () => {
    it('a wrong token is 401 and the error never carries the token', async () => {
      const badConfig = await k8s.writeKubeconfig(dir, { token: 'tok-DO-NOT-LEAK-123', fileName: 'bad-token' });
      const bad = new KubernetesClient({ namespace: NS, kubeconfigPath: badConfig });
      k8s.seedSecret({ name: 'guarded', data: { A: 'x' } });
      const err = await rejection(bad.readSecretKey('guarded', 'A'));
      expect(err.status).toBe(401);
      expect(err.reason).toBe('Unauthorized');
      const everything = JSON.stringify({ message: err.message, stack: err.stack, err, cause: String(err.cause) });
      expect(everything).not.toContain('tok-DO-NOT-LEAK-123');
      expect(everything).not.toContain(k8s.token);
    });

    it('a hung API server is a Timeout error after requestTimeoutMs', async () => {
      k8s.seedSecret({ name: 'slow', data: { A: 'x' } });
      // Held far longer than the client's timeout.
      k8s.delayNext(1, 10_000, { method: 'GET' });
      const err = await rejection(client.readSecretKey('slow', 'A', { timeoutMs: 150 }));
      expect(err.reason).toBe('Timeout');
      expect(err.status).toBeUndefined();
      expect(err.message).toContain('no answer within 150 ms');
      // The server had the request and had not answered: the client's own timeout ended the call.
      expect(k8s.requests.map((r) => [r.method, r.status])).toEqual([['GET', 0]]);
    });

    it('an unreachable API server is a NetworkError without status', async () => {
      const gone = new K8sStandIn({ token: k8s.token });
      await gone.start();
      const cfg = await gone.writeKubeconfig(dir, { fileName: 'gone' });
      await gone.close();
      const c = new KubernetesClient({ namespace: NS, kubeconfigPath: cfg, requestTimeoutMs: 2_000 });
      const err = await rejection(c.listPods('app=x'));
      expect(err.status).toBeUndefined();
      expect(err.reason).toBe('NetworkError');
      expect(err.message).not.toContain(k8s.token);
    });
  });

  describe('configuration', () => {
    const saved = { KUBECONFIG: process.env.KUBECONFIG, KUBERNETES_SERVICE_HOST: process.env.KUBERNETES_SERVICE_HOST };
    afterEach(() => {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    });

    it('uses KUBECONFIG when no path is given', async () => {
      process.env.KUBECONFIG = kubeconfig;
      k8s.seedSecret({ name: 'via-env', data: { A: 'from-env' } });
      const c = new KubernetesClient({ namespace: NS });
      await expect(c.readSecretKey('via-env', 'A')).resolves.toBe('from-env');
    });

    it('refuses to guess when there is no kubeconfig and no cluster', () => {
      delete process.env.KUBECONFIG;
      delete process.env.KUBERNETES_SERVICE_HOST;
      expect(() => new KubernetesClient({ namespace: NS })).toThrow(DependencyError);
      expect(() => new KubernetesClient({ namespace: NS, kubeconfigPath: path.join(dir, 'missing') })).toThrow(/cannot load configuration/);
    });
  });
});

describe('rolloutStatusOf', () => {
  const dep = (generation: number, spec: Record<string, unknown>, status: Record<string, unknown>): V1Deployment =>
    ({ metadata: { name: 'd', generation }, spec: { selector: {}, template: {}, ...spec }, status }) as unknown as V1Deployment;
  const sts = (generation: number, spec: Record<string, unknown>, status: Record<string, unknown>): V1StatefulSet =>
    ({ metadata: { name: 's', generation }, spec: { selector: {}, template: {}, serviceName: 's', ...spec }, status }) as unknown as V1StatefulSet;

  it.each([
    ['spec change not yet observed', dep(2, { replicas: 2 }, { observedGeneration: 1, replicas: 2, updatedReplicas: 2, readyReplicas: 2, availableReplicas: 2 }), false, false],
    ['observed, new replicas not all updated', dep(2, { replicas: 2 }, { observedGeneration: 2, replicas: 3, updatedReplicas: 1, readyReplicas: 2, availableReplicas: 2 }), false, false],
    ['old replicas pending termination', dep(2, { replicas: 2 }, { observedGeneration: 2, replicas: 3, updatedReplicas: 2, readyReplicas: 3, availableReplicas: 3 }), false, false],
    ['updated but not available', dep(2, { replicas: 2 }, { observedGeneration: 2, replicas: 2, updatedReplicas: 2, readyReplicas: 1, availableReplicas: 1 }), false, false],
    ['rolled out', dep(2, { replicas: 2 }, { observedGeneration: 2, replicas: 2, updatedReplicas: 2, readyReplicas: 2, availableReplicas: 2 }), true, false],
    ['zero replicas: counts omitted', dep(3, { replicas: 0 }, { observedGeneration: 3 }), true, false],
    ['replicas unset means 1', dep(1, {}, { observedGeneration: 1 }), false, false],
    [
      'progress deadline exceeded',
      dep(2, { replicas: 1 }, { observedGeneration: 2, replicas: 1, conditions: [{ type: 'Progressing', status: 'False', reason: 'ProgressDeadlineExceeded' }] }),
      false,
      true,
    ],
  ])('deployment: %s', (_name, d, done, failed) => {
    const s = rolloutStatusOf('deployment', d);
    expect(s.done).toBe(done);
    expect(s.failed).toBe(failed);
  });

  it.each([
    ['not observed', sts(2, { replicas: 1 }, { observedGeneration: 1, readyReplicas: 1, updatedReplicas: 1, currentRevision: 'a', updateRevision: 'a' }), false, false],
    ['revisions differ', sts(2, { replicas: 1 }, { observedGeneration: 2, readyReplicas: 1, updatedReplicas: 0, currentRevision: 'a', updateRevision: 'b' }), false, false],
    ['not ready', sts(2, { replicas: 2 }, { observedGeneration: 2, readyReplicas: 1, updatedReplicas: 2, currentRevision: 'b', updateRevision: 'b' }), false, false],
    ['done', sts(2, { replicas: 2 }, { observedGeneration: 2, readyReplicas: 2, updatedReplicas: 2, currentRevision: 'b', updateRevision: 'b' }), true, false],
    ['OnDelete cannot be watched', sts(2, { replicas: 1, updateStrategy: { type: 'OnDelete' } }, { observedGeneration: 2, readyReplicas: 1 }), false, true],
  ])('statefulset: %s', (_name, s0, done, failed) => {
    const s = rolloutStatusOf('statefulset', s0);
    expect(s.done).toBe(done);
    expect(s.failed).toBe(failed);
  });

  it('formats restartedAt as kubectl does (RFC 3339, seconds)', () => {
    expect(restartedAtValue(new Date('2026-11-27T17:00:00.999Z'))).toBe('2026-11-27T17:00:00Z');
  });
});
