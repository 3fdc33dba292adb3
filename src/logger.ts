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
