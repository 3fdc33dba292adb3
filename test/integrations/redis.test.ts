/**
 * The Redis client's one-off connections (runbook scenario 5) on a Redis of this file's own: a new
 * connection per call, closed after; what the socket or Redis said when it fails, never a password.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DependencyError } from '../../src/errors.js';
import { RedisClient } from '../../src/integrations/redis.js';
import { createLogger } from '../../src/logger.js';
import { commandCalls } from '../../src/remediation/handlers/redis-failure.js';
import { startRedis, type RedisNode } from '../support/redis-server.js';
import { until } from '../support/remediation.js';

const O = { connectTimeoutMs: 500, commandTimeoutMs: 1000 };
const SECRET = 'wrong-secret-never-shown-51d0';
let node: RedisNode;
let admin: Redis;
const clients: RedisClient[] = [];

function client(url: string): RedisClient {
  const c = new RedisClient({ url, connectTimeoutMs: 300, commandTimeoutMs: 500, logger: createLogger('silent') });
  clients.push(c);
  return c;
}

const connected = async () => Number(/connected_clients:(\d+)/.exec(await admin.info('clients'))![1]);

beforeAll(async () => {
  node = await startRedis();
  admin = new Redis({ host: '127.0.0.1', port: node.port, maxRetriesPerRequest: 0 });
  admin.on('error', () => undefined);
  await admin.ping();
});
afterAll(async () => {
  for (const c of clients) await c.close();
  admin.disconnect();
  await node.stop();
});

describe('RedisClient one-off connections', () => {
  it('pingFresh and infoFresh answer on a connection of their own, closed after', async () => {
    const c = client(node.url);
    const before = await connected();
    expect(await c.pingFresh(O)).toBe('PONG');
    expect(await c.infoFresh(O, 'keyspace')).toMatch(/^# Keyspace/);
    // Nothing is left open: the connections went with their calls (the long-lived one was never opened).
    await until(async () => (await connected()) === before, 'the one-off connections to close');
    const names = String(await admin.call('CLIENT', 'LIST'));
    expect(names).not.toMatch(/name=dbpilot/);
  });

  it('flushAll runs FLUSHALL and hands back the commandstats around it', async () => {
    await admin.set('k1', 'v');
    await admin.set('k2', 'v');
    const c = client(node.url);
    const r = await c.flushAll(O);
    expect(r.reply).toBe('OK');
    expect(commandCalls(r.statsAfter, 'flushall')).toBe(commandCalls(r.statsBefore, 'flushall') + 1);
    expect(commandCalls(String(await admin.info('commandstats')), 'flushall')).toBe(commandCalls(r.statsAfter, 'flushall'));
    expect(await admin.dbsize()).toBe(0);
  });

  it('a refused password is Redis’s own answer, without the password', async () => {
    await admin.config('SET', 'requirepass', 'the-right-one-0000');
    try {
      await admin.auth('the-right-one-0000');
      const err = await client(`redis://:${SECRET}@127.0.0.1:${node.port}`).pingFresh(O).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DependencyError);
      expect((err as Error).message).toMatch(/WRONGPASS|invalid password/i);
      expect((err as Error).message).not.toContain(SECRET);
      expect((err as Error).message).toContain(`redis://:***@127.0.0.1:${node.port}`);
    } finally {
      await admin.config('SET', 'requirepass', '');
    }
  });

  it('a stopped Redis is the socket’s refusal, not a bare "Connection is closed"', async () => {
    const c = client(`redis://:${SECRET}@127.0.0.1:${node.port}`);
    await node.stop();
    try {
      const err = await c.pingFresh(O).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DependencyError);
      expect((err as Error).message).toBe(`redis redis://:***@127.0.0.1:${node.port}: connect ECONNREFUSED 127.0.0.1:${node.port}`);
    } finally {
      await node.start();
      admin.disconnect();
      admin = new Redis({ host: '127.0.0.1', port: node.port, maxRetriesPerRequest: 0 });
      admin.on('error', () => undefined);
    }
  });
});
