/**
 * Safety rails of the webhook's and the approval API's authentication and content-type check that no
 * other test pinned down (found by mutation testing, `npm run mutate`): a credential is compared whole,
 * under exactly the scheme it belongs to; an approver is named only by a bearer token; what is not
 * JSON in UTF-8 is a 415 that names the problem — never a 5xx — and valid forms are still accepted.
 * Through the real Fastify app of the harness (its PostgreSQL and Redis), with inject().
 */
import { afterEach, describe, expect, it } from 'vitest';
import { TOKEN, fixtureText, freshFingerprint, payload, startRemediation, type RemediationHarness } from '../support/remediation.js';

const FIRING = 'alertmanager_webhook_firing.json';
const APPROVERS = [
  { name: 'alice', token: 'alice-approver-token-0123456789' },
  { name: 'bob', token: 'bob-approver-token-0123456789ab' },
];
const BASIC = { username: 'alertmanager', password: 's3cret-pass' };
const basic = (userPass: string) => Buffer.from(userPass).toString('base64');
/** An id no run has: an approver gets 404 for it, anybody else 401 (or 403 for the webhook's credential). */
const NO_RUN = '/api/remediations/00000000-0000-0000-0000-000000000000/approve';

const harnesses: RemediationHarness[] = [];
async function harness(opts: Parameters<typeof startRemediation>[0] = {}): Promise<RemediationHarness> {
  const h = await startRemediation(opts);
  harnesses.push(h);
  return h;
}
afterEach(async () => {
  await Promise.all(harnesses.splice(0).map((h) => h.close()));
});

function json(res: { body: string }): Record<string, unknown> {
  return JSON.parse(res.body) as Record<string, unknown>;
}

/** A firing alert nobody acts on (remediation=none): 202 means the webhook took it. */
const quiet = () => payload([{ labels: { alertname: 'RailsAuth', remediation: 'none' }, fingerprint: freshFingerprint() }]);

describe('webhook credentials', () => {
  it('compares the credential whole: the token with a space inside is not the token', async () => {
    const h = await harness();
    const split = `${TOKEN.slice(0, 12)} ${TOKEN.slice(12)}`;
    for (const authorization of [`Bearer ${split}`, `Bearer ${TOKEN} ${TOKEN}`]) {
      const res = await h.webhook(fixtureText(FIRING), { authorization });
      expect(res.statusCode, authorization).toBe(401);
    }
    expect(h.store.listRuns()).toEqual([]);
    expect((await h.webhook(fixtureText(FIRING))).statusCode).toBe(202);
  });

  it('accepts a credential only under its own scheme name, exactly (any case)', async () => {
    const h = await harness({ config: { webhook: { basicAuth: BASIC } } });
    const userPass = basic(`${BASIC.username}:${BASIC.password}`);
    for (const authorization of [`XBearer ${TOKEN}`, `Bearerx ${TOKEN}`, `Bearer-${TOKEN}`, `xBasic ${userPass}`, `Basicx ${userPass}`, `Basic ${TOKEN}`, `Bearer ${userPass}`]) {
      const res = await h.webhook(fixtureText(FIRING), { authorization });
      expect(res.statusCode, authorization).toBe(401);
    }
    expect(h.store.listRuns()).toEqual([]);
    for (const authorization of [`Bearer ${TOKEN}`, `BEARER ${TOKEN}`, `Basic ${userPass}`, `basic ${userPass}`]) {
      expect((await h.webhook(quiet(), { authorization })).statusCode, authorization).toBe(202);
    }
  });
});

describe('approver credentials', () => {
  it('an approver is named by a bearer token only, compared whole', async () => {
    const h = await harness({ config: { approvers: APPROVERS } });
    const alice = APPROVERS[0]!.token;
    for (const authorization of [
      `Basic ${alice}`,
      `Token ${alice}`,
      `XBearer ${alice}`,
      `Bearerx ${alice}`,
      `Bearer ${alice.slice(0, 10)} ${alice.slice(10)}`,
      `Bearer ${alice} ${alice}`,
    ]) {
      const approve = await h.request({ method: 'POST', url: NO_RUN, headers: { authorization } });
      expect(approve.statusCode, authorization).toBe(401);
      const read = await h.request({ method: 'GET', url: '/api/remediations', headers: { authorization } });
      expect(read.statusCode, authorization).toBe(401);
    }
    // The same token under its own scheme is an approver's: the unknown run is looked up (404).
    const ok = await h.request({ method: 'POST', url: NO_RUN, headers: { authorization: `Bearer ${alice}` } });
    expect(ok.statusCode).toBe(404);
    expect(json(ok).code).toBe('DBPILOT_RUN_NOT_FOUND');
  });
});

describe('content type', () => {
  it('a charset parameter without a value is a 415 naming the problem, never a 5xx', async () => {
    const h = await harness();
    for (const ct of ['application/json; charset', 'application/json; charset=']) {
      const res = await h.webhook(fixtureText(FIRING), { 'content-type': ct });
      expect(res.statusCode, ct).toBe(415);
      expect(json(res), ct).toEqual({ code: 'DBPILOT_UNSUPPORTED_MEDIA_TYPE', error: 'charset "" is not utf-8: JSON must be UTF-8' });
    }
    expect(h.store.listRuns()).toEqual([]);
  });

  it('names the refused charset, and only UTF-8 itself is UTF-8', async () => {
    const h = await harness();
    const refused = await h.webhook(fixtureText(FIRING), { 'content-type': 'application/json; charset=utf-16' });
    expect(refused.statusCode).toBe(415);
    expect(json(refused).error).toBe('charset "utf-16" is not utf-8: JSON must be UTF-8');
    const long = await h.webhook(fixtureText(FIRING), { 'content-type': `application/json; charset=${'x'.repeat(100)}` });
    expect(long.statusCode).toBe(415);
    expect(json(long).error, 'quotes at most 40 characters of it').toBe(`charset "${'x'.repeat(40)}" is not utf-8: JSON must be UTF-8`);
    for (const ct of ['application/json; charset=x-utf-8', 'application/json; charset=utf-8x', 'application/json; charset=utf-80', 'application/json; charset=notutf-8']) {
      const res = await h.webhook(fixtureText(FIRING), { 'content-type': ct });
      expect(res.statusCode, ct).toBe(415);
    }
    expect(h.store.listRuns()).toEqual([]);
  });

  it('quotes at most the first 100 characters of a content type it refuses', async () => {
    const h = await harness();
    const ct = `text/${'x'.repeat(2000)}`;
    const res = await h.webhook(fixtureText(FIRING), { 'content-type': ct });
    expect(res.statusCode).toBe(415);
    expect(json(res).error).toBe(`content-type ${JSON.stringify(ct.slice(0, 100))} is not application/json`);
  });

  it('accepts JSON with parameters other than charset, and whitespace before a parameter (RFC 9110 OWS)', async () => {
    const h = await harness();
    for (const ct of ['application/json; foo=bar', 'application/json; version=4', 'application/json ; charset=utf-8', 'application/json\t;charset=UTF-8']) {
      const res = await h.webhook(quiet(), { 'content-type': ct });
      expect(res.statusCode, ct).toBe(202);
    }
  });
});
