/**
 * The recorded intent of a multi-step run that must never be done twice — a failover: which server
 * was primary, which one is being made primary, how far it got, and which run carries it. It lives
 * where every dbpilot instance can read it: beside the Lease in the Kubernetes API (a ConfigMap dbpilot
 * owns), else in the local store. Every write is a compare-and-swap on the version read, so of two
 * instances racing to record a failover exactly one wins, and the other reads the winner's intent
 * and follows it (CloudNativePG's `status.targetPrimary` is the model: each pass reads it and moves
 * toward it; nothing chooses a second target while one is open).
 */
import { DbpilotError } from '../errors.js';
import type { KubernetesClient } from '../integrations/kubernetes.js';
import { isConflict } from '../integrations/kubernetes-errors.js';
import type { Store } from '../store/store.js';

export const FAILOVER_PHASES = ['confirmed', 'fenced', 'promoted', 'repointed', 'restarted', 'done', 'aborted'] as const;
export type FailoverPhase = (typeof FAILOVER_PHASES)[number];

export interface FailoverIntent {
  kind: 'failover';
  /** The run that records it (in the store of the instance that started it). */
  run: string;
  /** The owner of that run (`<pod>/<pid>/<token>`). */
  by: string;
  /** `server` labels (host:port). */
  oldPrimary: string;
  targetPrimary: string;
  phase: FailoverPhase;
  startedAt: string;
  updatedAt: string;
  /** The `kubectl.kubernetes.io/restartedAt` value of the rollouts, once requested (a continuing instance does not restart twice). */
  restartedAt?: string;
  /** Why it was aborted, when it was. */
  reason?: string;
}

export type Intent = FailoverIntent;

export interface VersionedIntent {
  intent: Intent | null;
  /** Opaque; null when nothing was ever recorded. */
  version: string | null;
}

/** Somebody else wrote the intent since it was read: read again and follow theirs. */
export class IntentConflictError extends DbpilotError {
  constructor(where: string) {
    super('DBPILOT_INTENT_CONFLICT', `the failover intent in ${where} changed since it was read`);
  }
}

export interface IntentStore {
  /** Where it lives, for messages (`configmap lomash-wood/dbpilot-leader-failover`, `the local store`). */
  readonly where: string;
  read(): Promise<VersionedIntent>;
  /** Writes `next` if the intent is still at `expected` (null: nothing recorded yet); returns the new version. */
  write(next: Intent, expected: string | null): Promise<string>;
}

/** Whether a failover is under way: recorded and neither done nor aborted. */
export function isOpen(intent: Intent | null): boolean {
  return intent !== null && intent.phase !== 'done' && intent.phase !== 'aborted';
}

const KEY = 'intent';

function parseIntent(text: string | undefined, where: string): Intent | null {
  if (text === undefined || text === '') return null;
  try {
    const v = JSON.parse(text) as Intent;
    if (v && v.kind === 'failover' && typeof v.oldPrimary === 'string' && typeof v.targetPrimary === 'string' && (FAILOVER_PHASES as readonly string[]).includes(v.phase)) return v;
  } catch {
    // fall through
  }
  throw new DbpilotError('DBPILOT_INTENT_INVALID', `the failover intent in ${where} is not one dbpilot wrote; fix or delete it by hand`);
}

/** The intent in a ConfigMap dbpilot owns, beside its Lease (same namespace, same Role). */
export class KubernetesIntentStore implements IntentStore {
  readonly where: string;
  constructor(
    private readonly kube: KubernetesClient,
    private readonly name: string,
  ) {
    this.where = `configmap ${kube.namespace}/${name}`;
  }

  async read(): Promise<VersionedIntent> {
    const cm = await this.kube.readConfigMap(this.name);
    if (!cm) return { intent: null, version: null };
    return { intent: parseIntent(cm.data?.[KEY], this.where), version: cm.resourceVersion ?? '' };
  }

  async write(next: Intent, expected: string | null): Promise<string> {
    const data = { [KEY]: JSON.stringify(next) };
    try {
      if (expected === null) {
        const created = await this.kube.createConfigMap(this.name, data, { 'app.kubernetes.io/managed-by': 'dbpilot' });
        return created.resourceVersion ?? '';
      }
      const current = await this.kube.readConfigMap(this.name);
      if (!current || current.resourceVersion !== expected) throw new IntentConflictError(this.where);
      const replaced = await this.kube.replaceConfigMap(current, data);
      return replaced.resourceVersion ?? '';
    } catch (err) {
      if (isConflict(err)) throw new IntentConflictError(this.where);
      throw err;
    }
  }
}

/** Without Kubernetes there is one dbpilot: its store holds the intent, with the same compare-and-swap. */
export class LocalIntentStore implements IntentStore {
  readonly where = 'the local store';
  constructor(
    private readonly store: Store,
    private readonly name = 'failover',
  ) {}

  async read(): Promise<VersionedIntent> {
    const row = this.store.readIntent(this.name);
    if (!row) return { intent: null, version: null };
    return { intent: parseIntent(row.value, this.where), version: String(row.version) };
  }

  async write(next: Intent, expected: string | null): Promise<string> {
    const version = this.store.writeIntent(this.name, JSON.stringify(next), expected === null ? null : Number(expected));
    if (version === null) throw new IntentConflictError(this.where);
    return String(version);
  }
}

/** Phases after which the old primary counts as fenced for the topology (it shows as `fenced`, not as a primary that is down). */
const FENCED_FROM: readonly FailoverPhase[] = ['promoted', 'repointed', 'restarted', 'done'];

/**
 * Remembers the intent last read or written, so the exporter can tell — synchronously, at every
 * scrape — which server a failover fenced; refreshed by every read and write of this process and by
 * a slow poll that notices what other instances wrote.
 */
export class CachingIntentStore implements IntentStore {
  private last: Intent | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly inner: IntentStore) {}

  get where(): string {
    return this.inner.where;
  }

  async read(): Promise<VersionedIntent> {
    const v = await this.inner.read();
    this.last = v.intent;
    return v;
  }

  async write(next: Intent, expected: string | null): Promise<string> {
    const version = await this.inner.write(next, expected);
    this.last = next;
    return version;
  }

  /** The `server` labels a failover fenced: its old primary, once the promotion is done. */
  fenced(): ReadonlySet<string> {
    const i = this.last;
    return i && FENCED_FROM.includes(i.phase) ? new Set([i.oldPrimary]) : new Set();
  }

  poll(everyMs: number, onError: (err: unknown) => void): void {
    if (this.timer) return;
    const tick = () => void this.read().catch(onError);
    tick();
    this.timer = setInterval(tick, everyMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
