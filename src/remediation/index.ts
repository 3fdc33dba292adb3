/**
 * Assembles the remediation side of a runtime: store, outbox, handlers, engine and leader
 * election. Shared by `serve` and the acting CLI commands, so both act through the same policy.
 * Constructing it acts on nothing: the store is opened and the parts are wired, and only start()
 * begins delivering pages, electing a leader and resuming runs — the service calls it once its
 * port is bound, so a process that cannot serve never acts.
 */
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { safeMessage } from '../errors.js';
import type { Runtime } from '../runtime.js';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import { Store } from '../store/store.js';
import type { KubernetesClient } from '../integrations/kubernetes.js';
import { Engine, manualAlert } from './engine.js';
import { HandlerRegistry } from './registry.js';
import { Outbox } from './outbox.js';
import { LeaderElector } from '../coordination/leader.js';
import { builtHandlers } from './handlers/index.js';
import { processOwner } from './owner.js';
import { LEADER_URL_ANNOTATION, type Leadership } from './routes.js';
import type { AlertInfo, Handler, HandlerContext, Plan } from './handler.js';
import { CachingIntentStore, KubernetesIntentStore, LocalIntentStore, type IntentStore } from '../coordination/intent.js';
import type { RdsBackups } from '../scheduler/backups.js';
import type { SnapshotScheduler } from '../scheduler/snapshots.js';

export interface Remediation {
  store: Store;
  outbox: Outbox;
  engine: Engine;
  leader: LeaderElector;
  handlers: HandlerRegistry;
  kube: KubernetesClient | null;
  /** The RDS instance's backups (`aws:` configured), else null. */
  rds: RdsBackups | null;
  /** The scheduled snapshot (`aws.snapshotSchedule`), running only while this replica leads; else null. */
  scheduler: SnapshotScheduler | null;
  /** This process as it owns runs, locks and outbox claims. */
  instance: string;
  /** Who acts, and where to forward what only the leader may do. */
  leadership: Leadership;
  /** Service: delivers pages, elects a leader and resumes runs. CLI: delivers pages only (see cli-remediation). */
  start(): Promise<void>;
  close(): Promise<void>;
}

export interface RemediationOptions {
  /** Pod or host name in owners; `cli:<user>` for the CLI. */
  label?: string;
  /** False for the CLI: a human running `dbpilot remediate` or `approve` acts without the Lease. */
  requireLease?: boolean;
  /** The service's outbox announces itself so the CLI leaves delivery to it (default true). */
  announce?: boolean;
}

export function defaultHandlers(): HandlerRegistry {
  const registry = new HandlerRegistry();
  for (const h of builtHandlers()) registry.register(h);
  return registry;
}

/**
 * Every check start-up makes before it acts, also run by `check-config`: the alert → handler mapping
 * against this build, and the Kubernetes configuration (loaded, not contacted).
 */
export async function validateRemediation(config: Config): Promise<void> {
  defaultHandlers().validate(config);
  if (config.kubernetes) await loadKubernetes(config);
}

async function loadKubernetes(config: Config): Promise<KubernetesClient | null> {
  if (!config.kubernetes) return null;
  // Loaded only when configured: the client library is most of dbpilot's memory otherwise.
  const { KubernetesClient } = await import('../integrations/kubernetes.js');
  return new KubernetesClient({ namespace: config.kubernetes.namespace, ...(config.kubernetes.kubeconfig ? { kubeconfigPath: config.kubernetes.kubeconfig } : {}) });
}


/** Where a multi-step run's intent lives: a ConfigMap beside the Lease when Kubernetes is configured, else the store. */
function intentStore(config: Config, kube: KubernetesClient | null, store: Store | null): IntentStore {
  if (kube && config.kubernetes) return new KubernetesIntentStore(kube, `${config.kubernetes.lease.name}-failover`);
  if (store) return new LocalIntentStore(store);
  return { where: 'nowhere', read: async () => ({ intent: null, version: null }), write: async () => { throw new Error('no store to record an intent in'); } };
}

function handlerContext(runtime: Runtime, logger: Logger, kube: KubernetesClient | null, intents: IntentStore, rds: RdsBackups | null = null): HandlerContext {
  return { config: runtime.config, cluster: runtime.cluster, topology: runtime.topology, redis: runtime.redis, kube, intents, rds, logger };
}

/**
 * The plan a handler would carry out now, without a store and without recording anything
 * (`dbpilot plan`): read-only, so it opens no outbox and warns about nothing it does not do.
 */
export async function planOnly(
  runtime: Runtime,
  handlerName: string,
  labels: Record<string, string>,
): Promise<{ target: string; plan: Plan; steps: { name: string; command: string }[] }> {
  return planWith(runtime, defaultHandlers().get(handlerName), labels);
}

/** planOnly for a given handler object (also one in no registry: `dbpilot migrate-reset` shows its plan before it asks). */
export async function planWith(
  runtime: Runtime,
  handler: Handler,
  labels: Record<string, string>,
): Promise<{ target: string; plan: Plan; steps: { name: string; command: string }[] }> {
  const handlerName = handler.name;
  const kube = await loadKubernetes(runtime.config);
  // Read-only: the intent is read where it lives (Kubernetes), never from a store this command would create.
  // RDS read-only too: no store, so a plan that describes the instance records nothing.
  const rds = runtime.config.aws ? await (await import('../scheduler/backups.js')).createBackups(runtime.config.aws, { store: null, logger: runtime.logger.child({ component: 'rds' }) }) : null;
  try {
    const ctx = handlerContext(runtime, runtime.logger.child({ component: 'remediation' }), kube, intentStore(runtime.config, kube, null), rds);
    const a: AlertInfo = manualAlert(handlerName, labels);
    const target = handler.target(a, ctx);
    const plan = await handler.plan(a, ctx);
    return { target, plan, steps: handler.steps(plan.data as never, ctx).map((s) => ({ name: s.name, command: s.command })) };
  } finally {
    rds?.close();
  }
}

const verified = new Map<string, { ok: boolean; at: number }>();
const VERIFIED_FOR_MS = 30_000;

/**
 * The leader's advertised address, but only when it is the address of the leader's own pod: the
 * Lease's holder names its pod, and the address must be that pod's IP as the API server reports it.
 * Whoever could write the annotation cannot make a pod's IP say something else, so a forwarded
 * request (with its caller's credential) never goes anywhere but to the dbpilot pod that leads.
 */
export async function verifiedLeaderUrl(leader: LeaderElector, kube: KubernetesClient | null, log: Logger): Promise<string | null> {
  const holder = leader.otherHolder();
  const url = holder?.annotations[LEADER_URL_ANNOTATION];
  if (!kube || !holder || !url) return null;
  const key = `${holder.identity} ${url}`;
  const hit = verified.get(key);
  if (hit && Date.now() - hit.at < VERIFIED_FOR_MS) return hit.ok ? url : null;
  let ok = false;
  try {
    const u = new URL(url);
    const host = u.hostname.replace(/^\[|\]$/g, '');
    const pod = /^(.+)-\d+-[0-9a-f]{8}$/.exec(holder.identity)?.[1];
    if ((u.protocol === 'http:' || u.protocol === 'https:') && isIP(host) && pod) ok = (await kube.readPod(pod)).podIP === host;
    if (!ok) log.warn({ leader: holder.identity, url }, "the leader's advertised address is not its pod's IP: not forwarding to it");
  } catch (err) {
    log.warn({ leader: holder.identity, err: safeMessage(err) }, "could not check the leader's advertised address: not forwarding to it");
  }
  verified.set(key, { ok, at: Date.now() });
  return ok ? url : null;
}

/** Where the other replicas reach this one: `webhook.advertiseUrl`, else http://$POD_IP:<listen port> in a pod. */
export function advertisedUrl(config: Config, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (config.webhook.advertiseUrl) return config.webhook.advertiseUrl;
  const ip = env.POD_IP;
  const port = Number(config.listen.slice(config.listen.lastIndexOf(':') + 1));
  if (!ip || !port) return undefined;
  return `http://${ip.includes(':') ? `[${ip}]` : ip}:${port}`;
}

export async function createRemediation(runtime: Runtime, opts: RemediationOptions = {}): Promise<Remediation> {
  const { config, logger, metrics } = runtime;
  // Each part's logger is a child of the root, so a line carries one `component`.
  const log = logger.child({ component: 'remediation' });
  const handlers = defaultHandlers();
  handlers.validate(config);
  for (const name of Object.keys(config.handlers)) {
    if (config.handlers[name as keyof typeof config.handlers] && !handlers.has(name) && name !== 'slow-queries') {
      log.warn({ handler: name }, 'configuration for a handler this build does not have yet: its alerts are escalated');
    }
  }
  if (Object.keys(config.pagerduty.routes).length === 0) {
    log.warn('pagerduty.routes is empty: escalations are recorded in the outbox but cannot be delivered (dead letters)');
  }
  const kube = await loadKubernetes(config);
  const advertiseUrl = advertisedUrl(config);
  const store = new Store(config.store.path);
  // The failover intent, remembered so every scrape knows which server a failover fenced.
  const intents = new CachingIntentStore(intentStore(config, kube, store));
  runtime.setFencedSource(() => intents.fenced());
  const instance = processOwner(opts.label ?? process.env.POD_NAME ?? hostname());
  const outbox = new Outbox(store, config.pagerduty, metrics, logger.child({ component: 'outbox' }), { owner: instance, announce: opts.announce ?? true });
  // RDS only when configured: the AWS SDK is loaded, and credentials looked up, by nothing else.
  let rds: RdsBackups | null = null;
  let scheduler: SnapshotScheduler | null = null;
  if (config.aws) {
    const { createBackups } = await import('../scheduler/backups.js');
    rds = await createBackups(config.aws, { store, logger: logger.child({ component: 'rds' }), owner: instance });
    rds.registerMetric(metrics);
    if (config.aws.snapshotSchedule) {
      const { SnapshotScheduler } = await import('../scheduler/snapshots.js');
      scheduler = new SnapshotScheduler({
        backups: rds,
        pager: outbox,
        schedule: config.aws.snapshotSchedule,
        timezone: config.aws.snapshotTimezone,
        logger: logger.child({ component: 'scheduler' }),
        canAct: () => leader.isLeader(),
      });
    }
  }
  let engine: Engine | null = null;
  let resumed = false;
  const leader = new LeaderElector({
    kube,
    leaseName: config.kubernetes?.lease.name ?? 'dbpilot-leader',
    identity: instance.replace(/[^A-Za-z0-9.-]/g, '-'),
    leaseDurationSeconds: config.kubernetes?.lease.durationSeconds ?? 15,
    renewDeadlineSeconds: config.kubernetes?.lease.renewDeadlineSeconds ?? 10,
    retryPeriodSeconds: config.kubernetes?.lease.retryPeriodSeconds ?? 2,
    // Always written: a holder with no address removes the previous holder's, so nobody forwards to a stale one.
    advertise: { [LEADER_URL_ANNOTATION]: advertiseUrl ?? null },
    logger,
    onChange: (leading) => {
      log.info({ leader: leading }, leading ? 'became leader: this replica acts' : 'not leader: this replica only exports metrics');
      // A new leader picks up what the previous process of this store left in flight; on winning the
      // Lease back, what this process paused when it lost it.
      if (leading && engine && !resumed) {
        resumed = true;
        void engine.resume().catch((err: Error) => log.error({ err: err.message }, 'resume failed'));
      }
      // The scheduled snapshot runs on the leader only.
      if (leading) scheduler?.start();
      else void scheduler?.stop();
      if (!leading) {
        resumed = false;
        // Within the step, not only between steps: every step acting now is aborted and waits for resume.
        engine?.stopActing('this replica lost the leader Lease');
      }
    },
  });
  metrics.gauge('dbpilot_leader', 'Whether this replica holds the leader Lease and may act (1) or only exports metrics (0).', [], function () {
    this.set(leader.isLeader() ? 1 : 0);
  });
  engine = new Engine({
    config,
    store,
    handlers,
    ctx: handlerContext(runtime, log, kube, intents, rds),
    outbox,
    metrics,
    logger: log,
    isLeader: () => leader.isLeader(),
    requireLease: opts.requireLease ?? true,
    instance,
  });
  const eng = engine;
  return {
    store,
    outbox,
    engine: eng,
    leader,
    handlers,
    kube,
    rds,
    scheduler,
    instance,
    leadership: { isLeader: () => leader.isLeader(), leaderUrl: () => verifiedLeaderUrl(leader, kube, log) },
    async start() {
      outbox.start();
      leader.start();
      // Another instance's failover shows here within a few seconds.
      intents.poll(5000, (err) => log.warn({ err: safeMessage(err) }, 'could not read the failover intent'));
    },
    async close() {
      // The Lease is released last: another replica must not act while this one finishes its step.
      intents.stop();
      await scheduler?.close();
      await eng.close();
      await leader.stop();
      await outbox.stop();
      rds?.close();
      store.close();
    },
  };
}
