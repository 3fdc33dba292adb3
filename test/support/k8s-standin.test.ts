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
  StorageV1Api,
  V1MicroTime,
  setHeaderOptions,
  type V1Lease,
} from '@kubernetes/client-node';
import {
  JsonPatchApplyError,
  K8sStandIn,
  PATCH_NOT_APPLIED_MESSAGE,
  applyJsonPatch,
  mergePatch,
  microTime,
  parseLabelSelector,
  parseQuantity,
  strategicMergePatch,
} from './k8s-standin.js';

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
  let storage: StorageV1Api;
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
    storage = kc.makeApiClient(StorageV1Api);
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
      const f = await failure(core.readNamespacedService({ name: 'x', namespace: NS }));
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

    // What kube-apiserver sends for any JSON patch that does not apply: handlers/patch.go applyJSPatch
    // → errors.NewGenericServerResponse(422, "", GroupResource{}, "", err.Error(), 0, false): reason
    // Invalid, a fixed message, and no causes (json-patch's error text is dropped); empty details.
    const NOT_APPLIED = {
      kind: 'Status',
      apiVersion: 'v1',
      metadata: {},
      status: 'Failure',
      message: 'the server rejected our request due to an error in our request',
      reason: 'Invalid',
      details: {},
      code: 422,
    };
    const b64 = (v: string): string => Buffer.from(v).toString('base64');
    const jsonPatch = (name: string, body: unknown[]) => core.patchNamespacedSecret({ name, namespace: NS, body });

    it('fails a JSON patch whose test op fails with exactly the API server\'s 422, and changes nothing', async () => {
      k8s.seedSecret({ name: 'jp-test', data: { DATABASE_URL: 'postgres://old' } });
      const before = k8s.secret('jp-test');
      const f = await failure(
        jsonPatch('jp-test', [
          { op: 'test', path: '/data/DATABASE_URL', value: b64('postgres://something-else') },
          { op: 'replace', path: '/data/DATABASE_URL', value: b64('postgres://new') },
        ]),
      );
      expect(f.code).toBe(422);
      expect(f.status).toEqual(NOT_APPLIED);
      expect(PATCH_NOT_APPLIED_MESSAGE).toBe(NOT_APPLIED.message);
      expect(k8s.secret('jp-test')).toEqual(before);
      // Which operation failed is known to the stand-in only (the server does not say), and names no value.
      expect(k8s.requests.at(-1)).toMatchObject({ status: 422, patchError: 'testing value /data/DATABASE_URL failed: test failed' });
    });

    it('applies test + replace when the value is the one tested', async () => {
      k8s.seedSecret({ name: 'jp-cas', data: { DATABASE_URL: 'postgres://old', OTHER: 'kept' } });
      await jsonPatch('jp-cas', [
        { op: 'test', path: '/data/DATABASE_URL', value: b64('postgres://old') },
        { op: 'replace', path: '/data/DATABASE_URL', value: b64('postgres://new') },
      ]);
      expect(k8s.secretValue('jp-cas', 'DATABASE_URL')).toBe('postgres://new');
      expect(k8s.secretValue('jp-cas', 'OTHER')).toBe('kept');
    });

    it('fails a test of a missing key, and of a key in a Secret without data, the same way', async () => {
      k8s.seedSecret({ name: 'jp-test-missing', data: { A: 'x' } });
      const missingKey = await failure(jsonPatch('jp-test-missing', [{ op: 'test', path: '/data/B', value: b64('x') }]));
      expect(missingKey.status).toEqual(NOT_APPLIED);
      k8s.seedSecret({ name: 'jp-test-nodata' });
      const noData = await failure(jsonPatch('jp-test-nodata', [{ op: 'test', path: '/data/B', value: b64('x') }]));
      expect(noData.status).toEqual(NOT_APPLIED);
      expect(k8s.requests.at(-1)?.patchError).toBe('test operation does not apply: is missing path: /data/B: missing value');
    });

    it('lets replace ADD a key the Secret lacks, as json-patch v4 on the API server does; fails only without data', async () => {
      // gopkg.in/evanphx/json-patch.v4: partialDoc.get reports no error for a missing key, so
      // `replace` sets it (RFC 6902 says it must fail; v5 fixed that, the API server still uses v4).
      k8s.seedSecret({ name: 'jp-missing', data: { A: 'x' } });
      await jsonPatch('jp-missing', [{ op: 'replace', path: '/data/B', value: 'eA==' }]);
      expect(k8s.secretValue('jp-missing', 'B')).toBe('x');
      // A Secret without data has no /data to walk into (empty maps are omitted: omitempty).
      k8s.seedSecret({ name: 'jp-nodata', data: {} });
      expect(k8s.secret('jp-nodata')?.data).toBeUndefined();
      const f = await failure(jsonPatch('jp-nodata', [{ op: 'replace', path: '/data/B', value: 'eA==' }]));
      expect(f.status).toEqual(NOT_APPLIED);
      // remove is what fails on a missing key.
      const rm = await failure(jsonPatch('jp-missing', [{ op: 'remove', path: '/data/C' }]));
      expect(rm.status).toEqual(NOT_APPLIED);
      expect(k8s.requests.at(-1)?.patchError).toBe('Unable to remove nonexistent key: C: missing value');
      await jsonPatch('jp-missing', [
        { op: 'remove', path: '/data/B' },
        { op: 'add', path: '/data/B', value: b64('y') },
      ]);
      expect(k8s.secretValue('jp-missing', 'B')).toBe('y');
    });

    it('refuses a JSON patch whose operations are not objects with 400, and an unknown op with the 422', async () => {
      k8s.seedSecret({ name: 'jp-ops', data: { A: 'x' } });
      const f = await failure(jsonPatch('jp-ops', ['replace']));
      expect(f.code).toBe(400);
      expect(f.status.message).toBe('json: cannot unmarshal string into Go value of type jsonpatch.Operation');
      const unknown = await failure(jsonPatch('jp-ops', [{ op: 'upsert', path: '/data/A', value: 'eQ==' }]));
      expect(unknown.status).toEqual(NOT_APPLIED);
      expect(k8s.requests.at(-1)?.patchError).toBe('Unexpected kind: upsert');
    });

    it('applies JSON patches with json-patch v4 semantics (arrays, escapes, move, copy, test of null)', () => {
      const doc = { a: [1, 2, 3], 'x/y': { '~z': 1 }, n: null, s: 'str' };
      const apply = (ops: unknown[]) => applyJsonPatch(doc, ops);
      const fails = (ops: unknown[]): string => {
        try {
          apply(ops);
        } catch (err) {
          expect(err).toBeInstanceOf(JsonPatchApplyError);
          return (err as Error).message;
        }
        throw new Error('expected the patch not to apply');
      };
      expect(apply([{ op: 'add', path: '/a/-', value: 4 }])).toMatchObject({ a: [1, 2, 3, 4] });
      expect(apply([{ op: 'add', path: '/a/0', value: 0 }])).toMatchObject({ a: [0, 1, 2, 3] });
      expect(apply([{ op: 'remove', path: '/a/-1' }])).toMatchObject({ a: [1, 2] }); // negative indices count from the end
      expect(apply([{ op: 'replace', path: '/x~1y/~0z', value: 2 }])).toMatchObject({ 'x/y': { '~z': 2 } });
      expect(apply([{ op: 'move', from: '/s', path: '/t' }])).toEqual({ a: [1, 2, 3], 'x/y': { '~z': 1 }, n: null, t: 'str' });
      expect(apply([{ op: 'copy', from: '/missing', path: '/c' }])).toMatchObject({ c: null }); // v4: copy of nothing adds null
      expect(apply([{ op: 'test', path: '/missing', value: null }])).toEqual(doc); // a missing member tests equal to null
      expect(apply([{ op: 'test', path: '/n', value: null }])).toEqual(doc);
      expect(apply([{ op: 'replace', path: '', value: { whole: true } }])).toEqual({ whole: true });
      expect(fails([{ op: 'add', path: '', value: {} }])).toBe('add operation does not apply: doc is missing path: "": missing value');
      expect(fails([{ op: 'add', path: '/a/5', value: 0 }])).toBe('Unable to access invalid index: 5: invalid index referenced');
      expect(fails([{ op: 'replace', path: '/a/3', value: 0 }])).toBe('replace operation does not apply: doc is missing key: /a/3: missing value');
      expect(fails([{ op: 'add', path: '/s/x', value: 0 }])).toContain('doc is missing path'); // cannot walk into a string
      expect(fails([{ op: 'move', from: '/missing', path: '/t' }])).toBe('Unable to remove nonexistent key: missing: missing value');
      expect(fails([{ op: 'test', path: '/a', value: [1, 2] }])).toBe('testing value /a failed: test failed');
      expect(fails([{ op: 'test', path: '/s' }])).toBe('testing value /s failed: test failed'); // test without a value
      expect(fails([{ op: 'replace', value: 1 }])).toBe('replace operation failed to decode path: missing value');
      // Nothing is applied in place.
      expect(doc).toEqual({ a: [1, 2, 3], 'x/y': { '~z': 1 }, n: null, s: 'str' });
    });

    it('patches the object as the API server holds it: empty labels are absent, Secret data is canonical base64', async () => {
      k8s.seedPod({ name: 'jp-nolabels' });
      expect(k8s.pod('jp-nolabels')?.metadata).not.toHaveProperty('labels');
      const addLabel = (value: unknown[]) => core.patchNamespacedPod({ name: 'jp-nolabels', namespace: NS, body: value }, setHeaderOptions('Content-Type', PatchStrategy.JsonPatch));
      expect((await failure(addLabel([{ op: 'add', path: '/metadata/labels/role', value: 'replica' }]))).status).toEqual(NOT_APPLIED);
      await addLabel([{ op: 'add', path: '/metadata/labels', value: { role: 'replica' } }]);
      expect(k8s.pod('jp-nolabels')?.metadata).toMatchObject({ labels: { role: 'replica' } });

      // []byte round trip: base64 with line breaks is stored without them, so a test must use the canonical form.
      const created = await core.createNamespacedSecret({ namespace: NS, body: { metadata: { name: 'jp-canonical' }, data: { K: 'cG9z\r\ndGdy' } } });
      expect(created.data?.K).toBe('cG9zdGdy');
      await jsonPatch('jp-canonical', [{ op: 'test', path: '/data/K', value: 'cG9zdGdy' }]);
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
      expect(label.status.details?.causes?.[0]).toMatchObject({ reason: 'FieldValueInvalid', field: 'metadata.labels' });
      const tooLongValue = await failure(
        core.patchNamespacedPod({ name: 'val-pod', namespace: NS, body: { metadata: { labels: { role: 'r'.repeat(64) } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch)),
      );
      expect(tooLongValue.code).toBe(422);
      const badKey = await failure(
        core.patchNamespacedPod({ name: 'val-pod', namespace: NS, body: { metadata: { labels: { 'bad key': 'x' } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch)),
      );
      expect(badKey.code).toBe(422);
      // A label value that is not a string does not decode: 422 on the field "patch" (the patched object would not decode).
      const notString = await failure(
        core.patchNamespacedPod({ name: 'val-pod', namespace: NS, body: { metadata: { labels: { role: 1 } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch)),
      );
      expect(notString.code).toBe(422);
      expect(notString.status.details?.causes?.[0]?.field).toBe('patch');
      expect(k8s.pod('val-pod')?.metadata).toMatchObject({ labels: { role: 'replica' } });
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

    it('refuses to grow a claim that is not Bound, with the admission plugin\'s own message', async () => {
      k8s.seedPvc({ name: 'pvc-pending', storage: '10Gi', bound: false });
      const f = await failure(resize('pvc-pending', '20Gi'));
      expect(f.code).toBe(403);
      expect(f.status.message).toBe('persistentvolumeclaims "pvc-pending" is forbidden: Only bound persistent volume claims can be expanded');
    });

    it('consults the StorageClass object itself: changing allowVolumeExpansion through the API changes the verdict', async () => {
      k8s.seedPvc({ name: 'pvc-sc', storage: '10Gi', storageClassName: 'gp3-toggle', allowVolumeExpansion: false });
      expect((await failure(resize('pvc-sc', '20Gi'))).code).toBe(403);
      // The cluster admin turns expansion on (a merge patch of the cluster-scoped StorageClass).
      await storage.patchStorageClass({ name: 'gp3-toggle', body: { allowVolumeExpansion: true } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
      await resize('pvc-sc', '20Gi');
      await storage.patchStorageClass({ name: 'gp3-toggle', body: { allowVolumeExpansion: false } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
      expect((await failure(resize('pvc-sc', '30Gi'))).code).toBe(403);
    });

    it('an absent allowVolumeExpansion, a missing StorageClass or a claim with no class refuses the resize', async () => {
      k8s.seedStorageClass('gp3-unset', null);
      k8s.seedPvc({ name: 'pvc-unset', storage: '10Gi', storageClassName: 'gp3-unset' });
      expect((await failure(resize('pvc-unset', '20Gi'))).code).toBe(403);
      k8s.seedPvc({ name: 'pvc-gone', storage: '10Gi', storageClassName: 'deleted-class' });
      await storage.deleteStorageClass({ name: 'deleted-class' });
      const gone = await failure(resize('pvc-gone', '20Gi'));
      expect(gone.code).toBe(403);
      expect(gone.status.message).toContain('the storageclass that provisions the pvc must support resize');
      // Shrinking is validation's business (422), never admission's, and the same size passes.
      await resize('pvc-gone', '10Gi');
    });

    it('the beta storage-class annotation names the class, as GetPersistentVolumeClaimClass reads it', async () => {
      k8s.seedStorageClass('fixed-beta', false);
      k8s.seedPvc({ name: 'pvc-beta', storage: '10Gi', storageClassName: 'standard' });
      // Annotations may change on a claim; the class the admission checks is now the annotation's.
      await core.patchNamespacedPersistentVolumeClaim(
        { name: 'pvc-beta', namespace: NS, body: { metadata: { annotations: { 'volume.beta.kubernetes.io/storage-class': 'fixed-beta' } } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
      expect((await failure(resize('pvc-beta', '20Gi'))).code).toBe(403);
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

  describe('StorageClasses (storage.k8s.io/v1, cluster-scoped)', () => {
    it('are read at /apis/storage.k8s.io/v1/storageclasses/NAME, with the defaults the API server fills in', async () => {
      k8s.seedStorageClass('gp3-read', true);
      const sc = await storage.readStorageClass({ name: 'gp3-read' });
      expect(sc).toMatchObject({ kind: 'StorageClass', apiVersion: 'storage.k8s.io/v1', provisioner: 'ebs.csi.aws.com', allowVolumeExpansion: true, reclaimPolicy: 'Delete', volumeBindingMode: 'Immediate' });
      expect(sc.metadata?.namespace).toBeUndefined();
      expect(k8s.requests.at(-1)).toMatchObject({ method: 'GET', path: '/apis/storage.k8s.io/v1/storageclasses/gp3-read', status: 200 });
      expect((await storage.listStorageClass()).items.map((i) => i.metadata?.name)).toContain('gp3-read');
    });

    it('are not found under a namespace, nor when absent', async () => {
      k8s.seedStorageClass('gp3-ns', true);
      const res = await fetch(`${k8s.url}/apis/storage.k8s.io/v1/namespaces/${NS}/storageclasses/gp3-ns`, { headers: { authorization: `Bearer ${k8s.token}` } });
      expect(res.status).toBe(404);
      const missing = await failure(storage.readStorageClass({ name: 'no-such-class' }));
      expect(missing.code).toBe(404);
      expect(missing.status.message).toBe('storageclasses.storage.k8s.io "no-such-class" not found');
    });

    it('a create needs a provisioner; provisioner, parameters and reclaimPolicy are immutable, allowVolumeExpansion is not', async () => {
      const none = await failure(storage.createStorageClass({ body: { metadata: { name: 'no-prov' } } as never }));
      expect(none.code).toBe(422);
      expect(none.status.details?.causes?.[0]).toMatchObject({ field: 'provisioner', reason: 'FieldValueRequired' });
      const created = await storage.createStorageClass({ body: { metadata: { name: 'sc-imm', namespace: 'ignored' }, provisioner: 'ebs.csi.aws.com', parameters: { type: 'gp3' } } });
      expect(created.metadata?.namespace).toBeUndefined();
      const merge = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
      for (const [body, field] of [
        [{ provisioner: 'other.csi' }, 'provisioner'],
        [{ parameters: { type: 'io2' } }, 'parameters'],
        [{ reclaimPolicy: 'Retain' }, 'reclaimPolicy'],
      ] as const) {
        const f = await failure(storage.patchStorageClass({ name: 'sc-imm', body }, merge));
        expect(f.code, field).toBe(422);
        expect(f.status.details?.causes?.[0]?.field).toBe(field);
      }
      const ok = await storage.patchStorageClass({ name: 'sc-imm', body: { allowVolumeExpansion: true } }, merge);
      expect(ok.allowVolumeExpansion).toBe(true);
      const bad = await failure(storage.patchStorageClass({ name: 'sc-imm', body: { allowVolumeExpansion: 'yes' } }, merge));
      expect(bad.code).toBe(422);
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

  describe('ConfigMaps', () => {
    const cm = (name: string, data: Record<string, string>, extra: { labels?: Record<string, string>; resourceVersion?: string; binaryData?: Record<string, string> } = {}) => ({
      metadata: { name, ...(extra.labels ? { labels: extra.labels } : {}), ...(extra.resourceVersion ? { resourceVersion: extra.resourceVersion } : {}) },
      data,
      ...(extra.binaryData ? { binaryData: extra.binaryData } : {}),
    });

    it('creates, reads, lists, replaces (resourceVersion bumped) and deletes', async () => {
      const created = await core.createNamespacedConfigMap({ namespace: NS, body: cm('cm-crud', { intent: '{"phase":"confirmed"}' }, { labels: { 'app.kubernetes.io/managed-by': 'dbpilot' } }) });
      expect(k8s.requests.at(-1)).toMatchObject({ method: 'POST', path: `/api/v1/namespaces/${NS}/configmaps`, status: 201 });
      const rv1 = created.metadata?.resourceVersion ?? '';
      expect(created).toMatchObject({ kind: 'ConfigMap', apiVersion: 'v1', metadata: { name: 'cm-crud', namespace: NS }, data: { intent: '{"phase":"confirmed"}' } });
      const read = await core.readNamespacedConfigMap({ name: 'cm-crud', namespace: NS });
      expect(read.metadata?.resourceVersion).toBe(rv1);
      const list = await core.listNamespacedConfigMap({ namespace: NS, labelSelector: 'app.kubernetes.io/managed-by=dbpilot' });
      expect(list.items.map((i) => i.metadata?.name)).toContain('cm-crud');
      const replaced = await core.replaceNamespacedConfigMap({ name: 'cm-crud', namespace: NS, body: cm('cm-crud', { intent: '{"phase":"fenced"}' }, { resourceVersion: rv1 }) });
      expect(Number(replaced.metadata?.resourceVersion)).toBeGreaterThan(Number(rv1));
      expect(replaced.metadata?.uid).toBe(created.metadata?.uid);
      // The same content again is a no-op: no new resourceVersion.
      const again = await core.replaceNamespacedConfigMap({ name: 'cm-crud', namespace: NS, body: cm('cm-crud', { intent: '{"phase":"fenced"}' }, { resourceVersion: replaced.metadata?.resourceVersion ?? '' }) });
      expect(again.metadata?.resourceVersion).toBe(replaced.metadata?.resourceVersion);
      const del = await core.deleteNamespacedConfigMap({ name: 'cm-crud', namespace: NS });
      expect(del.status).toBe('Success');
      const gone = await failure(core.readNamespacedConfigMap({ name: 'cm-crud', namespace: NS }));
      expect(gone.status).toMatchObject({ code: 404, reason: 'NotFound', message: 'configmaps "cm-crud" not found' });
    });

    it('answers a stale replace with 409 Conflict and a second create with 409 AlreadyExists', async () => {
      const created = await core.createNamespacedConfigMap({ namespace: NS, body: cm('cm-cas', { intent: 'a' }) });
      const rv1 = created.metadata?.resourceVersion ?? '';
      await core.replaceNamespacedConfigMap({ name: 'cm-cas', namespace: NS, body: cm('cm-cas', { intent: 'b' }, { resourceVersion: rv1 }) });
      const stale = await failure(core.replaceNamespacedConfigMap({ name: 'cm-cas', namespace: NS, body: cm('cm-cas', { intent: 'c' }, { resourceVersion: rv1 }) }));
      expect(stale.code).toBe(409);
      expect(stale.status).toMatchObject({
        reason: 'Conflict',
        message: 'Operation cannot be fulfilled on configmaps "cm-cas": the object has been modified; please apply your changes to the latest version and try again',
        details: { name: 'cm-cas', kind: 'configmaps' },
      });
      expect(k8s.configMap('cm-cas')?.data).toEqual({ intent: 'b' });
      const dup = await failure(core.createNamespacedConfigMap({ namespace: NS, body: cm('cm-cas', { intent: 'd' }) }));
      expect(dup.code).toBe(409);
      expect(dup.status).toMatchObject({ reason: 'AlreadyExists', message: 'configmaps "cm-cas" already exists' });
      // A PUT without resourceVersion is unconditional for ConfigMaps (configMapStrategy.AllowUnconditionalUpdate).
      await core.replaceNamespacedConfigMap({ name: 'cm-cas', namespace: NS, body: cm('cm-cas', { intent: 'e' }) });
      expect(k8s.configMap('cm-cas')?.data).toEqual({ intent: 'e' });
      // …and to a name that does not exist it is 404 (no create on update).
      expect((await failure(core.replaceNamespacedConfigMap({ name: 'cm-absent', namespace: NS, body: cm('cm-absent', { a: 'b' }) }))).code).toBe(404);
      expect((await failure(core.deleteNamespacedConfigMap({ name: 'cm-absent', namespace: NS }))).code).toBe(404);
    });

    it('refuses names that are not RFC 1123 subdomains and data keys outside [-._a-zA-Z0-9]+ with 422', async () => {
      for (const name of ['Bad_Name', 'ends-with-', 'a'.repeat(254), '-starts']) {
        const f = await failure(core.createNamespacedConfigMap({ namespace: NS, body: cm(name, { a: 'b' }) }));
        expect(f.code, name).toBe(422);
        expect(f.status.details?.causes?.[0]?.field, name).toBe('metadata.name');
      }
      await core.createNamespacedConfigMap({ namespace: NS, body: cm('ok.name-1', { 'key.name': 'x', KEY_NAME: 'y', 'key-name': 'z', '.hidden': 'w' }) });
      for (const k of ['bad key', 'a/b', '..', '.', '..x', 'k'.repeat(254), 'ünïcode']) {
        const f = await failure(core.createNamespacedConfigMap({ namespace: NS, body: cm('cm-badkey', { [k]: 'v' }) }));
        expect(f.code, k).toBe(422);
        expect(f.status.details?.causes?.[0]?.field, k).toBe(`data[${k}]`);
      }
      const dup = await failure(core.createNamespacedConfigMap({ namespace: NS, body: cm('cm-dupkey', { k: 'v' }, { binaryData: { k: 'eA==' } }) }));
      expect(dup.status.message).toContain('duplicate of key present in binaryData');
      expect(k8s.configMap('cm-badkey')).toBeUndefined();
    });

    it('refuses more than 1 MiB of data (422), a data value that is not a string (400), and a body over 3 MiB (413)', async () => {
      const mib = 1024 * 1024;
      await core.createNamespacedConfigMap({ namespace: NS, body: cm('cm-1mib', { a: 'x'.repeat(mib - 1), b: 'y' }) });
      const over = await failure(core.createNamespacedConfigMap({ namespace: NS, body: cm('cm-over', { a: 'x'.repeat(mib), b: 'y' }) }));
      expect(over.code).toBe(422);
      expect(over.status.message).toBe('ConfigMap "cm-over" is invalid: : Too long: must have at most 1048576 bytes');
      // Bytes, not characters: 2-byte characters count twice.
      const utf8 = await failure(core.createNamespacedConfigMap({ namespace: NS, body: cm('cm-utf8', { a: 'é'.repeat(mib / 2 + 1) }) }));
      expect(utf8.code).toBe(422);
      const notString = await failure(core.createNamespacedConfigMap({ namespace: NS, body: { metadata: { name: 'cm-num' }, data: { a: 1 as unknown as string } } }));
      expect(notString.code).toBe(400);
      expect(notString.status.message).toContain('ConfigMap in version "v1" cannot be handled as a ConfigMap');
      const huge = await failure(core.createNamespacedConfigMap({ namespace: NS, body: cm('cm-huge', { a: 'x'.repeat(3 * mib) }) }));
      expect(huge.code).toBe(413);
      expect(huge.status.reason).toBe('RequestEntityTooLarge');
    });

    it('keeps an immutable ConfigMap\'s data, and validates annotations', async () => {
      k8s.seedConfigMap({ name: 'cm-frozen', data: { a: 'b' }, immutable: true });
      const rv = String((k8s.configMap('cm-frozen')?.metadata as { resourceVersion: string }).resourceVersion);
      const f = await failure(
        core.replaceNamespacedConfigMap({ name: 'cm-frozen', namespace: NS, body: { metadata: { name: 'cm-frozen', resourceVersion: rv }, data: { a: 'c' }, immutable: true } }),
      );
      expect(f.code).toBe(422);
      expect(f.status.message).toContain('field is immutable when `immutable` is set');
      const ann = await failure(core.createNamespacedConfigMap({ namespace: NS, body: { metadata: { name: 'cm-ann', annotations: { 'not a key': 'v' } }, data: {} } }));
      expect(ann.code).toBe(422);
      expect(ann.status.details?.causes?.[0]?.field).toBe('metadata.annotations');
      const bigAnn = await failure(core.createNamespacedConfigMap({ namespace: NS, body: { metadata: { name: 'cm-ann', annotations: { a: 'x'.repeat(256 * 1024) } }, data: {} } }));
      expect(bigAnn.code).toBe(422);
    });
  });

  describe('pods', () => {
    it('seeds container statuses as the kubelet writes them, and writes a new status like one', async () => {
      k8s.seedPod({
        name: 'st-pod',
        labels: { role: 'primary' },
        containerStatuses: [
          { name: 'postgres', restartCount: 3, lastState: { terminated: { exitCode: 137, reason: 'OOMKilled' } } },
          { name: 'exporter', ready: false, restartCount: 1, state: { waiting: { reason: 'CrashLoopBackOff' } } },
        ],
      });
      const p = await core.readNamespacedPod({ name: 'st-pod', namespace: NS });
      expect(p.spec?.containers.map((c) => c.name)).toEqual(['postgres', 'exporter']);
      expect(p.status?.containerStatuses?.map((c) => [c.name, c.ready, c.restartCount, Object.keys(c.state ?? {})])).toEqual([
        ['postgres', true, 3, ['running']],
        ['exporter', false, 1, ['waiting']],
      ]);
      expect(p.status?.containerStatuses?.[0]?.lastState?.terminated).toMatchObject({ exitCode: 137, reason: 'OOMKilled' });
      expect(p.status?.conditions?.find((c) => c.type === 'Ready')).toMatchObject({ status: 'False', reason: 'ContainersNotReady', message: 'containers with unready status: [exporter]' });

      k8s.seedPod({ name: 'st-simple', restartCount: 2 });
      const simple = await core.readNamespacedPod({ name: 'st-simple', namespace: NS });
      expect(simple.status?.containerStatuses).toMatchObject([{ name: 'main', ready: true, restartCount: 2, state: { running: {} } }]);
      expect(simple.status?.conditions?.find((c) => c.type === 'Ready')?.status).toBe('True');

      const rv = p.metadata?.resourceVersion;
      const after = k8s.setPodStatus('st-pod', { containerStatuses: [{ name: 'exporter', ready: true, state: { running: {} } }] });
      expect((after.metadata as { resourceVersion: string }).resourceVersion).not.toBe(rv);
      expect(after.metadata).toMatchObject({ labels: { role: 'primary' } });
      const q = await core.readNamespacedPod({ name: 'st-pod', namespace: NS });
      expect(q.status?.containerStatuses?.map((c) => [c.name, c.ready, c.restartCount])).toEqual([['exporter', true, 1]]);
      expect(q.status?.conditions?.find((c) => c.type === 'Ready')?.status).toBe('True');
      expect(() => k8s.setPodStatus('st-pod', { containerStatuses: [{ name: 'nope' }] })).toThrow(/no container nope/);
    });
  });

  describe('rollout outcomes per workload', () => {
    const restart = (name: string, at: string) =>
      apps.patchNamespacedDeployment(
        { name, namespace: NS, body: { spec: { template: { metadata: { annotations: { 'kubectl.kubernetes.io/restartedAt': at } } } } } },
        setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch),
      );
    const status = async (name: string) => (await apps.readNamespacedDeployment({ name, namespace: NS })).status;

    it('completes one deployment after its own delay while the shared delay holds the others', async () => {
      k8s.seedDeployment({ name: 'ro-fast', replicas: 2 });
      k8s.seedDeployment({ name: 'ro-slow', replicas: 2 });
      k8s.setRolloutDelay(null);
      k8s.setRolloutOutcome('ro-fast', { completeAfterMs: 30 });
      await restart('ro-fast', '2026-11-27T17:00:00Z');
      await restart('ro-slow', '2026-11-27T17:00:00Z');
      const fast = await until(async () => {
        const st = await status('ro-fast');
        return st?.observedGeneration === 2 && st.updatedReplicas === 2 ? st : undefined;
      }, 'ro-fast rolled out');
      expect(fast).toMatchObject({ replicas: 2, readyReplicas: 2, availableReplicas: 2 });
      await until(() => (k8s.rolloutState('ro-slow').phase === 'progressing' ? true : undefined), 'ro-slow observed');
      // Held: observed, half done, and nothing scheduled that would ever move it.
      expect(k8s.rolloutState('ro-slow')).toEqual({ phase: 'progressing', scheduled: 0 });
      expect((await status('ro-slow'))?.updatedReplicas).toBe(1);
      k8s.setRolloutOutcome('ro-fast', null);
    });

    it('holds a rollout, then finishes it when its outcome changes, without a further change to the workload', async () => {
      k8s.seedDeployment({ name: 'ro-held', replicas: 1 });
      k8s.setRolloutOutcome('ro-held', 'held');
      const patched = await restart('ro-held', '2026-11-27T17:00:00Z');
      await until(() => (k8s.rolloutState('ro-held').phase === 'progressing' ? true : undefined), 'ro-held observed');
      expect(k8s.rolloutState('ro-held').scheduled).toBe(0);
      k8s.setRolloutOutcome('ro-held', { completeAfterMs: 0 });
      const done = await until(async () => {
        const st = await status('ro-held');
        return st?.updatedReplicas === 1 && (st.replicas ?? 0) === 1 ? st : undefined;
      }, 'ro-held rolled out');
      expect(done.observedGeneration).toBe(patched.metadata?.generation);
      expect(k8s.rolloutState('ro-held')).toEqual({ phase: 'idle', scheduled: 0 });
      k8s.setRolloutOutcome('ro-held', null);
    });

    it('fails one named deployment with ProgressDeadlineExceeded', async () => {
      k8s.seedDeployment({ name: 'ro-doomed', replicas: 2 });
      k8s.seedDeployment({ name: 'ro-fine', replicas: 2 });
      k8s.setRolloutOutcome('ro-doomed', 'progressDeadlineExceeded');
      k8s.setRolloutOutcome('ro-fine', { completeAfterMs: 10 });
      await restart('ro-doomed', '2026-11-27T17:00:00Z');
      await restart('ro-fine', '2026-11-27T17:00:00Z');
      const failed = await until(async () => {
        const st = await status('ro-doomed');
        return st?.conditions?.some((c) => c.type === 'Progressing' && c.status === 'False') ? st : undefined;
      }, 'ro-doomed to exceed its deadline');
      expect(failed.observedGeneration).toBe(2);
      expect(failed.conditions?.find((c) => c.type === 'Progressing')).toMatchObject({ reason: 'ProgressDeadlineExceeded', message: expect.stringMatching(/^ReplicaSet "ro-doomed-\w+" has timed out progressing\.$/) });
      expect(failed.updatedReplicas).toBe(1); // the old replica is still there
      expect(k8s.rolloutState('ro-doomed')).toEqual({ phase: 'idle', scheduled: 0 });
      await until(async () => ((await status('ro-fine'))?.updatedReplicas === 2 ? true : undefined), 'ro-fine rolled out');
      expect(() => k8s.setRolloutOutcome('redis', 'progressDeadlineExceeded', { kind: 'statefulset' })).toThrow(/no progress deadline/);
      k8s.setRolloutOutcome('ro-doomed', null);
      k8s.setRolloutOutcome('ro-fine', null);
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

    it('holds a matching request until released, and matches one object by resource and name only', async () => {
      k8s.seedSecret({ name: 'held', data: { K: 'v' } });
      k8s.seedSecret({ name: 'held-2', data: { K: 'v' } });
      const held = k8s.delayNext(1, 30_000, { method: 'GET', resource: 'secrets', name: 'held' });
      // A longer name, the same name as another resource, and a list are not the target.
      await core.readNamespacedSecret({ name: 'held-2', namespace: NS });
      await core.listNamespacedSecret({ namespace: NS });
      k8s.seedPod({ name: 'held' });
      await core.readNamespacedPod({ name: 'held', namespace: NS });
      let answered = false;
      const read = core.readNamespacedSecret({ name: 'held', namespace: NS }).finally(() => (answered = true));
      const arrived = await held.arrived;
      expect(arrived).toMatchObject({ method: 'GET', path: `/api/v1/namespaces/${NS}/secrets/held`, status: 0 });
      // Served while the first is held: a second read of the same secret (the fault is used up).
      await core.readNamespacedSecret({ name: 'held', namespace: NS });
      expect(answered).toBe(false);
      held.release();
      expect((await read).data?.K).toBe(Buffer.from('v').toString('base64'));
      expect(k8s.requests.filter((r) => r.path.endsWith('/secrets/held')).map((r) => r.status)).toEqual([200, 200]);
    });

    it('serves a held JSON patch against the Secret as it is when released: a concurrent edit fails its test', async () => {
      k8s.seedSecret({ name: 'race', data: { DATABASE_URL: 'postgres://old-primary:5432/db' } });
      const b64 = (v: string) => Buffer.from(v).toString('base64');
      const held = k8s.delayNext(1, 30_000, { method: 'PATCH', resource: 'secrets', name: 'race' });
      const ours = core.patchNamespacedSecret({
        name: 'race',
        namespace: NS,
        body: [
          { op: 'test', path: '/data/DATABASE_URL', value: b64('postgres://old-primary:5432/db') },
          { op: 'replace', path: '/data/DATABASE_URL', value: b64('postgres://ours:5432/db') },
        ],
      });
      await held.arrived;
      // Someone else writes meanwhile (not held: the delay matched one request only).
      await core.patchNamespacedSecret({ name: 'race', namespace: NS, body: [{ op: 'replace', path: '/data/DATABASE_URL', value: b64('postgres://theirs:5432/db') }] });
      held.release();
      const f = await failure(ours);
      expect(f.code).toBe(422);
      expect(f.status.message).toBe(PATCH_NOT_APPLIED_MESSAGE);
      expect(k8s.secretValue('race', 'DATABASE_URL')).toBe('postgres://theirs:5432/db');
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
