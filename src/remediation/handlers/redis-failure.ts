/**
 * Runbook scenario 5 — Redis Cache Failure (alerts RedisDown and RedisRejectedConnections).
 *
 * Steps 1 and 2 (verify Redis status, check its memory) are the plan and go with every page, read
 * live: PING with retries, each on a NEW connection with a short connect timeout (the question is
 * whether Redis accepts connections now — a Redis at maxclients still serves the connections it has,
 * dbpilot's own long-lived one among them), and from INFO used_memory / maxmemory / maxmemory-policy,
 * rejected_connections, connected_clients / maxclients, blocked_clients, evicted_keys and the
 * keyspace; the Redis pod's status where Kubernetes is configured; and, the runbook's "confirm that
 * fallback-to-database mode is working", whether the services' health URLs (services[]) still answer.
 *
 * Step 4, only when PING failed on every retry (a Redis that answers is never restarted), and for
 * RedisRejectedConnections only where handlers.redis-failure.restartOnRejectedConnections says so
 * (otherwise it diagnoses and pages devops: a restart drops every client and the whole cache):
 *
 *   restartRedis          kubectl rollout restart statefulset/<name> (the restartedAt annotation),
 *                         its precondition PING still failing just before
 *   waitForRedisRollout   kubectl rollout status statefulset/<name>
 *   verifyRedisStatus     redis-cli ping on a new connection answers PONG (step 1 again)
 *
 * Step 3, FLUSHALL, is never part of it: it is the separate, approval-only `redis-flushall`
 * handler below, refused unless handlers.redis-flushall.allow is true, never in auto mode, with the
 * memory and the key counts in its plan before anybody approves.
 */
import { z } from 'zod';
import { UnsafeToActError, safeMessage } from '../../errors.js';
import { probeService, type ServiceProbe } from '../../collectors/service-health.js';
import { parseRedisInfo, infoNumber, type RedisInfo } from '../../collectors/redis-info.js';
import type { FreshConnectionOptions, RedisClient } from '../../integrations/redis.js';
import { fail, ok, sleep, type AlertInfo, type CheckResult, type Handler, type HandlerContext, type Plan, type Step } from '../handler.js';
import { namespaceOf } from '../runbook.js';
import { handlerOptions } from './options.js';

// ---------------------------------------------------------------------------------------------------
// Configuration

const k8sName = z.string().regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'not a Kubernetes object name (lowercase letters, digits, - and .)').max(253);

/** handlers.redis-failure: what this handler takes, with its defaults. */
export const redisFailureOptions = handlerOptions({
  /** PINGs (each on a new connection) before Redis counts as not answering. */
  pingAttempts: z.number().int().min(1).max(20).default(3),
  /** Pause between two PINGs. */
  pingIntervalMs: z.number().int().min(0).max(60_000).default(1000),
  /** Connect timeout of each new connection: short, a Redis that is up accepts in milliseconds. */
  connectTimeoutMs: z.number().int().min(10).max(10_000).default(500),
  /** Command timeout on those connections (PING, INFO). */
  commandTimeoutMs: z.number().int().min(10).max(10_000).default(1000),
  /** The Redis pod read for its status and named in the runbook's commands; default `<kubernetes.redisStatefulSet>-0`. */
  pod: k8sName.optional(),
  /** How long `kubectl rollout status` may take after the restart. */
  rolloutTimeoutSeconds: z.number().int().min(5).max(3600).default(300),
  /** After the rollout, how long PING may take to answer on a new connection before the run fails and pages. */
  pingTimeoutSeconds: z.number().int().min(1).max(3600).default(60),
  /** RedisRejectedConnections restarts Redis too (when PING fails on every retry). Default: diagnose and page only. */
  restartOnRejectedConnections: z.boolean().default(false),
  /** Probe the services' health URLs (services[]) with every plan and page: the runbook's fallback to database mode. */
  checkServices: z.boolean().default(true),
  /** Time limit of each health probe. */
  serviceTimeoutMs: z.number().int().min(100).max(60_000).default(2000),
});
export type RedisFailureConfig = z.output<typeof redisFailureOptions>;

/** handlers.redis-flushall: FLUSHALL only where explicitly allowed, never in auto mode. */
export const redisFlushallOptions = handlerOptions({
  /** FLUSHALL deletes every key of every database: refused unless this is true (default false). */
  allow: z.boolean().default(false),
}).superRefine((o, c) => {
  if (o.mode === 'auto') c.addIssue({ code: 'custom', path: ['mode'], message: 'FLUSHALL is never automatic: redis-flushall runs only on approval (mode approve, dry-run or off)' });
});
export type RedisFlushallConfig = z.output<typeof redisFlushallOptions>;

// ---------------------------------------------------------------------------------------------------
// What the runbook reads (pure, table-tested)

const facts = z.strictObject({
  used_memory: z.number().nullable(),
  used_memory_human: z.string().nullable(),
  maxmemory: z.number().nullable(),
  maxmemory_human: z.string().nullable(),
  maxmemory_policy: z.string().nullable(),
  rejected_connections: z.number().nullable(),
  connected_clients: z.number().nullable(),
  maxclients: z.number().nullable(),
  blocked_clients: z.number().nullable(),
  evicted_keys: z.number().nullable(),
  /** Keys per database (INFO keyspace), e.g. { db0: 12 }. */
  keys: z.record(z.string(), z.number()),
  total_keys: z.number(),
  redis_version: z.string().nullable(),
  uptime_in_seconds: z.number().nullable(),
  role: z.string().nullable(),
});
export type RedisFacts = z.output<typeof facts>;

/** The runbook's `info stats | grep rejected_connections` and `info memory | grep used_memory_human`, and what else a page needs, from INFO text. */
export function redisFacts(text: string): RedisFacts {
  const info = parseRedisInfo(text);
  const n = (k: string) => infoNumber(info, k) ?? null;
  const s = (k: string) => info.get(k) ?? null;
  const keys = keyspace(info);
  return {
    used_memory: n('used_memory'),
    used_memory_human: s('used_memory_human'),
    maxmemory: n('maxmemory'),
    maxmemory_human: s('maxmemory_human'),
    maxmemory_policy: s('maxmemory_policy'),
    rejected_connections: n('rejected_connections'),
    connected_clients: n('connected_clients'),
    maxclients: n('maxclients'),
    blocked_clients: n('blocked_clients'),
    evicted_keys: n('evicted_keys'),
    keys,
    total_keys: Object.values(keys).reduce((a, b) => a + b, 0),
    redis_version: s('redis_version'),
    uptime_in_seconds: n('uptime_in_seconds'),
    role: s('role'),
  };
}

/** `db0:keys=3,expires=0,avg_ttl=0` lines → { db0: 3 }. */
export function keyspace(info: RedisInfo): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of info) {
    if (!/^db\d+$/.test(k)) continue;
    const m = /(?:^|,)keys=(\d+)/.exec(v);
    if (m) out[k] = Number(m[1]);
  }
  return out;
}

/** How many times Redis ran a command, from INFO commandstats (`cmdstat_flushall:calls=1,…`); 0 when it never did. */
export function commandCalls(commandstats: string, command: string): number {
  const v = parseRedisInfo(commandstats).get(`cmdstat_${command.toLowerCase()}`);
  const m = v ? /(?:^|,)calls=(\d+)/.exec(v) : null;
  return m ? Number(m[1]) : 0;
}

/** One line for a summary: memory and clients as the runbook's steps 1–2 read them. */
export function factsLine(f: RedisFacts | null): string {
  if (!f) return 'INFO not available';
  const max = f.maxmemory ? `of maxmemory ${f.maxmemory_human ?? f.maxmemory}` : 'no maxmemory';
  return `used_memory ${f.used_memory_human ?? f.used_memory ?? '?'} ${max} (policy ${f.maxmemory_policy ?? '?'}), ${f.total_keys} key(s), connected_clients ${f.connected_clients ?? '?'}${f.maxclients ? ` of maxclients ${f.maxclients}` : ''}, rejected_connections ${f.rejected_connections ?? '?'}, blocked_clients ${f.blocked_clients ?? '?'}, evicted_keys ${f.evicted_keys ?? '?'}`;
}

// ---------------------------------------------------------------------------------------------------
// Reading the live system

const pingAttempt = z.strictObject({ attempt: z.number(), ok: z.boolean(), reply: z.string().nullable(), error: z.string().nullable() });
type PingAttempt = z.output<typeof pingAttempt>;


async function pingOnce(redis: RedisClient, o: FreshConnectionOptions, attempt: number): Promise<PingAttempt> {
  try {
    return { attempt, ok: true, reply: await redis.pingFresh(o), error: null };
  } catch (err) {
    return { attempt, ok: false, reply: null, error: safeMessage(err) };
  }
}

/** PING up to `attempts` times, each on a new connection, `intervalMs` apart; stops at the first answer. */
export async function pingWithRetries(redis: RedisClient, o: FreshConnectionOptions & { attempts: number; intervalMs: number }, signal?: AbortSignal): Promise<PingAttempt[]> {
  const out: PingAttempt[] = [];
  for (let i = 1; i <= o.attempts; i++) {
    const p = await pingOnce(redis, o, i);
    out.push(p);
    if (p.ok) break;
    if (i < o.attempts) await sleep(o.intervalMs, signal);
  }
  return out;
}

const answered = (pings: PingAttempt[]) => pings.find((p) => p.ok);
const lastError = (pings: PingAttempt[]) => pings.at(-1)?.error ?? 'no attempt';

/**
 * INFO as Redis gives it: on dbpilot's own long-lived connection first (a Redis at maxclients still
 * answers the connections it has), else on a new one.
 */
async function readFacts(ctx: HandlerContext, o: FreshConnectionOptions): Promise<{ facts: RedisFacts | null; error: string | null }> {
  try {
    return { facts: redisFacts(await ctx.redis.info()), error: null };
  } catch {
    try {
      return { facts: redisFacts(await ctx.redis.infoFresh(o)), error: null };
    } catch (err) {
      return { facts: null, error: safeMessage(err) };
    }
  }
}

const serviceCheck = z.strictObject({
  service: z.string(),
  ok: z.boolean(),
  answered: z.boolean(),
  status: z.number().nullable(),
  database: z.string().nullable(),
  error: z.string().nullable(),
});
type ServiceCheck = z.output<typeof serviceCheck>;

/**
 * The runbook's "confirm that fallback-to-database mode is working and no critical errors are
 * thrown": each service still answers its health URL, without a server error and without saying its
 * database is unhealthy.
 */
export function judgeService(p: ServiceProbe): ServiceCheck {
  const bad = !p.answered ? (p.error ?? 'no answer') : p.status !== null && p.status >= 500 ? `HTTP ${p.status}` : p.database === 'unhealthy' ? 'says its database is unhealthy' : null;
  return { service: p.service, ok: bad === null, answered: p.answered, status: p.status, database: p.database, error: bad };
}

async function checkServices(ctx: HandlerContext, cfg: RedisFailureConfig): Promise<ServiceCheck[]> {
  if (!cfg.checkServices) return [];
  const probes = await Promise.all(ctx.config.services.map((s) => probeService({ name: s.name, healthUrl: s.healthUrl }, cfg.serviceTimeoutMs)));
  return probes.map(judgeService);
}

const servicesLine = (bad: ServiceCheck[]) => bad.map((b) => `${b.service} (${b.error})`).join(', ');

function freshOpts(cfg: RedisFailureConfig): FreshConnectionOptions {
  return { connectTimeoutMs: cfg.connectTimeoutMs, commandTimeoutMs: cfg.commandTimeoutMs };
}

function statefulSetOf(ctx: HandlerContext): string {
  return ctx.config.kubernetes?.redisStatefulSet ?? 'redis';
}

/** The Redis pod the runbook's commands exec into. */
export function redisPodOf(ctx: Pick<HandlerContext, 'config'>): string {
  return ctx.config.handlers['redis-failure'].pod ?? `${ctx.config.kubernetes?.redisStatefulSet ?? 'redis'}-0`;
}

const redisCli = (ctx: HandlerContext, args: string) => `kubectl exec -it ${redisPodOf(ctx)} -n ${namespaceOf(ctx.config)} -- redis-cli ${args}`;

/** The runbook's scenario 5 commands with this cluster's names. */
function runbookCommands(ctx: HandlerContext): string[] {
  return [
    redisCli(ctx, 'ping'),
    `${redisCli(ctx, 'info stats')} | grep rejected_connections`,
    `${redisCli(ctx, 'info memory')} | grep used_memory_human`,
    `kubectl rollout restart statefulset/${statefulSetOf(ctx)} -n ${namespaceOf(ctx.config)}`,
  ];
}

/** The engine waits 5 s for a page's diagnostics: the API server must answer within that, or the page says it did not. */
const DIAGNOSTICS_KUBE_TIMEOUT_MS = 3000;

/** What every page of scenario 5 carries (both handlers), read live; the plan's own readings beside them. */
async function scenarioDiagnostics(ctx: HandlerContext, plan: { ping?: PingAttempt[]; facts: RedisFacts | null; services?: ServiceCheck[] } | null): Promise<Record<string, unknown>> {
  const cfg = ctx.config.handlers['redis-failure'];
  const o = freshOpts(cfg);
  const kube = ctx.kube;
  const pod = redisPodOf(ctx);
  const sts = statefulSetOf(ctx);
  const [ping, info, services, podStatus, rollout] = await Promise.all([
    pingOnce(ctx.redis, o, 1),
    readFacts(ctx, o),
    checkServices(ctx, cfg).catch((err: unknown) => `not available: ${safeMessage(err)}`),
    kube
      ? kube.readPod(pod, { timeoutMs: DIAGNOSTICS_KUBE_TIMEOUT_MS }).then(
          (p) => ({ name: p.name, phase: p.phase ?? null, ready: p.ready, restart_count: p.restartCount, containers: p.containerStates, ready_condition: p.readyCondition ?? null }),
          (err: unknown) => `not available: ${safeMessage(err)}`,
        )
      : Promise.resolve('kubernetes: is not configured'),
    kube
      ? kube.readRolloutStatus('statefulset', sts, { timeoutMs: DIAGNOSTICS_KUBE_TIMEOUT_MS }).then(
          (r) => ({ statefulset: sts, message: r.message, ready_replicas: r.readyReplicas, desired_replicas: r.desiredReplicas, restarted_at: r.restartedAt ?? null }),
          (err: unknown) => `not available: ${safeMessage(err)}`,
        )
      : Promise.resolve('kubernetes: is not configured'),
  ]);
  const out: Record<string, unknown> = {
    runbook: 'Scenario 5 — Redis Cache Failure',
    redis: ctx.redis.target,
    ping_now: ping.ok ? `PONG on a new connection` : `no answer on a new connection: ${ping.error}`,
    info_now: info.facts ?? `not available: ${info.error}`,
    pod: podStatus,
    statefulset: rollout,
    services: services,
  };
  if (plan?.ping) out.ping_at_plan = plan.ping;
  if (plan) out.info_at_plan = plan.facts ?? 'not available';
  out.commands = runbookCommands(ctx);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// redis-failure

const planSchema = z.strictObject({
  alertname: z.string(),
  statefulSet: z.string(),
  pod: z.string(),
  ping: z.array(pingAttempt),
  facts: facts.nullable(),
  services: z.array(serviceCheck),
  rolloutTimeoutSeconds: z.number(),
  pingTimeoutSeconds: z.number(),
});
export type RedisFailurePlan = z.output<typeof planSchema>;

export function redisFailureHandler(): Handler<RedisFailurePlan> {
  const settings = (ctx: HandlerContext): RedisFailureConfig => ctx.config.handlers['redis-failure'];
  return {
    name: 'redis-failure',
    team: 'devops',
    planSchema,
    target: () => 'redis',

    async plan(alert: AlertInfo, ctx: HandlerContext): Promise<Plan<RedisFailurePlan>> {
      const cfg = settings(ctx);
      const o = freshOpts(cfg);
      const ping = await pingWithRetries(ctx.redis, { ...o, attempts: cfg.pingAttempts, intervalMs: cfg.pingIntervalMs });
      const [{ facts: f }, services] = await Promise.all([readFacts(ctx, o), checkServices(ctx, cfg)]);
      const data: RedisFailurePlan = {
        alertname: alert.alertname,
        statefulSet: statefulSetOf(ctx),
        pod: redisPodOf(ctx),
        ping,
        facts: f,
        services,
        rolloutTimeoutSeconds: cfg.rolloutTimeoutSeconds,
        pingTimeoutSeconds: cfg.pingTimeoutSeconds,
      };
      const pong = answered(ping);
      // ioredis reports a connection Redis refuses at maxclients as a broken pipe (its -ERR is lost): say what INFO shows instead.
      const full = f?.maxclients && f.connected_clients !== null && f.connected_clients >= f.maxclients ? `; connected_clients ${f.connected_clients} has reached maxclients ${f.maxclients}, so Redis refuses new connections` : '';
      const pinged = pong ? `Redis answers PING on a new connection (attempt ${pong.attempt} of ${cfg.pingAttempts})` : `Redis does not answer PING on a new connection (${ping.length} attempt(s), ${cfg.pingIntervalMs} ms apart; last: ${lastError(ping)})${full}`;
      const bad = services.filter((s) => !s.ok);
      const fallback = bad.length ? `; fallback to database mode is not working for ${bad.length} of ${services.length} service(s): ${servicesLine(bad)}` : '';

      if (alert.alertname === 'RedisRejectedConnections' && !cfg.restartOnRejectedConnections) {
        // A restart drops every client and the whole cache: for rejections, a human decides (maxclients, a client leaking connections).
        throw new UnsafeToActError(`Redis rejects connections: ${factsLine(f)}; ${pinged}${fallback}. dbpilot diagnoses and pages (handlers.redis-failure.restartOnRejectedConnections is false)`);
      }
      if (pong) {
        if (bad.length) throw new UnsafeToActError(`${pinged}, so it is not restarted, but ${fallback.slice(2)}`);
        return { summary: `${pinged}: not restarted (${factsLine(f)})`, data, nothingToDo: true };
      }
      if (!ctx.kube) throw new UnsafeToActError(`${pinged}; restarting it (kubectl rollout restart statefulset/${data.statefulSet}) needs the kubernetes: block`);
      return {
        summary: `${pinged}: restart statefulset/${data.statefulSet} (runbook step 4) and check PING answers${fallback}`,
        data,
        ...(bad.length ? { escalateAfter: `fallback to database mode is not working while Redis is down: ${servicesLine(bad)}` } : {}),
        notifyOnSuccess: {
          severity: 'info',
          leftToDo: [
            `find out why Redis stopped answering: the pod's status and last termination are in this page's diagnostics (kubectl describe pod ${data.pod} -n ${namespaceOf(ctx.config)}; kubectl logs ${data.pod} -n ${namespaceOf(ctx.config)} --previous)`,
            'the restarted Redis starts with an empty cache unless it persists: the services refill it from PostgreSQL',
          ],
        },
      };
    },

    steps(plan: RedisFailurePlan, ctx: HandlerContext): Step[] {
      // A Redis that answered is never restarted (`dbpilot plan` asks for the steps of every plan).
      if (answered(plan.ping)) return [];
      const kube = ctx.kube;
      if (!kube) throw new UnsafeToActError('restarting Redis needs the kubernetes: block');
      const cfg = settings(ctx);
      const o = freshOpts(cfg);
      const ns = namespaceOf(ctx.config);
      const sts = plan.statefulSet;
      const restartedAtOf = (prior: ReadonlyMap<string, { output: unknown }>) => (prior.get('restartRedis')?.output as { restartedAt?: string } | null | undefined)?.restartedAt;
      return [
        {
          name: 'restartRedis',
          command: `kubectl rollout restart statefulset/${sts} -n ${ns}`,
          idempotent: true,
          async precondition(_prior, sc) {
            // Just before the restart: a Redis that answers again is not restarted.
            const ping = await pingWithRetries(ctx.redis, { ...o, attempts: cfg.pingAttempts, intervalMs: cfg.pingIntervalMs }, sc.signal);
            const pong = answered(ping);
            return pong
              ? fail(`Redis answers PING again (attempt ${pong.attempt}): not restarting it`, { ping })
              : ok(`Redis still does not answer PING (${ping.length} attempt(s); last: ${lastError(ping)})`, { ping });
          },
          async run(_prior, sc) {
            sc.assertCanAct();
            // Whole seconds, as kubectl writes restartedAt.
            return kube.rolloutRestart('statefulset', sts, new Date(Math.floor(Date.now() / 1000) * 1000));
          },
          async check(output) {
            const want = (output as { restartedAt?: string } | null)?.restartedAt;
            const st = await kube.readRolloutStatus('statefulset', sts);
            return want && st.restartedAt === want ? ok(`statefulset/${sts} has restartedAt ${want}: ${st.message}`) : fail(`statefulset/${sts} has restartedAt ${st.restartedAt ?? 'unset'}, not ${want ?? '?'}`);
          },
        },
        {
          name: 'waitForRedisRollout',
          command: `kubectl rollout status statefulset/${sts} -n ${ns} --timeout=${plan.rolloutTimeoutSeconds}s`,
          idempotent: true,
          timeoutMs: plan.rolloutTimeoutSeconds * 1000 + 15_000,
          async run() {
            const st = await kube.waitForRollout('statefulset', sts, plan.rolloutTimeoutSeconds * 1000);
            return { message: st.message, restartedAt: st.restartedAt ?? null };
          },
          async check(_output, prior) {
            const want = restartedAtOf(prior);
            const st = await kube.readRolloutStatus('statefulset', sts);
            if (!st.done) return fail(`statefulset/${sts}: ${st.message}`);
            if (want && st.restartedAt !== want) return fail(`statefulset/${sts} rolled out, but restartedAt is ${st.restartedAt ?? 'unset'}, not ${want}`);
            return ok(`statefulset/${sts}: ${st.message}`);
          },
        },
        {
          name: 'verifyRedisStatus',
          command: `${redisCli(ctx, 'ping')}   # expected: PONG`,
          idempotent: true,
          timeoutMs: plan.pingTimeoutSeconds * 1000 + 15_000,
          async run(_prior, sc) {
            const until = Date.now() + plan.pingTimeoutSeconds * 1000;
            for (let attempt = 1; ; attempt++) {
              const p = await pingOnce(ctx.redis, o, attempt);
              if (p.ok || Date.now() >= until) return { attempts: attempt, last: p };
              await sleep(Math.min(cfg.pingIntervalMs || 250, Math.max(0, until - Date.now())), sc.signal);
            }
          },
          async check() {
            const p = await pingOnce(ctx.redis, o, 1);
            if (!p.ok) return fail(`Redis does not answer PING on a new connection ${plan.pingTimeoutSeconds} s after the rollout: ${p.error}`);
            const { facts: f } = await readFacts(ctx, o);
            return ok(`Redis answers PING (${p.reply}) on a new connection${f ? `: ${factsLine(f)}, uptime ${f.uptime_in_seconds ?? '?'} s` : ''}`);
          },
        },
      ];
    },

    async diagnostics(plan, _alert, ctx) {
      return scenarioDiagnostics(ctx, plan ?? null);
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// redis-flushall: runbook step 3, only on approval, only where allowed

const flushPlanSchema = z.strictObject({
  redis: z.string(),
  pod: z.string(),
  facts: facts,
});
export type RedisFlushallPlan = z.output<typeof flushPlanSchema>;

/** A FLUSHALL on a configuration that does not allow it. */
function refusal(ctx: HandlerContext): string {
  return `FLUSHALL (runbook scenario 5 step 3) is refused: it deletes every key of every database, and handlers.redis-flushall.allow is not true in this configuration (environment ${ctx.config.environment})`;
}

/** The long FLUSHALL of a large keyspace must not hit the probes' command timeout. */
const FLUSH_COMMAND_TIMEOUT_MS = 120_000;

export function redisFlushallHandler(): Handler<RedisFlushallPlan> {
  const settings = (ctx: HandlerContext): RedisFlushallConfig => ctx.config.handlers['redis-flushall'];
  return {
    name: 'redis-flushall',
    team: 'devops',
    planSchema: flushPlanSchema,
    // Whatever the configuration's global mode says: auto becomes approve (and handlers.redis-flushall.mode: auto is refused at start).
    approvalOnly: true,
    target: () => 'redis',

    async plan(_alert, ctx) {
      if (!settings(ctx).allow) throw new UnsafeToActError(refusal(ctx));
      const o = freshOpts(ctx.config.handlers['redis-failure']);
      let f: RedisFacts;
      try {
        f = redisFacts(await ctx.redis.infoFresh(o));
      } catch (err) {
        throw new UnsafeToActError(`Redis does not answer (${safeMessage(err)}): there is nothing to flush; a Redis that is down is the redis-failure handler's`);
      }
      const data: RedisFlushallPlan = { redis: ctx.redis.target, pod: redisPodOf(ctx), facts: f };
      const where = Object.entries(f.keys).map(([db, n]) => `${db} ${n}`).join(', ') || 'no database holds keys';
      if (f.total_keys === 0) return { summary: `Redis ${ctx.redis.target} holds no keys: nothing to flush`, data, nothingToDo: true };
      return {
        summary: `FLUSHALL on ${ctx.redis.target}: deletes ${f.total_keys} key(s) (${where}) using ${f.used_memory_human ?? f.used_memory ?? '?'} of ${f.maxmemory ? (f.maxmemory_human ?? f.maxmemory) : 'no maxmemory'} (policy ${f.maxmemory_policy ?? '?'}); runbook scenario 5 step 3, only on approval`,
        data,
        notifyOnSuccess: { severity: 'info', leftToDo: ['the cache is empty: the services refill it from PostgreSQL, so expect more database load until they have'] },
      };
    },

    steps(plan, ctx) {
      const o = { ...freshOpts(ctx.config.handlers['redis-failure']), commandTimeoutMs: FLUSH_COMMAND_TIMEOUT_MS };
      return [
        {
          name: 'flushAllCache',
          command: `kubectl exec -it ${plan.pod} -n ${namespaceOf(ctx.config)} -- redis-cli FLUSHALL   # deletes ${plan.facts.total_keys} key(s)`,
          // Repeating it after a crash would delete what the services wrote since: never without a human.
          idempotent: false,
          timeoutMs: FLUSH_COMMAND_TIMEOUT_MS + 10_000,
          async precondition() {
            // The configuration is read again just before: an approval does not override a refusal.
            if (!settings(ctx).allow) return fail(refusal(ctx));
            const now = redisFacts(await ctx.redis.infoFresh(freshOpts(ctx.config.handlers['redis-failure'])));
            return ok(`handlers.redis-flushall.allow is true; Redis answers with ${now.total_keys} key(s) (${plan.facts.total_keys} when planned)`);
          },
          async run(_prior, sc) {
            sc.assertCanAct();
            const r = await ctx.redis.flushAll(o);
            return { reply: r.reply, callsBefore: commandCalls(r.statsBefore, 'flushall'), callsAfter: commandCalls(r.statsAfter, 'flushall') };
          },
          async check(output) {
            const out = output as { reply?: string; callsBefore?: number; callsAfter?: number } | null;
            if (!out || out.reply !== 'OK') return fail(`FLUSHALL did not answer OK (${out?.reply ?? 'no reply recorded'})`);
            // Redis's own counters say it ran, not only our reply.
            const o2 = freshOpts(ctx.config.handlers['redis-failure']);
            const [stats, now] = await Promise.all([ctx.redis.infoFresh(o2, 'commandstats'), ctx.redis.infoFresh(o2, 'keyspace')]);
            const calls = commandCalls(stats, 'flushall');
            const keys = Object.values(keyspace(parseRedisInfo(now))).reduce((a, b) => a + b, 0);
            if (!(out.callsAfter! > out.callsBefore! && calls >= out.callsAfter!)) return fail(`Redis's commandstats do not show the FLUSHALL (calls ${out.callsBefore} before, ${out.callsAfter} after, ${calls} now)`);
            return ok(`FLUSHALL answered OK; Redis counts ${calls} FLUSHALL call(s) (${out.callsBefore} before); ${keys} key(s) now${keys ? ' (written since by the services)' : ''}`);
          },
        },
      ];
    },

    async diagnostics(plan, _alert, ctx) {
      return scenarioDiagnostics(ctx, plan ? { facts: plan.facts } : null);
    },
  };
}
