/**
 * The on-call commands: plan, remediate, approve, audit. The acting ones (remediate, approve) open the
 * same store and run the same engine as the service, so locks, checks, audit and escalation are the
 * same whoever acts. The read-only ones (plan, audit) open nothing they do not read: no outbox, no
 * leader election, no warning about paging they do not do.
 *
 * Pages the acting commands queue are delivered by exactly one process: by the running service when
 * one shares the store (its dispatcher announces itself there), else by the command itself before
 * it exits. Every row is claimed before it is sent, so the two can never both send one.
 */
import { userInfo } from 'node:os';
import type { Command } from 'commander';
import Table from 'cli-table3';
import { loadConfig, type Config } from './config.js';
import { DbpilotError } from './errors.js';
import { createCliLogger, escapeControl } from './logger.js';
import { Runtime } from './runtime.js';
import { createRemediation, planOnly, type Remediation } from './remediation/index.js';
import { Outbox } from './remediation/outbox.js';
import { Store, type RunRow, type StepRow } from './store/store.js';

/** How long an acting command waits for its own pages to reach PagerDuty before it exits. */
const PAGE_WAIT_MS = 10_000;

function configOf(program: Command): Config {
  return loadConfig({ file: program.opts<{ config?: string }>().config }).config;
}

export async function withRuntime<T>(program: Command, fn: (runtime: Runtime) => Promise<T>): Promise<T> {
  const config = configOf(program);
  const runtime = new Runtime(config, createCliLogger(config.logLevel), { processMetrics: false });
  try {
    return await fn(runtime);
  } finally {
    await runtime.close();
  }
}

export async function withRemediation<T>(program: Command, fn: (r: Remediation, config: Config) => Promise<T>): Promise<T> {
  return withRuntime(program, async (runtime) => {
    const remediation = await createRemediation(runtime, { label: `cli:${userInfo().username}`, requireLease: false, announce: false });
    const service = Outbox.liveDispatcher(remediation.store);
    // Deliver our own pages only when no service does: two dispatchers never send a row twice (claims),
    // but the service's metrics and logs should show every page it can.
    if (!service) remediation.outbox.start();
    try {
      return await fn(remediation, runtime.config);
    } finally {
      await remediation.engine.idle();
      if (service) {
        const pending = remediation.store.outboxPending();
        if (pending > 0) process.stderr.write(`dbpilot: ${pending} page(s) waiting in the outbox are delivered by the running service (${service})\n`);
      } else {
        await Promise.race([remediation.outbox.flush(), new Promise((r) => setTimeout(r, PAGE_WAIT_MS).unref())]);
        const pending = remediation.store.outboxPending();
        if (pending > 0) {
          process.stderr.write(`dbpilot: ${pending} page(s) could not be delivered yet; they stay in the outbox and the service delivers them when it runs\n`);
        }
      }
      await remediation.close();
    }
  });
}

function withStore<T>(program: Command, fn: (store: Store) => T): T {
  const store = new Store(configOf(program).store.path, { readonly: true });
  try {
    return fn(store);
  } finally {
    store.close();
  }
}

function labelsFrom(o: { database?: string; server?: string; table?: string }): Record<string, string> {
  return { ...(o.database ? { datname: o.database } : {}), ...(o.server ? { server: o.server } : {}), ...(o.table ? { relname: o.table } : {}) };
}

const out = (line: string) => process.stdout.write(`${line}\n`);
/** Everything the store holds came from outside (alert labels, server answers): escaped before a terminal sees it. */
const show = (v: unknown) => escapeControl(String(v ?? ''));

export function printRun(run: RunRow, steps: StepRow[]): void {
  out(`run ${show(run.id)}  ${show(run.handler)}  ${show(run.status)}  target ${show(run.target)}`);
  if (run.reason) out(`  ${show(run.reason)}`);
  if (run.approvedBy) out(`  approved by ${show(run.approvedBy)}`);
  for (const s of steps) {
    out(`  [${show(s.status)}] ${show(s.name)}`);
    for (const line of s.command.split('\n')) out(`      ${show(line)}`);
    const check = s.check as { detail?: string } | null;
    if (check?.detail) out(`      check: ${show(check.detail)}`);
    if (s.error) out(`      error: ${show(s.error)}`);
  }
}

function positiveInt(name: string, value: string, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > max) {
    throw new DbpilotError('DBPILOT_BAD_ARGUMENT', `${name} must be a whole number from 0 to ${max} (got ${JSON.stringify(value)})${name === '--limit' ? '; page with --offset' : ''}`);
  }
  return n;
}

export function registerRemediationCommands(program: Command): void {
  program
    .command('plan <handler>')
    .description('show what a handler would do against the live system now, step by step, as the runbook commands; records nothing')
    .option('-d, --database <name>', 'limit to one database (the alert label datname)')
    .option('-s, --server <host:port>', 'the server the alert is about (default: the primary)')
    .option('-t, --table <[schema.]table>', 'the one table a handler acts on (vacuum-full; the alert label relname)')
    .option('--json', 'print JSON')
    .action(async (handler: string, o: { database?: string; server?: string; table?: string; json?: boolean }) => {
      await withRuntime(program, async (runtime) => {
        const p = await planOnly(runtime, handler, labelsFrom(o));
        if (o.json) {
          out(JSON.stringify(p, null, 2));
          return;
        }
        out(`${handler} on ${show(p.target)}: ${show(p.plan.summary)}`);
        if (p.plan.nothingToDo) return;
        if (p.plan.diagnoseOnly) {
          out('\ndiagnose only: dbpilot changes nothing; its page carries what it read (--json shows it)');
          return;
        }
        p.steps.forEach((s, i) => {
          out(`\n${i + 1}. ${show(s.name)}`);
          for (const line of s.command.split('\n')) out(`   ${show(line)}`);
        });
        if (p.plan.escalateAfter) out(`\nleft for a human: ${show(p.plan.escalateAfter)}`);
      });
    });

  program
    .command('remediate <handler>')
    .description('run a handler by hand through the engine (locks, audit, checks, escalation); without --yes only a dry-run')
    .option('-d, --database <name>', 'limit to one database')
    .option('-s, --server <host:port>', 'the server to act on (default: the primary)')
    .option('-t, --table <[schema.]table>', 'the one table a handler acts on (vacuum-full)')
    .option('-y, --yes', 'really act; without it the run is a dry-run')
    .action(async (handler: string, o: { database?: string; server?: string; table?: string; yes?: boolean }) => {
      await withRemediation(program, async (r) => {
        const run = await r.engine.runManual(handler, labelsFrom(o), o.yes ? 'manual' : 'dry-run');
        if (!run) throw new DbpilotError('DBPILOT_RUN_FAILED', 'the run could not be recorded');
        const final = r.store.getRun(run.id)!;
        printRun(final, r.store.steps(run.id));
        if (!o.yes) out('\n(dry-run: nothing was changed; add --yes to act)');
        process.exitCode = ['succeeded', 'dry_run'].includes(final.status) ? 0 : 1;
      });
    });

  program
    .command('approve <id>')
    .description('approve a run waiting in approve mode and carry it out here (recorded as approved by cli:<your user>)')
    .action(async (id: string) => {
      await withRemediation(program, async (r) => {
        const run = await r.engine.approve(id, `cli:${userInfo().username}`);
        printRun(run, r.store.steps(run.id));
        process.exitCode = run.status === 'succeeded' ? 0 : 1;
      });
    });

  program
    .command('audit [id]')
    .description('remediation runs, newest first, with their steps, outputs and checks (reads the store; changes nothing)')
    .option('--json', 'print JSON')
    .option('-n, --limit <n>', `how many runs (at most ${Store.MAX_LIST})`, '20')
    .option('--offset <n>', 'skip this many of the newest runs (the next page)', '0')
    .option('--status <status>', 'only runs with this status')
    .option('--alertname <name>', 'only runs for this alert')
    .action((id: string | undefined, o: { json?: boolean; limit: string; offset: string; status?: string; alertname?: string }) => {
      const limit = positiveInt('--limit', o.limit, Store.MAX_LIST);
      const offset = positiveInt('--offset', o.offset, Number.MAX_SAFE_INTEGER);
      withStore(program, (store) => {
        const filter = { ...(o.status ? { status: o.status } : {}), ...(o.alertname ? { alertname: o.alertname } : {}) };
        const runs = id ? [store.getRun(id)].filter((x): x is RunRow => x !== null) : store.listRuns({ ...filter, limit, offset });
        if (id && runs.length === 0) throw new DbpilotError('DBPILOT_RUN_NOT_FOUND', `no remediation run ${id}`);
        if (o.json) {
          // JSON leaves DEL and C1 controls (U+007F–U+009F) raw, and a terminal acts on them: escape them too.
          out(JSON.stringify(runs.map((run) => ({ ...run, steps: store.steps(run.id) })), null, 2).replace(/[\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`));
          return;
        }
        if (id) {
          printRun(runs[0]!, store.steps(runs[0]!.id));
          return;
        }
        const t = new Table({ style: { head: [], border: [] }, head: ['Created', 'Run', 'Handler', 'Alert', 'Target', 'Mode', 'Status', 'Reason'] });
        for (const run of runs) t.push([run.createdAt, run.id, run.handler, run.alertname, run.target, run.mode, run.status, (run.reason ?? '').slice(0, 60)].map(show));
        out(t.toString());
        const total = store.countRuns(filter);
        if (offset + runs.length < total) {
          out(`showing ${runs.length === 0 ? 0 : offset + 1}–${offset + runs.length} of ${total} runs; next page: --offset ${offset + runs.length}`);
        }
      });
    });
}
