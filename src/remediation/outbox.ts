/**
 * The escalation outbox: every page and every resolve is first written to the store, then
 * delivered to PagerDuty by one dispatcher. 429 / 5xx / network errors are retried with jittered
 * backoff (honouring Retry-After) for as long as it takes, across restarts; a 400 is a dead letter,
 * logged loudly and counted, never retried forever. Per dedup key, events go out in order, so a
 * resolve never overtakes its trigger.
 */
import { hostname } from 'node:os';
import type { Counter } from 'prom-client';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { Store, OutboxRow } from '../store/store.js';
import { backoffMs, sendEvent, type PagerDutyLink, type Severity } from '../integrations/pagerduty.js';
import { escalationEvent, routeFor, type EscalationDetails, type Team } from './escalation.js';

const POLL_MS = 5000;
/** How long stop() lets a delivery under way finish before aborting it. */
const STOP_GRACE_MS = 3000;

export interface EscalationRequest {
  team: Team;
  dedupKey: string;
  summary: string;
  source?: string;
  severity: Severity;
  details: EscalationDetails;
  component?: string;
  class?: string;
}

export class Outbox {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = true;
  private readonly abort = new AbortController();
  private readonly escalations: Counter<'team' | 'outcome'>;

  constructor(
    private readonly store: Store,
    private readonly config: Config['pagerduty'],
    metrics: Metrics,
    private readonly logger: Logger,
    private readonly opts: { baseBackoffMs?: number; maxBackoffMs?: number } = {},
  ) {
    this.escalations = metrics.counter('dbpilot_escalations_total', 'PagerDuty delivery attempts by team and outcome (delivered, retried, dead_letter).', ['team', 'outcome']);
    const self = this;
    metrics.gauge('dbpilot_escalation_outbox_pending', 'Escalation events written to the outbox and not yet delivered to PagerDuty.', [], function () {
      this.set(self.store.outboxPending());
    });
  }

  private links(): PagerDutyLink[] {
    const links: PagerDutyLink[] = [];
    if (this.config.dashboardUrl) links.push({ href: this.config.dashboardUrl, text: 'Grafana database-dashboard' });
    links.push({ href: this.config.operatorGuideUrl, text: 'dbpilot operator guide' });
    return links;
  }

  /** Writes a page to the outbox and wakes the dispatcher. The routing key is never stored. */
  trigger(req: EscalationRequest): number {
    const event = escalationEvent({
      team: req.team,
      routingKey: '',
      dedupKey: req.dedupKey,
      summary: req.summary,
      source: req.source ?? this.config.source ?? hostname(),
      severity: req.severity,
      details: req.details,
      links: this.links(),
      ...(req.component ? { component: req.component } : {}),
      ...(req.class ? { class: req.class } : {}),
      timestamp: new Date().toISOString(),
    });
    const { routing_key: _omit, ...stored } = event;
    const id = this.store.enqueue({ team: req.team, dedupKey: req.dedupKey, action: 'trigger', event: stored as Record<string, unknown> });
    this.logger.info({ team: req.team, dedupKey: req.dedupKey, summary: req.summary }, 'escalation queued');
    // After the caller's transaction (a group commit of webhooks) has committed, never inside it.
    setImmediate(() => this.kick());
    return id;
  }

  /** Resolves the PagerDuty alert of an incident that was paged; does nothing when none is open. */
  resolve(dedupKey: string): boolean {
    const open = this.store.openIncident(dedupKey);
    if (!open) return false;
    this.store.enqueue({ team: open.team, dedupKey, action: 'resolve', event: { event_action: 'resolve', dedup_key: dedupKey } });
    this.logger.info({ team: open.team, dedupKey }, 'resolve queued');
    setImmediate(() => this.kick());
    return true;
  }

  start(): void {
    this.stopped = false;
    this.kick();
  }

  /**
   * Stops dispatching. A delivery already under way may finish (for a few seconds): cutting it off
   * after PagerDuty received it would only make the next process send it again.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.running) {
      const grace = new Promise<void>((resolve) => setTimeout(resolve, STOP_GRACE_MS).unref());
      await Promise.race([this.running, grace]);
    }
    this.abort.abort();
    await this.running;
  }

  /** Delivers everything due now; resolves when the pass is over (tests and shutdown use it). */
  async flush(): Promise<void> {
    this.kick();
    while (this.running) await this.running;
  }

  private kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.running = this.pass()
      .catch((err: unknown) => this.logger.error({ err: (err as Error).message }, 'outbox pass failed'))
      .finally(() => {
        this.running = null;
        if (this.again) {
          this.again = false;
          this.kick();
        } else {
          this.schedule();
        }
      });
  }

  private schedule(): void {
    if (this.stopped) return;
    // Also polls every few seconds: a CLI process sharing the store may have queued events.
    const due = this.store.nextOutboxDue() ?? Date.now() + POLL_MS;
    const delay = Math.max(0, Math.min(due - Date.now(), POLL_MS));
    this.timer = setTimeout(() => this.kick(), delay);
    this.timer.unref();
  }

  private async pass(): Promise<void> {
    for (;;) {
      if (this.stopped) return;
      const due = this.store.dueOutbox(Date.now());
      if (due.length === 0) return;
      // Different incidents in parallel; within one dedup key dueOutbox hands out one at a time.
      // Each delivery returns its bookkeeping, written for the whole batch in one transaction.
      const outcomes = await Promise.all(due.map((row) => this.deliver(row)));
      this.store.transaction(() => outcomes.forEach((write) => write()));
    }
  }

  /** Sends one event; returns the store update that records the outcome. */
  private async deliver(row: OutboxRow): Promise<() => void> {
    const team = row.team as Team;
    let routingKey: string;
    try {
      routingKey = routeFor(team, this.config.routes);
    } catch (err) {
      // A configuration problem; retrying cannot fix it, and the page must not vanish silently.
      this.escalations.inc({ team, outcome: 'dead_letter' });
      this.logger.error({ team, dedupKey: row.dedupKey, err: (err as Error).message }, 'escalation cannot be delivered: dead letter');
      return () => this.store.outboxDead(row.id, (err as Error).message);
    }
    const result = await sendEvent({ ...(row.event as object), routing_key: routingKey } as never, {
      url: this.config.url,
      timeoutMs: this.config.timeoutMs,
      signal: this.abort.signal,
    });
    if (result.outcome === 'accepted') {
      this.escalations.inc({ team, outcome: 'delivered' });
      this.logger.info({ team, dedupKey: row.dedupKey, action: row.action, attempts: row.attempts + 1 }, 'escalation delivered');
      return () => this.store.outboxDelivered(row.id);
    } else if (result.outcome === 'retry') {
      const wait = Math.max(result.retryAfterMs ?? 0, backoffMs(row.attempts + 1, { baseMs: this.opts.baseBackoffMs ?? 1000, maxMs: this.opts.maxBackoffMs ?? 300_000 }));
      this.escalations.inc({ team, outcome: 'retried' });
      if (row.attempts === 0 || row.attempts % 10 === 0) {
        this.logger.warn({ team, dedupKey: row.dedupKey, status: result.httpStatus, err: result.message, retryInMs: wait }, 'PagerDuty unavailable, will retry');
      }
      return () => this.store.outboxRetry(row.id, Date.now() + wait, result.message);
    } else {
      this.escalations.inc({ team, outcome: 'dead_letter' });
      this.logger.error({ team, dedupKey: row.dedupKey, status: result.httpStatus, err: result.message }, 'PagerDuty rejected the event: dead letter');
      return () => this.store.outboxDead(row.id, result.message);
    }
  }
}
