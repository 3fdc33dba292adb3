/**
 * dbpilot owns its registries (never prom-client's global one). Every metric is registered in two:
 * one renders the Prometheus text format, the other OpenMetrics, so `/metrics` can answer either
 * without re-registering or converting.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics, type OpenMetricsContentType, type PrometheusContentType } from 'prom-client';

export class Metrics {
  readonly prometheus = new Registry<PrometheusContentType>();
  readonly openMetrics = new Registry<OpenMetricsContentType>();

  constructor(opts: { processMetrics?: boolean } = {}) {
    this.openMetrics.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    if (opts.processMetrics !== false) {
      collectDefaultMetrics({ register: this.prometheus });
      collectDefaultMetrics({ register: this.openMetrics });
    }
  }

  private get registers() {
    return [this.prometheus, this.openMetrics] as Registry[];
  }

  gauge<L extends string>(name: string, help: string, labelNames: readonly L[] = [], collect?: (this: Gauge<L>) => void | Promise<void>): Gauge<L> {
    return new Gauge<L>({ name, help, labelNames, registers: this.registers, ...(collect ? { collect } : {}) });
  }

  counter<L extends string>(name: string, help: string, labelNames: readonly L[] = []): Counter<L> {
    return new Counter<L>({ name, help, labelNames, registers: this.registers });
  }

  clear(): void {
    this.prometheus.clear();
    this.openMetrics.clear();
  }
}
