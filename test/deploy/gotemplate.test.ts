/**
 * The semantics of the small Go template renderer (gotemplate.ts) that the chart checks rely on,
 * each as Go's text/template + Sprig + Helm behave. Where `helm` is available, deploy.test.ts also
 * compares whole-chart output with `helm template`.
 */
import { describe, expect, it } from 'vitest';
import { TemplateSet, formatFloat, goString, sprintf, toYaml } from './gotemplate.js';

function render(src: string, data: unknown, defines = ''): string {
  const set = new TemplateSet();
  if (defines) set.add('_helpers.tpl', defines);
  set.add('t', src);
  return set.execute('t', data);
}

describe('Go template renderer', () => {
  it('prints fields, and missing map keys as nothing (missingkey=zero, "<no value>" removed)', () => {
    expect(render('a={{ .a }} b={{ .b }}', { a: 'x' })).toBe('a=x b=');
    expect(render('{{ .a.b.c }}', { a: { b: { c: 'deep' } } })).toBe('deep');
  });

  it('fails on a field of nil, as Go does', () => {
    expect(() => render('{{ .a.b }}', {})).toThrow(/nil pointer evaluating interface \{\}\.b/);
    expect(() => render('{{ .a.b }}', { a: 'str' })).toThrow(/can't evaluate field b in type string/);
  });

  it('trims whitespace at {{- and -}} only', () => {
    expect(render('a  \n  {{- "b" -}}  \n  c', {})).toBe('abc');
    expect(render('a {{ "b" }} c', {})).toBe('a b c');
    expect(render('x {{- /* gone */ -}} y', {})).toBe('xy');
    expect(render('x{{/* gone */}}y', {})).toBe('xy');
    // A dash without the space is a negative number, not a trim marker.
    expect(render('a {{-3}} b', {})).toBe('a -3 b');
  });

  it('if / else if / else, with / else, on Go truth', () => {
    const t = '{{ if .a }}A{{ else if .b }}B{{ else }}C{{ end }}';
    expect(render(t, { a: 1 })).toBe('A');
    expect(render(t, { a: 0, b: 'x' })).toBe('B');
    expect(render(t, { a: [], b: {} })).toBe('C');
    expect(render('{{ with .m }}{{ .k }}{{ else }}none{{ end }}', { m: { k: 'v' } })).toBe('v');
    expect(render('{{ with .m }}{{ .k }}{{ else }}none {{ .x }}{{ end }}', { m: {}, x: 'dot unchanged' })).toBe('none dot unchanged');
  });

  it('ranges over lists in order and over maps in sorted key order', () => {
    expect(render('{{ range $i, $v := .l }}{{ $i }}={{ $v }};{{ end }}', { l: ['a', 'b'] })).toBe('0=a;1=b;');
    expect(render('{{ range $k, $v := .m }}{{ $k }}={{ $v }};{{ end }}', { m: { z: 1, a: 2, m: 3 } })).toBe('a=2;m=3;z=1;');
    expect(render('{{ range .l }}[{{ . }}]{{ else }}empty{{ end }}', { l: [] })).toBe('empty');
    expect(render('{{ range .l }}{{ $.top }}{{ end }}', { l: [1, 2], top: 'T' })).toBe('TT');
  });

  it('scopes variables to their control structure; = assigns to the outer one', () => {
    const t = '{{ $x := "outer" }}{{ if true }}{{ $x := "inner" }}{{ $x }}{{ end }} {{ $x }}';
    expect(render(t, {})).toBe('inner outer');
    const acc = '{{ $l := list }}{{ range .items }}{{ $l = append $l .name }}{{ end }}{{ toYaml $l }}';
    expect(render(acc, { items: [{ name: 'a' }, { name: 'b' }] })).toBe('- a\n- b');
  });

  it('pipelines pass the value as the last argument; parentheses and chains on them', () => {
    expect(render('{{ .a | default "d" }}|{{ .b | default "d" }}', { a: '', b: 'set' })).toBe('d|set');
    expect(render('{{ printf "%s-%s" .r .c | trunc 5 | trimSuffix "-" }}', { r: 'abcd', c: 'x' })).toBe('abcd');
    expect(render('{{ (dig "a" "none" .m).k }}', { m: { a: { k: 'v' } } })).toBe('v');
  });

  it('short-circuits and/or and returns the deciding value', () => {
    expect(render('{{ and 1 "x" }}|{{ or "" 0 "y" }}|{{ and 0 .missing.field }}', {})).toBe('x|y|0');
    expect(render('{{ or .a .b }}', { a: null, b: 'b' })).toBe('b');
  });

  it('keeps int (literals, int, len) apart from float64 (YAML numbers) as Go does', () => {
    expect(render('{{ .n }} {{ int .n }} {{ len .l }}', { n: 2, l: [1, 2, 3] })).toBe('2 2 3');
    expect(render('{{ gt (int .n) 1 }}', { n: 2 })).toBe('true');
    expect(() => render('{{ eq .n 1 }}', { n: 1 })).toThrow(/incompatible types for comparison/);
    expect(render('{{ printf "%d" .n }}', { n: 2 })).toBe('%!d(float64=2)');
    expect(render('{{ .n }}', { n: 1000000 })).toBe('1e+06');
    expect(() => render('{{ trunc .n "abc" }}', { n: 2 })).toThrow(/expected int; got float64/);
  });

  it('define / include / template, with the data given', () => {
    const defs = '{{- define "greet" -}}hello {{ .name }}{{- end -}}';
    expect(render('{{ include "greet" . }}|{{ template "greet" .inner }}', { name: 'x', inner: { name: 'y' } }, defs)).toBe('hello x|hello y');
  });

  it('Sprig/Helm functions used by the chart', () => {
    expect(render('{{ include "d" . | nindent 2 }}', { v: 'a\nb' }, '{{ define "d" }}{{ .v }}{{ end }}')).toBe('\n  a\n  b');
    expect(render('{{ "a\\n\\nb" | indent 2 }}', {})).toBe('  a\n  \n  b');
    expect(render('{{ .s | quote }} {{ quote .n }}', { s: 'a "b"', n: 3 })).toBe('"a \\"b\\"" "3"');
    expect(render('{{ contains "db" "mydbx" }} {{ replace "+" "_" "1+2" }}', {})).toBe('true 1_2');
    expect(render('{{ dig "a" "b" "def" .m }}|{{ dig "a" "x" "def" .m }}|{{ dig "q" "r" "def" .m }}', { m: { a: { b: 'B' } } })).toBe('B|def|def');
    expect(render('{{ toYaml (uniq (list "a" "b" "a")) }}', {})).toBe('- a\n- b');
    expect(render('{{ sha256sum "x" }}', {})).toBe('2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881');
    expect(() => render('{{ required "need x" .x }}', {})).toThrow(/need x/);
    expect(() => render('{{ fail "nope" }}', {})).toThrow(/nope/);
    expect(render('{{ .Files.Get "f" }}', { Files: { Get: (n: string) => `content of ${n}` } })).toBe('content of f');
  });

  it('refuses what it does not implement instead of guessing', () => {
    expect(() => render('{{ tpl "x" . }}', {})).toThrow(/function "tpl" not defined/);
    expect(() => render('{{ if .a }}x', {})).toThrow(/unexpected EOF/);
    expect(() => render('{{ end }}', {})).toThrow(/unexpected \{\{end\}\}/);
    expect(() => render('{{ block "x" . }}{{ end }}', {})).toThrow(/not supported/);
  });

  it('formats like fmt: floats shortest with Go exponents, maps and lists', () => {
    expect(formatFloat(0.5)).toBe('0.5');
    expect(formatFloat(123456)).toBe('123456');
    expect(formatFloat(1234567)).toBe('1.234567e+06');
    expect(formatFloat(0.00001)).toBe('1e-05');
    expect(goString(['a', 1n])).toBe('[a 1]');
    expect(goString({ b: 1, a: 'x' })).toBe('map[a:x b:1]');
    expect(sprintf('%s:%d %v %q %%', ['h', 9630n, true, 'q'])).toBe('h:9630 true "q" %');
  });

  it('toYaml sorts keys and quotes YAML 1.1 look-alikes, like sigs.k8s.io/yaml', () => {
    expect(toYaml({ b: 'on', a: ['yes', 'x'], c: {} })).toBe('a:\n- "yes"\n- x\nb: "on"\nc: {}');
  });
});
