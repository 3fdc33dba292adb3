/**
 * Redis INFO (runbook scenario 5, steps 1 and 2): up, memory, rejected connections, clients. Same
 * names as redis_exporter.
 *
 * When Redis does not answer INFO (refused, reset, or frozen until the command timeout), two things
 * are true and both are said: `redis_up 0` — the measurement RedisDown alerts on — and the collector
 * failed (`dbpilot_collector_success{collector="redis"} 0`, the reason in the log and in `dbpilot
 * status`), because it could not read its source and every other redis_* value is missing. A
 * collector reports success only when it read what it reads. The INFO call is bounded by `budgetMs`
 * (inside the collector budget), so even with a command timeout longer than the budget redis_up 0 is
 * exported rather than the whole collector timing out with no redis_up at all.
 */
import type { Metrics } from '../metrics.js';
import type { RedisClient } from '../integrations/redis.js';
import { safeMessage } from '../errors.js';
import { SampleSet, type Collector } from './collector.js';
import { parseRedisInfo, redisHealth } from './redis-info.js';

export function redisCollector(metrics: Metrics, client: RedisClient, budgetMs: number): Collector & { lastUp(): boolean | null } {
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
      let timer: NodeJS.Timeout | undefined;
      try {
        text = await Promise.race([
          client.info(),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error(`redis ${client.target}: no answer within ${budgetMs} ms`)), budgetMs);
          }),
        ]);
      } catch (err) {
        lastUp = false;
        return set.set(up, {}, 0).fail(safeMessage(err));
      } finally {
        clearTimeout(timer);
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
