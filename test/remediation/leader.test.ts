/**
 * Leader election against the strict Kubernetes stand-in (real HTTP, real client-node), on a fake
 * clock: vitest's fake timers drive the elector's timers and its injected clocks, so the Lease is
 * judged by the same time the elector reads, and nothing depends on how fast this machine is.
 *
 * The simulation is discrete: the test fires the next due timer, then waits (in real time) until
 * every Kubernetes call that timer caused has finished, and only then fires the next one. A request
 * therefore takes no fake time, and an attempt, a renewal and a deadline happen at exactly the fake
 * instant the rules say. The durations are the production defaults (15 s / 10 s / 2 s): fake time
 * costs nothing, and the client's own request timeout (the renew deadline, on the real clock) stays
 * far away from a loaded machine's latencies.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setImmediate as turn, setTimeout as realSleep } from 'node:timers/promises';
import { pino, type Logger } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { KubernetesClient } from '../../src/integrations/kubernetes.js';
import { LeaderElector, type LeaderElectorOptions } from '../../src/coordination/leader.js';
import { K8sStandIn, type RecordedRequest } from '../support/k8s-standin.js';

const NS = 'lomash-wood';
const LEASE_S = 15;
const LEASE_MS = LEASE_S * 1000;
const RENEW_MS = 10_000;
const RETRY_MS = 2_000;
/** client-go's jitter: a candidate waits between retryPeriod and 1.2 × retryPeriod. */
const RETRY_MAX_MS = RETRY_MS * 1.2;

interface Change {
  at: number; // Date.now() on the fake clock
  leader: boolean;
}

function holderOf(r: RecordedRequest): string | undefined {
  return (r.body as { spec?: { holderIdentity?: string } } | undefined)?.spec?.holderIdentity;
}

/** The real clock, in ms (Date and performance are fake in these tests). */
const realMs = (): number => Number(process.hrtime.bigint() / 1_000_000n);

// ---------------------------------------------------------------------------------------------------
// The elector's Kubernetes calls: recorded on the fake clock, counted while in flight, and held on request

type LeaseOp = 'readLease' | 'createLease' | 'replaceLease';
const LEASE_OPS: readonly string[] = ['readLease', 'createLease', 'replaceLease'];

interface KubeCall {
  op: LeaseOp;
  identity: string;
  /** Fake Date.now() when the elector made the call. */
  at: number;
  /** holderIdentity of a create/replace. */
  holder: string | undefined;
  /** 'ok', the HTTP status of a refusal, or 'error'; undefined while in flight. */
  outcome: string | undefined;
}

interface Hold {
  /** Calls waiting at the hold now. */
  readonly waiting: number;
  /** Lets every waiting call (and every later one) through. */
  release(): void;
}

class Calls {
  readonly log: KubeCall[] = [];
  /** Calls on their way to the stand-in or back (not the held ones). */
  active = 0;
  private readonly holds: { match: (c: KubeCall) => boolean; waiters: (() => void)[]; released: boolean }[] = [];

  hold(match: (c: KubeCall) => boolean): Hold {
    const h = { match, waiters: [] as (() => void)[], released: false };
    this.holds.push(h);
    return {
      get waiting() {
        return h.waiters.length;
      },
      release: () => {
        h.released = true;
        for (const go of h.waiters.splice(0)) go();
      },
    };
  }

  releaseAll(): void {
    for (const h of this.holds) {
      h.released = true;
      for (const go of h.waiters.splice(0)) go();
    }
  }

  /** `kube` for elector `identity`: the same client, every Lease call recorded and counted. */
  wrap(kube: KubernetesClient, identity: string): KubernetesClient {
    return new Proxy(kube, {
      get: (target, prop, receiver) => {
        const v: unknown = Reflect.get(target, prop, receiver);
        if (typeof prop !== 'string' || !LEASE_OPS.includes(prop) || typeof v !== 'function') return v;
        return async (...args: unknown[]) => {
          const call: KubeCall = {
            op: prop as LeaseOp,
            identity,
            at: Date.now(),
            holder: prop === 'readLease' ? undefined : (args[1] as { holderIdentity?: string }).holderIdentity,
            outcome: undefined,
          };
          this.log.push(call);
          const h = this.holds.find((x) => !x.released && x.match(call));
          if (h) await new Promise<void>((go) => h.waiters.push(go));
          this.active++;
          try {
            const result: unknown = await (v as (...a: unknown[]) => Promise<unknown>).apply(target, args);
            call.outcome = 'ok';
            return result;
          } catch (err) {
            const status = (err as { status?: number }).status;
            call.outcome = status === undefined ? 'error' : String(status);
            throw err;
          } finally {
            this.active--;
          }
        };
      },
    });
  }
}

describe('LeaderElector', () => {
  const k8s = new K8sStandIn({ defaultNamespace: NS });
  let dir = '';
  let kubeconfig = '';
  const electors: LeaderElector[] = [];
  const logLines: string[] = [];
  let logger: Logger;
  let calls: Calls;

  beforeAll(async () => {
    await k8s.start();
    dir = await mkdtemp(path.join(tmpdir(), 'dbpilot-leader-'));
    kubeconfig = await k8s.writeKubeconfig(dir);
    logger = pino({ level: 'debug' }, { write: (line: string) => void logLines.push(line) });
  });
  afterAll(async () => {
    await k8s.close();
    await rm(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    k8s.clearRequests();
    k8s.clearFaults();
    logLines.length = 0;
    calls = new Calls();
    // setImmediate, process.nextTick and queueMicrotask stay real: the HTTP below needs them.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date', 'performance'] });
  });
  afterEach(async () => {
    k8s.clearFaults();
    // stop() stops the loop first, then waits for the attempt in flight: let held calls go after that.
    const stopping = electors.splice(0).map((e) => e.stop());
    calls.releaseAll();
    await Promise.all(stopping);
    vi.useRealTimers();
  });

  function elector(identity: string, leaseName: string, changes: Change[] = [], extra: Partial<LeaderElectorOptions> = {}): LeaderElector {
    const kube = new KubernetesClient({ namespace: NS, kubeconfigPath: kubeconfig });
    const e = new LeaderElector({
      kube: calls.wrap(kube, identity),
      leaseName,
      identity,
      leaseDurationSeconds: LEASE_S,
      renewDeadlineSeconds: RENEW_MS / 1000,
      retryPeriodSeconds: RETRY_MS / 1000,
      logger,
      onChange: (leader) => changes.push({ at: Date.now(), leader }),
      // The fake clocks (vi.useFakeTimers replaces the global performance, not perf_hooks' import).
      now: () => performance.now(),
      date: () => new Date(),
      ...extra,
    });
    electors.push(e);
    return e;
  }

  /** Waits, in real time, until no Kubernetes call of any elector is in flight (held ones aside). */
  async function settle(): Promise<void> {
    const deadline = realMs() + 30_000;
    for (;;) {
      // A macrotask turn: whatever a finished call's continuation started has been started by now.
      await turn();
      if (calls.active === 0) return;
      if (realMs() > deadline) throw new Error(`a Kubernetes call did not finish within 30 s (real time): ${JSON.stringify(calls.log.filter((c) => c.outcome === undefined))}`);
      await realSleep(1);
    }
  }

  /**
   * Fires the due timers, each followed by everything it caused over HTTP, until `cond` holds
   * (checked after every step); fails after `maxMs` of fake time.
   */
  async function runUntil(cond: () => boolean, maxMs: number, what: string): Promise<void> {
    const end = Date.now() + maxMs;
    await settle();
    while (!cond()) {
      if (Date.now() > end) throw new Error(`${what}: not within ${maxMs} ms of fake time`);
      if (vi.getTimerCount() === 0) throw new Error(`${what}: nothing is scheduled any more`);
      await vi.advanceTimersToNextTimerAsync();
      await settle();
    }
  }

  /** Runs for at least `ms` of fake time, calling `each` after every step. */
  async function runFor(ms: number, each: () => void = () => {}): Promise<void> {
    const end = Date.now() + ms;
    await runUntil(
      () => {
        each();
        return Date.now() >= end;
      },
      ms + RETRY_MAX_MS + RENEW_MS,
      `running for ${ms} ms`,
    );
  }

  const errorLogs = () => logLines.filter((l) => (JSON.parse(l) as { level: number }).level >= 50);
  /** The calls of `identity` made after fake time `since`. */
  const callsOf = (identity: string, since = Number.NEGATIVE_INFINITY) => calls.log.filter((c) => c.identity === identity && c.at > since);
  const writesOf = (identity: string, since = Number.NEGATIVE_INFINITY) => callsOf(identity, since).filter((c) => c.op !== 'readLease');

  it('without Kubernetes is always leader', async () => {
    const changes: Change[] = [];
    const e = new LeaderElector({ kube: null, leaseName: 'x', identity: 'solo', logger, onChange: (leader) => changes.push({ at: Date.now(), leader }) });
    expect(e.isLeader()).toBe(true);
    e.start();
    e.start();
    expect(e.isLeader()).toBe(true);
    expect(changes.map((c) => c.leader)).toEqual([true]);
    await e.stop();
    expect(k8s.requests).toHaveLength(0);
  });

  it('validates its timings at construction (renewDeadline < leaseDuration, like client-go)', () => {
    const base = { kube: null, leaseName: 'l', identity: 'i', logger };
    expect(() => new LeaderElector({ ...base, leaseDurationSeconds: 10, renewDeadlineSeconds: 10 })).toThrow(ConfigError);
    expect(() => new LeaderElector({ ...base, leaseDurationSeconds: 10, renewDeadlineSeconds: 12 })).toThrow(/renewDeadlineSeconds/);
    expect(() => new LeaderElector({ ...base, leaseDurationSeconds: 1.5, renewDeadlineSeconds: 1 })).toThrow(/leaseDurationSeconds/);
    expect(() => new LeaderElector({ ...base, renewDeadlineSeconds: 2, retryPeriodSeconds: 2 })).toThrow(/retryPeriodSeconds/);
    expect(() => new LeaderElector({ ...base, identity: '' })).toThrow(ConfigError);
    expect(() => new LeaderElector({ ...base })).not.toThrow();
  });

  it('two electors on one Lease: exactly one leader, and it stays so', async () => {
    const a = elector('pod-a', 'two');
    const b = elector('pod-b', 'two');
    a.start();
    b.start();
    await runUntil(() => a.isLeader() || b.isLeader(), RETRY_MAX_MS, 'a leader');
    const [leader, follower] = a.isLeader() ? [a, b] : [b, a];
    // Three lease durations, checked at every step: never two leaders, never none, never another.
    await runFor(3 * LEASE_MS, () => {
      expect(Number(a.isLeader()) + Number(b.isLeader())).toBe(1);
      expect(leader.isLeader()).toBe(true);
    });

    // It renewed every retryPeriod, each renewal written at the instant of its attempt.
    const renewals = writesOf(leader.identity).filter((c) => c.outcome === 'ok');
    expect(renewals.length).toBeGreaterThanOrEqual((3 * LEASE_MS) / RETRY_MS);
    expect(renewals.slice(1).map((c, i) => c.at - renewals[i]!.at)).toEqual(renewals.slice(1).map(() => RETRY_MS));
    const lease = k8s.lease('two')?.spec as { holderIdentity: string; renewTime: string; leaseDurationSeconds: number; leaseTransitions: number };
    expect(lease.holderIdentity).toBe(leader.identity);
    expect(lease.leaseDurationSeconds).toBe(LEASE_S);
    expect(lease.leaseTransitions).toBe(0);
    expect(lease.renewTime).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/);
    expect(Date.parse(lease.renewTime)).toBe(renewals.at(-1)!.at);
    expect(Date.now() - Date.parse(lease.renewTime)).toBeLessThanOrEqual(RETRY_MS);
    // The follower only ever read (or lost the create race); it never got a write naming itself through.
    expect(writesOf(follower.identity).filter((c) => c.outcome === 'ok')).toEqual([]);
    expect(k8s.requests.filter((r) => r.method === 'PUT' && holderOf(r) === follower.identity)).toEqual([]);
    expect(errorLogs()).toEqual([]);
  });

  it('stop() releases the Lease and the other replica takes it at its next attempt, not after the Lease expires', async () => {
    const changesA: Change[] = [];
    const changesB: Change[] = [];
    const a = elector('pod-a', 'handover', changesA);
    a.start();
    await runUntil(() => a.isLeader(), RETRY_MAX_MS, 'pod-a to lead');
    const b = elector('pod-b', 'handover', changesB);
    b.start();
    await runFor(2 * RETRY_MS);
    expect(callsOf('pod-b').filter((c) => c.op === 'readLease' && c.outcome === 'ok').length).toBeGreaterThanOrEqual(1);
    expect(b.isLeader()).toBe(false);

    const stoppedAt = Date.now();
    await a.stop();
    expect(a.isLeader()).toBe(false);
    await runUntil(() => b.isLeader(), LEASE_MS, 'pod-b to take over');
    // pod-b's first look after the release took it: a read, then the write that acquired it.
    const after = callsOf('pod-b', stoppedAt);
    expect(after.slice(0, 2).map((c) => [c.op, c.holder, c.outcome])).toEqual([
      ['readLease', undefined, 'ok'],
      ['replaceLease', 'pod-b', 'ok'],
    ]);
    const bUp = changesB.find((c) => c.leader)!;
    expect(bUp.at).toBe(after[0]!.at);
    expect(bUp.at - stoppedAt).toBeLessThanOrEqual(RETRY_MAX_MS);
    // A stepped down before B started leading, and the release reached the API before B's acquisition.
    const aDown = changesA.find((c) => !c.leader)!;
    expect(aDown.at).toBeLessThanOrEqual(bUp.at);
    const puts = k8s.requests.filter((r) => r.method === 'PUT' && r.path.endsWith('/leases/handover'));
    const release = puts.findIndex((r) => holderOf(r) === '');
    expect(puts[release]?.status).toBe(200);
    expect(puts.findIndex((r) => holderOf(r) === 'pod-b' && r.status === 200)).toBeGreaterThan(release);

    const lease = k8s.lease('handover')?.spec as { holderIdentity: string; leaseTransitions: number; acquireTime: string };
    expect(lease.holderIdentity).toBe('pod-b');
    expect(lease.leaseTransitions).toBe(1);
    expect(Date.parse(lease.acquireTime)).toBe(bUp.at);
  });

  it('a leader whose renewals fail steps down before its Lease expires, and only then does another take over', async () => {
    const changesA: Change[] = [];
    const changesB: Change[] = [];
    const a = elector('pod-a', 'failing', changesA);
    a.start();
    await runUntil(() => a.isLeader(), RETRY_MAX_MS, 'pod-a to lead');
    const b = elector('pod-b', 'failing', changesB);
    b.start();
    await runFor(2 * RETRY_MS);

    // From now on every write by pod-a fails; pod-b's requests still work.
    const failingFrom = Date.now();
    k8s.failNext(100_000, 500, { method: 'PUT', when: (r) => holderOf({ body: r.body } as RecordedRequest) === 'pod-a' });
    const neverBoth = () => expect(a.isLeader() && b.isLeader(), 'two leaders at once').toBe(false);
    await runUntil(
      () => {
        neverBoth();
        return changesA.some((c) => !c.leader);
      },
      LEASE_MS,
      'pod-a to step down',
    );
    const aDown = changesA.find((c) => !c.leader)!.at;
    // The last renewal pod-a got through is what the Lease says; it stepped down exactly its renew
    // deadline after that renewal's attempt — before the Lease expires.
    const lastRenew = Date.parse((k8s.lease('failing')?.spec as { renewTime: string }).renewTime);
    const expiresAt = lastRenew + LEASE_MS;
    expect(aDown).toBe(lastRenew + RENEW_MS);
    expect(aDown).toBeLessThan(expiresAt);
    expect(a.isLeader()).toBe(false);
    // Every renewal it tried in between was refused.
    const tried = writesOf('pod-a', failingFrom);
    expect(tried.length).toBeGreaterThanOrEqual(1);
    expect(tried.map((c) => c.outcome)).toEqual(tried.map(() => '500'));

    await runUntil(
      () => {
        neverBoth();
        return b.isLeader();
      },
      LEASE_MS,
      'pod-b to take over the expired lease',
    );
    const bUp = changesB.find((c) => c.leader)!.at;
    // Taken over at pod-b's first look after the Lease had expired (renewTime + duration < now).
    const firstLookAfterExpiry = callsOf('pod-b').find((c) => c.op === 'readLease' && c.at > expiresAt)!;
    expect(bUp).toBe(firstLookAfterExpiry.at);
    expect(bUp).toBeGreaterThan(aDown);
    const lease = k8s.lease('failing')?.spec as { holderIdentity: string; leaseTransitions: number };
    expect(lease).toMatchObject({ holderIdentity: 'pod-b', leaseTransitions: 1 });

    // pod-a, with its API access back, does not grab it again while pod-b renews.
    k8s.clearFaults();
    const cleared = Date.now();
    await runFor(3 * RETRY_MS, () => {
      expect(a.isLeader()).toBe(false);
      expect(b.isLeader()).toBe(true);
    });
    expect(callsOf('pod-a', cleared).length).toBeGreaterThanOrEqual(1);
    expect(writesOf('pod-a', cleared)).toEqual([]);
  });

  it('stops being leader by its deadline even while a renewal hangs', async () => {
    const changes: Change[] = [];
    const a = elector('pod-a', 'hanging', changes);
    a.start();
    await runUntil(() => a.isLeader(), RETRY_MAX_MS, 'pod-a to lead');
    const renewedAt = writesOf('pod-a').filter((c) => c.outcome === 'ok').at(-1)!.at;
    // Every later renewal is held: sent, never answered.
    const hung = calls.hold((c) => c.identity === 'pod-a' && c.op === 'replaceLease');
    await runUntil(() => !a.isLeader(), RENEW_MS + RETRY_MS, 'pod-a to step down');
    expect(hung.waiting).toBe(1); // the renewal is still in flight
    expect(Date.now()).toBe(renewedAt + RENEW_MS);
    expect(changes).toEqual([
      { at: renewedAt, leader: true },
      { at: renewedAt + RENEW_MS, leader: false },
    ]);
  });

  it('counts the renew deadline from the start of the renewal attempt (its renewTime), not from the answer', async () => {
    const changes: Change[] = [];
    const a = elector('pod-a', 'slow-answer', changes);
    a.start();
    await runUntil(() => a.isLeader(), RETRY_MAX_MS, 'pod-a to lead');
    // The next renewal is answered only after 3 s of fake time; the ones after it never.
    const slow = calls.hold((c) => c.identity === 'pod-a' && c.op === 'replaceLease');
    await runUntil(() => slow.waiting === 1, RETRY_MAX_MS, 'the renewal to be sent');
    const attemptAt = Date.now();
    await vi.advanceTimersByTimeAsync(3_000);
    const never = calls.hold((c) => c.identity === 'pod-a' && c.op === 'replaceLease');
    slow.release();
    await settle();
    expect(a.isLeader()).toBe(true);
    expect(Date.parse((k8s.lease('slow-answer')?.spec as { renewTime: string }).renewTime)).toBe(attemptAt);

    await runUntil(() => !a.isLeader(), RENEW_MS + RETRY_MS, 'pod-a to step down');
    expect(never.waiting).toBe(1);
    expect(changes.at(-1)).toEqual({ at: attemptAt + RENEW_MS, leader: false });
  });

  it('takes over an expired Lease from a dead holder, incrementing leaseTransitions; a racing replica gets 409 and carries on', async () => {
    k8s.seedLease({
      name: 'expired',
      holderIdentity: 'pod-dead',
      leaseDurationSeconds: LEASE_S,
      acquireTime: new Date(Date.now() - 60_000),
      renewTime: new Date(Date.now() - LEASE_MS - 10_000),
      leaseTransitions: 3,
    });
    // Both replicas read the Lease; their writes are held until both are at it, so both carry the
    // resourceVersion they read — the same one.
    const writes = calls.hold((c) => c.op === 'replaceLease');
    const a = elector('pod-a', 'expired');
    const b = elector('pod-b', 'expired');
    a.start();
    b.start();
    await runUntil(() => writes.waiting === 2, RETRY_MAX_MS, 'both replicas to try to take the lease');
    const triedAt = Date.now();
    writes.release();
    await settle();

    expect(Number(a.isLeader()) + Number(b.isLeader())).toBe(1);
    const [winner, loser] = a.isLeader() ? [a, b] : [b, a];
    const puts = k8s.requests.filter((r) => r.method === 'PUT' && r.path.endsWith('/leases/expired'));
    expect(puts.map((r) => r.status).sort()).toEqual([200, 409]);
    expect(holderOf(puts.find((r) => r.status === 409)!)).toBe(loser.identity);
    const lease = k8s.lease('expired')?.spec as { holderIdentity: string; leaseTransitions: number; acquireTime: string };
    expect(lease.holderIdentity).toBe(winner.identity);
    expect(lease.leaseTransitions).toBe(4);
    expect(Date.parse(lease.acquireTime)).toBe(triedAt);

    // The loser carries on: it keeps looking, writes nothing, and the winner stays leader.
    await runFor(3 * RETRY_MS, () => {
      expect(winner.isLeader()).toBe(true);
      expect(loser.isLeader()).toBe(false);
    });
    expect(callsOf(loser.identity, triedAt).length).toBeGreaterThanOrEqual(2);
    expect(writesOf(loser.identity, triedAt)).toEqual([]);
    expect(errorLogs()).toEqual([]);
  });

  it('does not take a Lease another replica holds and renews', async () => {
    const seed = () =>
      k8s.seedLease({ name: 'held', holderIdentity: 'pod-other', leaseDurationSeconds: LEASE_S, acquireTime: new Date(0), renewTime: new Date(), leaseTransitions: 7 });
    seed();
    let renewedAt = Date.now();
    const a = elector('pod-a', 'held');
    a.start();
    // Several lease durations, with pod-other renewing every retryPeriod.
    await runFor(3 * LEASE_MS, () => {
      if (Date.now() - renewedAt >= RETRY_MS) {
        seed();
        renewedAt = Date.now();
      }
      expect(a.isLeader()).toBe(false);
    });
    expect(k8s.requests.filter((r) => r.method !== 'GET')).toEqual([]);
    // It kept looking, once every retryPeriod (jittered up to 1.2 ×), and only looking.
    const looks = callsOf('pod-a');
    expect(looks.every((c) => c.op === 'readLease' && c.outcome === 'ok')).toBe(true);
    expect(looks.length).toBeGreaterThanOrEqual((3 * LEASE_MS) / RETRY_MAX_MS);
    for (const [i, c] of looks.slice(1).entries()) {
      const gap = c.at - looks[i]!.at;
      expect(gap).toBeGreaterThanOrEqual(RETRY_MS);
      expect(gap).toBeLessThan(RETRY_MAX_MS);
    }
    expect((k8s.lease('held')?.spec as { holderIdentity: string }).holderIdentity).toBe('pod-other');
  });

  it('never throws while the API is down, and becomes leader once it is back', async () => {
    k8s.failNext(100_000, 503, { path: '/leases/outage' });
    const changes: Change[] = [];
    const a = elector('pod-a', 'outage', changes);
    a.start();
    await runFor(3 * RETRY_MAX_MS, () => expect(a.isLeader()).toBe(false));
    expect(changes).toEqual([]);
    // Every attempt met the outage and was retried.
    const failed = callsOf('pod-a');
    expect(failed.length).toBeGreaterThanOrEqual(3);
    expect(failed.map((c) => [c.op, c.outcome])).toEqual(failed.map(() => ['readLease', '503']));
    expect(errorLogs()).toEqual([]);

    k8s.clearFaults();
    const back = Date.now();
    await runUntil(() => a.isLeader(), RETRY_MAX_MS, 'leadership after the outage');
    // At its very next attempt.
    expect(changes).toEqual([{ at: callsOf('pod-a', back)[0]!.at, leader: true }]);
  });

  it('stop() while not leader writes nothing', async () => {
    k8s.seedLease({ name: 'quiet', holderIdentity: 'pod-other', leaseDurationSeconds: LEASE_S, acquireTime: new Date(), renewTime: new Date() });
    const a = elector('pod-a', 'quiet');
    a.start();
    await runFor(RETRY_MS);
    expect(callsOf('pod-a').length).toBeGreaterThanOrEqual(1);
    await a.stop();
    expect(k8s.requests.filter((r) => r.method === 'GET').length).toBeGreaterThanOrEqual(1);
    expect(k8s.requests.filter((r) => r.method !== 'GET')).toEqual([]);
  });
});
