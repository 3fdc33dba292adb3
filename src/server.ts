/**
 * The service process: logger, Fastify with its timeouts and body limit, the app plugin, listen, and
 * a graceful close (stop taking requests, then let in-flight work end, then close pools).
 */
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Config } from './config.js';
import type { Logger } from './logger.js';
import { app, type AppOptions } from './app.js';
import { Runtime } from './runtime.js';

export interface Service {
  fastify: FastifyInstance;
  runtime: Runtime;
  /** The address actually bound (port 0 resolved). */
  address: { host: string; port: number };
  close(): Promise<void>;
}

export function splitListen(listen: string): { host: string; port: number } {
  const i = listen.lastIndexOf(':');
  return { host: listen.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(listen.slice(i + 1)) };
}

export async function buildFastify(
  config: Config,
  logger: Logger,
  runtime: Runtime,
  extra: Omit<AppOptions, 'runtime'> = {},
): Promise<FastifyInstance> {
  const fastify = Fastify({
    loggerInstance: logger as unknown as FastifyBaseLogger,
    bodyLimit: config.webhook.bodyLimitBytes,
    // Slow clients must not hold sockets forever; a scrape is bounded by the collector budget anyway.
    requestTimeout: 30_000,
    connectionTimeout: 60_000,
    keepAliveTimeout: 65_000,
    return503OnClosing: true,
  });
  await fastify.register(app, { runtime, ...extra });
  return fastify;
}

export async function startService(
  config: Config,
  logger: Logger,
  extra: (runtime: Runtime) => Promise<Omit<AppOptions, 'runtime'>> | Omit<AppOptions, 'runtime'> = () => ({}),
): Promise<Service> {
  const runtime = new Runtime(config, logger);
  const fastify = await buildFastify(config, logger, runtime, await extra(runtime));
  const { host, port } = splitListen(config.listen);
  await fastify.listen({ host, port });
  const addr = fastify.server.address();
  const bound = typeof addr === 'object' && addr ? { host: addr.address, port: addr.port } : { host, port };
  logger.info({ listen: `${bound.host}:${bound.port}`, mode: config.mode }, 'dbpilot listening');
  let closing: Promise<void> | null = null;
  return {
    fastify,
    runtime,
    address: bound,
    close: () =>
      (closing ??= (async () => {
        await fastify.close();
        await runtime.close();
      })()),
  };
}
