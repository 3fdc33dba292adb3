import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { DbpilotError } from '../../src/errors.js';
import { validateEvent } from '../support/pagerduty-standin.js';
import {
  dedupKeyFor,
  ESCALATION_TABLE,
  escalationEvent,
  isTeam,
  resolveEvent,
  routeFor,
  TEAM_PAGES,
  TEAMS,
  teamForAlert,
  type Team,
} from '../../src/remediation/escalation.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** The runbook's "Escalation" table (database-failure-runbook.md), and the team each row pages. */
const RUNBOOK_ROWS: Array<[issue: string, escalateTo: string, team: Team]> = [
  ['Primary failure unresolvable', 'Lead DBA / AWS Support', 'lead-dba'],
  ['Data corruption suspected', 'Engineering Manager + DBA immediately', 'em-dba'],
  ['Replication lag > 5 min', 'On-call backend engineer', 'oncall-backend'],
  ['Disk > 90% full', 'DevOps engineer', 'devops'],
];

/** DESIGN.md's alert table: alert → team. */
const ALERT_TEAMS: Array<[alertname: string, team: Team]> = [
  ['PostgresPrimaryDown', 'lead-dba'],
  ['PostgresPrimaryDownUnresolved', 'lead-dba'],
  ['PostgresReplicationLagHigh', 'oncall-backend'],
  ['PostgresLongRunningQueries', 'oncall-backend'],
  ['PostgresDiskAlmostFull', 'devops'],
  ['PrismaMigrationFailed', 'oncall-backend'],
  ['PostgresDataCorruption', 'em-dba'],
  ['RedisDown', 'devops'],
  ['RedisRejectedConnections', 'devops'],
  ['RdsSnapshotStale', 'devops'],
  ['DbpilotDown', 'devops'],
];

const KEYS: Record<Team, string> = {
  'lead-dba': 'LEADDBA0000000000000000000000001',
  'em-dba': 'EMDBA000000000000000000000000002',
  'oncall-backend': 'ONCALL00000000000000000000000003',
  devops: 'DEVOPS00000000000000000000000004',
};

/** The Escalation table of the runbook, read from the copy in docs/runbook/ (the repository stands alone). */
function runbookTable(): Array<[string, string]> {
  const text = readFileSync(resolve(root, 'docs/runbook/database-failure-runbook.md'), 'utf8');
  const section = text.split(/^## Escalation\s*$/m)[1]?.split(/^## /m)[0] ?? '';
  return section
    .split('\n')
    .filter((l) => l.trim().startsWith('|'))
    .map((l) => l.split('|').slice(1, -1).map((c) => c.trim()))
    .filter((cells) => cells.length === 2 && !/^-+$/.test(cells[0]!) && cells[0] !== 'Issue')
    .map((cells) => [cells[0]!, cells[1]!] as [string, string]);
}

describe('the escalation table', () => {
  it('has the four teams of the alert rules', () => {
    expect([...TEAMS].sort()).toEqual(['devops', 'em-dba', 'lead-dba', 'oncall-backend']);
    for (const t of TEAMS) expect(TEAM_PAGES[t]).toBeTruthy();
    expect(isTeam('devops')).toBe(true);
    expect(isTeam('dba')).toBe(false);
    expect(isTeam(undefined)).toBe(false);
  });

  it.each(RUNBOOK_ROWS)('runbook row "%s" → %s → team %s', (issue, escalateTo, team) => {
    const rule = ESCALATION_TABLE.find((r) => r.issue === issue);
    expect(rule).toBeDefined();
    expect(rule!.from).toBe('runbook');
    expect(rule!.escalateTo).toBe(escalateTo);
    expect(rule!.team).toBe(team);
    expect(TEAM_PAGES[team]).toBe(escalateTo);
  });

  it('holds exactly the runbook rows as its runbook rows', () => {
    const fromRunbook = ESCALATION_TABLE.filter((r) => r.from === 'runbook').map((r) => [r.issue, r.escalateTo, r.team]);
    expect(fromRunbook).toEqual(RUNBOOK_ROWS);
  });

  it('matches the Escalation table in the runbook file word for word', () => {
    expect(runbookTable()).toEqual(RUNBOOK_ROWS.map(([issue, to]) => [issue, to]));
  });

  it.each(ALERT_TEAMS)('alert %s escalates to %s', (alertname, team) => {
    expect(teamForAlert(alertname)).toBe(team);
  });

  it('routes slow queries and Prisma migrations to on-call backend, Redis to DevOps', () => {
    const teamOf = (issue: RegExp) => ESCALATION_TABLE.find((r) => issue.test(r.issue))?.team;
    expect(teamOf(/slow queries/i)).toBe('oncall-backend');
    expect(teamOf(/prisma/i)).toBe('oncall-backend');
    expect(teamOf(/redis/i)).toBe('devops');
  });

  it('gives every alert to at most one row, and only known teams', () => {
    const names = ESCALATION_TABLE.flatMap((r) => r.alertnames);
    expect(new Set(names).size).toBe(names.length);
    for (const r of ESCALATION_TABLE) expect(isTeam(r.team)).toBe(true);
    expect(teamForAlert('SomethingElse')).toBeUndefined();
  });
});

describe('routeFor', () => {
  it.each(TEAMS.map((t) => [t]))('returns the key configured for %s', (team) => {
    expect(routeFor(team, KEYS)).toBe(KEYS[team]);
  });

  it('trims whitespace around a configured key', () => {
    expect(routeFor('devops', { ...KEYS, devops: `  ${KEYS.devops}\n` })).toBe(KEYS.devops);
  });

  const broken: Array<[string, Team, Partial<Record<Team, string | undefined>>, string]> = [
    ['missing', 'em-dba', { ...KEYS, 'em-dba': undefined }, 'DBPILOT_ESCALATION_NO_ROUTE'],
    ['absent', 'lead-dba', { devops: KEYS.devops }, 'DBPILOT_ESCALATION_NO_ROUTE'],
    ['empty (unset env var)', 'oncall-backend', { ...KEYS, 'oncall-backend': '' }, 'DBPILOT_ESCALATION_NO_ROUTE'],
    ['blank', 'devops', { ...KEYS, devops: '   ' }, 'DBPILOT_ESCALATION_NO_ROUTE'],
    ['the wrong length', 'devops', { ...KEYS, devops: 'SHORTKEY123' }, 'DBPILOT_ESCALATION_BAD_ROUTE'],
    ['containing spaces', 'lead-dba', { ...KEYS, 'lead-dba': 'LEADDBA000000000 000000000000001' }, 'DBPILOT_ESCALATION_BAD_ROUTE'],
  ];

  it.each(broken)('a route that is %s gives an error naming the team and no key', (_what, team, routes, code) => {
    let err: unknown;
    try {
      routeFor(team, routes);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DbpilotError);
    const e = err as DbpilotError;
    expect(e.code).toBe(code);
    expect(e.message).toContain(team);
    expect(e.message).toContain(`pagerduty.routes.${team}`);
    const shown = `${e.message} ${JSON.stringify(e)} ${String(e.stack)}`;
    for (const key of [...Object.values(KEYS), ...Object.values(routes)]) {
      if (key && key.trim()) expect(shown).not.toContain(key.trim());
    }
  });

  it('an unknown team (a bad alert label) gives a clear error', () => {
    expect(() => routeFor('dba' as Team, KEYS)).toThrow(/unknown escalation team "dba"/);
    expect(() => routeFor('__proto__' as Team, KEYS)).toThrow(DbpilotError);
  });

  it('does not read inherited properties as routes', () => {
    const routes = Object.create({ devops: KEYS.devops }) as Record<Team, string | undefined>;
    expect(() => routeFor('devops', routes)).toThrow(/no PagerDuty routing key configured for team devops/);
  });
});

describe('dedupKeyFor', () => {
  it('is dbpilot/<alertname>/<fingerprint>, the same every time', () => {
    expect(dedupKeyFor('PostgresPrimaryDown', 'a1b2c3d4e5f60718')).toBe('dbpilot/PostgresPrimaryDown/a1b2c3d4e5f60718');
    expect(dedupKeyFor('RedisDown', 'redis-master:6379')).toBe(dedupKeyFor('RedisDown', 'redis-master:6379'));
    expect(dedupKeyFor('A', 'x')).not.toBe(dedupKeyFor('B', 'x'));
  });

  it('stays within 255 characters, stable and distinct for long targets', () => {
    const a = dedupKeyFor('PostgresLongRunningQueries', `${'t'.repeat(400)}a`);
    const b = dedupKeyFor('PostgresLongRunningQueries', `${'t'.repeat(400)}b`);
    expect(a.length).toBeLessThanOrEqual(255);
    expect(b.length).toBeLessThanOrEqual(255);
    expect(a).not.toBe(b);
    expect(a.startsWith('dbpilot/PostgresLongRunningQueries/ttt')).toBe(true);
    expect(dedupKeyFor('PostgresLongRunningQueries', `${'t'.repeat(400)}a`)).toBe(a);
    const astral = dedupKeyFor('X', '😀'.repeat(300));
    expect(astral.length).toBeLessThanOrEqual(255);
    expect(astral).not.toMatch(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])/);
  });

  it('replaces control characters and refuses empty parts', () => {
    expect(dedupKeyFor('A', 'x\ny')).toBe('dbpilot/A/x_y');
    expect(() => dedupKeyFor('', 'x')).toThrow(DbpilotError);
    expect(() => dedupKeyFor('A', '  ')).toThrow(/needs a fingerprint or target/);
  });
});

describe('escalationEvent / resolveEvent', () => {
  const input = {
    team: 'lead-dba' as const,
    routingKey: KEYS['lead-dba'],
    dedupKey: dedupKeyFor('PostgresPrimaryDown', 'fp1'),
    summary: 'PostgreSQL primary 10.0.0.5:5432 unreachable; failover refused: replica lag 5 MB > 1 MB',
    source: '10.0.0.5:5432',
    severity: 'critical' as const,
    details: {
      seen: ['pg_up{role="primary"} == 0 for 3 probes'],
      tried: 'none: promoting a lagging replica is never automatic',
      verified: 'replica 10.0.0.6:5432 lag 5242880 bytes',
      run: 42,
    },
    links: [
      { href: 'https://grafana.example/d/database-dashboard', text: 'Grafana: database-dashboard' },
      { href: 'https://docs.example/runbook#scenario-1', text: 'Operator guide' },
    ],
    component: 'postgresql',
    class: 'PostgresPrimaryDown',
    timestamp: '2025-01-01T03:00:00.000Z',
  };

  it('builds a trigger event the Events API accepts', () => {
    const ev = escalationEvent(input);
    expect(ev).toMatchObject({
      routing_key: KEYS['lead-dba'],
      event_action: 'trigger',
      dedup_key: 'dbpilot/PostgresPrimaryDown/fp1',
      client: 'dbpilot',
      payload: {
        summary: input.summary,
        source: '10.0.0.5:5432',
        severity: 'critical',
        component: 'postgresql',
        class: 'PostgresPrimaryDown',
        group: 'lead-dba',
        timestamp: input.timestamp,
        custom_details: {
          seen: input.details.seen,
          tried: input.details.tried,
          verified: input.details.verified,
          run: 42,
          team: 'lead-dba',
          escalate_to: 'Lead DBA / AWS Support',
        },
      },
      links: input.links,
    });
    expect(validateEvent(ev)).toEqual([]);
  });

  it('omits what was not given and truncates a long summary', () => {
    const { links: _l, component: _c, class: _k, timestamp: _t, ...minimal } = input;
    const ev = escalationEvent({ ...minimal, summary: 's'.repeat(5000) });
    expect(ev.payload!.summary.length).toBe(1024);
    expect(ev).not.toHaveProperty('links');
    expect(ev.payload).not.toHaveProperty('timestamp');
    expect(ev.payload).not.toHaveProperty('component');
    expect(validateEvent(ev)).toEqual([]);
  });

  it('resolveEvent resolves the same dedup key', () => {
    const ev = resolveEvent(KEYS.devops, 'dbpilot/RedisDown/fp9');
    expect(ev).toEqual({ routing_key: KEYS.devops, event_action: 'resolve', dedup_key: 'dbpilot/RedisDown/fp9' });
    expect(validateEvent(ev)).toEqual([]);
  });
});
