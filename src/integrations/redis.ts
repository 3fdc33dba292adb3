/**
 * Thin Redis client. Commands fail fast while disconnected (no offline queue, no per-request
 * retries) so a dead Redis is `redis_up 0` within one scrape, while the connection itself keeps
 * reconnecting in the background with a capped backoff.
 *
 * Runbook scenario 5 also needs answers that the long-lived connection cannot give: whether Redis
 * accepts a NEW connection now (`redis-cli ping` is one; a Redis at maxclients still serves the
 * connections it has and refuses new ones), so pingFresh / infoFresh / flushAll each open a
 * connection of their own with a short connect timeout, no reconnect and no retry, and close it.
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

/** A one-off connection's limits (scenario 5's probes). */
export interface FreshConnectionOptions {
  connectTimeoutMs: number;
  commandTimeoutMs: number;
}

export class RedisClient {
  private readonly redis: Redis;
  readonly target: string;
  private readonly url: string;
  private lastError: string | null = null;

  constructor(opts: RedisClientOptions) {
    this.url = opts.url;
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

  /**
   * Runs `fn` on a connection of its own: opened now (connect timeout as given), never reconnected,
   * no command retried, closed after. Errors are DependencyErrors without credentials.
   */
  private async fresh<T>(opts: FreshConnectionOptions, fn: (r: Redis) => Promise<T>): Promise<T> {
    const r = new Redis(this.url, {
      lazyConnect: true,
      connectTimeout: opts.connectTimeoutMs,
      commandTimeout: opts.commandTimeoutMs,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      // The ready check is an INFO of its own: the probe is the command given, nothing else.
      enableReadyCheck: false,
      connectionName: 'dbpilot',
      retryStrategy: () => null,
      reconnectOnError: () => false,
    });
    // What the socket said (ECONNREFUSED, the server's -ERR before it closes): a command failing on a
    // closed connection only says "Connection is closed", which tells an on-call engineer nothing.
    let said: unknown = null;
    r.on('error', (err: unknown) => (said ??= err));
    try {
      await r.connect();
      return await fn(r);
    } catch (err) {
      const closed = err instanceof Error && /Connection is closed/.test(err.message);
      throw new DependencyError(`redis ${this.target}`, safeMessage(closed && said ? said : err));
    } finally {
      r.disconnect(false);
    }
  }

  /** `redis-cli ping` on a new connection: the reply (PONG), or a DependencyError saying why not. */
  pingFresh(opts: FreshConnectionOptions): Promise<string> {
    return this.fresh(opts, (r) => r.ping());
  }

  /** `redis-cli info [section]` on a new connection. */
  infoFresh(opts: FreshConnectionOptions, section?: string): Promise<string> {
    return this.fresh(opts, (r) => (section ? r.info(section) : r.info()));
  }

  /**
   * `redis-cli FLUSHALL` (runbook scenario 5 step 3) on a new connection, with the INFO commandstats
   * before and after in the same connection, so the caller can show from Redis's own counters that
   * it ran. Only the approval-only redis-flushall handler calls it.
   */
  flushAll(opts: FreshConnectionOptions): Promise<{ reply: string; statsBefore: string; statsAfter: string }> {
    return this.fresh(opts, async (r) => {
      const statsBefore = await r.info('commandstats');
      const reply = await r.flushall();
      const statsAfter = await r.info('commandstats');
      return { reply, statsBefore, statsAfter };
    });
  }

  async close(): Promise<void> {
    this.redis.disconnect(false);
  }
}
