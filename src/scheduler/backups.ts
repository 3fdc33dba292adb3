/**
 * dbpilot's RDS backups of the configured instance: taking a snapshot and waiting for it (joined,
 * never duplicated, when one is already being made), recording each request in the store,
 * retention of dbpilot's own snapshots, growing storage with RDS's rules checked first, and the
 * `dbpilot_rds_last_snapshot_timestamp_seconds` gauge. This is what handlers get as
 * `HandlerContext.rds` (the RdsOperations interface of integrations/rds.ts), what the executor uses
 * before a risky step, what the scheduled job runs, and what `dbpilot backup` uses.
 *
 * Why joining: RDS takes one snapshot of an instance at a time (the instance is `backing-up` and a
 * second CreateDBSnapshot fails with InvalidDBInstanceState), and a snapshot already under way holds
 * the data as of a moment before the caller asked — for a risky step just as good as a new one.
 */
import { hostname } from 'node:os';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { Store } from '../store/store.js';
import { safeMessage } from '../errors.js';
import {
  MANAGED_BY_TAG,
  MANAGED_BY_VALUE,
  REASON_TAG,
  REQUESTED_BY_TAG,
  RdsClient,
  RdsError,
  createSnapshotCommand,
  isDbpilotSnapshotName,
  modifyStorageCommand,
  snapshotName,
  snapshotPrefixFor,
  storageGrowthProblem,
  tagValue,
  type InstanceInfo,
  type RdsCheck,
  type RdsOperations,
  type SnapshotInfo,
  type SnapshotRequest,
  type SnapshotResult,
  type StorageChange,
} from '../integrations/rds.js';

export type AwsConfig = NonNullable<Config['aws']>;

/** Retention deletes at most this many snapshots per run: a bug in the age arithmetic cannot empty the account at once. */
export const MAX_DELETES_PER_RUN = 10;

export interface RetentionResult {
  deleted: string[];
  /** dbpilot's snapshots kept (newer than the retention, or the newest). */
  kept: number;
  /** Manual snapshots of the instance that are not dbpilot's: never touched. */
  othersUntouched: number;
  failed: { snapshotId: string; code: string; error: string }[];
  /** Old enough to delete, but left for the next run (MAX_DELETES_PER_RUN) or because this process may no longer act. */
  deferred: number;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason)));
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason instanceof Error ? signal!.reason : new Error(String(signal!.reason)));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/** A promise that rejects when the signal aborts (the promise itself goes on: other callers may wait for it). */
function abortable<T>(p: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return p;
  return Promise.race([p, sleep(2 ** 31 - 1, signal).then(() => p)]);
}

export interface BackupsOptions {
  aws: AwsConfig;
  client: RdsClient;
  /** Where requests are recorded; null for read-only uses. */
  store: Store | null;
  logger: Logger;
  /** Who asks by default: this process as it owns runs (`<pod>/<pid>/<token>`), or `cli:<user>`. */
  owner?: string;
  now?: () => Date;
}

export class RdsBackups implements RdsOperations {
  readonly instance: string;
  readonly prefix: string;
  readonly region: string;
  private readonly now: () => Date;
  private readonly owner: string;
  /** The snapshot this process is taking now (joined by every other request meanwhile). */
  private inflight: { started: Promise<string>; done: Promise<SnapshotResult> } | null = null;
  /** Epoch seconds of dbpilot's newest available snapshot as RDS reported it; 0 when there is none; null before the first successful read. */
  private lastSnapshotSeconds: number | null = null;
  private lastReadAt = 0;
  private reading: Promise<void> | null = null;
  private readFailedLogged = false;
  /** Waits that go on after their caller returned (requestSnapshot); aborted on close. */
  private readonly background = new AbortController();

  constructor(private readonly o: BackupsOptions) {
    this.instance = o.aws.dbInstanceIdentifier.toLowerCase();
    this.prefix = o.aws.snapshotPrefix ?? snapshotPrefixFor(this.instance);
    this.region = o.aws.region;
    this.now = o.now ?? (() => new Date());
    this.owner = o.owner ?? hostname();
  }

  get retentionDays(): number {
    return this.o.aws.snapshotRetentionDays;
  }

  get client(): RdsClient {
    return this.o.client;
  }

  private get log(): Logger {
    return this.o.logger;
  }

  snapshotCommand(): string {
    return createSnapshotCommand(this.instance, `${this.prefix}-manual-$(date -u +%Y%m%d%H%M)`, this.region);
  }

  growStorageCommand(toGiB: number): string {
    return modifyStorageCommand(this.instance, toGiB, this.region);
  }

  async describeInstance(signal?: AbortSignal): Promise<InstanceInfo> {
    const i = await this.o.client.describeInstance(this.instance, signal);
    if (!i) throw new RdsError('DBPILOT_RDS_INSTANCE_NOT_FOUND', `RDS DescribeDBInstances: there is no DB instance ${this.instance} in ${this.region} (check aws.dbInstanceIdentifier and aws.region)`);
    return i;
  }

  // ---- snapshots ----

  async snapshot(reason: string, opts: SnapshotRequest = {}): Promise<SnapshotResult> {
    if (this.inflight) return this.join(this.inflight, reason, opts);
    let startedResolve!: (id: string) => void;
    let startedReject!: (err: unknown) => void;
    const started = new Promise<string>((res, rej) => ((startedResolve = res), (startedReject = rej)));
    started.catch(() => undefined);
    const done = this.take(reason, opts, (id) => startedResolve(id));
    const flight = { started, done };
    this.inflight = flight;
    try {
      return await done;
    } catch (err) {
      startedReject(err);
      throw err;
    } finally {
      if (this.inflight === flight) this.inflight = null;
    }
  }

  /** A request while this process is already taking a snapshot: recorded as joining it, and waits for the same outcome. */
  private async join(flight: { started: Promise<string>; done: Promise<SnapshotResult> }, reason: string, opts: SnapshotRequest): Promise<SnapshotResult> {
    const t0 = Date.now();
    const id = await abortable(flight.started, opts.signal);
    this.log.info({ snapshot: id, reason }, 'a snapshot of the instance is already being taken: waiting for it instead of taking another');
    const row = this.record(id, reason, opts, true);
    opts.onStarted?.(id);
    try {
      const r = await abortable(flight.done, opts.signal);
      if (row !== null) this.o.store!.snapshotFinished(row, { status: 'available', snapshotTime: r.snapshotTime, sizeGiB: r.sizeGiB });
      return { ...r, reason, joined: true, waitedMs: Date.now() - t0 };
    } catch (err) {
      this.recordFailure(row, err);
      throw err;
    }
  }

  private record(snapshotId: string, reason: string, opts: SnapshotRequest, joined: boolean): number | null {
    if (!this.o.store) return null;
    return this.o.store.snapshotRequested({
      snapshotId,
      instance: this.instance,
      trigger: opts.trigger ?? 'handler',
      reason,
      runId: opts.runId ?? null,
      requestedBy: opts.requestedBy ?? this.owner,
      joined,
    });
  }

  private recordFailure(row: number | null, err: unknown): void {
    if (row === null) return;
    // Aborted waits are not failures of the snapshot: the row stays `creating` and is reconciled later.
    if ((err as { name?: string })?.name === 'AbortError' || (err as { code?: string })?.code === 'DBPILOT_STOP_ACTING') return;
    this.o.store!.snapshotFinished(row, { status: 'failed', errorCode: (err as { code?: string })?.code ?? 'DBPILOT_RDS_FAILED', error: safeMessage(err) });
  }

  private async take(reason: string, opts: SnapshotRequest, started: (id: string) => void): Promise<SnapshotResult> {
    const t0 = Date.now();
    // Another process (the service while an on-call runs the CLI, or the previous leader) may be making one now.
    const manual = await this.o.client.listSnapshots(this.instance, { type: 'manual', ...(opts.signal ? { signal: opts.signal } : {}) });
    const underWay = manual.find((s) => s.dbpilot && s.status === 'creating' && s.instance.toLowerCase() === this.instance);
    if (underWay) {
      this.log.info({ snapshot: underWay.id, reason }, 'dbpilot is already taking a snapshot of the instance (another process): waiting for it instead of taking another');
      started(underWay.id);
      return this.waitRecorded(underWay.id, reason, opts, true, t0);
    }
    opts.assertCanAct?.();
    const id = snapshotName(this.prefix, this.now());
    const row = this.record(id, reason, opts, false);
    let joined = false;
    try {
      await this.o.client.createSnapshot(
        this.instance,
        id,
        { [MANAGED_BY_TAG]: MANAGED_BY_VALUE, [REASON_TAG]: tagValue(reason), [REQUESTED_BY_TAG]: tagValue(opts.requestedBy ?? this.owner) },
        opts.signal,
      );
      this.log.info({ snapshot: id, instance: this.instance, reason }, 'RDS snapshot requested');
    } catch (err) {
      // Names are per minute: a snapshot taken this minute (the runbook's own command, or a request just
      // before) holds the data as of this minute too. Use it when it is this instance's and not broken.
      const existing = err instanceof RdsError && err.code === 'DBPILOT_RDS_SNAPSHOT_EXISTS' ? await this.o.client.describeSnapshot(this.instance, id, opts.signal).catch(() => null) : null;
      if (!existing || existing.instance.toLowerCase() !== this.instance || !['creating', 'available'].includes(existing.status)) {
        this.recordFailure(row, err);
        this.log.warn({ snapshot: id, code: (err as RdsError).code, err: safeMessage(err) }, 'RDS snapshot could not be requested');
        throw err;
      }
      joined = true;
      this.log.info({ snapshot: id, status: existing.status }, 'a snapshot with this minute’s name already exists for the instance: using it');
    }
    started(id);
    opts.onStarted?.(id);
    return this.waitFor(id, reason, opts, row, joined, t0);
  }

  /**
   * Asks for a snapshot exactly as snapshot() does (joining one dbpilot is already making) but returns
   * as soon as RDS has accepted it, without waiting for it to become available: for a page that must
   * not wait minutes (data corruption). The wait goes on in this process, recorded in the store as
   * snapshot() records it (a restart leaves the row for reconcile), and later requests join it.
   */
  async requestSnapshot(reason: string, opts: SnapshotRequest = {}): Promise<{ snapshotId: string }> {
    let started!: (id: string) => void;
    const startedP = new Promise<string>((r) => (started = r));
    const done = this.snapshot(reason, {
      ...opts,
      signal: this.background.signal,
      onStarted: (id) => {
        started(id);
        opts.onStarted?.(id);
      },
    });
    done.catch((err: unknown) => {
      if (!this.background.signal.aborted) this.log.warn({ reason, err: safeMessage(err) }, 'an RDS snapshot requested without waiting did not become available');
    });
    const snapshotId = await abortable(Promise.race([startedP, done.then((r) => r.snapshotId)]), opts.signal);
    return { snapshotId };
  }

  /** A snapshot of the instance as RDS describes it now, or null when RDS has none of that name. */
  async describeSnapshot(snapshotId: string, signal?: AbortSignal): Promise<SnapshotInfo | null> {
    const s = await this.o.client.describeSnapshot(this.instance, snapshotId, signal);
    return s && s.instance.toLowerCase() === this.instance ? s : null;
  }

  async waitForSnapshot(snapshotId: string, reason: string, opts: SnapshotRequest = {}): Promise<SnapshotResult> {
    return this.waitRecorded(snapshotId, reason, opts, true, Date.now());
  }

  private async waitRecorded(snapshotId: string, reason: string, opts: SnapshotRequest, joined: boolean, t0: number): Promise<SnapshotResult> {
    const row = this.record(snapshotId, reason, opts, joined);
    opts.onStarted?.(snapshotId);
    return this.waitFor(snapshotId, reason, opts, row, joined, t0);
  }

  /** Polls until the snapshot is available; a status other than creating, a vanished snapshot or the timeout is a failure. */
  private async waitFor(snapshotId: string, reason: string, opts: SnapshotRequest, row: number | null, joined: boolean, t0: number): Promise<SnapshotResult> {
    const timeoutMs = this.o.aws.snapshotTimeoutMinutes * 60_000;
    const pollMs = this.o.aws.snapshotPollSeconds * 1000;
    const deadline = t0 + timeoutMs;
    try {
      for (;;) {
        const s = await this.o.client.describeSnapshot(this.instance, snapshotId, opts.signal);
        if (!s) throw new RdsError('DBPILOT_RDS_SNAPSHOT_VANISHED', `RDS snapshot ${snapshotId} disappeared while it was being made (deleted by someone?); no snapshot was taken`);
        if (s.status === 'available') {
          const result: SnapshotResult = {
            snapshotId,
            instance: this.instance,
            status: s.status,
            snapshotTime: s.createdAt?.toISOString() ?? null,
            sizeGiB: s.allocatedGiB,
            reason,
            joined,
            waitedMs: Date.now() - t0,
          };
          if (row !== null) this.o.store!.snapshotFinished(row, { status: 'available', snapshotTime: result.snapshotTime, sizeGiB: result.sizeGiB, joined });
          if (s.createdAt) this.noteSnapshot(s.createdAt);
          this.log.info({ snapshot: snapshotId, ms: result.waitedMs, joined }, 'RDS snapshot available');
          return result;
        }
        if (s.status !== 'creating') {
          throw new RdsError('DBPILOT_RDS_SNAPSHOT_FAILED', `RDS snapshot ${snapshotId} ended ${s.status} instead of available; no usable snapshot was taken (see the RDS events of ${this.instance})`);
        }
        const left = deadline - Date.now();
        if (left <= 0) {
          throw new RdsError(
            'DBPILOT_RDS_SNAPSHOT_TIMEOUT',
            `RDS snapshot ${snapshotId} is still creating (${s.percentProgress ?? 0} %) after ${this.o.aws.snapshotTimeoutMinutes} min (aws.snapshotTimeoutMinutes); it may still complete: \`aws rds wait db-snapshot-available --db-snapshot-identifier ${snapshotId}\``,
          );
        }
        await sleep(Math.min(pollMs, left), opts.signal);
      }
    } catch (err) {
      this.recordFailure(row, err);
      throw err;
    }
  }

  /**
   * Requests a crash left `creating`: what RDS says about them now. Run when this process starts
   * acting, so the store does not keep a request open forever.
   */
  async reconcile(signal?: AbortSignal): Promise<void> {
    const store = this.o.store;
    if (!store) return;
    for (const row of store.pendingSnapshots(this.instance)) {
      if (this.inflight) return;
      const s = await this.o.client.describeSnapshot(this.instance, row.snapshotId, signal);
      if (s?.status === 'available') store.snapshotFinished(row.id, { status: 'available', snapshotTime: s.createdAt?.toISOString() ?? null, sizeGiB: s.allocatedGiB });
      else if (!s || s.status !== 'creating') store.snapshotFinished(row.id, { status: 'failed', errorCode: 'DBPILOT_RDS_SNAPSHOT_FAILED', error: s ? `ended ${s.status}` : 'not found in RDS after a restart' });
    }
  }

  // ---- retention ----

  /**
   * Deletes dbpilot's own manual snapshots of the instance older than aws.snapshotRetentionDays: a
   * snapshot is dbpilot's when it carries the managed-by tag AND has dbpilot's name
   * (`<prefix>-manual-YYYYMMDDHHMM`) AND is of this instance. Never anyone else's, never one that is
   * not available, never the newest of dbpilot's. `canAct` is asked before every deletion.
   */
  async retention(opts: { canAct: () => boolean; signal?: AbortSignal }): Promise<RetentionResult> {
    const cutoff = this.now().getTime() - this.o.aws.snapshotRetentionDays * 86_400_000;
    const manual = await this.o.client.listSnapshots(this.instance, { type: 'manual', ...(opts.signal ? { signal: opts.signal } : {}) });
    const mine = manual.filter((s) => this.isMine(s));
    const available = mine.filter((s): s is SnapshotInfo & { createdAt: Date } => s.status === 'available' && s.createdAt !== null).sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime());
    const newest = available[0];
    const old = available.filter((s) => s !== newest && s.createdAt.getTime() < cutoff).reverse();
    const result: RetentionResult = { deleted: [], kept: mine.length, othersUntouched: manual.length - mine.length, failed: [], deferred: 0 };
    for (const s of old) {
      if (result.deleted.length + result.failed.length >= MAX_DELETES_PER_RUN || !opts.canAct()) {
        result.deferred += 1;
        continue;
      }
      try {
        await this.o.client.deleteSnapshot(this.instance, s.id, opts.signal);
        this.o.store?.snapshotDeleted(s.id);
        result.deleted.push(s.id);
        result.kept -= 1;
        this.log.info({ snapshot: s.id, created: s.createdAt.toISOString(), retentionDays: this.o.aws.snapshotRetentionDays }, 'deleted a snapshot past its retention');
      } catch (err) {
        result.failed.push({ snapshotId: s.id, code: (err as RdsError).code ?? 'DBPILOT_RDS_FAILED', error: safeMessage(err) });
        this.log.warn({ snapshot: s.id, err: safeMessage(err) }, 'could not delete a snapshot past its retention');
      }
    }
    if (result.deferred > 0) this.log.warn({ deferred: result.deferred }, 'snapshots past their retention left for the next run');
    return result;
  }

  // ---- storage ----

  async checkStorageGrowth(toGiB: number, signal?: AbortSignal): Promise<RdsCheck> {
    const i = await this.describeInstance(signal);
    const problem = storageGrowthProblem(i, toGiB);
    return problem
      ? { ok: false, detail: problem, data: { allocatedGiB: i.allocatedGiB, status: i.status } }
      : { ok: true, detail: `${i.id} may grow from ${i.allocatedGiB} GiB to ${toGiB} GiB (status ${i.status})`, data: { allocatedGiB: i.allocatedGiB, status: i.status } };
  }

  async growStorage(toGiB: number, opts: { signal?: AbortSignal; assertCanAct?: () => void } = {}): Promise<StorageChange> {
    const i = await this.describeInstance(opts.signal);
    const problem = storageGrowthProblem(i, toGiB);
    if (problem) throw new RdsError('DBPILOT_RDS_STORAGE_REFUSED', `not growing ${this.instance} to ${toGiB} GiB: ${problem}`);
    opts.assertCanAct?.();
    const after = await this.o.client.modifyAllocatedStorage(this.instance, toGiB, opts.signal);
    this.log.warn({ instance: this.instance, fromGiB: i.allocatedGiB, toGiB, status: after.status }, 'RDS storage growth requested');
    return { instance: this.instance, fromGiB: i.allocatedGiB, toGiB, status: after.status };
  }

  async checkStorage(toGiB: number, opts: { requireApplied?: boolean; signal?: AbortSignal } = {}): Promise<RdsCheck> {
    const i = await this.describeInstance(opts.signal);
    const data = { allocatedGiB: i.allocatedGiB, pendingAllocatedGiB: i.pendingAllocatedGiB, status: i.status };
    if (i.allocatedGiB >= toGiB) return { ok: true, detail: `${this.instance} has ${i.allocatedGiB} GiB allocated (status ${i.status})`, data };
    if (!opts.requireApplied && (i.pendingAllocatedGiB ?? 0) >= toGiB) {
      return { ok: true, detail: `RDS accepted the change of ${this.instance} to ${i.pendingAllocatedGiB} GiB; it is being applied (status ${i.status}, ${i.allocatedGiB} GiB now)`, data };
    }
    return { ok: false, detail: `${this.instance} has ${i.allocatedGiB} GiB${i.pendingAllocatedGiB ? `, ${i.pendingAllocatedGiB} GiB pending` : ''}, not ${toGiB} GiB (status ${i.status})`, data };
  }

  // ---- the gauge ----

  private noteSnapshot(at: Date): void {
    const s = Math.floor(at.getTime() / 1000);
    if (this.lastSnapshotSeconds === null || s > this.lastSnapshotSeconds) this.lastSnapshotSeconds = s;
  }

  /** Whether a snapshot is one of dbpilot's own of this instance (the managed-by tag, dbpilot's name, this instance). */
  private isMine(s: SnapshotInfo): boolean {
    return s.type === 'manual' && s.dbpilot && isDbpilotSnapshotName(this.prefix, s.id) && s.instance.toLowerCase() === this.instance;
  }

  /**
   * Reads the newest available snapshot dbpilot made of the instance from RDS (single flight). Only
   * dbpilot's own: RdsSnapshotStale is about the schedule, and a snapshot someone took by hand must
   * not hide a schedule that stopped working.
   */
  refreshLastSnapshot(): Promise<void> {
    this.reading ??= (async () => {
      try {
        const manual = await this.o.client.listSnapshots(this.instance, { type: 'manual' });
        const newest = manual.filter((s) => this.isMine(s) && s.status === 'available' && s.createdAt).sort((a, b) => b.createdAt!.getTime() - a.createdAt!.getTime())[0];
        this.lastSnapshotSeconds = newest ? Math.floor(newest.createdAt!.getTime() / 1000) : 0;
        this.lastReadAt = Date.now();
        if (this.readFailedLogged) this.log.info('RDS snapshots can be read again');
        this.readFailedLogged = false;
      } catch (err) {
        // Retried at the next scrape after metricRefreshSeconds; logged once per failure streak.
        this.lastReadAt = Date.now();
        if (!this.readFailedLogged) this.log.warn({ err: safeMessage(err) }, 'could not read the RDS snapshots for dbpilot_rds_last_snapshot_timestamp_seconds');
        this.readFailedLogged = true;
      } finally {
        this.reading = null;
      }
    })();
    return this.reading;
  }

  /**
   * Registers `dbpilot_rds_last_snapshot_timestamp_seconds`. A scrape never waits for RDS beyond
   * `firstReadBudgetMs` (and only before the first answer): the value is served from the last read,
   * re-read in the background every aws.metricRefreshSeconds — a 1 s scrape must not be a 1 s RDS API call.
   */
  registerMetric(metrics: Metrics, firstReadBudgetMs = 400): void {
    const self = this;
    metrics.gauge(
      'dbpilot_rds_last_snapshot_timestamp_seconds',
      `Creation time (Unix seconds) of the newest available RDS snapshot dbpilot made of ${this.instance} (tagged ${MANAGED_BY_TAG}=${MANAGED_BY_VALUE}); 0 when there is none or RDS cannot be read. Read from RDS every aws.metricRefreshSeconds (cached in between).`,
      [],
      async function () {
        if (Date.now() - self.lastReadAt >= self.o.aws.metricRefreshSeconds * 1000) {
          const read = self.refreshLastSnapshot();
          if (self.lastSnapshotSeconds === null) await Promise.race([read, sleep(firstReadBudgetMs)]);
        }
        // Before RDS has answered (or while it cannot be read): what this pod's store saw, else 0 — so a
        // dbpilot that can never read RDS makes RdsSnapshotStale fire instead of hiding it.
        if (self.lastSnapshotSeconds !== null) return this.set(self.lastSnapshotSeconds);
        const local = self.o.store?.lastAvailableSnapshot(self.instance)?.snapshotTime;
        this.set(local ? Math.floor(Date.parse(local) / 1000) : 0);
      },
    );
  }

  close(): void {
    const stop = new Error('dbpilot is closing: the snapshot goes on in RDS; its record is settled at the next start');
    stop.name = 'AbortError';
    this.background.abort(stop);
    this.o.client.close();
  }
}

/** Builds the RDS client and the backups of the configured instance. */
export async function createBackups(
  aws: AwsConfig,
  o: { store: Store | null; logger: Logger; owner?: string; credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string } },
): Promise<RdsBackups> {
  const client = await RdsClient.create({
    region: aws.region,
    endpoint: aws.endpoint,
    maxAttempts: aws.maxAttempts,
    requestTimeoutMs: aws.requestTimeoutMs,
    ...(o.credentials ? { credentials: o.credentials } : {}),
  });
  return new RdsBackups({ aws, client, store: o.store, logger: o.logger, ...(o.owner ? { owner: o.owner } : {}) });
}
