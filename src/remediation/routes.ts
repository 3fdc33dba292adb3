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

/** The Lease annotation where the leader says where its webhook is reachable. */
export const LEADER_URL_ANNOTATION = 'dbpilot.io/leader-url';
/** Set on a forwarded request: a replica that is not the leader either answers 503 rather than forwarding again. */
const FORWARDED = 'x-dbpilot-forwarded';

export interface Leadership {
  /** Whether this replica acts. */
  isLeader(): boolean;
  /** Where the leader's webhook is reachable, as it advertised on the Lease and checked against its pod; null when unknown. */
  leaderUrl(): Promise<string | null> | string | null;
}

/** The approver whose own bearer token this is, or null. Every configured token is compared, in constant time. */
export function approverFor(header: string | undefined, approvers: Config['approvers']): string | null {
  if (!header) return null;
  const [scheme, ...rest] = header.trim().split(/\s+/);
  if (!/^bearer$/i.test(scheme ?? '')) return null;
  const value = rest.join(' ');
  let found: string | null = null;
  for (const a of approvers) if (same(value, a.token) && found === null) found = a.name;
  return found;
}

export function remediationRoutes(engine: Engine, config: Config, metrics: Metrics, leadership: Leadership) {
  const requests = metrics.counter('dbpilot_webhook_requests_total', 'Alertmanager webhook requests by HTTP status code.', ['code']);
  const forwarded = metrics.counter('dbpilot_webhook_forwarded_total', 'Requests a replica that is not the leader forwarded to the leader, by outcome (forwarded, unreachable).', ['outcome']);

  const refuse = (req: FastifyRequest, reply: FastifyReply) => {
    // The path only: a query string may carry anything, credentials included.
    req.log.warn({ ip: req.ip, path: req.url.split('?')[0] }, 'unauthenticated request refused');
    return reply
      .code(401)
      .header('www-authenticate', config.webhook.basicAuth && !config.webhook.token ? 'Basic realm="dbpilot"' : 'Bearer realm="dbpilot"')
      .send({ error: config.webhook.token || config.webhook.basicAuth ? 'missing or wrong credentials' : 'webhook.token is not configured: every request is refused', code: 'DBPILOT_UNAUTHORIZED' });
  };

  /**
   * A request that only the leader may carry out, on a replica that is not the leader: sent on to the
   * leader in this same delivery (Alertmanager's retry would otherwise reach the leader only by chance),
   * with its own credentials, and the leader's answer relayed. 503 when the leader is not known or
   * cannot be reached, or when the request was forwarded already.
   */
  const toLeader = async (req: FastifyRequest, reply: FastifyReply, body: unknown) => {
    const url = await leadership.leaderUrl();
    if (!url || req.headers[FORWARDED] !== undefined) {
      return reply.code(503).header('retry-after', '1').send({ error: 'not the leader: another dbpilot replica acts', code: 'DBPILOT_NOT_LEADER' });
    }
    const target = new URL(req.url.split('?')[0]!, url);
    try {
      const res = await fetch(target, {
        method: 'POST',
        headers: { authorization: req.headers.authorization ?? '', 'content-type': 'application/json', [FORWARDED]: '1' },
        body: JSON.stringify(body ?? {}),
        signal: AbortSignal.timeout(config.webhook.forwardTimeoutMs),
        redirect: 'manual',
      });
      const text = await res.text();
      forwarded.inc({ outcome: 'forwarded' });
      req.log.debug({ leader: target.host, status: res.status }, 'forwarded to the leader');
      return reply.code(res.status).header('content-type', res.headers.get('content-type') ?? 'application/json').header('x-dbpilot-leader', target.host).send(text);
    } catch (err) {
      forwarded.inc({ outcome: 'unreachable' });
      req.log.warn({ leader: target.host, err: safeMessage(err) }, 'could not forward to the leader; Alertmanager will retry');
      return reply.code(503).header('retry-after', '1').send({ error: `not the leader, and the leader at ${target.host} could not be reached`, code: 'DBPILOT_NOT_LEADER' });
    }
  };

  return async (app: FastifyInstance) => {
    const requireAuth = async (req: FastifyRequest, reply: FastifyReply) => {
      if (!authorized(req.headers.authorization, config.webhook)) return refuse(req, reply);
    };
    // Reading the audit: the webhook's credential or an approver's.
    const requireReader = async (req: FastifyRequest, reply: FastifyReply) => {
      if (!authorized(req.headers.authorization, config.webhook) && approverFor(req.headers.authorization, config.approvers) === null) return refuse(req, reply);
    };
    // Approving: an approver's own credential only; the webhook's is refused with why.
    const requireApprover = async (req: FastifyRequest, reply: FastifyReply) => {
      if (approverFor(req.headers.authorization, config.approvers) !== null) return;
      if (authorized(req.headers.authorization, config.webhook)) {
        return reply.code(403).send({
          error: config.approvers.length
            ? "the webhook's credential cannot approve: approvers have tokens of their own (approvers[].token)"
            : 'no approvers are configured (approvers[]): approve with `dbpilot approve <id>` inside the pod',
          code: 'DBPILOT_NOT_AN_APPROVER',
        });
      }
      return refuse(req, reply);
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
        if (!leadership.isLeader()) return toLeader(req, reply, req.body);
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

    app.get('/api/remediations', { onRequest: requireReader }, async (req, reply) => {
      const raw = req.query as Record<string, unknown>;
      const repeated = Object.entries(raw).find(([, v]) => typeof v !== 'string');
      if (repeated) return reply.code(400).send({ error: `${repeated[0]} must be given once`, code: 'DBPILOT_BAD_QUERY' });
      const q = raw as Record<string, string | undefined>;
      if (q.status && !RUN_STATUSES.includes(q.status as RunStatus)) {
        return reply.code(400).send({ error: `status must be one of ${RUN_STATUSES.join(', ')}`, code: 'DBPILOT_BAD_QUERY' });
      }
      const limit = q.limit === undefined ? 100 : Number(q.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) return reply.code(400).send({ error: 'limit must be 1..1000', code: 'DBPILOT_BAD_QUERY' });
      const offset = q.offset === undefined ? 0 : Number(q.offset);
      if (!Number.isSafeInteger(offset) || offset < 0) return reply.code(400).send({ error: 'offset must be a whole number ≥ 0', code: 'DBPILOT_BAD_QUERY' });
      const filter = {
        ...(q.alertname ? { alertname: q.alertname } : {}),
        ...(q.fingerprint ? { fingerprint: q.fingerprint } : {}),
        ...(q.status ? { status: q.status } : {}),
        ...(q.handler ? { handler: q.handler } : {}),
      };
      return { runs: engine.store.listRuns({ ...filter, limit, offset }), total: engine.store.countRuns(filter) };
    });

    app.get('/api/remediations/:id', { onRequest: requireReader }, async (req, reply) => {
      const { id } = req.params as { id: string };
      const run = engine.store.getRun(id);
      if (!run) return reply.code(404).send({ error: `no remediation run ${id}`, code: 'DBPILOT_RUN_NOT_FOUND' });
      return { ...run, steps: engine.store.steps(id) };
    });

    app.post('/api/remediations/:id/approve', { onRequest: requireApprover }, async (req, reply) => {
      const { id } = req.params as { id: string };
      if (!leadership.isLeader()) return toLeader(req, reply, req.body);
      // Who approved is whose credential this is: no header can claim another name.
      const by = approverFor(req.headers.authorization, config.approvers)!;
      try {
        const run = engine.store.getRun(id);
        if (!run) return reply.code(404).send({ error: `no remediation run ${id}`, code: 'DBPILOT_RUN_NOT_FOUND' });
        // Execution continues after the answer; the run's status shows progress.
        const started = engine.approve(id, by);
        const early = await Promise.race([started.then(() => null, (e: unknown) => e), new Promise((r) => setImmediate(r, 'pending'))]);
        if (early instanceof DbpilotError) return reply.code(409).send({ error: early.message, code: early.code });
        if (early instanceof Error) throw early; // nothing was approved: a 500, never a 202
        void started.catch(() => undefined);
        return reply.code(202).send({ status: 'approved', approvedBy: by, run: engine.store.getRun(id) });
      } catch (err) {
        if (err instanceof DbpilotError) return reply.code(409).send({ error: err.message, code: err.code });
        throw err;
      }
    });
  };
}
