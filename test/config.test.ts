import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig, modeFor, parseConfig, redactConfig } from '../src/config.js';
import { ConfigError } from '../src/errors.js';

/** Temp dirs made by the current test; removed after it. */
const dirs: string[] = [];

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'dbpilot-config-'));
  dirs.push(dir);
  return dir;
}

afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function fileWith(text: string): string {
  const f = join(tempDir(), 'dbpilot.yaml');
  writeFileSync(f, text);
  return f;
}

function errorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('configuration', () => {
  it('runs on local defaults without a file', () => {
    // An empty directory of its own: a dbpilot.yaml somebody left in the shared temp dir must not count.
    const { config, source } = loadConfig({ env: {}, cwd: tempDir() });
    expect(source).toBeNull();
    expect(config.listen).toBe('127.0.0.1:9630');
    expect(config.mode).toBe('dry-run');
    expect(config.postgres.primary.url).toBe('postgres://postgres@127.0.0.1:5432/postgres');
    expect(config.redis.url).toBe('redis://127.0.0.1:6379');
    expect(config.postgres.longRunningQuerySeconds).toBe(30);
    expect(config.postgres.connectTimeoutMs).toBeLessThan(1000);
    expect(config.store.path).toBe('./data/dbpilot.sqlite');
    expect(config.handlers['slow-queries'].graceSeconds).toBe(10);
  });

  it('accepts the DESIGN example and expands ${ENV}', () => {
    const f = fileWith(`
listen: 0.0.0.0:9630
mode: dry-run
postgres:
  primary:  { url: postgres://dbpilot@postgres-primary:5432/postgres, pod: postgres-primary-0 }
  replicas:
    - { url: postgres://dbpilot@postgres-replica:5432/postgres, pod: postgres-replica-0 }
  databases: [lomash_auth, lomash_products, lomash_orders, lomash_appointments,
              lomash_content, lomash_customers, lomash_notifications, lomash_analytics]
  longRunningQuerySeconds: 30
  dataDirectory: /var/lib/postgresql/data
redis: { url: redis://redis-master:6379 }
kubernetes:
  namespace: lomash-wood
  secrets: [{ name: lomash-wood-secrets, key: DATABASE_URL }]
  deployments: [auth-service, product-service]
  redisStatefulSet: redis
webhook: { token: "\${DBPILOT_WEBHOOK_TOKEN}" }
failover: { maxLagBytes: 1048576, confirmProbes: 3, confirmIntervalMs: 500 }
handlers: { primary-failover: { mode: auto } }
pagerduty:
  routes: { lead-dba: "\${PD_KEY_LEAD_DBA}", em-dba: "\${PD_KEY_EM_DBA}",
            oncall-backend: "\${PD_KEY_ONCALL:-fallbackfallbackfallbackfallback}", devops: "\${PD_KEY_DEVOPS}" }
aws: { region: eu-west-2, dbInstanceIdentifier: lomash-wood-prod, snapshotSchedule: "0 3 * * *" }
store: { path: ./data/dbpilot.sqlite }
`);
    const env = { DBPILOT_WEBHOOK_TOKEN: 'a-very-long-webhook-token', PD_KEY_LEAD_DBA: 'k'.repeat(32), PD_KEY_EM_DBA: 'e'.repeat(32), PD_KEY_DEVOPS: 'd'.repeat(32) };
    const { config } = loadConfig({ file: f, env });
    expect(config.webhook.token).toBe('a-very-long-webhook-token');
    expect(config.pagerduty.routes['lead-dba']).toBe('k'.repeat(32));
    expect(config.pagerduty.routes['oncall-backend']).toBe('fallbackfallbackfallbackfallback');
    expect(config.postgres.databases).toHaveLength(8);
    expect(modeFor(config, 'primary-failover')).toBe('auto');
    expect(modeFor(config, 'slow-queries')).toBe('dry-run');
    expect(Object.isFrozen(config.postgres)).toBe(true);
  });

  it.each([
    ['postgres:\n  primary: { url: "mysql://x@h/db" }\n', 'postgres.primary.url'],
    ['postgres:\n  replicas:\n    - { url: postgres://a@h/db }\n    - { url: 42 }\n', 'postgres.replicas[1].url'],
    ['mode: yolo\n', 'mode'],
    ['listen: localhost\n', 'listen'],
    ['postgres:\n  longRunningQuerySeconds: -1\n', 'postgres.longRunningQuerySeconds'],
    ['redis: { url: http://x }\n', 'redis.url'],
    ['postgres:\n  primry: { url: postgres://a@h/db }\n', 'postgres.primry'],
    ['handlers: { restart-everything: { mode: auto } }\n', 'handlers.restart-everything'],
    ['handlers: { slow-queries: { graceSeconds: "soon" } }\n', 'handlers.slow-queries.graceSeconds'],
    ['handlers: { replication-lag: { listMax: 0 } }\n', 'handlers.replication-lag.listMax'],
    ['handlers: { replication-lag: { replicaQuerySeconds: -5 } }\n', 'handlers.replication-lag.replicaQuerySeconds'],
    ['handlers: { data-corruption: { snapshotFirst: "yes" } }\n', 'handlers.data-corruption.snapshotFirst'],
    ['handlers: { data-corruption: { snapshot: true } }\n', 'handlers.data-corruption.snapshot'],
    ['webhook: { token: short }\n', 'webhook.token'],
    ['alerts: { RedisDown: flush-everything }\n', 'alerts.RedisDown'],
    ['kubernetes: { lease: { durationSeconds: 5, renewDeadlineSeconds: 5 } }\n', 'kubernetes.lease.renewDeadlineSeconds'],
    ['pagerduty: { routes: { devops: "' + 'd'.repeat(31) + '" } }\n', 'pagerduty.routes.devops'],
    ['pagerduty: { routes: { devops: "' + 'd'.repeat(32) + '" } }\n', 'pagerduty.routes.lead-dba'],
  ])('refuses %j naming %s', (yaml, path) => {
    const err = errorOf(() => loadConfig({ file: fileWith(yaml), env: {} }));
    expect(err.code).toBe('DBPILOT_CONFIG_INVALID');
    expect(err.path).toBe(path);
    expect(err.message.startsWith(`${path}: `)).toBe(true);
  });

  it('names an unset environment variable and where it was used', () => {
    const err = errorOf(() => loadConfig({ file: fileWith('webhook: { token: "${NOPE_NOT_SET}" }\n'), env: {} }));
    expect(err.path).toBe('webhook.token');
    expect(err.message).toContain('NOPE_NOT_SET');
  });

  it('reports YAML syntax errors with the line', () => {
    const err = errorOf(() => loadConfig({ file: fileWith('postgres:\n  primary: [\n'), env: {} }));
    expect(err.message).toMatch(/invalid YAML/);
    expect(err.message).toMatch(/:\d+:\d+/);
  });

  it('refuses duplicate keys', () => {
    const err = errorOf(() => loadConfig({ file: fileWith('mode: auto\nmode: off\n'), env: {} }));
    expect(err.message).toMatch(/invalid YAML/);
  });

  it('applies the DBPILOT_* overrides and names the variable when one is bad', () => {
    const env = {
      DBPILOT_LISTEN: '127.0.0.1:0',
      DBPILOT_MODE: 'auto',
      DBPILOT_WEBHOOK_TOKEN: 'token-from-the-environment',
      DBPILOT_PRIMARY_URL: 'postgres://u:pw@db1:5433/postgres',
      DBPILOT_REPLICA_URLS: 'postgres://u@db2:5432/postgres, postgres://u@db3:5432/postgres',
      DBPILOT_REDIS_URL: 'redis://cache:6380',
      DBPILOT_DATABASES: 'lomash_auth,lomash_orders',
    };
    const cfg = parseConfig({ mode: 'off' }, env);
    expect(cfg.listen).toBe('127.0.0.1:0');
    expect(cfg.mode).toBe('auto');
    expect(cfg.webhook.token).toBe('token-from-the-environment');
    expect(cfg.postgres.primary.url).toBe('postgres://u:pw@db1:5433/postgres');
    expect(cfg.postgres.replicas.map((r) => r.url)).toEqual(['postgres://u@db2:5432/postgres', 'postgres://u@db3:5432/postgres']);
    expect(cfg.redis.url).toBe('redis://cache:6380');
    expect(cfg.postgres.databases).toEqual(['lomash_auth', 'lomash_orders']);

    const err = errorOf(() => parseConfig({}, { DBPILOT_MODE: 'sometimes' }));
    expect(err.message).toContain('mode (from DBPILOT_MODE)');
  });

  it('never shows a password in an error or in the printed configuration', () => {
    const err = errorOf(() => parseConfig({}, { DBPILOT_PRIMARY_URL: 'mysql://admin:hunter2secret@db/x' }));
    expect(err.message).not.toContain('hunter2secret');
    const cfg = parseConfig(
      { webhook: { token: 'super-secret-webhook-token' }, pagerduty: { routes: { devops: 'r'.repeat(32), 'lead-dba': 'l'.repeat(32), 'em-dba': 'e'.repeat(32), 'oncall-backend': 'o'.repeat(32) } } },
      { DBPILOT_PRIMARY_URL: 'postgres://admin:hunter2secret@db/x', DBPILOT_REDIS_URL: 'redis://:redispass@cache:6379' },
    );
    const printed = JSON.stringify(redactConfig(cfg));
    expect(printed).not.toContain('hunter2secret');
    expect(printed).not.toContain('redispass');
    expect(printed).not.toContain('super-secret-webhook-token');
    expect(printed).not.toContain('r'.repeat(32));
    expect(printed).toContain('postgres://admin:***@db/x');
  });
});
