/**
 * What the parts of the engine share: its options, the bookkeeping of work in flight, the
 * remediation counter, and the rules that every part applies the same way (which handler an alert
 * asks for, who is paged, at what severity, whether this process may still act).
 */
import type { Counter } from 'prom-client';
import type { Config } from '../../config.js';
import { DbpilotError, safeMessage } from '../../errors.js';
import type { Logger } from '../../logger.js';
import type { Metrics } from '../../metrics.js';
import type { RunRow, Store } from '../../store/store.js';
import type { Severity } from '../../integrations/pagerduty.js';
import { dedupKeyFor, isTeam, teamForAlert, type Team } from '../escalation.js';
import type { AlertInfo, Handler, HandlerContext } from '../handler.js';
import type { Outbox } from '../outbox.js';
import type { HandlerRegistry } from '../registry.js';
import { genericOptions, type PolicyOptions } from '../handlers/options.js';

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
  /** False for the CLI: a human running `dbpilot remediate` or `approve` acts without the Lease, under the run's lock. */
  requireLease: boolean;
  /** Identifies this process in run rows and locks (see owner.ts). */
  instance: string;
}

/** This process must stop acting now: it lost the Lease (the CLI: the run's lock). The run is left for resume. */
export class StopActingError extends DbpilotError {
  constructor(why: string) {
    super('DBPILOT_STOP_ACTING', why);
  }
}

const SEVERITIES: Record<string, Severity> = { critical: 'critical', page: 'critical', error: 'error', warning: 'warning', info: 'info' };

export class EngineCore {
  readonly remediations: Counter<'handler' | 'outcome'>;
  private readonly inFlight = new Set<Promise<unknown>>();
  /** Runs executing in this process now: resume() must never start a second execution of one of them. */
  readonly executing = new Set<string>();
  /** The steps acting now: aborted when this process must stop acting. */
  readonly stepControllers = new Set<AbortController>();
  closed = false;
  /** Called when a run pauses because this replica is not the leader (the engine then watches for the Lease). */
  onPausedForLease: () => void = () => undefined;

  constructor(readonly o: EngineOptions) {
    this.remediations = o.metrics.counter('dbpilot_remediations_total', 'Remediation runs by handler and final outcome.', ['handler', 'outcome']);
  }

  get store(): Store {
    return this.o.store;
  }

  get logger(): Logger {
    return this.o.logger;
  }

  track<T>(p: Promise<T>): Promise<T> {
    const guarded = p.catch((err: unknown) => {
      this.o.logger.error({ err: safeMessage(err) }, 'remediation failed unexpectedly');
      return undefined as T;
    });
    this.inFlight.add(guarded);
    void guarded.finally(() => this.inFlight.delete(guarded));
    return guarded;
  }

  async idle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  count(handler: string, outcome: Outcome): void {
    this.remediations.inc({ handler, outcome });
  }

  /** Which handler an alert asks for: its `remediation` label, else the configured alert mapping. */
  handlerFor(a: AlertInfo): { handler: Handler | null; requested: string } {
    const label = a.labels.remediation;
    if (label && this.o.handlers.has(label)) return { handler: this.o.handlers.get(label), requested: label };
    const mapped = Object.hasOwn(this.o.config.alerts, a.alertname) ? this.o.config.alerts[a.alertname] : undefined;
    if (mapped && mapped !== 'none' && this.o.handlers.has(mapped)) return { handler: this.o.handlers.get(mapped), requested: mapped };
    return { handler: null, requested: mapped ?? label ?? '' };
  }

  teamOf(a: AlertInfo, handler: Handler | null): Team {
    const label = a.labels.team;
    if (isTeam(label)) return label;
    return handler?.team ?? teamForAlert(a.alertname) ?? 'oncall-backend';
  }

  /**
   * Every page an alert's escalation is: its team's under the alert's dedup key, then each of the
   * handler's alsoPage teams (not the same team twice) under a key of its own, so one does not replace
   * the other in the outbox and each resolves on its own PagerDuty service.
   */
  pagesOf(a: AlertInfo, handler: Handler | null): { team: Team; dedupKey: string }[] {
    const team = this.teamOf(a, handler);
    const pages = [{ team, dedupKey: dedupKeyFor(a.alertname, a.fingerprint) }];
    for (const also of handler?.alsoPage ?? []) {
      if (!pages.some((p) => p.team === also)) pages.push({ team: also, dedupKey: dedupKeyFor(a.alertname, `${a.fingerprint}/${also}`) });
    }
    return pages;
  }

  severityOf(labels: Record<string, string>): Severity {
    const s = labels.severity ?? '';
    return Object.hasOwn(SEVERITIES, s) ? SEVERITIES[s]! : 'error';
  }

  /** The handler's policy options (cooldown, attempts, age limits, lock wait), with defaults when not configured. */
  policy(handler: Handler): PolicyOptions {
    return (this.o.config.handlers as Record<string, PolicyOptions | undefined>)[handler.name] ?? genericOptions.parse({});
  }

  /** Why this process may not act on `run` now, or null: shutting down, lost the Lease, or (the CLI) lost the run's lock. */
  whyNotAct(run: RunRow): string | null {
    if (this.closed) return 'dbpilot is shutting down';
    if (this.o.requireLease) return this.o.isLeader() ? null : 'this replica lost the leader Lease';
    return this.o.store.lockOwner(run.target)?.owner === this.o.instance ? null : `this process no longer holds the lock on ${run.target}`;
  }

  /** Aborts every step acting now (the Lease is lost): each stops within its step, and its run waits for resume. */
  stopActing(why: string): void {
    for (const ac of this.stepControllers) ac.abort(new StopActingError(why));
  }

  alertOf(run: RunRow): AlertInfo {
    return { alertname: run.alertname, labels: run.labels, annotations: {}, fingerprint: run.fingerprint, startsAt: run.startsAt };
  }
}
