/**
 * What a person reads in a terminal: warnings as one short plain line with the fields that matter,
 * control characters escaped so a label value cannot drive the terminal; JSON lines in a pipe.
 */
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createCliLogger, escapeControl, plainLine } from '../src/logger.js';

describe('the CLI logger', () => {
  it('writes a warning as one plain line on a terminal: level, message, the simple fields; no pid, time or component', () => {
    const out: string[] = [];
    const tty = Object.assign(new PassThrough(), { isTTY: true, write: (s: string) => (out.push(s), true) }) as unknown as NodeJS.WriteStream;
    const log = createCliLogger('info', tty).child({ component: 'remediation' });
    log.info('not shown: the CLI logs warnings and above');
    log.warn({ team: 'devops', pending: 3, nested: { x: 1 } }, 'pagerduty.routes is empty');
    expect(out).toEqual(['dbpilot: warning: pagerduty.routes is empty (team=devops, pending=3)\n']);
  });

  it('writes JSON lines into a pipe, for log pipelines', () => {
    const out: string[] = [];
    const pipe = Object.assign(new PassThrough(), { isTTY: false, write: (s: string) => (out.push(s), true) }) as unknown as NodeJS.WriteStream;
    createCliLogger('info', pipe).warn({ team: 'devops' }, 'hello');
    expect(JSON.parse(out.join(''))).toMatchObject({ level: 40, msg: 'hello', team: 'devops' });
  });

  it('escapes control characters, in the message and in the fields', () => {
    expect(escapeControl('a\u001b[2Jb\u0007c\nd\te\u009bf')).toBe('a\\x1b[2Jb\\x07c\\nd\\te\\x9bf');
    expect(plainLine(JSON.stringify({ level: 50, msg: 'bad\u001b]0;title\u0007', alertname: 'X\u001b[1;1H' }))).toBe('dbpilot: error: bad\\x1b]0;title\\x07 (alertname=X\\x1b[1;1H)\n');
    expect(plainLine('not json')).toBe('not json');
  });
});
