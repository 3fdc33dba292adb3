/**
 * cachedCollector's policy on a fake clock (pg_sizes runs through it): a successful refresh is served
 * for refreshMs; a failed one keeps the last good values served with their time, reports the failure,
 * and is retried after retryMs — not after a whole refreshMs, and not at every scrape.
 */
import { describe, expect, it } from 'vitest';
import { SampleSet, type Collector } from '../../src/collectors/collector.js';
import { cachedCollector } from '../../src/collectors/index.js';
import { Metrics } from '../../src/metrics.js';

const REFRESH_MS = 60_000;
const RETRY_MS = 5_000;
const WAIT_MS = 50;

type Outcome = { ok: number } | { fail: string } | 'hang';

function setup(outcomes: Outcome[], scope?: () => Promise<string>) {
  const metrics = new Metrics({ processMetrics: false });
  const size = metrics.gauge('test_size_bytes', 'a size', ['datname']);
  const lastSuccess = metrics.gauge('test_last_success_timestamp_seconds', 'when');
  let clock = 1_700_000_000_000;
  const calls: number[] = [];
  const inner: Collector = {
    name: 'pg_sizes',
    gauges: [size],
    collect: async () => {
      calls.push(clock);
      const o = outcomes.length > 1 ? outcomes.shift()! : outcomes[0]!;
      if (o === 'hang') return new Promise<SampleSet>(() => {});
      if ('fail' in o) throw new Error(o.fail);
      const set = new SampleSet().set(size, { datname: 'db' }, o.ok);
      set.statements = 3;
      return set;
    },
  };
  const c = cachedCollector(inner, { refreshMs: REFRESH_MS, retryMs: RETRY_MS, waitMs: WAIT_MS, lastSuccess, now: () => clock, ...(scope ? { scope } : {}) });
  /** One scrape: the collection, as the registry runs it (a fresh signal, never aborted here). */
  const scrape = async () => {
    try {
      const set = await c.collect(new AbortController().signal);
      return { value: set.values.get(size)?.[0]?.value, at: set.values.get(lastSuccess)?.[0]?.value, errors: set.errors, statements: set.statements };
    } catch (err) {
      return { thrown: (err as Error).message };
    }
  };
  return {
    c,
    calls,
    scrape,
    advance: (ms: number) => void (clock += ms),
    now: () => clock,
  };
}

describe('cachedCollector', () => {
  it('serves a successful refresh for refreshMs, counting its statements once, and refreshes in the background after', async () => {
    const t = setup([{ ok: 10 }, { ok: 20 }]);
    const start = t.now();
    expect(await t.scrape()).toEqual({ value: 10, at: start / 1000, errors: [], statements: 3 });
    t.advance(REFRESH_MS - 1);
    expect(await t.scrape()).toEqual({ value: 10, at: start / 1000, errors: [], statements: 0 });
    expect(t.calls).toHaveLength(1);
    t.advance(1);
    // Due: the refresh starts, the scrape does not wait for it (there is a good value to serve).
    const due = await t.scrape();
    expect(t.calls).toHaveLength(2);
    expect(due.errors).toEqual([]);
    await Promise.resolve();
    expect((await t.scrape()).value).toBe(20);
  });

  it('a failed refresh keeps the last good values served with their time, reports the failure, and is retried after retryMs', async () => {
    const t = setup([{ ok: 10 }, { fail: 'postgres 127.0.0.1:5999: Query read timeout' }, { fail: 'still down' }, { ok: 30 }]);
    const goodAt = t.now();
    await t.scrape();
    t.advance(REFRESH_MS);
    // The refresh is due; it fails (in the background, since there is something good to serve).
    await t.scrape();
    await new Promise((r) => setTimeout(r, 0));
    const failedAt = t.now();
    expect(await t.scrape()).toEqual({ value: 10, at: goodAt / 1000, errors: ['postgres 127.0.0.1:5999: Query read timeout'], statements: 0 });
    expect(t.calls).toHaveLength(2);

    // Not again before retryMs, however many scrapes.
    for (let ms = 0; ms < RETRY_MS - 1000; ms += 1000) {
      t.advance(1000);
      expect((await t.scrape()).errors).toHaveLength(1);
    }
    expect(t.calls).toHaveLength(2);
    t.advance(failedAt + RETRY_MS - t.now());
    // The retry is waited for (within waitMs): this scrape shows its outcome.
    expect(await t.scrape()).toEqual({ value: 10, at: goodAt / 1000, errors: ['still down'], statements: 0 });
    expect(t.calls).toHaveLength(3);
    t.advance(RETRY_MS);
    // Back: the very scrape that retries reports success and the new values — long before refreshMs.
    const back = t.now();
    expect(await t.scrape()).toEqual({ value: 30, at: back / 1000, errors: [], statements: 3 });
    expect(back - failedAt).toBeLessThan(REFRESH_MS);
    // And then served for a whole refreshMs again.
    t.advance(RETRY_MS);
    await t.scrape();
    expect(t.calls).toHaveLength(4);
  });

  it('before any refresh succeeded there is nothing to serve: the reason is thrown, and retries are bounded too', async () => {
    const t = setup([{ fail: 'connect ECONNREFUSED' }]);
    expect(await t.scrape()).toEqual({ thrown: 'connect ECONNREFUSED' });
    t.advance(RETRY_MS - 1);
    expect(await t.scrape()).toEqual({ thrown: 'connect ECONNREFUSED' });
    expect(t.calls).toHaveLength(1);
    t.advance(1);
    await t.scrape();
    expect(t.calls).toHaveLength(2);
  });

  it('a server that is down for minutes is asked at most once per retryMs, at one scrape a second', async () => {
    const t = setup([{ ok: 1 }, { fail: 'down' }]);
    await t.scrape();
    t.advance(REFRESH_MS);
    const from = t.now();
    for (let i = 0; i < 300; i++) {
      await t.scrape();
      await new Promise((r) => setTimeout(r, 0));
      t.advance(1000);
    }
    const attempts = t.calls.filter((at) => at >= from);
    expect(attempts.length).toBeLessThanOrEqual(300_000 / RETRY_MS + 1);
    for (let i = 1; i < attempts.length; i++) expect(attempts[i]! - attempts[i - 1]!).toBeGreaterThanOrEqual(RETRY_MS);
  });

  it('a retry that hangs is waited for only waitMs, never more than one at a time, and the last good values stay served', async () => {
    const t = setup([{ ok: 7 }, { fail: 'down' }, 'hang']);
    await t.scrape();
    t.advance(REFRESH_MS);
    await t.scrape();
    await new Promise((r) => setTimeout(r, 0));
    t.advance(RETRY_MS);
    const started = performance.now();
    const r = await t.scrape();
    expect(performance.now() - started).toBeGreaterThanOrEqual(WAIT_MS - 5);
    expect(r).toMatchObject({ value: 7, errors: ['down'] });
    t.advance(RETRY_MS * 3);
    await t.scrape();
    // The hung refresh is still the one in flight: no second one started beside it.
    expect(t.calls).toHaveLength(3);
  });

  it('a new scope (the primary after a failover) refreshes at once and the scrape serves the new values; an unreadable scope changes nothing', async () => {
    let primary = '10.0.0.5:5432';
    let readable = true;
    const t = setup([{ ok: 10 }, { ok: 20 }, { ok: 30 }], async () => {
      if (!readable) throw new Error('no primary');
      return primary;
    });
    expect((await t.scrape()).value).toBe(10);
    t.advance(1000);
    expect((await t.scrape()).value).toBe(10);
    expect(t.calls).toHaveLength(1);
    primary = '10.0.0.6:5432';
    t.advance(1000);
    // Well inside refreshMs: refreshed because the values belonged to the old primary, and waited for.
    expect((await t.scrape()).value).toBe(20);
    expect(t.calls).toHaveLength(2);
    t.advance(1000);
    expect((await t.scrape()).value).toBe(20);
    readable = false;
    t.advance(1000);
    expect((await t.scrape()).value).toBe(20);
    expect(t.calls).toHaveLength(2);
  });
});
