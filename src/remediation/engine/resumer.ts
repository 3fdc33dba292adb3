/**
 * Resuming: on start, and on winning the Lease back, finish what a previous process left in flight
 * and what this one paused, from the last verified step — unless the plan is too old (the handler's
 * resumeMaxAgeSeconds since its last recorded progress) or no longer valid for this build (the
 * handler's planSchema), in which case a human decides. Then ask each handler for work recorded
 * outside this store (a failover intent another instance wrote in the Kubernetes API) and carry it on.
 */
import { safeMessage } from '../../errors.js';
import type { RunRow } from '../../store/store.js';
import type { Handler } from '../handler.js';
import { ownerAlive } from '../owner.js';
import type { Admission } from './admission.js';
import type { EngineCore } from './core.js';
import type { Executor } from './executor.js';
import type { Outcomes, PlannedRun } from './outcomes.js';

export class Resumer {
  constructor(
    private readonly core: EngineCore,
    private readonly outcomes: Outcomes,
    private readonly executor: Executor,
    private readonly admission: Admission,
  ) {}

  /** Why a recorded plan cannot be carried on by this build, or null. */
  invalidPlan(handler: Handler, run: RunRow): string | null {
    if (!handler.planSchema) return null;
    const parsed = handler.planSchema.safeParse((run.plan as PlannedRun | null)?.data);
    if (parsed.success) return null;
    const issue = parsed.error.issues[0];
    return `the recorded plan is not one this build of ${handler.name} can carry on (${issue ? `${issue.path.join('.') || 'plan'}: ${issue.message}` : 'invalid'})`;
  }

  async resume(): Promise<void> {
    const { store, o } = this.core;
    for (const run of store.inFlightRuns()) {
      // Executing here now, or being planned here now: not left in flight. A run of this process that
      // is `running` but not executing was paused when the Lease was lost, and is resumed below.
      if (this.core.executing.has(run.id) || (run.status === 'planning' && run.owner === o.instance)) continue;
      // A run another live process owns (an on-call's CLI that just approved it) is that process's to execute.
      if (run.status === 'running' && run.owner && run.owner !== o.instance && ownerAlive(run.owner)) continue;
      if (!o.handlers.has(run.handler)) continue;
      const a = this.core.alertOf(run);
      const handler = o.handlers.get(run.handler);
      const holder = store.lockOwner(run.target);
      if (holder && holder.runId === run.id && holder.owner && holder.owner !== o.instance && ownerAlive(holder.owner)) continue; // another live process has it
      if (run.status === 'planning') {
        if (run.owner && ownerAlive(run.owner)) continue;
        // Nothing was executed yet, but the situation may have changed: a human decides.
        await this.outcomes.finish(run, handler, a, 'escalated', 'dbpilot stopped while planning this run; nothing was executed', null, {
          seen: a.alertname,
          tried: 'nothing: interrupted while planning',
          verified: 'nothing',
        });
        continue;
      }
      const maxAge = this.core.policy(handler).resumeMaxAgeSeconds;
      // Measured from the last recorded progress (a step started or checked), not from when the run began.
      const ageSeconds = (Date.now() - Date.parse(store.lastProgress(run.id) ?? run.updatedAt)) / 1000;
      const stale = ageSeconds > maxAge ? `left in flight ${Math.round(ageSeconds)} s ago; too old to resume safely` : this.invalidPlan(handler, run);
      if (stale) {
        // A plan this old describes a system that has moved on (pids reused, failover done by hand…): do not act on it.
        store.releaseLock(run.target, run.id);
        await this.outcomes.finish(run, handler, a, 'escalated', stale, null, {
          seen: (run.plan as { summary?: string } | null)?.summary ?? a.alertname,
          tried: store.steps(run.id).filter((st) => st.status !== 'planned').map((st) => `${st.name} (${st.status})`),
          verified: `not resumed: ${stale}`,
        });
        continue;
      }
      o.logger.warn({ run: run.id, handler: run.handler }, 'resuming a run left in flight by a previous dbpilot process');
      await this.core.track(this.executor.execute(run, handler, a));
    }
    await this.recover();
  }

  /** Carries on work other instances recorded (an open failover intent), under a run of this store. */
  private async recover(): Promise<void> {
    const { store, o } = this.core;
    for (const name of o.handlers.names) {
      const handler = o.handlers.get(name);
      if (!handler.recover) continue;
      let alerts;
      try {
        alerts = await handler.recover(o.ctx);
      } catch (err) {
        o.logger.error({ handler: name, err: safeMessage(err) }, 'could not read the work recorded for this handler');
        continue;
      }
      for (const a of alerts) {
        if (a.continues && store.getRun(a.continues)) continue; // this store has the run that recorded it: resume() handles it
        if (store.listRuns({ fingerprint: a.fingerprint, handler: name, limit: 1 }).some((r) => r.startsAt === a.startsAt)) continue;
        const run = this.admission.createPlanningRun(handler, a, handler.target(a, o.ctx), 'auto', 'intent');
        if (!run) continue;
        o.logger.warn({ run: run.id, handler: name, alertname: a.alertname }, 'carrying on work another dbpilot instance recorded');
        await this.core.track(this.admission.planAndAct(run, handler, a, 'auto'));
      }
    }
  }
}
