/**
 * `dbpilot migrate-reset <database>`: the runbook's scenario 4 step 4, `prisma migrate reset --force`,
 * "non-production only". It exists only here: no alert, webhook or configuration can start it.
 *
 * Refused — before anything is read — unless the configuration's `environment` is staging or
 * development. Then it shows its plan (the runbook's command, the SQL dbpilot runs in its place, how
 * `migrate deploy` is re-run) and acts only when the database's name is typed on a terminal or given
 * again with `--confirm <database>`; anything else changes nothing. It runs through the engine (lock,
 * audit before and after each step, checks, escalation) like `dbpilot remediate`.
 */
import { processIO, type CliIO } from './cli-io.js';
import type { Command } from 'commander';
import { loadConfig } from './config.js';
import { DbpilotError } from './errors.js';
import { escapeControl } from './logger.js';
import { printRun, withRemediation, withRuntime } from './cli-remediation.js';
import { planWith } from './remediation/index.js';
import { RefusedInProductionError, prismaMigrateResetProcedure } from './remediation/handlers/prisma-migration.js';
import { databaseName, identifier } from './remediation/handlers/options.js';

/** What the command prints to and asks on (src/cli-io.ts). */
export type PrismaIO = CliIO;

const show = (v: unknown) => escapeControl(String(v ?? ''));

export interface ResetOptions {
  schema?: string;
  server?: string;
  confirm?: string;
  dryRun?: boolean;
}

/**
 * Whether the person means it: `--confirm` naming the database, or the database's name typed on a
 * terminal. No terminal and no --confirm is a refusal (a pipe is not a person).
 */
export async function confirmReset(io: PrismaIO, database: string, confirm: string | undefined): Promise<boolean> {
  if (confirm !== undefined) {
    if (confirm === database) return true;
    throw new DbpilotError('DBPILOT_NOT_CONFIRMED', `--confirm ${JSON.stringify(confirm)} does not name the database ${database}: nothing was changed`);
  }
  if (!io.interactive) throw new DbpilotError('DBPILOT_NOT_CONFIRMED', `there is no terminal to confirm on: run again with --confirm ${database} to reset it; nothing was changed`);
  const answer = (await io.ask(`\nType the database's name (${database}) to drop and recreate its schema, anything else cancels: `)).trim();
  if (answer === database) return true;
  io.out('Cancelled: nothing was changed.');
  return false;
}

export function registerPrismaCommands(program: Command, io: PrismaIO = processIO()): void {
  program
    .command('migrate-reset <database>')
    .description(
      'runbook scenario 4 step 4, prisma migrate reset, NON-PRODUCTION ONLY (environment: staging|development): drop and recreate the datasource schema (owner and grants kept), re-run migrate deploy as the service runs it, check every migration finished; asks for the database name (or --confirm)',
    )
    .option('--schema <name>', "the datasource's ?schema= (default: the owning service's, else public)")
    .option('-s, --server <host:port>', 'the server (default: the primary)')
    .option('--confirm <database>', 'confirm without a terminal by naming the database again')
    .option('--dry-run', 'show the plan and the commands; change nothing')
    .action(async (database: string, o: ResetOptions) => {
      const config = loadConfig({ file: program.opts<{ config?: string }>().config }).config;
      // First of all, before anything is read or connected: production never.
      if (config.environment === 'production') throw new RefusedInProductionError(`prisma migrate reset of ${database}`);
      if (!databaseName.safeParse(database).success) throw new DbpilotError('DBPILOT_BAD_ARGUMENT', `${JSON.stringify(database)} is not a database name`);
      if (o.schema !== undefined && !identifier.safeParse(o.schema).success) throw new DbpilotError('DBPILOT_BAD_ARGUMENT', `--schema ${JSON.stringify(o.schema)} is not a plain SQL identifier`);
      const labels: Record<string, string> = { datname: database, ...(o.schema ? { schema: o.schema } : {}), ...(o.server ? { server: o.server } : {}) };
      const procedure = prismaMigrateResetProcedure();
      await withRuntime(program, async (runtime) => {
        const p = await planWith(runtime, procedure, labels);
        io.out(`migrate-reset on ${show(p.target)} (environment ${config.environment}): ${show(p.plan.summary)}`);
        p.steps.forEach((s, i) => {
          io.out(`\n${i + 1}. ${show(s.name)}`);
          for (const line of s.command.split('\n')) io.out(`   ${show(line)}`);
        });
      });
      if (o.dryRun) {
        io.out('\n(dry-run: nothing was changed)');
        return;
      }
      if (!(await confirmReset(io, database, o.confirm))) {
        process.exitCode = 1;
        return;
      }
      await withRemediation(program, async (r) => {
        const run = await r.engine.runCliOnly(procedure, labels);
        if (!run) throw new DbpilotError('DBPILOT_RUN_FAILED', 'the run could not be recorded');
        const final = r.store.getRun(run.id)!;
        io.out('');
        printRun(final, r.store.steps(run.id));
        process.exitCode = final.status === 'succeeded' ? 0 : 1;
      });
    });
}
