import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { isIso8601, PagerDutyStandin, validateEvent } from './pagerduty-standin.js';

const KEY = 'R0123456789abcdef0123456789ABCDE'; // 32 characters

function trigger(overrides: Record<string, unknown> = {}, payload: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    routing_key: KEY,
    event_action: 'trigger',
    dedup_key: 'dbpilot/Test/1',
    payload: { summary: 'primary down', source: 'pg:5432', severity: 'critical', ...payload },
    ...overrides,
  };
}

async function post(url: string, body: unknown, raw = false): Promise<{ status: number; json: any; headers: Headers }> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: raw ? (body as string) : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, json, headers: res.headers };
}

describe('PagerDuty stand-in', () => {
  const pd = new PagerDutyStandin();
  let url = '';

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

  it('listens on 127.0.0.1 with the enqueue path', () => {
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v2\/enqueue$/);
  });

  it('accepts a valid trigger with 202 and the PagerDuty success body', async () => {
    const r = await post(url, trigger());
    expect(r.status).toBe(202);
    expect(r.json).toEqual({ status: 'success', message: 'Event processed', dedup_key: 'dbpilot/Test/1' });
    expect(pd.acceptedCount('dbpilot/Test/1', 'trigger')).toBe(1);
    expect(pd.accepted[0]?.routingKey).toBe(KEY);
  });

  it('generates a dedup_key for a trigger without one', async () => {
    const { dedup_key: _omit, ...noKey } = trigger();
    const r = await post(url, noKey);
    expect(r.status).toBe(202);
    expect(typeof r.json.dedup_key).toBe('string');
    expect(r.json.dedup_key.length).toBeGreaterThan(0);
    expect(pd.acceptedCount(r.json.dedup_key)).toBe(1);
  });

  it('accepts acknowledge and resolve with only routing_key, event_action and dedup_key', async () => {
    for (const action of ['acknowledge', 'resolve']) {
      const r = await post(url, { routing_key: KEY, event_action: action, dedup_key: 'dbpilot/Test/1' });
      expect(r.status).toBe(202);
    }
    expect(pd.acceptedCount('dbpilot/Test/1', 'acknowledge')).toBe(1);
    expect(pd.acceptedCount('dbpilot/Test/1', 'resolve')).toBe(1);
    expect(pd.acceptedCount('dbpilot/Test/1')).toBe(2);
  });

  const invalid: Array<[string, unknown, RegExp]> = [
    ['a routing key shorter than 32 characters', trigger({ routing_key: KEY.slice(1) }), /routing_key/],
    ['a routing key longer than 32 characters', trigger({ routing_key: `${KEY}x` }), /routing_key/],
    ['a missing routing key', trigger({ routing_key: undefined }), /routing_key/],
    ['an unknown event_action', trigger({ event_action: 'escalate' }), /event_action/],
    ['a trigger without payload', trigger({ payload: undefined }), /payload/],
    ['a trigger without summary', trigger({}, { summary: undefined }), /summary/],
    ['a summary over 1024 characters', trigger({}, { summary: 'x'.repeat(1025) }), /summary/],
    ['a trigger without source', trigger({}, { source: undefined }), /source/],
    ['a bad severity', trigger({}, { severity: 'fatal' }), /severity/],
    ['a non-ISO timestamp', trigger({}, { timestamp: 'yesterday' }), /timestamp/],
    ['custom_details that is not an object', trigger({}, { custom_details: 'x' }), /custom_details/],
    ['a dedup_key over 255 characters', trigger({ dedup_key: 'k'.repeat(256) }), /dedup_key/],
    ['a resolve without dedup_key', { routing_key: KEY, event_action: 'resolve' }, /dedup_key/],
    ['an acknowledge with a blank dedup_key', { routing_key: KEY, event_action: 'acknowledge', dedup_key: ' ' }, /dedup_key/],
    ['a link without href', trigger({ links: [{ text: 'dashboard' }] }), /links\[0\]\.href/],
    ['an image without src', trigger({ images: [{ alt: 'graph' }] }), /images\[0\]\.src/],
    ['a JSON array', [trigger()], /JSON object/],
  ];

  it.each(invalid)('rejects %s with 400 invalid event', async (_name, body, reason) => {
    const r = await post(url, body);
    expect(r.status).toBe(400);
    expect(r.json.status).toBe('invalid event');
    expect(r.json.message).toBe('Event object is invalid');
    expect(r.json.errors.join('\n')).toMatch(reason);
    expect(pd.accepted).toHaveLength(0);
    expect(pd.requests).toHaveLength(1);
    expect(pd.requests[0]?.status).toBe(400);
  });

  it('rejects a body that is not JSON', async () => {
    const r = await post(url, 'routing_key=abc&event_action=trigger', true);
    expect(r.status).toBe(400);
    expect(r.json.status).toBe('invalid event');
    expect(r.json.errors[0]).toMatch(/not valid JSON/);
    const empty = await post(url, '', true);
    expect(empty.status).toBe(400);
    expect(pd.accepted).toHaveLength(0);
  });

  it('never repeats the routing key in its errors', async () => {
    const r = await post(url, trigger({ routing_key: `${KEY}EXTRA` }, { severity: 'nope' }));
    expect(r.status).toBe(400);
    expect(JSON.stringify(r.json)).not.toContain(KEY);
  });

  it('accepts the timestamp forms PagerDuty documents and refuses impossible dates', () => {
    expect(isIso8601('2015-07-17T08:42:58.315+0000')).toBe(true);
    expect(isIso8601('2024-02-29T23:59:59Z')).toBe(true);
    expect(isIso8601('2024-02-29T23:59:59.123+01:00')).toBe(true);
    expect(isIso8601('2023-02-29T10:00:00Z')).toBe(false);
    expect(isIso8601('2024-13-01T10:00:00Z')).toBe(false);
    expect(isIso8601('2024-01-01')).toBe(false);
    expect(validateEvent(trigger({}, { timestamp: new Date().toISOString() }))).toEqual([]);
  });

  it('plays scripted answers in order, then goes back to normal', async () => {
    pd.respondWith(500, 2).respondWith(429, 1, { retryAfter: 7 });
    expect((await post(url, trigger())).status).toBe(500);
    expect((await post(url, trigger())).status).toBe(500);
    const throttled = await post(url, trigger());
    expect(throttled.status).toBe(429);
    expect(throttled.headers.get('retry-after')).toBe('7');
    expect((await post(url, trigger())).status).toBe(202);
    expect(pd.requests.map((r) => r.status)).toEqual([500, 500, 429, 202]);
    expect(pd.acceptedCount('dbpilot/Test/1', 'trigger')).toBe(1);
  });

  it('a scripted 202 still validates', async () => {
    pd.respondWith(202, 1);
    expect((await post(url, trigger({ routing_key: 'short' }))).status).toBe(400);
  });

  it('refuses connections while down in refuse mode, and comes back on the same port', async () => {
    await pd.down({ mode: 'refuse' });
    await expect(post(url, trigger())).rejects.toThrow();
    await pd.up();
    expect((await post(url, trigger())).status).toBe(202);
    expect(pd.url).toBe(url);
    expect(pd.acceptedCount('dbpilot/Test/1')).toBe(1);
  });

  it('answers 503 while down in 503 mode and records the requests', async () => {
    await pd.down({ mode: '503' });
    expect((await post(url, trigger())).status).toBe(503);
    expect(pd.requests).toHaveLength(1);
    expect(pd.accepted).toHaveLength(0);
    await pd.up();
    expect((await post(url, trigger())).status).toBe(202);
  });

  it('delays a scripted answer; the event still counts when the sender gave up, unless reset first', async () => {
    // The stand-in runs in this process: a request it holds is seen here (polled every millisecond)
    // before its 150 ms delay can end, so the sender gives up while the answer is still pending.
    const received = async (): Promise<void> => {
      while (pd.requests.length === 0) await new Promise((r) => setTimeout(r, 1));
    };

    pd.respondWith(202, 1, { delayMs: 150 });
    const ac = new AbortController();
    const gaveUp = fetch(url, { method: 'POST', body: JSON.stringify(trigger()), signal: ac.signal });
    await received();
    expect(pd.requests[0]!.status).toBe(0); // held, not answered
    ac.abort();
    await expect(gaveUp).rejects.toThrow();
    expect(pd.accepted).toHaveLength(0);
    // The delay ends and the event is accepted although nobody waits for the answer.
    await expect.poll(() => pd.acceptedCount('dbpilot/Test/1', 'trigger'), { timeout: 10_000, interval: 10 }).toBe(1); // at-least-once, like the real service

    pd.reset();
    pd.respondWith(202, 1, { delayMs: 150 });
    const late = fetch(url, { method: 'POST', body: JSON.stringify(trigger()) });
    await received();
    expect(pd.requests[0]!.status).toBe(0);
    pd.reset(); // cancels the held answer: the connection is cut and the handler ends without accepting
    await expect(late).rejects.toThrow(); // connection cut
    expect(pd.accepted).toHaveLength(0);
    expect(pd.requests).toHaveLength(0);
  });

  it('answers 404 on other paths and 405 on other methods', async () => {
    expect((await post(url.replace('/v2/enqueue', '/v1/enqueue'), trigger())).status).toBe(404);
    expect((await fetch(url)).status).toBe(405);
  });
});
