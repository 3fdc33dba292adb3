/**
 * Executing a run: under its lock (waiting for narrower runs to end when its target is wider), step
 * by step, each written to the store before it acts and after its check. Before a step acts its
 * precondition is re-checked on the live system; a failed one stops the run, undoes what earlier
 * steps declared undoable (the fence label taken back) and escalates. While a step runs it has an
 * abort signal and a deadline, and it confirms before every write that this process may still act:
 * a leader that loses the Lease stops within the step, and the run waits for resume.
 */
import { safeMessage } from '../../errors.js';
import type { RunRow } from '../../store/store.js';
import type { AlertInfo, CheckResult, Handler, PriorStep, Step, StepContext } from '../handler.js';
import { ownerAlive } from '../owner.js';
import { StopActingError, type EngineCore } from './core.js';
import { failpoint } from '../../failpoints.js';
import type { Outcomes, PlannedRun } from './outcomes.js';

const DEFAULT_STEP_TIMEOUT_MS = 60_000;
const LOCK_POLL_MS = 200;

type StepResult = { ok: true } | { ok: false; reason: string; stop?: 'paused' | 'precondition' };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Executor {
  constructor(
    private readonly core: EngineCore,
    private readonly outcomes: Outcomes,
  ) {}

  /** Runs (or resumes) the steps of a run under its target lock. */
  async execute(run: RunRow, handler: Handler, a: AlertInfo): Promise<RunRow | null> {
    const { store, o } = this.core;
    if (this.core.executing.has(run.id)) return store.getRun(run.id);
    this.core.executing.add(run.id);
    // Set when the run must stop without an outcome: it stays `running` with its lock, and the next
    // process (or this one, on regaining the Lease) resumes it from its last verified step.
    let leftForResume = false;
    let locked = false;
    const planned = run.plan as PlannedRun | null;
    const data = planned?.data ?? null;
    try {
      const lock = await this.lock(run, handler);
      if (lock === 'same-run-elsewhere') {
        // Another live process (the service, or an on-call's CLI in the same pod) is executing this very run.
        o.logger.info({ run: run.id }, 'run is being executed by another dbpilot process; leaving it there');
        return store.getRun(run.id);
      }
      // A run whose plan leaves work to a human (escalateAfter) pages even when another run holds its target: that run's page is about something else.
      const page = lock !== 'acquired' && (lock.page || Boolean(planned?.escalateAfter));
      if (lock !== 'acquired') return await this.outcomes.finish(run, handler, a, 'skipped', lock.reason, null, page ? { seen: planned?.summary ?? a.alertname, tried: 'nothing', verified: lock.reason } : null);
      locked = true;
      if (!store.setRunStatus(run.id, 'running', { owner: o.instance, from: ['planning', 'running'] })) {
        return store.getRun(run.id); // finished or cancelled meanwhile
      }
      const steps = handler.steps(data as never, o.ctx);
      const rows = store.steps(run.id);
      const prior = new Map<string, PriorStep>();
      const done: { idx: number; step: Step; output: unknown }[] = [];
      for (let i = 0; i < steps.length; i++) {
        const step = steps[i]!;
        const row = rows[i];
        if (row?.status === 'done' || row?.status === 'skipped') {
          prior.set(step.name, { output: row.output, check: row.check as PriorStep['check'] });
          done.push({ idx: i, step, output: row.output });
          continue;
        }
        const stop = this.core.whyNotAct(run);
        if (stop) {
          leftForResume = true;
          o.logger.warn({ run: run.id, nextStep: step.name, why: stop }, 'run paused between steps; it resumes from its last verified step');
          if (!this.core.closed) this.core.onPausedForLease();
          return store.getRun(run.id);
        }
        const resumed = row?.status === 'running' || row?.status === 'error' || row?.status === 'check_failed';
        const result = resumed ? await this.resumeStep(run, i, step, row!.output, prior) : await this.runStep(run, i, step, prior);
        if (!result.ok) {
          if (result.stop === 'paused') {
            leftForResume = true;
            o.logger.warn({ run: run.id, step: step.name, why: result.reason }, 'run paused within a step; it resumes from its last verified step');
            if (!this.core.closed) this.core.onPausedForLease();
            return store.getRun(run.id);
          }
          const undone = result.stop === 'precondition' ? await this.undo(run, done) : [];
          const reason = result.stop === 'precondition' ? `stopped before ${step.name}: ${result.reason}${undone.length ? `; undone: ${undone.join(', ')}` : ''}` : result.reason;
          return await this.outcomes.finish(run, handler, a, result.stop === 'precondition' ? 'escalated' : 'failed', reason, data, {
            seen: planned?.summary ?? a.alertname,
            tried: store.steps(run.id).filter((s) => s.status !== 'planned').map((s) => `${s.name} (${s.status}): ${s.command}`),
            verified: reason,
          });
        }
        done.push({ idx: i, step, output: prior.get(step.name)?.output });
      }
      if (planned?.escalateAfter) {
        return await this.outcomes.finish(run, handler, a, 'escalated', `completed, but ${planned.escalateAfter}`, data, {
          seen: planned.summary ?? a.alertname,
          tried: this.outcomes.stepLines(run.id),
          verified: `every step checked; left for a human: ${planned.escalateAfter}`,
        });
      }
      return await this.outcomes.finish(run, handler, a, 'succeeded', 'every step done and checked', data, null);
    } catch (err) {
      return await this.outcomes.finish(run, handler, a, 'failed', safeMessage(err), data, {
        seen: planned?.summary ?? a.alertname,
        tried: 'running the remediation',
        verified: safeMessage(err),
      });
    } finally {
      this.core.executing.delete(run.id);
      if (!leftForResume && locked) store.releaseLock(run.target, run.id);
    }
  }

  /**
   * Takes the run's lock. A run on a wider target (a failover on the whole cluster) waits, up to the
   * handler's lockWaitSeconds, for narrower runs already acting to end — new narrower runs are kept out
   * meanwhile — and gives up with a page if they do not.
   */
  private async lock(run: RunRow, handler: Handler): Promise<'acquired' | 'same-run-elsewhere' | { reason: string; page: boolean }> {
    const { store, o } = this.core;
    const take = () => store.acquireLock(run.target, run.id, o.instance, ownerAlive);
    let lock = take();
    if (lock === 'wait') {
      const waitMs = this.core.policy(handler).lockWaitSeconds * 1000;
      const until = Date.now() + waitMs;
      o.logger.info({ run: run.id, target: run.target, blocking: store.lockConflicts(run.target, run.id) }, 'waiting for narrower runs on the target to end');
      while (lock === 'wait' && Date.now() < until && !this.core.closed) {
        await sleep(LOCK_POLL_MS);
        lock = take();
      }
      if (lock === 'wait') {
        const blocking = store.lockConflicts(run.target, run.id);
        store.releaseLock(run.target, run.id);
        return { reason: `waited ${Math.round(waitMs / 1000)} s for ${blocking.map((b) => `run ${b.runId} on ${b.target}`).join(', ')} to end; nothing was done`, page: true };
      }
    }
    if (lock === 'other-run') {
      const blocking = store.lockConflicts(run.target, run.id)[0];
      return { reason: `target ${run.target} is locked by run ${blocking?.runId ?? 'unknown'}${blocking && blocking.target !== run.target ? ` on ${blocking.target}` : ''}`, page: false };
    }
    return lock;
  }

  /** A context for one step: its abort signal (stop acting, or its deadline) and the check before every write. */
  private stepContext(run: RunRow, step: Step): { ctx: StepContext; done: () => void } {
    const ac = new AbortController();
    this.core.stepControllers.add(ac);
    const timeoutMs = step.timeoutMs ?? DEFAULT_STEP_TIMEOUT_MS;
    const timer = setTimeout(() => ac.abort(new Error(`step ${step.name} did not finish within ${timeoutMs} ms`)), timeoutMs);
    const ctx: StepContext = {
      runId: run.id,
      owner: this.core.o.instance,
      signal: ac.signal,
      deadline: Date.now() + timeoutMs,
      logger: this.core.logger.child({ run: run.id, step: step.name }),
      assertCanAct: () => {
        if (ac.signal.aborted) throw ac.signal.reason instanceof Error ? ac.signal.reason : new Error(String(ac.signal.reason));
        const why = this.core.whyNotAct(run);
        if (why) throw new StopActingError(why);
      },
    };
    return {
      ctx,
      done: () => {
        clearTimeout(timer);
        this.core.stepControllers.delete(ac);
      },
    };
  }

  /**
   * Before a step marked risky, where RDS is configured: a snapshot of the instance, waited for until
   * available, recorded as a step row of its own (`snapshot:<step>`, after the plan's steps, like an
   * undo). Taken before the step's precondition is checked, so the precondition sees the live system
   * as it is after the wait. A snapshot that fails stops the run before the step acts; a lost Lease
   * leaves it for resume, which waits for the same snapshot (its id is recorded as soon as it is known).
   */
  private async snapshotBefore(run: RunRow, step: Step): Promise<StepResult> {
    const { store, logger, o } = this.core;
    const rds = o.ctx.rds;
    const aws = o.config.aws;
    if (!rds || !aws || !aws.snapshotBeforeRiskySteps) return { ok: true };
    const name = `snapshot:${step.name}`;
    const rowOf = () => store.steps(run.id).find((r) => r.name === name);
    let row = rowOf();
    if (row?.status === 'done') return { ok: true };
    if (!row) {
      store.appendSteps(run.id, [{ name, command: rds.snapshotCommand() }]);
      row = rowOf()!;
    }
    const idx = row.idx;
    const recorded = (row.output as { snapshotId?: unknown } | null)?.snapshotId;
    const { ctx, done } = this.stepContext(run, { ...step, name, timeoutMs: aws.snapshotTimeoutMinutes * 60_000 + 60_000 });
    try {
      store.stepStarted(run.id, idx);
      logger.info({ run: run.id, step: step.name }, 'risky step: taking an RDS snapshot first');
      const reason = `before step ${step.name} of ${run.handler} run ${run.id}`;
      const opts = {
        signal: ctx.signal,
        assertCanAct: ctx.assertCanAct,
        runId: run.id,
        trigger: 'risky-step' as const,
        requestedBy: o.instance,
        onStarted: (snapshotId: string) => store.stepOutput(run.id, idx, { snapshotId }),
      };
      const snap = typeof recorded === 'string' ? await rds.waitForSnapshot(recorded, reason, opts) : await rds.snapshot(reason, opts);
      store.stepFinished(run.id, idx, 'done', {
        output: snap,
        check: { ok: true, detail: `snapshot ${snap.snapshotId} is available${snap.joined ? ' (one already being made was used)' : ''}, ${Math.round(snap.waitedMs / 1000)} s` },
      });
      return { ok: true };
    } catch (err) {
      if (err instanceof StopActingError || ctx.signal.reason instanceof StopActingError) return { ok: false, reason: safeMessage(err), stop: 'paused' };
      store.stepFinished(run.id, idx, 'error', { error: safeMessage(err) });
      logger.warn({ run: run.id, step: step.name, err: safeMessage(err) }, 'no snapshot before a risky step: the step does not run');
      return { ok: false, reason: `no RDS snapshot could be taken first, so the step did not run: ${safeMessage(err)}`, stop: 'precondition' };
    } finally {
      done();
    }
  }

  private async runStep(run: RunRow, idx: number, step: Step, prior: Map<string, PriorStep>): Promise<StepResult> {
    const { store, logger } = this.core;
    if (step.risky) {
      const snap = await this.snapshotBefore(run, step);
      if (!snap.ok) return snap;
    }
    const { ctx, done } = this.stepContext(run, step);
    try {
      if (step.precondition) {
        let pre: CheckResult;
        try {
          pre = await step.precondition(prior, ctx);
        } catch (err) {
          pre = { ok: false, detail: `precondition could not be checked: ${safeMessage(err)}` };
        }
        if (!pre.ok) {
          store.stepFinished(run.id, idx, 'check_failed', { check: { ...pre, precondition: true } });
          logger.warn({ run: run.id, step: step.name, detail: pre.detail }, 'precondition failed: the step does not act');
          return { ok: false, reason: pre.detail, stop: 'precondition' };
        }
      }
      store.stepStarted(run.id, idx); // before the action: a crash from here on is visible on restart
      logger.info({ run: run.id, step: step.name, command: step.command }, 'step started');
      failpoint(`${step.name}:before-run`);
      let output: unknown;
      try {
        output = await step.run(prior, ctx);
        failpoint(`${step.name}:after-run`);
        store.stepOutput(run.id, idx, output ?? null);
      } catch (err) {
        if (err instanceof StopActingError || ctx.signal.reason instanceof StopActingError) {
          // Not an outcome: the step stays `running`, and whoever resumes checks it before anything else.
          return { ok: false, reason: safeMessage(err), stop: 'paused' };
        }
        store.stepFinished(run.id, idx, 'error', { error: safeMessage(err) });
        return { ok: false, reason: `step ${step.name} failed: ${safeMessage(err)}` };
      }
      return await this.checkStep(run, idx, step, output, prior, ctx);
    } finally {
      done();
    }
  }

  private async checkStep(run: RunRow, idx: number, step: Step, output: unknown, prior: Map<string, PriorStep>, ctx: StepContext): Promise<StepResult> {
    let check: CheckResult;
    try {
      check = await step.check(output, prior, ctx);
    } catch (err) {
      check = { ok: false, detail: `check could not run: ${safeMessage(err)}` };
    }
    this.core.store.stepFinished(run.id, idx, check.ok ? 'done' : 'check_failed', { output: output ?? null, check });
    this.core.logger.info({ run: run.id, step: step.name, ok: check.ok, detail: check.detail }, 'step checked');
    failpoint(`${step.name}:after-check`);
    if (!check.ok) return { ok: false, reason: `check after ${step.name} failed: ${check.detail}` };
    prior.set(step.name, { output, check });
    return { ok: true };
  }

  /**
   * A step that was started before dbpilot stopped: check first, on the live system. Verified →
   * carry on without repeating it. Not verified → repeat only an idempotent step (its precondition
   * checked again); otherwise stop and escalate.
   */
  private async resumeStep(run: RunRow, idx: number, step: Step, output: unknown, prior: Map<string, PriorStep>): Promise<StepResult> {
    const { store, logger } = this.core;
    logger.warn({ run: run.id, step: step.name }, 'resuming a step that was in flight when dbpilot stopped');
    let check: CheckResult | null = null;
    let checkError: string | null = null;
    const { ctx, done } = this.stepContext(run, step);
    try {
      // A restart often meets a busy or still-recovering server: an error here is not a verdict, so try a few times.
      for (let attempt = 1; attempt <= 3 && check === null; attempt++) {
        try {
          check = await step.check(output ?? null, prior, ctx);
        } catch (err) {
          checkError = safeMessage(err);
          logger.warn({ run: run.id, step: step.name, attempt, err: checkError }, 'could not verify the resumed step');
          if (attempt < 3) await sleep(1000);
        }
      }
    } finally {
      done();
    }
    if (check?.ok) {
      store.stepFinished(run.id, idx, 'done', { check: { ...check, detail: `${check.detail} (verified after restart)` } });
      prior.set(step.name, { output, check });
      return { ok: true };
    }
    // Every attempt either returned a check or threw: one of the two is set.
    const why = check ? check.detail : `its check could not run: ${checkError}`;
    if (!step.idempotent) {
      const reason = `step ${step.name} was in flight when dbpilot stopped and cannot be verified (${why}); not repeating it`;
      store.stepFinished(run.id, idx, 'check_failed', { check: { ok: false, detail: reason } });
      return { ok: false, reason };
    }
    logger.warn({ run: run.id, step: step.name, why }, 'repeating an idempotent step that could not be verified after restart');
    return this.runStep(run, idx, step, prior);
  }

  /**
   * Undoes, newest first, what the steps done so far declared undoable; each undo is recorded as a
   * step row of its own after the plan's steps. Returns the names undone.
   */
  private async undo(run: RunRow, done: { idx: number; step: Step; output: unknown }[]): Promise<string[]> {
    const { store, logger } = this.core;
    const undoable = done.filter((d) => d.step.undo).reverse();
    if (undoable.length === 0) return [];
    store.appendSteps(run.id, undoable.map((d) => ({ name: `undo:${d.step.name}`, command: d.step.undo!.command })));
    const rows = store.steps(run.id);
    const names: string[] = [];
    for (const d of undoable) {
      const idx = rows.findIndex((r) => r.name === `undo:${d.step.name}` && r.status === 'planned');
      if (idx < 0) continue;
      const { ctx, done: finished } = this.stepContext(run, { ...d.step, name: `undo:${d.step.name}` });
      store.stepStarted(run.id, idx);
      try {
        const res = await d.step.undo!.run(d.output, ctx);
        store.stepFinished(run.id, idx, res.ok ? 'done' : 'check_failed', { check: res });
        logger.warn({ run: run.id, step: d.step.name, ok: res.ok, detail: res.detail }, 'undid a step');
        names.push(`${d.step.name}${res.ok ? '' : ` (failed: ${res.detail})`}`);
      } catch (err) {
        store.stepFinished(run.id, idx, 'error', { error: safeMessage(err) });
        names.push(`${d.step.name} (failed: ${safeMessage(err)})`);
      } finally {
        finished();
      }
    }
    return names;
  }
}
