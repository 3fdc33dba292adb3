/**
 * The Kubernetes stand-in must refuse what kube-apiserver refuses, or tests written against it prove
 * nothing. Driven here only through the real @kubernetes/client-node, as dbpilot drives it.
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  ApiException,
  AppsV1Api,
  CoordinationV1Api,
  CoreV1Api,
  KubeConfig,
  PatchStrategy,
  V1MicroTime,
  setHeaderOptions,
  type V1Lease,
} from '@kubernetes/client-node';
import { K8sStandIn, mergePatch, microTime, parseLabelSelector, parseQuantity, strategicMergePatch } from './k8s-standin.js';

const NS = 'lomash-wood';

interface Failure {
  code: number;
  status: { kind?: string; status?: string; reason?: string; message?: string; code?: number; details?: { causes?: { field?: string; message?: string; reason?: string }[] } };
}

/** The ApiException a call fails with, its body parsed (client-node keeps it as the raw JSON text). */
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

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `read` until it returns a value other than undefined; throws naming `what` after 10 s. */
async function until<T>(read: () => Promise<T | undefined> | T | undefined, what: string): Promise<T> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const v = await read();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

describe('Kubernetes stand-in', () => {
  const k8s = new K8sStandIn({ defaultNamespace: NS, rolloutDelayMs: 80 });
  let dir = '';
  let core: CoreV1Api;
  let apps: AppsV1Api;
  let coord: CoordinationV1Api;
  let kubeconfig = '';

  beforeAll(async () => {
    await k8s.start();
    dir = await mkdtemp(path.join(tmpdir(), 'dbpilot-k8s-standin-'));
    kubeconfig = await k8s.writeKubeconfig(dir);
    const kc = new KubeConfig();
    kc.loadFromFile(kubeconfig);
    core = kc.makeApiClient(CoreV1Api);
    apps = kc.makeApiClient(AppsV1Api);
    coord = kc.makeApiClient(CoordinationV1Api);
  });
  afterAll(async () => {
    await k8s.close();
    await rm(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    k8s.clearRequests();
    k8s.clearFaults();
    k8s.setRolloutDelay(80);
  });

  describe('authentication', () => {
    it('writes a 0600 kubeconfig that client-node accepts for plain http', async () => {
      expect((await stat(kubeconfig)).mode & 0o777).toBe(0o600);
      k8s.seedSecret({ name: 'auth-ok', data: { a: 'b' } });
      const s = await core.readNamespacedSecret({ name: 'auth-ok', namespace: NS });
      expect(s.data?.a).toBe(Buffer.from('b').toString('base64'));
      expect(k8s.requests[0]?.authorized).toBe(true);
    });

    it('answers a wrong token with 401 and a Status body, and never records the token', async () => {
      const kc = new KubeConfig();
      kc.loadFromFile(await k8s.writeKubeconfig(dir, { token: 'wrong-token', fileName: 'bad-kubeconfig' }));
      const bad = kc.makeApiClient(CoreV1Api);
      k8s.seedSecret({ name: 'auth-guarded', data: { a: 'b' } });
      const err = await bad.readNamespacedSecret({ name: 'auth-guarded', namespace: NS }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ApiException);
      expect((err as ApiException<unknown>).code).toBe(401);
      const rec = k8s.requests.at(-1);
      expect(rec).toMatchObject({ method: 'GET', status: 401, authorized: false });
      expect(JSON.stringify(k8s.requests)).not.toContain(k8s.token);

      // The body itself is a Status (client-node throws it away for 401; read it raw).
      const res = await fetch(`${k8s.url}/api/v1/namespaces/${NS}/secrets/auth-guarded`, { headers: { authorization: 'Bearer nope' } });
      expect(res.status).toBe(401);
      expect(await res.json()).toMatchObject({ kind: 'Status', status: 'Failure', reason: 'Unauthorized', code: 401 });
      const anonymous = await fetch(`${k8s.url}/api/v1/namespaces/${NS}/secrets/auth-guarded`);
      expect(anonymous.status).toBe(401);
    });
  });

  describe('not found', () => {
    it('404s an unknown name with a NotFound Status naming the resource', async () => {
      const f = await failure(core.readNamespacedSecret({ name: 'nope', namespace: NS }));
      expect(f.code).toBe(404);
      expect(f.status).toMatchObject({ kind: 'Status', reason: 'NotFound', message: 'secrets "nope" not found', code: 404 });
      const d = await failure(apps.readNamespacedDeployment({ name: 'nope', namespace: NS }));
      expect(d.status.message).toBe('deployments.apps "nope" not found');
      const l = await failure(coord.readNamespacedLease({ name: 'nope', namespace: NS }));
      expect(l.status.message).toBe('leases.coordination.k8s.io "nope" not found');
    });

    it('treats unknown namespaces as the API server does', async () => {
      k8s.seedSecret({ name: 'ns-check', data: { a: 'b' } });
      const read = await failure(core.readNamespacedSecret({ name: 'ns-check', namespace: 'no-such-ns' }));
      expect(read.code).toBe(404);
      const create = await failure(
        coord.createNamespacedLease({ namespace: 'no-such-ns', body: { metadata: { name: 'x' }, spec: { holderIdentity: 'a' } } }),
      );
      expect(create.code).toBe(404);
      expect(create.status.message).toBe('namespaces "no-such-ns" not found');
      // Listing an unknown namespace is an empty list upstream, not a 404.
      const list = await core.listNamespacedPod({ namespace: 'no-such-ns' });
      expect(list.items).toEqual([]);
    });

    it('404s a path it does not serve', async () => {
      const f = await failure(core.readNamespacedConfigMap({ name: 'x', namespace: NS }));
      expect(f.code).toBe(404);
      expect(f.status.message).toBe('the server could not find the requested resource');
    });
  });

  describe('optimistic concurrency', () => {
    const spec = (holder: string): V1Lease['spec'] => {
      const t = new V1MicroTime();
      return { holderIdentity: holder, leaseDurationSeconds: 15, acquireTime: t, renewTime: t, leaseTransitions: 0 };
    };

    it('bumps resourceVersion on each write and answers a stale PUT with 409 Conflict', async () => {
      const created = await coord.createNamespacedLease({ namespace: NS, body: { metadata: { name: 'occ' }, spec: spec('a') } });
      const rv1 = created.metadata?.resourceVersion ?? '';
      const replaced = await coord.replaceNamespacedLease({ name: 'occ', namespace: NS, body: { metadata: { name: 'occ', resourceVersion: rv1 }, spec: spec('b') } });
      const rv2 = replaced.metadata?.resourceVersion ?? '';
      expect(Number(rv2)).toBeGreaterThan(Number(rv1));
      const stale = await failure(coord.replaceNamespacedLease({ name: 'occ', namespace: NS, body: { metadata: { name: 'occ', resourceVersion: rv1 }, spec: spec('c') } }));
      expect(stale.code).toBe(409);
      expect(stale.status.reason).toBe('Conflict');
      expect(stale.status.message).toContain('the object has been modified');
      expect(k8s.lease('occ')?.spec).toMatchObject({ holderIdentity: 'b' });
    });

    it('refuses a Lease PUT without resourceVersion (leases allow no unconditional update)', async () => {
      await coord.createNamespacedLease({ namespace: NS, body: { metadata: { name: 'occ-norv' }, spec: spec('a') } });
      const f = await failure(coord.replaceNamespacedLease({ name: 'occ-norv', namespace: NS, body: { metadata: { name: 'occ-norv' }, spec: spec('b') } }));
      expect(f.code).toBe(422);
      expect(f.status.message).toContain('must be specified for an update');
    });

    it('answers a create of an existing name with 409 AlreadyExists', async () => {
      await coord.createNamespacedLease({ namespace: NS, body: { metadata: { name: 'occ-dup' }, spec: spec('a') } });
      const f = await failure(coord.createNamespacedLease({ namespace: NS, body: { metadata: { name: 'occ-dup' }, spec: spec('b') } }));
      expect(f.code).toBe(409);
      expect(f.status).toMatchObject({ reason: 'AlreadyExists', message: 'leases.coordination.k8s.io "occ-dup" already exists' });
    });

    it('uses metadata.resourceVersion in a patch as a precondition', async () => {
      k8s.seedPod({ name: 'occ-pod', labels: { role: 'replica' } });
      const f = await failure(
        core.patchNamespacedPod(
          { name: 'occ-pod', namespace: NS, body: { metadata: { resourceVersion: '1', labels: { role: 'primary' } } } },
          setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
        ),
      );
      expect(f.code).toBe(409);
      expect(k8s.pod('occ-pod')?.metadata).toMatchObject({ labels: { role: 'replica' } });
    });

    it('does not bump resourceVersion for a write that changes nothing', async () => {
      k8s.seedPod({ name: 'noop-pod', labels: { role: 'replica' } });
      const before = k8s.pod('noop-pod')?.metadata as { resourceVersion: string };
      const after = await core.patchNamespacedPod(
        { name: 'noop-pod', namespace: NS, body: { metadata: { labels: { role: 'replica' } } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
      expect(after.metadata?.resourceVersion).toBe(before.resourceVersion);
    });

    it('honours delete preconditions', async () => {
      const created = await coord.createNamespacedLease({ namespace: NS, body: { metadata: { name: 'occ-del' }, spec: spec('a') } });
      const f = await failure(coord.deleteNamespacedLease({ name: 'occ-del', namespace: NS, body: { preconditions: { resourceVersion: '1' } } }));
      expect(f.code).toBe(409);
      const ok = await coord.deleteNamespacedLease({ name: 'occ-del', namespace: NS, body: { preconditions: { resourceVersion: created.metadata?.resourceVersion ?? '' } } });
      expect(ok.status).toBe('Success');
      expect(k8s.lease('occ-del')).toBeUndefined();
    });
  });

  describe('patch content types', () => {
    it('answers an unknown patch content type with 415', async () => {
      k8s.seedPod({ name: 'ct-pod' });
      for (const ct of ['text/plain', 'application/json', PatchStrategy.ServerSideApply]) {
        const f = await failure(core.patchNamespacedPod({ name: 'ct-pod', namespace: NS, body: { metadata: { labels: { a: 'b' } } } }, setHeaderOptions('Content-Type', ct)));
        expect(f.code, ct).toBe(415);
        expect(f.status.reason).toBe('UnsupportedMediaType');
      }
      expect(k8s.requests.map((r) => r.contentType)).toEqual(['text/plain', 'application/json', 'application/apply-patch+yaml']);
    });

    it('sends JSON patch by default and applies it (RFC 6902)', async () => {
      k8s.seedSecret({ name: 'jp', data: { DATABASE_URL: 'postgres://old' } });
      const v = Buffer.from('postgres://new').toString('base64');
      await core.patchNamespacedSecret({ name: 'jp', namespace: NS, body: [{ op: 'replace', path: '/data/DATABASE_URL', value: v }] });
      expect(k8s.secretValue('jp', 'DATABASE_URL')).toBe('postgres://new');
      expect(k8s.requests[0]).toMatchObject({ method: 'PATCH', contentType: 'application/json-patch+json' });
    });

    it('fails a JSON patch whose test op fails with 422 and changes nothing', async () => {
      k8s.seedSecret({ name: 'jp-test', data: { DATABASE_URL: 'postgres://old' } });
      const before = k8s.secret('jp-test');
      const f = await failure(
        core.patchNamespacedSecret({
          name: 'jp-test',
          namespace: NS,
          body: [
            { op: 'test', path: '/data/DATABASE_URL', value: Buffer.from('postgres://something-else').toString('base64') },
            { op: 'replace', path: '/data/DATABASE_URL', value: Buffer.from('postgres://new').toString('base64') },
          ],
        }),
      );
      expect(f.code).toBe(422);
      expect(f.status.reason).toBe('Invalid');
      expect(k8s.secret('jp-test')).toEqual(before);
    });

    it('fails a JSON patch replace of a missing path with 422', async () => {
      k8s.seedSecret({ name: 'jp-missing', data: { A: 'x' } });
      const f = await failure(core.patchNamespacedSecret({ name: 'jp-missing', namespace: NS, body: [{ op: 'replace', path: '/data/B', value: 'eA==' }] }));
      expect(f.code).toBe(422);
    });

    it('refuses a JSON patch body that is not a list with 400', async () => {
      k8s.seedSecret({ name: 'jp-shape', data: { A: 'x' } });
      const f = await failure(core.patchNamespacedSecret({ name: 'jp-shape', namespace: NS, body: { data: { A: 'eQ==' } } }));
      expect(f.code).toBe(400);
    });

    it('applies merge patch (null deletes) and strategic merge patch (containers merged by name)', async () => {
      k8s.seedPod({ name: 'mp-pod', labels: { role: 'primary', app: 'postgres' } });
      const p = await core.patchNamespacedPod(
        { name: 'mp-pod', namespace: NS, body: { metadata: { labels: { role: 'replica', app: null } } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
      expect(p.metadata?.labels).toEqual({ role: 'replica' });
      expect(mergePatch({ a: [1, 2], b: { c: 1 } }, { a: [3], b: { d: 2 } })).toEqual({ a: [3], b: { c: 1, d: 2 } });
      expect(
        strategicMergePatch({ containers: [{ name: 'a', image: '1' }, { name: 'b', image: '1' }] }, { containers: [{ name: 'b', image: '2' }] }),
      ).toEqual({ containers: [{ name: 'a', image: '1' }, { name: 'b', image: '2' }] });
    });
  });

  describe('decoding and validation', () => {
    it('refuses Secret data that is not base64: 422 through a patch, 400 through a create', async () => {
      k8s.seedSecret({ name: 'b64', data: { DATABASE_URL: 'postgres://old' } });
      const jp = await failure(core.patchNamespacedSecret({ name: 'b64', namespace: NS, body: [{ op: 'replace', path: '/data/DATABASE_URL', value: 'postgres://not-base64' }] }));
      expect(jp.code).toBe(422);
      expect(jp.status.message).toContain('illegal base64 data');
      const mp = await failure(
        core.patchNamespacedSecret({ name: 'b64', namespace: NS, body: { data: { DATABASE_URL: 'abc' } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch)),
      );
      expect(mp.code).toBe(422);
      expect(k8s.secretValue('b64', 'DATABASE_URL')).toBe('postgres://old');
      const create = await failure(core.createNamespacedSecret({ namespace: NS, body: { metadata: { name: 'b64-new' }, data: { K: '***' } } }));
      expect(create.code).toBe(400);
      expect(create.status.message).toContain('Secret in version "v1" cannot be handled as a Secret');
    });

    it('merges stringData into data, and refuses invalid data keys', async () => {
      const s = await core.createNamespacedSecret({ namespace: NS, body: { metadata: { name: 'sd' }, stringData: { PLAIN: 'text' } } });
      expect(s.data?.PLAIN).toBe(Buffer.from('text').toString('base64'));
      expect(s.stringData).toBeUndefined();
      const f = await failure(core.createNamespacedSecret({ namespace: NS, body: { metadata: { name: 'sd-bad' }, data: { 'bad key': 'eA==' } } }));
      expect(f.code).toBe(422);
      expect(f.status.details?.causes?.[0]?.field).toBe('data[bad key]');
    });

    it('refuses Lease times that are not MicroTime (six fractional digits) with 400, as the API server does', async () => {
      // What client-node's types allow: a plain Date. It serializes with three digits.
      const plainDate = new Date('2026-11-27T17:00:00.123Z');
      const threeDigits = await failure(
        coord.createNamespacedLease({ namespace: NS, body: { metadata: { name: 'mt-3' }, spec: { holderIdentity: 'a', renewTime: plainDate, acquireTime: plainDate } } }),
      );
      expect(threeDigits.code).toBe(400);
      expect(threeDigits.status.reason).toBe('BadRequest');
      expect(threeDigits.status.message).toContain('Lease in version "v1" cannot be handled as a Lease');
      expect(threeDigits.status.message).toContain('2006-01-02T15:04:05.000000Z07:00');
      expect(k8s.requests.at(-1)?.body).toMatchObject({ spec: { renewTime: '2026-11-27T17:00:00.123Z' } });

      const noFraction = await failure(
        coord.createNamespacedLease({ namespace: NS, body: { metadata: { name: 'mt-0' }, spec: { holderIdentity: 'a', renewTime: '2026-11-27T17:00:00Z' as unknown as V1MicroTime } } }),
      );
      expect(noFraction.code).toBe(400);

      const ok = await coord.createNamespacedLease({
        namespace: NS,
        body: { metadata: { name: 'mt-6' }, spec: { holderIdentity: 'a', renewTime: '2026-11-27T17:00:00.123456Z' as unknown as V1MicroTime, leaseDurationSeconds: 15 } },
      });
      expect(ok.metadata?.name).toBe('mt-6');
      // client-node 1.4.0 hands MicroTime back as the raw string, whatever its types say.
      expect(ok.spec?.renewTime as unknown).toBe('2026-11-27T17:00:00.123456Z');
      expect(microTime(new Date('2026-11-27T17:00:00.123Z'))).toBe('2026-11-27T17:00:00.123000Z');
    });

    it('refuses a fractional leaseDurationSeconds (int32) and a non-positive one', async () => {
      const frac = await failure(coord.createNamespacedLease({ namespace: NS, body: { metadata: { name: 'ld-frac' }, spec: { holderIdentity: 'a', leaseDurationSeconds: 1.5 } } }));
      expect(frac.code).toBe(400);
      const zero = await failure(coord.createNamespacedLease({ namespace: NS, body: { metadata: { name: 'ld-zero' }, spec: { holderIdentity: 'a', leaseDurationSeconds: 0 } } }));
      expect(zero.code).toBe(422);
    });

    it('refuses invalid label values and pod spec changes with 422', async () => {
      k8s.seedPod({ name: 'val-pod', labels: { role: 'replica' } });
      const label = await failure(
        core.patchNamespacedPod({ name: 'val-pod', namespace: NS, body: { metadata: { labels: { role: 'not a valid value!' } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch)),
      );
      expect(label.code).toBe(422);
      const spec = await failure(
        core.patchNamespacedPod({ name: 'val-pod', namespace: NS, body: { spec: { nodeName: 'elsewhere' } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch)),
      );
      expect(spec.code).toBe(422);
      expect(spec.status.message).toContain('pod updates may not change fields');
    });
  });

  describe('PersistentVolumeClaims', () => {
    const resize = (name: string, storage: string): Promise<unknown> =>
      core.patchNamespacedPersistentVolumeClaim(
        { name, namespace: NS, body: { spec: { resources: { requests: { storage } } } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );

    it('refuses to shrink with 422 "field can not be less than previous value"', async () => {
      k8s.seedPvc({ name: 'pvc-shrink', storage: '100Gi' });
      const f = await failure(resize('pvc-shrink', '50Gi'));
      expect(f.code).toBe(422);
      expect(f.status.message).toBe('PersistentVolumeClaim "pvc-shrink" is invalid: spec.resources.requests.storage: Forbidden: field can not be less than previous value');
      expect(f.status.details?.causes?.[0]).toMatchObject({ reason: 'FieldValueForbidden', field: 'spec.resources.requests.storage' });
      // Same size in other units is not a shrink: 100Gi = 102400Mi.
      await resize('pvc-shrink', '102400Mi');
    });

    it('grows only if the storage class allows expansion (403 otherwise)', async () => {
      k8s.seedPvc({ name: 'pvc-fixed', storage: '10Gi', storageClassName: 'fixed', allowVolumeExpansion: false });
      const f = await failure(resize('pvc-fixed', '20Gi'));
      expect(f.code).toBe(403);
      expect(f.status.message).toContain('the storageclass that provisions the pvc must support resize');
    });

    it('grows an expandable claim; capacity follows after the resize delay', async () => {
      k8s.seedPvc({ name: 'pvc-grow', storage: '10Gi' });
      const p = (await resize('pvc-grow', '20Gi')) as { spec: { resources: { requests: { storage: string } } }; status: { capacity: { storage: string } } };
      expect(p.spec.resources.requests.storage).toBe('20Gi');
      expect(p.status.capacity.storage).toBe('10Gi');
      const later = await until(async () => {
        const c = await core.readNamespacedPersistentVolumeClaim({ name: 'pvc-grow', namespace: NS });
        return c.status?.capacity?.storage === '10Gi' ? undefined : c;
      }, 'the new capacity');
      expect(later.status?.capacity?.storage).toBe('20Gi');
      expect(later.spec?.resources?.requests?.storage).toBe('20Gi');
    });

    it('refuses a storage value that is not a quantity', async () => {
      k8s.seedPvc({ name: 'pvc-q', storage: '10Gi' });
      expect((await failure(resize('pvc-q', '20 gigs'))).code).toBe(422);
      expect(parseQuantity('1Gi')).toBe(2 ** 30);
      expect(parseQuantity('1.5G')).toBe(1.5e9);
      expect(parseQuantity('1e3')).toBe(1000);
      expect(parseQuantity('100gi')).toBeNull();
    });
  });

  describe('workloads', () => {
    const restart = (kind: 'deployment' | 'statefulset', name: string, at: string): Promise<{ metadata?: { generation?: number } }> => {
      const body = { spec: { template: { metadata: { annotations: { 'kubectl.kubernetes.io/restartedAt': at } } } } };
      const o = setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch);
      return kind === 'deployment' ? apps.patchNamespacedDeployment({ name, namespace: NS, body }, o) : apps.patchNamespacedStatefulSet({ name, namespace: NS, body }, o);
    };

    it('bumps generation on a template change; the status lags, then reports the rollout done', async () => {
      k8s.seedDeployment({ name: 'wl-dep', replicas: 2 });
      // The controller observes the change and then holds the rollout half done: the intermediate
      // state stays put for as long as the test looks at it.
      k8s.setRolloutDelay(null);
      const patched = (await restart('deployment', 'wl-dep', '2026-11-27T17:00:00Z')) as { metadata?: { generation?: number }; status?: { observedGeneration?: number } };
      expect(patched.metadata?.generation).toBe(2);
      // The answer to the write: the controller has not observed it yet.
      expect(patched.status?.observedGeneration).toBe(1);
      const read = () => apps.readNamespacedDeployment({ name: 'wl-dep', namespace: NS });
      const mid = await until(async () => {
        const d = await read();
        return d.status?.observedGeneration === 2 ? d : undefined;
      }, 'the controller to observe generation 2');
      expect(mid.status?.updatedReplicas).toBe(1); // observed, but not rolled out: a naive check would stop here
      expect(mid.status?.replicas).toBe(3); // the surge pod next to the old one

      // Now a controller that finishes: the next change is observed and rolled out.
      k8s.setRolloutDelay(20);
      await restart('deployment', 'wl-dep', '2026-11-27T17:00:01Z');
      const done = await until(async () => {
        const d = await read();
        return d.status?.observedGeneration === 3 && d.status.updatedReplicas === 2 ? d : undefined;
      }, 'the rollout of generation 3 to be done');
      expect(done.status).toMatchObject({ observedGeneration: 3, replicas: 2, updatedReplicas: 2, readyReplicas: 2, availableReplicas: 2 });
      expect(done.spec?.template.metadata?.annotations?.['kubectl.kubernetes.io/restartedAt']).toBe('2026-11-27T17:00:01Z');
    });

    it('does the same for StatefulSets, with revisions', async () => {
      type StsStatus = { observedGeneration: number; currentRevision: string; updateRevision: string; readyReplicas: number };
      const status = () => k8s.statefulSet('wl-sts')?.status as StsStatus;
      k8s.seedStatefulSet({ name: 'wl-sts', replicas: 1 });
      const before = status();
      k8s.setRolloutDelay(null);
      await restart('statefulset', 'wl-sts', '2026-11-27T17:00:00Z');
      const mid = await until(() => (status().observedGeneration === 2 ? status() : undefined), 'the controller to observe generation 2');
      expect(mid.currentRevision).toBe(before.currentRevision);
      expect(mid.updateRevision).not.toBe(before.currentRevision);

      k8s.setRolloutDelay(20);
      await restart('statefulset', 'wl-sts', '2026-11-27T17:00:01Z');
      const done = await until(() => {
        const st = status();
        return st.observedGeneration === 3 && st.currentRevision === st.updateRevision ? st : undefined;
      }, 'the rollout of generation 3 to be done');
      expect(done.updateRevision).not.toBe(mid.updateRevision);
      expect(done.readyReplicas).toBe(1);
    });

    it('keeps generation for a no-op patch, and ignores status written through the main resource', async () => {
      k8s.seedDeployment({ name: 'wl-noop', replicas: 1, templateAnnotations: { 'kubectl.kubernetes.io/restartedAt': '2026-11-27T17:00:00Z' } });
      const same = await restart('deployment', 'wl-noop', '2026-11-27T17:00:00Z');
      expect(same.metadata?.generation).toBe(1);
      await apps.patchNamespacedDeployment(
        { name: 'wl-noop', namespace: NS, body: { status: { observedGeneration: 99 } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
      expect((k8s.deployment('wl-noop')?.status as { observedGeneration: number }).observedGeneration).toBe(1);
    });

    it('never finishes a rollout while the rollout delay is null', async () => {
      k8s.seedDeployment({ name: 'wl-stuck', replicas: 1 });
      k8s.setRolloutDelay(null);
      await restart('deployment', 'wl-stuck', '2026-11-27T17:00:00Z');
      const s = await until(async () => {
        const st = (await apps.readNamespacedDeployment({ name: 'wl-stuck', namespace: NS })).status;
        return st?.observedGeneration === 2 ? st : undefined;
      }, 'the controller to observe generation 2');
      expect(s.updatedReplicas ?? 0).toBeLessThan(1);
    });

    it('lists with label selectors, and refuses a malformed one with 400', async () => {
      k8s.seedPod({ name: 'sel-a', labels: { app: 'pg-sel', role: 'primary' } });
      k8s.seedPod({ name: 'sel-b', labels: { app: 'pg-sel', role: 'replica' } });
      k8s.seedPod({ name: 'sel-c', labels: { app: 'pg-sel' } });
      const names = async (labelSelector: string): Promise<string[]> =>
        (await core.listNamespacedPod({ namespace: NS, labelSelector })).items.map((p) => p.metadata?.name ?? '');
      expect(await names('app=pg-sel,role=primary')).toEqual(['sel-a']);
      expect(await names('app=pg-sel,role in (primary, replica)')).toEqual(['sel-a', 'sel-b']);
      expect(await names('app=pg-sel,!role')).toEqual(['sel-c']);
      expect(await names('app=pg-sel,role!=primary')).toEqual(['sel-b', 'sel-c']);
      expect((await failure(core.listNamespacedPod({ namespace: NS, labelSelector: 'role=(x' }))).code).toBe(400);
      expect(k8s.requests[0]).toMatchObject({ method: 'GET', path: `/api/v1/namespaces/${NS}/pods`, query: { labelSelector: 'app=pg-sel,role=primary' } });
      expect(() => parseLabelSelector('a in (b,c),d')).not.toThrow();
    });
  });

  describe('recording and fault injection', () => {
    it('records method, path, query, content type, parsed body and status', async () => {
      k8s.seedPod({ name: 'rec-pod', labels: { role: 'replica' } });
      await core.patchNamespacedPod(
        { name: 'rec-pod', namespace: NS, body: { metadata: { labels: { role: 'primary' } } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
      expect(k8s.requests).toEqual([
        {
          method: 'PATCH',
          path: `/api/v1/namespaces/${NS}/pods/rec-pod`,
          query: {},
          contentType: 'application/merge-patch+json',
          body: { metadata: { labels: { role: 'primary' } } },
          status: 200,
          authorized: true,
          injected: false,
        },
      ]);
    });

    it('fails the next n matching requests with the given status, then serves normally', async () => {
      k8s.seedSecret({ name: 'fault', data: { a: 'b' } });
      k8s.failNext(2, 503, { method: 'GET', path: '/secrets/fault' });
      expect((await failure(core.readNamespacedSecret({ name: 'fault', namespace: NS }))).code).toBe(503);
      expect((await failure(core.readNamespacedSecret({ name: 'fault', namespace: NS }))).status.reason).toBe('ServiceUnavailable');
      await core.readNamespacedSecret({ name: 'fault', namespace: NS });
      expect(k8s.requests.map((r) => [r.status, r.injected])).toEqual([
        [503, true],
        [503, true],
        [200, false],
      ]);
    });

    it('matches faults on the body, and delays responses', async () => {
      const t = new V1MicroTime();
      k8s.failNext(1, 500, { method: 'POST', when: (r) => (r.body as { spec?: { holderIdentity?: string } }).spec?.holderIdentity === 'victim' });
      expect((await failure(coord.createNamespacedLease({ namespace: NS, body: { metadata: { name: 'fb-1' }, spec: { holderIdentity: 'victim', renewTime: t } } }))).code).toBe(500);
      await coord.createNamespacedLease({ namespace: NS, body: { metadata: { name: 'fb-2' }, spec: { holderIdentity: 'other', renewTime: t } } });
      k8s.clearRequests();
      k8s.delayNext(1, 120, { method: 'GET' });
      let answered = false;
      const read = coord.readNamespacedLease({ name: 'fb-2', namespace: NS }).finally(() => (answered = true));
      // The stand-in runs in this process: polled every millisecond, the held request is seen before
      // its 120 ms delay can end.
      while (k8s.requests.length === 0) await sleep(1);
      expect(k8s.requests[0]).toMatchObject({ method: 'GET', status: 0 }); // received, held
      expect(answered).toBe(false);
      // Then served normally.
      expect((await read).spec?.holderIdentity).toBe('other');
      expect(k8s.requests.map((r) => [r.method, r.status, r.injected])).toEqual([['GET', 200, false]]);
    });
  });
});

describe('Kubernetes stand-in lifecycle', () => {
  let standin: K8sStandIn | undefined;
  afterEach(async () => {
    await standin?.close();
  });

  it('listens on 127.0.0.1 on a fresh port and stops accepting after close', async () => {
    standin = new K8sStandIn();
    const url = await standin.start();
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    await standin.close();
    await expect(fetch(`${url}/api/v1/namespaces/default/secrets/x`)).rejects.toThrow();
    standin = undefined;
  });
});
