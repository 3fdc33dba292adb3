/**
 * src/topology.ts without servers: the role rules as table tests, and the observer's sharing,
 * caching, bounding and memory on stand-in servers whose probe answers are scripted. What real
 * servers do on a promotion is in test/exporter/topology.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { PgCluster, type PgServer } from '../src/integrations/postgres.js';
import {
  Topology,
  nextLastPrimaryLsn,
  parseLsn,
  roleOf,
  seenRole,
  summarize,
  type MemberState,
  type ObservedRole,
} from '../src/topology.js';

// ── the rules ──────────────────────────────────────────────────────────────────────────────

describe('roleOf', () => {
  type Row = [string, Parameters<typeof roleOf>[0], ObservedRole];
  const base = { configuredRole: 'replica', up: true, inRecovery: false, fenced: false, lastSeen: undefined } as const;
  it.each<Row>([
    ['up, out of recovery → primary', { ...base }, 'primary'],
    ['up, out of recovery, configured primary → primary', { ...base, configuredRole: 'primary' }, 'primary'],
    ['up, in recovery → replica, whatever it is configured as', { ...base, configuredRole: 'primary', inRecovery: true }, 'replica'],
    ['up, in recovery, last seen primary → replica (it was demoted)', { ...base, inRecovery: true, lastSeen: 'primary' }, 'replica'],
    ['up, in recovery and fenced → replica (rebuilt as a standby: it takes no writes)', { ...base, inRecovery: true, fenced: true }, 'replica'],
    ['up, out of recovery and fenced → fenced (still writable: counted in primaries)', { ...base, fenced: true }, 'fenced'],
    ['up without a recovery state → unknown', { ...base, inRecovery: null }, 'unknown'],
    ['down, fenced → fenced', { ...base, up: false, inRecovery: null, fenced: true, lastSeen: 'primary' }, 'fenced'],
    ['down, last seen primary → primary (the old primary of a failover nobody fenced)', { ...base, up: false, inRecovery: null, lastSeen: 'primary' }, 'primary'],
    ['down, last seen replica → replica', { ...base, configuredRole: 'primary', up: false, inRecovery: null, lastSeen: 'replica' }, 'replica'],
    ['down, never seen, configured primary → primary (PostgresPrimaryDown still fires)', { ...base, configuredRole: 'primary', up: false, inRecovery: null }, 'primary'],
    ['down, never seen, configured replica → replica', { ...base, up: false, inRecovery: null }, 'replica'],
  ])('%s', (_what, input, want) => {
    expect(roleOf(input)).toBe(want);
  });
});

describe('seenRole', () => {
  it.each([
    [{ up: true, inRecovery: false }, 'primary'],
    [{ up: true, inRecovery: true }, 'replica'],
    [{ up: true, inRecovery: null }, undefined],
    [{ up: false, inRecovery: null }, undefined],
  ] as const)('%j → %s', (probe, want) => {
    expect(seenRole(probe)).toBe(want);
  });
});

function member(server: string, over: Partial<MemberState> = {}): MemberState {
  return {
    server,
    pod: null,
    configuredRole: 'replica',
    role: 'replica',
    up: true,
    inRecovery: true,
    lsn: null,
    replayLsn: null,
    receiverStatus: 'streaming',
    upstream: null,
    lagBytes: 0,
    lagSeconds: 0,
    error: null,
    ...over,
  };
}
const writable = (server: string, over: Partial<MemberState> = {}) => member(server, { role: 'primary', inRecovery: false, receiverStatus: null, ...over });
const down = (server: string, role: ObservedRole) => member(server, { role, up: false, inRecovery: null, receiverStatus: null, lagBytes: null, lagSeconds: null, error: 'ECONNREFUSED' });

describe('summarize', () => {
  it.each<[string, MemberState[], { primary: string | null; primaries: string[]; splitBrain: boolean }]>([
    ['one primary, one replica', [writable('a'), member('b')], { primary: 'a', primaries: ['a'], splitBrain: false }],
    ['the promoted replica and the dead old primary', [down('a', 'primary'), writable('b')], { primary: 'b', primaries: ['b'], splitBrain: false }],
    ['the promoted replica and the fenced old primary', [down('a', 'fenced'), writable('b')], { primary: 'b', primaries: ['b'], splitBrain: false }],
    ['no server out of recovery', [down('a', 'primary'), member('b')], { primary: null, primaries: [], splitBrain: false }],
    ['two out of recovery: split brain, no primary', [writable('a'), writable('b')], { primary: null, primaries: ['a', 'b'], splitBrain: true }],
    ['a fenced server back and writable next to the promoted one: split brain', [writable('a', { role: 'fenced' }), writable('b')], { primary: null, primaries: ['a', 'b'], splitBrain: true }],
    ['a lone writable fenced server is not the primary', [writable('a', { role: 'fenced' }), down('b', 'primary')], { primary: null, primaries: ['a'], splitBrain: false }],
    ['three, two writable', [writable('a'), member('b'), writable('c')], { primary: null, primaries: ['a', 'c'], splitBrain: true }],
  ])('%s', (_what, members, want) => {
    const s = summarize(members);
    expect({ primary: s.primary?.server ?? null, primaries: s.primaries.map((m) => m.server), splitBrain: s.splitBrain }).toEqual(want);
  });
});

describe('parseLsn', () => {
  it.each<[string | null, bigint | undefined]>([
    ['0/0', 0n],
    ['0/3000148', 0x3000148n],
    ['16/B374D848', (0x16n << 32n) + 0xb374d848n],
    ['FFFFFFFF/FFFFFFFF', (1n << 64n) - 1n],
    ['1/0', 1n << 32n],
    [null, undefined],
    ['', undefined],
    ['16:B374D848', undefined],
    ['0/123456789', undefined],
  ])('%s → %s', (lsn, want) => {
    expect(parseLsn(lsn)).toBe(want);
  });

  it('orders across the high word (1/0 is beyond 0/FFFFFFFF)', () => {
    expect(parseLsn('1/0')! > parseLsn('0/FFFFFFFF')!).toBe(true);
  });
});

describe('nextLastPrimaryLsn', () => {
  const prev = { server: 'a', lsn: '0/5000000', at: 1 };
  it.each<[string, typeof prev | null, MemberState[], typeof prev | null]>([
    ['nothing seen yet, nothing writable', null, [member('b', { lsn: '0/9000000' })], null],
    ['the first primary seen', null, [writable('a', { lsn: '0/5000000' })], { server: 'a', lsn: '0/5000000', at: 7 }],
    ['a primary further on replaces it', prev, [writable('a', { lsn: '0/5000100' })], { server: 'a', lsn: '0/5000100', at: 7 }],
    ['the primary gone: kept', prev, [down('a', 'primary'), member('b', { lsn: '0/4000000' })], prev],
    ['a promoted replica behind it: kept (the highest is what a replica must have received)', prev, [down('a', 'primary'), writable('b', { lsn: '0/4000000' })], prev],
    ['a promoted replica past it: replaces it', prev, [down('a', 'primary'), writable('b', { lsn: '0/6000000' })], { server: 'b', lsn: '0/6000000', at: 7 }],
    ['a replica\'s receive position never counts', prev, [member('b', { lsn: '1/0' })], prev],
    ['a fenced writable server never counts', prev, [writable('a', { role: 'fenced', lsn: '1/0' })], prev],
    ['split brain: the further of the two', null, [writable('a', { lsn: '0/7000000' }), writable('b', { lsn: '0/8000000' })], { server: 'b', lsn: '0/8000000', at: 7 }],
  ])('%s', (_what, before, members, want) => {
    expect(nextLastPrimaryLsn(before, members, 7)).toEqual(want);
  });
});

// ── the observer, on scripted servers ──────────────────────────────────────────────────────

interface Answer {
  in_recovery: boolean;
  lsn?: string;
  receiver_status?: string | null;
  sender_host?: string | null;
  sender_port?: number | null;
}

/** A stand-in PgServer whose probe answer (or failure, or silence) the test sets. */
class ScriptedServer {
  readonly pod: string | undefined = undefined;
  readonly defaultDatabase = 'postgres';
  queries = 0;
  answer: Answer | Error | 'hang' = { in_recovery: false };
  private readonly hung: (() => void)[] = [];
  constructor(
    readonly server: string,
    readonly role: 'primary' | 'replica',
  ) {}

  async query(sql: string): Promise<Record<string, unknown>[]> {
    this.queries++;
    if (!sql.includes('pg_is_in_recovery()')) throw new Error(`unexpected statement: ${sql}`);
    const a = this.answer;
    if (a === 'hang') return new Promise((resolve) => this.hung.push(() => resolve([])));
    if (a instanceof Error) throw a;
    return [
      {
        in_recovery: a.in_recovery,
        lsn: a.lsn ?? '0/1000000',
        replay_lsn: a.in_recovery ? (a.lsn ?? '0/1000000') : null,
        receiver_status: a.receiver_status ?? null,
        sender_host: a.sender_host ?? null,
        sender_port: a.sender_port ?? null,
        lag_bytes: a.in_recovery ? 0 : null,
        lag_seconds: a.in_recovery ? 0 : null,
      },
    ];
  }

  release(): void {
    for (const r of this.hung.splice(0)) r();
  }
}

function scripted(): { a: ScriptedServer; b: ScriptedServer; cluster: PgCluster } {
  const a = new ScriptedServer('a:5432', 'primary');
  const b = new ScriptedServer('b:5432', 'replica');
  b.answer = { in_recovery: true, receiver_status: 'streaming', sender_host: 'a', sender_port: 5432 };
  return { a, b, cluster: new PgCluster(a as unknown as PgServer, [b as unknown as PgServer]) };
}

const roles = (m: readonly MemberState[]) => Object.fromEntries(m.map((x) => [x.server, `${x.role}/${x.up ? 'up' : 'down'}`]));

describe('Topology', () => {
  it('reports each member with its observed role, WAL receiver and upstream, one statement per server', async () => {
    const { a, b, cluster } = scripted();
    a.answer = { in_recovery: false, lsn: '0/3000148' };
    const t = new Topology(cluster, { probeBudgetMs: 1000 });
    expect(t.last()).toBeNull();
    expect(t.primaryServer().server).toBe('a:5432'); // nothing observed yet: the configured primary
    const s = await t.observe();
    expect(s.members).toEqual([
      { server: 'a:5432', pod: null, configuredRole: 'primary', role: 'primary', up: true, inRecovery: false, lsn: '0/3000148', replayLsn: null, receiverStatus: null, upstream: null, lagBytes: null, lagSeconds: null, error: null },
      { server: 'b:5432', pod: null, configuredRole: 'replica', role: 'replica', up: true, inRecovery: true, lsn: '0/1000000', replayLsn: '0/1000000', receiverStatus: 'streaming', upstream: 'a:5432', lagBytes: 0, lagSeconds: 0, error: null },
    ]);
    expect(s.primary?.server).toBe('a:5432');
    expect(s.splitBrain).toBe(false);
    expect(s.lastPrimaryLsn).toEqual({ server: 'a:5432', lsn: '0/3000148', at: s.at });
    expect([a.queries, b.queries]).toEqual([1, 1]);
    expect(t.last()).toBe(s);
  });

  it('shares one observation between concurrent callers', async () => {
    const { a, b, cluster } = scripted();
    const t = new Topology(cluster, { probeBudgetMs: 1000 });
    const all = await Promise.all([t.observe(), t.observe(), t.observe(0), t.observe(60_000)]);
    expect(new Set(all).size).toBe(1);
    expect([a.queries, b.queries]).toEqual([1, 1]);
  });

  it('serves a snapshot younger than maxAgeMs, and observes again once it is not', async () => {
    const { a, cluster } = scripted();
    let now = 1_000_000;
    const t = new Topology(cluster, { probeBudgetMs: 1000, now: () => now });
    const first = await t.observe();
    now += 499;
    expect(await t.observe(500)).toBe(first);
    expect(a.queries).toBe(1);
    now += 1;
    const second = await t.observe(500);
    expect(second).not.toBe(first);
    expect(a.queries).toBe(2);
    // maxAgeMs 0 (the default) always observes.
    expect(await t.observe()).not.toBe(second);
    expect(a.queries).toBe(3);
  });

  it('does not let a hung server hold up the others: it is down after its budget, they are reported', async () => {
    const { a, b, cluster } = scripted();
    a.answer = 'hang';
    const t = new Topology(cluster, { probeBudgetMs: 50 });
    try {
      const s = await t.observe();
      expect(roles(s.members)).toEqual({ 'a:5432': 'primary/down', 'b:5432': 'replica/up' });
      expect(s.members[0]!.error).toBe('no answer within 50 ms');
      expect(s.primary).toBeNull();
    } finally {
      a.release();
    }
  });

  it('follows a promotion on the next observation; the dead old primary stays primary until fenced', async () => {
    const { a, b, cluster } = scripted();
    let fenced: ReadonlySet<string> = new Set();
    const t = new Topology(cluster, { probeBudgetMs: 1000, fenced: () => fenced });
    a.answer = { in_recovery: false, lsn: '0/5000000' };
    await t.observe();

    a.answer = new Error('connect ECONNREFUSED');
    b.answer = { in_recovery: false, lsn: '0/4FFFF00' };
    const after = await t.observe();
    expect(roles(after.members)).toEqual({ 'a:5432': 'primary/down', 'b:5432': 'primary/up' });
    expect(after.primary?.server).toBe('b:5432');
    expect(after.primaries.map((m) => m.server)).toEqual(['b:5432']);
    expect(after.splitBrain).toBe(false);
    expect(t.primaryServer().server).toBe('b:5432');
    // The old primary's last position stays the bound: the promoted replica had not received it all.
    expect(after.lastPrimaryLsn).toMatchObject({ server: 'a:5432', lsn: '0/5000000' });

    fenced = new Set(['a:5432']);
    const fencedSnap = await t.observe();
    expect(roles(fencedSnap.members)).toEqual({ 'a:5432': 'fenced/down', 'b:5432': 'primary/up' });
  });

  it('keeps the last observed primary for primaryServer() while none is observed, else the configured one', async () => {
    const { a, b, cluster } = scripted();
    const t = new Topology(cluster, { probeBudgetMs: 1000 });
    a.answer = new Error('down');
    b.answer = { in_recovery: true };
    await t.observe();
    expect(t.primaryServer().server).toBe('a:5432'); // never seen one: configured

    b.answer = { in_recovery: false };
    await t.observe();
    expect(t.primaryServer().server).toBe('b:5432');

    b.answer = new Error('down too');
    const s = await t.observe();
    expect(s.primary).toBeNull();
    expect(roles(s.members)).toEqual({ 'a:5432': 'primary/down', 'b:5432': 'primary/down' });
    expect(t.primaryServer().server).toBe('b:5432'); // the last one observed
  });

  it('sees split brain, a fenced server that writes counting among the primaries', async () => {
    const { a, b, cluster } = scripted();
    let fenced: ReadonlySet<string> = new Set();
    const t = new Topology(cluster, { probeBudgetMs: 1000, fenced: () => fenced });
    b.answer = { in_recovery: false };
    const s = await t.observe();
    expect(s.splitBrain).toBe(true);
    expect(s.primary).toBeNull();
    expect(s.primaries.map((m) => m.server)).toEqual(['a:5432', 'b:5432']);

    fenced = new Set(['a:5432']);
    const f = await t.observe();
    expect(roles(f.members)).toEqual({ 'a:5432': 'fenced/up', 'b:5432': 'primary/up' });
    expect(f.splitBrain).toBe(true);
    expect(f.primaries.map((m) => m.server)).toEqual(['a:5432', 'b:5432']);
  });

  it('keeps the last fenced set when fenced() throws', async () => {
    const { a, cluster } = scripted();
    let fail = false;
    const t = new Topology(cluster, {
      probeBudgetMs: 1000,
      fenced: () => {
        if (fail) throw new Error('intent store unavailable');
        return new Set(['a:5432']);
      },
    });
    a.answer = new Error('down');
    expect(roles((await t.observe()).members)['a:5432']).toBe('fenced/down');
    fail = true;
    expect(roles((await t.observe()).members)['a:5432']).toBe('fenced/down');
  });
});
