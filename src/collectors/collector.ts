import type { Gauge } from 'prom-client';
import { safeMessage } from '../errors.js';
import type { PgServer } from '../integrations/postgres.js';

/**
 * The primary as the scrape observed it (src/topology.ts: the server out of recovery, else the last
 * one seen, else the configured one). Collectors that read "the primary" call it at the start of
 * their collect, so they share the scrape's one observation instead of probing again.
 */
export type ObservedPrimary = () => Promise<PgServer>;

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
