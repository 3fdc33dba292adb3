/**
 * Scraping like Prometheus does: one keep-alive connection, Prometheus 2.x's Accept and
 * Accept-Encoding headers (so a Go exporter gzips its answer, as it would in production), and the
 * latency taken to the last byte of the response.
 */
import http from 'node:http';
import { gunzipSync } from 'node:zlib';

const PROMETHEUS_ACCEPT =
  'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1';

export const SCRAPE_HEADERS: Readonly<Record<string, string>> = {
  accept: PROMETHEUS_ACCEPT,
  'accept-encoding': 'gzip',
  'user-agent': 'Prometheus/2.42.0 (dbpilot bench)',
  'x-prometheus-scrape-timeout-seconds': '10',
};

export interface ScrapeResult {
  ms: number;
  status: number;
  /** Bytes on the wire (compressed when the exporter gzipped). */
  wireBytes: number;
  /** Decoded only when asked: decompressing is the client's cost, not the exporter's. */
  body?: string;
}

export class Scraper {
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  constructor(readonly url: string) {}

  scrape(opts: { body?: boolean; timeoutMs?: number } = {}): Promise<ScrapeResult> {
    return new Promise((resolve, reject) => {
      const started = performance.now();
      const req = http.get(this.url, { agent: this.agent, headers: SCRAPE_HEADERS, timeout: opts.timeoutMs ?? 15_000 }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const ms = performance.now() - started;
          const raw = Buffer.concat(chunks);
          const out: ScrapeResult = { ms, status: res.statusCode ?? 0, wireBytes: raw.length };
          if (opts.body) out.body = (res.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw).toString('utf8');
          resolve(out);
        });
      });
      req.on('timeout', () => req.destroy(new Error(`scrape of ${this.url} timed out`)));
      req.on('error', reject);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/** Sample lines (not comments) in a Prometheus/OpenMetrics text body. */
export function countSamples(body: string): number {
  let n = 0;
  for (const line of body.split('\n')) if (line !== '' && !line.startsWith('#')) n++;
  return n;
}

/** The value of the first sample of `name` whose labels contain every `label="value"` given, or undefined. */
export function sampleValue(body: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of body.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    if (!Object.entries(labels).every(([k, v]) => rest.includes(`${k}="${v}"`))) continue;
    const value = rest.slice(rest.lastIndexOf('}') + 1).trim().split(' ')[0];
    const n = Number(value);
    if (Number.isFinite(n)) return n;
  }
  return undefined;
}

/** Every sample of `name`, as [label text, value]. */
export function samplesOf(body: string, name: string): [string, number][] {
  const out: [string, number][] = [];
  for (const line of body.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const close = line.lastIndexOf('}');
    const labels = close > 0 ? line.slice(name.length, close + 1) : '';
    out.push([labels, Number(line.slice(close > 0 ? close + 1 : name.length).trim().split(' ')[0])]);
  }
  return out;
}
