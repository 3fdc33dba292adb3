/**
 * `dbpilot migrate-reset` as a user runs it — `node bin/dbpilot.js migrate-reset …` in a child
 * process — against a database of this file's own on the suite's primary (DBPILOT_PRIMARY_URL), a store
 * in a temp dir, and a configuration file that says which environment this is. Refused in production
 * (the default) before anything is touched; elsewhere it acts only on --confirm <database> or the name
 * typed on a real terminal (script(1)).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { Store } from '../../src/store/store.js';
import { prismaMigrateDeploy } from '../support/prisma.js';
import { createTempDatabase, pgQuery, type TempDatabase } from '../support/service.js';

const BIN = fileURLToPath(new URL('../../bin/dbpilot.js', import.meta.url));
const INIT = { name: '20240101000000_init', sql: 'CREATE TABLE orders (id int PRIMARY KEY);' };

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

let dir = '';
let db: TempDatabase;

function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('DBPILOT_') || k.startsWith('VITEST') || k === 'NODE_OPTIONS' || k === 'KUBECONFIG' || k === 'POD_NAME') continue;
    env[k] = v;
  }
  return env;
}

function configFile(environment: string | null): string {
  const file = path.join(dir, `dbpilot-${environment ?? 'default'}.yaml`);
  writeFileSync(file, stringify({ ...(environment ? { environment } : {}), store: { path: path.join(dir, 'dbpilot.sqlite') } }));
  return file;
}

function envFor(config: string): NodeJS.ProcessEnv {
  return { ...cleanEnv(), DBPILOT_CONFIG: config, DBPILOT_PRIMARY_URL: inject('pgPrimaryUrl'), DBPILOT_REDIS_URL: inject('redisUrl') };
}

function dbpilot(config: string, ...args: string[]): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: dir, env: envFor(config), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 45_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const tables = async () => (await pgQuery<{ t: string }>(db.url, `SELECT relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND relkind = 'r' ORDER BY 1`)).map((r) => r.t);

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-cli-reset-'));
});
afterEach(async () => {
  await db?.drop();
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

async function migratedDb(): Promise<void> {
  db = await createTempDatabase('clireset');
  await prismaMigrateDeploy(db.url, 'public', [INIT]);
}

describe('dbpilot migrate-reset', () => {
  it('is refused in production — the default — with a clear error, before anything is touched', async () => {
    await migratedDb();
    for (const env of [null, 'production']) {
      const r = await dbpilot(configFile(env), 'migrate-reset', db.name, '--confirm', db.name);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toContain(`dbpilot: prisma migrate reset of ${db.name} is refused: this dbpilot's environment is production`);
      expect(r.stderr).toContain('[DBPILOT_REFUSED_IN_PRODUCTION]');
      expect(r.stdout).toBe('');
    }
    expect(await tables()).toEqual(['_prisma_migrations', 'orders']);
  });

  it('staging: shows the plan; without a terminal it needs --confirm naming the database, and then resets', async () => {
    await migratedDb();
    const config = configFile('staging');
    const none = await dbpilot(config, 'migrate-reset', db.name);
    expect(none.code).toBe(2);
    expect(none.stdout).toContain(`migrate-reset on postgres/`);
    expect(none.stdout).toContain('DROP SCHEMA \\"public\\" CASCADE; CREATE SCHEMA \\"public\\" AUTHORIZATION \\"pg_database_owner\\";');
    expect(none.stderr).toContain(`there is no terminal to confirm on: run again with --confirm ${db.name}`);
    const wrong = await dbpilot(config, 'migrate-reset', db.name, '--confirm', 'lomash_orders');
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain('does not name the database');
    const dry = await dbpilot(config, 'migrate-reset', db.name, '--dry-run');
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain('(dry-run: nothing was changed)');
    expect(await tables()).toEqual(['_prisma_migrations', 'orders']);

    const yes = await dbpilot(config, 'migrate-reset', db.name, '--confirm', db.name);
    expect(yes.code, `${yes.stdout}\n${yes.stderr}`).toBe(0);
    expect(yes.stdout).toMatch(/\[done\] resetSchema/);
    expect(await tables()).toEqual([]);
    // Recorded in the audit like any run, as a CLI run.
    const store = new Store(path.join(dir, 'dbpilot.sqlite'), { readonly: true });
    try {
      const run = store.listRuns({ limit: 1 })[0]!;
      expect(run).toMatchObject({ handler: 'prisma-migrate-reset', status: 'succeeded', origin: 'cli', mode: 'manual' });
      expect(store.steps(run.id).map((s) => [s.name, s.status])).toEqual([['resetSchema', 'done']]);
    } finally {
      store.close();
    }
  });

  it.skipIf(spawnSync('script', ['--version']).status !== 0)('on a real terminal it asks, and resets when the database name is typed', async () => {
    await migratedDb();
    const cmd = `${process.execPath} ${BIN} migrate-reset ${db.name}`;
    const child = spawn('script', ['-qec', cmd, '/dev/null'], { cwd: dir, env: envFor(configFile('development')), stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes("Type the database's name") && !out.includes('(typed)')) {
        out += '(typed)';
        child.stdin.write(`${db.name}\r`);
      }
    });
    const code = await new Promise<number | null>((resolve) => {
      const t = setTimeout(() => child.kill('SIGKILL'), 45_000);
      child.on('close', (c) => {
        clearTimeout(t);
        resolve(c);
      });
    });
    expect(code, out).toBe(0);
    expect(out).toMatch(/\[done\] resetSchema/);
    expect(await tables()).toEqual([]);
  });
});
