/**
 * The Node.js process metrics dbpilot exports (src/metrics.ts): prom-client's defaults minus the ones
 * that cost work on every scrape (the event-loop delay histogram, the /proc/self/fd scan, the libuv
 * handle walk, the GC observer). The README names process_resident_memory_bytes; the bench reads
 * nodejs_heap_size_used_bytes; the counters test reads process_cpu_seconds_total.
 */
import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics.js';

const families = (text: string) => new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!));

describe('process metrics', () => {
  it('exports the cheap ones and none of the per-scrape-costly ones, in both formats', async () => {
    const metrics = new Metrics();
    for (const text of [await metrics.text(), await metrics.openMetrics()]) {
      const f = families(text);
      for (const name of [
        'process_cpu_user_seconds_total',
        'process_cpu_system_seconds_total',
        'process_start_time_seconds',
        'process_resident_memory_bytes',
        'process_virtual_memory_bytes',
        'process_heap_bytes',
        'process_max_fds',
        'nodejs_active_handles_total',
        'nodejs_active_requests_total',
        'nodejs_heap_size_total_bytes',
        'nodejs_heap_size_used_bytes',
        'nodejs_external_memory_bytes',
        'nodejs_heap_space_size_used_bytes',
        'nodejs_version_info',
      ]) {
        // OpenMetrics names a counter family without _total.
        expect(f.has(name) || f.has(name.replace(/_total$/, '')), name).toBe(true);
      }
      for (const name of [...f]) expect(name, 'dropped family').not.toMatch(/^(nodejs_eventloop_lag|process_open_fds|nodejs_active_resources|nodejs_gc_duration)/);
    }
    const rss = /^process_resident_memory_bytes (\d+)$/m.exec(await metrics.text());
    expect(Number(rss?.[1])).toBeGreaterThan(1024 * 1024);
  });

  it('are not registered when processMetrics is false', async () => {
    const text = await new Metrics({ processMetrics: false }).text();
    expect(families(text).size).toBe(0);
  });
});
