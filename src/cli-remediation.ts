/**
 * The on-call commands: plan, remediate, approve, audit. They open the same store and run the same
 * engine as the service, so locks, checks, audit and escalation are the same whoever acts.
 */
import { userInfo } from 'node:os';
import type { Command } from 'commander';
import Table from 'cli-table3';
import { loadConfig, type Config } from './config.js';
import { DbpilotError } from './errors.js';
import { createLogger } from './logger.js';
import { Runtime } from './runtime.js';
import { createRemediation, type Remediation } from './remediation/index.js';
import type { RunRow } from './store/store.js';

async function withRemediation<T>(program: Command, fn: (r: Remediation, config: Config) => Promise<T>): Promise<T> {
  const { config } = loadConfig({ file: program.opts<{ config?: string }>().config });
  const logger = createLogger(config.logLevel === 'info' ? 'warn' : config.logLevel, process.stderr as never);
  const runtime = new Runtime(config, logger, { processMetrics: false });
  const remediation = await createRemediation(runtime, { label: `cli:${userInfo().username}`, requireLease: false });
  remediation.outbox.start();
  try {
    return await fn(remediation, config);
  } finally {
    // Give queued pages a moment to go out; whatever is left is delivered by the service's outbox.
    await Promise.race([remediation.outbox.flush(), new Promise((r) => setTimeout(r, 5000).unref())]);
    await remediation.close();
    await runtime.close();
  }
}

function labelsFrom(o: { database?: string; server?: string }): Record<string, string> {
  return { ...(o.database ? { datname: o.database } : {}), ...(o.server ? { server: o.server } : {}) };
}

function printRun(run: RunRow, r: Remediation): void {
  process.stdout.write(`run ${run.id}  ${run.handler}  ${run.status}  target ${run.target}\n`);
  if (run.reason) process.stdout.write(`  ${run.reason}\n`);
  for (const s of r.store.steps(run.id)) {
    process.stdout.write(`  [${s.status}] ${s.name}\n`);
    for (const line of s.command.split('\n')) process.stdout.write(`      ${line}\n`);
    const check = s.check as { detail?: string } | null;
    if (check?.detail) process.stdout.write(`      check: ${check.detail}\n`);
    if (s.error) process.stdout.write(`      error: ${s.error}\n`);
  }
}

export function registerRemediationCommands(program: Command): void {
  program
    .command('plan <handler>')
    .description('show what a handler would do against the live system now, step by step, as the runbook commands')
    .option('-d, --database <name>', 'limit to one database (the alert label datname)')
    .option('-s, --server <host:port>', 'the server the alert is about (default: the primary)')
    .option('--json', 'print JSON')
    .action(async (handler: string, o: { database?: string; server?: string; json?: boolean }) => {
      await withRemediation(program, async (r) => {
        const p = await r.engine.planOnly(handler, labelsFrom(o));
        if (o.json) {
          process.stdout.write(`${JSON.stringify(p, null, 2)}\n`);
          return;
        }
        process.stdout.write(`${handler} on ${p.target}: ${p.plan.summary}\n`);
        if (p.plan.nothingToDo) return;
        p.steps.forEach((s, i) => {
          process.stdout.write(`\n${i + 1}. ${s.name}\n`);
          for (const line of s.command.split('\n')) process.stdout.write(`   ${line}\n`);
        });
        if (p.plan.escalateAfter) process.stdout.write(`\nleft for a human: ${p.plan.escalateAfter}\n`);
      });
    });

  program
    .command('remediate <handler>')
    .description('run a handler by hand through the engine (locks, audit, checks, escalation); without --yes only a dry-run')
    .option('-d, --database <name>', 'limit to one database')
    .option('-s, --server <host:port>', 'the server to act on (default: the primary)')
    .option('-y, --yes', 'really act; without it the run is a dry-run')
    .action(async (handler: string, o: { database?: string; server?: string; yes?: boolean }) => {
      await withRemediation(program, async (r) => {
        const run = await r.engine.runManual(handler, labelsFrom(o), o.yes ? 'manual' : 'dry-run');
        if (!run) throw new DbpilotError('DBPILOT_RUN_FAILED', 'the run could not be recorded');
        printRun(r.store.getRun(run.id)!, r);
        if (!o.yes) process.stdout.write('\n(dry-run: nothing was changed; add --yes to act)\n');
        process.exitCode = ['succeeded', 'dry_run'].includes(r.store.getRun(run.id)!.status) ? 0 : 1;
      });
    });

  program
    .command('approve <id>')
    .description('approve a run waiting in approve mode and carry it out')
    .action(async (id: string) => {
      await withRemediation(program, async (r) => {
        const run = await r.engine.approve(id, userInfo().username);
        printRun(run, r);
        process.exitCode = run.status === 'succeeded' ? 0 : 1;
      });
    });

  program
    .command('audit [id]')
    .description('remediation runs, newest first, with their steps, outputs and checks')
    .option('--json', 'print JSON')
    .option('-n, --limit <n>', 'how many runs', '20')
    .option('--status <status>', 'only runs with this status')
    .option('--alertname <name>', 'only runs for this alert')
    .action(async (id: string | undefined, o: { json?: boolean; limit: string; status?: string; alertname?: string }) => {
      await withRemediation(program, async (r) => {
        const runs = id
          ? [r.store.getRun(id)].filter((x): x is RunRow => x !== null)
          : r.store.listRuns({ limit: Number(o.limit), ...(o.status ? { status: o.status } : {}), ...(o.alertname ? { alertname: o.alertname } : {}) });
        if (id && runs.length === 0) throw new DbpilotError('DBPILOT_RUN_NOT_FOUND', `no remediation run ${id}`);
        if (o.json) {
          process.stdout.write(`${JSON.stringify(runs.map((run) => ({ ...run, steps: r.store.steps(run.id) })), null, 2)}\n`);
          return;
        }
        if (id) {
          printRun(runs[0]!, r);
          return;
        }
        const t = new Table({ style: { head: [], border: [] }, head: ['Created', 'Run', 'Handler', 'Alert', 'Target', 'Mode', 'Status', 'Reason'] });
        for (const run of runs) t.push([run.createdAt, run.id, run.handler, run.alertname, run.target, run.mode, run.status, (run.reason ?? '').slice(0, 60)]);
        process.stdout.write(`${t.toString()}\n`);
      });
    });
}
