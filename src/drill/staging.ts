/**
 * A drill against a named staging target (`dbpilot drill <scenario> --target-config FILE
 * --i-know-this-is-staging`) instead of the drill's own sandbox.
 *
 * Refused, before anything is contacted, unless both the flag is given and the file itself says
 * `environment: staging` (production is the default when it says nothing; `${ENV}` is expanded in the
 * other values, the DBPILOT_* overrides are not applied). Only the scenarios whose break the drill can make, and undo, through
 * the target's own PostgreSQL connections run there (STAGING_DRILLS); the others are refused with
 * the reason (NOT_ON_STAGING).
 *
 * What the drill's dbpilot takes from the file: `postgres` (servers, thresholds, timeouts), `redis`
 * and the drilled handler's options (its protected roles and applications included), with that handler
 * in auto. What it never takes: `kubernetes` (no Lease is taken, so the target's own dbpilot keeps its
 * lead, and no Kubernetes object is written), `aws`, `services`, `approvers`, `pagerduty` (every page
 * goes to the drill's PagerDuty stand-in: nobody is woken by a drill), `store` (a temp dir), `listen`
 * and `webhook` (127.0.0.1, a random token).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseConfig, readConfigDocument, type Config } from '../config.js';
import { serverLabel } from '../integrations/postgres.js';
import type { HandlerName } from '../remediation/handlers/options.js';
import type { Cleanup } from './cleanup.js';
import { isStagingDrill, STAGING_DRILLS, type DrillName, type StagingDrill } from './names.js';

export { isStagingDrill, STAGING_DRILLS, type StagingDrill } from './names.js';
import { PagerDutyStandin } from './sandbox/pagerduty-standin.js';
import { drillToken, standinPagerduty, startDrillDbpilot, type DrillWorld, type Login, type Say } from './world.js';


/** Why the other drills run only on the sandbox. */
export const NOT_ON_STAGING: Record<Exclude<DrillName, StagingDrill>, string> = {
  'primary-failure':
    'its break is a kill -9 of the primary postmaster, which needs a shell on the database host, and its recovery promotes a replica and writes Secrets and restarts Deployments through Kubernetes; rehearse it on the sandbox, or on staging by stopping the primary there and letting the dbpilot deployed with it act',
  'redis-failure':
    'its break stops Redis, which needs the Redis host (the drill will not SHUTDOWN a Redis over its connection: without persistence that loses its data), and its recovery restarts the StatefulSet through Kubernetes',
  'prisma-migration':
    "its break writes a failed migration into an application's _prisma_migrations, and its recovery rolls it back and restarts the application's Deployment through Kubernetes",
  'disk-pressure':
    'the disk-full handler measures the data directory (postgres.dataDirectory), which only a dbpilot on the database host can read, and the drill would have to lower the threshold below what the disk uses',
};

/** The drilled handler of each staging drill. */
const HANDLER: Record<StagingDrill, HandlerName> = { 'slow-query': 'slow-queries', 'replication-lag': 'replication-lag' };

/** A refusal: exit 2, nothing contacted. */
export class DrillRefused extends Error {}

/**
 * Reads and checks the target: the flag, the file (read once), `environment: staging` written in it,
 * a scenario that runs there and what it needs. Contacts nothing.
 *
 * `${ENV}` references are expanded (passwords usually come that way), but the `DBPILOT_*` overrides
 * are not applied: they would put servers the file does not name (DBPILOT_PRIMARY_URL, …) under a
 * file that says staging. And `environment` must be the word staging in the file itself, not a
 * `${VAR}` that a shell could set.
 */
export function loadStagingTarget(scenario: DrillName, file: string, confirmed: boolean, env: NodeJS.ProcessEnv = process.env): Config {
  if (file.trim() === '') throw new DrillRefused('--target-config needs the path of a dbpilot configuration file');
  if (!confirmed) {
    throw new DrillRefused(
      `--target-config ${file}: a drill breaks its target on purpose; add --i-know-this-is-staging to confirm that ${file} describes a staging system (its environment must say staging too)`,
    );
  }
  if (!isStagingDrill(scenario)) {
    throw new DrillRefused(`${scenario} runs only on the drill's own sandbox, not on a staging target: ${NOT_ON_STAGING[scenario]}. On a staging target: ${STAGING_DRILLS.join(', ')}`);
  }
  const refuse = (why: string) => new DrillRefused(`--target-config ${file}: ${why}`);
  let doc: unknown;
  try {
    doc = readConfigDocument(file);
  } catch (err) {
    throw refuse((err as Error).message);
  }
  const written = doc !== null && typeof doc === 'object' && !Array.isArray(doc) ? (doc as Record<string, unknown>).environment : undefined;
  if (written !== 'staging') {
    const says =
      written === undefined
        ? 'it does not set environment (production by default)'
        : typeof written === 'string' && /\$\{/.test(written)
          ? `its environment is ${JSON.stringify(written)}, taken from the shell`
          : `its environment is ${typeof written === 'string' ? written : JSON.stringify(written)}`;
    throw refuse(`${says}; a drill runs only against a configuration that says environment: staging in the file itself`);
  }
  const fileEnv = Object.fromEntries(Object.entries(env).filter(([k]) => !k.startsWith('DBPILOT_')));
  let config: Config;
  try {
    config = parseConfig(doc, fileEnv);
  } catch (err) {
    throw refuse((err as Error).message);
  }
  if (scenario === 'replication-lag' && config.postgres.replicas.length === 0) {
    throw refuse('replication-lag pauses replay on a replica, and postgres.replicas is empty');
  }
  return config;
}

/** `url` with another database and, when given, another login; everything else (host, TLS parameters) kept. */
export function withDatabase(url: string, database?: string, login?: Login): string {
  const u = new URL(url);
  if (database !== undefined) u.pathname = `/${encodeURIComponent(database)}`;
  if (login) {
    u.username = encodeURIComponent(login.user);
    u.password = encodeURIComponent(login.password);
  }
  return u.toString();
}

/** The drill's dbpilot on the staging target (see the module's comment for what it takes and what not). */
export async function buildStagingWorld(cleanup: Cleanup, say: Say, scenario: StagingDrill, target: Config): Promise<DrillWorld> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dbpilot-drill-'));
  cleanup.add(`temp dir ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));
  const pagerduty = new PagerDutyStandin();
  await pagerduty.start();
  cleanup.add('PagerDuty stand-in', () => pagerduty.close());
  const handler = HANDLER[scenario];
  const replicas = target.postgres.replicas.map((r) => serverLabel(r.url));
  say(`staging: the target, from the file: PostgreSQL primary ${serverLabel(target.postgres.primary.url)}${replicas.length ? `, replicas ${replicas.join(', ')}` : ''}`);
  const config = parseConfig(
    {
      listen: '127.0.0.1:0',
      mode: 'dry-run',
      environment: 'staging',
      logLevel: 'info',
      postgres: target.postgres,
      redis: target.redis,
      webhook: { token: drillToken() },
      pagerduty: standinPagerduty(pagerduty),
      store: { path: path.join(dir, 'dbpilot.sqlite') },
      handlers: { [handler]: { ...(target.handlers[handler] ?? {}), mode: 'auto' } },
    },
    // The target's values are expanded already; no DBPILOT_* override may replace the drill's own.
    {},
  );
  say(`staging: dbpilot (in process; ${handler} in auto, every other handler dry-run; pages to the drill's PagerDuty stand-in; no Kubernetes, no Lease)`);
  const { service, remediation, url, log } = await startDrillDbpilot(config, cleanup);
  const primaryUrl = target.postgres.primary.url;
  const replicaUrl = target.postgres.replicas[0]?.url;
  return {
    kind: 'staging',
    dir,
    primary: { server: serverLabel(primaryUrl), url: (database, login) => withDatabase(primaryUrl, database, login) },
    replica: replicaUrl ? { server: serverLabel(replicaUrl), url: (database) => withDatabase(replicaUrl, database) } : null,
    pagerduty,
    config,
    service,
    remediation,
    url,
    token: config.webhook.token!,
    log,
    ports: () => [service.address.port, Number(new URL(pagerduty.url).port)].filter((p) => p > 0),
  };
}
