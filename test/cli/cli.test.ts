/**
 * The dbpilot command as a user runs it: `node bin/dbpilot.js …` in a child process, against the
 * shared harness servers through the documented DBPILOT_* environment overrides.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { freePort } from '../support/ports.js';
import { serverOf } from '../support/service.js';

const BIN = fileURLToPath(new URL('../../bin/dbpilot.js', import.meta.url));
const SECRET = 'S3cretPassw0rd';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The parent's environment without anything that would change what dbpilot or node does here. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('DBPILOT_') || k.startsWith('VITEST') || k === 'NODE_OPTIONS' || k === 'KUBECONFIG') continue;
    env[k] = v;
  }
  return env;
}

let cwd = '';

// At most two CLI processes at once: each costs about 3 s of CPU (tsx compiling src/), and the
// machine has two cores shared with the other test files.
let slots = 2;
const waiting: (() => void)[] = [];
async function withSlot<T>(fn: () => Promise<T>): Promise<T> {
  if (slots === 0) await new Promise<void>((resolve) => waiting.push(resolve));
  else slots--;
  try {
    return await fn();
  } finally {
    const next = waiting.shift();
    if (next) next();
    else slots++;
  }
}

function run(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return withSlot(() => spawnCli(args, env));
}

function spawnCli(args: string[], env: Record<string, string>): Promise<Run> {
  return new Promise((resolve, reject) => {
    // A temp cwd: a ./dbpilot.yaml in the checkout must not change what is tested.
    const child = spawn(process.execPath, [BIN, ...args], { cwd, env: { ...cleanEnv(), ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
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
  });
}

function writeConfig(name: string, text: string): string {
  const file = path.join(cwd, name);
  fs.writeFileSync(file, text);
  return file;
}

const GOOD_YAML = `
listen: 127.0.0.1:9631
mode: approve
postgres:
  primary: { url: "postgres://dbpilot:\${PG_PASSWORD}@db.example:5432/postgres", pod: postgres-primary-0 }
  replicas:
    - { url: "postgres://dbpilot:${SECRET}@replica.example:5432/postgres", pod: postgres-replica-0 }
  databases: [lomash_auth, lomash_orders]
redis: { url: "redis://:${SECRET}@redis-master:6379" }
webhook: { token: "\${TEST_WEBHOOK_TOKEN}" }
pagerduty:
  routes: { lead-dba: "R0123456789abcdef0123456789ABCDE", em-dba: "E0123456789abcdef0123456789ABCDE",
            oncall-backend: "O0123456789abcdef0123456789ABCDE", devops: "D0123456789abcdef0123456789ABCDE" }
`;
const GOOD_ENV = { PG_PASSWORD: SECRET, TEST_WEBHOOK_TOKEN: 'tok_0123456789abcdef_secret' };

const harnessEnv = () => ({
  DBPILOT_PRIMARY_URL: inject('pgPrimaryUrl'),
  DBPILOT_REPLICA_URLS: inject('pgReplicaUrls').join(','),
  DBPILOT_REDIS_URL: inject('redisUrl'),
  DBPILOT_DATABASES: 'postgres',
});

beforeAll(() => {
  cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'dbpilot-cli-'));
});
afterAll(() => {
  if (cwd) fs.rmSync(cwd, { recursive: true, force: true });
});

// Each case is its own process; they run side by side, two at a time (see withSlot).
describe.concurrent('dbpilot CLI', { timeout: 180_000 }, () => {
  it('--help lists the commands and exits 0', async () => {
    const r = await run(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: dbpilot /);
    for (const cmd of ['serve', 'check-config', 'status']) expect(r.stdout).toMatch(new RegExp(`^  ${cmd}\\b`, 'm'));
    expect(r.stderr).toBe('');
  });

  it('check-config prints the validated configuration as YAML, every secret redacted, and exits 0', async () => {
    const file = writeConfig('good.yaml', GOOD_YAML);
    const r = await run(['check-config', '--config', file], GOOD_ENV);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')[0]).toBe(`# ${file}: valid`);
    const cfg = parseYaml(r.stdout) as Record<string, any>;
    expect(cfg.listen).toBe('127.0.0.1:9631');
    expect(cfg.mode).toBe('approve');
    expect(cfg.postgres.primary).toEqual({ url: 'postgres://dbpilot:***@db.example:5432/postgres', pod: 'postgres-primary-0' });
    expect(cfg.postgres.replicas).toEqual([{ url: 'postgres://dbpilot:***@replica.example:5432/postgres', pod: 'postgres-replica-0' }]);
    expect(cfg.postgres.databases).toEqual(['lomash_auth', 'lomash_orders']);
    expect(cfg.postgres.longRunningQuerySeconds).toBe(30); // defaults are filled in
    expect(cfg.redis.url).toBe('redis://:***@redis-master:6379');
    expect(cfg.webhook.token).toBe('[REDACTED]');
    expect(cfg.pagerduty.routes).toEqual({ 'lead-dba': '[REDACTED]', 'em-dba': '[REDACTED]', 'oncall-backend': '[REDACTED]', devops: '[REDACTED]' });
    for (const secret of [SECRET, GOOD_ENV.TEST_WEBHOOK_TOKEN, 'R0123456789abcdef0123456789ABCDE', 'D0123456789abcdef0123456789ABCDE']) expect(r.stdout).not.toContain(secret);
  });

  it.each<{ what: string; yaml: string; env: Record<string, string>; field: string }>([
    {
      what: 'a replica URL that is not postgres://',
      yaml: `postgres:\n  replicas:\n    - url: "http://u:${SECRET}@replica:5432/postgres"\n`,
      env: {},
      field: 'postgres.replicas[0].url',
    },
    { what: 'a misspelt key', yaml: 'postgres:\n  longRunningQuerySecs: 30\n', env: {}, field: 'postgres.longRunningQuerySecs' },
    { what: 'a bad value from the environment', yaml: 'mode: auto\n', env: { DBPILOT_REPLICA_URLS: `mysql://u:${SECRET}@x:3306/db` }, field: 'postgres.replicas[0].url (from DBPILOT_REPLICA_URLS)' },
  ])('check-config refuses $what, naming the field', async ({ what, yaml, env, field }) => {
    const file = writeConfig(`bad-${what.replace(/\W+/g, '-')}.yaml`, yaml);
    const r = await run(['check-config', '--config', file], env);
    expect(r.code).not.toBe(0);
    expect(r.code).not.toBeNull();
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`${field}:`);
    expect(r.stderr).not.toContain(SECRET);
  });

  it('status --json shows primary and replica up with their lag, Redis up, and exits 0', async () => {
    const r = await run(['status', '--json'], harnessEnv());
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout) as {
      topology: Record<string, any>;
      postgres: Record<string, any>[];
      redis: Record<string, any>;
      collectors: { name: string; success: boolean }[];
    };
    expect(s.postgres).toHaveLength(2);
    const P = serverOf(inject('pgPrimaryUrl'));
    const [primary, replica] = s.postgres as [Record<string, any>, Record<string, any>];
    // Roles as the servers report them, the replica's WAL receiver and where it streams from.
    expect(s.topology).toEqual({ primary: P, primaries: [P], splitBrain: false });
    expect(primary).toMatchObject({ server: P, role: 'primary', configuredRole: 'primary', up: true, inRecovery: false, state: 'running', receiverStatus: null, upstream: null, lagBytes: null, lagSeconds: null, error: null });
    expect(replica).toMatchObject({ server: serverOf(inject('pgReplicaUrls')[0]!), role: 'replica', configuredRole: 'replica', up: true, inRecovery: true, state: 'streaming', receiverStatus: 'streaming', upstream: P, error: null });
    expect(primary.lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(replica.lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(typeof replica.lagBytes).toBe('number');
    expect(replica.lagBytes).toBeGreaterThanOrEqual(0);
    expect(typeof replica.lagSeconds).toBe('number');
    expect(replica.lagSeconds).toBeGreaterThanOrEqual(0);
    expect(primary.longRunningQueries).toBe(0);
    expect(s.redis).toMatchObject({ target: inject('redisUrl'), up: true });
    expect(s.redis.memoryUsedBytes).toBeGreaterThan(0);
    expect(s.collectors.filter((c) => !c.success)).toEqual([]);
  });

  it('status prints each server with its observed role, the replica\'s WAL receiver and upstream, and no warning', async () => {
    const r = await run(['status'], harnessEnv());
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const P = serverOf(inject('pgPrimaryUrl'));
    const R = serverOf(inject('pgReplicaUrls')[0]!);
    // The table row whose Server column is `server`.
    const row = (server: string) => r.stdout.split('\n').find((l) => l.split('│')[2]?.trim() === server) ?? '';
    expect(row(P)).toMatch(/│ primary \(read-write\)\s*│ running\s*│\s*│/);
    expect(row(R)).toMatch(new RegExp(`│ replica \\(standby\\)\\s*│ streaming\\s*│ streaming from ${P.replace(/\./g, '\\.')}\\s*│`));
    expect(r.stdout).not.toContain('WARNING');
  });

  it('status --json shows a replica on a refusing port as down, and exits 1', async () => {
    const dead = await freePort();
    const r = await run(['status', '--json'], { ...harnessEnv(), DBPILOT_REPLICA_URLS: `postgres://postgres:${SECRET}@127.0.0.1:${dead}/postgres` });
    expect(r.code).toBe(1);
    const s = JSON.parse(r.stdout) as { postgres: Record<string, any>[]; redis: Record<string, any> };
    const [primary, replica] = s.postgres as [Record<string, any>, Record<string, any>];
    expect(primary).toMatchObject({ role: 'primary', up: true });
    // Never seen up: its configured role.
    expect(replica).toMatchObject({ server: `127.0.0.1:${dead}`, role: 'replica', configuredRole: 'replica', up: false, inRecovery: null, state: null, receiverStatus: null, upstream: null, lagBytes: null, lagSeconds: null });
    expect(replica.error).toMatch(/ECONNREFUSED/);
    expect(s.redis.up).toBe(true);
    expect(r.stdout + r.stderr).not.toContain(SECRET);
  });
});
