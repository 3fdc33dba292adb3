import type { Gauge } from 'prom-client';
import { safeMessage } from '../errors.js';
import type { PgServer } from '../integrations/postgres.js';

/**
 * The primary as the scrape observed it (src/topology.ts: the server out of recovery, else the last
 * one seen, else the configured one). Collectors that read "the primary" call it at the start of
 * their collect, so they share the scrape's one observation instead of probing again.
 */
export type ObservedPrimary = () => Promise<PgServer>;

/** What a read on the observed primary gave, and how many statements it cost (1, or 2 when re-run). */
export interface PrimaryRead<T> {
  primary: PgServer;
  value: T;
  statements: number;
}

/**
 * Runs one statement's worth of `read` on the scrape's observed primary, without waiting for the
 * observation to send it: `read` starts at once on the primary observed before (`guess`: the last
 * observed primary, as Topology.primaryServer() names it while the observation runs), and its result
 * is kept only when the observation confirms that server; otherwise it is dropped (whatever it
 * answered or failed) and `read` runs again on the confirmed primary. So the values always come from
 * the server this scrape observed as the primary, and in the steady state they cost no round trip
 * after the observation's. The result (or failure) is the confirmed server's.
 */
export type OnPrimary = <T>(read: (primary: PgServer) => Promise<T>) => Promise<PrimaryRead<T>>;

export function speculativePrimary(guess: () => PgServer, observed: ObservedPrimary): OnPrimary {
  return async <T>(read: (primary: PgServer) => Promise<T>): Promise<PrimaryRead<T>> => {
    const early = guess();
    const pending = read(early);
    // Dropped when the observation names another server: its rejection must not go unhandled.
    pending.catch(() => undefined);
    const primary = await observed();
    if (primary.server === early.server) return { primary, value: await pending, statements: 1 };
    return { primary, value: await read(primary), statements: 2 };
  };
}

/**
 * What one collection produced: values per gauge, plus the failures met on the way. A collector that
 * reaches two servers and loses one still reports what the other said, and is marked failed.
 */
export class SampleSet {
  readonly values = new Map<Gauge<string>, { labels: Record<string, string>; value: number }[]>();
  readonly errors: string[] = [];

  set(gauge: Gauge<string>, labels: Record<string, string>, value: number): this {
    if (!Number.isFinite(value)) return this;
    let list = this.values.get(gauge);
    if (!list) this.values.set(gauge, (list = []));
    list.push({ labels, value });
    return this;
  }

  /** Appends what `other` gathered (values, failures, statements) after this set's own. */
  merge(other: SampleSet): this {
    for (const [gauge, samples] of other.values) for (const s of samples) this.set(gauge, s.labels, s.value);
    this.errors.push(...other.errors);
    this.statements += other.statements;
    return this;
  }

  fail(err: unknown): this {
    this.errors.push(safeMessage(err));
    return this;
  }

  /** Number of statements sent to a server, for the benchmark's "SQL per scrape" figure. */
  statements = 0;
}

export interface Collector {
  /** The collector label of dbpilot_collector_success; named after the view or command it reads. */
  readonly name: string;
  /** Every gauge this collector fills. They are emptied before each fill so series of vanished targets disappear. */
  readonly gauges: readonly Gauge<string>[];
  /** Gathers values now. The signal aborts when the collector's time budget is spent. */
  collect(signal: AbortSignal): Promise<SampleSet>;
  close?(): Promise<void>;
}
