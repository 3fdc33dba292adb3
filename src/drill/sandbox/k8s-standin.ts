/**
 * A strict local stand-in for the Kubernetes API server, over real HTTP on 127.0.0.1 and port 0, to be
 * driven only through the real @kubernetes/client-node (see writeKubeconfig).
 *
 * It exists so that tests can FAIL: wherever dbpilot's Kubernetes code could get a request subtly
 * wrong, the stand-in answers the way kube-apiserver answers (status code, `Status` body, reason),
 * instead of accepting anything. What it models, and where the behaviour comes from upstream:
 *
 * - Authentication: a bearer token; anything else is 401 with a `Status` body.
 * - Routing: core/v1 secrets, configmaps, pods, persistentvolumeclaims; apps/v1 deployments,
 *   statefulsets; coordination.k8s.io/v1 leases; batch/v1 jobs, cronjobs; and the cluster-scoped
 *   storage.k8s.io/v1 storageclasses (`/apis/storage.k8s.io/v1/storageclasses/NAME`, no namespace in
 *   the path; under a namespace it is 404, as upstream); get, list, create (POST), update (PUT), patch and
 *   delete of each. Unknown paths are 404 "the server could not find the requested resource"; verbs
 *   it does not model are 405. A body over 3 MiB is 413 (the default --max-request-body-bytes).
 * - Optimistic concurrency: one cluster-wide resourceVersion counter (like etcd's revision), bumped on
 *   every write (status writes of the simulated controllers too). A PUT with a stale resourceVersion
 *   is 409 Conflict; a PUT without one is 422 for Leases (their strategy refuses unconditional
 *   updates) and allowed for the rest; a patch that sets metadata.resourceVersion uses it as a
 *   precondition. A write that changes nothing is a no-op (no resourceVersion bump), as upstream.
 * - Create of an existing name is 409 AlreadyExists; a PUT to an absent Lease creates it
 *   (leaseStrategy.AllowCreateOnUpdate), to anything else it is 404.
 * - Decoding: bodies of POST/PUT that would not decode into the Go type are 400 BadRequest
 *   ("X in version "v1" cannot be handled as a X: …", handlers/rest.go transformDecodeError); the
 *   same defect arriving through a PATCH is 422 Invalid on the field "patch" (handlers/patch.go).
 *   Decode checks: Secret data must be base64 (std, padded); Lease acquireTime/renewTime must be
 *   MicroTime, RFC3339 with exactly six fractional digits (metav1.RFC3339Micro); int32 fields must be
 *   integers; label/annotation values must be strings; PVC storage must be a resource.Quantity.
 * - PATCH content types: application/json-patch+json (RFC 6902 as gopkg.in/evanphx/json-patch.v4
 *   applies it, quirks included, see applyJsonPatch; a patch that does not apply — failed `test`,
 *   missing path — is the API server's bare 422, see PATCH_NOT_APPLIED_MESSAGE),
 *   application/merge-patch+json (RFC 7386), application/strategic-merge-patch+json (approximated:
 *   maps merge, lists of objects that all carry `name` merge by name, other lists are replaced, null
 *   deletes). Anything else is 415. Patches apply to the object as the API server would encode it:
 *   empty omitempty maps (labels, annotations, data) absent, Secret data in canonical base64.
 * - Validation (422 Invalid, with `details.causes`): object names (RFC 1123 subdomains), label
 *   keys/values, annotation keys and total size (256 KiB), Secret and ConfigMap data keys
 *   ([-._a-zA-Z0-9]+, not "." / ".." / "..*", at most 253), their 1 MiB data limit, keys in both
 *   data and binaryData, immutable Secrets and ConfigMaps, Lease durations/transitions, replicas,
 *   immutable selectors, pod spec immutability, PVC spec immutability and "storage can not be less
 *   than previous value"; StorageClasses need a provisioner, and their provisioner, parameters,
 *   reclaimPolicy and volumeBindingMode are immutable. Admission (403 Forbidden), as the
 *   PersistentVolumeClaimResize plugin does it: a PVC may grow only if it is Bound, its class (the
 *   beta annotation volume.beta.kubernetes.io/storage-class, else spec.storageClassName) is set and
 *   unchanged, and that StorageClass object exists in the stand-in with allowVolumeExpansion: true
 *   (absent counts as false). Seed classes with seedStorageClass, or create them through the API.
 * - Status is owned by the server: writes to the main resource keep the old status (as the
 *   strategies' PrepareForUpdate do). A Deployment/StatefulSet whose spec changes gets
 *   metadata.generation + 1; a simulated controller first observes the new generation with the
 *   rollout half done (an old replica still running), and only after `rolloutDelayMs` reports it
 *   rolled out (null: never). setRolloutOutcome overrides that per workload — complete after N ms,
 *   held, or ProgressDeadlineExceeded — and rolloutState shows where a rollout is. A grown PVC reports
 *   the new status.capacity after the same delay. Pod status is seeded (seedPod) and rewritten
 *   (setPodStatus) as the kubelet writes it: container states, restarts, the Ready condition.
 * - Jobs (batch/v1) as the API server and the job controller treat them: a create gets the defaults
 *   (parallelism, completions, backoffLimit, completionMode, suspend) and the generated selector and
 *   pod template labels (controller-uid, job-name, both also under batch.kubernetes.io/), and is
 *   validated as ValidateJob does (restartPolicy OnFailure or Never, at least one container, a
 *   selector that is not the generated one refused, template label values of at most 63 characters —
 *   so a Job name longer than 63 is refused through its job-name label, spec.template immutable). The
 *   simulated controller starts it (startTime, active 1); setJobOutcome drives it to Complete or
 *   Failed with the conditions the controller writes (SuccessCriteriaMet + Complete, FailureTarget +
 *   Failed with BackoffLimitExceeded). CronJobs are validated (schedule, the jobTemplate's
 *   restartPolicy and containers, a name of at most 52 characters) and seeded with seedCronJob.
 * - Namespaces: reading an object in an unknown namespace is 404 for the object; listing an unknown
 *   namespace is an empty list (as upstream); creating in one is 404 `namespaces "x" not found`.
 *
 * Every request is recorded (method, path, query, content type, parsed body, status) for assertions;
 * faults can be injected with failNext / delayNext (a held request, released by the test: how a test
 * puts a concurrent edit between a client's read and its write, see delayNext).
 */
import http from 'node:http';
import { createHash, randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';

// ---------------------------------------------------------------------------------------------------
// Types

export type JsonObject = { [key: string]: unknown };

/** One request as the stand-in saw it. `body` is the parsed JSON (or the raw text if it was not JSON). */
export interface RecordedRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  contentType: string | undefined;
  body: unknown;
  status: number;
  /** True if the bearer token was right. The token itself is never recorded. */
  authorized: boolean;
  /** True if the response came from failNext rather than from the modelled API. */
  injected: boolean;
  /**
   * Set only when a JSON patch did not apply: why, in the words of json-patch v4 (e.g. `testing value
   * /data/DATABASE_URL failed: test failed`). The real API server does not send this back (its 422
   * carries no causes, see patchNotApplied); it is here so a test can tell which operation failed.
   * It names paths, never values.
   */
  patchError?: string;
}

/** Selects requests for fault injection. All given conditions must hold. */
export interface RequestMatch {
  method?: string;
  /**
   * A substring of the path, or a regular expression tested against it. A substring also matches
   * longer names (`/secrets/app` matches `/secrets/app-2`): to target one object use resource + name.
   */
  path?: string | RegExp;
  /** The request is for this resource (e.g. 'secrets'). */
  resource?: ResourceName;
  /** The request names exactly this object (so a list or a create, which name none, never matches). */
  name?: string;
  /** The request is in this namespace. */
  namespace?: string;
  /** Any further condition, e.g. on the parsed body. */
  when?: (req: { method: string; path: string; query: Record<string, string>; body: unknown }) => boolean;
}

/** A container's state as the API has it: exactly one of running, waiting, terminated. */
export interface ContainerStateInput {
  running?: { startedAt?: string };
  waiting?: { reason?: string; message?: string };
  terminated?: { exitCode: number; reason?: string; message?: string; signal?: number; startedAt?: string; finishedAt?: string };
}

export interface ContainerStatusInput {
  name: string;
  ready?: boolean;
  restartCount?: number;
  state?: ContainerStateInput;
  lastState?: ContainerStateInput;
}

/** What setPodStatus can change (and seedPod seed). */
export interface PodStatusInput {
  phase?: string;
  /** Every container ready (or not); the Ready condition follows the containers. */
  ready?: boolean;
  podIP?: string;
  /** Restarts of the first container (main, by default). */
  restartCount?: number;
  containerStatuses?: ContainerStatusInput[];
}

export interface SeedPod extends PodStatusInput {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
  nodeName?: string;
}

export interface K8sStandInOptions {
  /** Bearer token the stand-in accepts. Default: a random one. */
  token?: string;
  /** Namespaces that exist from the start (seeding adds namespaces as needed). */
  namespaces?: string[];
  /** Namespace the seed helpers use when none is given. Default "default". */
  defaultNamespace?: string;
  /** How long a simulated rollout (and a PVC resize) takes. Default 50 ms. null: rollouts never finish. */
  rolloutDelayMs?: number | null;
}

/**
 * How the simulated controller finishes a Deployment's or StatefulSet's rollout (setRolloutOutcome):
 * - `{ completeAfterMs }`: observed with the rollout half done, rolled out completeAfterMs after it started;
 * - `'held'`: observed half done, and stays so until the outcome changes or the workload changes again;
 * - `'progressDeadlineExceeded'` (Deployments only; StatefulSets have no progress deadline): observed
 *   half done, then the controller gives up as it does after spec.progressDeadlineSeconds: condition
 *   Progressing=False, reason ProgressDeadlineExceeded, and the old replica still running.
 */
export type RolloutOutcome = { completeAfterMs: number } | 'held' | 'progressDeadlineExceeded';

export type ResourceName = 'secrets' | 'configmaps' | 'pods' | 'persistentvolumeclaims' | 'deployments' | 'statefulsets' | 'leases' | 'jobs' | 'cronjobs' | 'storageclasses';

/** Where the simulated job controller takes a Job (setJobOutcome): still running, or finished one way or the other. */
export type JobOutcome = 'running' | 'complete' | 'failed';

interface ResourceDef {
  group: string; // '' = core
  version: string;
  resource: ResourceName;
  kind: string;
  /** leaseStrategy.AllowCreateOnUpdate() is true; for the rest false. */
  allowCreateOnUpdate: boolean;
  /** leaseStrategy.AllowUnconditionalUpdate() is false; for the rest true. */
  allowUnconditionalUpdate: boolean;
  /** Has a status subresource whose content writes to the main resource cannot change. */
  hasStatus: boolean;
  /** metadata.generation is maintained (bumped when spec changes). */
  tracksGeneration: boolean;
  /** Cluster-scoped (no namespace in the path or the object); stored under the namespace "". */
  clusterScoped?: boolean;
}

const RESOURCES: ResourceDef[] = [
  { group: '', version: 'v1', resource: 'secrets', kind: 'Secret', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: false, tracksGeneration: false },
  { group: '', version: 'v1', resource: 'configmaps', kind: 'ConfigMap', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: false, tracksGeneration: false },
  { group: '', version: 'v1', resource: 'pods', kind: 'Pod', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: true, tracksGeneration: false },
  { group: '', version: 'v1', resource: 'persistentvolumeclaims', kind: 'PersistentVolumeClaim', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: true, tracksGeneration: false },
  { group: 'apps', version: 'v1', resource: 'deployments', kind: 'Deployment', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: true, tracksGeneration: true },
  { group: 'apps', version: 'v1', resource: 'statefulsets', kind: 'StatefulSet', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: true, tracksGeneration: true },
  { group: 'coordination.k8s.io', version: 'v1', resource: 'leases', kind: 'Lease', allowCreateOnUpdate: true, allowUnconditionalUpdate: false, hasStatus: false, tracksGeneration: false },
  { group: 'batch', version: 'v1', resource: 'jobs', kind: 'Job', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: true, tracksGeneration: true },
  { group: 'batch', version: 'v1', resource: 'cronjobs', kind: 'CronJob', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: true, tracksGeneration: true },
  { group: 'storage.k8s.io', version: 'v1', resource: 'storageclasses', kind: 'StorageClass', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: false, tracksGeneration: false, clusterScoped: true },
];

/** Where a cluster-scoped object is stored (its key's namespace part). */
const CLUSTER = '';

function apiVersionOf(def: ResourceDef): string {
  return def.group ? `${def.group}/${def.version}` : def.version;
}

function qualified(def: ResourceDef): string {
  return def.group ? `${def.resource}.${def.group}` : def.resource;
}

// ---------------------------------------------------------------------------------------------------
// Status errors, shaped like k8s.io/apimachinery/pkg/api/errors

interface StatusCause {
  reason?: string;
  message: string;
  field?: string;
}

class ApiStatusError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: JsonObject,
  ) {
    super(message);
  }

  toStatus(): JsonObject {
    const body: JsonObject = { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: this.message, reason: this.reason };
    if (this.details) body.details = this.details;
    body.code = this.code;
    return body;
  }
}

function detailsFor(def: ResourceDef, name: string, kind: string = def.resource): JsonObject {
  const d: JsonObject = { name };
  if (def.group) d.group = def.group;
  d.kind = kind;
  return d;
}

const errNotFound = (def: ResourceDef, name: string): ApiStatusError =>
  new ApiStatusError(404, 'NotFound', `${qualified(def)} "${name}" not found`, detailsFor(def, name));

const errNamespaceNotFound = (ns: string): ApiStatusError =>
  new ApiStatusError(404, 'NotFound', `namespaces "${ns}" not found`, { name: ns, kind: 'namespaces' });

const errAlreadyExists = (def: ResourceDef, name: string): ApiStatusError =>
  new ApiStatusError(409, 'AlreadyExists', `${qualified(def)} "${name}" already exists`, detailsFor(def, name));

const errConflict = (def: ResourceDef, name: string, why = 'the object has been modified; please apply your changes to the latest version and try again'): ApiStatusError =>
  new ApiStatusError(409, 'Conflict', `Operation cannot be fulfilled on ${qualified(def)} "${name}": ${why}`, detailsFor(def, name));

const errBadRequest = (message: string): ApiStatusError => new ApiStatusError(400, 'BadRequest', message);

function errInvalid(def: ResourceDef, name: string, causes: StatusCause[]): ApiStatusError {
  // field.Error.Error() is "<field>: <detail>", also for the empty path ("" = the whole object).
  const parts = causes.map((c) => (c.field !== undefined ? `${c.field}: ${c.message}` : c.message));
  const summary = parts.length === 1 ? parts[0] : `[${parts.join(', ')}]`;
  return new ApiStatusError(422, 'Invalid', `${def.kind} "${name}" is invalid: ${summary}`, { ...detailsFor(def, name, def.kind), causes: causes as unknown as JsonObject[] });
}

const errForbidden = (def: ResourceDef, name: string, why: string): ApiStatusError =>
  new ApiStatusError(403, 'Forbidden', `${qualified(def)} "${name}" is forbidden: ${why}`, detailsFor(def, name));

const errPathNotFound = (): ApiStatusError =>
  new ApiStatusError(404, 'NotFound', 'the server could not find the requested resource', {
    causes: [{ reason: 'UnexpectedServerResponse', message: '404 page not found' }] as unknown as JsonObject[],
  });

/**
 * A JSON patch that does not apply (a failed `test`, a path that is not there …), exactly as the API
 * server answers it: handlers/patch.go applyJSPatch returns
 * errors.NewGenericServerResponse(http.StatusUnprocessableEntity, "", schema.GroupResource{}, "", err.Error(), 0, false),
 * and NewGenericServerResponse (apimachinery/pkg/api/errors) gives a 422 the reason Invalid and the fixed
 * message below, and, isUnexpectedResponse being false, no causes: json-patch's own error text is
 * dropped. Group, kind, name and retryAfterSeconds are empty, so `details` is `{}` on the wire. Every
 * JSON patch failure therefore looks the same to the client, whichever operation failed.
 */
export const PATCH_NOT_APPLIED_MESSAGE = 'the server rejected our request due to an error in our request';
const patchNotApplied = (): ApiStatusError => new ApiStatusError(422, 'Invalid', PATCH_NOT_APPLIED_MESSAGE, {});

/** The API server's default --max-request-body-bytes. */
const MAX_REQUEST_BODY_BYTES = 3 * 1024 * 1024;

/** core.MaxSecretSize: the most data a Secret or a ConfigMap may hold (values, decoded). */
const MAX_DATA_BYTES = 1024 * 1024;

/** apimachinery TotalAnnotationSizeLimitB: keys plus values of all annotations. */
const MAX_ANNOTATIONS_BYTES = 256 * 1024;

/** handlers/patch.go maxJSONPatchOperations. */
const MAX_JSON_PATCH_OPERATIONS = 10_000;

function goJsonType(v: unknown): string {
  if (Array.isArray(v)) return 'array';
  if (v === null) return 'null';
  if (typeof v === 'object') return 'object';
  return typeof v === 'boolean' ? 'bool' : typeof v;
}

const errMethodNotAllowed = (): ApiStatusError =>
  new ApiStatusError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');

const REASONS: Record<number, string> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  405: 'MethodNotAllowed',
  409: 'Conflict',
  410: 'Expired',
  415: 'UnsupportedMediaType',
  422: 'Invalid',
  429: 'TooManyRequests',
  500: 'InternalError',
  503: 'ServiceUnavailable',
  504: 'Timeout',
};

const invalid = (field: string, value: unknown, detail: string): StatusCause => ({
  reason: 'FieldValueInvalid',
  message: `Invalid value: ${formatValue(value)}: ${detail}`,
  field,
});
const forbidden = (field: string, detail: string): StatusCause => ({ reason: 'FieldValueForbidden', message: `Forbidden: ${detail}`, field });
const required = (field: string): StatusCause => ({ reason: 'FieldValueRequired', message: 'Required value', field });

function formatValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return JSON.stringify(v);
}

// ---------------------------------------------------------------------------------------------------
// Small JSON helpers

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function clone<T>(v: T): T {
  return v === undefined ? v : (JSON.parse(JSON.stringify(v)) as T);
}

function obj(v: unknown): JsonObject {
  return isObject(v) ? v : {};
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a).filter((k) => a[k] !== undefined);
    const kb = Object.keys(b).filter((k) => b[k] !== undefined);
    return ka.length === kb.length && ka.every((k) => deepEqual(a[k], b[k]));
  }
  return false;
}

function meta(o: JsonObject): JsonObject {
  if (!isObject(o.metadata)) o.metadata = {};
  return o.metadata as JsonObject;
}

// ---------------------------------------------------------------------------------------------------
// Patches

/** RFC 7386 JSON merge patch. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return clone(patch);
  const out: JsonObject = isObject(target) ? clone(target) : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/**
 * Strategic merge patch, approximated: like a merge patch, except that lists whose items are all
 * objects with a `name` (containers, env, volumes, ports …) are merged by name, as their
 * patchMergeKey says upstream. Directives ($patch, $retainKeys, $setElementOrder) are refused.
 */
export function strategicMergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return clone(patch);
  const out: JsonObject = isObject(target) ? clone(target) : {};
  for (const [k, v] of Object.entries(patch)) {
    if (k.startsWith('$')) throw errBadRequest(`the stand-in does not implement strategic merge patch directive ${k}`);
    if (v === null) {
      delete out[k];
    } else if (Array.isArray(v) && Array.isArray(out[k]) && isNamedList(v) && isNamedList(out[k] as unknown[])) {
      const merged = clone(out[k] as JsonObject[]);
      for (const item of v as JsonObject[]) {
        const i = merged.findIndex((m) => m.name === item.name);
        if (i >= 0) merged[i] = strategicMergePatch(merged[i], item) as JsonObject;
        else merged.push(clone(item));
      }
      out[k] = merged;
    } else {
      out[k] = strategicMergePatch(out[k], v);
    }
  }
  return out;
}

function isNamedList(list: unknown[]): boolean {
  return list.length > 0 && list.every((x) => isObject(x) && typeof x.name === 'string');
}

/** Why a JSON patch did not apply (the stand-in's own copy of json-patch v4's reason; never sent to the client). */
export class JsonPatchApplyError extends Error {}

/** A JSON Pointer reference token, unescaped (~1 → /, ~0 → ~), as json-patch v4 decodes it. */
function unescapeToken(s: string): string {
  return s.replace(/~1/g, '/').replace(/~0/g, '~');
}

/** Go's strconv.Atoi: optional sign, decimal digits; anything else is an error. */
function atoi(s: string): number | null {
  return /^[+-]?\d+$/.test(s) ? Number(s) : null;
}

type Container = { kind: 'object'; node: JsonObject } | { kind: 'array'; node: unknown[] };

function containerOf(v: unknown): Container | null {
  if (Array.isArray(v)) return { kind: 'array', node: v };
  if (isObject(v)) return { kind: 'object', node: v };
  return null;
}

/** json-patch v4 findObject: the container holding the last token, and that token; null if the way there is missing. */
function findParent(root: Container, path: string): { con: Container; key: string } | null {
  const split = path.split('/');
  if (split.length < 2) return null;
  let con: Container = root;
  for (const part of split.slice(1, -1)) {
    const next = containerGet(con, unescapeToken(part));
    if (next === undefined || next === null || next instanceof JsonPatchApplyError) return null;
    const c = containerOf(next);
    if (!c) return null;
    con = c;
  }
  return { con, key: unescapeToken(split[split.length - 1] ?? '') };
}

/**
 * get: for an object, the member or undefined (json-patch v4 reports no error for a missing member,
 * which is why its `replace` adds one that is absent); for an array, the element, or an error for an
 * index that is not a number or is out of range (negative indices count from the end).
 */
function containerGet(con: Container, key: string): unknown {
  if (con.kind === 'object') return Object.prototype.hasOwnProperty.call(con.node, key) ? con.node[key] : undefined;
  const i = atoi(key);
  if (i === null) return new JsonPatchApplyError(`strconv.Atoi: parsing ${JSON.stringify(key)}: invalid syntax`);
  const len = con.node.length;
  if (i < -len || i + (i < 0 ? len : 0) >= len) return new JsonPatchApplyError(`Unable to access invalid index: ${i}: invalid index referenced`);
  return con.node[i < 0 ? i + len : i];
}

function containerAdd(con: Container, key: string, value: unknown): void {
  if (con.kind === 'object') {
    con.node[key] = value;
    return;
  }
  if (key === '-') {
    con.node.push(value);
    return;
  }
  const i = atoi(key);
  if (i === null) throw new JsonPatchApplyError(`value was not a proper array index: '${key}'`);
  const size = con.node.length + 1;
  if (i >= size || i < -size) throw new JsonPatchApplyError(`Unable to access invalid index: ${i}: invalid index referenced`);
  con.node.splice(i < 0 ? i + size : i, 0, value);
}

function containerRemove(con: Container, key: string): void {
  if (con.kind === 'object') {
    if (!Object.prototype.hasOwnProperty.call(con.node, key)) throw new JsonPatchApplyError(`Unable to remove nonexistent key: ${key}: missing value`);
    delete con.node[key];
    return;
  }
  const i = atoi(key);
  if (i === null) throw new JsonPatchApplyError(`strconv.Atoi: parsing ${JSON.stringify(key)}: invalid syntax`);
  const len = con.node.length;
  if (i >= len || i < -len) throw new JsonPatchApplyError(`Unable to access invalid index: ${i}: invalid index referenced`);
  con.node.splice(i < 0 ? i + len : i, 1);
}

function containerSet(con: Container, key: string, value: unknown): void {
  if (con.kind === 'object') {
    con.node[key] = value;
    return;
  }
  const i = atoi(key) ?? 0;
  con.node[i < 0 ? i + con.node.length : i] = value;
}

/**
 * RFC 6902 JSON patch as kube-apiserver applies it: staging/src/k8s.io/apiserver/pkg/endpoints/
 * handlers/patch.go (applyJSPatch) decodes the patch with gopkg.in/evanphx/json-patch.v4 and calls
 * Patch.Apply on the object encoded as JSON. This re-implements that library's behaviour, including
 * where it departs from the RFC:
 *
 * - `replace` of a member an object does not have ADDS it (v4's partialDoc.get never reports a
 *   missing key); it fails only if the parent is missing (e.g. /data/K on a Secret without data).
 * - `test` of a missing member passes if the value is null (or absent), fails otherwise; `test` of
 *   the same path before a `replace` is therefore how to make a replace fail on a missing key.
 * - `copy` from a missing member adds null; `move` from one fails (its remove fails).
 * - `add` with path "" fails (the RFC would replace the document); `replace` with path "" replaces it.
 * - A JSON null member counts as missing for `test` and for walking a path.
 *
 * Values are compared structurally. (v4 compares scalars by their JSON bytes; the document side is
 * re-encoded by the API server, so a number written as 1.0 or a string with <, > or & could fail a
 * `test` there that passes here. Base64 and plain strings compare the same either way.)
 *
 * Throws JsonPatchApplyError with v4's message; the document is not modified (ops run on a copy).
 */
export function applyJsonPatch(document: unknown, patch: unknown[]): unknown {
  let doc: unknown = clone(document);
  for (const raw of patch) {
    const op = obj(raw);
    const kind = typeof op.op === 'string' ? op.op : 'unknown';
    const hasValue = Object.prototype.hasOwnProperty.call(op, 'value');
    const value: unknown = hasValue ? clone(op.value ?? null) : null;
    const pathOf = (field: 'path' | 'from', what: string): string => {
      const v = op[field];
      if (v === undefined || v === null) throw new JsonPatchApplyError(`${what} operation failed to decode ${field}: missing value`);
      if (typeof v !== 'string') throw new JsonPatchApplyError(`json: cannot unmarshal ${typeof v} into Go value of type string`);
      return v;
    };
    const root = containerOf(doc);
    if (!root) throw new JsonPatchApplyError('invalid state detected');
    switch (kind) {
      case 'add': {
        const path = pathOf('path', 'add');
        const at = findParent(root, path);
        if (!at) throw new JsonPatchApplyError(`add operation does not apply: doc is missing path: "${path}": missing value`);
        containerAdd(at.con, at.key, value);
        break;
      }
      case 'remove': {
        const path = pathOf('path', 'remove');
        const at = findParent(root, path);
        if (!at) throw new JsonPatchApplyError(`remove operation does not apply: doc is missing path: "${path}": missing value`);
        containerRemove(at.con, at.key);
        break;
      }
      case 'replace': {
        const path = pathOf('path', 'replace');
        if (path === '') {
          if (!containerOf(value)) throw new JsonPatchApplyError('replace operation value must be object or array');
          doc = value;
          break;
        }
        const at = findParent(root, path);
        if (!at) throw new JsonPatchApplyError(`replace operation does not apply: doc is missing path: ${path}: missing value`);
        if (containerGet(at.con, at.key) instanceof JsonPatchApplyError) throw new JsonPatchApplyError(`replace operation does not apply: doc is missing key: ${path}: missing value`);
        containerSet(at.con, at.key, value);
        break;
      }
      case 'move': {
        const from = pathOf('from', 'move');
        const src = findParent(root, from);
        if (!src) throw new JsonPatchApplyError(`move operation does not apply: doc is missing from path: ${from}: missing value`);
        const v = containerGet(src.con, src.key);
        if (v instanceof JsonPatchApplyError) throw new JsonPatchApplyError(`error in move for path: '${src.key}': ${v.message}`);
        containerRemove(src.con, src.key);
        const path = pathOf('path', 'move');
        const dst = findParent(root, path);
        if (!dst) throw new JsonPatchApplyError(`move operation does not apply: doc is missing destination path: ${path}: missing value`);
        containerAdd(dst.con, dst.key, v === undefined ? null : v);
        break;
      }
      case 'copy': {
        const from = pathOf('from', 'copy');
        const src = findParent(root, from);
        if (!src) throw new JsonPatchApplyError(`copy operation does not apply: doc is missing from path: ${from}: missing value`);
        const v = containerGet(src.con, src.key);
        if (v instanceof JsonPatchApplyError) throw new JsonPatchApplyError(`error in copy for from: '${from}': ${v.message}`);
        const path = pathOf('path', 'copy');
        const dst = findParent(root, path);
        if (!dst) throw new JsonPatchApplyError(`copy operation does not apply: doc is missing destination path: ${path}: missing value`);
        containerAdd(dst.con, dst.key, v === undefined ? null : clone(v));
        break;
      }
      case 'test': {
        const path = pathOf('path', 'test');
        if (path === '') {
          if (!deepEqual(doc, value)) throw new JsonPatchApplyError(`testing value ${path} failed: test failed`);
          break;
        }
        const at = findParent(root, path);
        if (!at) throw new JsonPatchApplyError(`test operation does not apply: is missing path: ${path}: missing value`);
        const current = containerGet(at.con, at.key);
        if (current instanceof JsonPatchApplyError) throw new JsonPatchApplyError(`error in test for path: '${path}': ${current.message}`);
        if (current === undefined || current === null) {
          if (value === null) break;
          throw new JsonPatchApplyError(`testing value ${path} failed: test failed`);
        }
        if (!hasValue || !deepEqual(current, value)) throw new JsonPatchApplyError(`testing value ${path} failed: test failed`);
        break;
      }
      default:
        throw new JsonPatchApplyError(`Unexpected kind: ${kind}`);
    }
  }
  return doc;
}

// ---------------------------------------------------------------------------------------------------
// Quantities (k8s.io/apimachinery/pkg/api/resource)

const QUANTITY_RE = /^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$/;
const SUFFIX: Record<string, number> = {
  '': 1,
  n: 1e-9,
  u: 1e-6,
  m: 1e-3,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/** The quantity in base units, or null if it is not a valid resource.Quantity. */
export function parseQuantity(q: unknown): number | null {
  if (typeof q === 'number') return Number.isFinite(q) ? q : null;
  if (typeof q !== 'string') return null;
  const m = QUANTITY_RE.exec(q);
  if (!m) return null;
  const num = Number(m[1]);
  if (!Number.isFinite(num) || !/^[+-]?(\d+\.?\d*|\.\d+)$/.test(m[1] ?? '')) return null;
  const suffix = m[2] ?? '';
  if (suffix in SUFFIX) return num * (SUFFIX[suffix] ?? 1);
  const exp = /^[eE]([-+]?\d+)$/.exec(suffix);
  if (exp) return num * 10 ** Number(exp[1]);
  return null;
}

// ---------------------------------------------------------------------------------------------------
// Label selectors (k8s.io/apimachinery/pkg/labels)

type Requirement = { key: string; op: 'exists' | '!exists' | '=' | '!=' | 'in' | 'notin'; values: string[] };

const LABEL_KEY_RE = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE_RE = /^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$/;

function splitTopLevel(selector: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of selector) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      parts.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  parts.push(cur);
  return parts.map((p) => p.trim()).filter((p) => p.length > 0);
}

export function parseLabelSelector(selector: string): Requirement[] {
  const reqs: Requirement[] = [];
  for (const part of splitTopLevel(selector)) {
    let m: RegExpExecArray | null;
    let req: Requirement;
    if ((m = /^!\s*([^\s=!(),]+)$/.exec(part))) req = { key: m[1] ?? '', op: '!exists', values: [] };
    else if ((m = /^([^\s=!(),]+)\s+(in|notin)\s*\(([^()]*)\)$/.exec(part)))
      req = { key: m[1] ?? '', op: m[2] as 'in' | 'notin', values: (m[3] ?? '').split(',').map((v) => v.trim()) };
    else if ((m = /^([^\s=!(),]+)\s*(==|=|!=)\s*([^\s=!(),]*)$/.exec(part)))
      req = { key: m[1] ?? '', op: m[2] === '!=' ? '!=' : '=', values: [m[3] ?? ''] };
    else if ((m = /^([^\s=!(),]+)$/.exec(part))) req = { key: m[1] ?? '', op: 'exists', values: [] };
    else throw errBadRequest(`unable to parse requirement: found '${part}', expected: identifier, '=', '!=', 'in' or 'notin'`);
    if (!LABEL_KEY_RE.test(req.key)) throw errBadRequest(`unable to parse requirement: invalid label key "${req.key}"`);
    for (const v of req.values) {
      if (!LABEL_VALUE_RE.test(v) || v.length > 63) throw errBadRequest(`unable to parse requirement: invalid label value: "${v}"`);
    }
    reqs.push(req);
  }
  return reqs;
}

function selectorMatches(reqs: Requirement[], labels: Record<string, unknown>): boolean {
  return reqs.every((r) => {
    const has = Object.prototype.hasOwnProperty.call(labels, r.key);
    const v = labels[r.key];
    switch (r.op) {
      case 'exists':
        return has;
      case '!exists':
        return !has;
      case '=':
      case 'in':
        return has && r.values.includes(String(v));
      case '!=':
      case 'notin':
        return !has || !r.values.includes(String(v));
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Decode checks: what would make the Go JSON decoder refuse the body. Returns an error text or null.

const MICROTIME_RE = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})(Z|[+-]\d{2}:\d{2})$/;
const RFC3339_MICRO = '2006-01-02T15:04:05.000000Z07:00';

function microTimeError(field: string, v: unknown): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== 'string') return `json: cannot unmarshal ${typeof v} into Go struct field ${field} of type string`;
  if (!MICROTIME_RE.test(v) || Number.isNaN(Date.parse(v))) {
    const frac = /\d{2}:\d{2}:\d{2}(.*)$/.exec(v)?.[1] ?? v;
    return `${field}: unmarshalerDecoder: parsing time ${JSON.stringify(v)} as ${JSON.stringify(RFC3339_MICRO)}: cannot parse ${JSON.stringify(frac)} as ".000000"`;
  }
  return null;
}

function int32Error(field: string, v: unknown): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== 'number') return `json: cannot unmarshal ${typeof v} into Go struct field ${field} of type int32`;
  if (!Number.isInteger(v) || v > 2147483647 || v < -2147483648) return `json: cannot unmarshal number ${v} into Go struct field ${field} of type int32`;
  return null;
}

function stringMapError(field: string, v: unknown): string | null {
  if (v === undefined || v === null) return null;
  if (!isObject(v)) return `json: cannot unmarshal ${Array.isArray(v) ? 'array' : typeof v} into Go struct field ${field} of type map[string]string`;
  for (const [k, x] of Object.entries(v)) {
    if (typeof x !== 'string') return `json: cannot unmarshal ${x === null ? 'null' : typeof x} into Go struct field ${field} of type string (key ${JSON.stringify(k)})`;
  }
  return null;
}

function boolError(field: string, v: unknown): string | null {
  if (v === undefined || v === null || typeof v === 'boolean') return null;
  return `json: cannot unmarshal ${typeof v} into Go struct field ${field} of type bool`;
}

/** Go's base64.StdEncoding: padded, standard alphabet (CR/LF are skipped). */
function base64Error(v: string): string | null {
  const s = v.replace(/[\r\n]/g, '');
  const bad = /[^A-Za-z0-9+/=]/.exec(s);
  if (bad) return `illegal base64 data at input byte ${bad.index}`;
  if (s.length % 4 !== 0) return `illegal base64 data at input byte ${s.length - (s.length % 4)}`;
  const pad = s.indexOf('=');
  if (pad >= 0 && (pad < s.length - 2 || /[^=]/.test(s.slice(pad)))) return `illegal base64 data at input byte ${pad}`;
  return null;
}

function decodeError(def: ResourceDef, o: JsonObject): string | null {
  const m = obj(o.metadata);
  const e =
    stringMapError('ObjectMeta.metadata.labels', m.labels) ??
    stringMapError('ObjectMeta.metadata.annotations', m.annotations) ??
    int32Error('ObjectMeta.metadata.generation', m.generation);
  if (e) return e;
  switch (def.resource) {
    case 'secrets': {
      if (o.data !== undefined && o.data !== null) {
        if (!isObject(o.data)) return 'json: cannot unmarshal into Go struct field Secret.data of type map[string][]uint8';
        for (const [k, v] of Object.entries(o.data)) {
          if (typeof v !== 'string') return `json: cannot unmarshal ${typeof v} into Go struct field Secret.data of type []uint8 (key ${JSON.stringify(k)})`;
          const b = base64Error(v);
          if (b) return b;
        }
      }
      return stringMapError('Secret.stringData', o.stringData) ?? boolError('Secret.immutable', o.immutable);
    }
    case 'configmaps': {
      const e2 = stringMapError('ConfigMap.data', o.data) ?? boolError('ConfigMap.immutable', o.immutable);
      if (e2) return e2;
      if (o.binaryData !== undefined && o.binaryData !== null) {
        if (!isObject(o.binaryData)) return 'json: cannot unmarshal into Go struct field ConfigMap.binaryData of type map[string][]uint8';
        for (const [k, v] of Object.entries(o.binaryData)) {
          if (typeof v !== 'string') return `json: cannot unmarshal ${typeof v} into Go struct field ConfigMap.binaryData of type []uint8 (key ${JSON.stringify(k)})`;
          const b = base64Error(v);
          if (b) return b;
        }
      }
      return null;
    }
    case 'leases': {
      const s = obj(o.spec);
      return (
        microTimeError('LeaseSpec.spec.acquireTime', s.acquireTime) ??
        microTimeError('LeaseSpec.spec.renewTime', s.renewTime) ??
        int32Error('LeaseSpec.spec.leaseDurationSeconds', s.leaseDurationSeconds) ??
        int32Error('LeaseSpec.spec.leaseTransitions', s.leaseTransitions) ??
        (s.holderIdentity !== undefined && s.holderIdentity !== null && typeof s.holderIdentity !== 'string'
          ? `json: cannot unmarshal ${typeof s.holderIdentity} into Go struct field LeaseSpec.spec.holderIdentity of type string`
          : null)
      );
    }
    case 'deployments':
    case 'statefulsets': {
      const s = obj(o.spec);
      const tm = obj(obj(s.template).metadata);
      return (
        int32Error(`${def.kind}Spec.spec.replicas`, s.replicas) ??
        stringMapError('ObjectMeta.spec.template.metadata.labels', tm.labels) ??
        stringMapError('ObjectMeta.spec.template.metadata.annotations', tm.annotations)
      );
    }
    case 'jobs':
      return jobSpecDecodeError('JobSpec.spec', obj(o.spec));
    case 'cronjobs': {
      const s = obj(o.spec);
      const jt = obj(s.jobTemplate);
      const jm = obj(jt.metadata);
      return (
        (s.schedule !== undefined && s.schedule !== null && typeof s.schedule !== 'string'
          ? `json: cannot unmarshal ${typeof s.schedule} into Go struct field CronJobSpec.spec.schedule of type string`
          : null) ??
        boolError('CronJobSpec.spec.suspend', s.suspend) ??
        stringMapError('ObjectMeta.spec.jobTemplate.metadata.labels', jm.labels) ??
        stringMapError('ObjectMeta.spec.jobTemplate.metadata.annotations', jm.annotations) ??
        jobSpecDecodeError('JobSpec.spec.jobTemplate.spec', obj(jt.spec))
      );
    }
    case 'storageclasses':
      return (
        boolError('StorageClass.allowVolumeExpansion', o.allowVolumeExpansion) ??
        (o.provisioner !== undefined && o.provisioner !== null && typeof o.provisioner !== 'string'
          ? `json: cannot unmarshal ${typeof o.provisioner} into Go struct field StorageClass.provisioner of type string`
          : null) ??
        stringMapError('StorageClass.parameters', o.parameters)
      );
    case 'persistentvolumeclaims': {
      const requests = obj(obj(obj(o.spec).resources).requests);
      for (const [k, v] of Object.entries(requests)) {
        if (parseQuantity(v) === null) return `quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' (${k}: ${JSON.stringify(v)})`;
      }
      return null;
    }
    default:
      return null;
  }
}

function int64Error(field: string, v: unknown): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== 'number') return `json: cannot unmarshal ${typeof v} into Go struct field ${field} of type int64`;
  if (!Number.isInteger(v)) return `json: cannot unmarshal number ${v} into Go struct field ${field} of type int64`;
  return null;
}

function jobSpecDecodeError(path: string, s: JsonObject): string | null {
  const tm = obj(obj(s.template).metadata);
  return (
    int32Error(`${path}.parallelism`, s.parallelism) ??
    int32Error(`${path}.completions`, s.completions) ??
    int32Error(`${path}.backoffLimit`, s.backoffLimit) ??
    int32Error(`${path}.ttlSecondsAfterFinished`, s.ttlSecondsAfterFinished) ??
    int64Error(`${path}.activeDeadlineSeconds`, s.activeDeadlineSeconds) ??
    boolError(`${path}.suspend`, s.suspend) ??
    boolError(`${path}.manualSelector`, s.manualSelector) ??
    stringMapError('ObjectMeta.spec.template.metadata.labels', tm.labels) ??
    stringMapError('ObjectMeta.spec.template.metadata.annotations', tm.annotations)
  );
}

// ---------------------------------------------------------------------------------------------------
// Validation (422) and admission (403)

const DNS1123_SUBDOMAIN_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const CONFIG_KEY_RE = /^[-._a-zA-Z0-9]+$/;

function validateMeta(o: JsonObject): StatusCause[] {
  const causes: StatusCause[] = [];
  const m = obj(o.metadata);
  const name = m.name;
  if (typeof name !== 'string' || name === '') causes.push(required('metadata.name'));
  else if (name.length > 253 || !DNS1123_SUBDOMAIN_RE.test(name))
    causes.push(invalid('metadata.name', name, "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"));
  for (const [k, v] of Object.entries(obj(m.labels))) {
    if (!LABEL_KEY_RE.test(k)) causes.push(invalid('metadata.labels', k, 'name part must consist of alphanumeric characters, \'-\', \'_\' or \'.\''));
    if (typeof v === 'string' && (v.length > 63 || !LABEL_VALUE_RE.test(v)))
      causes.push(invalid('metadata.labels', v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
  }
  // ValidateAnnotations: qualified-name keys (checked lower-cased), all keys and values at most 256 KiB together.
  let annotationBytes = 0;
  for (const [k, v] of Object.entries(obj(m.annotations))) {
    if (!LABEL_KEY_RE.test(k.toLowerCase())) causes.push(invalid('metadata.annotations', k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
    annotationBytes += Buffer.byteLength(k, 'utf8') + Buffer.byteLength(String(v), 'utf8');
  }
  if (annotationBytes > MAX_ANNOTATIONS_BYTES) causes.push(tooLong('metadata.annotations', MAX_ANNOTATIONS_BYTES));
  return causes;
}

// field.TooLong (apimachinery/pkg/util/validation/field): the value is left out of the message.
const tooLong = (field: string, max: number): StatusCause => ({ reason: 'FieldValueTooLong', message: `Too long: must have at most ${max} bytes`, field });

/** validation.IsConfigMapKey: what a Secret or ConfigMap data key must be. */
function configKeyErrors(k: string): string[] {
  const errs: string[] = [];
  if (Buffer.byteLength(k, 'utf8') > 253) errs.push('must be no more than 253 characters');
  if (!CONFIG_KEY_RE.test(k)) errs.push("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')");
  if (k === '.') errs.push("must not be '.'");
  else if (k === '..') errs.push("must not be '..'");
  else if (k.startsWith('..')) errs.push("must not start with '..'");
  return errs;
}

function storageOf(pvc: JsonObject): unknown {
  return obj(obj(obj(pvc.spec).resources).requests).storage;
}

// batch/v1 Job labels (pkg/apis/batch/types.go): the generated selector and the pod template labels.
const JOB_LABELS = {
  legacyControllerUid: 'controller-uid',
  legacyJobName: 'job-name',
  controllerUid: 'batch.kubernetes.io/controller-uid',
  jobName: 'batch.kubernetes.io/job-name',
} as const;

/**
 * SetDefaults_Job and the strategy's PrepareForCreate (pkg/registry/batch/job/strategy.go
 * generateSelector): parallelism and completions 1, backoffLimit 6, completionMode NonIndexed,
 * suspend false, status cleared, and — unless manualSelector is true — the job-name and
 * controller-uid labels added to the pod template (kept when already there: a conflict fails
 * validation) and batch.kubernetes.io/controller-uid added to the selector.
 */
function defaultJob(o: JsonObject, name: string, uid: string): void {
  const spec = obj(o.spec);
  o.spec = spec;
  if (spec.parallelism === undefined || spec.parallelism === null) spec.parallelism = 1;
  if (spec.completions === undefined || spec.completions === null) spec.completions = 1;
  if (spec.backoffLimit === undefined || spec.backoffLimit === null) spec.backoffLimit = 6;
  if (spec.completionMode === undefined || spec.completionMode === null) spec.completionMode = 'NonIndexed';
  if (spec.suspend === undefined || spec.suspend === null) spec.suspend = false;
  if (spec.podReplacementPolicy === undefined || spec.podReplacementPolicy === null) spec.podReplacementPolicy = 'TerminatingOrFailed';
  if (spec.manualSelector === true) return;
  const template = obj(spec.template);
  spec.template = template;
  const tm = obj(template.metadata);
  template.metadata = tm;
  const labels = obj(tm.labels);
  tm.labels = labels;
  for (const k of [JOB_LABELS.legacyJobName, JOB_LABELS.jobName]) if (labels[k] === undefined) labels[k] = name;
  for (const k of [JOB_LABELS.legacyControllerUid, JOB_LABELS.controllerUid]) if (labels[k] === undefined) labels[k] = uid;
  const selector = obj(spec.selector);
  spec.selector = selector;
  const ml = obj(selector.matchLabels);
  selector.matchLabels = ml;
  if (ml[JOB_LABELS.controllerUid] === undefined) ml[JOB_LABELS.controllerUid] = uid;
}

/** validateJobSpec / ValidatePodTemplateSpec as far as a Job's own fields go (pkg/apis/batch/validation). */
function jobSpecCauses(path: string, spec: JsonObject): StatusCause[] {
  const causes: StatusCause[] = [];
  for (const f of ['parallelism', 'completions', 'activeDeadlineSeconds', 'backoffLimit', 'ttlSecondsAfterFinished']) {
    if (typeof spec[f] === 'number' && (spec[f] as number) < 0) causes.push(invalid(`${path}.${f}`, spec[f], 'must be greater than or equal to 0'));
  }
  if (spec.completionMode !== undefined && spec.completionMode !== 'NonIndexed' && spec.completionMode !== 'Indexed') {
    causes.push({ reason: 'FieldValueNotSupported', message: `Unsupported value: ${formatValue(spec.completionMode)}: supported values: "NonIndexed", "Indexed"`, field: `${path}.completionMode` });
  }
  const template = obj(spec.template);
  for (const [k, v] of Object.entries(obj(obj(template.metadata).labels))) {
    if (!LABEL_KEY_RE.test(k)) causes.push(invalid(`${path}.template.labels`, k, "name part must consist of alphanumeric characters, '-', '_' or '.'"));
    if (typeof v === 'string' && v.length > 63) causes.push(invalid(`${path}.template.labels`, v, 'must be no more than 63 characters'));
    else if (typeof v === 'string' && !LABEL_VALUE_RE.test(v))
      causes.push(invalid(`${path}.template.labels`, v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
  }
  const podSpec = obj(template.spec);
  const containers = Array.isArray(podSpec.containers) ? podSpec.containers : [];
  if (containers.length === 0) causes.push(required(`${path}.template.spec.containers`));
  containers.forEach((c, i) => {
    const co = obj(c);
    if (typeof co.name !== 'string' || co.name === '') causes.push(required(`${path}.template.spec.containers[${i}].name`));
    if (typeof co.image !== 'string' || co.image === '') causes.push(required(`${path}.template.spec.containers[${i}].image`));
  });
  // SetDefaults_PodSpec makes an empty restartPolicy Always, and a Job refuses both.
  const rp = podSpec.restartPolicy;
  if (rp === undefined || rp === null || rp === '' || rp === 'Always') {
    causes.push({ reason: 'FieldValueRequired', message: 'Required value: valid values: "OnFailure", "Never"', field: `${path}.template.spec.restartPolicy` });
  } else if (rp !== 'OnFailure' && rp !== 'Never') {
    causes.push({ reason: 'FieldValueNotSupported', message: `Unsupported value: ${formatValue(rp)}: supported values: "OnFailure", "Never"`, field: `${path}.template.spec.restartPolicy` });
  }
  return causes;
}

/** ValidateJob: the generated selector (validateGeneratedSelector) and the spec. */
function jobCauses(o: JsonObject): StatusCause[] {
  const m = obj(o.metadata);
  const spec = obj(o.spec);
  const causes: StatusCause[] = [];
  const selector = spec.selector;
  if (!isObject(selector)) causes.push(required('spec.selector'));
  if (spec.manualSelector !== true && isObject(selector)) {
    const tl = obj(obj(obj(spec.template).metadata).labels);
    const expected: Record<string, string> = {
      [JOB_LABELS.legacyControllerUid]: String(m.uid),
      [JOB_LABELS.legacyJobName]: String(m.name),
      [JOB_LABELS.controllerUid]: String(m.uid),
      [JOB_LABELS.jobName]: String(m.name),
    };
    for (const [k, v] of Object.entries(expected)) {
      if (tl[k] !== v) causes.push(invalid('spec.template.metadata.labels', tl[k] ?? '', `must be '${v}'`));
    }
    const ml = obj(selector.matchLabels);
    const exprs = Array.isArray(selector.matchExpressions) ? selector.matchExpressions : [];
    if (exprs.length > 0 || !Object.entries(ml).every(([k, v]) => expected[k] === v)) causes.push(invalid('spec.selector', selector, '`selector` not auto-generated'));
  }
  causes.push(...jobSpecCauses('spec', spec));
  if (isObject(selector)) {
    const tl = obj(obj(obj(spec.template).metadata).labels);
    if (!Object.entries(obj(selector.matchLabels)).every(([k, v]) => tl[k] === v))
      causes.push(invalid('spec.template.metadata.labels', tl, '`selector` does not match template `labels`'));
  }
  return causes;
}

// ---------------------------------------------------------------------------------------------------
// The stand-in

interface Fault {
  remaining: number;
  status?: number;
  delayMs?: number;
  message?: string;
  match: RequestMatch | undefined;
  /** Ends the holds of this delay fault now (see DelayHandle.release). */
  wake?: Set<() => void>;
  onArrive?: (req: RecordedRequest) => void;
}

/**
 * What delayNext returns: the test waits for `arrived` (the matching request has reached the stand-in
 * and is held, unanswered), does what must happen "meanwhile", then calls `release()` to have it
 * served at once. The delay given to delayNext is then only an upper bound, never a window the test
 * has to hit.
 */
export interface DelayHandle {
  /** Resolves with the first held request (as recorded: status 0) once it has arrived. Never rejects. */
  readonly arrived: Promise<RecordedRequest>;
  /** Serves every request this delay holds now, and delays no further ones. */
  release(): void;
}

interface Stored {
  def: ResourceDef;
  obj: JsonObject;
}

export class K8sStandIn {
  readonly token: string;
  private server: http.Server | null = null;
  private baseUrl = '';
  private readonly store = new Map<string, Stored>();
  private readonly namespaces = new Set<string>();
  private readonly recorded: RecordedRequest[] = [];
  private faults: Fault[] = [];
  private revision = 100;
  private rolloutDelayMs: number | null;
  private readonly defaultNamespace: string;
  private readonly timers = new Map<string, NodeJS.Timeout[]>();
  /** Requests held by delayNext, to be let go on close. */
  private readonly holds = new Set<() => void>();
  /** Per-workload rollout outcomes (setRolloutOutcome), by store key. */
  private readonly rolloutOutcomes = new Map<string, RolloutOutcome>();
  /** Rollouts under way, by store key: not yet observed by the controller, or observed and progressing. */
  private readonly rollouts = new Map<string, 'unobserved' | 'progressing'>();
  /** Jobs the simulated job controller has finished, by store key (setJobOutcome). */
  private readonly jobOutcomes = new Map<string, JobOutcome>();

  constructor(options: K8sStandInOptions = {}) {
    this.token = options.token ?? `standin-${randomUUID()}`;
    this.defaultNamespace = options.defaultNamespace ?? 'default';
    this.namespaces.add(this.defaultNamespace);
    for (const ns of options.namespaces ?? []) this.namespaces.add(ns);
    this.rolloutDelayMs = options.rolloutDelayMs === undefined ? 50 : options.rolloutDelayMs;
  }

  /** Starts listening on 127.0.0.1, port 0. Resolves to the base URL (http://127.0.0.1:PORT). */
  async start(): Promise<string> {
    if (this.server) return this.baseUrl;
    const server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        // A bug in the stand-in: answer 500 rather than hang the client.
        if (!res.headersSent) this.send(res, 500, new ApiStatusError(500, 'InternalError', `stand-in failure: ${String(err)}`).toStatus());
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const addr = server.address();
    if (addr === null || typeof addr === 'string') throw new Error('k8s stand-in: no TCP address');
    this.server = server;
    this.baseUrl = `http://127.0.0.1:${addr.port}`;
    return this.baseUrl;
  }

  /** Stops the server, drops keep-alive connections and cancels simulated controllers. */
  async close(): Promise<void> {
    for (const list of this.timers.values()) for (const t of list) clearTimeout(t);
    this.timers.clear();
    this.rollouts.clear();
    this.jobOutcomes.clear();
    for (const wake of [...this.holds]) wake();
    const server = this.server;
    this.server = null;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  get url(): string {
    if (!this.baseUrl) throw new Error('k8s stand-in not started');
    return this.baseUrl;
  }

  /**
   * Writes a kubeconfig for this stand-in into dir (mode 0600, since it holds the token) and returns
   * its path. Plain http needs `insecure-skip-tls-verify: true` in client-node. `token` overrides the
   * token written (to test authentication failures).
   */
  async writeKubeconfig(dir: string, opts: { token?: string; namespace?: string; fileName?: string } = {}): Promise<string> {
    const file = path.join(dir, opts.fileName ?? 'kubeconfig');
    const config = {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'standin', cluster: { server: this.url, 'insecure-skip-tls-verify': true } }],
      users: [{ name: 'standin', user: { token: opts.token ?? this.token } }],
      contexts: [{ name: 'standin', context: { cluster: 'standin', user: 'standin', namespace: opts.namespace ?? this.defaultNamespace } }],
      'current-context': 'standin',
    };
    // JSON is YAML; client-node parses kubeconfigs with js-yaml.
    await writeFile(file, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
    return file;
  }

  // ----- requests and faults -----

  /** Every request so far, oldest first (copies). */
  get requests(): RecordedRequest[] {
    return clone(this.recorded);
  }

  clearRequests(): void {
    this.recorded.length = 0;
  }

  /** The next `count` requests matching `match` are answered with `status` and a Status body instead of being served. */
  failNext(count: number, status: number, match?: RequestMatch, message?: string): void {
    const fault: Fault = { remaining: count, status, match };
    if (message !== undefined) fault.message = message;
    this.faults.push(fault);
  }

  /**
   * The next `count` matching requests are served normally but only after `ms` milliseconds, or as
   * soon as the returned handle's release() is called. A held request is served against the store as
   * it is when the hold ends, as the API server would serve a request that reached it that late.
   *
   * Injecting a concurrent edit between a client's read and its write (here: a Secret's PATCH):
   *
   *   const held = k8s.delayNext(1, 30_000, { method: 'PATCH', resource: 'secrets', name: 'app-secrets' });
   *   const patching = client.patchSecretKeyIfUnchanged('app-secrets', 'DATABASE_URL', before, after, { timeoutMs: 30_000 });
   *   await held.arrived;                        // the PATCH is at the server, unanswered
   *   await other.replaceSecretKey('app-secrets', 'DATABASE_URL', edited);   // someone else writes meanwhile
   *   held.release();                            // now the PATCH is applied, to the edited Secret
   *   await expect(patching).rejects.toBeInstanceOf(SecretChangedError);
   *
   * Only the held request is delayed (the fault is used up when it arrives), so the concurrent edit,
   * through the same stand-in, is served at once. Match on resource + name rather than a path
   * substring, which would also match longer names. Nothing here depends on how long things take:
   * `ms` is only an upper bound (keep it above the test's wait, and the client's timeout above it).
   */
  delayNext(count: number, ms: number, match?: RequestMatch): DelayHandle {
    let resolveArrived: (req: RecordedRequest) => void = () => undefined;
    const arrived = new Promise<RecordedRequest>((resolve) => (resolveArrived = resolve));
    const fault: Fault = { remaining: count, delayMs: ms, match, wake: new Set(), onArrive: (req) => resolveArrived(clone(req)) };
    this.faults.push(fault);
    return {
      arrived,
      release: () => {
        fault.remaining = 0;
        this.faults = this.faults.filter((f) => f !== fault);
        for (const wake of [...(fault.wake ?? [])]) wake();
      },
    };
  }

  clearFaults(): void {
    this.faults = [];
  }

  /**
   * How long simulated rollouts (and PVC resizes) take from now on; null: they are observed but never
   * finish. Rollouts already under way keep the delay they started with; to act on one of those, or on
   * one workload only, use setRolloutOutcome.
   */
  setRolloutDelay(ms: number | null): void {
    this.rolloutDelayMs = ms;
  }

  /**
   * The outcome of one workload's rollouts, overriding setRolloutDelay for it (null: back to the
   * shared delay). It applies at once to a rollout of that workload already under way — a held
   * rollout given `{ completeAfterMs: 0 }` finishes without a further change — and to later ones.
   */
  setRolloutOutcome(name: string, outcome: RolloutOutcome | null, opts: { kind?: 'deployment' | 'statefulset'; namespace?: string } = {}): void {
    const kind = opts.kind ?? 'deployment';
    if (outcome === 'progressDeadlineExceeded' && kind === 'statefulset') {
      throw new Error('k8s stand-in: StatefulSets have no progress deadline (no ProgressDeadlineExceeded upstream)');
    }
    if (typeof outcome === 'object' && outcome !== null && !(Number.isFinite(outcome.completeAfterMs) && outcome.completeAfterMs >= 0)) {
      throw new Error(`k8s stand-in: completeAfterMs must be a non-negative number, got ${outcome.completeAfterMs}`);
    }
    const k = key(kind === 'deployment' ? 'deployments' : 'statefulsets', opts.namespace ?? this.defaultNamespace, name);
    if (outcome === null) this.rolloutOutcomes.delete(k);
    else this.rolloutOutcomes.set(k, outcome);
    if (this.rollouts.has(k)) {
      this.cancelTimers(k);
      this.scheduleRollout(k, this.outcomeOf(k));
    }
  }

  // ----- seeding -----

  addNamespace(ns: string): void {
    this.namespaces.add(ns);
  }

  /**
   * Seeds (or replaces) a StorageClass object, as the API serves it: provisioner, reclaimPolicy Delete
   * and volumeBindingMode Immediate (SetDefaults_StorageClass). `allowVolumeExpansion` null leaves the
   * field out, which the resize admission reads as false.
   */
  seedStorageClass(name: string, allowVolumeExpansion: boolean | null, opts: { provisioner?: string } = {}): JsonObject {
    const o: JsonObject = { metadata: { name }, provisioner: opts.provisioner ?? 'ebs.csi.aws.com', reclaimPolicy: 'Delete', volumeBindingMode: 'Immediate' };
    if (allowVolumeExpansion !== null) o.allowVolumeExpansion = allowVolumeExpansion;
    return this.seed('storageclasses', CLUSTER, o);
  }

  /** Seeds a Secret. `data` values are plain text (encoded here); `rawData` values are stored as given (already base64). */
  seedSecret(s: { name: string; namespace?: string; data?: Record<string, string>; rawData?: Record<string, string>; immutable?: boolean; labels?: Record<string, string> }): JsonObject {
    const data: Record<string, string> = { ...(s.rawData ?? {}) };
    for (const [k, v] of Object.entries(s.data ?? {})) data[k] = Buffer.from(v, 'utf8').toString('base64');
    const o: JsonObject = { metadata: { name: s.name, labels: s.labels }, type: 'Opaque', data };
    if (s.immutable !== undefined) o.immutable = s.immutable;
    return this.seed('secrets', s.namespace, o);
  }

  seedDeployment(d: { name: string; namespace?: string; replicas?: number; labels?: Record<string, string>; templateAnnotations?: Record<string, string> }): JsonObject {
    return this.seed('deployments', d.namespace, this.workload(d, 'Deployment'));
  }

  seedStatefulSet(d: { name: string; namespace?: string; replicas?: number; labels?: Record<string, string>; templateAnnotations?: Record<string, string> }): JsonObject {
    const o = this.workload(d, 'StatefulSet');
    const spec = obj(o.spec);
    spec.serviceName = d.name;
    spec.updateStrategy = { type: 'RollingUpdate', rollingUpdate: { partition: 0 } };
    return this.seed('statefulsets', d.namespace, o);
  }

  /**
   * Seeds a pod with a status as the kubelet writes it. By default one container "main", ready and
   * running; `restartCount` sets main's restarts; `containerStatuses` gives the containers instead
   * (the spec lists the same names). Container states default from the phase (Running: running,
   * Pending: waiting ContainerCreating, Succeeded/Failed: terminated).
   */
  seedPod(p: SeedPod): JsonObject {
    const names = p.containerStatuses?.map((c) => c.name) ?? ['main'];
    const o: JsonObject = {
      metadata: { name: p.name, labels: p.labels ?? {} },
      spec: { containers: names.map((n) => ({ name: n, image: `registry.example/${n}:1` })), nodeName: p.nodeName ?? 'node-1' },
      status: podStatus(p, undefined),
    };
    return this.seed('pods', p.namespace, o);
  }

  /**
   * Writes a pod's status as the kubelet would (a status write: new resourceVersion, spec and labels
   * untouched). Fields not given keep their values; `containerStatuses` must name the pod's containers.
   */
  setPodStatus(name: string, st: PodStatusInput, namespace: string = this.defaultNamespace): JsonObject {
    const k = key('pods', namespace, name);
    const s = this.store.get(k);
    if (!s) throw new Error(`k8s stand-in: no pod ${namespace}/${name}`);
    const containers = (obj(s.obj.spec).containers as JsonObject[] | undefined)?.map((c) => String(c.name)) ?? [];
    for (const c of st.containerStatuses ?? []) {
      if (!containers.includes(c.name)) throw new Error(`k8s stand-in: pod ${name} has no container ${c.name}`);
    }
    this.writeStatus(k, (x) => {
      x.obj.status = podStatus(st, obj(x.obj.status));
    });
    return clone(this.store.get(k)?.obj ?? {});
  }

  /** Seeds a ConfigMap (data as given: plain strings). */
  seedConfigMap(c: { name: string; namespace?: string; data?: Record<string, string>; labels?: Record<string, string>; annotations?: Record<string, string>; immutable?: boolean }): JsonObject {
    const metadata: JsonObject = { name: c.name };
    if (c.labels) metadata.labels = { ...c.labels };
    if (c.annotations) metadata.annotations = { ...c.annotations };
    const o: JsonObject = { metadata, data: { ...(c.data ?? {}) } };
    if (c.immutable !== undefined) o.immutable = c.immutable;
    return this.seed('configmaps', c.namespace, o);
  }

  /** Seeds a bound PVC. Its StorageClass (default "standard") is registered with allowVolumeExpansion (default true) unless already known. */
  seedPvc(p: { name: string; namespace?: string; storage: string; storageClassName?: string; allowVolumeExpansion?: boolean; bound?: boolean }): JsonObject {
    const sc = p.storageClassName ?? 'standard';
    if (p.allowVolumeExpansion !== undefined || !this.store.has(key('storageclasses', CLUSTER, sc))) this.seedStorageClass(sc, p.allowVolumeExpansion ?? true);
    const bound = p.bound ?? true;
    const spec: JsonObject = { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: p.storage } }, storageClassName: sc, volumeMode: 'Filesystem' };
    if (bound) spec.volumeName = `pvc-${randomUUID()}`;
    const o: JsonObject = {
      metadata: { name: p.name },
      spec,
      status: bound ? { phase: 'Bound', accessModes: ['ReadWriteOnce'], capacity: { storage: p.storage } } : { phase: 'Pending' },
    };
    return this.seed('persistentvolumeclaims', p.namespace, o);
  }

  /** Seeds a Lease; times are Dates (written as MicroTime) or strings (written as given). */
  seedLease(l: { name: string; namespace?: string; holderIdentity?: string; leaseDurationSeconds?: number; acquireTime?: Date | string; renewTime?: Date | string; leaseTransitions?: number }): JsonObject {
    const spec: JsonObject = {};
    if (l.holderIdentity !== undefined) spec.holderIdentity = l.holderIdentity;
    if (l.leaseDurationSeconds !== undefined) spec.leaseDurationSeconds = l.leaseDurationSeconds;
    if (l.acquireTime !== undefined) spec.acquireTime = typeof l.acquireTime === 'string' ? l.acquireTime : microTime(l.acquireTime);
    if (l.renewTime !== undefined) spec.renewTime = typeof l.renewTime === 'string' ? l.renewTime : microTime(l.renewTime);
    if (l.leaseTransitions !== undefined) spec.leaseTransitions = l.leaseTransitions;
    return this.seed('leases', l.namespace, { metadata: { name: l.name }, spec });
  }

  /**
   * Seeds a CronJob (suspended by default, as a template that only `kubectl create job --from` uses).
   * `jobTemplate` is its spec.jobTemplate as the API holds it; by default one container "migrate"
   * running `npx prisma migrate deploy`, restartPolicy Never, backoffLimit 0.
   */
  seedCronJob(c: { name: string; namespace?: string; schedule?: string; suspend?: boolean; jobTemplate?: JsonObject }): JsonObject {
    const jobTemplate = c.jobTemplate ?? {
      metadata: { labels: { app: c.name } },
      spec: {
        backoffLimit: 0,
        template: {
          metadata: { labels: { app: c.name } },
          spec: { restartPolicy: 'Never', containers: [{ name: 'migrate', image: `registry.example/${c.name}:1`, command: ['npx', 'prisma', 'migrate', 'deploy'] }] },
        },
      },
    };
    const o: JsonObject = { metadata: { name: c.name }, spec: { schedule: c.schedule ?? '0 0 1 1 *', suspend: c.suspend ?? true, concurrencyPolicy: 'Forbid', jobTemplate: clone(jobTemplate) }, status: {} };
    const causes = [...validateMeta(o), ...this.validate(RESOURCES.find((r) => r.resource === 'cronjobs')!, o, undefined)];
    if (causes.length > 0) throw new Error(`k8s stand-in: invalid CronJob seed: ${causes.map((x) => `${x.field}: ${x.message}`).join('; ')}`);
    return this.seed('cronjobs', c.namespace, o);
  }

  /**
   * Where the simulated job controller takes a Job now: 'complete' (the Complete condition, succeeded
   * 1), 'failed' (Failed with BackoffLimitExceeded, failed backoffLimit + 1) or 'running' (active 1, no
   * condition). A finished Job stays finished, as upstream: a second outcome after complete or failed throws.
   */
  setJobOutcome(name: string, outcome: JobOutcome, namespace: string = this.defaultNamespace): JsonObject {
    const k = key('jobs', namespace, name);
    if (!this.store.has(k)) throw new Error(`k8s stand-in: no job ${namespace}/${name}`);
    const done = this.jobOutcomes.get(k);
    if (done && done !== 'running') throw new Error(`k8s stand-in: job ${namespace}/${name} already ${done}`);
    this.cancelTimers(k);
    this.jobOutcomes.set(k, outcome);
    this.writeStatus(k, (s) => setJobStatus(s.obj, outcome));
    return clone(this.store.get(k)?.obj ?? {});
  }

  /** The Jobs of a namespace, oldest first (copies). */
  jobs(namespace: string = this.defaultNamespace): JsonObject[] {
    const out: JsonObject[] = [];
    for (const s of this.store.values()) if (s.def.resource === 'jobs' && obj(s.obj.metadata).namespace === namespace) out.push(clone(s.obj));
    return out.sort((a, b) => Number(obj(a.metadata).resourceVersion) - Number(obj(b.metadata).resourceVersion));
  }

  // ----- accessors (deep copies) -----

  get(resource: ResourceName, name: string, namespace: string = this.defaultNamespace): JsonObject | undefined {
    const s = this.store.get(key(resource, namespace, name));
    return s ? clone(s.obj) : undefined;
  }

  secret(name: string, namespace?: string): JsonObject | undefined {
    return this.get('secrets', name, namespace);
  }
  /** A Secret's value, decoded from base64 to UTF-8. */
  secretValue(name: string, dataKey: string, namespace?: string): string | undefined {
    const v = obj(this.secret(name, namespace)?.data)[dataKey];
    return typeof v === 'string' ? Buffer.from(v, 'base64').toString('utf8') : undefined;
  }
  deployment(name: string, namespace?: string): JsonObject | undefined {
    return this.get('deployments', name, namespace);
  }
  statefulSet(name: string, namespace?: string): JsonObject | undefined {
    return this.get('statefulsets', name, namespace);
  }
  pod(name: string, namespace?: string): JsonObject | undefined {
    return this.get('pods', name, namespace);
  }
  pvc(name: string, namespace?: string): JsonObject | undefined {
    return this.get('persistentvolumeclaims', name, namespace);
  }
  storageClass(name: string): JsonObject | undefined {
    return this.get('storageclasses', name, CLUSTER);
  }
  lease(name: string, namespace?: string): JsonObject | undefined {
    return this.get('leases', name, namespace);
  }
  configMap(name: string, namespace?: string): JsonObject | undefined {
    return this.get('configmaps', name, namespace);
  }

  // ----- internals: seeding -----

  private workload(d: { name: string; replicas?: number; labels?: Record<string, string>; templateAnnotations?: Record<string, string> }, kind: string): JsonObject {
    const labels = d.labels ?? { app: d.name };
    const templateMeta: JsonObject = { labels };
    if (d.templateAnnotations) templateMeta.annotations = d.templateAnnotations;
    return {
      metadata: { name: d.name, labels },
      spec: {
        replicas: d.replicas ?? 1,
        selector: { matchLabels: labels },
        template: { metadata: templateMeta, spec: { containers: [{ name: 'main', image: `registry.example/${d.name}:1` }] } },
        ...(kind === 'Deployment' ? { strategy: { type: 'RollingUpdate' }, progressDeadlineSeconds: 600 } : {}),
      },
    };
  }

  private seed(resource: ResourceName, namespace: string | undefined, o: JsonObject): JsonObject {
    const def = RESOURCES.find((r) => r.resource === resource);
    if (!def) throw new Error(`unknown resource ${resource}`);
    const ns = def.clusterScoped ? CLUSTER : (namespace ?? this.defaultNamespace);
    if (!def.clusterScoped) this.namespaces.add(ns);
    const m = meta(o);
    if (def.clusterScoped) delete m.namespace;
    else m.namespace = ns;
    m.uid = randomUUID();
    m.creationTimestamp = rfc3339(new Date());
    m.resourceVersion = String(++this.revision);
    if (def.tracksGeneration) m.generation = 1;
    if (def.resource === 'deployments' || def.resource === 'statefulsets') setWorkloadStatus(def, o, 'complete');
    if (isObject(m.labels)) for (const [k, v] of Object.entries(m.labels)) if (v === undefined) delete m.labels[k];
    pruneEmpty(def, o);
    const name = String(m.name);
    this.store.set(key(resource, ns, name), { def, obj: o });
    return clone(o);
  }

  // ----- internals: HTTP -----

  private send(res: http.ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-cache, private' });
    res.end(text);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    const url = new URL(req.url ?? '/', 'http://standin');
    const query: Record<string, string> = {};
    for (const [k, v] of url.searchParams) query[k] = v;
    const method = (req.method ?? 'GET').toUpperCase();
    const contentType = req.headers['content-type']?.split(';')[0]?.trim().toLowerCase();
    let body: unknown = undefined;
    let bodyIsJson = true;
    if (raw.length > 0) {
      try {
        body = JSON.parse(raw);
      } catch {
        body = raw;
        bodyIsJson = false;
      }
    }
    const record: RecordedRequest = {
      method,
      path: url.pathname,
      query,
      contentType,
      body: clone(body),
      status: 0,
      authorized: req.headers.authorization === `Bearer ${this.token}`,
      injected: false,
    };
    this.recorded.push(record);
    const reply = (status: number, payload: unknown): void => {
      record.status = status;
      this.send(res, status, payload);
    };

    if (!record.authorized) {
      reply(401, new ApiStatusError(401, 'Unauthorized', 'Unauthorized').toStatus());
      return;
    }
    const fault = this.faults.find((f) => f.remaining > 0 && matches(f.match, { method, path: url.pathname, query, body }));
    if (fault) {
      fault.remaining--;
      this.faults = this.faults.filter((f) => f.remaining > 0);
      if (fault.delayMs !== undefined) {
        const ms = fault.delayMs;
        await new Promise<void>((resolve) => {
          const wake = (): void => {
            clearTimeout(timer);
            fault.wake?.delete(wake);
            this.holds.delete(wake);
            resolve();
          };
          const timer = setTimeout(wake, ms);
          fault.wake?.add(wake);
          this.holds.add(wake);
          fault.onArrive?.(record);
        });
      }
      if (fault.status !== undefined) {
        record.injected = true;
        const reason = REASONS[fault.status] ?? 'Unknown';
        reply(fault.status, new ApiStatusError(fault.status, reason, fault.message ?? `injected fault: ${reason}`).toStatus());
        return;
      }
    }
    if (Buffer.byteLength(raw, 'utf8') > MAX_REQUEST_BODY_BYTES) {
      // handlers/rest.go limitedReadBody with the default --max-request-body-bytes (3 MiB).
      reply(413, new ApiStatusError(413, 'RequestEntityTooLarge', `Request entity too large: limit is ${MAX_REQUEST_BODY_BYTES}`).toStatus());
      return;
    }
    try {
      const [status, payload] = this.serve(method, url.pathname, query, contentType, raw, body, bodyIsJson, record);
      reply(status, payload);
    } catch (err) {
      if (err instanceof ApiStatusError) reply(err.code, err.toStatus());
      else throw err;
    }
  }

  private serve(
    method: string,
    pathname: string,
    query: Record<string, string>,
    contentType: string | undefined,
    raw: string,
    body: unknown,
    bodyIsJson: boolean,
    record: RecordedRequest,
  ): [number, unknown] {
    const route = parseRoute(pathname);
    if (!route) throw errPathNotFound();
    const { def, namespace, name, subresource } = route;
    if (subresource !== undefined) throw errPathNotFound();

    if (method === 'GET' && name === undefined) return [200, this.list(def, namespace, query)];
    if (method === 'GET' && name !== undefined) return [200, this.read(def, namespace, name)];
    if (method === 'POST' && name === undefined) {
      const o = this.decodeBody(def, contentType, raw, body, bodyIsJson);
      return [201, this.create(def, namespace, o)];
    }
    if (method === 'PUT' && name !== undefined) {
      const o = this.decodeBody(def, contentType, raw, body, bodyIsJson);
      return this.update(def, namespace, name, o);
    }
    if (method === 'PATCH' && name !== undefined) return [200, this.patch(def, namespace, name, contentType, body, bodyIsJson, record)];
    if (method === 'DELETE' && name !== undefined) return [200, this.remove(def, namespace, name, body)];
    throw errMethodNotAllowed();
  }

  private decodeBody(def: ResourceDef, contentType: string | undefined, raw: string, body: unknown, bodyIsJson: boolean): JsonObject {
    if (contentType !== 'application/json') {
      throw new ApiStatusError(
        415,
        'UnsupportedMediaType',
        `the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf, application/cbor`,
      );
    }
    if (raw.length === 0) throw errBadRequest('the object provided is unrecognized (must be of type ' + def.kind + '): couldn\'t get version/kind; json parse error: unexpected end of JSON input (<empty>)');
    if (!bodyIsJson || !isObject(body)) {
      throw errBadRequest(`the object provided is unrecognized (must be of type ${def.kind}): couldn't get version/kind; json parse error: invalid character (${raw.slice(0, 30)})`);
    }
    if (body.kind !== undefined && body.kind !== def.kind) {
      throw errBadRequest(`${String(body.kind)} in version "${String(body.apiVersion ?? '')}" cannot be handled as a ${def.kind}: no kind "${String(body.kind)}" is registered for the object`);
    }
    if (body.apiVersion !== undefined && body.apiVersion !== apiVersionOf(def)) {
      throw errBadRequest(`${def.kind} in version "${String(body.apiVersion)}" cannot be handled as a ${def.kind}: unknown apiVersion`);
    }
    const err = decodeError(def, body);
    if (err) throw errBadRequest(`${def.kind} in version "${def.version}" cannot be handled as a ${def.kind}: ${err}`);
    const o = clone(body);
    delete o.kind;
    delete o.apiVersion;
    return o;
  }

  private requireNamespace(ns: string): void {
    if (!this.namespaces.has(ns)) throw errNamespaceNotFound(ns);
  }

  private list(def: ResourceDef, namespace: string, query: Record<string, string>): JsonObject {
    const reqs = query.labelSelector ? parseLabelSelector(query.labelSelector) : [];
    const fields = query.fieldSelector ? parseFieldSelector(def, query.fieldSelector) : [];
    const items: JsonObject[] = [];
    for (const s of this.store.values()) {
      if (s.def !== def) continue;
      const m = obj(s.obj.metadata);
      if ((m.namespace ?? CLUSTER) !== namespace) continue;
      if (!selectorMatches(reqs, obj(m.labels))) continue;
      if (!fields.every((f) => (fieldValue(s.obj, f.field) === f.value) === (f.op === '='))) continue;
      const item = clone(s.obj);
      delete item.kind;
      delete item.apiVersion;
      items.push(item);
    }
    items.sort((a, b) => String(obj(a.metadata).name).localeCompare(String(obj(b.metadata).name)));
    return { kind: `${def.kind}List`, apiVersion: apiVersionOf(def), metadata: { resourceVersion: String(this.revision) }, items };
  }

  private read(def: ResourceDef, namespace: string, name: string): JsonObject {
    const s = this.store.get(key(def.resource, namespace, name));
    if (!s) throw errNotFound(def, name);
    return this.render(s);
  }

  private render(s: Stored): JsonObject {
    return { kind: s.def.kind, apiVersion: apiVersionOf(s.def), ...clone(s.obj) };
  }

  private create(def: ResourceDef, namespace: string, o: JsonObject): JsonObject {
    if (!def.clusterScoped) this.requireNamespace(namespace);
    const m = meta(o);
    // rest.BeforeCreate: a cluster-scoped object's namespace is cleared, whatever was sent.
    if (def.clusterScoped) delete m.namespace;
    if (m.namespace !== undefined && m.namespace !== namespace)
      throw errBadRequest('the namespace of the provided object does not match the namespace sent on the request');
    const name = typeof m.name === 'string' ? m.name : '';
    if (this.store.has(key(def.resource, namespace, name))) throw errAlreadyExists(def, name);
    if (m.resourceVersion !== undefined && m.resourceVersion !== '')
      // etcd3 store.Create: a generic error, so the client sees 500.
      throw new ApiStatusError(500, 'InternalError', 'Internal error occurred: resourceVersion should not be set on objects to be created');
    normalize(def, o);
    // The server assigns the uid (whatever the client sent); a Job's generated selector needs it before validation.
    m.uid = randomUUID();
    if (def.resource === 'jobs') {
      defaultJob(o, name, String(m.uid));
      delete o.status;
    }
    const causes = [...validateMeta(o), ...this.validate(def, o, undefined)];
    if (causes.length > 0) throw errInvalid(def, name, causes);
    return this.commit(def, namespace, name, o, undefined);
  }

  private update(def: ResourceDef, namespace: string, name: string, o: JsonObject): [number, JsonObject] {
    const m = meta(o);
    if (m.name !== undefined && m.name !== name) throw errBadRequest(`the name of the object (${String(m.name)}) does not match the name on the URL (${name})`);
    if (m.namespace !== undefined && m.namespace !== namespace)
      throw errBadRequest('the namespace of the provided object does not match the namespace sent on the request');
    m.name = name;
    if (def.clusterScoped) delete m.namespace;
    const s = this.store.get(key(def.resource, namespace, name));
    if (!s) {
      if (!def.allowCreateOnUpdate) throw errNotFound(def, name);
      delete m.resourceVersion; // GuaranteedUpdate clears it when creating
      return [201, this.create(def, namespace, o)];
    }
    const rv = typeof m.resourceVersion === 'string' ? m.resourceVersion : '';
    if (rv === '' && !def.allowUnconditionalUpdate) {
      throw errInvalid(def, name, [invalid('metadata.resourceVersion', '0x0', 'must be specified for an update')]);
    }
    if (rv !== '' && rv !== obj(s.obj.metadata).resourceVersion) throw errConflict(def, name);
    normalize(def, o);
    const causes = [...validateMeta(o), ...this.validate(def, o, s.obj)];
    if (causes.length > 0) throw errInvalid(def, name, causes);
    this.admit(def, name, o, s.obj);
    return [200, this.commit(def, namespace, name, o, s.obj)];
  }

  private patch(def: ResourceDef, namespace: string, name: string, contentType: string | undefined, body: unknown, bodyIsJson: boolean, record?: RecordedRequest): JsonObject {
    const types = ['application/json-patch+json', 'application/merge-patch+json', 'application/strategic-merge-patch+json'];
    if (contentType === undefined || !types.includes(contentType)) {
      throw new ApiStatusError(
        415,
        'UnsupportedMediaType',
        `the body of the request was in an unknown format - accepted media types include: ${types.join(', ')}, application/apply-patch+yaml, application/apply-patch+cbor`,
      );
    }
    const s = this.store.get(key(def.resource, namespace, name));
    if (!s) throw errNotFound(def, name);
    if (!bodyIsJson || body === undefined) throw errBadRequest('error decoding patch: invalid character looking for beginning of value');
    const current = this.render(s);
    let patched: unknown;
    if (contentType === 'application/json-patch+json') {
      // jsonpatch.DecodePatch: a JSON array of objects, else 400 with the Go decoder's error.
      if (!Array.isArray(body)) throw errBadRequest(`json: cannot unmarshal ${goJsonType(body)} into Go value of type jsonpatch.Patch`);
      const notAnOp = body.find((op) => !isObject(op));
      if (notAnOp !== undefined) throw errBadRequest(`json: cannot unmarshal ${goJsonType(notAnOp)} into Go value of type jsonpatch.Operation`);
      if (body.length > MAX_JSON_PATCH_OPERATIONS) {
        throw new ApiStatusError(413, 'RequestEntityTooLarge', `Request entity too large: The allowed maximum operations in a JSON patch is ${MAX_JSON_PATCH_OPERATIONS}, got ${body.length}`);
      }
      try {
        patched = applyJsonPatch(current, body);
      } catch (err) {
        if (!(err instanceof JsonPatchApplyError)) throw err;
        if (record) record.patchError = err.message;
        throw patchNotApplied();
      }
    } else {
      if (!isObject(body)) throw errBadRequest('json: cannot unmarshal array into Go value of type map[string]interface {}');
      patched = contentType === 'application/merge-patch+json' ? mergePatch(current, body) : strategicMergePatch(current, body);
    }
    if (!isObject(patched)) throw errBadRequest('patch produced a non-object');
    const decodeErr = decodeError(def, patched);
    if (decodeErr) {
      throw new ApiStatusError(422, 'Invalid', ` "" is invalid: patch: Invalid value: ${JSON.stringify(JSON.stringify(patched))}: ${decodeErr}`, {
        causes: [{ reason: 'FieldValueInvalid', message: `Invalid value: ${JSON.stringify(JSON.stringify(patched))}: ${decodeErr}`, field: 'patch' }] as unknown as JsonObject[],
      });
    }
    const pm = meta(patched);
    const cm = obj(current.metadata);
    if (pm.name !== cm.name || pm.namespace !== cm.namespace) {
      throw errInvalid(def, name, [invalid('metadata.name', pm.name, 'field is immutable')]);
    }
    if (pm.resourceVersion !== cm.resourceVersion) {
      if (pm.resourceVersion === undefined || pm.resourceVersion === '') pm.resourceVersion = cm.resourceVersion;
      else throw errConflict(def, name);
    }
    delete patched.kind;
    delete patched.apiVersion;
    normalize(def, patched);
    const causes = [...validateMeta(patched), ...this.validate(def, patched, s.obj)];
    if (causes.length > 0) throw errInvalid(def, name, causes);
    this.admit(def, name, patched, s.obj);
    return this.commit(def, namespace, name, patched, s.obj);
  }

  private remove(def: ResourceDef, namespace: string, name: string, body: unknown): JsonObject {
    const s = this.store.get(key(def.resource, namespace, name));
    if (!s) throw errNotFound(def, name);
    const pre = obj(obj(body).preconditions);
    const m = obj(s.obj.metadata);
    if (typeof pre.resourceVersion === 'string' && pre.resourceVersion !== m.resourceVersion) {
      throw errConflict(def, name, `Precondition failed: ResourceVersion in precondition: ${pre.resourceVersion}, ResourceVersion in object meta: ${String(m.resourceVersion)}`);
    }
    if (typeof pre.uid === 'string' && pre.uid !== m.uid) {
      throw errConflict(def, name, `Precondition failed: UID in precondition: ${pre.uid}, UID in object meta: ${String(m.uid)}`);
    }
    this.store.delete(key(def.resource, namespace, name));
    this.cancelTimers(key(def.resource, namespace, name));
    this.rollouts.delete(key(def.resource, namespace, name));
    this.jobOutcomes.delete(key(def.resource, namespace, name));
    this.revision++;
    return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details: { ...detailsFor(def, name), uid: m.uid } };
  }

  /** Strategy ValidateCreate / ValidateUpdate. */
  private validate(def: ResourceDef, o: JsonObject, old: JsonObject | undefined): StatusCause[] {
    const causes: StatusCause[] = [];
    switch (def.resource) {
      case 'secrets': {
        let total = 0;
        for (const [k, v] of Object.entries(obj(o.data))) {
          for (const msg of configKeyErrors(k)) causes.push(invalid(`data[${k}]`, k, msg));
          total += Buffer.from(String(v), 'base64').length;
        }
        if (total > MAX_DATA_BYTES) causes.push(tooLong('data', MAX_DATA_BYTES));
        if (old && old.immutable === true) {
          if (o.immutable !== true) causes.push(forbidden('immutable', 'field is immutable when `immutable` is set'));
          if (!deepEqual(old.data, o.data)) causes.push(forbidden('data', 'field is immutable when `immutable` is set'));
        }
        if (old && old.type !== o.type) causes.push(invalid('type', o.type, 'field is immutable'));
        break;
      }
      case 'configmaps': {
        // ValidateConfigMap / ValidateConfigMapUpdate (pkg/apis/core/validation).
        const data = obj(o.data);
        const binary = obj(o.binaryData);
        let total = 0;
        for (const [k, v] of Object.entries(data)) {
          for (const msg of configKeyErrors(k)) causes.push(invalid(`data[${k}]`, k, msg));
          if (Object.prototype.hasOwnProperty.call(binary, k)) causes.push(invalid(`data[${k}]`, k, 'duplicate of key present in binaryData'));
          total += Buffer.byteLength(String(v), 'utf8');
        }
        for (const [k, v] of Object.entries(binary)) {
          for (const msg of configKeyErrors(k)) causes.push(invalid(`binaryData[${k}]`, k, msg));
          total += Buffer.from(String(v), 'base64').length;
        }
        // field.TooLong(field.NewPath(""), …): the whole object, no field.
        if (total > MAX_DATA_BYTES) causes.push(tooLong('', MAX_DATA_BYTES));
        if (old && old.immutable === true) {
          if (o.immutable !== true) causes.push(forbidden('immutable', 'field is immutable when `immutable` is set'));
          if (!deepEqual(old.data, o.data)) causes.push(forbidden('data', 'field is immutable when `immutable` is set'));
          if (!deepEqual(old.binaryData, o.binaryData)) causes.push(forbidden('binaryData', 'field is immutable when `immutable` is set'));
        }
        break;
      }
      case 'leases': {
        const s = obj(o.spec);
        if (typeof s.leaseDurationSeconds === 'number' && s.leaseDurationSeconds <= 0)
          causes.push(invalid('spec.leaseDurationSeconds', s.leaseDurationSeconds, 'must be greater than 0'));
        if (typeof s.leaseTransitions === 'number' && s.leaseTransitions < 0)
          causes.push(invalid('spec.leaseTransitions', s.leaseTransitions, 'must be greater than or equal to 0'));
        break;
      }
      case 'deployments':
      case 'statefulsets': {
        const s = obj(o.spec);
        if (typeof s.replicas === 'number' && s.replicas < 0) causes.push(invalid('spec.replicas', s.replicas, 'must be greater than or equal to 0'));
        if (!isObject(s.selector)) causes.push(required('spec.selector'));
        if (old && !deepEqual(obj(old.spec).selector, s.selector)) causes.push(invalid('spec.selector', s.selector, 'field is immutable'));
        const tl = obj(obj(obj(s.template).metadata).labels);
        const ml = obj(obj(s.selector).matchLabels);
        if (!Object.entries(ml).every(([k, v]) => tl[k] === v))
          causes.push(invalid('spec.template.metadata.labels', tl, '`selector` does not match template `labels`'));
        break;
      }
      case 'jobs': {
        causes.push(...jobCauses(o));
        if (old) {
          // ValidateJobSpecUpdate: the pod template (outside a suspended job's scheduling directives), selector and completions are immutable.
          const os = obj(old.spec);
          const ns = obj(o.spec);
          if (!deepEqual(os.template, ns.template)) causes.push(invalid('spec.template', ns.template, 'field is immutable'));
          if (!deepEqual(os.selector, ns.selector)) causes.push(invalid('spec.selector', ns.selector, 'field is immutable'));
          if (!deepEqual(os.completions, ns.completions)) causes.push(invalid('spec.completions', ns.completions, 'field is immutable'));
        }
        break;
      }
      case 'cronjobs': {
        // ValidateCronJobCreate: the controller appends an 11-character suffix to the Job names it creates.
        const name = String(obj(o.metadata).name ?? '');
        if (name.length > 52) causes.push(invalid('metadata.name', name, 'must be no more than 52 characters'));
        const s = obj(o.spec);
        if (typeof s.schedule !== 'string' || s.schedule === '') causes.push(required('spec.schedule'));
        const jt = obj(s.jobTemplate);
        causes.push(...jobSpecCauses('spec.jobTemplate.spec', obj(jt.spec)));
        break;
      }
      case 'storageclasses': {
        // ValidateStorageClass / ValidateStorageClassUpdate (pkg/apis/storage/validation).
        if (typeof o.provisioner !== 'string' || o.provisioner === '') causes.push(required('provisioner'));
        if (old) {
          if (!deepEqual(obj(old.parameters), obj(o.parameters))) causes.push(forbidden('parameters', 'updates to parameters are forbidden.'));
          if (old.provisioner !== o.provisioner) causes.push(forbidden('provisioner', 'updates to provisioner are forbidden.'));
          if (old.reclaimPolicy !== o.reclaimPolicy) causes.push(forbidden('reclaimPolicy', 'updates to reclaimPolicy are forbidden.'));
          if (old.volumeBindingMode !== o.volumeBindingMode) causes.push(invalid('volumeBindingMode', o.volumeBindingMode, 'field is immutable'));
        }
        break;
      }
      case 'pods': {
        if (old && !deepEqual(old.spec, o.spec))
          causes.push(forbidden('spec', 'pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)'));
        break;
      }
      case 'persistentvolumeclaims': {
        if (!old) break;
        const bound = obj(old.status).phase === 'Bound';
        const oldSpec = obj(old.spec);
        const newSpec = obj(o.spec);
        const strip = (spec: JsonObject): JsonObject => {
          const c = clone(spec);
          delete c.volumeAttributesClassName;
          c.resources = { ...obj(c.resources) };
          delete (c.resources as JsonObject).requests;
          return c;
        };
        if (!deepEqual(strip(oldSpec), strip(newSpec))) {
          causes.push(forbidden('spec', `spec is immutable after creation except resources.requests${bound ? ' and volumeAttributesClassName for bound claims' : ''}`));
        }
        const before = parseQuantity(storageOf(old));
        const after = parseQuantity(storageOf(o));
        if (after === null) causes.push(required('spec.resources[storage]'));
        else if (before !== null && after < before) causes.push(forbidden('spec.resources.requests.storage', 'field can not be less than previous value'));
        break;
      }
    }
    return causes;
  }

  /**
   * Validating admission: PersistentVolumeClaimResize (plugin/pkg/admission/storage/persistentvolume/
   * resize). Only a request for more storage is looked at. The old claim must be Bound; then
   * allowResize: the class of the new and of the old claim (GetPersistentVolumeClaimClass: the beta
   * annotation, else spec.storageClassName) must be set and the same, the StorageClass must exist (the
   * plugin reads it from its lister; here, the stand-in's own StorageClass objects) and its
   * allowVolumeExpansion must be true — absent is false.
   */
  private admit(def: ResourceDef, name: string, o: JsonObject, old: JsonObject): void {
    if (def.resource !== 'persistentvolumeclaims') return;
    const before = parseQuantity(storageOf(old));
    const after = parseQuantity(storageOf(o));
    if (before === null || after === null || after <= before) return;
    if (obj(old.status).phase !== 'Bound') throw errForbidden(def, name, 'Only bound persistent volume claims can be expanded');
    const classOf = (pvc: JsonObject): string => {
      const beta = obj(obj(pvc.metadata).annotations)['volume.beta.kubernetes.io/storage-class'];
      if (typeof beta === 'string') return beta;
      const c = obj(pvc.spec).storageClassName;
      return typeof c === 'string' ? c : '';
    };
    const cls = classOf(o);
    const sc = cls !== '' && cls === classOf(old) ? this.store.get(key('storageclasses', CLUSTER, cls)) : undefined;
    if (sc?.obj.allowVolumeExpansion !== true) {
      throw errForbidden(def, name, 'only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize');
    }
  }

  private commit(def: ResourceDef, namespace: string, name: string, o: JsonObject, old: JsonObject | undefined): JsonObject {
    const m = meta(o);
    m.name = name;
    if (def.clusterScoped) delete m.namespace;
    else m.namespace = namespace;
    const k = key(def.resource, namespace, name);
    if (old) {
      const om = obj(old.metadata);
      m.uid = om.uid;
      m.creationTimestamp = om.creationTimestamp;
      if (def.tracksGeneration) m.generation = om.generation;
      else delete m.generation;
      if (def.hasStatus) {
        if (old.status === undefined) delete o.status;
        else o.status = clone(old.status);
      }
      m.resourceVersion = om.resourceVersion;
      if (deepEqual(o, old)) return this.render({ def, obj: old }); // no-op write: nothing changes, no new resourceVersion
      if (def.tracksGeneration && !deepEqual(obj(old).spec, o.spec)) m.generation = Number(om.generation ?? 0) + 1;
    } else {
      if (typeof m.uid !== 'string' || m.uid === '') m.uid = randomUUID();
      m.creationTimestamp = rfc3339(new Date());
      if (def.tracksGeneration) m.generation = 1;
      else delete m.generation;
      if (def.hasStatus) o.status = {};
    }
    m.resourceVersion = String(++this.revision);
    const stored: Stored = { def, obj: o };
    this.store.set(k, stored);
    if (def.resource === 'deployments' || def.resource === 'statefulsets') {
      if (!old || m.generation !== obj(old.metadata).generation) this.startRollout(k);
    }
    if (def.resource === 'jobs' && !old) this.startJob(k);
    if (def.resource === 'persistentvolumeclaims' && old) {
      const before = parseQuantity(storageOf(old));
      const after = parseQuantity(storageOf(o));
      if (before !== null && after !== null && after > before) this.startResize(k);
    }
    return this.render(stored);
  }

  // ----- simulated controllers -----

  private schedule(k: string, ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      const list = this.timers.get(k)?.filter((x) => x !== t) ?? [];
      if (list.length > 0) this.timers.set(k, list);
      else this.timers.delete(k);
      fn();
    }, ms);
    const list = this.timers.get(k) ?? [];
    list.push(t);
    this.timers.set(k, list);
  }

  private cancelTimers(k: string): void {
    for (const t of this.timers.get(k) ?? []) clearTimeout(t);
    this.timers.delete(k);
  }

  private writeStatus(k: string, mutate: (s: Stored) => void): void {
    const s = this.store.get(k);
    if (!s) return;
    mutate(s);
    obj(s.obj.metadata).resourceVersion = String(++this.revision);
  }

  /**
   * Where the simulated controller is with a workload's rollout: `phase` is 'unobserved' (not yet
   * seen), 'progressing' (observed, half done) or 'idle' (none under way: rolled out, failed, or never
   * changed); `scheduled` is how many controller steps are still to come for it. A held rollout is
   * 'progressing' with nothing scheduled: a test can see that nothing will move it, without waiting.
   */
  rolloutState(name: string, opts: { kind?: 'deployment' | 'statefulset'; namespace?: string } = {}): { phase: 'unobserved' | 'progressing' | 'idle'; scheduled: number } {
    const k = key((opts.kind ?? 'deployment') === 'deployment' ? 'deployments' : 'statefulsets', opts.namespace ?? this.defaultNamespace, name);
    return { phase: this.rollouts.get(k) ?? 'idle', scheduled: this.timers.get(k)?.length ?? 0 };
  }

  private outcomeOf(k: string): RolloutOutcome {
    const set = this.rolloutOutcomes.get(k);
    if (set) return set;
    return this.rolloutDelayMs === null ? 'held' : { completeAfterMs: this.rolloutDelayMs };
  }

  /**
   * The controller first observes the new generation with the rollout half done (after half the
   * completion time, or 25 ms for a rollout that will not complete), then ends it as its outcome says.
   */
  private startRollout(k: string): void {
    this.cancelTimers(k);
    this.rollouts.set(k, 'unobserved');
    this.scheduleRollout(k, this.outcomeOf(k));
  }

  private scheduleRollout(k: string, outcome: RolloutOutcome): void {
    const phase = this.rollouts.get(k);
    if (phase === undefined) return;
    const total = typeof outcome === 'object' ? outcome.completeAfterMs : null;
    let observedAt = 0;
    if (phase === 'unobserved') {
      observedAt = total === null ? 25 : Math.max(1, Math.floor(total / 2));
      this.schedule(k, observedAt, () => {
        this.rollouts.set(k, 'progressing');
        this.writeStatus(k, (s) => setWorkloadStatus(s.def, s.obj, 'progressing'));
      });
    }
    if (outcome === 'held') return;
    const endAt = total === null ? observedAt + 1 : Math.max(observedAt + 1, total);
    this.schedule(k, endAt, () => {
      this.rollouts.delete(k);
      this.writeStatus(k, (s) => setWorkloadStatus(s.def, s.obj, outcome === 'progressDeadlineExceeded' ? 'deadlineExceeded' : 'complete'));
    });
  }

  /** The job controller creates the pod and marks the Job started (startTime, active 1) a moment after the create. */
  private startJob(k: string): void {
    this.jobOutcomes.set(k, 'running');
    this.schedule(k, 5, () => {
      if (this.jobOutcomes.get(k) !== 'running') return;
      this.writeStatus(k, (s) => setJobStatus(s.obj, 'running'));
    });
  }

  private startResize(k: string): void {
    const delay = this.rolloutDelayMs;
    if (delay === null) return;
    this.schedule(k, delay, () =>
      this.writeStatus(k, (s) => {
        const status = obj(s.obj.status);
        status.capacity = { ...obj(status.capacity), storage: storageOf(s.obj) };
        s.obj.status = status;
      }),
    );
  }
}

// ---------------------------------------------------------------------------------------------------
// Helpers used by the class

function key(resource: string, namespace: string, name: string): string {
  return `${resource}/${namespace}/${name}`;
}

function matches(m: RequestMatch | undefined, req: { method: string; path: string; query: Record<string, string>; body: unknown }): boolean {
  if (!m) return true;
  if (m.method !== undefined && m.method.toUpperCase() !== req.method) return false;
  if (m.path !== undefined && (typeof m.path === 'string' ? !req.path.includes(m.path) : !m.path.test(req.path))) return false;
  if (m.resource !== undefined || m.name !== undefined || m.namespace !== undefined) {
    const route = parseRoute(req.path);
    if (!route || route.subresource !== undefined) return false;
    if (m.resource !== undefined && route.def.resource !== m.resource) return false;
    if (m.name !== undefined && route.name !== m.name) return false;
    if (m.namespace !== undefined && route.namespace !== m.namespace) return false;
  }
  if (m.when !== undefined && !m.when(req)) return false;
  return true;
}

function parseRoute(pathname: string): { def: ResourceDef; namespace: string; name: string | undefined; subresource: string | undefined } | null {
  const seg = pathname.split('/').filter((s) => s.length > 0).map((s) => decodeURIComponent(s));
  let group: string;
  let rest: string[];
  if (seg[0] === 'api') {
    group = '';
    rest = seg.slice(1);
  } else if (seg[0] === 'apis') {
    group = seg[1] ?? '';
    rest = seg.slice(2);
  } else {
    return null;
  }
  if (rest[1] !== 'namespaces') {
    // A cluster-scoped resource: /apis/<group>/<version>/<resource>[/<name>[/<subresource>]].
    const [version, resource, name, subresource, ...extra] = rest;
    if (resource === undefined || extra.length > 0) return null;
    const def = RESOURCES.find((r) => r.clusterScoped && r.group === group && r.version === version && r.resource === resource);
    return def ? { def, namespace: CLUSTER, name, subresource } : null;
  }
  const [version, nsWord, namespace, resource, name, subresource, ...extra] = rest;
  if (nsWord !== 'namespaces' || namespace === undefined || resource === undefined || extra.length > 0) return null;
  const def = RESOURCES.find((r) => !r.clusterScoped && r.group === group && r.version === version && r.resource === resource);
  if (!def) return null;
  return { def, namespace, name, subresource };
}

function parseFieldSelector(def: ResourceDef, selector: string): { field: string; op: '=' | '!='; value: string }[] {
  const allowed = ['metadata.name', 'metadata.namespace', ...(def.resource === 'pods' ? ['status.phase', 'spec.nodeName', 'status.podIP'] : [])];
  return splitTopLevel(selector).map((part) => {
    const m = /^([^=!]+)(==|=|!=)(.*)$/.exec(part);
    if (!m) throw errBadRequest(`invalid field selector: ${part}`);
    const field = (m[1] ?? '').trim();
    if (!allowed.includes(field)) throw errBadRequest(`field label not supported: ${field}`);
    return { field, op: m[2] === '!=' ? '!=' : '=', value: (m[3] ?? '').trim() };
  });
}

function fieldValue(o: JsonObject, field: string): string {
  let cur: unknown = o;
  for (const p of field.split('.')) cur = obj(cur)[p];
  return cur === undefined ? '' : String(cur);
}

/** Conversions the API server applies on every write. */
function normalize(def: ResourceDef, o: JsonObject): void {
  if (def.resource === 'secrets' && isObject(o.stringData)) {
    // stringData is write-only: merged into data, never stored.
    const data = obj(o.data);
    for (const [k, v] of Object.entries(o.stringData)) data[k] = Buffer.from(String(v), 'utf8').toString('base64');
    o.data = data;
    delete o.stringData;
  }
  if (def.resource === 'secrets' && o.type === undefined) o.type = 'Opaque';
  // SetDefaults_StorageClass.
  if (def.resource === 'storageclasses') {
    if (o.reclaimPolicy === undefined || o.reclaimPolicy === null) o.reclaimPolicy = 'Delete';
    if (o.volumeBindingMode === undefined || o.volumeBindingMode === null) o.volumeBindingMode = 'Immediate';
  }
  pruneEmpty(def, o);
}

/**
 * What the API server's round trip through the Go types does to an object: []byte values come back
 * as canonical base64 (line breaks gone), and empty maps marked omitempty (labels, annotations,
 * Secret and ConfigMap data) disappear. That matters to JSON patch: on the real server `add
 * /metadata/labels/x` fails on a pod without labels, and `replace /data/K` on a Secret without data.
 */
function pruneEmpty(def: ResourceDef, o: JsonObject): void {
  const canonical = (m: unknown): void => {
    if (!isObject(m)) return;
    for (const [k, v] of Object.entries(m)) if (typeof v === 'string') m[k] = Buffer.from(v.replace(/[\r\n]/g, ''), 'base64').toString('base64');
  };
  if (def.resource === 'secrets') canonical(o.data);
  if (def.resource === 'configmaps') canonical(o.binaryData);
  const fields = def.resource === 'secrets' ? ['data'] : def.resource === 'configmaps' ? ['data', 'binaryData'] : [];
  for (const f of fields) if (o[f] === null || (isObject(o[f]) && Object.keys(o[f] as JsonObject).length === 0)) delete o[f];
  const m = obj(o.metadata);
  for (const f of ['labels', 'annotations']) if (m[f] === null || (isObject(m[f]) && Object.keys(m[f] as JsonObject).length === 0)) delete m[f];
}

function templateHash(o: JsonObject): string {
  return createHash('sha256').update(JSON.stringify(obj(o.spec).template ?? {})).digest('hex').slice(0, 10);
}

/** Writes a Deployment/StatefulSet status like their controllers would; zero counts are omitted (omitempty). */
function setWorkloadStatus(def: ResourceDef, o: JsonObject, phase: 'progressing' | 'complete' | 'deadlineExceeded'): void {
  const m = obj(o.metadata);
  const spec = obj(o.spec);
  const replicas = typeof spec.replicas === 'number' ? spec.replicas : 1;
  const gen = Number(m.generation ?? 1);
  const old = obj(o.status);
  const nz = (n: number): number | undefined => (n > 0 ? n : undefined);
  const done = phase === 'complete';
  if (def.resource === 'deployments') {
    // Mid-rollout: one new pod is up (surge), one old pod is still serving.
    const updated = done ? replicas : Math.max(0, replicas - 1);
    const total = done ? replicas : replicas + (replicas > 0 ? 1 : 0);
    o.status = stripUndefined({
      observedGeneration: gen,
      replicas: nz(total),
      updatedReplicas: nz(updated),
      readyReplicas: nz(done ? replicas : Math.max(0, total - 1)),
      availableReplicas: nz(done ? replicas : Math.max(0, total - 1)),
      unavailableReplicas: done ? undefined : nz(1),
      conditions: [
        { type: 'Available', status: 'True', reason: 'MinimumReplicasAvailable', message: 'Deployment has minimum availability.' },
        done
          ? { type: 'Progressing', status: 'True', reason: 'NewReplicaSetAvailable', message: `ReplicaSet "${String(m.name)}-${templateHash(o)}" has successfully progressed.` }
          : phase === 'deadlineExceeded'
            ? // deployment controller progress.go: util.TimedOutReason and its message.
              { type: 'Progressing', status: 'False', reason: 'ProgressDeadlineExceeded', message: `ReplicaSet "${String(m.name)}-${templateHash(o)}" has timed out progressing.` }
            : { type: 'Progressing', status: 'True', reason: 'ReplicaSetUpdated', message: `ReplicaSet "${String(m.name)}-${templateHash(o)}" is progressing.` },
      ],
    });
  } else {
    const updateRevision = `${String(m.name)}-${templateHash(o)}`;
    const currentRevision = done ? updateRevision : typeof old.currentRevision === 'string' ? old.currentRevision : updateRevision;
    o.status = stripUndefined({
      observedGeneration: gen,
      replicas: nz(replicas),
      readyReplicas: nz(done ? replicas : Math.max(0, replicas - 1)),
      availableReplicas: nz(done ? replicas : Math.max(0, replicas - 1)),
      currentReplicas: nz(done ? replicas : Math.max(0, replicas - 1)),
      updatedReplicas: nz(done ? replicas : 0),
      currentRevision,
      updateRevision,
      collisionCount: 0,
    });
  }
}

/** A Job's status as the job controller writes it (1.31+: SuccessCriteriaMet / FailureTarget precede Complete / Failed). */
function setJobStatus(o: JsonObject, outcome: JobOutcome): void {
  const spec = obj(o.spec);
  const old = obj(o.status);
  const now = rfc3339(new Date());
  const startTime = typeof old.startTime === 'string' ? old.startTime : now;
  const condition = (type: string, reason: string, message: string): JsonObject => ({ type, status: 'True', reason, message, lastProbeTime: now, lastTransitionTime: now });
  if (outcome === 'running') {
    o.status = { startTime, active: Number(spec.parallelism ?? 1), ready: 0, terminating: 0, uncountedTerminatedPods: {} };
  } else if (outcome === 'complete') {
    const msg = 'Reached expected number of succeeded pods';
    o.status = {
      conditions: [condition('SuccessCriteriaMet', 'CompletionsReached', msg), condition('Complete', 'CompletionsReached', msg)],
      startTime,
      completionTime: now,
      succeeded: Number(spec.completions ?? 1),
      ready: 0,
      terminating: 0,
      uncountedTerminatedPods: {},
    };
  } else {
    const msg = 'Job has reached the specified backoff limit';
    o.status = {
      conditions: [condition('FailureTarget', 'BackoffLimitExceeded', msg), condition('Failed', 'BackoffLimitExceeded', msg)],
      startTime,
      failed: Number(spec.backoffLimit ?? 6) + 1,
      ready: 0,
      terminating: 0,
      uncountedTerminatedPods: {},
    };
  }
}

/**
 * A pod status like the kubelet's: conditions (Ready with ContainersNotReady when a container is not
 * ready), one containerStatus per container with a state. `prev` is the status being replaced (for
 * setPodStatus): what `st` does not give is kept.
 */
function podStatus(st: PodStatusInput, prev: JsonObject | undefined): JsonObject {
  const now = rfc3339(new Date());
  const phase = st.phase ?? (typeof prev?.phase === 'string' ? prev.phase : 'Running');
  const prevStatuses = (Array.isArray(prev?.containerStatuses) ? prev.containerStatuses : []) as JsonObject[];
  const defaultState = (): JsonObject => {
    switch (phase) {
      case 'Pending':
        return { waiting: { reason: 'ContainerCreating' } };
      case 'Succeeded':
        return { terminated: { exitCode: 0, reason: 'Completed', startedAt: now, finishedAt: now } };
      case 'Failed':
        return { terminated: { exitCode: 1, reason: 'Error', startedAt: now, finishedAt: now } };
      default:
        return { running: { startedAt: now } };
    }
  };
  const given = st.containerStatuses ?? (prevStatuses.length > 0 ? undefined : [{ name: 'main' }]);
  let statuses: JsonObject[];
  if (given) {
    statuses = given.map((c) => {
      const before = prevStatuses.find((x) => x.name === c.name);
      const state = c.state ?? (isObject(before?.state) ? before.state : defaultState());
      const ready = c.ready ?? (typeof before?.ready === 'boolean' ? before.ready : (st.ready ?? (phase === 'Running' && isObject(state.running))));
      const out: JsonObject = {
        name: c.name,
        state: clone(state),
        ready,
        restartCount: c.restartCount ?? (typeof before?.restartCount === 'number' ? before.restartCount : 0),
        image: `registry.example/${c.name}:1`,
        imageID: `registry.example/${c.name}@sha256:${createHash('sha256').update(c.name).digest('hex')}`,
        started: isObject(state.running),
      };
      const last = c.lastState ?? (isObject(before?.lastState) ? before.lastState : undefined);
      if (last) out.lastState = clone(last);
      return out;
    });
  } else {
    statuses = prevStatuses.map((x) => clone(x));
  }
  if (st.ready !== undefined && !st.containerStatuses) for (const c of statuses) c.ready = st.ready;
  if (st.restartCount !== undefined) {
    const first = statuses[0];
    if (first) first.restartCount = st.restartCount;
  }
  const ready = statuses.length > 0 && statuses.every((c) => c.ready === true);
  const unready = statuses.filter((c) => c.ready !== true).map((c) => String(c.name));
  const prevReady = ((Array.isArray(prev?.conditions) ? prev.conditions : []) as JsonObject[]).find((c) => c.type === 'Ready');
  const status = ready ? 'True' : 'False';
  const readyCondition: JsonObject = {
    type: 'Ready',
    status,
    lastProbeTime: null,
    lastTransitionTime: prevReady && prevReady.status === status && typeof prevReady.lastTransitionTime === 'string' ? prevReady.lastTransitionTime : now,
  };
  if (!ready) {
    readyCondition.reason = 'ContainersNotReady';
    readyCondition.message = `containers with unready status: [${unready.join(' ')}]`;
  }
  return {
    phase,
    podIP: st.podIP ?? (typeof prev?.podIP === 'string' ? prev.podIP : '10.0.0.10'),
    conditions: [readyCondition],
    containerStatuses: statuses,
  };
}

function stripUndefined(o: JsonObject): JsonObject {
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}

/** RFC3339 without fraction, as metav1.Time marshals. */
function rfc3339(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** metav1.MicroTime: RFC3339 with exactly six fractional digits. */
export function microTime(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}
