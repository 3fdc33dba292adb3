/**
 * `dbpilot drill` through the real CLI (a spawned `node bin/dbpilot.js drill …`): each drill of this
 * build runs end to end on its own sandbox, recovery is asserted from the JSON the drill prints (which
 * it read from the world), and afterwards nothing of the sandbox is left: no process (every process
 * that carries the drill's TMPDIR in its environment, and every descendant seen while it ran), no
 * listening port, no temp dir. SIGINT in the middle of a drill cleans up as well.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { drill, expectNothingLeft, jsonDrill, leftovers, portOf, tmps } from './support.js';

describe('dbpilot drill (the real CLI on its own sandbox)', () => {
  it('primary-failure: the replica is promoted, accepts a write, the Secret names it; the run went through every failover step; nothing left behind', async () => {
    const { r, t } = await jsonDrill('primary-failure');
    expect(t.steps.map((s) => [s.name, s.status])).toEqual(
      ['recordIntent', 'fenceOldPrimary', 'promoteReplica', 'labelNewPrimary', 'repointSecrets', 'restartServices', 'waitForRollouts', 'verifyServices', 'completeIntent'].map((n) => [n, 'done']),
    );
    const write = t.checks.find((c) => c.name === 'promoted replica accepts a write')!;
    expect(write.detail).toMatch(/^127\.0\.0\.1:\d+: pg_is_in_recovery\(\) = false, wrote in transaction \d+$/);
    const secret = t.checks.find((c) => c.name === 'secret lomash-wood-secrets points at it')!;
    // The Secret names the promoted replica, which is not the primary the drill killed.
    expect(portOf(secret.detail)).toBe(portOf(write.detail));
    const primaryPort = Number(/PostgreSQL primary 127\.0\.0\.1:(\d+)/.exec(r.stderr)?.[1]);
    expect(primaryPort).toBeGreaterThan(0);
    expect(portOf(write.detail)).not.toBe(primaryPort);
    // lead-dba was told.
    expect(t.pages).toBeGreaterThanOrEqual(1);
  });

  it('slow-query: the application role’s pg_sleep is cancelled and gone; --report writes the run’s timeline page; nothing left behind', async () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'dbpilot-drill-report-'));
    tmps.push(out);
    const file = path.join(out, 'slow-query.html');
    const { r, j, t } = await jsonDrill('slow-query', ['--report', file]);
    expect(j.reports).toEqual([file]);
    expect(r.stderr).toContain(`report: ${file}`);
    const page = fs.readFileSync(file, 'utf8');
    // The timeline of the drill's own run: its id, and one bar per step it ran, with that step's status.
    expect(page).toContain(t.runId);
    expect([...page.matchAll(/<rect class="bar status-(\w+)[^"]*" data-step="(\d+)"/g)].map((m) => [Number(m[2]), m[1]])).toEqual(t.steps.map((s, i) => [i, s.status]));
    expect(t.steps.map((s) => s.name)).toEqual(['cancelBackends', 'terminateBackends']);
    expect(t.checks.find((c) => c.name === 'its client saw it stopped')!.detail).toMatch(/: (cancelled|terminated)$/);
    expect(t.checks.find((c) => c.name === 'the slow query is gone')!.detail).toMatch(/^backend \d+ no longer runs pg_sleep$/);
  });

  it('redis-failure: the StatefulSet restart is requested, Redis comes back and answers PING; nothing left behind', async () => {
    const { t } = await jsonDrill('redis-failure');
    expect(t.steps.map((s) => [s.name, s.status])).toEqual([
      ['restartRedis', 'done'],
      ['waitForRedisRollout', 'done'],
      ['verifyRedisStatus', 'done'],
    ]);
    expect(t.checks.find((c) => c.name === 'Redis answers PING')!.detail).toMatch(/answered PONG on a new connection$/);
    expect(t.checks.find((c) => c.name === 'statefulset/redis restart requested')!.detail).toMatch(/^restartedAt \d{4}-\d\d-\d\dT/);
  });

  it('--trials 2 prints the table with median and worst per row, each trial on a fresh sandbox', async () => {
    const r = await drill(['redis-failure', '--trials', '2']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^drill redis-failure: 2 trials, recovered\n/);
    expect(r.stdout).toMatch(/│\s+│ median\s+│ worst\s+│ passed │/);
    for (const row of ['detection \\(alert → run created\\)', 'step restartRedis', 'step waitForRedisRollout', 'step verifyRedisStatus', 'total time to recover', 'check: Redis answers PING', 'every check passed']) {
      expect(r.stdout).toMatch(new RegExp(`│ ${row}[^\\n]*│ 2/2\\s+│`));
    }
    expect(r.stderr.match(/^— trial \d of 2$/gm)).toEqual(['— trial 1 of 2', '— trial 2 of 2']);
    // Two sandboxes: two different Redis ports, both closed now.
    const ports = [...r.stderr.matchAll(/Redis 127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]));
    expect(ports).toHaveLength(2);
    await expectNothingLeft(r, ports);
  });

  it('SIGINT in the middle of a failover drill stops everything and removes the temp dirs (exit 130)', async () => {
    const r = await drill(['primary-failure'], { interruptWhen: /^step promoteReplica/m });
    expect(r.code).toBe(130);
    expect(r.stderr).toContain('SIGINT: stopping the sandbox');
    const ports = [...r.stderr.matchAll(/(?:primary|replica|Redis) 127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]));
    expect(ports).toHaveLength(3);
    await expectNothingLeft(r, ports);
  });

  it('SIGTERM while Redis is down in a redis-failure drill stops everything too (exit 143)', async () => {
    const r = await drill(['redis-failure'], { interruptWhen: /^step waitForRedisRollout/m, signal: 'SIGTERM' });
    expect(r.code).toBe(143);
    expect(r.stderr).toContain('SIGTERM: stopping the sandbox');
    const ports = [...r.stderr.matchAll(/(?:primary|replica|Redis) 127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]));
    expect(ports).toHaveLength(3);
    await expectNothingLeft(r, ports);
  });

  it('refuses what this build does not drill: an unknown scenario and an unconfirmed --target-config, with exit 2 and nothing started', async () => {
    // Every scenario issue 12 names is built now (LATER_DRILLS is empty): an unknown one gets the list.
    const later = await drill(['datacenter-fire']);
    expect(later.code).toBe(2);
    expect(later.stderr).toBe('dbpilot drill: unknown scenario "datacenter-fire"; drills in this build: primary-failure, slow-query, redis-failure, replication-lag, prisma-migration, disk-pressure\n');
    const unknown = await drill(['replication_lag', '--json']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('drills in this build: primary-failure, slow-query, redis-failure, replication-lag, prisma-migration, disk-pressure\n');
    expect(unknown.stdout).toBe('');
    // A staging target needs the flag (test/drill/drill-staging.test.ts has the rest of the refusals).
    const target = await drill(['primary-failure', '--target-config', 'staging.yaml']);
    expect(target.code).toBe(2);
    expect(target.stderr).toMatch(/^dbpilot drill: --target-config staging\.yaml: a drill breaks its target on purpose; add --i-know-this-is-staging/);
    for (const r of [later, unknown, target]) expect(leftovers(r.tmp)).toEqual([]);
    const help = await drill(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout.replace(/\s+/g, ' ')).toContain('Drills in this build: primary-failure, slow-query, redis-failure, replication-lag, prisma-migration, disk-pressure');
    expect(help.stdout).not.toMatch(/come later/);
  });
});
