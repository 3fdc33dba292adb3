/**
 * refillGauge (src/collectors/index.ts) leaves a gauge exactly as reset() + set() per sample did —
 * same series, values and order, vanished series gone, an unlabelled gauge without a sample absent —
 * while a series that persists keeps its entry, so nothing is allocated for it.
 */
import type { Gauge } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { refillGauge } from '../../src/collectors/index.js';
import { Metrics } from '../../src/metrics.js';

type Sample = { labels: Record<string, string>; value: number };

/** The old way: reset, drop the unlabelled 0, set each sample. */
function resetAndSet(g: Gauge<string>, samples: Sample[]): void {
  g.reset();
  g.remove({});
  for (const s of samples) g.set(s.labels, s.value);
}

const rounds: Sample[][] = [
  [
    { labels: { server: 'a', datname: 'x' }, value: 1 },
    { labels: { server: 'a', datname: 'y' }, value: 2 },
  ],
  // y goes away, z comes, x changes; labels given in another key order are the same series.
  [
    { labels: { datname: 'x', server: 'a' }, value: 10 },
    { labels: { server: 'a', datname: 'z' }, value: 3 },
  ],
  // The same series twice in one collection: the last value wins.
  [
    { labels: { server: 'a', datname: 'z' }, value: 4 },
    { labels: { server: 'a', datname: 'z' }, value: 5 },
    { labels: { server: 'b', datname: 'x' }, value: 6 },
  ],
  // The same series in the same order as last time: only the values change.
  [
    { labels: { server: 'a', datname: 'z' }, value: 8 },
    { labels: { server: 'b', datname: 'x' }, value: 9 },
  ],
  // The same series in another order: the new order, as reset() + set() gave it.
  [
    { labels: { server: 'b', datname: 'x' }, value: 1 },
    { labels: { server: 'a', datname: 'z' }, value: 2 },
  ],
  [],
  [{ labels: { server: 'a', datname: 'x' }, value: 7 }],
];

describe('refillGauge', () => {
  it('gives what reset() and set() gave, round after round', async () => {
    const metrics = new Metrics({ processMetrics: false });
    const ours = metrics.gauge('t_refilled', 'h', ['server', 'datname']);
    const old = metrics.gauge('t_reset', 'h', ['server', 'datname']);
    for (const samples of rounds) {
      refillGauge(ours, samples);
      resetAndSet(old, samples);
      expect((await ours.get()).values).toEqual((await old.get()).values);
    }
  });

  it('keeps the entry of a series that persists, with its new value', async () => {
    const metrics = new Metrics({ processMetrics: false });
    const g = metrics.gauge('t_kept', 'h', ['server']);
    refillGauge(g, [{ labels: { server: 'a' }, value: 1 }, { labels: { server: 'b' }, value: 2 }]);
    const [a1, b1] = (await g.get()).values;
    refillGauge(g, [{ labels: { server: 'a' }, value: 3 }]);
    const after = (await g.get()).values;
    expect(after).toEqual([{ labels: { server: 'a' }, value: 3 }]);
    expect(after[0]).toBe(a1);
    expect(b1).toEqual({ labels: { server: 'b' }, value: 2 });
  });

  it('the same series again: the same entries, new values', async () => {
    const metrics = new Metrics({ processMetrics: false });
    const g = metrics.gauge('t_same', 'h', ['server']);
    refillGauge(g, [{ labels: { server: 'a' }, value: 1 }, { labels: { server: 'b' }, value: 2 }]);
    const first = (await g.get()).values;
    refillGauge(g, [{ labels: { server: 'a' }, value: 3 }, { labels: { server: 'b' }, value: 4 }]);
    const second = (await g.get()).values;
    expect(second).toEqual([{ labels: { server: 'a' }, value: 3 }, { labels: { server: 'b' }, value: 4 }]);
    expect(second[0]).toBe(first[0]);
    expect(second[1]).toBe(first[1]);
  });

  it('unlabelled: absent without a sample (not 0), present with one', async () => {
    const metrics = new Metrics({ processMetrics: false });
    const g = metrics.gauge('t_plain', 'h');
    refillGauge(g, []);
    expect((await g.get()).values).toEqual([]);
    refillGauge(g, [{ labels: {}, value: 5 }]);
    expect((await g.get()).values).toEqual([{ labels: {}, value: 5 }]);
    refillGauge(g, []);
    expect((await g.get()).values).toEqual([]);
  });

  it('still refuses a label the gauge does not have', () => {
    const metrics = new Metrics({ processMetrics: false });
    const g = metrics.gauge('t_strict', 'h', ['server']);
    expect(() => refillGauge(g, [{ labels: { nope: 'x' }, value: 1 }])).toThrow(/nope/);
    // Also where the known labels name a series that is there already.
    refillGauge(g, [{ labels: { server: 'a' }, value: 1 }]);
    expect(() => refillGauge(g, [{ labels: { server: 'a', nope: 'x' }, value: 2 }])).toThrow(/nope/);
  });
});
