/**
 * The statements every scrape sends are prepared once per scrape connection (scrapeStatement,
 * src/integrations/postgres.ts) and executed by name after; other statements, and remediation
 * statements (act) even of the same text, are sent unprepared. Read from the server itself:
 * pg_prepared_statements of the one pooled connection (poolMax 1).
 */
import { afterAll, describe, expect, inject, it } from 'vitest';
import { PROBE_SQL } from '../../src/collectors/pg-server.js';
import { PgServer } from '../../src/integrations/postgres.js';
import { captureLogger } from '../support/service.js';

const server = new PgServer({
  url: inject('pgPrimaryUrl'),
  role: 'primary',
  connectTimeoutMs: 2000,
  queryTimeoutMs: 2000,
  actionTimeoutMs: 5000,
  poolMax: 1,
  logger: captureLogger('warn').logger,
});
const prepared = async (via: 'query' | 'act') =>
  (await server[via]<{ name: string; statement: string }>('SELECT name, statement FROM pg_prepared_statements ORDER BY name')).map((r) => r.name);

afterAll(() => server.close());

describe('scrape statements', () => {
  it('are prepared once on the scrape connection and executed by name after', async () => {
    expect(await prepared('query')).not.toContain('dbpilot_probe');
    const [first] = await server.query<{ in_recovery: boolean }>(PROBE_SQL);
    const [second] = await server.query<{ in_recovery: boolean }>(PROBE_SQL);
    expect(first?.in_recovery).toBe(false);
    expect(second?.in_recovery).toBe(false);
    const names = await prepared('query');
    expect(names.filter((n) => n === 'dbpilot_probe')).toHaveLength(1);
    // The listing itself is no scrape statement: not prepared.
    expect(names.every((n) => n.startsWith('dbpilot_'))).toBe(true);
    const [row] = await server.query<{ statement: string }>("SELECT statement FROM pg_prepared_statements WHERE name = 'dbpilot_probe'");
    expect(row).toEqual({ statement: PROBE_SQL });
  });

  it('are not prepared when a remediation runs them (the action pool)', async () => {
    await server.act(PROBE_SQL);
    expect(await prepared('act')).toEqual([]);
  });
});
