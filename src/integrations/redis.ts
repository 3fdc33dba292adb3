/**
 * Thin Redis client. Commands fail fast while disconnected (no offline queue, no per-request
 * retries) so a dead Redis is `redis_up 0` within one scrape, while the connection itself keeps
 * reconnecting in the background with a capped backoff.
 */
import { Redis } from 'ioredis';
import { DependencyError, redactUrl, safeMessage } from '../errors.js';
import type { Logger } from '../logger.js';

export interface RedisClientOptions {
  url: string;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  logger: Logger;
}

export class RedisClient {
  private readonly redis: Redis;
  readonly target: string;
  private lastError: string | null = null;

  constructor(opts: RedisClientOptions) {
    this.target = redactUrl(opts.url);
    this.redis = new Redis(opts.url, {
      lazyConnect: true,
      connectTimeout: opts.connectTimeoutMs,
      commandTimeout: opts.commandTimeoutMs,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      connectionName: 'dbpilot',
      retryStrategy: (times) => Math.min(100 * 2 ** Math.min(times, 4), 1000),
    });
    // Without a listener ioredis prints every failed reconnect as an unhandled error event.
    this.redis.on('error', (err: Error) => {
      const msg = safeMessage(err);
      if (msg !== this.lastError) opts.logger.warn({ redis: this.target, err: msg }, 'Redis connection error');
      this.lastError = msg;
    });
    this.redis.on('ready', () => {
      if (this.lastError) opts.logger.info({ redis: this.target }, 'Redis connection restored');
      this.lastError = null;
    });
  }

  private async ready(): Promise<void> {
    if (this.redis.status === 'wait' || this.redis.status === 'end') await this.redis.connect();
  }

  async info(): Promise<string> {
    try {
      await this.ready();
      return await this.redis.info();
    } catch (err) {
      throw new DependencyError(`redis ${this.target}`, safeMessage(err));
    }
  }

  async ping(): Promise<string> {
    try {
      await this.ready();
      return await this.redis.ping();
    } catch (err) {
      throw new DependencyError(`redis ${this.target}`, safeMessage(err));
    }
  }

  async close(): Promise<void> {
    this.redis.disconnect(false);
  }
}
