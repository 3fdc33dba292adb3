/**
 * The composition root: one place that turns a validated Config into live parts (pools, clients,
 * collectors, metrics) and closes them again in the right order. The service and the CLI share it.
 */
import type { Config } from './config.js';
import type { Logger } from './logger.js';
import { Metrics } from './metrics.js';
import { createPgCluster, type PgCluster } from './integrations/postgres.js';
import { RedisClient } from './integrations/redis.js';
import { createExporter, type Exporter } from './exporter.js';
import { probeServer } from './collectors/pg-server.js';

export const VERSION = '0.1.0';

export interface HealthReport {
  database: 'healthy' | 'unhealthy';
  redis: 'healthy' | 'unhealthy';
  details: { database?: string; redis?: string };
}

export class Runtime {
  readonly metrics: Metrics;
  readonly cluster: PgCluster;
  readonly redis: RedisClient;
  readonly exporter: Exporter;
  private readonly closers: (() => Promise<void> | void)[] = [];

  constructor(
    readonly config: Config,
    readonly logger: Logger,
    opts: { processMetrics?: boolean } = {},
  ) {
    this.metrics = new Metrics(opts);
    this.metrics.gauge('dbpilot_build_info', 'dbpilot version; always 1.', ['version']).set({ version: VERSION }, 1);
    this.cluster = createPgCluster(config.postgres, logger.child({ component: 'postgres' }));
    this.redis = new RedisClient({ ...config.redis, logger: logger.child({ component: 'redis' }) });
    this.exporter = createExporter(config, this.metrics, this.cluster, this.redis, logger.child({ component: 'collectors' }));
  }

  /** Registers something to close before the pools (e.g. the engine, the HTTP server). */
  onClose(fn: () => Promise<void> | void): void {
    this.closers.push(fn);
  }

  /** The runbook's health shape: is the primary answering, is Redis answering. */
  async health(): Promise<HealthReport> {
    const [pg, redis] = await Promise.all([
      probeServer(this.cluster.primary, this.config.collectors.timeoutMs),
      this.redis.ping().then(
        () => null,
        (err: Error) => err.message,
      ),
    ]);
    const details: HealthReport['details'] = {};
    if (!pg.up) details.database = pg.error ?? 'unreachable';
    if (redis) details.redis = redis;
    return { database: pg.up ? 'healthy' : 'unhealthy', redis: redis ? 'unhealthy' : 'healthy', details };
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
