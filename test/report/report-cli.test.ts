/**
 * `dbpilot report` as a user runs it — `node bin/dbpilot.js report <run-id>` in a child process — on a
 * real store file holding a real run: the engine (in approve mode, on the shared harness servers, with
 * a scripted handler standing in for redis-failure) records a run for an alert whose label carries a
 * `<script>`, waits for approval, is approved, runs its steps (the last check fails: escalated, the
 * step after it never starts). The CLI then writes the page; headless Chromium (Debian's `chromium`)
 * opens it and must lay out one bar per started step with a non-zero width.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { escapeHtml } from '../../src/report/timeline.js';
import { Store, type RunRow, type StepRow } from '../../src/store/store.js';
import { PagerDutyStandin } from '../support/pagerduty-standin.js';
import { freshFingerprint, payload, scriptedHandler, startRemediation } from '../support/remediation.js';

const BIN = fileURLToPath(new URL('../../bin/dbpilot.js', import.meta.url));
const EVIL = '<script>alert("pwned")</script>';
const APPROVER = `alice${EVIL}`;

let dir = '';
let storePath = '';
let cwd = '';
let run: RunRow;
let steps: StepRow[];
const pd = new PagerDutyStandin();

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The parent's environment without what would change what dbpilot or node does here. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('DBPILOT_') || k.startsWith('VITEST') || k === 'NODE_OPTIONS' || k === 'KUBECONFIG' || k === 'POD_NAME') continue;
    env[k] = v;
  }
  return env;
}

function dbpilot(...args: string[]): Promise<Result> {
  return new Promise((resolve, reject) => {
    // No configuration file: the store path comes from the environment, everything else is the default.
    const child = spawn(process.execPath, [BIN, ...args], { cwd, env: { ...cleanEnv(), DBPILOT_STORE_PATH: storePath }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 45_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** The bars the page draws (as written, or as Chromium left the DOM): step, status, width, rendered width. */
function bars(html: string): { step: number; status: string; width: number; rendered: number | null }[] {
  const attr = (tag: string, name: string) => tag.match(new RegExp(` ${name}="([^"]*)"`))?.[1];
  return [...html.matchAll(/<rect class="bar[^>]*>/g)].map(([tag]) => ({
    step: Number(attr(tag, 'data-step')),
    status: attr(tag, 'data-status') ?? '',
    width: Number(attr(tag, 'width')),
    rendered: attr(tag, 'data-rendered-width') === undefined ? null : Number(attr(tag, 'data-rendered-width')),
  }));
}

const storeRuns = () => {
  const s = new Store(storePath, { readonly: true });
  try {
    return s.listRuns({}).map((r) => ({ ...r, steps: s.steps(r.id) }));
  } finally {
    s.close();
  }
};

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-report-'));
  storePath = path.join(dir, 'store', 'dbpilot.sqlite');
  cwd = path.join(dir, 'cwd');
  execFileSync('mkdir', ['-p', cwd]);
  await pd.start();
  const h = await startRemediation({ mode: 'approve', storePath, pagerduty: pd });
  try {
    const handler = scriptedHandler('redis-failure', {
      steps: ['restartRedis', 'verifyRedisUp', 'confirmClientsReconnected', 'scaleWorkers'],
      failChecks: ['confirmClientsReconnected'],
      // Each step takes a moment, so the bars have lengths to compare (no assertion is about how long).
      duringStep: () => new Promise((r) => setTimeout(r, 40)),
    });
    h.remediation.handlers.register(handler);
    const fp = freshFingerprint();
    const res = await h.webhook(payload([{ labels: { alertname: 'RedisDown', remediation: 'redis-failure', team: 'devops', instance: EVIL, severity: 'critical' }, fingerprint: fp }]));
    expect(res.statusCode).toBe(202);
    await h.engine.idle();
    const [waiting] = h.store.listRuns({ fingerprint: fp });
    expect(waiting).toMatchObject({ status: 'awaiting_approval' });
    await h.engine.approve(waiting!.id, APPROVER);
    await h.settle();
    run = h.store.getRun(waiting!.id)!;
    steps = h.store.steps(run.id);
  } finally {
    await h.close();
  }
  // What the engine recorded is what this test is about: three steps ran, the third's check failed (the run failed, and was escalated).
  expect(run).toMatchObject({ status: 'failed', approvedBy: APPROVER, target: `fake/${EVIL}` });
  expect(steps.map((s) => s.status)).toEqual(['done', 'done', 'check_failed', 'planned']);
}, 120_000);

afterAll(async () => {
  await pd.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('dbpilot report', () => {
  let html = '';
  let written = '';

  it('writes ./dbpilot-report-<run-id>.html without --out, prints its path, and changes nothing in the store', async () => {
    const before = storeRuns();
    const r = await dbpilot('report', run.id);
    expect(r.code, r.stderr).toBe(0);
    written = path.join(cwd, `dbpilot-report-${run.id}.html`);
    expect(r.stdout).toBe(`${written}\n`);
    html = readFileSync(written, 'utf8');
    expect(storeRuns()).toEqual(before);
  });

  it("holds the run's header, one bar per started step coloured by status, and each step's exact command and check", () => {
    expect(html).toMatch(/^<!DOCTYPE html>/);
    expect(html).toContain(`<dd class="field-handler">redis-failure</dd>`);
    expect(html).toContain(`<dd class="field-alert">RedisDown</dd>`);
    expect(html).toContain(`<dd class="field-status">failed</dd>`);
    expect(html).toContain(`<dd class="field-mode">approve</dd>`);
    expect(html).toContain(`<dd class="field-approved-by">${escapeHtml(APPROVER)}</dd>`);
    expect(html).toContain(`<dd class="field-reason">${escapeHtml(run.reason)}</dd>`);
    expect(html).toContain(`<dd class="field-created">${run.createdAt}</dd>`);
    const b = bars(html);
    expect(b.map((x) => [x.step, x.status])).toEqual([
      [0, 'done'],
      [1, 'done'],
      [2, 'check_failed'],
    ]);
    for (const x of b) expect(x.width).toBeGreaterThan(0);
    for (const s of steps) {
      expect(html).toContain(`<pre class="command">${escapeHtml(s.command)}</pre>`);
      if (s.check) expect(html).toContain(escapeHtml((s.check as { detail: string }).detail));
      if (s.startedAt) expect(html).toContain(`<td class="time">${s.startedAt}</td>`);
    }
    expect(html).toMatch(/<td class="verdict failed">failed<\/td><td>confirmClientsReconnected did not take effect/);
    expect(html).toContain('planned, not started');
  });

  it('keeps the alert label\'s <script> as text: the only script element is the page\'s own', () => {
    expect(html.match(/<script/gi)).toHaveLength(1);
    expect(html).not.toContain(EVIL);
    expect(html).toContain(escapeHtml(EVIL));
  });

  it('writes to --out and prints that path', async () => {
    const out = path.join(dir, 'reports', 'incident.html');
    execFileSync('mkdir', ['-p', path.dirname(out)]);
    const r = await dbpilot('report', run.id, '--out', out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${out}\n`);
    expect(statSync(out).size).toBeGreaterThan(0);
    expect(bars(readFileSync(out, 'utf8'))).toHaveLength(3);
  });

  it('writes the page itself to stdout with --out -, and no file', async () => {
    const r = await dbpilot('report', run.id, '--out', '-');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^<!DOCTYPE html>[\s\S]*<\/html>\n$/);
    expect(bars(r.stdout)).toHaveLength(3);
    expect(existsSync(path.join(cwd, '-'))).toBe(false);
  });

  it('exits 2 naming an unknown run id, writing no file', async () => {
    const unknown = '00000000-0000-4000-8000-00000000dead';
    const r = await dbpilot('report', unknown);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`no remediation run "${unknown}"`);
    expect(r.stderr).toContain('DBPILOT_RUN_NOT_FOUND');
    expect(r.stdout).toBe('');
    expect(existsSync(path.join(cwd, `dbpilot-report-${unknown}.html`))).toBe(false);
  });

  it('exits 2 naming the file when --out cannot be written, leaving no partial file', async () => {
    const out = path.join(dir, 'no-such-dir', 'r.html');
    const r = await dbpilot('report', run.id, '--out', out);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`cannot write the report to ${out}`);
    expect(r.stderr).toContain('DBPILOT_REPORT_WRITE_FAILED');
    expect(r.stdout).toBe('');
    expect(existsSync(path.dirname(out))).toBe(false);
  });

  it('exits 2 when there is no store, creating none', async () => {
    const missing = path.join(dir, 'nowhere', 'dbpilot.sqlite');
    const child = spawnSync(process.execPath, [BIN, 'report', run.id], { cwd, env: { ...cleanEnv(), DBPILOT_STORE_PATH: missing }, encoding: 'utf8', timeout: 45_000 });
    expect(child.status).toBe(2);
    expect(child.stderr).toContain(`no store at ${missing}`);
    expect(existsSync(missing)).toBe(false);
  });

  const chromium = spawnSync('sh', ['-c', 'command -v chromium'], { encoding: 'utf8' }).stdout.trim();
  it.skipIf(!chromium)(`renders the chart in headless Chromium: one laid-out bar per started step${chromium ? '' : ' (skipped: the chromium binary is missing; Debian package chromium)'}`, async () => {
    const page = path.join(dir, 'chromium.html');
    const r = await dbpilot('report', run.id, '--out', page);
    expect(r.code, r.stderr).toBe(0);
    const profile = mkdtempSync(path.join(dir, 'chromium-'));
    const dom = execFileSync(chromium, ['--headless', '--no-sandbox', '--disable-gpu', `--user-data-dir=${profile}`, '--dump-dom', `file://${page}`], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      timeout: 60_000,
    });
    // The page's script ran after layout (the CSP let exactly it run) and measured each bar.
    expect(dom).toMatch(/<html[^>]* data-bars-rendered="3"/);
    const b = bars(dom);
    expect(b.map((x) => x.step)).toEqual([0, 1, 2]);
    for (const x of b) {
      expect(x.rendered).not.toBeNull();
      expect(x.rendered!).toBeGreaterThan(0);
      // Laid out at the width the SVG says (CSS px at 100 %).
      expect(x.rendered!).toBeCloseTo(x.width, 0);
    }
    // The hostile label stayed text in the live DOM too.
    expect(dom.match(/<script/gi)).toHaveLength(1);
  });
});
