/**
 * Leader election on a coordination.k8s.io/v1 Lease, after client-go's tools/leaderelection.
 *
 * Several dbpilot replicas export metrics; only the one holding the Lease acts. The rules:
 * - Acquire when the Lease is absent, released (empty holderIdentity) or expired
 *   (renewTime + leaseDurationSeconds < now); every write is conditional on the resourceVersion
 *   read, so of two replicas racing for it exactly one wins and the other gets 409 — a lost race,
 *   not an error.
 * - While holding it, renew every retryPeriod.
 * - A leader that has not renewed successfully for renewDeadlineSeconds stops being leader. Since
 *   renewDeadline < leaseDuration, it steps down BEFORE anybody else may take the Lease over: the
 *   gap (5 s by default) is the margin for clock skew between replicas and for the request that is
 *   in flight. Time since the last renewal is measured on the monotonic clock, and counted from the
 *   moment the renewal attempt started (the renewTime it wrote), never from when the answer came.
 * - stop() releases a held Lease (holderIdentity "", leaseDurationSeconds 1, as client-go's
 *   ReleaseOnCancel does) so another replica takes over at its next retry instead of waiting for
 *   the Lease to expire.
 * - Without Kubernetes (kube null) there is nobody to coordinate with: always leader.
 * Nothing thrown inside the timers escapes: failures are logged and retried.
 */
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { ConfigError, safeMessage } from '../errors.js';
import type { KubernetesClient, LeaseRecord, LeaseSpecInput } from '../integrations/kubernetes.js';
import { isConflict } from '../integrations/kubernetes-errors.js';

export interface LeaderElectorOptions {
  kube: KubernetesClient | null;
  leaseName: string;
  /** Unique per replica (the pod name). */
  identity: string;
  /** How long a Lease is valid after its renewTime; whole seconds (int32 on the wire). Default 15. */
  leaseDurationSeconds?: number;
  /** A leader that could not renew for this long steps down. Must be < leaseDurationSeconds. Default 10. */
  renewDeadlineSeconds?: number;
  /** Time between attempts to acquire or renew. Default 2. */
  retryPeriodSeconds?: number;
  logger: Logger;
  /** Called on every change of leadership (true: became leader; false: stopped being leader). */
  onChange?: (leader: boolean) => void;
  /** The monotonic clock, in milliseconds, for the renew deadline. Default performance.now (tests inject a fake one). */
  now?: () => number;
  /** The wall clock written into the Lease and compared with its renewTime. Default the system clock. */
  date?: () => Date;
  /**
   * Annotations the holder writes on the Lease while it holds it (e.g. where its webhook is reachable,
   * so a replica that is not the leader can forward to it), and removes when it releases it.
   */
  advertise?: Record<string, string | null>;
}

/** client-go's JitterFactor: candidates spread their attempts over [retry, retry * 1.2]. */
const JITTER = 0.2;

export class LeaderElector {
  readonly leaseName: string;
  readonly identity: string;
  private readonly kube: KubernetesClient | null;
  private readonly leaseDurationSeconds: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;
  private readonly log: Logger;
  private readonly onChange: ((leader: boolean) => void) | undefined;
  private readonly now: () => number;
  private readonly date: () => Date;
  private readonly advertise: Record<string, string | null>;

  private running = false;
  private leading = false;
  /** The monotonic clock (now()) at the start of the last successful acquire/renew attempt. */
  private renewedAt = Number.NEGATIVE_INFINITY;
  /** The Lease as last read or written by this elector. */
  private observed: LeaseRecord | null = null;
  private tickTimer: NodeJS.Timeout | null = null;
  private deadlineTimer: NodeJS.Timeout | null = null;
  private inflight: Promise<void> | null = null;

  constructor(options: LeaderElectorOptions) {
    const lease = options.leaseDurationSeconds ?? 15;
    const renew = options.renewDeadlineSeconds ?? 10;
    const retry = options.retryPeriodSeconds ?? 2;
    if (!options.leaseName) throw new ConfigError('leaderElection.leaseName', 'must not be empty');
    if (!options.identity) throw new ConfigError('leaderElection.identity', 'must not be empty');
    if (!Number.isInteger(lease) || lease <= 0) throw new ConfigError('leaderElection.leaseDurationSeconds', `must be a positive whole number of seconds, got ${lease}`);
    if (!(renew > 0) || renew >= lease) {
      throw new ConfigError('leaderElection.renewDeadlineSeconds', `must be greater than 0 and less than leaseDurationSeconds (${lease}), got ${renew}`);
    }
    if (!(retry > 0) || retry * (1 + JITTER) >= renew) {
      throw new ConfigError('leaderElection.retryPeriodSeconds', `must be greater than 0 and retryPeriodSeconds * ${1 + JITTER} less than renewDeadlineSeconds (${renew}), got ${retry}`);
    }
    this.kube = options.kube;
    this.leaseName = options.leaseName;
    this.identity = options.identity;
    this.leaseDurationSeconds = lease;
    this.renewDeadlineMs = renew * 1000;
    this.retryPeriodMs = retry * 1000;
    this.log = options.logger.child({ component: 'leader-election', lease: options.leaseName, identity: options.identity });
    this.onChange = options.onChange;
    this.now = options.now ?? (() => performance.now());
    this.date = options.date ?? (() => new Date());
    this.advertise = { ...(options.advertise ?? {}) };
  }

  /**
   * An annotation the current holder advertised, when another replica holds a Lease that has not
   * expired (as last read: at most a retry period old); null when this replica leads or nobody does.
   */
  holderAnnotation(key: string): string | null {
    return this.otherHolder()?.annotations[key] ?? null;
  }

  /** The replica that holds an unexpired Lease when it is not this one (as last read), with what it advertised. */
  otherHolder(): { identity: string; annotations: Record<string, string> } | null {
    const lease = this.observed;
    if (this.kube === null || lease === null || this.leading) return null;
    if (!lease.holderIdentity || lease.holderIdentity === this.identity || this.expired(lease, this.date())) return null;
    return { identity: lease.holderIdentity, annotations: lease.annotations ?? {} };
  }

  /** True while this replica may act. Judged on the clock at each call, not only when a timer fires. */
  isLeader(): boolean {
    if (this.kube === null) return true;
    return this.leading && this.now() - this.renewedAt < this.renewDeadlineMs;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    if (this.kube === null) {
      this.log.info('no Kubernetes API configured: this replica is always leader');
      if (!this.leading) {
        this.leading = true;
        this.notify(true);
      }
      return;
    }
    this.log.info({ leaseDurationSeconds: this.leaseDurationSeconds, renewDeadlineMs: this.renewDeadlineMs, retryPeriodMs: this.retryPeriodMs }, 'leader election started');
    this.schedule(0);
  }

  /** Stops trying; if the Lease is held, steps down first and then releases it. Never rejects. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    if (this.tickTimer) clearTimeout(this.tickTimer);
    this.tickTimer = null;
    if (this.inflight) await this.inflight;
    this.clearDeadline();
    if (this.kube === null) return;
    this.stepDown('stopping', 'info');
    // Released only if our last write made us the holder; the write is conditional on that
    // resourceVersion, so if anybody wrote the Lease since, it fails with 409 and changes nothing.
    if (this.observed === null || this.observed.holderIdentity !== this.identity) return;
    const now = this.date();
    try {
      const released = await this.kube.replaceLease(
        this.observed,
        { holderIdentity: '', leaseDurationSeconds: 1, acquireTime: now, renewTime: now, leaseTransitions: this.observed.leaseTransitions },
        { timeoutMs: this.renewDeadlineMs, annotations: Object.fromEntries(Object.keys(this.advertise).map((k) => [k, null])) },
      );
      this.observed = released;
      this.log.info('lease released');
    } catch (err) {
      // 409: it changed hands already; anything else: it will simply expire.
      this.log.warn({ err: safeMessage(err) }, 'could not release the lease; it will expire on its own');
    }
  }

  // ----- the loop -----

  private schedule(delayMs: number): void {
    if (!this.running) return;
    this.tickTimer = setTimeout(() => {
      this.tickTimer = null;
      this.inflight = this.tick()
        .catch((err: unknown) => this.log.error({ err: safeMessage(err) }, 'leader election attempt failed unexpectedly'))
        .finally(() => {
          this.inflight = null;
          const base = this.retryPeriodMs;
          this.schedule(this.leading ? base : base * (1 + Math.random() * JITTER));
        });
    }, delayMs);
  }

  private async tick(): Promise<void> {
    const kube = this.kube;
    if (kube === null || !this.running) return;
    const attemptStart = this.now();
    const now = this.date();
    const timeoutMs = this.renewDeadlineMs;
    try {
      const lease = await kube.readLease(this.leaseName, { timeoutMs });
      if (!this.running) return;
      if (lease === null) {
        const created = await kube.createLease(this.leaseName, this.spec(now, now, 0), { timeoutMs, annotations: this.present() });
        this.observed = created;
        this.renewed(attemptStart, 'created the lease');
        return;
      }
      this.observed = lease;
      const holder = lease.holderIdentity ?? '';
      if (holder === this.identity) {
        const renewed = await kube.replaceLease(lease, this.spec(lease.acquireTime ?? now, now, lease.leaseTransitions), { timeoutMs, annotations: this.advertise });
        this.observed = renewed;
        this.renewed(attemptStart, 'renewed');
        return;
      }
      if (holder === '' || this.expired(lease, now)) {
        const taken = await kube.replaceLease(lease, this.spec(now, now, lease.leaseTransitions + 1), { timeoutMs, annotations: this.advertise });
        this.observed = taken;
        this.renewed(attemptStart, holder === '' ? 'acquired the released lease' : `took over the expired lease from ${holder}`);
        return;
      }
      this.stepDown(`lease held by ${holder}`);
    } catch (err) {
      if (isConflict(err)) {
        // Somebody else wrote the Lease between our read and our write (or created it first).
        this.log.debug('lost the race for the lease (409); will look again');
      } else {
        this.log.warn({ err: safeMessage(err), leader: this.leading }, 'could not acquire or renew the lease; retrying');
      }
      // Leadership is not dropped here: renewDeadline decides (see armDeadline), so one failed
      // renewal does not stop a leader, and a leader that keeps failing stops in time.
    }
  }

  /** The advertised annotations that have a value (a null one is removed from the Lease, never left from a previous holder). */
  private present(): Record<string, string> {
    return Object.fromEntries(Object.entries(this.advertise).filter((e): e is [string, string] => e[1] !== null));
  }

  private spec(acquireTime: Date, renewTime: Date, leaseTransitions: number): LeaseSpecInput {
    return { holderIdentity: this.identity, leaseDurationSeconds: this.leaseDurationSeconds, acquireTime, renewTime, leaseTransitions };
  }

  private expired(lease: LeaseRecord, now: Date): boolean {
    if (!lease.renewTime) return true;
    const durationMs = (lease.leaseDurationSeconds ?? this.leaseDurationSeconds) * 1000;
    return lease.renewTime.getTime() + durationMs < now.getTime();
  }

  private renewed(attemptStart: number, what: string): void {
    if (!this.running) return;
    this.renewedAt = attemptStart;
    this.armDeadline();
    if (!this.leading) {
      this.leading = true;
      this.log.info({ leaseTransitions: this.observed?.leaseTransitions }, `became leader: ${what}`);
      this.notify(true);
    } else {
      this.log.trace(what);
    }
  }

  /** Fires when renewDeadline has passed since the last successful renewal, unless renewed again. */
  private armDeadline(): void {
    this.clearDeadline();
    const left = this.renewDeadlineMs - (this.now() - this.renewedAt);
    this.deadlineTimer = setTimeout(() => {
      this.deadlineTimer = null;
      if (this.leading && this.now() - this.renewedAt >= this.renewDeadlineMs) {
        this.stepDown(`no successful renewal for ${this.renewDeadlineMs} ms (renew deadline)`);
      } else if (this.leading) {
        this.armDeadline();
      }
    }, Math.max(0, left));
  }

  private clearDeadline(): void {
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = null;
  }

  private stepDown(why: string, level: 'info' | 'warn' = 'warn'): void {
    this.clearDeadline();
    if (!this.leading) return;
    this.leading = false;
    this.log[level](`stopped being leader: ${why}`);
    this.notify(false);
  }

  private notify(leader: boolean): void {
    if (!this.onChange) return;
    try {
      this.onChange(leader);
    } catch (err) {
      this.log.error({ err: safeMessage(err) }, 'onChange callback threw');
    }
  }
}
