/**
 * Failpoints for crash-safety tests (after etcd's gofail): `DBPILOT_FAILPOINTS=promoteReplica:after-run`
 * makes the process SIGKILL itself at that point of that step, as a power cut or an OOM kill would,
 * so a test can prove what a restarted dbpilot does at every step boundary and in the middle of a
 * step. Inert unless the variable is set; a process that has one set says so at start.
 *
 * Points: `<step>:before-run` (the step is recorded as started, nothing done), `<step>:after-run`
 * (the step acted, its outcome not yet recorded: the middle of the step as the store sees it),
 * `<step>:after-check` (the step is verified and recorded: a step boundary).
 */
const armed = new Set(
  (process.env.DBPILOT_FAILPOINTS ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean),
);

export function failpointsArmed(): string[] {
  return [...armed];
}

export function failpoint(name: string): void {
  if (armed.size === 0 || !armed.has(name)) return;
  process.stderr.write(`dbpilot: failpoint ${name}: SIGKILL\n`);
  process.kill(process.pid, 'SIGKILL');
}
