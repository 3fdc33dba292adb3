/**
 * The WAL receiver's upstream, spelt like the `server` label (host:port, an IPv6 address in
 * brackets), so `upstream` in `dbpilot status` can be compared with the servers' labels.
 */
import { describe, expect, it } from 'vitest';
import { upstreamLabel } from '../../src/collectors/pg-server.js';

describe('upstreamLabel', () => {
  it.each<[string | null, number | null, string | null]>([
    ['127.0.0.1', 5432, '127.0.0.1:5432'],
    ['postgres-primary', 5432, 'postgres-primary:5432'],
    ['::1', 5433, '[::1]:5433'],
    ['[::1]', 5433, '[::1]:5433'],
    ['/var/run/postgresql', 5432, '/var/run/postgresql:5432'],
    ['postgres-primary', null, 'postgres-primary'],
    [null, 5432, null],
    ['', 5432, null],
  ])('%s, %s → %s', (host, port, want) => {
    expect(upstreamLabel(host, port)).toBe(want);
  });
});
