/**
 * Redis INFO (runbook scenario 5, steps 1 and 2): up, memory, rejected connections, clients. Same
 * names as redis_exporter. When Redis does not answer, redis_up is 0 and the collector still
 * succeeds: "down" is a measurement, not a collector failure.
 */
import type { Metrics } from '../metrics.js';
import type { RedisClient } from '../integrations/redis.js';
import { SampleSet, type Collector } from './collector.js';
import { parseRedisInfo, redisHealth } from './redis-info.js';

export function redisCollector(metrics: Metrics, client: RedisClient): Collector & { lastUp(): boolean | null } {
  const up = metrics.gauge('redis_up', 'Whether Redis answered INFO within the timeouts (1) or not (0).');
  const used = metrics.gauge('redis_memory_used_bytes', 'used_memory from INFO memory.');
  const max = metrics.gauge('redis_memory_max_bytes', 'maxmemory from INFO memory (0 = no limit).');
  const rejected = metrics.gauge('redis_rejected_connections_total', 'rejected_connections from INFO stats: connections refused because of maxclients (a counter).');
  const clients = metrics.gauge('redis_connected_clients', 'connected_clients from INFO clients.');
  let lastUp: boolean | null = null;
  return {
    name: 'redis',
    gauges: [up, used, max, rejected, clients],
    lastUp: () => lastUp,
    async collect() {
      const set = new SampleSet();
      let text: string;
      try {
        text = await client.info();
      } catch {
        lastUp = false;
        return set.set(up, {}, 0);
      }
      lastUp = true;
      const h = redisHealth(parseRedisInfo(text));
      set.set(up, {}, 1);
      if (h.usedMemoryBytes !== undefined) set.set(used, {}, h.usedMemoryBytes);
      if (h.maxMemoryBytes !== undefined) set.set(max, {}, h.maxMemoryBytes);
      if (h.rejectedConnectionsTotal !== undefined) set.set(rejected, {}, h.rejectedConnectionsTotal);
      if (h.connectedClients !== undefined) set.set(clients, {}, h.connectedClients);
      return set;
    },
  };
}
