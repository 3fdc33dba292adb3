/**
 * Admitting alerts: one alert occurrence is one run (dedupe on fingerprint + startsAt), webhooks that
 * arrive together are recorded in one transaction (group commit) with each alert in a savepoint of its
 * own, then the mode decides: off (recorded, paged in its group), dry-run (the plan, paged), approve
 * (the plan, waiting), auto (executed). Cooldown and attempt limits are checked before planning.
 */
import type { Counter } from 'prom-client';
import { modeFor, HANDLER_NAMES, type Mode } from '../../config.js';
import { UnsafeToActError, safeMessage } from '../../errors.js';
import { isStoreError, type RunRow } from '../../store/store.js';
import type { Alert, WebhookPayload } from '../alertmanager.js';
import type { AlertInfo, Handler, Plan } from '../handler.js';
import type { EngineCore } from './core.js';
import type { Executor } from './executor.js';
import type { Outcomes } from './outcomes.js';

function toInfo(a: Alert, groupKey: string): AlertInfo {
  return { alertname: a.labels.alertname!, labels: a.labels, annotations: a.annotations, fingerprint: a.fingerprint, startsAt: a.startsAt, ...(groupKey ? { groupKey } : {}) };
}

/** A handler's name as a metric label, bounded: a runbook handler's name, else `unknown` (the label is whatever the rule wrote). */
function handlerLabel(name: string): string {
  return (HANDLER_NAMES as readonly string[]).includes(name) ? name : 'unknown';
}

export class Admission {
  /** Webhooks waiting for the next group commit. */
  private readonly pending: { payload: WebhookPayload; resolve: () => void; reject: (err: unknown) => void }[] = [];
  private readonly alertsReceived: Counter<'status'>;
  private readonly truncated: Counter;

  constructor(
    private readonly core: EngineCore,
    private readonly outcomes: Outcomes,
    private readonly executor: Executor,
  ) {
    this.alertsReceived = core.o.metrics.counter('dbpilot_webhook_alerts_total', 'Alerts received from Alertmanager, by status.', ['status']);
    this.truncated = core.o.metrics.counter('dbpilot_webhook_truncated_alerts_total', 'Alerts Alertmanager left out of a webhook because of max_alerts (truncatedAlerts).');
  }

  /**
   * Hands a validated webhook to the engine; resolves once its alerts are recorded. Each alert is
   * admitted — its run row written, which is also the dedupe — and its work started; the work itself
   * runs after the HTTP answer. Webhooks arriving together are admitted in one transaction (one
   * fsync for all of them: group commit), and each is answered only after that commit. A store
   * failure rejects, so the webhook answers 500 and Alertmanager retries: an alert is never
   * acknowledged without being recorded.
   */
  receive(payload: WebhookPayload): Promise<void> {
    if (payload.truncatedAlerts > 0) {
      this.truncated.inc(payload.truncatedAlerts);
      this.core.logger.warn({ truncatedAlerts: payload.truncatedAlerts, groupKey: payload.groupKey }, 'Alertmanager truncated alerts from this notification (max_alerts)');
    }
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ payload, resolve, reject });
      if (this.pending.length === 1) this.core.track(new Promise<void>((done) => setImmediate(() => done(this.admitPending()))));
    });
  }

  private admitPending(): void {
    const batch = this.pending.splice(0);
    const work: (() => Promise<unknown>)[] = [];
    try {
      this.core.store.transaction(() => {
        this.outcomes.grouped = [];
        for (const { payload } of batch) {
          for (const alert of payload.alerts) {
            const info = toInfo(alert, payload.groupKey);
            work.push(alert.status === 'firing' ? this.admitOne(info) : () => this.onResolved(info));
          }
        }
        this.outcomes.pageGroups(this.outcomes.grouped);
      });
    } catch (err) {
      for (const b of batch) b.reject(err);
      return;
    } finally {
      this.outcomes.grouped = null;
    }
    for (const { payload } of batch) for (const alert of payload.alerts) this.alertsReceived.inc({ status: alert.status });
    for (const b of batch) b.resolve();
    for (const w of work) this.core.track<unknown>(w());
  }

  /**
   * Admits one alert inside a savepoint of its own. An alert whose admission throws (a handler that
   * cannot name its target, a label naming no configured server) costs only itself: its savepoint is
   * rolled back, it is recorded as refused and escalated with the reason, and the other alerts of the
   * batch are admitted. Only a failure of the store itself fails the batch (the webhook answers 500
   * and Alertmanager retries: nothing is acknowledged unrecorded).
   */
  admitOne(a: AlertInfo, opts: { modeOverride?: Mode } = {}): () => Promise<unknown> {
    const grouped = this.outcomes.grouped;
    const mark = grouped?.length ?? 0;
    try {
      return this.core.store.transaction(() => this.admitFiring(a, opts));
    } catch (err) {
      if (grouped) grouped.length = mark; // what the rolled-back savepoint recorded is gone
      if (isStoreError(err)) throw err;
      return this.refuse(a, err);
    }
  }

  /** Records an alert dbpilot will not act on because admitting it failed, and pages its team with why. */
  private refuse(a: AlertInfo, err: unknown): () => Promise<RunRow | null> {
    let handler: Handler | null = null;
    let requested = '';
    try {
      ({ handler, requested } = this.core.handlerFor(a));
    } catch {
      // the lookup itself is what failed: record the alert under its label
    }
    const name = handler?.name ?? requested;
    const reason = `refused: ${safeMessage(err)}`;
    const run = this.core.store.createRun({
      handler: name || '-',
      alertname: a.alertname,
      fingerprint: a.fingerprint,
      startsAt: a.startsAt,
      target: '-',
      mode: handler ? modeFor(this.core.o.config, handler.name) : 'off',
      status: 'escalated',
      reason,
      labels: a.labels,
      owner: this.core.o.instance,
    });
    if (!run) return this.dedupe(handlerLabel(name));
    this.core.logger.warn({ run: run.id, alertname: a.alertname, handler: name || undefined, reason }, 'alert refused');
    this.outcomes.escalateOnly(run, a, handler, reason, 'nothing: the alert was refused');
    this.core.count(handlerLabel(name), 'escalated');
    return async () => this.core.store.getRun(run.id);
  }

  /** The mode a handler runs in: approve for handlers that are approval-only, whatever the configuration says. */
  modeOf(handler: Handler, override?: Mode): Mode {
    const mode = override ?? modeFor(this.core.o.config, handler.name);
    return handler.approvalOnly && mode === 'auto' ? 'approve' : mode;
  }

  /** The synchronous part of a firing alert: decide, record (dedupe), and return the rest of the work. */
  private admitFiring(a: AlertInfo, opts: { modeOverride?: Mode } = {}): () => Promise<RunRow | null> {
    const { store, o } = this.core;
    const { handler, requested } = this.core.handlerFor(a);
    if (!handler) {
      // remediation="none" alerts are paged by Alertmanager itself; anything else needs a human.
      if (requested === 'none') return async () => null;
      const run = store.createRun({
        handler: requested || '-',
        alertname: a.alertname,
        fingerprint: a.fingerprint,
        startsAt: a.startsAt,
        target: '-',
        mode: 'off',
        status: 'escalated',
        reason: requested ? `no handler named ${requested} is available` : 'the alert names no remediation',
        labels: a.labels,
        owner: o.instance,
      });
      if (!run) return this.dedupe(handlerLabel(requested));
      this.outcomes.escalateOnly(run, a, null, run.reason ?? '', 'nothing: no handler for this alert');
      this.core.count(handlerLabel(requested), 'escalated');
      return async () => store.getRun(run.id);
    }

    const mode = this.modeOf(handler, opts.modeOverride);
    const target = handler.target(a, o.ctx);
    if (mode === 'off') {
      const run = store.createRun({
        handler: handler.name,
        alertname: a.alertname,
        fingerprint: a.fingerprint,
        startsAt: a.startsAt,
        target,
        mode,
        status: 'skipped',
        reason: `handler ${handler.name} is off`,
        labels: a.labels,
        owner: o.instance,
      });
      if (!run) return this.dedupe(handler.name);
      this.outcomes.escalateOnly(run, a, handler, run.reason!, `nothing: mode is off for ${handler.name}`);
      this.core.count(handler.name, 'skipped');
      return async () => store.getRun(run.id);
    }
    // The unique index makes this the dedupe: a repeat of the same occurrence inserts nothing.
    const run = this.createPlanningRun(handler, a, target, mode, 'alertmanager');
    if (!run) return this.dedupe(handler.name);
    o.logger.info({ run: run.id, handler: handler.name, alertname: a.alertname, target, mode }, 'remediation run created');
    return () => this.continueFiring(run, handler, a, mode);
  }

  private async continueFiring(run: RunRow, handler: Handler, a: AlertInfo, mode: Mode): Promise<RunRow | null> {
    // Cooldown and the attempt limit are checked once the plan shows there is something to do: a late
    // repeat of an alert whose problem is gone (the failover already done) finds nothing and pages nobody.
    return this.planAndAct(run, handler, a, mode, mode === 'auto' || mode === 'approve');
  }

  createPlanningRun(handler: Handler, a: AlertInfo, target: string, mode: Mode | 'manual', origin: 'alertmanager' | 'cli' | 'intent'): RunRow | null {
    return this.core.store.createRun({
      handler: handler.name,
      alertname: a.alertname,
      fingerprint: a.fingerprint,
      startsAt: a.startsAt,
      target,
      mode,
      status: 'planning',
      labels: a.labels,
      origin,
      owner: this.core.o.instance,
    });
  }

  private dedupe(handler: string): () => Promise<null> {
    this.core.count(handler, 'deduplicated');
    return async () => null;
  }

  /** Cooldown and attempt limit for a handler on one target. Returns why it must not act, or null. */
  policyBlock(handler: Handler, target: string): string | null {
    const h = this.core.policy(handler);
    const now = Date.now();
    const windowRuns = this.core.store.actedRunsOnTarget(handler.name, target, new Date(now - h.attemptWindowSeconds * 1000).toISOString());
    if (windowRuns.length >= h.maxAttempts) {
      return `attempt limit: ${windowRuns.length} runs on ${target} in the last ${h.attemptWindowSeconds} s (max ${h.maxAttempts}); the problem keeps coming back`;
    }
    const last = windowRuns[0];
    if (last) {
      const since = (now - Date.parse(last.finishedAt ?? last.createdAt)) / 1000;
      if (last.status === 'running') return `run ${last.id} is still acting on ${target}`;
      if (since < h.cooldownSeconds) return `cooldown: run ${last.id} acted on ${target} ${Math.round(since)} s ago (cooldown ${h.cooldownSeconds} s); the problem came back`;
    }
    return null;
  }

  async planAndAct(run: RunRow, handler: Handler, a: AlertInfo, mode: Mode | 'manual', policy = false): Promise<RunRow | null> {
    const { store, o } = this.core;
    if (policy) {
      // A run still acting on the target: planning now would read a world that run is changing, and its
      // probes would load a server being remediated. Blocked before the plan, whatever the cooldown.
      const acting = store.runActingOn(run.target, run.id);
      if (acting) {
        const blocked = `run ${acting.id} is still acting on ${run.target}`;
        return this.outcomes.finish(run, handler, a, 'skipped', blocked, null, { seen: a.annotations.summary ?? a.alertname, tried: `nothing: ${blocked}`, verified: 'nothing' });
      }
    }
    let plan: Plan;
    try {
      plan = await handler.plan(a, o.ctx);
    } catch (err) {
      const unsafe = err instanceof UnsafeToActError;
      return this.outcomes.finish(run, handler, a, unsafe ? 'escalated' : 'failed', `${unsafe ? 'unsafe to act' : 'planning failed'}: ${safeMessage(err)}`, null, {
        seen: a.annotations.summary ?? a.alertname,
        tried: unsafe ? 'nothing: the runbook preconditions are not met' : 'planning the remediation',
        verified: safeMessage(err),
      });
    }
    const recorded = { summary: plan.summary, data: plan.data, escalateAfter: plan.escalateAfter ?? null, notifyOnSuccess: plan.notifyOnSuccess ?? null };
    if (!store.setRunStatus(run.id, 'planning', { plan: recorded, from: ['planning'] })) {
      return store.getRun(run.id); // cancelled while planning: the alert resolved
    }
    if (plan.nothingToDo) {
      // A dry-run that found nothing to do is still a dry-run: it did not act, so it did not succeed at acting.
      if (mode === 'dry-run') return this.outcomes.finish(run, handler, a, 'dry_run', `dry-run: nothing to do: ${plan.summary}`, plan.data, null);
      return this.outcomes.finish(run, handler, a, 'succeeded', `nothing to do: ${plan.summary}`, plan.data, null);
    }
    if (plan.diagnoseOnly) {
      // Nothing to act on, so nothing to approve, cool down or dry-run: what the handler saw is the page.
      if (mode === 'dry-run' && run.origin === 'cli') return this.outcomes.finish(run, handler, a, 'dry_run', `dry-run: ${plan.summary}`, plan.data, null);
      return this.outcomes.finish(run, handler, a, 'escalated', `diagnosed: ${plan.summary}`, plan.data, {
        seen: plan.summary,
        tried: `nothing: ${handler.name} only diagnoses; the runbook has no step dbpilot may take for it`,
        verified: 'nothing was changed',
      });
    }
    if (policy) {
      const blocked = this.policyBlock(handler, run.target);
      if (blocked) return this.outcomes.finish(run, handler, a, 'skipped', blocked, plan.data, { seen: plan.summary, tried: `nothing: ${blocked}`, verified: 'nothing' });
    }
    const steps = handler.steps(plan.data, o.ctx);
    store.putSteps(run.id, steps.map((s) => ({ name: s.name, command: s.command })));
    const planDetails = { seen: plan.summary, tried: 'nothing yet', verified: 'nothing yet', plan: steps.map((s) => s.command) };
    if (mode === 'dry-run') {
      // A human's `dbpilot remediate` without --yes is already in front of the plan: nobody to page.
      const page = run.origin === 'cli' ? null : { ...planDetails, tried: 'nothing: dry-run mode; these are the runbook commands it would run' };
      return this.outcomes.finish(run, handler, a, 'dry_run', `dry-run: ${plan.summary}`, plan.data, page);
    }
    if (mode === 'approve') {
      // The approver decides on what the handler saw: its diagnostics go with the request. Read before the
      // run waits, so nothing can approve or cancel it between the status and its page.
      const diagnostics = await this.outcomes.diagnosticsFor(handler, plan.data, a);
      if (!store.setRunStatus(run.id, 'awaiting_approval', { reason: `waiting for approval: ${plan.summary}`, from: ['planning'] })) {
        return store.getRun(run.id); // cancelled while planning: the alert resolved
      }
      this.outcomes.escalate(
        run,
        a,
        handler,
        { ...planDetails, tried: `nothing: approve mode; approve with \`dbpilot approve ${run.id}\` or POST /api/remediations/${run.id}/approve`, ...(diagnostics ? { diagnostics } : {}) },
        `waiting for approval: ${plan.summary}`,
        'awaiting_approval',
      );
      this.core.count(handler.name, 'awaiting_approval');
      return store.getRun(run.id);
    }
    return this.executor.execute(store.getRun(run.id)!, handler, a);
  }

  /** A resolved alert cancels what still waits for it and resolves its page. A running run is left to finish and verify. */
  async onResolved(a: AlertInfo): Promise<void> {
    const { store, o } = this.core;
    store.markAlertResolved(a.fingerprint);
    for (const run of store.openRunsFor(a.fingerprint)) {
      // Runs still planning are cancelled too, except in auto mode, where acting on what the plan found is still right.
      if (run.status === 'awaiting_approval' || (run.status === 'planning' && run.mode !== 'auto')) {
        const reason = run.status === 'planning' ? 'the alert resolved while the run was being planned' : 'the alert resolved before the run was approved';
        if (store.setRunStatus(run.id, 'cancelled', { reason, from: [run.status] })) {
          this.core.count(run.handler, 'cancelled');
          o.logger.info({ run: run.id }, 'run cancelled: alert resolved');
        }
      }
    }
    let handler: Handler | null = null;
    try {
      handler = this.core.handlerFor(a).handler;
    } catch {
      // no handler to ask: its team's page is the only one
    }
    this.outcomes.resolvePages(a, handler);
    // A grouped page resolves with the last of its alerts.
    for (const key of store.resolvePageMember(a.fingerprint, a.startsAt)) o.outbox.resolve(key);
  }
}
