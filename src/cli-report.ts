/**
 * `dbpilot report <run-id> [--out FILE.html]`: the timeline of one recorded run as a self-contained
 * HTML page (src/report/timeline.ts) for the post-incident review. Reads the store read-only, like
 * `audit`: it creates, migrates and writes nothing there. The page goes to --out, else to
 * ./dbpilot-report-<run-id>.html; either way the path written is printed on stdout (one line, so a
 * script can open it). `--out -` writes the page itself to stdout instead (from a pod whose root file
 * system is read-only: `kubectl exec … -- dbpilot report <id> --out - > report.html`). An unknown
 * run id exits 2 naming it.
 */
import type { Command } from 'commander';
import { loadConfig } from './config.js';
import { DbpilotError } from './errors.js';
import { escapeControl } from './logger.js';
import { writeReportFile } from './report/file.js';
import { renderTimeline } from './report/timeline.js';
import { Store } from './store/store.js';

export function registerReportCommands(program: Command): void {
  program
    .command('report <run-id>')
    .description('write the timeline of a recorded run (header, chart of the steps over time, steps with commands and checks) as one self-contained HTML page; reads the store, changes nothing')
    .option('-o, --out <file.html>', 'where to write the page (default ./dbpilot-report-<run-id>.html); - writes the page to stdout')
    .action((id: string, o: { out?: string }) => {
      const config = loadConfig({ file: program.opts<{ config?: string }>().config }).config;
      const store = new Store(config.store.path, { readonly: true });
      try {
        const run = store.getRun(id);
        if (!run) throw new DbpilotError('DBPILOT_RUN_NOT_FOUND', `no remediation run ${escapeControl(JSON.stringify(id))} in the store at ${config.store.path}`);
        const html = renderTimeline(run, store.steps(run.id), { now: new Date() });
        if (o.out === '-') {
          process.stdout.write(html);
          return;
        }
        // The default name comes from the store's own id (a UUID), never from the argument as typed.
        const file = writeReportFile(o.out ?? `dbpilot-report-${run.id}.html`, html);
        process.stdout.write(`${file}\n`);
      } finally {
        store.close();
      }
    });
}
