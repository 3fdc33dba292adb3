/**
 * Runbook scenario 1, step 5 — Restore the failed primary: bring the old primary back as a replica of
 * the new one. Only ever on approval (`dbpilot plan rebuild-replica` shows it; `dbpilot remediate
 * rebuild-replica --yes` or an approval carries it out): what it does to the old primary's data is
 * not reversible, and whether that data holds writes the new primary never received is for a DBA to
 * judge. dbpilot does the part that is safe to do from outside — keeping the old pod fenced — and
 * lists, as the runbook's commands with this cluster's names, what is left to do by hand.
 */
import { UnsafeToActError } from '../../errors.js';
import type { AlertInfo, Handler, HandlerContext, Plan, Step } from '../handler.js';
import { namespaceOf } from '../runbook.js';
import { handlerOptions } from './options.js';
import { z } from 'zod';

export const rebuildReplicaOptions = handlerOptions({});

const planSchema = z.strictObject({
  oldPrimary: z.string(),
  newPrimary: z.string(),
  oldPod: z.string().nullable(),
  newPod: z.string().nullable(),
  manual: z.array(z.string()),
});
export type RebuildPlan = z.output<typeof planSchema>;

export function rebuildReplicaHandler(): Handler<RebuildPlan> {
  return {
    name: 'rebuild-replica',
    team: 'lead-dba',
    planSchema,
    approvalOnly: true,
    target: () => 'postgres',

    async plan(_alert: AlertInfo, ctx: HandlerContext): Promise<Plan<RebuildPlan>> {
      const { intent } = await ctx.intents.read();
      const empty = { oldPrimary: '-', newPrimary: '-', oldPod: null, newPod: null, manual: [] };
      if (!intent || intent.phase !== 'done') {
        return { summary: intent ? `the failover from ${intent.oldPrimary} is ${intent.phase}, not done: rebuild after it` : 'no failover was recorded: there is no old primary to rebuild', data: empty, nothingToDo: true };
      }
      const snapshot = await ctx.topology.observe(0);
      const old = snapshot.members.find((m) => m.server === intent.oldPrimary);
      const oldServer = ctx.cluster.all.find((s) => s.server === intent.oldPrimary);
      const newServer = ctx.cluster.all.find((s) => s.server === intent.targetPrimary);
      const data: RebuildPlan = { oldPrimary: intent.oldPrimary, newPrimary: intent.targetPrimary, oldPod: oldServer?.pod ?? null, newPod: newServer?.pod ?? null, manual: [] };
      if (old?.up && old.inRecovery === true) return { summary: `${intent.oldPrimary} already runs as a replica (upstream ${old.upstream ?? 'unknown'})`, data, nothingToDo: true };
      if (old?.up && old.inRecovery === false) {
        throw new UnsafeToActError(`${intent.oldPrimary} is up and accepts writes beside ${intent.targetPrimary} (split brain): stop it first; what it wrote since the failover is for a DBA to judge`);
      }
      const ns = namespaceOf(ctx.config);
      const pod = data.oldPod ?? '<old-primary-pod>';
      const [host, port] = [intent.targetPrimary.slice(0, intent.targetPrimary.lastIndexOf(':')), intent.targetPrimary.slice(intent.targetPrimary.lastIndexOf(':') + 1)];
      data.manual = [
        `kubectl exec -it ${pod} -n ${ns} -- pg_ctl stop -m fast   # if it runs at all`,
        `kubectl exec -it ${pod} -n ${ns} -- sh -c 'mv "$PGDATA" "$PGDATA.before-failover-$(date +%Y%m%d%H%M)"'   # keep the old data until a DBA has looked at it`,
        `kubectl exec -it ${pod} -n ${ns} -- pg_basebackup -h ${host} -p ${port} -U replicator -D "$PGDATA" -R -X stream -c fast`,
        `kubectl delete pod ${pod} -n ${ns}   # the StatefulSet recreates it; it starts as a standby of ${intent.targetPrimary}`,
        'or, on managed RDS: follow docs/disaster-recovery/restore.md',
      ];
      return {
        summary: `bring ${intent.oldPrimary} back as a replica of ${intent.targetPrimary} (runbook step 5)`,
        data,
        escalateAfter: `rebuilding ${intent.oldPrimary}'s data as a standby of ${intent.targetPrimary} is done by hand: ${data.manual.join(' ; ')}`,
      };
    },

    steps(plan: RebuildPlan, ctx: HandlerContext): Step[] {
      const kube = ctx.kube;
      if (!kube || !plan.oldPod) return [];
      const pod = plan.oldPod;
      return [
        {
          name: 'keepOldPrimaryFenced',
          command: `kubectl label pod ${pod} role=replica -n ${namespaceOf(ctx.config)} --overwrite`,
          idempotent: true,
          async run(_prior, sc) {
            sc.assertCanAct();
            await kube.labelPod(pod, { role: 'replica' });
            return { pod };
          },
          async check() {
            const p = await kube.readPod(pod);
            return p.labels.role === 'replica' ? { ok: true, detail: `${pod} is labelled role=replica` } : { ok: false, detail: `${pod} has role=${p.labels.role ?? '(none)'}` };
          },
        },
      ];
    },
  };
}
