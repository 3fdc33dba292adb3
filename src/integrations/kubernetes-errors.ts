/**
 * Kubernetes API errors, apart from the client so that code which only inspects them (the leader
 * elector) does not load the Kubernetes client library — about 77 MiB of RSS a dbpilot without Kubernetes
 * does not need.
 */
import { DependencyError } from '../errors.js';

/** A call to the Kubernetes API failed. `status` is the HTTP status, undefined when no response came back. */
export class KubernetesApiError extends DependencyError {
  readonly status: number | undefined;
  /** The Status reason (NotFound, Conflict, AlreadyExists, Invalid, Forbidden, …) or a local one (Timeout, NetworkError). */
  readonly reason: string | undefined;
  /** What was attempted, e.g. `patch secret lomash-wood/lomash-wood-secrets`. */
  readonly operation: string;

  constructor(operation: string, detail: { status?: number; reason?: string; message: string }, options?: { cause?: unknown }) {
    const head = detail.status !== undefined ? `HTTP ${detail.status}${detail.reason ? ` ${detail.reason}` : ''}` : (detail.reason ?? 'error');
    super('kubernetes', `${operation}: ${head}: ${detail.message}`, options);
    this.status = detail.status;
    this.reason = detail.reason;
    this.operation = operation;
  }
}

export function isNotFound(err: unknown): boolean {
  return err instanceof KubernetesApiError && err.status === 404;
}

/** 409: AlreadyExists on create, Conflict on a stale resourceVersion. */
export function isConflict(err: unknown): boolean {
  return err instanceof KubernetesApiError && err.status === 409;
}

