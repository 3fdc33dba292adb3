/**
 * `dbpilot status`: the cluster right now, from the same collectors /metrics runs.
 */
import type { Gauge } from 'prom-client';
import type { Runtime } from './runtime.js';

export interface MemberStatus {
  server: string;
  pod: string | null;
  role: 'primary' | 'replica';
  up: boolean;
  inRecovery: boolean | null;
  /** On the primary: the standby's state in pg_stat_replication; on a replica, its own when known. */
  state: string | null;
  lagBytes: number | null;
  lagSeconds: number | null;
  longRunningQueries: number | null;
  oldestQuerySeconds: number | null;
  diskUsedRatio: number | null;
  error: string | null;
}

export interface ClusterStatus {
  at: string;
  postgres: MemberStatus[];
  redis: { target: string; up: boolean; memoryUsedBytes: number | null; memoryMaxBytes: number | null; rejectedConnections: number | null; connectedClients: number | null };
  collectors: { name: string; success: boolean; durationSeconds: number; errors: string[] }[];
}

async function values(runtime: Runtime, name: string): Promise<{ labels: Record<string, string | number>; value: number }[]> {
  const m = runtime.metrics.prometheus.getSingleMetric(name) as Gauge<string> | undefined;
  if (!m) return [];
  return (await m.get()).values as { labels: Record<string, string | number>; value: number }[];
}

export async function gatherStatus(runtime: Runtime): Promise<ClusterStatus> {
  const results = await runtime.exporter.registry.collect();
  const probes = runtime.exporter.pgServer.lastProbes();
  const standbys = runtime.exporter.pgStatReplication.lastRows();
  const longRunning = await values(runtime, 'pg_long_running_queries');
  const oldest = await values(runtime, 'pg_long_running_queries_oldest_seconds');
  const fsSize = await values(runtime, 'pg_filesystem_size_bytes');
  const fsAvail = await values(runtime, 'pg_filesystem_avail_bytes');
  const sum = (rows: typeof longRunning, server: string) =>
    rows.filter((r) => r.labels.server === server).reduce((a, r) => a + r.value, 0);
  const max = (rows: typeof longRunning, server: string) =>
    rows.filter((r) => r.labels.server === server).reduce((a, r) => Math.max(a, r.value), 0);

  const pods = new Map(runtime.cluster.all.map((s) => [s.server, s.pod ?? null]));
  const postgres: MemberStatus[] = probes.map((p) => {
    const size = fsSize.find((r) => r.labels.server === p.server)?.value;
    const avail = fsAvail.find((r) => r.labels.server === p.server)?.value;
    const hasActivity = longRunning.some((r) => r.labels.server === p.server);
    // A standby's pg_stat_replication row on the primary, matched by its lag when it is the only one.
    const standby = p.role === 'replica' && standbys.length === 1 ? standbys[0] : undefined;
    return {
      server: p.server,
      pod: pods.get(p.server) ?? null,
      role: p.role,
      up: p.up,
      inRecovery: p.inRecovery,
      state: p.up ? (p.inRecovery ? (standby?.state ?? 'standby') : 'running') : null,
      lagBytes: p.lagBytes,
      lagSeconds: p.lagSeconds,
      longRunningQueries: hasActivity ? sum(longRunning, p.server) : null,
      oldestQuerySeconds: hasActivity ? max(oldest, p.server) : null,
      diskUsedRatio: size && avail !== undefined ? 1 - avail / size : null,
      error: p.error,
    };
  });
  const single = async (n: string) => (await values(runtime, n))[0]?.value ?? null;
  return {
    at: new Date().toISOString(),
    postgres,
    redis: {
      target: runtime.redis.target,
      up: runtime.exporter.redis.lastUp() === true,
      memoryUsedBytes: await single('redis_memory_used_bytes'),
      memoryMaxBytes: await single('redis_memory_max_bytes'),
      rejectedConnections: await single('redis_rejected_connections_total'),
      connectedClients: await single('redis_connected_clients'),
    },
    collectors: [...results].map(([name, r]) => ({ name, success: r.success, durationSeconds: r.durationSeconds, errors: r.errors })),
  };
}
