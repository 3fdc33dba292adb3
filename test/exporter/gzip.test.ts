/**
 * /metrics answers gzip when the scraper asks for it, as Prometheus does on every scrape (and the Go
 * exporters answer): over real HTTP with node:http, which, unlike fetch, neither asks for nor decodes
 * gzip by itself, so the test sees the bytes on the wire.
 */
import http from 'node:http';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acceptsGzip } from '../../src/app.js';
import { parseExposition } from '../support/scrape.js';
import { makeConfig, startTestService, type TestService } from '../support/service.js';

/** Prometheus 2.x's scrape headers. */
const PROMETHEUS_ACCEPT = 'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1';

function get(url: string, headers: Record<string, string>): Promise<{ status: number; headers: http.IncomingHttpHeaders; raw: Buffer }> {
  return new Promise((resolve, reject) => {
    http
      .get(`${url}/metrics`, { headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, raw: Buffer.concat(chunks) }));
      })
      .on('error', reject);
  });
}

describe('gzip on /metrics', () => {
  let svc: TestService;
  beforeAll(async () => {
    svc = await startTestService(makeConfig());
  });
  afterAll(async () => {
    await svc?.close();
  });

  it("answers Prometheus' own request with gzip: the same families, a fraction of the bytes", async () => {
    const zipped = await get(svc.url, { accept: PROMETHEUS_ACCEPT, 'accept-encoding': 'gzip' });
    expect(zipped.status).toBe(200);
    expect(zipped.headers['content-encoding']).toBe('gzip');
    expect(zipped.headers.vary).toMatch(/accept-encoding/i);
    expect(zipped.headers['content-type']).toMatch(/^application\/openmetrics-text; version=1\.0\.0/);
    const text = gunzipSync(zipped.raw).toString('utf8');
    const plain = await get(svc.url, { accept: PROMETHEUS_ACCEPT });
    expect(plain.headers['content-encoding']).toBeUndefined();
    const [a, b] = [parseExposition(text), parseExposition(plain.raw.toString('utf8'))];
    expect(a.eof).toBe(true);
    expect([...a.type.keys()].sort()).toEqual([...b.type.keys()].sort());
    expect(a.samples.length).toBeGreaterThan(0);
    expect(zipped.raw.length).toBeLessThan(plain.raw.length / 2);
  });

  it('answers identity when gzip is not asked for or refused', async () => {
    for (const enc of [undefined, 'identity', 'gzip;q=0', 'br, deflate', '*;q=0']) {
      const r = await get(svc.url, enc === undefined ? {} : { 'accept-encoding': enc });
      expect(r.headers['content-encoding'], String(enc)).toBeUndefined();
      expect(parseExposition(r.raw.toString('utf8')).samples.length, String(enc)).toBeGreaterThan(0);
    }
  });

  it('reads Accept-Encoding as RFC 9110 does: q above 0, x-gzip, the wildcard', () => {
    expect(acceptsGzip('gzip')).toBe(true);
    expect(acceptsGzip('deflate, gzip;q=0.5')).toBe(true);
    expect(acceptsGzip('GZIP ; Q=1')).toBe(true);
    expect(acceptsGzip('x-gzip')).toBe(true);
    expect(acceptsGzip('*')).toBe(true);
    expect(acceptsGzip('br, *;q=0.1')).toBe(true);
    expect(acceptsGzip(['identity', 'gzip'])).toBe(true);
    expect(acceptsGzip('gzip;q=0')).toBe(false);
    expect(acceptsGzip('gzip;q=0.0, *')).toBe(false);
    expect(acceptsGzip('*;q=0')).toBe(false);
    expect(acceptsGzip('br')).toBe(false);
    expect(acceptsGzip('')).toBe(false);
    expect(acceptsGzip(undefined)).toBe(false);
  });
});
