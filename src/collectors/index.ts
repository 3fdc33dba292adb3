/**
 * Runs the collectors at scrape time. Each runs with its own time budget and reports
 * dbpilot_collector_success / dbpilot_collector_duration_seconds; a collector that fails or hangs
 * never fails the scrape or delays it past its budget. Concurrent scrapes share one in-flight
 * collection, so ten Prometheus replicas scraping at once cost the servers one round of queries.
 */
import { createRequire } from 'node:module';
import type { Gauge } from 'prom-client';
import { CollectorTimeoutError, RegistryError, safeMessage } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { SampleSet, type Collector } from './collector.js';

type Entry = { value: number; labels: Record<string, string> };
/**
 * prom-client 15.1.3's own key of a series in a gauge (lib/util.js). With the gauge's sorted label
 * names it is the key set() files a (valid) series under, without the Object.keys + sort that set()
 * pays per sample (half of what a scrape allocated).
 */
const { hashObject } = createRequire(import.meta.url)('prom-client/lib/util') as { hashObject(labels: Record<string, string>, names: readonly string[]): string };

/** Whether every label of `labels` is one of the gauge's (set() refuses any other); no allocation. */
function onlyKnownLabels(labels: Record<string, string>, names: readonly string[]): boolean {
  let own = 0;
  for (const k in labels) if (Object.prototype.hasOwnProperty.call(labels, k)) own++;
  let known = 0;
  for (const n of names) if (labels[n] !== undefined) known++;
  return own === known;
}

/** Whether `labels` names the series `kept` is (and only labels the gauge has). */
function sameSeries(kept: Record<string, string>, labels: Record<string, string>, names: readonly string[]): boolean {
  for (const n of names) if (kept[n] !== labels[n]) return false;
  return onlyKnownLabels(labels, names);
}

/**
 * Replaces every series of `gauge` with `samples` — what reset() followed by set() for each sample
 * leaves (same series, same values, same order; a series not in `samples` is gone) — but a series
 * that was there before keeps its entry (and labels object), with the new value; when the series are
 * the very ones of last time, in the same order (the steady state: the same servers, databases and
 * states every scrape), only the values are written. So a scrape allocates next to nothing for its
 * series, they are not copied and promoted by the garbage collector scrape after scrape, and the
 * exposition's cached label blocks (Metrics.render) stay valid.
 */
export function refillGauge(gauge: Gauge<string>, samples: readonly { labels: Record<string, string>; value: number }[]): void {
  const g = gauge as unknown as { hashMap: Record<string, Entry>; sortedLabelNames: readonly string[] };
  const names = g.sortedLabelNames;
  const before = g.hashMap;
  // The steady state first: the series of last time, in the same order, compared label by label (no key built).
  let i = 0;
  let same = true;
  for (const k in before) {
    const s = samples[i];
    if (s === undefined || typeof s.value !== 'number' || !sameSeries(before[k]!.labels, s.labels, names)) {
      same = false;
      break;
    }
    i++;
  }
  if (same && i === samples.length) {
    i = 0;
    for (const k in before) before[k]!.value = samples[i++]!.value;
    return;
  }
  const keys: string[] = [];
  let valid = true;
  for (const s of samples) {
    keys.push(hashObject(s.labels, names));
    if (typeof s.value !== 'number' || !onlyKnownLabels(s.labels, names)) valid = false;
  }
  g.hashMap = {};
  for (let j = 0; j < samples.length; j++) {
    const s = samples[j]!;
    const kept = valid ? before[keys[j]!] : undefined;
    if (kept !== undefined) {
      delete before[keys[j]!]; // a second sample of the same series gets a new entry, as set() would give it
      kept.value = s.value;
      g.hashMap[keys[j]!] = kept;
    } else {
      // Validates the labels and the value as ever.
      gauge.set(s.labels, s.value);
    }
  }
}

export interface CollectorResult {
  success: boolean;
  durationSeconds: number;
  statements: number;
  errors: string[];
}

export class CollectorRegistry {
  private readonly collectors: Collector[] = [];
  private inFlight: Promise<Map<string, CollectorResult>> | null = null;
  private readonly success: Gauge<'collector'>;
  private readonly duration: Gauge<'collector'>;
  /** The last outcome of each collector, for /health, `dbpilot status` and the benchmark. */
  readonly last = new Map<string, CollectorResult>();

  constructor(
    metrics: Metrics,
    private readonly opts: { timeoutMs: number; logger: Logger },
  ) {
    this.success = metrics.gauge('dbpilot_collector_success', 'Whether the collector succeeded on the last scrape (1) or failed or timed out (0).', ['collector']);
    this.duration = metrics.gauge('dbpilot_collector_duration_seconds', 'How long the collector took on the last scrape.', ['collector']);
  }

  private readonly collectorLabels = new Map<string, { collector: string }>();
  private labelsOf(name: string): { collector: string } {
    let l = this.collectorLabels.get(name);
    if (!l) this.collectorLabels.set(name, (l = { collector: name }));
    return l;
  }

  register(collector: Collector): void {
    if (!/^[a-z][a-z0-9_]*$/.test(collector.name)) throw new RegistryError(`collector name ${JSON.stringify(collector.name)} is not snake_case`);
    if (this.collectors.some((c) => c.name === collector.name)) throw new RegistryError(`collector ${collector.name} registered twice`);
    this.collectors.push(collector);
  }

  get names(): string[] {
    return this.collectors.map((c) => c.name);
  }

  /** Collects every collector once; callers arriving while a collection runs share it. */
  collect(): Promise<Map<string, CollectorResult>> {
    if (!this.inFlight) {
      this.inFlight = this.collectAll().finally(() => {
        this.inFlight = null;
      });
    }
    return this.inFlight;
  }

  private async collectAll(): Promise<Map<string, CollectorResult>> {
    const results = await Promise.all(this.collectors.map((c) => this.runOne(c)));
    const out = new Map<string, CollectorResult>();
    this.collectors.forEach((c, i) => out.set(c.name, results[i]!));
    return out;
  }

  private async runOne(c: Collector): Promise<CollectorResult> {
    const started = process.hrtime.bigint();
    const ac = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    let set: SampleSet | undefined;
    let error: string | undefined;
    try {
      set = await Promise.race([
        c.collect(ac.signal),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            ac.abort();
            reject(new CollectorTimeoutError(c.name, this.opts.timeoutMs));
          }, this.opts.timeoutMs);
        }),
      ]);
    } catch (err) {
      error = safeMessage(err);
    } finally {
      clearTimeout(timer);
    }
    const durationSeconds = Number(process.hrtime.bigint() - started) / 1e9;

    // Exactly this collection's series: a failed collector shows no stale values, a vanished standby
    // leaves no series, and a Redis that is down shows no memory value (not 0).
    for (const g of c.gauges) refillGauge(g, set?.values.get(g) ?? []);
    if (set) {
      for (const [gauge, samples] of set.values) if (!c.gauges.includes(gauge)) for (const s of samples) gauge.set(s.labels, s.value);
    }
    const errors = error ? [error] : (set?.errors ?? []);
    const result: CollectorResult = { success: errors.length === 0, durationSeconds, statements: set?.statements ?? 0, errors };
    // One labels object per collector for good: the exposition's label block is cached by it.
    const labels = this.labelsOf(c.name);
    this.success.set(labels, result.success ? 1 : 0);
    this.duration.set(labels, durationSeconds);
    const prev = this.last.get(c.name);
    if (!result.success && (prev === undefined || prev.success || prev.errors[0] !== errors[0])) {
      // Logged on the transition (and when the reason changes), not on every scrape of a long outage.
      this.opts.logger.warn({ collector: c.name, errors }, 'collector failed');
    } else if (result.success && prev && !prev.success) {
      this.opts.logger.info({ collector: c.name }, 'collector recovered');
    }
    this.last.set(c.name, result);
    return result;
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.collectors.map((c) => c.close?.()));
  }
}

export interface CacheOptions {
  /** A successful refresh is served for this long; the first scrape after it starts the next one (in the background). */
  refreshMs: number;
  /**
   * A failed refresh is tried again at the first scrape at least this long after it — not after a whole
   * refreshMs, so the collector follows a server that is back, and not at every scrape, so a server
   * that is down is asked at most once per retryMs.
   */
  retryMs: number;
  /** How long a scrape waits for a refresh it started when there is nothing good to serve or the last one failed; inside the collector budget. */
  waitMs: number;
  /** Set to the time (Unix seconds) of the refresh whose values are served; absent until one succeeded. */
  lastSuccess?: Gauge<string>;
  /**
   * What the values belong to (the observed primary's server): when it changes — a failover — the
   * cached values describe another server, so the scrape starts a refresh at once and waits for it as
   * when there is nothing to serve. A scope that cannot be read changes nothing.
   */
  scope?: () => Promise<string>;
  now?: () => number;
}

/**
 * Serves a collector's last good result and refreshes it at most every `refreshMs`, so an expensive
 * query (pg_database_size over many tables) never sits in a scrape's path: a due refresh runs in the
 * background and the scrape serves the cached values.
 *
 * A refresh that fails does not replace the last good values: they stay served, with their time in
 * `lastSuccess` (so their age is visible), while the collector reports the failure
 * (dbpilot_collector_success 0 with the reason) until a refresh succeeds again. The failed refresh is
 * retried after `retryMs`, and a scrape that starts a retry waits for it (within `waitMs`), so the
 * scrape after the server is back reports success and fresh values. Before any refresh succeeded
 * there is nothing to serve: the collector fails with the reason (or "first refresh still running").
 */
export function cachedCollector(inner: Collector, opts: CacheOptions): Collector & { lastRefresh(): number | null } {
  const now = opts.now ?? Date.now;
  let good: { at: number; set: SampleSet; scope: string | undefined } | null = null;
  let failed: { at: number; error: unknown } | null = null;
  let refreshing: Promise<void> | null = null;
  const scopeOf = async (): Promise<string | undefined> => {
    try {
      return opts.scope ? await opts.scope() : undefined;
    } catch {
      return undefined;
    }
  };
  const refresh = (scope: string | undefined) => {
    refreshing ??= inner
      .collect(new AbortController().signal)
      .then(
        (set) => {
          // A refresh that reached only part of its source (one database failed) is served — its values
          // are the newest there are — and still counts as failed, so it is retried like one.
          good = { at: now(), set, scope };
          failed = set.errors.length > 0 ? { at: good.at, error: new Error(set.errors.join('; ')) } : null;
        },
        (error: unknown) => void (failed = { at: now(), error }),
      )
      .finally(() => {
        refreshing = null;
      });
    return refreshing;
  };
  return {
    name: inner.name,
    gauges: opts.lastSuccess ? [...inner.gauges, opts.lastSuccess] : inner.gauges,
    lastRefresh: () => good?.at ?? null,
    async collect(signal) {
      const scope = await scopeOf();
      const t = now();
      const moved = good !== null && scope !== undefined && (good as { scope: string | undefined }).scope !== scope;
      const due = moved || (failed ? t - failed.at >= opts.retryMs : good === null || t - good.at >= opts.refreshMs);
      if (due) {
        const p = refresh(scope);
        if (good === null || failed !== null || moved) {
          let timer: NodeJS.Timeout | undefined;
          await Promise.race([
            p,
            new Promise((resolve) => {
              timer = setTimeout(resolve, opts.waitMs);
              signal.addEventListener('abort', resolve, { once: true });
            }),
          ]).finally(() => clearTimeout(timer));
        }
      }
      const served = good as { at: number; set: SampleSet; scope: string | undefined } | null;
      const failure = failed as { at: number; error: unknown } | null;
      if (served === null) throw failure ? failure.error : new Error(`${inner.name}: first refresh still running`);
      const out = new SampleSet();
      for (const [gauge, samples] of served.set.values) out.values.set(gauge, samples);
      if (opts.lastSuccess) out.set(opts.lastSuccess, {}, served.at / 1000);
      if (failure) out.fail(failure.error);
      // The refresh's statements are counted once, by the first scrape that serves it.
      out.statements = served.set.statements;
      served.set.statements = 0;
      return out;
    },
    close: inner.close ? () => inner.close!() : undefined,
  } as Collector & { lastRefresh(): number | null };
}
