/**
 * The report's renderer, pure: run + steps → HTML. The bars' geometry follows the steps' times, each
 * status has its colour, every text from the store is escaped (a `<script>` in an alert label stays
 * text), and the edge cases a post-incident review meets: a run with no steps, a step still running
 * (a crash mid-step), a run of many steps.
 */
import { describe, expect, it } from 'vitest';
import type { RunRow, StepRow, StepStatus } from '../../src/store/store.js';
import { CHART, STATUS_COLOURS, escapeHtml, formatDuration, layoutTimeline, renderTimeline, tickStep } from '../../src/report/timeline.js';

const T0 = Date.parse('2026-12-02T01:00:00.000Z');
const at = (offsetMs: number) => new Date(T0 + offsetMs).toISOString();

function run(over: Partial<RunRow> = {}): RunRow {
  return {
    id: '0b7c6a8e-1d7e-4a55-9a43-2f0f6e1c0001',
    handler: 'slow-queries',
    alertname: 'PostgresSlowQueries',
    fingerprint: 'fp1',
    // The alert fired as the run was created: its marker sits at the start of the axis.
    startsAt: at(0),
    target: 'postgres/127.0.0.1:5432/app',
    mode: 'auto',
    status: 'succeeded',
    reason: 'terminated 1 query',
    plan: null,
    labels: { datname: 'app', severity: 'warning' },
    origin: 'alertmanager',
    createdAt: at(0),
    updatedAt: at(10_000),
    finishedAt: at(10_000),
    approvedBy: null,
    owner: null,
    alertResolvedAt: null,
    ...over,
  };
}

function step(idx: number, startMs: number | null, endMs: number | null, status: StepStatus = 'done', over: Partial<StepRow> = {}): StepRow {
  return {
    runId: run().id,
    idx,
    name: `step${idx}`,
    command: `SELECT pg_terminate_backend(${idx});`,
    status,
    startedAt: startMs === null ? null : at(startMs),
    finishedAt: endMs === null ? null : at(endMs),
    output: { terminated: idx },
    check: status === 'planned' || status === 'running' ? null : { ok: status === 'done', detail: `detail of ${idx}` },
    error: null,
    attempts: startMs === null ? 0 : 1,
    ...over,
  };
}

interface Bar {
  step: number;
  status: string;
  x: number;
  width: number;
  fill: string;
  cls: string;
}
/** The rects the chart draws, read back from the page. */
function bars(html: string): Bar[] {
  return [...html.matchAll(/<rect class="([^"]*)" data-step="(\d+)" data-status="([^"]*)" x="([\d.]+)" y="[\d.]+" width="([\d.]+)" height="[\d.]+" fill="([^"]+)">/g)].map((m) => ({
    cls: m[1]!,
    step: Number(m[2]),
    status: m[3]!,
    x: Number(m[4]),
    width: Number(m[5]),
    fill: m[6]!,
  }));
}

describe('chart geometry', () => {
  it('places each bar where its step started and makes it as wide as the step took, on one time scale', () => {
    // The run spans 0..10 s: the plot maps 10 s onto plotWidth.
    const steps = [step(0, 0, 1000), step(1, 1000, 4000), step(2, 5000, 10_000)];
    const b = bars(renderTimeline(run(), steps));
    expect(b.map((x) => x.step)).toEqual([0, 1, 2]);
    const perMs = CHART.plotWidth / 10_000;
    expect(b[0]!.x).toBeCloseTo(CHART.labelWidth, 1);
    expect(b[0]!.width).toBeCloseTo(1000 * perMs, 1);
    expect(b[1]!.x).toBeCloseTo(CHART.labelWidth + 1000 * perMs, 1);
    expect(b[1]!.width).toBeCloseTo(3000 * perMs, 1);
    expect(b[2]!.x).toBeCloseTo(CHART.labelWidth + 5000 * perMs, 1);
    expect(b[2]!.width).toBeCloseTo(5000 * perMs, 1);
    // The gap between step 1 and step 2 (4 s → 5 s) shows as a gap.
    expect(b[2]!.x - (b[1]!.x + b[1]!.width)).toBeCloseTo(1000 * perMs, 1);
  });

  it('starts the axis at the earliest time recorded (a step started before the run row was written would otherwise go off the chart)', () => {
    const l = layoutTimeline(run({ createdAt: at(2000), finishedAt: at(6000) }), [step(0, 0, 6000)]);
    expect(l.t0).toBe(T0);
    expect(l.t1).toBe(T0 + 6000);
    expect(l.bars[0]!.x).toBe(CHART.labelWidth);
    expect(l.bars[0]!.width).toBeCloseTo(CHART.plotWidth, 6);
  });

  it('draws a step that took no measurable time at the minimum width, not zero', () => {
    const l = layoutTimeline(run(), [step(0, 3000, 3000)]);
    expect(l.bars[0]!.width).toBe(CHART.minBarWidth);
    expect(l.bars[0]!.x).toBeCloseTo(CHART.labelWidth + 0.3 * CHART.plotWidth, 6);
  });

  it('has ticks from 0 to the end of the run at a 1-2-5 step, labelled with the offset', () => {
    const l = layoutTimeline(run(), [step(0, 0, 10_000)]);
    expect(l.ticks.map((t) => t.label)).toEqual(['0', '+2 s', '+4 s', '+6 s', '+8 s', '+10 s']);
    expect(l.ticks[0]!.x).toBe(CHART.labelWidth);
    expect(l.ticks.at(-1)!.x).toBeCloseTo(CHART.labelWidth + CHART.plotWidth, 6);
    const html = renderTimeline(run(), [step(0, 0, 10_000)]);
    expect(html.match(/<text class="tick-label"[^>]*>([^<]*)<\/text>/g)?.length).toBe(6);
    expect(tickStep(10_000)).toBe(2000);
    expect(tickStep(7 * 60_000)).toBe(60_000);
    expect(tickStep(450)).toBe(100);
    expect(tickStep(3 * 3_600_000)).toBe(30 * 60_000);
    expect(layoutTimeline(run({ finishedAt: at(7 * 60_000) }), []).ticks.map((t) => t.label)).toEqual(['0', '+1 min', '+2 min', '+3 min', '+4 min', '+5 min', '+6 min', '+7 min']);
  });

  it('cuts a long step name in the chart, keeping it whole in the tooltip and the table', () => {
    const long = 'x'.repeat(80);
    const html = renderTimeline(run(), [step(0, 0, 1000, 'done', { name: long })]);
    const label = html.match(/<text class="step-label"[^>]*>([^<]*)<title>([^<]*)<\/title>/);
    expect(label?.[1]).toBe(`1. ${'x'.repeat(CHART.labelChars - 4)}…`);
    expect(label?.[2]).toBe(`1. ${long}`);
    expect(html).toContain(`<td>${long}</td>`);
  });

  it('draws at least a second of axis, so a run that took no measurable time still has distinct ticks', () => {
    const r = run({ createdAt: at(0), finishedAt: at(0), updatedAt: at(0) });
    const l = layoutTimeline(r, [step(0, 0, 0), step(1, 0, 250)]);
    expect(l.ticks.map((t) => t.label)).toEqual(['0', '+200 ms', '+400 ms', '+600 ms', '+800 ms', '+1000 ms']);
    expect(l.bars[1]!.width).toBeCloseTo(0.25 * CHART.plotWidth, 6);
    expect(l.bars[0]!.width).toBe(CHART.minBarWidth);
  });

  it('labels each bar with the step name and its duration', () => {
    const html = renderTimeline(run(), [step(0, 0, 1500, 'done', { name: 'terminateSlowQueries' })]);
    expect(html).toMatch(/<text class="step-label"[^>]*>1\. terminateSlowQueries<title>1\. terminateSlowQueries<\/title><\/text>/);
    expect(html).toMatch(/<text class="duration"[^>]*>1\.50 s<\/text>/);
  });
});

describe("the alert's moments", () => {
  it('marks when the alert fired and resolved on the axis when they are near the run, the axis starting at the firing', () => {
    // Fired 5 s before a 10 s run; resolved 2 s after it finished.
    const r = run({ startsAt: at(-5000), alertResolvedAt: at(12_000) });
    const l = layoutTimeline(r, [step(0, 0, 10_000)]);
    expect(l.t0).toBe(T0 - 5000);
    expect(l.t1).toBe(T0 + 12_000);
    const perMs = CHART.plotWidth / 17_000;
    expect(l.markers.map((m) => [m.kind, m.x === null ? null : Number(m.x.toFixed(3))])).toEqual([
      ['alert-fired', CHART.labelWidth],
      ['alert-resolved', Number((CHART.labelWidth + CHART.plotWidth).toFixed(3))],
    ]);
    expect(l.bars[0]!.x).toBeCloseTo(CHART.labelWidth + 5000 * perMs, 6);
    const html = renderTimeline(r, [step(0, 0, 10_000)]);
    expect(html).toMatch(/<line class="marker alert-fired" x1="260"/);
    expect(html).toMatch(/<text class="marker-label alert-resolved"[^>]*>alert resolved<\/text>/);
    expect(html).not.toContain('off the chart');
  });

  it('says in words when the alert fired long before the run, instead of squeezing the steps', () => {
    const r = run({ startsAt: at(-3 * 3_600_000) });
    const l = layoutTimeline(r, [step(0, 0, 10_000)]);
    expect(l.t0).toBe(T0);
    expect(l.bars[0]!.width).toBeCloseTo(CHART.plotWidth, 6);
    expect(l.markers).toEqual([{ kind: 'alert-fired', t: T0 - 3 * 3_600_000, x: null, text: 'alert fired 3 h 00 min before the run began (off the chart)' }]);
    const html = renderTimeline(r, [step(0, 0, 10_000)]);
    expect(html).toContain(`<p class="off-chart">alert fired 3 h 00 min before the run began (off the chart): ${at(-3 * 3_600_000)}</p>`);
    expect(html).not.toContain('<line class="marker');
  });

  it("draws no 'alert fired' for a run started from the CLI (its alert is the command)", () => {
    const l = layoutTimeline(run({ origin: 'cli', startsAt: at(-1000) }), [step(0, 0, 1000)]);
    expect(l.markers).toEqual([]);
    expect(l.t0).toBe(T0);
  });
});

describe('statuses', () => {
  it('colours every bar by its step status, and the colours differ', () => {
    const statuses: StepStatus[] = ['done', 'check_failed', 'error', 'skipped', 'running'];
    const steps = statuses.map((s, i) => step(i, i * 1000, s === 'running' ? null : i * 1000 + 500, s));
    const b = bars(renderTimeline(run({ status: 'escalated' }), steps));
    expect(b.map((x) => x.status)).toEqual(statuses);
    for (const x of b) {
      expect(x.fill).toBe(STATUS_COLOURS[x.status]);
      expect(x.cls).toContain(`status-${x.status}`);
    }
    expect(new Set(b.map((x) => x.fill)).size).toBe(statuses.length);
  });

  it("shows the check's verdict and detail for each step", () => {
    const html = renderTimeline(run({ status: 'escalated' }), [step(0, 0, 1000, 'done'), step(1, 1000, 2000, 'check_failed', { check: { ok: false, detail: 'query 4242 still running' } })]);
    expect(html).toMatch(/<tr id="step-0"[\s\S]*?<td class="verdict passed">passed<\/td><td>detail of 0/);
    expect(html).toMatch(/<tr id="step-1"[\s\S]*?<td class="verdict failed">failed<\/td><td>query 4242 still running/);
  });

  it('draws no bar for a step that never started, and says so', () => {
    const html = renderTimeline(run({ status: 'failed' }), [step(0, 0, 1000, 'error', { error: 'connection refused' }), step(1, null, null, 'planned')]);
    expect(bars(html).map((b) => b.step)).toEqual([0]);
    expect(html).toContain('planned, not started');
    expect(html).toContain('error: connection refused');
  });
});

describe('escaping', () => {
  const evil = '<script>alert(1)</script><img src=x onerror=alert(2)>"\'&';
  const escaped = escapeHtml(evil);

  it('escapes the five characters that matter in content and quoted attributes', () => {
    expect(escaped).toBe('&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;&quot;&#39;&amp;');
  });

  it('keeps a <script> in an alert label, a step name, a command, an output, a check detail and an error as text', () => {
    const html = renderTimeline(
      run({ labels: { datname: evil, [evil]: 'x' }, reason: evil, target: `postgres/${evil}`, alertname: evil, approvedBy: evil, status: 'failed' }),
      [step(0, 0, 1000, 'check_failed', { name: evil, command: evil, output: { rows: [evil] }, check: { ok: false, detail: evil }, error: evil })],
    );
    // The only script element is the page's own, at the end; the hostile text appears only escaped.
    expect(html.match(/<script/gi)).toHaveLength(1);
    expect(html).toMatch(/<script>\(function\(\)\{var b=document\.querySelectorAll\('rect\.bar'\)/);
    expect(html).not.toContain('<img');
    expect(html).not.toContain('onerror=alert(2)>');
    expect(html.split(escaped).length - 1).toBeGreaterThanOrEqual(8);
    // Inside the output's JSON the quotes were escaped by JSON first, then by HTML.
    expect(html).toContain(escapeHtml(JSON.stringify({ rows: [evil] }, null, 2)));
  });

  it('forbids every outside resource and any other script through the page CSP', () => {
    const html = renderTimeline(run(), [step(0, 0, 1000)]);
    const csp = html.match(/<meta http-equiv="Content-Security-Policy" content="([^"]+)">/)?.[1];
    expect(csp).toMatch(/default-src 'none'/);
    expect(csp).toMatch(/script-src 'sha256-[A-Za-z0-9+/=]+'/);
    expect(csp).not.toMatch(/unsafe-eval|https?:/);
    // Nothing to fetch: no link, no src, no url() anywhere.
    expect(html).not.toMatch(/<link\b|\ssrc=|url\(|@import|https?:\/\/(?!www\.w3\.org\/2000\/svg")/);
  });
});

describe('edge cases', () => {
  it('renders a run with no steps: the header, an empty chart that says so, no bars', () => {
    const html = renderTimeline(run({ status: 'skipped', reason: 'nothing to do', finishedAt: at(0), updatedAt: at(0) }), []);
    expect(bars(html)).toEqual([]);
    expect(html).toContain('no steps recorded');
    expect(html).toContain('This run recorded no steps.');
    expect(html).toMatch(/<dd class="field-status">skipped<\/dd>/);
    expect(html).toMatch(/<dd class="field-reason">nothing to do<\/dd>/);
  });

  it('draws a step still running up to the moment of the report, marked open', () => {
    const r = run({ status: 'running', finishedAt: null, updatedAt: at(2000) });
    const steps = [step(0, 0, 2000), step(1, 2000, null, 'running')];
    const now = new Date(T0 + 8000);
    const b = bars(renderTimeline(r, steps, { now }));
    expect(b[1]!.cls).toContain('open');
    // The axis runs to now (8 s): the open bar spans 2 s → 8 s.
    expect(b[1]!.x).toBeCloseTo(CHART.labelWidth + 0.25 * CHART.plotWidth, 1);
    expect(b[1]!.width).toBeCloseTo(0.75 * CHART.plotWidth, 1);
    const html = renderTimeline(r, steps, { now });
    expect(html).toContain('6.00 s (still running)');
    expect(html).toMatch(/<dd class="field-finished">not finished<\/dd>/);
    // Without a clock the open bar ends at the run's last update: the function stays pure.
    expect(renderTimeline(r, steps)).toBe(renderTimeline(r, steps));
    expect(layoutTimeline(r, steps).bars[1]!.width).toBe(CHART.minBarWidth);
  });

  it('renders a run of many steps: one row and one bar per step, in order, the chart growing with them', () => {
    const count = 300;
    const steps = Array.from({ length: count }, (_, i) => step(i, i * 100, i * 100 + 60));
    const r = run({ finishedAt: at(count * 100), updatedAt: at(count * 100) });
    const html = renderTimeline(r, steps);
    const b = bars(html);
    expect(b.map((x) => x.step)).toEqual(steps.map((s) => s.idx));
    for (let i = 1; i < b.length; i++) expect(b[i]!.x).toBeGreaterThan(b[i - 1]!.x);
    expect(html.match(/<tr id="step-\d+"/g)).toHaveLength(count);
    const height = Number(html.match(/<svg id="timeline"[^>]* height="(\d+)"/)?.[1]);
    expect(height).toBe(layoutTimeline(r, steps).height);
    expect(height).toBeGreaterThanOrEqual(count * CHART.rowHeight);
  });

  it('formats durations as a person reads them', () => {
    expect(formatDuration(850)).toBe('850 ms');
    expect(formatDuration(2345)).toBe('2.35 s');
    expect(formatDuration(42_000)).toBe('42.0 s');
    expect(formatDuration(65_000)).toBe('1 min 05 s');
    expect(formatDuration(2 * 3_600_000 + 3 * 60_000)).toBe('2 h 03 min');
  });
});
