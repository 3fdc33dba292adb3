/**
 * Pure parser of Redis INFO text (runbook scenario 5: `redis-cli info stats | grep rejected_connections`,
 * `redis-cli info memory`). Kept apart from I/O so it is table-tested on captured INFO output.
 */
export type RedisInfo = Map<string, string>;

/** `# Section` headers and blank lines are skipped; `key:value` pairs are kept as text. */
export function parseRedisInfo(text: string): RedisInfo {
  const info: RedisInfo = new Map();
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const i = line.indexOf(':');
    if (i <= 0) continue;
    info.set(line.slice(0, i), line.slice(i + 1));
  }
  return info;
}

/** A numeric field, or undefined when absent or not a number (INFO fields vary between Redis versions). */
export function infoNumber(info: RedisInfo, key: string): number | undefined {
  const v = info.get(key);
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
}

export interface RedisHealth {
  usedMemoryBytes: number | undefined;
  /** 0 means no limit configured (Redis' own convention). */
  maxMemoryBytes: number | undefined;
  rejectedConnectionsTotal: number | undefined;
  connectedClients: number | undefined;
  role: string | undefined;
  version: string | undefined;
}

export function redisHealth(info: RedisInfo): RedisHealth {
  return {
    usedMemoryBytes: infoNumber(info, 'used_memory'),
    maxMemoryBytes: infoNumber(info, 'maxmemory'),
    rejectedConnectionsTotal: infoNumber(info, 'rejected_connections'),
    connectedClients: infoNumber(info, 'connected_clients'),
    role: info.get('role'),
    version: info.get('redis_version'),
  };
}
