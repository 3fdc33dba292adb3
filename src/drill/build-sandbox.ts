/**
 * The drill's disposable world, built from this machine's own binaries and nothing else: a PostgreSQL
 * 15 primary with one streaming replica and a Redis (temp dirs, free ports on 127.0.0.1, as the
 * `postgres` OS user when run as root), the strict Kubernetes stand-in (the runbook's pods with role
 * labels, the Secret with DATABASE_URL, the eight deployments, the Redis StatefulSet and its pod), the
 * PagerDuty stand-in, one service whose health URL writes to the database its Secret names — and
 * dbpilot itself, in this process (startService, as `serve` runs it), in auto mode, on the sandbox only.
 *
 * Nothing here reads the user's dbpilot configuration or environment: the configuration is built
 * below and parsed with an empty environment.
 */
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { parseConfig } from '../config.js';
import type { Cleanup } from './cleanup.js';
import { K8sStandIn } from './sandbox/k8s-standin.js';
import { PagerDutyStandin } from './sandbox/pagerduty-standin.js';
import { startPgCluster, type PgCluster } from './sandbox/pg-cluster.js';
import { startRedis, type RedisNode } from './sandbox/redis-server.js';
import { drillToken, ROUTING_KEYS, standinPagerduty, startDrillDbpilot, type DrillWorld, type Say } from './world.js';

export { ROUTING_KEYS, type Say } from './world.js';

export const NS = 'lomash-wood';
export const SECRET = { name: 'lomash-wood-secrets', key: 'DATABASE_URL' } as const;
/** The runbook's eight deployments (scenario 1, step 4). */
export const DEPLOYMENTS = ['auth-service', 'product-service', 'order-payment-service', 'appointment-service', 'content-service', 'customer-service', 'notification-service', 'analytics-service'];
export const REDIS_STATEFULSET = 'redis';
export const REDIS_POD = 'redis-0';
/** The prisma-migration drill's service: its Prisma datasource's database, migrated at start-up (migrateDeploy: restart). */
export const PRISMA_SERVICE = { name: 'order-payment-service', deployment: 'order-payment-service', database: 'drill_orders' } as const;

export interface SandboxOptions {
  /** services[] gets PRISMA_SERVICE with services[].prisma (database, migrateDeploy: restart). */
  prismaService?: boolean;
  /** handlers.disk-full in auto with vacuum: true, no maxSize, and a page threshold below what the data disk uses. */
  diskPressure?: boolean;
}

/** The disk-pressure drill's low threshold: any real data disk is above it. */
export const DISK_PAGE_ABOVE_PERCENT = 0.01;
export interface Sandbox extends DrillWorld {
  kind: 'sandbox';
  cluster: PgCluster;
  redis: RedisNode;
  k8s: K8sStandIn;
}

/** A health service like the runbook's: reads DATABASE_URL from the Secret and writes to that database. */
function healthService(k8s: K8sStandIn): Promise<http.Server> {
  const server = http.createServer((_req, res) => {
    void (async () => {
      const url = k8s.secretValue(SECRET.name, SECRET.key, NS);
      const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000, query_timeout: 1000 });
      c.on('error', () => undefined);
      try {
        await c.connect();
        await c.query('CREATE TABLE IF NOT EXISTS drill_service_writes (at timestamptz DEFAULT now()); INSERT INTO drill_service_writes DEFAULT VALUES');
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ database: 'healthy' }));
      } catch {
        res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ database: 'unhealthy' }));
      } finally {
        await c.end().catch(() => undefined);
      }
    })();
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** Builds the sandbox; every part registers its stop in `cleanup` as soon as it exists. */
export async function buildSandbox(cleanup: Cleanup, say: Say, opts: SandboxOptions = {}): Promise<Sandbox> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dbpilot-drill-'));
  cleanup.add(`temp dir ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));

  say('sandbox: PostgreSQL 15 primary + streaming replica');
  const cluster = await startPgCluster({ replicas: 1 });
  cleanup.add('PostgreSQL primary and replica', () => cluster.stop());
  say('sandbox: Redis');
  const redis = await startRedis();
  cleanup.add('Redis', () => redis.stop());

  say('sandbox: Kubernetes and PagerDuty stand-ins');
  const k8s = new K8sStandIn({ namespaces: [NS], defaultNamespace: NS });
  const k8sUrl = await k8s.start();
  cleanup.add('Kubernetes stand-in', () => k8s.close());
  const kubeconfig = await k8s.writeKubeconfig(dir, { namespace: NS });
  const primary = `127.0.0.1:${cluster.primary.port}`;
  k8s.seedPod({ name: 'postgres-primary-0', namespace: NS, labels: { app: 'postgres', role: 'primary' }, podIP: '10.0.0.5' });
  k8s.seedPod({ name: 'postgres-replica-0', namespace: NS, labels: { app: 'postgres', role: 'replica' }, podIP: '10.0.0.6' });
  k8s.seedSecret({ name: SECRET.name, namespace: NS, data: { [SECRET.key]: `postgresql://postgres@${primary}/postgres?schema=public&connection_limit=5` } });
  for (const d of DEPLOYMENTS) k8s.seedDeployment({ name: d, namespace: NS, replicas: 2 });
  k8s.seedStatefulSet({ name: REDIS_STATEFULSET, namespace: NS, replicas: 1 });
  k8s.seedPod({ name: REDIS_POD, namespace: NS, labels: { app: REDIS_STATEFULSET }, phase: 'Running' });

  const pagerduty = new PagerDutyStandin();
  await pagerduty.start();
  cleanup.add('PagerDuty stand-in', () => pagerduty.close());
  const health = await healthService(k8s);
  cleanup.add('health service', () => new Promise<void>((r) => health.close(() => r())));
  const healthUrl = `http://127.0.0.1:${(health.address() as AddressInfo).port}/health`;

  const webhookToken = drillToken();
  const config = parseConfig(
    {
      listen: '127.0.0.1:0',
      mode: 'auto',
      logLevel: 'info',
      postgres: {
        primary: { url: cluster.primary.url(), pod: 'postgres-primary-0' },
        replicas: [{ url: cluster.replicas[0]!.url(), pod: 'postgres-replica-0' }],
        longRunningQuerySeconds: 1,
        ...(opts.diskPressure ? { dataDirectory: cluster.primary.dataDir } : {}),
      },
      redis: { url: redis.url },
      webhook: { token: webhookToken },
      pagerduty: standinPagerduty(pagerduty),
      store: { path: path.join(dir, 'dbpilot.sqlite') },
      kubernetes: {
        kubeconfig,
        namespace: NS,
        secrets: [SECRET],
        deployments: DEPLOYMENTS,
        redisStatefulSet: REDIS_STATEFULSET,
        lease: { name: 'dbpilot-drill', durationSeconds: 15, renewDeadlineSeconds: 10, retryPeriodSeconds: 0.5 },
      },
      failover: { confirmProbes: 3, confirmIntervalMs: 300, rolloutTimeoutSeconds: 30, healthTimeoutSeconds: 30 },
      services: [
        { name: 'auth-service', healthUrl },
        ...(opts.prismaService
          ? [{ name: PRISMA_SERVICE.name, healthUrl, deployment: PRISMA_SERVICE.deployment, prisma: { database: PRISMA_SERVICE.database, migrateDeploy: 'restart' } }]
          : []),
      ],
      handlers: {
        'primary-failover': { mode: 'auto' },
        'slow-queries': { mode: 'auto', graceSeconds: 1, cooldownSeconds: 0 },
        ...(opts.diskPressure ? { 'disk-full': { mode: 'auto', vacuum: true, pageAbovePercent: DISK_PAGE_ABOVE_PERCENT, vacuumMinDeadTuples: 1000, cooldownSeconds: 0 } } : {}),
        'prisma-migration': { mode: 'auto', deployTimeoutSeconds: 30, lockTimeoutSeconds: 2, cooldownSeconds: 0 },
        'redis-failure': { mode: 'auto', pingAttempts: 3, pingIntervalMs: 200, connectTimeoutMs: 300, rolloutTimeoutSeconds: 30, pingTimeoutSeconds: 30, serviceTimeoutMs: 1000 },
      },
    },
    {},
  );

  say('sandbox: dbpilot (in process, auto mode)');
  const { service, remediation, url, log } = await startDrillDbpilot(config, cleanup);
  const replica = cluster.replicas[0]!;
  return {
    kind: 'sandbox',
    dir,
    primary: { server: primary, url: (database, login) => cluster.primary.url(database, login?.user) },
    replica: { server: `127.0.0.1:${replica.port}`, url: (database) => replica.url(database) },
    cluster,
    redis,
    k8s,
    pagerduty,
    config,
    service,
    remediation,
    url,
    token: webhookToken,
    log,
    ports: () => [cluster.primary.port, ...cluster.replicas.map((r) => r.port), redis.port, service.address.port, (health.address() as AddressInfo).port, Number(new URL(pagerduty.url).port), Number(new URL(k8sUrl).port)].filter((p) => p > 0),
  };
}
