/**
 * dbpilot writes /metrics itself (Metrics.text / openMetrics, src/metrics.ts) instead of through
 * prom-client's Registry.metrics(), to skip its per-sample label work. The output must be what
 * prom-client writes, byte for byte: the same metrics (every kind prom-client has, labels that need
 * escaping, NaN and infinities, series that come and go, a gauge with a collect callback) are built
 * three times — in a Metrics, in a plain text Registry, in an OpenMetrics Registry — and rendered
 * side by side, over several rounds of changes, so cached label blocks are exercised too.
 */
import { Counter, Gauge, Histogram, Registry, Summary, type OpenMetricsContentType, type RegistryContentType } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics.js';

interface Built {
  gauge: Gauge<'server' | 'datname'>;
  plain: Gauge;
  counter: Counter<'code'>;
  histogram: Histogram<'route'>;
  summary: Summary;
  collected: Gauge;
}

/** What the collect callback reports: the current round's number. */
let round = 0;

function build(registry: Registry<RegistryContentType>): Built {
  const registers = [registry];
  return {
    gauge: new Gauge({ name: 'x_size_bytes', help: 'Size with a "quote", a back\\slash\nand a newline.', labelNames: ['server', 'datname'], registers }),
    plain: new Gauge({ name: 'x_up', help: 'Up.', registers }),
    counter: new Counter({ name: 'x_requests_total', help: 'Requests.', labelNames: ['code'], registers }),
    histogram: new Histogram({ name: 'x_duration_seconds', help: 'Durations.', labelNames: ['route'], buckets: [0.1, 1], registers }),
    summary: new Summary({ name: 'x_latency_seconds', help: 'Latency.', percentiles: [0.5, 0.9], registers }),
    collected: new Gauge({
      name: 'x_collected',
      help: 'Set by its collect callback.',
      registers,
      collect() {
        this.set(round * 10);
      },
    }),
  };
}

/** Round r of changes, the same on every copy. */
function change(b: Built, r: number): void {
  // A collector's refill: reset, then set again; one series goes away, one comes, one label value needs escaping.
  b.gauge.reset();
  b.gauge.set({ server: 'a:5432', datname: 'app' }, 1000 + r);
  b.gauge.set({ server: 'a:5432', datname: r % 2 ? 'odd"\\db\nname' : 'even' }, r % 3 === 0 ? Number.NaN : r);
  if (r > 1) b.gauge.set({ datname: 'order', server: 'labels in another order' }, r === 2 ? Number.POSITIVE_INFINITY : Number.NEGATIVE_INFINITY);
  b.plain.set(r % 2);
  b.counter.inc({ code: '202' });
  if (r % 2) b.counter.inc({ code: '500' }, 2);
  b.histogram.observe({ route: '/metrics' }, 0.05 * r);
  b.summary.observe(r);
}

describe('the exposition dbpilot writes is what prom-client writes', () => {
  it('in the Prometheus text format and in OpenMetrics, round after round', async () => {
    const metrics = new Metrics({ processMetrics: false });
    const ours = build(metrics.prometheus);
    const textRegistry = new Registry();
    const text = build(textRegistry);
    const omRegistry = new Registry<OpenMetricsContentType>();
    omRegistry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    const om = build(omRegistry);
    // An empty labelled gauge renders its HELP and TYPE only.
    for (const r of [metrics.prometheus, textRegistry, omRegistry]) new Gauge({ name: 'x_empty', help: 'Nothing yet.', labelNames: ['k'], registers: [r] });

    for (let r = 0; r < 5; r++) {
      round = r;
      for (const b of [ours, text, om]) change(b, r);
      expect(await metrics.text(), `text, round ${r}`).toBe(await textRegistry.metrics());
      expect(await metrics.openMetrics(), `OpenMetrics, round ${r}`).toBe(await omRegistry.metrics());
      // And the text format again after an OpenMetrics render: nothing was renamed.
      expect(await metrics.text()).toContain('\nx_requests_total{code="202"} ');
    }
  });
});
