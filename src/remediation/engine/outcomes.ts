/**
 * How a run ends and what people are told: its final status and counters, the page it calls for
 * (what dbpilot saw, tried and verified, with the handler's diagnostics), the grouped page of alerts
 * dbpilot only escalates, the low-urgency note of a success that still leaves work for a human, and
 * the resolve when nothing is left to do.
 */
import { safeMessage } from '../../errors.js';
import type { RunRow } from '../../store/store.js';
import type { Team } from '../escalation.js';
import type { AlertInfo, Handler } from '../handler.js';
import { LISTED, REASONS, groupDedupKey, groupPage } from '../pages.js';
import type { EngineCore } from './core.js';

/** How long a page waits for the handler's diagnostics before it goes without them. */
const DIAGNOSTICS_BUDGET_MS = 5000;

export type FinalStatus = 'succeeded' | 'failed' | 'escalated' | 'dry_run' | 'skipped';

/** An alert dbpilot only escalates, waiting for its batch's grouped page. */
interface GroupedEscalation {
  run: RunRow;
  alert: AlertInfo;
  team: Team;
  reason: string;
}

export interface PlannedRun {
  summary?: string;
  data: unknown;
  escalateAfter: string | null;
  notifyOnSuccess?: { severity: 'info' | 'warning'; leftToDo: string[] } | null;
}

export class Outcomes {
  /** While a group commit admits its alerts: the escalate-only ones, paged per group and team at its end. */
  grouped: GroupedEscalation[] | null = null;

  constructor(private readonly core: EngineCore) {}

  /**
   * Closes a run: the page it calls for, then its final status and metrics, or the resolve of an
   * earlier page. The page is queued before the status becomes final: a crash in between leaves the
   * run in flight, and the next process pages about it — a final run without its page cannot happen.
   */
  async finish(run: RunRow, handler: Handler, a: AlertInfo, status: FinalStatus, reason: string, data: unknown, escalation: Record<string, unknown> | null): Promise<RunRow | null> {
    const store = this.core.store;
    const open = ['planning', 'awaiting_approval', 'running'] as const;
    const stillOpen = () => {
      const cur = store.getRun(run.id);
      return cur !== null && (open as readonly string[]).includes(cur.status);
    };
    // A run cancelled meanwhile (its alert resolved while it was planning) keeps that outcome and pages nobody.
    if (!stillOpen()) return store.getRun(run.id);
    const planned = (store.getRun(run.id)?.plan ?? null) as PlannedRun | null;
    const notify = status === 'succeeded' && !escalation ? (planned?.notifyOnSuccess ?? null) : null;
    if (escalation) {
      const diagnostics = await this.diagnosticsFor(handler, data, a);
      if (!stillOpen()) return store.getRun(run.id);
      this.escalate(run, a, handler, { ...escalation, ...(diagnostics ? { diagnostics } : {}) }, reason, status);
    } else if (notify) {
      // Done, and the team is told what was done and what is left to do by hand, at low urgency, with what the handler saw.
      const diagnostics = await this.diagnosticsFor(handler, data, a);
      if (!stillOpen()) return store.getRun(run.id);
      this.escalate(
        run,
        a,
        handler,
        { seen: planned?.summary ?? a.alertname, tried: this.stepLines(run.id), verified: 'every step done and checked', left_to_do: notify.leftToDo, ...(diagnostics ? { diagnostics } : {}) },
        `done: ${planned?.summary ?? reason}`,
        status,
        notify.severity,
      );
    }
    if (!store.setRunStatus(run.id, status, { reason, from: [...open] })) {
      // Cancelled while the page was being prepared: the alert has resolved, so resolve the page too.
      // (Another process that finished the run first keeps its page.)
      if ((escalation || notify) && store.getRun(run.id)?.status === 'cancelled') this.resolvePages(a, handler);
      return store.getRun(run.id);
    }
    this.core.logger.info({ run: run.id, handler: handler.name, status, reason }, 'remediation run finished');
    this.core.count(handler.name, status);
    // Nothing left to tell: resolve what was paged — also the note just sent, if the alert resolved while the run acted.
    const resolved = store.getRun(run.id)?.alertResolvedAt !== null;
    if ((!escalation && !notify && status === 'succeeded') || (notify && resolved)) this.resolvePages(a, handler);
    return store.getRun(run.id);
  }

  /** Resolves what was paged about an alert: its team's page and those of the handler's alsoPage teams. */
  resolvePages(a: AlertInfo, handler: Handler | null): void {
    for (const p of this.core.pagesOf(a, handler)) this.core.o.outbox.resolve(p.dedupKey);
  }

  /** Each step of a run with its status, duration and check, for a page. */
  stepLines(runId: string): string[] {
    return this.core.store.steps(runId).map((s) => {
      const ms = s.startedAt && s.finishedAt ? Date.parse(s.finishedAt) - Date.parse(s.startedAt) : null;
      const check = (s.check as { detail?: string } | null)?.detail;
      return `${s.name}: ${s.status}${ms === null ? '' : ` in ${ms} ms`}${check ? ` — ${check}` : ''}`;
    });
  }

  /** The handler's diagnostics for a page, bounded in time: the server they come from may be the one in trouble. */
  async diagnosticsFor(handler: Handler, data: unknown, a: AlertInfo): Promise<Record<string, unknown> | null> {
    if (!handler.diagnostics) return null;
    let timer: NodeJS.Timeout | undefined;
    try {
      const d = await Promise.race([
        handler.diagnostics(data as never, a, this.core.o.ctx),
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

  escalate(run: RunRow, a: AlertInfo, handler: Handler | null, details: Record<string, unknown>, reason: string, status: string, severity = this.core.severityOf(a.labels)): void {
    const pages = this.core.pagesOf(a, handler);
    for (const { team, dedupKey } of pages) {
      this.core.o.outbox.trigger({
        team,
        dedupKey,
        summary: `[dbpilot] ${a.alertname}${run.target !== '-' ? ` on ${run.target}` : ''}: ${reason || status}`,
        severity,
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
          ...(pages.length > 1 ? { also_paged: pages.filter((p) => p.team !== team).map((p) => p.team) } : {}),
        },
      });
    }
  }

  /**
   * A page for an alert dbpilot only escalates. Inside a group commit it joins its Alertmanager
   * group's page (one per group and team, see pages.ts); alone (a test, the CLI) it is paged by itself.
   */
  escalateOnly(run: RunRow, a: AlertInfo, handler: Handler | null, reason: string, tried: string): void {
    if (this.grouped && a.groupKey) {
      for (const { team } of this.core.pagesOf(a, handler)) this.grouped.push({ run, alert: a, team, reason });
      return;
    }
    this.escalate(run, a, handler, { seen: a.annotations.summary ?? a.alertname, tried, verified: 'nothing' }, reason, run.status);
  }

  pageGroups(list: GroupedEscalation[]): void {
    const store = this.core.store;
    const groups = new Map<string, GroupedEscalation[]>();
    for (const g of list) {
      const k = `${g.team}\0${g.alert.groupKey}`;
      groups.set(k, [...(groups.get(k) ?? []), g]);
    }
    for (const members of groups.values()) {
      const { team, alert } = members[0]!;
      const groupKey = alert.groupKey!;
      const dedupKey = groupDedupKey(team, groupKey);
      store.addPageMembers(
        dedupKey,
        members.map((m) => ({ fingerprint: m.alert.fingerprint, startsAt: m.alert.startsAt, alertname: m.alert.alertname, runId: m.run.id, reason: m.reason, labels: m.alert.labels })),
      );
      this.core.o.outbox.trigger(groupPage(team, groupKey, store.openPageSummary(dedupKey, LISTED, REASONS), (labels) => this.core.severityOf(labels)));
    }
  }
}
