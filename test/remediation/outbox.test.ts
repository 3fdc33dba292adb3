/**
 * The escalation outbox against the strict PagerDuty stand-in (which rate-limits per routing key like
 * the real Events API): every page delivered by exactly one dispatcher, in order per dedup key, within
 * the rate, with one backoff per routing key that ends for every waiting page at the first success,
 * each outcome recorded as it completes, and an outage an on-call can follow in the log.
 *
 * Two dispatchers on one store file are what the service and an on-call's CLI are: two processes,
 * each with its own connection to the store.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseConfig, type Config } from '../../src/config.js';
import { Metrics } from '../../src/metrics.js';
import { Outbox } from '../../src/remediation/outbox.js';
import type { Team } from '../../src/remediation/escalation.js';
import { Store } from '../../src/store/store.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { TEAM_KEYS, captureLogger, until, type CapturedLog } from '../support/remediation.js';

let dir: string;
const opened: { stop(): Promise<void> }[] = [];
const stores: Store[] = [];
const standins: PagerDutyStandin[] = [];

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-outbox-'));
});
afterEach(async () => {
  for (const o of opened.splice(0)) await o.stop();
  for (const s of stores.splice(0)) s.close();
  for (const p of standins.splice(0)) await p.close();
  rmSync(dir, { recursive: true, force: true });
});

async function standin(opts: ConstructorParameters<typeof PagerDutyStandin>[0] = {}): Promise<PagerDutyStandin> {
  const pd = new PagerDutyStandin(opts);
  await pd.start();
  standins.push(pd);
  return pd;
}

function pagerdutyConfig(pd: PagerDutyStandin, over: Record<string, unknown> = {}): Config['pagerduty'] {
  return parseConfig({ pagerduty: { url: pd.url, routes: { ...TEAM_KEYS }, source: 'dbpilot-test', timeoutMs: 5000, ...over } }, {}).pagerduty;
}

/** A dispatcher of its own (its own store connection, its own owner), as a separate process has. */
function dispatcher(name: string, cfg: Config['pagerduty'], level = 'info'): { outbox: Outbox; store: Store; log: CapturedLog } {
  const store = new Store(path.join(dir, 'dbpilot.sqlite'));
  stores.push(store);
  const { logger, log } = captureLogger(level);
  const outbox = new Outbox(store, cfg, new Metrics({ processMetrics: false }), logger.child({ component: 'outbox' }), { owner: `${name}/${process.pid}/${name}` });
  opened.push(outbox);
  return { outbox, store, log };
}

function trigger(outbox: Outbox, team: Team, dedupKey: string): void {
  outbox.trigger({ team, dedupKey, summary: `page ${dedupKey}`, severity: 'warning', details: { seen: 'a test', tried: 'nothing', verified: 'nothing' } });
}

describe('exactly once', () => {
  it('two dispatchers on one store deliver every page and every resolve exactly once, the resolve after its trigger', async () => {
    const pd = await standin({ rateLimit: null });
    pd.respondWith(202, 1_000, { delayMs: 200 }); // a PagerDuty that takes 200 ms per event
    const cfg = pagerdutyConfig(pd, { rateLimit: { perMinute: 60_000, burst: 200 } });
    const a = dispatcher('service', cfg);
    const b = dispatcher('cli', cfg);
    const keys = Array.from({ length: 50 }, (_, i) => `dbpilot/Test/${i}`);
    for (const k of keys) trigger(a.outbox, 'devops', k);
    // Queue the resolves behind their triggers: their order must survive two dispatchers.
    for (const k of keys) a.store.enqueue({ team: 'devops', dedupKey: k, action: 'resolve', event: { event_action: 'resolve', dedup_key: k } });
    a.outbox.start();
    b.outbox.start();
    await until(() => a.store.outboxPending() === 0, 'every row to be delivered', 30_000);
    await Promise.all([a.outbox.flush(), b.outbox.flush()]);
    for (const k of keys) {
      expect(pd.accepted.filter((e) => e.dedupKey === k).map((e) => e.action), k).toEqual(['trigger', 'resolve']);
    }
    expect(pd.accepted).toHaveLength(100);
    // Both took part: the test really had two dispatchers competing for the rows.
    const delivered = [a, b].map((d) => d.log.find('escalation delivered').length);
    expect(delivered[0]! + delivered[1]!).toBe(100);
    expect(Math.min(...delivered)).toBeGreaterThan(0);
  });

  it('a claim left by a dispatcher that died expires, and another dispatcher sends the row', async () => {
    const pd = await standin({ rateLimit: null });
    const cfg = pagerdutyConfig(pd, { timeoutMs: 100 }); // claims last timeoutMs + 30 s
    const a = dispatcher('service', cfg);
    trigger(a.outbox, 'devops', 'dbpilot/Test/orphan');
    const now = Date.now();
    const [claimed] = a.store.claimOutbox('dead/4194000/gone', 'devops', now, now + 500, 1);
    expect(claimed?.dedupKey).toBe('dbpilot/Test/orphan');
    a.outbox.start();
    await a.outbox.flush();
    expect(pd.accepted, 'sent while the claim was live').toEqual([]);
    await until(() => pd.acceptedCount('dbpilot/Test/orphan', 'trigger') === 1, 'the orphaned row to be sent after its claim expired', 10_000);
  });
});

describe('rate', () => {
  it('stays within PagerDuty’s rate per routing key: no 429 for a burst of 25 pages', async () => {
    // The stand-in takes 10 events a second per key; a bucket of 5 refilled at 5 a second never sends more
    // than 10 in any second (as the defaults, 10 + 100 a minute, stay under PagerDuty's 120).
    const pd = await standin({ rateLimit: { events: 10, windowMs: 1000 } });
    const cfg = pagerdutyConfig(pd, { rateLimit: { perMinute: 300, burst: 5 } });
    const a = dispatcher('service', cfg);
    for (let i = 0; i < 25; i++) trigger(a.outbox, 'oncall-backend', `dbpilot/Burst/${i}`);
    trigger(a.outbox, 'devops', 'dbpilot/Other/0'); // another key's budget is its own
    a.outbox.start();
    await until(() => a.store.outboxPending() === 0, 'all 26 delivered', 30_000);
    expect(pd.throttled).toBe(0);
    expect(pd.accepted).toHaveLength(26);
  });

  it('when the rate is set too high, backs off on 429 and still delivers each page exactly once', async () => {
    const pd = await standin({ rateLimit: { events: 5, windowMs: 1000 } });
    const cfg = pagerdutyConfig(pd, { rateLimit: { perMinute: 600, burst: 10 }, retry: { baseMs: 200, maxMs: 1000 } });
    const { outbox, store } = dispatcher('service', cfg);
    const metrics = (outbox as unknown as { escalations: { get(): Promise<{ values: { labels: Record<string, string>; value: number }[] }> } }).escalations;
    for (let i = 0; i < 20; i++) trigger(outbox, 'devops', `dbpilot/Throttled/${i}`);
    outbox.start();
    await until(() => store.outboxPending() === 0, 'all 20 delivered', 30_000);
    expect(pd.throttled).toBeGreaterThan(0); // the burst did hit the limit
    expect(new Set(pd.accepted.map((e) => e.dedupKey)).size).toBe(20);
    expect(pd.accepted).toHaveLength(20);
    // Every request was either accepted or throttled, and every throttled one was counted as a retry.
    expect(pd.requests).toHaveLength(20 + pd.throttled);
    const retried = (await metrics.get()).values.find((v) => v.labels.outcome === 'retried')?.value;
    expect(retried).toBe(pd.throttled);
  });
});

describe('outage', () => {
  it('probes one request at a time while PagerDuty is down, then sends every waiting page at once; the log tells the story', async () => {
    const pd = await standin({ rateLimit: null });
    await pd.down({ mode: '503' });
    const cfg = pagerdutyConfig(pd, { retry: { baseMs: 100, maxMs: 300, summarySeconds: 1 }, rateLimit: { perMinute: 60_000, burst: 100 } });
    const a = dispatcher('service', cfg);
    for (let i = 0; i < 20; i++) trigger(a.outbox, 'lead-dba', `dbpilot/Outage/${i}`);
    a.outbox.start();
    await until(() => pd.requests.length >= 5 && a.log.find('PagerDuty delivery still failing').length >= 1, 'probes and a summary while down', 15_000);
    // Per routing key, one probe at a time: the 20 pages are not each retried on their own.
    expect(pd.maxConcurrent).toBe(1);
    expect(new Set(pd.requests.map((r) => (r.json as { dedup_key?: string } | undefined)?.dedup_key)).size, 'the probe is always the oldest page').toBe(1);
    const requestsWhileDown = pd.requests.length;

    await pd.up();
    await until(() => a.store.outboxPending() === 0, 'every page delivered after PagerDuty is back', 10_000);
    expect(pd.accepted).toHaveLength(20);
    expect(pd.accepted[0]!.dedupKey).toBe('dbpilot/Outage/0');
    // Nothing failed after the first success: the rest went out at once, not one backoff later each.
    expect(pd.requests.slice(requestsWhileDown).every((r) => r.status === 202)).toBe(true);
    const warnings = a.log.entries().filter((e) => e.level === 40).map((e) => e.msg);
    expect(warnings[0]).toBe('PagerDuty delivery failing: pages wait in the outbox and are retried');
    expect(warnings.filter((m) => m === 'PagerDuty delivery failing: pages wait in the outbox and are retried')).toHaveLength(1);
    const summary = a.log.find('PagerDuty delivery still failing')[0]!;
    expect(summary).toMatchObject({ team: 'lead-dba', pending: 20 });
    expect(summary.failedAttempts).toBeGreaterThanOrEqual(2);
    expect(a.log.find('PagerDuty delivery recovered: waiting pages go out now')).toHaveLength(1);
  });

  it('a restarted dispatcher logs the first failure it meets, even though the rows failed before', async () => {
    const pd = await standin({ rateLimit: null });
    await pd.down({ mode: '503' });
    const cfg = pagerdutyConfig(pd, { retry: { baseMs: 50, maxMs: 100 } });
    const first = dispatcher('before', cfg);
    trigger(first.outbox, 'devops', 'dbpilot/Restart/0');
    first.outbox.start();
    await until(() => first.log.find(/PagerDuty delivery failing/).length === 1, 'the first failure logged');
    await first.outbox.stop();
    const second = dispatcher('after', cfg);
    second.outbox.start();
    await until(() => second.log.find(/PagerDuty delivery failing/).length === 1, 'the restarted dispatcher to log the failure too');
    expect(second.store.outbox()[0]!.attempts).toBeGreaterThanOrEqual(2);
  });
});

describe('outcomes', () => {
  it('records each delivery as it completes: one slow answer holds back no other page', async () => {
    const pd = await standin({ rateLimit: null });
    pd.respondWith(202, 1, { delayMs: 3000 }); // the first request answers after 3 s
    const cfg = pagerdutyConfig(pd, { rateLimit: { perMinute: 60_000, burst: 100 } });
    const a = dispatcher('service', cfg);
    trigger(a.outbox, 'devops', 'dbpilot/Slow/0');
    for (let i = 1; i <= 10; i++) trigger(a.outbox, 'devops', `dbpilot/Fast/${i}`);
    a.outbox.start();
    await until(() => a.store.outbox({ status: 'delivered' }).length === 10, 'the ten fast pages recorded as delivered');
    const slow = a.store.outbox().find((r) => r.dedupKey === 'dbpilot/Slow/0')!;
    expect(slow.status, 'the slow one is still in flight while the others are recorded').toBe('pending');
    expect(slow.claimedBy).toBe(`service/${process.pid}/service`);
    await until(() => a.store.outboxPending() === 0, 'the slow page recorded too', 10_000);
  });
});

describe('review findings', () => {
  it('sleeps while a key is paused instead of waking every few milliseconds', async () => {
    const pd = await standin({ rateLimit: null });
    pd.respondWith(503, 1000, { retryAfter: 2 }); // every attempt: come back in 2 s
    const cfg = pagerdutyConfig(pd, { retry: { baseMs: 10, maxMs: 5000 } });
    const a = dispatcher('service', cfg);
    for (let i = 0; i < 20; i++) trigger(a.outbox, 'devops', `dbpilot/Paused/${i}`);
    let passes = 0;
    const heads = a.store.outboxHeads.bind(a.store);
    a.store.outboxHeads = (now) => {
      passes += 1;
      return heads(now);
    };
    a.outbox.start();
    // The first burst fails together: one failure, one 2 s pause for the key.
    await until(() => a.log.find(/PagerDuty delivery failing/).length === 1 && a.store.outbox().every((r) => r.claimedBy === null), 'the first burst failed and answered');
    const sent = pd.requests.length;
    const before = passes;
    await new Promise((r) => setTimeout(r, 1000)); // well inside the 2 s pause: nothing may be sent
    expect(pd.requests).toHaveLength(sent);
    expect(passes - before, 'dispatcher passes during one second of a pause').toBeLessThanOrEqual(2);
    pd.reset(); // PagerDuty answers again
    await until(() => a.store.outboxPending() === 0, 'all delivered after the pause', 15_000);
  });

  it('teams that share one routing key share its rate: no 429', async () => {
    const pd = await standin({ rateLimit: { events: 10, windowMs: 1000 } });
    const key = 'SHARED00000000000000000000000009';
    const cfg = pagerdutyConfig(pd, { routes: { 'lead-dba': key, 'em-dba': key, 'oncall-backend': key, devops: key }, rateLimit: { perMinute: 300, burst: 5 } });
    const a = dispatcher('service', cfg);
    for (let i = 0; i < 12; i++) {
      trigger(a.outbox, 'devops', `dbpilot/SharedA/${i}`);
      trigger(a.outbox, 'oncall-backend', `dbpilot/SharedB/${i}`);
    }
    a.outbox.start();
    await until(() => a.store.outboxPending() === 0, 'all 24 delivered', 30_000);
    expect(pd.throttled).toBe(0);
    expect(pd.accepted).toHaveLength(24);
  });

  it('honours Retry-After only up to retry.maxMs: a "come back tomorrow" does not silence a team for a day', async () => {
    const pd = await standin({ rateLimit: null });
    pd.respondWith(429, 1, { retryAfter: 86_400 });
    const cfg = pagerdutyConfig(pd, { retry: { baseMs: 10, maxMs: 500 } });
    const a = dispatcher('service', cfg);
    trigger(a.outbox, 'devops', 'dbpilot/Tomorrow/0');
    a.outbox.start();
    await until(() => a.store.outbox()[0]!.attempts === 1, 'the throttled attempt');
    expect(a.store.outbox()[0]!.nextAttemptAt).toBeLessThanOrEqual(Date.now() + 500);
    await until(() => pd.acceptedCount('dbpilot/Tomorrow/0') === 1, 'the page delivered after at most retry.maxMs', 10_000);
  });

  it('stopping while a request is in flight gives the row back untouched: no attempt counted, no backoff, no outage logged', async () => {
    const pd = await standin({ rateLimit: null });
    pd.respondWith(202, 1, { delayMs: 20_000 });
    const cfg = pagerdutyConfig(pd, { timeoutMs: 30_000 });
    const a = dispatcher('service', cfg);
    trigger(a.outbox, 'devops', 'dbpilot/Stopping/0');
    a.outbox.start();
    await until(() => pd.requests.length === 1, 'the request in flight');
    await a.outbox.stop();
    const [row] = a.store.outbox();
    expect(row).toMatchObject({ status: 'pending', attempts: 0, claimedBy: null });
    expect(row!.nextAttemptAt).toBeLessThanOrEqual(Date.now());
    expect(a.log.find(/PagerDuty delivery failing/)).toEqual([]);
    pd.reset();
  });

  it('a page too large for PagerDuty is cut to fit and delivered, not dead-lettered', async () => {
    const pd = await standin({ rateLimit: null });
    const a = dispatcher('service', pagerdutyConfig(pd));
    a.outbox.trigger({
      team: 'devops',
      dedupKey: 'dbpilot/Huge/0',
      summary: 'a page with huge labels',
      severity: 'warning',
      details: { seen: 'x', tried: 'nothing', verified: 'nothing', alerts: Array.from({ length: 50 }, (_, i) => ({ i, labels: { description: 'z'.repeat(16_000) } })) },
    });
    a.outbox.start();
    await until(() => pd.acceptedCount('dbpilot/Huge/0') === 1, 'the page accepted');
    const details = (pd.accepted[0]!.event.payload as { custom_details: Record<string, unknown> }).custom_details;
    expect(details.shortened).toMatch(/cut to fit/);
    expect(a.store.outbox({ status: 'dead' })).toEqual([]);
  });
});
