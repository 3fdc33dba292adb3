/**
 * `helm template` for helm/dbpilot without helm: loads the chart (Chart.yaml, values.yaml, templates/,
 * files), merges values the way Helm does, renders every template with gotemplate.ts and splits the
 * output into manifests. Also runs a real `helm` binary when one is available, for the cross-check.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { TemplateSet, isDict, toYaml } from './gotemplate.js';

export type Dict = Record<string, unknown>;

export interface Chart {
  dir: string;
  /** Chart.yaml as written. */
  metadata: Dict;
  /** values.yaml. */
  values: Dict;
  /** templates/… relative path → source. */
  templates: Map<string, string>;
}

export interface RenderOptions {
  releaseName?: string;
  namespace?: string;
  /** Like `--set`/`-f`: merged over values.yaml; null deletes a default key. */
  values?: Dict;
}

export interface Manifest {
  /** templates/… file it came from. */
  source: string;
  /** A Kubernetes object, walked as plain JSON by the tests. */
  doc: Record<string, any>;
}

export interface Rendered {
  /** templates/… path → rendered text (partials `_*.tpl` excluded). */
  files: Map<string, string>;
  manifests: Manifest[];
  notes: string;
  values: Dict;
}

/** Helm (sigs.k8s.io/yaml) reads YAML 1.1: yes/no/on/off are booleans. */
export function parseHelmYaml(text: string): unknown {
  return parseYaml(text, { version: '1.1', uniqueKeys: true });
}

export function loadChart(dir: string): Chart {
  const metadata = parseHelmYaml(readFileSync(path.join(dir, 'Chart.yaml'), 'utf8')) as Dict;
  const values = (parseHelmYaml(readFileSync(path.join(dir, 'values.yaml'), 'utf8')) ?? {}) as Dict;
  const templates = new Map<string, string>();
  const walk = (rel: string): void => {
    for (const entry of readdirSync(path.join(dir, rel)).sort()) {
      const r = path.posix.join(rel, entry);
      if (statSync(path.join(dir, r)).isDirectory()) walk(r);
      else templates.set(r, readFileSync(path.join(dir, r), 'utf8'));
    }
  };
  walk('templates');
  return { dir, metadata, values, templates };
}

/** Helm's coalesce: user values over defaults, maps merged recursively, null removes a default. */
export function mergeValues(defaults: Dict, overrides: Dict): Dict {
  const out: Dict = { ...defaults };
  for (const [k, v] of Object.entries(overrides)) {
    if (v === null) delete out[k];
    else if (isDict(v) && isDict(out[k])) out[k] = mergeValues(out[k] as Dict, v);
    else out[k] = v;
  }
  return out;
}

function chartObject(metadata: Dict): Dict {
  // .Chart is Helm's chart.Metadata: Go field names.
  const names: Record<string, string> = {
    apiVersion: 'APIVersion',
    name: 'Name',
    version: 'Version',
    appVersion: 'AppVersion',
    description: 'Description',
    type: 'Type',
    kubeVersion: 'KubeVersion',
    home: 'Home',
    sources: 'Sources',
    keywords: 'Keywords',
  };
  const out: Dict = {};
  for (const [k, v] of Object.entries(metadata)) out[names[k] ?? k] = v;
  return out;
}

export function renderChart(chart: Chart, opts: RenderOptions = {}): Rendered {
  const releaseName = opts.releaseName ?? 'dbpilot';
  const namespace = opts.namespace ?? 'lomash-wood';
  const values = mergeValues(chart.values, opts.values ?? {});
  const set = new TemplateSet();
  const chartName = String(chart.metadata.name);
  for (const [rel, src] of chart.templates) set.add(`${chartName}/${rel}`, src);
  const readFile = (name: unknown): string => {
    if (typeof name !== 'string') throw new Error('Files.Get needs a string');
    const full = path.resolve(chart.dir, name);
    if (!full.startsWith(`${path.resolve(chart.dir)}${path.sep}`) || name.startsWith('templates/')) return '';
    return existsSync(full) ? readFileSync(full, 'utf8') : '';
  };
  const files = new Map<string, string>();
  let notes = '';
  for (const rel of chart.templates.keys()) {
    const base = path.posix.basename(rel);
    if (base.startsWith('_')) continue;
    const name = `${chartName}/${rel}`;
    const data: Dict = {
      Values: values,
      Release: { Name: releaseName, Namespace: namespace, Service: 'Helm', IsInstall: true, IsUpgrade: false, Revision: 1n },
      Chart: chartObject(chart.metadata),
      Files: { Get: readFile },
      Template: { Name: name, BasePath: `${chartName}/templates` },
      Capabilities: { KubeVersion: { Version: 'v1.33.0', Major: '1', Minor: '33' } },
    };
    const text = set.execute(name, data);
    if (base === 'NOTES.txt') notes = text;
    else files.set(rel, text);
  }
  const manifests: Manifest[] = [];
  for (const [rel, text] of files) {
    for (const doc of splitManifests(text, rel)) manifests.push({ source: rel, doc });
  }
  return { files, manifests, notes, values };
}

/** Helm's releaseutil.SplitManifests, then YAML parsing as the API client does; empty documents dropped. */
export function splitManifests(text: string, source: string): Dict[] {
  const out: Dict[] = [];
  for (const doc of parseAllDocuments(text, { version: '1.1', uniqueKeys: true })) {
    if (doc.errors.length > 0) throw new Error(`${source}: invalid YAML: ${doc.errors[0]!.message}\n${text}`);
    const js: unknown = doc.toJS();
    if (js === null || js === undefined) continue;
    if (!isDict(js)) throw new Error(`${source}: a manifest must be a mapping, got ${JSON.stringify(js)}`);
    out.push(js);
  }
  return out;
}

/** The helm binary to cross-check with: $HELM_BIN, else `helm` on PATH, else null. */
export function findHelm(): string | null {
  const candidates = [process.env.HELM_BIN, ...(process.env.PATH ?? '').split(path.delimiter).map((d) => path.join(d, 'helm'))];
  for (const c of candidates) {
    if (!c || !existsSync(c)) continue;
    const r = spawnSync(c, ['version', '--short'], { encoding: 'utf8', timeout: 20_000 });
    if (r.status === 0) return c;
  }
  return null;
}

/** `helm template` with the same release, namespace and value overrides; the output split by source template. */
export function helmTemplate(helm: string, chartDir: string, opts: RenderOptions = {}): Manifest[] {
  const args = ['template', opts.releaseName ?? 'dbpilot', chartDir, '--namespace', opts.namespace ?? 'lomash-wood'];
  let input: string | undefined;
  if (opts.values) {
    args.push('--values', '-');
    input = toYaml(opts.values);
  }
  const r = spawnSync(helm, args, { encoding: 'utf8', input, timeout: 60_000, env: { ...process.env, HELM_CACHE_HOME: '/tmp/dbpilot-helm-cache', HELM_CONFIG_HOME: '/tmp/dbpilot-helm-config', HELM_DATA_HOME: '/tmp/dbpilot-helm-data' } });
  if (r.status !== 0) throw new Error(`helm template failed: ${r.stderr}`);
  const out: Manifest[] = [];
  // Each document starts with "# Source: dbpilot/templates/<file>".
  for (const chunk of r.stdout.split(/^---\s*$/m)) {
    const m = /^# Source: [^/]+\/(templates\/\S+)/m.exec(chunk);
    if (!m) continue;
    for (const doc of splitManifests(chunk, m[1]!)) out.push({ source: m[1]!, doc });
  }
  return out;
}

/** The helm binary's error for a chart it refuses to render, or null when it renders. */
export function helmTemplateError(helm: string, chartDir: string, opts: RenderOptions = {}): string | null {
  try {
    helmTemplate(helm, chartDir, opts);
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}
