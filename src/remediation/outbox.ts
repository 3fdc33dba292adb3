/**
 * The escalation outbox: every page and every resolve is first written to the store, then delivered
 * to PagerDuty by a dispatcher. The rules it keeps, and why:
 *
 * - Exactly one process sends a row. A dispatcher claims rows in the store (owner and expiry, in one
 *   IMMEDIATE transaction) before it sends them and clears the claim with the outcome, so the service
 *   and an on-call's CLI sharing a store never page twice. A claim left by a dead process expires.
 * - In order per dedup key: only the oldest pending row of a key can be claimed, so a resolve never
 *   reaches PagerDuty before its trigger, whoever sends them.
 * - Within PagerDuty's rate: the Events API takes about 120 events a minute per routing key and
 *   answers 429 beyond that. Each team (routing key) has a token bucket (`pagerduty.rateLimit`), and a
 *   429 empties it.
 * - Backoff per routing key, not per row: after a 429, 5xx or network error the team pauses (full
 *   jitter, Retry-After honoured) and then sends one probe at a time. The first success ends the
 *   pause for every row of the team, which go out at once within the rate limit — a row does not keep
 *   its own grown backoff after PagerDuty is back.
 * - Each outcome is written as its request completes: a slow answer holds back nothing else, and a
 *   crash re-sends only what was in flight.
 * - A 400 is a dead letter (logged loudly, counted), never retried forever.
 * - An on-call can follow an outage: the first failure is logged, then a summary at most every
 *   `pagerduty.retry.summarySeconds` (attempts, pages waiting, oldest, last error), then the recovery.
 */
import { hostname } from 'node:os';
import type { Counter } from 'prom-client';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { Store, OutboxRow } from '../store/store.js';
import { backoffMs, sendEvent, type PagerDutyLink, type Severity } from '../integrations/pagerduty.js';
import { safeMessage } from '../errors.js';
import { escalationEvent, routeFor, type EscalationDetails, type Team } from './escalation.js';
import { ownerAlive } from './owner.js';

/** How often a dispatcher looks for rows queued by another process, and renews its heartbeat. */
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

export interface OutboxOptions {
  /** This process, as it claims rows (see owner.ts). */
  owner: string;
  /** The service's dispatcher announces itself, so the CLI leaves delivery to it. */
  announce?: boolean;
}

/** Events larger than this are trimmed before they are queued (PagerDuty refuses events over 512 KB). */
const MAX_EVENT_BYTES = 400 * 1024;

/**
 * Trims an event's custom_details until it serialises under the limit: the longest strings are cut
 * first, then long lists, so a page always goes out, marked as shortened, instead of becoming a dead letter.
 */
export function fitEvent<E extends { payload?: { custom_details?: Record<string, unknown> } }>(event: E, maxBytes = MAX_EVENT_BYTES): E {
  const size = (v: unknown) => Buffer.byteLength(JSON.stringify(v));
  if (size(event) <= maxBytes || !event.payload?.custom_details) return event;
  const details = JSON.parse(JSON.stringify(event.payload.custom_details)) as Record<string, unknown>;
  const out = { ...event, payload: { ...event.payload, custom_details: details } };
  for (let cap = 4096; cap >= 64 && size(out) > maxBytes; cap = Math.floor(cap / 4)) {
    const walk = (v: unknown): unknown => {
      if (typeof v === 'string') return v.length > cap ? `${v.slice(0, cap)}… [${v.length - cap} characters cut]` : v;
      if (Array.isArray(v)) return (v.length > cap / 8 ? [...v.slice(0, Math.max(1, Math.floor(cap / 8))), `… and ${v.length - Math.max(1, Math.floor(cap / 8))} more`] : v).map(walk);
      if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]));
      return v;
    };
    out.payload.custom_details = walk(details) as Record<string, unknown>;
  }
  out.payload.custom_details = { ...out.payload.custom_details, shortened: `the page was cut to fit PagerDuty's size limit; the full record is in dbpilot's audit` };
  return out;
}

/** Per routing key: its token bucket, its pause after failures, and what the logs have said about it. */
interface TeamState {
  tokens: number;
  refilledAt: number;
  pausedUntil: number;
  /** Consecutive failed attempts: the backoff exponent (requests that failed together count once). */
  failures: number;
  lastFailureAt: number;
  failingSince: number | null;
  failedAttempts: number;
  lastError: string;
  lastSummaryAt: number;
  inFlight: number;
}

export class Outbox {
  private timer: NodeJS.Timeout | null = null;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private stopped = true;
  private filling = false;
  private again = false;
  /** One pass for any number of pages queued in the same tick (a group commit of 5,000 alerts is one pass). */
  private kickScheduled = false;
  private abort = new AbortController();
  private readonly inFlight = new Set<Promise<void>>();
  private readonly teams = new Map<string, TeamState>();
  private readonly escalations: Counter<'team' | 'outcome'>;
  private readonly ratePerMs: number;
  private readonly burst: number;
  private readonly claimMs: number;

  constructor(
    private readonly store: Store,
    private readonly config: Config['pagerduty'],
    metrics: Metrics,
    private readonly logger: Logger,
    private readonly opts: OutboxOptions,
  ) {
    this.escalations = metrics.counter('dbpilot_escalations_total', 'PagerDuty delivery attempts by team and outcome (delivered, retried, dead_letter).', ['team', 'outcome']);
    const self = this;
    metrics.gauge('dbpilot_escalation_outbox_pending', 'Escalation events written to the outbox and not yet delivered to PagerDuty.', [], function () {
      this.set(self.store.outboxPending());
    });
    this.ratePerMs = config.rateLimit.perMinute / 60_000;
    this.burst = config.rateLimit.burst;
    // Longer than any request may take: a claim must not expire while its request is still running.
    this.claimMs = config.timeoutMs + 30_000;
  }

  private links(): PagerDutyLink[] {
    const links: PagerDutyLink[] = [];
    if (this.config.dashboardUrl) links.push({ href: this.config.dashboardUrl, text: 'Grafana database-dashboard' });
    links.push({ href: this.config.operatorGuideUrl, text: 'dbpilot operator guide' });
    return links;
  }

  /**
   * Writes a page to the outbox and wakes the dispatcher. The routing key is never stored. A trigger
   * still waiting for its dedup key is replaced rather than followed by a second one.
   */
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
    const { routing_key: _omit, ...stored } = fitEvent(event);
    const id = this.store.enqueueTrigger({ team: req.team, dedupKey: req.dedupKey, event: stored as Record<string, unknown> });
    this.logger.info({ team: req.team, dedupKey: req.dedupKey, summary: req.summary }, 'escalation queued');
    this.kickSoon();
    return id;
  }

  /** Resolves the PagerDuty alert of an incident that was paged; does nothing when none is open. */
  resolve(dedupKey: string): boolean {
    const open = this.store.openIncident(dedupKey);
    if (!open) return false;
    this.store.enqueue({ team: open.team, dedupKey, action: 'resolve', event: { event_action: 'resolve', dedup_key: dedupKey } });
    this.logger.info({ team: open.team, dedupKey }, 'resolve queued');
    this.kickSoon();
    return true;
  }

  /** A pass after the caller's transaction (a group commit of webhooks) has committed, never inside it; one for all pages of the tick. */
  private kickSoon(): void {
    if (this.kickScheduled) return;
    this.kickScheduled = true;
    setImmediate(() => {
      this.kickScheduled = false;
      this.kick();
    });
  }

  /** The live service dispatcher delivering this store's pages, if one is running (for the CLI). */
  static liveDispatcher(store: Store, now: number = Date.now()): string | null {
    return store.dispatchers(now - 3 * POLL_MS).find((d) => ownerAlive(d.owner))?.owner ?? null;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.abort = new AbortController();
    if (this.opts.announce) {
      this.store.heartbeat(this.opts.owner, Date.now());
      this.heartbeatTimer = setInterval(() => {
        try {
          this.store.heartbeat(this.opts.owner, Date.now());
        } catch (err) {
          this.logger.warn({ err: safeMessage(err) }, 'outbox heartbeat could not be written');
        }
      }, POLL_MS);
      this.heartbeatTimer.unref();
    }
    this.kick();
  }

  /**
   * Stops dispatching. A delivery already under way may finish (for a few seconds): cutting it off
   * after PagerDuty received it would only make the next process send it again.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.timer = null;
    this.heartbeatTimer = null;
    if (this.inFlight.size > 0) {
      const grace = new Promise<void>((resolve) => setTimeout(resolve, STOP_GRACE_MS).unref());
      await Promise.race([Promise.allSettled([...this.inFlight]), grace]);
    }
    this.abort.abort();
    await Promise.allSettled([...this.inFlight]);
    try {
      this.store.releaseClaims(this.opts.owner);
      if (this.opts.announce) this.store.dispatcherGone(this.opts.owner);
    } catch (err) {
      this.logger.warn({ err: safeMessage(err) }, 'outbox claims could not be released; they expire on their own');
    }
  }

  /**
   * Delivers everything that may be sent now and waits for the answers (tests, the CLI). Waits for
   * rate-limit tokens; does not wait out a backoff after failures.
   */
  async flush(): Promise<void> {
    for (;;) {
      this.kick();
      if (this.inFlight.size > 0) {
        await Promise.allSettled([...this.inFlight]);
        continue;
      }
      const wait = this.rateLimitedWaitMs();
      if (wait === null || this.stopped) return;
      await new Promise((r) => setTimeout(r, Math.max(wait, 5)));
    }
  }

  /** How long until a team that has due rows and is only short of tokens may send again; null when none is. */
  private rateLimitedWaitMs(): number | null {
    const now = Date.now();
    let wait: number | null = null;
    for (const team of this.store.dueTeams(now)) {
      const st = this.state(this.keyOf(team), now);
      if (st.pausedUntil > now || st.failures > 0) continue;
      if (st.tokens >= 1) return 0;
      const ms = Math.ceil((1 - st.tokens) / this.ratePerMs);
      wait = wait === null ? ms : Math.min(wait, ms);
    }
    return wait;
  }

  /**
   * The rate limit and the backoff belong to a routing key, not to a team: teams that share one
   * PagerDuty service share its 120 events a minute. (A team without a route is dead-lettered on its own.)
   */
  private keyOf(team: string): string {
    try {
      return routeFor(team as Team, this.config.routes);
    } catch {
      return `no-route:${team}`;
    }
  }

  private state(key: string, now: number): TeamState {
    let st = this.teams.get(key);
    if (!st) {
      st = { tokens: this.burst, refilledAt: now, pausedUntil: 0, failures: 0, lastFailureAt: 0, failingSince: null, failedAttempts: 0, lastError: '', lastSummaryAt: 0, inFlight: 0 };
      this.teams.set(key, st);
    } else {
      st.tokens = Math.min(this.burst, st.tokens + (now - st.refilledAt) * this.ratePerMs);
      st.refilledAt = now;
    }
    return st;
  }

  private kick(): void {
    if (this.stopped) return;
    if (this.filling) {
      this.again = true;
      return;
    }
    this.filling = true;
    try {
      do {
        this.again = false;
        this.fill();
      } while (this.again && !this.stopped);
    } catch (err) {
      this.logger.error({ err: safeMessage(err) }, 'outbox pass failed');
      this.schedule(POLL_MS);
    } finally {
      this.filling = false;
    }
  }

  /**
   * Claims and starts what each team may send now, then sleeps exactly until the next thing can
   * happen (a token, the end of a pause, a row coming due, a claim expiring) — never a busy loop
   * while a key is paused or out of tokens.
   */
  private fill(): void {
    const now = Date.now();
    let wake = POLL_MS;
    const concurrency = this.config.concurrency;
    for (const head of this.store.outboxHeads(now)) {
      const team = head.team;
      const st = this.state(this.keyOf(team), now);
      const notBefore = Math.max(st.pausedUntil, now);
      if (head.nextAt !== null) wake = Math.min(wake, Math.max(head.nextAt, notBefore) - now);
      if (head.due === 0) continue;
      if (st.pausedUntil > now) {
        wake = Math.min(wake, st.pausedUntil - now);
        continue;
      }
      // After a failure, one probe at a time until PagerDuty takes an event again.
      const room = concurrency - this.inFlight.size;
      const n = st.failures > 0 ? (st.inFlight === 0 ? 1 : 0) : Math.min(Math.floor(st.tokens), room, head.due);
      if (n <= 0) {
        if (st.tokens < 1 && st.failures === 0) wake = Math.min(wake, Math.ceil((1 - st.tokens) / this.ratePerMs));
        continue;
      }
      for (const row of this.store.claimOutbox(this.opts.owner, team, now, now + this.claimMs, n)) {
        st.tokens -= 1;
        st.inFlight += 1;
        const p: Promise<void> = this.deliver(row, st).finally(() => {
          st.inFlight -= 1;
          this.inFlight.delete(p);
          this.kick();
        });
        this.inFlight.add(p);
      }
    }
    // Work finishing (a delivery) kicks again by itself; otherwise sleep until the next thing is due.
    this.schedule(Math.max(wake, 1));
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.kick();
    }, delayMs);
    this.timer.unref();
  }

  /** Sends one claimed row and writes its outcome at once. Never rejects. */
  private async deliver(row: OutboxRow, st: TeamState): Promise<void> {
    const team = row.team as Team;
    let routingKey: string;
    try {
      routingKey = routeFor(team, this.config.routes);
    } catch (err) {
      // A configuration problem; retrying cannot fix it, and the page must not vanish silently.
      this.escalations.inc({ team, outcome: 'dead_letter' });
      this.logger.error({ team, dedupKey: row.dedupKey, err: (err as Error).message }, 'escalation cannot be delivered: dead letter');
      this.write(() => this.store.outboxDead(row.id, (err as Error).message));
      return;
    }
    const startedAt = Date.now();
    let result: Awaited<ReturnType<typeof sendEvent>>;
    try {
      result = await sendEvent({ ...(row.event as object), routing_key: routingKey } as never, {
        url: this.config.url,
        timeoutMs: this.config.timeoutMs,
        signal: this.abort.signal,
      });
    } catch (err) {
      result = { outcome: 'retry', message: safeMessage(err) };
    }
    const now = Date.now();
    if (result.outcome !== 'accepted' && this.abort.signal.aborted) {
      // Cut off by this dispatcher stopping, not by PagerDuty: give the row back untouched, count nothing.
      this.write(() => this.store.releaseClaim(row.id, this.opts.owner));
      return;
    }
    if (result.outcome === 'accepted') {
      this.escalations.inc({ team, outcome: 'delivered' });
      this.logger.info({ team, dedupKey: row.dedupKey, action: row.action, attempts: row.attempts + 1 }, 'escalation delivered');
      this.write(() => this.store.outboxDelivered(row.id));
      if (st.failures > 0 || st.failingSince !== null) this.recovered(team, st, now);
      return;
    }
    if (result.outcome === 'retry') {
      // Requests that were in flight together when the outage began are one failure, not eight.
      if (startedAt >= st.lastFailureAt) st.failures += 1;
      st.lastFailureAt = now;
      const maxMs = this.config.retry.maxMs;
      // Retry-After is honoured up to retry.maxMs: a proxy's "come back tomorrow" must not silence a team's pages for a day.
      const wait = Math.max(Math.min(result.retryAfterMs ?? 0, maxMs), backoffMs(st.failures, { baseMs: this.config.retry.baseMs, maxMs }));
      st.pausedUntil = Math.max(st.pausedUntil, now + wait);
      if (result.httpStatus === 429) st.tokens = 0;
      this.escalations.inc({ team, outcome: 'retried' });
      this.write(() => this.store.outboxRetry(row.id, st.pausedUntil, result.message, this.opts.owner));
      this.failed(team, st, now, result.httpStatus, result.message, wait);
      return;
    }
    this.escalations.inc({ team, outcome: 'dead_letter' });
    this.logger.error({ team, dedupKey: row.dedupKey, status: result.httpStatus, err: result.message }, 'PagerDuty rejected the event: dead letter');
    this.write(() => this.store.outboxDead(row.id, result.message, this.opts.owner));
    // PagerDuty answered: it is reachable, so a probe that meets a bad event ends the pause for the others.
    if (st.failures > 0 || st.failingSince !== null) this.recovered(team, st, now);
  }

  private write(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      // The store is gone (shutdown): the claim expires and the next dispatcher sends the row again.
      this.logger.error({ err: safeMessage(err) }, 'could not record a delivery outcome');
    }
  }

  private failed(team: string, st: TeamState, now: number, status: number | undefined, message: string, retryInMs: number): void {
    st.failedAttempts += 1;
    st.lastError = message;
    if (st.failingSince === null) {
      st.failingSince = now;
      st.lastSummaryAt = now;
      this.logger.warn({ team, status, err: message, retryInMs, pending: this.store.pendingForTeam(team).count }, 'PagerDuty delivery failing: pages wait in the outbox and are retried');
      return;
    }
    if (now - st.lastSummaryAt >= this.config.retry.summarySeconds * 1000) {
      st.lastSummaryAt = now;
      const pending = this.store.pendingForTeam(team);
      this.logger.warn(
        {
          team,
          failedAttempts: st.failedAttempts,
          failingForSeconds: Math.round((now - st.failingSince) / 1000),
          pending: pending.count,
          oldestQueuedAt: pending.oldest,
          lastError: st.lastError,
          retryInMs,
        },
        'PagerDuty delivery still failing',
      );
    }
  }

  private recovered(team: string, st: TeamState, now: number): void {
    const released = this.store.releaseBackoff(team, now);
    this.logger.info(
      { team, failedAttempts: st.failedAttempts, failedForSeconds: st.failingSince === null ? 0 : Math.round((now - st.failingSince) / 1000), released },
      'PagerDuty delivery recovered: waiting pages go out now',
    );
    st.failures = 0;
    st.failingSince = null;
    st.failedAttempts = 0;
    st.pausedUntil = 0;
  }
}
