/**
 * The service process: logger, Fastify with its timeouts and body limit, the app plugin, listen, and
 * a graceful close (stop taking requests, then let in-flight work end, then close pools).
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Config } from './config.js';
import type { Logger } from './logger.js';
import { app, type AppOptions } from './app.js';
import { Runtime } from './runtime.js';
import { DbpilotError } from './errors.js';

export interface Service {
  fastify: FastifyInstance;
  runtime: Runtime;
  /** The address actually bound (port 0 resolved). */
  address: { host: string; port: number };
  close(): Promise<void>;
}

/** A request slower than this is logged at warn whatever its status. */
const SLOW_REQUEST_MS = 1000;

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
    // Fastify's two info lines per request would be 170,000 a day per replica at a 1 s scrape, query strings
    // included; app.ts logs one line per request instead, at a level that depends on the answer.
    logController: new LogController({ disableRequestLogging: true }),
  });
  // One line per request (at the root, so 404s are logged too), at a level that keeps a 1 s scrape out
  // of the log: successes at debug, 4xx at info, 5xx at error, slow ones at warn. The path only, never
  // the query string (it may carry anything).
  fastify.addHook('onResponse', async (req, reply) => {
    const ms = Math.round(reply.elapsedTime);
    const status = reply.statusCode;
    const line = { method: req.method, path: (req.routeOptions.url ?? req.url.split('?')[0] ?? '').slice(0, 200), status, ms };
    if (status >= 500) req.log.error(line, 'request answered');
    else if (ms >= SLOW_REQUEST_MS) req.log.warn(line, 'slow request');
    else if (status >= 400) req.log.info(line, 'request answered');
    else req.log.debug(line, 'request answered');
  });
  await fastify.register(app, { runtime, ...extra });
  return fastify;
}

/** Why a port could not be bound, in words (the errno codes Node gives). */
function listenReason(code: string | undefined): string {
  if (code === 'EADDRINUSE') return 'the address is already in use (another dbpilot, or another program, listens there)';
  if (code === 'EACCES') return 'permission denied (ports below 1024 need privileges)';
  if (code === 'EADDRNOTAVAIL') return 'the address is not one of this host';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return 'the host name does not resolve';
  return code ?? 'unknown error';
}

/**
 * Starts the service in the order that keeps a process that cannot serve from acting: the runtime
 * and the store first (prepare), then the port, and only once the port is bound, start() — leader
 * election, the outbox, resuming runs. A taken port is a one-line DBPILOT_LISTEN_FAILED error and
 * nothing has acted.
 */
export async function startService(
  config: Config,
  logger: Logger,
  prepare: (runtime: Runtime) => Promise<{ options: Omit<AppOptions, 'runtime'>; start(): Promise<void> }> = async () => ({ options: {}, start: async () => undefined }),
): Promise<Service> {
  const runtime = new Runtime(config, logger);
  let fastify: FastifyInstance | undefined;
  try {
    const prepared = await prepare(runtime);
    fastify = await buildFastify(config, logger, runtime, prepared.options);
    const { host, port } = splitListen(config.listen);
    try {
      await fastify.listen({ host, port });
    } catch (err) {
      throw new DbpilotError('DBPILOT_LISTEN_FAILED', `cannot listen on ${config.listen}: ${listenReason((err as NodeJS.ErrnoException).code)}`);
    }
    const addr = fastify.server.address();
    const bound = typeof addr === 'object' && addr ? { host: addr.address, port: addr.port } : { host, port };
    await prepared.start();
    logger.info({ listen: `${bound.host}:${bound.port}`, mode: config.mode }, 'dbpilot listening');
    let closing: Promise<void> | null = null;
    const f = fastify;
    return {
      fastify: f,
      runtime,
      address: bound,
      close: () =>
        (closing ??= (async () => {
          await f.close();
          await runtime.close();
        })()),
    };
  } catch (err) {
    await fastify?.close().catch(() => undefined);
    await runtime.close();
    throw err;
  }
}
