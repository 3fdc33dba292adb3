import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

/**
 * Paths pino blanks before a line is written. URLs are redacted where they are built (redactUrl),
 * so these are the second line of defence for objects that carry credentials by name.
 */
const REDACT = [
  'token',
  'password',
  'routingKey',
  'routing_key',
  'authorization',
  '*.token',
  '*.password',
  '*.routingKey',
  '*.routing_key',
  '*.authorization',
  'req.headers.authorization',
  'req.headers.cookie',
  'headers.authorization',
  'config.webhook',
  'config.pagerduty.routes',
];

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      name: 'dbpilot',
      level,
      redact: { paths: REDACT, censor: '[REDACTED]' },
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination,
  );
}

/** Control characters shown escaped (`\x1b`, `\n`): a label value must never drive the reader's terminal. */
export function escapeControl(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => {
    if (c === '\n') return '\\n';
    if (c === '\t') return '\\t';
    if (c === '\r') return '\\r';
    return `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;
  });
}

const LEVEL_NAMES: Record<number, string> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warning', 50: 'error', 60: 'fatal' };
const NOT_SHOWN = new Set(['level', 'time', 'pid', 'hostname', 'name', 'msg', 'component']);

/** One pino JSON line as a short plain line for a person: `dbpilot: warning: <msg> (key=value, …)`. */
export function plainLine(json: string): string {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  const level = LEVEL_NAMES[entry.level as number] ?? 'log';
  const extras = Object.entries(entry)
    .filter(([k, v]) => !NOT_SHOWN.has(k) && v !== undefined && v !== null && typeof v !== 'object')
    .map(([k, v]) => `${k}=${String(v)}`);
  const msg = escapeControl(String(entry.msg ?? ''));
  return `dbpilot: ${level}: ${msg}${extras.length ? ` (${escapeControl(extras.join(', '))})` : ''}\n`;
}

/**
 * The CLI's logger: warnings and errors only (unless the configuration asks for more), on stderr so
 * stdout stays clean for tables and JSON; on a terminal as short plain lines, in a pipe as JSON lines.
 */
export function createCliLogger(level: string, stream: NodeJS.WriteStream = process.stderr): Logger {
  const cliLevel = level === 'info' ? 'warn' : level;
  if (!stream.isTTY) return createLogger(cliLevel, stream as unknown as DestinationStream);
  return createLogger(cliLevel, { write: (line: string) => void stream.write(plainLine(line)) });
}
