import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { infoNumber, parseRedisInfo, redisHealth } from '../../src/collectors/redis-info.js';

// Captured from `redis-cli info` against Redis 7.0.15 (CRLF line endings, as Redis sends them).
const captured = readFileSync(new URL('../fixtures/redis-info-7.0.15.txt', import.meta.url), 'utf8');

describe('parseRedisInfo', () => {
  it('reads the fields the runbook checks from captured INFO text', () => {
    const h = redisHealth(parseRedisInfo(captured));
    expect(h).toMatchObject({
      version: '7.0.15',
      role: 'master',
      usedMemoryBytes: 1015816,
      maxMemoryBytes: 0,
      rejectedConnectionsTotal: 0,
      connectedClients: 1,
    });
  });

  it.each([
    ['# Memory\r\nused_memory:42\r\n', 'used_memory', 42],
    ['used_memory:7\nmaxmemory:1048576\n', 'maxmemory', 1048576],
    ['rejected_connections:12', 'rejected_connections', 12],
    ['connected_clients: 3 ', 'connected_clients', 3],
    ['used_memory_human:1.2M', 'used_memory_human', undefined],
    ['', 'used_memory', undefined],
    ['garbage without colon\nused_memory:5', 'used_memory', 5],
    ['db0:keys=1,expires=0,avg_ttl=0', 'db0', undefined],
  ])('%j → %s = %s', (text, key, expected) => {
    expect(infoNumber(parseRedisInfo(text), key)).toBe(expected);
  });

  it('keeps values containing colons whole', () => {
    const info = parseRedisInfo('executable:/usr/bin/redis-server\r\nconfig_file:C:\\redis.conf\r\n');
    expect(info.get('config_file')).toBe('C:\\redis.conf');
  });

  it('skips section headers and blank lines', () => {
    const info = parseRedisInfo('# Server\r\n\r\n# Clients\r\nconnected_clients:2\r\n');
    expect([...info.keys()]).toEqual(['connected_clients']);
  });
});
