/**
 * A small parser of the Prometheus text exposition format (0.0.4) and of OpenMetrics 1.0 text, as
 * far as the exporter's tests need it: `# HELP`, `# TYPE`, samples with escaped label values, and
 * NaN / ±Inf values. Written here so the tests assert what a real scraper would read off the wire,
 * not what prom-client holds in memory.
 */

export type Labels = Record<string, string>;

export interface Sample {
  name: string;
  labels: Labels;
  value: number;
}

export interface Exposition {
  samples: Sample[];
  help: Map<string, string>;
  type: Map<string, string>;
  /** OpenMetrics only: whether the body ended with `# EOF`. */
  eof: boolean;
}

function unescapeHelp(s: string): string {
  return s.replace(/\\(\\|n)/g, (_m, c: string) => (c === 'n' ? '\n' : '\\'));
}

function parseValue(s: string): number {
  // Case-insensitive like Prometheus' own parser (Go's ParseFloat): prom-client writes NaN as `Nan`.
  switch (s.toLowerCase()) {
    case 'nan':
      return Number.NaN;
    case '+inf':
    case 'inf':
      return Number.POSITIVE_INFINITY;
    case '-inf':
      return Number.NEGATIVE_INFINITY;
    default: {
      const n = Number(s);
      if (s === '' || Number.isNaN(n)) throw new Error(`not a sample value: ${JSON.stringify(s)}`);
      return n;
    }
  }
}

/** Parses `{a="x",b="y\"z"}` starting at `line[start] === '{'`; returns the labels and the index after `}`. */
function parseLabels(line: string, start: number): { labels: Labels; end: number } {
  const labels: Labels = {};
  let i = start + 1;
  for (;;) {
    while (line[i] === ' ' || line[i] === ',') i++;
    if (line[i] === '}') return { labels, end: i + 1 };
    const eq = line.indexOf('=', i);
    if (eq < 0) throw new Error(`bad label set in ${JSON.stringify(line)}`);
    const name = line.slice(i, eq).trim();
    if (!/^[a-zA-Z_][a-zA-Z0-9_]*$/.test(name)) throw new Error(`bad label name ${JSON.stringify(name)} in ${JSON.stringify(line)}`);
    if (line[eq + 1] !== '"') throw new Error(`label value not quoted in ${JSON.stringify(line)}`);
    let value = '';
    let j = eq + 2;
    for (;;) {
      const c = line[j];
      if (c === undefined) throw new Error(`unterminated label value in ${JSON.stringify(line)}`);
      if (c === '\\') {
        const n = line[j + 1];
        value += n === 'n' ? '\n' : n === '"' ? '"' : n === '\\' ? '\\' : `\\${n ?? ''}`;
        j += 2;
        continue;
      }
      if (c === '"') break;
      value += c;
      j++;
    }
    if (name in labels) throw new Error(`duplicate label ${name} in ${JSON.stringify(line)}`);
    labels[name] = value;
    i = j + 1;
  }
}

export function parseExposition(text: string): Exposition {
  const out: Exposition = { samples: [], help: new Map(), type: new Map(), eof: false };
  const lines = text.split('\n');
  for (const [n, line] of lines.entries()) {
    if (line === '') continue;
    if (out.eof) throw new Error(`content after # EOF at line ${n + 1}`);
    if (line.startsWith('#')) {
      if (line === '# EOF') {
        out.eof = true;
        continue;
      }
      const m = /^# (HELP|TYPE|UNIT) ([a-zA-Z_:][a-zA-Z0-9_:]*)(?: (.*))?$/.exec(line);
      if (!m) continue; // a plain comment
      const [, kind, name, rest = ''] = m;
      if (kind === 'HELP') out.help.set(name!, unescapeHelp(rest));
      else if (kind === 'TYPE') out.type.set(name!, rest);
      continue;
    }
    const nm = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (!nm) throw new Error(`bad sample line ${n + 1}: ${JSON.stringify(line)}`);
    const name = nm[0];
    let i = name.length;
    let labels: Labels = {};
    if (line[i] === '{') ({ labels, end: i } = parseLabels(line, i));
    const rest = line.slice(i).trim().split(/\s+/);
    out.samples.push({ name, labels, value: parseValue(rest[0] ?? '') });
  }
  return out;
}

/** Samples of `name` whose labels include every pair in `match`. */
export function find(e: Exposition, name: string, match: Labels = {}): Sample[] {
  return e.samples.filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v));
}

/** The value of the one sample of `name` matching `match`; throws when there are none or several. */
export function value(e: Exposition, name: string, match: Labels = {}): number {
  const found = find(e, name, match);
  if (found.length !== 1) {
    const have = find(e, name).map((s) => JSON.stringify(s.labels));
    throw new Error(`expected exactly one ${name}${JSON.stringify(match)}, found ${found.length}; series of ${name}: ${have.join(' ') || '(none)'}`);
  }
  return found[0]!.value;
}

export interface ScrapeResult {
  status: number;
  contentType: string;
  body: string;
  metrics: Exposition;
  /** Wall-clock milliseconds from sending the request to having the whole body. */
  ms: number;
}

/** GET {baseUrl}/metrics and parse it. */
export async function scrape(baseUrl: string, opts: { accept?: string } = {}): Promise<ScrapeResult> {
  const started = performance.now();
  const res = await fetch(`${baseUrl}/metrics`, { headers: opts.accept ? { accept: opts.accept } : {} });
  const body = await res.text();
  const ms = performance.now() - started;
  return { status: res.status, contentType: res.headers.get('content-type') ?? '', body, metrics: parseExposition(body), ms };
}
