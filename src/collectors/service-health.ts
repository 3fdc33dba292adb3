/**
 * The services' health endpoints (runbook "Failure Detection → Symptoms": services answering 500 /
 * 503, health endpoints returning `{ "database": "unhealthy" }`). Each configured service
 * (`services[]`, the same list the failover's verifyServices step checks) is asked GET healthUrl at
 * every scrape, all at once, each bounded by `budgetMs` (inside the collector budget), and never more
 * than one request in flight per service: a scrape that finds the previous probe of a service still
 * running waits for that one instead of sending another.
 *
 * Per service: whether it answered (any HTTP status), the status code, what it said about the
 * database (healthy / unhealthy / other — other is any answer without `"database": "healthy"` or
 * `"unhealthy"`, e.g. not JSON) and how long it took. A service that did not answer is
 * service_health_up 0 and has no status code nor database state; the collector then reports failure
 * with the reason, like every collector that could not read its source.
 */
import { safeMessage } from '../errors.js';
import type { Metrics } from '../metrics.js';
import { SampleSet, type Collector } from './collector.js';

export interface ServiceTarget {
  name: string;
  healthUrl: string;
}

export type DatabaseState = 'healthy' | 'unhealthy' | 'other';
export const DATABASE_STATES: readonly DatabaseState[] = ['healthy', 'unhealthy', 'other'];

export interface ServiceProbe {
  service: string;
  answered: boolean;
  status: number | null;
  database: DatabaseState | null;
  seconds: number;
  error: string | null;
}

/** A health answer is small; more than this is not read (and is not a health answer). */
const MAX_BODY_BYTES = 64 * 1024;

/** What a health body says about the database: the runbook's `{ "database": "healthy" | "unhealthy" }`, else other. */
export function databaseState(body: string): DatabaseState {
  try {
    const parsed: unknown = JSON.parse(body);
    const db = parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as Record<string, unknown>).database : undefined;
    return db === 'healthy' || db === 'unhealthy' ? db : 'other';
  } catch {
    return 'other';
  }
}

/** The host:port a URL names, never its credentials, path or query (those may carry secrets). */
function where(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return 'an invalid URL';
  }
}

async function readLimited(res: Response): Promise<string> {
  if (!res.body) return '';
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.byteLength;
      if (size > MAX_BODY_BYTES) break;
    }
  } finally {
    void reader.cancel().catch(() => undefined);
  }
  return Buffer.concat(chunks).subarray(0, MAX_BODY_BYTES).toString('utf8');
}

/** One GET of one health URL within `budgetMs` (or until `signal` aborts). Never rejects. */
export async function probeService(target: ServiceTarget, budgetMs: number, signal?: AbortSignal): Promise<ServiceProbe> {
  const started = performance.now();
  const seconds = () => (performance.now() - started) / 1000;
  const bound = AbortSignal.timeout(budgetMs);
  try {
    // fetch refuses a URL with credentials: they go as Basic authorization instead.
    const url = new URL(target.healthUrl);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (url.username || url.password) {
      headers.authorization = `Basic ${Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`).toString('base64')}`;
      url.username = '';
      url.password = '';
    }
    const res = await fetch(url, {
      signal: signal ? AbortSignal.any([signal, bound]) : bound,
      // One request per probe: a redirect is an answer of its own (its status shows), not followed.
      redirect: 'manual',
      headers,
    });
    const body = await readLimited(res);
    return { service: target.name, answered: true, status: res.status, database: databaseState(body), seconds: seconds(), error: null };
  } catch (err) {
    const e = err as Error & { cause?: { code?: string; message?: string } };
    const reason = bound.aborted
      ? `no answer within ${budgetMs} ms`
      : signal?.aborted
        ? 'the collector budget ran out'
        : (e.cause?.code ?? e.cause?.message ?? safeMessage(err));
    return { service: target.name, answered: false, status: null, database: null, seconds: seconds(), error: `service ${target.name} (${where(target.healthUrl)}): ${reason}` };
  }
}

export function serviceHealthCollector(metrics: Metrics, services: readonly ServiceTarget[], budgetMs: number): Collector & { lastProbes(): readonly ServiceProbe[] } {
  const up = metrics.gauge(
    'service_health_up',
    "Whether the service's health URL (services[].healthUrl) answered HTTP, with any status, within the probe timeout (1) or not (0).",
    ['service'],
  );
  const status = metrics.gauge('service_health_http_status_code', 'HTTP status code of the health answer (absent when there was none).', ['service']);
  const database = metrics.gauge(
    'service_health_database',
    'What the health answer said about the database: 1 for the state it gave (healthy, unhealthy, or other: any answer without "database": "healthy"/"unhealthy"), 0 for the others; absent when there was no answer.',
    ['service', 'state'],
  );
  const duration = metrics.gauge('service_health_duration_seconds', 'How long the health probe took (until the answer, or until it was given up).', ['service']);
  /** Per service, the probe still running, so a new scrape joins it instead of sending a second request. */
  const inFlight = new Map<string, Promise<ServiceProbe>>();
  let last: readonly ServiceProbe[] = [];

  const probeOnce = (t: ServiceTarget, signal: AbortSignal): Promise<ServiceProbe> => {
    let p = inFlight.get(t.name);
    if (!p) {
      p = probeService(t, budgetMs, signal).finally(() => inFlight.delete(t.name));
      inFlight.set(t.name, p);
    }
    return p;
  };

  return {
    name: 'service_health',
    gauges: [up, status, database, duration],
    lastProbes: () => last,
    async collect(signal) {
      const set = new SampleSet();
      const probes = await Promise.all(services.map((t) => probeOnce(t, signal)));
      for (const p of probes) {
        const l = { service: p.service };
        set.set(up, l, p.answered ? 1 : 0);
        set.set(duration, l, p.seconds);
        if (p.answered) {
          set.set(status, l, p.status!);
          for (const state of DATABASE_STATES) set.set(database, { ...l, state }, p.database === state ? 1 : 0);
        } else {
          set.fail(p.error);
        }
      }
      last = probes;
      return set;
    },
  };
}
