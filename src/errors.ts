/**
 * Every failure dbpilot reports carries a stable `code` (for logs, audit rows and scripts) and the
 * context an on-call engineer needs. Messages must never contain a secret: callers pass redacted
 * URLs (see redactUrl) and never embed tokens or routing keys.
 */
export class DbpilotError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The configuration file or environment is invalid; `path` names the bad field (e.g. `postgres.replicas[0].url`). */
export class ConfigError extends DbpilotError {
  readonly path: string;
  constructor(path: string, reason: string) {
    super('DBPILOT_CONFIG_INVALID', path ? `${path}: ${reason}` : reason);
    this.path = path;
  }
}

/** A collector exceeded its time budget. */
export class CollectorTimeoutError extends DbpilotError {
  constructor(collector: string, timeoutMs: number) {
    super('DBPILOT_COLLECTOR_TIMEOUT', `collector ${collector} did not finish within ${timeoutMs} ms`);
  }
}

/** An outside dependency (PostgreSQL, Redis, Kubernetes, PagerDuty, RDS) could not be reached or answered with an error. */
export class DependencyError extends DbpilotError {
  readonly dependency: string;
  constructor(dependency: string, message: string, options?: { cause?: unknown }) {
    super('DBPILOT_DEPENDENCY_FAILED', `${dependency}: ${message}`, options);
    this.dependency = dependency;
  }
}

/** A handler refused to act because a precondition of the runbook is not met (e.g. replica lag above the bound). */
export class UnsafeToActError extends DbpilotError {
  constructor(reason: string) {
    super('DBPILOT_UNSAFE_TO_ACT', reason);
  }
}

/** An alert names a target dbpilot does not manage (a `server` label that is no configured server): refused, never guessed. */
export class UnknownTargetError extends DbpilotError {
  constructor(message: string) {
    super('DBPILOT_UNKNOWN_TARGET', message);
  }
}

/** Unknown handler, unknown collector, duplicate names: a programming or configuration error found at start. */
export class RegistryError extends DbpilotError {
  constructor(message: string) {
    super('DBPILOT_REGISTRY_INVALID', message);
  }
}

/** Removes credentials from a connection URL so it can be logged or shown: `postgres://u:secret@h/db` → `postgres://u:***@h/db`. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    for (const k of [...u.searchParams.keys()]) {
      if (/pass|secret|token|key/i.test(k)) u.searchParams.set(k, '***');
    }
    return u.toString();
  } catch {
    // Not a URL we can parse: hide anything that looks like user:password@.
    return url.replace(/\/\/([^:/@]+):[^@]*@/, '//$1:***@');
  }
}

/** The error's message with any credential-bearing URL inside it redacted (drivers sometimes echo the URL). */
export function safeMessage(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.replace(/[a-z][a-z0-9+.-]*:\/\/[^\s'"]+/gi, (m) => redactUrl(m));
}
