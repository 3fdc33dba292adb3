/**
 * Topology from the servers, not from the configuration (issue 9 §1), on private clusters: these
 * tests kill a primary and promote replicas, so each scenario starts a primary + streaming replica
 * of its own (never the shared one of global-setup).
 *
 * - failover: the primary is SIGKILLed, the replica promoted with pg_promote(); the very next
 *   scrape shows the promoted server as the primary (pg_up, the collectors that read the primary,
 *   /health, `dbpilot status --json`), and the dead old one as a primary that is down until a
 *   completed failover fences it, then as role="fenced";
 * - split brain: the replica is promoted while the primary still runs.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { gatherStatus } from '../../src/status.js';
import { startPgCluster, type PgCluster } from '../support/pg-cluster.js';
import { find, scrape, value, type Exposition } from '../support/scrape.js';
import { getJson, makeConfig, pgQuery, serverOf, startTestService, type TestService } from '../support/service.js';

const BIN = fileURLToPath(new URL('../../bin/dbpilot.js', import.meta.url));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `node bin/dbpilot.js …` as a user runs it, configured only through the DBPILOT_* variables given. */
function cli(args: string[], env: Record<string, string>): Promise<Run> {
  const clean: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('DBPILOT_') || k.startsWith('VITEST') || k === 'NODE_OPTIONS' || k === 'KUBECONFIG') continue;
    clean[k] = v;
  }
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'dbpilot-topology-cli-'));
  return new Promise<Run>((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd, env: { ...clean, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 100_000);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  }).finally(() => fs.rmSync(cwd, { recursive: true, force: true }));
}

const cliEnv = (primaryUrl: string, replicaUrl: string) => ({
  DBPILOT_PRIMARY_URL: primaryUrl,
  DBPILOT_REPLICA_URLS: replicaUrl,
  DBPILOT_REDIS_URL: inject('redisUrl'),
  DBPILOT_DATABASES: 'postgres',
});

/** Promotes a standby and waits for it (pg_promote waits up to 60 s by default); true once it is out of recovery. */
async function promote(url: string): Promise<void> {
  const [row] = await pgQuery<{ promoted: boolean }>(url, 'SELECT pg_promote() AS promoted');
  expect(row?.promoted).toBe(true);
  const [state] = await pgQuery<{ r: boolean }>(url, 'SELECT pg_is_in_recovery() AS r');
  expect(state?.r).toBe(false);
}

/** Every pg_up series of the scrape as `server role value`, sorted. */
function pgUp(m: Exposition): string[] {
  return find(m, 'pg_up')
    .map((s) => `${s.labels.server} ${s.labels.role} ${s.value}`)
    .sort();
}

async function serviceOn(cluster: PgCluster): Promise<TestService> {
  return startTestService(
    makeConfig({
      postgres: {
        primary: { url: cluster.primary.url() },
        replicas: cluster.replicas.map((r) => ({ url: r.url() })),
        databases: ['postgres'],
        // Any mounted directory will do: the filesystem collector's server label is what is checked.
        dataDirectory: cluster.primary.dataDir,
        sizeRefreshSeconds: 1,
      },
      collectors: { timeoutMs: 800 },
    }),
  );
}

describe('failover: the replica promoted after the primary was killed', () => {
  let cluster: PgCluster;
  let svc: TestService;
  let P = '';
  let R = '';

  beforeAll(async () => {
    cluster = await startPgCluster({ replicas: 1 });
    P = serverOf(cluster.primary.url());
    R = serverOf(cluster.replicas[0]!.url());
    svc = await serviceOn(cluster);
  });

  afterAll(async () => {
    await svc?.close();
    await cluster?.stop();
  });

  it('before: the configured primary is observed as primary, the replica streams from it', async () => {
    const r = await scrape(svc.url);
    expect(pgUp(r.metrics)).toEqual([`${P} primary 1`, `${R} replica 1`].sort());
    expect(value(r.metrics, 'pg_topology_primaries')).toBe(1);
    expect(value(r.metrics, 'pg_topology_split_brain')).toBe(0);
    expect(value(r.metrics, 'pg_replication_wal_receiver_streaming', { server: R })).toBe(1);
    // A primary has no WAL receiver: no series rather than a 0 that reads as "broken".
    expect(find(r.metrics, 'pg_replication_wal_receiver_streaming', { server: P })).toEqual([]);
    const snap = svc.runtime.topology.last()!;
    expect(snap.primary?.server).toBe(P);
    expect(snap.members.find((m) => m.server === R)).toMatchObject({ role: 'replica', receiverStatus: 'streaming', upstream: P });
    expect(snap.lastPrimaryLsn?.server).toBe(P);
    expect(r.metrics.help.get('pg_topology_split_brain')).toMatch(/more than one/);
  });

  it('after: the very next scrape shows the promoted server as the primary, every primary-reading collector on it', async () => {
    await scrape(svc.url); // the old primary seen up once more, so "last seen as primary" is what it keeps
    await cluster.primary.kill();
    // The replica's WAL receiver notices its upstream has gone: streaming 0, while it is still a replica.
    await expect
      .poll(async () => find((await scrape(svc.url)).metrics, 'pg_replication_wal_receiver_streaming', { server: R })[0]?.value, { timeout: 30_000, interval: 100 })
      .toBe(0);
    const before = await scrape(svc.url);
    expect(pgUp(before.metrics)).toEqual([`${P} primary 0`, `${R} replica 1`].sort());
    expect(value(before.metrics, 'pg_topology_primaries')).toBe(0);

    await promote(cluster.replicas[0]!.url());

    const r = await scrape(svc.url);
    expect(r.status).toBe(200);
    // fenced() is empty: the dead old primary is still a primary that is down (PostgresPrimaryDown keeps firing).
    expect(pgUp(r.metrics)).toEqual([`${P} primary 0`, `${R} primary 1`].sort());
    expect(value(r.metrics, 'pg_topology_primaries')).toBe(1);
    expect(value(r.metrics, 'pg_topology_split_brain')).toBe(0);
    expect(value(r.metrics, 'pg_replication_is_replica', { server: R })).toBe(0);
    expect(find(r.metrics, 'pg_replication_wal_receiver_streaming')).toEqual([]);
    expect(find(r.metrics, 'pg_replication_lag_bytes', { server: R })).toEqual([]);
    // The collectors that read "the primary" read the promoted one in this same scrape.
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'pg_stat_replication' })).toBe(1);
    expect(value(r.metrics, 'dbpilot_collector_success', { collector: 'prisma_migrations' })).toBe(1);
    expect(find(r.metrics, 'prisma_migrations_failed')).toEqual([{ name: 'prisma_migrations_failed', labels: { server: R, datname: 'postgres' }, value: 0 }]);
    expect(find(r.metrics, 'pg_filesystem_size_bytes').map((s) => s.labels.server)).toEqual([R]);
    expect(svc.runtime.topology.last()!.primary?.server).toBe(R);
    expect(svc.runtime.topology.primaryServer().server).toBe(R);
    expect(svc.runtime.topology.last()!.lastPrimaryLsn).not.toBeNull();
    // The cached sizes follow at their next refresh.
    await expect
      .poll(async () => find((await scrape(svc.url)).metrics, 'pg_database_size_bytes', { datname: 'postgres' }).map((s) => s.labels.server), { timeout: 20_000, interval: 200 })
      .toEqual([R]);

    const h = await getJson(`${svc.url}/health`);
    expect(h).toMatchObject({ status: 200, body: { database: 'healthy', redis: 'healthy' } });
  });

  it('the old primary shows as fenced, not as a primary that is down, once a completed failover fences it', async () => {
    svc.runtime.setFencedSource(() => new Set([P]));
    try {
      const r = await scrape(svc.url);
      expect(pgUp(r.metrics)).toEqual([`${P} fenced 0`, `${R} primary 1`].sort());
      expect(find(r.metrics, 'pg_up', { role: 'primary', server: P })).toEqual([]);
      expect(svc.runtime.topology.last()!.members.map((m) => [m.server, m.role])).toEqual([
        [P, 'fenced'],
        [R, 'primary'],
      ]);
    } finally {
      svc.runtime.setFencedSource(() => new Set());
    }
    // Unfenced again, it is the primary it was last seen as.
    expect(pgUp((await scrape(svc.url)).metrics)).toEqual([`${P} primary 0`, `${R} primary 1`].sort());
  });

  it('dbpilot status --json shows the promoted server as the primary and the old one down', async () => {
    const r = await cli(['status', '--json'], cliEnv(cluster.primary.url(), cluster.replicas[0]!.url()));
    expect(r.code).toBe(1); // a configured server is down
    const s = JSON.parse(r.stdout) as { topology: Record<string, unknown>; postgres: Record<string, unknown>[] };
    expect(s.topology).toEqual({ primary: R, primaries: [R], splitBrain: false });
    expect(s.postgres).toHaveLength(2);
    expect(s.postgres[0]).toMatchObject({ server: P, role: 'primary', configuredRole: 'primary', up: false, inRecovery: null, state: null });
    expect(s.postgres[1]).toMatchObject({ server: R, role: 'primary', configuredRole: 'replica', up: true, inRecovery: false, state: 'running', receiverStatus: null, upstream: null });
    expect(typeof s.postgres[1]!.lsn).toBe('string');
  });
});

describe('split brain: the replica promoted while the primary still runs', () => {
  let cluster: PgCluster;
  let svc: TestService;
  let P = '';
  let R = '';

  beforeAll(async () => {
    cluster = await startPgCluster({ replicas: 1 });
    P = serverOf(cluster.primary.url());
    R = serverOf(cluster.replicas[0]!.url());
    svc = await serviceOn(cluster);
  });

  afterAll(async () => {
    await svc?.close();
    await cluster?.stop();
  });

  it('is exported, named in /health and `dbpilot status`, and leaves both servers as primaries', async () => {
    const before = await scrape(svc.url);
    expect(value(before.metrics, 'pg_topology_split_brain')).toBe(0);

    await promote(cluster.replicas[0]!.url());

    const r = await scrape(svc.url);
    expect(value(r.metrics, 'pg_topology_split_brain')).toBe(1);
    expect(value(r.metrics, 'pg_topology_primaries')).toBe(2);
    expect(pgUp(r.metrics)).toEqual([`${P} primary 1`, `${R} primary 1`].sort());
    const snap = svc.runtime.topology.last()!;
    expect(snap.splitBrain).toBe(true);
    expect(snap.primary).toBeNull();
    expect(snap.primaries.map((m) => m.server)).toEqual([P, R]);
    // Collectors keep reading the primary last seen alone, never the newcomer.
    expect(svc.runtime.topology.primaryServer().server).toBe(P);

    const h = await getJson(`${svc.url}/health`);
    expect(h).toMatchObject({ status: 503, body: { database: 'unhealthy', redis: 'healthy' } });
    expect((await svc.runtime.health()).details.database).toBe(`split brain: ${P}, ${R} are all out of recovery`);

    const status = await gatherStatus(svc.runtime);
    expect(status.topology).toEqual({ primary: null, primaries: [P, R], splitBrain: true });
    expect(status.postgres.map((m) => [m.server, m.role, m.inRecovery])).toEqual([
      [P, 'primary', false],
      [R, 'primary', false],
    ]);

    const text = await cli(['status'], cliEnv(cluster.primary.url(), cluster.replicas[0]!.url()));
    expect(text.stdout).toContain(`WARNING: split brain: ${P}, ${R} are all out of recovery`);
    expect(text.stdout).toMatch(new RegExp(`${R.replace(/\./g, '\\.')}\\s*│\\s*primary \\(configured replica\\) \\(read-write\\)`));
  });

  it('a fenced server that still accepts writes is role "fenced" and still counts: still split brain', async () => {
    svc.runtime.setFencedSource(() => new Set([P]));
    try {
      const r = await scrape(svc.url);
      expect(pgUp(r.metrics)).toEqual([`${P} fenced 1`, `${R} primary 1`].sort());
      expect(value(r.metrics, 'pg_topology_primaries')).toBe(2);
      expect(value(r.metrics, 'pg_topology_split_brain')).toBe(1);
      expect(svc.runtime.topology.last()!.primaries.map((m) => [m.server, m.role])).toEqual([
        [P, 'fenced'],
        [R, 'primary'],
      ]);
    } finally {
      svc.runtime.setFencedSource(() => new Set());
    }
  });
});
