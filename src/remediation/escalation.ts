/**
 * The runbook's "Escalation" table as data, and the pure functions that turn an escalation into a
 * PagerDuty Events API v2 event: which routing key (per team, from configuration), which dedup key
 * (stable per alert, so repeats and the later resolve land on the same PagerDuty alert), and what
 * the page says (what dbpilot saw, tried and verified, with links to the dashboard and the guide).
 *
 * Nothing here does I/O; the outbox delivers the events with integrations/pagerduty.ts.
 */
import { createHash } from 'node:crypto';
import { DbpilotError } from '../errors.js';
import {
  DEDUP_KEY_MAX_LENGTH,
  ROUTING_KEY_LENGTH,
  SUMMARY_MAX_LENGTH,
  truncate,
  type PagerDutyEvent,
  type PagerDutyLink,
  type PagerDutyPayload,
  type Severity,
} from '../integrations/pagerduty.js';

/** The escalation teams; also the values of the `team` label on every alert rule. */
export const TEAMS = ['lead-dba', 'em-dba', 'oncall-backend', 'devops'] as const;
export type Team = (typeof TEAMS)[number];

/** Who each team's PagerDuty service pages, in the runbook's words. */
export const TEAM_PAGES: Readonly<Record<Team, string>> = {
  'lead-dba': 'Lead DBA / AWS Support',
  'em-dba': 'Engineering Manager + DBA immediately',
  'oncall-backend': 'On-call backend engineer',
  devops: 'DevOps engineer',
};

export interface EscalationRule {
  /** The situation, as the runbook or DESIGN.md names it. */
  readonly issue: string;
  readonly team: Team;
  /** Who is paged, as the runbook says it. */
  readonly escalateTo: string;
  /** `runbook`: a row of the runbook's Escalation table; `design`: a scenario DESIGN.md routes. */
  readonly from: 'runbook' | 'design';
  /** Alert rules (alerts/) whose escalation this row covers. */
  readonly alertnames: readonly string[];
}

/**
 * The first four rows are the runbook's Escalation table, word for word; the rest are the scenarios
 * DESIGN.md assigns a team (slow queries, Prisma migrations, Redis, backups, dbpilot itself).
 */
export const ESCALATION_TABLE: readonly EscalationRule[] = [
  {
    issue: 'Primary failure unresolvable',
    team: 'lead-dba',
    escalateTo: 'Lead DBA / AWS Support',
    from: 'runbook',
    alertnames: ['PostgresPrimaryDown', 'PostgresPrimaryDownUnresolved'],
  },
  {
    issue: 'Data corruption suspected',
    team: 'em-dba',
    escalateTo: 'Engineering Manager + DBA immediately',
    from: 'runbook',
    alertnames: ['PostgresDataCorruption'],
  },
  {
    issue: 'Replication lag > 5 min',
    team: 'oncall-backend',
    escalateTo: 'On-call backend engineer',
    from: 'runbook',
    alertnames: ['PostgresReplicationLagHigh'],
  },
  {
    issue: 'Disk > 90% full',
    team: 'devops',
    escalateTo: 'DevOps engineer',
    from: 'runbook',
    alertnames: ['PostgresDiskAlmostFull'],
  },
  {
    issue: 'Two primaries (split brain)',
    team: 'em-dba',
    escalateTo: 'Engineering Manager + DBA immediately',
    from: 'design',
    alertnames: ['PostgresSplitBrain'],
  },
  {
    issue: 'Slow queries / high latency',
    team: 'oncall-backend',
    escalateTo: 'On-call backend engineer',
    from: 'design',
    alertnames: ['PostgresLongRunningQueries'],
  },
  {
    issue: 'Prisma migration failure',
    team: 'oncall-backend',
    escalateTo: 'On-call backend engineer',
    from: 'design',
    alertnames: ['PrismaMigrationFailed'],
  },
  {
    issue: 'Redis cache failure',
    team: 'devops',
    escalateTo: 'DevOps engineer',
    from: 'design',
    alertnames: ['RedisDown', 'RedisRejectedConnections'],
  },
  {
    issue: 'Backups stale or dbpilot down',
    team: 'devops',
    escalateTo: 'DevOps engineer',
    from: 'design',
    alertnames: ['RdsSnapshotStale', 'DbpilotDown'],
  },
];

export function isTeam(value: unknown): value is Team {
  return typeof value === 'string' && (TEAMS as readonly string[]).includes(value);
}

/** The team an alert escalates to per the table, or undefined for an alert the table does not know. */
export function teamForAlert(alertname: string): Team | undefined {
  return ESCALATION_TABLE.find((r) => r.alertnames.includes(alertname))?.team;
}

/** Shows an untrusted label value in an error without flooding it. */
function show(value: unknown): string {
  return JSON.stringify(truncate(String(value), 64));
}

/**
 * The routing key configured for `team` (`pagerduty.routes.<team>`). Throws a DbpilotError that
 * names the team — never a key — when the team is unknown, the route is missing or blank (an unset
 * `${PD_KEY_…}` variable), or the key is not a 32-character integration key.
 */
export function routeFor(team: Team, routes: Readonly<Partial<Record<Team, string | undefined>>>): string {
  if (!isTeam(team)) {
    throw new DbpilotError(
      'DBPILOT_ESCALATION_UNKNOWN_TEAM',
      `unknown escalation team ${show(team)}; expected one of ${TEAMS.join(', ')}`,
    );
  }
  const key = Object.hasOwn(routes, team) ? routes[team] : undefined;
  if (typeof key !== 'string' || key.trim() === '') {
    throw new DbpilotError(
      'DBPILOT_ESCALATION_NO_ROUTE',
      `no PagerDuty routing key configured for team ${team} (pagerduty.routes.${team}); cannot page ${TEAM_PAGES[team]}`,
    );
  }
  const trimmed = key.trim();
  if (trimmed.length !== ROUTING_KEY_LENGTH || /\s/.test(trimmed)) {
    throw new DbpilotError(
      'DBPILOT_ESCALATION_BAD_ROUTE',
      `the PagerDuty routing key for team ${team} (pagerduty.routes.${team}) is not a ${ROUTING_KEY_LENGTH}-character integration key`,
    );
  }
  return trimmed;
}

/**
 * A stable dedup key `dbpilot/<alertname>/<fingerprint or target>`, at most 255 characters.
 * Control characters become `_`. When the plain key would be too long, it is cut and ends with a
 * hash of the whole, so distinct long inputs keep distinct keys and the same input always maps to
 * the same key.
 */
export function dedupKeyFor(alertname: string, fingerprintOrTarget: string): string {
  const name = alertname.trim();
  const target = fingerprintOrTarget.trim();
  if (name === '') throw new DbpilotError('DBPILOT_ESCALATION_BAD_DEDUP', 'dedup key needs an alertname');
  if (target === '') {
    throw new DbpilotError('DBPILOT_ESCALATION_BAD_DEDUP', `dedup key for ${show(name)} needs a fingerprint or target`);
  }
  const clean = (s: string) => s.replace(/\p{Cc}/gu, '_');
  const full = `dbpilot/${clean(name)}/${clean(target)}`;
  if (full.length <= DEDUP_KEY_MAX_LENGTH) return full;
  const hash = createHash('sha256').update(full).digest('hex').slice(0, 16);
  const suffix = `~${hash}`;
  let head = full.slice(0, DEDUP_KEY_MAX_LENGTH - suffix.length);
  const last = head.charCodeAt(head.length - 1);
  if (last >= 0xd800 && last <= 0xdbff) head = head.slice(0, -1); // do not split a surrogate pair
  return `${head}${suffix}`;
}

/** What the page tells the responder: what dbpilot saw, what it tried, what it verified. */
export interface EscalationDetails {
  seen: string | readonly string[];
  tried: string | readonly string[];
  verified: string | readonly string[];
  /** Anything else worth showing (alert labels, run id, …). Must hold no secret. */
  [extra: string]: unknown;
}

export interface EscalationInput {
  team: Team;
  routingKey: string;
  dedupKey: string;
  summary: string;
  /** The affected system: `host:port` of the PostgreSQL instance, the Redis address, … */
  source: string;
  severity: Severity;
  details: EscalationDetails;
  /** Grafana dashboard, operator guide / runbook section, the dbpilot run. */
  links?: readonly PagerDutyLink[];
  /** E.g. `postgresql`, `redis`. */
  component?: string;
  /** E.g. the alertname or handler. */
  class?: string;
  /** ISO 8601; PagerDuty uses the receive time when absent. */
  timestamp?: string;
  /** A link back to dbpilot (shown as the event's client). */
  clientUrl?: string;
}

/** A trigger event paging `team`, with the runbook's escalation target in the details. */
export function escalationEvent(input: EscalationInput): PagerDutyEvent {
  const { team, details } = input;
  const payload: PagerDutyPayload = {
    summary: truncate(input.summary, SUMMARY_MAX_LENGTH),
    source: input.source,
    severity: input.severity,
    group: team,
    custom_details: { ...details, team, escalate_to: TEAM_PAGES[team] },
  };
  if (input.component !== undefined) payload.component = input.component;
  if (input.class !== undefined) payload.class = input.class;
  if (input.timestamp !== undefined) payload.timestamp = input.timestamp;
  const event: PagerDutyEvent = {
    routing_key: input.routingKey,
    event_action: 'trigger',
    dedup_key: input.dedupKey,
    payload,
    client: 'dbpilot',
  };
  if (input.links && input.links.length > 0) event.links = input.links.map((l) => ({ ...l }));
  if (input.clientUrl !== undefined) event.client_url = input.clientUrl;
  return event;
}

/** Resolves the PagerDuty alert opened under `dedupKey` (sent when the alert recovers). */
export function resolveEvent(routingKey: string, dedupKey: string): PagerDutyEvent {
  return { routing_key: routingKey, event_action: 'resolve', dedup_key: dedupKey };
}
