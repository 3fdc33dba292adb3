/**
 * pg_stat_replication is sent while the scrape's topology observation runs, to the primary observed
 * before (speculativePrimary, wired as src/exporter.ts wires it), and its rows are kept only when the
 * observation confirms that server. Scripted servers: each answers the topology probe with the role
 * the test gives it and pg_stat_replication with rows naming itself, so rows kept from the wrong
 * server would show.
 */
import { describe, expect, it } from 'vitest';
import { CollectorRegistry } from '../../src/collectors/index.js';
import { speculativePrimary } from '../../src/collectors/collector.js';
import { pgServerCollector } from '../../src/collectors/pg-server.js';
import { pgStatReplicationCollector } from '../../src/collectors/pg-stat-replication.js';
import { PgCluster, type PgServer } from '../../src/integrations/postgres.js';
import { Metrics } from '../../src/metrics.js';
import { Topology } from '../../src/topology.js';
import { captureLogger } from '../support/service.js';

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
}
const deferred = (): Deferred => {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
};

/** Every statement of a scrape, in the order sent: `server probe` or `server replication`. */
const sent: string[] = [];

class ScriptedServer {
  readonly defaultDatabase = 'postgres';
  inRecovery = false;
  /** When set, the probe answers only once it resolves. */
  probeGate: Deferred | null = null;
  /** pg_stat_replication fails on this server. */
  replicationError: Error | null = null;
  constructor(
    readonly server: string,
    readonly role: 'primary' | 'replica',
  ) {}

  async query(sql: string): Promise<Record<string, unknown>[]> {
    if (sql.includes('FROM pg_stat_replication')) {
      sent.push(`${this.server} replication`);
      if (this.replicationError) throw this.replicationError;
      // A standby of this server, named after it: rows kept from another server would say so.
      return [{ application_name: `standby-of-${this.server}`, client_addr: '10.0.0.9', state: 'streaming', sync_state: 'async', lsn_diff: this.server === 'a:5432' ? 111 : 222, write_lag: 0, flush_lag: 0, replay_lag: 0 }];
    }
    if (sql.includes('pg_stat_wal_receiver')) {
      sent.push(`${this.server} probe`);
      const inRecovery = this.inRecovery;
      if (this.probeGate) await this.probeGate.promise;
      return [{ in_recovery: inRecovery, lsn: '0/1000000', replay_lsn: inRecovery ? '0/1000000' : null, receiver_status: inRecovery ? 'streaming' : null, sender_host: null, sender_port: null, lag_bytes: inRecovery ? 0 : null, lag_seconds: inRecovery ? 0 : null }];
    }
    throw new Error(`unexpected statement: ${sql}`);
  }
}

function setup() {
  const a = new ScriptedServer('a:5432', 'primary');
  const b = new ScriptedServer('b:5432', 'replica');
  b.inRecovery = true;
  const cluster = new PgCluster(a as unknown as PgServer, [b as unknown as PgServer]);
  const topology = new Topology(cluster, { probeBudgetMs: 1000 });
  const metrics = new Metrics({ processMetrics: false });
  const registry = new CollectorRegistry(metrics, { timeoutMs: 1000, logger: captureLogger('warn').logger });
  const observed = async () => {
    await topology.observe(1000);
    return topology.primaryServer();
  };
  registry.register(pgServerCollector(metrics, topology));
  const replication = pgStatReplicationCollector(metrics, speculativePrimary(() => topology.primaryServer(), observed));
  registry.register(replication);
  const scrape = async () => {
    sent.length = 0;
    await registry.collect();
    return metrics.text();
  };
  return { a, b, topology, registry, scrape };
}

const lsnDiff = (text: string) => text.split('\n').filter((l) => l.startsWith('pg_stat_replication_pg_wal_lsn_diff{'));

describe('pg_stat_replication sent speculatively to the last observed primary', () => {
  it('is sent before the observation has answered, and kept when the observation confirms that primary', async () => {
    const { a, registry, scrape } = setup();
    await scrape(); // the first observation: a is the primary
    a.probeGate = deferred();
    const done = scrape();
    // The statement went to a while a's probe is still unanswered.
    await expect.poll(() => sent.includes('a:5432 replication')).toBe(true);
    expect(sent).toContain('a:5432 probe');
    a.probeGate.resolve();
    const text = await done;
    expect(lsnDiff(text)).toEqual(['pg_stat_replication_pg_wal_lsn_diff{server="a:5432",application_name="standby-of-a:5432",client_addr="10.0.0.9",state="streaming",sync_state="async"} 111']);
    expect(sent.filter((s) => s.endsWith('replication'))).toEqual(['a:5432 replication']);
    expect(registry.last.get('pg_stat_replication')).toMatchObject({ success: true, statements: 1 });
  });

  it('after a switchover between scrapes, the rows come from the newly observed primary, not from the one guessed', async () => {
    const { a, b, topology, registry, scrape } = setup();
    await scrape();
    expect(topology.primaryServer().server).toBe('a:5432');
    // Switchover: a is now a standby, b the primary. Both answer; a's rows would be the wrong ones.
    a.inRecovery = true;
    b.inRecovery = false;
    const text = await scrape();
    expect(topology.primaryServer().server).toBe('b:5432');
    expect(lsnDiff(text)).toEqual(['pg_stat_replication_pg_wal_lsn_diff{server="b:5432",application_name="standby-of-b:5432",client_addr="10.0.0.9",state="streaming",sync_state="async"} 222']);
    // The guess was sent (and dropped), then the confirmed primary read: both counted.
    expect(sent.filter((s) => s.endsWith('replication'))).toEqual(['a:5432 replication', 'b:5432 replication']);
    expect(registry.last.get('pg_stat_replication')).toMatchObject({ success: true, statements: 2 });
    // The next scrape guesses b and keeps it.
    const next = await scrape();
    expect(lsnDiff(next)).toHaveLength(1);
    expect(lsnDiff(next)[0]).toContain('server="b:5432"');
    expect(sent.filter((s) => s.endsWith('replication'))).toEqual(['b:5432 replication']);
  });

  it('a failure of the dropped guess does not fail the scrape; a failure on the confirmed primary does', async () => {
    const { a, b, registry, scrape } = setup();
    await scrape();
    a.inRecovery = true;
    b.inRecovery = false;
    a.replicationError = new Error('a: recovery is in progress');
    const text = await scrape();
    expect(registry.last.get('pg_stat_replication')).toMatchObject({ success: true, errors: [] });
    expect(lsnDiff(text)[0]).toContain('server="b:5432"');
    b.replicationError = new Error('b: permission denied for pg_stat_replication');
    const failed = await scrape();
    expect(registry.last.get('pg_stat_replication')).toMatchObject({ success: false, errors: ['b: permission denied for pg_stat_replication'] });
    expect(lsnDiff(failed)).toEqual([]);
  });
});
