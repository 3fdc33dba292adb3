/**
 * Assembles the remediation side of a runtime: store, outbox, handlers, engine and leader
 * election. Shared by `serve` and the CLI commands, so both act through the same policy.
 */
import { hostname } from 'node:os';
import type { Runtime } from '../runtime.js';
import { Store } from '../store/store.js';
import type { KubernetesClient } from '../integrations/kubernetes.js';
import { Engine } from './engine.js';
import { HandlerRegistry } from './registry.js';
import { Outbox } from './outbox.js';
import { LeaderElector } from './leader.js';
import { slowQueriesHandler } from './handlers/slow-queries.js';
import { processOwner } from './owner.js';

export interface Remediation {
  store: Store;
  outbox: Outbox;
  engine: Engine;
  leader: LeaderElector;
  handlers: HandlerRegistry;
  kube: KubernetesClient | null;
  /** Starts the outbox, leader election and resumes runs left in flight (service only). */
  start(): Promise<void>;
  close(): Promise<void>;
}

export function defaultHandlers(): HandlerRegistry {
  return new HandlerRegistry().register(slowQueriesHandler());
}

export async function createRemediation(runtime: Runtime, opts: { label?: string; requireLease?: boolean } = {}): Promise<Remediation> {
  const { config, logger, metrics } = runtime;
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
  const store = new Store(config.store.path);
  const instance = processOwner(opts.label ?? process.env.POD_NAME ?? hostname());
  const outbox = new Outbox(store, config.pagerduty, metrics, log.child({ component: 'outbox' }), {
    baseBackoffMs: config.pagerduty.retry.baseMs,
    maxBackoffMs: config.pagerduty.retry.maxMs,
  });
  // Loaded only when configured: the client library is most of dbpilot's memory otherwise.
  const kube = config.kubernetes
    ? new (await import('../integrations/kubernetes.js')).KubernetesClient({ namespace: config.kubernetes.namespace, ...(config.kubernetes.kubeconfig ? { kubeconfigPath: config.kubernetes.kubeconfig } : {}) })
    : null;
  let engine: Engine | null = null;
  let resumed = false;
  const leader = new LeaderElector({
    kube,
    leaseName: config.kubernetes?.lease.name ?? 'dbpilot-leader',
    identity: instance.replace(/[^A-Za-z0-9.-]/g, '-'),
    leaseDurationSeconds: config.kubernetes?.lease.durationSeconds ?? 15,
    renewDeadlineSeconds: config.kubernetes?.lease.renewDeadlineSeconds ?? 10,
    retryPeriodSeconds: config.kubernetes?.lease.retryPeriodSeconds ?? 2,
    logger: log,
    onChange: (leading) => {
      log.info({ leader: leading }, leading ? 'became leader: this replica acts' : 'not leader: this replica only exports metrics');
      // A new leader picks up what the previous process of this store left in flight.
      if (leading && engine && !resumed) {
        resumed = true;
        void engine.resume().catch((err: Error) => log.error({ err: err.message }, 'resume failed'));
      }
      // Runs paused by losing the Lease are resumed when it is won back.
      if (!leading) resumed = false;
    },
  });
  metrics.gauge('dbpilot_leader', 'Whether this replica holds the leader Lease and may act (1) or only exports metrics (0).', [], function () {
    this.set(leader.isLeader() ? 1 : 0);
  });
  engine = new Engine({
    config,
    store,
    handlers,
    ctx: { config, cluster: runtime.cluster, redis: runtime.redis, logger: log },
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
    async start() {
      outbox.start();
      leader.start();
    },
    async close() {
      // The Lease is released last: another replica must not act while this one finishes its step.
      await eng.close();
      await leader.stop();
      await outbox.stop();
      store.close();
    },
  };
}
