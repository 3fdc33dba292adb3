/**
 * The cluster's topology as the servers report it, not as the configuration names it (issue 9 §1).
 *
 * The configuration lists the servers (postgres.primary + postgres.replicas); which of them is the
 * primary is observed: one statement per server and observation (src/collectors/pg-server.ts,
 * PROBE_SQL) reads pg_is_in_recovery(), the WAL positions and pg_stat_wal_receiver. pg_up{role},
 * /health, `dbpilot status` and the collectors that need "the primary" follow a promotion on the
 * very next observation.
 *
 * The rules (pure functions below, table-tested in test/topology.test.ts):
 * - up and out of recovery: primary (all such servers are `primaries`; `primary` is the one when
 *   there is exactly one; more than one is split brain);
 * - up and in recovery: replica;
 * - down: `fenced` when a completed failover fenced it (`fenced()`), else the role it had when it
 *   was last seen up, else its configured role. So the configured primary counts as the primary
 *   until something else is observed, and PostgresPrimaryDown fires on `pg_up{role="primary"} 0`
 *   even when the primary dies before dbpilot ever reached it;
 * - a fenced server that is up and out of recovery is role `fenced` but still counts in
 *   `primaries`: it accepts writes, and next to the promoted server that is split brain.
 */
import type { PgCluster, PgServer, Role as ConfiguredRole } from './integrations/postgres.js';
import { probeServer, type ServerProbe } from './collectors/pg-server.js';

export type ObservedRole = 'primary' | 'replica' | 'fenced' | 'unknown';

export interface MemberState {
  /** host:port, the `server` label. */
  server: string;
  pod: string | null;
  /** What the configuration says (postgres.primary or postgres.replicas). */
  configuredRole: ConfiguredRole;
  /** What the server says (see the rules above). */
  role: ObservedRole;
  up: boolean;
  /** pg_is_in_recovery(); null when the server did not answer. */
  inRecovery: boolean | null;
  /** Primary: pg_current_wal_lsn(); replica: pg_last_wal_receive_lsn(). Text, e.g. `0/3000148`. */
  lsn: string | null;
  /** Replica: pg_last_wal_replay_lsn(). */
  replayLsn: string | null;
  /** pg_stat_wal_receiver.status, or null when no WAL receiver runs. */
  receiverStatus: string | null;
  /** sender_host:sender_port of the WAL receiver, or null. */
  upstream: string | null;
  /** Replica: WAL received but not replayed (bytes). Same semantics as pg_replication_lag_bytes. */
  lagBytes: number | null;
  /** Replica: the delay while WAL waits to be replayed, 0 when all is replayed. As pg_replication_lag_seconds. */
  lagSeconds: number | null;
  error: string | null;
}

export interface TopologySnapshot {
  /** When the observation started (ms since the epoch). */
  at: number;
  /** Every configured server, in configuration order (primary first). */
  members: MemberState[];
  /** The one server that is up, out of recovery and not fenced, when there is exactly one server out of recovery; else null. */
  primary: MemberState | null;
  /** Every server that is up and out of recovery (writable), fenced ones included. */
  primaries: MemberState[];
  /** More than one server out of recovery. dbpilot exports and alerts on it; it never acts on it. */
  splitBrain: boolean;
  /** The highest WAL position dbpilot has seen on a primary, kept across observations. */
  lastPrimaryLsn: { server: string; lsn: string; at: number } | null;
}

export interface TopologyOptions {
  /** Bound of each server's probe (connect + query); a hung server is down after it, the others are not delayed. */
  probeBudgetMs: number;
  /** `server` labels of the servers a completed failover fenced. Default: none. */
  fenced?: () => ReadonlySet<string>;
  /** Clock, for tests. */
  now?: () => number;
}

// ── pure rules ─────────────────────────────────────────────────────────────────────────────

/** The kind of server a probe that answered saw: writable or in recovery. */
export type SeenRole = 'primary' | 'replica';

/** What a probe says the server is, or undefined when it did not answer (or did not say). */
export function seenRole(probe: Pick<ServerProbe, 'up' | 'inRecovery'>): SeenRole | undefined {
  if (!probe.up || probe.inRecovery === null) return undefined;
  return probe.inRecovery ? 'replica' : 'primary';
}

/** One server's observed role (the rules in the file comment). */
export function roleOf(input: {
  configuredRole: ConfiguredRole;
  up: boolean;
  inRecovery: boolean | null;
  fenced: boolean;
  /** What the server was when it last answered, from earlier observations. */
  lastSeen: SeenRole | undefined;
}): ObservedRole {
  if (input.up) {
    // A server that answered without saying whether it is in recovery: nothing to go on.
    if (input.inRecovery === null) return 'unknown';
    if (input.inRecovery) return 'replica';
    return input.fenced ? 'fenced' : 'primary';
  }
  if (input.fenced) return 'fenced';
  return input.lastSeen ?? input.configuredRole;
}

/** Whether the server accepts writes now: up and out of recovery (whatever its role). */
export function isWritable(m: Pick<MemberState, 'up' | 'inRecovery'>): boolean {
  return m.up && m.inRecovery === false;
}

/** primaries / primary / splitBrain of a set of members. */
export function summarize(members: readonly MemberState[]): Pick<TopologySnapshot, 'primary' | 'primaries' | 'splitBrain'> {
  const primaries = members.filter(isWritable);
  const only = primaries.length === 1 ? primaries[0]! : null;
  // A lone writable server that a failover fenced is not "the primary": dbpilot never aims at it.
  return { primaries, primary: only && only.role === 'primary' ? only : null, splitBrain: primaries.length > 1 };
}

/** A pg_lsn's text form (`16/B374D848`) as a number of bytes; undefined when it is not one. */
export function parseLsn(lsn: string | null | undefined): bigint | undefined {
  const m = lsn ? /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(lsn) : null;
  if (!m) return undefined;
  return (BigInt(`0x${m[1]}`) << 32n) + BigInt(`0x${m[2]}`);
}

/**
 * The highest WAL position seen on a primary: the previous one, or an up primary's if it is further.
 * A fenced server's position is not counted even when it accepts writes: what it writes after the
 * fence is a diverging history, not what a replica must have received.
 */
export function nextLastPrimaryLsn(
  prev: TopologySnapshot['lastPrimaryLsn'],
  members: readonly MemberState[],
  at: number,
): TopologySnapshot['lastPrimaryLsn'] {
  let best = prev;
  let bestPos = parseLsn(prev?.lsn);
  for (const m of members) {
    if (m.role !== 'primary' || !isWritable(m)) continue;
    const pos = parseLsn(m.lsn);
    if (pos === undefined) continue;
    if (bestPos === undefined || pos > bestPos) {
      best = { server: m.server, lsn: m.lsn!, at };
      bestPos = pos;
    }
  }
  return best;
}

// ── the observer ───────────────────────────────────────────────────────────────────────────

const NONE: ReadonlySet<string> = new Set();

export class Topology {
  private snapshot: TopologySnapshot | null = null;
  private inFlight: Promise<TopologySnapshot> | null = null;
  /** Per server: what it was when it last answered. */
  private readonly lastSeen = new Map<string, SeenRole>();
  /** The server of the last snapshot that had a primary. */
  private lastPrimary: string | null = null;
  private lastFenced: ReadonlySet<string> = NONE;
  private readonly now: () => number;

  constructor(
    private readonly cluster: PgCluster,
    private readonly opts: TopologyOptions,
  ) {
    this.now = opts.now ?? Date.now;
  }

  /**
   * Probes every configured server at once, each bounded by `probeBudgetMs`, and derives the roles.
   * Callers arriving while an observation runs share it (it is newer than any cached one); else a
   * snapshot younger than `maxAgeMs` is returned as it is. Never rejects: a server that cannot be
   * reached is a member that is down.
   */
  observe(maxAgeMs = 0): Promise<TopologySnapshot> {
    if (this.inFlight) return this.inFlight;
    if (this.snapshot && this.now() - this.snapshot.at < maxAgeMs) return Promise.resolve(this.snapshot);
    const p = this.observeNow().finally(() => {
      if (this.inFlight === p) this.inFlight = null;
    });
    this.inFlight = p;
    return p;
  }

  /** The latest snapshot, or null before the first observation has finished. */
  last(): TopologySnapshot | null {
    return this.snapshot;
  }

  /** The observed primary; else the last primary observed; else the configured primary. */
  primaryServer(): PgServer {
    const name = this.snapshot?.primary?.server ?? this.lastPrimary;
    return (name !== null ? this.cluster.all.find((s) => s.server === name) : undefined) ?? this.cluster.primary;
  }

  private fencedNow(): ReadonlySet<string> {
    if (!this.opts.fenced) return NONE;
    try {
      this.lastFenced = this.opts.fenced();
    } catch {
      // Keep the last set it gave: a failing source must neither unfence a server nor stop observation.
    }
    return this.lastFenced;
  }

  private async observeNow(): Promise<TopologySnapshot> {
    const at = this.now();
    const servers = this.cluster.all;
    const probes = await Promise.all(servers.map((s) => probeServer(s, this.opts.probeBudgetMs)));
    const fenced = this.fencedNow();
    const members = probes.map((p, i): MemberState => {
      const s = servers[i]!;
      const role = roleOf({
        configuredRole: s.role,
        up: p.up,
        inRecovery: p.inRecovery,
        fenced: fenced.has(s.server),
        lastSeen: this.lastSeen.get(s.server),
      });
      return {
        server: s.server,
        pod: s.pod ?? null,
        configuredRole: s.role,
        role,
        up: p.up,
        inRecovery: p.inRecovery,
        lsn: p.lsn,
        replayLsn: p.replayLsn,
        receiverStatus: p.receiverStatus,
        upstream: p.upstream,
        lagBytes: p.lagBytes,
        lagSeconds: p.lagSeconds,
        error: p.error,
      };
    });
    for (const p of probes) {
      const seen = seenRole(p);
      if (seen) this.lastSeen.set(p.server, seen);
    }
    const summary = summarize(members);
    if (summary.primary) this.lastPrimary = summary.primary.server;
    const snapshot: TopologySnapshot = {
      at,
      members,
      ...summary,
      lastPrimaryLsn: nextLastPrimaryLsn(this.snapshot?.lastPrimaryLsn ?? null, members, at),
    };
    // An older observation that finishes after a newer one (not possible through observe(), which
    // runs one at a time) must not replace it.
    if (!this.snapshot || this.snapshot.at <= at) this.snapshot = snapshot;
    return snapshot;
  }
}
