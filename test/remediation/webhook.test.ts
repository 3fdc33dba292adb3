/**
 * POST /alertmanager/webhook and the audit / approval API, through the real Fastify app (the
 * service's buildFastify: real body limit, real error handler) with inject() and over real HTTP.
 * Payloads are the Alertmanager fixtures in test/fixtures/alertmanager/, as they are or mutated.
 */
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import {
  TEAM_KEYS,
  TOKEN,
  fixture,
  fixtureText,
  freshFingerprint,
  gate,
  groupPageKey,
  payload,
  scriptedHandler,
  startRemediation,
  until,
  type RemediationHarness,
} from '../support/remediation.js';

const FIRING = 'alertmanager_webhook_firing.json';
const RESOLVED = 'alertmanager_webhook_resolved.json';
/** The fixture's alert has no handler (remediation=restart-redis): it is paged in its Alertmanager group's page. */
const FIXTURE_DEDUP_KEY = groupPageKey(fixtureText(FIRING), 'devops');

const pd = new PagerDutyStandin();
beforeAll(async () => {
  await pd.start();
});
afterAll(async () => {
  await pd.close();
});

const harnesses: RemediationHarness[] = [];
async function harness(opts: Parameters<typeof startRemediation>[0] = {}): Promise<RemediationHarness> {
  const h = await startRemediation({ pagerduty: pd, ...opts });
  harnesses.push(h);
  return h;
}
afterEach(async () => {
  await Promise.all(harnesses.splice(0).map((h) => h.close()));
  pd.reset();
});

function json(res: { body: string }): Record<string, unknown> {
  return JSON.parse(res.body) as Record<string, unknown>;
}

describe('authentication', () => {
  it('accepts the fixture with the bearer token (202), as the first thing it checks', async () => {
    const h = await harness();
    const res = await h.webhook(fixtureText(FIRING));
    expect(res.statusCode).toBe(202);
    expect(json(res)).toEqual({ status: 'accepted', alerts: 1 });
    // Scheme names are case-insensitive (RFC 7235).
    const lower = await h.webhook(fixtureText(FIRING), { authorization: `bearer ${TOKEN}` });
    expect(lower.statusCode).toBe(202);
  });

  it.each([
    ['no Authorization header', undefined],
    ['an empty header', ''],
    ['the wrong token', 'Bearer wrong-token-0123456789abcdef'],
    ['a token one character short', `Bearer ${TOKEN.slice(0, -1)}`],
    ['the token with a suffix', `Bearer ${TOKEN}x`],
    ['the token with no scheme', TOKEN],
    ['the token under another scheme', `Token ${TOKEN}`],
    ['Basic auth when only a token is configured', `Basic ${Buffer.from(`alertmanager:${TOKEN}`).toString('base64')}`],
    ['the bare scheme', 'Bearer'],
  ])('refuses %s with 401 and records nothing', async (_what, header) => {
    const h = await harness();
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (header !== undefined) headers.authorization = header;
    const res = await h.request({ method: 'POST', url: '/alertmanager/webhook', headers, payload: fixtureText(FIRING) });
    expect(res.statusCode).toBe(401);
    expect(res.headers['www-authenticate']).toBe('Bearer realm="dbpilot"');
    expect(json(res).code).toBe('DBPILOT_UNAUTHORIZED');
    await h.settle();
    expect(h.store.listRuns()).toEqual([]);
    expect(await h.metric('dbpilot_webhook_requests_total', { code: '401' })).toBe(1);
  });

  it('authenticates before reading the body: a wrong token gets 401 even for an oversized or broken body', async () => {
    const h = await harness({ config: { webhook: { bodyLimitBytes: 4096 } } });
    const bad = { authorization: 'Bearer nope-nope-nope-nope-nope' };
    expect((await h.webhook('x'.repeat(100_000), bad)).statusCode).toBe(401);
    expect((await h.webhook('{not json', bad)).statusCode).toBe(401);
    expect((await h.webhook('<xml/>', { ...bad, 'content-type': 'application/xml' })).statusCode).toBe(401);
    expect(h.store.listRuns()).toEqual([]);
  });

  it('accepts Basic auth when configured, alongside the token', async () => {
    const h = await harness({ config: { webhook: { basicAuth: { username: 'alertmanager', password: 's3cret-pass' } } } });
    const basic = (u: string, p: string) => ({ authorization: `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}` });
    expect((await h.webhook(fixtureText(FIRING), basic('alertmanager', 's3cret-pass'))).statusCode).toBe(202);
    expect((await h.webhook(fixtureText(FIRING), basic('alertmanager', 's3cret-pasS'))).statusCode).toBe(401);
    expect((await h.webhook(fixtureText(FIRING), basic('alertmanagers', 's3cret-pass'))).statusCode).toBe(401);
    expect((await h.webhook(fixtureText(FIRING), { authorization: 'Basic !!!not-base64' })).statusCode).toBe(401);
    expect((await h.webhook(fixtureText(FIRING))).statusCode).toBe(202); // the token still works
  });

  it('with Basic auth only, challenges with Basic and refuses any bearer token', async () => {
    const h = await harness({ token: null, config: { webhook: { basicAuth: { username: 'am', password: 'password-1' } } } });
    const res = await h.webhook(fixtureText(FIRING), { authorization: `Bearer ${TOKEN}` });
    expect(res.statusCode).toBe(401);
    expect(res.headers['www-authenticate']).toBe('Basic realm="dbpilot"');
    const ok = await h.webhook(fixtureText(FIRING), { authorization: `Basic ${Buffer.from('am:password-1').toString('base64')}` });
    expect(ok.statusCode).toBe(202);
  });

  it('with no credential configured, refuses every request and says why', async () => {
    const h = await harness({ token: null });
    for (const authorization of [`Bearer ${TOKEN}`, 'Bearer ', `Basic ${Buffer.from(':').toString('base64')}`]) {
      const res = await h.webhook(fixtureText(FIRING), { authorization });
      expect(res.statusCode).toBe(401);
      expect(String(json(res).error)).toMatch(/webhook\.token is not configured/);
    }
    expect(h.store.listRuns()).toEqual([]);
  });

  it('logs the refusal but never the configured or the presented credential', async () => {
    const h = await harness({ logLevel: 'trace' });
    const presented = 'Bearer presented-wrong-token-XYZ123456';
    await h.webhook(fixtureText(FIRING), { authorization: presented });
    await h.webhook(fixtureText(FIRING));
    await h.request({ method: 'GET', url: '/api/remediations', headers: { authorization: presented } });
    await h.settle();
    expect(h.log.find('unauthenticated request refused').length).toBe(2);
    const text = h.log.text();
    expect(text).not.toContain(TOKEN);
    expect(text).not.toContain('presented-wrong-token-XYZ123456');
    for (const key of Object.values(TEAM_KEYS)) expect(text).not.toContain(key);
  });

  it('protects the audit and approval API the same way', async () => {
    const h = await harness();
    for (const [method, url] of [
      ['GET', '/api/remediations'],
      ['GET', '/api/remediations/00000000-0000-0000-0000-000000000000'],
      ['POST', '/api/remediations/00000000-0000-0000-0000-000000000000/approve'],
    ] as const) {
      expect((await h.request({ method, url })).statusCode).toBe(401);
      expect((await h.request({ method, url, headers: { authorization: 'Bearer wrong-wrong-wrong-wrong' } })).statusCode).toBe(401);
    }
  });
});

describe('validation', () => {
  type Mutate = (p: Record<string, any>) => void;
  const cases: Array<[string, Mutate, RegExp]> = [
    ['version "3"', (p) => (p.version = '3'), /^version: .*version "4"/],
    ['version as a number', (p) => (p.version = 4), /^version: /],
    ['no version', (p) => delete p.version, /^version: /],
    ['no receiver', (p) => delete p.receiver, /^receiver: /],
    ['an unknown status', (p) => (p.status = 'pending'), /^status: /],
    ['no alerts', (p) => delete p.alerts, /^alerts: /],
    ['an empty alerts list', (p) => (p.alerts = []), /^alerts: alerts must not be empty/],
    ['alerts as an object', (p) => (p.alerts = { 0: p.alerts[0] }), /^alerts: /],
    ['an alert without fingerprint', (p) => delete p.alerts[0].fingerprint, /^alerts\[0\]\.fingerprint: /],
    ['a fingerprint that is not hexadecimal', (p) => (p.alerts[0].fingerprint = 'ZZ9b05394dada12d'), /^alerts\[0\]\.fingerprint: fingerprint must be hexadecimal/],
    ['an alert without alertname', (p) => delete p.alerts[0].labels.alertname, /^alerts\[0\]\.labels: labels\.alertname is required/],
    ['an empty alertname', (p) => (p.alerts[0].labels.alertname = ''), /^alerts\[0\]\.labels: /],
    ['a numeric label value', (p) => (p.alerts[0].labels.severity = 3), /^alerts\[0\]\.labels/],
    ['an invalid label name', (p) => (p.alerts[0].labels['bad-name'] = 'x'), /^alerts\[0\]\.labels/],
    ['labels as a list', (p) => (p.alerts[0].labels = ['alertname']), /^alerts\[0\]\.labels: /],
    ['an unknown alert status', (p) => (p.alerts[0].status = 'silenced'), /^alerts\[0\]\.status: /],
    ['startsAt that is no timestamp', (p) => (p.alerts[0].startsAt = 'yesterday'), /^alerts\[0\]\.startsAt: not an RFC 3339 timestamp/],
    ['startsAt as epoch seconds', (p) => (p.alerts[0].startsAt = 1764259243), /^alerts\[0\]\.startsAt: /],
    ['a second alert that is broken', (p) => p.alerts.push({ ...p.alerts[0], fingerprint: 42 }), /^alerts\[1\]\.fingerprint: /],
    ['negative truncatedAlerts', (p) => (p.truncatedAlerts = -1), /^truncatedAlerts: /],
    ['fractional truncatedAlerts', (p) => (p.truncatedAlerts = 1.5), /^truncatedAlerts: /],
    ['truncatedAlerts as a string', (p) => (p.truncatedAlerts = '0'), /^truncatedAlerts: /],
    ['an annotation of 16 KiB + 1', (p) => (p.alerts[0].annotations.description = 'd'.repeat(16_385)), /^alerts\[0\]\.annotations/],
  ];

  it.each(cases)('answers 400 naming the problem for %s, and records nothing', async (_what, mutate, message) => {
    const h = await harness();
    const body = fixture(FIRING) as Record<string, any>;
    mutate(body);
    const res = await h.webhook(body);
    expect(res.statusCode).toBe(400);
    const answer = json(res);
    expect(answer.code).toBe('DBPILOT_BAD_WEBHOOK');
    expect(String(answer.error)).toMatch(message);
    await h.settle();
    expect(h.store.listRuns()).toEqual([]);
    expect(pd.requests).toEqual([]);
  });

  it('keeps what Alertmanager may add: unknown fields are tolerated, optional ones may be missing', async () => {
    const h = await harness();
    const body = fixture(FIRING) as Record<string, any>;
    body.someFutureField = { x: 1 };
    body.alerts[0].silencedBy = [];
    delete body.groupKey;
    delete body.commonAnnotations;
    delete body.alerts[0].endsAt;
    delete body.alerts[0].generatorURL;
    delete body.alerts[0].annotations;
    expect((await h.webhook(body)).statusCode).toBe(202);
  });

  it('answers 400 for a body that is not JSON, and for an empty one', async () => {
    const h = await harness();
    const notJson = await h.webhook('{"version": "4", ');
    expect(notJson.statusCode).toBe(400);
    expect(json(notJson).code).toBe('FST_ERR_CTP_INVALID_JSON_BODY');
    expect((await h.webhook('')).statusCode).toBe(400);
  });

  it('answers 415 for what is not JSON in UTF-8: other types, text, other charsets, no content type', async () => {
    const h = await harness();
    for (const ct of [
      'application/xml',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'application/octet-stream',
      'text/json',
      'application/jsonx',
      'text/plain',
      'text/plain; charset=utf-8',
      'application/json; charset=utf-16',
      'application/json; charset=iso-8859-1',
    ]) {
      const res = await h.webhook(fixtureText(FIRING), { 'content-type': ct });
      expect(res.statusCode, ct).toBe(415);
      expect(json(res).code, ct).toBe('DBPILOT_UNSUPPORTED_MEDIA_TYPE');
    }
    const none = await h.request({ method: 'POST', url: '/alertmanager/webhook', headers: h.auth });
    expect(none.statusCode).toBe(415);
    expect(json(none).error).toBe('content-type is missing; expected application/json');
    expect(h.store.listRuns()).toEqual([]);
    for (const ct of ['application/json', 'Application/JSON; charset=UTF-8', 'application/json;charset="utf-8"']) {
      expect((await h.webhook(payload([{ labels: { alertname: 'X', remediation: 'none' }, fingerprint: freshFingerprint() }]), { 'content-type': ct })).statusCode, ct).toBe(202);
    }
  });

  it('refuses prototype-pollution keys with 400 and pollutes nothing', async () => {
    const h = await harness();
    const text = fixtureText(FIRING);
    const bodies = [
      text.replace('"receiver"', '"__proto__": {"polluted": "yes"}, "receiver"'),
      text.replace('"alertname": "RedisDown",', '"alertname": "RedisDown", "__proto__": {"polluted": "yes"},'),
      text.replace('"receiver"', '"constructor": {"prototype": {"polluted": "yes"}}, "receiver"'),
      text.replace('"receiver"', '"\\u005f_proto__": {"polluted": "yes"}, "receiver"'),
    ];
    for (const b of bodies) {
      expect(b).not.toBe(text);
      const res = await h.webhook(b);
      expect(res.statusCode).toBe(400);
    }
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(h.store.listRuns()).toEqual([]);
  });

  it('answers 400 for pathologically deep nesting just under the default 1 MiB limit', async () => {
    const h = await harness();
    for (const body of ['['.repeat(500_000) + ']'.repeat(500_000), '{"a":'.repeat(150_000) + '1' + '}'.repeat(150_000)]) {
      expect(Buffer.byteLength(body)).toBeLessThan(h.config.webhook.bodyLimitBytes);
      const res = await h.webhook(body);
      expect(res.statusCode).toBe(400);
    }
    expect((await h.webhook(fixtureText(FIRING))).statusCode).toBe(202);
  });

  it('answers 413 above webhook.bodyLimitBytes and accepts a body of exactly the limit', async () => {
    const limit = 4096;
    const h = await harness({ config: { webhook: { bodyLimitBytes: limit } }, listen: true });
    const body = fixture(FIRING) as Record<string, any>;
    const pad = (n: number) => {
      body.alerts[0].annotations.description = '';
      const base = Buffer.byteLength(JSON.stringify(body));
      body.alerts[0].annotations.description = 'p'.repeat(n - base);
      const s = JSON.stringify(body);
      expect(Buffer.byteLength(s)).toBe(n);
      return s;
    };
    expect((await h.webhook(pad(limit))).statusCode).toBe(202);
    const over = await h.webhook(pad(limit + 1));
    expect(over.statusCode).toBe(413);
    expect(json(over).code).toBe('FST_ERR_CTP_BODY_TOO_LARGE');

    // Over real HTTP, also when the client streams without a Content-Length.
    const big = pad(limit * 4);
    const chunked = await fetch(`${h.url}/alertmanager/webhook`, {
      method: 'POST',
      headers: { ...h.auth, 'content-type': 'application/json' },
      body: new ReadableStream({
        start(c) {
          const bytes = new TextEncoder().encode(big);
          for (let i = 0; i < bytes.length; i += 1000) c.enqueue(bytes.subarray(i, i + 1000));
          c.close();
        },
      }),
      duplex: 'half',
    } as RequestInit);
    expect(chunked.status).toBe(413);
    await h.settle();
    expect(h.store.listRuns()).toHaveLength(1); // the one at exactly the limit
  });
});

describe('answering', () => {
  it('answers 202 at once and runs the handler after the answer', async () => {
    const h = await harness({ config: { handlers: { 'redis-failure': { mode: 'auto' } } } });
    const planGate = gate();
    const handler = scriptedHandler('redis-failure', { beforePlan: () => planGate.wait() });
    h.remediation.handlers.register(handler);
    const fp = freshFingerprint();
    const res = await h.webhook(payload([{ labels: { alertname: 'RedisDown', remediation: 'redis-failure', instance: 'r1' }, fingerprint: fp }]));
    expect(res.statusCode).toBe(202);
    await planGate.reached;
    // The handler is still planning: the answer did not wait for it.
    const [run] = h.store.listRuns({ fingerprint: fp });
    expect(run?.status).toBe('planning');
    expect(handler.executed).toEqual([]);
    planGate.open();
    await h.settle();
    expect(h.store.getRun(run!.id)?.status).toBe('succeeded');
    expect(handler.executed).toEqual([`${fp}:restartThing`, `${fp}:verifyThing`]);
  });

  it('answers 500 when the alert cannot be recorded, so Alertmanager sends it again', async () => {
    const h = await harness({ config: { handlers: { 'redis-failure': { mode: 'auto' } } } });
    h.remediation.handlers.register(scriptedHandler('redis-failure'));
    h.store.close(); // the store is gone (disk full, file removed, …)
    const res = await h.webhook(payload([{ labels: { alertname: 'RedisDown', remediation: 'redis-failure', instance: 'r1' }, fingerprint: freshFingerprint() }]));
    expect(res.statusCode).toBe(500);
    expect(res.json()).toMatchObject({ code: 'DBPILOT_STORE_FAILED' });
  });

  it('logs and counts alerts Alertmanager truncated (truncatedAlerts > 0)', async () => {
    const h = await harness();
    const body = fixture(FIRING);
    body.truncatedAlerts = 7;
    expect((await h.webhook(body)).statusCode).toBe(202);
    const again = fixture(FIRING);
    again.truncatedAlerts = 3;
    expect((await h.webhook(again)).statusCode).toBe(202);
    expect((await h.webhook(fixtureText(FIRING))).statusCode).toBe(202);
    await h.settle();
    expect(await h.metric('dbpilot_webhook_truncated_alerts_total')).toBe(10);
    const warned = h.log.find(/truncated alerts/);
    expect(warned.map((e) => e.truncatedAlerts)).toEqual([7, 3]);
    expect(warned.every((e) => e.level === 40)).toBe(true);
    const text = await h.runtime.metrics.prometheus.metrics();
    expect(text).toMatch(/^dbpilot_webhook_truncated_alerts_total 10$/m);
  });

  it('counts requests by status code', async () => {
    const h = await harness();
    await h.webhook(fixtureText(FIRING));
    await h.webhook('nope');
    await h.webhook(fixtureText(FIRING), { authorization: 'Bearer x' });
    expect(await h.metric('dbpilot_webhook_requests_total', { code: '202' })).toBe(1);
    expect(await h.metric('dbpilot_webhook_requests_total', { code: '400' })).toBe(1);
    expect(await h.metric('dbpilot_webhook_requests_total', { code: '401' })).toBe(1);
  });
});

describe('dedupe', () => {
  it('100 concurrent copies of the firing fixture over real HTTP → one run, one page', async () => {
    const h = await harness({ listen: true });
    const text = fixtureText(FIRING);
    const answers = await Promise.all(
      Array.from({ length: 100 }, () =>
        fetch(`${h.url}/alertmanager/webhook`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: text }).then((r) => r.status),
      ),
    );
    expect(answers).toEqual(Array(100).fill(202));
    await h.settle();
    await until(() => pd.acceptedCount(FIXTURE_DEDUP_KEY, 'trigger') > 0, 'the page');
    await h.settle();
    const runs = h.store.listRuns();
    expect(runs).toHaveLength(1);
    expect(runs[0]).toMatchObject({ alertname: 'RedisDown', fingerprint: '2e9b05394dada12d', startsAt: '2026-11-27T16:00:43.799Z', status: 'escalated' });
    expect(pd.acceptedCount(FIXTURE_DEDUP_KEY, 'trigger')).toBe(1);
    expect(await h.metric('dbpilot_remediations_total', { outcome: 'deduplicated' })).toBe(99);
    expect(await h.metric('dbpilot_webhook_alerts_total', { status: 'firing' })).toBe(100);
  });

  it('100 concurrent copies through inject() of an alert a handler acts on → one run, executed once', async () => {
    const h = await harness({ config: { handlers: { 'redis-failure': { mode: 'auto' } } } });
    const handler = scriptedHandler('redis-failure');
    h.remediation.handlers.register(handler);
    const fp = freshFingerprint();
    const body = JSON.stringify(payload([{ labels: { alertname: 'RedisDown', remediation: 'redis-failure' }, fingerprint: fp }]));
    const answers = await Promise.all(Array.from({ length: 100 }, () => h.webhook(body).then((r) => r.statusCode)));
    expect(answers).toEqual(Array(100).fill(202));
    await h.settle();
    expect(h.store.listRuns()).toHaveLength(1);
    expect(handler.planCalls).toBe(1);
    expect(handler.executed).toEqual([`${fp}:restartThing`, `${fp}:verifyThing`]);
  });

  it('a re-send at the repeat interval starts nothing; the next occurrence (new startsAt) does', async () => {
    const h = await harness();
    for (let i = 0; i < 3; i++) {
      expect((await h.webhook(fixtureText(FIRING))).statusCode).toBe(202);
      await h.settle();
    }
    expect(h.store.listRuns()).toHaveLength(1);
    expect((await h.webhook(fixtureText(RESOLVED))).statusCode).toBe(202);
    await h.settle();
    const next = fixture(FIRING) as Record<string, any>;
    next.alerts[0].startsAt = '2026-11-27T18:00:00.000Z';
    expect((await h.webhook(next)).statusCode).toBe(202);
    await h.settle();
    const runs = h.store.listRuns();
    expect(runs.map((r) => r.startsAt)).toEqual(['2026-11-27T18:00:00.000Z', '2026-11-27T16:00:43.799Z']);
  });
});

describe('the audit API', () => {
  it('lists runs newest first, filtered by alertname, fingerprint, status and handler', async () => {
    const h = await harness({ mode: 'off' });
    h.remediation.handlers.register(scriptedHandler('redis-failure'));
    const fps = [freshFingerprint(), freshFingerprint(), freshFingerprint(), freshFingerprint()];
    const sent: Array<[string, Record<string, string>]> = [
      [fps[0]!, { alertname: 'RedisDown' }],
      [fps[1]!, { alertname: 'RedisDown', remediation: 'redis-failure' }],
      [fps[2]!, { alertname: 'PostgresDataCorruption', team: 'em-dba' }],
      [fps[3]!, { alertname: 'RedisRejectedConnections', remediation: 'redis-failure', instance: 'other' }],
    ];
    for (const [fp, labels] of sent) {
      expect((await h.webhook(payload([{ labels, fingerprint: fp }]))).statusCode).toBe(202);
      await h.settle();
      await new Promise((r) => setTimeout(r, 3)); // distinct created_at
    }
    const list = async (qs = '') => {
      const res = await h.request({ method: 'GET', url: `/api/remediations${qs}`, headers: h.auth });
      expect(res.statusCode).toBe(200);
      return (json(res).runs as Array<Record<string, unknown>>).map((r) => r.fingerprint);
    };
    expect(await list()).toEqual([...fps].reverse());
    expect(await list('?alertname=RedisDown')).toEqual([fps[1], fps[0]]);
    expect(await list(`?fingerprint=${fps[2]}`)).toEqual([fps[2]]);
    expect(await list('?status=skipped')).toEqual([fps[3], fps[1]]);
    expect(await list('?status=escalated')).toEqual([fps[2], fps[0]]);
    expect(await list('?handler=redis-failure&status=skipped&alertname=RedisDown')).toEqual([fps[1]]);
    expect(await list('?alertname=Nothing')).toEqual([]);
    expect(await list('?limit=2')).toEqual([fps[3], fps[2]]);

    for (const qs of ['?status=bogus', '?status=constructor', '?limit=0', '?limit=1001', '?limit=abc', '?limit=1.5']) {
      const res = await h.request({ method: 'GET', url: `/api/remediations${qs}`, headers: h.auth });
      expect(res.statusCode, qs).toBe(400);
      expect(json(res).code).toBe('DBPILOT_BAD_QUERY');
    }
  });

  it('shows one run with its steps, outputs and checks; 404 for an unknown id', async () => {
    const h = await harness({ config: { handlers: { 'redis-failure': { mode: 'auto' } } } });
    h.remediation.handlers.register(scriptedHandler('redis-failure'));
    const fp = freshFingerprint();
    await h.webhook(payload([{ labels: { alertname: 'RedisDown', remediation: 'redis-failure', instance: 'r9' }, fingerprint: fp }]));
    await h.settle();
    const [run] = h.store.listRuns({ fingerprint: fp });
    const res = await h.request({ method: 'GET', url: `/api/remediations/${run!.id}`, headers: h.auth });
    expect(res.statusCode).toBe(200);
    const body = json(res);
    expect(body).toMatchObject({ id: run!.id, handler: 'redis-failure', target: 'fake/r9', mode: 'auto', status: 'succeeded', alertname: 'RedisDown', fingerprint: fp });
    expect(body.steps).toEqual([
      expect.objectContaining({ idx: 0, name: 'restartThing', command: `kubectl do restartThing # ${fp}`, status: 'done', output: { did: 'restartThing' }, check: { ok: true, detail: 'restartThing verified' }, attempts: 1 }),
      expect.objectContaining({ idx: 1, name: 'verifyThing', status: 'done', output: { did: 'verifyThing' }, check: { ok: true, detail: 'verifyThing verified' } }),
    ]);
    const missing = await h.request({ method: 'GET', url: '/api/remediations/no-such-run', headers: h.auth });
    expect(missing.statusCode).toBe(404);
    expect(json(missing).code).toBe('DBPILOT_RUN_NOT_FOUND');
  });

  const APPROVERS = [
    { name: 'alice', token: 'alice-approver-token-0123456789' },
    { name: 'bob', token: 'bob-approver-token-0123456789ab' },
  ];

  it('approves a waiting run once, recording whose credential approved: 202 for the approval, 409 for the second, 404 for an unknown id', async () => {
    const h = await harness({ config: { approvers: APPROVERS, handlers: { 'redis-failure': { mode: 'approve' } } } });
    const handler = scriptedHandler('redis-failure');
    h.remediation.handlers.register(handler);
    const fp = freshFingerprint();
    await h.webhook(payload([{ labels: { alertname: 'RedisDown', remediation: 'redis-failure' }, fingerprint: fp }]));
    await h.settle();
    const [run] = h.store.listRuns({ fingerprint: fp });
    expect(run?.status).toBe('awaiting_approval');
    expect(handler.executed).toEqual([]);

    // The header claims somebody else: the audit records the credential's owner, never the header.
    const approve = () =>
      h.request({ method: 'POST', url: `/api/remediations/${run!.id}/approve`, headers: { authorization: `Bearer ${APPROVERS[0]!.token}`, 'x-dbpilot-user': 'mallory' } });
    const [a, b] = await Promise.all([approve(), approve()]);
    expect([a.statusCode, b.statusCode].sort()).toEqual([202, 409]);
    const loser = a.statusCode === 409 ? a : b;
    expect(json(loser).code).toBe('DBPILOT_RUN_NOT_WAITING');
    await h.settle();
    const done = h.store.getRun(run!.id)!;
    expect(done).toMatchObject({ status: 'succeeded', approvedBy: 'alice' });
    expect(handler.executed).toEqual([`${fp}:restartThing`, `${fp}:verifyThing`]);
    expect((await approve()).statusCode).toBe(409);
    expect((await h.request({ method: 'POST', url: '/api/remediations/nope/approve', headers: { authorization: `Bearer ${APPROVERS[1]!.token}` } })).statusCode).toBe(404);
  });

  it("the webhook's credential cannot approve; approvers may read the audit; a wrong token is 401", async () => {
    const h = await harness({ config: { approvers: APPROVERS, handlers: { 'redis-failure': { mode: 'approve' } } } });
    h.remediation.handlers.register(scriptedHandler('redis-failure'));
    const fp = freshFingerprint();
    await h.webhook(payload([{ labels: { alertname: 'RedisDown', remediation: 'redis-failure' }, fingerprint: fp }]));
    await h.settle();
    const [run] = h.store.listRuns({ fingerprint: fp });
    const url = `/api/remediations/${run!.id}/approve`;
    const byWebhook = await h.request({ method: 'POST', url, headers: { ...h.auth, 'x-dbpilot-user': 'alice' } });
    expect(byWebhook.statusCode).toBe(403);
    expect(json(byWebhook)).toEqual({ code: 'DBPILOT_NOT_AN_APPROVER', error: "the webhook's credential cannot approve: approvers have tokens of their own (approvers[].token)" });
    expect((await h.request({ method: 'POST', url, headers: { authorization: 'Bearer alice-approver-token-0123456788' } })).statusCode).toBe(401);
    expect(h.store.getRun(run!.id)?.status).toBe('awaiting_approval');
    const read = await h.request({ method: 'GET', url: `/api/remediations/${run!.id}`, headers: { authorization: `Bearer ${APPROVERS[1]!.token}` } });
    expect(read.statusCode).toBe(200);
  });

  it('without approvers configured, nobody approves over HTTP, and the answer says how to approve instead', async () => {
    const h = await harness();
    const res = await h.request({ method: 'POST', url: '/api/remediations/00000000-0000-0000-0000-000000000000/approve', headers: h.auth });
    expect(res.statusCode).toBe(403);
    expect(json(res).error).toBe('no approvers are configured (approvers[]): approve with `dbpilot approve <id>` inside the pod');
  });
});

// ---------------------------------------------------------------------------------------------------
// Property: hostile bodies

/** What secure-json-parse (Fastify's JSON parser) refuses: `__proto__` anywhere, `constructor.prototype`. */
function pollutes(v: unknown): boolean {
  const stack: unknown[] = [v];
  while (stack.length > 0) {
    const n = stack.pop();
    if (n === null || typeof n !== 'object') continue;
    const o = n as Record<string, unknown>;
    if (Object.hasOwn(o, '__proto__')) return true;
    const c = Object.hasOwn(o, 'constructor') ? o.constructor : undefined;
    if (c !== null && typeof c === 'object' && Object.hasOwn(c, 'prototype')) return true;
    for (const k of Object.keys(o)) stack.push(o[k]);
  }
  return false;
}

const LIMIT = 64 * 1024;
/** DBPILOT_FUZZ_RUNS raises the number of mutated fixtures for a longer hunt (the other properties add 1,000). */
const MUTATED_RUNS = Number(process.env.DBPILOT_FUZZ_RUNS ?? 1000);
const UNSUPPORTED = ['application/xml', 'application/x-www-form-urlencoded', 'multipart/form-data', 'application/octet-stream', 'text/json', 'application/jsonx', 'application/vnd.api+json'];

interface Req {
  contentType: string | undefined;
  body: Buffer;
}

/** The answer the contract demands: 202 exactly for a UTF-8 JSON body that parses safely and meets the webhook contract. */
function expected(r: Req): number {
  // What is not JSON in UTF-8 is refused before its body is read.
  if (r.contentType === undefined) return 415;
  const [type, ...params] = r.contentType.split(';').map((p) => p.trim().toLowerCase());
  if (type !== 'application/json') return 415;
  const charset = params.find((p) => p.startsWith('charset='))?.slice('charset='.length).replace(/"/g, '');
  if (charset !== undefined && charset !== 'utf-8') return 415;
  if (r.body.length > LIMIT) return 413;
  if (r.body.length === 0) return 400;
  let text = r.body.toString('utf8');
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return 400;
  }
  if (pollutes(value)) return 400;
  return contractAccepts(value) ? 202 : 400;
}

/**
 * The webhook contract, written out on its own from Alertmanager's webhook format (version 4) and the
 * limits the README gives, so the property checks the route against the contract and not against the
 * route's own schema. Unknown fields are tolerated; what the engine relies on must be there and typed.
 */
function contractAccepts(v: unknown): boolean {
  const isObj = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);
  const str = (x: unknown, max: number) => typeof x === 'string' && x.length <= max;
  const optStr = (o: Record<string, unknown>, k: string, max: number) => !Object.hasOwn(o, k) || str(o[k], max);
  const rfc3339 = (x: unknown) =>
    typeof x === 'string' && x.length <= 64 && /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/.test(x) && !Number.isNaN(new Date(x).getTime());
  const labelSet = (x: unknown) =>
    isObj(x) && Object.entries(x).every(([k, val]) => k.length <= 256 && /^[a-zA-Z_][a-zA-Z0-9_]*$/.test(k) && typeof val === 'string' && val.length <= 16_384);
  const optLabels = (o: Record<string, unknown>, k: string) => !Object.hasOwn(o, k) || labelSet(o[k]);
  if (!isObj(v)) return false;
  if (v.version !== '4' || !str(v.receiver, 1024) || (v.status !== 'firing' && v.status !== 'resolved')) return false;
  if (!Array.isArray(v.alerts) || v.alerts.length < 1 || v.alerts.length > 10_000) return false;
  for (const k of ['groupLabels', 'commonLabels', 'commonAnnotations']) if (!optLabels(v, k)) return false;
  if (!optStr(v, 'externalURL', 8192) || !optStr(v, 'groupKey', 16_384)) return false;
  if (Object.hasOwn(v, 'truncatedAlerts') && !(Number.isSafeInteger(v.truncatedAlerts) && (v.truncatedAlerts as number) >= 0)) return false;
  return v.alerts.every((a) => {
    if (!isObj(a) || (a.status !== 'firing' && a.status !== 'resolved')) return false;
    if (!labelSet(a.labels)) return false;
    const name = (a.labels as Record<string, unknown>).alertname;
    if (typeof name !== 'string' || name.trim() === '') return false;
    if (!optLabels(a, 'annotations')) return false;
    if (!rfc3339(a.startsAt) || (Object.hasOwn(a, 'endsAt') && !rfc3339(a.endsAt))) return false;
    if (!optStr(a, 'generatorURL', 8192)) return false;
    return typeof a.fingerprint === 'string' && /^[0-9a-f]{1,64}$/.test(a.fingerprint);
  });
}

/** Every path in the fixture (objects and arrays included), for mutations to aim at. */
function paths(v: unknown, at: (string | number)[] = []): (string | number)[][] {
  const out = [at];
  if (Array.isArray(v)) v.forEach((x, i) => out.push(...paths(x, [...at, i])));
  else if (v !== null && typeof v === 'object') for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...at, k]));
  return out;
}

const FIXTURE_PATHS = paths(fixture(FIRING));
const HOSTILE_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', 'bad-label', '', 'é', 'a'.repeat(300), 'alertname', 'fingerprint'];

const deep = (depth: number, leaf: unknown, kind: 'array' | 'object') => {
  let v = leaf;
  for (let i = 0; i < depth; i++) v = kind === 'array' ? [v] : { a: v };
  return v;
};

/** Values as factories: every use gets a fresh instance, so no two mutations share (or cycle through) one object. */
type Make = () => unknown;
const copy = (v: unknown): Make => () => (v === undefined ? undefined : JSON.parse(JSON.stringify(v)));
const oddValue: fc.Arbitrary<Make> = fc.oneof(
  { weight: 4, arbitrary: fc.jsonValue({ maxDepth: 3 }).map(copy) },
  {
    weight: 3,
    arbitrary: fc
      .constantFrom<unknown>(null, '', 0, -1, 1.5, 1e308, '4', 4, [], {}, true, false, 'firing', 'resolved', '0001-01-01T00:00:00Z', 'not-a-date', 'ffff', 'FFFF', ' ', '\u0000', '\ud800', 'constructor', '__proto__')
      .map(copy),
  },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 40_000 }).map((n): Make => () => 'x'.repeat(n)) },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.integer({ min: 1, max: 2000 }), fc.constantFrom<'array' | 'object'>('array', 'object')).map(([d, k]): Make => () => deep(d, 'leaf', k)),
  },
  { weight: 1, arbitrary: fc.constant<Make>(() => ({ prototype: { polluted: 'yes' } })) },
);

type Mutation = { op: 'set'; path: (string | number)[]; value: Make } | { op: 'delete'; path: (string | number)[] } | { op: 'key'; path: (string | number)[]; key: string; value: Make };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('set' as const), path: fc.constantFrom(...FIXTURE_PATHS), value: oddValue }),
  fc.record({ op: fc.constant('delete' as const), path: fc.constantFrom(...FIXTURE_PATHS.filter((p) => p.length > 0)) }),
  fc.record({ op: fc.constant('key' as const), path: fc.constantFrom(...FIXTURE_PATHS), key: fc.constantFrom(...HOSTILE_KEYS), value: oddValue }),
);

function applyMutation(root: { v: unknown }, mut: Mutation): void {
  const m = 'value' in mut ? { ...mut, value: mut.value() } : mut;
  if (m.path.length === 0) {
    if (m.op === 'set') root.v = m.value;
    if (m.op === 'key' && root.v !== null && typeof root.v === 'object') Object.defineProperty(root.v, m.key, { value: m.value, enumerable: true, writable: true, configurable: true });
    return;
  }
  let parent: unknown = root.v;
  for (const k of m.path.slice(0, -1)) {
    if (parent === null || typeof parent !== 'object') return;
    parent = (parent as Record<string | number, unknown>)[k];
  }
  if (parent === null || typeof parent !== 'object') return;
  const last = m.path[m.path.length - 1]!;
  const p = parent as Record<string | number, unknown>;
  if (!Object.hasOwn(p, last)) return;
  if (m.op === 'set') p[last] = m.value;
  else if (m.op === 'delete') {
    if (Array.isArray(p)) {
      // By hand: splice() would consult a hostile own `constructor` key added by an earlier mutation.
      for (let i = last as number; i < p.length - 1; i++) p[i] = p[i + 1];
      p.length -= 1;
    }
    else delete p[last];
  } else {
    const target = p[last];
    // defineProperty: an own `__proto__` key, as a hostile JSON text would carry.
    if (target !== null && typeof target === 'object') Object.defineProperty(target, m.key, { value: m.value, enumerable: true, writable: true, configurable: true });
  }
}

const mutatedFixture: fc.Arbitrary<Req> = fc.array(mutation, { minLength: 1, maxLength: 4 }).map((ms) => {
  const root = { v: fixture(FIRING) as unknown };
  for (const m of ms) applyMutation(root, m);
  return { contentType: 'application/json', body: Buffer.from(JSON.stringify(root.v) ?? '') };
});

const randomJson: fc.Arbitrary<Req> = fc.jsonValue({ maxDepth: 4 }).map((v) => ({ contentType: 'application/json', body: Buffer.from(JSON.stringify(v)) }));

const rawBytes: fc.Arbitrary<Req> = fc.tuple(fc.uint8Array({ maxLength: 3000 }), fc.constantFrom<string | undefined>('application/json', 'application/json; charset=utf-8', 'text/plain', undefined)).map(([b, ct]) => ({
  contentType: ct,
  body: Buffer.from(b),
}));

const wrongContentType: fc.Arbitrary<Req> = fc.tuple(fc.constantFrom(...UNSUPPORTED, 'text/plain', undefined), fc.constantFrom(fixtureText(FIRING), '{}', '<alert/>', 'a=b&c=d', '')).map(([ct, body]) => ({
  contentType: ct,
  body: Buffer.from(body),
}));

const oversized: fc.Arbitrary<Req> = fc.tuple(fc.integer({ min: LIMIT - 200, max: LIMIT * 2 }), fc.constantFrom('application/json', 'text/plain', ...UNSUPPORTED)).map(([n, ct]) => {
  const body = fixture(FIRING) as Record<string, any>;
  body.alerts[0].annotations.description = 'z'.repeat(n);
  return { contentType: ct, body: Buffer.from(JSON.stringify(body)) };
});

describe('property: malformed and hostile bodies with a valid token', () => {
  let h: RemediationHarness;
  const seen = new Map<number, number>();
  beforeAll(async () => {
    // Mode off and no outbox dispatch: valid bodies are recorded and escalations queued, nothing acts.
    h = await startRemediation({ mode: 'off', start: false, pagerduty: pd, config: { webhook: { bodyLimitBytes: LIMIT } }, logLevel: 'warn' });
  });
  afterAll(async () => {
    await h?.close();
  });

  async function check(r: Req): Promise<void> {
    const want = expected(r);
    const before = h.store.listRuns({ limit: 1000 }).length;
    const headers: Record<string, string> = { ...h.auth };
    if (r.contentType !== undefined) headers['content-type'] = r.contentType;
    const res = await h.request({ method: 'POST', url: '/alertmanager/webhook', headers, payload: r.body });
    seen.set(res.statusCode, (seen.get(res.statusCode) ?? 0) + 1);
    expect(res.statusCode, `body ${r.body.toString('utf8').slice(0, 300)} (${r.contentType})`).toBe(want);
    if (want !== 202) {
      expect([400, 413, 415]).toContain(res.statusCode);
      const answer = JSON.parse(res.body) as { error?: unknown; code?: unknown };
      expect(typeof answer.error).toBe('string');
      expect(typeof answer.code).toBe('string');
      expect(h.store.listRuns({ limit: 1000 }).length).toBe(before);
    }
  }

  it('mutated fixtures (wrong types, missing fields, hostile keys, huge strings, deep nesting): 202 exactly when the contract accepts', async () => {
    await fc.assert(fc.asyncProperty(mutatedFixture, check), { numRuns: MUTATED_RUNS });
  });

  it('random JSON values: 400', async () => {
    await fc.assert(fc.asyncProperty(randomJson, check), { numRuns: 400 });
  });

  it('non-JSON bytes and wrong content types: 400 or 415', async () => {
    await fc.assert(fc.asyncProperty(fc.oneof(rawBytes, wrongContentType), check), { numRuns: 500 });
  });

  it('oversized bodies: 413 (415 when the type is not JSON)', async () => {
    await fc.assert(fc.asyncProperty(oversized, check), { numRuns: 100 });
  });

  it('afterwards: no 5xx was ever answered, nothing was polluted, the service still works', async () => {
    await h.engine.idle();
    expect([...seen.keys()].filter((s) => s >= 500)).toEqual([]);
    for (const s of [202, 400, 413, 415]) expect(seen.get(s) ?? 0, `answers with ${s}`).toBeGreaterThan(0);
    expect(Object.keys(Object.prototype)).toEqual([]);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(h.log.find('request failed')).toEqual([]);
    const res = await h.webhook(fixtureText(FIRING));
    expect(res.statusCode).toBe(202);
    expect((await h.request({ method: 'GET', url: '/-/healthy' })).statusCode).toBe(200);
    const total = [...seen.values()].reduce((a, b) => a + b, 0);
    expect(total).toBe(MUTATED_RUNS + 1000);
  });
});
