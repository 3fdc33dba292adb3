/**
 * The PromQL that dbpilot's alert rules and Grafana dashboard run, and the metric names in it.
 *
 * Used by test/alerts/rules.test.ts (static checks: valid PromQL, only known metric names) and by
 * the end-to-end test, which checks the names against a live scrape of dbpilot. Series that
 * Prometheus creates itself (`up`, `ALERTS`, …) are in the expressions but never in a scrape:
 * subtract PROMETHEUS_GENERATED_SERIES before comparing.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const RULES_FILE = 'alerts/dbpilot.rules.yml';
export const DASHBOARD_FILE = 'grafana/database-dashboard.json';

/** Series Prometheus writes itself (per target or from rule evaluation), never exported by dbpilot. */
export const PROMETHEUS_GENERATED_SERIES: readonly string[] = [
  'up',
  'scrape_duration_seconds',
  'scrape_samples_scraped',
  'scrape_samples_post_metric_relabeling',
  'scrape_series_added',
  'ALERTS',
  'ALERTS_FOR_STATE',
];

/** What Grafana puts in for its built-in interval variables when the dashboard is tested offline. */
const GRAFANA_BUILTINS: Record<string, string> = {
  __rate_interval: '5m',
  __interval: '1m',
  __interval_ms: '60000',
  __range: '1h',
  __range_s: '3600',
  __range_ms: '3600000',
};

/** Binary operators and modifiers spelled as words (PromQL keywords are case-insensitive). */
const KEYWORDS = new Set(['and', 'or', 'unless', 'atan2', 'bool', 'offset', 'inf', 'nan']);
/** Keywords followed by a parenthesised list of label names. */
const LABEL_LIST_KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);

const IDENT_START = /[A-Za-z_:]/;
const IDENT_PART = /[A-Za-z0-9_:]/;

/**
 * Names of the series selectors in a PromQL expression: `max by (server) (rate(foo_total{a="b"}[5m]))`
 * gives `['foo_total']`. Function and aggregation names, keywords, label names (in matchers and in
 * by/without/on/ignoring/group_left/group_right lists), durations, numbers, strings and Grafana
 * variables (`$server`, `${__rate_interval}`) are not names. A selector written as
 * `{__name__="foo"}` gives `foo`. Each name once, in order of first appearance.
 */
export function metricNamesIn(expr: string): string[] {
  const names: string[] = [];
  const add = (name: string): void => {
    if (!names.includes(name)) names.push(name);
  };
  let i = 0;
  while (i < expr.length) {
    const c = expr[i]!;
    if (c === '#') {
      // A comment runs to the end of the line.
      const nl = expr.indexOf('\n', i);
      i = nl === -1 ? expr.length : nl + 1;
    } else if (c === '"' || c === "'" || c === '`') {
      i = skipString(expr, i);
    } else if (c === '[') {
      // Range or subquery: durations (or a Grafana variable) only.
      i = skipBalanced(expr, i, '[', ']');
    } else if (c === '{') {
      const end = skipBalanced(expr, i, '{', '}');
      const byName = /(?:^|[{,\s])__name__\s*=\s*(["'`])([^"'`]*)\1/.exec(expr.slice(i, end));
      if (byName) add(byName[2]!);
      i = end;
    } else if (c === '$') {
      i = skipGrafanaVariable(expr, i);
    } else if (/[0-9.]/.test(c)) {
      // A number or a duration: 5, 0.9, 1e-3, 0x1f, 5m, 1h30m.
      i++;
      while (i < expr.length && (/[0-9A-Za-z_.]/.test(expr[i]!) || (/[+-]/.test(expr[i]!) && /[eE]/.test(expr[i - 1]!)))) i++;
    } else if (IDENT_START.test(c)) {
      const start = i;
      while (i < expr.length && IDENT_PART.test(expr[i]!)) i++;
      const word = expr.slice(start, i);
      const next = nextNonSpace(expr, i);
      const lower = word.toLowerCase();
      if (LABEL_LIST_KEYWORDS.has(lower)) {
        if (expr[next] === '(') i = skipBalanced(expr, next, '(', ')');
      } else if (KEYWORDS.has(lower)) {
        // not a name
      } else if (expr[next] === '(') {
        // a function call or an aggregation: sum(...), rate(...)
      } else if (/^(by|without)\b/i.test(expr.slice(next))) {
        // an aggregation written `sum by (x) (...)`
      } else {
        add(word);
      }
    } else {
      i++;
    }
  }
  return names;
}

function nextNonSpace(s: string, i: number): number {
  while (i < s.length && /\s/.test(s[i]!)) i++;
  return i;
}

function skipString(s: string, i: number): number {
  const quote = s[i]!;
  i++;
  while (i < s.length && s[i] !== quote) i += quote !== '`' && s[i] === '\\' ? 2 : 1;
  return i + 1;
}

/** Index just past the bracket that closes the one at `i`, skipping strings inside. */
function skipBalanced(s: string, i: number, open: string, close: string): number {
  let depth = 0;
  while (i < s.length) {
    const c = s[i]!;
    if (c === '"' || c === "'" || c === '`') {
      i = skipString(s, i);
      continue;
    }
    if (c === open) depth++;
    else if (c === close && --depth === 0) return i + 1;
    i++;
  }
  return s.length;
}

function skipGrafanaVariable(s: string, i: number): number {
  if (s[i + 1] === '{') return skipBalanced(s, i + 1, '{', '}');
  i++;
  while (i < s.length && /\w/.test(s[i]!)) i++;
  return i;
}

/**
 * Grafana's template variables replaced by values that keep the expression valid PromQL: interval
 * built-ins by durations (`$__rate_interval` → `5m`), every other variable (`$server`,
 * `${database}`, `${server:regex}`, `[[server]]`) by `.*`, which is what an "All" selection of a
 * multi-value variable with allValue `.*` sends. An unknown `$__` built-in is an error rather than
 * a silent `.*`.
 */
export function substituteGrafanaVariables(expr: string): string {
  return expr.replace(/\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]/g, (match, a?: string, b?: string, c?: string) => {
    const name = (a ?? b ?? c)!;
    if (name.startsWith('__')) {
      const value = GRAFANA_BUILTINS[name];
      if (value === undefined) throw new Error(`unknown Grafana built-in variable ${match} in: ${expr}`);
      return value;
    }
    return '.*';
  });
}

export interface SourcedExpression {
  /** Where the expression comes from, e.g. `alerts/dbpilot.rules.yml alert PostgresPrimaryDown`. */
  source: string;
  /** The PromQL, Grafana variables already substituted (see substituteGrafanaVariables). */
  expr: string;
}

interface RuleFile {
  groups: { name: string; rules: { alert?: string; record?: string; expr: string }[] }[];
}

interface DashboardPanel {
  id?: number;
  title?: string;
  type?: string;
  targets?: { refId?: string; expr?: string }[];
  panels?: DashboardPanel[];
}

interface Dashboard {
  panels?: DashboardPanel[];
  annotations?: { list?: { name?: string; expr?: string }[] };
  templating?: { list?: { name: string; type: string; query?: string | { query?: string }; definition?: string }[] };
}

export function readRuleFile(root = REPO_ROOT): RuleFile {
  return parseYaml(readFileSync(`${root}${RULES_FILE}`, 'utf8')) as RuleFile;
}

export function readDashboard(root = REPO_ROOT): Dashboard {
  return JSON.parse(readFileSync(`${root}${DASHBOARD_FILE}`, 'utf8')) as Dashboard;
}

/** Every panel, including those nested in collapsed rows. */
export function allPanels(dashboard: Dashboard): DashboardPanel[] {
  return (dashboard.panels ?? []).flatMap((p) => [p, ...allPanels({ panels: p.panels ?? [] })]);
}

/**
 * Every PromQL expression of the alert rules and of the dashboard (panel targets, annotation
 * queries, and the series selector inside each `label_values(…)` / `query_result(…)` variable query),
 * with Grafana variables substituted so each is valid PromQL on its own.
 */
export function dashboardAndRuleExpressions(root = REPO_ROOT): SourcedExpression[] {
  const out: SourcedExpression[] = [];
  for (const group of readRuleFile(root).groups) {
    for (const rule of group.rules) {
      out.push({ source: `${RULES_FILE} ${rule.alert !== undefined ? `alert ${rule.alert}` : `record ${rule.record}`}`, expr: rule.expr.trim() });
    }
  }
  const dashboard = readDashboard(root);
  for (const panel of allPanels(dashboard)) {
    for (const target of panel.targets ?? []) {
      if (target.expr === undefined || target.expr.trim() === '') continue;
      out.push({ source: `${DASHBOARD_FILE} panel ${panel.id} "${panel.title}" target ${target.refId}`, expr: substituteGrafanaVariables(target.expr.trim()) });
    }
  }
  for (const annotation of dashboard.annotations?.list ?? []) {
    if (annotation.expr) out.push({ source: `${DASHBOARD_FILE} annotation "${annotation.name}"`, expr: substituteGrafanaVariables(annotation.expr.trim()) });
  }
  for (const variable of dashboard.templating?.list ?? []) {
    if (variable.type !== 'query') continue;
    const query = typeof variable.query === 'string' ? variable.query : (variable.query?.query ?? variable.definition ?? '');
    const inner = variableQueryExpression(query);
    if (inner !== undefined) out.push({ source: `${DASHBOARD_FILE} variable ${variable.name}`, expr: substituteGrafanaVariables(inner) });
  }
  return out;
}

/** The PromQL inside a Prometheus variable query: `label_values(sel, label)` → `sel`, `query_result(e)` → `e`. */
export function variableQueryExpression(query: string): string | undefined {
  const q = query.trim();
  const labelValues = /^label_values\(([\s\S]*),\s*(\w+)\s*\)$/.exec(q);
  if (labelValues) return labelValues[1]!.trim();
  const queryResult = /^query_result\(([\s\S]*)\)$/.exec(q);
  if (queryResult) return queryResult[1]!.trim();
  return undefined;
}
