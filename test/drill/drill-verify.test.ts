/**
 * The drill judges recovery from the world, not from dbpilot's word: a primary that comes back by
 * itself before the alert is posted makes dbpilot's run a correct "false alarm" (succeeded, no steps),
 * yet the failover drill did not recover by a failover — the replica still refuses writes — so the
 * trial is not recovered and the table says so.
 */
import { describe, expect, it } from 'vitest';
import { summaryRows } from '../../src/cli-drill.js';
import { Cleanup } from '../../src/drill/cleanup.js';
import { runTrial } from '../../src/drill/drill.js';

describe('drill verification reads the world', () => {
  it('primary back before the alert: the run succeeds as a false alarm, the drill reports not recovered', async () => {
    const lines: string[] = [];
    const cleanup = new Cleanup();
    const t = await runTrial('primary-failure', 1, { say: (l) => void lines.push(l), step: () => undefined }, cleanup, {
      afterBreak: (sb) => sb.cluster.primary.start(),
    });
    expect(cleanup.size).toBe(0);
    expect(t.runStatus).toBe('succeeded');
    expect(t.reason).toMatch(/^nothing to do: false alarm: 127\.0\.0\.1:\d+ answers and accepts writes$/);
    expect(t.steps).toEqual([]);
    const write = t.checks.find((c) => c.name === 'promoted replica accepts a write')!;
    expect(write.ok).toBe(false);
    expect(write.detail).toMatch(/read-only transaction/);
    expect(t.checks.find((c) => c.name === 'secret lomash-wood-secrets points at it')!.ok).toBe(false);
    expect(t.recovered).toBe(false);
    const rows = summaryRows([t]);
    expect(rows.find((r) => r.what === 'every check passed')!.ok).toEqual([false]);
    expect(rows.find((r) => r.what.startsWith('total time to recover'))!.ok).toEqual([true]);
    expect(lines).toContain('teardown: stopping the sandbox');
  });
});
