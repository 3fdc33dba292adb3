/**
 * The timeline of one recorded remediation run as ONE self-contained HTML page, for the team's
 * post-incident review: a header (what ran, on what, why, who approved), a Gantt-like SVG chart of
 * the steps over time, and a table of the steps with the exact runbook command, the check's verdict
 * and detail, the output and the error.
 *
 * Pure: run + steps → string. No network, no external script, style sheet or font: the CSS and the
 * SVG are inline, and the page's Content-Security-Policy allows nothing else (no fetch, no image, no
 * script but the one inline script below, pinned by its hash). That one script only measures the bars
 * after layout and writes their rendered widths onto them (data-rendered-width), so that a headless
 * browser can verify the chart rendered; the page reads the same without it.
 *
 * Every text from the store is HTML-escaped: labels come from alerts, outputs and errors from
 * databases, and a run's name is whatever the alert said. The store holds no secret, and nothing is
 * added here but what the store holds.
 */
import { createHash } from 'node:crypto';
import type { RunRow, StepRow } from '../store/store.js';

/** Escapes text for HTML element content and quoted attribute values. */
export function escapeHtml(v: unknown): string {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** Step status → bar colour (also listed in the legend). */
export const STATUS_COLOURS: Readonly<Record<string, string>> = {
  done: '#2e7d32',
  check_failed: '#c62828',
  error: '#ad1457',
  running: '#1565c0',
  skipped: '#9e9e9e',
  planned: '#cfd8dc',
};
const OTHER_COLOUR = '#6d4c41';
export const colourOf = (status: string): string => STATUS_COLOURS[status] ?? OTHER_COLOUR;

/** The chart's geometry (SVG user units = CSS pixels at 100 %). */
export const CHART = {
  /** Left column: step names. */
  labelWidth: 260,
  /** Step labels longer than this are cut (with an ellipsis) in the chart. */
  labelChars: 38,
  /** The time axis: x = labelWidth + fraction of the span × plotWidth. */
  plotWidth: 640,
  /** Room right of the plot for the last bar's duration label. */
  rightPad: 100,
  axisHeight: 28,
  rowHeight: 24,
  barHeight: 14,
  /** A step that took no measurable time is still drawn, this wide. */
  minBarWidth: 1,
  /** The shortest time axis drawn. */
  minSpanMs: 1000,
} as const;

export interface TimelineOptions {
  /**
   * The end of a bar for a step still running: the moment the report is made. Defaults to the run's
   * last update (keeps the function pure); the CLI passes the clock.
   */
  now?: Date;
}

const ms = (iso: string | null | undefined): number | null => {
  if (!iso) return null;
  const t = Date.parse(iso);
  return Number.isFinite(t) ? t : null;
};

/** A duration as a person reads it: 850 ms, 2.35 s, 1 min 05 s, 2 h 03 min. */
export function formatDuration(d: number): string {
  if (d < 0) d = 0;
  if (d < 1000) return `${Math.round(d)} ms`;
  if (d < 10_000) return `${(d / 1000).toFixed(2)} s`;
  if (d < 60_000) return `${(d / 1000).toFixed(1)} s`;
  const s = Math.round(d / 1000);
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}

/** Tick steps from one second up: seconds, minutes and hours a clock shows (1-2-5 below one second). */
const CLOCK_STEPS = [1, 2, 5, 10, 15, 30].map((s) => s * 1000).concat([1, 2, 5, 10, 15, 30].map((m) => m * 60_000), [1, 2, 3, 6, 12, 24].map((h) => h * 3_600_000));

/** The smallest readable tick step giving at most `max` intervals over `span` ms. */
export function tickStep(span: number, max = 8): number {
  if (!(span > 0)) return 1;
  const raw = span / max;
  if (raw > 1000) {
    const clock = CLOCK_STEPS.find((c) => c >= raw);
    if (clock !== undefined) return clock;
    return Math.ceil(raw / 86_400_000) * 86_400_000;
  }
  const pow = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * pow >= raw) return m * pow;
  return 10 * pow;
}

function tickLabel(offset: number, step: number): string {
  if (offset === 0) return '0';
  if (step < 1000) return `+${Math.round(offset)} ms`;
  if (step < 60_000) return `+${Number((offset / 1000).toFixed(3))} s`;
  if (step < 3_600_000) return `+${Number((offset / 60_000).toFixed(2))} min`;
  return `+${Number((offset / 3_600_000).toFixed(2))} h`;
}

/** Where one step is drawn; `null` start when it never started (no bar). */
export interface BarLayout {
  idx: number;
  name: string;
  status: string;
  start: number | null;
  end: number | null;
  /** True when the step has started and not finished: drawn up to `now`. */
  open: boolean;
  x: number;
  width: number;
  y: number;
}

/** A moment of the alert drawn as a vertical line (when it fits the chart) or said in words. */
export interface MarkerLayout {
  kind: 'alert-fired' | 'alert-resolved';
  t: number;
  /** Null when the moment lies too far from the run to share its axis (see layoutTimeline). */
  x: number | null;
  text: string;
}

export interface TimelineLayout {
  t0: number | null;
  t1: number | null;
  bars: BarLayout[];
  ticks: { x: number; label: string }[];
  markers: MarkerLayout[];
  height: number;
}

/** Room under the rows for the markers' labels. */
const MARKER_ROW = 18;

/** The chart's geometry from the times alone (exported for the tests). */
export function layoutTimeline(run: RunRow, steps: StepRow[], opts: TimelineOptions = {}): TimelineLayout {
  const nowMs = opts.now ? opts.now.getTime() : (ms(run.finishedAt) ?? ms(run.updatedAt) ?? Date.now());
  const spans = steps.map((s) => {
    const start = ms(s.startedAt);
    const finished = ms(s.finishedAt);
    const open = start !== null && finished === null;
    const end = start === null ? null : (finished ?? Math.max(nowMs, start));
    return { s, start, end, open };
  });
  const times = [ms(run.createdAt), ms(run.finishedAt), ...spans.flatMap((p) => [p.start, p.end])].filter((t): t is number => t !== null);
  let t0 = times.length ? Math.min(...times) : null;
  let t1 = times.length ? Math.max(...times) : null;
  // The alert's own moments: when it fired (Alertmanager runs only; a manual run's "alert" is the
  // command) and when Alertmanager said it resolved. Each shares the axis when it lies within one run
  // length of the run, so the time from alert to action shows; farther away (an alert firing for
  // hours before this run) it would squeeze the steps into a sliver, and is said in words instead.
  const moments: { kind: MarkerLayout['kind']; t: number | null; label: string }[] = [
    { kind: 'alert-fired', t: run.origin === 'alertmanager' ? ms(run.startsAt) : null, label: 'alert fired' },
    { kind: 'alert-resolved', t: ms(run.alertResolvedAt), label: 'alert resolved' },
  ];
  const own = t0 !== null && t1 !== null ? { t0, t1, span: Math.max(t1 - t0, CHART.minSpanMs) } : null;
  const fits = (t: number) => own !== null && t >= own.t0 - own.span && t <= own.t1 + own.span;
  for (const m of moments) {
    if (m.t === null || !fits(m.t)) continue;
    t0 = Math.min(t0!, m.t);
    t1 = Math.max(t1!, m.t);
  }
  // At least a second of axis: a run that took no measurable time still gets readable, distinct ticks.
  const span = t0 !== null && t1 !== null ? Math.max(t1 - t0, CHART.minSpanMs) : CHART.minSpanMs;
  const xOf = (t: number) => CHART.labelWidth + ((t - (t0 ?? t)) / span) * CHART.plotWidth;
  const bars: BarLayout[] = spans.map(({ s, start, end, open }, row) => {
    const x = start === null ? CHART.labelWidth : xOf(start);
    const width = start === null || end === null ? 0 : Math.max(xOf(end) - x, CHART.minBarWidth);
    return { idx: s.idx, name: s.name, status: s.status, start, end, open, x, width, y: CHART.axisHeight + row * CHART.rowHeight };
  });
  const ticks: { x: number; label: string }[] = [];
  if (t0 !== null) {
    const step = tickStep(span);
    for (let off = 0; off <= span + 1e-9; off += step) ticks.push({ x: CHART.labelWidth + (off / span) * CHART.plotWidth, label: tickLabel(off, step) });
  }
  const markers: MarkerLayout[] = moments.flatMap((m): MarkerLayout[] => {
    if (m.t === null) return [];
    if (fits(m.t)) return [{ kind: m.kind, t: m.t, x: xOf(m.t), text: m.label }];
    const ref = m.t < (own?.t0 ?? m.t) ? own!.t0 : (own?.t1 ?? m.t);
    const when = own === null ? '' : m.t < ref ? ` ${formatDuration(ref - m.t)} before the run began` : ` ${formatDuration(m.t - ref)} after the run's last recorded moment`;
    return [{ kind: m.kind, t: m.t, x: null, text: `${m.label}${when} (off the chart)` }];
  });
  const rowsBottom = CHART.axisHeight + Math.max(steps.length, 1) * CHART.rowHeight;
  const height = rowsBottom + 8 + (markers.some((m) => m.x !== null) ? MARKER_ROW : 0);
  return { t0, t1, bars, ticks, markers, height };
}

const n = (v: number) => Number(v.toFixed(2));

function chartSvg(layout: TimelineLayout, steps: StepRow[]): string {
  const width = CHART.labelWidth + CHART.plotWidth + CHART.rightPad;
  const parts: string[] = [];
  parts.push(`<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${layout.height}" viewBox="0 0 ${width} ${layout.height}" role="img" aria-label="steps over time">`);
  // Axis and ticks.
  parts.push(`<line class="axis" x1="${CHART.labelWidth}" y1="${CHART.axisHeight - 6}" x2="${CHART.labelWidth + CHART.plotWidth}" y2="${CHART.axisHeight - 6}" stroke="#555"/>`);
  for (const t of layout.ticks) {
    parts.push(`<line class="tick" x1="${n(t.x)}" y1="${CHART.axisHeight - 10}" x2="${n(t.x)}" y2="${layout.height}" stroke="#ddd"/>`);
    parts.push(`<text class="tick-label" x="${n(t.x)}" y="${CHART.axisHeight - 14}" text-anchor="middle">${escapeHtml(t.label)}</text>`);
  }
  if (steps.length === 0) {
    parts.push(`<text class="empty" x="${CHART.labelWidth}" y="${CHART.axisHeight + 16}">no steps recorded</text>`);
  }
  layout.bars.forEach((b, i) => {
    const s = steps[i]!;
    const cy = b.y + CHART.rowHeight / 2;
    // The left column holds about 38 characters; the full name is in the bar's tooltip and the table.
    const label = `${s.idx + 1}. ${s.name}`;
    const shown = label.length > CHART.labelChars ? `${label.slice(0, CHART.labelChars - 1)}…` : label;
    parts.push(`<text class="step-label" x="${CHART.labelWidth - 8}" y="${cy + 4}" text-anchor="end">${escapeHtml(shown)}<title>${escapeHtml(label)}</title></text>`);
    if (b.start === null || b.end === null) {
      parts.push(`<text class="not-started" x="${CHART.labelWidth + 4}" y="${cy + 4}">${escapeHtml(`${s.status}, not started`)}</text>`);
      return;
    }
    const duration = formatDuration(b.end - b.start) + (b.open ? ' (still running)' : '');
    parts.push(
      `<a href="#step-${s.idx}"><rect class="bar status-${escapeHtml(s.status)}${b.open ? ' open' : ''}" data-step="${s.idx}" data-status="${escapeHtml(s.status)}" ` +
        `x="${n(b.x)}" y="${b.y + (CHART.rowHeight - CHART.barHeight) / 2}" width="${n(b.width)}" height="${CHART.barHeight}" fill="${colourOf(s.status)}">` +
        `<title>${escapeHtml(`${s.name}: ${s.status}, ${duration}`)}</title></rect></a>`,
    );
    parts.push(`<text class="duration" x="${n(b.x + b.width + 4)}" y="${cy + 4}">${escapeHtml(duration)}</text>`);
  });
  for (const m of layout.markers) {
    if (m.x === null) continue;
    // Labels anchored away from the edge they are near, so neither runs off the chart.
    const anchor = m.kind === 'alert-fired' ? 'start' : 'end';
    parts.push(`<line class="marker ${m.kind}" x1="${n(m.x)}" y1="${CHART.axisHeight - 6}" x2="${n(m.x)}" y2="${layout.height - MARKER_ROW + 4}" stroke="#f57c00" stroke-dasharray="3 3"><title>${escapeHtml(`${m.text}: ${new Date(m.t).toISOString()}`)}</title></line>`);
    parts.push(`<text class="marker-label ${m.kind}" x="${n(m.x)}" y="${layout.height - 4}" text-anchor="${anchor}">${escapeHtml(m.text)}</text>`);
  }
  parts.push('</svg>');
  const off = layout.markers.filter((m) => m.x === null);
  if (off.length) parts.push(`<p class="off-chart">${off.map((m) => escapeHtml(`${m.text}: ${new Date(m.t).toISOString()}`)).join('<br>')}</p>`);
  return parts.join('\n');
}

function verdict(check: unknown): { text: string; cls: string; detail: string } {
  if (check === null || check === undefined) return { text: '—', cls: 'none', detail: '' };
  const c = check as { ok?: unknown; detail?: unknown };
  const detail = typeof c.detail === 'string' ? c.detail : '';
  if (c.ok === true) return { text: 'passed', cls: 'passed', detail };
  if (c.ok === false) return { text: 'failed', cls: 'failed', detail };
  return { text: 'recorded', cls: 'none', detail: detail || JSON.stringify(check) };
}

const pretty = (v: unknown): string => (v === null || v === undefined ? '' : typeof v === 'string' ? v : JSON.stringify(v, null, 2));

function stepsTable(steps: StepRow[], nowMs: number | null): string {
  if (steps.length === 0) return '<p class="empty">This run recorded no steps.</p>';
  const rows = steps.map((s) => {
    const start = ms(s.startedAt);
    const end = ms(s.finishedAt);
    const duration = start === null ? '' : end !== null ? formatDuration(end - start) : `${formatDuration((nowMs ?? start) - start)} so far (still running)`;
    const v = verdict(s.check);
    const output = pretty(s.output);
    return [
      `<tr id="step-${s.idx}" class="step status-${escapeHtml(s.status)}">`,
      `<td>${s.idx + 1}</td>`,
      `<td>${escapeHtml(s.name)}</td>`,
      `<td><span class="status" style="background:${colourOf(s.status)}">${escapeHtml(s.status)}</span>${s.attempts > 1 ? ` <span class="attempts">${s.attempts} attempts</span>` : ''}</td>`,
      `<td class="time">${escapeHtml(s.startedAt ?? '')}</td>`,
      `<td class="time">${escapeHtml(s.finishedAt ?? '')}</td>`,
      `<td>${escapeHtml(duration)}</td>`,
      `<td><pre class="command">${escapeHtml(s.command)}</pre></td>`,
      `<td class="verdict ${v.cls}">${escapeHtml(v.text)}</td>`,
      `<td>${escapeHtml(v.detail)}${s.error ? `<div class="error">error: ${escapeHtml(s.error)}</div>` : ''}` +
        `${output ? `<details><summary>output</summary><pre class="output">${escapeHtml(output)}</pre></details>` : ''}</td>`,
      '</tr>',
    ].join('');
  });
  return `<table class="steps"><thead><tr><th>#</th><th>Step</th><th>Status</th><th>Started</th><th>Finished</th><th>Took</th><th>Runbook command</th><th>Check</th><th>Detail</th></tr></thead><tbody>\n${rows.join('\n')}\n</tbody></table>`;
}

function header(run: RunRow): string {
  const created = ms(run.createdAt);
  const finished = ms(run.finishedAt);
  const fields: [string, string | null][] = [
    ['Handler', run.handler],
    ['Alert', run.alertname],
    ['Target', run.target],
    ['Mode', run.mode],
    ['Status', run.status],
    ['Reason', run.reason],
    ['Created', run.createdAt],
    ['Finished', run.finishedAt ? `${run.finishedAt}${created !== null && finished !== null ? ` (after ${formatDuration(finished - created)})` : ''}` : 'not finished'],
    ['Approved by', run.approvedBy ?? '—'],
    ['Alert fired', run.startsAt],
    ['Alert resolved', run.alertResolvedAt ?? '—'],
    ['Origin', run.origin],
    ['Run id', run.id],
  ];
  const dl = fields.map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd class="field-${escapeHtml(k.toLowerCase().replace(/ /g, '-'))}">${escapeHtml(v ?? '—')}</dd>`).join('\n');
  const labels = Object.entries(run.labels ?? {});
  const labelTable = labels.length
    ? `<h2>Alert labels</h2><table class="labels"><tbody>${labels.map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`).join('')}</tbody></table>`
    : '';
  return `<dl class="run status-${escapeHtml(run.status)}">\n${dl}\n</dl>\n${labelTable}`;
}

/** Measures each bar once laid out; a headless browser reads the widths from the dumped DOM. */
const SCRIPT = `(function(){var b=document.querySelectorAll('rect.bar');for(var i=0;i<b.length;i++){b[i].setAttribute('data-rendered-width',String(b[i].getBoundingClientRect().width));}document.documentElement.setAttribute('data-bars-rendered',String(b.length));})();`;
const SCRIPT_HASH = createHash('sha256').update(SCRIPT).digest('base64');

const CSS = `
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 12px}h2{font-size:16px;margin:24px 0 8px}
dl.run{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}
dt{font-weight:600;color:#555}dd{margin:0;word-break:break-word}
.chart{overflow-x:auto;border:1px solid #ddd;padding:8px}
svg text{font:12px system-ui,sans-serif;fill:#222}svg .tick-label{fill:#666;font-size:11px}svg .marker-label{fill:#e65100;font-size:11px}.off-chart{color:#e65100;font-size:12px;margin:4px 0 0}
svg .not-started,svg .empty{fill:#888;font-style:italic}svg rect.open{stroke:#0d47a1;stroke-dasharray:4 2}
.legend span{display:inline-block;margin-right:12px}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f5f5f5}pre{margin:0;white-space:pre-wrap;word-break:break-word;font:12px ui-monospace,Menlo,Consolas,monospace}
.status{color:#fff;padding:1px 6px;border-radius:3px;white-space:nowrap}.time{white-space:nowrap;font-size:12px}
.verdict.passed{color:#2e7d32;font-weight:600}.verdict.failed{color:#c62828;font-weight:600}.error{color:#ad1457}
table.labels{width:auto}footer{margin-top:24px;color:#888;font-size:12px}
`;

/** The whole page. */
export function renderTimeline(run: RunRow, steps: StepRow[], opts: TimelineOptions = {}): string {
  const layout = layoutTimeline(run, steps, opts);
  const nowMs = opts.now ? opts.now.getTime() : (ms(run.finishedAt) ?? ms(run.updatedAt));
  const legend = Object.entries(STATUS_COLOURS)
    .map(([s, c]) => `<span><i style="background:${c}"></i>${escapeHtml(s)}</span>`)
    .join('');
  const title = `dbpilot run ${run.handler} on ${run.target} (${run.status})`;
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-${SCRIPT_HASH}'; img-src data:; base-uri 'none'; form-action 'none'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>${CSS}</style>
</head>
<body>
<h1>${escapeHtml(title)}</h1>
${header(run)}
<h2>Steps over time</h2>
<div class="legend">${legend}</div>
<div class="chart">
${chartSvg(layout, steps)}
</div>
<h2>Steps</h2>
${stepsTable(steps, nowMs)}
<footer>Written by dbpilot from the audit store${opts.now ? ` at ${escapeHtml(opts.now.toISOString())}` : ''}. Times are UTC as recorded.</footer>
<script>${SCRIPT}</script>
</body>
</html>
`;
}
