/**
 * What a grouped page says. Alerts dbpilot only escalates — no handler for them, their handler is
 * off, or dbpilot refused them — are paged per Alertmanager group and team, as one PagerDuty alert
 * listing them, under a dedup key stable for that group: a storm of 5,000 alerts is one readable
 * page per team instead of 5,000, and it resolves when the last alert of the group resolves.
 *
 * Pure: the engine records the members and the outbox delivers the page.
 */
import { createHash } from 'node:crypto';
import type { Severity } from '../integrations/pagerduty.js';
import type { PageSummary } from '../store/store.js';
import type { Team } from './escalation.js';
import type { EscalationRequest } from './outbox.js';

/** Alerts listed in a page with their labels; the rest are counted (PagerDuty refuses events over 512 KB). */
export const LISTED = 50;
/** Distinct reasons a page gives. */
export const REASONS = 10;

const RANK: Record<Severity, number> = { info: 0, warning: 1, error: 2, critical: 3 };

/** `dbpilot/group/<team>/<hash of the group key>`: the same Alertmanager group always pages under the same key. */
export function groupDedupKey(team: Team, groupKey: string): string {
  return `dbpilot/group/${team}/${createHash('sha256').update(groupKey).digest('hex').slice(0, 24)}`;
}

export function groupPage(team: Team, groupKey: string, open: PageSummary, severityOf: (labels: Record<string, string>) => Severity): EscalationRequest {
  const total = open.total;
  const byName = [...open.byAlertname].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const names = byName
    .slice(0, 5)
    .map(([n, c]) => (c > 1 ? `${n} ×${c}` : n))
    .join(', ');
  const more = byName.length > 5 ? ` and ${byName.length - 5} more alert names` : '';
  let severity: Severity = 'info';
  for (const s of open.severities) {
    const mapped = severityOf(s === '' ? {} : { severity: s });
    if (RANK[mapped] > RANK[severity]) severity = mapped;
  }
  const listed = open.listed.slice(0, LISTED).map((m) => ({ alertname: m.alertname, fingerprint: m.fingerprint, startsAt: m.startsAt, run: m.runId, reason: m.reason, labels: m.labels }));
  return {
    team,
    dedupKey: groupDedupKey(team, groupKey),
    summary: `[dbpilot] ${total} alert${total === 1 ? '' : 's'} need a human: ${names}${more}`,
    severity,
    component: 'dbpilot',
    class: byName[0]?.[0] ?? 'alerts',
    details: {
      seen: `${total} firing alert(s) of Alertmanager group ${groupKey}`,
      tried: 'nothing: dbpilot does not act on these alerts',
      verified: 'nothing',
      why: open.reasons.slice(0, REASONS),
      alerts: listed,
      ...(total > LISTED ? { not_listed: total - LISTED } : {}),
      group_key: groupKey,
    },
  };
}
