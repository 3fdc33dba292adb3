/**
 * The scheduled RDS snapshot and its retention (node-cron, `aws.snapshotSchedule`).
 *
 * - Leader only: the task exists only while this replica holds the Lease (start() on becoming
 *   leader, stop() on losing it), and each run asks `canAct()` again before it writes anything to
 *   AWS — leadership can lapse on the clock without an announced change.
 * - Never two at once: node-cron's noOverlap skips a tick while the previous job runs, runOnce()
 *   refuses to start while one is running in this process (a manual `runOnce` included), and the
 *   snapshot itself joins one dbpilot is already making in another process (RdsBackups.snapshot).
 * - A failure pages DevOps through the remediation outbox (dedup key per instance, so a failure
 *   repeated every day is one incident), resolved by the next success. Retention runs only after a
 *   snapshot succeeded: nothing is deleted on a day no new snapshot exists.
 */
import { createTask, type ScheduledTask } from 'node-cron';
import type { Logger } from '../logger.js';
import { safeMessage } from '../errors.js';
import type { EscalationRequest } from '../remediation/outbox.js';
import type { SnapshotResult } from '../integrations/rds.js';
import { RdsError } from '../integrations/rds.js';
import type { RdsBackups, RetentionResult } from './backups.js';

/** What the job needs of the outbox (Outbox.trigger / resolve). */
export interface Pager {
  trigger(req: EscalationRequest): number;
  resolve(dedupKey: string): boolean;
}

export interface SnapshotJobResult {
  outcome: 'succeeded' | 'failed' | 'skipped';
  why?: string;
  snapshot?: SnapshotResult;
  retention?: RetentionResult;
  error?: { code: string; message: string };
}

export interface SchedulerOptions {
  backups: RdsBackups;
  /** The outbox; null: failures are logged only. */
  pager: Pager | null;
  schedule: string;
  timezone: string;
  logger: Logger;
  /** Whether this process may act now (holds the Lease). */
  canAct: () => boolean;
}

export const SNAPSHOT_TASK_NAME = 'dbpilot-rds-snapshot';

export class SnapshotScheduler {
  private task: ScheduledTask | null = null;
  private running: Promise<SnapshotJobResult> | null = null;
  private abort = new AbortController();
  private closed = false;

  constructor(private readonly o: SchedulerOptions) {}

  /** Dedup keys of the pages: one incident per instance and kind of failure. */
  get snapshotDedupKey(): string {
    return `dbpilot/rds-snapshot/${this.o.backups.instance}`;
  }

  get retentionDedupKey(): string {
    return `dbpilot/rds-retention/${this.o.backups.instance}`;
  }

  /** Whether the cron task is scheduled in this process (it is only while leading). */
  get scheduled(): boolean {
    return this.task !== null;
  }

  /** Whether a job is running now. */
  get busy(): boolean {
    return this.running !== null;
  }

  /** On becoming leader: schedules the task (and settles requests a crash left open). */
  start(): void {
    if (this.task || this.closed) return;
    this.abort = new AbortController();
    const log = this.o.logger;
    this.task = createTask(this.o.schedule, () => this.runOnce('schedule'), {
      name: SNAPSHOT_TASK_NAME,
      noOverlap: true,
      timezone: this.o.timezone,
      // node-cron's own messages (a tick skipped because the last one still runs, a missed tick) go to our log.
      logger: {
        info: (m) => log.debug({ cron: SNAPSHOT_TASK_NAME }, String(m)),
        warn: (m) => log.info({ cron: SNAPSHOT_TASK_NAME }, String(m)),
        error: (m) => log.warn({ cron: SNAPSHOT_TASK_NAME }, String(m)),
        debug: (m) => log.debug({ cron: SNAPSHOT_TASK_NAME }, String(m)),
      },
    });
    void this.task.start();
    log.info({ schedule: this.o.schedule, timezone: this.o.timezone, next: this.task.getNextRun()?.toISOString() ?? null, instance: this.o.backups.instance }, 'RDS snapshot schedule started (this replica leads)');
    void this.o.backups.reconcile(this.abort.signal).catch((err: unknown) => log.warn({ err: safeMessage(err) }, 'could not settle snapshot requests left open by a restart'));
  }

  /**
   * On losing the Lease (or closing): no further tick starts here. A job already running finishes
   * its wait but writes nothing more to AWS (it asks canAct before every write).
   */
  async stop(): Promise<void> {
    const t = this.task;
    this.task = null;
    if (!t) return;
    await t.stop();
    await t.destroy();
    this.o.logger.info('RDS snapshot schedule stopped (this replica does not lead)');
  }

  /** Stops the schedule and the wait of a running job (its snapshot goes on in AWS; the store keeps the request open). */
  async close(): Promise<void> {
    this.closed = true;
    await this.stop();
    this.abort.abort(new Error('dbpilot is shutting down'));
    await this.running?.catch(() => undefined);
  }

  /** One job: snapshot, then retention. Never rejects; never two at once. */
  runOnce(trigger: 'schedule' | 'manual' = 'manual'): Promise<SnapshotJobResult> {
    if (this.running) {
      this.o.logger.info({ trigger }, 'a snapshot job is still running: this one is skipped');
      return Promise.resolve({ outcome: 'skipped', why: 'a snapshot job is still running' });
    }
    const job = this.job(trigger).finally(() => {
      if (this.running === job) this.running = null;
    });
    this.running = job;
    return job;
  }

  private async job(trigger: string): Promise<SnapshotJobResult> {
    const { backups, logger, canAct } = this.o;
    if (!canAct()) {
      logger.info({ trigger }, 'not the leader: the scheduled snapshot is left to the leader');
      return { outcome: 'skipped', why: 'this replica does not lead' };
    }
    const signal = this.abort.signal;
    let snapshot: SnapshotResult;
    try {
      snapshot = await backups.snapshot('scheduled', {
        trigger: 'schedule',
        signal,
        assertCanAct: () => {
          if (!canAct()) throw new RdsError('DBPILOT_NOT_LEADER', 'this replica lost the leader Lease before the snapshot was requested');
        },
      });
    } catch (err) {
      const code = (err as { code?: string }).code ?? 'DBPILOT_RDS_FAILED';
      const message = safeMessage(err);
      if (code === 'DBPILOT_NOT_LEADER' || signal.aborted) {
        logger.info({ why: message }, 'scheduled snapshot not taken here');
        return { outcome: 'skipped', why: message };
      }
      logger.error({ code, err: message, instance: backups.instance }, 'scheduled RDS snapshot failed');
      this.page(this.snapshotDedupKey, 'error', `scheduled RDS snapshot of ${backups.instance} failed: ${message}`, err, {
        seen: `the scheduled snapshot (${this.o.schedule}, ${this.o.timezone}) of ${backups.instance} did not complete`,
        tried: backups.snapshotCommand(),
        verified: message,
      });
      return { outcome: 'failed', error: { code, message } };
    }
    this.o.pager?.resolve(this.snapshotDedupKey);
    let retention: RetentionResult;
    try {
      retention = await backups.retention({ canAct, signal });
    } catch (err) {
      const message = safeMessage(err);
      logger.warn({ err: message }, 'snapshot retention failed');
      this.page(this.retentionDedupKey, 'warning', `RDS snapshot retention of ${backups.instance} failed: ${message}`, err, {
        seen: `dbpilot could not list or delete its snapshots of ${backups.instance} past ${backups.retentionDays} days`,
        tried: 'aws rds describe-db-snapshots / delete-db-snapshot',
        verified: message,
      });
      return { outcome: 'failed', snapshot, error: { code: (err as { code?: string }).code ?? 'DBPILOT_RDS_FAILED', message } };
    }
    if (retention.failed.length > 0) {
      const first = retention.failed[0]!;
      this.page(this.retentionDedupKey, 'warning', `RDS snapshot retention of ${backups.instance}: ${retention.failed.length} snapshot(s) could not be deleted: ${first.error}`, null, {
        seen: `snapshots past ${backups.retentionDays} days could not be deleted`,
        tried: retention.failed.map((f) => `aws rds delete-db-snapshot --db-snapshot-identifier ${f.snapshotId}`),
        verified: retention.failed.map((f) => `${f.snapshotId}: ${f.error}`),
        deleted: retention.deleted,
      });
      return { outcome: 'failed', snapshot, retention, error: { code: first.code, message: first.error } };
    }
    this.o.pager?.resolve(this.retentionDedupKey);
    logger.info({ snapshot: snapshot.snapshotId, deleted: retention.deleted, kept: retention.kept, othersUntouched: retention.othersUntouched }, 'scheduled snapshot done');
    return { outcome: 'succeeded', snapshot, retention };
  }

  private page(dedupKey: string, severity: 'error' | 'warning', summary: string, err: unknown, details: { seen: string; tried: string | string[]; verified: string | string[]; [k: string]: unknown }): void {
    if (!this.o.pager) return;
    const e = err as { code?: string; details?: { awsCode?: string; requestId?: string } } | null;
    try {
      this.o.pager.trigger({
        team: 'devops',
        dedupKey,
        summary: `[dbpilot] ${summary}`,
        severity,
        component: 'rds',
        class: 'RdsSnapshot',
        details: {
          ...details,
          instance: this.o.backups.instance,
          region: this.o.backups.region,
          ...(e?.code ? { code: e.code } : {}),
          ...(e?.details?.awsCode ? { aws_error: e.details.awsCode } : {}),
          ...(e?.details?.requestId ? { aws_request_id: e.details.requestId } : {}),
          restore_guide: 'docs/disaster-recovery/restore.md',
        },
      });
    } catch (pageErr) {
      this.o.logger.error({ err: safeMessage(pageErr) }, 'could not queue the page for a failed snapshot');
    }
  }
}
