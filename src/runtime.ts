/**
 * The composition root: one place that turns a validated Config into live parts (pools, clients,
 * the topology, collectors, metrics) and closes them again in the right order. The service and the
 * CLI share it.
 */
import type { Config } from './config.js';
import type { Logger } from './logger.js';
import { Metrics } from './metrics.js';
import { createPgCluster, type PgCluster } from './integrations/postgres.js';
import { RedisClient } from './integrations/redis.js';
import { createExporter, type Exporter } from './exporter.js';
import { Topology } from './topology.js';

export const VERSION = '0.1.0';

export interface HealthReport {
  database: 'healthy' | 'unhealthy';
  redis: 'healthy' | 'unhealthy';
  details: { database?: string; redis?: string };
}

const NOTHING_FENCED: ReadonlySet<string> = new Set();

export class Runtime {
  readonly metrics: Metrics;
  readonly cluster: PgCluster;
  /** Which server is primary, as the servers say; shared by the collectors, /health and `dbpilot status`. */
  readonly topology: Topology;
  readonly redis: RedisClient;
  readonly exporter: Exporter;
  private readonly closers: (() => Promise<void> | void)[] = [];
  private fencedSource: () => ReadonlySet<string>;

  constructor(
    readonly config: Config,
    readonly logger: Logger,
    opts: { processMetrics?: boolean; fenced?: () => ReadonlySet<string> } = {},
  ) {
    this.metrics = new Metrics(opts);
    this.metrics.gauge('dbpilot_build_info', 'dbpilot version; always 1.', ['version']).set({ version: VERSION }, 1);
    this.cluster = createPgCluster(config.postgres, logger.child({ component: 'postgres' }));
    this.fencedSource = opts.fenced ?? (() => NOTHING_FENCED);
    this.topology = new Topology(this.cluster, {
      // Inside the collector budget, so pg_up 0 is reported rather than the whole collector timing out.
      probeBudgetMs: Math.floor(config.collectors.timeoutMs * 0.8),
      fenced: () => this.fencedSource(),
    });
    this.redis = new RedisClient({ ...config.redis, logger: logger.child({ component: 'redis' }) });
    this.exporter = createExporter(config, this.metrics, this.cluster, this.topology, this.redis, logger.child({ component: 'collectors' }));
  }

  /**
   * Where the topology learns which servers a completed failover fenced (their `server` labels).
   * For what is built after the Runtime (the failover intent lives in the store); until it is set,
   * nothing is fenced.
   */
  setFencedSource(source: () => ReadonlySet<string>): void {
    this.fencedSource = source;
  }

  /** Registers something to close before the pools (e.g. the engine, the HTTP server). */
  onClose(fn: () => Promise<void> | void): void {
    this.closers.push(fn);
  }

  /**
   * The runbook's health shape: is the primary answering, is Redis answering. The primary is the
   * observed one (a fresh observation, shared with a scrape in flight), so /health follows a
   * promotion; two servers out of recovery at once (split brain) is unhealthy.
   */
  async health(): Promise<HealthReport> {
    const [topology, redis] = await Promise.all([
      this.topology.observe(0),
      this.redis.ping().then(
        () => null,
        (err: Error) => err.message,
      ),
    ]);
    const details: HealthReport['details'] = {};
    let database: HealthReport['database'] = 'healthy';
    if (topology.splitBrain) {
      database = 'unhealthy';
      details.database = `split brain: ${topology.primaries.map((m) => m.server).join(', ')} are all out of recovery`;
    } else if (!topology.primary) {
      database = 'unhealthy';
      const expected = this.topology.primaryServer().server;
      const member = topology.members.find((m) => m.server === expected);
      details.database = member?.error ?? `no server is out of recovery (${expected} is ${member?.role ?? 'unknown'})`;
    }
    if (redis) details.redis = redis;
    return { database, redis: redis ? 'unhealthy' : 'healthy', details };
  }

  async close(): Promise<void> {
    for (const fn of this.closers.reverse()) {
      try {
        await fn();
      } catch (err) {
        this.logger.warn({ err: (err as Error).message }, 'error while closing');
      }
    }
    await this.exporter.registry.close();
    await this.cluster.close();
    await this.redis.close();
  }
}
