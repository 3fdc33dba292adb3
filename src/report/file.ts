/**
 * Writing a report page to disk, shared by `dbpilot report` and the drill's --report: the page is
 * written beside its destination and renamed into place, so a reader (a browser, a CI artefact
 * upload) never sees half a page, and a failure names the file.
 */
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { DbpilotError } from '../errors.js';

/** Writes `html` to `file` (resolved against the working directory) and answers the absolute path. */
export function writeReportFile(file: string, html: string): string {
  const abs = path.resolve(file);
  const tmp = `${abs}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, html, { mode: 0o644 });
    renameSync(tmp, abs);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new DbpilotError('DBPILOT_REPORT_WRITE_FAILED', `cannot write the report to ${abs}: ${(err as Error).message}`);
  }
  return abs;
}
