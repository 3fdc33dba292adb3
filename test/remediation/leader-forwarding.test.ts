/**
 * Where a replica that is not the leader forwards to: the address the holder of the Lease advertised,
 * and only when it is that holder's own pod IP as the API server reports it — whoever can write the
 * Lease's annotation cannot make it point a caller's credential anywhere else. And an address left on
 * the Lease by a previous holder is removed by the next one, never inherited.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LeaderElector } from '../../src/coordination/leader.js';
import { KubernetesClient } from '../../src/integrations/kubernetes.js';
import { createLogger } from '../../src/logger.js';
import { verifiedLeaderUrl } from '../../src/remediation/index.js';
import { LEADER_URL_ANNOTATION } from '../../src/remediation/routes.js';
import { K8sStandIn } from '../support/k8s-standin.js';
import { until } from '../support/remediation.js';

const NS = 'dbpilot-forwarding';
const k8s = new K8sStandIn({ namespaces: [NS] });
let dir: string;
let kube: KubernetesClient;
const log = createLogger('silent');
const electors: LeaderElector[] = [];

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-forwarding-'));
  await k8s.start();
  kube = new KubernetesClient({ namespace: NS, kubeconfigPath: await k8s.writeKubeconfig(dir, { namespace: NS }) });
  k8s.seedPod({ name: 'dbpilot-0', namespace: NS, podIP: '10.1.1.1' });
  k8s.seedPod({ name: 'dbpilot-1', namespace: NS, podIP: '10.1.1.2' });
});
afterEach(async () => {
  for (const e of electors.splice(0)) await e.stop();
});
afterAll(async () => {
  await k8s.close();
  rmSync(dir, { recursive: true, force: true });
});

function elector(lease: string, identity: string, url: string | null): LeaderElector {
  const e = new LeaderElector({
    kube,
    leaseName: lease,
    identity,
    leaseDurationSeconds: 2,
    renewDeadlineSeconds: 1,
    retryPeriodSeconds: 0.25,
    logger: log,
    advertise: { [LEADER_URL_ANNOTATION]: url },
  });
  electors.push(e);
  e.start();
  return e;
}

const annotations = (lease: string) => ((k8s.lease(lease, NS)?.metadata as { annotations?: Record<string, string> } | undefined)?.annotations ?? {});

describe('forwarding to the leader', () => {
  it("forwards to the address the leader advertised when it is the leader pod's IP", async () => {
    const leader = elector('fwd-a', 'dbpilot-0-111-aaaaaaaa', 'http://10.1.1.1:9630');
    await until(() => leader.isLeader(), 'leadership');
    const follower = elector('fwd-a', 'dbpilot-1-222-bbbbbbbb', 'http://10.1.1.2:9630');
    await until(() => follower.otherHolder() !== null, 'the follower to see the leader');
    expect(await verifiedLeaderUrl(follower, kube, log)).toBe('http://10.1.1.1:9630');
  });

  it('does not forward to an address that is not the holder pod’s IP, nor to a name, nor without a pod', async () => {
    for (const [identity, url] of [
      ['dbpilot-0-333-cccccccc', 'http://10.6.6.6:9630'], // someone else's address under dbpilot-0's name
      ['dbpilot-0-444-dddddddd', 'http://collector.evil.example:9630'], // not an IP: cannot be checked
      ['nosuchpod-555-eeeeeeee', 'http://10.1.1.1:9630'], // the holder names no pod
      ['dbpilot-0-666-ffffffff', 'file://10.1.1.1/etc/passwd'],
    ] as const) {
      const lease = `fwd-${identity.slice(-8)}`;
      const leader = elector(lease, identity, url);
      await until(() => leader.isLeader(), 'leadership');
      const follower = elector(lease, 'dbpilot-1-777-abcdef01', null);
      await until(() => follower.otherHolder() !== null, 'the follower to see the leader');
      expect(await verifiedLeaderUrl(follower, kube, log), url).toBeNull();
    }
  });

  it('a new holder with no address removes the previous holder’s from the Lease', async () => {
    k8s.seedLease({
      name: 'fwd-stale',
      namespace: NS,
      holderIdentity: 'dbpilot-0-888-12345678',
      leaseDurationSeconds: 2,
      acquireTime: new Date(Date.now() - 60_000),
      renewTime: new Date(Date.now() - 30_000),
    });
    // The previous holder left its address (and somebody else an annotation of their own).
    const current = (await kube.readLease('fwd-stale'))!;
    await kube.replaceLease(
      current,
      { holderIdentity: current.holderIdentity!, leaseDurationSeconds: 2, acquireTime: current.acquireTime!, renewTime: current.renewTime!, leaseTransitions: current.leaseTransitions },
      { annotations: { [LEADER_URL_ANNOTATION]: 'http://10.1.1.1:9630', 'example.com/other': 'kept' } },
    );
    expect(annotations('fwd-stale')[LEADER_URL_ANNOTATION]).toBe('http://10.1.1.1:9630');
    const taker = elector('fwd-stale', 'dbpilot-1-999-87654321', null);
    await until(() => taker.isLeader(), 'the takeover of the expired Lease');
    expect(annotations('fwd-stale')).toEqual({ 'example.com/other': 'kept' });
  });
});
