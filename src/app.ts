/**
 * The HTTP surface as a Fastify plugin: routes only, so tests drive it with inject() and the server
 * (main.ts) owns listening, timeouts and shutdown.
 */
import { constants as zlibConstants, gzipSync } from 'node:zlib';
import type { FastifyInstance, FastifyPluginAsync } from 'fastify';
import { Registry } from 'prom-client';
import type { Runtime } from './runtime.js';

export interface AppOptions {
  runtime: Runtime;
  /** Readiness beyond "config loaded": e.g. the store is open. */
  ready?: () => boolean;
  /** Further routes (the remediation API) registered by the caller. */
  extraRoutes?: (app: FastifyInstance) => Promise<void> | void;
}

const wantsOpenMetrics = (accept: string | undefined) => !!accept && /application\/openmetrics-text/i.test(accept);

/**
 * Whether the client takes gzip (RFC 9110 §12.5.3): `gzip` (or `x-gzip`, or `*`) listed with a q above 0.
 * Prometheus asks `Accept-Encoding: gzip` on every scrape.
 */
export function acceptsGzip(header: string | string[] | undefined): boolean {
  const value = Array.isArray(header) ? header.join(',') : header;
  if (!value) return false;
  let star: boolean | null = null;
  for (const part of value.split(',')) {
    const [raw = '', ...params] = part.toLowerCase().split(';');
    const token = raw.trim();
    const q = params.map((p) => /^\s*q\s*=\s*([0-9.]+)\s*$/.exec(p)).find((m) => m)?.[1];
    const ok = q === undefined || Number(q) > 0;
    if (token === 'gzip' || token === 'x-gzip') return ok;
    if (token === '*') star = ok;
  }
  return star === true;
}

export const app: FastifyPluginAsync<AppOptions> = async (fastify, opts) => {
  const { runtime } = opts;

  fastify.setErrorHandler((err: Error & { statusCode?: number; code?: string }, req, reply) => {
    const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500;
    if (status >= 500) {
      req.log.error({ err: { message: err.message, code: err.code } }, 'request failed');
      return reply.code(status).send({ error: 'internal error', code: 'DBPILOT_INTERNAL' });
    }
    return reply.code(status).send({ error: err.message, code: err.code ?? 'DBPILOT_BAD_REQUEST' });
  });

  fastify.get('/metrics', async (req, reply) => {
    await runtime.exporter.registry.collect();
    const openMetrics = wantsOpenMetrics(req.headers.accept);
    reply.type(openMetrics ? Registry.OPENMETRICS_CONTENT_TYPE : Registry.PROMETHEUS_CONTENT_TYPE);
    const body = openMetrics ? await runtime.metrics.openMetrics() : await runtime.metrics.text();
    reply.header('vary', 'Accept-Encoding');
    if (!acceptsGzip(req.headers['accept-encoding'])) return body;
    // As the Go exporters do when Prometheus asks: about a seventh of the bytes, at the fastest level.
    // On the event loop: for the ~50 KiB of a scrape zlib's thread-pool variant held the loop longer
    // (0.28 ms of stream and hand-off work per call, measured) than compressing here does (0.22 ms),
    // and took twice the CPU and wall time.
    reply.header('content-encoding', 'gzip');
    return gzipSync(body, { level: zlibConstants.Z_BEST_SPEED });
  });

  fastify.get('/health', async (_req, reply) => {
    const h = await runtime.health();
    const ok = h.database === 'healthy' && h.redis === 'healthy';
    return reply.code(ok ? 200 : 503).send({ database: h.database, redis: h.redis });
  });

  fastify.get('/-/healthy', async () => ({ status: 'ok' }));
  fastify.get('/-/ready', async (_req, reply) => {
    const ready = opts.ready ? opts.ready() : true;
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not ready' });
  });

  if (opts.extraRoutes) await opts.extraRoutes(fastify);
};
