/**
 * The HTTP surface as a Fastify plugin: routes only, so tests drive it with inject() and the server
 * (main.ts) owns listening, timeouts and shutdown.
 */
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
    if (wantsOpenMetrics(req.headers.accept)) {
      reply.type(Registry.OPENMETRICS_CONTENT_TYPE);
      return runtime.metrics.openMetrics();
    }
    reply.type(Registry.PROMETHEUS_CONTENT_TYPE);
    return runtime.metrics.text();
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
