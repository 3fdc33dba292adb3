/**
 * dbpilot owns its registry (never prom-client's global one). Every metric lives in ONE registry;
 * `/metrics` renders it as the Prometheus text format or, when asked, as OpenMetrics.
 *
 * Why not one registry per format: prom-client 15's Registry.metrics() in OpenMetrics mode renames
 * every counter object *in place* (`metric.name = name without _total`, lib/registry.js), so a counter
 * registered in both registries loses its `_total` in the text format after the first OpenMetrics
 * scrape (and every text scraper after it breaks: DbpilotPagesUndeliverable, the dashboard's `…_total`
 * panels). Both formats are instead written here (render()), from the values each metric's own get()
 * gives, in exactly the text prom-client writes: the metric objects, their names and their values are
 * never touched by a render, and the values are collected once per render, by the metric itself.
 */
import { createRequire } from 'node:module';
import { Counter, Gauge, Registry, type PrometheusContentType } from 'prom-client';

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

/** One value as prom-client's get() / getForPromString() give it (lib/registry.js reads these fields). */
interface RenderValue {
  value: number;
  labels?: Record<string, string | number>;
  metricName?: string;
  sharedLabels?: Record<string, string | number>;
  exemplar?: { labelSet: Record<string, string | number>; value: number; timestamp: number } | null;
}

interface RenderData {
  name: string;
  help: string;
  type: string;
  values?: RenderValue[];
}

interface Renderable {
  name: string;
  help: string;
  type: string;
  get(): Promise<RenderData>;
  getForPromString?: () => Promise<RenderData>;
}

// The exposition's escaping and number spelling, as prom-client 15 writes them (lib/registry.js, lib/util.js).
const escapeString = (s: string) => s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
const escapeLabelValue = (v: string | number) => (typeof v === 'string' ? escapeString(v).replace(/"/g, '\\"') : v);
const valueString = (v: number) => (Number.isNaN(v) ? 'Nan' : !Number.isFinite(v) ? (v < 0 ? '-Inf' : '+Inf') : `${v}`);
function formatLabels(labels: Record<string, string | number>, exclude?: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const [name, value] of Object.entries(labels)) if (!exclude || !Object.prototype.hasOwnProperty.call(exclude, name)) out.push(`${name}="${escapeLabelValue(value)}"`);
  return out;
}
const isEmpty = (o: object | undefined) => {
  if (!o) return true;
  for (const _ in o) return false;
  return true;
};

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

  /**
   * The label block (`{a="x",b="y"}`, or nothing) of each labels object rendered. A collector's series
   * keep their labels object from scrape to scrape (CollectorRegistry refills its gauges in place), so
   * in the steady state only the values are formatted: the labels of ~450 samples are not escaped and
   * joined again on every scrape. Keyed by the object, so a series that goes away takes its entry along.
   */
  private readonly labelBlocks = new WeakMap<object, string>();

  /** The Prometheus text format 0.0.4. */
  text(): Promise<string> {
    return this.render(false);
  }

  /**
   * OpenMetrics 1.0 text of the same metrics, without changing any of them: a counter's family is named
   * without `_total` and its samples with it, as prom-client's OpenMetrics serialisation writes them, but
   * the metric object (its name) is never touched (see the file comment).
   */
  openMetrics(): Promise<string> {
    return this.render(true);
  }

  /**
   * Both formats, written here rather than by prom-client's Registry.metrics(), byte for byte what it
   * writes (test/exporter/exposition.test.ts compares them on every kind of metric) but without its
   * per-sample work: it escapes and joins every label again, and files an empty shared-label object per
   * sample in a WeakMap. Values are read through the metrics' own get() (getForPromString for
   * histograms), so collect callbacks run as before, once per render.
   */
  private async render(openMetrics: boolean): Promise<string> {
    const metrics = this.prometheus.getMetricsAsArray() as unknown as Renderable[];
    const data = await Promise.all(metrics.map((m) => (typeof m.getForPromString === 'function' ? m.getForPromString() : m.get())));
    const defaults = (this.prometheus as unknown as { _defaultLabels: Record<string, string | number> })._defaultLabels;
    const defaultLabels = isEmpty(defaults) ? null : defaults;
    let out = '';
    for (let i = 0; i < data.length; i++) {
      const d = data[i]!;
      const counter = openMetrics && metrics[i]!.type === 'counter';
      const name = escapeString(counter ? counterFamily(d.name) : d.name);
      if (i > 0) out += openMetrics ? '\n' : '\n\n';
      out += `# HELP ${name} ${escapeString(d.help)}\n# TYPE ${name} ${d.type}`;
      for (const v of d.values ?? []) {
        let metricName = v.metricName ?? name;
        if (counter) metricName = `${metricName}_total`;
        out += `\n${metricName}${this.labelBlock(v, defaultLabels)} ${valueString(v.value)}`;
        if (openMetrics && v.exemplar) out += ` # {${formatLabels(v.exemplar.labelSet).join(',')}} ${valueString(v.exemplar.value)} ${v.exemplar.timestamp}`;
      }
    }
    return openMetrics ? `${out}\n# EOF\n` : `${out}\n`;
  }

  private labelBlock(v: RenderValue, defaultLabels: Record<string, string | number> | null): string {
    const own = v.labels ?? {};
    const cacheable = defaultLabels === null && isEmpty(v.sharedLabels) && v.labels !== undefined;
    if (cacheable) {
      const hit = this.labelBlocks.get(own);
      if (hit !== undefined) return hit;
    }
    const labels = defaultLabels ? { ...own, ...defaultLabels, ...own } : own;
    const shared = v.sharedLabels ?? {};
    const parts = formatLabels(labels, shared);
    if (!isEmpty(shared)) parts.push(formatLabels(shared).join(','));
    const block = parts.length > 0 ? `{${parts.join(',')}}` : '';
    if (cacheable) this.labelBlocks.set(own, block);
    return block;
  }

  clear(): void {
    this.prometheus.clear();
  }
}
