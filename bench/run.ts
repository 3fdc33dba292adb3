/**
 * `npm run bench [-- [section…] [options]]`: runs the selected benchmark sections (default: all) on
 * one shared, freshly built dataset, prints each section's figures and PASS/MISS per target, and
 * with --json writes the figures to a file. A MISS still exits 0 (this is a benchmark, not a test);
 * the exit code is non-zero only when the benchmark could not run. Ctrl-C stops every server and
 * child process it started.
 *
 * To add a section: export a Section (see section.ts) from its own file and list it in SECTIONS.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import Table from 'cli-table3';
import { cleanupAll, installSignalHandlers, interrupted } from './cleanup.js';
import { buildDataset, type Dataset } from './dataset.js';
import { failoverSection } from './failover.js';
import { scrapeSection } from './scrape.js';
import { webhookSection } from './webhook.js';
import { UsageError, type OptionValues, type Section, type SectionContext, type TargetCheck } from './section.js';

const SECTIONS: Section[] = [scrapeSection, webhookSection, failoverSection];

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const WORK_DIR = path.join(ROOT, '.bench');
const DEFAULT_JSON = path.join(WORK_DIR, 'results.json');

function usage(): string {
  const lines = [
    'usage: npm run bench -- [section…] [options]',
    '',
    'sections (default: all):',
    ...SECTIONS.map((s) => `  ${s.name.padEnd(12)} ${s.summary}`),
    '',
    'options:',
    `  --json [file]           also write the figures as JSON (default file ${path.relative(ROOT, DEFAULT_JSON)})`,
    '  -h, --help              this text',
    ...SECTIONS.flatMap((s) => (s.help ?? []).map((h) => `  ${h}  [${s.name}]`)),
  ];
  return `${lines.join('\n')}\n`;
}

/** `--json` takes an optional path: the next argument when it is neither an option nor a section name. */
function extractJson(argv: string[]): { argv: string[]; json: string | null } {
  const rest: string[] = [];
  let json: string | null = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a.startsWith('--json=')) json = path.resolve(a.slice('--json='.length));
    else if (a === '--json') {
      const next = argv[i + 1];
      if (next !== undefined && !next.startsWith('-') && !SECTIONS.some((s) => s.name === next)) {
        json = path.resolve(next);
        i++;
      } else json = DEFAULT_JSON;
    } else rest.push(a);
  }
  return { argv: rest, json };
}

function parse(argv: string[]): { sections: Section[]; values: OptionValues; json: string | null; help: boolean } {
  const { argv: rest, json } = extractJson(argv);
  const options: NonNullable<ParseArgsConfig['options']> = { help: { type: 'boolean', short: 'h', default: false } };
  for (const s of SECTIONS) Object.assign(options, s.options ?? {});
  const { values, positionals } = parseArgs({ args: rest, options, allowPositionals: true, strict: true });
  const unknown = positionals.filter((p) => !SECTIONS.some((s) => s.name === p));
  if (unknown.length) throw new Error(`unknown section ${unknown.join(', ')} (have: ${SECTIONS.map((s) => s.name).join(', ')})`);
  const sections = positionals.length ? SECTIONS.filter((s) => positionals.includes(s.name)) : SECTIONS;
  return { sections, values: values as OptionValues, json, help: values.help === true };
}

function printTargets(all: { section: string; targets: TargetCheck[] }[]): void {
  const t = new Table({ style: { head: [], border: [] }, head: ['section', 'target', 'measured', 'bound', 'result'] });
  for (const { section, targets } of all) {
    for (const c of targets) t.push([section, c.name, c.measured, c.target, c.pass === null ? 'n/a' : c.pass ? 'PASS' : 'MISS']);
  }
  process.stdout.write(`\nTargets (issues "Exporter" and "Remediation engine"):\n${t.toString()}\n`);
}

async function main(): Promise<number> {
  let opts: ReturnType<typeof parse>;
  try {
    opts = parse(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n\n${usage()}`);
    return 2;
  }
  if (opts.help) {
    process.stdout.write(usage());
    return 0;
  }
  installSignalHandlers();
  fs.mkdirSync(WORK_DIR, { recursive: true });

  const log = (msg: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
  let dataset: Promise<Dataset> | null = null;
  const ctx: SectionContext = {
    values: opts.values,
    root: ROOT,
    workDir: WORK_DIR,
    dataset: () => (dataset ??= (log('building the dataset (PostgreSQL primary + replica, 8 databases × 150 tables, Redis)…'), buildDataset(log))),
    log,
  };

  const started = new Date();
  const results: Record<string, unknown> = {};
  const checks: { section: string; targets: TargetCheck[] }[] = [];
  try {
    for (const s of opts.sections) {
      log(`section ${s.name}: ${s.summary}`);
      const r = await s.run(ctx);
      results[s.name] = r.figures;
      checks.push({ section: s.name, targets: r.targets });
    }
  } catch (err) {
    if (interrupted()) return 130;
    if (err instanceof UsageError) {
      process.stderr.write(`bench: ${err.message}\n\n${usage()}`);
      return 2;
    }
    process.stderr.write(`\nbench: could not run: ${(err as Error).stack ?? String(err)}\n`);
    return 1;
  } finally {
    if (!interrupted()) {
      log('stopping servers…');
      await cleanupAll();
    }
  }

  printTargets(checks);
  if (opts.json) {
    const doc = {
      startedAt: started.toISOString(),
      finishedAt: new Date().toISOString(),
      host: { node: process.version, cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? '', memBytes: os.totalmem(), kernel: os.release() },
      argv: process.argv.slice(2),
      sections: results,
      targets: Object.fromEntries(checks.map((c) => [c.section, c.targets])),
    };
    fs.mkdirSync(path.dirname(opts.json), { recursive: true });
    fs.writeFileSync(opts.json, `${JSON.stringify(doc, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2)}\n`);
    log(`figures written to ${path.relative(process.cwd(), opts.json) || opts.json}`);
  }
  return 0;
}

process.exitCode = await main();
