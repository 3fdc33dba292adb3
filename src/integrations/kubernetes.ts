/**
 * A thin typed client over @kubernetes/client-node 1.4.0 for the runbook's kubectl steps. Each method
 * is named for the step it serves and sends exactly the request the runbook's kubectl line sends:
 *
 *   readSecretKey / replaceSecretKey   kubectl get secret … / kubectl patch secret … --type=json (remove + add /data/<key>)
 *   patchSecretKeyIfUnchanged          kubectl patch secret … --type=json (test + replace /data/<key>): compare-and-swap
 *   rolloutRestart / waitForRollout    kubectl rollout restart … / kubectl rollout status …
 *   listPods / readPod / labelPod      kubectl get pods -l … / kubectl get pod … / kubectl label pod … --overwrite
 *   readPvc / resizePvc                kubectl get pvc … / kubectl patch pvc … -p '{"spec":{"resources":{"requests":{"storage":…}}}}'
 *   readStorageClass                   kubectl get storageclass NAME (storage.k8s.io/v1, cluster-scoped): may the
 *                                      PVC grow at all (allowVolumeExpansion)
 *   read/create/replaceConfigMap       the failover intent, a ConfigMap dbpilot owns (compare-and-swap on resourceVersion)
 *   createJobFromCronJob / readJob     kubectl create job NAME --from=cronjob/CRONJOB / kubectl get job NAME (scenario 4:
 *                                      the service's own `prisma migrate deploy`, from the suspended CronJob it ships)
 *   read/create/replace/deleteLease    what the leader elector needs (coordination.k8s.io/v1)
 *
 * Every failure becomes a KubernetesApiError (a DependencyError for 'kubernetes') carrying the HTTP
 * status and the Status reason. Messages never carry the bearer token, and for Secrets not even the
 * API server's own message: a 422 from a Secret patch echoes the patched object, data included.
 */
import { existsSync } from 'node:fs';
import {
  ApiException,
  AppsV1Api,
  BatchV1Api,
  CoordinationV1Api,
  CoreV1Api,
  KubeConfig,
  Observable,
  PatchStrategy,
  StorageV1Api,
  V1MicroTime,
  setHeaderOptions,
  type ConfigurationOptions,
  type ObservableMiddleware,
  type RequestContext,
  type ResponseContext,
  type V1ConfigMap,
  type V1ContainerState,
  type V1CronJob,
  type V1Deployment,
  type V1Job,
  type V1Lease,
  type V1PersistentVolumeClaim,
  type V1Pod,
  type V1StatefulSet,
  type V1StorageClass,
} from '@kubernetes/client-node';
import { DbpilotError, DependencyError, safeMessage } from '../errors.js';
import { KubernetesApiError, SecretChangedError, isNotFound } from './kubernetes-errors.js';

// The errors live apart so the leader elector can use them without loading @kubernetes/client-node.
export { KubernetesApiError, SecretChangedError, isAlreadyExists, isConflict, isNotFound, isSecretChanged } from './kubernetes-errors.js';

export type WorkloadKind = 'deployment' | 'statefulset';

export interface KubernetesClientOptions {
  /** Namespace every call works in (the runbook's `-n lomash-wood`). */
  namespace: string;
  /** Path of a kubeconfig file. Else $KUBECONFIG, else the in-cluster service account. */
  kubeconfigPath?: string;
  /** Context to use from the kubeconfig (default: its current-context). */
  context?: string;
  /** Per-request time limit, ms (default 10 000). */
  requestTimeoutMs?: number;
  /** How often waitForRollout polls, ms (default 1 000). */
  rolloutPollMs?: number;
}

/** Per-call options. */
export interface CallOptions {
  /** Overrides the client's requestTimeoutMs for this call. */
  timeoutMs?: number;
}

export interface PodSummary {
  name: string;
  labels: Record<string, string>;
  phase: string | undefined;
  /** The pod's Ready condition is True. */
  ready: boolean;
  podIP: string | undefined;
  nodeName: string | undefined;
  resourceVersion: string | undefined;
}

/** One container's state, as `kubectl describe pod` shows it (messages left out: they can carry the container's output). */
export interface ContainerStateSummary {
  state: 'running' | 'waiting' | 'terminated' | 'unknown';
  /** Why it is waiting or terminated (ContainerCreating, CrashLoopBackOff, OOMKilled, Completed, Error …); undefined when running. */
  reason: string | undefined;
  /** The exit code, when terminated. */
  exitCode: number | undefined;
  ready: boolean;
  restartCount: number;
  /** How it last ended (lastState.terminated), if it has restarted. */
  lastTerminated: { reason: string | undefined; exitCode: number | undefined } | undefined;
}

/** A pod condition (here: Ready). */
export interface PodConditionSummary {
  status: string;
  reason: string | undefined;
  /** e.g. "containers with unready status: [postgres]". */
  message: string | undefined;
  lastTransitionTime: Date | undefined;
}

/** A pod in more detail than PodSummary: what to log about the primary's pod when a failover is confirmed. */
export interface PodDetail extends PodSummary {
  /** Sum of restartCount over status.containerStatuses (init containers not counted). */
  restartCount: number;
  /** By container name, from status.containerStatuses. */
  containerStates: Record<string, ContainerStateSummary>;
  /** The Ready condition, undefined if the kubelet has not reported one. */
  readyCondition: PodConditionSummary | undefined;
}

/** A ConfigMap as dbpilot keeps its records in one. */
export interface ConfigMapRecord {
  name: string;
  namespace: string;
  data: Record<string, string>;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  /** The version to make the next write conditional on (replaceConfigMap). */
  resourceVersion: string;
}

export interface PvcInfo {
  name: string;
  storageClassName: string | undefined;
  /** spec.resources.requests.storage, as written (e.g. "100Gi"). */
  requestedStorage: string | undefined;
  /** status.capacity.storage: what the volume has now; lags the request while a resize is in progress. */
  capacityStorage: string | undefined;
  phase: string | undefined;
  volumeName: string | undefined;
  resourceVersion: string | undefined;
}

/** A StorageClass as far as expanding a PVC goes. */
export interface StorageClassInfo {
  name: string;
  provisioner: string;
  /**
   * spec.allowVolumeExpansion; false when the field is absent, as the PersistentVolumeClaimResize
   * admission plugin reads it (an unset field refuses every resize).
   */
  allowVolumeExpansion: boolean;
}

export interface RolloutStatus {
  kind: WorkloadKind;
  name: string;
  /** The rollout is complete: the controller saw the latest spec and every replica is updated and ready. */
  done: boolean;
  /** The rollout cannot complete by waiting (progress deadline exceeded, or not a RollingUpdate). */
  failed: boolean;
  /** What kubectl rollout status would print. */
  message: string;
  generation: number;
  observedGeneration: number;
  /** spec.replicas (default 1). */
  desiredReplicas: number;
  replicas: number;
  updatedReplicas: number;
  readyReplicas: number;
  availableReplicas: number;
  /** spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"]: the last `kubectl rollout restart` asked for. */
  restartedAt: string | undefined;
}

/** A Job as `kubectl get job` and `kubectl wait --for=condition=complete|failed` see it. */
export interface JobSummary {
  name: string;
  uid: string;
  /** The Complete condition is True. */
  complete: boolean;
  /** The Failed condition is True: its reason and message (BackoffLimitExceeded, DeadlineExceeded, …). */
  failed: { reason: string | undefined; message: string | undefined } | null;
  active: number;
  succeeded: number;
  failedPods: number;
  startTime: Date | undefined;
  completionTime: Date | undefined;
  /** The CronJob in its ownerReferences (kubectl create job --from=cronjob/… sets it), if any. */
  ownerCronJob: string | undefined;
  annotations: Record<string, string>;
  /** What `kubectl get job` would say: Complete, Failed (reason), Running (n active), Pending. */
  message: string;
}

export interface LeaseRecord {
  name: string;
  namespace: string;
  resourceVersion: string;
  holderIdentity: string | undefined;
  leaseDurationSeconds: number | undefined;
  acquireTime: Date | undefined;
  renewTime: Date | undefined;
  leaseTransitions: number;
  labels: Record<string, string> | undefined;
  annotations: Record<string, string> | undefined;
}

export interface LeaseSpecInput {
  /** Empty string: nobody holds it (a released lease). */
  holderIdentity: string;
  /** Whole seconds (int32 on the wire). */
  leaseDurationSeconds: number;
  acquireTime: Date;
  renewTime: Date;
  leaseTransitions: number;
}

/** A rollout did not finish in time, or cannot finish (progress deadline exceeded). */
export class RolloutNotCompleteError extends DbpilotError {
  readonly status: RolloutStatus | undefined;
  constructor(kind: WorkloadKind, name: string, why: string, status?: RolloutStatus) {
    super('DBPILOT_K8S_ROLLOUT_INCOMPLETE', `rollout of ${kind}/${name} did not complete: ${why}`);
    this.status = status;
  }
}

/** kubectl's restartedAt value: RFC 3339 to the second (time.Now().Format(time.RFC3339)). */
export function restartedAtValue(at: Date): string {
  return at.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** metav1.MicroTime on the wire: RFC 3339 with exactly six fractional digits. */
export function formatMicroTime(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

/** JSON Pointer (RFC 6901) escaping of one path segment. */
function pointerSegment(s: string): string {
  return s.replace(/~/g, '~0').replace(/\//g, '~1');
}

const IN_CLUSTER_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';

function loadKubeConfig(opts: KubernetesClientOptions): KubeConfig {
  const kc = new KubeConfig();
  const envPath = process.env.KUBECONFIG;
  let source: string;
  try {
    if (opts.kubeconfigPath) {
      source = opts.kubeconfigPath;
      kc.loadFromFile(opts.kubeconfigPath);
    } else if (envPath && envPath.length > 0) {
      source = `$KUBECONFIG (${envPath})`;
      kc.loadFromDefault();
    } else if (process.env.KUBERNETES_SERVICE_HOST && existsSync(IN_CLUSTER_TOKEN)) {
      source = 'in-cluster service account';
      kc.loadFromCluster();
    } else {
      // client-node's loadFromDefault would silently fall back to ~/.kube/config or http://localhost:8080.
      throw new Error('no kubeconfig given, KUBECONFIG unset and not running in a cluster');
    }
    if (opts.context) kc.setCurrentContext(opts.context);
  } catch (err) {
    throw new DependencyError('kubernetes', `cannot load configuration: ${safeMessage(err)}`);
  }
  if (!kc.getCurrentCluster()) throw new DependencyError('kubernetes', `no current cluster in ${source}`);
  return kc;
}

/** Sets an AbortSignal on each request so a hung API server cannot hold a caller past its deadline. */
function timeoutMiddleware(ms: number): ObservableMiddleware {
  return {
    pre: (ctx: RequestContext) => {
      ctx.setSignal(AbortSignal.timeout(ms));
      return new Observable(Promise.resolve(ctx));
    },
    post: (rsp: ResponseContext) => new Observable(Promise.resolve(rsp)),
  };
}

function asRecord(v: unknown): Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

function toDate(v: unknown): Date | undefined {
  // client-node 1.4.0 types MicroTime fields as V1MicroTime (a Date) but, having no deserializer for
  // it, hands back the raw string. Accept both.
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? undefined : v;
  if (typeof v === 'string' && v.length > 0) {
    const d = new Date(v);
    return Number.isNaN(d.getTime()) ? undefined : d;
  }
  return undefined;
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}

/**
 * Rollout progress of a Deployment or StatefulSet, as `kubectl rollout status` judges it, plus the
 * condition that every desired replica is updated and ready. Zero counts are absent from the API's
 * JSON (omitempty), so missing means 0.
 */
export function rolloutStatusOf(kind: WorkloadKind, workload: V1Deployment | V1StatefulSet): RolloutStatus {
  const name = workload.metadata?.name ?? '';
  const generation = num(workload.metadata?.generation);
  const st = asRecord(workload.status);
  const spec = asRecord(workload.spec);
  const desired = typeof spec.replicas === 'number' ? spec.replicas : 1;
  const s: RolloutStatus = {
    kind,
    name,
    done: false,
    failed: false,
    message: '',
    generation,
    observedGeneration: num(st.observedGeneration),
    desiredReplicas: desired,
    replicas: num(st.replicas),
    updatedReplicas: num(st.updatedReplicas),
    readyReplicas: num(st.readyReplicas),
    availableReplicas: num(st.availableReplicas),
    restartedAt: ((): string | undefined => {
      const v = asRecord(asRecord(asRecord(spec.template).metadata).annotations)['kubectl.kubernetes.io/restartedAt'];
      return typeof v === 'string' ? v : undefined;
    })(),
  };
  const waiting = (message: string): RolloutStatus => ({ ...s, message });
  if (s.observedGeneration === 0 || s.observedGeneration < generation) return waiting(`waiting for ${kind} "${name}" spec update to be observed`);

  if (kind === 'deployment') {
    const conditions = Array.isArray(st.conditions) ? st.conditions.map(asRecord) : [];
    const progressing = conditions.find((c) => c.type === 'Progressing');
    if (progressing?.reason === 'ProgressDeadlineExceeded') return { ...s, failed: true, message: `deployment "${name}" exceeded its progress deadline` };
    if (s.updatedReplicas < desired) return waiting(`${s.updatedReplicas} out of ${desired} new replicas have been updated`);
    if (s.replicas > s.updatedReplicas) return waiting(`${s.replicas - s.updatedReplicas} old replicas are pending termination`);
    if (s.availableReplicas < s.updatedReplicas) return waiting(`${s.availableReplicas} of ${s.updatedReplicas} updated replicas are available`);
    if (s.readyReplicas < desired) return waiting(`${s.readyReplicas} of ${desired} replicas are ready`);
    return { ...s, done: true, message: `deployment "${name}" successfully rolled out` };
  }

  const strategy = asRecord(spec.updateStrategy);
  if (strategy.type !== undefined && strategy.type !== 'RollingUpdate') {
    return { ...s, failed: true, message: `rollout status is only available for RollingUpdate strategy type (statefulset "${name}" uses ${String(strategy.type)})` };
  }
  if (s.readyReplicas < desired) return waiting(`${s.readyReplicas} of ${desired} pods are ready`);
  const partition = num(asRecord(strategy.rollingUpdate).partition);
  if (partition > 0) {
    if (s.updatedReplicas < desired - partition) return waiting(`${s.updatedReplicas} of ${desired - partition} pods above partition ${partition} are updated`);
    return { ...s, done: true, message: `partitioned roll out complete: ${s.updatedReplicas} new pods have been updated` };
  }
  if (st.updateRevision !== st.currentRevision) return waiting(`waiting for statefulset rolling update to complete, revision ${String(st.updateRevision)}`);
  if (s.updatedReplicas < desired) return waiting(`${s.updatedReplicas} of ${desired} pods are updated`);
  return { ...s, done: true, message: `statefulset rolling update complete ${desired} pods at revision ${String(st.updateRevision)}` };
}

function podSummary(p: V1Pod): PodSummary {
  const conditions = p.status?.conditions ?? [];
  return {
    name: p.metadata?.name ?? '',
    labels: { ...(p.metadata?.labels ?? {}) },
    phase: p.status?.phase,
    ready: conditions.some((c) => c.type === 'Ready' && c.status === 'True'),
    podIP: p.status?.podIP,
    nodeName: p.spec?.nodeName,
    resourceVersion: p.metadata?.resourceVersion,
  };
}

function containerStateOf(state: V1ContainerState | undefined): Pick<ContainerStateSummary, 'state' | 'reason' | 'exitCode'> {
  if (state?.running) return { state: 'running', reason: undefined, exitCode: undefined };
  if (state?.terminated) return { state: 'terminated', reason: state.terminated.reason, exitCode: state.terminated.exitCode };
  if (state?.waiting) return { state: 'waiting', reason: state.waiting.reason, exitCode: undefined };
  return { state: 'unknown', reason: undefined, exitCode: undefined };
}

function podDetail(p: V1Pod): PodDetail {
  const containerStates: Record<string, ContainerStateSummary> = {};
  let restartCount = 0;
  for (const c of p.status?.containerStatuses ?? []) {
    const restarts = num(c.restartCount);
    restartCount += restarts;
    const last = c.lastState?.terminated;
    containerStates[c.name] = {
      ...containerStateOf(c.state),
      ready: c.ready === true,
      restartCount: restarts,
      lastTerminated: last ? { reason: last.reason, exitCode: last.exitCode } : undefined,
    };
  }
  const ready = p.status?.conditions?.find((c) => c.type === 'Ready');
  return {
    ...podSummary(p),
    restartCount,
    containerStates,
    readyCondition: ready
      ? { status: ready.status, reason: ready.reason, message: ready.message, lastTransitionTime: toDate(ready.lastTransitionTime) }
      : undefined,
  };
}

/** kubectl's annotation on a Job it created from a CronJob by hand (create_job.go createJobFromCronJob). */
export const INSTANTIATE_ANNOTATION = 'cronjob.kubernetes.io/instantiate';

export function jobSummary(j: V1Job): JobSummary {
  const conditions = j.status?.conditions ?? [];
  const isTrue = (type: string) => conditions.find((c) => c.type === type && c.status === 'True');
  const complete = isTrue('Complete') !== undefined;
  const failedCondition = isTrue('Failed');
  const active = num(j.status?.active);
  const succeeded = num(j.status?.succeeded);
  const failedPods = num(j.status?.failed);
  const owner = (j.metadata?.ownerReferences ?? []).find((o) => o.kind === 'CronJob' && o.apiVersion === 'batch/v1');
  const failed = failedCondition ? { reason: failedCondition.reason, message: failedCondition.message } : null;
  const message = complete
    ? `job "${j.metadata?.name ?? ''}" complete (${succeeded} succeeded)`
    : failed
      ? `job "${j.metadata?.name ?? ''}" failed: ${failed.reason ?? 'Failed'}${failed.message ? ` (${failed.message})` : ''}`
      : active > 0
        ? `job "${j.metadata?.name ?? ''}" running (${active} active, ${failedPods} failed)`
        : `job "${j.metadata?.name ?? ''}" pending`;
  return {
    name: j.metadata?.name ?? '',
    uid: j.metadata?.uid ?? '',
    complete,
    failed,
    active,
    succeeded,
    failedPods,
    startTime: toDate(j.status?.startTime),
    completionTime: toDate(j.status?.completionTime),
    ownerCronJob: owner?.name,
    annotations: { ...(j.metadata?.annotations ?? {}) },
    message,
  };
}

/**
 * The Job `kubectl create job NAME --from=cronjob/CRONJOB` sends (kubectl create_job.go,
 * createJobFromCronJob): the jobTemplate's labels and spec, its annotations plus
 * `cronjob.kubernetes.io/instantiate: manual`, and the CronJob as owner. `annotations` are added to
 * the Job's own (dbpilot records the run that created it there).
 */
export function jobFromCronJob(cronJob: V1CronJob, name: string, annotations: Record<string, string> = {}): V1Job {
  const template = cronJob.spec?.jobTemplate;
  const meta: V1Job['metadata'] = {
    name,
    annotations: { [INSTANTIATE_ANNOTATION]: 'manual', ...(template?.metadata?.annotations ?? {}), ...annotations },
    ownerReferences: [{ apiVersion: 'batch/v1', kind: 'CronJob', name: cronJob.metadata?.name ?? '', uid: cronJob.metadata?.uid ?? '' }],
  };
  if (template?.metadata?.labels && Object.keys(template.metadata.labels).length > 0) meta.labels = { ...template.metadata.labels };
  const job: V1Job = { apiVersion: 'batch/v1', kind: 'Job', metadata: meta };
  if (template?.spec) job.spec = template.spec;
  return job;
}

function configMapRecord(c: V1ConfigMap): ConfigMapRecord {
  return {
    name: c.metadata?.name ?? '',
    namespace: c.metadata?.namespace ?? '',
    data: { ...(c.data ?? {}) },
    labels: { ...(c.metadata?.labels ?? {}) },
    annotations: { ...(c.metadata?.annotations ?? {}) },
    resourceVersion: c.metadata?.resourceVersion ?? '',
  };
}

/** `base` with `changes` applied: a null value removes the key. */
function mergeStrings(base: Record<string, string>, changes: Record<string, string | null> | undefined): Record<string, string> {
  const out = { ...base };
  for (const [k, v] of Object.entries(changes ?? {})) {
    if (v === null) delete out[k];
    else out[k] = v;
  }
  return out;
}

/**
 * The API server's answer to a JSON patch that does not apply — a failed `test`, or a path that is
 * not there: HTTP 422, reason Invalid, and this fixed message with no causes (handlers/patch.go
 * applyJSPatch → errors.NewGenericServerResponse(422, …, isUnexpectedResponse=false), which drops
 * json-patch's own error text). Validation failures are 422 Invalid too, but their message names the
 * object (`Secret "x" is invalid: …`), so this message is what identifies a patch that did not apply.
 */
const PATCH_NOT_APPLIED = 'the server rejected our request due to an error in our request';

/** What the API server answered, before toKubernetesError withholds anything: for a caller to recognise one refusal. */
interface Refusal {
  status: number | undefined;
  reason: string | undefined;
  message: string;
}

function pvcInfo(p: V1PersistentVolumeClaim): PvcInfo {
  const requested = p.spec?.resources?.requests?.storage;
  const capacity = p.status?.capacity?.storage;
  return {
    name: p.metadata?.name ?? '',
    // GetPersistentVolumeClaimClass: the beta annotation, where set, wins over spec.storageClassName.
    storageClassName: p.metadata?.annotations?.['volume.beta.kubernetes.io/storage-class'] ?? p.spec?.storageClassName,
    requestedStorage: requested === undefined ? undefined : String(requested),
    capacityStorage: capacity === undefined ? undefined : String(capacity),
    phase: p.status?.phase,
    volumeName: p.spec?.volumeName,
    resourceVersion: p.metadata?.resourceVersion,
  };
}

function storageClassInfo(c: V1StorageClass): StorageClassInfo {
  return { name: c.metadata?.name ?? '', provisioner: c.provisioner ?? '', allowVolumeExpansion: c.allowVolumeExpansion === true };
}

function leaseRecord(l: V1Lease): LeaseRecord {
  const spec = asRecord(l.spec);
  return {
    name: l.metadata?.name ?? '',
    namespace: l.metadata?.namespace ?? '',
    resourceVersion: l.metadata?.resourceVersion ?? '',
    holderIdentity: typeof spec.holderIdentity === 'string' ? spec.holderIdentity : undefined,
    leaseDurationSeconds: typeof spec.leaseDurationSeconds === 'number' ? spec.leaseDurationSeconds : undefined,
    acquireTime: toDate(spec.acquireTime),
    renewTime: toDate(spec.renewTime),
    leaseTransitions: num(spec.leaseTransitions),
    labels: l.metadata?.labels,
    annotations: l.metadata?.annotations,
  };
}

function leaseSpec(s: LeaseSpecInput): V1Lease['spec'] {
  if (!Number.isInteger(s.leaseDurationSeconds) || s.leaseDurationSeconds <= 0) {
    throw new DependencyError('kubernetes', `leaseDurationSeconds must be a positive whole number, got ${s.leaseDurationSeconds}`);
  }
  // V1MicroTime serializes with six fractional digits; a plain Date would give three and the API
  // server would refuse the Lease (400).
  return {
    holderIdentity: s.holderIdentity,
    leaseDurationSeconds: s.leaseDurationSeconds,
    acquireTime: new V1MicroTime(s.acquireTime.getTime()),
    renewTime: new V1MicroTime(s.renewTime.getTime()),
    leaseTransitions: s.leaseTransitions,
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class KubernetesClient {
  readonly namespace: string;
  private readonly core: CoreV1Api;
  private readonly apps: AppsV1Api;
  private readonly coordination: CoordinationV1Api;
  private readonly batch: BatchV1Api;
  private readonly storage: StorageV1Api;
  private readonly requestTimeoutMs: number;
  private readonly rolloutPollMs: number;

  constructor(options: KubernetesClientOptions) {
    if (!options.namespace) throw new DependencyError('kubernetes', 'a namespace is required');
    this.namespace = options.namespace;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this.rolloutPollMs = options.rolloutPollMs ?? 1_000;
    const kc = loadKubeConfig(options);
    this.core = kc.makeApiClient(CoreV1Api);
    this.apps = kc.makeApiClient(AppsV1Api);
    this.coordination = kc.makeApiClient(CoordinationV1Api);
    this.batch = kc.makeApiClient(BatchV1Api);
    this.storage = kc.makeApiClient(StorageV1Api);
  }

  // ----- Scenario 1, step 4: update service connection strings -----

  /** The decoded (UTF-8) value of one key of a Secret. */
  async readSecretKey(name: string, key: string, opts?: CallOptions): Promise<string> {
    const op = `read secret ${this.namespace}/${name}`;
    const secret = await this.call(op, opts, (o) => this.core.readNamespacedSecret({ name, namespace: this.namespace }, o), { secret: true });
    const value = secret.data?.[key];
    if (value === undefined) throw new KubernetesApiError(op, { reason: 'KeyNotFound', message: `secret has no key "${key}"` });
    return Buffer.from(value, 'base64').toString('utf8');
  }

  /**
   * Sets one key of a Secret, which must exist: a 422 if it does not, since a missing key is a
   * configuration error, not something to paper over. The JSON patch is
   * `[{"op":"remove","path":"/data/KEY"},{"op":"add","path":"/data/KEY","value":"<base64>"}]` — what
   * RFC 6902 defines `replace` to be — rather than the runbook's `replace`, because the API server's
   * JSON patch library (gopkg.in/evanphx/json-patch.v4) lets `replace` ADD a key that is missing;
   * only `remove` fails on one. Unconditional: to refuse a concurrent edit, use patchSecretKeyIfUnchanged.
   */
  async replaceSecretKey(name: string, key: string, value: string, opts?: CallOptions): Promise<void> {
    const op = `patch secret ${this.namespace}/${name}`;
    const path = `/data/${pointerSegment(key)}`;
    const body = [
      { op: 'remove', path },
      { op: 'add', path, value: Buffer.from(value, 'utf8').toString('base64') },
    ];
    await this.call(
      op,
      opts,
      (o) => this.core.patchNamespacedSecret({ name, namespace: this.namespace, body }, setHeaderOptions('Content-Type', PatchStrategy.JsonPatch, o)),
      { secret: true },
    );
  }

  /**
   * Sets one key of a Secret to `value` only if it still holds `expected` (both plain text, UTF-8),
   * in one JSON patch the API server applies atomically:
   * `[{"op":"test","path":"/data/KEY","value":base64(expected)},{"op":"replace","path":"/data/KEY","value":base64(value)}]`.
   * If the key holds anything else, or is gone, the server applies nothing and this throws
   * SecretChangedError (status 422, reason SecretChanged), so a concurrent edit is never overwritten:
   * read the key again and decide. Other refusals are KubernetesApiErrors as usual (404 for a missing
   * Secret, 422 Invalid for an immutable one …). No message carries either value.
   *
   * `expected` is compared as base64 of its UTF-8 bytes with what the server holds, so it must be the
   * value exactly as readSecretKey returned it; a value that is not valid UTF-8 cannot be matched.
   */
  async patchSecretKeyIfUnchanged(name: string, key: string, expected: string, value: string, opts?: CallOptions): Promise<void> {
    const op = `patch secret ${this.namespace}/${name}`;
    const path = `/data/${pointerSegment(key)}`;
    const body = [
      { op: 'test', path, value: Buffer.from(expected, 'utf8').toString('base64') },
      { op: 'replace', path, value: Buffer.from(value, 'utf8').toString('base64') },
    ];
    await this.call(
      op,
      opts,
      (o) => this.core.patchNamespacedSecret({ name, namespace: this.namespace, body }, setHeaderOptions('Content-Type', PatchStrategy.JsonPatch, o)),
      {
        secret: true,
        // The test op guarantees the path exists before the replace runs, so a patch that did not
        // apply can only mean the test failed: the key holds something else, or nothing.
        refine: (r) => (r.status === 422 && r.reason === 'Invalid' && r.message === PATCH_NOT_APPLIED ? new SecretChangedError(op, name, key) : undefined),
      },
    );
  }

  /**
   * `kubectl rollout restart KIND/NAME`: a strategic merge patch of
   * spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"]. Returns the value set
   * and the generation the controller must reach.
   */
  async rolloutRestart(kind: WorkloadKind, name: string, at: Date = new Date(), opts?: CallOptions): Promise<{ restartedAt: string; generation: number }> {
    const restartedAt = restartedAtValue(at);
    const body = { spec: { template: { metadata: { annotations: { 'kubectl.kubernetes.io/restartedAt': restartedAt } } } } };
    const op = `rollout restart ${kind} ${this.namespace}/${name}`;
    const updated = await this.call(op, opts, (o) => {
      const options = setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch, o);
      return kind === 'deployment'
        ? this.apps.patchNamespacedDeployment({ name, namespace: this.namespace, body }, options)
        : this.apps.patchNamespacedStatefulSet({ name, namespace: this.namespace, body }, options);
    });
    return { restartedAt, generation: num(updated.metadata?.generation) };
  }

  /** One look at a rollout (`kubectl rollout status --watch=false`). */
  async readRolloutStatus(kind: WorkloadKind, name: string, opts?: CallOptions): Promise<RolloutStatus> {
    const op = `read ${kind} ${this.namespace}/${name}`;
    const w = await this.call<V1Deployment | V1StatefulSet>(op, opts, (o) =>
      kind === 'deployment'
        ? this.apps.readNamespacedDeployment({ name, namespace: this.namespace }, o)
        : this.apps.readNamespacedStatefulSet({ name, namespace: this.namespace }, o),
    );
    return rolloutStatusOf(kind, w);
  }

  /**
   * `kubectl rollout status KIND/NAME --timeout=…`: polls until the controller has observed the
   * latest generation and every desired replica is updated and ready. Transient API errors (5xx,
   * 429, network) are retried until the deadline; anything else is thrown at once.
   */
  async waitForRollout(kind: WorkloadKind, name: string, timeoutMs: number): Promise<RolloutStatus> {
    const deadline = Date.now() + timeoutMs;
    let last: RolloutStatus | undefined;
    let lastError: unknown;
    for (;;) {
      const remaining = deadline - Date.now();
      try {
        last = await this.readRolloutStatus(kind, name, { timeoutMs: Math.max(1, Math.min(this.requestTimeoutMs, remaining)) });
        lastError = undefined;
        if (last.done) return last;
        if (last.failed) throw new RolloutNotCompleteError(kind, name, last.message, last);
      } catch (err) {
        if (err instanceof RolloutNotCompleteError) throw err;
        const transient = err instanceof KubernetesApiError && (err.status === undefined || err.status >= 500 || err.status === 429);
        if (!transient) throw err;
        lastError = err;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        const why = lastError !== undefined ? safeMessage(lastError) : (last?.message ?? 'no status read');
        throw new RolloutNotCompleteError(kind, name, `not done after ${timeoutMs} ms: ${why}`, last);
      }
      await sleep(Math.min(this.rolloutPollMs, left));
    }
  }

  // ----- Scenario 1, steps 1, 2 and 5: pods by role, fencing the old primary -----

  /** `kubectl get pods -l SELECTOR`. */
  async listPods(labelSelector: string, opts?: CallOptions): Promise<PodSummary[]> {
    const list = await this.call(`list pods ${this.namespace} -l ${labelSelector}`, opts, (o) =>
      this.core.listNamespacedPod({ namespace: this.namespace, labelSelector }, o),
    );
    return list.items.map(podSummary);
  }

  /** `kubectl get pod NAME`: the summary plus restarts, container states and the Ready condition. 404 if there is no such pod. */
  async readPod(name: string, opts?: CallOptions): Promise<PodDetail> {
    const pod = await this.call(`read pod ${this.namespace}/${name}`, opts, (o) => this.core.readNamespacedPod({ name, namespace: this.namespace }, o));
    return podDetail(pod);
  }

  /** `kubectl label pod NAME k=v --overwrite` as a merge patch of metadata.labels; a null value removes the label. */
  async labelPod(name: string, labels: Record<string, string | null>, opts?: CallOptions): Promise<PodSummary> {
    const body = { metadata: { labels } };
    const pod = await this.call(`label pod ${this.namespace}/${name}`, opts, (o) =>
      this.core.patchNamespacedPod({ name, namespace: this.namespace, body }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch, o)),
    );
    return podSummary(pod);
  }

  // ----- Scenario 3, step 5: expand the PVC -----

  async readPvc(name: string, opts?: CallOptions): Promise<PvcInfo> {
    const pvc = await this.call(`read pvc ${this.namespace}/${name}`, opts, (o) =>
      this.core.readNamespacedPersistentVolumeClaim({ name, namespace: this.namespace }, o),
    );
    return pvcInfo(pvc);
  }

  /** `kubectl patch pvc NAME -p '{"spec":{"resources":{"requests":{"storage":"100Gi"}}}}'` (merge patch). */
  async resizePvc(name: string, storage: string, opts?: CallOptions): Promise<PvcInfo> {
    const body = { spec: { resources: { requests: { storage } } } };
    const pvc = await this.call(`resize pvc ${this.namespace}/${name} to ${storage}`, opts, (o) =>
      this.core.patchNamespacedPersistentVolumeClaim({ name, namespace: this.namespace, body }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch, o)),
    );
    return pvcInfo(pvc);
  }

  /**
   * `kubectl get storageclass NAME`: StorageClasses are cluster-scoped, so this is the one call that
   * needs a ClusterRole (get, by name where the chart knows it).
   */
  async readStorageClass(name: string, opts?: CallOptions): Promise<StorageClassInfo> {
    const sc = await this.call(`read storageclass ${name}`, opts, (o) => this.storage.readStorageClass({ name }, o));
    return storageClassInfo(sc);
  }

  // ----- Scenario 4, step 3: re-run the service's `prisma migrate deploy` as a Job -----

  /**
   * `kubectl create job NAME --from=cronjob/CRONJOB`: reads the CronJob and creates the Job kubectl
   * would (see jobFromCronJob). A 404 if there is no such CronJob; a KubernetesApiError with status
   * 409 and reason AlreadyExists if a Job of that name exists (read it to see whose it is).
   */
  async createJobFromCronJob(cronJob: string, name: string, opts?: CallOptions & { annotations?: Record<string, string> }): Promise<JobSummary> {
    const cj = await this.call(`read cronjob ${this.namespace}/${cronJob}`, opts, (o) => this.batch.readNamespacedCronJob({ name: cronJob, namespace: this.namespace }, o));
    const body = jobFromCronJob(cj, name, opts?.annotations);
    const job = await this.call(`create job ${this.namespace}/${name} --from=cronjob/${cronJob}`, opts, (o) => this.batch.createNamespacedJob({ namespace: this.namespace, body }, o));
    return jobSummary(job);
  }

  /** `kubectl get job NAME`: its conditions and pod counts. 404 if there is no such Job. */
  async readJob(name: string, opts?: CallOptions): Promise<JobSummary> {
    const job = await this.call(`read job ${this.namespace}/${name}`, opts, (o) => this.batch.readNamespacedJob({ name, namespace: this.namespace }, o));
    return jobSummary(job);
  }

  // ----- ConfigMaps, for the failover intent -----

  /** The ConfigMap, or null if it does not exist. */
  async readConfigMap(name: string, opts?: CallOptions): Promise<ConfigMapRecord | null> {
    try {
      const cm = await this.call(`read configmap ${this.namespace}/${name}`, opts, (o) => this.core.readNamespacedConfigMap({ name, namespace: this.namespace }, o));
      return configMapRecord(cm);
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  /**
   * Creates the ConfigMap; a KubernetesApiError with status 409 and reason AlreadyExists if the name
   * is taken (someone else was first: read theirs). 422 Invalid for a name that is not an RFC 1123
   * subdomain, a data key outside [-._a-zA-Z0-9]+, or more than 1 MiB of data.
   */
  async createConfigMap(
    name: string,
    data: Record<string, string>,
    labels?: Record<string, string>,
    opts?: CallOptions & { annotations?: Record<string, string> },
  ): Promise<ConfigMapRecord> {
    const metadata: V1ConfigMap['metadata'] = { name, namespace: this.namespace };
    if (labels && Object.keys(labels).length > 0) metadata.labels = { ...labels };
    if (opts?.annotations && Object.keys(opts.annotations).length > 0) metadata.annotations = { ...opts.annotations };
    const body: V1ConfigMap = { apiVersion: 'v1', kind: 'ConfigMap', metadata, data: { ...data } };
    const cm = await this.call(`create configmap ${this.namespace}/${name}`, opts, (o) => this.core.createNamespacedConfigMap({ namespace: this.namespace, body }, o));
    return configMapRecord(cm);
  }

  /**
   * Replaces the ConfigMap's data with `data`, conditional on `current.resourceVersion`: a
   * KubernetesApiError with status 409 (Conflict) if it changed since it was read. Labels and
   * annotations are kept from `current`, with `opts.labels` / `opts.annotations` merged over them (a
   * null value removes one). A PUT writes the whole object: whatever `current` does not carry
   * (binaryData, ownerReferences, finalizers) is dropped, which suits a ConfigMap dbpilot alone writes.
   */
  async replaceConfigMap(
    current: ConfigMapRecord,
    data: Record<string, string>,
    opts?: CallOptions & { labels?: Record<string, string | null>; annotations?: Record<string, string | null> },
  ): Promise<ConfigMapRecord> {
    const op = `replace configmap ${this.namespace}/${current.name}`;
    // An update without resourceVersion is unconditional for ConfigMaps: refuse it rather than overwrite blindly.
    if (!current.resourceVersion) throw new KubernetesApiError(op, { reason: 'ClientError', message: 'no resourceVersion to make the replace conditional on' });
    const metadata: V1ConfigMap['metadata'] = { name: current.name, namespace: this.namespace, resourceVersion: current.resourceVersion };
    const labels = mergeStrings(current.labels, opts?.labels);
    const annotations = mergeStrings(current.annotations, opts?.annotations);
    if (Object.keys(labels).length > 0) metadata.labels = labels;
    if (Object.keys(annotations).length > 0) metadata.annotations = annotations;
    const body: V1ConfigMap = { apiVersion: 'v1', kind: 'ConfigMap', metadata, data: { ...data } };
    const cm = await this.call(op, opts, (o) => this.core.replaceNamespacedConfigMap({ name: current.name, namespace: this.namespace, body }, o));
    return configMapRecord(cm);
  }

  // ----- Leases, for the leader elector -----

  /** The Lease, or null if it does not exist. */
  async readLease(name: string, opts?: CallOptions): Promise<LeaseRecord | null> {
    try {
      const lease = await this.call(`read lease ${this.namespace}/${name}`, opts, (o) => this.coordination.readNamespacedLease({ name, namespace: this.namespace }, o));
      return leaseRecord(lease);
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  /** Creates the Lease; a KubernetesApiError with status 409 (AlreadyExists) if someone else was first. */
  async createLease(name: string, spec: LeaseSpecInput, opts?: CallOptions & { annotations?: Record<string, string> }): Promise<LeaseRecord> {
    const metadata: V1Lease['metadata'] = { name, namespace: this.namespace };
    if (opts?.annotations && Object.keys(opts.annotations).length > 0) metadata.annotations = { ...opts.annotations };
    const body: V1Lease = { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata, spec: leaseSpec(spec) };
    const lease = await this.call(`create lease ${this.namespace}/${name}`, opts, (o) => this.coordination.createNamespacedLease({ namespace: this.namespace, body }, o));
    return leaseRecord(lease);
  }

  /**
   * Replaces the Lease's spec, conditional on `current.resourceVersion`: a KubernetesApiError with
   * status 409 (Conflict) if it changed since it was read. `annotations` are merged over the current
   * ones (a null value removes one).
   */
  async replaceLease(current: LeaseRecord, spec: LeaseSpecInput, opts?: CallOptions & { annotations?: Record<string, string | null> }): Promise<LeaseRecord> {
    const metadata: V1Lease['metadata'] = { name: current.name, namespace: this.namespace, resourceVersion: current.resourceVersion };
    if (current.labels) metadata.labels = current.labels;
    const annotations: Record<string, string> = { ...(current.annotations ?? {}) };
    for (const [k, v] of Object.entries(opts?.annotations ?? {})) {
      if (v === null) delete annotations[k];
      else annotations[k] = v;
    }
    if (Object.keys(annotations).length > 0) metadata.annotations = annotations;
    const body: V1Lease = { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata, spec: leaseSpec(spec) };
    const lease = await this.call(`replace lease ${this.namespace}/${current.name}`, opts, (o) =>
      this.coordination.replaceNamespacedLease({ name: current.name, namespace: this.namespace, body }, o),
    );
    return leaseRecord(lease);
  }

  /** Deletes the Lease, if `resourceVersion` is given only if it is still that version (else 409). */
  async deleteLease(name: string, opts?: CallOptions & { resourceVersion?: string }): Promise<void> {
    const body = opts?.resourceVersion ? { preconditions: { resourceVersion: opts.resourceVersion } } : undefined;
    await this.call(`delete lease ${this.namespace}/${name}`, opts, (o) =>
      this.coordination.deleteNamespacedLease(body ? { name, namespace: this.namespace, body } : { name, namespace: this.namespace }, o),
    );
  }

  // ----- plumbing -----

  /**
   * Runs one API call with the per-request timeout and turns any failure into a KubernetesApiError.
   * `how.secret`: withhold the server's message where it may echo the Secret. `how.refine`: a chance to
   * turn one refusal into a more specific error, seeing the server's answer before anything is withheld.
   */
  private async call<T>(
    operation: string,
    opts: CallOptions | undefined,
    fn: (options: ConfigurationOptions) => Promise<T>,
    how: { secret?: boolean; refine?: (r: Refusal) => KubernetesApiError | undefined } = {},
  ): Promise<T> {
    const timeoutMs = opts?.timeoutMs ?? this.requestTimeoutMs;
    const options: ConfigurationOptions = { middleware: [timeoutMiddleware(timeoutMs)], middlewareMergeStrategy: 'append' };
    try {
      return await fn(options);
    } catch (err) {
      throw toKubernetesError(operation, err, timeoutMs, how.secret === true, how.refine);
    }
  }
}

function toKubernetesError(
  operation: string,
  err: unknown,
  timeoutMs: number,
  secret: boolean,
  refine?: (r: Refusal) => KubernetesApiError | undefined,
): KubernetesApiError {
  if (err instanceof ApiException) {
    const status = typeof err.code === 'number' ? err.code : undefined;
    let reason: string | undefined;
    let message = '';
    // ApiException.body is the raw response text (a JSON Status), except for 401 where client-node drops it.
    const raw: unknown = err.body;
    if (typeof raw === 'string' && raw.length > 0) {
      try {
        const parsed = asRecord(JSON.parse(raw));
        if (typeof parsed.reason === 'string') reason = parsed.reason;
        if (typeof parsed.message === 'string') message = parsed.message;
      } catch {
        message = raw;
      }
    }
    const refined = refine?.({ status, reason, message });
    if (refined) return refined;
    if (status === 401) reason ??= 'Unauthorized';
    // A 400/422 message can echo the object sent or patched (for a Secret: its data, base64). For
    // Secrets those messages are dropped; other refusals (404, 403, 409) only name the object.
    const echoes = status === 400 || status === 422 || status === undefined;
    const shown =
      secret && echoes
        ? `${reason ?? 'request refused'} (the API server's message is withheld: it may contain the Secret's data)`
        : safeMessage(message || reason || 'request refused').slice(0, 500);
    return new KubernetesApiError(operation, { ...(status !== undefined ? { status } : {}), ...(reason !== undefined ? { reason } : {}), message: shown });
  }
  if (err instanceof KubernetesApiError) return err;
  const name = err instanceof Error ? err.name : '';
  if (name === 'AbortError' || name === 'TimeoutError') {
    return new KubernetesApiError(operation, { reason: 'Timeout', message: `no answer within ${timeoutMs} ms` });
  }
  if (err instanceof DependencyError) return new KubernetesApiError(operation, { reason: 'ClientError', message: err.message });
  // Network errors (node-fetch FetchError) name the URL, never the request headers.
  return new KubernetesApiError(operation, { reason: 'NetworkError', message: safeMessage(err) }, { cause: err });
}
