/**
 * Runbook scenario 1 — Primary Database Unreachable (alert PostgresPrimaryDown).
 *
 * The plan confirms the failure (step 1: several short probes on fresh connections; any answer is a
 * false alarm and nothing changes) and chooses the replica (step 2: reachable, in recovery, within
 * `failover.maxLagBytes` of the last primary WAL position dbpilot saw; the most advanced wins; none
 * eligible → no promotion, lead-dba is paged with the numbers). The steps then carry it out, each as
 * the runbook command it replaces, each with a precondition re-checked just before it acts and a
 * check that reads the live system:
 *
 *   recordIntent      the failover's intent, {oldPrimary, targetPrimary, phase, run}, compare-and-swap
 *                     in the Kubernetes API beside the Lease (else the store): every dbpilot instance
 *                     reads it, continues the same failover to the same target, never promotes a second
 *   fenceOldPrimary   step 5's label, role=replica on the old primary's pod (undone if the run stops)
 *   promoteReplica    step 3: pg_promote(wait => false), pg_is_in_recovery() polled every 10 ms, a write
 *                     checked with txid_current(); the precondition: the old primary still unreachable,
 *                     the replica still in recovery and within the lag bound
 *   labelNewPrimary   role=primary on the new primary's pod
 *   repointSecrets    step 4: in every configured secret/key, only host:port of the URL rewritten,
 *                     with a JSON-patch `test` of the old value (a concurrent edit is never overwritten)
 *   restartServices   step 4: `kubectl rollout restart` of each deployment (restartedAt annotation)
 *   waitForRollouts   each rollout waited for; one failing does not stop the others; each reported
 *   verifyServices    each service's health URL answers { "database": "healthy" }
 *   completeIntent    the intent marked done
 *
 * If the old primary answers again before the promotion, the run stops, takes its fence label back
 * and escalates. A repeated or late alert after a completed failover sees the new topology and
 * promotes nothing. lead-dba is told, at low urgency, what was done, with times per step, and what
 * is left to do by hand (`dbpilot plan rebuild-replica`).
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { UnsafeToActError, safeMessage } from '../../errors.js';
import { isOpen, type FailoverIntent, type IntentStore } from '../../coordination/intent.js';
import type { PgServer } from '../../integrations/postgres.js';
import { isSecretChanged } from '../../integrations/kubernetes-errors.js';
import { parseLsn, type MemberState } from '../../topology.js';
import type { AlertInfo, CheckResult, Handler, HandlerContext, Plan, Step, StepContext } from '../handler.js';
import { sleep } from '../handler.js';
import { namespaceOf } from '../runbook.js';
import { handlerOptions } from './options.js';

/** The runbook's `failover:` block: the handler's own settings. */
export const failoverSettings = z.strictObject({
  /** A replica further behind than this (bytes of WAL not replayed) is never promoted (Patroni's maximum_lag_on_failover). */
  maxLagBytes: z.number().int().min(0).default(1024 * 1024),
  /** Step 1: how many probes must all fail before the primary counts as down… */
  confirmProbes: z.number().int().min(1).max(20).default(3),
  /** …this far apart… */
  confirmIntervalMs: z.number().int().min(0).max(10_000).default(300),
  /** …each on a fresh connection that must connect and answer within this. */
  probeTimeoutMs: z.number().int().min(50).max(10_000).default(250),
  /** How long pg_promote() may take before the step fails. */
  promoteTimeoutSeconds: z.number().int().min(1).max(600).default(30),
  /** How long each service's rollout may take. */
  rolloutTimeoutSeconds: z.number().int().min(1).max(3600).default(300),
  /** How long the services' health URLs may take to answer healthy after the restarts. */
  healthTimeoutSeconds: z.number().int().min(1).max(3600).default(120),
});
export type FailoverSettings = z.output<typeof failoverSettings>;

/** handlers.primary-failover: the policy knobs, with a failover's own defaults. */
export const primaryFailoverOptions = handlerOptions(
  {},
  // A failover left in flight for a few minutes describes a cluster that has moved on; a failover plan
  // waiting for approval goes stale fast (the replica keeps falling behind a dead primary).
  { resumeMaxAgeSeconds: 900, approveMaxAgeSeconds: 600, cooldownSeconds: 600 },
);

const member = z.strictObject({ server: z.string(), pod: z.string().nullable(), serviceHost: z.string() });

const planSchema = z.strictObject({
  oldPrimary: member,
  target: member,
  /** The WAL position the target is measured against (text LSN), and its lag behind it. */
  referenceLsn: z.string().nullable(),
  targetLagBytes: z.number().nullable(),
  maxLagBytes: z.number(),
  candidates: z.array(z.strictObject({ server: z.string(), eligible: z.boolean(), why: z.string(), replayLsn: z.string().nullable(), lagBytes: z.number().nullable() })),
  secrets: z.array(z.strictObject({ name: z.string(), key: z.string() })),
  deployments: z.array(z.string()),
  services: z.array(z.strictObject({ name: z.string(), healthUrl: z.string() })),
  probes: z.array(z.string()),
  primaryPod: z.unknown().optional(),
  /** Set when this run carries on an intent recorded earlier (by this or another instance). */
  continuing: z.strictObject({ run: z.string(), by: z.string(), phase: z.string(), restartedAt: z.string().optional(), startedAt: z.string() }).nullable(),
});
export type FailoverPlan = z.output<typeof planSchema>;

function hostPortOf(url: string): string {
  const u = new URL(url);
  return `${u.hostname}:${u.port || '5432'}`;
}

/** The URL with only host and port replaced: user, password, database, `?schema=` and every other parameter kept. */
export function repointUrl(url: string, hostPort: string): string {
  const u = new URL(url);
  const i = hostPort.lastIndexOf(':');
  u.hostname = hostPort.slice(0, i); // an IPv6 address keeps its brackets, as the URL setter wants them
  u.port = hostPort.slice(i + 1);
  return u.toString();
}

/** host:port of a DATABASE_URL, or null when it is not a postgres URL (never the URL itself: it holds a password). */
export function urlHostPort(url: string): string | null {
  try {
    const u = new URL(url);
    if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') return null;
    return `${u.hostname.includes(':') ? `[${u.hostname}]` : u.hostname}:${u.port || '5432'}`;
  } catch {
    return null;
  }
}

/** Pure: which replicas may be promoted, and which one is. */
export function chooseReplica(
  members: readonly Pick<MemberState, 'server' | 'up' | 'inRecovery' | 'lsn' | 'replayLsn' | 'receiverStatus'>[],
  oldPrimary: string,
  reference: bigint | undefined,
  maxLagBytes: number,
): { chosen: string | null; reference: bigint | undefined; candidates: FailoverPlan['candidates'] } {
  // What the primary last wrote, as far as anyone saw it: dbpilot's last view of the primary, or what a replica received.
  let ref = reference;
  for (const m of members) {
    const r = parseLsn(m.lsn);
    if (m.server !== oldPrimary && m.up && m.inRecovery && r !== undefined && (ref === undefined || r > ref)) ref = r;
  }
  const candidates: FailoverPlan['candidates'] = [];
  let best: { server: string; replay: bigint } | null = null;
  for (const m of members) {
    if (m.server === oldPrimary) continue;
    const replay = parseLsn(m.replayLsn);
    const lag = replay !== undefined && ref !== undefined ? Number(ref > replay ? ref - replay : 0n) : null;
    let why: string;
    if (!m.up) why = 'not reachable';
    else if (!m.inRecovery) why = 'not in recovery (already a primary?)';
    else if (replay === undefined) why = 'no replay position';
    else if (lag === null) why = 'no reference position to measure lag against';
    else if (lag > maxLagBytes) why = `${lag} bytes behind (bound ${maxLagBytes})`;
    else why = `${lag} bytes behind, receiver ${m.receiverStatus ?? 'stopped'}`;
    const eligible = m.up && m.inRecovery === true && replay !== undefined && lag !== null && lag <= maxLagBytes;
    candidates.push({ server: m.server, eligible, why, replayLsn: m.replayLsn, lagBytes: lag });
    if (eligible && (best === null || replay! > best.replay)) best = { server: m.server, replay: replay! };
  }
  return { chosen: best?.server ?? null, reference: ref, candidates };
}

function lsnText(v: bigint | undefined): string | null {
  if (v === undefined) return null;
  return `${(v >> 32n).toString(16).toUpperCase()}/${(v & 0xffffffffn).toString(16).toUpperCase()}`;
}

async function confirmDown(server: PgServer, s: FailoverSettings): Promise<{ down: boolean; probes: string[] }> {
  const probes: string[] = [];
  for (let i = 1; i <= s.confirmProbes; i++) {
    const p = await server.probe(s.probeTimeoutMs);
    if (p.ok) {
      probes.push(`probe ${i}: answered in ${p.ms} ms (${p.inRecovery ? 'in recovery' : 'read-write'})`);
      return { down: false, probes };
    }
    probes.push(`probe ${i}: ${p.error} (${p.ms} ms)`);
    if (i < s.confirmProbes) await sleep(s.confirmIntervalMs);
  }
  return { down: true, probes };
}

/** Reads the intent, writes `next(current)` with compare-and-swap, retries once on a race; returns what is recorded. */
async function updateIntent(store: IntentStore, next: (cur: FailoverIntent | null) => FailoverIntent | null): Promise<FailoverIntent | null> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const { intent, version } = await store.read();
    const wanted = next(intent);
    if (wanted === null) return intent;
    try {
      await store.write(wanted, version);
      return wanted;
    } catch (err) {
      if ((err as { code?: string }).code !== 'DBPILOT_INTENT_CONFLICT' || attempt === 2) throw err;
    }
  }
  return null;
}

export function primaryFailoverHandler(): Handler<FailoverPlan> {
  const serverOf = (ctx: HandlerContext, label: string): PgServer => {
    const s = ctx.cluster.all.find((x) => x.server === label);
    if (!s) throw new UnsafeToActError(`server ${label} is no longer configured`);
    return s;
  };
  const memberOf = (ctx: HandlerContext, server: PgServer) => {
    const cfg = [ctx.config.postgres.primary, ...ctx.config.postgres.replicas].find((c) => hostPortOf(c.url) === server.server);
    return { server: server.server, pod: server.pod ?? null, serviceHost: cfg?.serviceHost ?? server.server };
  };

  const handler: Handler<FailoverPlan> = {
    name: 'primary-failover',
    team: 'lead-dba',
    planSchema,

    // The whole cluster: a failover excludes every per-server and per-database action while it runs.
    target: () => 'postgres',

    async plan(alert: AlertInfo, ctx: HandlerContext): Promise<Plan<FailoverPlan>> {
      const s = ctx.config.failover;
      const k = ctx.config.kubernetes;
      const common = {
        maxLagBytes: s.maxLagBytes,
        secrets: k ? k.secrets.map((x) => ({ name: x.name, key: x.key })) : [],
        deployments: k ? [...k.deployments] : [],
        services: ctx.config.services.map((x) => ({ name: x.name, healthUrl: x.healthUrl })),
      };
      const notify = (old: string, target: string) => ({
        severity: 'info' as const,
        leftToDo: [
          `bring the old primary ${old} back as a replica of ${target}: \`dbpilot plan rebuild-replica\` shows the steps (runbook step 5)`,
          'check the services and their error rates on the database-dashboard',
        ],
      });
      const { intent } = await ctx.intents.read();
      if (intent && isOpen(intent)) {
        // A failover is under way (this instance's or another's): carry it on, to the same target.
        const old = serverOf(ctx, intent.oldPrimary);
        const target = serverOf(ctx, intent.targetPrimary);
        return {
          summary: `carrying on the failover from ${old.server} to ${target.server} that ${intent.by} recorded (phase ${intent.phase})`,
          data: {
            ...common,
            oldPrimary: memberOf(ctx, old),
            target: memberOf(ctx, target),
            referenceLsn: null,
            targetLagBytes: null,
            candidates: [],
            probes: [],
            continuing: { run: intent.run, by: intent.by, phase: intent.phase, startedAt: intent.startedAt, ...(intent.restartedAt ? { restartedAt: intent.restartedAt } : {}) },
          },
          notifyOnSuccess: notify(old.server, target.server),
        };
      }
      const snapshot = await ctx.topology.observe(0);
      const label = alert.labels.server;
      const old = label ? serverOf(ctx, label) : ctx.topology.primaryServer();
      const writable = snapshot.primaries.filter((m) => m.server !== old.server);
      const oldState = snapshot.members.find((m) => m.server === old.server);
      if (oldState?.up && oldState.inRecovery === false) {
        return { summary: `false alarm: ${old.server} answers and accepts writes`, data: { ...common, oldPrimary: memberOf(ctx, old), target: memberOf(ctx, old), referenceLsn: null, targetLagBytes: null, candidates: [], probes: [], continuing: null }, nothingToDo: true };
      }
      if (writable.length === 1 && intent && intent.phase === 'done' && intent.targetPrimary === writable[0]!.server) {
        // A repeated or late alert after a completed failover: the new topology says there is nothing to do.
        return {
          summary: `${writable[0]!.server} is primary since the failover from ${intent.oldPrimary} (${intent.updatedAt})`,
          data: { ...common, oldPrimary: memberOf(ctx, old), target: memberOf(ctx, serverOf(ctx, writable[0]!.server)), referenceLsn: null, targetLagBytes: null, candidates: [], probes: [], continuing: null },
          nothingToDo: true,
        };
      }
      if (writable.length > 0) {
        throw new UnsafeToActError(`${writable.map((m) => m.server).join(', ')} already accept${writable.length === 1 ? 's' : ''} writes while ${old.server} is down: a promotion would make two primaries; a human decides`);
      }
      // Step 1: confirm by repeated probes on fresh connections. Any answer is a false alarm.
      const confirmed = await confirmDown(old, s);
      let primaryPod: unknown;
      if (ctx.kube && old.pod) {
        try {
          primaryPod = await ctx.kube.readPod(old.pod);
        } catch (err) {
          primaryPod = { error: safeMessage(err) };
        }
        ctx.logger.info({ server: old.server, pod: old.pod, podStatus: primaryPod, down: confirmed.down }, 'primary pod status at the failover decision');
      }
      if (!confirmed.down) {
        return {
          summary: `false alarm: ${old.server} answered (${confirmed.probes.at(-1)})`,
          data: { ...common, oldPrimary: memberOf(ctx, old), target: memberOf(ctx, old), referenceLsn: null, targetLagBytes: null, candidates: [], probes: confirmed.probes, primaryPod, continuing: null },
          nothingToDo: true,
        };
      }
      // Step 2: a healthy replica within the lag bound of what the primary last wrote.
      const fresh = await ctx.topology.observe(0);
      const ref = fresh.lastPrimaryLsn?.server === old.server ? parseLsn(fresh.lastPrimaryLsn.lsn) : undefined;
      const choice = chooseReplica(fresh.members, old.server, ref, s.maxLagBytes);
      if (!choice.chosen) {
        throw new UnsafeToActError(
          `no replica may be promoted (bound ${s.maxLagBytes} bytes behind ${lsnText(choice.reference) ?? 'an unknown position'}): ${choice.candidates.map((c) => `${c.server} ${c.why}`).join('; ') || 'no replica configured'}`,
        );
      }
      const target = serverOf(ctx, choice.chosen);
      const chosen = choice.candidates.find((c) => c.server === choice.chosen)!;
      return {
        summary: `promote ${target.server} (${chosen.lagBytes} bytes behind) in place of ${old.server}, confirmed down by ${s.confirmProbes} probes`,
        data: {
          ...common,
          oldPrimary: memberOf(ctx, old),
          target: memberOf(ctx, target),
          referenceLsn: lsnText(choice.reference),
          targetLagBytes: chosen.lagBytes,
          candidates: choice.candidates,
          probes: confirmed.probes,
          ...(primaryPod !== undefined ? { primaryPod } : {}),
          continuing: null,
        },
        notifyOnSuccess: notify(old.server, target.server),
      };
    },

    steps(plan: FailoverPlan, ctx: HandlerContext): Step[] {
      const s = ctx.config.failover;
      const ns = namespaceOf(ctx.config);
      const kube = ctx.kube;
      const old = serverOf(ctx, plan.oldPrimary.server);
      const target = serverOf(ctx, plan.target.server);
      const user = decodeURIComponent(new URL(ctx.config.postgres.replicas.concat(ctx.config.postgres.primary).find((c) => hostPortOf(c.url) === target.server)?.url ?? ctx.config.postgres.primary.url).username) || 'postgres';
      const psql = (pod: string | null, sql: string) => `kubectl exec -it ${pod ?? target.server} -n ${ns} -- psql -U ${user} -c "${sql}"`;
      const ok = (detail: string, data?: unknown): CheckResult => ({ ok: true, detail, ...(data !== undefined ? { data } : {}) });
      const fail = (detail: string, data?: unknown): CheckResult => ({ ok: false, detail, ...(data !== undefined ? { data } : {}) });
      const stillDown = async (): Promise<CheckResult> => {
        const p = await old.probe(s.probeTimeoutMs);
        return p.ok ? fail(`the old primary ${old.server} answered again (${p.inRecovery ? 'in recovery' : 'read-write'}); not promoting`) : ok(`${old.server} still unreachable: ${p.error}`);
      };
      const inRecovery = async (srv: PgServer) => (await srv.act<{ r: boolean }>('SELECT pg_is_in_recovery() AS r'))[0]!.r;
      const intentPhase = (phase: FailoverIntent['phase'], extra: Partial<FailoverIntent> = {}) =>
        updateIntent(ctx.intents, (cur) => {
          if (!cur || cur.targetPrimary !== target.server || cur.oldPrimary !== old.server) throw new Error(`the failover intent in ${ctx.intents.where} is no longer this failover (${cur ? `${cur.oldPrimary} → ${cur.targetPrimary}` : 'none'})`);
          return { ...cur, ...extra, phase, updatedAt: new Date().toISOString() };
        });

      const steps: Step[] = [];

      steps.push({
        name: 'recordIntent',
        command: `# record the failover's intent in ${ctx.intents.where}: ${old.server} → ${target.server} (compare-and-swap; every dbpilot instance follows it)`,
        idempotent: true,
        async run(_prior, sc: StepContext) {
          const recorded = await updateIntent(ctx.intents, (cur) => {
            if (cur && isOpen(cur)) {
              if (cur.targetPrimary === target.server && cur.oldPrimary === old.server) return null; // ours, or the one we carry on
              throw new UnsafeToActError(`another failover is under way (${cur.oldPrimary} → ${cur.targetPrimary}, by ${cur.by}): never a second promotion`);
            }
            sc.assertCanAct();
            const now = new Date().toISOString();
            return { kind: 'failover', run: sc.runId, by: sc.owner, oldPrimary: old.server, targetPrimary: target.server, phase: 'confirmed', startedAt: now, updatedAt: now };
          });
          return { intent: recorded };
        },
        // A failover stopped before its promotion is over: nobody may carry it on.
        undo: {
          command: `# mark the failover's intent in ${ctx.intents.where} aborted`,
          async run(_output, sc) {
            sc.assertCanAct();
            const after = await updateIntent(ctx.intents, (cur) =>
              cur && isOpen(cur) && cur.targetPrimary === target.server && cur.oldPrimary === old.server ? { ...cur, phase: 'aborted', reason: 'stopped before the promotion', updatedAt: new Date().toISOString() } : null,
            );
            return after?.phase === 'aborted' ? ok('the intent is marked aborted') : fail(`the intent is ${after?.phase ?? 'gone'}`);
          },
        },
        async check() {
          const { intent } = await ctx.intents.read();
          return intent && isOpen(intent) && intent.targetPrimary === target.server && intent.oldPrimary === old.server
            ? ok(`recorded in ${ctx.intents.where}: ${intent.oldPrimary} → ${intent.targetPrimary} (${intent.phase})`)
            : fail(`the intent in ${ctx.intents.where} is not this failover: ${intent ? `${intent.oldPrimary} → ${intent.targetPrimary} (${intent.phase})` : 'none'}`);
        },
      });

      if (kube && plan.oldPrimary.pod) {
        const pod = plan.oldPrimary.pod;
        steps.push({
          name: 'fenceOldPrimary',
          command: `kubectl label pod ${pod} role=replica -n ${ns} --overwrite`,
          idempotent: true,
          precondition: async () => stillDown(),
          async run(_prior, sc) {
            sc.assertCanAct();
            const p = await kube.labelPod(pod, { role: 'replica' }, { timeoutMs: 5000 });
            return { pod, role: p.labels.role ?? null };
          },
          async check() {
            const p = await kube.readPod(pod);
            return p.labels.role === 'replica' ? ok(`${pod} is labelled role=replica: Services selecting role=primary no longer route to it`) : fail(`${pod} has role=${p.labels.role ?? '(none)'}`);
          },
          undo: {
            command: `kubectl label pod ${pod} role=primary -n ${ns} --overwrite`,
            async run(_output, sc) {
              sc.assertCanAct();
              const p = await kube.labelPod(pod, { role: 'primary' }, { timeoutMs: 5000 });
              return p.labels.role === 'primary' ? ok(`${pod} is labelled role=primary again`) : fail(`${pod} has role=${p.labels.role ?? '(none)'}`);
            },
          },
        });
      }

      steps.push({
        name: 'promoteReplica',
        command: `${psql(plan.target.pod, 'SELECT pg_promote();')}\n${psql(plan.target.pod, 'SELECT pg_is_in_recovery();')}   # expected: f`,
        idempotent: true,
        timeoutMs: s.promoteTimeoutSeconds * 1000 + 5000,
        async precondition() {
          // Promoted already (a resumed run): nothing to promote, and nothing to undo whatever the old primary does now.
          if (!(await inRecovery(target))) return ok(`${target.server} is already out of recovery (promoted earlier): nothing to promote`);
          const down = await stillDown();
          if (!down.ok) return down;
          // Still within the bound: it must not have fallen further behind what the primary wrote.
          if (plan.referenceLsn) {
            const [row] = await target.act<{ replay: string | null }>('SELECT pg_last_wal_replay_lsn()::text AS replay');
            const replay = parseLsn(row?.replay);
            const ref = parseLsn(plan.referenceLsn)!;
            const lag = replay === undefined ? null : Number(ref > replay ? ref - replay : 0n);
            if (lag === null || lag > plan.maxLagBytes) return fail(`${target.server} is ${lag ?? 'an unknown number of'} bytes behind ${plan.referenceLsn} (bound ${plan.maxLagBytes}): not promoting`);
          }
          return ok(`${old.server} unreachable, ${target.server} in recovery and within the bound`);
        },
        async run(_prior, sc) {
          const started = Date.now();
          if (await inRecovery(target)) {
            sc.assertCanAct();
            // wait => false and our own polling: pg_promote(true) only looks every 100 ms.
            await target.act('SELECT pg_promote(wait => false)');
            while (await inRecovery(target)) {
              if (Date.now() > started + s.promoteTimeoutSeconds * 1000) throw new Error(`${target.server} still in recovery ${s.promoteTimeoutSeconds} s after pg_promote()`);
              await sleep(10, sc.signal);
            }
          }
          const promotedMs = Date.now() - started;
          await intentPhase('promoted');
          return { promotedMs };
        },
        async check() {
          if (await inRecovery(target)) return fail(`${target.server} is still in recovery`);
          // A write: txid_current() assigns a transaction id, which a standby refuses (SQLSTATE 25006).
          const [row] = await target.act<{ x: string }>('SELECT txid_current()::text AS x');
          return ok(`${target.server} is out of recovery and accepts writes (txid ${row!.x})`);
        },
      });

      if (kube && plan.target.pod) {
        const pod = plan.target.pod;
        steps.push({
          name: 'labelNewPrimary',
          command: `kubectl label pod ${pod} role=primary -n ${ns} --overwrite`,
          idempotent: true,
          async run(_prior, sc) {
            sc.assertCanAct();
            await kube.labelPod(pod, { role: 'primary' }, { timeoutMs: 5000 });
            return { pod };
          },
          async check() {
            const p = await kube.readPod(pod);
            return p.labels.role === 'primary' ? ok(`${pod} is labelled role=primary`) : fail(`${pod} has role=${p.labels.role ?? '(none)'}`);
          },
        });
      }

      if (kube && plan.secrets.length > 0) {
        const from = plan.oldPrimary.serviceHost;
        const to = plan.target.serviceHost;
        steps.push({
          name: 'repointSecrets',
          command: plan.secrets
            .map((x) => `kubectl patch secret ${x.name} -n ${ns} --type='json' -p='[{"op": "test", "path": "/data/${x.key}", "value": "<current>"}, {"op": "replace", "path": "/data/${x.key}", "value": "<base64 of the URL with ${from} replaced by ${to}>"}]'`)
            .join('\n'),
          idempotent: true,
          async run(_prior, sc) {
            const results: { secret: string; key: string; action: 'repointed' | 'already' | 'left'; host: string | null }[] = [];
            for (const x of plan.secrets) {
              const value = await kube.readSecretKey(x.name, x.key);
              const host = urlHostPort(value);
              if (host === to) {
                results.push({ secret: x.name, key: x.key, action: 'already', host });
                continue;
              }
              if (host !== from) {
                // Not the old primary's address: somebody else's decision; left alone and reported.
                results.push({ secret: x.name, key: x.key, action: 'left', host });
                continue;
              }
              sc.assertCanAct();
              try {
                await kube.patchSecretKeyIfUnchanged(x.name, x.key, value, repointUrl(value, to));
              } catch (err) {
                if (isSecretChanged(err)) throw new Error(`secret ${x.name} key ${x.key} changed while dbpilot repointed it: not overwritten`);
                throw err;
              }
              results.push({ secret: x.name, key: x.key, action: 'repointed', host: to });
            }
            return { results };
          },
          async check(output) {
            const bad: string[] = [];
            const left = ((output as { results?: { secret: string; key: string; action: string; host: string | null }[] } | null)?.results ?? []).filter((r) => r.action === 'left');
            for (const x of plan.secrets) {
              if (left.some((l) => l.secret === x.name && l.key === x.key)) continue;
              const host = urlHostPort(await kube.readSecretKey(x.name, x.key));
              if (host !== to) bad.push(`${x.name}/${x.key} points at ${host ?? 'something that is not a postgres URL'}`);
            }
            if (bad.length) return fail(`not repointed: ${bad.join('; ')}`);
            const note = left.length ? `; left alone (not pointing at ${from}): ${left.map((l) => `${l.secret}/${l.key} → ${l.host ?? '?'}`).join(', ')}` : '';
            return ok(`${plan.secrets.length - left.length} secret key(s) point at ${to}${note}`);
          },
        });
      }

      if (kube && plan.deployments.length > 0) {
        const timeoutMs = s.rolloutTimeoutSeconds * 1000;
        steps.push({
          name: 'restartServices',
          command: plan.deployments.map((d) => `kubectl rollout restart deployment/${d} -n ${ns}`).join('\n'),
          idempotent: true,
          async run(_prior, sc) {
            // Requested once: a continuing instance finds restartedAt in the intent and does not restart twice.
            const { intent } = await ctx.intents.read();
            if (intent?.restartedAt && intent.targetPrimary === target.server) return { restartedAt: intent.restartedAt, requested: [], failed: [], again: false };
            // Whole seconds, as kubectl writes restartedAt: the intent holds exactly what the deployments get.
            const at = new Date(Math.floor(Date.now() / 1000) * 1000);
            await intentPhase('repointed', { restartedAt: at.toISOString().replace(/\.\d{3}Z$/, 'Z') });
            const results = await Promise.allSettled(
              plan.deployments.map(async (d) => {
                sc.assertCanAct();
                return { d, ...(await kube.rolloutRestart('deployment', d, at)) };
              }),
            );
            const requested = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value.d] : []));
            const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [{ deployment: plan.deployments[i]!, error: safeMessage(r.reason) }] : []));
            return { restartedAt: at.toISOString().replace(/\.\d{3}Z$/, 'Z'), requested, failed, again: true };
          },
          async check(output) {
            const o = output as { failed?: { deployment: string; error: string }[] } | null;
            if (o?.failed?.length) return fail(`rollout restart refused for ${o.failed.map((f) => `${f.deployment} (${f.error})`).join('; ')}`);
            return ok(`rollout restart requested for ${plan.deployments.length} deployment(s)`);
          },
        });
        steps.push({
          name: 'waitForRollouts',
          command: plan.deployments.map((d) => `kubectl rollout status deployment/${d} -n ${ns} --timeout=${s.rolloutTimeoutSeconds}s`).join('\n'),
          idempotent: true,
          timeoutMs: timeoutMs + 10_000,
          async run() {
            // Each waited for on its own: one failing rollout does not stop the others.
            const results = await Promise.allSettled(plan.deployments.map((d) => kube.waitForRollout('deployment', d, timeoutMs)));
            return {
              rollouts: results.map((r, i) => ({ deployment: plan.deployments[i]!, done: r.status === 'fulfilled', message: r.status === 'fulfilled' ? r.value.message : safeMessage(r.reason) })),
            };
          },
          async check() {
            const now = await Promise.allSettled(plan.deployments.map((d) => kube.readRolloutStatus('deployment', d)));
            const states = now.map((r, i) => ({ deployment: plan.deployments[i]!, done: r.status === 'fulfilled' && r.value.done, message: r.status === 'fulfilled' ? r.value.message : safeMessage(r.reason) }));
            const notDone = states.filter((x) => !x.done);
            return notDone.length === 0
              ? ok(`all ${states.length} deployments rolled out`, { rollouts: states })
              : fail(`${notDone.length} of ${states.length} rollouts not complete: ${notDone.map((x) => `${x.deployment}: ${x.message}`).join('; ')}`, { rollouts: states });
          },
        });
      }

      if (plan.services.length > 0) {
        const healthy = async (url: string): Promise<string | null> => {
          try {
            const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
            const body = (await res.json().catch(() => null)) as { database?: unknown } | null;
            return body?.database === 'healthy' ? null : `HTTP ${res.status}, database ${JSON.stringify(body?.database ?? null)}`;
          } catch (err) {
            return safeMessage(err);
          }
        };
        steps.push({
          name: 'verifyServices',
          command: plan.services.map((x) => `curl -s ${x.healthUrl}   # expected: { "database": "healthy" }`).join('\n'),
          idempotent: true,
          timeoutMs: s.healthTimeoutSeconds * 1000 + 10_000,
          async run(_prior, sc) {
            const until = Date.now() + s.healthTimeoutSeconds * 1000;
            for (;;) {
              const answers = await Promise.all(plan.services.map(async (x) => ({ service: x.name, problem: await healthy(x.healthUrl) })));
              if (answers.every((a) => a.problem === null) || Date.now() > until) return { answers };
              await sleep(500, sc.signal);
            }
          },
          async check() {
            const answers = await Promise.all(plan.services.map(async (x) => ({ service: x.name, problem: await healthy(x.healthUrl) })));
            const bad = answers.filter((a) => a.problem !== null);
            return bad.length === 0 ? ok(`all ${answers.length} services report the database healthy`) : fail(`${bad.map((b) => `${b.service}: ${b.problem}`).join('; ')}`);
          },
        });
      }

      steps.push({
        name: 'completeIntent',
        command: `# mark the failover done in ${ctx.intents.where}`,
        idempotent: true,
        async run(_prior, sc) {
          sc.assertCanAct();
          await intentPhase('done');
          return {};
        },
        async check() {
          const { intent } = await ctx.intents.read();
          return intent?.phase === 'done' && intent.targetPrimary === target.server ? ok(`the failover to ${target.server} is recorded as done`) : fail(`the intent says ${intent?.phase ?? 'nothing'}`);
        },
      });
      return steps;
    },

    async diagnostics(plan, alert, ctx) {
      const snapshot = ctx.topology.last();
      return {
        ...(plan ? { candidates: plan.candidates, probes: plan.probes, reference_lsn: plan.referenceLsn, max_lag_bytes: plan.maxLagBytes, primary_pod: plan.primaryPod ?? null } : {}),
        topology: snapshot?.members.map((m) => ({ server: m.server, role: m.role, up: m.up, in_recovery: m.inRecovery, replay_lsn: m.replayLsn, receiver: m.receiverStatus })) ?? [],
        runbook: 'Scenario 1 — Primary Database Unreachable',
        alert_server: alert.labels.server ?? null,
      };
    },

    async recover(ctx: HandlerContext): Promise<AlertInfo[]> {
      const { intent } = await ctx.intents.read();
      if (!intent || !isOpen(intent)) return [];
      return [
        {
          alertname: 'PostgresPrimaryDown',
          labels: { alertname: 'PostgresPrimaryDown', remediation: 'primary-failover', team: 'lead-dba', severity: 'critical', server: intent.oldPrimary },
          annotations: { summary: `the failover from ${intent.oldPrimary} to ${intent.targetPrimary} recorded by ${intent.by} is not finished` },
          fingerprint: createHash('sha256').update(`intent ${intent.run}`).digest('hex').slice(0, 16),
          startsAt: intent.startedAt,
          continues: intent.run,
        },
      ];
    },
  };
  return handler;
}
