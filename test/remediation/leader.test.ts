/**
 * Leader election against the strict Kubernetes stand-in (real HTTP, real client-node), with short
 * durations: leaseDuration 2 s, renewDeadline 1 s, retryPeriod 0.2 s.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { KubernetesClient } from '../../src/integrations/kubernetes.js';
import { LeaderElector, type LeaderElectorOptions } from '../../src/remediation/leader.js';
import { K8sStandIn, type RecordedRequest } from '../support/k8s-standin.js';

const NS = 'lomash-wood';
const LEASE_S = 2;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Change {
  at: number; // Date.now()
  leader: boolean;
}

async function until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

function holderOf(r: RecordedRequest): string | undefined {
  return (r.body as { spec?: { holderIdentity?: string } } | undefined)?.spec?.holderIdentity;
}

describe('LeaderElector', () => {
  const k8s = new K8sStandIn({ defaultNamespace: NS });
  let dir = '';
  let kubeconfig = '';
  const electors: LeaderElector[] = [];
  const logLines: string[] = [];
  let logger: Logger;

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
  });
  afterEach(async () => {
    k8s.clearFaults();
    await Promise.all(electors.splice(0).map((e) => e.stop()));
  });

  function elector(identity: string, leaseName: string, changes: Change[] = [], extra: Partial<LeaderElectorOptions> = {}): LeaderElector {
    const kube = new KubernetesClient({ namespace: NS, kubeconfigPath: kubeconfig });
    const e = new LeaderElector({
      kube,
      leaseName,
      identity,
      leaseDurationSeconds: LEASE_S,
      renewDeadlineSeconds: 1,
      retryPeriodSeconds: 0.2,
      logger,
      onChange: (leader) => changes.push({ at: Date.now(), leader }),
      ...extra,
    });
    electors.push(e);
    return e;
  }

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
    const a = elector('pod-a', 'two', [], { renewDeadlineSeconds: 1.5 });
    const b = elector('pod-b', 'two', [], { renewDeadlineSeconds: 1.5 });
    a.start();
    b.start();
    await until(() => a.isLeader() || b.isLeader(), 3_000, 'a leader');
    const leader = a.isLeader() ? 'pod-a' : 'pod-b';
    // Several lease durations: the leader keeps renewing, the other never acts. Never two leaders and
    // never a change of leader (safety); one leader at (nearly) every sample (liveness; a starved
    // machine may delay a renewal past the deadline, and then zero leaders is the correct answer).
    let withOneLeader = 0;
    const samples = 50;
    for (let i = 0; i < samples; i++) {
      const count = Number(a.isLeader()) + Number(b.isLeader());
      expect(count).toBeLessThanOrEqual(1);
      if (count === 1) {
        withOneLeader++;
        expect(a.isLeader() ? 'pod-a' : 'pod-b').toBe(leader);
      }
      await sleep(50);
    }
    expect(withOneLeader).toBeGreaterThanOrEqual(samples * 0.9);
    const lease = k8s.lease('two')?.spec as { holderIdentity: string; renewTime: string; leaseDurationSeconds: number; leaseTransitions: number };
    expect(lease.holderIdentity).toBe(leader);
    expect(lease.leaseDurationSeconds).toBe(LEASE_S);
    expect(lease.leaseTransitions).toBe(0);
    expect(lease.renewTime).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/);
    expect(Date.now() - Date.parse(lease.renewTime)).toBeLessThan(1_000);
    // The follower only ever read (or lost the create race); it never wrote a lease naming itself after that.
    const follower = leader === 'pod-a' ? 'pod-b' : 'pod-a';
    const followerWrites = k8s.requests.filter((r) => r.method === 'PUT' && holderOf(r) === follower);
    expect(followerWrites).toHaveLength(0);
    expect(logLines.filter((l) => JSON.parse(l).level >= 50)).toEqual([]);
  });

  it('stop() releases the Lease and the other replica takes over within a lease duration', async () => {
    const changesA: Change[] = [];
    const changesB: Change[] = [];
    const a = elector('pod-a', 'handover', changesA);
    a.start();
    await until(() => a.isLeader(), 3_000, 'pod-a to lead');
    const b = elector('pod-b', 'handover', changesB);
    b.start();
    await sleep(500);
    expect(b.isLeader()).toBe(false);

    const stoppedAt = Date.now();
    await a.stop();
    expect(a.isLeader()).toBe(false);
    await until(() => b.isLeader(), LEASE_S * 1_000 + 1_000, 'pod-b to take over');
    const tookMs = Date.now() - stoppedAt;
    expect(tookMs).toBeLessThan(LEASE_S * 1_000 + 500);
    // A stepped down before B started leading.
    const aDown = changesA.find((c) => !c.leader);
    const bUp = changesB.find((c) => c.leader);
    expect(aDown && bUp && aDown.at <= bUp.at).toBe(true);

    const release = k8s.requests.find((r) => r.method === 'PUT' && holderOf(r) === '');
    expect(release?.status).toBe(200);
    const lease = k8s.lease('handover')?.spec as { holderIdentity: string; leaseTransitions: number; acquireTime: string };
    expect(lease.holderIdentity).toBe('pod-b');
    expect(lease.leaseTransitions).toBe(1);
    expect(Date.now() - Date.parse(lease.acquireTime)).toBeLessThan(LEASE_S * 1_000 + 1_000);
  });

  it('a leader whose renewals fail steps down before its Lease expires, and only then does another take over', async () => {
    const changesA: Change[] = [];
    const changesB: Change[] = [];
    const a = elector('pod-a', 'failing', changesA);
    a.start();
    await until(() => a.isLeader(), 3_000, 'pod-a to lead');
    const b = elector('pod-b', 'failing', changesB);
    b.start();
    await sleep(300);

    // From now on every write by pod-a fails; pod-b's requests still work.
    k8s.failNext(100_000, 500, { method: 'PUT', when: (r) => holderOf({ body: r.body } as RecordedRequest) === 'pod-a' });
    let both = false;
    const watch = setInterval(() => {
      if (a.isLeader() && b.isLeader()) both = true;
    }, 5);
    try {
      await until(() => changesA.some((c) => !c.leader), 3_000, 'pod-a to step down');
      const aDown = changesA.find((c) => !c.leader)?.at ?? 0;
      // The last renewal pod-a got through is what the Lease says.
      const lastRenew = Date.parse((k8s.lease('failing')?.spec as { renewTime: string }).renewTime);
      const expiresAt = lastRenew + LEASE_S * 1_000;
      expect(aDown).toBeLessThan(expiresAt);
      expect(aDown - lastRenew).toBeLessThan(1_000 + 300); // renewDeadline, plus timer slack
      expect(a.isLeader()).toBe(false);

      await until(() => b.isLeader(), 4_000, 'pod-b to take over the expired lease');
      const bUp = changesB.find((c) => c.leader)?.at ?? 0;
      expect(bUp).toBeGreaterThanOrEqual(expiresAt);
      expect(bUp).toBeGreaterThan(aDown);
      expect(both).toBe(false);
      const lease = k8s.lease('failing')?.spec as { holderIdentity: string; leaseTransitions: number };
      expect(lease).toMatchObject({ holderIdentity: 'pod-b', leaseTransitions: 1 });
      expect(k8s.requests.filter((r) => r.injected).length).toBeGreaterThan(2);

      // pod-a, with its API access back, does not grab it again while pod-b renews.
      k8s.clearFaults();
      await sleep(600);
      expect(a.isLeader()).toBe(false);
      expect(b.isLeader()).toBe(true);
    } finally {
      clearInterval(watch);
    }
  });

  it('stops being leader by its deadline even while a renewal hangs', async () => {
    const a = elector('pod-a', 'hanging');
    a.start();
    await until(() => a.isLeader(), 3_000, 'pod-a to lead');
    k8s.delayNext(100_000, 5_000, { method: 'PUT' });
    const hungFrom = Date.now();
    await until(() => !a.isLeader(), 2_500, 'pod-a to step down');
    expect(Date.now() - hungFrom).toBeLessThan(1_000 + 400);
    k8s.clearFaults();
  });

  it('takes over an expired Lease from a dead holder, incrementing leaseTransitions; a racing replica gets 409 and carries on', async () => {
    k8s.seedLease({ name: 'expired', holderIdentity: 'pod-dead', leaseDurationSeconds: LEASE_S, acquireTime: new Date(Date.now() - 60_000), renewTime: new Date(Date.now() - 10_000), leaseTransitions: 3 });
    // Hold both first reads so both see the same resourceVersion and race for it.
    k8s.delayNext(2, 150, { method: 'GET', path: '/leases/expired' });
    const a = elector('pod-a', 'expired');
    const b = elector('pod-b', 'expired');
    a.start();
    b.start();
    await until(() => a.isLeader() || b.isLeader(), 3_000, 'a leader');
    await sleep(500);
    expect(Number(a.isLeader()) + Number(b.isLeader())).toBe(1);
    const lease = k8s.lease('expired')?.spec as { holderIdentity: string; leaseTransitions: number; acquireTime: string };
    expect(lease.holderIdentity).toBe(a.isLeader() ? 'pod-a' : 'pod-b');
    expect(lease.leaseTransitions).toBe(4);
    expect(Date.now() - Date.parse(lease.acquireTime)).toBeLessThan(2_000);
    const puts = k8s.requests.filter((r) => r.method === 'PUT' && r.path.endsWith('/leases/expired'));
    expect(puts.some((r) => r.status === 409)).toBe(true);
    expect(logLines.filter((l) => JSON.parse(l).level >= 50)).toEqual([]);
  });

  it('does not take a Lease another replica holds and renews', async () => {
    k8s.seedLease({ name: 'held', holderIdentity: 'pod-other', leaseDurationSeconds: 15, acquireTime: new Date(), renewTime: new Date(), leaseTransitions: 7 });
    const a = elector('pod-a', 'held');
    a.start();
    await sleep(800);
    expect(a.isLeader()).toBe(false);
    expect(k8s.requests.filter((r) => r.method !== 'GET')).toEqual([]);
    expect(k8s.requests.length).toBeGreaterThanOrEqual(3);
    expect((k8s.lease('held')?.spec as { holderIdentity: string }).holderIdentity).toBe('pod-other');
  });

  it('never throws while the API is down, and becomes leader once it is back', async () => {
    k8s.failNext(100_000, 503, { path: '/leases/outage' });
    const changes: Change[] = [];
    const a = elector('pod-a', 'outage', changes);
    a.start();
    await sleep(700);
    expect(a.isLeader()).toBe(false);
    expect(changes).toEqual([]);
    expect(k8s.requests.filter((r) => r.status === 503).length).toBeGreaterThanOrEqual(2);
    k8s.clearFaults();
    await until(() => a.isLeader(), 2_000, 'leadership after the outage');
    expect(changes.map((c) => c.leader)).toEqual([true]);
  });

  it('stop() while not leader writes nothing', async () => {
    k8s.seedLease({ name: 'quiet', holderIdentity: 'pod-other', leaseDurationSeconds: 15, acquireTime: new Date(), renewTime: new Date() });
    const a = elector('pod-a', 'quiet');
    a.start();
    await sleep(300);
    await a.stop();
    expect(k8s.requests.filter((r) => r.method !== 'GET')).toEqual([]);
  });
});
