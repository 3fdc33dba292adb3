/**
 * AWS RDS, as dbpilot uses it: manual snapshots of one instance (create, describe, delete), restore
 * from a snapshot and to a point in time, and growing the instance's storage. A thin typed client
 * over the real @aws-sdk/client-rds, plus the pure rules dbpilot applies before it asks RDS anything
 * (snapshot names, identifier rules, the restore window, the storage-growth rules) and the mapping of
 * AWS's errors to messages an on-call engineer can act on.
 *
 * Credentials always come from the SDK's default chain — environment, the IRSA web-identity token
 * (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE, which EKS injects for the chart's annotated
 * ServiceAccount), shared files, container/instance metadata — and are never read, logged or shown
 * by dbpilot. Retries are the SDK's: its standard strategy retries throttling (`Throttling`,
 * `RequestLimitExceeded`), 5xx answers, timeouts and network errors with exponential backoff and
 * jitter, up to `aws.maxAttempts`; every other RDS error is final and mapped here.
 *
 * The SDK is loaded only when an RdsClient is created, so the configuration loader (which uses the
 * identifier rules below) and a dbpilot without `aws:` never load it.
 */
import type { DBInstance, DBSnapshot, RDSClient, Tag } from '@aws-sdk/client-rds';
import { DbpilotError, safeMessage } from '../errors.js';

// ---------------------------------------------------------------------------------------------------
// Tags and names

/** The tag that marks a snapshot as dbpilot's own: retention deletes only snapshots that carry it. */
export const MANAGED_BY_TAG = 'dbpilot.io/managed-by';
export const MANAGED_BY_VALUE = 'dbpilot';
/** Why the snapshot was taken (`scheduled`, `before step markRolledBack of run …`, `cli: …`). */
export const REASON_TAG = 'dbpilot.io/reason';
/** Which dbpilot process or person asked for it (`dbpilot-0/1234/…`, `cli:alice`). */
export const REQUESTED_BY_TAG = 'dbpilot.io/requested-by';
/** On an instance dbpilot restored: what it was restored from. */
export const RESTORED_FROM_TAG = 'dbpilot.io/restored-from';

/** RDS's own rule for DB instance identifiers: 1–63 letters, digits or hyphens, a letter first, no `--`, no trailing hyphen. */
export function instanceIdentifierProblem(id: string): string | null {
  return identifierProblem(id, 63, 'DB instance identifier');
}

/** RDS's rule for DB snapshot identifiers: the same as for instances, up to 255 characters. */
export function snapshotIdentifierProblem(id: string): string | null {
  return identifierProblem(id, 255, 'DB snapshot identifier');
}

function identifierProblem(id: string, max: number, what: string): string | null {
  if (id.length < 1 || id.length > max) return `a ${what} has 1 to ${max} characters (got ${id.length})`;
  if (!/^[A-Za-z]/.test(id)) return `a ${what} must begin with a letter`;
  if (!/^[A-Za-z0-9-]+$/.test(id)) return `a ${what} may contain only ASCII letters, digits and hyphens`;
  if (id.includes('--')) return `a ${what} must not contain two consecutive hyphens`;
  if (id.endsWith('-')) return `a ${what} must not end with a hyphen`;
  return null;
}

/**
 * The prefix of dbpilot's snapshot names for an instance, after the runbook's convention: the
 * runbook's instance `lomash-wood-prod` has snapshots `lomash-wood-manual-YYYYMMDDHHMM`, so the
 * prefix is the instance identifier without its `-prod` suffix (`lomash-wood-prod` → `lomash-wood`,
 * the runbook's exact name). Any other identifier is its own prefix (`lomash-wood-staging` →
 * `lomash-wood-staging-manual-…`). RDS stores identifiers in lower case, so the prefix is lower case.
 */
export function snapshotPrefixFor(instance: string): string {
  const id = instance.toLowerCase();
  return id.endsWith('-prod') && id.length > '-prod'.length ? id.slice(0, -'-prod'.length) : id;
}

/** `<prefix>-manual-YYYYMMDDHHMM` in UTC, as the runbook's `$(date +%Y%m%d%H%M)` on a UTC host. */
export function snapshotName(prefix: string, at: Date): string {
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${prefix}-manual-${p(at.getUTCFullYear(), 4)}${p(at.getUTCMonth() + 1)}${p(at.getUTCDate())}${p(at.getUTCHours())}${p(at.getUTCMinutes())}`;
}

/** Whether a snapshot name is one dbpilot makes for this prefix (retention deletes nothing else, tag or not). */
export function isDbpilotSnapshotName(prefix: string, id: string): boolean {
  return id.toLowerCase().startsWith(`${prefix}-manual-`) && /^\d{12}$/.test(id.slice(prefix.length + '-manual-'.length));
}

/** A tag value RDS accepts: at most 256 characters of letters, digits, spaces and `_ . : / = + - @`. */
export function tagValue(v: string): string {
  return v.replace(/[^\p{L}\p{N}\p{Z}_.:/=+\-@]/gu, '-').slice(0, 256);
}

// ---------------------------------------------------------------------------------------------------
// Point-in-time recovery: the time a person types

/** RFC 3339 with seconds and an explicit zone (`2026-02-18T14:30:00Z`, `…+01:00`), as the runbook writes it. */
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;

/** Parses a restore time; throws DBPILOT_RDS_BAD_TIME naming what is wrong with it. */
export function parseRestoreTime(text: string): Date {
  const m = RFC3339.exec(text.trim());
  if (!m) {
    throw new RdsError('DBPILOT_RDS_BAD_TIME', `--time ${JSON.stringify(text)} is not an RFC 3339 time with a zone, e.g. 2026-02-18T14:30:00Z`);
  }
  const [, y, mo, d, h, mi, s] = m.map(Number) as number[];
  const t = new Date(text.trim());
  // Date accepts 2026-02-30 and rolls it over; the fields must survive the round trip in UTC terms of the given offset.
  const probe = new Date(Date.UTC(y!, mo! - 1, d!, h!, mi!, s!));
  if (Number.isNaN(t.getTime()) || probe.getUTCMonth() !== mo! - 1 || probe.getUTCDate() !== d! || h! > 23 || mi! > 59 || s! > 59) {
    throw new RdsError('DBPILOT_RDS_BAD_TIME', `--time ${JSON.stringify(text)} is not a real date and time`);
  }
  return t;
}

export interface RestoreWindow {
  /** The earliest restorable time (the oldest automated backup, from DescribeDBInstanceAutomatedBackups). */
  earliest: Date;
  /** LatestRestorableTime of the instance (typically about five minutes ago). */
  latest: Date;
}

/**
 * Why a restore time cannot be used, or null: not in the future, not before the earliest restorable
 * time, not after LatestRestorableTime.
 */
export function restoreTimeProblem(t: Date, window: RestoreWindow, now: Date): string | null {
  const iso = (d: Date) => d.toISOString().replace('.000Z', 'Z');
  if (t.getTime() > now.getTime()) return `${iso(t)} is in the future (now is ${iso(now)})`;
  if (t.getTime() < window.earliest.getTime()) return `${iso(t)} is before the earliest restorable time ${iso(window.earliest)} (older than the automated backups' retention)`;
  if (t.getTime() > window.latest.getTime()) {
    return `${iso(t)} is after the latest restorable time ${iso(window.latest)} (RDS has not archived the transaction logs that far yet; it lags by about five minutes)`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------
// Storage growth: RDS's rules, checked before asking

/** Largest allocated storage for gp2, gp3, io1 and io2 (64 TiB); magnetic (`standard`) stops at 3 TiB. */
export const MAX_STORAGE_GIB = 65_536;
const MAX_MAGNETIC_GIB = 3072;

/**
 * Why the instance's storage cannot be grown to `toGiB` now, or null. RDS's rules: the instance is
 * available (or backing up); no storage change is pending or still being optimised (RDS allows one
 * change per six hours, and refuses another while `storage-optimization` runs); the new size is at
 * least 10 % more than the current one; at most the storage type's maximum; not above the
 * autoscaling ceiling MaxAllocatedStorage when one is set.
 */
export function storageGrowthProblem(i: InstanceInfo, toGiB: number): string | null {
  if (!Number.isInteger(toGiB) || toGiB <= 0) return `the new size must be a whole number of GiB (got ${toGiB})`;
  if (i.pendingAllocatedGiB !== null) return `a storage change of ${i.id} to ${i.pendingAllocatedGiB} GiB is already pending (status ${i.status})`;
  if (i.status === 'storage-optimization') return `${i.id} is still optimising its last storage change (status storage-optimization); RDS allows another change only after that and at least six hours after the last one`;
  if (i.status !== 'available' && i.status !== 'backing-up') return `${i.id} is ${i.status}, not available: RDS refuses storage changes until it is`;
  if (toGiB <= i.allocatedGiB) return `${i.id} already has ${i.allocatedGiB} GiB; ${toGiB} GiB would not grow it (RDS storage can only grow)`;
  const min = Math.ceil((i.allocatedGiB * 11) / 10);
  if (toGiB < min) return `RDS grows storage by at least 10 %: from ${i.allocatedGiB} GiB the new size must be at least ${min} GiB (asked ${toGiB})`;
  const max = i.storageType === 'standard' ? MAX_MAGNETIC_GIB : MAX_STORAGE_GIB;
  if (toGiB > max) return `${toGiB} GiB is above the ${max} GiB maximum of storage type ${i.storageType}`;
  if (i.maxAllocatedGiB !== null && toGiB > i.maxAllocatedGiB) return `${toGiB} GiB is above the instance's storage autoscaling ceiling (MaxAllocatedStorage ${i.maxAllocatedGiB} GiB); raise that first`;
  return null;
}

// ---------------------------------------------------------------------------------------------------
// The API handlers use (HandlerContext.rds)

/** The same shape as a step's CheckResult (remediation/handler.ts), declared here so integrations import nothing of remediation. */
export interface RdsCheck {
  ok: boolean;
  detail: string;
  data?: unknown;
}

export interface SnapshotRequest {
  /** Passed on to every request and wait: aborting stops waiting (the snapshot itself goes on in AWS). */
  signal?: AbortSignal;
  /** Called before every write to AWS (the step's assertCanAct): throws when this process must stop acting. */
  assertCanAct?: () => void;
  /** The remediation run it is for, recorded with it. */
  runId?: string;
  /** Who asked (default: this process). */
  requestedBy?: string;
  /** What started it: `schedule`, `risky-step`, `cli` or `handler` (default). */
  trigger?: SnapshotTrigger;
  /** Called once the snapshot's identifier is known (created or joined), before waiting: lets a caller record it first. */
  onStarted?: (snapshotId: string) => void;
}

export type SnapshotTrigger = 'schedule' | 'risky-step' | 'cli' | 'handler';

/** A snapshot dbpilot took (or joined) and waited for. */
export interface SnapshotResult {
  snapshotId: string;
  instance: string;
  status: string;
  /** SnapshotCreateTime as RDS reports it (the point the snapshot holds). */
  snapshotTime: string | null;
  sizeGiB: number | null;
  reason: string;
  /** True when this request used a snapshot that was already being made (by dbpilot, or the runbook's command in the same minute). */
  joined: boolean;
  /** How long it took, from the request to `available`. */
  waitedMs: number;
}

export interface StorageChange {
  instance: string;
  fromGiB: number;
  toGiB: number;
  /** The instance's status right after the request (usually `modifying`). */
  status: string;
}

/**
 * What dbpilot's handlers may do on RDS (HandlerContext.rds; null when `aws:` is not configured).
 * Every method acts on the configured instance only (`aws.dbInstanceIdentifier`).
 */
export interface RdsOperations {
  /** The production instance, aws.dbInstanceIdentifier. */
  readonly instance: string;
  /**
   * Takes a manual snapshot `<prefix>-manual-YYYYMMDDHHMM`, tagged as dbpilot's with the reason and
   * who asked, waits until it is `available` (aws.snapshotTimeoutMinutes) and records it in the
   * store. Never two at once: a snapshot of the instance that dbpilot is already making (in this
   * process or another) is joined, not duplicated. Throws RdsError (a stable code, a clear message).
   */
  snapshot(reason: string, opts?: SnapshotRequest): Promise<SnapshotResult>;
  /**
   * Asks for a snapshot as snapshot() does (joining one under way) and returns once RDS has accepted it
   * (`creating`), without waiting for it to be available; the wait goes on in the background.
   */
  requestSnapshot(reason: string, opts?: SnapshotRequest): Promise<{ snapshotId: string }>;
  /** A snapshot of the configured instance as RDS describes it now; null when there is none of that name. */
  describeSnapshot(snapshotId: string, signal?: AbortSignal): Promise<SnapshotInfo | null>;
  /** Waits for a snapshot already started (e.g. recorded before a restart) until it is available. */
  waitForSnapshot(snapshotId: string, reason: string, opts?: SnapshotRequest): Promise<SnapshotResult>;
  /** The runbook's command a snapshot stands for, for a step's `command`. */
  snapshotCommand(): string;
  /** The instance as RDS describes it now. */
  describeInstance(signal?: AbortSignal): Promise<InstanceInfo>;
  /**
   * Why growing to toGiB is refused now (RDS's rules, see storageGrowthProblem), as a precondition:
   * ok when it may be done.
   */
  checkStorageGrowth(toGiB: number, signal?: AbortSignal): Promise<RdsCheck>;
  /**
   * Grows the allocated storage to toGiB (ModifyDBInstance, ApplyImmediately): checks the rules
   * first and refuses with DBPILOT_RDS_STORAGE_REFUSED when one is not met. The change then runs in
   * AWS (status modifying, then storage-optimization) for minutes to hours.
   */
  growStorage(toGiB: number, opts?: { signal?: AbortSignal; assertCanAct?: () => void }): Promise<StorageChange>;
  /**
   * The check after growStorage: ok when AllocatedStorage ≥ toGiB, or (unless requireApplied) when
   * RDS has accepted the change (pending or modifying to toGiB).
   */
  checkStorage(toGiB: number, opts?: { requireApplied?: boolean; signal?: AbortSignal }): Promise<RdsCheck>;
  /** `aws rds modify-db-instance … --allocated-storage toGiB --apply-immediately`. */
  growStorageCommand(toGiB: number): string;
}

// ---------------------------------------------------------------------------------------------------
// Errors

/** An RDS failure with a stable code, the AWS error code, and what to do about it. */
export class RdsError extends DbpilotError {
  constructor(
    code: string,
    message: string,
    readonly details: { awsCode?: string; httpStatus?: number; attempts?: number; action?: string; requestId?: string } = {},
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
  }
}

const THROTTLING = new Set(['Throttling', 'ThrottlingException', 'ThrottledException', 'RequestThrottled', 'RequestLimitExceeded', 'TooManyRequestsException', 'RequestThrottledException']);
const CREDENTIALS = new Set([
  'ExpiredToken',
  'ExpiredTokenException',
  'InvalidClientTokenId',
  'UnrecognizedClientException',
  'SignatureDoesNotMatch',
  'IncompleteSignature',
  'MissingAuthenticationToken',
  'InvalidSignatureException',
  'AuthFailure',
  // STS, when the IRSA web-identity token is refused (wrong audience, expired, the role's trust policy).
  'InvalidIdentityToken',
  'IDPRejectedClaim',
  'ExpiredTokenException',
]);
const ACCESS_DENIED = new Set(['AccessDenied', 'AccessDeniedException', 'UnauthorizedOperation', 'NotAuthorized']);

interface AwsLikeError {
  name?: string;
  message?: string;
  Code?: string;
  $fault?: string;
  $metadata?: { httpStatusCode?: number; attempts?: number; requestId?: string };
}

/**
 * An error from the SDK as an RdsError with a message that says what happened and what to do. The
 * AWS message is kept (it never holds a credential: at most the role's ARN); the SDK's own errors
 * (no credentials, network) are named as such.
 */
export function mapRdsError(err: unknown, ctx: { action: string; instance: string; region: string; snapshotId?: string; target?: string }): RdsError {
  if (err instanceof RdsError) return err;
  const e = (err ?? {}) as AwsLikeError;
  const code = e.Code ?? e.name ?? 'Error';
  const status = e.$metadata?.httpStatusCode;
  const attempts = e.$metadata?.attempts;
  const aws = safeMessage(e.message ?? String(err));
  const details = { awsCode: code, ...(status !== undefined ? { httpStatus: status } : {}), ...(attempts !== undefined ? { attempts } : {}), action: ctx.action, ...(e.$metadata?.requestId ? { requestId: e.$metadata.requestId } : {}) };
  const after = attempts && attempts > 1 ? ` (after ${attempts} attempts)` : '';
  const mk = (c: string, m: string) => new RdsError(c, `RDS ${ctx.action}: ${m}`, details, { cause: err });
  const snap = ctx.snapshotId ?? 'the snapshot';
  if (e.name === 'CredentialsProviderError' || (/Could not load credentials|credential.*not.*(found|load)/i.test(aws) && !status)) {
    return mk(
      'DBPILOT_RDS_NO_CREDENTIALS',
      "no AWS credentials found in the SDK's default chain (environment, IRSA web identity token, shared config, container or instance metadata): in Kubernetes, annotate the chart's ServiceAccount with eks.amazonaws.com/role-arn (serviceAccount.awsRoleArn) and restart the pods",
    );
  }
  switch (code) {
    case 'SnapshotQuotaExceeded':
    case 'SnapshotQuotaExceededFault':
      return mk(
        'DBPILOT_RDS_SNAPSHOT_QUOTA',
        `the account's quota of manual DB snapshots in ${ctx.region} is used up, so ${snap} was not taken (AWS: ${aws}). Delete manual snapshots that are no longer needed (dbpilot's retention deletes only its own, after aws.snapshotRetentionDays) or raise the quota "Manual DB instance snapshots" in Service Quotas`,
      );
    case 'InvalidDBInstanceState':
    case 'InvalidDBInstanceStateFault':
      return mk(
        'DBPILOT_RDS_INSTANCE_STATE',
        `${ctx.instance} is not in a state that allows this (AWS: ${aws}). RDS takes no snapshot while the instance is backing up (another snapshot or the automated backup), modifying, rebooting, stopped or out of storage; try again once \`aws rds describe-db-instances --db-instance-identifier ${ctx.instance}\` shows it available`,
      );
    case 'DBSnapshotAlreadyExists':
    case 'DBSnapshotAlreadyExistsFault':
      return mk('DBPILOT_RDS_SNAPSHOT_EXISTS', `a snapshot named ${snap} already exists and is not a snapshot of ${ctx.instance} in progress or available (AWS: ${aws}); names are per minute: try again in a minute, or set aws.snapshotPrefix if another instance uses the same prefix`);
    case 'DBSnapshotNotFound':
    case 'DBSnapshotNotFoundFault':
      return mk('DBPILOT_RDS_SNAPSHOT_NOT_FOUND', `there is no snapshot ${snap} in ${ctx.region} (\`dbpilot backup list\` shows the ones there are)`);
    case 'DBInstanceNotFound':
    case 'DBInstanceNotFoundFault':
      return mk('DBPILOT_RDS_INSTANCE_NOT_FOUND', `there is no DB instance ${ctx.target ?? ctx.instance} in ${ctx.region} (check aws.dbInstanceIdentifier and aws.region)`);
    case 'DBInstanceAlreadyExists':
    case 'DBInstanceAlreadyExistsFault':
      return mk('DBPILOT_RDS_TARGET_EXISTS', `a DB instance named ${ctx.target ?? '(the target)'} already exists: a restore always creates a new instance; pick another --target`);
    case 'InvalidDBSnapshotState':
    case 'InvalidDBSnapshotStateFault':
      return mk('DBPILOT_RDS_SNAPSHOT_STATE', `${snap} is not available for this (AWS: ${aws})`);
    case 'PointInTimeRestoreNotEnabled':
    case 'PointInTimeRestoreNotEnabledFault':
      return mk('DBPILOT_RDS_PITR_DISABLED', `point-in-time recovery is not enabled for ${ctx.instance} (its backup retention period is 0): restore from a snapshot instead`);
    case 'StorageQuotaExceeded':
    case 'StorageQuotaExceededFault':
      return mk('DBPILOT_RDS_STORAGE_QUOTA', `the account's RDS storage quota would be exceeded (AWS: ${aws}); raise "Total storage for all DB instances" in Service Quotas`);
    case 'InsufficientDBInstanceCapacity':
    case 'InsufficientDBInstanceCapacityFault':
      return mk('DBPILOT_RDS_NO_CAPACITY', `AWS has no capacity for this instance class in that Availability Zone now (AWS: ${aws}); try another class or later`);
    case 'InvalidParameterValue':
    case 'InvalidParameterCombination':
      return mk('DBPILOT_RDS_INVALID_REQUEST', `RDS refused the request: ${aws}`);
    default:
      break;
  }
  if (THROTTLING.has(code)) {
    return mk('DBPILOT_RDS_THROTTLED', `RDS throttled the request${after}; the SDK backs off and retries throttling up to aws.maxAttempts, and the API was still throttling. Another tool may be calling the RDS API heavily in this account and region; the next attempt is on the next run`);
  }
  if (ACCESS_DENIED.has(code)) {
    return mk('DBPILOT_RDS_ACCESS_DENIED', `dbpilot's IAM role may not do this (AWS: ${aws}). Add the action to the role's policy (README "IAM policy", docs/disaster-recovery/restore.md)`);
  }
  if (CREDENTIALS.has(code)) {
    return mk('DBPILOT_RDS_CREDENTIALS', `AWS refused dbpilot's credentials (${code}: ${aws}); check the IRSA role (serviceAccount.awsRoleArn) and that the pod's clock is right`);
  }
  if ((status !== undefined && status >= 500) || e.$fault === 'server' || /ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|EAI_AGAIN|socket hang up|TimeoutError|timed? ?out/i.test(`${e.name} ${aws}`)) {
    return mk('DBPILOT_RDS_UNAVAILABLE', `RDS did not answer${after}: ${aws}; the SDK retried with backoff up to aws.maxAttempts`);
  }
  if (e.name === 'AbortError') return mk('DBPILOT_RDS_ABORTED', 'stopped waiting: the request was aborted');
  return mk('DBPILOT_RDS_FAILED', `${code}: ${aws}`);
}

// ---------------------------------------------------------------------------------------------------
// What dbpilot reads of RDS's answers

export interface SnapshotInfo {
  id: string;
  instance: string;
  /** `manual` or `automated` (or `awsbackup`, `shared`, `public`). */
  type: string;
  status: string;
  percentProgress: number | null;
  /** SnapshotCreateTime: absent while RDS has not started it. */
  createdAt: Date | null;
  allocatedGiB: number | null;
  /** Bytes of a full copy, when RDS reports it (FullSnapshotSizeInBytes). */
  fullSizeBytes: number | null;
  encrypted: boolean;
  engineVersion: string | null;
  arn: string | null;
  tags: Record<string, string>;
  /** Made by dbpilot (carries its managed-by tag). */
  dbpilot: boolean;
}

export interface InstanceInfo {
  id: string;
  status: string;
  engine: string | null;
  engineVersion: string | null;
  instanceClass: string | null;
  allocatedGiB: number;
  maxAllocatedGiB: number | null;
  pendingAllocatedGiB: number | null;
  storageType: string;
  multiAZ: boolean;
  subnetGroup: string | null;
  securityGroupIds: string[];
  parameterGroup: string | null;
  endpoint: string | null;
  backupRetentionDays: number;
  latestRestorableTime: Date | null;
  deletionProtection: boolean;
  arn: string | null;
}

function tagsOf(list: Tag[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const t of list ?? []) if (t.Key !== undefined) out[t.Key] = t.Value ?? '';
  return out;
}

export function toSnapshotInfo(s: DBSnapshot): SnapshotInfo {
  const tags = tagsOf(s.TagList);
  return {
    id: s.DBSnapshotIdentifier ?? '',
    instance: s.DBInstanceIdentifier ?? '',
    type: s.SnapshotType ?? 'unknown',
    status: s.Status ?? 'unknown',
    percentProgress: s.PercentProgress ?? null,
    createdAt: s.SnapshotCreateTime ?? null,
    allocatedGiB: s.AllocatedStorage ?? null,
    fullSizeBytes: s.FullSnapshotSizeInBytes ?? null,
    encrypted: s.Encrypted ?? false,
    engineVersion: s.EngineVersion ?? null,
    arn: s.DBSnapshotArn ?? null,
    tags,
    dbpilot: tags[MANAGED_BY_TAG] === MANAGED_BY_VALUE,
  };
}

export function toInstanceInfo(i: DBInstance): InstanceInfo {
  const params = i.DBParameterGroups?.[0]?.DBParameterGroupName ?? null;
  return {
    id: i.DBInstanceIdentifier ?? '',
    status: i.DBInstanceStatus ?? 'unknown',
    engine: i.Engine ?? null,
    engineVersion: i.EngineVersion ?? null,
    instanceClass: i.DBInstanceClass ?? null,
    allocatedGiB: i.AllocatedStorage ?? 0,
    maxAllocatedGiB: i.MaxAllocatedStorage ?? null,
    pendingAllocatedGiB: i.PendingModifiedValues?.AllocatedStorage ?? null,
    storageType: i.StorageType ?? 'gp2',
    multiAZ: i.MultiAZ ?? false,
    subnetGroup: i.DBSubnetGroup?.DBSubnetGroupName ?? null,
    securityGroupIds: (i.VpcSecurityGroups ?? []).map((g) => g.VpcSecurityGroupId ?? '').filter(Boolean),
    parameterGroup: params,
    endpoint: i.Endpoint?.Address ? `${i.Endpoint.Address}:${i.Endpoint.Port ?? 5432}` : null,
    backupRetentionDays: i.BackupRetentionPeriod ?? 0,
    latestRestorableTime: i.LatestRestorableTime ?? null,
    deletionProtection: i.DeletionProtection ?? false,
    arn: i.DBInstanceArn ?? null,
  };
}

// ---------------------------------------------------------------------------------------------------
// Restores: what is sent, and the `aws rds` command that does the same

/** What a restore copies from the production instance so the new one lands in the same network, size and settings. */
export interface RestoreShape {
  instanceClass?: string | undefined;
  subnetGroup?: string | undefined;
  securityGroupIds?: string[] | undefined;
  parameterGroup?: string | undefined;
  multiAZ?: boolean | undefined;
}

export interface RestoreFromSnapshotInput extends RestoreShape {
  snapshotId: string;
  target: string;
  tags: Record<string, string>;
}

export interface RestoreToTimeInput extends RestoreShape {
  source: string;
  target: string;
  time: Date;
  tags: Record<string, string>;
}

const q = (v: string) => (/^[A-Za-z0-9._:/=+@,-]+$/.test(v) ? v : `'${v.replace(/'/g, "'\\''")}'`);

function shapeFlags(s: RestoreShape): string[] {
  const f: string[] = [];
  if (s.instanceClass) f.push(`--db-instance-class ${q(s.instanceClass)}`);
  if (s.subnetGroup) f.push(`--db-subnet-group-name ${q(s.subnetGroup)}`);
  if (s.securityGroupIds?.length) f.push(`--vpc-security-group-ids ${s.securityGroupIds.map(q).join(' ')}`);
  if (s.parameterGroup) f.push(`--db-parameter-group-name ${q(s.parameterGroup)}`);
  if (s.multiAZ !== undefined) f.push(s.multiAZ ? '--multi-az' : '--no-multi-az');
  return f;
}

function tagFlags(tags: Record<string, string>): string[] {
  const entries = Object.entries(tags);
  return entries.length ? [`--tags ${entries.map(([k, v]) => q(`Key=${k},Value=${v}`)).join(' ')}`] : [];
}

const lines = (head: string, flags: string[]) => [head, ...flags].join(' \\\n  ');

export function createSnapshotCommand(instance: string, snapshotId: string, region: string): string {
  return lines('aws rds create-db-snapshot', [`--region ${region}`, `--db-instance-identifier ${instance}`, `--db-snapshot-identifier ${snapshotId}`, `--tags Key=${MANAGED_BY_TAG},Value=${MANAGED_BY_VALUE}`]);
}

export function restoreFromSnapshotCommand(i: RestoreFromSnapshotInput, region: string): string {
  return lines('aws rds restore-db-instance-from-db-snapshot', [`--region ${region}`, `--db-instance-identifier ${i.target}`, `--db-snapshot-identifier ${i.snapshotId}`, ...shapeFlags(i), ...tagFlags(i.tags)]);
}

export function restoreToTimeCommand(i: RestoreToTimeInput, region: string): string {
  return lines('aws rds restore-db-instance-to-point-in-time', [
    `--region ${region}`,
    `--source-db-instance-identifier ${i.source}`,
    `--target-db-instance-identifier ${i.target}`,
    `--restore-time ${i.time.toISOString().replace('.000Z', 'Z')}`,
    ...shapeFlags(i),
    ...tagFlags(i.tags),
  ]);
}

export function modifyStorageCommand(instance: string, toGiB: number, region: string): string {
  return lines('aws rds modify-db-instance', [`--region ${region}`, `--db-instance-identifier ${instance}`, `--allocated-storage ${toGiB}`, '--apply-immediately']);
}

// ---------------------------------------------------------------------------------------------------
// The client

export interface RdsClientOptions {
  region: string;
  /** An endpoint other than AWS's (a VPC interface endpoint, or a test's stand-in). */
  endpoint?: string | undefined;
  /** Attempts per request, retries of throttling, 5xx and network errors included (the SDK's standard strategy). */
  maxAttempts: number;
  requestTimeoutMs: number;
  /** Tests only: fixed credentials instead of the default chain. Never set in production. */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
}

const pageSize = 100;

/** The calls dbpilot makes; each maps its failure with mapRdsError. */
export class RdsClient {
  private constructor(
    private readonly sdk: typeof import('@aws-sdk/client-rds'),
    private readonly client: RDSClient,
    readonly region: string,
  ) {}

  static async create(o: RdsClientOptions): Promise<RdsClient> {
    // The SDK warns on every start that its releases after January 2027 need Node 22; this build pins
    // 3.1169.0, which runs on Node 20 (DEPENDENCIES), so the warning would only clutter the CLI's stderr.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const sdk = await import('@aws-sdk/client-rds');
    const client = new sdk.RDSClient({
      region: o.region,
      ...(o.endpoint ? { endpoint: o.endpoint } : {}),
      ...(o.credentials ? { credentials: o.credentials } : {}),
      maxAttempts: o.maxAttempts,
      retryMode: 'standard',
      requestHandler: { requestTimeout: o.requestTimeoutMs, connectionTimeout: Math.min(o.requestTimeoutMs, 5000) },
    });
    return new RdsClient(sdk, client, o.region);
  }

  private async call<T>(action: string, ctx: { instance: string; snapshotId?: string; target?: string }, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw mapRdsError(err, { action, region: this.region, ...ctx });
    }
  }

  /** The instance, or null when RDS says there is none. */
  async describeInstance(id: string, signal?: AbortSignal): Promise<InstanceInfo | null> {
    try {
      const out = await this.call('DescribeDBInstances', { instance: id, target: id }, () => this.client.send(new this.sdk.DescribeDBInstancesCommand({ DBInstanceIdentifier: id }), { abortSignal: signal }));
      const i = out.DBInstances?.[0];
      return i ? toInstanceInfo(i) : null;
    } catch (err) {
      if (err instanceof RdsError && err.code === 'DBPILOT_RDS_INSTANCE_NOT_FOUND') return null;
      throw err;
    }
  }

  async createSnapshot(instance: string, snapshotId: string, tags: Record<string, string>, signal?: AbortSignal): Promise<SnapshotInfo> {
    const out = await this.call('CreateDBSnapshot', { instance, snapshotId }, () =>
      this.client.send(
        new this.sdk.CreateDBSnapshotCommand({ DBInstanceIdentifier: instance, DBSnapshotIdentifier: snapshotId, Tags: Object.entries(tags).map(([Key, Value]) => ({ Key, Value })) }),
        { abortSignal: signal },
      ),
    );
    return toSnapshotInfo(out.DBSnapshot ?? {});
  }

  /** The snapshot, or null when RDS says there is none. */
  async describeSnapshot(instance: string, snapshotId: string, signal?: AbortSignal): Promise<SnapshotInfo | null> {
    try {
      const out = await this.call('DescribeDBSnapshots', { instance, snapshotId }, () =>
        this.client.send(new this.sdk.DescribeDBSnapshotsCommand({ DBSnapshotIdentifier: snapshotId }), { abortSignal: signal }),
      );
      const s = out.DBSnapshots?.[0];
      return s ? toSnapshotInfo(s) : null;
    } catch (err) {
      if (err instanceof RdsError && err.code === 'DBPILOT_RDS_SNAPSHOT_NOT_FOUND') return null;
      throw err;
    }
  }

  /** Every snapshot of the instance (all pages), of one type or all; newest first. */
  async listSnapshots(instance: string, opts: { type?: 'manual' | 'automated'; signal?: AbortSignal } = {}): Promise<SnapshotInfo[]> {
    const out: SnapshotInfo[] = [];
    let marker: string | undefined;
    do {
      const page = await this.call('DescribeDBSnapshots', { instance }, () =>
        this.client.send(
          new this.sdk.DescribeDBSnapshotsCommand({ DBInstanceIdentifier: instance, ...(opts.type ? { SnapshotType: opts.type } : {}), MaxRecords: pageSize, ...(marker ? { Marker: marker } : {}) }),
          { abortSignal: opts.signal },
        ),
      );
      for (const s of page.DBSnapshots ?? []) out.push(toSnapshotInfo(s));
      marker = page.Marker;
    } while (marker);
    return out.sort((a, b) => (b.createdAt?.getTime() ?? Number.MAX_SAFE_INTEGER) - (a.createdAt?.getTime() ?? Number.MAX_SAFE_INTEGER));
  }

  async deleteSnapshot(instance: string, snapshotId: string, signal?: AbortSignal): Promise<SnapshotInfo> {
    const out = await this.call('DeleteDBSnapshot', { instance, snapshotId }, () => this.client.send(new this.sdk.DeleteDBSnapshotCommand({ DBSnapshotIdentifier: snapshotId }), { abortSignal: signal }));
    return toSnapshotInfo(out.DBSnapshot ?? {});
  }

  /** The window a point-in-time restore may use: the oldest automated backup to LatestRestorableTime. */
  async restoreWindow(instance: string, signal?: AbortSignal): Promise<{ window: RestoreWindow | null; info: InstanceInfo }> {
    const info = await this.describeInstance(instance, signal);
    if (!info) throw mapRdsError({ name: 'DBInstanceNotFound', message: `DBInstance ${instance} not found.` }, { action: 'DescribeDBInstances', instance, region: this.region });
    const out = await this.call('DescribeDBInstanceAutomatedBackups', { instance }, () =>
      this.client.send(new this.sdk.DescribeDBInstanceAutomatedBackupsCommand({ DBInstanceIdentifier: instance }), { abortSignal: signal }),
    );
    const earliest = (out.DBInstanceAutomatedBackups ?? [])
      .map((b) => b.RestoreWindow?.EarliestTime)
      .filter((d): d is Date => d instanceof Date)
      .sort((a, b) => a.getTime() - b.getTime())[0];
    if (!earliest || !info.latestRestorableTime || info.backupRetentionDays === 0) return { window: null, info };
    return { window: { earliest, latest: info.latestRestorableTime }, info };
  }

  private shape(s: RestoreShape) {
    return {
      ...(s.instanceClass ? { DBInstanceClass: s.instanceClass } : {}),
      ...(s.subnetGroup ? { DBSubnetGroupName: s.subnetGroup } : {}),
      ...(s.securityGroupIds?.length ? { VpcSecurityGroupIds: s.securityGroupIds } : {}),
      ...(s.parameterGroup ? { DBParameterGroupName: s.parameterGroup } : {}),
      ...(s.multiAZ !== undefined ? { MultiAZ: s.multiAZ } : {}),
    };
  }

  async restoreFromSnapshot(instance: string, i: RestoreFromSnapshotInput, signal?: AbortSignal): Promise<InstanceInfo> {
    const out = await this.call('RestoreDBInstanceFromDBSnapshot', { instance, snapshotId: i.snapshotId, target: i.target }, () =>
      this.client.send(
        new this.sdk.RestoreDBInstanceFromDBSnapshotCommand({
          DBInstanceIdentifier: i.target,
          DBSnapshotIdentifier: i.snapshotId,
          ...this.shape(i),
          Tags: Object.entries(i.tags).map(([Key, Value]) => ({ Key, Value })),
        }),
        { abortSignal: signal },
      ),
    );
    return toInstanceInfo(out.DBInstance ?? {});
  }

  async restoreToTime(i: RestoreToTimeInput, signal?: AbortSignal): Promise<InstanceInfo> {
    const out = await this.call('RestoreDBInstanceToPointInTime', { instance: i.source, target: i.target }, () =>
      this.client.send(
        new this.sdk.RestoreDBInstanceToPointInTimeCommand({
          SourceDBInstanceIdentifier: i.source,
          TargetDBInstanceIdentifier: i.target,
          RestoreTime: i.time,
          ...this.shape(i),
          Tags: Object.entries(i.tags).map(([Key, Value]) => ({ Key, Value })),
        }),
        { abortSignal: signal },
      ),
    );
    return toInstanceInfo(out.DBInstance ?? {});
  }

  async modifyAllocatedStorage(instance: string, toGiB: number, signal?: AbortSignal): Promise<InstanceInfo> {
    const out = await this.call('ModifyDBInstance', { instance }, () =>
      this.client.send(new this.sdk.ModifyDBInstanceCommand({ DBInstanceIdentifier: instance, AllocatedStorage: toGiB, ApplyImmediately: true }), { abortSignal: signal }),
    );
    return toInstanceInfo(out.DBInstance ?? {});
  }

  close(): void {
    this.client.destroy();
  }
}
