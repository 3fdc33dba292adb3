/**
 * Kubernetes API errors, apart from the client so that code which only inspects them (the leader
 * elector, the failover intent) does not load the Kubernetes client library — about 77 MiB of RSS a
 * dbpilot without Kubernetes does not need.
 */
import { DependencyError } from '../errors.js';

/** A call to the Kubernetes API failed. `status` is the HTTP status, undefined when no response came back. */
export class KubernetesApiError extends DependencyError {
  readonly status: number | undefined;
  /** The Status reason (NotFound, Conflict, AlreadyExists, Invalid, Forbidden, …) or a local one (Timeout, NetworkError, SecretChanged). */
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

/**
 * patchSecretKeyIfUnchanged refused: the key no longer holds the value the caller read (someone
 * changed or removed it meanwhile), so nothing was written. On the wire this is the API server's 422
 * for a JSON patch whose `test` failed; `status` stays 422, `reason` is SecretChanged (the server's
 * own reason, Invalid, is shared by every other 422). The message names the Secret and the key,
 * never a value.
 */
export class SecretChangedError extends KubernetesApiError {
  /** The Secret's name. */
  readonly secret: string;
  /** The data key that did not hold the expected value. */
  readonly key: string;

  constructor(operation: string, secret: string, key: string) {
    super(operation, {
      status: 422,
      reason: 'SecretChanged',
      message: `key "${key}" no longer holds the value it was read with (changed or removed meanwhile); nothing was written`,
    });
    this.secret = secret;
    this.key = key;
  }
}

export function isNotFound(err: unknown): boolean {
  return err instanceof KubernetesApiError && err.status === 404;
}

/** 409: AlreadyExists on create, Conflict on a stale resourceVersion. */
export function isConflict(err: unknown): boolean {
  return err instanceof KubernetesApiError && err.status === 409;
}

/** 409 AlreadyExists: a create found the name taken. */
export function isAlreadyExists(err: unknown): boolean {
  return isConflict(err) && (err as KubernetesApiError).reason === 'AlreadyExists';
}

/** The Secret's key changed under a patchSecretKeyIfUnchanged (see SecretChangedError). */
export function isSecretChanged(err: unknown): err is SecretChangedError {
  return err instanceof SecretChangedError;
}
