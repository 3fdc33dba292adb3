/**
 * The dbpilot command. The service (`serve`) and the on-call tools share one configuration loader
 * and one runtime, so what `status` shows is what `/metrics` exports.
 */
import { Command, Option } from 'commander';
import closeWithGrace from 'close-with-grace';
import Table from 'cli-table3';
import { loadConfig, redactConfig, type Config } from './config.js';
import { DbpilotError } from './errors.js';
import { createCliLogger, createLogger, type Logger } from './logger.js';
import { Runtime, VERSION } from './runtime.js';
import { startService } from './server.js';
import { gatherStatus, type ClusterStatus } from './status.js';

interface GlobalOpts {
  config?: string;
}

function load(opts: GlobalOpts): Config {
  return loadConfig({ file: opts.config }).config;
}

/** CLI tools log to stderr, and only warnings, so stdout stays clean for tables and JSON. */
function quietLogger(config: Config): Logger {
  return createCliLogger(config.logLevel);
}

async function serve(opts: GlobalOpts): Promise<void> {
  const { config, source } = loadConfig({ file: opts.config });
  const logger = createLogger(config.logLevel);
  logger.info({ config: source ?? 'defaults', version: VERSION }, 'configuration loaded');
  const { failpointsArmed } = await import('./failpoints.js');
  if (failpointsArmed().length) logger.warn({ failpoints: failpointsArmed() }, 'failpoints armed (DBPILOT_FAILPOINTS): this process kills itself there; tests only');
  if (!config.webhook.token && !config.webhook.basicAuth) {
    logger.warn('webhook.token is not set: the Alertmanager webhook refuses every request');
  }
  const { checkStartup } = await import('./startup.js');
  await checkStartup(config);
  const { prepareService } = await import('./service.js');
  const service = await startService(config, logger, (runtime) => prepareService(runtime));
  closeWithGrace({ delay: 15_000, logger: { error: (m: unknown) => logger.error(m) } }, async ({ signal, err }) => {
    if (err) logger.error({ err: (err as Error).message }, 'fatal error, shutting down');
    else logger.info({ signal }, 'shutting down');
    await service.close();
  });
}

function printStatus(s: ClusterStatus): void {
  const t = new Table({
    style: { head: [], border: [] },
    head: ['Member', 'Server', 'Role', 'State', 'WAL receiver', 'Lag (bytes)', 'Lag (s)', 'Long-running', 'Oldest (s)', 'Disk used'],
  });
  for (const m of s.postgres) {
    // The observed role; the configured one too when they differ (after a failover).
    const role = m.role === m.configuredRole ? m.role : `${m.role} (configured ${m.configuredRole})`;
    t.push([
      m.pod ?? '',
      m.server,
      role + (m.inRecovery === null ? '' : m.inRecovery ? ' (standby)' : ' (read-write)'),
      m.up ? (m.state ?? 'running') : 'DOWN',
      m.inRecovery ? `${m.receiverStatus ?? 'none'}${m.upstream ? ` from ${m.upstream}` : ''}` : '',
      m.lagBytes ?? '',
      m.lagSeconds === null ? '' : m.lagSeconds.toFixed(1),
      m.longRunningQueries ?? '',
      m.oldestQuerySeconds === null ? '' : m.oldestQuerySeconds.toFixed(0),
      m.diskUsedRatio === null ? '' : `${(m.diskUsedRatio * 100).toFixed(1)} %`,
    ]);
  }
  process.stdout.write(`${t.toString()}\n`);
  if (s.topology.splitBrain) {
    process.stdout.write(
      `WARNING: split brain: ${s.topology.primaries.join(', ')} are all out of recovery (writable). dbpilot does not act on it; page em-dba and lead-dba (PostgresSplitBrain).\n`,
    );
  } else if (s.topology.primary === null) {
    process.stdout.write('WARNING: no primary: no server is up and out of recovery.\n');
  }
  const r = s.redis;
  const mem = r.memoryUsedBytes === null ? '' : `${(r.memoryUsedBytes / 1048576).toFixed(1)} MiB${r.memoryMaxBytes ? ` of ${(r.memoryMaxBytes / 1048576).toFixed(0)} MiB` : ''}`;
  process.stdout.write(`Redis ${r.target}: ${r.up ? 'up' : 'DOWN'}${mem ? `, memory ${mem}` : ''}${r.rejectedConnections ? `, rejected connections ${r.rejectedConnections}` : ''}\n`);
  const failed = s.collectors.filter((c) => !c.success);
  for (const c of failed) process.stdout.write(`collector ${c.name} failed: ${c.errors.join('; ')}\n`);
}

export function buildProgram(): Command {
  const program = new Command('dbpilot')
    .description('PostgreSQL + Redis failure runbook as software: exporter, alert receiver and auto-remediator')
    .version(VERSION)
    .addOption(new Option('-c, --config <file>', 'configuration file (else $DBPILOT_CONFIG, else ./dbpilot.yaml, else defaults)'))
    .showHelpAfterError();

  program
    .command('serve')
    .description('run the service: /metrics, /health, the Alertmanager webhook and the remediation engine')
    .action(async () => serve(program.opts<GlobalOpts>()));

  program
    .command('check-config')
    .description('validate the configuration and print it with secrets redacted; exit 2 naming the bad field when invalid')
    .option('--json', 'print JSON instead of YAML')
    .action(async (o: { json?: boolean }) => {
      const { config, source } = loadConfig({ file: program.opts<GlobalOpts>().config });
      // Every check serve makes before it starts: what passes here starts.
      const { checkStartup } = await import('./startup.js');
      await checkStartup(config);
      const { stringify } = await import('yaml');
      const red = redactConfig(config);
      process.stdout.write(o.json ? `${JSON.stringify(red, null, 2)}\n` : `# ${source ?? 'defaults (no configuration file)'}: valid\n${stringify(red)}`);
    });

  program
    .command('status')
    .description('the cluster right now, like `patronictl list`: each server, role, lag, long-running queries, disk; Redis')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const config = load(program.opts<GlobalOpts>());
      const runtime = new Runtime(config, quietLogger(config), { processMetrics: false });
      try {
        const s = await gatherStatus(runtime);
        if (o.json) process.stdout.write(`${JSON.stringify(s, null, 2)}\n`);
        else printStatus(s);
        // Split brain is never healthy, even with every server up.
        process.exitCode = s.postgres.every((m) => m.up) && s.redis.up && !s.topology.splitBrain ? 0 : 1;
      } finally {
        await runtime.close();
      }
    });

  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  const { registerRemediationCommands } = await import('./cli-remediation.js');
  registerRemediationCommands(program);
  (await import('./cli-backup.js')).registerBackupCommands(program);
  (await import('./cli-prisma.js')).registerPrismaCommands(program);
  (await import('./cli-report.js')).registerReportCommands(program);
  (await import('./cli-drill.js')).registerDrillCommands(program);
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof DbpilotError) {
      process.stderr.write(`dbpilot: ${err.message} [${err.code}]\n`);
      process.exitCode = 2;
      return;
    }
    throw err;
  }
}
