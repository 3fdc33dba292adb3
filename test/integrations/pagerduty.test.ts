import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DbpilotError } from '../../src/errors.js';
import {
  backoffMs,
  parseRetryAfter,
  sendEvent,
  SUMMARY_MAX_LENGTH,
  truncate,
  type PagerDutyEvent,
  type PagerDutyLogger,
  type SendResult,
} from '../../src/integrations/pagerduty.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';

const KEY = 'a1b2c3d4e5f60718293a4b5c6d7e8f90'; // 32 characters: the secret under test

function trigger(dedupKey = 'dbpilot/PostgresPrimaryDown/pg-0', summary = 'PostgreSQL primary unreachable'): PagerDutyEvent {
  return {
    routing_key: KEY,
    event_action: 'trigger',
    dedup_key: dedupKey,
    payload: {
      summary,
      source: '10.0.0.5:5432',
      severity: 'critical',
      timestamp: '2025-01-01T03:00:00.000Z',
      component: 'postgresql',
      custom_details: { seen: 'pg_up == 0 for 3 probes' },
    },
    links: [{ href: 'https://grafana.example/d/database-dashboard', text: 'dashboard' }],
    client: 'dbpilot',
  };
}

/** A pino-like logger that keeps every line, serialised, for the secret check. */
function captureLogger(): PagerDutyLogger & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    debug: (obj, msg) => void lines.push(JSON.stringify({ level: 'debug', ...obj, msg })),
    warn: (obj, msg) => void lines.push(JSON.stringify({ level: 'warn', ...obj, msg })),
  };
}

describe('sendEvent against the Events API v2 stand-in', () => {
  const pd = new PagerDutyStandin();
  let url = '';
  const log = captureLogger();
  /** Every result of the current test, checked for the routing key after it. */
  const seen: SendResult[] = [];
  const send = async (event: PagerDutyEvent, timeoutMs = 2000): Promise<SendResult> => {
    const r = await sendEvent(event, { url, timeoutMs, logger: log });
    seen.push(r);
    return r;
  };

  beforeAll(async () => {
    ({ url } = await pd.start());
  });
  afterAll(async () => {
    await pd.close();
  });
  beforeEach(async () => {
    await pd.up();
    pd.reset();
  });
  // After every test, on what that test did: each result was logged exactly once, and the routing
  // key is in no result and no log line.
  afterEach(() => {
    const results = seen.splice(0);
    const lines = log.lines.splice(0);
    expect(lines).toHaveLength(results.length);
    for (const r of results) expect(JSON.stringify(r)).not.toContain(KEY);
    for (const line of lines) expect(line).not.toContain(KEY);
  });

  it('202 → accepted, delivered exactly once, with the routing key in the body only', async () => {
    const r = await send(trigger());
    expect(r).toMatchObject({ outcome: 'accepted', httpStatus: 202, dedupKey: 'dbpilot/PostgresPrimaryDown/pg-0' });
    expect(pd.acceptedCount('dbpilot/PostgresPrimaryDown/pg-0', 'trigger')).toBe(1);
    const req = pd.requests[0]!;
    expect(req.headers['content-type']).toBe('application/json');
    expect(req.path).toBe('/v2/enqueue');
    expect(req.headers).not.toHaveProperty('authorization');
    expect(pd.accepted[0]?.routingKey).toBe(KEY);
  });

  it('resolve and acknowledge are accepted', async () => {
    const base = { routing_key: KEY, dedup_key: 'dbpilot/X/1' } as const;
    expect((await send({ ...base, event_action: 'acknowledge' })).outcome).toBe('accepted');
    expect((await send({ ...base, event_action: 'resolve' })).outcome).toBe('accepted');
    expect(pd.acceptedCount('dbpilot/X/1', 'resolve')).toBe(1);
  });

  it('returns the dedup key PagerDuty generated for a trigger without one', async () => {
    const { dedup_key: _omit, ...event } = trigger();
    const r = await send(event);
    expect(r.outcome).toBe('accepted');
    expect(r.dedupKey).toMatch(/^[0-9a-f]{32}$/);
    expect(pd.acceptedCount(r.dedupKey!)).toBe(1);
  });

  it('400 → rejected (dead letter), with PagerDuty’s reasons in the message', async () => {
    const r = await send({ ...trigger(), payload: { ...trigger().payload!, severity: 'fatal' as never } });
    expect(r.outcome).toBe('rejected');
    expect(r.httpStatus).toBe(400);
    expect(r.message).toMatch(/invalid event/);
    expect(r.message).toMatch(/severity/);
    expect(r.retryAfterMs).toBeUndefined();
    expect(pd.accepted).toHaveLength(0);
  });

  it('a wrong-length routing key is rejected without the key showing up anywhere', async () => {
    const bad = `${KEY}0`;
    const r = await send({ ...trigger(), routing_key: bad });
    expect(r.outcome).toBe('rejected');
    expect(r.message).toMatch(/routing_key/);
    expect(JSON.stringify(r)).not.toContain(KEY);
  });

  it('other 4xx → rejected', async () => {
    pd.respondWith(403, 1, { body: { status: 'forbidden', message: 'nope' } });
    const r = await send(trigger());
    expect(r).toMatchObject({ outcome: 'rejected', httpStatus: 403 });
    expect(pd.accepted).toHaveLength(0);
  });

  it('429 → retry, honouring Retry-After in seconds', async () => {
    pd.respondWith(429, 1, { retryAfter: 30 });
    const r = await send(trigger());
    expect(r).toMatchObject({ outcome: 'retry', httpStatus: 429, retryAfterMs: 30_000 });
    expect(r.message).toMatch(/429/);
  });

  it('429 → retry, honouring Retry-After as an HTTP-date', async () => {
    pd.respondWith(429, 1, { retryAfter: new Date(Date.now() + 60_000).toUTCString() });
    const r = await send(trigger());
    expect(r.outcome).toBe('retry');
    expect(r.retryAfterMs).toBeGreaterThan(50_000);
    expect(r.retryAfterMs).toBeLessThanOrEqual(60_000);
  });

  it('429 without Retry-After → retry without a hint', async () => {
    pd.respondWith(429);
    const r = await send(trigger());
    expect(r.outcome).toBe('retry');
    expect(r.retryAfterMs).toBeUndefined();
  });

  it('500 ×3 → retry three times, then accepted: delivered exactly once', async () => {
    pd.respondWith(500, 3);
    const outcomes: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await send(trigger());
      outcomes.push(r.outcome);
      if (i < 3) expect(r.httpStatus).toBe(500);
    }
    expect(outcomes).toEqual(['retry', 'retry', 'retry', 'accepted']);
    expect(pd.requests).toHaveLength(4);
    expect(pd.acceptedCount('dbpilot/PostgresPrimaryDown/pg-0', 'trigger')).toBe(1);
  });

  it('503 while down → retry, with Retry-After honoured when sent', async () => {
    await pd.down({ mode: '503' });
    const r = await send(trigger());
    expect(r).toMatchObject({ outcome: 'retry', httpStatus: 503 });
    await pd.up();
    pd.respondWith(502, 1, { retryAfter: 5 });
    expect(await send(trigger())).toMatchObject({ outcome: 'retry', httpStatus: 502, retryAfterMs: 5000 });
  });

  it('connection refused → retry, no HTTP status; delivered once the service is back', async () => {
    await pd.down({ mode: 'refuse' });
    // The first attempt may still meet a pooled keep-alive socket the stand-in just closed
    // (UND_ERR_SOCKET); later ones find nothing listening. Both are network errors → retry.
    const results = [await send(trigger()), await send(trigger()), await send(trigger())];
    for (const r of results) {
      expect(r.outcome).toBe('retry');
      expect(r.httpStatus).toBeUndefined();
      expect(r.message).toMatch(/network error/);
    }
    expect(results[2]!.message).toMatch(/ECONNREFUSED/);
    expect(pd.requests).toHaveLength(0);
    await pd.up();
    expect((await send(trigger())).outcome).toBe('accepted');
    expect(pd.acceptedCount('dbpilot/PostgresPrimaryDown/pg-0', 'trigger')).toBe(1);
  });

  it('timeout → retry', async () => {
    // An answer that would come only after the test (the next reset cancels it).
    pd.respondWith(500, 1, { delayMs: 600_000 });
    const r = await send(trigger(), 200);
    expect(r.outcome).toBe('retry');
    expect(r.httpStatus).toBeUndefined();
    expect(r.message).toMatch(/within 200 ms/);
    // The request reached the service, which had not answered yet: the sender's own timeout ended it.
    expect(pd.requests.map((q) => q.status)).toEqual([0]);
  });

  it('a caller abort → retry', async () => {
    pd.respondWith(202, 1, { delayMs: 1000 });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const r = await sendEvent(trigger(), { url, timeoutMs: 5000, signal: ac.signal, logger: log });
    seen.push(r);
    expect(r.outcome).toBe('retry');
    expect(r.message).toMatch(/aborted/);
  });

  it('an unexpected redirect is not taken for an acceptance', async () => {
    pd.respondWith(307, 1, { headers: { location: 'https://elsewhere.example/' }, body: '' });
    const r = await send(trigger());
    expect(r).toMatchObject({ outcome: 'retry', httpStatus: 307 });
  });

  it('truncates an over-long summary to 1024 characters, so PagerDuty accepts it', async () => {
    const long = `${'é'.repeat(1000)}${'😀'.repeat(100)}`;
    const event = trigger('dbpilot/Long/1', long);
    const r = await send(event);
    expect(r.outcome).toBe('accepted');
    const sent = pd.accepted[0]!.event.payload as { summary: string };
    expect(sent.summary.length).toBeLessThanOrEqual(SUMMARY_MAX_LENGTH);
    expect(sent.summary.endsWith('…')).toBe(true);
    expect(sent.summary).not.toMatch(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])/); // no split surrogate pair
    expect(event.payload!.summary).toBe(long); // the caller's event is not modified
  });

  it('an event that cannot be serialised is rejected without a request', async () => {
    const details: Record<string, unknown> = {};
    details.self = details;
    const r = await send({ ...trigger(), payload: { ...trigger().payload!, custom_details: details } });
    expect(r.outcome).toBe('rejected');
    expect(r.httpStatus).toBeUndefined();
    expect(pd.requests).toHaveLength(0);
  });

  it('redacts the routing key even when the server echoes it back', async () => {
    pd.respondWith(400, 1, { body: { status: 'invalid event', message: `unknown routing key ${KEY}`, errors: [`key ${KEY} is not enabled`] } });
    const r1 = await send(trigger());
    pd.respondWith(500, 1, { body: `upstream said ${KEY}` });
    const r2 = await send(trigger());
    pd.respondWith(202, 1, { body: { status: 'success', message: 'Event processed', dedup_key: KEY } });
    const r3 = await send(trigger());
    expect(r1.outcome).toBe('rejected');
    expect(r2.outcome).toBe('retry');
    expect(r3.outcome).toBe('accepted');
    for (const r of [r1, r2, r3]) expect(JSON.stringify(r)).not.toContain(KEY);
    expect(r1.message).toContain('***');
  });

  it('throws a DbpilotError for a bad URL or timeout, without the key', async () => {
    const bad = [
      sendEvent(trigger(), { url: 'not a url' }),
      sendEvent(trigger(), { url: 'ftp://example.com/v2/enqueue' }),
      sendEvent(trigger(), { url, timeoutMs: 0 }),
    ];
    for (const p of bad) {
      const err = await p.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(DbpilotError);
      expect((err as DbpilotError).code).toBe('DBPILOT_PAGERDUTY_BAD_OPTIONS');
      expect(String((err as Error).message)).not.toContain(KEY);
    }
  });

  it('logs every outcome once, at warn unless accepted, never with the routing key', async () => {
    await send(trigger());
    pd.respondWith(500, 1, { body: `upstream said ${KEY}` });
    await send(trigger());
    pd.respondWith(400, 1, { body: { status: 'invalid event', message: `unknown routing key ${KEY}`, errors: [] } });
    await send(trigger());
    const lines = log.lines.map((l) => JSON.parse(l) as { level: string; outcome: string });
    expect(lines.map((l) => [l.level, l.outcome])).toEqual([
      ['debug', 'accepted'],
      ['warn', 'retry'],
      ['warn', 'rejected'],
    ]);
    for (const line of log.lines) expect(line).not.toContain(KEY);
  });
});

describe('backoffMs (full jitter)', () => {
  it('is drawn from [0, min(max, base·2^(attempt−1))]', () => {
    const top = () => 0.999999;
    expect(backoffMs(1, { random: top })).toBe(999);
    expect(backoffMs(2, { random: top })).toBe(1999);
    expect(backoffMs(4, { random: top })).toBe(7999);
    expect(backoffMs(20, { random: top })).toBe(299_999);
    expect(backoffMs(10_000, { random: top })).toBe(299_999);
    expect(backoffMs(Number.POSITIVE_INFINITY, { random: top })).toBe(299_999);
    expect(backoffMs(3, { random: () => 0 })).toBe(0);
    expect(backoffMs(3, { random: () => 0.5, baseMs: 100, maxMs: 1000 })).toBe(200);
  });

  it('treats attempts below 1 as the first, and never leaves the bounds with Math.random', () => {
    expect(backoffMs(0, { random: () => 0.5 })).toBe(500);
    expect(backoffMs(-3, { random: () => 0.5 })).toBe(500);
    for (let attempt = 1; attempt < 40; attempt++) {
      const ms = backoffMs(attempt, { baseMs: 1000, maxMs: 300_000 });
      expect(Number.isInteger(ms)).toBe(true);
      expect(ms).toBeGreaterThanOrEqual(0);
      expect(ms).toBeLessThanOrEqual(Math.min(300_000, 1000 * 2 ** (attempt - 1)));
    }
  });
});

describe('helpers', () => {
  it('parseRetryAfter reads seconds and HTTP-dates, ignores junk', () => {
    const now = Date.parse('2025-01-01T00:00:00Z');
    expect(parseRetryAfter('0', now)).toBe(0);
    expect(parseRetryAfter(' 120 ', now)).toBe(120_000);
    expect(parseRetryAfter('Wed, 01 Jan 2025 00:01:00 GMT', now)).toBe(60_000);
    expect(parseRetryAfter('Tue, 31 Dec 2024 00:00:00 GMT', now)).toBe(0);
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(parseRetryAfter('-5', now)).toBeUndefined();
    expect(parseRetryAfter(null, now)).toBeUndefined();
  });

  it('truncate keeps short text and never splits a surrogate pair', () => {
    expect(truncate('abc', 3)).toBe('abc');
    expect(truncate('abcd', 3)).toBe('ab…');
    expect(truncate('a😀b', 3)).toBe('a…');
    expect(truncate('x', 0)).toBe('');
  });
});
