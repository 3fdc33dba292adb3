/**
 * dbpilot owns its registry (never prom-client's global one). Every metric lives in ONE registry;
 * `/metrics` renders it as the Prometheus text format or, when asked, as OpenMetrics.
 *
 * Why not one registry per format: prom-client 15's Registry.metrics() in OpenMetrics mode renames
 * every counter object *in place* (`metric.name = name without _total`, lib/registry.js), so a counter
 * registered in both registries loses its `_total` in the text format after the first OpenMetrics
 * scrape (and every text scraper after it breaks: DbpilotPagesUndeliverable, the dashboard's `…_total`
 * panels). OpenMetrics is instead rendered through views: a throw-away OpenMetrics registry holding, per
 * metric, a small object whose `name` is its own (the one the OpenMetrics serialisation may rewrite)
 * and whose values come from the real metric. The real metric, its name and its values are never
 * touched by a render, and the values are collected once per render, by the metric itself.
 */
import { createRequire } from 'node:module';
import { Counter, Gauge, Registry, type Metric, type MetricObjectWithValues, type MetricValue, type OpenMetricsContentType, type PrometheusContentType } from 'prom-client';

/** What prom-client's Registry reads of a registered metric (lib/registry.js: name, type, get / getForPromString). */
interface RenderView {
  name: string;
  type: string;
  help: string;
  get(): Promise<MetricObjectWithValues<MetricValue<string>>>;
}

/**
 * prom-client's default process metrics, minus those whose collection costs real work on every scrape
 * (issue 8, measured in bench/README.md): the event-loop delay histogram (`nodejs_eventloop_lag_*`: a
 * 10 ms timer all the time, and percentiles and a standard deviation computed per scrape, ~0.28 ms),
 * `process_open_fds` (a readdir of /proc/self/fd per scrape), `nodejs_active_resources*` (walks every
 * libuv handle per scrape) and `nodejs_gc_duration_seconds` (a PerformanceObserver callback on every
 * garbage collection, and a histogram). No alert, dashboard panel or README row reads any of them.
 * What stays: CPU seconds, start time, resident / virtual memory and heap (one /proc/self/status read),
 * the fd limit (read once), active handles and requests, V8 heap sizes and spaces, the Node version.
 * The modules are prom-client 15.1.3's own (pinned), each registering exactly what collectDefaultMetrics
 * would have.
 */
const PROCESS_METRICS = [
  'processCpuTotal',
  'processStartTime',
  'osMemoryHeap',
  'processMaxFileDescriptors',
  'processHandles',
  'processRequests',
  'heapSizeAndUsed',
  'heapSpacesSizeAndUsed',
  'version',
] as const;

type DefaultMetric = (registry: Registry, config?: Record<string, unknown>) => void;

function registerProcessMetrics(registry: Registry): void {
  const require = createRequire(import.meta.url);
  for (const name of PROCESS_METRICS) (require(`prom-client/lib/metrics/${name}`) as DefaultMetric)(registry, {});
}

/** The name OpenMetrics gives a counter family: without `_total` (its samples get it back). */
const counterFamily = (name: string) => name.replace(/_total$/, '');

export class Metrics {
  /** The one registry every metric is registered in. Rendered as the Prometheus text format 0.0.4. */
  readonly prometheus = new Registry<PrometheusContentType>();

  constructor(opts: { processMetrics?: boolean } = {}) {
    if (opts.processMetrics !== false) registerProcessMetrics(this.prometheus);
  }

  gauge<L extends string>(name: string, help: string, labelNames: readonly L[] = [], collect?: (this: Gauge<L>) => void | Promise<void>): Gauge<L> {
    return new Gauge<L>({ name, help, labelNames, registers: [this.prometheus], ...(collect ? { collect } : {}) });
  }

  counter<L extends string>(name: string, help: string, labelNames: readonly L[] = []): Counter<L> {
    return new Counter<L>({ name, help, labelNames, registers: [this.prometheus] });
  }

  /** The Prometheus text format 0.0.4. */
  text(): Promise<string> {
    return this.prometheus.metrics();
  }

  /** OpenMetrics 1.0 text of the same metrics, without changing any of them (see the file comment). */
  async openMetrics(): Promise<string> {
    const om = new Registry<OpenMetricsContentType>();
    om.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    for (const m of this.prometheus.getMetricsAsArray()) {
      const source = m as unknown as RenderView & { getForPromString?: RenderView['get'] };
      const isCounter = source.type === 'counter';
      // Histograms render from getForPromString (their _bucket/_sum/_count lines), everything else from get().
      const read = typeof source.getForPromString === 'function' ? () => source.getForPromString!() : () => source.get();
      const view: RenderView = {
        name: isCounter ? counterFamily(source.name) : source.name,
        type: source.type,
        help: source.help,
        async get() {
          const data = await read();
          return isCounter ? { ...data, name: counterFamily(data.name) } : data;
        },
      };
      om.registerMetric(view as unknown as Metric<string>);
    }
    return om.metrics();
  }

  clear(): void {
    this.prometheus.clear();
  }
}
