/**
 * The step model every runbook handler is written in. A handler looks at the live system and
 * returns a plan (plain data, persisted); the steps are rebuilt from that data, so a restarted
 * dbpilot rebuilds exactly the steps it had. Each step says what it will do as the runbook's own
 * command, checks its precondition just before it acts, does it, and checks that it worked by
 * reading the live system — so a resumed run verifies the world instead of a recorded output.
 * Policy (modes, locks, cooldowns, escalation, audit) lives in the engine, never in a handler.
 */
import type { ZodType } from 'zod';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import { UnknownTargetError } from '../errors.js';
import type { PgCluster, PgServer } from '../integrations/postgres.js';
import type { RedisClient } from '../integrations/redis.js';
import type { KubernetesClient } from '../integrations/kubernetes.js';
import type { RdsOperations } from '../integrations/rds.js';
import type { Team } from './escalation.js';
import type { HandlerName } from './handlers/options.js';
import type { IntentStore } from '../coordination/intent.js';
import type { Topology } from '../topology.js';

export interface AlertInfo {
  alertname: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  fingerprint: string;
  startsAt: string;
  /** The Alertmanager group the alert came in (its notification's groupKey), when it came by webhook. */
  groupKey?: string;
  /** For work carried on from a recorded intent: the run that recorded it (not continued again where that run is known). */
  continues?: string;
}

/** What handlers use of the observed topology (src/topology.ts). */
export type TopologyView = Pick<Topology, 'primaryServer' | 'observe' | 'last'>;

export interface HandlerContext {
  config: Config;
  cluster: PgCluster;
  /** Which server is primary now, observed from the servers (never taken from the configuration). */
  topology: TopologyView;
  redis: RedisClient;
  /** Present when `kubernetes:` is configured. */
  kube: KubernetesClient | null;
  /** Where a multi-step run records its intent for every dbpilot instance (the Kubernetes API, else the store). */
  intents: IntentStore;
  /**
   * The production RDS instance (`aws:`): snapshot(reason), growStorage(toGiB) with checkStorage and
   * checkStorageGrowth, describeInstance. Null or absent when `aws:` is not configured.
   */
  rds?: RdsOperations | null;
  logger: Logger;
}

export interface CheckResult {
  ok: boolean;
  /** One line for the audit and the page: what was verified, or why it failed. */
  detail: string;
  data?: unknown;
}

export interface PriorStep {
  output: unknown;
  check: CheckResult | null;
}

/** What the engine gives a step while it runs. */
export interface StepContext {
  /** The run this step belongs to. */
  runId: string;
  /** This process as it owns runs (`<pod>/<pid>/<token>`). */
  owner: string;
  /**
   * Aborted when this process must stop acting: it lost the Lease (the CLI: the run's lock), it is
   * shutting down, or the step's deadline passed. A step passes it to every wait and request.
   */
  signal: AbortSignal;
  /** Epoch milliseconds by which the step must be done. */
  deadline: number;
  /**
   * Throws unless this process may still act — it holds the Lease (the CLI: the run's lock) and the
   * step is not aborted. Called before every write to the outside world, so a leader that loses the
   * Lease stops within the step, not only between steps.
   */
  assertCanAct(): void;
  logger: Logger;
}

export interface Step {
  /** Named after the runbook step it carries out (cancelBackends, promoteReplica, …). */
  name: string;
  /** The runbook's own command line(s) this step stands for, shown in dry-run and in the audit. */
  command: string;
  /**
   * Whether the action may run again when a crash left it started but unverified. A step that is
   * not idempotent is never repeated: the engine escalates instead.
   */
  idempotent: boolean;
  /** How long run() may take; its signal aborts after (default 60 s). */
  timeoutMs?: number;
  /**
   * Re-checked just before the step acts, against the live system (the old primary is still
   * unreachable, the chosen replica is still within the lag bound). A failed precondition stops the
   * run: the engine undoes what earlier steps declared undoable, and escalates with the reason.
   */
  precondition?(prior: ReadonlyMap<string, PriorStep>, ctx: StepContext): Promise<CheckResult>;
  run(prior: ReadonlyMap<string, PriorStep>, ctx: StepContext): Promise<unknown>;
  /** Reads the live system to verify the step took effect (also after a restart, when output may be stale). */
  check(output: unknown, prior: ReadonlyMap<string, PriorStep>, ctx: StepContext): Promise<CheckResult>;
  /** Puts back what run() changed, when a later step's precondition fails (e.g. take the fence label back). */
  undo?: { command: string; run(output: unknown, ctx: StepContext): Promise<CheckResult> };
  /** A step that must have a fresh backup before it acts (where RDS is configured, the engine takes a snapshot first). */
  risky?: boolean;
}

export interface Plan<D = unknown> {
  /** One line: what this run will do. */
  summary: string;
  /** Everything the steps need, as JSON; persisted with the run. */
  data: D;
  /** True when the live system shows nothing left to do (e.g. the queries already finished). */
  nothingToDo?: boolean;
  /** Set when part of the problem is left to a human even if every step succeeds (e.g. the per-run cap was hit). */
  escalateAfter?: string;
  /**
   * A plan with no steps whose whole point is the page (the runbook has nothing to automate: replication
   * lag, data corruption without RDS): paged at once with the handler's diagnostics in every mode but off
   * (off pages as for any handler), recorded `escalated` — never waiting for approval, never "succeeded:
   * nothing to do". Only a dry-run a human runs from the CLI (`dbpilot remediate` without --yes) pages nobody.
   */
  diagnoseOnly?: boolean;
  /**
   * A run that succeeds still tells its team, at this severity (the failover tells lead-dba, low
   * urgency, what it did and what is left to do by hand).
   */
  notifyOnSuccess?: { severity: 'info' | 'warning'; leftToDo: string[] };
}

export interface Handler<D = unknown> {
  readonly name: HandlerName;
  /** Who is paged when this handler cannot or must not act. */
  readonly team: Team;
  /**
   * Teams paged with every page of this handler besides its team (the alert's `team` label, else
   * `team`): the same page, under a dedup key of their own, resolved with it. Data corruption pages the
   * Engineering Manager + DBA (em-dba) and the Lead DBA (lead-dba).
   */
  readonly alsoPage?: readonly Team[];
  /**
   * What a run changes (the lock key), from the alert alone. Keys are paths: `postgres` (the whole
   * cluster), `postgres/<server>`, `postgres/<server>/<database>`; a run excludes every run whose key
   * is a prefix or an extension of its own (a failover excludes every per-server action).
   */
  target(alert: AlertInfo, ctx: HandlerContext): string;
  /** Inspects the live system; throws UnsafeToActError when the runbook's preconditions are not met. */
  plan(alert: AlertInfo, ctx: HandlerContext): Promise<Plan<D>>;
  /** Validates plan data read back from the store when a run is resumed or approved. */
  readonly planSchema?: ZodType<D>;
  /** Builds the steps from plan data; pure, so a restart rebuilds the same steps. */
  steps(data: D, ctx: HandlerContext): Step[];
  /** Facts attached to an escalation (e.g. the runbook's missing-index diagnostics). Must not throw. */
  diagnostics?(data: D | null, alert: AlertInfo, ctx: HandlerContext): Promise<Record<string, unknown>>;
  /**
   * Work recorded outside this store that must be carried on (a failover intent another dbpilot
   * instance wrote): the alerts to continue it under. The engine asks on start and on winning the Lease.
   */
  recover?(ctx: HandlerContext): Promise<AlertInfo[]>;
  /** Always approve mode, whatever the configuration says (`rebuild-replica`). */
  readonly approvalOnly?: boolean;
}

/** Shows an untrusted label value in a message without letting it flood or rewrite the line. */
export function showLabel(value: string): string {
  return JSON.stringify(value.length > 80 ? `${value.slice(0, 79)}…` : value);
}

/**
 * The server an alert's `server` label names (host:port, as the exporter labels it), or the
 * observed primary when the alert has no such label. A label naming no configured server is
 * refused: acting on the primary instead would act on a server the alert is not about.
 */
export function serverForAlert(ctx: Pick<HandlerContext, 'cluster' | 'topology'>, label: string | undefined): PgServer {
  if (label === undefined || label === '') return ctx.topology.primaryServer();
  const found = ctx.cluster.all.find((s) => s.server === label);
  if (found) return found;
  throw new UnknownTargetError(
    `server label ${showLabel(label)} names no configured PostgreSQL server (configured: ${ctx.cluster.all.map((s) => s.server).join(', ')})`,
  );
}

/** A check's verdict: it held, with what was seen. */
export const ok = (detail: string, data?: unknown): CheckResult => ({ ok: true, detail, ...(data !== undefined ? { data } : {}) });
/** A check's verdict: it did not hold, with what was seen. */
export const fail = (detail: string, data?: unknown): CheckResult => ({ ok: false, detail, ...(data !== undefined ? { data } : {}) });

/** Waits `ms`; rejects with the signal's reason (a lost Lease, the step's deadline) as soon as it aborts. */
export const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => (clearTimeout(t), reject(signal.reason)), { once: true });
  });
