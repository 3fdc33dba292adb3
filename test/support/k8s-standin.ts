/**
 * A strict local stand-in for the Kubernetes API server, over real HTTP on 127.0.0.1 and port 0, to be
 * driven only through the real @kubernetes/client-node (see writeKubeconfig).
 *
 * It exists so that tests can FAIL: wherever dbpilot's Kubernetes code could get a request subtly
 * wrong, the stand-in answers the way kube-apiserver answers (status code, `Status` body, reason),
 * instead of accepting anything. What it models, and where the behaviour comes from upstream:
 *
 * - Authentication: a bearer token; anything else is 401 with a `Status` body.
 * - Routing: core/v1 secrets, pods, persistentvolumeclaims; apps/v1 deployments, statefulsets;
 *   coordination.k8s.io/v1 leases. Unknown paths are 404 "the server could not find the requested
 *   resource"; verbs it does not model are 405.
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
 * - PATCH content types: application/json-patch+json (RFC 6902 via fast-json-patch; a failed `test`
 *   or an unresolvable path is 422), application/merge-patch+json (RFC 7386),
 *   application/strategic-merge-patch+json (approximated: maps merge, lists of objects that all
 *   carry `name` merge by name, other lists are replaced, null deletes). Anything else is 415.
 * - Validation (422 Invalid, with `details.causes`): object names, label keys/values, Secret data
 *   keys and immutable Secrets, Lease durations/transitions, replicas, immutable selectors, pod spec
 *   immutability, PVC spec immutability and "storage can not be less than previous value".
 *   Admission (403 Forbidden): a PVC may grow only if bound and its StorageClass allows expansion.
 * - Status is owned by the server: writes to the main resource keep the old status (as the
 *   strategies' PrepareForUpdate do). A Deployment/StatefulSet whose spec changes gets
 *   metadata.generation + 1; a simulated controller first observes the new generation with the
 *   rollout half done (an old replica still running), and only after `rolloutDelayMs` reports it
 *   rolled out. A grown PVC reports the new status.capacity after the same delay.
 * - Namespaces: reading an object in an unknown namespace is 404 for the object; listing an unknown
 *   namespace is an empty list (as upstream); creating in one is 404 `namespaces "x" not found`.
 *
 * Every request is recorded (method, path, query, content type, parsed body, status) for assertions;
 * faults can be injected with failNext / delayNext.
 */
import http from 'node:http';
import { createHash, randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import jsonpatch from 'fast-json-patch';
import type { Operation } from 'fast-json-patch';

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
}

/** Selects requests for fault injection. All given conditions must hold. */
export interface RequestMatch {
  method?: string;
  /** A substring of the path, or a regular expression tested against it. */
  path?: string | RegExp;
  /** Any further condition, e.g. on the parsed body. */
  when?: (req: { method: string; path: string; query: Record<string, string>; body: unknown }) => boolean;
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

export type ResourceName = 'secrets' | 'pods' | 'persistentvolumeclaims' | 'deployments' | 'statefulsets' | 'leases';

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
}

const RESOURCES: ResourceDef[] = [
  { group: '', version: 'v1', resource: 'secrets', kind: 'Secret', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: false, tracksGeneration: false },
  { group: '', version: 'v1', resource: 'pods', kind: 'Pod', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: true, tracksGeneration: false },
  { group: '', version: 'v1', resource: 'persistentvolumeclaims', kind: 'PersistentVolumeClaim', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: true, tracksGeneration: false },
  { group: 'apps', version: 'v1', resource: 'deployments', kind: 'Deployment', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: true, tracksGeneration: true },
  { group: 'apps', version: 'v1', resource: 'statefulsets', kind: 'StatefulSet', allowCreateOnUpdate: false, allowUnconditionalUpdate: true, hasStatus: true, tracksGeneration: true },
  { group: 'coordination.k8s.io', version: 'v1', resource: 'leases', kind: 'Lease', allowCreateOnUpdate: true, allowUnconditionalUpdate: false, hasStatus: false, tracksGeneration: false },
];

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
  const parts = causes.map((c) => (c.field ? `${c.field}: ${c.message}` : c.message));
  const summary = parts.length === 1 ? parts[0] : `[${parts.join(', ')}]`;
  return new ApiStatusError(422, 'Invalid', `${def.kind} "${name}" is invalid: ${summary}`, { ...detailsFor(def, name, def.kind), causes: causes as unknown as JsonObject[] });
}

const errForbidden = (def: ResourceDef, name: string, why: string): ApiStatusError =>
  new ApiStatusError(403, 'Forbidden', `${qualified(def)} "${name}" is forbidden: ${why}`, detailsFor(def, name));

const errPathNotFound = (): ApiStatusError =>
  new ApiStatusError(404, 'NotFound', 'the server could not find the requested resource', {
    causes: [{ reason: 'UnexpectedServerResponse', message: '404 page not found' }] as unknown as JsonObject[],
  });

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
      return stringMapError('Secret.stringData', o.stringData);
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
  return causes;
}

function storageOf(pvc: JsonObject): unknown {
  return obj(obj(obj(pvc.spec).resources).requests).storage;
}

// ---------------------------------------------------------------------------------------------------
// The stand-in

interface Fault {
  remaining: number;
  status?: number;
  delayMs?: number;
  message?: string;
  match: RequestMatch | undefined;
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
  private readonly storageClasses = new Map<string, { allowVolumeExpansion: boolean }>();
  private readonly recorded: RecordedRequest[] = [];
  private faults: Fault[] = [];
  private revision = 100;
  private rolloutDelayMs: number | null;
  private readonly defaultNamespace: string;
  private readonly timers = new Map<string, NodeJS.Timeout[]>();

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

  /** The next `count` matching requests are served normally but only after `ms` milliseconds. */
  delayNext(count: number, ms: number, match?: RequestMatch): void {
    this.faults.push({ remaining: count, delayMs: ms, match });
  }

  clearFaults(): void {
    this.faults = [];
  }

  /** How long simulated rollouts take from now on; null: they are observed but never finish. */
  setRolloutDelay(ms: number | null): void {
    this.rolloutDelayMs = ms;
  }

  // ----- seeding -----

  addNamespace(ns: string): void {
    this.namespaces.add(ns);
  }

  seedStorageClass(name: string, allowVolumeExpansion: boolean): void {
    this.storageClasses.set(name, { allowVolumeExpansion });
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

  seedPod(p: { name: string; namespace?: string; labels?: Record<string, string>; phase?: string; ready?: boolean; podIP?: string; nodeName?: string }): JsonObject {
    const ready = p.ready ?? true;
    const o: JsonObject = {
      metadata: { name: p.name, labels: p.labels ?? {} },
      spec: { containers: [{ name: 'main', image: 'registry.example/app:1' }], nodeName: p.nodeName ?? 'node-1' },
      status: {
        phase: p.phase ?? 'Running',
        podIP: p.podIP ?? '10.0.0.10',
        conditions: [{ type: 'Ready', status: ready ? 'True' : 'False' }],
        containerStatuses: [{ name: 'main', ready, restartCount: 0, image: 'registry.example/app:1' }],
      },
    };
    return this.seed('pods', p.namespace, o);
  }

  /** Seeds a bound PVC. Its StorageClass (default "standard") is registered with allowVolumeExpansion (default true) unless already known. */
  seedPvc(p: { name: string; namespace?: string; storage: string; storageClassName?: string; allowVolumeExpansion?: boolean; bound?: boolean }): JsonObject {
    const sc = p.storageClassName ?? 'standard';
    if (p.allowVolumeExpansion !== undefined || !this.storageClasses.has(sc)) this.seedStorageClass(sc, p.allowVolumeExpansion ?? true);
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
  lease(name: string, namespace?: string): JsonObject | undefined {
    return this.get('leases', name, namespace);
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
    const ns = namespace ?? this.defaultNamespace;
    this.namespaces.add(ns);
    const m = meta(o);
    m.namespace = ns;
    m.uid = randomUUID();
    m.creationTimestamp = rfc3339(new Date());
    m.resourceVersion = String(++this.revision);
    if (def.tracksGeneration) m.generation = 1;
    if (def.resource === 'deployments' || def.resource === 'statefulsets') setWorkloadStatus(def, o, 'complete');
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
      if (fault.delayMs !== undefined) await new Promise((r) => setTimeout(r, fault.delayMs));
      if (fault.status !== undefined) {
        record.injected = true;
        const reason = REASONS[fault.status] ?? 'Unknown';
        reply(fault.status, new ApiStatusError(fault.status, reason, fault.message ?? `injected fault: ${reason}`).toStatus());
        return;
      }
    }
    try {
      const [status, payload] = this.serve(method, url.pathname, query, contentType, raw, body, bodyIsJson);
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
    if (method === 'PATCH' && name !== undefined) return [200, this.patch(def, namespace, name, contentType, body, bodyIsJson)];
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
      if (m.namespace !== namespace) continue;
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
    this.requireNamespace(namespace);
    const m = meta(o);
    if (m.namespace !== undefined && m.namespace !== namespace)
      throw errBadRequest('the namespace of the provided object does not match the namespace sent on the request');
    const name = typeof m.name === 'string' ? m.name : '';
    if (this.store.has(key(def.resource, namespace, name))) throw errAlreadyExists(def, name);
    if (m.resourceVersion !== undefined && m.resourceVersion !== '')
      // etcd3 store.Create: a generic error, so the client sees 500.
      throw new ApiStatusError(500, 'InternalError', 'Internal error occurred: resourceVersion should not be set on objects to be created');
    normalize(def, o);
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

  private patch(def: ResourceDef, namespace: string, name: string, contentType: string | undefined, body: unknown, bodyIsJson: boolean): JsonObject {
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
      if (!Array.isArray(body)) throw errBadRequest('json: cannot unmarshal object into Go value of type jsonpatch.Patch');
      try {
        patched = jsonpatch.applyPatch(clone(current), body as Operation[], true, true, true).newDocument;
      } catch (err) {
        // handlers/patch.go: errors.NewGenericServerResponse(422, …, err.Error())
        const msg = err instanceof Error ? err.message.split('\n')[0] ?? err.message : String(err);
        throw new ApiStatusError(422, 'Invalid', 'the server rejected our request due to an error in our request', {
          causes: [{ message: msg }] as unknown as JsonObject[],
        });
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
    this.revision++;
    return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details: { ...detailsFor(def, name), uid: m.uid } };
  }

  /** Strategy ValidateCreate / ValidateUpdate. */
  private validate(def: ResourceDef, o: JsonObject, old: JsonObject | undefined): StatusCause[] {
    const causes: StatusCause[] = [];
    switch (def.resource) {
      case 'secrets': {
        for (const k of Object.keys(obj(o.data))) {
          if (!CONFIG_KEY_RE.test(k) || k.length > 253) causes.push(invalid(`data[${k}]`, k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"));
        }
        if (old && old.immutable === true) {
          if (!deepEqual(old.data, o.data)) causes.push(forbidden('data', 'field is immutable when `immutable` is set'));
          if (o.immutable !== true) causes.push(forbidden('immutable', 'field is immutable when `immutable` is set'));
        }
        if (old && old.type !== o.type) causes.push(invalid('type', o.type, 'field is immutable'));
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

  /** Validating admission (PersistentVolumeClaimResize). */
  private admit(def: ResourceDef, name: string, o: JsonObject, old: JsonObject): void {
    if (def.resource !== 'persistentvolumeclaims') return;
    const before = parseQuantity(storageOf(old));
    const after = parseQuantity(storageOf(o));
    if (before === null || after === null || after <= before) return;
    const sc = this.storageClasses.get(String(obj(old.spec).storageClassName ?? ''));
    const bound = obj(old.status).phase === 'Bound' && typeof obj(old.spec).volumeName === 'string';
    if (!bound || !sc?.allowVolumeExpansion) {
      throw errForbidden(def, name, 'only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize');
    }
  }

  private commit(def: ResourceDef, namespace: string, name: string, o: JsonObject, old: JsonObject | undefined): JsonObject {
    const m = meta(o);
    m.name = name;
    m.namespace = namespace;
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
      m.uid = randomUUID();
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

  /** The controller first observes the new generation with the rollout half done, then finishes after rolloutDelayMs. */
  private startRollout(k: string): void {
    this.cancelTimers(k);
    const delay = this.rolloutDelayMs;
    const observeAfter = delay === null ? 25 : Math.max(1, Math.floor(delay / 2));
    this.schedule(k, observeAfter, () => this.writeStatus(k, (s) => setWorkloadStatus(s.def, s.obj, 'progressing')));
    if (delay !== null) this.schedule(k, Math.max(observeAfter + 1, delay), () => this.writeStatus(k, (s) => setWorkloadStatus(s.def, s.obj, 'complete')));
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
  const [version, nsWord, namespace, resource, name, subresource, ...extra] = rest;
  if (nsWord !== 'namespaces' || namespace === undefined || resource === undefined || extra.length > 0) return null;
  const def = RESOURCES.find((r) => r.group === group && r.version === version && r.resource === resource);
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
}

function templateHash(o: JsonObject): string {
  return createHash('sha256').update(JSON.stringify(obj(o.spec).template ?? {})).digest('hex').slice(0, 10);
}

/** Writes a Deployment/StatefulSet status like their controllers would; zero counts are omitted (omitempty). */
function setWorkloadStatus(def: ResourceDef, o: JsonObject, phase: 'progressing' | 'complete'): void {
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
