/**
 * The shape of a benchmark section (`npm run bench -- <section> …`). run.ts parses the options of
 * every section, builds the shared dataset on first use, runs the selected sections in order and
 * prints each one's targets. A section returns its figures (for --json) and its targets; a MISS is a
 * result, not a failure — only an exception means the benchmark could not run.
 */
import type { ParseArgsConfig } from 'node:util';
import type { Dataset } from './dataset.js';

export type OptionValues = Record<string, string | boolean | undefined>;

export interface SectionContext {
  /** Parsed command-line options (every section's options, with their defaults). */
  values: OptionValues;
  /** The repository root (where bin/dbpilot.js lives). */
  root: string;
  /** `.bench/` in the repository (gitignored): logs, configs, results. */
  workDir: string;
  /** The PostgreSQL cluster + Redis with the runbook-shaped data; built once, on first call. */
  dataset(): Promise<Dataset>;
  log(msg: string): void;
}

export interface TargetCheck {
  name: string;
  /** What was measured, formatted. */
  measured: string;
  /** The bound, formatted. */
  target: string;
  /** null when it could not be judged (e.g. a peer is not installed). */
  pass: boolean | null;
}

export interface SectionResult {
  figures: unknown;
  targets: TargetCheck[];
}

export interface Section {
  name: string;
  summary: string;
  options?: NonNullable<ParseArgsConfig['options']>;
  /** Lines for --help, one per option. */
  help?: string[];
  run(ctx: SectionContext): Promise<SectionResult>;
}

/** A bad command line: run.ts prints the message and the usage, and exits 2. */
export class UsageError extends Error {}

/** An integer option ≥ min, or a UsageError. */
export function intOption(values: OptionValues, name: string, min = 0): number {
  const raw = values[name];
  const n = Number(raw);
  if (typeof raw !== 'string' || !/^\d+$/.test(raw.trim()) || n < min) throw new UsageError(`--${name} must be an integer ≥ ${min} (got ${String(raw)})`);
  return n;
}
