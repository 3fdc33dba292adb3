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
  SecretChangedError,
  formatMicroTime,
  isAlreadyExists,
  isConflict,
  isNotFound,
  isSecretChanged,
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

    it('replaceSecretKey sends one JSON patch, remove + add /data/KEY (base64)', async () => {
      k8s.seedSecret({ name: SECRET, data: { DATABASE_URL: 'postgresql://app:pw@postgres-primary:5432/lomash_auth', OTHER: 'kept' } });
      const next = 'postgresql://app:pw@postgres-replica-0:5432/lomash_auth';
      await client.replaceSecretKey(SECRET, 'DATABASE_URL', next);
      expect(k8s.requests).toEqual([
        expect.objectContaining({
          method: 'PATCH',
          path: `/api/v1/namespaces/${NS}/secrets/${SECRET}`,
          contentType: 'application/json-patch+json',
          body: [
            { op: 'remove', path: '/data/DATABASE_URL' },
            { op: 'add', path: '/data/DATABASE_URL', value: Buffer.from(next).toString('base64') },
          ],
          status: 200,
        }),
      ]);
      expect(k8s.secretValue(SECRET, 'DATABASE_URL')).toBe(next);
      expect(k8s.secretValue(SECRET, 'OTHER')).toBe('kept');
    });

    it('replaceSecretKey refuses a key that does not exist (422) and keeps the value out of the error', async () => {
      // The API server's json-patch v4 would let a plain `replace` add the key; `remove` is what refuses.
      k8s.seedSecret({ name: 'partial-secrets', data: { OTHER: 'x' } });
      const value = 'postgresql://app:s3cr3t-password@new-primary:5432/db';
      const err = await rejection(client.replaceSecretKey('partial-secrets', 'DATABASE_URL', value));
      expect(err.status).toBe(422);
      expect(err).not.toBeInstanceOf(SecretChangedError);
      expect(err.message).not.toContain('s3cr3t');
      expect(err.message).not.toContain(Buffer.from(value).toString('base64'));
      expect(k8s.secret('partial-secrets')?.data).toEqual({ OTHER: Buffer.from('x').toString('base64') });
      expect(k8s.requests.at(-1)?.patchError).toBe('Unable to remove nonexistent key: DATABASE_URL: missing value');
      // A Secret with no data at all, likewise.
      k8s.seedSecret({ name: 'empty-secrets' });
      expect((await rejection(client.replaceSecretKey('empty-secrets', 'DATABASE_URL', value))).status).toBe(422);
      expect(k8s.secret('empty-secrets')?.data).toBeUndefined();
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

  describe('patchSecretKeyIfUnchanged (scenario 1, step 4: repoint without overwriting a concurrent edit)', () => {
    const OLD = 'postgresql://app:pw-hunter2@postgres-primary:5432/lomash_auth';
    const NEW = 'postgresql://app:pw-hunter2@postgres-replica-0:5432/lomash_auth';
    const b64 = (v: string): string => Buffer.from(v).toString('base64');
    const secretChanged = async (p: Promise<unknown>): Promise<SecretChangedError> => {
      const err = await rejection(p);
      expect(err).toBeInstanceOf(SecretChangedError);
      return err as SecretChangedError;
    };
    /** No value, plain or base64, in anything the error carries. */
    const expectNoValues = (err: Error, values: string[]): void => {
      const everything = JSON.stringify({ message: err.message, stack: err.stack, err });
      for (const v of values) {
        expect(everything).not.toContain(v);
        expect(everything).not.toContain(b64(v));
      }
      expect(everything).not.toContain('hunter2');
    };

    it('sends test + replace of /data/KEY in one JSON patch and sets the key when it still holds the expected value', async () => {
      k8s.seedSecret({ name: 'cas-secrets', data: { DATABASE_URL: OLD, OTHER: 'kept' } });
      await client.patchSecretKeyIfUnchanged('cas-secrets', 'DATABASE_URL', OLD, NEW);
      expect(k8s.requests).toEqual([
        expect.objectContaining({
          method: 'PATCH',
          path: `/api/v1/namespaces/${NS}/secrets/cas-secrets`,
          contentType: 'application/json-patch+json',
          body: [
            { op: 'test', path: '/data/DATABASE_URL', value: b64(OLD) },
            { op: 'replace', path: '/data/DATABASE_URL', value: b64(NEW) },
          ],
          status: 200,
        }),
      ]);
      expect(k8s.secretValue('cas-secrets', 'DATABASE_URL')).toBe(NEW);
      expect(k8s.secretValue('cas-secrets', 'OTHER')).toBe('kept');
    });

    it('refuses with SecretChangedError when the value is not the expected one, writes nothing and shows no value', async () => {
      const theirs = 'postgresql://app:pw-hunter2@postgres-replica-1:5432/lomash_auth';
      k8s.seedSecret({ name: 'changed-secrets', data: { DATABASE_URL: theirs } });
      const before = k8s.secret('changed-secrets');
      const err = await secretChanged(client.patchSecretKeyIfUnchanged('changed-secrets', 'DATABASE_URL', OLD, NEW));
      expect(err).toBeInstanceOf(KubernetesApiError);
      expect(err).toBeInstanceOf(DependencyError);
      expect(isSecretChanged(err)).toBe(true);
      expect(isConflict(err)).toBe(false);
      expect(err).toMatchObject({ status: 422, reason: 'SecretChanged', secret: 'changed-secrets', key: 'DATABASE_URL', code: 'DBPILOT_DEPENDENCY_FAILED' });
      expect(err.message).toBe(
        `kubernetes: patch secret ${NS}/changed-secrets: HTTP 422 SecretChanged: key "DATABASE_URL" no longer holds the value it was read with (changed or removed meanwhile); nothing was written`,
      );
      expectNoValues(err, [OLD, NEW, theirs]);
      expect(k8s.secret('changed-secrets')).toEqual(before);
      // What came over the wire is the API server's generic 422 for a patch that did not apply.
      expect(k8s.requests.at(-1)).toMatchObject({ status: 422, patchError: 'testing value /data/DATABASE_URL failed: test failed' });
    });

    it('refuses with SecretChangedError when the key is gone, and tells other refusals apart', async () => {
      k8s.seedSecret({ name: 'removed-secrets', data: { OTHER: 'x' } });
      const gone = await secretChanged(client.patchSecretKeyIfUnchanged('removed-secrets', 'DATABASE_URL', OLD, NEW));
      expect(gone.key).toBe('DATABASE_URL');
      expect(k8s.secret('removed-secrets')?.data).toEqual({ OTHER: b64('x') });

      // No such Secret: 404, not "changed".
      const missing = await rejection(client.patchSecretKeyIfUnchanged('no-such-secrets', 'DATABASE_URL', OLD, NEW));
      expect(missing.status).toBe(404);
      expect(isSecretChanged(missing)).toBe(false);

      // An immutable Secret holding the expected value: the patch applies, validation refuses it (422 Invalid, another 422).
      k8s.seedSecret({ name: 'frozen-secrets', data: { DATABASE_URL: OLD }, immutable: true });
      const frozen = await rejection(client.patchSecretKeyIfUnchanged('frozen-secrets', 'DATABASE_URL', OLD, NEW));
      expect(frozen.status).toBe(422);
      expect(frozen.reason).toBe('Invalid');
      expect(isSecretChanged(frozen)).toBe(false);
      expectNoValues(frozen, [OLD, NEW]);
      expect(k8s.secretValue('frozen-secrets', 'DATABASE_URL')).toBe(OLD);

      // A 422 that echoes the Secret (e.g. from something between us and the API server) is withheld, not "changed".
      k8s.seedSecret({ name: 'echo-cas-secrets', data: { DATABASE_URL: OLD } });
      k8s.failNext(1, 422, { method: 'PATCH', resource: 'secrets', name: 'echo-cas-secrets' }, `Secret "echo-cas-secrets" is invalid: data: Invalid value: {"DATABASE_URL":"${b64(OLD)}"}`);
      const echoed = await rejection(client.patchSecretKeyIfUnchanged('echo-cas-secrets', 'DATABASE_URL', OLD, NEW));
      expect(isSecretChanged(echoed)).toBe(false);
      expectNoValues(echoed, [OLD, NEW]);
    });

    it('never overwrites an edit made between its read and its write', async () => {
      // Two dbpilot instances repoint the same Secret: ours read the old value, then theirs wrote first.
      k8s.seedSecret({ name: 'race-secrets', data: { DATABASE_URL: OLD } });
      const other = new KubernetesClient({ namespace: NS, kubeconfigPath: kubeconfig, requestTimeoutMs: 30_000 });
      const theirs = 'postgresql://app:pw-hunter2@postgres-replica-1:5432/lomash_auth';
      const read = await client.readSecretKey('race-secrets', 'DATABASE_URL');
      expect(read).toBe(OLD);
      // Hold our PATCH at the server until the concurrent edit is in (see K8sStandIn.delayNext).
      const held = k8s.delayNext(1, 30_000, { method: 'PATCH', resource: 'secrets', name: 'race-secrets' });
      const ours = client.patchSecretKeyIfUnchanged('race-secrets', 'DATABASE_URL', read, NEW, { timeoutMs: 30_000 });
      const arrived = await held.arrived;
      expect(arrived.body).toEqual([
        { op: 'test', path: '/data/DATABASE_URL', value: b64(OLD) },
        { op: 'replace', path: '/data/DATABASE_URL', value: b64(NEW) },
      ]);
      await other.replaceSecretKey('race-secrets', 'DATABASE_URL', theirs);
      held.release();
      const err = await secretChanged(ours);
      expectNoValues(err, [OLD, NEW, theirs]);
      expect(k8s.secretValue('race-secrets', 'DATABASE_URL')).toBe(theirs);
      // The order at the server: our PATCH arrived first, theirs was served while ours was held, ours was refused.
      expect(k8s.requests.filter((r) => r.method === 'PATCH').map((r) => [r.body && (r.body as { op: string }[])[0]?.op, r.status])).toEqual([
        ['test', 422],
        ['remove', 200],
      ]);
      // Read again and decide: with the new value as expected, the write goes through.
      const now = await client.readSecretKey('race-secrets', 'DATABASE_URL');
      await client.patchSecretKeyIfUnchanged('race-secrets', 'DATABASE_URL', now, NEW);
      expect(k8s.secretValue('race-secrets', 'DATABASE_URL')).toBe(NEW);
    });

    it('matches values by their UTF-8 bytes, whatever the key looks like', async () => {
      k8s.seedSecret({ name: 'odd-secrets', data: { 'a.b_c-d': 'naïve ✓' } });
      await client.patchSecretKeyIfUnchanged('odd-secrets', 'a.b_c-d', 'naïve ✓', 'plain');
      expect(k8s.secretValue('odd-secrets', 'a.b_c-d')).toBe('plain');
      expect(k8s.requests.at(-1)?.body).toMatchObject([{ op: 'test', path: '/data/a.b_c-d' }, { op: 'replace' }]);
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

    it('restarts eight Deployments and waits for each: a held one is waited through, a failed one is reported', async () => {
      const names = ['auth', 'order', 'payment', 'catalog', 'cart', 'search', 'notify', 'report'].map((n) => `${n}-svc8`);
      for (const name of names) k8s.seedDeployment({ name, replicas: 2 });
      k8s.setRolloutOutcome('cart-svc8', 'held');
      k8s.setRolloutOutcome('report-svc8', 'progressDeadlineExceeded');
      const at = new Date('2026-11-27T17:00:00Z');
      for (const name of names) await client.rolloutRestart('deployment', name, at);
      const results = names.map((name) =>
        client.waitForRollout('deployment', name, 30_000).then(
          (s) => ({ name, s, err: undefined as unknown }),
          (err: unknown) => ({ name, s: undefined, err }),
        ),
      );
      const failed = await results[names.indexOf('report-svc8')]!;
      expect(failed.err).toBeInstanceOf(RolloutNotCompleteError);
      expect((failed.err as RolloutNotCompleteError).status).toMatchObject({ failed: true, done: false, observedGeneration: 2 });
      expect((failed.err as Error).message).toBe('rollout of deployment/report-svc8 did not complete: deployment "report-svc8" exceeded its progress deadline');
      // The held one is still being waited for; let its controller finish it.
      await expect.poll(() => k8s.rolloutState('cart-svc8'), { timeout: 10_000, interval: 5 }).toEqual({ phase: 'progressing', scheduled: 0 });
      k8s.setRolloutOutcome('cart-svc8', { completeAfterMs: 0 });
      const all = await Promise.all(results);
      for (const r of all.filter((x) => x.name !== 'report-svc8')) {
        expect(r.err, r.name).toBeUndefined();
        expect(r.s, r.name).toMatchObject({ done: true, generation: 2, updatedReplicas: 2, readyReplicas: 2 });
      }
      k8s.setRolloutOutcome('cart-svc8', null);
      k8s.setRolloutOutcome('report-svc8', null);
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

  describe('readPod (logging the primary pod when a failover is confirmed)', () => {
    it('sums restarts and reports each container\'s state and the Ready condition', async () => {
      k8s.seedPod({
        name: 'postgres-primary-9',
        labels: { app: 'postgres', role: 'primary' },
        podIP: '10.0.0.9',
        containerStatuses: [
          { name: 'postgres', ready: false, restartCount: 4, state: { waiting: { reason: 'CrashLoopBackOff', message: 'back-off 5m0s restarting failed container' } }, lastState: { terminated: { exitCode: 137, reason: 'OOMKilled' } } },
          { name: 'exporter', restartCount: 1 },
          { name: 'init-done', ready: false, state: { terminated: { exitCode: 0, reason: 'Completed' } } },
        ],
      });
      const pod = await client.readPod('postgres-primary-9');
      expect(k8s.requests).toMatchObject([{ method: 'GET', path: `/api/v1/namespaces/${NS}/pods/postgres-primary-9`, status: 200 }]);
      expect(pod).toMatchObject({ name: 'postgres-primary-9', labels: { app: 'postgres', role: 'primary' }, phase: 'Running', ready: false, podIP: '10.0.0.9', nodeName: 'node-1' });
      expect(pod.restartCount).toBe(5);
      expect(pod.containerStates).toEqual({
        postgres: { state: 'waiting', reason: 'CrashLoopBackOff', exitCode: undefined, ready: false, restartCount: 4, lastTerminated: { reason: 'OOMKilled', exitCode: 137 } },
        exporter: { state: 'running', reason: undefined, exitCode: undefined, ready: true, restartCount: 1, lastTerminated: undefined },
        'init-done': { state: 'terminated', reason: 'Completed', exitCode: 0, ready: false, restartCount: 0, lastTerminated: undefined },
      });
      expect(pod.readyCondition).toMatchObject({ status: 'False', reason: 'ContainersNotReady', message: 'containers with unready status: [postgres init-done]' });
      expect(pod.readyCondition?.lastTransitionTime).toBeInstanceOf(Date);
      // Container messages (which can carry the container's output) are not passed on.
      expect(JSON.stringify(pod)).not.toContain('back-off');
    });

    it('follows a status the kubelet rewrites, and 404s a pod that does not exist', async () => {
      k8s.seedPod({ name: 'postgres-primary-8', labels: { role: 'primary' } });
      expect(await client.readPod('postgres-primary-8')).toMatchObject({ ready: true, restartCount: 0, containerStates: { main: { state: 'running' } }, readyCondition: { status: 'True' } });
      k8s.setPodStatus('postgres-primary-8', { phase: 'Failed', containerStatuses: [{ name: 'main', ready: false, restartCount: 1, state: { terminated: { exitCode: 1, reason: 'Error' } } }] });
      expect(await client.readPod('postgres-primary-8')).toMatchObject({
        phase: 'Failed',
        ready: false,
        restartCount: 1,
        containerStates: { main: { state: 'terminated', reason: 'Error', exitCode: 1 } },
        readyCondition: { status: 'False' },
      });
      const missing = await rejection(client.readPod('postgres-primary-404'));
      expect(missing.status).toBe(404);
      expect(missing.message).toContain(`read pod ${NS}/postgres-primary-404`);
    });
  });

  describe('ConfigMaps (the failover intent)', () => {
    const LABELS = { 'app.kubernetes.io/managed-by': 'dbpilot' };

    it('creates, reads and replaces with compare-and-swap on resourceVersion', async () => {
      expect(await client.readConfigMap('dbpilot-failover')).toBeNull();
      const created = await client.createConfigMap('dbpilot-failover', { intent: '{"phase":"confirmed"}' }, LABELS);
      expect(created).toEqual({
        name: 'dbpilot-failover',
        namespace: NS,
        data: { intent: '{"phase":"confirmed"}' },
        labels: LABELS,
        annotations: {},
        resourceVersion: expect.stringMatching(/^\d+$/),
      });
      expect(k8s.requests.at(-1)).toMatchObject({
        method: 'POST',
        path: `/api/v1/namespaces/${NS}/configmaps`,
        contentType: 'application/json',
        body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'dbpilot-failover', namespace: NS, labels: LABELS }, data: { intent: '{"phase":"confirmed"}' } },
        status: 201,
      });
      const read = await client.readConfigMap('dbpilot-failover');
      expect(read).toEqual(created);

      const replaced = await client.replaceConfigMap(read!, { intent: '{"phase":"fenced"}' });
      expect(replaced).toMatchObject({ data: { intent: '{"phase":"fenced"}' }, labels: LABELS });
      expect(Number(replaced.resourceVersion)).toBeGreaterThan(Number(created.resourceVersion));
      expect(k8s.requests.at(-1)).toMatchObject({
        method: 'PUT',
        path: `/api/v1/namespaces/${NS}/configmaps/dbpilot-failover`,
        body: { kind: 'ConfigMap', metadata: { name: 'dbpilot-failover', resourceVersion: created.resourceVersion, labels: LABELS }, data: { intent: '{"phase":"fenced"}' } },
        status: 200,
      });

      // A second writer holding the old version loses: 409 Conflict, and the winner's data stays.
      const stale = await rejection(client.replaceConfigMap(read!, { intent: '{"phase":"aborted"}' }));
      expect(stale.status).toBe(409);
      expect(stale.reason).toBe('Conflict');
      expect(isConflict(stale)).toBe(true);
      expect(isAlreadyExists(stale)).toBe(false);
      expect(k8s.configMap('dbpilot-failover')?.data).toEqual({ intent: '{"phase":"fenced"}' });

      // A second create loses too: 409 AlreadyExists.
      const dup = await rejection(client.createConfigMap('dbpilot-failover', { intent: '{}' }, LABELS));
      expect(dup.status).toBe(409);
      expect(isAlreadyExists(dup)).toBe(true);
      expect(isConflict(dup)).toBe(true);
    });

    it('of two instances racing from the same version exactly one wins', async () => {
      await client.createConfigMap('dbpilot-race', { intent: 'v0' }, LABELS);
      const a = await client.readConfigMap('dbpilot-race');
      const b = await client.readConfigMap('dbpilot-race');
      const outcomes = await Promise.allSettled([client.replaceConfigMap(a!, { intent: 'from-a' }), client.replaceConfigMap(b!, { intent: 'from-b' })]);
      const won = outcomes.filter((o) => o.status === 'fulfilled');
      const lost = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
      expect(won).toHaveLength(1);
      expect(lost).toHaveLength(1);
      expect(isConflict(lost[0]!.reason)).toBe(true);
      const winner = (won[0] as PromiseFulfilledResult<{ data: Record<string, string> }>).value.data.intent;
      expect(k8s.configMap('dbpilot-race')?.data).toEqual({ intent: winner });
    });

    it('keeps labels and annotations on replace, merging changes (null removes)', async () => {
      const created = await client.createConfigMap('dbpilot-meta', { a: '1' }, LABELS, { annotations: { 'dbpilot.io/run': 'r1', 'dbpilot.io/old': 'x' } });
      expect(created.annotations).toEqual({ 'dbpilot.io/run': 'r1', 'dbpilot.io/old': 'x' });
      const next = await client.replaceConfigMap(created, { a: '2' }, { annotations: { 'dbpilot.io/run': 'r2', 'dbpilot.io/old': null }, labels: { extra: 'yes' } });
      expect(next).toMatchObject({ data: { a: '2' }, labels: { ...LABELS, extra: 'yes' }, annotations: { 'dbpilot.io/run': 'r2' } });
      expect(next.annotations).not.toHaveProperty('dbpilot.io/old');
    });

    it('surfaces what the API server refuses: 422 for names, keys and size, 404 for a replace of a deleted one', async () => {
      const badName = await rejection(client.createConfigMap('Dbpilot_Failover', { a: 'b' }));
      expect(badName.status).toBe(422);
      expect(badName.message).toContain('metadata.name');
      const badKey = await rejection(client.createConfigMap('dbpilot-badkey', { 'not ok': 'b' }));
      expect(badKey.status).toBe(422);
      expect(badKey.message).toContain('data[not ok]');
      const tooBig = await rejection(client.createConfigMap('dbpilot-big', { intent: 'x'.repeat(1024 * 1024 + 1) }));
      expect(tooBig.status).toBe(422);
      expect(tooBig.message).toContain('Too long: must have at most 1048576 bytes');

      const created = await client.createConfigMap('dbpilot-deleted', { a: 'b' });
      k8s.clearRequests();
      await fetch(`${k8s.url}/api/v1/namespaces/${NS}/configmaps/dbpilot-deleted`, { method: 'DELETE', headers: { authorization: `Bearer ${k8s.token}` } });
      const gone = await rejection(client.replaceConfigMap(created, { a: 'c' }));
      expect(gone.status).toBe(404);
      expect(await client.readConfigMap('dbpilot-deleted')).toBeNull();
    });

    it('refuses to replace without a resourceVersion (that would be unconditional) before sending anything', async () => {
      const err = await rejection(client.replaceConfigMap({ name: 'x', namespace: NS, data: {}, labels: {}, annotations: {}, resourceVersion: '' }, { a: 'b' }));
      expect(err.reason).toBe('ClientError');
      expect(k8s.requests).toHaveLength(0);
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

  describe('StorageClasses (scenario 3, step 5: may the PVC grow at all)', () => {
    it('readStorageClass reads the cluster-scoped object; an absent allowVolumeExpansion reads as false', async () => {
      k8s.seedStorageClass('gp3-expand', true);
      k8s.seedStorageClass('gp2-unset', null, { provisioner: 'kubernetes.io/aws-ebs' });
      await expect(client.readStorageClass('gp3-expand')).resolves.toEqual({ name: 'gp3-expand', provisioner: 'ebs.csi.aws.com', allowVolumeExpansion: true });
      expect(k8s.requests.at(-1)).toMatchObject({ method: 'GET', path: '/apis/storage.k8s.io/v1/storageclasses/gp3-expand', status: 200 });
      await expect(client.readStorageClass('gp2-unset')).resolves.toEqual({ name: 'gp2-unset', provisioner: 'kubernetes.io/aws-ebs', allowVolumeExpansion: false });
      const missing = await rejection(client.readStorageClass('no-such-class'));
      expect(missing.status).toBe(404);
      expect(missing.message).toContain('storageclasses.storage.k8s.io "no-such-class" not found');
    });

    it('readPvc reports the class the beta annotation names, as the resize admission reads it', async () => {
      k8s.seedPvc({ name: 'data-beta', storage: '10Gi', storageClassName: 'standard' });
      // Set by whoever made the claim (here straight over HTTP): annotations may change on a bound claim.
      const res = await fetch(`${k8s.url}/api/v1/namespaces/${NS}/persistentvolumeclaims/data-beta`, {
        method: 'PATCH',
        headers: { authorization: `Bearer ${k8s.token}`, 'content-type': 'application/merge-patch+json' },
        body: JSON.stringify({ metadata: { annotations: { 'volume.beta.kubernetes.io/storage-class': 'legacy' } } }),
      });
      expect(res.status).toBe(200);
      await expect(client.readPvc('data-beta')).resolves.toMatchObject({ storageClassName: 'legacy' });
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
