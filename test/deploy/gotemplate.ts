/**
 * A small renderer for the subset of Go text/template + Sprig that helm/dbpilot uses, so the chart
 * can be rendered and checked in the test suite without a `helm` binary (there is none on the
 * development machines or in CI, and no maintained JavaScript Helm renderer was found on npm).
 *
 * It follows Helm's semantics where the chart could notice a difference, and refuses whatever it
 * does not implement instead of guessing:
 * - actions, `{{-` / `-}}` trimming, comments; if / else if / else, with / else, range over lists
 *   and maps (keys in sorted order, as Go does) with `$k, $v :=`; define / include / template;
 *   variables with `:=` and `=` scoped to their control structure; pipelines with `|`, parenthesised
 *   sub-pipelines and field chains on them; method calls such as `.Files.Get "name"`.
 * - missing map keys are nil and print as "" (Helm runs with missingkey=zero and then removes
 *   "<no value>"); a field of nil is an error ("nil pointer evaluating"), as in Go.
 * - numbers keep Go's int / float64 distinction: values from YAML are float64 (JS number), template
 *   literals and the results of `int` / `len` are int (JS bigint). Comparing an int with a float64,
 *   `%d` on a float64 and a float64 where Sprig wants an int fail or print the way Go does, so the
 *   classic `eq .Values.replicaCount 1` bug shows up here too.
 * - toYaml sorts map keys and quotes YAML 1.1 look-alikes (yes, on, y …) like sigs.k8s.io/yaml; its
 *   layout may differ from Helm's, its meaning may not.
 * - an unknown function is a parse error, as in Go.
 * test/deploy/gotemplate.test.ts pins these semantics; when a `helm` binary is available (HELM_BIN
 * or on PATH) test/deploy/deploy.test.ts also compares this renderer's output with `helm template`.
 */
import { createHash } from 'node:crypto';
import { stringify as stringifyYaml } from 'yaml';

export class TemplateError extends Error {
  constructor(template: string, message: string) {
    super(`template: ${template}: ${message}`);
    this.name = 'TemplateError';
  }
}

// ---------------------------------------------------------------------------------------------
// Lexing

type Token =
  | { k: 'string'; v: string }
  | { k: 'number'; v: number | bigint }
  | { k: 'bool'; v: boolean }
  | { k: 'nil' }
  | { k: 'field'; path: string[]; attached: boolean }
  | { k: 'var'; name: string; path: string[] }
  | { k: 'ident'; name: string }
  | { k: 'lparen' }
  | { k: 'rparen' }
  | { k: 'pipe' }
  | { k: 'comma' }
  | { k: 'declare' }
  | { k: 'assign' };

type Item = { k: 'text'; text: string } | { k: 'action'; tokens: Token[]; line: number } | { k: 'comment' };

const SPACE = new Set([' ', '\t', '\r', '\n']);
const IDENT_START = /[A-Za-z_]/;
const IDENT_CHAR = /[A-Za-z0-9_]/;

function lex(name: string, src: string): Item[] {
  const items: Item[] = [];
  let pos = 0;
  let trimNext = false;
  const lineAt = (p: number): number => src.slice(0, p).split('\n').length;
  const fail = (p: number, msg: string): never => {
    throw new TemplateError(`${name}:${lineAt(p)}`, msg);
  };
  const pushText = (text: string): void => {
    if (trimNext) text = text.replace(/^[ \t\r\n]+/, '');
    trimNext = false;
    if (text) items.push({ k: 'text', text });
  };
  while (pos < src.length) {
    const open = src.indexOf('{{', pos);
    if (open < 0) {
      pushText(src.slice(pos));
      break;
    }
    let text = src.slice(pos, open);
    let p = open + 2;
    if (src[p] === '-' && SPACE.has(src[p + 1] ?? '')) {
      text = text.replace(/[ \t\r\n]+$/, '');
      p += 2;
    }
    pushText(text);
    if (src.startsWith('/*', p)) {
      const end = src.indexOf('*/', p + 2);
      if (end < 0) fail(p, 'unclosed comment');
      let q = end + 2;
      if (src.startsWith(' -}}', q)) {
        trimNext = true;
        q += 4;
      } else if (src.startsWith('}}', q)) {
        q += 2;
      } else {
        fail(q, 'comment ends before closing delimiter');
      }
      items.push({ k: 'comment' });
      pos = q;
      continue;
    }
    const tokens: Token[] = [];
    const line = lineAt(open);
    for (;;) {
      // Skip spaces, but stop at ` -}}`: the right trim marker (which needs a space before it).
      while (p < src.length && SPACE.has(src[p]!) && !src.startsWith('-}}', p + 1)) p++;
      if (p >= src.length) fail(open, 'unclosed action');
      if (SPACE.has(src[p]!) && src.startsWith('-}}', p + 1)) {
        trimNext = true;
        p += 4;
        break;
      }
      if (src.startsWith('}}', p)) {
        p += 2;
        break;
      }
      const c = src[p]!;
      if (c === '"') {
        let q = p + 1;
        while (q < src.length && src[q] !== '"') {
          if (src[q] === '\\') q++;
          if (src[q] === '\n') fail(q, 'unterminated quoted string');
          q++;
        }
        if (q >= src.length) fail(p, 'unterminated quoted string');
        tokens.push({ k: 'string', v: JSON.parse(src.slice(p, q + 1)) as string });
        p = q + 1;
      } else if (c === '`') {
        const q = src.indexOf('`', p + 1);
        if (q < 0) fail(p, 'unterminated raw quoted string');
        tokens.push({ k: 'string', v: src.slice(p + 1, q) });
        p = q + 1;
      } else if (/[0-9]/.test(c) || ((c === '-' || c === '+') && /[0-9]/.test(src[p + 1] ?? ''))) {
        const m = /^[-+]?(?:0[xX][0-9a-fA-F_]+|[0-9_]*\.?[0-9_]+(?:[eE][-+]?[0-9]+)?)/.exec(src.slice(p))!;
        const lit = m[0].replace(/_/g, '');
        const isInt = /^[-+]?(?:0[xX][0-9a-fA-F]+|[0-9]+)$/.test(lit);
        tokens.push({ k: 'number', v: isInt ? BigInt(lit.replace(/^\+/, '')) : Number(lit) });
        p += m[0].length;
      } else if (c === '.') {
        const attached = tokens.length > 0 && tokens[tokens.length - 1]!.k === 'rparen' && !SPACE.has(src[p - 1]!);
        const path: string[] = [];
        while (src[p] === '.' && IDENT_START.test(src[p + 1] ?? '')) {
          let q = p + 1;
          while (q < src.length && IDENT_CHAR.test(src[q]!)) q++;
          path.push(src.slice(p + 1, q));
          p = q;
        }
        if (path.length === 0) p++; // the bare dot
        tokens.push({ k: 'field', path, attached });
      } else if (c === '$') {
        let q = p + 1;
        while (q < src.length && IDENT_CHAR.test(src[q]!)) q++;
        const varName = src.slice(p, q);
        p = q;
        const path: string[] = [];
        while (src[p] === '.' && IDENT_START.test(src[p + 1] ?? '')) {
          let r = p + 1;
          while (r < src.length && IDENT_CHAR.test(src[r]!)) r++;
          path.push(src.slice(p + 1, r));
          p = r;
        }
        tokens.push({ k: 'var', name: varName, path });
      } else if (IDENT_START.test(c)) {
        let q = p;
        while (q < src.length && IDENT_CHAR.test(src[q]!)) q++;
        const word = src.slice(p, q);
        p = q;
        if (word === 'true' || word === 'false') tokens.push({ k: 'bool', v: word === 'true' });
        else if (word === 'nil') tokens.push({ k: 'nil' });
        else tokens.push({ k: 'ident', name: word });
      } else if (c === '(') {
        tokens.push({ k: 'lparen' });
        p++;
      } else if (c === ')') {
        tokens.push({ k: 'rparen' });
        p++;
      } else if (c === '|') {
        tokens.push({ k: 'pipe' });
        p++;
      } else if (c === ',') {
        tokens.push({ k: 'comma' });
        p++;
      } else if (src.startsWith(':=', p)) {
        tokens.push({ k: 'declare' });
        p += 2;
      } else if (c === '=') {
        tokens.push({ k: 'assign' });
        p++;
      } else {
        fail(p, `unexpected ${JSON.stringify(c)} in action`);
      }
    }
    items.push({ k: 'action', tokens, line });
    pos = p;
  }
  return items;
}

// ---------------------------------------------------------------------------------------------
// Parsing

type Operand =
  | { k: 'lit'; v: unknown }
  | { k: 'field'; path: string[] }
  | { k: 'var'; name: string; path: string[] }
  | { k: 'ident'; name: string }
  | { k: 'sub'; pipe: Pipe; path: string[] };

interface Pipe {
  decl: string[];
  /** `=` (assign to existing variables) rather than `:=`. */
  assign: boolean;
  cmds: Operand[][];
}

type Node =
  | { k: 'text'; text: string }
  | { k: 'action'; pipe: Pipe; line: number }
  | { k: 'if' | 'with' | 'range'; pipe: Pipe; list: Node[]; elseList: Node[] | null; line: number }
  | { k: 'template'; name: string; pipe: Pipe | null; line: number };

const KEYWORDS = new Set(['if', 'else', 'end', 'range', 'with', 'define', 'template', 'block', 'break', 'continue']);

class Parser {
  private i = 0;
  constructor(
    private readonly name: string,
    private readonly items: Item[],
    private readonly defines: Map<string, Node[]>,
    private readonly funcs: ReadonlySet<string>,
  ) {}

  parse(): Node[] {
    const { nodes, stop } = this.list(new Set());
    if (stop) this.fail(stop.line, `unexpected {{${stop.word}}}`);
    return nodes;
  }

  private fail(line: number, msg: string): never {
    throw new TemplateError(`${this.name}:${line}`, msg);
  }

  /** Nodes until one of `stops` (else / end); returns the stopping action's remaining tokens. */
  private list(stops: Set<string>): { nodes: Node[]; stop: { word: string; rest: Token[]; line: number } | null } {
    const nodes: Node[] = [];
    while (this.i < this.items.length) {
      const item = this.items[this.i++]!;
      if (item.k === 'text') {
        nodes.push({ k: 'text', text: item.text });
        continue;
      }
      if (item.k === 'comment') continue;
      const [first, ...rest] = item.tokens;
      if (!first) this.fail(item.line, 'missing value for command');
      const word = first.k === 'ident' && KEYWORDS.has(first.name) ? first.name : null;
      if (word === null) {
        nodes.push({ k: 'action', pipe: this.pipe(item.tokens, item.line), line: item.line });
        continue;
      }
      if (word === 'end' || word === 'else') {
        if (!stops.has(word)) this.fail(item.line, `unexpected {{${word}}}`);
        return { nodes, stop: { word, rest, line: item.line } };
      }
      if (word === 'if' || word === 'with' || word === 'range') {
        nodes.push(this.control(word, rest, item.line));
      } else if (word === 'define') {
        const nameTok = rest[0];
        if (rest.length !== 1 || nameTok?.k !== 'string') this.fail(item.line, 'define needs one quoted name');
        const body = this.list(new Set(['end']));
        if (!body.stop) this.fail(item.line, 'unexpected EOF in define');
        this.defines.set(nameTok.v, body.nodes);
      } else if (word === 'template') {
        const nameTok = rest[0];
        if (nameTok?.k !== 'string') this.fail(item.line, 'template needs a quoted name');
        nodes.push({ k: 'template', name: nameTok.v, pipe: rest.length > 1 ? this.pipe(rest.slice(1), item.line) : null, line: item.line });
      } else {
        this.fail(item.line, `{{${word}}} is not supported by this renderer`);
      }
    }
    if (stops.size > 0) this.fail(this.items.length, 'unexpected EOF');
    return { nodes, stop: null };
  }

  private control(word: 'if' | 'with' | 'range', tokens: Token[], line: number): Node {
    const pipe = this.pipe(tokens, line);
    if (pipe.decl.length > (word === 'range' ? 2 : 1)) this.fail(line, `too many declarations in ${word}`);
    const body = this.list(new Set(['else', 'end']));
    if (!body.stop) this.fail(line, `unexpected EOF in ${word}`);
    let elseList: Node[] | null = null;
    if (body.stop.word === 'else') {
      const rest = body.stop.rest;
      const chained = rest[0];
      if (chained && chained.k === 'ident' && (chained.name === 'if' || (chained.name === 'with' && word === 'with'))) {
        // {{else if x}} … {{end}}: one nested control structure sharing the outer {{end}}.
        elseList = [this.control(chained.name, rest.slice(1), body.stop.line)];
      } else {
        if (rest.length > 0) this.fail(body.stop.line, 'unexpected tokens after else');
        const tail = this.list(new Set(['end']));
        if (!tail.stop) this.fail(line, `unexpected EOF in ${word}`);
        elseList = tail.nodes;
      }
    } else if (body.stop.rest.length > 0) {
      this.fail(body.stop.line, 'unexpected tokens after end');
    }
    return { k: word, pipe, list: body.nodes, elseList, line };
  }

  private pipe(tokens: Token[], line: number): Pipe {
    let decl: string[] = [];
    let assign = false;
    let start = 0;
    const t0 = tokens[0];
    const t1 = tokens[1];
    if (t0?.k === 'var' && t0.path.length === 0) {
      if (t1?.k === 'declare' || t1?.k === 'assign') {
        decl = [t0.name];
        assign = t1.k === 'assign';
        start = 2;
      } else if (t1?.k === 'comma') {
        const t2 = tokens[2];
        const t3 = tokens[3];
        if (t2?.k !== 'var' || t2.path.length > 0 || (t3?.k !== 'declare' && t3?.k !== 'assign')) this.fail(line, 'bad variable declaration');
        decl = [t0.name, t2.name];
        assign = t3.k === 'assign';
        start = 4;
      }
    }
    const cmds: Operand[][] = [];
    let cmd: Operand[] = [];
    for (let i = start; i < tokens.length; i++) {
      const t = tokens[i]!;
      if (t.k === 'pipe') {
        if (cmd.length === 0) this.fail(line, 'missing command before |');
        cmds.push(cmd);
        cmd = [];
        continue;
      }
      if (t.k === 'lparen') {
        let depth = 1;
        let j = i + 1;
        for (; j < tokens.length && depth > 0; j++) {
          if (tokens[j]!.k === 'lparen') depth++;
          else if (tokens[j]!.k === 'rparen') depth--;
        }
        if (depth !== 0) this.fail(line, 'unclosed left paren');
        const sub = this.pipe(tokens.slice(i + 1, j - 1), line);
        if (sub.decl.length > 0) this.fail(line, 'declaration inside parentheses is not supported');
        let path: string[] = [];
        const after = tokens[j];
        if (after?.k === 'field' && after.attached) {
          path = after.path;
          j++;
        }
        cmd.push({ k: 'sub', pipe: sub, path });
        i = j - 1;
        continue;
      }
      switch (t.k) {
        case 'string':
        case 'number':
        case 'bool':
          cmd.push({ k: 'lit', v: t.v });
          break;
        case 'nil':
          cmd.push({ k: 'lit', v: null });
          break;
        case 'field':
          cmd.push({ k: 'field', path: t.path });
          break;
        case 'var':
          cmd.push({ k: 'var', name: t.name, path: t.path });
          break;
        case 'ident':
          if (KEYWORDS.has(t.name)) this.fail(line, `unexpected keyword ${t.name}`);
          if (!this.funcs.has(t.name)) this.fail(line, `function "${t.name}" not defined`);
          cmd.push({ k: 'ident', name: t.name });
          break;
        default:
          this.fail(line, `unexpected ${t.k} in operand`);
      }
    }
    if (cmd.length > 0) cmds.push(cmd);
    if (cmds.length === 0) this.fail(line, 'missing value for command');
    return { decl, assign, cmds };
  }
}

// ---------------------------------------------------------------------------------------------
// Values: Go's view of them

type Dict = Record<string, unknown>;

export function isDict(v: unknown): v is Dict {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.getPrototypeOf(v) === Object.prototype;
}

/** Go's truth (text/template isTrue). */
export function truthy(v: unknown): boolean {
  if (v === null || v === undefined) return false;
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number') return v !== 0;
  if (typeof v === 'bigint') return v !== 0n;
  if (typeof v === 'string') return v.length > 0;
  if (Array.isArray(v)) return v.length > 0;
  if (isDict(v)) return Object.keys(v).length > 0;
  return true;
}

function goType(v: unknown): string {
  if (v === null || v === undefined) return '<nil>';
  if (typeof v === 'bigint') return 'int';
  if (typeof v === 'number') return 'float64';
  if (typeof v === 'string') return 'string';
  if (typeof v === 'boolean') return 'bool';
  if (Array.isArray(v)) return '[]interface {}';
  if (isDict(v)) return 'map[string]interface {}';
  return typeof v;
}

/** strconv.FormatFloat(f, 'g', -1, 64), which is what %v prints for a float64. */
export function formatFloat(f: number): string {
  if (Number.isNaN(f)) return 'NaN';
  if (!Number.isFinite(f)) return f > 0 ? '+Inf' : '-Inf';
  if (f === 0) return Object.is(f, -0) ? '-0' : '0';
  const [mant, expStr] = f.toExponential().split('e') as [string, string];
  const exp = Number(expStr);
  // Shortest representation: %e when the exponent is < -4 or >= 6 (so 1000000 prints as 1e+06).
  if (exp < -4 || exp >= 6) {
    return `${mant}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  return String(f);
}

/** fmt's %v. */
export function goString(v: unknown): string {
  if (v === null || v === undefined) return '<no value>';
  if (typeof v === 'string') return v;
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number') return formatFloat(v);
  if (typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return `[${v.map((x) => (x === null || x === undefined ? '<nil>' : goString(x))).join(' ')}]`;
  if (isDict(v)) {
    return `map[${Object.keys(v)
      .sort()
      .map((k) => `${k}:${v[k] === null || v[k] === undefined ? '<nil>' : goString(v[k])}`)
      .join(' ')}]`;
  }
  throw new Error(`cannot print a ${typeof v}`);
}

/** Plain data for YAML/JSON: ints become numbers. */
function plain(v: unknown): unknown {
  if (typeof v === 'bigint') return Number(v);
  if (Array.isArray(v)) return v.map(plain);
  if (isDict(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v === undefined ? null : v;
}

/** Helm's toYaml: sigs.k8s.io/yaml (keys sorted, YAML 1.1 look-alikes quoted), trailing newline trimmed. */
export function toYaml(v: unknown): string {
  return stringifyYaml(plain(v), { sortMapEntries: true, indentSeq: false, version: '1.1', lineWidth: 0 }).replace(/\n$/, '');
}

/** Sprig's empty. */
function empty(v: unknown): boolean {
  return !truthy(v);
}

function basicKind(v: unknown): 'int' | 'float' | 'string' | 'bool' | 'nil' | 'other' {
  if (v === null || v === undefined) return 'nil';
  if (typeof v === 'bigint') return 'int';
  if (typeof v === 'number') return 'float';
  if (typeof v === 'string') return 'string';
  if (typeof v === 'boolean') return 'bool';
  return 'other';
}

function goEq(a: unknown, b: unknown): boolean {
  const ka = basicKind(a);
  const kb = basicKind(b);
  if (ka === 'nil' || kb === 'nil') return ka === kb;
  if (ka === 'other' || kb === 'other') throw new Error('invalid type for comparison');
  if (ka !== kb) throw new Error('incompatible types for comparison');
  return a === b;
}

function goLess(a: unknown, b: unknown): boolean {
  const ka = basicKind(a);
  const kb = basicKind(b);
  if (ka === 'nil' || ka === 'other' || ka === 'bool' || kb === 'nil' || kb === 'other' || kb === 'bool') throw new Error('invalid type for comparison');
  if (ka !== kb) throw new Error('incompatible types for comparison');
  return (a as number) < (b as number);
}

// ---------------------------------------------------------------------------------------------
// Functions

type Fn = (...args: unknown[]) => unknown;

function wantString(fn: string, v: unknown): string {
  if (typeof v !== 'string') throw new Error(`wrong type for value; expected string; got ${goType(v)} (in ${fn})`);
  return v;
}

function wantInt(fn: string, v: unknown): number {
  if (typeof v !== 'bigint') throw new Error(`wrong type for value; expected int; got ${goType(v)} (in ${fn})`);
  return Number(v);
}

function toInt(v: unknown): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number') return BigInt(Math.trunc(v));
  if (typeof v === 'boolean') return v ? 1n : 0n;
  if (typeof v === 'string') return /^[-+]?[0-9]+$/.test(v.trim()) ? BigInt(v.trim()) : 0n;
  return 0n;
}

/** A subset of fmt.Sprintf: %s %d %v %q %%. */
export function sprintf(format: string, args: unknown[]): string {
  let i = 0;
  return format.replace(/%([%sdvq])/g, (_m, verb: string) => {
    if (verb === '%') return '%';
    if (i >= args.length) return `%!${verb}(MISSING)`;
    const a = args[i++];
    switch (verb) {
      case 'd':
        return typeof a === 'bigint' ? a.toString() : `%!d(${goType(a)}=${goString(a)})`;
      case 'q':
        return typeof a === 'string' ? JSON.stringify(a) : `%!q(${goType(a)}=${goString(a)})`;
      case 's':
        return typeof a === 'string' ? a : a === null || a === undefined ? '%!s(<nil>)' : `%!s(${goType(a)}=${goString(a)})`;
      default:
        return a === null || a === undefined ? '<nil>' : goString(a);
    }
  });
}

function indent(n: number, s: string): string {
  const pad = ' '.repeat(n);
  return pad + s.replace(/\n/g, `\n${pad}`);
}

/** Functions that are not Go built-ins or Sprig/Helm functions with plain arguments. */
const LAZY = new Set(['and', 'or']);

function baseFuncs(): Record<string, Fn> {
  return {
    // Go built-ins
    not: (a) => !truthy(a),
    eq: (a, ...bs) => {
      if (bs.length === 0) throw new Error('missing argument for comparison');
      return bs.some((b) => goEq(a, b));
    },
    ne: (a, b) => !goEq(a, b),
    lt: (a, b) => goLess(a, b),
    le: (a, b) => goLess(a, b) || goEq(a, b),
    gt: (a, b) => goLess(b, a),
    ge: (a, b) => goLess(b, a) || goEq(a, b),
    len: (a) => {
      if (typeof a === 'string') return BigInt(Buffer.byteLength(a));
      if (Array.isArray(a)) return BigInt(a.length);
      if (isDict(a)) return BigInt(Object.keys(a).length);
      throw new Error(`len of type ${goType(a)}`);
    },
    printf: (format, ...args) => sprintf(wantString('printf', format), args),
    print: (...args) =>
      args
        .map((a, i) => {
          const s = a === null || a === undefined ? '<nil>' : goString(a);
          const prevString = i > 0 && typeof args[i - 1] === 'string';
          return i > 0 && typeof a !== 'string' && !prevString ? ` ${s}` : s;
        })
        .join(''),
    // Sprig
    default: (d, ...given) => (given.length === 0 || empty(given[0]) ? d : given[0]),
    empty: (a) => empty(a),
    quote: (...args) =>
      args
        .filter((a) => a !== null && a !== undefined)
        .map((a) => JSON.stringify(goString(a)))
        .join(' '),
    int: (a) => toInt(a),
    toString: (a: unknown) => (typeof a === 'string' ? a : goString(a)),
    trunc: (c, s) => {
      const n = wantInt('trunc', c);
      const str = wantString('trunc', s);
      if (n < 0 && str.length + n > 0) return str.slice(str.length + n);
      if (n >= 0 && str.length > n) return str.slice(0, n);
      return str;
    },
    trimSuffix: (suffix, s) => {
      const suf = wantString('trimSuffix', suffix);
      const str = wantString('trimSuffix', s);
      return suf && str.endsWith(suf) ? str.slice(0, -suf.length) : str;
    },
    replace: (oldS, newS, s) => wantString('replace', s).split(wantString('replace', oldS)).join(wantString('replace', newS)),
    contains: (substr, s) => wantString('contains', s).includes(wantString('contains', substr)),
    lower: (s) => wantString('lower', s).toLowerCase(),
    indent: (n, s) => indent(wantInt('indent', n), wantString('indent', s)),
    nindent: (n, s) => `\n${indent(wantInt('nindent', n), wantString('nindent', s))}`,
    toYaml: (v) => toYaml(v),
    sha256sum: (s) => createHash('sha256').update(wantString('sha256sum', s)).digest('hex'),
    list: (...items) => items,
    until: (n) => Array.from({ length: Number(wantInt('until', n)) }, (_, i) => BigInt(i)),
    append: (l, v) => {
      if (l === null || l === undefined) return [v];
      if (!Array.isArray(l)) throw new Error(`cannot push on type ${goType(l)}`);
      return [...l, v];
    },
    uniq: (l) => {
      if (!Array.isArray(l)) throw new Error(`cannot find uniq on type ${goType(l)}`);
      const out: unknown[] = [];
      for (const x of l) if (!out.some((y) => JSON.stringify(plain(y)) === JSON.stringify(plain(x)))) out.push(x);
      return out;
    },
    hasKey: (d, k) => isDict(d) && Object.prototype.hasOwnProperty.call(d, wantString('hasKey', k)),
    dig: (...ps) => {
      if (ps.length < 3) throw new Error('dig needs at least three arguments');
      const dict = ps[ps.length - 1];
      const def = ps[ps.length - 2];
      const keys = ps.slice(0, -2).map((k) => wantString('dig', k));
      let cur: unknown = dict;
      for (const k of keys) {
        if (!isDict(cur)) throw new Error(`interface conversion: interface {} is ${goType(cur)}, not map[string]interface {} (in dig)`);
        if (!Object.prototype.hasOwnProperty.call(cur, k)) return def;
        cur = cur[k];
      }
      return cur;
    },
    // Helm
    required: (msg, v) => {
      if (v === null || v === undefined || v === '') throw new Error(wantString('required', msg));
      return v;
    },
    fail: (msg) => {
      throw new Error(wantString('fail', msg));
    },
  };
}

/** Every function name the parser accepts (include and the lazy ones are handled by the executor). */
export const FUNCTION_NAMES: ReadonlySet<string> = new Set([...Object.keys(baseFuncs()), 'include', ...LAZY]);

// ---------------------------------------------------------------------------------------------
// Execution

interface Var {
  name: string;
  value: unknown;
}

const MAX_INCLUDE_DEPTH = 100;

export class TemplateSet {
  private readonly defines = new Map<string, Node[]>();
  private readonly files = new Map<string, Node[]>();
  private readonly funcs = baseFuncs();

  /** Parses one file; its {{define}}s join the set (a later definition replaces an earlier one, as in Go). */
  add(name: string, src: string): void {
    const nodes = new Parser(name, lex(name, src), this.defines, FUNCTION_NAMES).parse();
    this.files.set(name, nodes);
  }

  /** Executes a parsed file with `data` as dot and `$`. Helm's "<no value>" removal is built in. */
  execute(name: string, data: unknown): string {
    const nodes = this.files.get(name);
    if (!nodes) throw new TemplateError(name, 'no such template');
    return this.run(name, nodes, data, [{ name: '$', value: data }], 0);
  }

  /** Executes a {{define}}d template (Helm's include). */
  include(name: string, data: unknown, depth = 0): string {
    const nodes = this.defines.get(name);
    if (!nodes) throw new TemplateError(name, `no template "${name}" associated with template`);
    if (depth > MAX_INCLUDE_DEPTH) throw new TemplateError(name, 'rendering template has a nested reference name');
    return this.run(name, nodes, data, [{ name: '$', value: data }], depth);
  }

  private run(name: string, nodes: Node[], dot: unknown, vars: Var[], depth: number): string {
    let out = '';
    for (const node of nodes) out += this.node(name, node, dot, vars, depth);
    return out;
  }

  private node(name: string, node: Node, dot: unknown, vars: Var[], depth: number): string {
    const where = (line: number): string => `${name}:${line}`;
    const guard = <T>(line: number, fn: () => T): T => {
      try {
        return fn();
      } catch (err) {
        if (err instanceof TemplateError) throw err;
        throw new TemplateError(where(line), (err as Error).message);
      }
    };
    switch (node.k) {
      case 'text':
        return node.text;
      case 'action': {
        const v = guard(node.line, () => this.pipe(node.pipe, dot, vars, depth));
        if (node.pipe.decl.length > 0) return '';
        return v === null || v === undefined ? '' : guard(node.line, () => goString(v));
      }
      case 'template': {
        const data = node.pipe ? guard(node.line, () => this.pipe(node.pipe!, dot, vars, depth)) : null;
        return this.include(node.name, data, depth + 1);
      }
      case 'if':
      case 'with': {
        const mark = vars.length;
        try {
          const v = guard(node.line, () => this.pipe(node.pipe, dot, vars, depth));
          if (truthy(v)) return this.run(name, node.list, node.k === 'with' ? v : dot, vars, depth);
          return node.elseList ? this.run(name, node.elseList, dot, vars, depth) : '';
        } finally {
          vars.length = mark;
        }
      }
      case 'range': {
        const mark = vars.length;
        const { decl } = node.pipe;
        try {
          const v = guard(node.line, () => this.pipe({ ...node.pipe, decl: [] }, dot, vars, depth));
          let entries: [unknown, unknown][];
          if (v === null || v === undefined) entries = [];
          else if (Array.isArray(v)) entries = v.map((x, i) => [BigInt(i), x]);
          else if (isDict(v)) entries = Object.keys(v).sort().map((k) => [k, v[k]]);
          else if (typeof v === 'bigint') entries = Array.from({ length: Number(v) }, (_, i) => [BigInt(i), BigInt(i)]);
          else throw new TemplateError(where(node.line), `range can't iterate over ${goString(v)}`);
          if (entries.length === 0) return node.elseList ? this.run(name, node.elseList, dot, vars, depth) : '';
          let out = '';
          for (const [key, elem] of entries) {
            const inner = vars.length;
            if (decl.length === 1) vars.push({ name: decl[0]!, value: elem });
            if (decl.length === 2) vars.push({ name: decl[0]!, value: key }, { name: decl[1]!, value: elem });
            out += this.run(name, node.list, elem, vars, depth);
            vars.length = inner;
          }
          return out;
        } finally {
          vars.length = mark;
        }
      }
    }
  }

  private pipe(pipe: Pipe, dot: unknown, vars: Var[], depth: number): unknown {
    let value: unknown = undefined;
    let first = true;
    for (const cmd of pipe.cmds) {
      value = this.command(cmd, dot, vars, depth, first ? NONE : value);
      first = false;
    }
    if (pipe.decl.length > 0) {
      if (pipe.assign) {
        for (const n of pipe.decl) {
          const existing = [...vars].reverse().find((x) => x.name === n);
          if (!existing) throw new Error(`undefined variable: ${n}`);
          existing.value = value;
        }
      } else {
        for (const n of pipe.decl) vars.push({ name: n, value });
      }
    }
    return value;
  }

  private command(cmd: Operand[], dot: unknown, vars: Var[], depth: number, piped: unknown): unknown {
    const [head, ...rest] = cmd;
    const hasPiped = piped !== NONE;
    if (head!.k === 'ident') {
      const fname = head!.name;
      if (LAZY.has(fname)) {
        const argOps = rest;
        const total = argOps.length + (hasPiped ? 1 : 0);
        if (total < 1) throw new Error(`wrong number of args for ${fname}: want at least 1 got 0`);
        let v: unknown;
        for (let i = 0; i < total; i++) {
          v = i < argOps.length ? this.arg(argOps[i]!, dot, vars, depth) : piped;
          if (fname === 'and' ? !truthy(v) : truthy(v)) return v;
        }
        return v;
      }
      const args = rest.map((op) => this.arg(op, dot, vars, depth));
      if (hasPiped) args.push(piped);
      if (fname === 'include') {
        if (args.length !== 2) throw new Error(`wrong number of args for include: want 2 got ${args.length}`);
        return this.include(wantString('include', args[0]), args[1], depth + 1);
      }
      return this.funcs[fname]!(...args);
    }
    if (rest.length > 0 || hasPiped) {
      // A method call: the last element of the chain is a function (e.g. .Files.Get "name").
      const chain = head!.k === 'field' || head!.k === 'var' || head!.k === 'sub' ? head!.path : [];
      if (chain.length === 0) throw new Error(`can't give argument to non-function ${describe(head!)}`);
      const receiver = this.arg({ ...head!, path: chain.slice(0, -1) } as Operand, dot, vars, depth);
      const method = chain[chain.length - 1]!;
      const fn = isDict(receiver) ? receiver[method] : undefined;
      if (typeof fn !== 'function') throw new Error(`can't give argument to non-function ${describe(head!)}`);
      const args = rest.map((op) => this.arg(op, dot, vars, depth));
      if (hasPiped) args.push(piped);
      return (fn as Fn)(...args);
    }
    return this.arg(head!, dot, vars, depth);
  }

  private arg(op: Operand, dot: unknown, vars: Var[], depth: number): unknown {
    switch (op.k) {
      case 'lit':
        return op.v;
      case 'field':
        return field(dot, op.path);
      case 'var': {
        const v = [...vars].reverse().find((x) => x.name === op.name);
        if (!v) throw new Error(`undefined variable "${op.name}"`);
        return field(v.value, op.path);
      }
      case 'sub':
        return field(this.pipe(op.pipe, dot, vars, depth), op.path);
      case 'ident':
        // A function used as an argument is called without arguments (e.g. `default list .x`).
        if (op.name === 'include' || LAZY.has(op.name)) throw new Error(`wrong number of args for ${op.name}`);
        return this.funcs[op.name]!();
    }
  }
}

const NONE: unique symbol = Symbol('no piped value');

function describe(op: Operand): string {
  switch (op.k) {
    case 'field':
      return `.${op.path.join('.')}`;
    case 'var':
      return [op.name, ...op.path].join('.');
    case 'lit':
      return goString(op.v);
    default:
      return op.k;
  }
}

function field(v: unknown, path: string[]): unknown {
  let cur = v;
  for (const name of path) {
    if (cur === null || cur === undefined) throw new Error(`nil pointer evaluating interface {}.${name}`);
    if (!isDict(cur)) throw new Error(`can't evaluate field ${name} in type ${goType(cur)}`);
    cur = Object.prototype.hasOwnProperty.call(cur, name) ? cur[name] : null;
    // A niladic method in the middle of a chain is called, as Go does.
    if (typeof cur === 'function' && name !== path[path.length - 1]) cur = (cur as Fn)();
  }
  return cur;
}
