/**
 * The policy around every remediation: one alert occurrence is one run (dedupe on fingerprint +
 * startsAt), one run per target at a time (store-backed lock), cooldown and attempt limits, the
 * mode (off / dry-run / approve / auto), leader-only execution, a check after every step,
 * escalation when a check fails or dbpilot must not act, and an audit row before and after each
 * step. Handlers only say what to do; everything here decides whether and how.
 */
import type { Counter } from 'prom-client';
import { modeFor, HANDLER_NAMES, type Config, type HandlerName, type Mode } from '../config.js';
import { DbpilotError, UnsafeToActError, safeMessage } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { isStoreError, type RunRow, type Store } from '../store/store.js';
import type { Alert, WebhookPayload } from './alertmanager.js';
import { dedupKeyFor, isTeam, teamForAlert, type Team } from './escalation.js';
import type { AlertInfo, Handler, HandlerContext, Plan, PriorStep, Step } from './handler.js';
import type { Outbox } from './outbox.js';
import { groupDedupKey, groupPage } from './pages.js';
import { ownerAlive } from './owner.js';
import type { HandlerRegistry } from './registry.js';
import type { Severity } from '../integrations/pagerduty.js';

export type Outcome = 'succeeded' | 'failed' | 'escalated' | 'dry_run' | 'skipped' | 'cancelled' | 'awaiting_approval' | 'deduplicated';

export interface EngineOptions {
  config: Config;
  store: Store;
  handlers: HandlerRegistry;
  ctx: HandlerContext;
  outbox: Outbox;
  metrics: Metrics;
  logger: Logger;
  /** Whether this instance may act (holds the Lease, or runs alone). */
  isLeader: () => boolean;
  /** False for the CLI: a human running `dbpilot remediate` or `approve` acts without the Lease. */
  requireLease: boolean;
  /** Identifies this process in run rows and locks (see owner.ts). */
  instance: string;
}

/** How long a page waits for the handler's diagnostics before it goes without them. */
const DIAGNOSTICS_BUDGET_MS = 5000;

/** A run left in flight longer than this is escalated on restart instead of resumed. */
const RESUME_MAX_AGE_SECONDS = 600;

const SEVERITIES: Record<string, Severity> = { critical: 'critical', page: 'critical', error: 'error', warning: 'warning', info: 'info' };

function toInfo(a: Alert, groupKey: string): AlertInfo {
  return { alertname: a.labels.alertname!, labels: a.labels, annotations: a.annotations, fingerprint: a.fingerprint, startsAt: a.startsAt, ...(groupKey ? { groupKey } : {}) };
}

/** An alert dbpilot only escalates, waiting for its batch's grouped page. */
interface GroupedEscalation {
  run: RunRow;
  alert: AlertInfo;
  team: Team;
  reason: string;
}

export class Engine {
  private readonly inFlight = new Set<Promise<unknown>>();
  /** Webhooks waiting for the next group commit. */
  private readonly pending: { payload: WebhookPayload; resolve: () => void; reject: (err: unknown) => void }[] = [];
  /** Runs executing in this process now: resume() must never start a second execution of one of them. */
  private readonly executing = new Set<string>();
  private readonly remediations: Counter<'handler' | 'outcome'>;
  private readonly alertsReceived: Counter<'status'>;
  private readonly truncated: Counter;
  private closed = false;
  /** While a group commit admits its alerts: the escalate-only ones, paged per group and team at its end. */
  private grouped: GroupedEscalation[] | null = null;

  constructor(private readonly o: EngineOptions) {
    this.remediations = o.metrics.counter('dbpilot_remediations_total', 'Remediation runs by handler and final outcome.', ['handler', 'outcome']);
    this.alertsReceived = o.metrics.counter('dbpilot_webhook_alerts_total', 'Alerts received from Alertmanager, by status.', ['status']);
    this.truncated = o.metrics.counter('dbpilot_webhook_truncated_alerts_total', 'Alerts Alertmanager left out of a webhook because of max_alerts (truncatedAlerts).');
  }

  get store(): Store {
    return this.o.store;
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
      this.o.logger.warn({ truncatedAlerts: payload.truncatedAlerts, groupKey: payload.groupKey }, 'Alertmanager truncated alerts from this notification (max_alerts)');
    }
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ payload, resolve, reject });
      if (this.pending.length === 1) this.track(new Promise<void>((done) => setImmediate(() => done(this.admitPending()))));
    });
  }

  private admitPending(): void {
    const batch = this.pending.splice(0);
    const work: (() => Promise<unknown>)[] = [];
    try {
      this.o.store.transaction(() => {
        this.grouped = [];
        for (const { payload } of batch) {
          for (const alert of payload.alerts) {
            const info = toInfo(alert, payload.groupKey);
            work.push(alert.status === 'firing' ? this.admitOne(info) : () => this.onResolved(info));
          }
        }
        this.pageGroups(this.grouped);
      });
    } catch (err) {
      for (const b of batch) b.reject(err);
      return;
    } finally {
      this.grouped = null;
    }
    for (const { payload } of batch) for (const alert of payload.alerts) this.alertsReceived.inc({ status: alert.status });
    for (const b of batch) b.resolve();
    for (const w of work) this.track<unknown>(w());
  }

  private track<T>(p: Promise<T>): Promise<T> {
    const guarded = p.catch((err: unknown) => {
      this.o.logger.error({ err: safeMessage(err) }, 'remediation failed unexpectedly');
      return undefined as T;
    });
    this.inFlight.add(guarded);
    void guarded.finally(() => this.inFlight.delete(guarded));
    return guarded;
  }

  /** Resolves when every run started so far has settled (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  /** Which handler an alert asks for: its `remediation` label, else the configured alert mapping. */
  handlerFor(a: AlertInfo): { handler: Handler | null; requested: string } {
    const label = a.labels.remediation;
    if (label && this.o.handlers.has(label)) return { handler: this.o.handlers.get(label), requested: label };
    const mapped = Object.hasOwn(this.o.config.alerts, a.alertname) ? this.o.config.alerts[a.alertname] : undefined;
    if (mapped && mapped !== 'none' && this.o.handlers.has(mapped)) return { handler: this.o.handlers.get(mapped), requested: mapped };
    return { handler: null, requested: mapped ?? label ?? '' };
  }

  private teamOf(a: AlertInfo, handler: Handler | null): Team {
    const label = a.labels.team;
    if (isTeam(label)) return label;
    return handler?.team ?? teamForAlert(a.alertname) ?? 'oncall-backend';
  }

  private severityOf(labels: Record<string, string>): Severity {
    const s = labels.severity ?? '';
    return Object.hasOwn(SEVERITIES, s) ? SEVERITIES[s]! : 'error';
  }

  // ---- firing ----

  async onFiring(a: AlertInfo, opts: { modeOverride?: Mode } = {}): Promise<RunRow | null> {
    return (await this.admitOne(a, opts)()) as RunRow | null;
  }

  /**
   * Admits one alert of a group commit inside a savepoint of its own. An alert whose admission throws
   * (a handler that cannot name its target, a label naming no configured server) costs only itself:
   * its savepoint is rolled back, it is recorded as refused and escalated with the reason, and the
   * other alerts of the batch are admitted. Only a failure of the store itself fails the batch
   * (the webhook answers 500 and Alertmanager retries: nothing is acknowledged unrecorded).
   */
  private admitOne(a: AlertInfo, opts: { modeOverride?: Mode } = {}): () => Promise<unknown> {
    const mark = this.grouped?.length ?? 0;
    try {
      return this.o.store.transaction(() => this.admitFiring(a, opts));
    } catch (err) {
      if (this.grouped) this.grouped.length = mark; // what the rolled-back savepoint recorded is gone
      if (isStoreError(err)) throw err;
      return this.refuse(a, err);
    }
  }

  /**
   * A page for an alert dbpilot only escalates. Inside a group commit it joins its Alertmanager
   * group's page (one per group and team, see pages.ts); alone (a test, the CLI) it is paged by itself.
   */
  private escalateOnly(run: RunRow, a: AlertInfo, handler: Handler | null, reason: string, tried: string): void {
    if (this.grouped && a.groupKey) {
      this.grouped.push({ run, alert: a, team: this.teamOf(a, handler), reason });
      return;
    }
    this.escalate(run, a, handler, { seen: a.annotations.summary ?? a.alertname, tried, verified: 'nothing' }, reason, run.status);
  }

  private pageGroups(list: GroupedEscalation[]): void {
    const groups = new Map<string, GroupedEscalation[]>();
    for (const g of list) {
      const k = `${g.team}\0${g.alert.groupKey}`;
      groups.set(k, [...(groups.get(k) ?? []), g]);
    }
    for (const members of groups.values()) {
      const { team, alert } = members[0]!;
      const groupKey = alert.groupKey!;
      const dedupKey = groupDedupKey(team, groupKey);
      this.o.store.addPageMembers(
        dedupKey,
        members.map((m) => ({ fingerprint: m.alert.fingerprint, startsAt: m.alert.startsAt, alertname: m.alert.alertname, runId: m.run.id, reason: m.reason, labels: m.alert.labels })),
      );
      this.o.outbox.trigger(groupPage(team, groupKey, this.o.store.openPageMembers(dedupKey), (labels) => this.severityOf(labels)));
    }
  }

  /** Records an alert dbpilot will not act on because admitting it failed, and pages its team with why. */
  private refuse(a: AlertInfo, err: unknown): () => Promise<RunRow | null> {
    let handler: Handler | null = null;
    let requested = '';
    try {
      ({ handler, requested } = this.handlerFor(a));
    } catch {
      // the lookup itself is what failed: record the alert under its label
    }
    const name = handler?.name ?? requested;
    const reason = `refused: ${safeMessage(err)}`;
    const run = this.o.store.createRun({
      handler: name || '-',
      alertname: a.alertname,
      fingerprint: a.fingerprint,
      startsAt: a.startsAt,
      target: '-',
      mode: handler ? modeFor(this.o.config, handler.name) : 'off',
      status: 'escalated',
      reason,
      labels: a.labels,
      owner: this.o.instance,
    });
    const label = (HANDLER_NAMES as readonly string[]).includes(name) ? name : 'unknown';
    if (!run) return this.dedupe(label);
    this.o.logger.warn({ run: run.id, alertname: a.alertname, handler: name || undefined, reason }, 'alert refused');
    this.escalateOnly(run, a, handler, reason, 'nothing: the alert was refused');
    this.count(label, 'escalated');
    return async () => this.o.store.getRun(run.id);
  }

  /** The synchronous part of a firing alert: decide, record (dedupe), and return the rest of the work. */
  private admitFiring(a: AlertInfo, opts: { modeOverride?: Mode } = {}): () => Promise<RunRow | null> {
    const { handler, requested } = this.handlerFor(a);
    if (!handler) {
      // remediation="none" alerts are paged by Alertmanager itself; anything else needs a human.
      if (requested === 'none') return async () => null;
      const run = this.o.store.createRun({
        handler: requested || '-',
        alertname: a.alertname,
        fingerprint: a.fingerprint,
        startsAt: a.startsAt,
        target: '-',
        mode: 'off',
        status: 'escalated',
        reason: requested ? `no handler named ${requested} is available` : 'the alert names no remediation',
        labels: a.labels,
        owner: this.o.instance,
      });
      // Metrics get a bounded label: a runbook handler's name, else `unknown` (the label is whatever the rule wrote).
      const label = (HANDLER_NAMES as readonly string[]).includes(requested) ? requested : 'unknown';
      if (!run) return this.dedupe(label);
      this.escalateOnly(run, a, null, run.reason ?? '', 'nothing: no handler for this alert');
      this.count(label, 'escalated');
      return async () => this.o.store.getRun(run.id);
    }

    const mode = opts.modeOverride ?? modeFor(this.o.config, handler.name);
    const target = handler.target(a, this.o.ctx);
    if (mode === 'off') {
      const run = this.o.store.createRun({
        handler: handler.name,
        alertname: a.alertname,
        fingerprint: a.fingerprint,
        startsAt: a.startsAt,
        target,
        mode,
        status: 'skipped',
        reason: `handler ${handler.name} is off`,
        labels: a.labels,
        owner: this.o.instance,
      });
      if (!run) return this.dedupe(handler.name);
      this.escalateOnly(run, a, handler, run.reason!, `nothing: mode is off for ${handler.name}`);
      this.count(handler.name, 'skipped');
      return async () => this.o.store.getRun(run.id);
    }
    // The unique index makes this the dedupe: a repeat of the same occurrence inserts nothing.
    const run = this.createPlanningRun(handler, a, target, mode, 'alertmanager');
    if (!run) return this.dedupe(handler.name);
    this.o.logger.info({ run: run.id, handler: handler.name, alertname: a.alertname, target, mode }, 'remediation run created');
    return () => this.continueFiring(run, handler, a, mode);
  }

  private async continueFiring(run: RunRow, handler: Handler, a: AlertInfo, mode: Mode): Promise<RunRow | null> {
    if (mode === 'auto' || mode === 'approve') {
      const blocked = this.policyBlock(handler, run.target);
      if (blocked) return this.finish(run, handler, a, 'skipped', blocked, null, { seen: a.annotations.summary ?? a.alertname, tried: `nothing: ${blocked}`, verified: 'nothing' });
    }
    return this.planAndAct(run, handler, a, mode);
  }

  private createPlanningRun(handler: Handler, a: AlertInfo, target: string, mode: Mode | 'manual', origin: 'alertmanager' | 'cli'): RunRow | null {
    return this.o.store.createRun({
      handler: handler.name,
      alertname: a.alertname,
      fingerprint: a.fingerprint,
      startsAt: a.startsAt,
      target,
      mode,
      status: 'planning',
      labels: a.labels,
      origin,
      owner: this.o.instance,
    });
  }

  private dedupe(handler: string): () => Promise<null> {
    this.count(handler, 'deduplicated');
    return async () => null;
  }

  /** Cooldown and attempt limit for a handler on one target. Returns why it must not act, or null. */
  private policyBlock(handler: Handler, target: string): string | null {
    const h = this.o.config.handlers[handler.name] ?? { cooldownSeconds: 300, maxAttempts: 3, attemptWindowSeconds: 3600 };
    const now = Date.now();
    const windowRuns = this.o.store.actedRunsOnTarget(handler.name, target, new Date(now - h.attemptWindowSeconds * 1000).toISOString());
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

  private async planAndAct(run: RunRow, handler: Handler, a: AlertInfo, mode: Mode | 'manual'): Promise<RunRow | null> {
    let plan: Plan;
    try {
      plan = await handler.plan(a, this.o.ctx);
    } catch (err) {
      const unsafe = err instanceof UnsafeToActError;
      return this.finish(run, handler, a, unsafe ? 'escalated' : 'failed', `${unsafe ? 'unsafe to act' : 'planning failed'}: ${safeMessage(err)}`, null, {
        seen: a.annotations.summary ?? a.alertname,
        tried: unsafe ? 'nothing: the runbook preconditions are not met' : 'planning the remediation',
        verified: safeMessage(err),
      });
    }
    if (!this.o.store.setRunStatus(run.id, 'planning', { plan: { summary: plan.summary, data: plan.data, escalateAfter: plan.escalateAfter ?? null }, from: ['planning'] })) {
      return this.o.store.getRun(run.id); // cancelled while planning: the alert resolved
    }
    if (plan.nothingToDo) {
      // A dry-run that found nothing to do is still a dry-run: it did not act, so it did not succeed at acting.
      if (mode === 'dry-run') return this.finish(run, handler, a, 'dry_run', `dry-run: nothing to do: ${plan.summary}`, plan.data, null);
      return this.finish(run, handler, a, 'succeeded', `nothing to do: ${plan.summary}`, plan.data, null);
    }
    const steps = handler.steps(plan.data, this.o.ctx);
    this.o.store.putSteps(run.id, steps.map((s) => ({ name: s.name, command: s.command })));
    const planDetails = { seen: plan.summary, tried: 'nothing yet', verified: 'nothing yet', plan: steps.map((s) => s.command) };
    if (mode === 'dry-run') {
      // A human's `dbpilot remediate` without --yes is already in front of the plan: nobody to page.
      const page = run.origin === 'cli' ? null : { ...planDetails, tried: 'nothing: dry-run mode; these are the runbook commands it would run' };
      return this.finish(run, handler, a, 'dry_run', `dry-run: ${plan.summary}`, plan.data, page);
    }
    if (mode === 'approve') {
      if (!this.o.store.setRunStatus(run.id, 'awaiting_approval', { reason: `waiting for approval: ${plan.summary}`, from: ['planning'] })) {
        return this.o.store.getRun(run.id); // cancelled while planning: the alert resolved
      }
      this.escalate(run, a, handler, { ...planDetails, tried: `nothing: approve mode; approve with \`dbpilot approve ${run.id}\` or POST /api/remediations/${run.id}/approve` }, `waiting for approval: ${plan.summary}`, 'awaiting_approval');
      this.count(handler.name, 'awaiting_approval');
      return this.o.store.getRun(run.id);
    }
    return this.execute(this.o.store.getRun(run.id)!, handler, a);
  }

  /** Runs (or resumes) the steps of a run under the target lock. */
  private async execute(run: RunRow, handler: Handler, a: AlertInfo): Promise<RunRow | null> {
    const store = this.o.store;
    if (this.executing.has(run.id)) return store.getRun(run.id);
    const lock = store.acquireLock(run.target, run.id, this.o.instance, ownerAlive);
    if (lock === 'same-run-elsewhere') {
      // Another live process (the service, or an on-call's CLI in the same pod) is executing this very run.
      this.o.logger.info({ run: run.id }, 'run is being executed by another dbpilot process; leaving it there');
      return store.getRun(run.id);
    }
    if (lock === 'other-run') {
      const holder = store.lockHolder(run.target);
      return this.finish(run, handler, a, 'skipped', `target ${run.target} is locked by run ${holder}`, null, null);
    }
    this.executing.add(run.id);
    // Set when the run must stop between steps without an outcome: it stays `running` with its lock,
    // and the next process (or this one, on regaining the Lease) resumes it from its last verified step.
    let leftForResume = false;
    const planned = run.plan as { summary?: string; data: unknown; escalateAfter: string | null } | null;
    const data = planned?.data ?? null;
    try {
      if (!store.setRunStatus(run.id, 'running', { owner: this.o.instance, from: ['planning', 'running'] })) {
        return store.getRun(run.id); // finished or cancelled meanwhile
      }
      const steps = handler.steps(data as never, this.o.ctx);
      const rows = store.steps(run.id);
      const prior = new Map<string, PriorStep>();
      for (let i = 0; i < steps.length; i++) {
        const step = steps[i]!;
        const row = rows[i];
        if (row?.status === 'done' || row?.status === 'skipped') {
          prior.set(step.name, { output: row.output, check: row.check as PriorStep['check'] });
          continue;
        }
        const stop = this.closed ? 'dbpilot is shutting down' : !this.o.requireLease || this.o.isLeader() ? null : 'this replica lost the leader Lease';
        if (stop) {
          leftForResume = true;
          this.o.logger.warn({ run: run.id, nextStep: step.name, why: stop }, 'run paused between steps; it resumes from its last verified step');
          return store.getRun(run.id);
        }
        const resumed = row?.status === 'running' || row?.status === 'error' || row?.status === 'check_failed';
        const result = resumed ? await this.resumeStep(run, i, step, row!.output, prior) : await this.runStep(run, i, step, prior);
        if (!result.ok) {
          return await this.finish(run, handler, a, 'failed', result.reason, data, {
            seen: planned?.summary ?? a.alertname,
            tried: store.steps(run.id).filter((s) => s.status !== 'planned').map((s) => `${s.name}: ${s.command}`),
            verified: result.reason,
          });
        }
      }
      if (planned?.escalateAfter) {
        return await this.finish(run, handler, a, 'escalated', `completed, but ${planned.escalateAfter}`, data, {
          seen: planned.summary ?? a.alertname,
          tried: steps.map((s) => s.command),
          verified: `every step checked; left for a human: ${planned.escalateAfter}`,
        });
      }
      return await this.finish(run, handler, a, 'succeeded', 'every step done and checked', data, null);
    } catch (err) {
      return await this.finish(run, handler, a, 'failed', safeMessage(err), data, {
        seen: planned?.summary ?? a.alertname,
        tried: 'running the remediation',
        verified: safeMessage(err),
      });
    } finally {
      this.executing.delete(run.id);
      if (!leftForResume) store.releaseLock(run.target, run.id);
    }
  }

  private async runStep(run: RunRow, idx: number, step: Step, prior: Map<string, PriorStep>): Promise<{ ok: true } | { ok: false; reason: string }> {
    const store = this.o.store;
    store.stepStarted(run.id, idx); // before the action: a crash from here on is visible on restart
    this.o.logger.info({ run: run.id, step: step.name, command: step.command }, 'step started');
    let output: unknown;
    try {
      output = await step.run(prior);
      store.stepOutput(run.id, idx, output ?? null);
    } catch (err) {
      store.stepFinished(run.id, idx, 'error', { error: safeMessage(err) });
      return { ok: false, reason: `step ${step.name} failed: ${safeMessage(err)}` };
    }
    return this.checkStep(run, idx, step, output, prior);
  }

  private async checkStep(run: RunRow, idx: number, step: Step, output: unknown, prior: Map<string, PriorStep>): Promise<{ ok: true } | { ok: false; reason: string }> {
    let check;
    try {
      check = await step.check(output, prior);
    } catch (err) {
      check = { ok: false, detail: `check could not run: ${safeMessage(err)}` };
    }
    this.o.store.stepFinished(run.id, idx, check.ok ? 'done' : 'check_failed', { output: output ?? null, check });
    this.o.logger.info({ run: run.id, step: step.name, ok: check.ok, detail: check.detail }, 'step checked');
    if (!check.ok) return { ok: false, reason: `check after ${step.name} failed: ${check.detail}` };
    prior.set(step.name, { output, check });
    return { ok: true };
  }

  /**
   * A step that was started before dbpilot stopped: check first. Verified → carry on without
   * repeating it. Not verified → repeat only an idempotent step; otherwise stop and escalate.
   */
  private async resumeStep(run: RunRow, idx: number, step: Step, output: unknown, prior: Map<string, PriorStep>): Promise<{ ok: true } | { ok: false; reason: string }> {
    this.o.logger.warn({ run: run.id, step: step.name }, 'resuming a step that was in flight when dbpilot stopped');
    let check: Awaited<ReturnType<Step['check']>> | null = null;
    let checkError: string | null = null;
    if (output !== null && output !== undefined) {
      // A restart often meets a busy or still-recovering server: an error here is not a verdict, so try a few times.
      for (let attempt = 1; attempt <= 3 && check === null; attempt++) {
        try {
          check = await step.check(output, prior);
        } catch (err) {
          checkError = safeMessage(err);
          this.o.logger.warn({ run: run.id, step: step.name, attempt, err: checkError }, 'could not verify the resumed step');
          if (attempt < 3) await new Promise((r) => setTimeout(r, 1000));
        }
      }
    }
    if (check?.ok) {
      this.o.store.stepFinished(run.id, idx, 'done', { check: { ...check, detail: `${check.detail} (verified after restart)` } });
      prior.set(step.name, { output, check });
      return { ok: true };
    }
    const why = check ? check.detail : checkError ? `its check could not run: ${checkError}` : 'it recorded no output';
    if (!step.idempotent) {
      const reason = `step ${step.name} was in flight when dbpilot stopped and cannot be verified (${why}); not repeating it`;
      this.o.store.stepFinished(run.id, idx, 'check_failed', { check: { ok: false, detail: reason } });
      return { ok: false, reason };
    }
    this.o.logger.warn({ run: run.id, step: step.name, why }, 'repeating an idempotent step that could not be verified after restart');
    return this.runStep(run, idx, step, prior);
  }

  /**
   * Closes a run: the page it calls for, then its final status and metrics, or the resolve of an
   * earlier page. The page is queued before the status becomes final: a crash in between leaves the
   * run in flight, and the next process pages about it — a final run without its page cannot happen.
   */
  private async finish(
    run: RunRow,
    handler: Handler,
    a: AlertInfo,
    status: 'succeeded' | 'failed' | 'escalated' | 'dry_run' | 'skipped',
    reason: string,
    data: unknown,
    escalation: Record<string, unknown> | null,
  ): Promise<RunRow | null> {
    const open = ['planning', 'awaiting_approval', 'running'] as const;
    const stillOpen = () => {
      const cur = this.o.store.getRun(run.id);
      return cur !== null && (open as readonly string[]).includes(cur.status);
    };
    // A run cancelled meanwhile (its alert resolved while it was planning) keeps that outcome and pages nobody.
    if (!stillOpen()) return this.o.store.getRun(run.id);
    if (escalation) {
      const diagnostics = await this.diagnosticsFor(handler, data, a);
      if (!stillOpen()) return this.o.store.getRun(run.id);
      this.escalate(run, a, handler, { ...escalation, ...(diagnostics ? { diagnostics } : {}) }, reason, status);
    }
    if (!this.o.store.setRunStatus(run.id, status, { reason, from: [...open] })) {
      // Cancelled while the page was being prepared: the alert has resolved, so resolve the page too.
      if (escalation) this.o.outbox.resolve(dedupKeyFor(a.alertname, a.fingerprint));
      return this.o.store.getRun(run.id);
    }
    this.o.logger.info({ run: run.id, handler: handler.name, status, reason }, 'remediation run finished');
    this.count(handler.name, status);
    if (!escalation && status === 'succeeded') this.o.outbox.resolve(dedupKeyFor(a.alertname, a.fingerprint));
    return this.o.store.getRun(run.id);
  }

  /** The handler's diagnostics for a page, bounded in time: the server they come from may be the one in trouble. */
  private async diagnosticsFor(handler: Handler, data: unknown, a: AlertInfo): Promise<Record<string, unknown> | null> {
    if (!handler.diagnostics) return null;
    let timer: NodeJS.Timeout | undefined;
    try {
      const d = await Promise.race([
        handler.diagnostics(data as never, a, this.o.ctx),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`diagnostics took longer than ${DIAGNOSTICS_BUDGET_MS} ms`)), DIAGNOSTICS_BUDGET_MS);
        }),
      ]);
      return Object.keys(d).length ? d : null;
    } catch (err) {
      return { error: safeMessage(err) };
    } finally {
      clearTimeout(timer);
    }
  }

  private escalate(run: RunRow, a: AlertInfo, handler: Handler | null, details: Record<string, unknown>, reason: string, status: string): void {
    this.o.outbox.trigger({
      team: this.teamOf(a, handler),
      dedupKey: dedupKeyFor(a.alertname, a.fingerprint),
      summary: `[dbpilot] ${a.alertname}${run.target !== '-' ? ` on ${run.target}` : ''}: ${reason || status}`,
      severity: this.severityOf(a.labels),
      component: handler?.name ?? 'dbpilot',
      class: a.alertname,
      details: {
        seen: String(details.seen ?? a.alertname),
        tried: (details.tried as string | string[]) ?? 'nothing',
        verified: (details.verified as string | string[]) ?? 'nothing',
        ...details,
        run: run.id,
        run_status: status,
        mode: run.mode,
        labels: a.labels,
      },
    });
  }

  private count(handler: string, outcome: Outcome): void {
    this.remediations.inc({ handler, outcome });
  }

  // ---- resolved ----

  /** A resolved alert cancels what still waits for it and resolves its page. A running run is left to finish and verify. */
  async onResolved(a: AlertInfo): Promise<void> {
    for (const run of this.o.store.openRunsFor(a.fingerprint)) {
      // Runs still planning are cancelled too, except in auto mode, where acting on what the plan found is still right.
      if (run.status === 'awaiting_approval' || (run.status === 'planning' && run.mode !== 'auto')) {
        const reason = run.status === 'planning' ? 'the alert resolved while the run was being planned' : 'the alert resolved before the run was approved';
        if (this.o.store.setRunStatus(run.id, 'cancelled', { reason, from: [run.status] })) {
          this.count(run.handler, 'cancelled');
          this.o.logger.info({ run: run.id }, 'run cancelled: alert resolved');
        }
      }
    }
    this.o.outbox.resolve(dedupKeyFor(a.alertname, a.fingerprint));
    // A grouped page resolves with the last of its alerts.
    for (const key of this.o.store.resolvePageMember(a.fingerprint)) this.o.outbox.resolve(key);
  }

  // ---- approve, manual runs, resume ----

  /** Approves a run waiting in approve mode and executes it here. */
  async approve(id: string, by: string): Promise<RunRow> {
    const run = this.o.store.getRun(id);
    if (!run) throw new DbpilotError('DBPILOT_RUN_NOT_FOUND', `no remediation run ${id}`);
    if (run.status !== 'awaiting_approval') throw new DbpilotError('DBPILOT_RUN_NOT_WAITING', `run ${id} is ${run.status}, not awaiting approval`);
    const handler = this.o.handlers.get(run.handler);
    const blocked = this.policyBlock(handler, run.target);
    if (blocked) throw new DbpilotError('DBPILOT_RUN_BLOCKED', blocked);
    // Only the caller whose update wins executes: a double approve cannot start two executions.
    if (!this.o.store.setRunStatus(id, 'running', { from: ['awaiting_approval'], approvedBy: by, owner: this.o.instance })) {
      throw new DbpilotError('DBPILOT_RUN_NOT_WAITING', `run ${id} was approved or cancelled meanwhile`);
    }
    this.o.logger.info({ run: id, by }, 'run approved');
    const a: AlertInfo = { alertname: run.alertname, labels: run.labels, annotations: {}, fingerprint: run.fingerprint, startsAt: run.startsAt };
    return (await this.track(this.execute(this.o.store.getRun(id)!, handler, a))) ?? this.o.store.getRun(id)!;
  }

  /** `dbpilot remediate`: a run started by a human, through the same policy, lock, audit and checks. */
  async runManual(handlerName: string, labels: Record<string, string>, mode: 'manual' | 'dry-run'): Promise<RunRow | null> {
    const handler = this.o.handlers.get(handlerName);
    const a = manualAlert(handlerName, labels);
    const run = this.createPlanningRun(handler, a, handler.target(a, this.o.ctx), mode, 'cli')!;
    return this.track(this.planAndAct(run, handler, a, mode));
  }

  /**
   * On start, and on (re)gaining the Lease: finish what a previous process left in flight, and what
   * this process paused between steps (shutting down is final, but a lost Lease is not).
   */
  async resume(): Promise<void> {
    for (const run of this.o.store.inFlightRuns()) {
      // Executing here now, or being planned here now: not left in flight. A run of this process that
      // is `running` but not executing was paused when the Lease was lost, and is resumed below.
      if (this.executing.has(run.id) || (run.status === 'planning' && run.owner === this.o.instance)) continue;
      const a: AlertInfo = { alertname: run.alertname, labels: run.labels, annotations: {}, fingerprint: run.fingerprint, startsAt: run.startsAt };
      if (!this.o.handlers.has(run.handler)) continue;
      const handler = this.o.handlers.get(run.handler);
      const holder = this.o.store.lockOwner(run.target);
      if (holder && holder.runId === run.id && holder.owner && holder.owner !== this.o.instance && ownerAlive(holder.owner)) continue; // another live process has it
      if (run.status === 'planning') {
        if (run.owner && ownerAlive(run.owner)) continue;
        // Nothing was executed yet, but the situation may have changed: a human decides.
        await this.finish(run, handler, a, 'escalated', 'dbpilot stopped while planning this run; nothing was executed', null, {
          seen: a.alertname,
          tried: 'nothing: interrupted while planning',
          verified: 'nothing',
        });
        continue;
      }
      // Measured from the last recorded progress (a step started or checked), not from when the run began.
      const ageSeconds = (Date.now() - Date.parse(this.o.store.lastProgress(run.id) ?? run.updatedAt)) / 1000;
      if (ageSeconds > RESUME_MAX_AGE_SECONDS) {
        // A plan this old describes a system that has moved on (pids reused, failover done by hand…): do not act on it.
        this.o.store.releaseLock(run.target, run.id);
        await this.finish(run, handler, a, 'escalated', `left in flight ${Math.round(ageSeconds)} s ago; too old to resume safely`, null, {
          seen: (run.plan as { summary?: string } | null)?.summary ?? a.alertname,
          tried: this.o.store.steps(run.id).filter((st) => st.status !== 'planned').map((st) => `${st.name} (${st.status})`),
          verified: 'not resumed: the plan is older than the resume bound',
        });
        continue;
      }
      this.o.logger.warn({ run: run.id, handler: run.handler }, 'resuming a run left in flight by a previous dbpilot process');
      await this.track(this.execute(run, handler, a));
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.idle();
  }
}

export function manualAlert(handler: string, labels: Record<string, string>): AlertInfo {
  const startsAt = new Date().toISOString();
  return {
    alertname: labels.alertname ?? `manual:${handler}`,
    labels: { ...labels, remediation: handler },
    annotations: { summary: `manual ${handler} run` },
    fingerprint: `manual${Date.now().toString(16)}`,
    startsAt,
  };
}
