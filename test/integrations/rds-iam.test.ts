/**
 * What dbpilot needs from AWS, checked against what it does: the IAM policy documented in
 * docs/disaster-recovery/restore.md (and the README) lists exactly the RDS actions
 * src/integrations/rds.ts calls — read from the source, as the chart's Role is checked against the
 * Kubernetes calls — limited to the instance and its snapshots, deleting only snapshots that carry
 * dbpilot's tag; the chart puts the IRSA role on the ServiceAccount; and the commands the guide shows
 * are the ones dbpilot prints.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { restoreFromSnapshotCommand, restoreToTimeCommand } from '../../src/integrations/rds.js';
import { loadChart, renderChart } from '../deploy/helm.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const read = (rel: string) => readFileSync(path.join(ROOT, rel), 'utf8');
const guide = read('docs/disaster-recovery/restore.md');

interface Statement {
  Sid: string;
  Effect: string;
  Action: string[];
  Resource: string[];
  Condition?: Record<string, Record<string, string>>;
}

function policy(): { Statement: Statement[] } {
  const m = /```json\n([\s\S]*?)\n```/.exec(guide.slice(guide.indexOf('## IAM policy')));
  if (!m) throw new Error('no IAM policy in docs/disaster-recovery/restore.md');
  return JSON.parse(m[1]!) as { Statement: Statement[] };
}

describe('the IAM policy', () => {
  it('allows exactly the RDS actions dbpilot calls (and tagging on create), nothing else', () => {
    const called = new Set([...read('src/integrations/rds.ts').matchAll(/new this\.sdk\.(\w+)Command\(/g)].map((m) => `rds:${m[1]}`));
    expect(called.size).toBeGreaterThan(5);
    const allowed = new Set(policy().Statement.flatMap((s) => s.Action));
    // Create and restore send Tags: RDS then also authorises AddTagsToResource.
    expect([...allowed].sort()).toEqual([...called, 'rds:AddTagsToResource'].sort());
    for (const a of allowed) expect(a).toMatch(/^rds:[A-Za-z]+$/);
  });

  it('is limited to the instance, its snapshots and new restore targets; deletes only dbpilot’s own', () => {
    const statements = policy().Statement;
    for (const s of statements) {
      expect(s.Effect).toBe('Allow');
      for (const r of s.Resource) {
        expect(r).toMatch(/^arn:aws:rds:eu-west-2:123456789012:(db:lomash-wood-|snapshot:|subgrp:lomash-wood-db$|pg:lomash-wood-postgres15$|og:|auto-backup:)/);
      }
    }
    const of = (action: string) => statements.filter((s) => s.Action.includes(action));
    const del = of('rds:DeleteDBSnapshot');
    expect(del).toHaveLength(1);
    expect(del[0]!.Resource).toEqual(['arn:aws:rds:eu-west-2:123456789012:snapshot:lomash-wood-manual-*']);
    expect(del[0]!.Condition).toEqual({ StringEquals: { 'rds:snapshot-tag/dbpilot.io/managed-by': 'dbpilot' } });
    expect(of('rds:ModifyDBInstance')[0]!.Resource).toEqual(['arn:aws:rds:eu-west-2:123456789012:db:lomash-wood-prod']);
    expect(of('rds:CreateDBSnapshot')[0]!.Condition).toEqual({ StringEquals: { 'aws:RequestTag/dbpilot.io/managed-by': 'dbpilot' } });
    // Every action is in the table above the policy, with what it is for.
    for (const a of statements.flatMap((s) => s.Action)) expect(guide).toContain(`| \`${a}\` |`);
  });
});

describe('the chart', () => {
  const chart = loadChart(path.join(ROOT, 'helm', 'dbpilot'));
  const sa = (values: Record<string, unknown>) => renderChart(chart, { namespace: 'lomash-wood', values }).manifests.find((m) => m.doc.kind === 'ServiceAccount')!.doc;

  it('annotates the ServiceAccount with the IRSA role when serviceAccount.awsRoleArn is set', () => {
    expect(sa({}).metadata.annotations).toBeUndefined();
    expect(sa({ serviceAccount: { awsRoleArn: 'arn:aws:iam::123456789012:role/dbpilot' } }).metadata.annotations).toEqual({ 'eks.amazonaws.com/role-arn': 'arn:aws:iam::123456789012:role/dbpilot' });
    expect(sa({ serviceAccount: { awsRoleArn: 'arn:aws:iam::123456789012:role/dbpilot', annotations: { 'eks.amazonaws.com/sts-regional-endpoints': 'true' } } }).metadata.annotations).toEqual({
      'eks.amazonaws.com/role-arn': 'arn:aws:iam::123456789012:role/dbpilot',
      'eks.amazonaws.com/sts-regional-endpoints': 'true',
    });
  });
});

describe('the restore guide', () => {
  const shape = { instanceClass: 'db.r6g.large', subnetGroup: 'lomash-wood-db', securityGroupIds: ['sg-0a1b2c3d4e5f60718'], parameterGroup: 'lomash-wood-postgres15', multiAZ: true };
  it('shows the commands dbpilot prints', () => {
    expect(guide).toContain(
      restoreFromSnapshotCommand(
        { snapshotId: 'lomash-wood-manual-202602181431', target: 'lomash-wood-prod-restored', ...shape, tags: { 'dbpilot.io/managed-by': 'dbpilot', 'dbpilot.io/restored-from': 'snapshot:lomash-wood-manual-202602181431' } },
        'eu-west-2',
      ),
    );
    expect(guide).toContain(
      restoreToTimeCommand(
        { source: 'lomash-wood-prod', target: 'lomash-wood-pitr', time: new Date('2026-02-18T14:30:00Z'), ...shape, tags: { 'dbpilot.io/managed-by': 'dbpilot', 'dbpilot.io/restored-from': 'lomash-wood-prod@2026-02-18T14:30:00Z' } },
        'eu-west-2',
      ),
    );
  });
});
