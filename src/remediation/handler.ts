/**
 * The step model every runbook handler is written in. A handler looks at the live system and
 * returns a plan (plain data, persisted); the steps are rebuilt from that data, so a restarted
 * dbpilot rebuilds exactly the steps it had. Each step says what it will do as the runbook's own
 * command, does it, and checks that it worked. Policy (modes, locks, cooldowns, escalation, audit)
 * lives in the engine, never in a handler.
 */
import type { Config, HandlerName } from '../config.js';
import type { Logger } from '../logger.js';
import { UnknownTargetError } from '../errors.js';
import type { PgCluster, PgServer } from '../integrations/postgres.js';
import type { RedisClient } from '../integrations/redis.js';
import type { Team } from './escalation.js';

export interface AlertInfo {
  alertname: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  fingerprint: string;
  startsAt: string;
  /** The Alertmanager group the alert came in (its notification's groupKey), when it came by webhook. */
  groupKey?: string;
}

export interface HandlerContext {
  config: Config;
  cluster: PgCluster;
  redis: RedisClient;
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
  run(prior: ReadonlyMap<string, PriorStep>): Promise<unknown>;
  check(output: unknown, prior: ReadonlyMap<string, PriorStep>): Promise<CheckResult>;
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
}

export interface Handler<D = unknown> {
  readonly name: HandlerName;
  /** Who is paged when this handler cannot or must not act. */
  readonly team: Team;
  /** What a run changes (the lock key), from the alert alone, e.g. `postgres/10.0.0.5:5432/lomash_orders`. */
  target(alert: AlertInfo, ctx: HandlerContext): string;
  /** Inspects the live system; throws UnsafeToActError when the runbook's preconditions are not met. */
  plan(alert: AlertInfo, ctx: HandlerContext): Promise<Plan<D>>;
  /** Builds the steps from plan data; pure, so a restart rebuilds the same steps. */
  steps(data: D, ctx: HandlerContext): Step[];
  /** Facts attached to an escalation (e.g. the runbook's missing-index diagnostics). Must not throw. */
  diagnostics?(data: D | null, alert: AlertInfo, ctx: HandlerContext): Promise<Record<string, unknown>>;
}

/** Shows an untrusted label value in a message without letting it flood or rewrite the line. */
export function showLabel(value: string): string {
  return JSON.stringify(value.length > 80 ? `${value.slice(0, 79)}…` : value);
}

/**
 * The server an alert's `server` label names (host:port, as the exporter labels it), or the primary
 * when the alert has no such label. A label naming no configured server is refused: acting on the
 * primary instead would act on a server the alert is not about.
 */
export function serverForAlert(ctx: Pick<HandlerContext, 'cluster'>, label: string | undefined): PgServer {
  if (label === undefined || label === '') return ctx.cluster.primary;
  const found = ctx.cluster.all.find((s) => s.server === label);
  if (found) return found;
  throw new UnknownTargetError(
    `server label ${showLabel(label)} names no configured PostgreSQL server (configured: ${ctx.cluster.all.map((s) => s.server).join(', ')})`,
  );
}
