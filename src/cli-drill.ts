/**
 * `dbpilot drill <scenario>`: a game-day drill on a disposable sandbox of the drill's own (see
 * src/drill/drill.ts), or on a staging target named with --target-config FILE --i-know-this-is-staging
 * (src/drill/staging.ts). Without --target-config it never reads the user's configuration and never
 * touches anything but its sandbox.
 */
import type { Command } from 'commander';
import Table from 'cli-table3';
import { Cleanup, onSignals } from './drill/cleanup.js';
import type { StepResult, TrialResult } from './drill/drill.js';
import type { Config } from './config.js';
import { DRILLS, isDrill, LATER_DRILLS, STAGING_DRILLS } from './drill/names.js';

import { escapeControl } from './logger.js';

const fmtMs = (v: number | null | undefined) => (v === null || v === undefined ? '—' : v >= 10_000 ? `${(v / 1000).toFixed(1)} s` : `${v} ms`);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : Math.round((s[m - 1]! + s[m]!) / 2);
}

export interface Row {
  what: string;
  /** Per trial, in order; null where the trial has no such row. */
  ms: (number | null)[];
  /** Per trial: passed / failed / not applicable. */
  ok: (boolean | null)[];
}

/** The table's rows over every trial: detection, each step, total time to recover, each check. */
export function summaryRows(trials: TrialResult[]): Row[] {
  const rows: Row[] = [];
  // --with-prometheus: the alert's way through Prometheus and Alertmanager, from the break.
  const since = (t: TrialResult, at: string | null | undefined) => (at && t.alertPath.brokeAt ? Date.parse(at) - Date.parse(t.alertPath.brokeAt) : null);
  const viaPrometheus = trials.some((t) => t.alertPath?.via === 'prometheus');
  if (viaPrometheus) {
    rows.push({ what: 'Prometheus: alert firing (break → FiredAt)', ms: trials.map((t) => since(t, t.alertPath.firingAt)), ok: trials.map((t) => (t.alertPath.via === 'prometheus' ? !!t.alertPath.firingAt : null)) });
    rows.push({ what: "Alertmanager: webhook arrival (break → dbpilot's webhook)", ms: trials.map((t) => since(t, t.alertPath.webhookAt)), ok: trials.map((t) => (t.alertPath.via === 'prometheus' ? !!t.alertPath.webhookAt : null)) });
  }
  rows.push({ what: viaPrometheus ? 'detection (break → run created)' : 'detection (alert → run created)', ms: trials.map((t) => t.detectionMs), ok: trials.map((t) => t.runId !== null) });
  rows.push({ what: 'plan (run created → first step)', ms: trials.map((t) => t.planMs), ok: trials.map(() => null) });
  const names: string[] = [];
  for (const t of trials) for (const s of t.steps) if (!names.includes(s.name)) names.push(s.name);
  for (const n of names) {
    const per = trials.map((t) => t.steps.find((s) => s.name === n));
    rows.push({ what: `step ${n}`, ms: per.map((s) => s?.durationMs ?? null), ok: per.map((s) => (s ? s.status === 'done' && s.checkOk !== false : null)) });
  }
  const expected = trials[0]?.expectedRunStatus ?? 'succeeded';
  rows.push({
    what: expected === 'succeeded' ? 'total time to recover (break → run finished)' : `run ${expected} (break → run finished)`,
    ms: trials.map((t) => t.recoveryMs),
    ok: trials.map((t) => t.runStatus === t.expectedRunStatus),
  });
  const measured: string[] = [];
  for (const t of trials) for (const m of t.measured) if (!measured.includes(m.name)) measured.push(m.name);
  for (const n of measured) {
    const per = trials.map((t) => t.measured.find((m) => m.name === n));
    rows.push({ what: n, ms: per.map((m) => m?.ms ?? null), ok: per.map((m) => m?.ok ?? false) });
  }
  const checks: string[] = [];
  for (const t of trials) for (const c of t.checks) if (!checks.includes(c.name)) checks.push(c.name);
  for (const c of checks) {
    rows.push({ what: `check: ${c}`, ms: trials.map(() => null), ok: trials.map((t) => t.checks.find((x) => x.name === c)?.ok ?? false) });
  }
  if (trials.some((t) => t.target === 'staging' || t.cleanupFailures?.length)) {
    rows.push({ what: 'teardown: everything the drill made is undone', ms: trials.map(() => null), ok: trials.map((t) => !t.cleanupFailures?.length) });
  }
  rows.push({ what: 'every check passed', ms: trials.map(() => null), ok: trials.map((t) => t.recovered) });
  return rows;
}

function printTable(scenario: string, trials: TrialResult[]): string {
  const rows = summaryRows(trials);
  const many = trials.length > 1;
  const t = new Table({ style: { head: [], border: [] }, head: many ? ['', 'median', 'worst', 'passed'] : ['', 'time', 'passed'] });
  for (const r of rows) {
    const times = r.ms.filter((x): x is number => x !== null);
    const judged = r.ok.filter((x): x is boolean => x !== null);
    const passed = judged.length === 0 ? '—' : many ? `${judged.filter(Boolean).length}/${judged.length}` : judged[0] ? 'yes' : 'NO';
    if (many) t.push([r.what, times.length ? fmtMs(median(times)) : '', times.length ? fmtMs(Math.max(...times)) : '', passed]);
    else t.push([r.what, times.length ? fmtMs(times[0]) : '', passed]);
  }
  const ok = trials.every((x) => x.recovered);
  const head = `drill ${scenario}${trials[0]?.target === 'staging' ? ' on the staging target' : ''}: ${trials.length} trial${many ? 's' : ''}, ${ok ? 'recovered' : 'RECOVERY FAILED'}${trials.find((x) => !x.recovered)?.reason ? ` (${trials.find((x) => !x.recovered)!.reason})` : ''}\n`;
  return `${escapeControl(head.trimEnd())}\n${t.toString()}\n`;
}

/** Live progress on stderr: an updating step list on a TTY, plain lines otherwise. */
function progressWriter(): { say: (l: string) => void; step: (s: StepResult) => void } {
  const tty = process.stderr.isTTY === true;
  let open: string | null = null;
  // Step details and run reasons carry text from the world (query text, API answers): never let it drive the terminal.
  const write = (s: string) => process.stderr.write(s);
  const endOpen = () => {
    if (open !== null) write('\n');
    open = null;
  };
  return {
    say: (l) => {
      endOpen();
      write(`${escapeControl(l)}\n`);
    },
    step: (s) => {
      const line = `  ${s.status === 'running' ? '…' : s.status === 'done' && s.checkOk !== false ? '✓' : '✗'} ${s.name}${s.status === 'running' ? '' : ` ${s.status} in ${fmtMs(s.durationMs)}${s.detail ? ` — ${escapeControl(s.detail)}` : ''}`}`;
      if (!tty) return void write(`step ${s.name} ${s.status}${s.status === 'running' ? '' : ` ${fmtMs(s.durationMs)}`}\n`);
      if (open === s.name) write(`\r\x1b[2K${line}`);
      else {
        endOpen();
        write(line);
      }
      open = s.status === 'running' ? s.name : null;
      if (open === null) write('\n');
    },
  };
}

export function registerDrillCommands(program: Command): void {
  program
    .command('drill')
    .argument('<scenario>', `one of ${DRILLS.join(', ')}`)
    .description(
      `game-day drill: builds a disposable sandbox (PostgreSQL primary + streaming replica, Redis, Kubernetes and PagerDuty stand-ins) from this machine's binaries, breaks it as the scenario says, lets dbpilot (auto mode) recover it, verifies recovery and tears everything down. Drills in this build: ${DRILLS.join(', ')}${LATER_DRILLS.length ? `; ${LATER_DRILLS.join(', ')} come later` : ''}`,
    )
    .option('--json', 'print the results as JSON')
    .option('--trials <n>', 'run the drill N times, each on a fresh sandbox (median and worst per row)', '1')
    .option('--target-config <file>', `drill a staging target described by this dbpilot configuration instead of the sandbox (only ${STAGING_DRILLS.join(', ')}; the file must say environment: staging; needs --i-know-this-is-staging)`)
    .option('--i-know-this-is-staging', 'confirms that --target-config names a staging system the drill may break')
    .option('--with-prometheus', "the alert goes through real Prometheus (scrape and evaluation every 1 s, alerts/dbpilot.rules.yml) and Alertmanager (alerts/alertmanager.example.yml pointed at the sandbox) instead of being posted by the drill; PROMETHEUS / ALERTMANAGER name the binaries (default prometheus, prometheus-alertmanager on PATH); without them the drill says so and posts the alert itself")
    .option('--report <file.html>', "write each trial's run timeline as a self-contained page (as `dbpilot report` does); with --trials N, <file>-<trial>.html")
    .action(async (scenario: string, o: { json?: boolean; trials: string; targetConfig?: string; iKnowThisIsStaging?: boolean; report?: string; withPrometheus?: boolean }) => {
      const refuse = (why: string) => {
        process.stderr.write(`dbpilot drill: ${escapeControl(why)}\n`);
        process.exitCode = 2;
      };
      if (o.iKnowThisIsStaging && o.targetConfig === undefined) return refuse('--i-know-this-is-staging confirms a --target-config, and none was given: without one the drill runs on its own sandbox');
      if (!isDrill(scenario)) {
        const later = (LATER_DRILLS as readonly string[]).includes(scenario) ? ` (${scenario} comes in a later build)` : '';
        process.stderr.write(`dbpilot drill: unknown scenario ${JSON.stringify(scenario)}${later}; drills in this build: ${DRILLS.join(', ')}\n`);
        process.exitCode = 2;
        return;
      }
      const trials = Number(o.trials);
      if (!Number.isInteger(trials) || trials < 1 || trials > 50) {
        process.stderr.write('dbpilot drill: --trials must be a whole number from 1 to 50\n');
        process.exitCode = 2;
        return;
      }
      // The sandbox (servers, stand-ins) is loaded only when a drill runs, not by every dbpilot command.
      const { runTrial } = await import('./drill/drill.js');
      let staging: Config | undefined;
      if (o.targetConfig !== undefined) {
        if (o.withPrometheus) return refuse("--with-prometheus drills the alert path on the sandbox's own Prometheus and Alertmanager; on a staging target the drill posts the alert to its dbpilot itself");
        const { DrillRefused, loadStagingTarget } = await import('./drill/staging.js');
        try {
          staging = loadStagingTarget(scenario, o.targetConfig, o.iKnowThisIsStaging === true);
        } catch (err) {
          if (err instanceof DrillRefused) return refuse(err.message);
          throw err;
        }
      }
      const progress = progressWriter();
      const cleanup = new Cleanup();
      const offSignals = onSignals(cleanup, (l) => process.stderr.write(`\ndbpilot drill: ${l}\n`), { staging: staging !== undefined });
      const results: TrialResult[] = [];
      let error: string | null = null;
      try {
        for (let i = 1; i <= trials; i++) {
          if (trials > 1) progress.say(`— trial ${i} of ${trials}`);
          results.push(await runTrial(scenario, i, progress, cleanup, { withPrometheus: o.withPrometheus === true, ...(staging ? { staging } : {}) }));
        }
      } catch (err) {
        error = (err as Error).message;
        await cleanup.all();
      } finally {
        offSignals();
      }
      const reports: string[] = [];
      if (o.report !== undefined) {
        const { writeReportFile } = await import('./report/file.js');
        for (const r of results) {
          if (!r.reportHtml) continue;
          const file = trials === 1 ? o.report : o.report.replace(/(\.html?)?$/i, (ext) => `-${r.trial}${ext || '.html'}`);
          try {
            reports.push(writeReportFile(file, r.reportHtml));
          } catch (err) {
            error ??= (err as Error).message;
          }
        }
      }
      for (const r of results) delete r.reportHtml;
      // What the teardown could not undo: on a staging target it is still there, and the drill failed.
      const leftBehind = [...cleanup.failures];
      const recovered = error === null && leftBehind.length === 0 && results.length === trials && results.every((r) => r.recovered);
      for (const f of reports) process.stderr.write(`report: ${f}\n`);
      if (o.json) process.stdout.write(`${JSON.stringify({ scenario, trials: results, recovered, error, leftBehind, ...(o.report !== undefined ? { reports } : {}) }, null, 2)}\n`);
      else {
        if (results.length) process.stdout.write(printTable(scenario, results));
        if (error) process.stdout.write(`drill ${scenario} could not finish: ${escapeControl(error)}\n`);
        for (const l of leftBehind) process.stdout.write(`NOT UNDONE: ${escapeControl(l)}${staging ? ' (see the "undo by hand" lines above)' : ''}\n`);
      }
      const code = recovered ? 0 : 1;
      process.exitCode = code;
      // Clients of the stopped servers may keep a handle open for a while: the drill is over.
      setTimeout(() => process.exit(code), 200).unref();
    });
}
