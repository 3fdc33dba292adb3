/**
 * `dbpilot status`: the cluster right now, from the same collectors and the same topology
 * observation /metrics runs. Roles are observed (src/topology.ts), not configured.
 */
import type { Gauge } from 'prom-client';
import type { Runtime } from './runtime.js';
import type { ObservedRole } from './topology.js';

export interface MemberStatus {
  server: string;
  pod: string | null;
  /** What the server says it is: primary, replica, fenced (by a completed failover) or unknown. */
  role: ObservedRole;
  /** What the configuration calls it. */
  configuredRole: 'primary' | 'replica';
  up: boolean;
  inRecovery: boolean | null;
  /** On the primary: `running`; on a replica: its WAL receiver's status, or the primary's pg_stat_replication state. */
  state: string | null;
  /** A replica's WAL receiver (pg_stat_wal_receiver.status), null when none runs. */
  receiverStatus: string | null;
  /** Where a replica streams from (sender_host:sender_port). */
  upstream: string | null;
  /** Primary: current WAL position; replica: last received. */
  lsn: string | null;
  lagBytes: number | null;
  lagSeconds: number | null;
  longRunningQueries: number | null;
  oldestQuerySeconds: number | null;
  diskUsedRatio: number | null;
  error: string | null;
}

export interface TopologyStatus {
  /** server of the observed primary, null when none or several are out of recovery. */
  primary: string | null;
  /** server of every server out of recovery. */
  primaries: string[];
  splitBrain: boolean;
}

export interface ClusterStatus {
  at: string;
  topology: TopologyStatus;
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
  // The scrape's own observation (pg_server made it); observe only if that collector could not.
  const topology = runtime.topology.last() ?? (await runtime.topology.observe(0));
  const standbys = runtime.exporter.pgStatReplication.lastRows();
  const longRunning = await values(runtime, 'pg_long_running_queries');
  const oldest = await values(runtime, 'pg_long_running_queries_oldest_seconds');
  const fsSize = await values(runtime, 'pg_filesystem_size_bytes');
  const fsAvail = await values(runtime, 'pg_filesystem_avail_bytes');
  const sum = (rows: typeof longRunning, server: string) =>
    rows.filter((r) => r.labels.server === server).reduce((a, r) => a + r.value, 0);
  const max = (rows: typeof longRunning, server: string) =>
    rows.filter((r) => r.labels.server === server).reduce((a, r) => Math.max(a, r.value), 0);

  const postgres: MemberStatus[] = topology.members.map((m) => {
    const size = fsSize.find((r) => r.labels.server === m.server)?.value;
    const avail = fsAvail.find((r) => r.labels.server === m.server)?.value;
    const hasActivity = longRunning.some((r) => r.labels.server === m.server);
    // A standby's pg_stat_replication row on the primary, matched when it is the only one.
    const standby = m.inRecovery && standbys.length === 1 ? standbys[0] : undefined;
    return {
      server: m.server,
      pod: m.pod,
      role: m.role,
      configuredRole: m.configuredRole,
      up: m.up,
      inRecovery: m.inRecovery,
      state: m.up ? (m.inRecovery ? (m.receiverStatus ?? standby?.state ?? 'no WAL receiver') : 'running') : null,
      receiverStatus: m.receiverStatus,
      upstream: m.upstream,
      lsn: m.lsn,
      lagBytes: m.lagBytes,
      lagSeconds: m.lagSeconds,
      longRunningQueries: hasActivity ? sum(longRunning, m.server) : null,
      oldestQuerySeconds: hasActivity ? max(oldest, m.server) : null,
      diskUsedRatio: size && avail !== undefined ? 1 - avail / size : null,
      error: m.error,
    };
  });
  const single = async (n: string) => (await values(runtime, n))[0]?.value ?? null;
  return {
    at: new Date().toISOString(),
    topology: {
      primary: topology.primary?.server ?? null,
      primaries: topology.primaries.map((m) => m.server),
      splitBrain: topology.splitBrain,
    },
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
