/**
 * HTTP routes of the remediation side: the Alertmanager webhook and the audit / approval API.
 * The webhook authenticates before the body is read, validates, answers at once, and leaves the
 * work to the engine; bad input is always a 4xx naming the problem, never a 5xx, never a run.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Config } from '../config.js';
import { DbpilotError, safeMessage } from '../errors.js';
import type { Metrics } from '../metrics.js';
import { describeIssue, webhookSchema } from './alertmanager.js';
import type { Engine } from './engine.js';
import type { RunStatus } from '../store/store.js';

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Constant-time comparison of a presented credential with the configured one (hashing equalises lengths). */
function same(presented: string, expected: string): boolean {
  return timingSafeEqual(digest(presented), digest(expected));
}

export function authorized(header: string | undefined, webhook: Config['webhook']): boolean {
  if (!header) return false;
  const [scheme, ...rest] = header.trim().split(/\s+/);
  const value = rest.join(' ');
  if (/^bearer$/i.test(scheme ?? '') && webhook.token) return same(value, webhook.token);
  if (/^basic$/i.test(scheme ?? '') && webhook.basicAuth) {
    const decoded = Buffer.from(value, 'base64').toString('utf8');
    return same(decoded, `${webhook.basicAuth.username}:${webhook.basicAuth.password}`);
  }
  return false;
}

/**
 * What Alertmanager sends: `application/json`, in UTF-8 (RFC 8259 allows no other charset for JSON
 * exchanged between systems). Anything else is 415, before the body is read.
 */
export function jsonContentTypeProblem(header: string | undefined): string | null {
  if (!header) return 'content-type is missing; expected application/json';
  const [type, ...params] = header.split(';').map((p) => p.trim());
  if (type?.toLowerCase() !== 'application/json') return `content-type ${JSON.stringify(header.slice(0, 100))} is not application/json`;
  for (const p of params) {
    const [k, v] = p.split('=').map((x) => x.trim());
    if (k?.toLowerCase() === 'charset' && !/^"?utf-8"?$/i.test(v ?? '')) return `charset ${JSON.stringify((v ?? '').slice(0, 40))} is not utf-8: JSON must be UTF-8`;
  }
  return null;
}

const RUN_STATUSES: RunStatus[] = ['planning', 'awaiting_approval', 'running', 'succeeded', 'failed', 'escalated', 'cancelled', 'dry_run', 'skipped'];

export function remediationRoutes(engine: Engine, config: Config, metrics: Metrics, isLeader: () => boolean) {
  const requests = metrics.counter('dbpilot_webhook_requests_total', 'Alertmanager webhook requests by HTTP status code.', ['code']);

  return async (app: FastifyInstance) => {
    const requireAuth = async (req: FastifyRequest, reply: FastifyReply) => {
      if (!authorized(req.headers.authorization, config.webhook)) {
        // The path only: a query string may carry anything, credentials included.
        req.log.warn({ ip: req.ip, path: req.url.split('?')[0] }, 'unauthenticated request refused');
        return reply
          .code(401)
          .header('www-authenticate', config.webhook.basicAuth && !config.webhook.token ? 'Basic realm="dbpilot"' : 'Bearer realm="dbpilot"')
          .send({ error: config.webhook.token || config.webhook.basicAuth ? 'missing or wrong credentials' : 'webhook.token is not configured: every request is refused', code: 'DBPILOT_UNAUTHORIZED' });
      }
    };

    app.post(
      '/alertmanager/webhook',
      {
        onRequest: [
          requireAuth,
          async (req, reply) => {
            const problem = jsonContentTypeProblem(req.headers['content-type']);
            if (problem) return reply.code(415).send({ error: problem, code: 'DBPILOT_UNSUPPORTED_MEDIA_TYPE' });
          },
        ],
        onResponse: async (_req, reply) => void requests.inc({ code: String(reply.statusCode) }),
        // Bad JSON and oversized bodies are answered by Fastify's own 400/413.
      },
      async (req, reply) => {
        const parsed = webhookSchema.safeParse(req.body);
        if (!parsed.success) {
          return reply.code(400).send({ error: describeIssue(parsed.error), code: 'DBPILOT_BAD_WEBHOOK' });
        }
        if (!isLeader()) {
          // Alertmanager retries a 5xx; the Service will route a retry to the leader.
          return reply.code(503).header('retry-after', '1').send({ error: 'not the leader: another dbpilot replica acts', code: 'DBPILOT_NOT_LEADER' });
        }
        try {
          await engine.receive(parsed.data);
        } catch (err) {
          // Not acknowledged unless recorded: a 5xx makes Alertmanager send it again.
          req.log.error({ err: safeMessage(err) }, 'could not record the alerts; Alertmanager will retry');
          return reply.code(500).send({ error: 'the alerts could not be recorded; retry', code: 'DBPILOT_STORE_FAILED' });
        }
        return reply.code(202).send({ status: 'accepted', alerts: parsed.data.alerts.length });
      },
    );

    app.get('/api/remediations', { onRequest: requireAuth }, async (req, reply) => {
      const raw = req.query as Record<string, unknown>;
      const repeated = Object.entries(raw).find(([, v]) => typeof v !== 'string');
      if (repeated) return reply.code(400).send({ error: `${repeated[0]} must be given once`, code: 'DBPILOT_BAD_QUERY' });
      const q = raw as Record<string, string | undefined>;
      if (q.status && !RUN_STATUSES.includes(q.status as RunStatus)) {
        return reply.code(400).send({ error: `status must be one of ${RUN_STATUSES.join(', ')}`, code: 'DBPILOT_BAD_QUERY' });
      }
      const limit = q.limit === undefined ? 100 : Number(q.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) return reply.code(400).send({ error: 'limit must be 1..1000', code: 'DBPILOT_BAD_QUERY' });
      const runs = engine.store.listRuns({
        ...(q.alertname ? { alertname: q.alertname } : {}),
        ...(q.fingerprint ? { fingerprint: q.fingerprint } : {}),
        ...(q.status ? { status: q.status } : {}),
        ...(q.handler ? { handler: q.handler } : {}),
        limit,
      });
      return { runs };
    });

    app.get('/api/remediations/:id', { onRequest: requireAuth }, async (req, reply) => {
      const { id } = req.params as { id: string };
      const run = engine.store.getRun(id);
      if (!run) return reply.code(404).send({ error: `no remediation run ${id}`, code: 'DBPILOT_RUN_NOT_FOUND' });
      return { ...run, steps: engine.store.steps(id) };
    });

    app.post('/api/remediations/:id/approve', { onRequest: requireAuth }, async (req, reply) => {
      const { id } = req.params as { id: string };
      if (!isLeader()) return reply.code(503).send({ error: 'not the leader: approve on the leader replica', code: 'DBPILOT_NOT_LEADER' });
      const by = (req.headers['x-dbpilot-user'] as string | undefined)?.slice(0, 128) || 'api';
      try {
        const run = engine.store.getRun(id);
        if (!run) return reply.code(404).send({ error: `no remediation run ${id}`, code: 'DBPILOT_RUN_NOT_FOUND' });
        // Execution continues after the answer; the run's status shows progress.
        const started = engine.approve(id, by);
        const early = await Promise.race([started.then(() => null, (e: unknown) => e), new Promise((r) => setImmediate(r, 'pending'))]);
        if (early instanceof DbpilotError) return reply.code(409).send({ error: early.message, code: early.code });
        void started.catch(() => undefined);
        return reply.code(202).send({ status: 'approved', run: engine.store.getRun(id) });
      } catch (err) {
        if (err instanceof DbpilotError) return reply.code(409).send({ error: err.message, code: err.code });
        throw err;
      }
    });
  };
}
