/**
 * The policy around every remediation: one alert occurrence is one run (dedupe on fingerprint +
 * startsAt), one run per target at a time (store-backed scoped locks), cooldown and attempt limits,
 * the mode (off / dry-run / approve / auto), leader-only execution, a precondition before and a check
 * after every step, escalation when a check fails or dbpilot must not act, and an audit row before and
 * after each step. Handlers only say what to do; the engine decides whether and how.
 *
 * Split by responsibility (engine/): admitting alerts (admission.ts), executing steps (executor.ts),
 * resuming (resumer.ts), how a run ends and what pages say (outcomes.ts), and what they share (core.ts).
 */
import type { Mode } from '../config.js';
import { DbpilotError } from '../errors.js';
import type { Store, RunRow } from '../store/store.js';
import type { WebhookPayload } from './alertmanager.js';
import type { AlertInfo, Handler } from './handler.js';
import { Admission } from './engine/admission.js';
import { EngineCore, type EngineOptions } from './engine/core.js';
import { Executor } from './engine/executor.js';
import { Outcomes } from './engine/outcomes.js';
import { Resumer } from './engine/resumer.js';

export type { EngineOptions, Outcome } from './engine/core.js';

export class Engine {
  private readonly core: EngineCore;
  private readonly outcomes: Outcomes;
  private readonly executor: Executor;
  private readonly admission: Admission;
  private readonly resumer: Resumer;
  private leaseWatch: NodeJS.Timeout | null = null;

  constructor(o: EngineOptions) {
    this.core = new EngineCore(o);
    // A run paused for the Lease resumes as soon as this replica may act again, even when no change of
    // leadership is ever announced (a renewal that lands just after the deadline, a blocked event loop).
    this.core.onPausedForLease = () => {
      if (this.leaseWatch || !o.requireLease) return;
      this.leaseWatch = setInterval(() => {
        if (this.core.closed || !o.isLeader()) return;
        clearInterval(this.leaseWatch!);
        this.leaseWatch = null;
        void this.resume().catch(() => undefined);
      }, 1000);
      this.leaseWatch.unref();
    };
    this.outcomes = new Outcomes(this.core);
    this.executor = new Executor(this.core, this.outcomes);
    this.admission = new Admission(this.core, this.outcomes, this.executor);
    this.resumer = new Resumer(this.core, this.outcomes, this.executor, this.admission);
  }

  get store(): Store {
    return this.core.store;
  }

  receive(payload: WebhookPayload): Promise<void> {
    return this.admission.receive(payload);
  }

  /** Resolves when every run started so far has settled (tests, shutdown). */
  idle(): Promise<void> {
    return this.core.idle();
  }

  handlerFor(a: AlertInfo): { handler: Handler | null; requested: string } {
    return this.core.handlerFor(a);
  }

  async onFiring(a: AlertInfo, opts: { modeOverride?: Mode } = {}): Promise<RunRow | null> {
    return (await this.admission.admitOne(a, opts)()) as RunRow | null;
  }

  onResolved(a: AlertInfo): Promise<void> {
    return this.admission.onResolved(a);
  }

  /**
   * Approves a run waiting in approve mode and executes it here — unless its plan waited longer than
   * the handler's approveMaxAgeSeconds, or is not valid for this build: then it is escalated instead.
   */
  async approve(id: string, by: string): Promise<RunRow> {
    const { store, o } = this.core;
    const run = store.getRun(id);
    if (!run) throw new DbpilotError('DBPILOT_RUN_NOT_FOUND', `no remediation run ${id}`);
    if (run.status !== 'awaiting_approval') throw new DbpilotError('DBPILOT_RUN_NOT_WAITING', `run ${id} is ${run.status}, not awaiting approval`);
    const handler = o.handlers.get(run.handler);
    const a = this.core.alertOf(run);
    const policy = this.core.policy(handler);
    const waited = (Date.now() - Date.parse(run.updatedAt)) / 1000;
    const stale = waited > policy.approveMaxAgeSeconds ? `its plan waited ${Math.round(waited)} s for approval (at most ${policy.approveMaxAgeSeconds} s): the system it describes has moved on` : this.resumer.invalidPlan(handler, run);
    if (stale) {
      if (store.setRunStatus(id, 'running', { from: ['awaiting_approval'], approvedBy: by, owner: o.instance })) {
        await this.outcomes.finish(store.getRun(id)!, handler, a, 'escalated', `not approved: ${stale}`, null, { seen: (run.plan as { summary?: string } | null)?.summary ?? a.alertname, tried: 'nothing', verified: stale });
      }
      throw new DbpilotError('DBPILOT_RUN_STALE', `run ${id} cannot be approved: ${stale}; plan it again`);
    }
    const blocked = this.admission.policyBlock(handler, run.target);
    if (blocked) throw new DbpilotError('DBPILOT_RUN_BLOCKED', blocked);
    // Only the caller whose update wins executes: a double approve cannot start two executions.
    if (!store.setRunStatus(id, 'running', { from: ['awaiting_approval'], approvedBy: by, owner: o.instance })) {
      throw new DbpilotError('DBPILOT_RUN_NOT_WAITING', `run ${id} was approved or cancelled meanwhile`);
    }
    o.logger.info({ run: id, by }, 'run approved');
    return (await this.core.track(this.executor.execute(store.getRun(id)!, handler, a))) ?? store.getRun(id)!;
  }

  /** `dbpilot remediate`: a run started by a human, through the same policy, lock, audit and checks. */
  async runManual(handlerName: string, labels: Record<string, string>, mode: 'manual' | 'dry-run'): Promise<RunRow | null> {
    const handler = this.core.o.handlers.get(handlerName);
    const a = manualAlert(handlerName, labels);
    const run = this.admission.createPlanningRun(handler, a, handler.target(a, this.core.o.ctx), mode, 'cli')!;
    return this.core.track(this.admission.planAndAct(run, handler, a, mode));
  }

  /**
   * A procedure only a person may start from the CLI (`dbpilot migrate-reset`): the handler object is
   * given here and is in no registry, so no webhook, alert mapping or resume can reach it. It runs with
   * the same lock, audit, preconditions, checks and escalation as any run.
   */
  async runCliOnly(handler: Handler, labels: Record<string, string>): Promise<RunRow | null> {
    if (this.core.o.handlers.has(handler.name)) throw new DbpilotError('DBPILOT_REGISTRY_INVALID', `${handler.name} is a registered handler: run it with runManual`);
    const a = manualAlert(handler.name, labels);
    const run = this.admission.createPlanningRun(handler, a, handler.target(a, this.core.o.ctx), 'manual', 'cli');
    if (!run) throw new DbpilotError('DBPILOT_RUN_FAILED', 'the run could not be recorded');
    return this.core.track(this.admission.planAndAct(run, handler, a, 'manual'));
  }

  /**
   * On start, and on (re)gaining the Lease: finish what a previous process left in flight, what this
   * process paused when it lost the Lease, and what other instances recorded (a failover intent).
   */
  resume(): Promise<void> {
    return this.resumer.resume();
  }

  /** The Lease is lost: every step acting now stops within its step; its run waits for resume. */
  stopActing(why: string): void {
    this.core.stopActing(why);
  }

  async close(): Promise<void> {
    this.core.closed = true;
    if (this.leaseWatch) clearInterval(this.leaseWatch);
    this.leaseWatch = null;
    await this.core.idle();
  }
}

export function manualAlert(handler: string, labels: Record<string, string>): AlertInfo {
  const startsAt = new Date().toISOString();
  return {
    alertname: labels.alertname ?? `manual:${handler}`,
    labels: { ...labels, remediation: handler },
    annotations: { summary: `manual ${handler} run` },
    fingerprint: `manual${Date.now().toString(16)}`,
    startsAt,
  };
}
